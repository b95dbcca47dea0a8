//! Cluster mode of the configuration database: the `pve_dcdb_v1` group.
//!
//! One thread ([`DcdbService`]) owns the DFSM state machine and the dcdb
//! application over MemDb ([`MemStore`]); everything reaches it as a
//! [`Cmd`]: CPG events from the corosync side, and the filesystem's
//! mutations from [`ClusterSubmitter`], which waits for its own message to
//! be delivered and answers with the result of applying it (on every node,
//! the sender included, in agreed order). Messages are multicast through a
//! [`Mcast`] so that tests can run the same code over an in-process group.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use pmxcfs_api_types::{
    now_secs, path_is_lockdir, Errno, FileKind, Inode, NodeId, Operation, TreeEntry,
};
use pmxcfs_dfsm::dcdb_app::{
    operation_message, result_errno, Dcdb, DcdbStore, DCDB_PROTOCOL_VERSION,
};
use pmxcfs_dfsm::machine::{Application, Dfsm, Member, Mode, Output};
use pmxcfs_memdb::{MemDb, Submit};

/// Told that corosync.conf changed in the database (`local`: this node
/// sent the change): `dcdb_sync_corosync_conf`.
pub type CorosyncConfHook = Box<dyn FnMut(&MemDb, bool) + Send>;

/// The dcdb application's view of MemDb.
pub struct MemStore {
    pub memdb: Arc<MemDb>,
    pub quorate: Arc<AtomicBool>,
    /// Called when corosync.conf changed in the database (local: this
    /// node sent the change).
    pub corosync_conf: CorosyncConfHook,
}

impl DcdbStore for MemStore {
    fn quorate(&self) -> bool {
        self.quorate.load(Ordering::Acquire)
    }

    fn apply(&mut self, op: &Operation, writer: NodeId, mtime: u32) -> Result<usize, Errno> {
        self.memdb.apply(op, writer.0, mtime)
    }

    fn failed(&self) -> bool {
        self.memdb.failed()
    }

    fn lock_matches(&self, path: &str, csum: &[u8; 32]) -> bool {
        path_is_lockdir(path)
            && self
                .memdb
                .getattr(path)
                .is_some_and(|a| a.kind == FileKind::Dir)
            && self.memdb.entry_csum(path).as_ref() == Some(csum)
    }

    fn lock_expired(&self, path: &str, csum: &[u8; 32]) -> bool {
        self.memdb.lock_expired(path, csum)
    }

    fn index(&self) -> Vec<u8> {
        self.memdb.encode_index()
    }

    fn checksum(&self) -> [u8; 32] {
        self.memdb.compute_checksum()
    }

    fn entry(&self, inode: Inode) -> Option<TreeEntry> {
        self.memdb.sync_entry(inode)
    }

    fn commit_sync(&mut self, master: &[u8], updates: &[TreeEntry]) -> Result<(), Errno> {
        self.memdb.commit_sync(master, updates)
    }

    fn corosync_conf_changed(&mut self, local: bool) {
        (self.corosync_conf)(&self.memdb, local);
    }
}

/// How the service multicasts to its group (agreed order).
pub trait Mcast: Send {
    fn mcast(&mut self, msg: &[u8]) -> Result<(), String>;
    /// The state machine left the group (LEAVE): leave and join again.
    fn rejoin(&mut self) {}
}

/// What the service thread is told.
pub enum Cmd {
    /// Joined the group as this member (after every (re)connection).
    Joined(Member),
    /// A configuration change: the whole membership, how many joined.
    Confchg(Vec<Member>, usize),
    /// A delivered message.
    Deliver(Member, Vec<u8>),
    /// The connection to corosync is gone.
    Disconnected,
    /// Send a NORMAL message without waiting for it (kvstore broadcasts;
    /// the filesystem's senders use the Core themselves and wait).
    Send {
        subtype: u16,
        payload: Vec<u8>,
    },
    /// The periodic VERIFY_REQUEST.
    Verify,
    Stop,
}

/// NORMAL messages a group sends when it becomes synced (kvstore: every
/// local status key and `nodeip`).
pub type OnSynced = Box<dyn FnMut() -> Vec<(u16, Vec<u8>)> + Send>;

