//! Waking a sleeping tile when work arrives on one of its rings.
//!
//! A tile that found its rings empty may sleep (blocking mode on shared hosts); a producer that
//! pushes must then wake it. Waking costs a syscall, so producers ring only when the consumer
//! said it is about to sleep. The consumer announces (`prepare_sleep`), checks its rings once
//! more, then sleeps; the producer pushes, then checks the announcement. Both sides order those
//! two steps with a SeqCst fence, so at least one of them sees the other: either the consumer
//! finds the item, or the producer sees it sleeping and wakes it (the wake-up is not lost even if
//! it comes before the sleep: an unpark token and an eventfd counter both persist).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering, fence},
    },
    thread::Thread,
    time::Duration,
};

use crate::port::PortWaker;

enum Target {
    Thread(Thread),
    Port(PortWaker),
}

struct Inner {
    sleeping: AtomicBool,
    target: Target,
}

/// The producer's side: [`Doorbell::ring`] after pushing. Cheap to clone.
#[derive(Clone)]
pub struct Doorbell {
    inner: Arc<Inner>,
}

impl Doorbell {
    /// For a tile that sleeps with `std::thread::park_timeout` (call on the tile's thread).
    pub fn for_current_thread() -> Self {
        Self::new(Target::Thread(std::thread::current()))
    }

    /// For a net tile that sleeps in its port's `wait` (woken through the port's eventfd).
    pub fn for_port(waker: PortWaker) -> Self {
        Self::new(Target::Port(waker))
    }

    fn new(target: Target) -> Self {
        Self {
            inner: Arc::new(Inner {
                sleeping: AtomicBool::new(false),
                target,
            }),
        }
    }

    /// Producer: call after pushing.
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.inner.sleeping.load(Ordering::Relaxed) {
            match &self.inner.target {
                Target::Thread(thread) => thread.unpark(),
                Target::Port(waker) => waker.wake(),
            }
        }
    }

    /// Consumer: announce the intent to sleep. Check the rings again afterwards, then sleep
    /// only if they are still empty, and call [`Doorbell::awake`] when back.
    pub fn prepare_sleep(&self) {
        self.inner.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    pub fn awake(&self) {
        self.inner.sleeping.store(false, Ordering::Relaxed);
    }

    /// Consumer of a thread doorbell: sleeps up to `timeout` unless `has_work` says otherwise.
    pub fn sleep_unless(&self, timeout: Duration, has_work: impl FnOnce() -> bool) {
        self.prepare_sleep();
        if !has_work() {
            std::thread::park_timeout(timeout);
        }
        self.awake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::atomic::AtomicU64, time::Instant};

    #[test]
    fn a_ring_after_the_announcement_wakes_the_sleeper() {
        let work = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let worker_work = work.clone();
        let handle = std::thread::spawn(move || {
            let bell = Doorbell::for_current_thread();
            tx.send(bell.clone()).unwrap();
            let started = Instant::now();
            while worker_work.load(Ordering::Acquire) == 0 {
                bell.sleep_unless(Duration::from_secs(30), || {
                    worker_work.load(Ordering::Acquire) != 0
                });
            }
            started.elapsed()
        });
        let bell = rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        work.store(1, Ordering::Release);
        bell.ring();
        let slept = handle.join().unwrap();
        // Without the wake-up the worker would sleep the full 30 s.
        assert!(slept < Duration::from_secs(20), "woken late: {slept:?}");
    }
}
