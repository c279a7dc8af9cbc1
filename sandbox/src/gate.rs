//! A gate a test opens by hand: a request held at a gate stays in flight for exactly as long
//! as the test needs, instead of for a delay that a loaded machine may outrun.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// Closed until [`Gate::open`]; then open for good. Clones share the gate.
#[derive(Clone, Debug)]
pub struct Gate {
    open: Arc<watch::Sender<bool>>,
    waiting: Arc<AtomicUsize>,
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self { open: Arc::new(watch::Sender::new(false)), waiting: Arc::default() }
    }

    /// How many requests are held at the gate right now: a test waits for this to know a
    /// request got as far as the gate (a transaction holding its Idempotency-Key, say).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Opens the gate: every request waiting at it goes on, and later ones pass at once.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    pub fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// Resolves once the gate is open.
    pub(crate) async fn passed(&self) {
        /// Counts a waiter for as long as it waits, even if its request is dropped.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let mut open = self.open.subscribe();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        // The sender lives in `self`, so `wait_for` cannot fail for a closed channel.
        let _ = open.wait_for(|open| *open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// Two handles are equal when they are the same gate.
impl PartialEq for Gate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.open, &other.open)
    }
}

impl Eq for Gate {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_passes_only_once_the_gate_opens() {
        let gate = Gate::new();
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.passed().await }
        });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished());
        gate.open();
        waiter.await.unwrap();
        assert_eq!(gate.waiting(), 0);
        assert!(gate.is_open());
        gate.passed().await;
        assert_eq!(gate, gate.clone());
        assert_ne!(gate, Gate::new());
    }
}