/// What a group's service thread and the senders share: the state machine
/// (its message counter), the multicast handle and the senders waiting
/// for their own message. One lock, held while a message is numbered and
/// multicast (so counters go out in order, as C's sync_mutex) and while
/// the service thread handles an event.
pub struct Core {
    dfsm: Option<Dfsm>,
    mcast: Option<Box<dyn Mcast>>,
    waiters: HashMap<u64, Done>,
}

/// What to do with the result of a message this node sent once it is
/// delivered (None: never processed: connection lost, left the group).
pub type Done = Box<dyn FnOnce(Option<i32>) + Send>;

/// A sender blocked on its message's delivery.
fn reply_to(tx: SyncSender<Option<i32>>) -> Done {
    Box::new(move |r| {
        let _ = tx.send(r);
    })
}

pub type SharedCore = Arc<Mutex<Core>>;

pub fn new_core() -> SharedCore {
    Arc::new(Mutex::new(Core {
        dfsm: None,
        mcast: None,
        waiters: HashMap::new(),
    }))
}

fn lock(core: &SharedCore) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

impl Core {
    pub fn set_mcast(&mut self, m: Box<dyn Mcast>) {
        self.mcast = Some(m);
    }

    fn abort_waiters(&mut self) {
        for (_, done) in self.waiters.drain() {
            done(None);
        }
    }

    fn mcast(&mut self, msg: &[u8]) -> Result<(), String> {
        match self.mcast.as_mut() {
            Some(m) => m.mcast(msg),
            None => Err("not connected".into()),
        }
    }

    /// Number and multicast a NORMAL message; `done` gets the result of
    /// its delivery here (None: never processed). Returns whether it was
    /// multicast (`done` has been called with None if not).
    fn send(&mut self, subtype: u16, payload: &[u8], done: Option<Done>) -> bool {
        let Some(d) = self.dfsm.as_mut() else {
            if let Some(done) = done {
                done(None);
            }
            return false;
        };
        let (count, msg) = d.normal_message(subtype, payload, now_secs());
        match self.mcast(&msg) {
            Ok(()) => {
                if let Some(done) = done {
                    self.waiters.insert(count, done);
                }
                true
            }
            Err(e) => {
                tracing::error!("cpg_send_message failed: {e}");
                if let Some(done) = done {
                    done(None);
                }
                false
            }
        }
    }
}

/// The thread that owns a group's application (dcdb, kvstore) and drives
/// its state machine.
pub struct GroupService<A: Application> {
    app: A,
    protocol_version: u32,
    core: SharedCore,
    on_synced: Option<OnSynced>,
}

/// The dcdb group's service.
pub fn dcdb_service(store: MemStore, core: SharedCore) -> GroupService<Dcdb<MemStore>> {
    GroupService::new(Dcdb::new(store), DCDB_PROTOCOL_VERSION, core)
}

impl<A: Application> GroupService<A> {
    pub fn new(app: A, protocol_version: u32, core: SharedCore) -> Self {
        GroupService {
            app,
            protocol_version,
            core,
            on_synced: None,
        }
    }

    pub fn on_synced(mut self, f: OnSynced) -> Self {
        self.on_synced = Some(f);
        self
    }

    /// Serve commands until [`Cmd::Stop`] or until every sender is gone.
    pub fn run(mut self, rx: Receiver<Cmd>) {
        while let Ok(cmd) = rx.recv() {
            if !self.handle(cmd) {
                break;
            }
        }
        self.stopped();
    }

    /// Like [`run`](Self::run) for a service that the CPG thread also
    /// drives directly (deliveries applied in the CPG dispatch, as C does).
    pub fn run_shared(service: Arc<Mutex<Self>>, rx: Receiver<Cmd>) {
        let lock_svc = || service.lock().unwrap_or_else(|p| p.into_inner());
        while let Ok(cmd) = rx.recv() {
            if !lock_svc().handle(cmd) {
                break;
            }
        }
        lock_svc().stopped();
    }

    fn stopped(&mut self) {
        let mut core = lock(&self.core);
        core.dfsm = None; // later senders and events are refused at once
        core.abort_waiters();
    }

