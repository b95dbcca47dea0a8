//! Tests of the write path, the load checks and the C test vectors.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pmxcfs_api_types::{Errno, Inode, Operation};
use sha2::{Digest, Sha256};

use crate::{ChangeObserver, MemDb};

fn tmpdb() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("config.db");
    (dir, p)
}

fn w(path: &str, offset: u64, data: &[u8]) -> Operation {
    Operation::Write {
        path: path.into(),
        offset,
        data: data.to_vec(),
        truncate: false,
    }
}
fn create(path: &str) -> Operation {
    Operation::Create { path: path.into() }
}
fn mkdir(path: &str) -> Operation {
    Operation::Mkdir { path: path.into() }
}
fn del(path: &str) -> Operation {
    Operation::Delete { path: path.into() }
}
fn rename(from: &str, to: &str) -> Operation {
    Operation::Rename {
        from: from.into(),
        to: to.into(),
    }
}

/// check_memdb.c `test_indextest1`: 100 files of 32 KiB zeros, mtime 1234.
#[test]
fn c_index_test_vector() {
    let (_d, p) = tmpdb();
    let db = MemDb::open(&p, None).unwrap();
    let zeros = vec![0u8; 32 * 1024];
    for i in 0..100 {
        let name = format!("testfile{i}");
        assert_eq!(db.apply(&create(&name), 0, 1234), Ok(0));
        assert_eq!(db.apply(&w(&name, 0, &zeros), 0, 1234), Ok(zeros.len()));
    }
    let st = db.statfs();
    assert_eq!(st.files - st.ffree, 101);
    let idx = db.encode_index();
    let hdr = crate::IndexHeader::parse(&idx).unwrap();
    assert_eq!(hdr.version, 201);
    assert_eq!(hdr.last_inode, 200);
    assert_eq!(hdr.writer, 0);
    assert_eq!(hdr.size, 101);
    assert_eq!(hdr.bytes as usize, 101 * 40 + 32);
    assert_eq!(idx.len(), hdr.bytes as usize);
    let digest = Sha256::digest(&idx);
    assert_eq!(
        hex(&digest),
        "913fd95015af9d93f10dd51ba2a7bb11351bcfe040be21e95fcba834adc3ec10"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn fresh_db_conventions() {
    let (_d, p) = tmpdb();
    let db = MemDb::open(&p, None).unwrap();
    assert_eq!(db.version(), 1);
    db.apply(&mkdir("nodes"), 0, 10).unwrap();
    assert_eq!(db.version(), 2);
    assert_eq!(db.getattr("nodes").unwrap().inode, Inode(2));
    db.apply(&create("a"), 0, 11).unwrap();
    db.apply(&rename("a", "nodes/b"), 0, 12).unwrap();
    let b = db.getattr("nodes/b").unwrap();
    assert_eq!(b.inode, Inode(3));
    assert_eq!(b.version, 4);
    assert_eq!(b.parent, Inode(2));
    drop(db);
    let c = rusqlite::Connection::open(&p).unwrap();
    let (v, name): (i64, String) = c
        .query_row("SELECT version, name FROM tree WHERE inode = 0", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((v, name.as_str()), (4, "__version__"));
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // reload gives the same index
    drop(c);
    let db2 = MemDb::open(&p, None).unwrap();
    assert_eq!(db2.version(), 4);
    assert_eq!(db2.getattr("nodes/b").unwrap(), b);
}

#[test]
fn write_semantics() {
    let (_d, p) = tmpdb();
    let db = MemDb::open(&p, None).unwrap();
    assert_eq!(db.apply(&w("f", 0, b"x"), 0, 1), Err(Errno::ENOENT));
    assert_eq!(db.apply(&create("f"), 0, 1), Ok(0));
    assert_eq!(db.apply(&create("f"), 0, 1), Err(Errno::EEXIST));
    assert_eq!(db.apply(&create("missing/f"), 0, 1), Err(Errno::ENOENT));
    assert_eq!(db.apply(&create("f/x"), 0, 1), Err(Errno::ENOTDIR));
    assert_eq!(db.apply(&create(".."), 0, 1), Err(Errno::EACCES));
    assert_eq!(db.apply(&w("f", 4, b"ab"), 0, 1), Ok(2));
    assert_eq!(db.read("f").unwrap(), b"\0\0\0\0ab");
    // write inside keeps the size
    assert_eq!(db.apply(&w("f", 0, b"Z"), 0, 1), Ok(1));
    assert_eq!(db.read("f").unwrap(), b"Z\0\0\0ab");
    // truncate keeps the prefix and zero-extends
    let trunc = |n| Operation::Write {
        path: "f".into(),
        offset: n,
        data: vec![],
        truncate: true,
    };
    db.apply(&trunc(2), 0, 1).unwrap();
    assert_eq!(db.read("f").unwrap(), b"Z\0");
    db.apply(&trunc(5), 0, 1).unwrap();
    assert_eq!(db.read("f").unwrap(), b"Z\0\0\0\0");
    // growing an empty file by truncate reads zeros (C crashes here)
    db.apply(&create("g"), 0, 1).unwrap();
    let t = Operation::Write {
        path: "g".into(),
        offset: 10,
        data: vec![],
        truncate: true,
    };
    db.apply(&t, 0, 1).unwrap();
    assert_eq!(db.read("g").unwrap(), vec![0u8; 10]);
    // 1 MiB limit
    let mib = 1024 * 1024;
    assert_eq!(db.apply(&w("f", mib, b""), 0, 1), Ok(0));
    assert_eq!(db.apply(&w("f", mib - 1, b"a"), 0, 1), Ok(1));
    assert_eq!(db.apply(&w("f", mib, b"a"), 0, 1), Err(Errno::EFBIG));
    assert_eq!(db.apply(&w("f", u64::MAX, b"a"), 0, 1), Err(Errno::EFBIG));
    // a write to a directory
    db.apply(&mkdir("d"), 0, 1).unwrap();
    assert_eq!(db.apply(&w("d", 0, b"a"), 0, 1), Err(Errno::ENOTDIR));
}

#[test]
fn delete_rename_semantics() {
    let (_d, p) = tmpdb();
    let db = MemDb::open(&p, None).unwrap();
    db.apply(&mkdir("d"), 0, 1).unwrap();
    db.apply(&create("d/f"), 0, 1).unwrap();
    assert_eq!(db.apply(&del("d"), 0, 1), Err(Errno::ENOTEMPTY));
    assert_eq!(db.apply(&del(""), 0, 1), Err(Errno::EACCES));
    assert_eq!(db.apply(&rename("d", "e"), 0, 1), Err(Errno::ENOTEMPTY));
    db.apply(&mkdir("e"), 0, 1).unwrap();
    db.apply(&create("d/g"), 0, 1).unwrap();
    // rename onto an existing file replaces it and keeps the source inode
    let f = db.getattr("d/f").unwrap().inode;
    db.apply(&rename("d/f", "d/g"), 0, 1).unwrap();
    assert_eq!(db.getattr("d/g").unwrap().inode, f);
    assert!(db.getattr("d/f").is_none());
    // non-empty target dir
    db.apply(&mkdir("x"), 0, 1).unwrap();
    assert_eq!(db.apply(&rename("x", "d"), 0, 1), Err(Errno::ENOTEMPTY));
    // empty dir onto empty dir
    db.apply(&rename("x", "e"), 0, 1).unwrap();
    assert!(db.getattr("x").is_none());
    // locks cannot be renamed
    db.apply(&mkdir("priv"), 0, 1).unwrap();
    db.apply(&mkdir("priv/lock"), 0, 1).unwrap();
    db.apply(&mkdir("priv/lock/l"), 0, 1).unwrap();
    assert_eq!(
        db.apply(&rename("priv/lock/l", "priv/lock/m"), 0, 1),
        Err(Errno::EACCES)
    );
    assert_eq!(db.apply(&rename("nope", "x"), 0, 1), Err(Errno::ENOENT));
    assert_eq!(db.apply(&rename("d/g", "nope/x"), 0, 1), Err(Errno::ENOENT));
}

#[test]
fn vmids_are_unique() {
    let (_d, p) = tmpdb();
    let db = MemDb::open(&p, None).unwrap();
    for d in [
        "nodes",
        "nodes/a",
        "nodes/b",
        "nodes/a/qemu-server",
        "nodes/b/lxc",
    ] {
        db.apply(&mkdir(d), 0, 1).unwrap();
    }
    db.apply(&create("nodes/a/qemu-server/100.conf"), 0, 1)
        .unwrap();
    let (v1, l) = db.vmlist();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].node, "a");
    assert_eq!(
        db.apply(&create("nodes/b/lxc/100.conf"), 0, 1),
        Err(Errno::EEXIST)
    );
    db.apply(&create("nodes/a/qemu-server/100.conf.tmp.1"), 0, 1)
        .unwrap();
    db.apply(
        &rename(
            "nodes/a/qemu-server/100.conf.tmp.1",
            "nodes/a/qemu-server/100.conf",
        ),
        0,
        1,
    )
    .unwrap();
    // moving a guest to another node keeps the VMID
    db.apply(
        &rename("nodes/a/qemu-server/100.conf", "nodes/b/lxc/100.conf"),
        0,
        1,
    )
    .unwrap();
    let (v2, l) = db.vmlist();
    assert!(v2 > v1);
    assert_eq!((l[0].node.as_str(), l[0].vmtype.as_str()), ("b", "lxc"));
    db.apply(&del("nodes/b/lxc/100.conf"), 0, 1).unwrap();
    assert!(db.vmlist().1.is_empty());
    // rebuilt on open
    db.apply(&create("nodes/a/qemu-server/101.conf"), 0, 1)
        .unwrap();
    drop(db);
    let db = MemDb::open(&p, None).unwrap();
    assert_eq!(db.vmlist().1[0].vmid, 101);
}

#[test]
fn local_lock_protocol() {
    use crate::{LocalSubmitter, Submit};
    let (_d, p) = tmpdb();
    let db = Arc::new(MemDb::open(&p, None).unwrap());
    let s = LocalSubmitter::new(db.clone());
    s.submit(mkdir("priv")).unwrap();
    s.submit(mkdir("priv/lock")).unwrap();
    s.submit(mkdir("priv/lock/x")).unwrap();
    assert_eq!(s.submit(mkdir("priv/lock/x")), Err(Errno::EEXIST));
    let mt = |m| Operation::Mtime {
        path: "priv/lock/x".into(),
        mtime: m,
    };
    // unlock request on a fresh lock: refused, lock stays
    assert_eq!(s.submit(mt(0)), Err(Errno::EACCES));
    assert!(db.getattr("priv/lock/x").is_some());
    let now = db.getattr("priv/lock/x").unwrap().mtime;
    assert_eq!(s.submit(mt(now + 5)), Ok(0));
    assert_eq!(s.submit(mt(now)), Err(Errno::EACCES));
    // another writer may not refresh
    assert_eq!(db.apply(&mt(now + 10), 7, now + 10), Err(Errno::EACCES));
    s.submit(create("priv/lock/x/f")).unwrap();
    assert_eq!(s.submit(del("priv/lock/x")), Err(Errno::ENOTEMPTY));
}

#[test]
fn unlock_operation_checks_csum() {
    let (_d, p) = tmpdb();
    let db = MemDb::open(&p, None).unwrap();
    for d in ["priv", "priv/lock", "priv/lock/x"] {
        db.apply(&mkdir(d), 0, 1).unwrap();
    }
    let csum = db.entry_csum("priv/lock/x").unwrap();
    let bad = Operation::Unlock {
        path: "priv/lock/x".into(),
        csum: [0; 32],
    };
    db.apply(&bad, 1, 2).unwrap();
    assert!(db.getattr("priv/lock/x").is_some());
    let good = Operation::Unlock {
        path: "priv/lock/x".into(),
        csum,
    };
    db.apply(&good, 1, 2).unwrap();
    assert!(db.getattr("priv/lock/x").is_none());
}

#[derive(Default)]
struct Rec(Mutex<Vec<String>>);
impl ChangeObserver for Rec {
    fn path_changed(&self, path: &str) {
        self.0.lock().unwrap().push(path.to_string());
    }
    fn reloaded(&self) {
        self.0.lock().unwrap().push("<reload>".into());
    }
}

#[test]
fn observer_sees_changes() {
    let (_d, p) = tmpdb();
    let rec = Arc::new(Rec::default());
    let db = MemDb::open(&p, Some(rec.clone())).unwrap();
    db.apply(&mkdir("d"), 0, 1).unwrap();
    db.apply(&create("/storage.cfg"), 0, 1).unwrap();
    db.apply(&w("storage.cfg", 0, b"x"), 0, 1).unwrap();
    db.apply(&rename("storage.cfg", "d/s"), 0, 1).unwrap();
    assert_eq!(db.apply(&rename("nope", "d/t"), 0, 1), Err(Errno::ENOENT));
    assert_eq!(
        *rec.0.lock().unwrap(),
        [
            "<reload>",
            "storage.cfg",
            "storage.cfg",
            "storage.cfg",
            "d/s"
        ]
    );
}

/// (inode, parent, type, name, data)
type Row<'a> = (i64, i64, i64, &'a str, Option<&'a [u8]>);

fn make_db(p: &Path, rows: &[Row<'_>]) {
    let c = rusqlite::Connection::open(p).unwrap();
    c.execute_batch(
        "CREATE TABLE tree (inode INTEGER PRIMARY KEY NOT NULL, parent INTEGER NOT NULL, \
         version INTEGER NOT NULL, writer INTEGER NOT NULL, mtime INTEGER NOT NULL, \
         type INTEGER NOT NULL, name TEXT NOT NULL, data BLOB);",
    )
    .unwrap();
    c.execute(
        "INSERT INTO tree VALUES (0, 0, 10, 0, 5, 8, '__version__', NULL)",
        [],
    )
    .unwrap();
    for (inode, parent, ty, name, data) in rows {
        c.execute(
            "INSERT INTO tree VALUES (?1, ?2, ?1, 0, 5, ?3, ?4, ?5)",
            rusqlite::params![inode, parent, ty, name, data],
        )
        .unwrap();
    }
}

#[test]
fn bad_databases_are_refused_untouched() {
    let cases: Vec<(&str, Vec<Row<'_>>)> = vec![
        (
            "duplicate name",
            vec![(2, 0, 8, "a", None), (3, 0, 8, "a", None)],
        ),
        ("missing directory", vec![(2, 7, 8, "a", None)]),
        (
            "directory inode contains data",
            vec![(2, 0, 4, "d", Some(b"x"))],
        ),
        (
            "parent is not a directory",
            vec![(2, 0, 8, "f", None), (3, 2, 8, "g", None)],
        ),
        ("unknown type", vec![(2, 0, 3, "f", None)]),
        ("no name", vec![(2, 0, 8, "", None)]),
        (
            "duplicate VMID",
            vec![
                (2, 0, 4, "nodes", None),
                (3, 2, 4, "a", None),
                (4, 2, 4, "b", None),
                (5, 3, 4, "qemu-server", None),
                (6, 4, 4, "lxc", None),
                (7, 5, 8, "100.conf", None),
                (8, 6, 8, "100.conf", None),
            ],
        ),
        (
            "not reachable",
            vec![(2, 3, 4, "a", None), (3, 2, 4, "b", None)],
        ),
    ];
    for (what, rows) in cases {
        let (_d, p) = tmpdb();
        make_db(&p, &rows);
        let before = Sha256::digest(std::fs::read(&p).unwrap());
        let err = MemDb::open(&p, None)
            .err()
            .unwrap_or_else(|| panic!("{what} accepted"));
        let msg = err.to_string();
        assert!(msg.contains(what), "{what}: {msg}");
        let after = Sha256::digest(std::fs::read(&p).unwrap());
        assert!(after == before, "{what}: file changed");
    }
    // empty directory data (C writes that after utime/rename) is fine
    let (_d, p) = tmpdb();
    make_db(&p, &[(2, 0, 4, "d", Some(b""))]);
    MemDb::open(&p, None).unwrap();
}

#[test]
fn not_a_database() {
    let (_d, p) = tmpdb();
    std::fs::write(&p, vec![b'x'; 8192]).unwrap();
    let err = MemDb::open(&p, None).err().unwrap();
    assert!(err.to_string().contains("not an SQLite database"), "{err}");
    assert!(
        std::fs::read(&p).unwrap() == vec![b'x'; 8192],
        "file changed"
    );
}

#[test]
fn c_fixture_loads() {
    let fixture = fixture_dir().join("config.db");
    let bytes = std::fs::read(&fixture)
        .unwrap_or_else(|e| panic!("C fixture {} missing: {e}", fixture.display()));
    let (_d, p) = tmpdb();
    std::fs::write(&p, bytes).unwrap();
    let db = MemDb::open(&p, None).unwrap();
    assert_eq!(db.version(), 229);
    assert_eq!(db.read("deep/big.bin").unwrap().len(), 1024 * 1024);
    let (_, vms) = db.vmlist();
    assert_eq!(vms.len(), 54);
    let manifest = std::fs::read_to_string(fixture.with_file_name("manifest.tsv")).unwrap();
    for line in manifest.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let a = db
            .getattr(f[1])
            .unwrap_or_else(|| panic!("{} missing", f[1]));
        assert_eq!(a.mtime.to_string(), f[3], "{}", f[1]);
        if f[0] == "file" {
            let data = db.read(f[1]).unwrap();
            assert_eq!(data.len().to_string(), f[4]);
            assert_eq!(hex(&Sha256::digest(&data)), f[5], "{}", f[1]);
        }
    }
}

/// (inode, parent, version, type, name)
type VRow<'a> = (i64, i64, i64, i64, &'a str);

