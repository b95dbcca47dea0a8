//! Creating a missing RRD file, as status.c does before every update:
//! when the file does not exist, make its directories (mode 0750, never the
//! RRD directory itself) and create it with librrd, step 60, starting at
//! the local midnight of today (`create_rrd_file`).
//!
//! The C daemon creates files with librrd directly even when it updates
//! through rrdcached, and so do we: rrdcached's `CREATE` (there in 1.7.2)
//! would need `-R` to make the per-node storage directories, which Debian's
//! default options do not give, and it would make creation depend on the
//! daemon's `-O` and base directory settings. librrd's own create then tells
//! rrdcached to forget any cached state of the file; our caller does that
//! with `FORGET` (see `writer.rs`).

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use crate::error::RrdError;
use crate::ffi;
use crate::parse::RrdUpdate;
use crate::schema::STEP;

/// Mode of the directories we create (C `checked_mkdir(..., 0750)`).
const DIR_MODE: u32 = 0o750;

/// Local midnight of the day of `now` (C: `localtime`, zero the hour,
/// minute and second, `timelocal`).
pub(crate) fn local_midnight(now: i64) -> i64 {
    // time_t is 64 bits on every target PVE runs on
    let t = now as libc::time_t;
    // SAFETY: an all-zero `struct tm` is a valid value (integers and, on
    // glibc, a NULL `tm_zone` pointer).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r writes only
    // into `tm` and is thread-safe.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return now - now.rem_euclid(86_400);
    }
    tm.tm_sec = 0;
    tm.tm_min = 0;
    tm.tm_hour = 0;
    // SAFETY: `tm` is a valid, initialized struct tm; mktime normalizes it
    // in place and returns -1 on error.
    let midnight = unsafe { libc::mktime(&mut tm) };
    if midnight == -1 {
        now - now.rem_euclid(86_400)
    } else {
        midnight as i64
    }
}

fn mkdir(path: &Path) -> Result<(), RrdError> {
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(RrdError::Mkdir {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Creates the file of `update` under `rrd_dir` unless something exists at
/// its path. Returns whether it created it. `now` is the current time in
/// seconds since the epoch.
pub(crate) fn ensure_file(rrd_dir: &Path, update: &RrdUpdate, now: i64) -> Result<bool, RrdError> {
    let path = update.path_in(rrd_dir);
    if path.exists() {
        return Ok(false);
    }
    if let Err(source) = std::fs::metadata(rrd_dir) {
        return Err(RrdError::RrdDirMissing {
            path: rrd_dir.to_owned(),
            source,
        });
    }
    let kind_dir = rrd_dir.join(update.kind().dir());
    mkdir(&kind_dir)?;
    if let Some(parent) = path.parent() {
        if parent != kind_dir {
            mkdir(parent)?;
        }
    }
    ffi::create(
        &path,
        STEP,
        local_midnight(now),
        &update.kind().create_args(),
    )
    .map_err(|msg| RrdError::Create { path, msg })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::parse::parse_update;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn midnight_is_a_local_day_start() {
        let m = local_midnight(NOW);
        assert!(m <= NOW && NOW - m < 86_400 + 3600, "{m}");
        // a second earlier than midnight is the day before
        assert!(local_midnight(m - 1) < m);
        assert_eq!(local_midnight(m), m);
        assert_eq!(local_midnight(m + 3600), m);
    }

    #[test]
    fn creates_directories_and_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let up = parse_update("pve2-storage/n1/local", b"1700000000:1:2\0").unwrap();
        assert!(ensure_file(dir.path(), &up, NOW).unwrap());
        let path = dir.path().join("pve-storage-9.0/n1/local");
        assert!(path.is_file());
        for d in ["pve-storage-9.0", "pve-storage-9.0/n1"] {
            let mode = std::fs::metadata(dir.path().join(d))
                .unwrap()
                .permissions()
                .mode();
            // 0750 minus the umask
            assert_eq!(mode & 0o7027, 0, "{d}: {mode:o}");
            assert_eq!(mode & 0o700, 0o700, "{d}: {mode:o}");
        }
        assert!(!ensure_file(dir.path(), &up, NOW).unwrap());
    }

    #[test]
    fn existing_paths_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pve-node-9.0/n1")).unwrap();
        let data = format!("1:0:1700000000{}\0", ":1".repeat(12));
        let up = parse_update("pve2-node/n1", data.as_bytes()).unwrap();
        // a directory at the file's path: C's g_file_test(EXISTS) is true too
        assert!(!ensure_file(dir.path(), &up, NOW).unwrap());
    }

    #[test]
    fn missing_rrd_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let up = parse_update("pve2-storage/n1/local", b"1700000000:1:2\0").unwrap();
        let missing = dir.path().join("db");
        let e = ensure_file(&missing, &up, NOW).unwrap_err();
        assert!(matches!(e, RrdError::RrdDirMissing { .. }), "{e}");
        assert!(!missing.exists());
    }
}
