//! The dcdb application over real databases under the scripted CPG:
//! writes in agreed order on every node, resync of diverged nodes,
//! VMID conflicts, quorum.

use pmxcfs_api_types::{Errno, Inode, NodeId, Operation, TreeEntry};
use pmxcfs_memdb::MemDb;

use crate::bytes::test_util::Rng;
use crate::dcdb_app::{operation_message, Dcdb, DcdbStore, DCDB_PROTOCOL_VERSION};
use crate::machine::{Member, Mode};
use crate::sim::{all, Fingerprint, Net};
use crate::wire::CSUM_SIZE;

struct Store {
    db: MemDb,
    quorate: bool,
    _dir: tempfile::TempDir,
}

impl DcdbStore for Store {
    fn quorate(&self) -> bool {
        self.quorate
    }
    fn apply(&mut self, op: &Operation, writer: NodeId, mtime: u32) -> Result<usize, Errno> {
        self.db.apply(op, writer.0, mtime)
    }
    fn failed(&self) -> bool {
        false
    }
    fn lock_matches(&self, path: &str, csum: &[u8; 32]) -> bool {
        self.db.entry_csum(path).as_ref() == Some(csum)
    }
    fn lock_expired(&self, path: &str, csum: &[u8; 32]) -> bool {
        self.db.lock_expired(path, csum)
    }
    fn index(&self) -> Vec<u8> {
        self.db.encode_index()
    }
    fn checksum(&self) -> [u8; CSUM_SIZE] {
        self.db.compute_checksum()
    }
    fn entry(&self, inode: Inode) -> Option<TreeEntry> {
        self.db.sync_entry(inode)
    }
    fn commit_sync(&mut self, master: &[u8], updates: &[TreeEntry]) -> Result<(), Errno> {
        self.db.commit_sync(master, updates)
    }
}

impl Fingerprint for Dcdb<Store> {
    fn fingerprint(&self) -> Vec<u8> {
        self.store.db.encode_index()
    }
}

fn net(n: u32) -> Net<Dcdb<Store>> {
    Net::new_with(n, DCDB_PROTOCOL_VERSION, |_| {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = MemDb::open(&dir.path().join("config.db"), None).expect("open");
        Dcdb::new(Store {
            db,
            quorate: true,
            _dir: dir,
        })
    })
}

fn send(net: &mut Net<Dcdb<Store>>, i: usize, op: Operation) -> Option<u64> {
    let (sub, payload) = operation_message(&op).expect("encode");
    net.submit_msg(i, sub, &payload)
}

fn write(path: &str, data: &[u8]) -> Operation {
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

fn result(net: &Net<Dcdb<Store>>, i: usize, count: u64) -> Option<i32> {
    net.procs[i].answered.get(&count).copied().flatten()
}

#[test]
fn writes_apply_in_agreed_order_everywhere_with_the_sender_as_writer() {
    let mut net = net(3);
    net.confchg(all(3), true);
    net.settle();
    send(&mut net, 1, create("storage.cfg"));
    let c = send(&mut net, 1, write("storage.cfg", b"dir: local\n")).unwrap();
    send(&mut net, 2, mkdir("nodes"));
    net.settle();
    net.check_converged("after writes");
    assert_eq!(result(&net, 1, c), Some(11), "bytes written");
    for p in &net.procs {
        let a = p.app.store.db.getattr("storage.cfg").expect("file");
        assert_eq!(a.writer, 2, "writer is the sender's node id");
        assert_eq!(
            p.app.store.db.read("storage.cfg").as_deref(),
            Some(&b"dir: local\n"[..])
        );
    }
}

#[test]
fn vmid_conflicts_fail_the_same_everywhere() {
    let mut net = net(2);
    net.confchg(all(2), true);
    net.settle();
    for d in [
        "nodes",
        "nodes/n1",
        "nodes/n1/qemu-server",
        "nodes/n2",
        "nodes/n2/qemu-server",
    ] {
        send(&mut net, 0, mkdir(d));
    }
    send(&mut net, 0, create("nodes/n1/qemu-server/100.conf"));
    let c = send(&mut net, 1, create("nodes/n2/qemu-server/100.conf")).unwrap();
    net.settle();
    net.check_converged("after the conflict");
    assert_eq!(result(&net, 1, c), Some(-libc_eexist()));
}

fn libc_eexist() -> i32 {
    Errno::EEXIST.0
}

#[test]
fn a_diverged_node_is_resynced_from_the_leader() {
    let mut net = net(3);
    net.confchg(all(3), true);
    net.settle();
    send(&mut net, 0, create("shared"));
    net.settle();
    // n3 leaves; while it is out its database changes on its own (as
    // in a partition where it was quorate for a moment)
    net.confchg(all(3)[..2].to_vec(), true);
    net.settle();
    net.procs[2]
        .app
        .store
        .db
        .apply(&create("stale"), 3, 1)
        .expect("local write");
    // the majority goes on
    for k in 0..5 {
        send(&mut net, 0, create(&format!("f{k}")));
    }
    net.settle();
    // heal
    net.confchg(all(3), true);
    net.settle();
    net.check_converged("after the heal");
    let n3 = &net.procs[2].app.store.db;
    assert!(n3.getattr("stale").is_none(), "the minority's file is gone");
    assert!(n3.getattr("f4").is_some());
}

#[test]
fn a_write_delivered_without_quorum_makes_the_node_leave_and_resync() {
    let mut net = net(2);
    net.confchg(all(2), true);
    net.settle();
    net.procs[1].app.store.quorate = false;
    send(&mut net, 0, create("a"));
    while net.deliver_one() {}
    assert_eq!(net.procs[1].dfsm.mode(), Mode::Leave);
    net.procs[1].app.store.quorate = true;
    net.settle();
    net.confchg(all(2), true);
    net.settle();
    net.check_converged("after the resync");
    assert!(net.procs[1].app.store.db.getattr("a").is_some());
}

/// Random schedules with real databases: membership changes at any step,
/// writes from every node; at the end every index is byte-identical.
#[test]
fn random_schedules_end_with_identical_indexes() {
    for seed in 1..=40u64 {
        let mut rng = Rng::new(seed);
        let n = 3;
        let mut net = net(n);
        let everybody = all(n);
        net.confchg(everybody.clone(), true);
        for step in 0..80 {
            match rng.below(10) {
                0..=4 => {
                    let i = rng.below(n as usize);
                    let f = format!("f{}", rng.below(6));
                    let op = match rng.below(4) {
                        0 => create(&f),
                        1 => Operation::Delete { path: f },
                        _ => write(&f, format!("{seed}-{step}").as_bytes()),
                    };
                    send(&mut net, i, op);
                }
                5..=7 => {
                    net.deliver_one();
                }
                _ => {
                    let mut new: Vec<Member> = everybody
                        .iter()
                        .copied()
                        .filter(|_| rng.below(3) != 0)
                        .collect();
                    if new.is_empty() {
                        new.push(everybody[step % n as usize]);
                    }
                    net.confchg(new, rng.below(2) == 0);
                }
            }
        }
        net.settle();
        net.confchg(everybody.clone(), true);
        net.settle();
        net.check_converged(&format!("seed {seed}"));
        assert_eq!(net.spurious_leaves, 0, "seed {seed}: {:?}", net.log);
    }
}
