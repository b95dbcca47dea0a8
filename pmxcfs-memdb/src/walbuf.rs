//! A thin SQLite VFS over the default one that writes a commit's WAL
//! frames with one pwrite(2).
//!
//! SQLite writes every WAL frame as two writes, the 24-byte frame header
//! and the page. With 1 KiB pages (backend.rs) a create in the Perl
//! pattern is three commits of ~8 frames: 48 pwrite calls, ~12 us of
//! system time per commit on this machine kind against ~1 us for one
//! write of the same bytes. This VFS gathers the frames of a transaction
//! in memory and writes them when the commit frame is complete, so the
//! bytes on disk, their order and their offsets are exactly SQLite's.
//!
//! Safety of the delay, step by step (sqlite3WalFrames): SQLite writes all
//! frames of a commit, the commit frame last (its header carries the
//! database size, non-zero), and only then publishes them in the
//! wal-index; we write when the commit frame's page arrives, inside that
//! same xWrite call, so the frames are in the file (page cache) before the
//! commit returns and before any reader can look for them. Whatever else
//! touches the WAL file (read, sync, truncate, size, file control, close)
//! writes the gathered bytes first. A write that does not fit the pattern
//! (WAL header, frame header, then its page, contiguous) is written at once
//! after the gathered bytes: nothing unrecognised is ever held back. An
//! error of the delayed write is returned by the call that writes it, the
//! commit's xWrite: SQLite then rolls the transaction back, as with any
//! failed WAL write; a failed write of gathered bytes in any other call
//! is an I/O error, which makes SQLite roll back the whole transaction.
//! Only files opened as WAL are wrapped; the database file and everything
//! else get the default VFS's methods unchanged.
//!
//! The contract with the connection's owner (backend.rs): call [`settle`]
//! after every transaction, committed or rolled back. Frames a transaction
//! spilled before it was rolled back are never read back by SQLite and so
//! would stay gathered; settle writes them then, as SQLite would have done
//! at the spill, before any other connection can write at those offsets.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name to open a connection with.
pub(crate) const VFS_NAME: &CStr = c"pmxcfs-walbuf";

/// Gathered bytes above this are written out (a large transaction), and
/// no write is larger: the unix VFS writes at most 128 KiB - 1 bytes per
/// call (seekAndWriteFd masks the length with 0x1ffff).
const MAX_GATHER: usize = 64 * 1024;
const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

/// What the next write should be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A frame header (or anything: then written at once).
    Header,
    /// The page of the frame whose header was just gathered; `commit`:
    /// that header closes a transaction.
    Page { commit: bool },
}

struct Gather {
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    offset: i64,
    expect: Expect,
    /// End of the furthest write since the WAL header was last written:
    /// only a frame header at or past it is a new frame (appended); one
    /// below it is SQLite rewriting an earlier frame's header
    /// (walRewriteChecksums, after the commit frame) and goes through at
    /// once.
    high: i64,
    /// Size of a frame (header and page), learnt from the first pair: a
    /// frame header starts at 32 + k * frame. (A 24-byte piece elsewhere is
    /// the rest of a write SQLite split at a sector boundary when padding.)
    frame: i64,
    #[cfg(test)]
    writes: u64,
}

/// Our file: SQLite allocates `szOsFile` bytes and we lay out this header
/// followed by the default VFS's file structure (`real`).
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    gather: *mut Gather,
}

/// Offset of the default VFS's file inside ours (16-aligned within our
/// allocation; SQLite's allocations are 8-aligned, which the unix file
/// needs).
const REAL_AT: usize = (std::mem::size_of::<WalFile>() + 15) & !15;

/// The default VFS (for the calls we pass on).
struct Vfs {
    ours: *mut ffi::sqlite3_vfs,
    real: *mut ffi::sqlite3_vfs,
}

// SAFETY: both pointers are to VFS objects that live for the whole process
// (ours is leaked, the default one belongs to SQLite) and SQLite's VFS
// functions may be called from any thread.
unsafe impl Send for Vfs {}
// SAFETY: as above; the objects are never changed after registration.
unsafe impl Sync for Vfs {}

static VFS: OnceLock<Result<Vfs, String>> = OnceLock::new();

fn real_vfs() -> *mut ffi::sqlite3_vfs {
    match VFS.get() {
        Some(Ok(v)) => v.real,
        // only reachable through a registered VFS, so never
        _ => std::ptr::null_mut(),
    }
}

