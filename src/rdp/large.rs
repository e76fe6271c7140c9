//! The per-core budget for large graphics messages.
//!
//! A key frame arrives as one dynamic-channel message of up to `--max-dvc-message` bytes; while
//! it is reassembled, decompressed and encoded for the page it briefly exists several times on
//! the heap, and the last copy stays until the page has taken it. A session's share of the
//! arena cannot hold that, and budgeting it for every session would cost each one megabytes
//! it almost never uses. Instead the sessions of one core draw on one fixed budget: a session
//! whose server starts a large message takes a permit for its cost first, and until it gets
//! one the gateway stops reading that server (TCP holds the rest back). So the heap held by
//! large messages never exceeds the budget, whatever the servers send. One message always
//! fits: the budget is at least the cost of the largest one, and an empty budget grants any.
//! The sessions of one core share it; it is never shared across cores.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use event_listener::{Event, EventListener};

/// Copies of a large message on the heap at its peak: the reassembly buffer, IronRDP's copy of
/// it, the decompressed access unit and the message for the page.
pub const COPIES: usize = 4;

#[derive(Debug)]
struct Inner {
    capacity: usize,
    used: AtomicUsize,
    freed: Event,
    waits: AtomicU64,
}

/// One core's budget; clones share it. Only the sessions of one core use it; it is `Send`
/// (atomics, never contended) because IronRDP's channel processors must be.
#[derive(Debug, Clone)]
pub struct LargeBudget {
    inner: Arc<Inner>,
}

impl LargeBudget {
    pub fn new(capacity: usize) -> Self {
        LargeBudget {
            inner: Arc::new(Inner {
                capacity,
                used: AtomicUsize::new(0),
                freed: Event::new(),
                waits: AtomicU64::new(0),
            }),
        }
    }

    /// A permit for `bytes`, if the budget has room now (an empty budget always has).
    pub fn try_take(&self, bytes: usize) -> Option<LargePermit> {
        let capacity = self.inner.capacity;
        self.inner
            .used
            .fetch_update(Relaxed, Relaxed, |used| {
                (used == 0 || used.saturating_add(bytes) <= capacity)
                    .then(|| used.saturating_add(bytes))
            })
            .ok()?;
        Some(LargePermit {
            inner: Arc::clone(&self.inner),
            bytes,
        })
    }

    /// Waits until a permit for `bytes` is granted.
    pub async fn take(&self, bytes: usize) -> LargePermit {
        loop {
            if let Some(p) = self.try_take(bytes) {
                return p;
            }
            let listener: EventListener = self.inner.freed.listen();
            // Freed between the try and the listen: try again before sleeping.
            if let Some(p) = self.try_take(bytes) {
                return p;
            }
            self.inner.waits.fetch_add(1, Relaxed);
            listener.await;
        }
    }

    pub fn used(&self) -> usize {
        self.inner.used.load(Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Times a session had to wait for room, since the last call.
    pub fn take_waits(&self) -> u64 {
        self.inner.waits.swap(0, Relaxed)
    }
}

/// Room in the budget, given back on drop.
#[derive(Debug)]
pub struct LargePermit {
    inner: Arc<Inner>,
    bytes: usize,
}

impl LargePermit {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps only `bytes` of the permit (the message's transient copies are gone).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            let freed = self.bytes - bytes;
            self.bytes = bytes;
            self.inner.used.fetch_sub(freed, Relaxed);
            self.inner.freed.notify(usize::MAX);
        }
    }
}

impl Drop for LargePermit {
    fn drop(&mut self) {
        self.inner.used.fetch_sub(self.bytes, Relaxed);
        self.inner.freed.notify(usize::MAX);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn permits_stay_within_the_budget_and_one_always_fits() {
        let b = LargeBudget::new(100);
        let big = b.try_take(250).unwrap();
        assert!(b.try_take(1).is_none(), "an empty budget grants any one");
        drop(big);
        let mut a = b.try_take(60).unwrap();
        assert!(b.try_take(50).is_none());
        let c = b.try_take(40).unwrap();
        assert_eq!(b.used(), 100);
        a.shrink_to(10);
        assert_eq!(b.used(), 50);
        let d = b.try_take(50).unwrap();
        drop((a, c, d));
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_waiter_gets_its_permit_when_room_is_freed() {
        use std::future::Future;
        let b = LargeBudget::new(100);
        let held = b.try_take(80).unwrap();
        let mut wait = Box::pin(b.take(50));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        drop(held);
        let std::task::Poll::Ready(p) = wait.as_mut().poll(&mut cx) else {
            panic!("not granted after the room was freed");
        };
        assert_eq!(p.bytes(), 50);
        assert_eq!(b.take_waits(), 1);
    }
}
