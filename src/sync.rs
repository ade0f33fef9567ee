//! Synchronisation that never allocates: a futex mutex, a spin-then-yield lock, and a one-time
//! initialiser.
//!
//! Both are plain atomics plus the `futex(2)` system call, so they can be used from inside `malloc`,
//! before `main`, and from any thread. Neither is re-entrant: an initialiser that calls back into the
//! code it initialises deadlocks, so initialisers must not allocate through the heap they set up.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: the futex word is a live, aligned u32; FUTEX_WAIT only reads it. A spurious wake-up or
    // EAGAIN (the value changed) is handled by every caller re-checking in a loop.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            core::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE on a live, aligned u32 only wakes waiters.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, n);
    }
}

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;

/// A mutual-exclusion lock on a futex: one compare-exchange to take it and one swap to release it when
/// uncontended; a short spin, then sleeping in the kernel, when it is contended.
pub struct Mutex<T> {
    state: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one thread at a time, so sharing the Mutex between
// threads is as safe as sending T between them.
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: the Mutex owns its T.
unsafe impl<T: Send> Send for Mutex<T> {}

/// Access to the value of a locked [`Mutex`]; unlocks when dropped.
pub struct MutexGuard<'a, T> {
    lock: &'a Mutex<T>,
    /// False when the process had a single thread and the lock was not taken (see [`single_threaded`]).
    locked: bool,
}

extern "C" {
    /// glibc (2.32 and later): non-zero while the process has only ever had one thread; cleared by
    /// `pthread_create` before a second thread exists, and never set again by glibc 2.36.
    static __libc_single_threaded: core::ffi::c_char;
}

/// True while the process has a single thread, so that no lock is needed: no other thread can exist
/// until this one creates it, which it cannot do from inside our critical sections.
#[inline(always)]
pub fn single_threaded() -> bool {
    // SAFETY: glibc defines the byte for the life of the process; we read it as an atomic byte.
    // Relaxed: when it reads 1 no other thread exists, so there is nothing to order with; once a
    // second thread exists it reads 0 in every thread and the locks order everything.
    let flag = unsafe {
        (*(core::ptr::addr_of!(__libc_single_threaded) as *const core::sync::atomic::AtomicU8)).load(Ordering::Relaxed)
    };
    flag != 0
}

impl<T> Mutex<T> {
    /// A new, unlocked mutex.
    pub const fn new(value: T) -> Self {
        Mutex { state: AtomicU32::new(UNLOCKED), value: UnsafeCell::new(value) }
    }

    /// Takes the lock, waiting as long as needed. While the process has a single thread, nothing is
    /// taken (no atomic operation at all): see [`single_threaded`].
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        if single_threaded() {
            return MutexGuard { lock: self, locked: false };
        }
        // Acquire pairs with the Release store in `unlock`: what the previous holder wrote is visible.
        if self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.lock_contended();
        }
        MutexGuard { lock: self, locked: true }
    }

    /// Takes the lock if it is free right now.
    #[inline]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        // Acquire pairs with the Release swap in `unlock`.
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| MutexGuard { lock: self, locked: true })
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        for _ in 0..100 {
            core::hint::spin_loop();
            // Relaxed peek; the Acquire on the compare-exchange below does the pairing.
            if self.state.load(Ordering::Relaxed) == UNLOCKED
                && self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                return;
            }
        }
        // Mark the lock contended so that the holder wakes us; Acquire pairs with `unlock`'s Release.
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            futex_wait(&self.state, CONTENDED);
        }
    }

    fn unlock(&self) {
        // Release pairs with the Acquire of the next `lock`.
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            futex_wake(&self.state, 1);
        }
    }

    /// Puts the lock back to unlocked without waking anyone.
    ///
    /// # Safety
    /// Only for a child process right after `fork()`: the thread that held the lock does not exist in the
    /// child, and the caller restores whatever invariant the protected value needs.
    pub unsafe fn force_unlock_after_fork(&self) {
        // Relaxed: the child has a single thread.
        self.state.store(UNLOCKED, Ordering::Relaxed);
    }

    /// Direct access to the value through a unique reference: no locking is needed.
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }
}

/// Access through a lock guard: the guard exists only while this thread holds the lock (for
/// `MutexGuard`, or while the process has a single thread), so the access is unique.
macro_rules! guard_deref {
    ($guard:ident) => {
        impl<T> Deref for $guard<'_, T> {
            type Target = T;
            fn deref(&self) -> &T {
                // SAFETY: the guard exists only while this thread holds the lock.
                unsafe { &*self.lock.value.get() }
            }
        }

        impl<T> DerefMut for $guard<'_, T> {
            fn deref_mut(&mut self) -> &mut T {
                // SAFETY: the guard exists only while this thread holds the lock, so the access is unique.
                unsafe { &mut *self.lock.value.get() }
            }
        }
    };
}

guard_deref!(MutexGuard);

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        if self.locked {
            self.lock.unlock();
        }
    }
}

const INCOMPLETE: u32 = 0;
const RUNNING: u32 = 1;
const RUNNING_WAITED: u32 = 2;
const COMPLETE: u32 = 3;

/// Runs an initialiser exactly once, whichever thread calls first, before or after `main`; later and
/// concurrent callers wait until it has finished. Does not allocate.
pub struct Once {
    state: AtomicU32,
}

impl Once {
    /// A `Once` that has not run.
    pub const fn new() -> Self {
        Once { state: AtomicU32::new(INCOMPLETE) }
    }

