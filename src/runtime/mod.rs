//! The runtime shell: the only code that touches glommio, sockets, signals and threads.
//! Everything it decides with comes from the sans-IO modules (`http`, `session`, `sizing`).

mod accept;
mod connection;
mod core;
mod plan;
mod shutdown;
mod supervisor;
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
    #[error(
        "cannot start the executor for CPU {cpu}: io_uring could not be set up: {detail}. \
         rdpwire runs on io_uring: in a container, use a seccomp profile that allows \
         io_uring_setup, io_uring_enter and io_uring_register (Docker's default profile blocks \
         them; docs/deploy.md ships one), and give the process a memlock limit of at least \
         512 KiB (ulimit -l, docker run --ulimit memlock=…); the kernel must be 5.8 or newer"
    )]
    IoUring { cpu: usize, detail: String },
    #[error("cannot map the memory arena for CPU {cpu}: {err}")]
    Arena { cpu: usize, err: arena::ArenaError },
    #[error("cannot start a thread for CPU {cpu}: {err}")]
    Thread { cpu: usize, err: std::io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("executor for CPU {cpu} stopped unexpectedly")]
    ExecutorLost { cpu: usize },
}
