//! Cluster name, config version and node list from corosync's cmap,
//! tracked for changes (confdb.c), published as a [`ClusterConfig`]
//! snapshot through a `tokio::sync::watch`.
//!
//! Keys read, as confdb.c:
//! - `totem.cluster_name` (required: without it no snapshot is made),
//! - `totem.config_version` (optional, 0 when missing),
//! - `nodelist.node.N.{nodeid,name,ring0_addr,quorum_votes}`: a node is
//!   taken when it has a non-zero nodeid and a name; the name is the `name`
//!   key, else `ring0_addr`; the votes are 0 when `quorum_votes` is missing.
//!   We also keep `ring0_addr` as the node's address.
//!
//! Changes are tracked on the prefixes `totem.` and `nodelist.`; after a
//! dispatch that saw any change the whole configuration is read again and
//! published (like C, which bumps its cluster info version on every read,
//! every read is published, also after a reconnect). A failed read after a
//! change closes the connection, which is made again 5 s later (as C).

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pmxcfs_api_types::NodeId;
use rust_corosync::cmap;
use rust_corosync::{CsError, DispatchFlags};
use tokio::sync::watch;

use crate::registry::{new_context, Registration, Registry};
use crate::retry::{RECONNECT_INTERVAL, TRY_AGAIN_INTERVAL};
use crate::runner::{Client, Control, Next, ServiceThread};
use crate::{StopError, STOP_TIMEOUT};

/// Prefixes tracked for changes.
pub const TRACKED_PREFIXES: [&str; 2] = ["totem.", "nodelist."];

/// One node of the node list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub nodeid: NodeId,
    pub name: String,
    pub votes: u32,
    /// `ring0_addr` as configured (an address or a host name), if any.
    pub ip: Option<String>,
}

/// The cluster configuration as corosync has it loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    pub config_version: u64,
    /// Sorted by node id, one entry per node id.
    pub nodes: Vec<NodeInfo>,
}

