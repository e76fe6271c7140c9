//! Command line: subcommands and one flag per configuration key, generated from the key table
//! so flags, environment variables and TOML keys stay one set.

use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::config::{keys, ConfigError, Explicit, Layers, Origin, Settings};
use crate::demo::DemoAudio;

/// The settings `rdpwire token` takes: the keys, and the lifetime bound it checks `--ttl` against.
const MINTING_KEYS: &[&str] = &[keys::TOKEN_KEYS.flag, keys::TOKEN_MAX_TTL.flag];

pub fn command() -> Command {
    let settings_args: Vec<Arg> = keys::ALL
        .iter()
        .map(|k| {
            let mut help = k.help.to_owned();
            if let Some(d) = k.default {
                help.push_str(&format!(" [default: {d}]"));
            }
            help.push_str(&format!(" [toml: {}]", k.toml));
            let arg = Arg::new(k.flag)
                .long(k.flag)
                .env(k.env)
                .value_name("VALUE")
                .help(help);
            // Switches read naturally alone (`--prefault`) and still take a value.
            if k.default == Some("false") {
                arg.num_args(0..=1).default_missing_value("true")
            } else {
                arg.num_args(1)
            }
        })
        .collect();
    let config_arg = Arg::new("config")
        .long("config")
        .short('c')
        .env("RDPWIRE_CONFIG")
        .value_name("FILE")
        .value_parser(clap::value_parser!(PathBuf))
        .help("TOML configuration file (lowest precedence after built-in defaults)");
    Command::new("rdpwire")
        .about("Web gateway for remote desktops: RDP in, WebSocket + WebCodecs out, bounded memory")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            Command::new("serve")
                .about("Run the gateway")
                .arg(config_arg.clone())
                .args(settings_args.clone()),
        )
        .subcommand(
            Command::new("demo")
                .about(
                    "Run the gateway with an embedded demo desktop on loopback and print the URL to open",
                )
                .arg(config_arg.clone())
                .args(settings_args.clone())
                .arg(
                    Arg::new("audio-format")
                        .long("audio-format")
                        .env("RDPWIRE_DEMO_AUDIO_FORMAT")
                        .value_name("FORMAT")
                        .value_parser(
                            clap::builder::PossibleValuesParser::new(DemoAudio::NAMES)
                                .try_map(|s| s.parse::<DemoAudio>()),
                        )
                        .default_value(DemoAudio::default().as_str())
                        .help(
                            "Sound format of the demo desktop, if the client accepts it (else \
                             any PCM it accepts): PCM 44.1 kHz, PCM 48 kHz, Opus 48 kHz, or no \
                             sound",
                        ),
                ),
        )
        .subcommand(
            Command::new("probe")
                .about(
                    "GET a path of a running gateway and exit 0 on 200 (container health checks)",
                )
                .arg(
                    Arg::new("address")
                        .long("address")
                        .env("RDPWIRE_PROBE_ADDRESS")
                        .default_value("127.0.0.1:8080")
                        .help("host:port of the gateway"),
                )
                .arg(
                    Arg::new("path")
                        .long("path")
                        .default_value("/healthz")
                        .help("path to request"),
                ),
        )
        .subcommand(
            Command::new("token")
                .about(
                    "Mint a connection token with the first of the configured token keys and print it (for scripts and tests; docs/security.md)",
                )
                .arg(config_arg.clone())
                .args(
                    settings_args
                        .iter()
                        .filter(|a| MINTING_KEYS.contains(&a.get_id().as_str()))
                        .cloned(),
                )
                .arg(
                    Arg::new("target")
                        .long("target")
                        .required(true)
                        .value_name("HOST[:PORT]")
                        .help("the RDP server: host:port, [ipv6]:port, or a host (port 3389)"),
                )
                .arg(
                    Arg::new("tls")
                        .long("tls")
                        .value_name("POLICY")
                        .default_value("verify")
                        .help("how the gateway checks the server's certificate: verify, insecure or sha256:<64 hex digits>"),
                )
                .arg(
                    Arg::new("user")
                        .long("user")
                        .required(true)
                        .value_name("NAME")
                        .help("the account to log on with"),
                )
                .arg(
                    Arg::new("password-env")
                        .long("password-env")
                        .required(true)
                        .value_name("VAR")
                        .help("environment variable holding the password (never the password itself: `ps` would show it)"),
                )
                .arg(
                    Arg::new("domain")
                        .long("domain")
                        .value_name("DOMAIN")
                        .help("the account's domain"),
                )
                .arg(
                    Arg::new("ttl")
                        .long("ttl")
                        .value_name("DURATION")
                        .default_value("60s")
                        .help("how long the token is valid (at most --token-max-ttl)"),
                ),
        )
        .subcommand(
            Command::new("check-config")
                .about("Validate the configuration and print the memory plan, then exit")
                .arg(config_arg)
                .args(settings_args)
                .arg(
                    Arg::new("json")
                        .long("json")
                        .action(ArgAction::SetTrue)
                        .help("print the plan as JSON"),
                ),
        )
}

/// The demo subcommand's sound format (`--audio-format`).
pub fn demo_audio(m: &ArgMatches) -> DemoAudio {
    m.get_one::<DemoAudio>("audio-format")
        .copied()
        .unwrap_or_default()
}

