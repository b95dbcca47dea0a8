//! Framing and access-order tests of [`Handler::handle_message`].

use std::sync::Mutex;

use pmxcfs_api_types::Operation;

use super::*;
use crate::wire::RequestHeader;

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
}

impl Fake {
    fn call(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
}

impl StatusOps for Fake {
    fn fs_version(&self) -> Vec<u8> {
        b"version".to_vec()
    }
    fn cluster_info(&self) -> Vec<u8> {
        b"members".to_vec()
    }
    fn guest_list(&self) -> Vec<u8> {
        b"vmlist".to_vec()
    }
    fn set_status(&self, name: &str, data: &[u8]) -> Result<(), Errno> {
        self.call(format!("set {name} {data:?}"));
        Ok(())
    }
    fn get_status(&self, name: &str, node: &str) -> Result<Vec<u8>, Errno> {
        self.call(format!("get {name} {node}"));
        Err(Errno::ENOENT)
    }
    fn log_cluster_msg(&self, m: &ClusterLogMessage<'_>) -> Result<(), Errno> {
        self.call(format!("log {} {}", m.pid, m.priority));
        Ok(())
    }
    fn cluster_log(&self, max: u32, user: &[u8]) -> Vec<u8> {
        format!("clog {max} {}", String::from_utf8_lossy(user)).into_bytes()
    }
    fn rrd_dump(&self) -> Vec<u8> {
        b"rrd\0".to_vec()
    }
}

struct Env {
    _dir: tempfile::TempDir,
    fake: Arc<Fake>,
    handler: Handler,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = MemDb::open(&dir.path().join("config.db"), None).unwrap();
    for op in [
        Operation::Mkdir {
            path: "priv".into(),
        },
        Operation::Create {
            path: "priv/token.cfg".into(),
        },
        Operation::Write {
            path: "priv/token.cfg".into(),
            offset: 0,
            data: b"a b\nc d\n".to_vec(),
            truncate: true,
        },
        Operation::Create {
            path: "pub.cfg".into(),
        },
    ] {
        db.apply(&op, 0, 1).unwrap();
    }
    let fake = Arc::new(Fake::default());
    let status: Arc<dyn StatusOps> = fake.clone();
    Env {
        _dir: dir,
        fake,
        handler: Handler::new(Arc::new(db), status),
    }
}

const RW: Client = Client {
    cred: Credentials {
        pid: 77,
        uid: 0,
        gid: 0,
    },
    access: Access::ReadWrite,
};

const RO: Client = Client {
    cred: Credentials {
        pid: 78,
        uid: 33,
        gid: 33,
    },
    access: Access::ReadOnly,
};

fn msg(id: i32, payload: &[u8]) -> Vec<u8> {
    let size = (REQUEST_HEADER_SIZE + payload.len()) as i32;
    let mut m = RequestHeader { id, size }.encode().to_vec();
    m.extend_from_slice(payload);
    m
}

fn with_size(id: i32, size: i32, payload: &[u8]) -> Vec<u8> {
    let mut m = RequestHeader { id, size }.encode().to_vec();
    m.extend_from_slice(payload);
    m
}

fn reply(id: i32, result: Result<&[u8], Errno>) -> Outcome {
    Outcome::Reply {
        id,
        result: result.map(|d| d.to_vec()).map_err(|e| -e.0),
    }
}

#[test]
fn replies_echo_the_id() {
    let e = env();
    let h = &e.handler;
    assert_eq!(
        h.handle_message(&RW, &msg(1, b"")),
        reply(1, Ok(b"version"))
    );
    assert_eq!(
        h.handle_message(&RW, &msg(2, b"")),
        reply(2, Ok(b"members"))
    );
    assert_eq!(h.handle_message(&RW, &msg(3, b"")), reply(3, Ok(b"vmlist")));
    assert_eq!(
        h.handle_message(&RW, &msg(10, b"")),
        reply(10, Ok(b"rrd\0"))
    );
    assert_eq!(
        h.handle_message(&RW, &msg(9, b"")),
        reply(9, Err(Errno::ECHRNG))
    );
    assert_eq!(
        h.handle_message(&RW, &msg(-7, b"x")),
        reply(-7, Err(Errno::ECHRNG))
    );
}

#[test]
fn short_messages() {
    let e = env();
    let h = &e.handler;
    assert_eq!(h.handle_message(&RW, b""), Outcome::Disconnect);
    assert_eq!(
        h.handle_message(&RW, b"\x01\0\0"),
        reply(0, Err(Errno::EINVAL))
    );
    assert_eq!(
        h.handle_message(&RW, &[6, 0, 0, 0, 0, 0, 0, 0, 16]),
        reply(6, Err(Errno::EINVAL))
    );
    assert_eq!(
        h.handle_message(&RW, &[0xff; 15]),
        reply(-1, Err(Errno::EINVAL))
    );
}

#[test]
fn size_field() {
    let e = env();
    let h = &e.handler;
    // Beyond the message, below the header, negative: invalid.
    for size in [17, 1000, i32::MAX, 15, 0, -1, i32::MIN] {
        assert_eq!(
            h.handle_message(&RW, &with_size(1, size, b"")),
            reply(1, Err(Errno::EINVAL)),
            "{size}"
        );
    }
    // Shorter than the message: the rest is ignored.
    assert_eq!(
        h.handle_message(&RW, &with_size(1, 16, b"junk")),
        reply(1, Ok(b"version"))
    );
    assert_eq!(
        h.handle_message(&RW, &with_size(6, 24, b"pub.cfg\0junk")),
        reply(6, Ok(b""))
    );
    // An unknown op is ECHRNG whatever its size.
    assert_eq!(
        h.handle_message(&RW, &with_size(99, -5, b"")),
        reply(99, Err(Errno::ECHRNG))
    );
}

#[test]
fn disconnect_request() {
    let e = env();
    let h = &e.handler;
    assert_eq!(h.handle_message(&RW, &msg(-3, b"")), Outcome::Disconnect);
    assert_eq!(
        h.handle_message(&RO, &with_size(-3, 0, b"")),
        Outcome::Disconnect
    );
}

#[test]
fn read_only_order() {
    let e = env();
    let h = &e.handler;
    // EPERM before any size or payload check for the write ops.
    for m in [
        msg(4, b""),
        with_size(4, 1 << 20, b""),
        msg(7, b""),
        with_size(7, 3, b""),
    ] {
        let id = RequestHeader::parse(&m).unwrap().id;
        assert_eq!(h.handle_message(&RO, &m), reply(id, Err(Errno::EPERM)));
    }
    // GET_CONFIG: the length check comes first, then privacy.
    assert_eq!(
        h.handle_message(&RO, &msg(6, b"")),
        reply(6, Err(Errno::EINVAL))
    );
    assert_eq!(
        h.handle_message(&RO, &msg(6, b"priv/token.cfg\0")),
        reply(6, Err(Errno::EPERM))
    );
    assert_eq!(
        h.handle_message(&RO, &msg(6, b"priv/missing\0")),
        reply(6, Err(Errno::EPERM))
    );
    assert_eq!(
        h.handle_message(&RO, &msg(6, b"pub.cfg\0")),
        reply(6, Ok(b""))
    );
    assert_eq!(
        h.handle_message(&RW, &msg(6, b"priv/token.cfg\0")),
        reply(6, Ok(b"a b\nc d\n"))
    );
    // Tokens may be verified read-only.
    assert_eq!(
        h.handle_message(&RO, &msg(12, b"c d\0")),
        reply(12, Ok(b""))
    );
    assert_eq!(
        h.handle_message(&RO, &msg(12, b"c\0")),
        reply(12, Err(Errno::ENOENT))
    );
    assert!(e.fake.calls.lock().unwrap().is_empty());
}

#[test]
fn status_calls() {
    let e = env();
    let h = &e.handler;
    let mut set = b"kv/x".to_vec();
    set.resize(256, 0);
    set.extend_from_slice(b"d");
    assert_eq!(h.handle_message(&RW, &msg(4, &set)), reply(4, Ok(b"")));
    let mut get = b"kv/x".to_vec();
    get.resize(256, 0);
    get.extend_from_slice(b"n2");
    get.resize(512, 0);
    assert_eq!(
        h.handle_message(&RW, &msg(5, &get)),
        reply(5, Err(Errno::ENOENT))
    );
    assert_eq!(
        h.handle_message(&RW, &msg(7, b"\x03\x02\x02a\0b\0m\0")),
        reply(7, Ok(b""))
    );
    let mut clog = vec![0u8; 16];
    clog.extend_from_slice(b"u\0");
    assert_eq!(
        h.handle_message(&RW, &msg(8, &clog)),
        reply(8, Ok(b"clog 50 u"))
    );
    clog[0] = 3;
    assert_eq!(
        h.handle_message(&RW, &msg(8, &clog)),
        reply(8, Ok(b"clog 3 u"))
    );
    assert_eq!(
        *e.fake.calls.lock().unwrap(),
        ["set kv/x [100]", "get kv/x n2", "log 77 3"]
    );
}

#[test]
fn guest_queries_check_existence_first() {
    let e = env();
    let h = &e.handler;
    let mut p = 100u32.to_le_bytes().to_vec();
    assert_eq!(
        h.handle_message(&RW, &msg(11, &p)),
        reply(11, Err(Errno::ENOENT))
    );
    p.push(0);
    assert_eq!(
        h.handle_message(&RW, &msg(13, &p)),
        reply(13, Err(Errno::ENOENT))
    );
    assert_eq!(
        h.handle_message(&RW, &msg(11, b"\0\0\0\0")),
        reply(11, Err(Errno::EINVAL))
    );
    assert_eq!(
        h.handle_message(&RW, &msg(11, b"\0\0\0\0x\0")),
        reply(11, Ok(b"{\n\n}\n"))
    );
}
