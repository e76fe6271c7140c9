//! One executor: its arena, its listener, its sessions. Nothing here is shared with another
//! core except the telemetry counters it writes, the token redeemer, whose lock is taken
//! once per session start, and the table of client addresses, whose lock is taken once per
//! upgrade and once per session end.

use std::cell::Cell;
use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use arena::Arena;
use futures_util::FutureExt;
use tracing::{debug, error, info, warn};

use crate::config::Settings;
use crate::telemetry::{CoreCounters, Telemetry};

use super::shutdown::{Shutdown, TaskCount};
use super::{accept, connection};

/// How long sessions get to finish their close handshake once the executor stops.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// State of one executor, shared by its tasks through `Rc` (never across threads).
pub struct Core {
    pub index: usize,
    pub cpu: usize,
    pub arena: Arena,
    pub settings: Arc<Settings>,
    pub telemetry: Arc<Telemetry>,
    pub counters: Arc<CoreCounters>,
    pub shutdown: Shutdown,
    pub sessions: TaskCount,
    pub pending_http: Cell<usize>,
    /// Sessions this core admits; the arena is sized for exactly this many.
    pub capacity: usize,
    /// The budget its sessions' large graphics messages share.
    pub large: crate::rdp::large::LargeBudget,
    /// Opens connection tokens; one for the process (its replay table must be one table).
    /// `None` when no token keys are configured.
    pub tokens: Option<Arc<crate::token::Redeemer>>,
    /// Limits per client address; one table for the process (a client's connections reach
    /// every core). `None` when both limits are off.
    pub clients: Option<Arc<crate::limits::ClientLimits>>,
}

impl Core {
    /// Accepts until the supervisor stops the listener, then closes what is left.
    pub async fn run(
        self: Rc<Self>,
        listener: Arc<TcpListener>,
        stopping: Arc<std::sync::atomic::AtomicBool>,
    ) {
        info!(
            cpu = self.cpu,
            capacity = self.capacity,
            "executor accepting"
        );
        let connections = TaskCount::default();
        loop {
            let l = listener.clone();
            let accepted = glommio::executor().spawn_blocking(move || l.accept()).await;
            match accepted {
                Ok((stream, peer)) => {
                    if let Err(err) = accept::prepare(&stream) {
                        debug!(%peer, %err, "dropping connection: socket options failed");
                        continue;
                    }
                    let core = self.clone();
                    let guard = connections.enter();
                    glommio::spawn_local(async move {
                        // A session's own loop catches its panics and closes with 1011
                        // (`websocket.rs`); this is the backstop for the rest of the
                        // connection (HTTP, the upgrade), so no bug in one connection's task
                        // unwinds into the executor. Unwinding drops what the task held.
                        let cpu = core.cpu;
                        let counters = core.counters.clone();
                        let handled = AssertUnwindSafe(connection::handle(core, stream, peer))
                            .catch_unwind()
                            .await;
                        if handled.is_err() {
                            CoreCounters::inc(&counters.connections_panicked);
                            error!(cpu, %peer, "connection task panicked; its socket is closed, the executor runs on");
                        }
                        drop(guard);
                    })
                    .detach();
                }
                Err(_) if stopping.load(Relaxed) => break,
                Err(err) => {
                    // Out of descriptors or a transient network error: back off instead of spinning.
                    warn!(cpu = self.cpu, %err, "accept failed");
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        self.shutdown.trigger();
        let closed = futures_lite::future::or(
            async {
                connections.until_zero().await;
                true
            },
            async {
                glommio::timer::sleep(CLOSE_GRACE).await;
                false
            },
        )
        .await;
        info!(
            cpu = self.cpu,
            left = self.counters.sessions_active.load(Relaxed),
            clean = closed,
            "executor stopped"
        );
    }
}
