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
//! failed WAL write. Only files opened as WAL are wrapped; the database
//! file and everything else get the default VFS's methods unchanged.

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
    }
    let recognised = match expect {
        Expect::Page { .. } => contiguous,
        Expect::Header => (n == FRAME_HEADER && off >= g.high) || (n == WAL_HEADER && off == 0),
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

/// After a transaction: write whatever is still gathered (nothing, as
/// SQLite writes today; a safety net should a version ever write after
/// the commit frame). Err with SQLite's code if that write fails.
pub(crate) fn settle(conn: &rusqlite::Connection) -> Result<(), c_int> {
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
    if rc != ffi::SQLITE_OK || f.is_null() || !unsafe { std::ptr::eq((*f).pMethods, &WAL_METHODS) }
    {
        return Ok(());
    }
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
            let rc = unsafe { flush(f) };
            if rc != ffi::SQLITE_OK {
                return $fail(rc);
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
        for i in 0..300i64 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (rng >> 33) as usize % 9000;
            let v = vec![(i % 251) as u8; len];
            c.execute(
                "INSERT INTO t(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = ?2",
                rusqlite::params![i % 40, v],
            )
            .unwrap();
            let got: Vec<u8> = other
                .query_row("SELECT v FROM t WHERE k = ?1", [i % 40], |r| r.get(0))
                .unwrap();
            assert_eq!(got, v, "commit {i} seen by another connection");
            if i % 50 == 0 {
                let copy = dir.path().join(format!("copy{i}"));
                std::fs::create_dir(&copy).unwrap();
                for f in ["db", "db-wal"] {
                    std::fs::copy(dir.path().join(f), copy.join(f)).unwrap();
                }
                let crashed = Connection::open(copy.join("db")).unwrap();
                let got: Vec<u8> = crashed
                    .query_row("SELECT v FROM t WHERE k = ?1", [i % 40], |r| r.get(0))
                    .unwrap();
                assert_eq!(got, v, "commit {i} in a copy of the files");
                let ok: String = crashed
                    .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                    .unwrap();
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
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: SQLITE_FCNTL_JOURNAL_POINTER stores the open WAL file's
        // pointer into `p`; the connection is alive and its WAL is open, so
        // it is one of our files, checked by its methods before gather_of.
        unsafe {
            let rc = ffi::sqlite3_file_control(
                c.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_JOURNAL_POINTER,
                (&mut p as *mut *mut c_void).cast(),
            );
            assert_eq!(rc, ffi::SQLITE_OK);
            let f = p.cast::<ffi::sqlite3_file>();
            assert!(std::ptr::eq((*f).pMethods, &WAL_METHODS));
            let g = gather_of(f);
            (g.writes, g.buf.len())
        }
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
        let copy = dir.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        for f in ["db", "db-wal"] {
            std::fs::copy(dir.path().join(f), copy.join(f)).unwrap();
        }
        let r = Connection::open(copy.join("db")).unwrap();
        let n: i64 = r
            .query_row(
                "SELECT count(*) FROM t WHERE v = ?1",
                [vec![2u8; 700]],
                |r| r.get(0),
            )
            .unwrap();
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
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: as in `gathered`; then a 24-byte write past the end of
        // the WAL through our method (an invalid frame header: all zero
        // salts, which recovery ignores) is gathered, not written.
        unsafe {
            ffi::sqlite3_file_control(
                c.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_JOURNAL_POINTER,
                (&mut p as *mut *mut c_void).cast(),
            );
            let zeros = [0u8; FRAME_HEADER];
            let rc = wal_write(p.cast(), zeros.as_ptr().cast(), 24, wal_len as i64);
            assert_eq!(rc, ffi::SQLITE_OK);
        }
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
}
