//! Command line: subcommands and one flag per configuration key, generated from the key table
//! so flags, environment variables and TOML keys stay one set.

use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::config::{keys, ConfigError, Explicit, Layers, Origin, Settings};
use crate::demo::DemoAudio;

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
    let mut explicit = Explicit::new();
    for k in keys::ALL {
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
    layers.resolve()
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
