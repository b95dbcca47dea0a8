//! pmxcfs-ipc against the real libqb client library.
//!
//! Each test starts a server on its own service name with a fake
//! [`StatusOps`] and a temporary database, and talks to it with
//! `tests/qbclient.c` (compiled here with `cc ... -lqb`), run as root, as
//! www-data or as an unprivileged user. The tests that switch users or
//! chown shared memory need root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pmxcfs_api_types::{Errno, Operation};
use pmxcfs_ipc::{ClusterLogMessage, Server, ServerConfig, ServerHandle, StatusOps};
use pmxcfs_memdb::MemDb;

const WWW_DATA: u32 = 33;
const NOBODY: u32 = 65534;

// ---------------------------------------------------------------- client

fn qbclient() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qbclient.c");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let tmp = dir.join(format!("qbclient.{}", std::process::id()));
        let out = Command::new("cc")
            .args(["-O2", "-Wall", "-Werror", "-o"])
            .arg(&tmp)
            .arg(&src)
            .arg("-lqb")
            .output()
            .expect("run cc");
        assert!(
            out.status.success(),
            "cc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = dir.join("qbclient");
        std::fs::rename(&tmp, &bin).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    })
}

/// One line of qbclient output.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Line {
    Connected,
    ConnectFail(i32),
    Reply {
        res: i64,
        id: i32,
        size: i32,
        error: i32,
        data: Vec<u8>,
    },
    Fail(i64),
    Sent(i64),
    Repeat(u64, u64),
    MaxSize(u64),
    Disconnected,
}

fn unhex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "-".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn parse_output(out: &Output) -> Vec<Line> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            match f[0] {
                "CONNECTED" => Line::Connected,
                "CONNECT_FAIL" => Line::ConnectFail(f[1].parse().unwrap()),
                "REPLY" => Line::Reply {
                    res: f[1].parse().unwrap(),
                    id: f[2].parse().unwrap(),
                    size: f[3].parse().unwrap(),
                    error: f[4].parse().unwrap(),
                    data: unhex(f[5]),
                },
                "FAIL" => Line::Fail(f[1].parse().unwrap()),
                "SENT" => Line::Sent(f[1].parse().unwrap()),
                "REPEAT" => Line::Repeat(f[1].parse().unwrap(), f[2].parse().unwrap()),
                "MAXSIZE" => Line::MaxSize(f[1].parse().unwrap()),
                "DISCONNECTED" => Line::Disconnected,
                other => panic!("unexpected qbclient output {other:?} in {stdout}"),
            }
        })
        .collect()
}

// ---------------------------------------------------------------- fake status

/// (pid, priority, ident, tag, msg) of a logged message.
type LogEntry = (u32, u8, Vec<u8>, Vec<u8>, Vec<u8>);

#[derive(Default)]
struct FakeStatus {
    kv: Mutex<HashMap<(String, String), Vec<u8>>>,
    log: Mutex<Vec<LogEntry>>,
}

impl StatusOps for FakeStatus {
    fn fs_version(&self) -> Vec<u8> {
        b"{\n\"starttime\": 1,\n}\n".to_vec()
    }
    fn cluster_info(&self) -> Vec<u8> {
        b"{\"nodename\": \"n1\", \"version\": 0}\n".to_vec()
    }
    fn guest_list(&self) -> Vec<u8> {
        b"{\n\"version\": 3\n}\n".to_vec()
    }
    fn set_status(&self, name: &str, data: &[u8]) -> Result<(), Errno> {
        if data.len() > 32768 {
            return Err(Errno::EFBIG);
        }
        let mut kv = self.kv.lock().unwrap();
        let key = (name.to_string(), String::new());
        if data.is_empty() {
            kv.remove(&key);
        } else {
            kv.insert(key, data.to_vec());
        }
        Ok(())
    }
    fn get_status(&self, name: &str, node: &str) -> Result<Vec<u8>, Errno> {
        let node = if node == "n1" { "" } else { node };
        let kv = self.kv.lock().unwrap();
        kv.get(&(name.to_string(), node.to_string()))
            .cloned()
            .ok_or(Errno::ENOENT)
    }
    fn log_cluster_msg(&self, m: &ClusterLogMessage<'_>) -> Result<(), Errno> {
        self.log.lock().unwrap().push((
            m.pid,
            m.priority,
            m.ident.to_vec(),
            m.tag.to_vec(),
            m.msg.to_vec(),
        ));
        Ok(())
    }
    fn cluster_log(&self, max: u32, user: &[u8]) -> Vec<u8> {
        let mut v = format!("log max={max} user=").into_bytes();
        v.extend_from_slice(user);
        v
    }
    fn rrd_dump(&self) -> Vec<u8> {
        b"pve2-node/n1:1:2:3\n\0".to_vec()
    }
}

// ---------------------------------------------------------------- fixture

/// Sizes of the big files: the largest reply that fits a 1 MiB client
/// buffer, one byte more, and the largest file.
const FITS: usize = 1024 * 1024 - 24;

pub(crate) struct Fixture {
    rt: tokio::runtime::Runtime,
    server: Option<ServerHandle>,
    status: Arc<FakeStatus>,
    service: String,
    /// A copy of the client that other users can run (see `user_client`).
    user_client: OnceLock<(tempfile::TempDir, PathBuf)>,
    _dir: tempfile::TempDir,
}

