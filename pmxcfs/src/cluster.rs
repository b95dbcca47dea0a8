//! Cluster mode: the corosync services (pmxcfs-services) wired to the
//! dcdb service (dcdb.rs), the quorum flag and the `.members` data.
//!
//! [`ClusterSetup`] exists before the mount (the filesystem needs its
//! [`ClusterSubmitter`]); [`ClusterSetup::start`] runs after the daemon
//! forked (threads do not survive a fork).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use pmxcfs_dfsm::machine::Member;
use pmxcfs_memdb::{MemDb, Submit};
use pmxcfs_services::confdb::{ClusterConfig, ConfdbService};
use pmxcfs_services::cpg::{CpgConfig, CpgEvent, CpgSender, CpgService, EventSink};
use pmxcfs_services::quorum::QuorumService;
use pmxcfs_status::members::{ClusterInfo, MemberNode};
use pmxcfs_status::Status;

use crate::corosync_conf::{self, HostConf};
use crate::dcdb::{
    dcdb_service, new_core, ClusterSubmitter, Cmd, Inflight, Mcast, MemStore, SharedCore,
};

/// The dcdb CPG group (joined with its trailing NUL by the service).
const DCDB_GROUP: &str = "pve_dcdb_v1";
use pmxcfs_dfsm::kvstore_app::{
    update_message, KvStore, KvStoreSink, KVSTORE_GROUP, KVSTORE_PROTOCOL_VERSION,
};
use pmxcfs_logger::{ClogBuffer, ClogEntry, ClusterLog};

use crate::dcdb::GroupService;

/// What is prepared before the mount.
pub struct ClusterSetup {
    memdb: Arc<MemDb>,
    status: Arc<Status>,
    clog: Arc<Mutex<ClusterLog>>,
    kv_tx: Sender<Cmd>,
    kv_rx: Receiver<Cmd>,
    /// This node's address, sent as `nodeip` when the kvstore is synced.
    node_ip: String,
    /// Between the VERIFY rounds of the lowest node (dcdb: 3600 s).
    verify_interval: Duration,
    host_conf: HostConf,
    quorate: Arc<AtomicBool>,
    /// The dcdb group's state machine and senders (the filesystem numbers
    /// and multicasts its messages itself).
    core: SharedCore,
    inflight: Arc<Inflight>,
    tx: Sender<Cmd>,
    rx: Receiver<Cmd>,
}

