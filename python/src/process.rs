//! Values that belong to one process.
//!
//! `fork()` copies a process with only the forking thread. A lock another
//! thread held at that moment stays held in the child forever, and the
//! runtime threads a value relies on do not exist there. So each value
//! here is tagged with the process that made it, and a child makes its own
//! rather than touch the parent's (which it leaks: freeing it could run
//! code that waits for those threads). No lock is taken to find it.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicPtr, Ordering};

/// A value of the current process, made on first use in each process.
pub struct PerProcess<T> {
    slot: AtomicPtr<(u32, T)>,
    /// Send and Sync as a `Box<T>` would be.
    _owns: PhantomData<Box<T>>,
}

impl<T> PerProcess<T> {
    /// Empty: the first use makes the value.
    pub const fn new() -> PerProcess<T> {
        PerProcess {
            slot: AtomicPtr::new(std::ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// Holding `value`, made by this process.
    pub fn with(value: T) -> PerProcess<T> {
        let slot = Box::into_raw(Box::new((std::process::id(), value)));
        PerProcess {
            slot: AtomicPtr::new(slot),
            _owns: PhantomData,
        }
    }

    /// This process's value, made by `make` if there is none yet. When two
    /// threads make one at once, one value wins and the other is dropped.
    pub fn get_or_try_init<E>(&self, make: impl FnOnce() -> Result<T, E>) -> Result<&T, E> {
        let pid = std::process::id();
        let current = self.slot.load(Ordering::Acquire);
        // SAFETY: a non-null slot points to a box this `PerProcess` leaked
        // and frees only in `drop` (values of other processes are never
        // freed), so it outlives `&self`.
        if let Some((owner, value)) = unsafe { current.as_ref() } {
            if *owner == pid {
                return Ok(value);
            }
        }
        let fresh = Box::into_raw(Box::new((pid, make()?)));
        match self
            .slot
            .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: `fresh` is now the slot's box (see above).
            Ok(_) => Ok(unsafe { &(*fresh).1 }),
            Err(winner) => {
                // SAFETY: `fresh` was never shared; `winner` is the slot's
                // box, made by another thread of this process (a child's
                // threads are its own), so it is this process's value.
                unsafe {
                    drop(Box::from_raw(fresh));
                    Ok(&(*winner).1)
                }
            }
        }
    }
}

impl<T> Drop for PerProcess<T> {
    fn drop(&mut self) {
        let slot = *self.slot.get_mut();
        if slot.is_null() {
            return;
        }
        // SAFETY: the slot's box, leaked by this `PerProcess`, and no
        // reference to it outlives `&mut self`.
        let boxed = unsafe { Box::from_raw(slot) };
        if boxed.0 != std::process::id() {
            // The parent's, in a forked child: leaked (see the module).
            std::mem::forget(boxed);
        }
    }
}
