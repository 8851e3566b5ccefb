//! Who may skip a lock: the one place that decides it.
//!
//! The backends skip a lock in exactly two cases, and each has one constructor here whose
//! argument is the proof:
//!
//! * [`Access::owner`]: the owner of a protected table reads through `&Table`, without any
//!   lock. This is the only `unsafe` lock elision left in `ets`; its proof is the borrow the
//!   constructor takes (see its `# Safety`).
//! * [`Writer::Sole`]: the owner writes through `&mut Table` while its `Arc` is the only
//!   handle (`Arc::get_mut` succeeded), so the backend gets `&mut` to its shards and writes
//!   them without locks, in safe code (`shards_mut()[i].get_mut()`, `Lock::get_mut`). No
//!   `unsafe` is needed: the borrow checker is the proof.
//!
//! Everything else is [`Access::shared`] / [`Writer::Locked`]: every operation locks.

use std::marker::PhantomData;

/// How a read reaches a table: through its locks, or (the owner of a protected table) without.
///
/// Bound to the borrow `'t` of the handle it was made from, so it cannot outlive the proof.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Access<'t> {
    unlocked: bool,
    _borrow: PhantomData<&'t ()>,
}

impl Access<'static> {
    /// Every read locks (a [`super::TableReader`], a [`super::PublicTable`]). Always sound.
    #[inline]
    pub(crate) const fn shared() -> Self {
        Access {
            unlocked: false,
            _borrow: PhantomData,
        }
    }
}

impl<'t> Access<'t> {
    /// The owner of a protected table reading through `owner`: reads take no lock.
    ///
    /// # Safety
    ///
    /// `owner` must be the [`super::Table`] (the protected table's owner) of the table that
    /// the returned `Access` is then passed to, and to no other table.
    ///
    /// SAFETY argument (why unlocked reads are then sound): every write to a protected table
    /// goes through its `Table`'s `&mut self` methods: [`super::TableReader`]s only read, and
    /// a [`super::PublicTable`] of the same table cannot exist at the same time
    /// (`Table::into_public` consumes the `Table`, and nothing turns a public table back).
    /// While `&'t Table` is held no `&mut Table` exists, so for all of `'t` no write to the
    /// table runs anywhere: the backend's data is only read, by this thread and by readers
    /// that hold its read locks. Concurrent reads of the shard maps (`hashbrown`'s
    /// `RawTable`, `BTreeMap`) through `&` are data-race free. The owner's own earlier
    /// writes are ordered before its reads by program order on its thread, or (the `Table`
    /// moved to another thread) by the `Send` hand-over's synchronisation.
    #[inline]
    pub(crate) unsafe fn owner<T: ?Sized>(owner: &'t T) -> Self {
        let _ = owner;
        Access {
            unlocked: true,
            _borrow: PhantomData,
        }
    }

    /// True when a read may skip the lock (see [`Access::owner`]).
    #[inline]
    pub(crate) fn skips_read_locks(self) -> bool {
        self.unlocked
    }
}

/// How a write reaches a table.
#[derive(Debug)]
pub(crate) enum Writer<'a, T> {
    /// Through the locks: a public handle, or the owner while readers exist.
    Locked(&'a T),
    /// The only handle (the owner's `Arc::get_mut` succeeded): `&mut`, no lock. Safe: the
    /// `&mut` is the proof that nothing else can reach the table.
    Sole(&'a mut T),
}

impl<T> Writer<'_, T> {
    /// Shared access to the target (for its configuration: never to write through).
    #[inline]
    pub(crate) fn get(&self) -> &T {
        match self {
            Writer::Locked(t) => t,
            Writer::Sole(t) => t,
        }
    }
}
