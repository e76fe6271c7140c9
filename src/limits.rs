//! Limits per client address: WebSocket upgrades a second and sessions at once.
//!
//! Executors accept by `SO_REUSEPORT` hash, so one client's connections land on every core and
//! a per-core count would allow cores × the limit. The count is therefore one table for the
//! process behind one `Mutex`, taken twice per session and never while it runs: once at the
//! upgrade (the rate and the admission in one look-up) and once when the session ends.
//!
//! IPv6 clients are counted per /64, the block a single host or home network usually gets, so
//! one machine cannot dodge the limits by hopping addresses inside its own prefix.
//!
//! The table is allocated once at its full size: one entry per session the memory budget
//! admits (an address holding a session has an entry) plus [`RATE_ONLY_ENTRIES`] for
//! addresses that upgraded within the last second without a session now. When it is full of
//! the latter, the oldest is forgotten first, so an address with sessions always finds room.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Entries kept for addresses that hold no session but upgraded within the last second.
pub const RATE_ONLY_ENTRIES: usize = 4096;

/// Heap per entry, a ceiling: a hashbrown bucket is the 16-byte key and the 32-byte entry plus
/// one control byte, and a table sized for `n` entries has fewer than `2 × 8/7 × n` buckets.
pub const ENTRY_BYTES: u64 = 112;

/// What the table costs: a fixed part in the base, and one entry per admitted session.
pub fn table_bytes(sessions: usize) -> u64 {
    (sessions + RATE_ONLY_ENTRIES) as u64 * ENTRY_BYTES
}

/// Upgrades are counted in a token bucket that refills at the limit per second and holds one
/// second's worth, so a page reloading a few times is never refused, a loop is.
const WINDOW: Duration = Duration::from_secs(1);
/// Bucket units per upgrade: fractions of an upgrade refill between whole ones.
const UNIT: u64 = 1000;

/// The address a limit counts: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4([u8; 4]),
    V6Net(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(v4.octets()),
            IpAddr::V6(v6) => ClientKey::V6Net((u128::from(v6) >> 64) as u64),
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ClientKey::V4(o) => write!(f, "{}", std::net::Ipv4Addr::from(o)),
            ClientKey::V6Net(net) => {
                write!(f, "{}/64", std::net::Ipv6Addr::from(u128::from(net) << 64))
            }
        }
    }
}

/// Why an upgrade was refused; the text is the 429 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("too many upgrades: more than {limit} WebSocket upgrades a second from {client}; retry in a second")]
    Upgrades { limit: u32, client: ClientKey },
    #[error("too many sessions: {client} already has {limit} sessions on this gateway (the limit per client address); close one first")]
    Sessions { limit: u32, client: ClientKey },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Bucket fill in `UNIT`s, as of `at`.
    tokens: u64,
    at: Instant,
    sessions: u32,
}

struct Table {
    entries: HashMap<ClientKey, Entry>,
    capacity: usize,
}

/// The process's one table of client addresses. `None` where both limits are 0 (off).
pub struct ClientLimits {
    upgrades_per_second: u32,
    sessions: u32,
    table: Mutex<Table>,
}

impl fmt::Debug for ClientLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLimits")
            .field("upgrades_per_second", &self.upgrades_per_second)
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

/// A session counted against its address; dropping it (however the session ends) gives the
/// count back.
#[derive(Debug)]
pub struct ClientSlot {
    limits: Arc<ClientLimits>,
    key: ClientKey,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut t = self.limits.lock();
        if let Some(e) = t.entries.get_mut(&self.key) {
            e.sessions = e.sessions.saturating_sub(1);
        }
    }
}