/// The running cluster side.
pub struct Cluster {
    cpg: CpgService,
    kv_cpg: CpgService,
    kv_tx: Sender<Cmd>,
    quorum: QuorumService,
    confdb: ConfdbService,
    tx: Sender<Cmd>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl ClusterSetup {
    pub fn new(
        memdb: Arc<MemDb>,
        status: Arc<Status>,
        clog: Arc<Mutex<ClusterLog>>,
        host_conf_path: PathBuf,
        node_ip: String,
        verify_interval: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        let (kv_tx, kv_rx) = mpsc::channel();
        ClusterSetup {
            memdb,
            status,
            clog,
            kv_tx,
            kv_rx,
            node_ip,
            verify_interval,
            host_conf: HostConf {
                path: host_conf_path,
                ..HostConf::system()
            },
            quorate: Arc::new(AtomicBool::new(false)),
            core: new_core(),
            inflight: Arc::new(Inflight::default()),
            tx,
            rx,
        }
    }

    /// open(O_TRUNC) truncations of this node not delivered yet (IPC
    /// readers wait for them too).
    pub fn inflight(&self) -> Arc<Inflight> {
        self.inflight.clone()
    }

    /// The filesystem's Submit in cluster mode.
    pub fn submitter(&self) -> Arc<dyn Submit> {
        Arc::new(ClusterSubmitter {
            memdb: self.memdb.clone(),
            quorate: self.quorate.clone(),
            core: self.core.clone(),
            inflight: self.inflight.clone(),
        })
    }

    /// Where this node's status keys and cluster log entries go to the
    /// other nodes (the kvstore group).
    pub fn kvstore_sender(&self) -> Sender<Cmd> {
        self.kv_tx.clone()
    }

    /// Write corosync.conf to the host when the database's is newer (at
    /// start, as C does).
    pub fn sync_corosync_conf(&self) {
        let conf = self.memdb.read("corosync.conf");
        corosync_conf::sync(conf.as_deref(), &self.host_conf, false);
    }

    /// Connect to corosync and start serving the group.
    pub fn start(self) -> Result<Cluster> {
        let ClusterSetup {
            memdb,
            status,
            clog,
            kv_tx,
            kv_rx,
            node_ip,
            verify_interval,
            host_conf,
            quorate,
            core,
            inflight: _,
            tx,
            rx,
        } = self;
        let stop = Arc::new(AtomicBool::new(false));
        let quorum = QuorumService::start().context("quorum service")?;
        let confdb = ConfdbService::start().context("confdb service")?;

        // A write delivered while not quorate makes the dcdb group resync
        // (as in C), so the flag is known before the group is joined: a
        // quorate cluster tells within a few ms, an inquorate one is not
        // waited for long. The group is joined before the node list is
        // read: its sync needs nothing of it, and it is what a restarted
        // node waits for.
        let t = std::time::Instant::now();
        while !quorum.is_quorate() && t.elapsed() < Duration::from_millis(100) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if quorum.is_quorate() {
            quorate.store(true, Ordering::Release);
            status.set_quorate(true);
        }

        let store = MemStore {
            memdb: memdb.clone(),
            quorate: quorate.clone(),
            corosync_conf: Box::new(move |memdb: &MemDb, local: bool| {
                let conf = memdb.read("corosync.conf");
                corosync_conf::sync(conf.as_deref(), &host_conf, local);
            }),
        };
        // deliveries are applied on the CPG thread itself (no hand-over);
        // the "dcdb" thread serves the other commands
        let service = Arc::new(Mutex::new(dcdb_service(store, core.clone())));
        let direct: EventSink = {
            let service = service.clone();
            Arc::new(move |ev| {
                let cmd = event_cmd(ev);
                service
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .handle(cmd);
            })
        };
        let cpg = CpgService::start_with_sink_and(CpgConfig::new(DCDB_GROUP), direct, |s| {
            lock_core(&core).set_mcast(Box::new(CpgMcast(s)))
        })
        .context("dcdb CPG service")?;
        let view = Arc::new(Mutex::new(View::default()));
        // C starts the kvstore after confdb has the node list: status keys
        // of nodes not in it are ignored, so wait for it (bounded)
        for _ in 0..3000 {
            if let Some(conf) = confdb.current() {
                view.lock().unwrap_or_else(|p| p.into_inner()).config = Some(conf);
                publish(&view, &status);
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }

        let mut threads = Vec::new();
        threads.push(
            std::thread::Builder::new()
                .name("dcdb".into())
                .spawn(move || GroupService::run_shared(service, rx))?,
        );
        // the kvstore group: status keys, cluster log, node online flags
        let kv_cpg =
            CpgService::start_with_sink(CpgConfig::new(KVSTORE_GROUP), sink(kv_tx.clone()))
                .context("kvstore CPG service")?;
        {
            let kv_sink = KvSink {
                status: status.clone(),
                clog,
                view: view.clone(),
            };
            let status = status.clone();
            let kv_core = new_core();
            lock_core(&kv_core).set_mcast(Box::new(CpgMcast(kv_cpg.sender())));
            let kv =
                GroupService::new(KvStore { sink: kv_sink }, KVSTORE_PROTOCOL_VERSION, kv_core)
                    .on_synced(Box::new(move || {
                        // dfsm_synced: this node's IP (as set, else its own)
                        if !status.local_entries().iter().any(|(k, _)| k == "nodeip") {
                            let mut ip = node_ip.clone().into_bytes();
                            ip.push(0);
                            let _ = status.set_status("nodeip", &ip);
                        }
                        status
                            .local_entries()
                            .iter()
                            .filter_map(|(k, v)| update_message(k, v))
                            .collect()
                    }));
            threads.push(
                std::thread::Builder::new()
                    .name("kvstore".into())
                    .spawn(move || kv.run(kv_rx))?,
            );
        }
        // quorum and the corosync configuration, polled (both services
        // keep the latest value; a change is seen within 10 ms)
        {
            let stop = stop.clone();
            let status = status.clone();
            let quorum_rx = quorum.subscribe();
            let confdb_rx = confdb.subscribe();
            let view = view.clone();
            let tx = tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("cluster-watch".into())
                    .spawn(move || {
                        let mut last_q = None;
                        let mut last_conf: Option<ClusterConfig> = None;
                        let mut since_verify = Duration::ZERO;
                        let tick = Duration::from_millis(10);
                        while !stop.load(Ordering::Acquire) {
                            let q = *quorum_rx.borrow();
                            if last_q != Some(q) {
                                tracing::info!("node has {}quorum", if q { "" } else { "lost " });
                                quorate.store(q, Ordering::Release);
                                status.set_quorate(q);
                                last_q = Some(q);
                            }
                            let conf = confdb_rx.borrow().clone();
                            if conf != last_conf {
                                view.lock().unwrap_or_else(|p| p.into_inner()).config =
                                    conf.clone();
                                publish(&view, &status);
                                last_conf = conf;
                            }
                            since_verify += tick;
                            if since_verify >= verify_interval {
                                since_verify = Duration::ZERO;
                                let _ = tx.send(Cmd::Verify);
                            }
                            std::thread::sleep(tick);
                        }
                    })?,
            );
        }
        Ok(Cluster {
            cpg,
            kv_cpg,
            kv_tx,
            quorum,
            confdb,
            tx,
            threads,
            stop,
        })
    }
}

impl Cluster {
    /// Stop everything; waiting senders get EACCES. Bounded: each service
    /// stops within 1 s.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.tx.send(Cmd::Stop);
        let _ = self.kv_tx.send(Cmd::Stop);
        if let Err(e) = self.cpg.stop() {
            tracing::warn!("dcdb CPG service: {e}");
        }
        if let Err(e) = self.kv_cpg.stop() {
            tracing::warn!("kvstore CPG service: {e}");
        }
        if let Err(e) = self.quorum.stop() {
            tracing::warn!("quorum service: {e}");
        }
        if let Err(e) = self.confdb.stop() {
            tracing::warn!("confdb service: {e}");
        }
        drop(self.tx);
        drop(self.kv_tx);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// CPG events of a group -> commands of its service thread, handed over
/// on the CPG thread itself.
fn sink(tx: Sender<Cmd>) -> EventSink {
    let tx = Mutex::new(tx);
    Arc::new(move |ev| {
        let _ = tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(event_cmd(ev));
    })
}

/// The service command of a CPG event.
fn event_cmd(ev: CpgEvent) -> Cmd {
    {
        match ev {
            CpgEvent::Joined { nodeid, pid } => Cmd::Joined(Member { nodeid, pid }),
            CpgEvent::Confchg {
                members, joined, ..
            } => Cmd::Confchg(
                members
                    .iter()
                    .map(|&(nodeid, pid)| Member { nodeid, pid })
                    .collect(),
                joined.len(),
            ),
            CpgEvent::Deliver { nodeid, pid, msg } => Cmd::Deliver(Member { nodeid, pid }, msg),
            CpgEvent::Disconnected => Cmd::Disconnected,
        }
    }
}

/// The kvstore application's view of the status and the cluster log.
struct KvSink {
    status: Arc<Status>,
    clog: Arc<Mutex<ClusterLog>>,
    view: Arc<Mutex<View>>,
}

impl KvStoreSink for KvSink {
    fn node_set(&mut self, nodeid: pmxcfs_api_types::NodeId, key: &str, value: &[u8]) {
        // ignored for a node not in the configuration (status.c)
        let name = {
            let v = self.view.lock().unwrap_or_else(|p| p.into_inner());
            v.config
                .as_ref()
                .and_then(|c| c.node_by_id(nodeid))
                .map(|n| n.name.clone())
        };
        if let Some(name) = name {
            self.status.set_remote(&name, key, value);
        }
    }

