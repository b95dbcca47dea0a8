//! Files open through FUSE handles: removal keeps them detached for their
//! handles, writes through a handle follow the file, not its old name.

use pmxcfs_api_types::{Errno, Operation};

use crate::MemDb;

fn w(path: &str, data: &[u8]) -> Operation {
    Operation::Write {
        path: path.into(),
        offset: 0,
        data: data.to_vec(),
        truncate: true,
    }
}

fn setup() -> (tempfile::TempDir, MemDb) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = MemDb::open(&dir.path().join("config.db"), None).expect("open");
    for (p, d) in [("a", &b"alpha"[..]), ("b", b"beta")] {
        db.apply(&Operation::Create { path: p.into() }, 0, 1)
            .expect("create");
        db.apply(&w(p, d), 0, 1).expect("write");
    }
    (dir, db)
}

#[test]
fn unlinked_open_file_stays_readable_until_the_last_release() {
    let (_dir, db) = setup();
    let a = db.getattr("a").expect("a").inode;
    db.open_file(a).expect("open 1");
    db.open_file(a).expect("open 2");
    db.apply(&Operation::Delete { path: "a".into() }, 0, 2)
        .expect("unlink");
    assert!(db.getattr("a").is_none());
    let attr = db.getattr_inode(a).expect("still reachable by inode");
    assert!(attr.detached);
    assert_eq!(db.read_inode(a, 0, 100).expect("read"), b"alpha");
    db.release_file(a);
    assert_eq!(db.read_inode(a, 0, 100).expect("read"), b"alpha");
    db.release_file(a);
    assert_eq!(db.read_inode(a, 0, 100), Err(Errno::ENOENT));
    assert_eq!(db.open_file(a), Err(Errno::ENOENT));
}

#[test]
fn replaced_open_file_keeps_its_content_and_takes_writes_in_memory() {
    let (_dir, db) = setup();
    let a = db.getattr("a").expect("a").inode;
    db.open_file(a).expect("open");
    db.apply(
        &Operation::Rename {
            from: "b".into(),
            to: "a".into(),
        },
        0,
        2,
    )
    .expect("rename over");
    assert_eq!(db.read("a").as_deref(), Some(&b"beta"[..]));
    let v = db.version();
    assert_eq!(db.write_inode(a, 0, b"ALPHA!", false, false, 0, 3), Ok(6));
    assert_eq!(db.read_inode(a, 0, 100).expect("read"), b"ALPHA!");
    assert_eq!(db.write_inode(a, 2, b"", true, false, 0, 3), Ok(0));
    assert_eq!(db.read_inode(a, 0, 100).expect("read"), b"AL");
    assert_eq!(db.version(), v, "a detached file is not in the database");
    assert_eq!(db.read("a").as_deref(), Some(&b"beta"[..]));
}

#[test]
fn write_through_a_handle_follows_a_rename() {
    let (_dir, db) = setup();
    let a = db.getattr("a").expect("a").inode;
    db.open_file(a).expect("open");
    db.apply(
        &Operation::Rename {
            from: "a".into(),
            to: "c".into(),
        },
        0,
        2,
    )
    .expect("rename away");
    db.apply(&Operation::Create { path: "a".into() }, 0, 3)
        .expect("new a");
    assert_eq!(db.write_inode(a, 0, b"moved", false, false, 0, 4), Ok(5));
    assert_eq!(db.read("c").as_deref(), Some(&b"moved"[..]));
    assert_eq!(db.read("a").as_deref(), Some(&b""[..]));
}

#[test]
fn closed_files_are_not_kept() {
    let (_dir, db) = setup();
    let a = db.getattr("a").expect("a").inode;
    db.open_file(a).expect("open");
    db.release_file(a);
    db.apply(&Operation::Delete { path: "a".into() }, 0, 2)
        .expect("unlink");
    assert!(db.getattr_inode(a).is_none());
}
