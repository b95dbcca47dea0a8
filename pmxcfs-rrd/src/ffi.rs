//! A minimal binding of librrd (`rrd.h` of rrdtool 1.7): create and update
//! a file directly, as the C daemon does when rrdcached is not reachable.
//!
//! librrd keeps its error text per thread (`rrd_get_context` uses a pthread
//! key), so clear/call/read-error on one thread is consistent. We still run
//! every librrd call under one process-wide lock: it is cheap next to the
//! file I/O, and it keeps us clear of the parts of librrd that are not
//! thread-safe (`rrd.h`: "rrd_update_r ... only thread-safe if no at-style
//! time specifications get used"; we never pass `@`, see `value.rs`).

use std::ffi::{c_char, c_int, c_ulong, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// The librrd functions we call, resolved at first use with dlopen(3):
/// librrd pulls in some 50 libraries (cairo, pango, X11, ICU, ...) that
/// cost every start of the daemon ~6 ms and its RSS ~7 MB, while most
/// daemons never write an RRD file themselves (rrdcached does, and the
/// files are created once).
struct Sys {
    create_r: CreateR,
    update_r: UpdateR,
    clear_error: ClearError,
    get_error: GetError,
}

/// `int rrd_create_r(const char *filename, unsigned long pdp_step,
/// time_t last_up, int argc, const char **argv);`
type CreateR = unsafe extern "C" fn(
    *const c_char,
    c_ulong,
    libc::time_t,
    c_int,
    *const *const c_char,
) -> c_int;
/// `int rrd_update_r(const char *filename, const char *_template,
/// int argc, const char **argv);`
type UpdateR =
    unsafe extern "C" fn(*const c_char, *const c_char, c_int, *const *const c_char) -> c_int;
/// `void rrd_clear_error(void);`
type ClearError = unsafe extern "C" fn();
/// `char *rrd_get_error(void);` (the calling thread's error text)
type GetError = unsafe extern "C" fn() -> *mut c_char;

/// Sonames tried in order (Debian 12: librrd8 ships librrd.so.8).
const SONAMES: &[&CStr] = &[c"librrd.so.8", c"librrd.so"];

fn dl_error() -> String {
    // SAFETY: dlerror takes no arguments; it returns NULL or a
    // NUL-terminated string valid until the next dl* call on this thread,
    // copied out at once.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        "unknown dlopen error".into()
    } else {
        // SAFETY: non-NULL: a NUL-terminated string (see above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

fn load(sonames: &[&CStr]) -> Result<Sys, String> {
    let mut errors = Vec::new();
    let mut handle = std::ptr::null_mut();
    for name in sonames {
        // SAFETY: `name` is a NUL-terminated string; dlopen runs the
        // library's constructors, which librrd and its dependencies have
        // no preconditions for. The handle is never closed (the functions
        // stay valid for the life of the process).
        handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if !handle.is_null() {
            break;
        }
        errors.push(dl_error());
    }
    if handle.is_null() {
        return Err(format!(
            "librrd could not be loaded (install librrd8): {}",
            errors.join("; ")
        ));
    }
    let sym = |name: &CStr| -> Result<*mut libc::c_void, String> {
        // SAFETY: `handle` is a live dlopen handle, `name` NUL-terminated.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if p.is_null() {
            Err(format!(
                "librrd lacks {}: {}",
                name.to_string_lossy(),
                dl_error()
            ))
        } else {
            Ok(p)
        }
    };
    type Sym = *mut libc::c_void;
    // Each transmute below: the pointer is the address of the librrd
    // function of that name (non-NULL, checked by `sym`), whose C prototype
    // in rrd.h (rrdtool 1.4 to 1.8) is exactly the target type.
    // SAFETY: see above.
    let create_r = unsafe { std::mem::transmute::<Sym, CreateR>(sym(c"rrd_create_r")?) };
    // SAFETY: as above.
    let update_r = unsafe { std::mem::transmute::<Sym, UpdateR>(sym(c"rrd_update_r")?) };
    // SAFETY: as above.
    let clear_error = unsafe { std::mem::transmute::<Sym, ClearError>(sym(c"rrd_clear_error")?) };
    // SAFETY: as above.
    let get_error = unsafe { std::mem::transmute::<Sym, GetError>(sym(c"rrd_get_error")?) };
    Ok(Sys {
        create_r,
        update_r,
        clear_error,
        get_error,
    })
}

fn sys() -> Result<&'static Sys, String> {
    static SYS: OnceLock<Result<Sys, String>> = OnceLock::new();
    SYS.get_or_init(|| load(SONAMES))
        .as_ref()
        .map_err(Clone::clone)
}

