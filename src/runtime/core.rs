//! One executor: its arena, its listener, its sessions. Nothing here is shared with another
//! core except the telemetry counters it writes, the token redeemer, whose lock is taken
//! once per session start, and the table of client addresses, whose lock is taken once per
//! upgrade and once per session end.

use std::cell::{Cell, RefCell};
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

use glommio::channels::shared_channel::{ConnectedSender, SharedReceiver, SharedSender};

use super::reattach::{Handoff, Table};
use super::shutdown::{Shutdown, TaskCount};
use super::{accept, connection};

/// How long sessions get to finish their close handshake once the executor stops.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// State of one executor, shared by its tasks through `Rc` (never across threads).
pub struct Core {
    pub index: usize,
    /// Executors in the process.
    pub cores: usize,
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
    /// Sessions on this core that a new page may resume.
    pub resumable: Table,
    /// Connections for sessions on other cores go there through these, by core index
    /// (`None` for this core, and for a core not connected yet).
    pub handoff: RefCell<Vec<Option<ConnectedSender<Handoff>>>>,
}

/// The ends of the hand-off channels an executor owns: one sender to every other core, one
/// receiver from every other core.
pub struct HandoffEnds {
    pub senders: Vec<(usize, SharedSender<Handoff>)>,
    pub receivers: Vec<SharedReceiver<Handoff>>,
}

impl HandoffEnds {
    /// Every executor's ends, indexed by core: a channel per ordered pair of cores.
    pub fn mesh(cores: usize) -> Vec<HandoffEnds> {
        let mut ends: Vec<HandoffEnds> = (0..cores)
            .map(|_| HandoffEnds {
                senders: Vec::new(),
                receivers: Vec::new(),
            })
            .collect();
        for from in 0..cores {
            for to in 0..cores {
                if from == to {
                    continue;
                }
                let (tx, rx) =
                    glommio::channels::shared_channel::new_bounded(super::reattach::HANDOFF_QUEUE);
                if let Some(e) = ends.get_mut(from) {
                    e.senders.push((to, tx));
                }
                if let Some(e) = ends.get_mut(to) {
                    e.receivers.push(rx);
                }
            }
        }
        ends
    }
}

impl Core {
    /// Accepts until the supervisor stops the listener, then closes what is left.
    pub async fn run(
        self: Rc<Self>,
        listener: Arc<TcpListener>,
        stopping: Arc<std::sync::atomic::AtomicBool>,
        ends: HandoffEnds,
    ) {
        info!(
            cpu = self.cpu,
            capacity = self.capacity,
            "executor accepting"
        );
        let connections = TaskCount::default();
        self.connect_handoffs(ends, &connections);
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
        // Nothing more crosses to this core; senders elsewhere see the channels closed.
        self.handoff.borrow_mut().clear();
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

impl Core {
    /// Connects this core's ends of the hand-off channels. A connection waits for the other
    /// core to connect its end, so each runs in its own task and accepting starts at once; a
    /// resume for a core not yet connected is refused with a reason.
    fn connect_handoffs(self: &Rc<Self>, ends: HandoffEnds, connections: &TaskCount) {
        for (to, sender) in ends.senders {
            let core = self.clone();
            glommio::spawn_local(async move {
                let sender = sender.connect().await;
                let mut table = core.handoff.borrow_mut();
                if table.len() <= to {
                    table.resize_with(to + 1, || None);
                }
                if let Some(slot) = table.get_mut(to) {
                    *slot = Some(sender);
                }
            })
            .detach();
        }
        for receiver in ends.receivers {
            let core = self.clone();
            let connections = connections.clone();
            glommio::spawn_local(async move {
                let receiver = receiver.connect().await;
                loop {
                    let next = futures_lite::future::or(receiver.recv(), async {
                        core.shutdown.wait().await;
                        None
                    })
                    .await;
                    let Some(handoff) = next else { break };
                    let guard = connections.enter();
                    let core = core.clone();
                    glommio::spawn_local(async move {
                        connection::handle_handoff(core, handoff).await;
                        drop(guard);
                    })
                    .detach();
                }
            })
            .detach();
        }
    }
}
