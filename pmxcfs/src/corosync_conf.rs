//! corosync.conf from the database to the host (`dcdb_sync_corosync_conf`):
//! on start, when a delivered write, create or rename touches
//! `corosync.conf`, and after a resync. The database copy wins unless the
//! host's has a higher `config_version`; the host file is replaced
//! atomically (0644); the node that made the change then tells corosync
//! (`corosync-cfgtool -R`) — in the background, so that message
//! processing never waits for it (C sleeps 1 s in its handler there).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pmxcfs_config::config_version;

/// What [`sync`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No corosync.conf in the database.
    NoConfig,
    /// The database copy has no (or a zero) config_version.
    NoVersion,
    /// The host file has the same bytes.
    Unchanged,
    /// The host file is newer: kept.
    HostNewer { db: u64, host: u64 },
    /// The host file was replaced; `notified`: corosync was told.
    Written { version: u64, notified: bool },
}

/// Where the host file is and how corosync is told.
#[derive(Clone, Debug)]
pub struct HostConf {
    pub path: PathBuf,
    /// `corosync-cfgtool -R` (or a replacement in tests); None: never.
    pub reload: Option<Vec<String>>,
    /// Wait before the reload, for the new file to reach every node (C: 1 s).
    pub reload_delay: Duration,
}

impl HostConf {
    pub fn system() -> Self {
        HostConf {
            path: PathBuf::from("/etc/corosync/corosync.conf"),
            reload: Some(vec!["corosync-cfgtool".into(), "-R".into()]),
            reload_delay: Duration::from_secs(1),
        }
    }
}

/// Bring the host file in line with the database's copy `db_conf`.
/// `notify`: this node made the change (only it tells corosync, and only
/// when the host had a config before).
pub fn sync(db_conf: Option<&[u8]>, host: &HostConf, notify: bool) -> Outcome {
    let Some(data) = db_conf.filter(|d| !d.is_empty()) else {
        return Outcome::NoConfig;
    };
    let Some(new_version) = config_version(data).filter(|v| *v != 0) else {
        tracing::error!("unable to parse cluster config_version");
        return Outcome::NoVersion;
    };
    let old = match std::fs::read(&host.path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::error!(
                "unable to read cluster config file '{}' - {e}",
                host.path.display()
            );
            None
        }
    };
    let old_version = old
        .as_deref()
        .filter(|b| !b.is_empty())
        .and_then(config_version)
        .unwrap_or(0);
    if old.as_deref() == Some(data) {
        return Outcome::Unchanged;
    }
    if new_version < old_version {
        tracing::error!("local corosync.conf is newer");
        return Outcome::HostNewer {
            db: new_version,
            host: old_version,
        };
    }
    if let Err(e) = atomic_write(&host.path, data) {
        tracing::error!("unable to write '{}': {e}", host.path.display());
        return Outcome::Unchanged;
    }
    tracing::info!(
        "wrote new corosync config '{}' (version = {new_version})",
        host.path.display()
    );
    let notified = notify && old_version != 0 && host.reload.is_some();
    if notified {
        let argv = host.reload.clone().unwrap_or_default();
        let delay = host.reload_delay;
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            match Command::new(&argv[0]).args(&argv[1..]).output() {
                Ok(o) if !o.status.success() => {
                    tracing::error!("{} failed with {}", argv.join(" "), o.status)
                }
                Err(e) => tracing::error!("{}: {e}", argv.join(" ")),
                Ok(_) => tracing::debug!("{} done", argv.join(" ")),
            }
        });
    }
    Outcome::Written {
        version: new_version,
        notified,
    }
}

/// Write `path` through a temporary file in the same directory, synced,
/// then renamed over it (0644).
fn atomic_write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp.pmxcfs");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn conf(version: u64) -> Vec<u8> {
        format!(
            "totem {{\n  cluster_name: test\n  config_version: {version}\n}}\nnodelist {{\n}}\n"
        )
        .into_bytes()
    }

    fn host(dir: &tempfile::TempDir, marker: &Path) -> HostConf {
        HostConf {
            path: dir.path().join("corosync.conf"),
            reload: Some(vec![
                "sh".into(),
                "-c".into(),
                format!("touch {}", marker.display()),
            ]),
            reload_delay: Duration::ZERO,
        }
    }

    fn wait_for(p: &Path) -> bool {
        for _ in 0..200 {
            if p.exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn rules_of_dcdb_sync_corosync_conf() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("reloaded");
        let h = host(&dir, &marker);
        assert_eq!(sync(None, &h, true), Outcome::NoConfig);
        assert_eq!(sync(Some(b"totem {\n}\n"), &h, true), Outcome::NoVersion);
        // no host file yet: written, nobody told (nothing ran before)
        assert_eq!(
            sync(Some(&conf(3)), &h, true),
            Outcome::Written {
                version: 3,
                notified: false
            }
        );
        assert_eq!(std::fs::read(&h.path).unwrap(), conf(3));
        let mode = std::fs::metadata(&h.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(sync(Some(&conf(3)), &h, true), Outcome::Unchanged);
        // an older database copy leaves the host file alone
        assert_eq!(
            sync(Some(&conf(2)), &h, true),
            Outcome::HostNewer { db: 2, host: 3 }
        );
        assert_eq!(std::fs::read(&h.path).unwrap(), conf(3));
        // a newer one replaces it; only the originating node reloads
        assert_eq!(
            sync(Some(&conf(4)), &h, false),
            Outcome::Written {
                version: 4,
                notified: false
            }
        );
        assert!(!marker.exists());
        assert_eq!(
            sync(Some(&conf(5)), &h, true),
            Outcome::Written {
                version: 5,
                notified: true
            }
        );
        assert!(wait_for(&marker), "corosync was told");
        assert!(!dir.path().join("corosync.tmp.pmxcfs").exists());
    }
}
