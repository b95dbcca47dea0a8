//! open(O_TRUNC) deferred until the handle's first write or close: nobody
//! sees the file between, and nothing written meanwhile is lost.

use pmxcfs_api_types::{Errno, Inode, Operation};

use crate::MemDb;

fn w(path: &str, offset: u64, data: &[u8]) -> Operation {
    Operation::Write {
        path: path.into(),
        offset,
        data: data.to_vec(),
        truncate: false,
    }
}

fn setup() -> (tempfile::TempDir, MemDb, Inode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = MemDb::open(&dir.path().join("config.db"), None).expect("open");
    db.apply(&Operation::Create { path: "f".into() }, 0, 1)
        .expect("create");
    db.apply(&w("f", 0, b"old content"), 0, 2).expect("write");
    let inode = db.getattr("f").expect("f").inode;
    (dir, db, inode)
}

#[test]
fn first_write_at_zero_carries_the_truncation_in_one_transaction() {
    let (_dir, db, inode) = setup();
    let v = db.version();
    db.defer_truncate(inode, 0).expect("defer");
    assert_eq!(db.version(), v, "nothing written at open");
    db.write_inode(inode, 0, b"new", false, true, 0, 3)
        .expect("write");
    assert_eq!(db.version(), v + 1, "truncate + write: one transaction");
    assert_eq!(db.read("f").as_deref(), Some(&b"new"[..]));
    db.settle_deferred_truncate(inode).expect("settle");
    assert_eq!(db.version(), v + 1, "nothing owed at close");
}

#[test]
fn first_write_elsewhere_truncates_first() {
    let (_dir, db, inode) = setup();
    db.defer_truncate(inode, 0).expect("defer");
    db.write_inode(inode, 4, b"xy", false, true, 0, 3)
        .expect("write");
    assert_eq!(db.read("f").as_deref(), Some(&b"\0\0\0\0xy"[..]));
}

#[test]
fn any_read_sees_the_truncation() {
    let (dir, db, inode) = setup();
    let v = db.version();
    db.defer_truncate(inode, 0).expect("defer");
    assert_eq!(db.getattr("f").expect("f").size, 0, "getattr");
    assert_eq!(db.version(), v + 1, "written before it was seen");
    assert_eq!(db.read("f").as_deref(), Some(&b""[..]));
    drop(db);
    let db = MemDb::open(&dir.path().join("config.db"), None).expect("reopen");
    assert_eq!(db.read("f").as_deref(), Some(&b""[..]), "durable once seen");
}

#[test]
fn every_read_path_settles() {
    type Probe = fn(&MemDb, Inode);
    let probes: [(&str, Probe); 7] = [
        ("read_inode", |db, i| {
            let _ = db.read_inode(i, 0, 100);
        }),
        ("getattr_inode", |db, i| {
            let _ = db.getattr_inode(i);
        }),
        ("lookup_child", |db, _| {
            let _ = db.lookup_child(Inode::ROOT, "f");
        }),
        ("readdir", |db, _| {
            let _ = db.readdir(Inode::ROOT);
        }),
        ("statfs", |db, _| {
            let _ = db.statfs();
        }),
        ("encode_index", |db, _| {
            let _ = db.encode_index();
        }),
        ("entry_csum", |db, _| {
            let _ = db.entry_csum("f");
        }),
    ];
    for (name, probe) in probes {
        let (_dir, db, inode) = setup();
        let v = db.version();
        db.defer_truncate(inode, 0).expect("defer");
        probe(&db, inode);
        assert_eq!(db.version(), v + 1, "{name} did not apply the truncation");
    }
}

#[test]
fn another_writer_is_not_wiped_by_a_later_close_or_write() {
    let (_dir, db, inode) = setup();
    db.defer_truncate(inode, 0).expect("defer");
    // another process writes and closes
    db.apply(&w("f", 0, b"other"), 0, 3).expect("other write");
    assert_eq!(db.read("f").as_deref(), Some(&b"other"[..]));
    // the O_TRUNC handle closes: nothing owed any more
    db.settle_deferred_truncate(inode).expect("settle");
    assert_eq!(db.read("f").as_deref(), Some(&b"other"[..]));
    // or writes: a plain write
    db.defer_truncate(inode, 0).expect("defer");
    db.apply(&w("f", 0, b"OTHER!"), 0, 4).expect("other write");
    db.write_inode(inode, 0, b"me", false, true, 0, 5)
        .expect("write");
    assert_eq!(db.read("f").as_deref(), Some(&b"meHER!"[..]));
}

#[test]
fn rename_over_and_away_settle_first() {
    let (_dir, db, inode) = setup();
    db.defer_truncate(inode, 0).expect("defer");
    db.apply(
        &Operation::Rename {
            from: "f".into(),
            to: "g".into(),
        },
        0,
        3,
    )
    .expect("rename");
    assert_eq!(db.read("g").as_deref(), Some(&b""[..]));
}

#[test]
fn only_files_can_be_deferred() {
    let (_dir, db, _) = setup();
    let root = Inode::ROOT;
    assert_eq!(db.defer_truncate(root, 0), Err(Errno::EISDIR));
    assert_eq!(db.defer_truncate(Inode(999_999), 0), Err(Errno::ENOENT));
}
