//! What a token says, as the JSON object a portal in any language can write:
//!
//! ```json
//! {"id": "q3X0…", "iat": 1767225600, "exp": 1767225660,
//!  "host": "rdp.example.com", "port": 3389, "tls": "verify",
//!  "username": "bob", "password": "…", "domain": "CORP"}
//! ```
//!
//! Fields are read one by one with messages of our own, never serde's: those quote the
//! offending value, and that value could be the password.

use serde::Serialize;
use serde_json::{Map, Value};
use zeroize::{Zeroize as _, Zeroizing};

use crate::rdp::target::parse_tls;
use crate::rdp::Target;

use super::TokenError;

/// Shortest token id: 16 characters of base64url carry 96 random bits.
pub const MIN_ID: usize = 16;
pub const MAX_ID: usize = 64;
/// DNS names are at most 253 bytes.
pub const MAX_HOST: usize = 253;
/// Username, password and domain, each.
pub const MAX_CREDENTIAL: usize = 256;

const FIELDS: &[&str] = &[
    "id", "iat", "exp", "host", "port", "tls", "username", "password", "domain",
];

/// An opened token's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Random, chosen by the minter; what makes a token single-use.
    pub id: String,
    /// Issued at and expires at, seconds since the Unix epoch.
    pub issued_at: u64,
    pub expires_at: u64,
    pub target: Target,
}

impl Claims {
    /// The JSON the envelope seals.
    pub fn to_json(&self) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        #[derive(Serialize)]
        struct Wire<'a> {
            id: &'a str,
            iat: u64,
            exp: u64,
            host: &'a str,
            port: u16,
            tls: String,
            username: &'a str,
            password: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            domain: Option<&'a str>,
        }
        let t = &self.target;
        let tls = t
            .tls
            .name()
            .ok_or_else(|| TokenError::Mint("a token cannot name a CA file".to_owned()))?;
        let wire = Wire {
            id: &self.id,
            iat: self.issued_at,
            exp: self.expires_at,
            host: &t.host,
            port: t.port,
            tls,
            username: &t.username,
            password: &t.password,
            domain: t.domain.as_deref(),
        };
        let mut out = Zeroizing::new(Vec::with_capacity(256));
        serde_json::to_writer(&mut *out, &wire)
            .map_err(|e| TokenError::Mint(format!("cannot write the claims: {e}")))?;
        Ok(out)
    }

    /// Reads the JSON an opened envelope held.
    pub fn from_json(bytes: &[u8]) -> Result<Claims, TokenError> {
        let malformed = |why: String| TokenError::Malformed(why);
        let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(bytes) else {
            return Err(malformed("it is not a JSON object".to_owned()));
        };
        // Taken out first, so it is wiped whatever goes wrong below.
        let password = match map.remove("password") {
            Some(Value::String(s)) => Zeroizing::new(s),
            Some(mut other) => {
                wipe(&mut other);
                return Err(malformed("password must be a string".to_owned()));
            }
            None => return Err(malformed("password is missing".to_owned())),
        };
        if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(malformed(format!("unknown field {unknown:?}")));
        }
        let id = text(&map, "id", MAX_ID)?;
        if id.len() < MIN_ID
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(malformed(format!(
                "id must be {MIN_ID} to {MAX_ID} characters of A-Z, a-z, 0-9, - and _"
            )));
        }
        let host = text(&map, "host", MAX_HOST)?;
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        {
            return Err(malformed(
                "host must be a DNS name or an IP address (IPv6 without brackets)".to_owned(),
            ));
        }
        let port = match map.get("port") {
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0),
            _ => None,
        }
        .ok_or_else(|| malformed("port must be a whole number from 1 to 65535".to_owned()))?;
        let tls = match map.get("tls") {
            None => "verify".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(malformed("tls must be a string".to_owned())),
        };
        let tls = parse_tls(&tls, None).map_err(|e| malformed(format!("tls: {e}")))?;
        if password.len() > MAX_CREDENTIAL {
            return Err(malformed(format!(
                "password is longer than {MAX_CREDENTIAL} bytes"
            )));
        }
        let domain = match map.get("domain") {
            None | Some(Value::Null) => None,
            Some(_) => Some(text(&map, "domain", MAX_CREDENTIAL)?),
        };
        Ok(Claims {
            id,
            issued_at: seconds(&map, "iat")?,
            expires_at: seconds(&map, "exp")?,
            target: Target {
                host,
                port,
                username: text(&map, "username", MAX_CREDENTIAL)?,
                password: password.to_string(),
                domain,
                tls,
            },
        })
    }
}

