//! Handing upcalls to the sink in the order the state changed.
//!
//! Upcalls are queued while the lock that orders the change they report is
//! held, and delivered after it is released. Whichever thread finds the
//! queue idle delivers everything queued, including what other threads
//! add meanwhile; the others return at once. So the sink sees one order,
//! is never called with a lock held, and may call straight back into the
//! client (what it causes is delivered right after it returns).

use std::collections::VecDeque;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::transfer::{Upcall, UpcallSink};

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Upcall>,
    /// A thread is delivering.
    busy: bool,
}

pub(super) struct Delivery {
    sink: Arc<dyn UpcallSink>,
    alive: AtomicBool,
    queue: Mutex<Queue>,
}

impl Delivery {
    pub fn new(sink: Arc<dyn UpcallSink>) -> Self {
        Self {
            sink,
            alive: AtomicBool::new(true),
            queue: Mutex::new(Queue::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue is consistent after every statement that touches it.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues upcalls; the caller delivers them with [`Delivery::deliver`]
    /// once it has released its own locks.
    pub fn enqueue(&self, upcalls: impl IntoIterator<Item = Upcall>) {
        self.lock().waiting.extend(upcalls);
    }

    /// Delivers what is queued, unless another thread is doing it.
    pub fn deliver(&self) {
        let mut batch = {
            let mut q = self.lock();
            if q.busy || q.waiting.is_empty() {
                return;
            }
            q.busy = true;
            mem::take(&mut q.waiting)
        };
        loop {
            for upcall in batch.drain(..) {
                if self.alive.load(Ordering::Acquire) {
                    self.sink.upcall(upcall);
                }
            }
            let mut q = self.lock();
            if q.waiting.is_empty() {
                q.busy = false;
                return;
            }
            mem::swap(&mut batch, &mut q.waiting);
        }
    }

    /// Queues and delivers upcalls that need no ordering against others.
    pub fn emit(&self, upcall: Upcall) {
        self.enqueue([upcall]);
        self.deliver();
    }

    /// No upcall is made after this returns, except one already under way.
    pub fn stop(&self) {
        self.alive.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;

    use super::*;
    use crate::transfer::{Completion, Status};

    fn completed(id: u64) -> Upcall {
        Upcall::Completed(Completion::failed(1, id, Status::Ok))
    }

    /// Records ids; on id 1 it calls back into the delivery, as a sink that
    /// resubmits from its upcall would.
    #[derive(Default)]
    struct Reentrant {
        seen: Mutex<Vec<u64>>,
        delivery: Mutex<Weak<Delivery>>,
    }

    impl UpcallSink for Reentrant {
        fn upcall(&self, upcall: Upcall) {
            let Upcall::Completed(c) = upcall else {
                return;
            };
            self.seen.lock().unwrap().push(c.id);
            if c.id == 1 {
                if let Some(d) = self.delivery.lock().unwrap().upgrade() {
                    d.emit(completed(10));
                }
            }
        }
    }

    #[test]
    fn delivers_in_queue_order_and_tolerates_reentry() {
        let sink = Arc::new(Reentrant::default());
        let d = Arc::new(Delivery::new(sink.clone()));
        *sink.delivery.lock().unwrap() = Arc::downgrade(&d);
        d.enqueue([completed(1), completed(2)]);
        d.enqueue([completed(3)]);
        d.deliver();
        // The upcall made from inside the sink comes after the batch it
        // interrupted, without deadlock.
        assert_eq!(*sink.seen.lock().unwrap(), vec![1, 2, 3, 10]);
    }

    #[test]
    fn nothing_is_delivered_after_stop() {
        let sink = Arc::new(Reentrant::default());
        let d = Delivery::new(sink.clone());
        d.emit(completed(5));
        d.stop();
        d.emit(completed(6));
        assert_eq!(*sink.seen.lock().unwrap(), vec![5]);
    }
}
