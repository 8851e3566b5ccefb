//! The lock of the ordered backend: [`Lock`], a read-write lock whose readers are counted
//! either in one word (a `parking_lot` raw lock, the default) or, for a table made with
//! `read_concurrency`, in per-thread reader slots (a "big-reader" lock, the analogue of ETS's
//! `read_concurrency`): readers on different threads then do not write a shared cache line.
//!
//! The reader-slot mode: each reader counts itself in one of a few reader slots, each on its
//! own cache line (a thread always uses the same one), and then checks the writer flag; a
//! writer sets the flag and then waits until every slot is empty. Both sides use `SeqCst`
//! for that store-then-load pair (Dekker's pattern): in the single total order of `SeqCst`
//! operations either the reader's increment comes first, and the writer sees it and waits, or
//! the writer's flag does, and the reader sees it and backs off. Waiters spin briefly, then
//! yield the CPU: holders are short (one operation) except traversals and many-key writes.
//!
//! Trade-off (figures in the module docs): a read costs an uncontended atomic on the reader's
//! own line instead of a contended one on the lock's; a write costs a CAS as before plus a
//! load of every slot; the slots take `(1 + slots) * 128` bytes per lock (slots: two per
//! core, at most 16), which is why it is an option.
//!
//! The data sits at the same place in both modes, so [`Lock::unlocked`] costs no load: the
//! owner's unlocked access (see `super::access`) is as cheap as with a plain `RwLock`.
//!
//! The hash types do not use this lock: they are on dashmap, whose shards carry dashmap's
//! own lock (see `super::hashed`), so `read_concurrency` applies to `ordered_set` only.
//!
//! Under `cfg(loom)` the reader-slot mode's atomics, the data cell, the thread numbering and
//! the back-off are loom's, so `super::loom` model-checks this protocol (the default mode's
//! `parking_lot` lock is not modelled: it is parking_lot's). Loom treats `SeqCst` loads and
//! read-modify-writes as `AcqRel` (its README, "Unsupported features"), which would make it
//! report the Dekker pair above as broken although C11 guarantees it; loom does model
//! `fence(SeqCst)`, so under loom each side also issues one ([`dekker_fence`]), which C11
//! makes redundant with the `SeqCst` operations the real build runs.

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

#[cfg(all(test, loom))]
use loom::cell::{ConstPtr, MutPtr, UnsafeCell};
#[cfg(all(test, loom))]
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(not(all(test, loom)))]
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::lock_api::RawRwLock as _;

/// One reader slot on its own cache line.
#[repr(align(128))]
struct Slot(AtomicUsize);

/// The writer flag on its own cache line.
#[repr(align(128))]
struct Flag(AtomicBool);

/// The reader slots and writer flag of the reader-slot mode.
struct Slots {
    writer: Flag,
    readers: Box<[Slot]>,
}

/// A read-write lock around `T`: any number of readers or one writer.
pub(crate) struct Lock<T> {
    /// The default mode's lock; unused in the reader-slot mode.
    raw: parking_lot::RawRwLock,
    /// `Some` in the reader-slot mode.
    slots: Option<Box<Slots>>,
    data: UnsafeCell<T>,
}

/// `std`'s cell with the interface of loom's (pointers handed out by `get`/`get_mut`), so
/// the same code runs under both.
#[cfg(not(all(test, loom)))]
struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(all(test, loom)))]
impl<T> UnsafeCell<T> {
    fn new(data: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(data))
    }
    #[inline]
    fn get(&self) -> ConstPtr<T> {
        ConstPtr(self.0.get())
    }
    #[inline]
    fn get_mut(&self) -> MutPtr<T> {
        MutPtr(self.0.get())
    }
}

/// A shared pointer into an [`UnsafeCell`] (loom tracks the access while it lives).
#[cfg(not(all(test, loom)))]
struct ConstPtr<T>(*const T);

#[cfg(not(all(test, loom)))]
impl<T> ConstPtr<T> {
    /// # Safety
    /// No `&mut` to the data may exist while the returned `&` lives.
    #[inline]
    unsafe fn deref(&self) -> &T {
        // SAFETY: the caller's contract.
        unsafe { &*self.0 }
    }
}

/// A unique pointer into an [`UnsafeCell`] (loom tracks the access while it lives).
#[cfg(not(all(test, loom)))]
struct MutPtr<T>(*mut T);

#[cfg(not(all(test, loom)))]
impl<T> MutPtr<T> {
    /// # Safety
    /// No other reference to the data may exist while the returned `&mut` lives.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    unsafe fn deref(&self) -> &mut T {
        // SAFETY: the caller's contract.
        unsafe { &mut *self.0 }
    }
}