    /// True once the initialiser has finished.
    #[inline]
    pub fn is_completed(&self) -> bool {
        // Acquire pairs with the Release store of COMPLETE in `call_slow`: the initialiser's writes are
        // visible to whoever sees it completed.
        self.state.load(Ordering::Acquire) == COMPLETE
    }

    /// Runs `f` if no call has run it yet; returns after it has run (here or in another thread).
    #[inline]
    pub fn call_once(&self, f: impl FnOnce()) {
        if !self.is_completed() {
            self.call_slow(f);
        }
    }

    #[cold]
    #[inline(never)]
    fn call_slow(&self, f: impl FnOnce()) {
        // Acquire pairs with the Release store of COMPLETE.
        match self.state.compare_exchange(INCOMPLETE, RUNNING, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => {
                f();
                // Release pairs with the Acquire loads in `is_completed` and the waiters below.
                if self.state.swap(COMPLETE, Ordering::Release) == RUNNING_WAITED {
                    futex_wake(&self.state, i32::MAX);
                }
            }
            Err(_) => loop {
                // Acquire pairs with the Release swap above.
                let s = self.state.load(Ordering::Acquire);
                if s == COMPLETE {
                    return;
                }
                if s == RUNNING {
                    // Tell the initialiser someone waits; Relaxed failure is fine, the loop re-reads.
                    let _ = self.state.compare_exchange(RUNNING, RUNNING_WAITED, Ordering::Relaxed, Ordering::Relaxed);
                }
                futex_wait(&self.state, RUNNING_WAITED);
            },
        }
    }
}

impl Default for Once {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Mutex<T> {
    /// Takes the lock and keeps it with no guard (for `pthread_atfork` prepare handlers, which cannot
    /// hand a guard to the parent and child handlers).
    pub fn lock_forever(&self) {
        core::mem::forget(self.lock());
    }

    /// Releases a lock taken with [`Mutex::lock_forever`].
    ///
    /// # Safety
    /// The calling thread took the lock with `lock_forever` (or, in a child right after `fork()`, the
    /// thread that took it no longer exists) and holds no reference into the protected value.
    pub unsafe fn unlock_forgotten(&self) {
        self.unlock();
    }
}

/// A spin-then-yield lock for very short critical sections: one compare-exchange to take it and a plain
/// release store to give it back (no read-modify-write on unlock, unlike [`Mutex`], whose unlock must
/// learn whether to wake a sleeper). A waiter spins briefly, then yields the CPU, so a holder that was
/// preempted gets to run. Never allocates.
pub struct SpinLock<T> {
    locked: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: as for Mutex: one thread at a time gets access to `value`.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: the lock owns its T.
unsafe impl<T: Send> Send for SpinLock<T> {}

/// Access to the value of a locked [`SpinLock`]; unlocks when dropped.
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> SpinLock<T> {
    /// A new, unlocked lock.
    pub const fn new(value: T) -> Self {
        SpinLock { locked: AtomicU32::new(0), value: UnsafeCell::new(value) }
    }

    /// Takes the lock, waiting as long as needed.
    #[inline]
    pub fn lock(&self) -> SpinGuard<'_, T> {
        // Acquire pairs with the Release store in `unlock`.
        if self.locked.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.lock_contended();
        }
        SpinGuard { lock: self }
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        let mut spins = 0u32;
        loop {
            // Relaxed peek; the Acquire compare-exchange does the pairing.
            if self.locked.load(Ordering::Relaxed) == 0
                && self.locked.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                return;
            }
            if spins < 64 {
                spins += 1;
                core::hint::spin_loop();
            } else {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
    }

    fn unlock(&self) {
        // Release pairs with the Acquire of the next `lock`.
        self.locked.store(0, Ordering::Release);
    }

    /// Puts the lock back to unlocked.
    ///
    /// # Safety
    /// Only for a child process right after `fork()`, or for the thread that holds the lock through a
    /// forgotten guard; the caller restores whatever invariant the protected value needs.
    pub unsafe fn force_unlock_after_fork(&self) {
        self.unlock();
    }
}

guard_deref!(SpinGuard);

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn mutex_excludes_under_contention() {
        // A non-atomic read-modify-write under the lock: lost updates would show if exclusion failed.
        let m = Arc::new(Mutex::new(0u64));
        let threads = 8;
        let per = 20_000;
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..per {
                        let mut g = m.lock();
                        let v = *g;
                        std::hint::black_box(&v);
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*m.lock(), threads * per);
    }

    #[test]
    fn spinlock_excludes_under_contention() {
        let m = Arc::new(SpinLock::new(0u64));
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let mut g = m.lock();
                        let v = *g;
                        std::hint::black_box(&v);
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*m.lock(), 8 * 20_000);
    }

    #[test]
    fn try_lock_fails_while_held() {
        let m = Mutex::new(());
        let g = m.lock();
        assert!(m.try_lock().is_none());
        drop(g);
        assert!(m.try_lock().is_some());
    }

    #[test]
    fn once_runs_exactly_once_across_threads() {
        let once = Arc::new(Once::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let (once, runs) = (once.clone(), runs.clone());
                std::thread::spawn(move || {
                    once.call_once(|| {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        runs.fetch_add(1, Ordering::SeqCst);
                    });
                    // Every caller returns only after the initialiser finished.
                    assert_eq!(runs.load(Ordering::SeqCst), 1);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert!(once.is_completed());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
