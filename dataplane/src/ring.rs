//! Bounded lock-free single-producer single-consumer rings: how tiles talk to each other.
//!
//! A ring is an array of fixed-size slots allocated once by [`channel`] / [`channel_with`]; the
//! two ends ([`Producer`], [`Consumer`]) may each move to another thread but are neither `Sync`
//! nor `Clone`, so there is exactly one writer and one reader and no lock anywhere.
//!
//! # Sequence numbers
//!
//! The producer's and consumer's positions are monotonic `u64` counters (item sequence numbers,
//! never wrapped: at 10^9 items a second a `u64` lasts 584 years). A slot index is the sequence
//! number masked by `capacity - 1`. [`Producer::pushed`] is the total ever pushed and
//! [`Consumer::consumed`] the total ever consumed, so a tile can report exactly how far behind
//! its consumer is, and the next item the consumer sees is always number `consumed()`.
//!
//! # When the ring is full: the policy is the owner's
//!
//! Every ring in the node has one of two stated policies, chosen by the tile that owns the
//! producer end and written next to where the ring is created:
//!
//! - **drop and count**: the producer must never stall (a net tile facing a flood). It calls
//!   [`Producer::push_or_count`], which drops the item when the ring is full and adds one to
//!   [`Producer::dropped`]; the counter is exported as a metric.
//! - **back-pressure**: losing an item is not allowed (ordered commit, receipts). The producer
//!   calls [`Producer::try_push`], gets the item back on `Err` when full, and retries later,
//!   which stalls its own input in turn.
//!
//! Nothing ever grows: a flood hits the capacity bound and is either counted or pushed back.
//!
//! # Slots always hold a value
//!
//! Every slot holds a valid `T` at all times (filled at construction), which is what makes the
//! in-place API sound without `MaybeUninit` bookkeeping: [`Producer::reserve`] hands out the
//! slot to overwrite (for a `Datagram` that means writing 1.5 KB straight into the ring instead
//! of building it on the stack and copying it in), [`Consumer::peek`] reads it where it lies.
//! A consumed slot keeps its old value until the producer overwrites it, so heap buffers inside
//! `T` (a `Vec` with capacity) are reused rather than freed and reallocated.
//!
//! # Memory ordering
//!
//! The producer owns `tail` (the next sequence number to write), the consumer owns `head` (the
//! next one to read). Each end keeps its own index in a plain field and only *publishes* it:
//!
//! - Producer: write the slot, then `tail.store(Release)`. The consumer's `tail.load(Acquire)`
//!   that observes the new tail therefore also observes the slot's contents.
//! - Consumer: finish reading (or taking) the slot, then `head.store(Release)`. The producer's
//!   `head.load(Acquire)` that observes the new head therefore happens after the consumer's
//!   last access to that slot, so overwriting it cannot race with the read.
//!
//! Each end also caches the last value it loaded of the *other* end's index and reloads it only
//! when the cached value says "full" (producer) or "empty" (consumer). The cached value is
//! always stale in the safe direction (the real head/tail only moves forward), so a stale cache
//! can only under-report free slots or items, never over-report them. With the cache the shared
//! cache lines are touched about once per lap of the ring instead of once per item. `head` and
//! `tail` sit on separate 128-byte-aligned lines (two lines, because adjacent-line prefetch on
//! x86 pulls pairs of 64-byte lines) so the two ends never write the same line.

use std::{
    cell::{Cell, UnsafeCell},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

/// Pads and aligns a value to 128 bytes so that two of them never share a cache line (nor an
/// adjacent-line prefetch pair).
#[repr(align(128))]
struct CachePadded<T>(T);

struct Shared<T> {
    /// Next sequence number the consumer will read; written only by the consumer.
    head: CachePadded<AtomicU64>,
    /// Next sequence number the producer will write; written only by the producer.
    tail: CachePadded<AtomicU64>,
    producer_dropped: AtomicBool,
    consumer_dropped: AtomicBool,
    /// `capacity - 1`; capacity is a power of two so the slot of sequence `s` is `s & mask`.
    mask: u64,
    slots: Box<[UnsafeCell<T>]>,
}

// SAFETY: the slots are only accessed under the SPSC protocol described in the module docs:
// a slot in `[head, tail)` is accessed only by the consumer, any other slot only by the
// producer, and ownership of a slot passes between them through Release/Acquire on
// `head`/`tail`. Values of `T` move between threads, hence `T: Send`; no `&T` is ever shared
// between the two threads at the same time, so `T: Sync` is not needed.
unsafe impl<T: Send> Sync for Shared<T> {}
// SAFETY: as above; `Shared` owns its `T`s, which may be dropped on either thread.
unsafe impl<T: Send> Send for Shared<T> {}

impl<T> Shared<T> {
    fn capacity(&self) -> u64 {
        self.mask + 1
    }

    fn slot(&self, seq: u64) -> *mut T {
        // The mask keeps the index below `slots.len()`, so this never goes out of bounds.
        self.slots[(seq & self.mask) as usize].get()
    }
}

/// Creates a ring of `capacity` slots, each filled with `T::default()`.
///
/// # Panics
///
/// If `capacity` is zero or not a power of two: ring sizes are compile-time constants or
/// validated configuration, so a bad one is a bug in the caller.
pub fn channel<T: Send + Default>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    channel_with(capacity, T::default)
}