/// Under loom, the `SeqCst` fence that loom needs to see the Dekker pair's order (see the
/// module docs); nothing otherwise.
#[inline(always)]
fn dekker_fence() {
    #[cfg(all(test, loom))]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

// SAFETY: as `std::sync::RwLock`: the lock hands out `&T` to many threads at once (needs
// `T: Sync`) and `&mut T` to one thread at a time (needs `T: Send`).
unsafe impl<T: Send> Send for Lock<T> {}
// SAFETY: see above.
unsafe impl<T: Send + Sync> Sync for Lock<T> {}

/// Reader slots per lock: two per core, a power of two, at most 16 (more reading threads
/// than slots share slots: still correct, a little contention).
fn slot_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        (std::thread::available_parallelism().map_or(1, usize::from) * 2)
            .next_power_of_two()
            .min(16)
    })
}

/// This thread's slot number (before masking): threads are numbered as they first read.
fn thread_slot() -> usize {
    #[cfg(not(all(test, loom)))]
    {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        SLOT.with(|s| *s)
    }
    // Under loom, numbered afresh in each explored execution (a model must be deterministic).
    #[cfg(all(test, loom))]
    {
        loom::lazy_static! {
            static ref NEXT: AtomicUsize = AtomicUsize::new(0);
        }
        loom::thread_local! {
            static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        SLOT.with(|s| *s)
    }
}

/// Spins a little, then yields the CPU.
#[inline]
fn backoff(spins: &mut u32) {
    if cfg!(all(test, loom)) {
        // Loom explores a spin loop only if it yields.
        #[cfg(all(test, loom))]
        loom::thread::yield_now();
    } else if *spins < 64 {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

impl Slots {
    /// Counts this thread as a reader once no writer holds the lock; returns its slot.
    #[inline]
    fn lock_shared(&self) -> &AtomicUsize {
        let slot = &self.readers[thread_slot() & (self.readers.len() - 1)].0;
        let mut spins = 0;
        loop {
            slot.fetch_add(1, Ordering::SeqCst);
            dekker_fence();
            if !self.writer.0.load(Ordering::SeqCst) {
                return slot;
            }
            slot.fetch_sub(1, Ordering::Release);
            while self.writer.0.load(Ordering::Relaxed) {
                backoff(&mut spins);
            }
        }
    }

    /// Takes the writer flag, then waits for every reader to leave.
    #[inline]
    fn lock_exclusive(&self) {
        let mut spins = 0;
        while self
            .writer
            .0
            .compare_exchange_weak(false, true, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            backoff(&mut spins);
        }
        dekker_fence();
        for slot in self.readers.iter() {
            while slot.0.load(Ordering::SeqCst) != 0 {
                backoff(&mut spins);
            }
        }
    }
}

impl<T> Lock<T> {
    /// A lock in the reader-slot mode when `read_concurrency`, else in the default mode.
    pub(crate) fn new(data: T, read_concurrency: bool) -> Self {
        let slots = read_concurrency.then(|| {
            Box::new(Slots {
                writer: Flag(AtomicBool::new(false)),
                readers: (0..slot_count())
                    .map(|_| Slot(AtomicUsize::new(0)))
                    .collect(),
            })
        });
        Lock {
            raw: parking_lot::RawRwLock::INIT,
            slots,
            data: UnsafeCell::new(data),
        }
    }

    /// Shared access; blocks while a writer holds the lock.
    #[inline]
    pub(crate) fn read(&self) -> LockRead<'_, T> {
        let slot = match &self.slots {
            Some(s) => Some(s.lock_shared()),
            None => {
                self.raw.lock_shared();
                None
            }
        };
        LockRead {
            lock: self,
            slot,
            data: ManuallyDrop::new(self.data.get()),
            _not_send: PhantomData,
        }
    }

    /// Exclusive access; blocks while any reader or writer holds the lock.
    #[inline]
    pub(crate) fn write(&self) -> LockWrite<'_, T> {
        match &self.slots {
            Some(s) => s.lock_exclusive(),
            None => self.raw.lock_exclusive(),
        }
        LockWrite {
            lock: self,
            data: ManuallyDrop::new(self.data.get_mut()),
            _not_send: PhantomData,
        }
    }

    /// Shared access without locking.
    ///
    /// # Safety
    ///
    /// No write to the data may run while the view lives (the caller proves it by other
    /// means: see `super::access::Access::owner`).
    #[inline]
    pub(crate) unsafe fn unlocked(&self) -> LockView<'_, T> {
        LockView {
            data: self.data.get(),
            _lock: PhantomData,
        }
    }

    /// Exclusive access through `&mut`, without locking (safe: the borrow proves that no
    /// one else can reach the lock).
    #[inline]
    pub(crate) fn get_mut(&mut self) -> LockSole<'_, T> {
        LockSole {
            data: self.data.get_mut(),
            _lock: PhantomData,
        }
    }
}