fn apply(db: &MemDb, op: Operation) {
    db.apply(&op, 0, 1_700_000_000).unwrap();
}

fn write(db: &MemDb, path: &str, data: &[u8]) {
    apply(db, Operation::Create { path: path.into() });
    apply(
        db,
        Operation::Write {
            path: path.into(),
            offset: 0,
            data: data.to_vec(),
            truncate: true,
        },
    );
}

const QEMU_CONF: &str = "name: vm100\nmemory: 2048\ndescription: a \"quoted\" \\ text\nlock: \ntags: x;y  \n\n[snap1]\nname: old\nmemory: 1\n";
const LXC_CONF: &str = "hostname: ct101\nmemory: 512";
const TOKEN_CFG: &str = "root@pam!a 1234\n root@pam!b 5678 \nuser@pve!c abcd";

fn make_db(dir: &Path) -> MemDb {
    let db = MemDb::open(&dir.join("config.db"), None).unwrap();
    for d in [
        "nodes",
        "nodes/n1",
        "nodes/n1/qemu-server",
        "nodes/n1/lxc",
        "nodes/n1/priv",
        "priv",
        "emptydir",
    ] {
        apply(&db, Operation::Mkdir { path: d.into() });
    }
    write(&db, "storage.cfg", b"dir: local\n\tpath /var/lib/vz\n");
    write(&db, "empty.cfg", b"");
    write(&db, "priv/token.cfg", TOKEN_CFG.as_bytes());
    write(&db, "nodes/n1/priv/secret", b"s3cret");
    write(&db, "nodes/n1/qemu-server/100.conf", QEMU_CONF.as_bytes());
    write(&db, "nodes/n1/lxc/101.conf", LXC_CONF.as_bytes());
    write(&db, "nodes/n1/qemu-server/102.conf", b"");
    write(&db, "fits.bin", &vec![b'f'; FITS]);
    write(&db, "toobig.bin", &vec![b't'; FITS + 1]);
    write(&db, "max.bin", &vec![b'm'; 1024 * 1024]);
    db
}

