//! A real corosync on this machine for the service tests: each node is a
//! holder process in its own (anonymous) network namespace; corosync runs
//! in that namespace with a private mount namespace whose /run is the
//! node's own directory (corosync's pid file is compiled in). Clients reach
//! a node's corosync from a thread that entered the node's network
//! namespace (abstract unix sockets are per network namespace).
//!
//! Everything started here carries `setpriv --pdeathsig KILL` (dies with
//! the test thread that started it) and is killed by pid when the [`Lab`]
//! is dropped, also on a failed assertion; the namespaces have no names and
//! vanish with their last process; libqb's /dev/shm files of the corosync
//! processes are removed.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Why the lab cannot run here (not root, tools missing), if so.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    for tool in [
        "corosync",
        "corosync-cmapctl",
        "setpriv",
        "nsenter",
        "unshare",
        "ip",
        "mount",
    ] {
        if which(tool).is_none() {
            return Some(format!("{tool} not found"));
        }
    }
    None
}

pub fn which(name: &str) -> Option<PathBuf> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

pub struct Node {
    pub index: usize,
    pub nodeid: u32,
    pub addr: String,
    pub dir: PathBuf,
    holder: Child,
    corosync: Option<Child>,
}

impl Node {
    pub fn holder_pid(&self) -> u32 {
        self.holder.id()
    }

    pub fn corosync_pid(&self) -> Option<u32> {
        self.corosync.as_ref().map(|c| c.id())
    }

    /// Runs argv inside the node's network namespace.
    pub fn run(&self, argv: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.holder_pid().to_string())
            .arg("-n")
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.join("corosync.conf")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log/corosync.log")
    }
}

pub struct Lab {
    pub nodes: Vec<Node>,
    pub cluster_name: String,
    _tmp: tempfile::TempDir,
}

