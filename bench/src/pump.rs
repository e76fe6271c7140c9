//! The well-behaved pages' steady state on a few event-loop threads (epoll through `mio`)
//! instead of a thread each. A page's own thread does the upgrade and the hello, then hands its
//! WebSocket to a pump and ends. With a thread per page, every frame woke one thread to read
//! it and acknowledge it; at 500 sessions that was 10,000 wake-ups a second competing with the
//! gateway for the same two cores. A pump reads whatever is ready on all its pages per wake-up.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rdpwire::protocol::FromBrowser;
use tungstenite::{Message, WebSocket};

use crate::browsers::{Control, Env, Paced, PageState, Stats, PING_EVERY};

const WAKER: Token = Token(usize::MAX);
/// The longest a pump sleeps before it looks at the control flags and the ping timers.
const TICK: Duration = Duration::from_millis(100);

/// One page handed to a pump, after its upgrade and hello.
pub struct Page {
    pub ws: WebSocket<Paced>,
    pub stats: Arc<Stats>,
}

struct Live {
    ws: WebSocket<Paced>,
    stats: Arc<Stats>,
    next_ping: Instant,
    nonce: u64,
    page: PageState,
}

/// A pump thread.
pub struct Pump {
    adopter: Adopter,
    handle: Option<JoinHandle<()>>,
}

/// The way to hand a pump pages, from any thread.
#[derive(Clone)]
pub struct Adopter {
    tx: Sender<Page>,
    waker: Arc<Waker>,
}

impl Adopter {
    /// Hands a page to the pump; the page's socket must be non-blocking.
    pub fn adopt(&self, page: Page) -> Result<()> {
        self.tx
            .send(page)
            .map_err(|_| anyhow::anyhow!("the pump has stopped"))?;
        self.waker.wake()?;
        Ok(())
    }
}

impl Pump {
    pub fn start(n: usize, env: Arc<Env>, ctl: Arc<Control>) -> Result<Pump> {
        let poll = Poll::new().context("creating a pump's epoll")?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("browser-pump-{n}"))
            .spawn(move || run(poll, rx, &env, &ctl))
            .context("starting a pump thread")?;
        Ok(Pump {
            adopter: Adopter { tx, waker },
            handle: Some(handle),
        })
    }

    pub fn adopter(&self) -> Adopter {
        self.adopter.clone()
    }

    /// Waits for the pump to close its pages (after `Control::stop`).
    pub fn join(&mut self) {
        let _ = self.adopter.waker.wake();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(mut poll: Poll, rx: Receiver<Page>, env: &Env, ctl: &Control) {
    let mut events = Events::with_capacity(256);
    let mut pages: HashMap<usize, Live> = HashMap::new();
    let mut next_token = 0usize;
    let mut last_sweep = Instant::now();
    while !ctl.stop.load(Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(TICK)) {
            if e.kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        for ev in &events {
            if ev.token() == WAKER {
                continue;
            }
            let id = ev.token().0;
            let Some(live) = pages.get_mut(&id) else {
                continue;
            };
            if let Err(e) = service(live, env, ctl) {
                end(&mut poll, &mut pages, id, Some(e), ctl);
            }
        }
        while let Ok(page) = rx.try_recv() {
            let id = next_token;
            next_token += 1;
            let fd = page.ws.get_ref().inner.as_raw_fd();
            let registered = poll.registry().register(
                &mut SourceFd(&fd),
                Token(id),
                Interest::READABLE | Interest::WRITABLE,
            );
            let mut live = Live {
                ws: page.ws,
                stats: page.stats,
                next_ping: Instant::now() + PING_EVERY,
                nonce: 0,
                page: PageState::default(),
            };
            if let Err(e) = registered {
                live.stats
                    .fail(format!("registering a page with its pump: {e}"));
                live.stats.ended.store(true, Relaxed);
                continue;
            }
            // Whatever arrived before registration is read now: epoll reports edges only.
            let first = service(&mut live, env, ctl);
            pages.insert(id, live);
            if let Err(e) = first {
                end(&mut poll, &mut pages, id, Some(e), ctl);
            }
        }
        if last_sweep.elapsed() >= TICK {
            last_sweep = Instant::now();
            let due: Vec<usize> = pages
                .iter()
                .filter(|(_, l)| Instant::now() >= l.next_ping)
                .map(|(&id, _)| id)
                .collect();
            for id in due {
                let Some(live) = pages.get_mut(&id) else {
                    continue;
                };
                live.nonce += 1;
                live.next_ping += PING_EVERY;
                let ping = FromBrowser::Ping { nonce: live.nonce };
                if let Err(e) = send(&mut live.ws, &ping) {
                    end(&mut poll, &mut pages, id, Some(e), ctl);
                }
            }
        }
    }
    let ids: Vec<usize> = pages.keys().copied().collect();
    for id in ids {
        end(&mut poll, &mut pages, id, None, ctl);
    }
}

/// Removes a page: closes its WebSocket, records why it ended unless the harness stopped it.
fn end(
    poll: &mut Poll,
    pages: &mut HashMap<usize, Live>,
    id: usize,
    why: Option<anyhow::Error>,
    ctl: &Control,
) {
    let Some(mut live) = pages.remove(&id) else {
        return;
    };
    let fd = live.ws.get_ref().inner.as_raw_fd();
    let _ = poll.registry().deregister(&mut SourceFd(&fd));
    if let Some(e) = why {
        if !ctl.stop.load(Relaxed) {
            live.stats.fail(format!("{e:#}"));
        }
    }
    let _ = live.ws.close(None);
    let _ = live.ws.flush();
    live.stats.ended.store(true, Relaxed);
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

/// Sends a message; a full socket leaves it in tungstenite's buffer for the next flush.
fn send(ws: &mut WebSocket<Paced>, m: &FromBrowser) -> Result<()> {
    match ws.send(Message::binary(m.encode())) {
        Ok(()) => Ok(()),
        Err(e) if would_block(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads everything the page's socket holds, acknowledging frames as the page does.
fn service(live: &mut Live, env: &Env, ctl: &Control) -> Result<()> {
    match live.ws.flush() {
        Ok(()) => {}
        Err(e) if would_block(&e) => {}
        Err(e) => return Err(e.into()),
    }
    loop {
        let msg = match live.ws.read() {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Close(f)) => bail!("closed by the gateway: {f:?}"),
            Ok(_) => continue,
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if let Some(ack) = live.page.on_message(env, ctl, &live.stats, true, &msg)? {
            send(&mut live.ws, &ack)?;
        }
    }
}
