//! The main thread: starts one pinned executor per CPU, waits for signals, drains, stops.
//!
//! Executors talk to each other only to hand a resuming page's connection to the core that
//! runs its session (`reattach`; channels made here, one per ordered pair of cores). The main
//! thread reaches them only through what they already watch: the draining flag they read on
//! each upgrade, and their listeners, whose shutdown wakes the accept loop and ends the
//! executor.

use std::net::TcpListener;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arena::{Arena, ArenaConfig};
use glommio::{CpuSet, LocalExecutorBuilder, Placement, PoolPlacement};
use signal_hook::consts::{SIGINT, SIGTERM};
use tracing::{error, info};

use crate::config::Settings;
use crate::sizing::{Human, EXECUTOR_IO_MEMORY};
use crate::telemetry::Telemetry;

use super::core::Core;
use super::shutdown::{Shutdown, TaskCount};
use super::{accept, plan, RuntimeError};

/// How often the main thread looks at the session count while draining (only then).
const DRAIN_CHECK: Duration = Duration::from_millis(50);
/// How long stopped executors get to close their sessions before the process exits anyway.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Exit status when a second signal cuts the drain short.
pub const EXIT_FORCED: i32 = 130;

enum Note {
    Ready,
    Failed(RuntimeError),
    Exited(usize),
    Signal(i32),
}

/// Runs the gateway until a signal and a drain complete. `on_listening` gets the bound
/// address once every executor accepts (the demo uses it to print the URL).
pub fn serve(
    mut settings: Settings,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(), RuntimeError> {
    let plan = plan(&settings)?;
    let sizing = &plan.sizing;
    let telemetry = Arc::new(Telemetry::new(
        &plan.cpus,
        sizing.budget,
        sizing.base.total(),
        sizing.per_session.total(),
    ));
    for line in plan.summary().lines() {
        info!("{line}");
    }
    info!(
        budget = sizing.budget,
        base = sizing.base.total(),
        per_session = sizing.per_session.total(),
        max_sessions = sizing.max_sessions,
        executors = plan.cpus.len(),
        "memory plan"
    );

    let listeners = accept::bind_all(settings.listen, plan.cpus.len(), &settings.sockets)?;
    let addr = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or(settings.listen);
    settings
        .target_policy
        .set_listeners(vec![accept::own_listener(addr)]);
    let tokens = crate::token::Redeemer::new(&settings.tokens)
        .map_err(RuntimeError::Tokens)?
        .map(Arc::new);
    // One table of client addresses for the process, like the token replay table: a client's
    // connections are spread over every core by the kernel.
    let clients = crate::limits::ClientLimits::new(
        settings.max_upgrades_per_ip,
        settings.max_sessions_per_ip,
        sizing.max_sessions,
    );
    let stopping = Arc::new(AtomicBool::new(false));
    let settings = Arc::new(settings);
    let (tx, rx) = mpsc::channel::<Note>();

    // A second SIGTERM/SIGINT while draining exits at once: registered before the flag so the
    // first signal only sets it.
    let forced = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, EXIT_FORCED, forced.clone())
            .map_err(RuntimeError::Signals)?;
        signal_hook::flag::register(sig, forced.clone()).map_err(RuntimeError::Signals)?;
    }
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(RuntimeError::Signals)?;
    let signal_handle = signals.handle();
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("rdpwire-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if tx.send(Note::Signal(sig)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|err| RuntimeError::Thread { cpu: 0, err })?;
    }

    let mut threads = Vec::new();
    let mut ends = super::core::HandoffEnds::mesh(plan.cpus.len()).into_iter();
    for (index, (&cpu, listener)) in plan.cpus.iter().zip(listeners.iter()).enumerate() {
        let Some(ends) = ends.next() else { break };
        let capacity = sizing.per_core.get(index).copied().unwrap_or(0);
        let spawn = spawn_executor(
            index,
            cpu,
            capacity,
            listener.clone(),
            settings.clone(),
            tokens.clone(),
            clients.clone(),
            telemetry.clone(),
            stopping.clone(),
            tx.clone(),
            ends,
        );
        match spawn {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop(&stopping, &listeners);
                return Err(e);
            }
        }
    }
    drop(tx);

    let mut ready = 0;
    let mut exited = 0;
    while ready < threads.len() {
        match rx.recv() {
            Ok(Note::Ready) => ready += 1,
            Ok(Note::Failed(err)) => {
                stop(&stopping, &listeners);
                return Err(err);
            }
            Ok(Note::Exited(index)) => {
                stop(&stopping, &listeners);
                let cpu = plan.cpus.get(index).copied().unwrap_or(index);
                return Err(RuntimeError::ExecutorLost { cpu });
            }
            Ok(Note::Signal(_)) | Err(_) => {
                stop(&stopping, &listeners);
                return Ok(());
            }
        }
    }
    info!(%addr, executors = threads.len(), "listening on {addr}");
    on_listening(addr);

    // Run until a signal, or until an executor dies (a bug: stop the rest, report it).
    let lost = loop {
        match rx.recv() {
            Ok(Note::Signal(sig)) => {
                info!(signal = sig, "signal received: draining");
                break None;
            }
            Ok(Note::Exited(index)) => break Some(plan.cpus.get(index).copied().unwrap_or(index)),
            Ok(_) => {}
            Err(_) => break Some(0),
        }
    };
    if let Some(cpu) = lost {
        error!(cpu, "executor stopped unexpectedly; stopping the gateway");
        stop(&stopping, &listeners);
        return Err(RuntimeError::ExecutorLost { cpu });
    }

    telemetry.start_draining();
    let deadline = Instant::now() + settings.drain_timeout;
    loop {
        let active = telemetry.sessions_active();
        if active == 0 {
            info!("drained: no sessions left");
            break;
        }
        if Instant::now() >= deadline {
            info!(active, timeout = ?settings.drain_timeout, "drain timeout: closing remaining sessions");
            break;
        }
        if let Ok(Note::Exited(_)) = rx.recv_timeout(DRAIN_CHECK) {
            exited += 1;
        }
    }
    stop(&stopping, &listeners);
    let stop_deadline = Instant::now() + STOP_GRACE;
    while exited < threads.len() {
        let left = stop_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Note::Exited(_)) => exited += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    signal_handle.close();
    info!(
        sessions_total = telemetry_total(&telemetry),
        "stopped; peak memory budget {}",
        Human(sizing.budget)
    );
    Ok(())
}