fn conf(cluster_name: &str, dir: &Path, nodes: &[(u32, String)]) -> String {
    let mut s = format!(
        "totem {{\n  version: 2\n  cluster_name: {cluster_name}\n  config_version: 3\n  \
         transport: knet\n  crypto_cipher: none\n  crypto_hash: none\n  token: 500\n  \
         token_coefficient: 0\n  knet_pmtud_interval: 5\n}}\n\
         logging {{\n  to_stderr: no\n  to_syslog: no\n  to_logfile: yes\n  \
         logfile: {log}\n  timestamp: hires\n  blackbox: off\n  debug: off\n}}\n\
         quorum {{\n  provider: corosync_votequorum\n}}\n\
         system {{\n  state_dir: {lib}\n}}\n\
         nodelist {{\n",
        log = dir.join("log/corosync.log").display(),
        lib = dir.join("lib").display(),
    );
    for (id, addr) in nodes {
        s.push_str(&format!(
            "  node {{\n    name: node{id}\n    nodeid: {id}\n    quorum_votes: 1\n    ring0_addr: {addr}\n  }}\n"
        ));
    }
    s.push_str("}\n");
    s
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    /// `n` nodes: one node talks over loopback (127.0.0.1); more nodes are
    /// linked by veth pairs through a chain (10.99.0.K/24).
    pub fn new(n: usize, cluster_name: &str) -> Lab {
        assert!((1..=2).contains(&n));
        let tmp = tempfile::Builder::new()
            .prefix("pmxcfs-services-lab-")
            .tempdir()
            .expect("tempdir");
        let mut lab = Lab {
            nodes: Vec::new(),
            cluster_name: cluster_name.to_string(),
            _tmp: tmp,
        };
        let addrs: Vec<(u32, String)> = (1..=n as u32)
            .map(|i| {
                let a = if n == 1 {
                    "127.0.0.1".to_string()
                } else {
                    format!("10.99.0.{i}")
                };
                (i, a)
            })
            .collect();
        for (i, (id, addr)) in addrs.iter().enumerate() {
            let dir = lab._tmp.path().join(format!("n{id}"));
            for sub in ["run", "lib", "log"] {
                fs::create_dir_all(dir.join(sub)).unwrap();
            }
            // the holder: a network namespace with lo up, alive until killed
            // or until this test thread dies
            let mut holder = Command::new("setpriv")
                .args([
                    "--pdeathsig",
                    "KILL",
                    "--",
                    "unshare",
                    "--net",
                    "--",
                    "sh",
                    "-c",
                ])
                .arg("ip link set lo up && echo ready && exec sleep 100000")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn holder");
            let mut line = String::new();
            let stdout = holder.stdout.take().unwrap();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            let node = Node {
                index: i,
                nodeid: *id,
                addr: addr.clone(),
                dir,
                holder,
                corosync: None,
            };
            lab.nodes.push(node);
            assert_eq!(line.trim(), "ready", "holder of node {id} failed");
        }
        if n == 2 {
            let (a, b) = (lab.nodes[0].holder_pid(), lab.nodes[1].holder_pid());
            run_ok(
                Command::new("nsenter")
                    .args(["-t", &a.to_string(), "-n", "--"])
                    .args([
                        "ip",
                        "link",
                        "add",
                        "eth0",
                        "type",
                        "veth",
                        "peer",
                        "name",
                        "eth0",
                        "netns",
                        &b.to_string(),
                    ]),
            );
            for node in &lab.nodes {
                let pid = node.holder_pid().to_string();
                run_ok(
                    Command::new("nsenter")
                        .args(["-t", &pid, "-n", "--"])
                        .args([
                            "ip",
                            "addr",
                            "add",
                            &format!("{}/24", node.addr),
                            "dev",
                            "eth0",
                        ]),
                );
                run_ok(
                    Command::new("nsenter")
                        .args(["-t", &pid, "-n", "--"])
                        .args(["ip", "link", "set", "eth0", "up"]),
                );
            }
        }
        for node in &lab.nodes {
            fs::write(node.conf_path(), conf(cluster_name, &node.dir, &addrs)).unwrap();
        }
        lab
    }

    /// Starts corosync on node `i` (not waiting).
    pub fn start_corosync(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.corosync.is_none());
        let script = format!(
            "mount --bind {run} /run && exec corosync -f -c {conf}",
            run = node.dir.join("run").display(),
            conf = node.conf_path().display()
        );
        let out = fs::File::create(node.dir.join("log/corosync.out")).unwrap();
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "nsenter", "-t"])
            .arg(node.holder_pid().to_string())
            .args([
                "-n",
                "--",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
            ])
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn corosync");
        node.corosync = Some(child);
    }

    /// Waits until node `i`'s corosync answers cmap requests.
    pub fn wait_corosync_ready(&self, i: usize, timeout: Duration) {
        let node = &self.nodes[i];
        let end = Instant::now() + timeout;
        loop {
            let out = node.run(&["corosync-cmapctl", "-g", "totem.cluster_name"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < end,
                "corosync on node {} not ready: {}\nlog:\n{}",
                node.nodeid,
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(node.log_path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills node `i`'s corosync with `sig` and reaps it; removes its libqb
    /// shared memory files.
    pub fn kill_corosync(&mut self, i: usize, sig: Signal) {
        let node = &mut self.nodes[i];
        if let Some(mut c) = node.corosync.take() {
            let pid = c.id();
            let _ = kill(Pid::from_raw(pid as i32), sig);
            let _ = c.wait();
            remove_qb_shm(pid);
        }
    }

    /// Runs `f` on a thread inside node `i`'s network namespace (threads
    /// it starts stay there).
    pub fn in_node<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let ns = fs::File::open(format!("/proc/{}/ns/net", self.nodes[i].holder_pid()))
            .expect("open netns");
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("thread in node")
        })
    }
}

/// Removes /dev/shm/qb-<pid>-* (libqb connection files of a server pid).
pub fn remove_qb_shm(pid: u32) {
    let prefix = format!("qb-{pid}-");
    if let Ok(rd) = fs::read_dir("/dev/shm") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let p = e.path();
                let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                for f in ["log/corosync.out", "log/corosync.log"] {
                    let text = fs::read_to_string(node.dir.join(f)).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    eprintln!("--- node {} {f} (last lines):", node.nodeid);
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
        for i in 0..self.nodes.len() {
            self.kill_corosync(i, Signal::SIGKILL);
        }
        for node in &mut self.nodes {
            let _ = kill(Pid::from_raw(node.holder.id() as i32), Signal::SIGKILL);
            let _ = node.holder.wait();
        }
    }
}
