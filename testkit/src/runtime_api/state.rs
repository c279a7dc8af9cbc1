//! The emulator's bookkeeping: the queue of invocations waiting for a poller,
//! and the invocations handed out that still await an outcome.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{oneshot, Notify};

use super::{EmulatorOptions, Invocation};

pub(super) struct State {
    pub(super) function_arn: String,
    pub(super) deadline: Mutex<Duration>,
    pub(super) invoke_wait: Mutex<Duration>,
    pub(super) init_errors: Mutex<Vec<Value>>,
    pub(super) counters: Counters,
    queue: Mutex<VecDeque<Queued>>,
    slots: Mutex<HashMap<String, Slot>>,
    /// Wakes parked pollers when an invocation is queued or the emulator closes.
    wake_pollers: Notify,
    closed: AtomicBool,
}

/// An invocation waiting for a poller.
pub(super) struct Queued {
    pub(super) request_id: String,
    pub(super) event: Value,
}

/// Lifecycle of one request id.
enum Slot {
    /// Queued or handed out; the sender resolves the caller's `invoke`.
    Waiting(oneshot::Sender<Invocation>),
    Answered,
    /// The caller stopped waiting (timed out or dropped the `invoke` future).
    Withdrawn,
}

/// What happened to a response or error a function posted.
pub(super) enum Completion {
    Accepted,
    AlreadyAnswered,
    Withdrawn,
    UnknownRequestId,
}

impl State {
    pub(super) fn new(options: &EmulatorOptions) -> State {
        State {
            function_arn: format!("arn:aws:lambda:us-east-1:123456789012:function:{}", options.function_name),
            deadline: Mutex::new(options.deadline),
            invoke_wait: Mutex::new(options.invoke_wait),
            init_errors: Mutex::default(),
            counters: Counters::default(),
            queue: Mutex::default(),
            slots: Mutex::default(),
            wake_pollers: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Queues `event` for the next poller.
    pub(super) fn enqueue(self: &Arc<Self>, event: Value) -> PendingInvocation {
        let request_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.slots.lock().unwrap().insert(request_id.clone(), Slot::Waiting(tx));
        self.queue.lock().unwrap().push_back(Queued { request_id: request_id.clone(), event });
        // Wake every parked poller; exactly one wins `pop_front`, the others
        // park again. Simpler to reason about than handing a permit to one
        // waiter whose HTTP connection may be gone.
        self.wake_pollers.notify_waiters();
        PendingInvocation { state: Arc::clone(self), request_id, outcome: rx }
    }

    /// Long-polls for the next queued invocation; `None` once the emulator
    /// is closed. Cancel-safe: an invocation is only taken when returned.
    pub(super) async fn next_invocation(&self) -> Option<Queued> {
        let _parked = self.counters.park();
        loop {
            // Register interest before checking the queue, so an enqueue
            // between the check and the await is not missed.
            let notified = self.wake_pollers.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(queued) = self.queue.lock().unwrap().pop_front() {
                self.counters.delivered.fetch_add(1, Ordering::SeqCst);
                return Some(queued);
            }
            notified.await;
            // A poller whose process was just killed is still parked until
            // hyper reads the EOF on its connection, and hyper only sees that
            // after the runtime polls its I/O driver. Yielding (tokio defers
            // the wake-up past the next driver poll) lets hyper cancel such a
            // dead poller before it can take, and lose, the invocation.
            tokio::task::yield_now().await;
        }
    }

    /// Records the function's outcome for `request_id`.
    pub(super) fn complete(&self, request_id: &str, outcome: Invocation) -> Completion {
        let mut slots = self.slots.lock().unwrap();
        let Some(slot) = slots.get_mut(request_id) else {
            return Completion::UnknownRequestId;
        };
        match std::mem::replace(slot, Slot::Answered) {
            Slot::Waiting(tx) => {
                // The caller may have given up this very instant; then the
                // outcome is simply dropped.
                let _ = tx.send(outcome);
                Completion::Accepted
            }
            Slot::Answered => Completion::AlreadyAnswered,
            Slot::Withdrawn => {
                *slot = Slot::Withdrawn;
                Completion::Withdrawn
            }
        }
    }

    fn withdraw(&self, request_id: &str) {
        self.queue.lock().unwrap().retain(|queued| queued.request_id != request_id);
        if let Some(slot) = self.slots.lock().unwrap().get_mut(request_id) {
            if matches!(slot, Slot::Waiting(_)) {
                *slot = Slot::Withdrawn;
            }
        }
    }

    /// Releases every parked poller and refuses new ones.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake_pollers.notify_waiters();
    }
}

/// The caller's side of a queued invocation. Dropping it withdraws the
/// invocation if it has no outcome yet.
pub(super) struct PendingInvocation {
    state: Arc<State>,
    request_id: String,
    outcome: oneshot::Receiver<Invocation>,
}

impl PendingInvocation {
    /// Resolves with the function's outcome (`None` if the emulator closed).
    pub(super) async fn outcome(&mut self) -> Option<Invocation> {
        (&mut self.outcome).await.ok()
    }
}

impl Drop for PendingInvocation {
    fn drop(&mut self) {
        self.state.withdraw(&self.request_id);
    }
}

#[derive(Default)]
pub(super) struct Counters {
    polls: AtomicUsize,
    waiting: AtomicUsize,
    delivered: AtomicUsize,
}

impl Counters {
    pub(super) fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }

    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    pub(super) fn delivered(&self) -> usize {
        self.delivered.load(Ordering::SeqCst)
    }

    /// Counts a poll and marks it parked until the guard drops — including
    /// when its HTTP connection closes and the handler is cancelled.
    fn park(&self) -> ParkedPoller<'_> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        ParkedPoller(&self.waiting)
    }
}

struct ParkedPoller<'a>(&'a AtomicUsize);

impl Drop for ParkedPoller<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
