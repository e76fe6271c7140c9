//! Resuming a session from a new WebSocket, sans-IO: the secret ticket a page gets when its
//! desktop is up, the request a reloaded page makes, and where that request must go.
//!
//! A page that loses its WebSocket (a reload, a dropped network) may come back within the
//! grace period (`--session-grace`) and take over the still-running RDP connection. It opens
//! `/ws?resume=SESSION_ID` (the id is not secret; it routes the connection to the core that
//! owns the session before the upgrade) and sends the ticket as its first message, so the
//! secret never appears in a URL, a request log or a proxy's access log.

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Bytes of a resume ticket: 256 random bits.
pub const TICKET_LEN: usize = 32;

/// The query parameter of `/ws` that asks to resume a session.
pub const RESUME_PARAM: &str = "resume";

/// A session's resume ticket: random, compared in constant time, wiped when dropped, never
/// printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket([u8; TICKET_LEN]);

impl Ticket {
    /// A fresh ticket from the operating system's random source; `None` if it failed (the
    /// session then simply cannot be resumed).
    pub fn generate() -> Option<Ticket> {
        let mut bytes = [0u8; TICKET_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).ok()?;
        Some(Ticket(bytes))
    }

    /// The ticket a page presented.
    pub fn from_bytes(bytes: [u8; TICKET_LEN]) -> Ticket {
        Ticket(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; TICKET_LEN] {
        &self.0
    }

    /// True when `presented` is this ticket; the time taken does not depend on where they
    /// differ, so the ticket cannot be guessed byte by byte.
    pub fn matches(&self, presented: &Ticket) -> bool {
        self.0.ct_eq(&presented.0).into()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket(<redacted>)")
    }
}

/// The core index a session id names: ids carry their core in the top 16 bits
/// (`Session::start`).
pub fn core_of(session_id: u64) -> usize {
    usize::from((session_id >> 48) as u16)
}

/// The session a `/ws` query asks to resume: `resume=ID` (decimal), among other parameters.
/// `Err` with the reason for a malformed id.
pub fn requested(query: Option<&str>) -> Result<Option<u64>, String> {
    let Some(query) = query else {
        return Ok(None);
    };
    for pair in query.split('&') {
        if let Some(value) = pair
            .strip_prefix(RESUME_PARAM)
            .and_then(|v| v.strip_prefix('='))
        {
            return value
                .parse::<u64>()
                .map(Some)
                .map_err(|_| "the resume parameter must be a session id (decimal)".to_owned());
        }
    }
    Ok(None)
}

/// Why a resume was refused, in words for the close frame and the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such session on its core: it ended, or its grace period ran out.
    Gone,
    /// The session exists but the ticket is not its ticket.
    WrongTicket,
    /// The session runs on a core that cannot be reached (it stopped, or the id names no core).
    NoCore,
    /// The page sent something other than a Resume first.
    NoTicket,
    /// The session id in the message is not the one the URL named.
    Mismatch,
}

impl Refusal {
    pub fn reason(self, session_id: u64) -> String {
        match self {
            Refusal::Gone => format!(
                "session {session_id} cannot be resumed: it has ended (its grace period ran out or the desktop closed)"
            ),
            Refusal::WrongTicket => {
                format!("session {session_id} cannot be resumed: the resume ticket is not valid")
            }
            Refusal::NoCore => {
                format!("session {session_id} cannot be resumed: its gateway core is not running")
            }
            Refusal::NoTicket => format!(
                "session {session_id} cannot be resumed: the first message was not a Resume"
            ),
            Refusal::Mismatch => format!(
                "session {session_id} cannot be resumed: the Resume message names another session"
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_random_compared_whole_and_never_printed() {
        let a = Ticket::generate().unwrap();
        let b = Ticket::generate().unwrap();
        assert!(a.matches(&a.clone()));
        assert!(!a.matches(&b));
        let mut near = *a.as_bytes();
        near[TICKET_LEN - 1] ^= 1;
        assert!(!a.matches(&Ticket::from_bytes(near)));
        assert_eq!(format!("{a:?}"), "Ticket(<redacted>)");
    }

    #[test]
    fn the_query_names_the_session_and_its_core() {
        assert_eq!(requested(None), Ok(None));
        assert_eq!(requested(Some("target=office")), Ok(None));
        let id = (1u64 << 48) | 7;
        assert_eq!(
            requested(Some(&format!("target=x&resume={id}"))),
            Ok(Some(id))
        );
        assert!(requested(Some("resume=abc")).is_err());
        assert_eq!(core_of(id), 1);
        assert_eq!(core_of(7), 0);
    }
}