/// Creates a ring of `capacity` slots, each filled by calling `init` (so all of the ring's
/// memory, including any buffers `T` owns, is allocated here, once, by the calling thread; call
/// it on the tile's own core to get NUMA-local memory).
///
/// # Panics
///
/// If `capacity` is zero or not a power of two.
pub fn channel_with<T: Send>(
    capacity: usize,
    mut init: impl FnMut() -> T,
) -> (Producer<T>, Consumer<T>) {
    assert!(
        capacity.is_power_of_two(),
        "ring capacity must be a non-zero power of two, got {capacity}"
    );
    let slots: Box<[UnsafeCell<T>]> = (0..capacity).map(|_| UnsafeCell::new(init())).collect();
    let shared = Arc::new(Shared {
        head: CachePadded(AtomicU64::new(0)),
        tail: CachePadded(AtomicU64::new(0)),
        producer_dropped: AtomicBool::new(false),
        consumer_dropped: AtomicBool::new(false),
        mask: capacity as u64 - 1,
        slots,
    });
    let producer = Producer {
        shared: Arc::clone(&shared),
        tail: 0,
        cached_head: Cell::new(0),
        reserved: false,
        dropped: 0,
    };
    let consumer = Consumer {
        shared,
        head: 0,
        cached_tail: Cell::new(0),
    };
    (producer, consumer)
}

/// The writing end of a ring. `Send`, not `Sync`, not `Clone`.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Our own position (the authoritative copy; `shared.tail` is what we have published).
    tail: u64,
    /// Last `head` loaded from the consumer. A `Cell` so that `&self` queries can refresh it;
    /// this also makes `Producer` `!Sync`, which the single-producer protocol requires.
    cached_head: Cell<u64>,
    /// `reserve` handed out the slot at `tail` and `commit` has not published it yet.
    reserved: bool,
    dropped: u64,
}

impl<T> Producer<T> {
    pub fn capacity(&self) -> usize {
        self.shared.capacity() as usize
    }

    /// Total number of items ever published into the ring (the next item's sequence number).
    pub fn pushed(&self) -> u64 {
        self.tail
    }

    /// Items dropped by [`push_or_count`](Self::push_or_count) because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Slots free for writing right now (a lower bound: the consumer may free more at any
    /// time).
    pub fn free_slots(&self) -> usize {
        // Acquire pairs with the consumer's Release store of `head`, as in `has_room`.
        let head = self.shared.head.0.load(Ordering::Acquire);
        self.cached_head.set(head);
        (self.shared.capacity() - (self.tail - head)) as usize
    }

    /// `true` once the consumer end has been dropped: nothing pushed from now on will be read.
    pub fn is_abandoned(&self) -> bool {
        self.shared.consumer_dropped.load(Ordering::Acquire)
    }

    /// Is the slot at `tail` free? Reloads the consumer's `head` only when the cached copy says
    /// the ring is full.
    fn has_room(&self) -> bool {
        let capacity = self.shared.capacity();
        if self.tail - self.cached_head.get() < capacity {
            return true;
        }
        // Acquire: pairs with the consumer's Release store of `head` after it finished with
        // the slot, so our coming write to that slot happens after the consumer's last access.
        let head = self.shared.head.0.load(Ordering::Acquire);
        self.cached_head.set(head);
        self.tail - head < capacity
    }

    /// Publishes the slot at `tail` to the consumer.
    fn publish(&mut self) {
        self.tail += 1;
        self.reserved = false;
        // Release: the slot write above becomes visible to the consumer's Acquire load of
        // `tail` that sees this value.
        self.shared.tail.0.store(self.tail, Ordering::Release);
    }