/// A database with the C schema, an optional `__version__` row with the
/// given version, and the rows as given (NULL data).
fn make_versioned_db(p: &Path, root: Option<i64>, rows: &[VRow<'_>]) {
    let c = rusqlite::Connection::open(p).unwrap();
    c.execute_batch(crate::backend::SQL_CREATE).unwrap();
    if let Some(v) = root {
        c.execute(
            "INSERT INTO tree VALUES (0, 0, ?1, 0, 5, 8, '__version__', NULL)",
            [v],
        )
        .unwrap();
    }
    for (inode, parent, version, ty, name) in rows {
        c.execute(
            "INSERT INTO tree VALUES (?1, ?2, ?3, 0, 5, ?4, ?5, NULL)",
            rusqlite::params![inode, parent, version, ty, name],
        )
        .unwrap();
    }
}

/// Opening must fail with a message containing every `want` string and
/// leave the file byte for byte as it was.
fn assert_refused(p: &Path, what: &str, want: &[&str]) {
    let before = Sha256::digest(std::fs::read(p).unwrap());
    let err = MemDb::open(p, None)
        .err()
        .unwrap_or_else(|| panic!("{what}: accepted"));
    let msg = err.to_string();
    for w in want {
        assert!(msg.contains(w), "{what}: {w:?} not in {msg}");
    }
    let after = Sha256::digest(std::fs::read(p).unwrap());
    assert!(after == before, "{what}: file changed");
}

/// (what, `__version__` version or none, rows, expected message parts)
type VersionCase<'a> = (&'a str, Option<i64>, Vec<VRow<'a>>, Vec<&'a str>);

