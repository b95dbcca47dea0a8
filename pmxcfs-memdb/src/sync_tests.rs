//! Resync: a node's database made the leader's in one transaction.

use pmxcfs_api_types::{Errno, Inode, Operation};

use crate::MemDb;

fn db_in(dir: &tempfile::TempDir) -> MemDb {
    MemDb::open(&dir.path().join("config.db"), None).expect("open")
}

fn apply(db: &MemDb, ops: &[Operation], writer: u32) {
    for (i, op) in ops.iter().enumerate() {
        db.apply(op, writer, 1_700_000_000 + i as u32)
            .expect("apply");
    }
}

fn w(path: &str, data: &[u8]) -> Operation {
    Operation::Write {
        path: path.into(),
        offset: 0,
        data: data.to_vec(),
        truncate: true,
    }
}

fn mkdir(p: &str) -> Operation {
    Operation::Mkdir { path: p.into() }
}

fn create(p: &str) -> Operation {
    Operation::Create { path: p.into() }
}

/// Every entry of `db`, root included: what a leader sends to a node
/// that shares nothing with it.
fn all_entries(db: &MemDb) -> Vec<pmxcfs_api_types::TreeEntry> {
    let idx = db.encode_index();
    crate::index::index_inodes(&idx)
        .expect("index")
        .into_iter()
        .map(|i| db.sync_entry(Inode(i)).expect("entry"))
        .collect()
}

#[test]
fn a_diverged_node_becomes_the_leader_byte_for_byte() {
    let (da, db_) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = db_in(&da);
    let node = db_in(&db_);
    apply(
        &leader,
        &[
            mkdir("nodes"),
            mkdir("nodes/n1"),
            mkdir("nodes/n1/qemu-server"),
            create("nodes/n1/qemu-server/100.conf"),
            w("nodes/n1/qemu-server/100.conf", b"memory: 512\n"),
            create("storage.cfg"),
            w("storage.cfg", b"dir: local\n"),
        ],
        1,
    );
    // the other node has its own, older changes and a file the leader lacks
    apply(&node, &[create("stale.cfg"), w("stale.cfg", b"x")], 2);
    let updates = all_entries(&leader);
    let master = leader.encode_index();
    node.commit_sync(&master, &updates).expect("commit");
    assert_eq!(node.encode_index(), master);
    assert!(node.getattr("stale.cfg").is_none());
    assert_eq!(
        node.read("storage.cfg").as_deref(),
        Some(&b"dir: local\n"[..])
    );
    assert_eq!(node.vmlist().1.len(), 1, "the VM list is rebuilt");
    // a write after the resync continues from the leader's version
    node.apply(&w("storage.cfg", b"y"), 2, 5).expect("write");
    leader.apply(&w("storage.cfg", b"y"), 2, 5).expect("write");
    assert_eq!(node.encode_index(), leader.encode_index());
    drop(node);
    let node = db_in(&db_);
    assert_eq!(node.encode_index(), leader.encode_index(), "on disk too");
}

#[test]
fn an_index_that_does_not_match_rolls_back_and_fails_the_database() {
    let (da, db_) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = db_in(&da);
    let node = db_in(&db_);
    apply(&leader, &[create("a"), w("a", b"leader")], 1);
    apply(&node, &[create("b"), w("b", b"mine")], 2);
    let before = node.encode_index();
    // updates missing an entry: the reloaded tree cannot match
    let mut updates = all_entries(&leader);
    updates.retain(|e| e.inode == Inode::ROOT);
    assert_eq!(
        node.commit_sync(&leader.encode_index(), &updates),
        Err(Errno::EIO)
    );
    assert_eq!(node.encode_index(), before, "nothing changed in memory");
    assert_eq!(
        node.apply(&create("c"), 2, 9),
        Err(Errno::EIO),
        "failed state"
    );
    drop(node);
    let node = db_in(&db_);
    assert_eq!(node.encode_index(), before, "nothing changed on disk");
}

#[test]
fn a_malformed_index_is_refused_without_harm() {
    let d = tempfile::tempdir().unwrap();
    let node = db_in(&d);
    apply(&node, &[create("a")], 1);
    assert_eq!(node.commit_sync(b"short", &[]), Err(Errno::EINVAL));
    node.apply(&create("b"), 1, 2).expect("still writable");
}

#[test]
fn open_files_removed_by_a_resync_stay_readable() {
    let (da, db_) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = db_in(&da);
    let node = db_in(&db_);
    apply(&leader, &[create("x")], 1);
    apply(&node, &[create("mine"), w("mine", b"open")], 2);
    let i = node.getattr("mine").unwrap().inode;
    node.open_file(i).unwrap();
    node.commit_sync(&leader.encode_index(), &all_entries(&leader))
        .expect("commit");
    assert!(node.getattr("mine").is_none());
    assert_eq!(node.read_inode(i, 0, 10).unwrap(), b"open");
    node.release_file(i);
    // the leader used the same inode number for its own file: once the
    // handle is gone, the number names that one
    assert_eq!(node.getattr_inode(i).map(|a| a.name), Some("x".to_string()));
}

#[test]
fn inspect_reads_without_leaving_anything() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../integration-tests/fixtures/c-9.1.6-local");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("config.db");
    std::fs::copy(fixture.join("config.db"), &db).unwrap();
    let before = std::fs::read(&db).unwrap();
    let ins = crate::inspect(&db).expect("inspect");
    assert_eq!(ins.entries.len(), 87);
    assert_eq!(crate::IndexHeader::parse(&ins.index).unwrap().version, 229);
    let opened = db_in(&dir);
    assert_eq!(opened.encode_index(), ins.index);
    assert_eq!(opened.compute_checksum(), ins.checksum);
    drop(opened);
    // on a closed database: no side files stay, the file is unchanged
    let dir2 = tempfile::tempdir().unwrap();
    let db2 = dir2.path().join("config.db");
    std::fs::write(&db2, &before).unwrap();
    crate::inspect(&db2).expect("inspect");
    let names: Vec<_> = std::fs::read_dir(dir2.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("config.db")]);
    assert_eq!(std::fs::read(&db2).unwrap(), before);
    assert!(crate::inspect(&dir2.path().join("missing.db")).is_err());
}