/// Register the VFS (once per process); the name to open with, or why not.
pub(crate) fn register() -> Result<&'static CStr, String> {
    let v = VFS.get_or_init(|| {
        // SAFETY: NULL asks for the default VFS; the result is SQLite's own
        // object (or NULL), valid for the life of the process.
        let real = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
        if real.is_null() {
            return Err("SQLite has no default VFS".into());
        }
        // SAFETY: `real` is non-NULL and points to a registered VFS.
        let r = unsafe { &*real };
        let sz = usize::try_from(r.szOsFile).map_err(|_| "bad szOsFile".to_string())?;
        let ours = Box::leak(Box::new(ffi::sqlite3_vfs {
            iVersion: 2,
            szOsFile: c_int::try_from(REAL_AT + sz).map_err(|_| "bad szOsFile".to_string())?,
            mxPathname: r.mxPathname,
            pNext: std::ptr::null_mut(),
            zName: VFS_NAME.as_ptr(),
            pAppData: std::ptr::null_mut(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            xDlOpen: Some(x_dl_open),
            xDlError: Some(x_dl_error),
            xDlSym: Some(x_dl_sym),
            xDlClose: Some(x_dl_close),
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: Some(x_current_time_int64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        }));
        let ours: *mut ffi::sqlite3_vfs = ours;
        if r.xOpen.is_none()
            || r.xDelete.is_none()
            || r.xAccess.is_none()
            || r.xFullPathname.is_none()
            || r.xRandomness.is_none()
            || r.xSleep.is_none()
            || r.xCurrentTime.is_none()
            || r.iVersion < 2
            || r.xCurrentTimeInt64.is_none()
        {
            return Err("the default SQLite VFS lacks a method".into());
        }
        Ok(Vfs { ours, real })
    });
    let v = v.as_ref().map_err(Clone::clone)?;
    static REGISTERED: OnceLock<c_int> = OnceLock::new();
    // SAFETY: `v.ours` is a complete, leaked VFS object whose methods are
    // defined below; registering it as non-default changes nothing for
    // connections that do not name it.
    let rc = *REGISTERED.get_or_init(|| unsafe { ffi::sqlite3_vfs_register(v.ours, 0) });
    if rc != ffi::SQLITE_OK {
        return Err(format!("sqlite3_vfs_register failed ({rc})"));
    }
    Ok(VFS_NAME)
}

/// The default VFS's file inside ours.
///
/// # Safety
/// `f` points to a file of `szOsFile` bytes allocated by SQLite for our VFS.
unsafe fn real_of(f: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    // SAFETY: REAL_AT + the default szOsFile is within our szOsFile.
    unsafe { f.cast::<u8>().add(REAL_AT).cast() }
}

/// The default methods of an opened real file.
///
/// # Safety
/// `real` was opened successfully by the default VFS.
unsafe fn methods(real: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    // SAFETY: an opened file's pMethods points to the VFS's static methods.
    unsafe { &*(*real).pMethods }
}

/// # Safety
/// `f` is one of our WAL files (opened by `x_open` with WAL_METHODS).
unsafe fn gather_of<'a>(f: *mut ffi::sqlite3_file) -> &'a mut Gather {
    // SAFETY: WAL_METHODS are only installed together with a live Gather,
    // freed in x_close only; SQLite calls a file's methods one at a time.
    unsafe { &mut *(*f.cast::<WalFile>()).gather }
}

/// Write the gathered bytes (SQLITE_OK if none).
///
/// # Safety
/// `f` is one of our WAL files.
unsafe fn flush(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: caller's contract.
    let g = unsafe { gather_of(f) };
    g.expect = Expect::Header;
    if g.buf.is_empty() {
        return ffi::SQLITE_OK;
    }
    // SAFETY: `f` is ours, so real_of gives the opened default file.
    let real = unsafe { real_of(f) };
    #[cfg(test)]
    {
        g.writes += 1;
    }
    let mut rc = ffi::SQLITE_OK;
    let mut done = 0;
    while done < g.buf.len() && rc == ffi::SQLITE_OK {
        let chunk = (g.buf.len() - done).min(MAX_GATHER);
        // SAFETY: the default xWrite of an opened file, with `chunk` bytes
        // of our buffer (chunk <= 64 KiB fits a c_int); it writes all of
        // them or returns an error.
        rc = unsafe {
            match methods(real).xWrite {
                Some(w) => w(
                    real,
                    g.buf.as_ptr().add(done).cast(),
                    chunk as c_int,
                    g.offset + done as i64,
                ),
                None => ffi::SQLITE_IOERR_WRITE,
            }
        };
        done += chunk;
    }
    g.buf.clear();
    rc
}

unsafe extern "C" fn wal_write(
    f: *mut ffi::sqlite3_file,
    data: *const c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    let Ok(n) = usize::try_from(amt) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: SQLite passes `amt` readable bytes at `data`.
    let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), n) };
    // SAFETY: SQLite calls WAL_METHODS only on our WAL files.
    let g = unsafe { gather_of(f) };
    let contiguous = !g.buf.is_empty() && g.offset + g.buf.len() as i64 == off;
    let expect = g.expect;
    if n == WAL_HEADER && off == 0 {
        // a new WAL (or one restarted after a checkpoint) starts here
        g.high = 0;
        g.frame = 0;
    }
    let recognised = match expect {
        Expect::Page { .. } => contiguous,
        Expect::Header => {
            (n == FRAME_HEADER
                && off >= g.high
                && (g.frame == 0 || (off - WAL_HEADER as i64) % g.frame == 0))
                || (n == WAL_HEADER && off == 0)
        }
    };
    g.high = g.high.max(off + n as i64);
    if !recognised || (!g.buf.is_empty() && !contiguous) {
        // SAFETY: `f` is ours.
        let rc = unsafe { flush(f) };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if !recognised {
        // SAFETY: `f` is ours; pass the write on unchanged.
        return unsafe {
            let real = real_of(f);
            match methods(real).xWrite {
                Some(w) => w(real, data, amt, off),
                None => ffi::SQLITE_IOERR_WRITE,
            }
        };
    }
    // flush() may have run: take the state again
    // SAFETY: as above.
    let g = unsafe { gather_of(f) };
    if g.buf.is_empty() {
        g.offset = off;
    }
    g.buf.extend_from_slice(bytes);
    if matches!(expect, Expect::Page { .. }) && g.frame == 0 {
        g.frame = (FRAME_HEADER + n) as i64;
    }
    g.expect = match expect {
        Expect::Header if n == FRAME_HEADER => Expect::Page {
            commit: bytes[4..8] != [0, 0, 0, 0],
        },
        _ => Expect::Header,
    };
    if matches!(expect, Expect::Page { commit: true }) || g.buf.len() > MAX_GATHER {
        // SAFETY: `f` is ours.
        return unsafe { flush(f) };
    }
    ffi::SQLITE_OK
}

/// The connection's open WAL file if it is one of ours (a pointer valid
/// while the connection is open and in WAL mode).
fn our_wal(conn: &rusqlite::Connection) -> Option<*mut ffi::sqlite3_file> {
    let mut p: *mut c_void = std::ptr::null_mut();
    // SAFETY: SQLITE_FCNTL_JOURNAL_POINTER stores the connection's open
    // WAL (or journal) file pointer, or NULL, into `p`; the connection is
    // borrowed, so it stays open meanwhile.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_JOURNAL_POINTER,
            (&mut p as *mut *mut c_void).cast(),
        )
    };
    let f = p.cast::<ffi::sqlite3_file>();
    // SAFETY: a non-NULL pointer is an open file of this connection; its
    // methods tell whether it is one of our WAL files.
    let ours = rc == ffi::SQLITE_OK
        && !f.is_null()
        && unsafe { std::ptr::eq((*f).pMethods, &WAL_METHODS) };
    ours.then_some(f)
}

/// After a transaction: write whatever is still gathered (nothing, as
/// SQLite writes today; a safety net should a version ever write after
/// the commit frame). Err with SQLite's code if that write fails.
pub(crate) fn settle(conn: &rusqlite::Connection) -> Result<(), c_int> {
    let Some(f) = our_wal(conn) else {
        return Ok(());
    };
    // SAFETY: one of our WAL files, used by this connection only, which
    // we hold.
    let held = unsafe { gather_of(f) }.buf.len();
    if held == 0 {
        return Ok(());
    }
    tracing::warn!("{held} bytes of WAL still gathered after a commit: written now");
    // SAFETY: as above.
    match unsafe { flush(f) } {
        ffi::SQLITE_OK => Ok(()),
        rc => Err(rc),
    }
}