    /// Moves `value` into the ring, or hands it back when the ring is full (back-pressure: the
    /// caller keeps it and retries).
    ///
    /// The value previously in the slot (one the consumer already finished with) is dropped
    /// here, on the producer's thread.
    pub fn try_push(&mut self, value: T) -> Result<(), T> {
        if !self.has_room() {
            return Err(value);
        }
        // SAFETY: `has_room` established that the slot at `tail` is outside `[head, tail)`, so
        // the consumer does not access it until we publish it, and `&mut self` excludes any
        // other producer-side reference (a `reserve` borrow has ended since it borrows `self`).
        unsafe { *self.shared.slot(self.tail) = value };
        self.publish();
        Ok(())
    }

    /// Drop-and-count policy: pushes `value`, or drops it and counts it in
    /// [`dropped`](Self::dropped) when the ring is full. Returns whether it was pushed.
    pub fn push_or_count(&mut self, value: T) -> bool {
        match self.try_push(value) {
            Ok(()) => true,
            Err(_) => {
                self.dropped += 1;
                false
            }
        }
    }

    /// The next free slot, to be written in place and then published with
    /// [`commit`](Self::commit); `None` when the ring is full. The slot holds whatever value it
    /// last held (a consumed item or the initial value), so overwrite every field that matters.
    ///
    /// Calling `reserve` again without `commit` returns the same slot.
    pub fn reserve(&mut self) -> Option<&mut T> {
        if !self.has_room() {
            return None;
        }
        self.reserved = true;
        // SAFETY: as in `try_push`, the slot at `tail` belongs to the producer until `commit`
        // publishes it, and the returned borrow of `self` keeps it unique on this side.
        Some(unsafe { &mut *self.shared.slot(self.tail) })
    }

    /// Publishes the slot returned by the last [`reserve`](Self::reserve).
    ///
    /// # Panics
    ///
    /// If no slot is reserved: publishing a slot that was never checked for room could hand
    /// the consumer a slot it is still reading, so this is checked in release builds too.
    pub fn commit(&mut self) {
        assert!(
            self.reserved,
            "ring: commit() without a successful reserve()"
        );
        self.publish();
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        // Release: a consumer that sees the flag also sees every item published before it.
        self.shared.producer_dropped.store(true, Ordering::Release);
    }
}

/// The reading end of a ring. `Send`, not `Sync`, not `Clone`.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Our own position (the authoritative copy; `shared.head` is what we have published).
    head: u64,
    /// Last `tail` loaded from the producer; a `Cell` so that `peek(&self)` can refresh it.
    cached_tail: Cell<u64>,
}

impl<T> Consumer<T> {
    pub fn capacity(&self) -> usize {
        self.shared.capacity() as usize
    }

    /// Total number of items ever consumed: the sequence number of the next item.
    pub fn consumed(&self) -> u64 {
        self.head
    }

    /// Items ready to read right now (a lower bound: the producer may publish more at any
    /// time).
    pub fn len(&self) -> usize {
        // Acquire pairs with the producer's Release store of `tail`, as in `has_item`.
        let tail = self.shared.tail.0.load(Ordering::Acquire);
        self.cached_tail.set(tail);
        (tail - self.head) as usize
    }

    pub fn is_empty(&self) -> bool {
        !self.has_item()
    }

    /// `true` once the producer end has been dropped. Items it published before that are still
    /// readable: a consumer shutting down checks `is_abandoned()` first and then drains until
    /// empty, which cannot miss an item (the flag is set after the last publish).
    pub fn is_abandoned(&self) -> bool {
        self.shared.producer_dropped.load(Ordering::Acquire)
    }

    /// Is there a published item at `head`? Reloads the producer's `tail` only when the cached
    /// copy says the ring is empty.
    fn has_item(&self) -> bool {
        if self.head < self.cached_tail.get() {
            return true;
        }
        // Acquire: pairs with the producer's Release store of `tail`, so the item's contents
        // are visible before we read them.
        let tail = self.shared.tail.0.load(Ordering::Acquire);
        self.cached_tail.set(tail);
        self.head < tail
    }

    /// The oldest unread item, in place; it stays in the ring until [`release`](Self::release).
    pub fn peek(&self) -> Option<&T> {
        if !self.has_item() {
            return None;
        }
        // SAFETY: the slot at `head` is in `[head, tail)`, so the producer does not touch it
        // until we publish a head past it, which needs `&mut self` and so ends this borrow.
        Some(unsafe { &*self.shared.slot(self.head) })
    }