/// Shared access to a [`Lock`]'s data taken without the lock ([`Lock::unlocked`]).
pub(crate) struct LockView<'a, T> {
    data: ConstPtr<T>,
    _lock: PhantomData<&'a Lock<T>>,
}

impl<T> Deref for LockView<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: `Lock::unlocked`'s contract: no write runs while this view lives.
        unsafe { self.data.deref() }
    }
}

/// Exclusive access to a [`Lock`]'s data through `&mut Lock` ([`Lock::get_mut`]).
pub(crate) struct LockSole<'a, T> {
    data: MutPtr<T>,
    _lock: PhantomData<&'a mut Lock<T>>,
}

impl<T> Deref for LockSole<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: made from `&mut Lock`, which this guard borrows: nothing else can reach it.
        unsafe { self.data.deref() }
    }
}

impl<T> DerefMut for LockSole<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes the borrow unique.
        unsafe { self.data.deref() }
    }
}

/// Shared access to a [`Lock`]'s data.
pub(crate) struct LockRead<'a, T> {
    lock: &'a Lock<T>,
    /// The reader slot this guard is counted in (reader-slot mode).
    slot: Option<&'a AtomicUsize>,
    /// Dropped (under loom: the access ends) before the lock is released.
    data: ManuallyDrop<ConstPtr<T>>,
    /// Not `Send`: released by the thread that took it (as `parking_lot`'s own guards).
    _not_send: PhantomData<*const ()>,
}

impl<T> Deref for LockRead<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock shared: the raw lock's shared mode, or it is
        // counted in a reader slot and saw no writer after counting itself (a writer waits
        // for every slot to be empty before it touches the data).
        unsafe { (*self.data).deref() }
    }
}

impl<T> Drop for LockRead<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: dropped once, here, and not used after.
        unsafe { ManuallyDrop::drop(&mut self.data) };
        match self.slot {
            // Release: a writer that then sees the slot empty sees every read of this guard.
            Some(slot) => {
                slot.fetch_sub(1, Ordering::Release);
            }
            // SAFETY: this guard took the raw lock shared in `read` and releases it once.
            None => unsafe { self.lock.raw.unlock_shared() },
        }
    }
}

/// Exclusive access to a [`Lock`]'s data.
pub(crate) struct LockWrite<'a, T> {
    lock: &'a Lock<T>,
    /// Dropped (under loom: the access ends) before the lock is released.
    data: ManuallyDrop<MutPtr<T>>,
    /// Not `Send`: released by the thread that took it (as `parking_lot`'s own guards).
    _not_send: PhantomData<*const ()>,
}

impl<T> Deref for LockWrite<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock exclusively (the raw lock's exclusive mode, or
        // the writer flag with every reader slot seen empty after taking it; later readers
        // see the flag and back off).
        unsafe { (*self.data).deref() }
    }
}

impl<T> DerefMut for LockWrite<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes the borrow unique.
        unsafe { (*self.data).deref() }
    }
}

impl<T> Drop for LockWrite<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: dropped once, here, and not used after.
        unsafe { ManuallyDrop::drop(&mut self.data) };
        match &self.lock.slots {
            // Release: the next reader or writer to see `false` sees every write of this guard.
            Some(s) => s.writer.0.store(false, Ordering::Release),
            // SAFETY: this guard took the raw lock exclusively in `write`, releases it once.
            None => unsafe { self.lock.raw.unlock_exclusive() },
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Writers keep two counters equal under the lock; readers must never see them differ,
    /// and the final count is exact. Both modes.
    #[test]
    fn readers_never_see_a_half_write_and_writes_are_exclusive() {
        for read_concurrency in [false, true] {
            let lock = Lock::new((0u64, 0u64), read_concurrency);
            let stop = AtomicBool::new(false);
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| {
                        while !stop.load(Ordering::Relaxed) {
                            let g = lock.read();
                            assert_eq!(g.0, g.1);
                        }
                    });
                }
                let writers: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            for _ in 0..20_000 {
                                let mut g = lock.write();
                                g.0 += 1;
                                std::hint::spin_loop();
                                g.1 += 1;
                            }
                        })
                    })
                    .collect();
                for w in writers {
                    w.join().unwrap();
                }
                stop.store(true, Ordering::Relaxed);
            });
            assert_eq!(*lock.read(), (40_000, 40_000));
        }
    }
}
