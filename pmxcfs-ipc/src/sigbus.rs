//! Survive clients that truncate their shared-memory files.
//!
//! The ring buffer files belong to the client (libqb chowns them), so a
//! client can `ftruncate` them while the server has them mapped; the
//! server's next access then raises SIGBUS, which would kill the daemon
//! (the C pmxcfs has this weakness). Every shared mapping is registered
//! here; a SIGBUS inside a registered range replaces the whole range with
//! anonymous zero pages, marks it, and returns, so the faulting access
//! completes on harmless memory. The ring code checks the mark after each
//! access and drops the connection. A SIGBUS anywhere else goes to the
//! previous handler (Rust's, or the default action).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// Ranges that can be guarded at once (6 per connection).
const SLOTS: usize = 8192;

const FREE: u8 = 0;
const BUSY: u8 = 1;
const ACTIVE: u8 = 2;

struct Slot {
    state: AtomicU8,
    start: AtomicUsize,
    len: AtomicUsize,
    hit: AtomicBool,
}

static TABLE: OnceLock<Box<[Slot]>> = OnceLock::new();
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALL: Once = Once::new();

fn table() -> &'static [Slot] {
    TABLE.get_or_init(|| {
        (0..SLOTS)
            .map(|_| Slot {
                state: AtomicU8::new(FREE),
                start: AtomicUsize::new(0),
                len: AtomicUsize::new(0),
                hit: AtomicBool::new(false),
            })
            .collect()
    })
}

/// Find the registered range holding `addr`, replace it with anonymous
/// memory and mark it. Async-signal-safe: atomics and mmap only.
fn absorb(addr: usize) -> bool {
    let Some(table) = TABLE.get() else {
        return false;
    };
    for slot in table.iter() {
        if slot.state.load(Ordering::Acquire) != ACTIVE {
            continue;
        }
        let start = slot.start.load(Ordering::Relaxed);
        let len = slot.len.load(Ordering::Relaxed);
        if addr < start || addr - start >= len {
            continue;
        }
        // SAFETY: [start, start + len) is a live mapping owned by a
        // GuardedRange (it is unregistered before it is unmapped, and the
        // fault comes from the thread using it, which keeps it alive);
        // replacing it with private anonymous memory of the same size keeps
        // every pointer into it valid.
        let res = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if res == libc::MAP_FAILED {
            return false;
        }
        slot.hit.store(true, Ordering::Release);
        return true;
    }
    false
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    if absorb(addr) {
        return;
    }
    let Some(prev) = PREVIOUS.get() else {
        return;
    };
    let handler = prev.sa_sigaction;
    if prev.sa_flags & libc::SA_SIGINFO != 0 && handler != libc::SIG_DFL && handler != libc::SIG_IGN
    {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it
        // has this signature; we forward exactly what we were given.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, ctx);
    } else {
        // Put the old disposition back; the faulting access repeats and
        // gets it (normally: the default action, a core dump).
        // SAFETY: sigaction is async-signal-safe; `prev` is a valid action.
        unsafe {
            libc::sigaction(libc::SIGBUS, prev, std::ptr::null_mut());
        }
    }
}

/// Install the SIGBUS handler (once per process).
pub fn install() {
    INSTALL.call_once(|| {
        table();
        // SAFETY: an all-zero sigaction is a valid value to fill in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: sa_mask is a valid sigset_t to initialise.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: as above, zeroed is valid; sigaction fills it in.
        let mut prev: libc::sigaction = unsafe { std::mem::zeroed() };
        // Query first so that the handler finds PREVIOUS set.
        // SAFETY: valid pointers; a NULL action only queries.
        unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut prev) };
        let _ = PREVIOUS.set(prev);
        // SAFETY: `action` is fully initialised and on_sigbus has the
        // SA_SIGINFO signature.
        if unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) } != 0 {
            tracing::warn!(
                "cannot install the SIGBUS guard: {}",
                io::Error::last_os_error()
            );
        }
    });
}

/// A registered range; unregistered when dropped (before the owner unmaps
/// it).
pub struct GuardedRange {
    slot: usize,
}

impl GuardedRange {
    /// Guard `[start, start + len)`, a mapping the caller owns and keeps
    /// alive for as long as this value lives.
    pub fn register(start: *mut u8, len: usize) -> io::Result<GuardedRange> {
        install();
        for (i, slot) in table().iter().enumerate() {
            if slot
                .state
                .compare_exchange(FREE, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                slot.start.store(start as usize, Ordering::Relaxed);
                slot.len.store(len, Ordering::Relaxed);
                slot.hit.store(false, Ordering::Relaxed);
                slot.state.store(ACTIVE, Ordering::Release);
                return Ok(GuardedRange { slot: i });
            }
        }
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    }

    /// Has the range been replaced after a SIGBUS?
    pub fn hit(&self) -> bool {
        table()[self.slot].hit.load(Ordering::Acquire)
    }
}

impl Drop for GuardedRange {
    fn drop(&mut self) {
        let slot = &table()[self.slot];
        slot.state.store(BUSY, Ordering::Release);
        slot.start.store(0, Ordering::Relaxed);
        slot.len.store(0, Ordering::Relaxed);
        slot.state.store(FREE, Ordering::Release);
    }
}