    /// One command; false to stop.
    pub fn handle(&mut self, cmd: Cmd) -> bool {
        let now = now_secs();
        let core_arc = self.core.clone();
        let mut core = lock(&core_arc);
        let out = match cmd {
            Cmd::Stop => return false,
            Cmd::Joined(me) => {
                let fresh = core.dfsm.as_ref().is_none_or(|d| d.me() != me);
                if fresh {
                    core.abort_waiters();
                    core.dfsm = Some(Dfsm::new(me.nodeid, me.pid, self.protocol_version));
                    Vec::new()
                } else {
                    let dfsm = core.dfsm.as_mut().expect("checked");
                    dfsm.restart(&mut self.app).unwrap_or_default()
                }
            }
            Cmd::Confchg(members, joined) => match core.dfsm.as_mut() {
                Some(d) => d.confchg(&members, joined, now, &mut self.app),
                None => Vec::new(),
            },
            Cmd::Deliver(from, msg) => match core.dfsm.as_mut() {
                Some(d) => d.deliver(from, &msg, now, &mut self.app),
                None => Vec::new(),
            },
            Cmd::Disconnected => match core.dfsm.as_mut() {
                Some(d) => d.finalize(),
                None => Vec::new(),
            },
            Cmd::Send { subtype, payload } => {
                core.send(subtype, &payload, None);
                Vec::new()
            }
            Cmd::Verify => match core.dfsm.as_mut().and_then(|d| d.verify_request(now)) {
                Some(msg) => vec![Output::Send(msg)],
                None => Vec::new(),
            },
        };
        self.outputs(&mut core, out);
        true
    }

    fn outputs(&mut self, core: &mut Core, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Send(msg) => {
                    if let Err(e) = core.mcast(&msg) {
                        tracing::error!("cpg_send_message failed: {e}");
                    }
                }
                Output::LocalResult { count, result } => {
                    if let Some(done) = core.waiters.remove(&count) {
                        done(result);
                    }
                }
                Output::AbortWaiters => core.abort_waiters(),
                Output::Mode(Mode::Leave) => {
                    core.abort_waiters();
                    if let Some(m) = core.mcast.as_mut() {
                        m.rejoin();
                    }
                }
                Output::Mode(Mode::Synced) => {
                    let sends = self.on_synced.as_mut().map(|f| f()).unwrap_or_default();
                    for (subtype, payload) in sends {
                        core.send(subtype, &payload, None);
                    }
                }
                Output::Mode(m) => tracing::debug!("dfsm mode {m:?}"),
            }
        }
    }
}

/// Truncations of open(O_TRUNC) multicast by this node and not yet
/// delivered here: observers of such a file on this node wait for the
/// delivery before they are answered (ARCHITECTURE.txt, "Deferred
/// changes"). Only FUSE and IPC request threads wait; the CPG thread only
/// ends entries, so no delivery ever waits on one. A truncation that
/// failed or was never processed is remembered for the handle's close.
#[derive(Default)]
pub struct Inflight {
    state: Mutex<InflightState>,
    cv: Condvar,
    any: AtomicUsize,
}

#[derive(Default)]
struct InflightState {
    pending: HashMap<Inode, usize>,
    failed: HashMap<Inode, Errno>,
}

/// Longest wait of an observer for an in-flight truncation (a stalled
/// group); after it the entry is given up (logged), so one stall costs
/// observers one wait, not one each.
const INFLIGHT_WAIT: Duration = Duration::from_secs(2);