impl ClusterConfig {
    pub fn node_by_id(&self, nodeid: NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.nodeid == nodeid)
    }

    pub fn node_by_name(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// A cmap value, reduced to what the configuration needs.
#[derive(Clone, Debug, PartialEq)]
pub enum CmapValue {
    Unsigned(u64),
    Signed(i64),
    String(String),
    /// Floats, binary data, unknown types.
    Other,
}

impl CmapValue {
    fn as_u64(&self) -> Option<u64> {
        match self {
            CmapValue::Unsigned(v) => Some(*v),
            CmapValue::Signed(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            CmapValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl From<&cmap::Data> for CmapValue {
    fn from(d: &cmap::Data) -> Self {
        match d {
            cmap::Data::UInt8(v) => CmapValue::Unsigned(u64::from(*v)),
            cmap::Data::UInt16(v) => CmapValue::Unsigned(u64::from(*v)),
            cmap::Data::UInt32(v) => CmapValue::Unsigned(u64::from(*v)),
            cmap::Data::UInt64(v) => CmapValue::Unsigned(*v),
            cmap::Data::Int8(v) => CmapValue::Signed(i64::from(*v)),
            cmap::Data::Int16(v) => CmapValue::Signed(i64::from(*v)),
            cmap::Data::Int32(v) => CmapValue::Signed(i64::from(*v)),
            cmap::Data::Int64(v) => CmapValue::Signed(*v),
            cmap::Data::String(s) => CmapValue::String(s.clone()),
            _ => CmapValue::Other,
        }
    }
}

/// Errors of the confdb service.
#[derive(Debug, thiserror::Error)]
pub enum ConfdbError {
    #[error("{op} failed: {err}")]
    Corosync { op: &'static str, err: CsError },
    #[error("cmap has no string totem.cluster_name")]
    NoClusterName,
    #[error("cannot start the confdb service thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Splits `nodelist.node.N.SUB` into (N, SUB), as confdb.c's
/// `sscanf(key, "nodelist.node.%d.%s")` (which needs both parts).
fn split_node_key(key: &str) -> Option<(u32, &str)> {
    let rest = key.strip_prefix("nodelist.node.")?;
    let (id, sub) = rest.split_once('.')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || sub.is_empty() {
        return None;
    }
    Some((id.parse().ok()?, sub))
}

#[derive(Default)]
struct PartialNode {
    nodeid: u32,
    votes: u32,
    name: Option<String>,
    ip: Option<String>,
}

impl PartialNode {
    fn finish(self) -> Option<NodeInfo> {
        match self.name {
            Some(name) if self.nodeid != 0 => Some(NodeInfo {
                nodeid: NodeId(self.nodeid),
                name,
                votes: self.votes,
                ip: self.ip,
            }),
            _ => None,
        }
    }
}

/// Builds the configuration from cmap keys (the map's order, byte order of
/// the keys, is the order in which cmap iterates them).
pub fn parse_cluster_config(
    entries: &BTreeMap<String, CmapValue>,
) -> Result<ClusterConfig, ConfdbError> {
    let name = entries
        .get("totem.cluster_name")
        .and_then(CmapValue::as_str)
        .ok_or(ConfdbError::NoClusterName)?
        .to_string();
    let config_version = entries
        .get("totem.config_version")
        .and_then(CmapValue::as_u64)
        .unwrap_or(0);

    let mut by_id: BTreeMap<u32, NodeInfo> = BTreeMap::new();
    let mut add = |n: PartialNode| {
        if let Some(n) = n.finish() {
            by_id.insert(n.nodeid.0, n);
        }
    };
    let mut current: Option<(u32, PartialNode)> = None;
    let from = std::ops::Bound::Included("nodelist.node.");
    for (key, value) in entries.range::<str, _>((from, std::ops::Bound::Unbounded)) {
        if !key.starts_with("nodelist.node.") {
            break;
        }
        let Some((idx, sub)) = split_node_key(key) else {
            continue;
        };
        if current.as_ref().is_none_or(|(i, _)| *i != idx) {
            if let Some((_, n)) = current.take() {
                add(n);
            }
            current = Some((idx, PartialNode::default()));
        }
        let Some((_, node)) = current.as_mut() else {
            continue;
        };
        match sub {
            "nodeid" => match value.as_u32() {
                Some(v) => node.nodeid = v,
                None => tracing::warn!("confdb: {key} is not a 32-bit node id: {value:?}"),
            },
            "quorum_votes" => match value.as_u32() {
                Some(v) => node.votes = v,
                None => tracing::warn!("confdb: {key} is not a vote count: {value:?}"),
            },
            "ring0_addr" => {
                if let Some(s) = value.as_str() {
                    node.ip = Some(s.to_string());
                    // the name key is preferred (it sorts before ring0_addr)
                    if node.name.is_none() {
                        node.name = Some(s.to_string());
                    }
                }
            }
            "name" => {
                if let Some(s) = value.as_str() {
                    node.name = Some(s.to_string());
                }
            }
            _ => {}
        }
    }
    if let Some((_, n)) = current.take() {
        add(n);
    }
    Ok(ClusterConfig {
        name,
        config_version,
        nodes: by_id.into_values().collect(),
    })
}

/// Reads the configuration through a cmap handle.
fn read_config(handle: &cmap::Handle) -> Result<ClusterConfig, ConfdbError> {
    let mut entries = BTreeMap::new();
    for key in ["totem.cluster_name", "totem.config_version"] {
        match cmap::get(handle, key) {
            Ok(d) => {
                entries.insert(key.to_string(), CmapValue::from(&d));
            }
            Err(CsError::CsErrNotExist) => {}
            Err(err) => {
                return Err(ConfdbError::Corosync {
                    op: "cmap_get",
                    err,
                })
            }
        }
    }
    let iter = cmap::CmapIterStart::new(handle, "nodelist.node.").map_err(|err| {
        ConfdbError::Corosync {
            op: "cmap_iter_init",
            err,
        }
    })?;
    for item in iter {
        entries.insert(item.key_name().to_string(), CmapValue::from(item.data()));
    }
    parse_cluster_config(&entries)
}

/// The confdb service: a thread tracking the cluster configuration.
pub struct ConfdbService {
    config: watch::Receiver<Option<ClusterConfig>>,
    thread: ServiceThread,
}

impl ConfdbService {
    pub fn start() -> Result<ConfdbService, ConfdbError> {
        Self::start_with(RECONNECT_INTERVAL)
    }

    pub fn start_with(reconnect_interval: Duration) -> Result<ConfdbService, ConfdbError> {
        let (tx, rx) = watch::channel(None);
        let ctl = Arc::new(Control::new()?);
        let client = ConfdbClient {
            config: tx,
            conn: None,
        };
        let thread = ServiceThread::spawn("confdb", client, ctl, reconnect_interval)?;
        Ok(ConfdbService { config: rx, thread })
    }

    /// The last configuration read (kept while corosync is away; `None`
    /// before the first read).
    pub fn current(&self) -> Option<ClusterConfig> {
        self.config.borrow().clone()
    }

    /// A receiver marked changed on every read.
    pub fn subscribe(&self) -> watch::Receiver<Option<ClusterConfig>> {
        self.config.clone()
    }

    pub fn request_stop(&self) {
        self.thread.request_stop();
    }

    /// Stops the thread (finalize) and waits at most 1 s for it.
    pub fn stop(self) -> Result<(), StopError> {
        self.stop_within(STOP_TIMEOUT)
    }

    pub fn stop_within(mut self, timeout: Duration) -> Result<(), StopError> {
        self.thread.stop(timeout)
    }
}

static REGISTRY: Registry<AtomicBool> = Registry::new();

fn track_cb(
    _handle: &cmap::Handle,
    _track: &cmap::TrackHandle,
    _event: cmap::TrackType,
    _key: &str,
    _new: &cmap::Data,
    _old: &cmap::Data,
    user_data: u64,
) {
    if let Some(changed) = REGISTRY.get(user_data) {
        changed.store(true, Ordering::Release);
    }
}

struct Conn {
    handle: cmap::Handle,
    tracks: Vec<cmap::TrackHandle>,
    changed: Arc<AtomicBool>,
    _registration: Registration<AtomicBool>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // removes rust-corosync's track entries (fails harmlessly when
        // corosync is gone); then the handle finalizes, then the registry
        // entry goes
        for t in self.tracks.drain(..) {
            let _ = cmap::track_delete(&self.handle, t);
        }
    }
}

struct ConfdbClient {
    config: watch::Sender<Option<ClusterConfig>>,
    conn: Option<Conn>,
}

impl ConfdbClient {
    fn publish(&self, cfg: ClusterConfig) {
        tracing::info!(
            "confdb: cluster {:?}, config version {}, {} nodes",
            cfg.name,
            cfg.config_version,
            cfg.nodes.len()
        );
        self.config.send_replace(Some(cfg));
    }
}

impl Client for ConfdbClient {
    type Error = ConfdbError;

    fn name(&self) -> &'static str {
        "confdb"
    }

    fn connect(&mut self, _ctl: &Control) -> Result<RawFd, ConfdbError> {
        let cs = |op| move |err| ConfdbError::Corosync { op, err };
        let handle = cmap::initialize(cmap::Map::Icmap).map_err(cs("cmap_initialize"))?;
        let context = new_context();
        let changed = Arc::new(AtomicBool::new(false));
        let mut conn = Conn {
            handle,
            tracks: Vec::new(),
            changed: changed.clone(),
            _registration: Registration::with_context(&REGISTRY, context, changed),
        };
        cmap::context_set(&conn.handle, context).map_err(cs("cmap_context_set"))?;
        let notify = cmap::NotifyCallback {
            notify_fn: Some(track_cb),
        };
        // (TrackType is neither Copy nor Clone)
        let kinds = || {
            cmap::TrackType::PREFIX
                | cmap::TrackType::ADD
                | cmap::TrackType::DELETE
                | cmap::TrackType::MODIFY
        };
        for prefix in TRACKED_PREFIXES {
            let t = cmap::track_add(&conn.handle, prefix, kinds(), &notify, context)
                .map_err(cs("cmap_track_add"))?;
            conn.tracks.push(t);
        }
        let fd = cmap::fd_get(&conn.handle).map_err(cs("cmap_fd_get"))?;
        // as C: a failed first read does not fail the connection
        match read_config(&conn.handle) {
            Ok(cfg) => self.publish(cfg),
            Err(e) => tracing::error!("confdb: reading the cluster configuration failed: {e}"),
        }
        self.conn = Some(conn);
        Ok(fd)
    }

    fn dispatch(&mut self, ctl: &Control) -> Result<Next, ConfdbError> {
        let Some(conn) = &self.conn else {
            return Ok(Next::Reconnect);
        };
        conn.changed.store(false, Ordering::Release);
        match cmap::dispatch(&conn.handle, DispatchFlags::All) {
            Ok(()) => {}
            Err(CsError::CsErrTryAgain) => {
                ctl.sleep(TRY_AGAIN_INTERVAL);
            }
            Err(err) => {
                return Err(ConfdbError::Corosync {
                    op: "cmap_dispatch",
                    err,
                })
            }
        }
        if conn.changed.swap(false, Ordering::AcqRel) {
            let cfg = read_config(&conn.handle)?;
            self.publish(cfg);
        }
        Ok(Next::Continue)
    }

    fn disconnect(&mut self, _lost: bool) {
        self.conn.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> CmapValue {
        CmapValue::String(v.to_string())
    }
    fn u(v: u64) -> CmapValue {
        CmapValue::Unsigned(v)
    }

    fn map(kv: &[(&str, CmapValue)]) -> BTreeMap<String, CmapValue> {
        kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn three_nodes_as_pve_writes_them() {
        let m = map(&[
            ("totem.cluster_name", s("pve-test")),
            ("totem.config_version", u(7)),
            ("totem.token", u(500)),
            ("nodelist.local_node_pos", u(0)),
            ("nodelist.node.0.name", s("n1")),
            ("nodelist.node.0.nodeid", u(1)),
            ("nodelist.node.0.quorum_votes", u(1)),
            ("nodelist.node.0.ring0_addr", s("10.99.0.1")),
            ("nodelist.node.1.name", s("n2")),
            ("nodelist.node.1.nodeid", u(2)),
            ("nodelist.node.1.quorum_votes", u(1)),
            ("nodelist.node.1.ring0_addr", s("10.99.0.2")),
            ("nodelist.node.2.name", s("n3")),
            ("nodelist.node.2.nodeid", u(3)),
            ("nodelist.node.2.quorum_votes", u(2)),
            ("nodelist.node.2.ring0_addr", s("10.99.0.3")),
        ]);
        let c = parse_cluster_config(&m).unwrap();
        assert_eq!(c.name, "pve-test");
        assert_eq!(c.config_version, 7);
        assert_eq!(
            c.nodes,
            vec![
                NodeInfo {
                    nodeid: NodeId(1),
                    name: "n1".into(),
                    votes: 1,
                    ip: Some("10.99.0.1".into())
                },
                NodeInfo {
                    nodeid: NodeId(2),
                    name: "n2".into(),
                    votes: 1,
                    ip: Some("10.99.0.2".into())
                },
                NodeInfo {
                    nodeid: NodeId(3),
                    name: "n3".into(),
                    votes: 2,
                    ip: Some("10.99.0.3".into())
                },
            ]
        );
        assert_eq!(c.node_by_name("n2").map(|n| n.nodeid), Some(NodeId(2)));
        assert_eq!(c.node_by_id(NodeId(3)).map(|n| n.name.as_str()), Some("n3"));
    }

    #[test]
    fn ring0_addr_names_a_node_without_name_and_votes_default_to_zero() {
        let m = map(&[
            ("totem.cluster_name", s("c")),
            ("nodelist.node.0.nodeid", u(5)),
            ("nodelist.node.0.ring0_addr", s("192.0.2.5")),
        ]);
        let c = parse_cluster_config(&m).unwrap();
        assert_eq!(c.config_version, 0);
        assert_eq!(
            c.nodes,
            vec![NodeInfo {
                nodeid: NodeId(5),
                name: "192.0.2.5".into(),
                votes: 0,
                ip: Some("192.0.2.5".into())
            }]
        );
    }

    #[test]
    fn nodes_without_nodeid_or_name_are_skipped() {
        let m = map(&[
            ("totem.cluster_name", s("c")),
            ("nodelist.node.0.name", s("noid")),
            ("nodelist.node.1.nodeid", u(2)),
            ("nodelist.node.2.name", s("zero")),
            ("nodelist.node.2.nodeid", u(0)),
            ("nodelist.node.3.name", s("ok")),
            ("nodelist.node.3.nodeid", u(4)),
            // a nodeid of the wrong type counts as missing
            ("nodelist.node.4.name", s("bad")),
            ("nodelist.node.4.nodeid", s("7")),
        ]);
        let c = parse_cluster_config(&m).unwrap();
        assert_eq!(c.nodes.len(), 1);
        assert_eq!(c.nodes[0].name, "ok");
        assert_eq!(c.nodes[0].ip, None);
    }

    #[test]
    fn indexes_above_nine_and_odd_keys() {
        // byte order puts node 10 between 1 and 2; each node's keys stay
        // together, so every node is complete
        let mut kv = vec![("totem.cluster_name".to_string(), s("c"))];
        for i in 0..12u64 {
            kv.push((format!("nodelist.node.{i}.nodeid"), u(i + 1)));
            kv.push((format!("nodelist.node.{i}.name"), s(&format!("n{}", i + 1))));
        }
        kv.push(("nodelist.node.x.name".into(), s("ignored")));
        kv.push(("nodelist.node.3".into(), s("ignored")));
        kv.push(("nodelist.node.3.".into(), s("ignored")));
        kv.push(("nodelist.node.-1.nodeid".into(), u(99)));
        let m: BTreeMap<String, CmapValue> = kv.into_iter().collect();
        let c = parse_cluster_config(&m).unwrap();
        assert_eq!(c.nodes.len(), 12);
        for (i, n) in c.nodes.iter().enumerate() {
            assert_eq!(n.nodeid, NodeId(i as u32 + 1));
            assert_eq!(n.name, format!("n{}", i + 1));
        }
    }

    #[test]
    fn duplicate_nodeids_keep_the_last() {
        let m = map(&[
            ("totem.cluster_name", s("c")),
            ("nodelist.node.0.name", s("a")),
            ("nodelist.node.0.nodeid", u(1)),
            ("nodelist.node.1.name", s("b")),
            ("nodelist.node.1.nodeid", u(1)),
        ]);
        let c = parse_cluster_config(&m).unwrap();
        assert_eq!(c.nodes.len(), 1);
        assert_eq!(c.nodes[0].name, "b");
    }

    #[test]
    fn missing_or_non_string_cluster_name_is_an_error() {
        assert!(matches!(
            parse_cluster_config(&map(&[("totem.config_version", u(1))])),
            Err(ConfdbError::NoClusterName)
        ));
        assert!(matches!(
            parse_cluster_config(&map(&[("totem.cluster_name", u(1))])),
            Err(ConfdbError::NoClusterName)
        ));
    }

    #[test]
    fn numbers_of_any_integer_type_and_out_of_range_values() {
        let m = map(&[
            ("totem.cluster_name", s("c")),
            ("totem.config_version", CmapValue::Signed(3)),
            ("nodelist.node.0.name", s("a")),
            ("nodelist.node.0.nodeid", CmapValue::Signed(-1)),
            ("nodelist.node.1.name", s("b")),
            ("nodelist.node.1.nodeid", u(u64::from(u32::MAX) + 1)),
            ("nodelist.node.2.name", s("c")),
            ("nodelist.node.2.nodeid", CmapValue::Signed(9)),
            ("nodelist.node.2.quorum_votes", CmapValue::Other),
        ]);
        let c = parse_cluster_config(&m).unwrap();
        assert_eq!(c.config_version, 3);
        assert_eq!(c.nodes.len(), 1);
        assert_eq!((c.nodes[0].nodeid, c.nodes[0].votes), (NodeId(9), 0));
    }

    #[test]
    fn split_node_key_follows_sscanf() {
        assert_eq!(split_node_key("nodelist.node.0.name"), Some((0, "name")));
        assert_eq!(
            split_node_key("nodelist.node.12.ring0_addr"),
            Some((12, "ring0_addr"))
        );
        assert_eq!(split_node_key("nodelist.node.12"), None);
        assert_eq!(split_node_key("nodelist.node.12."), None);
        assert_eq!(split_node_key("nodelist.node..name"), None);
        assert_eq!(split_node_key("nodelist.local_node_pos"), None);
        assert_eq!(split_node_key("nodelist.node.99999999999.name"), None);
    }
}