/// Without `__version__`, or with its version below an inode of the tree,
/// the next create would reuse an existing inode.
#[test]
fn damaged_version_row_is_refused_untouched() {
    let max = crate::backend::MAX_INODE as i64;
    let cases: Vec<VersionCase<'_>> = vec![
        (
            "no __version__ row",
            None,
            vec![(2, 0, 2, 4, "etc"), (3, 2, 3, 8, "storage.cfg")],
            vec!["no __version__ row", "2 other rows"],
        ),
        (
            "version below an inode",
            Some(5),
            vec![(2, 0, 2, 4, "etc"), (7, 2, 7, 8, "seven.cfg")],
            vec!["__version__ version 5 is lower", "name = 'seven.cfg'"],
        ),
        (
            "version below a version",
            Some(5),
            vec![(2, 0, 2, 4, "etc"), (3, 2, 9, 8, "newer.cfg")],
            vec!["__version__ version 5 is lower", "version 9", "'newer.cfg'"],
        ),
        (
            "version 0 with rows",
            Some(0),
            vec![(2, 0, 2, 4, "etc")],
            vec!["version 0 is lower", "'etc'"],
        ),
        (
            "negative version",
            Some(-3),
            vec![(2, 0, 2, 4, "etc")],
            vec!["__version__ version -3 is out of range"],
        ),
        (
            "version leaves no inode",
            Some(max),
            vec![(2, 0, 2, 4, "etc")],
            vec!["is out of range"],
        ),
    ];
    for (what, root, rows, want) in cases {
        let (_d, p) = tmpdb();
        make_versioned_db(&p, root, &rows);
        assert_refused(&p, what, &want);
    }
    // the edges that stay valid: an empty table without __version__ (as a
    // new database), and the highest version that leaves one inode
    let (_d, p) = tmpdb();
    make_versioned_db(&p, None, &[]);
    assert_eq!(MemDb::open(&p, None).unwrap().version(), 1);
    let (_d, p) = tmpdb();
    make_versioned_db(&p, Some(max - 1), &[(max - 1, 0, max - 1, 4, "d")]);
    let db = MemDb::open(&p, None).unwrap();
    assert_eq!(db.version(), (max - 1) as u64);
    assert_eq!(db.getattr("d").unwrap().inode, Inode((max - 1) as u64));
}