/// A required, non-empty string of at most `max` bytes.
fn text(map: &Map<String, Value>, key: &str, max: usize) -> Result<String, TokenError> {
    match map.get(key) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(s.clone()),
        Some(Value::String(_)) => Err(TokenError::Malformed(format!(
            "{key} must be 1 to {max} bytes"
        ))),
        Some(_) => Err(TokenError::Malformed(format!("{key} must be a string"))),
        None => Err(TokenError::Malformed(format!("{key} is missing"))),
    }
}

fn seconds(map: &Map<String, Value>, key: &str) -> Result<u64, TokenError> {
    match map.get(key) {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
            TokenError::Malformed(format!("{key} must be whole seconds since 1970"))
        }),
        Some(_) => Err(TokenError::Malformed(format!(
            "{key} must be a number (seconds since 1970)"
        ))),
        None => Err(TokenError::Malformed(format!("{key} is missing"))),
    }
}

/// Wipes the strings of a JSON value that held a secret in the wrong shape.
fn wipe(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe),
        Value::Object(map) => map.values_mut().for_each(wipe),
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rdp::TlsPolicy;

    fn claims() -> Claims {
        Claims {
            id: "AAAAAAAAAAAAAAAAAAAAAA".into(),
            issued_at: 1_000,
            expires_at: 1_060,
            target: Target {
                host: "rdp.example.com".into(),
                port: 3389,
                username: "bob".into(),
                password: "hunter2\"\\".into(),
                domain: Some("CORP".into()),
                tls: TlsPolicy::Fingerprint([0xab; 32]),
            },
        }
    }

    #[test]
    fn round_trip() {
        let c = claims();
        let json = c.to_json().unwrap();
        assert_eq!(Claims::from_json(&json).unwrap(), c);
        let text = std::str::from_utf8(&json).unwrap();
        assert!(text.contains("\"tls\":\"sha256:abab"), "{text}");
    }

    #[test]
    fn a_minimal_object_from_another_language() {
        let c = Claims::from_json(
            br#"{"id":"0123456789abcdef","iat":1,"exp":2,"host":"10.0.0.5","port":3390,
                 "username":"u","password":"p"}"#,
        )
        .unwrap();
        assert_eq!(c.target.tls, TlsPolicy::Verify { ca_file: None });
        assert_eq!((c.target.port, c.target.domain.as_deref()), (3390, None));
    }

    #[test]
    fn mistakes_name_the_field_and_never_the_password() {
        let base =
            r#""id":"0123456789abcdef","iat":1,"exp":2,"host":"h","port":3389,"username":"u""#;
        let cases = [
            (format!(r#"{{{base}}}"#), "password is missing"),
            (
                format!(r#"{{{base},"password":12345}}"#),
                "password must be a string",
            ),
            (
                format!(r#"{{{base},"password":"p","extra":1}}"#),
                "unknown field \"extra\"",
            ),
            (
                format!(
                    r#"{{{},"password":"secret-pw"}}"#,
                    base.replace("3389", "70000")
                ),
                "port must be",
            ),
            (
                format!(
                    r#"{{{},"password":"secret-pw"}}"#,
                    base.replace("\"h\"", "\"a b\"")
                ),
                "host must be",
            ),
            (
                format!(
                    r#"{{{},"password":"secret-pw"}}"#,
                    base.replace("0123456789abcdef", "short")
                ),
                "id must be",
            ),
            (
                format!(r#"{{{},"password":"secret-pw","tls":"maybe"}}"#, base),
                "tls:",
            ),
            ("[1,2]".to_owned(), "not a JSON object"),
        ];
        for (json, want) in cases {
            let e = Claims::from_json(json.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
            assert!(!e.contains("secret-pw") && !e.contains("12345"), "{e}");
        }
    }
}