    /// Like [`peek`](Self::peek) but mutable, for example to `mem::swap` a buffer out of the
    /// slot without copying it.
    pub fn peek_mut(&mut self) -> Option<&mut T> {
        if !self.has_item() {
            return None;
        }
        // SAFETY: as in `peek`; `&mut self` makes the borrow unique on the consumer side.
        Some(unsafe { &mut *self.shared.slot(self.head) })
    }

    /// Hands the oldest item's slot back to the producer.
    ///
    /// # Panics
    ///
    /// If the ring is empty: moving `head` past `tail` would let the producer overwrite slots
    /// the consumer later reads, so this is checked in release builds too.
    pub fn release(&mut self) {
        assert!(self.has_item(), "ring: release() on an empty ring");
        self.head += 1;
        // Release: our reads of the slot happen before the producer's Acquire load of `head`
        // that sees this value, and so before it overwrites the slot.
        self.shared.head.0.store(self.head, Ordering::Release);
    }

    /// Takes the oldest item out, leaving `T::default()` in its slot. For large `T` prefer
    /// `peek` + `release`, which copy nothing.
    pub fn try_pop(&mut self) -> Option<T>
    where
        T: Default,
    {
        let value = std::mem::take(self.peek_mut()?);
        self.release();
        Some(value)
    }

