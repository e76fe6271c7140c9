//! Named RDP targets from the `[targets.NAME]` tables of the configuration file. Credentials
//! stay on the gateway: a password is read from the environment variable the table names, so
//! neither the file nor the page ever holds it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::rdp::target::parse_tls;
use crate::rdp::Target;

use super::{ConfigError, Origin};

const KEYS: &[&str] = &[
    "host",
    "port",
    "username",
    "password_env",
    "domain",
    "tls",
    "ca_file",
];

/// Parses every `[targets.NAME]` table; `env` looks up environment variables.
pub fn parse(
    path: &Path,
    table: &toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Target>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, value) in table {
        let key = |k: &str| format!("targets.{name}.{k}");
        let invalid = |k: &str, value: String, why: String| ConfigError::InvalidTarget {
            key: key(k),
            value,
            origin: Origin::File(path.to_owned()),
            why,
        };
        if name.is_empty() || name.len() > crate::protocol::MAX_TARGET_NAME {
            return Err(invalid(
                "",
                name.clone(),
                "a target name is 1 to 64 bytes".into(),
            ));
        }
        let Some(t) = value.as_table() else {
            return Err(invalid("", value.to_string(), "must be a table".into()));
        };
        if let Some(unknown) = t.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key: key(unknown),
            });
        }
        let text = |k: &str| -> Result<Option<String>, ConfigError> {
            match t.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
                Some(v) => Err(invalid(
                    k,
                    v.to_string(),
                    "must be a non-empty string".into(),
                )),
            }
        };
        let required = |k: &str| -> Result<String, ConfigError> {
            text(k)?.ok_or_else(|| invalid(k, String::new(), "is required".into()))
        };
        let host = required("host")?;
        let port = match t.get("port") {
            None => 3389,
            Some(toml::Value::Integer(p)) if (1..=65535).contains(p) => *p as u16,
            Some(v) => return Err(invalid("port", v.to_string(), "must be 1 to 65535".into())),
        };
        let username = required("username")?;
        let password_env = required("password_env")?;
        let password = env(&password_env).ok_or_else(|| {
            invalid(
                "password_env",
                password_env.clone(),
                format!("environment variable {password_env} is not set"),
            )
        })?;
        let ca_file = text("ca_file")?.map(PathBuf::from);
        if let Some(ca) = &ca_file {
            if !ca.is_file() {
                return Err(invalid(
                    "ca_file",
                    ca.display().to_string(),
                    "no such file".into(),
                ));
            }
        }
        let tls_text = text("tls")?.unwrap_or_else(|| "verify".to_owned());
        let tls =
            parse_tls(&tls_text, ca_file).map_err(|why| invalid("tls", tls_text.clone(), why))?;
        out.insert(
            name.clone(),
            Target {
                host,
                port,
                username,
                password,
                domain: text("domain")?,
                tls,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rdp::TlsPolicy;

    fn env(k: &str) -> Option<String> {
        (k == "OFFICE_PW").then(|| "s3cret".to_owned())
    }

    fn parse_text(t: &str) -> Result<BTreeMap<String, Target>, ConfigError> {
        let table: toml::Table = toml::from_str(t).unwrap();
        parse(Path::new("gw.toml"), &table, &env)
    }

    #[test]
    fn a_full_target() {
        let t = parse_text(
            "[office]\nhost = \"10.0.0.5\"\nport = 3390\nusername = \"bob\"\npassword_env = \"OFFICE_PW\"\ntls = \"insecure\"\n",
        )
        .unwrap();
        let o = &t["office"];
        assert_eq!(
            (o.host.as_str(), o.port, o.password.as_str()),
            ("10.0.0.5", 3390, "s3cret")
        );
        assert_eq!(o.tls, TlsPolicy::Insecure);
        let t = parse_text("[x]\nhost = \"h\"\nusername = \"u\"\npassword_env = \"OFFICE_PW\"\n")
            .unwrap();
        assert_eq!(t["x"].port, 3389);
        assert_eq!(t["x"].tls, TlsPolicy::Verify { ca_file: None });
    }

    #[test]
    fn mistakes_name_the_key() {
        let e = parse_text("[x]\nhost = \"h\"\nusername = \"u\"\npassword_env = \"NOPE\"\n")
            .unwrap_err();
        assert!(
            e.to_string().contains("targets.x.password_env")
                && e.to_string().contains("NOPE is not set"),
            "{e}"
        );
        let e = parse_text(
            "[x]\nhost = \"h\"\nusername = \"u\"\npassword_env = \"OFFICE_PW\"\ntls = \"maybe\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("targets.x.tls"), "{e}");
        let e = parse_text(
            "[x]\nhost = \"h\"\nusername = \"u\"\npassword_env = \"OFFICE_PW\"\npassword = \"p\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("targets.x.password"), "{e}");
        let e = parse_text("[x]\nusername = \"u\"\npassword_env = \"OFFICE_PW\"\n").unwrap_err();
        assert!(
            e.to_string().contains("targets.x.host") && e.to_string().contains("required"),
            "{e}"
        );
    }
}
