//! `rdpwire` binary: parses the command line, sets up logging, runs a subcommand.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use rdpwire::config::{LogFormat, Settings};
use rdpwire::{cli, runtime};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// A panic is a bug; it is reported as one line in the log, not as a backtrace on stderr.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        tracing::error!(%thread, %location, %message, "internal error (panic)");
    }));
}

fn main() -> ExitCode {
    let matches = cli::command().get_matches();
    let Some((name, sub)) = matches.subcommand() else {
        return ExitCode::from(2);
    };
    if name == "probe" {
        return probe(sub);
    }
    if name == "token" {
        return match cli::mint_token(sub) {
            Ok(token) => {
                println!("{}", token.as_str());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("rdpwire token: {err}");
                ExitCode::from(2)
            }
        };
    }
    let settings: Settings = match cli::settings(sub) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("rdpwire: {err}");
            return ExitCode::from(2);
        }
    };
    match name {
        "check-config" => match runtime::plan(&settings) {
            Ok(plan) => {
                if sub.get_flag("json") {
                    println!("{}", plan.to_json());
                } else {
                    println!("configuration is valid\n{}", plan.summary());
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("rdpwire: {err}");
                ExitCode::from(2)
            }
        },
        "demo" => {
            init_logging(settings.log_format);
            install_panic_hook();
            match demo(settings, cli::demo_audio(sub)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(err = %format!("{err:#}"), "demo stopped");
                    eprintln!("rdpwire: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            init_logging(settings.log_format);
            install_panic_hook();
            match runtime::serve(settings, |_| {}) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(%err, "gateway stopped");
                    eprintln!("rdpwire: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The gateway plus the embedded demo desktop on loopback, as the target `demo`, which is
/// also what a page that names no target opens.
fn demo(mut settings: Settings, audio: rdpwire::demo::DemoAudio) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut secret = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| anyhow::anyhow!("no randomness for the demo password"))?;
    let password: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let server = rdpwire::demo::DemoServer::start(rdpwire::demo::DemoOptions {
        bind: "127.0.0.1:0".parse()?,
        username: "demo".to_owned(),
        password: password.clone(),
        audio,
        content: rdpwire::demo::Content::Desktop,
        max_connections: rdpwire::demo::MAX_CONNECTIONS,
    })
    .context("starting the demo desktop")?;
    let addr = server.addr();
    settings.targets.insert(
        "demo".to_owned(),
        rdpwire::rdp::Target {
            host: addr.ip().to_string(),
            port: addr.port(),
            username: "demo".to_owned(),
            password,
            domain: None,
            // The demo's certificate is self-signed and lives only on loopback.
            tls: rdpwire::rdp::TlsPolicy::Insecure,
        },
    );
    if settings.default_target.is_none() {
        settings.default_target = Some("demo".to_owned());
    }
    // The demo desktop is on loopback, which the target policy refuses unless allowed: allow
    // exactly its address, nothing else on loopback.
    settings.target_policy.exempt(addr);
    runtime::serve(settings, |listen| {
        println!("rdpwire demo: open http://{listen}/ in a browser (the demo desktop is target \"demo\")");
    })?;
    drop(server);
    Ok(())
}

/// One HTTP GET with a short timeout; the exit status says whether the answer was 200. Lets a
/// container image without curl run a health check with the binary it already has.
fn probe(m: &clap::ArgMatches) -> ExitCode {
    use std::io::{Read, Write};
    use std::time::Duration;
    let address = m
        .get_one::<String>("address")
        .map_or("127.0.0.1:8080", |s| s.as_str());
    let path = m
        .get_one::<String>("path")
        .map_or("/healthz", |s| s.as_str());
    let result = (|| -> std::io::Result<String> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(address)?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n")?;
        let mut reply = String::new();
        s.take(4096).read_to_string(&mut reply)?;
        Ok(reply)
    })();
    match result {
        Ok(reply) if reply.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(reply) => {
            eprintln!(
                "rdpwire probe: {}",
                reply.lines().next().unwrap_or("no answer")
            );
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("rdpwire probe: {address}{path}: {err}");
            ExitCode::FAILURE
        }
    }
}