unsafe extern "C" fn wal_close(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: `f` is ours (WAL_METHODS).
    let rc = unsafe { flush(f) };
    // SAFETY: `f` is ours; the default xClose of the opened real file, then
    // our Gather (made by Box::into_raw in x_open) is freed exactly once.
    let rc2 = unsafe {
        let real = real_of(f);
        let rc2 = match methods(real).xClose {
            Some(c) => c(real),
            None => ffi::SQLITE_OK,
        };
        let w = f.cast::<WalFile>();
        drop(Box::from_raw((*w).gather));
        (*w).gather = std::ptr::null_mut();
        (*w).base.pMethods = std::ptr::null();
        rc2
    };
    if rc != ffi::SQLITE_OK {
        rc
    } else {
        rc2
    }
}

/// A WAL method that writes the gathered bytes, then passes the call on.
macro_rules! flushing {
    ($name:ident, $field:ident, ($($arg:ident: $ty:ty),*), $ret:ty, $fail:expr) => {
        unsafe extern "C" fn $name(f: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> $ret {
            // SAFETY: SQLite calls WAL_METHODS only on our WAL files.
            if unsafe { flush(f) } != ffi::SQLITE_OK {
                // Not the error of this call: frames SQLite believes
                // written are lost. An I/O error (never SQLITE_FULL, after
                // which SQLite may roll back only the statement and go on)
                // makes it roll back the whole transaction.
                return $fail(ffi::SQLITE_IOERR_WRITE);
            }
            // SAFETY: `f` is ours; the default method of the opened real
            // file with SQLite's own arguments.
            unsafe {
                let real = real_of(f);
                match methods(real).$field {
                    Some(m) => m(real $(, $arg)*),
                    None => $fail(ffi::SQLITE_IOERR),
                }
            }
        }
    };
}

/// A WAL method passed on as is.
macro_rules! passing {
    ($name:ident, $field:ident, ($($arg:ident: $ty:ty),*), $ret:ty, $none:expr) => {
        unsafe extern "C" fn $name(f: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> $ret {
            // SAFETY: SQLite calls WAL_METHODS only on our WAL files; the
            // default method of the opened real file.
            unsafe {
                let real = real_of(f);
                match methods(real).$field {
                    Some(m) => m(real $(, $arg)*),
                    None => $none,
                }
            }
        }
    };
}

fn same(rc: c_int) -> c_int {
    rc
}

flushing!(wal_read, xRead, (buf: *mut c_void, amt: c_int, off: i64), c_int, same);
flushing!(wal_truncate, xTruncate, (size: i64), c_int, same);
flushing!(wal_sync, xSync, (flags: c_int), c_int, same);
flushing!(wal_file_size, xFileSize, (size: *mut i64), c_int, same);
flushing!(wal_file_control, xFileControl, (op: c_int, arg: *mut c_void), c_int, same);
passing!(wal_lock, xLock, (lock: c_int), c_int, ffi::SQLITE_OK);
passing!(wal_unlock, xUnlock, (lock: c_int), c_int, ffi::SQLITE_OK);
passing!(wal_check_reserved, xCheckReservedLock, (out: *mut c_int), c_int, ffi::SQLITE_OK);
passing!(wal_sector_size, xSectorSize, (), c_int, 4096);
passing!(
    wal_device_characteristics,
    xDeviceCharacteristics,
    (),
    c_int,
    0
);

/// Version 1: SQLite maps shared memory and pages of the database file
/// only, never of the WAL.
static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(wal_close),
    xRead: Some(wal_read),
    xWrite: Some(wal_write),
    xTruncate: Some(wal_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(wal_file_size),
    xLock: Some(wal_lock),
    xUnlock: Some(wal_unlock),
    xCheckReservedLock: Some(wal_check_reserved),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(wal_sector_size),
    xDeviceCharacteristics: Some(wal_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    f: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = real_vfs();
    // SAFETY: register() checked that the default VFS has xOpen.
    let open = unsafe { (*real_vfs).xOpen.expect("checked at registration") };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Not a WAL: the default file in place, with its own methods (our
        // allocation is larger than it needs).
        // SAFETY: SQLite's arguments, passed on; `f` has room for it.
        return unsafe { open(real_vfs, name, f, flags, out_flags) };
    }
    // SAFETY: `f` has szOsFile bytes: our header, then the real file.
    let rc = unsafe {
        let w = f.cast::<WalFile>();
        (*w).base.pMethods = std::ptr::null();
        (*w).gather = std::ptr::null_mut();
        open(real_vfs, name, real_of(f), flags, out_flags)
    };
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let gather = Box::into_raw(Box::new(Gather {
        buf: Vec::with_capacity(64 * 1024),
        offset: 0,
        expect: Expect::Header,
        high: 0,
        frame: 0,
        #[cfg(test)]
        writes: 0,
    }));
    // SAFETY: as above; from here on SQLite calls WAL_METHODS on `f`.
    unsafe {
        let w = f.cast::<WalFile>();
        (*w).gather = gather;
        (*w).base.pMethods = &WAL_METHODS;
    }
    ffi::SQLITE_OK
}

/// A VFS method passed on to the default VFS (with its own VFS object).
macro_rules! vfs_passing {
    ($name:ident, $field:ident, ($($arg:ident: $ty:ty),*), $ret:ty, $none:expr) => {
        unsafe extern "C" fn $name(_vfs: *mut ffi::sqlite3_vfs $(, $arg: $ty)*) -> $ret {
            let real = real_vfs();
            // SAFETY: the default VFS's method with SQLite's arguments.
            unsafe {
                match (*real).$field {
                    Some(m) => m(real $(, $arg)*),
                    None => $none,
                }
            }
        }
    };
}

vfs_passing!(x_delete, xDelete, (name: *const c_char, sync_dir: c_int), c_int, ffi::SQLITE_IOERR_DELETE);
vfs_passing!(x_access, xAccess, (name: *const c_char, flags: c_int, out: *mut c_int), c_int, ffi::SQLITE_IOERR_ACCESS);
vfs_passing!(x_full_pathname, xFullPathname, (name: *const c_char, n: c_int, out: *mut c_char), c_int, ffi::SQLITE_CANTOPEN);
vfs_passing!(x_dl_open, xDlOpen, (name: *const c_char), *mut c_void, std::ptr::null_mut());
vfs_passing!(x_dl_error, xDlError, (n: c_int, msg: *mut c_char), (), ());
vfs_passing!(x_dl_close, xDlClose, (h: *mut c_void), (), ());
vfs_passing!(x_randomness, xRandomness, (n: c_int, out: *mut c_char), c_int, 0);
vfs_passing!(x_sleep, xSleep, (us: c_int), c_int, 0);
vfs_passing!(x_current_time, xCurrentTime, (out: *mut f64), c_int, ffi::SQLITE_ERROR);
vfs_passing!(x_get_last_error, xGetLastError, (n: c_int, out: *mut c_char), c_int, 0);
vfs_passing!(x_current_time_int64, xCurrentTimeInt64, (out: *mut i64), c_int, ffi::SQLITE_ERROR);

type DlSym = unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char);

unsafe extern "C" fn x_dl_sym(
    _vfs: *mut ffi::sqlite3_vfs,
    h: *mut c_void,
    sym: *const c_char,
) -> Option<DlSym> {
    let real = real_vfs();
    // SAFETY: the default VFS's method with SQLite's arguments.
    unsafe {
        match (*real).xDlSym {
            Some(m) => m(real, h, sym),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};

    fn open(path: &std::path::Path) -> Connection {
        let name = register().unwrap().to_str().unwrap();
        let c = Connection::open_with_flags_and_vfs(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            name,
        )
        .unwrap();
        c.execute_batch(
            "PRAGMA page_size=1024; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB);",
        )
        .unwrap();
        c
    }

    /// Every commit is in the file when it returns: another connection
    /// (default VFS) and a copy of the files taken right after each commit
    /// (what survives kill -9) see it.
    #[test]
    fn commits_are_in_the_file_when_they_return() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = open(&path);
        let other = Connection::open(&path).unwrap();
        let mut rng = 7u64;
        let mut crashes = 0;
        for i in 0..300i64 {
            let len = rnd(&mut rng) as usize % 9000;
            let v = vec![(i % 251) as u8; len];
            c.execute(UPSERT, rusqlite::params![i % 40, v]).unwrap();
            let got: Vec<u8> = other
                .query_row("SELECT v FROM t WHERE k = ?1", [i % 40], |r| r.get(0))
                .unwrap();
            assert_eq!(got, v, "commit {i} seen by another connection");
            if i % 50 == 0 {
                let (rows, ok, _) = after_crash(dir.path(), dir.path(), &mut crashes);
                assert_eq!(
                    rows.get(&(i % 40)),
                    Some(&v),
                    "commit {i} in a copy of the files"
                );
                assert_eq!(ok, "ok");
            }
        }
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
        let n: i64 = other
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 40);
    }

    /// A commit of a few frames is one write; a rolled-back transaction
    /// leaves the database as it was.
    #[test]
    fn one_write_per_commit_and_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = open(&path);
        c.execute("INSERT INTO t(k, v) VALUES (1, x'00')", [])
            .unwrap();
        let before = gathered(&c).0;
        c.execute("UPDATE t SET v = ?1 WHERE k = 1", [vec![5u8; 4000]])
            .unwrap();
        assert_eq!(
            gathered(&c).0 - before,
            1,
            "one write for a commit of several frames"
        );
        c.execute_batch("BEGIN; UPDATE t SET v = x'01' WHERE k = 1; ROLLBACK;")
            .unwrap();
        let v: Vec<u8> = c
            .query_row("SELECT v FROM t WHERE k = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, vec![5u8; 4000]);
    }

    fn gathered(c: &Connection) -> (u64, usize) {
        let f = our_wal(c).expect("our WAL file is open");
        // SAFETY: one of our WAL files, of this connection, which we hold.
        let g = unsafe { gather_of(f) };
        (g.writes, g.buf.len())
    }

    /// A transaction that spills pages to the WAL and changes them again
    /// makes SQLite rewrite the frame headers' checksums after the commit
    /// frame: they are in the file when the commit returns (recovery from
    /// a copy of the files, without the wal-index, finds the commit).
    #[test]
    fn rewritten_checksums_are_in_the_file_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = open(&path);
        c.execute_batch(
            "PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=20; PRAGMA cache_spill=20; BEGIN;",
        )
        .unwrap();
        for k in 0..300i64 {
            c.execute(
                "INSERT INTO t(k, v) VALUES (?1, ?2)",
                rusqlite::params![k, vec![1u8; 700]],
            )
            .unwrap();
        }
        for k in 0..300i64 {
            c.execute(
                "UPDATE t SET v = ?2 WHERE k = ?1",
                rusqlite::params![k, vec![2u8; 700]],
            )
            .unwrap();
        }
        c.execute_batch("COMMIT;").unwrap();
        assert_eq!(gathered(&c).1, 0, "nothing held back after the commit");
        let (rows, _, _) = after_crash(dir.path(), dir.path(), &mut 0);
        let n = rows.values().filter(|v| **v == vec![2u8; 700]).count();
        assert_eq!(n, 300);
    }

    /// The safety net after a commit writes anything still gathered.
    #[test]
    fn settle_writes_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = open(&path);
        c.execute("INSERT INTO t(k, v) VALUES (1, x'00')", [])
            .unwrap();
        let wal_len = std::fs::metadata(dir.path().join("db-wal")).unwrap().len();
        let f = our_wal(&c).expect("our WAL file is open");
        let zeros = [0u8; FRAME_HEADER];
        // SAFETY: one of our WAL files, of this connection; a 24-byte
        // write past the end of the WAL through our method (an invalid
        // frame header: all zero salts, which recovery ignores) is
        // gathered, not written.
        let rc = unsafe { wal_write(f, zeros.as_ptr().cast(), 24, wal_len as i64) };
        assert_eq!(rc, ffi::SQLITE_OK);
        assert_eq!(gathered(&c).1, FRAME_HEADER);
        settle(&c).unwrap();
        assert_eq!(gathered(&c).1, 0);
        assert_eq!(
            std::fs::metadata(dir.path().join("db-wal")).unwrap().len(),
            wal_len + FRAME_HEADER as u64
        );
        let v: Vec<u8> = c
            .query_row("SELECT v FROM t WHERE k = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, vec![0u8]);
    }

    // ---- attacks: the invariant under every WAL path we can reach ----

    use std::collections::BTreeMap;
    use std::path::Path;

    const UPSERT: &str = "INSERT INTO t(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = ?2";

    /// Seeded LCG step: 31 random bits.
    fn rnd(s: &mut u64) -> u64 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *s >> 33
    }

    /// A value of up to `max` bytes whose pages differ from each other.
    fn blob(s: &mut u64, max: usize) -> Vec<u8> {
        let len = rnd(s) as usize % max.max(1);
        let b = rnd(s) as u8;
        (0..len).map(|i| b.wrapping_add((i / 61) as u8)).collect()
    }

    /// Open `path` with our VFS (`ours`) or the default one and run `setup`.
    fn open_as(path: &Path, ours: bool, setup: &str) -> Connection {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
        let c = if ours {
            let name = register().unwrap().to_str().unwrap();
            Connection::open_with_flags_and_vfs(path, flags, name).unwrap()
        } else {
            Connection::open_with_flags(path, flags).unwrap()
        };
        c.execute_batch(setup).unwrap();
        c
    }

    /// Whether the connection has one of our WAL files open.
    fn our_wal_open(c: &Connection) -> bool {
        our_wal(c).is_some()
    }

    fn rows(c: &Connection) -> rusqlite::Result<BTreeMap<i64, Vec<u8>>> {
        let mut s = c.prepare("SELECT k, v FROM t ORDER BY k")?;
        let r = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        r.collect()
    }

    /// What a crash right now leaves: copy db and db-wal (no -shm, so
    /// recovery runs, as after kill -9) and open the copy with the
    /// default VFS: its rows, integrity_check, frames recovered.
    fn after_crash(dir: &Path, to: &Path, n: &mut u32) -> (BTreeMap<i64, Vec<u8>>, String, i64) {
        *n += 1;
        let copy = to.join(format!("crash{n}"));
        std::fs::create_dir(&copy).unwrap();
        for f in ["db", "db-wal"] {
            if dir.join(f).exists() {
                std::fs::copy(dir.join(f), copy.join(f)).unwrap();
            }
        }
        let r = Connection::open(copy.join("db")).unwrap();
        let got = rows(&r).unwrap();
        let ok: String = r
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        let log: i64 = r
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .unwrap();
        drop(r);
        std::fs::remove_dir_all(copy).unwrap();
        (got, ok, log)
    }

    /// Two WAL files hold the same frames: equal but for the random salts
    /// and the checksums they seed (WAL header bytes 16..32, frame header
    /// bytes 8..24).
    fn same_frames(a: &[u8], b: &[u8], page_size: usize) -> Result<(), String> {
        if a.len() != b.len() {
            return Err(format!("WAL length {} != {}", a.len(), b.len()));
        }
        if a.len() < WAL_HEADER {
            return if a == b {
                Ok(())
            } else {
                Err("WAL header differs".into())
            };
        }
        if a[..16] != b[..16] {
            return Err("WAL header differs".into());
        }
        let frame = FRAME_HEADER + page_size;
        for (n, (x, y)) in a[WAL_HEADER..]
            .chunks(frame)
            .zip(b[WAL_HEADER..].chunks(frame))
            .enumerate()
        {
            let cut = |f: &[u8], r: std::ops::Range<usize>| {
                f[r.start.min(f.len())..r.end.min(f.len())].to_vec()
            };
            if cut(x, 0..8) != cut(y, 0..8) || cut(x, 24..frame) != cut(y, 24..frame) {
                return Err(format!("WAL frame {} differs", n + 1));
            }
        }
        Ok(())
    }

    /// A step of a schedule, run alike on both databases.
    enum St {
        Batch(String),
        /// A statement whose rows are read and dropped (pragmas).
        Query(String),
        Up(i64, Vec<u8>),
        Del(i64, i64),
        /// Close the connection and open it again.
        Reopen,
    }

    /// One database and its three connections.
    struct World {
        dir: tempfile::TempDir,
        conns: Vec<Connection>,
        ours: [bool; 3],
        crashes: u32,
    }

    impl World {
        fn new(ours: [bool; 3], page_size: usize, auto_vacuum: bool, setup: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            let create = format!(
                "PRAGMA page_size={page_size}; PRAGMA auto_vacuum={};
                 PRAGMA journal_mode=WAL; {setup}
                 CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);",
                if auto_vacuum { 2 } else { 0 }
            );
            let conns = (0..3)
                .map(|i| open_as(&path, ours[i], if i == 0 { &create } else { setup }))
                .collect();
            World {
                dir,
                conns,
                ours,
                crashes: 0,
            }
        }

        fn run(&mut self, w: usize, sts: &[St], setup: &str) {
            for st in sts {
                let c = &self.conns[w];
                match st {
                    St::Batch(sql) => c.execute_batch(sql).unwrap(),
                    St::Query(sql) => {
                        let mut s = c.prepare(sql).unwrap();
                        let mut r = s.query([]).unwrap();
                        while r.next().unwrap().is_some() {}
                    }
                    St::Up(k, v) => {
                        c.prepare_cached(UPSERT)
                            .unwrap()
                            .execute(rusqlite::params![k, v])
                            .unwrap();
                    }
                    St::Del(lo, hi) => {
                        c.prepare_cached("DELETE FROM t WHERE k BETWEEN ?1 AND ?2")
                            .unwrap()
                            .execute([lo, hi])
                            .unwrap();
                    }
                    St::Reopen => {
                        let path = self.dir.path().join("db");
                        self.conns[w] = open_as(&path, self.ours[w], setup);
                    }
                }
            }
        }

        fn file(&self, name: &str) -> Vec<u8> {
            std::fs::read(self.dir.path().join(name)).unwrap_or_default()
        }
    }

    /// A seeded random schedule run on two databases in lockstep: `ours`
    /// (connections 0 and 1 with this VFS, 2 with the default one) and a
    /// mirror (all three with the default VFS). SQLite makes the same
    /// decisions on both (spills, restarts, checkpoints), so after every
    /// step the files must hold the same bytes but for the random salts.
    struct Schedule {
        ours: World,
        mirror: World,
        setup: String,
        model: BTreeMap<i64, Vec<u8>>,
        rng: u64,
        page_size: usize,
        commits: u32,
    }

    type Tx = BTreeMap<i64, Option<Vec<u8>>>;

    impl Schedule {
        fn new(seed: u64, page_size: usize, auto_vacuum: bool, sync: &str) -> Self {
            // about 1 MiB of WAL before an automatic checkpoint
            let setup = format!(
                "PRAGMA synchronous={sync}; PRAGMA wal_autocheckpoint={};",
                (1 << 20) / page_size
            );
            Schedule {
                ours: World::new([true, true, false], page_size, auto_vacuum, &setup),
                mirror: World::new([false; 3], page_size, auto_vacuum, &setup),
                setup,
                model: BTreeMap::new(),
                rng: seed,
                page_size,
                commits: 0,
            }
        }

        fn r(&mut self, n: u64) -> u64 {
            rnd(&mut self.rng) % n
        }

        /// `n` writes of keys below 300 (values up to `max` bytes), one in
        /// ten a delete of a few keys.
        fn writes(&mut self, n: u64, max: usize, out: &mut Vec<St>, tx: &mut Tx) {
            for _ in 0..n {
                let k = self.r(300) as i64;
                if self.r(10) == 0 {
                    let hi = k + self.r(8) as i64;
                    out.push(St::Del(k, hi));
                    for d in k..=hi {
                        tx.insert(d, None);
                    }
                } else {
                    let v = blob(&mut self.rng, max);
                    tx.insert(k, Some(v.clone()));
                    out.push(St::Up(k, v));
                }
            }
        }

        fn b(sql: &str) -> St {
            St::Batch(sql.to_string())
        }

        /// One random step: (connection, statements, committed changes).
        fn plan(&mut self) -> (usize, Vec<St>, Option<Tx>, &'static str) {
            let w = [0, 0, 0, 1, 2][self.r(5) as usize];
            let ps = self.page_size;
            let small = Self::b("PRAGMA cache_size=6");
            let normal = Self::b("PRAGMA cache_size=2000");
            let mut s = Vec::new();
            let mut tx = Tx::new();
            let kind = match self.r(20) {
                0..=5 => {
                    s.push(Self::b("BEGIN"));
                    let n = 1 + self.r(3);
                    self.writes(n, 3000, &mut s, &mut tx);
                    s.push(Self::b("COMMIT"));
                    "small commit"
                }
                // many times the gather limit, up to MiBs
                6 => {
                    s.push(Self::b("BEGIN"));
                    let total = 70_000 + self.r(600_000) as usize;
                    let (mut done, mut k) = (0, 1000);
                    while done < total {
                        let v = blob(&mut self.rng, 200_000);
                        done += v.len() + 1;
                        tx.insert(k, Some(v.clone()));
                        s.push(St::Up(k, v));
                        k += 1;
                    }
                    s.push(Self::b("COMMIT"));
                    "large commit"
                }
                // spills, then changes spilled pages again: frames
                // overwritten in place, checksums rewritten at commit
                7..=8 => {
                    s.extend([small, Self::b("BEGIN")]);
                    let n = 20 + self.r(60);
                    self.writes(n, 2 * ps.min(4096), &mut s, &mut tx);
                    let n = 10 + self.r(60);
                    self.writes(n, 2 * ps.min(4096), &mut s, &mut tx);
                    s.extend([Self::b("COMMIT"), normal]);
                    "spilled commit"
                }
                // nested savepoints, spilled, rolled back to, released
                9..=10 => {
                    s.extend([small, Self::b("BEGIN")]);
                    let n = self.r(30);
                    self.writes(n, 2000, &mut s, &mut tx);
                    s.push(Self::b("SAVEPOINT a"));
                    let before = tx.clone();
                    let n = 20 + self.r(60);
                    self.writes(n, 2000, &mut s, &mut tx);
                    s.push(Self::b("SAVEPOINT b"));
                    let inner = tx.clone();
                    let n = self.r(30);
                    self.writes(n, 2000, &mut s, &mut tx);
                    if self.r(2) == 0 {
                        s.push(Self::b("ROLLBACK TO b"));
                        tx = inner;
                    }
                    s.push(Self::b("RELEASE b"));
                    if self.r(3) != 0 {
                        s.push(Self::b("ROLLBACK TO a"));
                        tx = before;
                    }
                    let n = self.r(20);
                    self.writes(n, 2000, &mut s, &mut tx);
                    s.extend([Self::b("RELEASE a"), Self::b("COMMIT"), normal]);
                    "savepoints"
                }
                // a spilled transaction rolled back (from an empty WAL half
                // of the time: nothing of it is read back meanwhile), then
                // a smaller commit at the same offsets by the same
                // connection (another one committing in between is
                // rolled_back_spill_is_not_written_over_another_connections_commit)
                11..=12 => {
                    s.push(small);
                    if self.r(2) == 0 {
                        s.push(St::Query("PRAGMA wal_checkpoint(TRUNCATE)".into()));
                    }
                    s.push(Self::b("BEGIN"));
                    let n = 30 + self.r(60);
                    self.writes(n, 2000, &mut s, &mut Tx::new());
                    s.extend([Self::b("ROLLBACK"), normal, Self::b("BEGIN")]);
                    let n = 1 + self.r(3);
                    self.writes(n, 1500, &mut s, &mut tx);
                    s.push(Self::b("COMMIT"));
                    "rollback, then a commit"
                }
                13..=14 => {
                    let mode = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"][self.r(4) as usize];
                    s.push(St::Query(format!("PRAGMA wal_checkpoint({mode})")));
                    "checkpoint"
                }
                15 => {
                    let limit = [-1, 0, 32768, 1 << 20][self.r(4) as usize];
                    s.push(St::Query(format!("PRAGMA journal_size_limit={limit}")));
                    "journal_size_limit"
                }
                16 => {
                    if self.r(3) == 0 {
                        s.push(Self::b("VACUUM"));
                    } else {
                        let n = 1 + self.r(50);
                        s.push(St::Query(format!("PRAGMA incremental_vacuum({n})")));
                    }
                    "vacuum"
                }
                17 => {
                    s.push(St::Reopen);
                    "reopen"
                }
                _ => {
                    s.push(St::Query("SELECT * FROM t".into()));
                    "read"
                }
            };
            let committed = s.iter().any(|st| matches!(st, St::Up(..) | St::Del(..)));
            (w, s, committed.then_some(tx), kind)
        }

        fn step(&mut self, i: u32) {
            let (w, sts, tx, kind) = self.plan();
            let what = format!("page {} step {i}: {kind} on {w}", self.page_size);
            self.ours.run(w, &sts, &self.setup);
            self.mirror.run(w, &sts, &self.setup);
            let committed = tx.is_some();
            if let Some(tx) = tx {
                self.commits += 1;
                for (k, v) in tx {
                    match v {
                        Some(v) => self.model.insert(k, v),
                        None => self.model.remove(&k),
                    };
                }
            }
            self.check(&what, committed);
        }

        /// Nothing gathered on our connections, the same bytes in both
        /// databases' files, and the same after a crash.
        fn check(&mut self, what: &str, committed: bool) {
            for (i, c) in self.ours.conns.iter().enumerate() {
                if our_wal_open(c) {
                    assert_eq!(gathered(c).1, 0, "{what}: bytes held on connection {i}");
                }
            }
            assert!(
                self.ours.file("db") == self.mirror.file("db"),
                "{what}: database files differ"
            );
            if let Err(e) = same_frames(
                &self.ours.file("db-wal"),
                &self.mirror.file("db-wal"),
                self.page_size,
            ) {
                panic!("{what}: {e}");
            }
            if !committed {
                return;
            }
            let ours = after_crash(
                self.ours.dir.path(),
                self.ours.dir.path(),
                &mut self.ours.crashes,
            );
            let mirror = after_crash(
                self.mirror.dir.path(),
                self.mirror.dir.path(),
                &mut self.mirror.crashes,
            );
            // Compared with the mirror, not with the model: SQLite 3.40.1
            // itself (3.46 too) can lose a commit at recovery after ROLLBACK
            // TO a savepoint below a frame overwritten in place (iReCksum
            // is not reset by sqlite3WalSavepointUndo, so the commit's
            // frames keep zero salts); ours must lose exactly the same.
            assert_eq!(ours.1, mirror.1, "{what}: integrity after a crash");
            assert_eq!(ours.2, mirror.2, "{what}: frames recovered after a crash");
            assert!(ours.0 == mirror.0, "{what}: rows after a crash");
        }
    }

    /// Seeded random schedules, each on our database and a mirror with the
    /// default VFS in lockstep, over three connections (two of ours, one
    /// default), page sizes 512 to 65536, with and without auto_vacuum:
    /// small, large (MiB) and spilled commits, checksum rewrites, nested
    /// savepoints rolled back to, spilled rollbacks followed by smaller
    /// commits at the same offsets, checkpoints of every mode (WAL restart)
    /// from either VFS, journal_size_limit, VACUUM, incremental vacuum,
    /// reopening. After every step nothing is gathered and both files
    /// (and what a crash leaves of them) are the same but for the salts.
    #[test]
    fn random_schedules_write_what_sqlite_writes() {
        for (seed, ps, av, sync, steps) in [
            (1u64, 512, false, "NORMAL", 50),
            (2, 1024, true, "NORMAL", 50),
            (3, 4096, false, "FULL", 40),
            (4, 65536, true, "NORMAL", 16),
        ] {
            let mut s = Schedule::new(seed, ps, av, sync);
            for i in 0..steps {
                s.step(i);
            }
            assert!(s.commits > steps / 3, "page {ps}: {} commits", s.commits);
        }
    }

    /// mxFrame of the live wal-index (the first header copy in -shm).
    fn live_mx_frame(dir: &Path) -> i64 {
        let shm = std::fs::read(dir.join("db-shm")).unwrap();
        i64::from(u32::from_ne_bytes(shm[16..20].try_into().unwrap()))
    }

    /// Our connection rolls back a transaction that spilled pages to an
    /// empty WAL, so nothing of it was read back: its frames (and the WAL
    /// header) would stay gathered after the ROLLBACK, and the next call of
    /// ours on the WAL would write them over the commit another connection
    /// made meanwhile at the same offsets. settle() after the rollback (the
    /// owner's contract) writes them at once.
    #[test]
    fn rolled_back_spill_is_not_written_over_another_connections_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = open(&path);
        c.execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=10;")
            .unwrap();
        c.execute("INSERT INTO t(k, v) VALUES (0, x'00')", [])
            .unwrap();
        let other = Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); BEGIN;")
            .unwrap();
        for k in 1..40i64 {
            c.execute(UPSERT, rusqlite::params![k, vec![1u8; 700]])
                .unwrap();
        }
        c.execute_batch("ROLLBACK").unwrap();
        // the owner's part of the contract (backend.rs does it after every
        // transaction)
        settle(&c).unwrap();
        assert_eq!(
            gathered(&c).1,
            0,
            "nothing held after the rollback and settle"
        );
        other
            .execute(UPSERT, rusqlite::params![1000, vec![9u8; 3000]])
            .unwrap();
        // ours reads the other connection's commit
        let got: rusqlite::Result<Vec<u8>> =
            c.query_row("SELECT v FROM t WHERE k = 1000", [], |r| r.get(0));
        let (rows, ok, _) = after_crash(dir.path(), dir.path(), &mut 0);
        assert_eq!(ok, "ok");
        assert!(
            rows.get(&1000) == Some(&vec![9u8; 3000]),
            "the other connection's commit lost at recovery"
        );
        assert!(got.is_ok_and(|v| v == vec![9u8; 3000]), "read by ours");
    }

    /// With psow=0 and synchronous=FULL SQLite pads a commit with copies
    /// of its commit frame up to the next sector boundary and splits the
    /// write that crosses it (walWriteToLog: first part, fsync, rest).
    /// When the rest is exactly 24 bytes (the end of the last padding
    /// frame's page: 512-byte pages, frame 405) it looks like a frame
    /// header and stays gathered after the COMMIT returns: a crash copy
    /// then recovers one frame less than the wal-index holds (the commit
    /// itself survives in the frames before).
    #[test]
    fn padding_frames_are_in_the_file_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let name = register().unwrap().to_str().unwrap();
        let c = Connection::open_with_flags_and_vfs(
            format!("file:{}?psow=0", path.display()),
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_URI,
            name,
        )
        .unwrap();
        c.execute_batch(
            "PRAGMA page_size=512; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             PRAGMA wal_autocheckpoint=0; CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);",
        )
        .unwrap();
        let mut crashes = 0;
        for k in 0..60i64 {
            c.execute(UPSERT, rusqlite::params![k, vec![3u8; 100]])
                .unwrap();
            assert_eq!(gathered(&c).1, 0, "commit {k}: bytes held");
            let live = live_mx_frame(dir.path());
            let (rows, ok, log) = after_crash(dir.path(), dir.path(), &mut crashes);
            assert_eq!((rows.len(), ok.as_str()), (k as usize + 1, "ok"));
            assert_eq!(log, live, "commit {k}: frames recovered vs wal-index");
        }
    }

    /// A tmpfs of `size` mounted at a fresh directory (root only),
    /// unmounted on drop; None (the test is skipped) where that fails.
    struct Tmpfs {
        dir: std::path::PathBuf,
        /// Where crash copies go (not on the tmpfs).
        outside: tempfile::TempDir,
    }

    impl Tmpfs {
        fn mount(size: &str) -> Option<Tmpfs> {
            let outside = tempfile::tempdir().ok()?;
            let dir = outside.path().join("fs");
            std::fs::create_dir(&dir).ok()?;
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&dir)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !mounted {
                eprintln!("skipped: cannot mount a tmpfs (needs root)");
            }
            mounted.then_some(Tmpfs { dir, outside })
        }

        /// Fill the file system but for about `room` bytes.
        fn fill(&self, room: u64) {
            use std::io::Write;
            let mut f = std::fs::File::create(self.dir.join("filler")).unwrap();
            let chunk = vec![0u8; 4096];
            while f.write_all(&chunk).is_ok() {}
            let len = f.metadata().unwrap().len();
            f.set_len(len.saturating_sub(room)).unwrap();
        }

        fn free(&self) {
            std::fs::remove_file(self.dir.join("filler")).unwrap();
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.dir).status();
        }
    }

    /// A full file system: a commit whose write fails returns the error
    /// and leaves nothing, every commit before it is in the file (crash
    /// copy), nothing is held, and commits go on once there is room.
    #[test]
    fn full_file_system_fails_the_commit_and_keeps_the_others() {
        let Some(fs) = Tmpfs::mount("2m") else {
            return;
        };
        let path = fs.dir.join("db");
        let c = open(&path);
        c.execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=10;")
            .unwrap();
        let mut model = BTreeMap::new();
        let mut rng = 11u64;
        let mut crashes = 0;
        let mut failed = 0;
        fs.fill(300 << 10);
        for i in 0..100 {
            if failed == 4 {
                // room again, and a WAL that starts over
                fs.free();
                c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
                failed += 1;
            }
            let mut tx = Tx::new();
            let n = 1 + rnd(&mut rng) % 12;
            let r = (|| {
                c.execute_batch("BEGIN")?;
                for _ in 0..n {
                    let k = (rnd(&mut rng) % 60) as i64;
                    let v = blob(&mut rng, 9000);
                    c.execute(UPSERT, rusqlite::params![k, v])?;
                    tx.insert(k, Some(v));
                }
                c.execute_batch("COMMIT")
            })();
            match r {
                Ok(()) => {
                    for (k, v) in tx {
                        model.insert(k, v.unwrap());
                    }
                }
                Err(e) => {
                    assert!(failed < 4, "step {i}: {e} with room");
                    // SQLITE_FULL from SQLite's own write, an I/O error when
                    // a read or sync wrote the gathered frames first
                    assert!(
                        matches!(
                            e.sqlite_error_code(),
                            Some(
                                rusqlite::ErrorCode::DiskFull
                                    | rusqlite::ErrorCode::SystemIoFailure
                            )
                        ),
                        "{e}"
                    );
                    if !c.is_autocommit() {
                        c.execute_batch("ROLLBACK").unwrap();
                    }
                    failed += 1;
                }
            }
            assert_eq!(gathered(&c).1, 0, "step {i}: bytes held");
            let (rows_now, ok, _) = after_crash(&fs.dir, fs.outside.path(), &mut crashes);
            assert_eq!(ok, "ok", "step {i}");
            assert!(
                rows_now == model,
                "step {i}: a crash copy differs from the commits"
            );
            assert!(rows(&c).unwrap() == model, "step {i}: live rows");
            if failed > 4 && i % 10 == 0 {
                c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
            }
        }
        assert!(failed > 4, "the file system never filled up");
        drop(c);
    }

    /// A write of gathered frames that fails (ENOSPC) when a read of the
    /// WAL writes them first is reported as a failed read: a statement
    /// with a statement journal then only rolls itself back, SQLite
    /// believes the spilled frames written, and the transaction commits
    /// on top of frames that are not in the file.
    #[test]
    fn failed_delayed_write_does_not_let_the_transaction_commit() {
        let Some(fs) = Tmpfs::mount("4m") else {
            return;
        };
        let path = fs.dir.join("db");
        let c = open(&path);
        c.execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=10;")
            .unwrap();
        for k in 0..100i64 {
            c.execute(UPSERT, rusqlite::params![k, vec![1u8; 700]])
                .unwrap();
        }
        // from an empty WAL, so that nothing reads the WAL meanwhile
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); BEGIN;")
            .unwrap();
        for k in 1000..1040i64 {
            c.execute(UPSERT, rusqlite::params![k, vec![2u8; 700]])
                .unwrap();
        }
        assert!(gathered(&c).1 > 0, "spilled frames gathered");
        fs.fill(0);
        // reads spilled pages back: the gathered frames are written first
        let r = c.execute(
            "INSERT INTO t(k, v) SELECT k + 100000, v FROM t WHERE k >= 1000",
            [],
        );
        assert!(r.is_err(), "the file system is full");
        fs.free();
        let committed = !c.is_autocommit() && c.execute_batch("COMMIT").is_ok();
        let want: Vec<i64> = if committed {
            (1000..1040).collect()
        } else {
            Vec::new()
        };
        let (rows_now, ok, _) = after_crash(&fs.dir, fs.outside.path(), &mut 0);
        assert_eq!(ok, "ok");
        let got: Vec<i64> = rows_now.range(1000..).map(|(k, _)| *k).collect();
        assert_eq!(got, want, "committed: {committed}; rows after a crash");
        let live: rusqlite::Result<i64> =
            c.query_row("SELECT count(*) FROM t WHERE k >= 1000", [], |r| r.get(0));
        assert_eq!(live.ok(), Some(want.len() as i64), "live rows");
        drop(c);
    }

    /// locking_mode=EXCLUSIVE keeps the wal-index in heap memory (no
    /// -shm): commits, spilled ones too, are in the file when they return.
    #[test]
    fn exclusive_locking_mode_commits_are_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let copies = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = open(&path);
        c.execute_batch("PRAGMA locking_mode=EXCLUSIVE; PRAGMA cache_size=8;")
            .unwrap();
        let mut model = BTreeMap::new();
        let mut rng = 5u64;
        let mut crashes = 0;
        for i in 0..30 {
            c.execute_batch("BEGIN").unwrap();
            for _ in 0..1 + rnd(&mut rng) % 40 {
                let k = (rnd(&mut rng) % 100) as i64;
                let v = blob(&mut rng, 3000);
                c.execute(UPSERT, rusqlite::params![k, v]).unwrap();
                model.insert(k, v);
            }
            c.execute_batch("COMMIT").unwrap();
            assert_eq!(gathered(&c).1, 0, "commit {i}: bytes held");
            let (got, ok, _) = after_crash(dir.path(), copies.path(), &mut crashes);
            assert_eq!(ok, "ok");
            assert!(got == model, "commit {i}: a crash copy differs");
        }
    }
}
