//! Shared memory files and their mappings for the ring buffers: creating a
//! file owned by the client (`qb_sys_mmap_file_open`, `qb_rb_chown`,
//! `qb_rb_chmod`), mapping it once or twice back to back
//! (`qb_sys_circular_mmap`), and undoing all of it on drop. Every mapping
//! is registered with the SIGBUS guard.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use crate::error::IpcError;
use crate::sigbus::GuardedRange;

/// One `mmap` of a file, or the reserved range of a circular mapping,
/// guarded against SIGBUS (see [`crate::sigbus`]).
pub struct Mapping {
    pub ptr: NonNull<u8>,
    len: usize,
    guard: Option<GuardedRange>,
}

// SAFETY: a Mapping is plain memory owned by this value; it is not tied to
// the thread that created it.
unsafe impl Send for Mapping {}

impl Mapping {
    fn check(addr: *mut libc::c_void) -> io::Result<NonNull<u8>> {
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(addr.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// Map `len` bytes of `file` shared, read-write.
    pub fn shared(file: &File, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL); the fd
        // is valid for the call.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        let mut m = Mapping {
            ptr: Self::check(addr)?,
            len,
            guard: None,
        };
        m.guard = Some(GuardedRange::register(m.ptr.as_ptr(), len)?);
        Ok(m)
    }

    /// Was the mapping replaced after the client truncated the file?
    pub fn hit(&self) -> bool {
        self.guard.as_ref().is_some_and(|g| g.hit())
    }

    /// Map `len` bytes of `file` twice, back to back (`qb_sys_circular_mmap`).
    pub fn circular(file: &File, len: usize) -> io::Result<Mapping> {
        let total = len
            .checked_mul(2)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: reserve an inaccessible anonymous range chosen by the kernel.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        // From here on the reservation is unmapped on every error path.
        let mut reserved = Mapping {
            ptr: Self::check(addr)?,
            len: total,
            guard: None,
        };
        for half in 0..2 {
            // SAFETY: `half * len` is within the reservation of 2 * len bytes.
            let want = unsafe { reserved.ptr.as_ptr().add(half * len) };
            // SAFETY: MAP_FIXED replaces part of the range we reserved above
            // and own; nothing else lives there.
            let got = unsafe {
                libc::mmap(
                    want.cast(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_FIXED | libc::MAP_SHARED,
                    file.as_raw_fd(),
                    0,
                )
            };
            if got != want.cast() {
                return Err(io::Error::last_os_error());
            }
        }
        reserved.guard = Some(GuardedRange::register(reserved.ptr.as_ptr(), total)?);
        Ok(reserved)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unregister before the range goes away.
        self.guard = None;
        // SAFETY: the range was mapped by us and no reference into it
        // outlives the owning ShmRing.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Unlinks a file when dropped.
pub struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", self.0.display());
            }
        }
    }
}

/// Create a shm file of `len` bytes owned by the client, mode 0600
/// (`qb_sys_mmap_file_open` + `qb_rb_chown` + `qb_rb_chmod`).
pub fn create_file(path: &Path, len: usize, owner: (u32, u32)) -> Result<(File, Unlink), IpcError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| IpcError::shm("cannot create", path, e))?;
    let guard = Unlink(path.to_path_buf());
    let len_off = i64::try_from(len)
        .map_err(|_| IpcError::shm("too large", path, io::Error::from_raw_os_error(libc::EFBIG)))?;
    file.set_len(len as u64)
        .map_err(|e| IpcError::shm("cannot size", path, e))?;
    nix::fcntl::posix_fallocate(file.as_raw_fd(), 0, len_off)
        .map_err(|e| IpcError::shm("cannot allocate", path, io::Error::from(e)))?;
    // Unprivileged (test) servers cannot chown; the client then needs our uid.
    if let Err(e) = std::os::unix::fs::fchown(&file, Some(owner.0), Some(owner.1)) {
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(IpcError::shm("cannot chown", path, e));
        }
    }
    Ok((file, guard))
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(v).ok().filter(|&v| v > 0).unwrap_or(4096)
}