    /// Takes a copy of the oldest item and releases its slot.
    pub fn try_pop_cloned(&mut self) -> Option<T>
    where
        T: Clone,
    {
        let value = self.peek()?.clone();
        self.release();
        Some(value)
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.shared.consumer_dropped.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn ends_are_send() {
        assert_send::<Producer<crate::Datagram>>();
        assert_send::<Consumer<crate::Datagram>>();
    }

    #[test]
    fn full_empty_and_wraparound() {
        let (mut tx, mut rx) = channel::<u64>(4);
        assert_eq!(tx.capacity(), 4);
        assert!(rx.is_empty());
        assert_eq!(rx.try_pop(), None);
        assert!(rx.peek().is_none());
        for i in 0..4 {
            assert_eq!(tx.try_push(i), Ok(()));
        }
        assert_eq!(tx.free_slots(), 0);
        assert_eq!(tx.try_push(99), Err(99));
        assert!(tx.reserve().is_none());
        assert_eq!(rx.len(), 4);
        assert_eq!(rx.try_pop(), Some(0));
        assert_eq!(tx.free_slots(), 1);
        // Ten laps around a 4-slot ring, interleaved, with order preserved.
        let mut next_in = 4;
        let mut next_out = 1;
        for _ in 0..40 {
            assert_eq!(tx.try_push(next_in), Ok(()));
            next_in += 1;
            assert_eq!(rx.try_pop(), Some(next_out));
            next_out += 1;
        }
        assert_eq!(rx.len(), 3);
        while let Some(v) = rx.try_pop() {
            assert_eq!(v, next_out);
            next_out += 1;
        }
        assert_eq!(next_out, next_in);
        assert_eq!(tx.pushed(), 44);
        assert_eq!(rx.consumed(), 44);
        assert!(rx.is_empty());
        assert_eq!(tx.free_slots(), 4);
    }

    #[test]
    fn drop_and_count() {
        let (mut tx, mut rx) = channel::<u32>(2);
        assert!(tx.push_or_count(1));
        assert!(tx.push_or_count(2));
        assert!(!tx.push_or_count(3));
        assert!(!tx.push_or_count(4));
        assert_eq!(tx.dropped(), 2);
        assert_eq!(rx.try_pop(), Some(1));
        assert!(tx.push_or_count(5));
        assert_eq!(rx.try_pop(), Some(2));
        assert_eq!(rx.try_pop(), Some(5));
        assert_eq!(rx.try_pop(), None);
    }

    #[test]
    fn in_place_reserve_peek_release() {
        let (mut tx, mut rx) = channel_with(2, crate::Datagram::empty);
        for round in 0u8..5 {
            let slot = tx.reserve().expect("room");
            assert!(slot.set_payload(&[round; 100]));
            slot.local_port = u16::from(round);
            // A second reserve before commit is the same slot.
            assert_eq!(tx.reserve().expect("room").local_port, u16::from(round));
            tx.commit();

            let seen = rx.peek().expect("item");
            assert_eq!(seen.payload(), &[round; 100][..]);
            assert_eq!(seen.local_port, u16::from(round));
            // Peek does not consume.
            assert_eq!(rx.peek().expect("item").local_port, u16::from(round));
            rx.release();
            assert!(rx.peek().is_none());
        }
        assert_eq!(rx.consumed(), 5);
    }

    #[test]
    fn pop_leaves_default_and_push_reuses_slot() {
        let (mut tx, mut rx) = channel::<Vec<u8>>(1);
        tx.try_push(vec![1, 2, 3]).expect("room");
        assert_eq!(rx.try_pop(), Some(vec![1, 2, 3]));
        // The in-place path keeps the old buffer (capacity reused).
        let slot = tx.reserve().expect("room");
        assert!(slot.is_empty());
        slot.extend_from_slice(&[7; 16]);
        tx.commit();
        assert_eq!(rx.try_pop_cloned(), Some(vec![7; 16]));
        let slot = tx.reserve().expect("room");
        assert_eq!(slot.len(), 16, "a released value stays until overwritten");
    }

    #[test]
    #[should_panic(expected = "commit() without")]
    fn commit_without_reserve_panics() {
        let (mut tx, _rx) = channel::<u8>(2);
        tx.commit();
    }

    #[test]
    #[should_panic(expected = "release() on an empty ring")]
    fn release_when_empty_panics() {
        let (_tx, mut rx) = channel::<u8>(2);
        rx.release();
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn capacity_must_be_power_of_two() {
        let _ = channel::<u8>(3);
    }

    #[test]
    fn abandonment_is_visible_and_items_survive_it() {
        let (mut tx, rx) = channel::<u8>(4);
        assert!(!tx.is_abandoned());
        drop(rx);
        assert!(tx.is_abandoned());

        let (mut tx2, mut rx2) = channel::<u8>(4);
        tx2.try_push(1).expect("room");
        tx2.try_push(2).expect("room");
        assert!(!rx2.is_abandoned());
        drop(tx2);
        assert!(rx2.is_abandoned());
        assert_eq!(rx2.try_pop(), Some(1));
        assert_eq!(rx2.try_pop(), Some(2));
        assert_eq!(rx2.try_pop(), None);
        assert_eq!(
            tx.try_push(0),
            Ok(()),
            "pushing to an abandoned ring is harmless"
        );
    }

    /// Two threads, a small ring (many laps, many full/empty transitions), one million
    /// sequence numbers: every one arrives, in order, exactly once. No timing assumptions: both
    /// sides spin (with `yield_now`, so the test also progresses on one core) until done.
    #[test]
    fn two_thread_stress_preserves_order() {
        const N: u64 = 1_000_000;
        let (mut tx, mut rx) = channel::<u64>(64);
        let producer = std::thread::spawn(move || {
            let mut next = 0u64;
            while next < N {
                // Alternate the two write paths so both are exercised across threads.
                let pushed = if next.is_multiple_of(2) {
                    tx.try_push(next).is_ok()
                } else if let Some(slot) = tx.reserve() {
                    *slot = next;
                    tx.commit();
                    true
                } else {
                    false
                };
                if pushed {
                    next += 1;
                } else {
                    std::thread::yield_now();
                }
            }
            tx.pushed()
        });
        let mut expected = 0u64;
        while expected < N {
            let got = if expected.is_multiple_of(3) {
                rx.try_pop()
            } else {
                rx.peek().copied().inspect(|_| rx.release())
            };
            match got {
                Some(v) => {
                    assert_eq!(v, expected, "out of order or lost item");
                    expected += 1;
                }
                None => {
                    assert!(
                        !(rx.is_abandoned() && rx.is_empty()),
                        "producer finished but items are missing at {expected}"
                    );
                    std::thread::yield_now();
                }
            }
        }
        assert_eq!(producer.join().expect("producer thread"), N);
        assert!(rx.is_abandoned());
        assert_eq!(rx.try_pop(), None);
        assert_eq!(rx.consumed(), N);
    }

    /// Items with heap ownership cross threads and are dropped exactly once (Miri-free check:
    /// `Arc` counts would be off on a double drop or a leak of a published item).
    #[test]
    fn owned_values_cross_threads_without_leaks() {
        let token = Arc::new(());
        let (mut tx, mut rx) = channel::<Option<Arc<()>>>(8);
        let t = Arc::clone(&token);
        let producer = std::thread::spawn(move || {
            let mut sent = 0;
            while sent < 10_000 {
                if tx.try_push(Some(Arc::clone(&t))).is_ok() {
                    sent += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        });
        let mut got = 0;
        while got < 10_000 {
            match rx.try_pop() {
                Some(v) => {
                    assert!(v.is_some());
                    got += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        producer.join().expect("producer thread");
        drop(rx);
        assert_eq!(Arc::strong_count(&token), 1);
    }
}