/// Serializes all librrd calls of this process.
static LIBRRD: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    // a panic while holding it leaves librrd in no worse state than an error
    LIBRRD.lock().unwrap_or_else(|e| e.into_inner())
}

fn c_string(what: &str, bytes: &[u8]) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| format!("{what} contains a NUL byte"))
}

fn c_path(path: &Path) -> Result<CString, String> {
    c_string("path", path.as_os_str().as_bytes())
}

/// The calling thread's librrd error text. Call with the lock held, right
/// after the failed call.
fn last_error(sys: &Sys) -> String {
    // SAFETY: rrd_get_error takes no arguments and returns the calling
    // thread's error buffer (or NULL if librrd could not allocate its
    // context); it does not transfer ownership.
    let ptr = unsafe { (sys.get_error)() };
    if ptr.is_null() {
        return "unknown librrd error".into();
    }
    // SAFETY: a non-NULL result points to librrd's NUL-terminated per-thread
    // error buffer, which stays valid and unchanged until the next librrd
    // call on this thread; we copy it out before releasing the lock.
    let text = unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned();
    if text.is_empty() {
        "unknown librrd error".into()
    } else {
        text
    }
}

/// `rrd_create_r(path, step, start, args)`: creates the file (librrd writes
/// a temporary file and renames it into place).
pub(crate) fn create(path: &Path, step: u64, start: i64, args: &[String]) -> Result<(), String> {
    let filename = c_path(path)?;
    let args: Vec<CString> = args
        .iter()
        .map(|a| c_string("argument", a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    let argc = c_int::try_from(argv.len()).map_err(|_| "too many arguments".to_string())?;
    let step = c_ulong::try_from(step).map_err(|_| "step out of range".to_string())?;
    let start = libc::time_t::try_from(start).map_err(|_| "start out of range".to_string())?;

    let sys = sys()?;
    let _guard = lock();
    // SAFETY: no arguments, only resets this thread's error buffer.
    unsafe { (sys.clear_error)() };
    // SAFETY: `filename` and every element of `argv` point to NUL-terminated
    // strings owned by `filename` / `args`, which outlive the call; `argc` is
    // the exact length of `argv`; librrd only reads them and keeps no
    // pointer after returning.
    let rc = unsafe { (sys.create_r)(filename.as_ptr(), step, start, argc, argv.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_error(sys))
    }
}

/// `rrd_update_r(path, NULL, 1, [value])`.
pub(crate) fn update(path: &Path, value: &str) -> Result<(), String> {
    let filename = c_path(path)?;
    let value = c_string("value", value.as_bytes())?;
    // rrd_update_r parses the value in place on a copy it makes itself
    let argv: [*const c_char; 1] = [value.as_ptr()];

    let sys = sys()?;
    let _guard = lock();
    // SAFETY: no arguments, only resets this thread's error buffer.
    unsafe { (sys.clear_error)() };
    // SAFETY: `filename` and `argv[0]` point to NUL-terminated strings that
    // outlive the call, argc 1 matches `argv`; a NULL template means "all
    // data sources in order"; librrd keeps no pointer after returning.
    let rc = unsafe { (sys.update_r)(filename.as_ptr(), std::ptr::null(), 1, argv.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_error(sys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{RrdKind, STEP};

    #[test]
    fn missing_library_is_a_clear_error() {
        let e = load(&[c"librrd-not-there.so.99"]).err().unwrap();
        assert!(
            e.contains("install librrd8") && e.contains("librrd-not-there.so.99"),
            "{e}"
        );
    }

    #[test]
    fn create_update_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        create(&path, STEP, 1_700_000_000, &RrdKind::Storage.create_args()).unwrap();
        assert!(path.is_file());
        update(&path, "1700000060:10:5").unwrap();
        // same time again: librrd refuses, with its message
        let e = update(&path, "1700000060:10:5").unwrap_err();
        assert!(e.contains("illegal attempt to update"), "{e}");
        let e = update(&path, "1700000120:10").unwrap_err();
        assert!(e.contains("expected 2 data source readings"), "{e}");
        let e = update(&dir.path().join("missing"), "1700000060:1:2").unwrap_err();
        assert!(!e.is_empty());
        let e = create(
            &dir.path().join("x"),
            STEP,
            1_700_000_000,
            &["DS:bad".into()],
        )
        .unwrap_err();
        assert!(!e.is_empty());
        assert!(create(Path::new("a\0b"), STEP, 0, &[]).is_err());
    }
}
