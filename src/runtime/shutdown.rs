//! A per-core "stop now" signal that any number of tasks can wait on without polling.

use std::cell::Cell;
use std::rc::Rc;

use event_listener::Event;

#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    set: Cell<bool>,
    event: Event,
}

impl Shutdown {
    pub fn trigger(&self) {
        self.inner.set.set(true);
        self.inner.event.notify(usize::MAX);
    }

    pub fn is_set(&self) -> bool {
        self.inner.set.get()
    }

    pub async fn wait(&self) {
        loop {
            if self.is_set() {
                return;
            }
            let listener = self.inner.event.listen();
            if self.is_set() {
                return;
            }
            listener.await;
        }
    }
}

/// Counts live tasks of one kind and lets the executor wait until none is left.
#[derive(Clone, Default)]
pub struct TaskCount {
    inner: Rc<CountInner>,
}

#[derive(Default)]
struct CountInner {
    n: Cell<usize>,
    event: Event,
}

/// Decrements its count when dropped, however the task ends.
pub struct TaskGuard {
    inner: Rc<CountInner>,
}

impl TaskCount {
    pub fn enter(&self) -> TaskGuard {
        self.inner.n.set(self.inner.n.get() + 1);
        TaskGuard {
            inner: self.inner.clone(),
        }
    }

    pub fn get(&self) -> usize {
        self.inner.n.get()
    }

    pub async fn until_zero(&self) {
        loop {
            if self.get() == 0 {
                return;
            }
            let l = self.inner.event.listen();
            if self.get() == 0 {
                return;
            }
            l.await;
        }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.inner.n.set(self.inner.n.get().saturating_sub(1));
        self.inner.event.notify(usize::MAX);
    }
}