/// Names no path can reach, and inodes outside 1..=MAX_INODE.
#[test]
fn bad_names_and_inodes_are_refused_untouched() {
    let max = crate::backend::MAX_INODE as i64;
    let cases: Vec<(&str, Vec<VRow<'_>>, Vec<&str>)> = vec![
        (
            "dot",
            vec![(2, 0, 2, 4, ".")],
            vec!["'.' or '..'", "name = '.'"],
        ),
        (
            "dotdot",
            vec![(2, 0, 2, 4, "d"), (3, 2, 3, 8, "..")],
            vec!["'.' or '..'", "name = '..'", "0000000000000003"],
        ),
        (
            "slash",
            vec![(2, 0, 2, 8, "a/b")],
            vec!["contains '/'", "name = 'a/b'"],
        ),
        (
            "NUL",
            vec![(2, 0, 2, 8, "a\0b")],
            vec!["contains NUL", "name = 'a\\0b'"],
        ),
        (
            "negative inode",
            vec![(-5, 0, 2, 8, "neg.cfg")],
            vec!["inode -5 is out of range", "'neg.cfg'"],
        ),
        (
            "inode in the plugin range",
            vec![(max + 1, 0, 2, 8, "plug.cfg")],
            vec!["out of range", "'plug.cfg'"],
        ),
        (
            "inode 2^62",
            vec![(1 << 62, 0, 2, 8, "big.cfg")],
            vec!["out of range", "'big.cfg'"],
        ),
    ];
    for (what, rows, want) in cases {
        let (_d, p) = tmpdb();
        make_versioned_db(&p, Some(100), &rows);
        assert_refused(&p, what, &want);
    }
    // names that only look odd are fine
    let (_d, p) = tmpdb();
    make_versioned_db(
        &p,
        Some(100),
        &[
            (2, 0, 2, 8, "..."),
            (3, 0, 3, 8, ".hidden"),
            (4, 0, 4, 8, "a\\b"),
        ],
    );
    MemDb::open(&p, None).unwrap();
}