fn telemetry_total(t: &Telemetry) -> u64 {
    (0..t.executors())
        .filter_map(|i| t.core(i))
        .map(|c| c.sessions_total.load(Relaxed))
        .sum()
}

fn stop(stopping: &AtomicBool, listeners: &[Arc<TcpListener>]) {
    stopping.store(true, Relaxed);
    accept::stop_accepting(listeners);
}

#[allow(clippy::too_many_arguments)]
fn spawn_executor(
    index: usize,
    cpu: usize,
    capacity: usize,
    listener: Arc<TcpListener>,
    settings: Arc<Settings>,
    tokens: Option<Arc<crate::token::Redeemer>>,
    clients: Option<Arc<crate::limits::ClientLimits>>,
    telemetry: Arc<Telemetry>,
    stopping: Arc<AtomicBool>,
    tx: mpsc::Sender<Note>,
    ends: super::core::HandoffEnds,
) -> Result<std::thread::JoinHandle<()>, RuntimeError> {
    std::thread::Builder::new()
        .name(format!("rdpwire-cpu{cpu}"))
        .spawn(move || {
            // Tells the supervisor this executor is gone however the thread ends, panics
            // included, so it never waits on a dead core.
            let _exit = ExitNotice {
                index,
                tx: tx.clone(),
            };
            let built = std::panic::catch_unwind(|| build_executor(cpu));
            let ex = match built {
                Ok(Ok(ex)) => ex,
                Ok(Err(e)) => {
                    let _ = tx.send(Note::Failed(e));
                    return;
                }
                Err(payload) => {
                    let _ = tx.send(Note::Failed(RuntimeError::ExecutorPanicked {
                        cpu,
                        message: panic_message(&payload),
                    }));
                    return;
                }
            };
            let arena_cfg = ArenaConfig {
                frame_chunk: settings.pools.frame_chunk,
                surface_desc: settings.pools.surface_desc,
                audio_buf: settings.pools.audio_buf,
                sessions: capacity,
                prefault: settings.prefault,
                mlock: settings.mlock,
                huge_pages: settings.huge_pages,
            };
            let large_frames = settings.large_frames();
            let arena = match Arena::new(&arena_cfg) {
                Ok(a) => a,
                Err(err) => {
                    let _ = tx.send(Note::Failed(RuntimeError::Arena { cpu, err }));
                    return;
                }
            };
            telemetry.attach_arena(index, arena.stats());
            let Some(counters) = telemetry.core(index) else {
                let _ = tx.send(Note::Failed(RuntimeError::ExecutorLost { cpu }));
                return;
            };
            counters.sessions_capacity.store(capacity as u64, Relaxed);
            info!(
                cpu,
                capacity,
                arena = arena.region_bytes(),
                huge_pages = arena.huge_pages_active(),
                "executor started"
            );
            let core = Rc::new(Core {
                index,
                cores: ends.senders.len() + 1,
                cpu,
                arena,
                settings,
                telemetry,
                counters,
                shutdown: Shutdown::default(),
                sessions: TaskCount::default(),
                pending_http: std::cell::Cell::new(0),
                capacity,
                large: crate::rdp::large::LargeBudget::new(large_frames),
                tokens,
                clients,
                resumable: super::reattach::Table::default(),
                handoff: std::cell::RefCell::new(Vec::new()),
            });
            let _ = tx.send(Note::Ready);
            ex.run(core.run(listener, stopping, ends));
        })
        .map_err(|err| RuntimeError::Thread { cpu, err })
}

struct ExitNotice {
    index: usize,
    tx: mpsc::Sender<Note>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.tx.send(Note::Exited(self.index));
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// A pinned executor whose blocking pool (two threads: one accepts, one is free for other
/// blocking calls) runs on the same CPU.
fn build_executor(cpu: usize) -> Result<glommio::LocalExecutor, RuntimeError> {
    super::uring::preflight(cpu)?;
    let io_err = |detail: String| RuntimeError::IoUring { cpu, detail };
    let online =
        CpuSet::online().map_err(|e| io_err(format!("reading the CPU topology failed: {e}")))?;
    let mine = online.filter(|l| l.cpu == cpu);
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name(&format!("rdpwire-cpu{cpu}"))
        .io_memory(EXECUTOR_IO_MEMORY)
        .blocking_thread_pool_placement(PoolPlacement::Custom(vec![mine.clone(), mine]))
        .make()
        .map_err(|e| io_err(e.to_string()))
}