impl Inflight {
    fn lock(&self) -> MutexGuard<'_, InflightState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin(&self, inode: Inode) {
        let mut st = self.lock();
        *st.pending.entry(inode).or_insert(0) += 1;
        st.failed.remove(&inode);
        self.any.fetch_add(1, Ordering::AcqRel);
    }

    /// The truncation's result here (None: never processed, C's EACCES).
    fn end(&self, inode: Inode, result: Option<i32>) {
        let mut st = self.lock();
        match result {
            Some(r) if r >= 0 => {}
            Some(r) => {
                st.failed.insert(inode, Errno(-r));
            }
            None => {
                st.failed.insert(inode, Errno::EACCES);
            }
        }
        Self::remove(&mut st, &self.any, inode);
        self.cv.notify_all();
    }

    fn remove(st: &mut InflightState, any: &AtomicUsize, inode: Inode) {
        if let Some(n) = st.pending.get_mut(&inode) {
            *n -= 1;
            any.fetch_sub(1, Ordering::AcqRel);
            if *n == 0 {
                st.pending.remove(&inode);
            }
        }
    }

    /// Whether any truncation is in flight (a lock-free check, for callers
    /// that must look something up before they can wait).
    pub fn busy(&self) -> bool {
        self.any.load(Ordering::Acquire) != 0
    }

    /// Wait until no truncation of `inode` sent by this node is in flight;
    /// whether there was one.
    pub fn wait(&self, inode: Inode) -> bool {
        self.wait_for(|st| st.pending.contains_key(&inode), Some(inode))
    }

    /// Wait until no truncation at all is in flight (readers of several
    /// files); whether there was one.
    pub fn wait_all(&self) -> bool {
        self.wait_for(|st| !st.pending.is_empty(), None)
    }

    fn wait_for(&self, busy: impl Fn(&InflightState) -> bool, inode: Option<Inode>) -> bool {
        if !self.busy() {
            return false;
        }
        let st = self.lock();
        if !busy(&st) {
            return false;
        }
        let (mut st, t) = self
            .cv
            .wait_timeout_while(st, INFLIGHT_WAIT, |st| busy(st))
            .unwrap_or_else(|p| p.into_inner());
        if t.timed_out() {
            let given_up: Vec<Inode> = match inode {
                Some(i) => vec![i],
                None => st.pending.keys().copied().collect(),
            };
            for i in given_up {
                tracing::warn!(
                    "inode {:#x}: truncation not delivered within {INFLIGHT_WAIT:?}: given up",
                    i.0
                );
                while st.pending.contains_key(&i) {
                    Self::remove(&mut st, &self.any, i);
                }
                st.failed.insert(i, Errno::EACCES);
            }
        }
        true
    }

    /// The failure of this node's last truncation of `inode`, once.
    fn take_failure(&self, inode: Inode) -> Option<Errno> {
        self.lock().failed.remove(&inode)
    }
}

/// Cluster mode's [`Submit`]: every mutation is a dcdb message; the call
/// returns the result of applying it on delivery.
pub struct ClusterSubmitter {
    pub memdb: Arc<MemDb>,
    pub quorate: Arc<AtomicBool>,
    pub core: SharedCore,
    pub inflight: Arc<Inflight>,
}

impl ClusterSubmitter {
    fn send(&self, op: &Operation, wait: bool) -> Result<usize, Errno> {
        let (subtype, payload) = operation_message(op).map_err(|_| Errno::EINVAL)?;
        let (reply, rx) = if wait {
            let (t, r) = mpsc::sync_channel(1);
            (Some(reply_to(t)), Some(r))
        } else {
            (None, None)
        };
        // numbered and multicast on this thread (no hand-over): the wait
        // below is for the delivery only
        lock(&self.core).send(subtype, &payload, reply);
        match rx {
            // not processed (connection lost, left the group): C's EACCES
            Some(rx) => match rx.recv() {
                Ok(Some(result)) => result_errno(result),
                _ => Err(Errno::EACCES),
            },
            None => Ok(0),
        }
    }
}

impl Submit for ClusterSubmitter {
    fn submit(&self, op: Operation) -> Result<usize, Errno> {
        if !self.quorate() {
            return Err(Errno::EACCES);
        }
        // utime(lock, 0): also ask the cluster to remove the lock once it
        // expired (cfs-plug-memdb.c); the MTIME itself then fails with
        // EACCES while the lock is younger than 120 s
        if let Operation::Mtime { path, mtime: 0 } = &op {
            if path_is_lockdir(path) {
                let is_dir = self
                    .memdb
                    .getattr(path)
                    .is_some_and(|a| a.kind == FileKind::Dir);
                if let (true, Some(csum)) = (is_dir, self.memdb.entry_csum(path)) {
                    let req = Operation::UnlockRequest {
                        path: path.clone(),
                        csum,
                    };
                    let _ = self.send(&req, false);
                }
            }
        }
        self.send(&op, true)
    }

    fn quorate(&self) -> bool {
        self.quorate.load(Ordering::Acquire)
    }