/// sqlite_master holds the CREATE TABLE text of the C daemon byte for byte.
#[test]
fn schema_text_is_the_c_text() {
    let sql_of = |p: &Path| -> String {
        let c =
            rusqlite::Connection::open_with_flags(p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        c.query_row(
            "SELECT sql FROM sqlite_master WHERE type='table' AND name='tree'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let (_d, p) = tmpdb();
    drop(MemDb::open(&p, None).unwrap());
    let ours = sql_of(&p);
    // a copy: SQLite may add -wal/-shm files beside a database it reads
    let (_d2, c) = tmpdb();
    std::fs::copy(fixture_dir().join("config.db"), &c).unwrap();
    assert_eq!(ours, sql_of(&c));
    assert!(ours.starts_with("CREATE TABLE tree (  inode INTEGER PRIMARY KEY NOT NULL,  parent"));
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../integration-tests/fixtures/c-9.1.6-local")
}

/// `.vmlist` version as status.c counts it: only memdb_recreate_vmlist with
/// an existing `nodes` directory, a register or a delete bump it.
#[test]
fn vmlist_version_counts_like_c() {
    let (_d, p) = tmpdb();
    let db = MemDb::open(&p, None).unwrap();
    assert_eq!(db.vmlist_version(), (0, 0), "fresh database, no nodes dir");
    for d in ["nodes", "nodes/a", "nodes/a/qemu-server"] {
        db.apply(&mkdir(d), 0, 1).unwrap();
    }
    assert_eq!(db.vmlist_version(), (0, 0), "mkdir bumps nothing");
    db.apply(&create("nodes/a/qemu-server/100.conf"), 0, 1)
        .unwrap();
    assert_eq!(db.vmlist_version(), (1, 1), "register");
    drop(db);
    let db = MemDb::open(&p, None).unwrap();
    assert_eq!(db.vmlist_version(), (1, 1), "rebuilt from the nodes dir");
    db.apply(&del("nodes/a/qemu-server/100.conf"), 0, 1)
        .unwrap();
    assert_eq!(db.vmlist_version(), (2, 0), "delete");
    drop(db);
    // an empty nodes dir still counts one rebuild; a file named nodes none
    let db = MemDb::open(&p, None).unwrap();
    assert_eq!(db.vmlist_version(), (1, 0));
    let (_d, p) = tmpdb();
    let db = MemDb::open(&p, None).unwrap();
    db.apply(&create("nodes"), 0, 1).unwrap();
    drop(db);
    assert_eq!(MemDb::open(&p, None).unwrap().vmlist_version(), (0, 0));
}
