//! The runtime shell: the only code that touches glommio, sockets, signals and threads.
//! Everything it decides with comes from the sans-IO modules (`http`, `session`, `sizing`).

mod accept;
mod connection;
mod core;
#[cfg(debug_assertions)]
mod fault;
mod plan;
pub mod rdp_client;
mod reattach;
mod shutdown;
mod supervisor;
mod uring;
mod websocket;

pub use plan::{plan, Plan};
pub use supervisor::serve;

/// Everything that can stop the gateway from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Cpus(#[from] crate::host::cpus::CpuError),
    #[error(transparent)]
    Sizing(#[from] crate::sizing::SizingError),
    #[error("cannot listen on {addr}: {err}")]
    Listen {
        addr: std::net::SocketAddr,
        err: std::io::Error,
    },
    #[error("cannot start the executor for CPU {cpu}: io_uring could not be set up: {}", explain_io_uring(.detail))]
    IoUring { cpu: usize, detail: String },
    #[error("cannot map the memory arena for CPU {cpu}: {}", explain_arena(.err))]
    Arena { cpu: usize, err: arena::ArenaError },
    #[error("cannot start a thread for CPU {cpu}: {err}")]
    Thread { cpu: usize, err: std::io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("executor for CPU {cpu} stopped unexpectedly")]
    ExecutorLost { cpu: usize },
    #[error("executor for CPU {cpu} failed: {message}")]
    ExecutorPanicked { cpu: usize, message: String },
    #[error("cannot set up connection tokens: {0}")]
    Tokens(crate::token::TokenError),
}

/// Turns glommio's set-up error into what happened and how to fix it.
fn explain_io_uring(detail: &str) -> String {
    if detail.contains("MemLockLimit") {
        format!(
            "the memlock limit (RLIMIT_MEMLOCK) is below the 512 KiB io_uring needs ({detail}). \
             Fix: raise it: `ulimit -l 1024` in the shell, `LimitMEMLOCK=1M` in a systemd unit, \
             `docker run --ulimit memlock=1048576:1048576` in a container"
        )
    } else if detail.contains("os error 1)") || detail.contains("os error 13)") {
        format!(
            "the kernel refused the io_uring system calls ({detail}). A seccomp profile blocks \
             them (Docker's default profile does) or the sysctl kernel.io_uring_disabled is set. \
             Fix: run the container with a seccomp profile that also allows io_uring_setup, \
             io_uring_enter and io_uring_register (`docker run --security-opt seccomp=PROFILE`; \
             docs/deploy.md shows how to make one from Docker's default), or set \
             kernel.io_uring_disabled=0"
        )
    } else if detail.contains("os error 38)") {
        format!("this kernel has no io_uring ({detail}). Fix: run on Linux 5.8 or newer")
    } else {
        format!(
            "{detail}. rdpwire needs io_uring: Linux 5.8 or newer, a memlock limit of at least \
             512 KiB, and in containers a seccomp profile that allows io_uring_setup, \
             io_uring_enter and io_uring_register (see docs/deploy.md)"
        )
    }
}

/// The arena's error with the operating system's reason and, for `mlock`, the fix.
fn explain_arena(err: &arena::ArenaError) -> String {
    use std::error::Error as _;
    let mut text = err.to_string();
    if let Some(source) = err.source() {
        text.push_str(&format!(": {source}"));
    }
    if matches!(err, arena::ArenaError::Lock { .. }) {
        text.push_str(
            ". Fix: raise the memlock limit above the arena size (ulimit -l, LimitMEMLOCK= in a \
             systemd unit, docker run --ulimit memlock=…) or run without --mlock",
        );
    }
    text
}