    fn log_entry(&mut self, raw: &[u8]) {
        match ClogEntry::decode(raw) {
            Ok(e) => {
                self.clog
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(&e);
            }
            Err(e) => tracing::error!("cant parse log message: {e}"),
        }
    }

    fn log_state(&mut self) -> Vec<u8> {
        self.clog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_state()
    }

    fn merge_logs(&mut self, states: &[Option<Vec<u8>>], local: usize) {
        let bufs: Vec<Option<ClogBuffer>> = states
            .iter()
            .map(|s| s.as_deref().and_then(|b| ClogBuffer::from_bytes(b).ok()))
            .collect();
        let refs: Vec<Option<&ClogBuffer>> = bufs.iter().map(Option::as_ref).collect();
        let mut clog = self.clog.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = clog.merge(&refs, local) {
            tracing::error!("unable to merge log files: {e}");
        }
    }

    fn members(&mut self, members: &[Member]) {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).online =
            members.iter().map(|m| m.nodeid.0).collect();
        publish(&self.view, &self.status);
    }
}

fn lock_core(core: &SharedCore) -> std::sync::MutexGuard<'_, crate::dcdb::Core> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

struct CpgMcast(CpgSender);

impl Mcast for CpgMcast {
    fn mcast(&mut self, msg: &[u8]) -> Result<(), String> {
        self.0.mcast_agreed(msg).map_err(|e| e.to_string())
    }

    fn rejoin(&mut self) {
        self.0.leave();
    }
}

/// What `.members` is made of: corosync's configuration and the CPG
/// membership of the dcdb group.
#[derive(Default)]
struct View {
    config: Option<ClusterConfig>,
    online: BTreeSet<u32>,
}

fn publish(view: &Mutex<View>, status: &Status) {
    let v = view.lock().unwrap_or_else(|p| p.into_inner());
    let info = v.config.as_ref().map(|c| ClusterInfo {
        cluster_name: c.name.clone(),
        config_version: c.config_version,
        nodes: c
            .nodes
            .iter()
            .map(|n| MemberNode {
                name: n.name.clone(),
                nodeid: n.nodeid.0,
                online: v.online.contains(&n.nodeid.0),
                ip: None,
            })
            .collect(),
    });
    status.set_cluster_info(info);
}
