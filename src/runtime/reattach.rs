//! Resuming sessions: the core's table of sessions a new WebSocket may take over, and the
//! hand-off of an accepted connection to the core that owns the session it asks for.
//!
//! A session never leaves its core. A reloaded page's connection, though, lands on whichever
//! core the kernel's `SO_REUSEPORT` hash picks. The session id names its core
//! (`resume::core_of`), so the accepting core, once it has read the request head and seen
//! `/ws?resume=ID` for another core, sends the connection itself — the socket and the bytes
//! already read — to the owning core over a glommio shared channel. The owning core finishes
//! the upgrade and hands the WebSocket to the session's task; only the browser's socket
//! moves, never a session, its arena share or its RDP connection.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use async_tungstenite::WebSocketStream;
use glommio::net::TcpStream;

use crate::resume::Ticket;

/// Connections waiting to cross from one core to another, per pair of cores. Resumes are
/// rare (a reload, a network change); a full channel answers 503 and the page retries.
pub const HANDOFF_QUEUE: usize = 8;

/// An accepted connection on its way to the core that owns the session it asks to resume.
pub struct Handoff {
    /// The socket, non-blocking; the accepting core closed its own descriptor of it.
    pub stream: std::net::TcpStream,
    /// Everything read from it so far: the request head and any bytes after it.
    pub bytes: Vec<u8>,
    pub peer: SocketAddr,
}

/// A WebSocket that presented the right ticket, for the session's task to take.
pub struct Arrival {
    pub ws: WebSocketStream<TcpStream>,
    pub peer: SocketAddr,
}

/// One session a new page may take over, in its core's table from the moment its page got
/// the ticket until the session ends.
pub struct Resumable {
    ticket: Ticket,
    incoming: RefCell<Option<Arrival>>,
    arrived: event_listener::Event,
}

impl Resumable {
    pub fn new(ticket: Ticket) -> Self {
        Resumable {
            ticket,
            incoming: RefCell::new(None),
            arrived: event_listener::Event::new(),
        }
    }

    /// True when `presented` is this session's ticket (constant time).
    pub fn accepts(&self, presented: &Ticket) -> bool {
        self.ticket.matches(presented)
    }

    /// Gives the session a new page. A page that arrives before the session took the last
    /// one replaces it: the newest page wins, as it would had it come a moment later.
    pub fn deliver(&self, arrival: Arrival) {
        *self.incoming.borrow_mut() = Some(arrival);
        self.arrived.notify(1);
    }

    /// The next page that resumes this session.
    pub async fn next_arrival(&self) -> Arrival {
        loop {
            let listener = self.arrived.listen();
            if let Some(a) = self.incoming.borrow_mut().take() {
                return a;
            }
            listener.await;
        }
    }
}

/// The core's resumable sessions by id.
#[derive(Default)]
pub struct Table {
    sessions: RefCell<std::collections::HashMap<u64, Rc<Resumable>>>,
}

impl Table {
    pub fn insert(&self, id: u64, r: Rc<Resumable>) {
        self.sessions.borrow_mut().insert(id, r);
    }

    pub fn remove(&self, id: u64) {
        self.sessions.borrow_mut().remove(&id);
    }

    pub fn get(&self, id: u64) -> Option<Rc<Resumable>> {
        self.sessions.borrow().get(&id).cloned()
    }
}