impl ClientLimits {
    /// Both limits, 0 meaning off; `None` when both are off. `max_sessions` is the gateway's
    /// session cap, which bounds the addresses that can hold a session.
    pub fn new(
        upgrades_per_second: u32,
        sessions: u32,
        max_sessions: usize,
    ) -> Option<Arc<ClientLimits>> {
        if upgrades_per_second == 0 && sessions == 0 {
            return None;
        }
        let capacity = max_sessions + RATE_ONLY_ENTRIES;
        Some(Arc::new(ClientLimits {
            upgrades_per_second,
            sessions,
            table: Mutex::new(Table {
                entries: HashMap::with_capacity(capacity),
                capacity,
            }),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing under this lock can panic half-way through an update.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one upgrade from `ip` and, if both limits allow it, one session: the slot is
    /// held until the session ends (or the upgrade goes no further).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<ClientSlot, LimitError> {
        let key = ClientKey::of(ip);
        let full = u64::from(self.upgrades_per_second) * UNIT;
        let mut t = self.lock();
        if !t.entries.contains_key(&key) && t.entries.len() >= t.capacity {
            t.make_room(now);
        }
        let e = t.entries.entry(key).or_insert(Entry {
            tokens: full,
            at: now,
            sessions: 0,
        });
        if self.upgrades_per_second > 0 {
            let elapsed = now.saturating_duration_since(e.at).as_millis() as u64;
            let refill = elapsed.saturating_mul(u64::from(self.upgrades_per_second));
            e.tokens = e.tokens.saturating_add(refill).min(full);
            e.at = now;
            if e.tokens < UNIT {
                return Err(LimitError::Upgrades {
                    limit: self.upgrades_per_second,
                    client: key,
                });
            }
            e.tokens -= UNIT;
        }
        if self.sessions > 0 && e.sessions >= self.sessions {
            return Err(LimitError::Sessions {
                limit: self.sessions,
                client: key,
            });
        }
        e.sessions += 1;
        Ok(ClientSlot {
            limits: self.clone(),
            key,
        })
    }

    /// Sessions counted for `ip` now (for tests and diagnostics).
    pub fn sessions_of(&self, ip: IpAddr) -> u32 {
        self.lock()
            .entries
            .get(&ClientKey::of(ip))
            .map_or(0, |e| e.sessions)
    }

    /// Addresses in the table now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Table {
    /// Forgets addresses without sessions whose bucket is full again (nothing to remember);
    /// if none is, the one without sessions heard from longest ago. Runs only when the table
    /// is full, walking it under the lock.
    fn make_room(&mut self, now: Instant) {
        self.entries
            .retain(|_, e| e.sessions > 0 || now.saturating_duration_since(e.at) < WINDOW);
        if self.entries.len() < self.capacity {
            return;
        }
        let oldest = self
            .entries
            .iter()
            .filter(|(_, e)| e.sessions == 0)
            .min_by_key(|(_, e)| e.at)
            .map(|(k, _)| *k);
        if let Some(k) = oldest {
            self.entries.remove(&k);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn upgrades_beyond_the_rate_are_refused_until_the_bucket_refills() {
        let l = ClientLimits::new(3, 0, 10).unwrap();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let slots: Vec<_> = (0..3).map(|_| l.admit(a, t0).unwrap()).collect();
        let e = l.admit(a, t0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "too many upgrades: more than 3 WebSocket upgrades a second from 192.0.2.1; retry in a second"
        );
        // Another address has its own bucket.
        assert!(l.admit(ip("192.0.2.2"), t0).is_ok());
        // A third of a second refills one upgrade.
        assert!(l.admit(a, t0 + Duration::from_millis(200)).is_err());
        assert!(l.admit(a, t0 + Duration::from_millis(340)).is_ok());
        assert!(l.admit(a, t0 + Duration::from_millis(340)).is_err());
        drop(slots);
    }

    #[test]
    fn sessions_beyond_the_limit_are_refused_until_one_ends() {
        let l = ClientLimits::new(0, 2, 10).unwrap();
        let t = Instant::now();
        let a = ip("::ffff:198.51.100.7");
        let one = l.admit(a, t).unwrap();
        let _two = l.admit(ip("198.51.100.7"), t).unwrap();
        assert_eq!(l.sessions_of(a), 2);
        let e = l.admit(a, t).unwrap_err();
        assert_eq!(
            e,
            LimitError::Sessions {
                limit: 2,
                client: ClientKey::V4([198, 51, 100, 7])
            }
        );
        assert!(e
            .to_string()
            .contains("198.51.100.7 already has 2 sessions"));
        drop(one);
        assert_eq!(l.sessions_of(a), 1);
        assert!(l.admit(a, t).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let l = ClientLimits::new(0, 1, 10).unwrap();
        let t = Instant::now();
        let _s = l.admit(ip("2001:db8:1:2::1"), t).unwrap();
        let e = l.admit(ip("2001:db8:1:2:ffff::9"), t).unwrap_err();
        assert!(
            e.to_string().contains("2001:db8:1:2::/64 already has 1"),
            "{e}"
        );
        assert!(l.admit(ip("2001:db8:1:3::1"), t).is_ok());
    }

    #[test]
    fn both_off_is_no_table() {
        assert!(ClientLimits::new(0, 0, 10).is_none());
    }

    #[test]
    fn the_table_never_grows_and_addresses_with_sessions_keep_their_entries() {
        let l = ClientLimits::new(1000, 1, 2).unwrap();
        let cap = 2 + RATE_ONLY_ENTRIES;
        let t = Instant::now();
        let held = [
            l.admit(ip("10.0.0.1"), t).unwrap(),
            l.admit(ip("10.0.0.2"), t).unwrap(),
        ];
        // Many addresses that upgrade and leave at once.
        for i in 0..(cap as u32 + 50) {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            drop(l.admit(a, t).unwrap());
            assert!(l.len() <= cap);
        }
        assert_eq!(l.sessions_of(ip("10.0.0.1")), 1);
        assert!(l.admit(ip("10.0.0.1"), t).is_err());
        drop(held);
        assert_eq!(l.sessions_of(ip("10.0.0.2")), 0);
    }
}
