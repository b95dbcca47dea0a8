//! Helpers for the tests with the real tools: a private rrdcached and
//! `rrdtool info` / `rrdtool fetch` readers. A missing tool fails the test
//! with the package to install; nothing is skipped.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const INSTALL_HINT: &str =
    "install Debian's tools: apt-get install -y librrd-dev rrdtool rrdcached";

/// Full path of a tool from PATH (plus /usr/bin and /usr/sbin), or a panic
/// saying what to install.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` not found in PATH: {INSTALL_HINT}"))
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A private rrdcached, in the foreground as our child; killed on drop,
/// also when the test fails.
pub struct Rrdcached {
    child: Option<Child>,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Rrdcached {
    /// Starts `rrdcached -g -l unix:<work>/sock -b <base> -B -p <work>/pid
    /// -j <work>/journal` and waits for its socket to answer.
    pub fn start(work: &Path, base: &Path) -> Rrdcached {
        let socket = work.join("rrdcached.sock");
        let journal = work.join("journal");
        fs::create_dir_all(&journal).unwrap();
        let log = work.join("rrdcached.log");
        let log_file = fs::File::create(&log).unwrap();
        let child = Command::new(tool("rrdcached"))
            .arg("-g")
            .arg("-l")
            .arg(format!("unix:{}", socket.display()))
            .arg("-b")
            .arg(base)
            .arg("-B")
            .arg("-p")
            .arg(work.join("rrdcached.pid"))
            .arg("-j")
            .arg(&journal)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start rrdcached: {e}; {INSTALL_HINT}"));
        let mut daemon = Rrdcached {
            child: Some(child),
            socket,
            log,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("rrdcached exited with {status}: {}", self.log_text());
            }
            if Instant::now() > deadline {
                panic!(
                    "rrdcached socket did not appear in 10 s: {}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Kills the daemon (SIGKILL: no flush, like a crash) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Rrdcached {
    fn drop(&mut self) {
        self.stop();
    }
}

fn rrdtool(args: &[&str]) -> String {
    let out = Command::new(tool("rrdtool"))
        .args(args)
        // read the file itself, never through a daemon
        .env_remove("RRDCACHED_ADDRESS")
        .output()
        .unwrap_or_else(|e| panic!("cannot run rrdtool: {e}; {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "rrdtool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `rrdtool info`: `key = value` lines (string values keep their quotes).
pub fn info(path: &Path) -> HashMap<String, String> {
    rrdtool(&["info", path.to_str().unwrap()])
        .lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `rrdtool fetch <file> <cf> -r 60 -s <start> -e <end>`: DS names and rows
/// by timestamp (unknown is NaN).
pub fn fetch(
    path: &Path,
    cf: &str,
    start: u64,
    end: u64,
) -> (Vec<String>, BTreeMap<u64, Vec<f64>>) {
    let text = rrdtool(&[
        "fetch",
        path.to_str().unwrap(),
        cf,
        "-r",
        "60",
        "-s",
        &start.to_string(),
        "-e",
        &end.to_string(),
    ]);
    let mut lines = text.lines();
    let names = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let rows = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(ts, vals)| {
            let vals = vals
                .split_whitespace()
                .map(|v| {
                    if v.contains("nan") {
                        f64::NAN
                    } else {
                        v.parse().unwrap()
                    }
                })
                .collect();
            (ts.trim().parse().unwrap(), vals)
        })
        .collect();
    (names, rows)
}

/// Local midnight of today, as `date` computes it.
pub fn local_midnight_by_date() -> u64 {
    let out = Command::new(tool("date"))
        .args(["-d", "today 00:00", "+%s"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