impl Fixture {
    fn new() -> Fixture {
        static N: AtomicUsize = AtomicUsize::new(0);
        Fixture::with_service(format!(
            "pmxcfs-ipc-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// A server on the given service name.
    pub(crate) fn with_service(service: String) -> Fixture {
        Fixture::with_config(ServerConfig {
            service_name: service,
            www_data_gid: WWW_DATA,
            ..ServerConfig::default()
        })
    }

    /// A server with the given settings.
    fn with_config(config: ServerConfig) -> Fixture {
        let service = config.service_name.clone();
        let dir = tempfile::tempdir().unwrap();
        let memdb = Arc::new(make_db(dir.path()));
        let status = Arc::new(FakeStatus::default());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let st: Arc<dyn StatusOps> = status.clone();
        let server = rt
            .block_on(async { Server::start(config, memdb, st) })
            .unwrap();
        qbclient();
        Fixture {
            rt,
            server: Some(server),
            status,
            service,
            user_client: OnceLock::new(),
            _dir: dir,
        }
    }

    /// The client binary where any user can run it: the target dir may be
    /// under a directory other users cannot enter (a clone in /root), so a
    /// copy goes into a fresh directory under /tmp (0755, binary 0755),
    /// removed with the fixture.
    fn user_client(&self) -> &Path {
        &self
            .user_client
            .get_or_init(|| {
                use std::os::unix::fs::PermissionsExt;
                let dir = tempfile::Builder::new()
                    .prefix("pmxcfs-ipc-qbclient.")
                    .tempdir_in("/tmp")
                    .unwrap();
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                    .unwrap();
                let bin = dir.path().join("qbclient");
                std::fs::copy(qbclient(), &bin).unwrap();
                std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
                (dir, bin)
            })
            .1
    }

    fn command(&self, args: &[&str]) -> Command {
        self.command_with(qbclient(), args)
    }

    fn command_with(&self, bin: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.arg(&self.service).args(args);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, args: &[&str]) -> Vec<Line> {
        parse_output(&self.command(args).output().unwrap())
    }

    /// A client run as `uid`/`gid` (std drops the supplementary groups).
    fn command_as(&self, uid: u32, gid: u32, args: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = self.command_with(self.user_client(), args);
        c.uid(uid).gid(gid).current_dir("/");
        c
    }

    fn run_as(&self, uid: u32, gid: u32, args: &[&str]) -> Vec<Line> {
        parse_output(&self.command_as(uid, gid, args).output().unwrap())
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).spawn().unwrap()
    }

    fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.stop());
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------- helpers

/// The reply of a single request on a fresh connection.
fn reply(lines: &[Line]) -> (i32, Vec<u8>) {
    assert_eq!(lines.first(), Some(&Line::Connected), "{lines:?}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    match &lines[1] {
        Line::Reply {
            res,
            size,
            error,
            data,
            ..
        } => {
            assert_eq!(*res, *size as i64);
            assert_eq!(*size as usize, 24 + data.len());
            (*error, data.clone())
        }
        other => panic!("no reply: {other:?}"),
    }
}

fn req(f: &Fixture, id: i32, payload: &[u8]) -> (i32, Vec<u8>) {
    reply(&f.run(&["req", &id.to_string(), &hex(payload)]))
}

fn req_as(f: &Fixture, uid: u32, gid: u32, id: i32, payload: &[u8]) -> (i32, Vec<u8>) {
    reply(&f.run_as(uid, gid, &["req", &id.to_string(), &hex(payload)]))
}

fn name256(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.resize(256, 0);
    v
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn vmid_prop(vmid: u32, prop: &[u8]) -> Vec<u8> {
    let mut v = vmid.to_le_bytes().to_vec();
    v.extend_from_slice(prop);
    v
}

fn vmid_props(vmid: u32, n: u8, props: &[&str]) -> Vec<u8> {
    let mut v = vmid.to_le_bytes().to_vec();
    v.push(n);
    for p in props {
        v.extend_from_slice(&cstr(p));
    }
    v
}

fn log_msg(prio: u8, ident: &str, tag: &str, msg: &[u8]) -> Vec<u8> {
    let mut v = vec![prio, ident.len() as u8 + 1, tag.len() as u8 + 1];
    v.extend_from_slice(&cstr(ident));
    v.extend_from_slice(&cstr(tag));
    v.extend_from_slice(msg);
    v
}

fn raw_msg(id: i32, size: i32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 16];
    v[0..4].copy_from_slice(&id.to_le_bytes());
    v[8..12].copy_from_slice(&size.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

const OK: i32 = 0;
const EPERM: i32 = -libc::EPERM;
const ENOENT: i32 = -libc::ENOENT;
const EIO: i32 = -libc::EIO;
const EINVAL: i32 = -libc::EINVAL;
const EFBIG: i32 = -libc::EFBIG;
const ECHRNG: i32 = -libc::ECHRNG;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Connection directories in /dev/shm of this server for a client pid.
fn shm_dirs(client_pid: u32) -> Vec<PathBuf> {
    let prefix = format!("qb-{}-{}-", std::process::id(), client_pid);
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn status_ops_without_payload() {
    let f = Fixture::new();
    assert_eq!(req(&f, 1, b""), (OK, f.status.fs_version()));
    assert_eq!(req(&f, 2, b""), (OK, f.status.cluster_info()));
    assert_eq!(req(&f, 3, b""), (OK, f.status.guest_list()));
    assert_eq!(req(&f, 10, b""), (OK, b"pve2-node/n1:1:2:3\n\0".to_vec()));
    for id in [1, 2, 3, 10] {
        assert_eq!(req(&f, id, b"x"), (EINVAL, vec![]), "op {id}");
    }
}

#[test]
fn unknown_ops() {
    let f = Fixture::new();
    for id in [0, 9, 14, 99, -2, i32::MAX] {
        let lines = f.run(&["req", &id.to_string(), "00"]);
        match &lines[1] {
            Line::Reply { id: rid, error, .. } => {
                assert_eq!((*rid, *error), (id, ECHRNG));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn set_and_get_status() {
    let f = Fixture::new();
    let mut set = name256("kv/foo");
    set.extend_from_slice(b"bar\0");
    assert_eq!(req(&f, 4, &set), (OK, vec![]));
    let mut get = name256("kv/foo");
    get.extend_from_slice(&name256(""));
    assert_eq!(req(&f, 5, &get), (OK, b"bar\0".to_vec()));
    // The node name selects the table; this node's own name is local.
    let mut get_n1 = name256("kv/foo");
    get_n1.extend_from_slice(&name256("n1"));
    assert_eq!(req(&f, 5, &get_n1), (OK, b"bar\0".to_vec()));
    let mut get_n2 = name256("kv/foo");
    get_n2.extend_from_slice(&name256("n2"));
    assert_eq!(req(&f, 5, &get_n2), (ENOENT, vec![]));
    // Names are cut at 255 bytes (the C server forces name[255] = 0).
    let long = "k".repeat(300);
    let mut set_long = long.as_bytes()[..256].to_vec();
    set_long.extend_from_slice(b"v");
    assert_eq!(req(&f, 4, &set_long), (OK, vec![]));
    let mut get_long = name256(&long[..255]);
    get_long.extend_from_slice(&name256(""));
    assert_eq!(req(&f, 5, &get_long), (OK, b"v".to_vec()));
    // Too large, too short, delete.
    let mut big = name256("kv/big");
    big.extend_from_slice(&vec![1u8; 32769]);
    assert_eq!(req(&f, 4, &big), (EFBIG, vec![]));
    assert_eq!(req(&f, 4, &[0u8; 255]), (EINVAL, vec![]));
    assert_eq!(req(&f, 5, &[0u8; 511]), (EINVAL, vec![]));
    assert_eq!(req(&f, 4, &name256("kv/foo")), (OK, vec![]));
    assert_eq!(req(&f, 5, &get), (ENOENT, vec![]));
    // Invalid UTF-8 keys cannot be stored and are not found.
    let mut bad = b"kv/\xff".to_vec();
    bad.resize(256, 0);
    assert_eq!(req(&f, 4, &bad), (EINVAL, vec![]));
    bad.extend_from_slice(&name256(""));
    assert_eq!(req(&f, 5, &bad), (ENOENT, vec![]));
}

#[test]
fn get_config() {
    let f = Fixture::new();
    let storage = b"dir: local\n\tpath /var/lib/vz\n".to_vec();
    assert_eq!(req(&f, 6, &cstr("storage.cfg")), (OK, storage.clone()));
    assert_eq!(req(&f, 6, &cstr("/storage.cfg")), (OK, storage.clone()));
    // A trailing slash is accepted; a missing final NUL loses a byte.
    assert_eq!(req(&f, 6, &cstr("storage.cfg/")), (OK, storage.clone()));
    assert_eq!(req(&f, 6, b"storage.cfgX"), (OK, storage.clone()));
    assert_eq!(req(&f, 6, b"storage.cfg"), (ENOENT, vec![]));
    assert_eq!(req(&f, 6, b"storage.cfg\0garbage\0"), (OK, storage));
    assert_eq!(req(&f, 6, &cstr("empty.cfg")), (OK, vec![]));
    assert_eq!(req(&f, 6, &cstr("missing.cfg")), (ENOENT, vec![]));
    assert_eq!(req(&f, 6, &cstr("emptydir")), (ENOENT, vec![]));
    assert_eq!(req(&f, 6, &cstr("")), (ENOENT, vec![]));
    assert_eq!(req(&f, 6, b""), (EINVAL, vec![]));
    assert_eq!(
        req(&f, 6, &cstr("priv/token.cfg")),
        (OK, TOKEN_CFG.as_bytes().to_vec())
    );
    assert_eq!(
        req(&f, 6, &cstr("nodes/n1/priv/secret")),
        (OK, b"s3cret".to_vec())
    );
}

#[test]
fn big_replies() {
    let f = Fixture::new();
    assert_eq!(req(&f, 6, &cstr("fits.bin")), (OK, vec![b'f'; FITS]));
    // One byte more does not fit the client's 1 MiB buffer: libqb's read
    // fails with ENOBUFS (PVE::IPCC sees errno ENOBUFS).
    for name in ["toobig.bin", "max.bin"] {
        let lines = f.run(&["req", "6", &hex(&cstr(name))]);
        assert_eq!(lines[1], Line::Fail(-(libc::ENOBUFS as i64)), "{name}");
    }
    // With a larger buffer the whole file arrives.
    let lines = f.run(&["bufsize", "2000000", "req", "6", &hex(&cstr("max.bin"))]);
    assert_eq!(reply(&lines), (OK, vec![b'm'; 1024 * 1024]));
    // A client asking for more gets the server's 1 MiB, which still holds
    // the whole file.
    let lines = f.run(&[
        "--max",
        "4000000",
        "bufsize",
        "2000000",
        "req",
        "6",
        &hex(&cstr("max.bin")),
    ]);
    assert_eq!(reply(&lines), (OK, vec![b'm'; 1024 * 1024]));
    // A client asking for less (libqb asks for at least 12328 bytes) gets
    // what it asked for: the reply does not fit its ring, ENOBUFS; small
    // replies work.
    let lines = f.run(&[
        "--max",
        "8192",
        "bufsize",
        "2000000",
        "req",
        "6",
        &hex(&cstr("max.bin")),
        "req",
        "6",
        &hex(&cstr("storage.cfg")),
    ]);
    assert!(
        matches!(&lines[1], Line::Reply { error, .. } if *error == -libc::ENOBUFS),
        "{lines:?}"
    );
    assert!(
        matches!(&lines[2], Line::Reply { error: 0, .. }),
        "{lines:?}"
    );
    // The connection keeps working after a large reply.
    let lines = f.run(&["req", "6", &hex(&cstr("fits.bin")), "req", "1", "-"]);
    assert!(
        matches!(&lines[2], Line::Reply { error: 0, .. }),
        "{:?}",
        &lines[2]
    );
}

#[test]
fn log_and_cluster_log() {
    let f = Fixture::new();
    let child = f.spawn(&["req", "7", &hex(&log_msg(5, "root@pam", "tag", b"hello\0"))]);
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(reply(&parse_output(&out)), (OK, vec![]));
    // Only a NUL is a message; no final NUL is tolerated (C reads past the
    // message there); empty messages and broken strings are invalid.
    assert_eq!(req(&f, 7, &log_msg(6, "a", "b", b"\0")), (OK, vec![]));
    assert_eq!(req(&f, 7, &log_msg(6, "a", "b", b"nonul")), (OK, vec![]));
    assert_eq!(req(&f, 7, &log_msg(6, "a", "b", b"")), (EINVAL, vec![]));
    assert_eq!(
        req(&f, 7, &[6, 2, 2, b'a', b'x', b'b', 0, b'm', 0]),
        (EINVAL, vec![])
    );
    assert_eq!(
        req(&f, 7, &[6, 2, 2, b'a', 0, b'b', b'x', b'm', 0]),
        (EINVAL, vec![])
    );
    assert_eq!(req(&f, 7, &[6, 200, 2, b'a', 0]), (EINVAL, vec![]));
    assert_eq!(req(&f, 7, &[6, 2]), (EINVAL, vec![]));
    let log = f.status.log.lock().unwrap().clone();
    assert_eq!(log.len(), 3);
    assert_eq!(
        log[0],
        (
            pid,
            5,
            b"root@pam".to_vec(),
            b"tag".to_vec(),
            b"hello".to_vec()
        )
    );
    assert_eq!(log[1].4, b"");
    assert_eq!(log[2].4, b"nonul");

    let mut get = vec![0u8; 16];
    get.extend_from_slice(b"root@pam\0");
    assert_eq!(req(&f, 8, &get), (OK, b"log max=50 user=root@pam".to_vec()));
    get[0] = 7;
    get.pop(); // no final NUL: the last byte is lost
    assert_eq!(req(&f, 8, &get), (OK, b"log max=7 user=root@pa".to_vec()));
    assert_eq!(req(&f, 8, &[0u8; 17]), (OK, b"log max=50 user=".to_vec()));
    assert_eq!(req(&f, 8, &[0u8; 16]), (EINVAL, vec![]));
}

#[test]
fn guest_config_properties() {
    let f = Fixture::new();
    let one = |vmid: u32, prop: &str| req(&f, 11, &vmid_prop(vmid, &cstr(prop)));
    let text = |s: &str| (OK, s.as_bytes().to_vec());
    assert_eq!(
        one(100, "memory"),
        text("{\n\"100\":{\"memory\": \"2048\"}\n}\n")
    );
    assert_eq!(one(100, "lock"), text("{\n\"100\":{\"lock\": \" \"}\n}\n"));
    assert_eq!(
        one(100, "description"),
        text("{\n\"100\":{\"description\": \"a \\\"quoted\\\" \\\\ text\"}\n}\n")
    );
    assert_eq!(
        one(100, "tags"),
        text("{\n\"100\":{\"tags\": \"x;y\"}\n}\n")
    );
    assert_eq!(one(100, "nope"), text("{\n\n}\n"));
    // Last line without newline still counts.
    assert_eq!(
        one(101, "memory"),
        text("{\n\"101\":{\"memory\": \"512\"}\n}\n")
    );
    assert_eq!(
        one(0, "memory"),
        text("{\n\"100\":{\"memory\": \"2048\"},\n\"101\":{\"memory\": \"512\"}\n}\n")
    );
    // An empty config is EIO; unknown VMIDs ENOENT; 1..99 EINVAL.
    assert_eq!(one(102, "memory"), (EIO, vec![]));
    assert_eq!(one(999, "memory"), (ENOENT, vec![]));
    assert_eq!(one(99, "memory"), (EINVAL, vec![]));
    assert_eq!(one(1, "memory"), (EINVAL, vec![]));
    // Property without NUL loses its last byte; not validated in op 11.
    assert_eq!(
        req(&f, 11, &vmid_prop(100, b"memoryX")),
        text("{\n\"100\":{\"memory\": \"2048\"}\n}\n")
    );
    assert_eq!(one(100, "Memory"), text("{\n\n}\n"));
    // The VMID is checked before the property.
    assert_eq!(req(&f, 11, &vmid_prop(999, b"")), (ENOENT, vec![]));
    assert_eq!(req(&f, 11, &vmid_prop(100, b"")), (EINVAL, vec![]));
    assert_eq!(req(&f, 11, &vmid_prop(0, b"")), (EINVAL, vec![]));
    assert_eq!(req(&f, 11, &[100, 0]), (EINVAL, vec![]));

    let many = |vmid: u32, n: u8, props: &[&str]| req(&f, 13, &vmid_props(vmid, n, props));
    assert_eq!(
        many(100, 2, &["name", "memory"]),
        text("{\n\"100\":{\"name\": \"vm100\",\"memory\": \"2048\"}\n}\n")
    );
    assert_eq!(
        many(0, 2, &["memory", "hostname"]),
        text("{\n\"100\":{\"memory\": \"2048\"},\n\"101\":{\"memory\": \"512\",\"hostname\": \"ct101\"}\n}\n")
    );
    // A repeated property gives duplicate keys.
    assert_eq!(
        many(100, 2, &["name", "name"]),
        text("{\n\"100\":{\"name\": \"vm100\",\"name\": \"vm100\"}\n}\n")
    );
    assert_eq!(many(100, 0, &[]), (EINVAL, vec![]));
    assert_eq!(many(100, 1, &[""]), (EINVAL, vec![]));
    assert_eq!(many(100, 1, &["Name"]), (EINVAL, vec![]));
    assert_eq!(many(100, 1, &["1name"]), (EINVAL, vec![]));
    assert_eq!(many(100, 1, &["name", "memory"]), (EINVAL, vec![])); // leftover
    assert_eq!(many(100, 3, &["name", "memory"]), (EINVAL, vec![])); // missing
    assert_eq!(many(999, 0, &[]), (ENOENT, vec![]));
    assert_eq!(many(50, 1, &["name"]), (EINVAL, vec![]));
    assert_eq!(many(102, 1, &["name"]), (EIO, vec![]));
    let mut no_nul = vmid_props(100, 1, &[]);
    no_nul.extend_from_slice(b"name");
    assert_eq!(req(&f, 13, &no_nul), (EINVAL, vec![]));
}

#[test]
fn verify_token() {
    let f = Fixture::new();
    let t = |s: &[u8]| req(&f, 12, s).0;
    assert_eq!(t(b"root@pam!a 1234\0"), OK);
    assert_eq!(t(b"user@pve!c abcd\0"), OK);
    // Whole lines only, surrounding spaces included.
    assert_eq!(t(b"root@pam!b 5678\0"), ENOENT);
    assert_eq!(t(b" root@pam!b 5678 \0"), OK);
    assert_eq!(t(b"root@pam!a 123\0"), ENOENT);
    assert_eq!(t(b"root@pam!a 1234"), EINVAL); // no NUL
    assert_eq!(t(b"root@pam!a\n1234\0"), EINVAL);
    assert_eq!(t(b"root\0pam\0"), EINVAL);
    assert_eq!(t(b"\0"), EINVAL);
    assert_eq!(t(b""), EINVAL);
    // Read-only clients may verify tokens.
    if is_root() {
        assert_eq!(
            req_as(&f, WWW_DATA, WWW_DATA, 12, b"root@pam!a 1234\0").0,
            OK
        );
    }
}

#[test]
fn framing_errors_keep_the_connection() {
    let f = Fixture::new();
    let lines = f.run(&[
        // Shorter than a header.
        "raw",
        "0100000000000000",
        // Size field larger than the message.
        "raw",
        &hex(&raw_msg(6, 1000, &cstr("storage.cfg"))),
        // Size field below the header size.
        "raw",
        &hex(&raw_msg(1, 8, b"")),
        "raw",
        &hex(&raw_msg(1, -5, b"")),
        // Size field smaller than the message: the rest is ignored.
        "raw",
        &hex(&raw_msg(1, 16, b"extra")),
        // Unknown op with a bogus size.
        "raw",
        &hex(&raw_msg(42, 1 << 30, b"")),
        "req",
        "1",
        "-",
    ]);
    let errors: Vec<(i32, i32)> = lines[1..]
        .iter()
        .map(|l| match l {
            Line::Reply { id, error, .. } => (*id, *error),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        errors,
        [
            (1, EINVAL),
            (6, EINVAL),
            (1, EINVAL),
            (1, EINVAL),
            (1, OK),
            (42, ECHRNG),
            (1, OK)
        ]
    );
}

#[test]
fn disconnect_message_and_abandoned_requests() {
    let f = Fixture::new();
    // QB_IPC_MSG_DISCONNECT makes the server close the connection.
    let lines = f.run(&[
        "rawsend",
        &hex(&raw_msg(-3, 16, b"")),
        "sleep",
        "200",
        "req",
        "1",
        "-",
    ]);
    assert_eq!(lines[1], Line::Sent(16));
    assert!(matches!(lines[2], Line::Fail(_)), "{lines:?}");
    // A client that sends and exits at once, one that sends half a message
    // (no notification) and exits, and one killed while waiting.
    let lines = f.run(&["send", "6", &hex(&cstr("fits.bin")), "exit"]);
    assert_eq!(lines[1], Line::Sent(16 + 9));
    let mut c = f.spawn(&["req", "1", "-", "sleep", "10000"]);
    std::thread::sleep(Duration::from_millis(300));
    c.kill().unwrap();
    c.wait().unwrap();
    // Others are served as before.
    assert_eq!(req(&f, 1, b"").0, OK);
    wait_for("no sessions of dead clients", || {
        shm_dirs(c.id()).is_empty()
    });
}

#[test]
fn read_only_www_data() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let f = Fixture::new();
    for (uid, gid) in [(WWW_DATA, WWW_DATA), (0, WWW_DATA), (1000, WWW_DATA)] {
        let r = |id, p: &[u8]| req_as(&f, uid, gid, id, p);
        let mut set = name256("kv/foo");
        set.extend_from_slice(b"bar\0");
        assert_eq!(r(4, &set), (EPERM, vec![]));
        // EPERM comes before any payload check.
        assert_eq!(r(4, b""), (EPERM, vec![]));
        assert_eq!(r(7, &log_msg(5, "a", "b", b"m\0")), (EPERM, vec![]));
        assert_eq!(r(7, b""), (EPERM, vec![]));
        for p in [
            "priv/token.cfg",
            "/priv/x",
            "priv",
            "nodes/n1/priv/secret",
            "nodes/n1//priv/secret",
            "nodes/n1/priv",
        ] {
            assert_eq!(r(6, &cstr(p)), (EPERM, vec![]), "{p}");
        }
        // Path length is checked before privacy.
        assert_eq!(r(6, b""), (EINVAL, vec![]));
        assert_eq!(r(6, &cstr("storage.cfg")).0, OK);
        assert_eq!(r(1, b""), (OK, f.status.fs_version()));
        assert_eq!(r(11, &vmid_prop(100, &cstr("memory"))).0, OK);
    }
    assert!(f.status.log.lock().unwrap().is_empty());
}

#[test]
fn unprivileged_clients_are_refused() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let f = Fixture::new();
    for (uid, gid) in [(NOBODY, NOBODY), (1000, 0), (0, 1000)] {
        let lines = f.run_as(uid, gid, &["req", "1", "-"]);
        assert_eq!(lines, [Line::ConnectFail(-1)], "{uid}/{gid}");
    }
    // No shared memory is created for them.
    let lines = f.run(&["req", "1", "-"]);
    assert_eq!(reply(&lines).0, OK);
}

#[test]
fn sigkill_leaves_no_shared_memory() {
    let f = Fixture::new();
    let mut c = f.spawn(&["req", "1", "-", "sleep", "30000"]);
    let pid = c.id();
    wait_for("session created", || shm_dirs(pid).len() == 1);
    let dir = shm_dirs(pid).remove(0);
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, 6);
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dir.join("qb-request-".to_string() + &f.service + "-header"))
            .unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (0, 0, 0o600));
    }
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    c.wait().unwrap();
    wait_for("shared memory removed", || !dir.exists());
    assert_eq!(req(&f, 2, b"").0, OK);
}

#[test]
fn hundred_concurrent_clients() {
    let f = Fixture::new();
    let children: Vec<Child> = (0..100)
        .map(|i| {
            let mut set = name256(&format!("kv/c{i}"));
            set.extend_from_slice(format!("v{i}").as_bytes());
            f.spawn(&[
                "req",
                "1",
                "-",
                "req",
                "4",
                &hex(&set),
                "sleep",
                "1500",
                "req",
                "6",
                &hex(&cstr("storage.cfg")),
                "repeat",
                "20",
                "2",
                "-",
            ])
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    // All 100 are connected at the same time.
    wait_for("100 sessions", || {
        pids.iter().filter(|p| !shm_dirs(**p).is_empty()).count() == 100
    });
    for c in children {
        let out = c.wait_with_output().unwrap();
        let lines = parse_output(&out);
        assert_eq!(
            lines.len(),
            5,
            "{lines:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for l in &lines[1..4] {
            assert!(matches!(l, Line::Reply { error: 0, .. }), "{l:?}");
        }
        assert!(matches!(lines[4], Line::Repeat(20, _)), "{lines:?}");
    }
    assert_eq!(f.status.kv.lock().unwrap().len(), 100);
    for p in pids {
        wait_for("sessions closed", || shm_dirs(p).is_empty());
    }
}

#[test]
fn stuck_clients_do_not_block_others() {
    let f = Fixture::new();
    // A socket that connects and never sends the connection request.
    let stuck = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(
            pmxcfs_ipc::server::abstract_name(&f.service),
        )
        .unwrap();
        std::os::unix::net::UnixStream::connect_addr(&addr).unwrap()
    };
    // A client that sends requests without reading the answers until the
    // response ring is full (the server then drops it).
    let mut flood = vec![];
    for _ in 0..3 {
        flood.extend(["send", "6"].map(String::from));
        flood.push(hex(&cstr("fits.bin")));
    }
    flood.extend(["sleep", "500", "req", "1", "-"].map(String::from));
    let flood: Vec<&str> = flood.iter().map(|s| s.as_str()).collect();
    let mut slow = f.spawn(&flood);
    // Meanwhile everybody else is served.
    for _ in 0..5 {
        assert_eq!(req(&f, 1, b"").0, OK);
    }
    let out = slow.wait_with_output_ref();
    let lines = parse_output(&out);
    assert!(matches!(lines.last(), Some(Line::Fail(_))), "{lines:?}");
    drop(stuck);
    assert_eq!(req(&f, 1, b"").0, OK);
}

trait WaitRef {
    fn wait_with_output_ref(&mut self) -> Output;
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> Output {
        use std::io::Read;
        let mut stdout = Vec::new();
        self.stdout
            .take()
            .unwrap()
            .read_to_end(&mut stdout)
            .unwrap();
        let status = self.wait().unwrap();
        Output {
            status,
            stdout,
            stderr: Vec::new(),
        }
    }
}

#[test]
fn stop_closes_everything() {
    let mut f = Fixture::new();
    let c = f.spawn(&["req", "1", "-", "sleep", "1500", "req", "1", "-"]);
    let pid = c.id();
    wait_for("session created", || shm_dirs(pid).len() == 1);
    f.stop();
    assert!(shm_dirs(pid).is_empty());
    let lines = parse_output(&c.wait_with_output().unwrap());
    assert!(matches!(lines[2], Line::Fail(_)), "{lines:?}");
    // The socket is gone: ECONNREFUSED.
    assert_eq!(
        f.run(&["req", "1", "-"]),
        [Line::ConnectFail(libc::ECONNREFUSED)]
    );
    // And the name can be bound again.
    let dir = tempfile::tempdir().unwrap();
    let memdb = Arc::new(MemDb::open(&dir.path().join("c.db"), None).unwrap());
    let config = ServerConfig {
        service_name: f.service.clone(),
        ..ServerConfig::default()
    };
    let again =
        f.rt.block_on(async { Server::start(config, memdb, Arc::new(FakeStatus::default())) })
            .unwrap();
    assert_eq!(f.run(&["req", "1", "-"]).len(), 2);
    f.rt.block_on(again.stop());
}

#[test]
fn latency() {
    let f = Fixture::new();
    let lines = f.run(&["repeat", "5000", "1", "-"]);
    let Line::Repeat(ok, usec) = lines[1] else {
        panic!("{lines:?}")
    };
    assert_eq!(ok, 5000);
    eprintln!("GET_FS_VERSION round trip: {:.1} us", usec as f64 / 5000.0);
}

#[test]
fn truncated_shared_memory_does_not_crash_the_server() {
    let f = Fixture::new();
    let c = f.spawn(&["req", "1", "-", "sleep", "1000", "req", "1", "-"]);
    let pid = c.id();
    wait_for("session created", || shm_dirs(pid).len() == 1);
    let dir = shm_dirs(pid).remove(0);
    // What a hostile client could do to its own files: the server's next
    // write into the response ring faults (SIGBUS) and must survive it.
    let data = dir.join(format!("qb-response-{}-data", f.service));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(0)
        .unwrap();
    // The server posts the reply's semaphore (the header is intact), so
    // the client itself then reads its truncated file and dies of SIGBUS,
    // or it sees the connection gone.
    let out = c.wait_with_output().unwrap();
    let lines = parse_output(&out);
    assert!(
        matches!(lines[1], Line::Reply { error: 0, .. }),
        "{lines:?}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.signal() == Some(libc::SIGBUS) || matches!(lines.get(2), Some(Line::Fail(_))),
        "{:?} {lines:?}",
        out.status
    );
    wait_for("session removed", || !dir.exists());
    assert_eq!(req(&f, 1, b"").0, OK);
}

/// Size of a ring's data file for a buffer of `max` bytes (page-rounded
/// room for one message and its chunk header).
fn data_file_size(max: u64) -> u64 {
    (max + 13).next_multiple_of(4096)
}

#[test]
fn shared_memory_follows_the_clients_buffer_size() {
    let f = Fixture::new();
    let mib = 1 << 20;
    for (ask, granted) in [
        (None, mib),
        (Some(16384), 16384),
        // libqb clients ask for at least a connection response.
        (Some(100), 12328),
        (Some(64 * mib), mib),
    ] {
        let ask_s = ask.map(|a: u64| a.to_string());
        let mut args = vec![];
        if let Some(a) = &ask_s {
            args.extend(["--max", a.as_str()]);
        }
        args.extend(["maxsize", "req", "1", "-", "sleep", "20000"]);
        let mut c = f.spawn(&args);
        let pid = c.id();
        wait_for("session created", || shm_dirs(pid).len() == 1);
        let dir = shm_dirs(pid).remove(0);
        let mut total = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            use std::os::unix::fs::MetadataExt;
            let m = e.metadata().unwrap();
            if name.ends_with("-data") {
                assert_eq!(m.len(), data_file_size(granted), "{ask:?}: {name}");
            } else {
                // 8252 bytes as created (the libqb client sizes it to 8248).
                assert!(m.len() <= 8252, "{ask:?}: {name} {}", m.len());
            }
            total += m.blocks() * 512;
        }
        // Three rings, each a header (3 pages) and the data file.
        assert!(
            total <= 3 * (12288 + data_file_size(granted)),
            "{ask:?}: {total}"
        );
        c.kill().unwrap();
        let lines = parse_output(&c.wait_with_output().unwrap());
        assert_eq!(lines[1], Line::MaxSize(granted), "{ask:?}: {lines:?}");
        assert!(
            matches!(lines[2], Line::Reply { error: 0, .. }),
            "{lines:?}"
        );
        wait_for("session removed", || !dir.exists());
    }
}

/// A client that connects, makes one request and holds the connection.
fn hold_as(f: &Fixture, uid: u32, gid: u32) -> Child {
    let mut c = f.command_as(uid, gid, &["req", "1", "-", "sleep", "20000"]);
    let c = c.spawn().unwrap();
    let pid = c.id();
    wait_for("held connection", || shm_dirs(pid).len() == 1);
    c
}

fn release(children: Vec<Child>) {
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

const EAGAIN_CONNECT: Line = Line::ConnectFail(libc::EAGAIN);

#[test]
fn connection_caps_keep_room_for_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let f = Fixture::with_config(ServerConfig {
        service_name: format!("pmxcfs-ipc-test-{}-caps", std::process::id()),
        www_data_gid: WWW_DATA,
        max_connections: 6,
        root_reserved_connections: 2,
        max_connections_per_user: 3,
        ..ServerConfig::default()
    });
    let one = ["req", "1", "-"];
    // www-data holds its three connections; a fourth is refused.
    let mut held: Vec<Child> = (0..3).map(|_| hold_as(&f, WWW_DATA, WWW_DATA)).collect();
    assert_eq!(f.run_as(WWW_DATA, WWW_DATA, &one), [EAGAIN_CONNECT]);
    // Another user of group www-data gets the last one users other than
    // root may have; then nobody but root gets one.
    held.push(hold_as(&f, 1000, WWW_DATA));
    assert_eq!(f.run_as(1001, WWW_DATA, &one), [EAGAIN_CONNECT]);
    assert_eq!(f.run_as(0, WWW_DATA, &one)[0], Line::Connected);
    assert_eq!(req(&f, 1, b"").0, OK);
    // Root's two: one held, one more for a request; beyond that, none.
    held.push(hold_as(&f, 0, 0));
    assert_eq!(req(&f, 1, b"").0, OK);
    held.push(hold_as(&f, 0, 0));
    assert_eq!(f.run(&one), [EAGAIN_CONNECT]);
    release(held);
    // All given back.
    wait_for("room again", || {
        f.run_as(WWW_DATA, WWW_DATA, &one).first() == Some(&Line::Connected)
    });
    assert_eq!(req_as(&f, WWW_DATA, WWW_DATA, 1, b"").0, OK);
}

#[test]
fn shared_memory_cap_per_user() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // Two 1 MiB connections (3 x 1064960 bytes each) fit, a third not.
    let f = Fixture::with_config(ServerConfig {
        service_name: format!("pmxcfs-ipc-test-{}-shm", std::process::id()),
        www_data_gid: WWW_DATA,
        max_shm_bytes_per_user: 7 << 20,
        max_shm_bytes: 8 << 20,
        ..ServerConfig::default()
    });
    let one = ["req", "1", "-"];
    let held: Vec<Child> = (0..2).map(|_| hold_as(&f, WWW_DATA, WWW_DATA)).collect();
    assert_eq!(f.run_as(WWW_DATA, WWW_DATA, &one), [EAGAIN_CONNECT]);
    // A client asking for a small buffer still fits.
    assert_eq!(
        reply(&f.run_as(WWW_DATA, WWW_DATA, &["--max", "16384", "req", "1", "-"])).0,
        OK
    );
    // Root is not limited.
    assert_eq!(req(&f, 1, b"").0, OK);
    release(held);
    wait_for("room again", || {
        f.run_as(WWW_DATA, WWW_DATA, &one).first() == Some(&Line::Connected)
    });
}
