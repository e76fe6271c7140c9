//! `rdpwire` binary: parses the command line, sets up logging, runs a subcommand.

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