    /// open(O_TRUNC): the truncation is multicast at once but not waited
    /// for: agreed order puts it before this node's later messages (the
    /// handle's writes) on every node, and until it is delivered here the
    /// observers of the file on this node wait ([`Inflight`]). So the
    /// usual overwrite (open O_TRUNC, write, close) costs one round
    /// through corosync, not two; close(2) returns after the delivery.
    fn open_truncate(&self, path: &str, inode: Inode) -> Result<(), Errno> {
        if !self.quorate() {
            return Err(Errno::EACCES);
        }
        let op = Operation::Write {
            path: path.to_string(),
            offset: 0,
            data: Vec::new(),
            truncate: true,
        };
        let (subtype, payload) = operation_message(&op).map_err(|_| Errno::EINVAL)?;
        self.inflight.begin(inode);
        let inflight = self.inflight.clone();
        let path = path.to_string();
        let done: Done = Box::new(move |r| {
            match r {
                Some(r) if r < 0 => {
                    tracing::warn!("truncation of '{path}' at open failed on delivery ({r})")
                }
                None => tracing::warn!("truncation of '{path}' at open was not processed"),
                _ => {}
            }
            inflight.end(inode, r);
        });
        if lock(&self.core).send(subtype, &payload, Some(done)) {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }

    /// The handle was never written: close(2) reports the truncation's
    /// own result (C's open would have).
    fn settle_open_truncate(&self, inode: Inode) -> Result<(), Errno> {
        self.inflight.wait(inode);
        match self.inflight.take_failure(inode) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn before_read(&self, inode: Inode) -> bool {
        self.inflight.wait(inode)
    }

    fn write_inode(
        &self,
        inode: Inode,
        offset: u64,
        data: &[u8],
        truncate: bool,
        after_open_trunc: bool,
    ) -> Result<usize, Errno> {
        // The handle's first write after open(O_TRUNC), whose truncation
        // may still be in flight, may have failed (the file renamed or
        // removed by another node first) or may never be processed (the
        // group left): at offset 0 it carries the truncation itself (the
        // flag truncates at its end: the same file either way when the
        // truncation went through); elsewhere it waits for the truncation
        // and fails as that did.
        let mut truncate = truncate;
        if after_open_trunc {
            if offset == 0 {
                truncate = true;
                // carried here: how the open's truncation ended no longer matters
                self.inflight.take_failure(inode);
            } else {
                self.inflight.wait(inode);
                if let Some(e) = self.inflight.take_failure(inode) {
                    return Err(e);
                }
            }
        }
        // a detached (unlinked, still open) file is only this node's
        if self.memdb.getattr_inode(inode).is_some_and(|a| a.detached) {
            return self
                .memdb
                .write_inode(inode, offset, data, truncate, false, 0, now_secs());
        }
        let path = self.memdb.path_of(inode).ok_or(Errno::ENOENT)?;
        self.submit(Operation::Write {
            path,
            offset,
            data: data.to_vec(),
            truncate,
        })
    }
}

#[cfg(test)]
mod tests {
    //! The service and the submitter over an in-process group (a bus
    //! thread gives every message one order for all members), with real
    //! databases.

    use super::*;
    use std::sync::mpsc::Sender;
    use std::time::{Duration, Instant};

    type Bus = Arc<Mutex<Vec<Sender<Cmd>>>>;

    struct BusMcast {
        me: Member,
        tx: Sender<(Member, Vec<u8>)>,
    }

    impl Mcast for BusMcast {
        fn mcast(&mut self, msg: &[u8]) -> Result<(), String> {
            self.tx
                .send((self.me, msg.to_vec()))
                .map_err(|e| e.to_string())
        }
    }

    struct Node {
        memdb: Arc<MemDb>,
        quorate: Arc<AtomicBool>,
        submit: ClusterSubmitter,
        _dir: tempfile::TempDir,
    }

    fn member(i: u32) -> Member {
        Member {
            nodeid: NodeId(i),
            pid: 1000 + i,
        }
    }

    fn cluster(n: u32) -> (Vec<Node>, Bus) {
        let bus: Bus = Arc::new(Mutex::new(Vec::new()));
        let (btx, brx) = mpsc::channel::<(Member, Vec<u8>)>();
        let fan = bus.clone();
        std::thread::spawn(move || {
            while let Ok((from, msg)) = brx.recv() {
                for tx in fan.lock().unwrap().iter() {
                    let _ = tx.send(Cmd::Deliver(from, msg.clone()));
                }
            }
        });
        let mut nodes = Vec::new();
        for i in 1..=n {
            let dir = tempfile::tempdir().unwrap();
            let memdb = Arc::new(MemDb::open(&dir.path().join("config.db"), None).unwrap());
            let quorate = Arc::new(AtomicBool::new(true));
            let store = MemStore {
                memdb: memdb.clone(),
                quorate: quorate.clone(),
                corosync_conf: Box::new(|_, _| {}),
            };
            let core = new_core();
            lock(&core).set_mcast(Box::new(BusMcast {
                me: member(i),
                tx: btx.clone(),
            }));
            let svc = dcdb_service(store, core.clone());
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || svc.run(rx));
            tx.send(Cmd::Joined(member(i))).unwrap();
            bus.lock().unwrap().push(tx.clone());
            nodes.push(Node {
                memdb: memdb.clone(),
                quorate: quorate.clone(),
                submit: ClusterSubmitter {
                    memdb,
                    quorate,
                    core,
                    inflight: Arc::new(Inflight::default()),
                },
                _dir: dir,
            });
        }
        let members: Vec<Member> = (1..=n).map(member).collect();
        for tx in bus.lock().unwrap().iter() {
            tx.send(Cmd::Confchg(members.clone(), members.len()))
                .unwrap();
        }
        // senders multicast on their own thread: wait until every node's
        // state machine has joined and synced
        let t = Instant::now();
        for node in &nodes {
            while lock(&node.submit.core)
                .dfsm
                .as_ref()
                .is_none_or(|d| d.mode() != Mode::Synced)
            {
                assert!(t.elapsed() < Duration::from_secs(10), "group not synced");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        (nodes, bus)
    }

    fn wait_equal(nodes: &[Node]) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            let first = nodes[0].memdb.encode_index();
            if nodes.iter().all(|n| n.memdb.encode_index() == first) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("indexes differ after 10 s");
    }

    #[test]
    fn writes_return_the_result_of_their_delivery_on_every_node() {
        let (nodes, _bus) = cluster(3);
        let s = &nodes[1].submit;
        s.submit(Operation::Create {
            path: "storage.cfg".into(),
        })
        .expect("create");
        let n = s
            .submit(Operation::Write {
                path: "storage.cfg".into(),
                offset: 0,
                data: b"dir: local\n".to_vec(),
                truncate: true,
            })
            .expect("write");
        assert_eq!(n, 11);
        // answered only after it was applied here
        assert_eq!(
            nodes[1].memdb.read("storage.cfg").as_deref(),
            Some(&b"dir: local\n"[..])
        );
        wait_equal(&nodes);
        assert_eq!(nodes[2].memdb.getattr("storage.cfg").unwrap().writer, 2);
        // errors come back as the errno of the application
        assert_eq!(
            nodes[0].submit.submit(Operation::Create {
                path: "storage.cfg".into()
            }),
            Err(Errno::EEXIST)
        );
        assert_eq!(
            nodes[0].submit.submit(Operation::Mkdir {
                path: "no/such/dir".into()
            }),
            Err(Errno::ENOENT)
        );
    }

    /// Create `path` holding `data` through `s`; its inode.
    fn file_with(s: &ClusterSubmitter, path: &str, data: &[u8]) -> Inode {
        s.submit(Operation::Create { path: path.into() }).unwrap();
        s.submit(Operation::Write {
            path: path.into(),
            offset: 0,
            data: data.to_vec(),
            truncate: true,
        })
        .unwrap();
        s.memdb.getattr(path).unwrap().inode
    }

    /// open(O_TRUNC) is answered before its truncation is delivered; an
    /// observer of the file on the node waits for the delivery; the
    /// handle's write follows it in agreed order on every node.
    #[test]
    fn open_truncate_is_answered_at_once_and_readers_wait_for_it() {
        let (nodes, bus) = cluster(2);
        let s = &nodes[0].submit;
        let inode = file_with(s, "f", b"old content");
        // hold every delivery back (the bus fans out under this lock)
        let held = bus.lock().unwrap();
        s.open_truncate("f", inode)
            .expect("answered without the delivery");
        assert_eq!(
            nodes[0].memdb.read("f").as_deref(),
            Some(&b"old content"[..]),
            "not delivered yet"
        );
        let seen = std::thread::scope(|sc| {
            let reader = sc.spawn(|| {
                let t = Instant::now();
                assert!(s.before_read(inode), "a truncation was in flight");
                (nodes[0].memdb.read("f"), t.elapsed())
            });
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
            reader.join().unwrap()
        });
        assert_eq!(
            seen.0.as_deref(),
            Some(&b""[..]),
            "the reader saw the truncation"
        );
        assert!(
            seen.1 >= Duration::from_millis(80),
            "the reader waited for it"
        );
        assert!(!s.before_read(inode), "nothing in flight any more");
        assert_eq!(s.write_inode(inode, 0, b"new", false, true), Ok(3));
        wait_equal(&nodes);
        assert_eq!(nodes[1].memdb.read("f").as_deref(), Some(&b"new"[..]));
        // not quorate: refused at once, nothing in flight
        nodes[0].quorate.store(false, Ordering::Release);
        assert_eq!(s.open_truncate("f", inode), Err(Errno::EACCES));
        assert!(!s.before_read(inode));
    }

    /// Another node renames the file before this node's open(O_TRUNC)
    /// truncation is delivered (it then fails with ENOENT): the handle's
    /// first write at offset 0 carries the truncation itself, so the file
    /// (now under the new name: same inode) holds exactly what was
    /// written; a handle that never writes reports the failure at close.
    #[test]
    fn failed_open_truncation_is_carried_by_the_write_or_reported_at_close() {
        let (nodes, bus) = cluster(2);
        let s = &nodes[0].submit;
        let inode = file_with(s, "f", b"old content");
        wait_equal(&nodes);
        for writes in [true, false] {
            let (from, to) = if writes { ("f", "g") } else { ("g", "f") };
            std::thread::scope(|sc| {
                let held = bus.lock().unwrap();
                // node 2's rename is multicast first, then node 1's truncation
                let renamer = sc.spawn(|| {
                    nodes[1].submit.submit(Operation::Rename {
                        from: from.into(),
                        to: to.into(),
                    })
                });
                std::thread::sleep(Duration::from_millis(50));
                s.open_truncate(from, inode).expect("answered at once");
                drop(held);
                renamer.join().unwrap().expect("rename");
            });
            if writes {
                assert_eq!(s.write_inode(inode, 0, b"new", false, true), Ok(3));
                wait_equal(&nodes);
                for n in &nodes {
                    assert_eq!(n.memdb.read("g").as_deref(), Some(&b"new"[..]));
                }
            } else {
                assert_eq!(s.settle_open_truncate(inode), Err(Errno::ENOENT));
                assert_eq!(nodes[0].memdb.read("f").as_deref(), Some(&b"new"[..]));
            }
        }
    }

    #[test]
    fn without_quorum_mutations_fail_with_eacces() {
        let (nodes, _bus) = cluster(2);
        nodes[0].quorate.store(false, Ordering::Release);
        assert_eq!(
            nodes[0]
                .submit
                .submit(Operation::Mkdir { path: "x".into() }),
            Err(Errno::EACCES)
        );
        nodes[1]
            .submit
            .submit(Operation::Mkdir { path: "y".into() })
            .expect("the quorate node writes");
    }

    #[test]
    fn concurrent_writers_on_all_nodes_end_identical() {
        let (nodes, _bus) = cluster(3);
        let nodes = Arc::new(nodes);
        let mut threads = Vec::new();
        for i in 0..3 {
            let nodes = nodes.clone();
            threads.push(std::thread::spawn(move || {
                for k in 0..50 {
                    let path = format!("f{}", k % 7);
                    let _ = nodes[i]
                        .submit
                        .submit(Operation::Create { path: path.clone() });
                    nodes[i]
                        .submit
                        .submit(Operation::Write {
                            path,
                            offset: 0,
                            data: format!("{i}-{k}").into_bytes(),
                            truncate: true,
                        })
                        .expect("write");
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        wait_equal(&nodes);
    }
}