/// Settings from a subcommand's matches: CLI and environment first, then the file.
pub fn settings(m: &ArgMatches) -> Result<Settings, ConfigError> {
    layers(m, keys::ALL)?.resolve()
}

/// `rdpwire token`: mints a token for the target its flags name and returns it.
pub fn mint_token(m: &ArgMatches) -> Result<zeroize::Zeroizing<String>, String> {
    let token_keys: Vec<keys::Key> = keys::ALL
        .iter()
        .filter(|k| MINTING_KEYS.contains(&k.flag))
        .copied()
        .collect();
    let tokens = layers(m, &token_keys)
        .and_then(|l| l.resolve_tokens_with_env(&|k| std::env::var(k).ok()))
        .map_err(|e| e.to_string())?;
    let key = tokens.keys.minting().ok_or(
        "no token key is configured: give --token-keys ID=file:PATH (or RDPWIRE_TOKEN_KEYS, or tokens.keys in --config)",
    )?;
    let arg = |name: &str| m.get_one::<String>(name).cloned().unwrap_or_default();
    let (host, port) = parse_endpoint(&arg("target"))?;
    let tls =
        crate::rdp::target::parse_tls(&arg("tls"), None).map_err(|e| format!("--tls: {e}"))?;
    let var = arg("password-env");
    let password = std::env::var(&var).map_err(|_| format!("--password-env: {var} is not set"))?;
    let ttl = humantime::parse_duration(&arg("ttl"))
        .map_err(|e| format!("--ttl: not a duration ({e}); write e.g. 60s or 5m"))?;
    if ttl < std::time::Duration::from_secs(1) || ttl > tokens.max_ttl {
        return Err(format!(
            "--ttl: must be between 1s and {} (--token-max-ttl); the gateway would refuse it",
            humantime::format_duration(tokens.max_ttl)
        ));
    }
    let target = crate::rdp::Target {
        host,
        port,
        username: arg("user"),
        password,
        domain: m.get_one::<String>("domain").cloned(),
        tls,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_owned())?
        .as_secs();
    crate::token::mint(key, &target, now, ttl, &ring::rand::SystemRandom::new())
        .map_err(|e| e.to_string())
}

/// `host:port`, `[v6]:port`, `v6` or `host` (port 3389).
fn parse_endpoint(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("--target: {text:?} is not host:port");
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
    if let Some(rest) = text.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
        let p = match tail.strip_prefix(':') {
            Some(p) => port(p)?,
            None if tail.is_empty() => 3389,
            None => return Err(bad()),
        };
        return Ok((host.to_owned(), p));
    }
    if text.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((text.to_owned(), 3389));
    }
    match text.rsplit_once(':') {
        Some((host, p)) if !host.is_empty() => Ok((host.to_owned(), port(p)?)),
        Some(_) => Err(bad()),
        None if !text.is_empty() => Ok((text.to_owned(), 3389)),
        None => Err(bad()),
    }
}

/// The layers for the settings `keys` a subcommand has flags for.
fn layers(m: &ArgMatches, keys: &[keys::Key]) -> Result<Layers, ConfigError> {
    let mut explicit = Explicit::new();
    for k in keys {
        if let Some(v) = m.get_one::<String>(k.flag) {
            let origin = match m.value_source(k.flag) {
                Some(ValueSource::EnvVariable) => Origin::Environment,
                _ => Origin::CommandLine,
            };
            explicit.insert(k.toml, (v.clone(), origin));
        }
    }
    let mut layers = Layers::new(explicit);
    if let Some(path) = m.get_one::<PathBuf>("config") {
        layers = layers.with_file(path)?;
    }
    Ok(layers)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn demo(args: &[&str]) -> Result<DemoAudio, clap::Error> {
        let m = command().try_get_matches_from([&["rdpwire", "demo"], args].concat())?;
        Ok(demo_audio(m.subcommand_matches("demo").unwrap()))
    }

    #[test]
    fn token_targets() {
        assert_eq!(
            parse_endpoint("rdp.example:3390").unwrap(),
            ("rdp.example".into(), 3390)
        );
        assert_eq!(
            parse_endpoint("rdp.example").unwrap(),
            ("rdp.example".into(), 3389)
        );
        assert_eq!(parse_endpoint("[::1]:3390").unwrap(), ("::1".into(), 3390));
        assert_eq!(parse_endpoint("fe80::2").unwrap(), ("fe80::2".into(), 3389));
        assert!(parse_endpoint("h:0").is_err());
        assert!(parse_endpoint(":3389").is_err());
        assert!(parse_endpoint("").is_err());
    }

    #[test]
    fn the_demo_takes_an_audio_format() {
        assert_eq!(demo(&[]).unwrap(), DemoAudio::Pcm44);
        assert_eq!(demo(&["--audio-format", "opus"]).unwrap(), DemoAudio::Opus);
        assert_eq!(demo(&["--audio-format", "off"]).unwrap(), DemoAudio::Off);
        assert!(demo(&["--audio-format", "mp3"]).is_err());
        assert!(command()
            .try_get_matches_from(["rdpwire", "serve", "--audio-format", "opus"])
            .is_err());
    }
}
