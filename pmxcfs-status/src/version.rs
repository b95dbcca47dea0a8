//! The `.version` plugin file (status.c `cfs_create_version_msg`,
//! `dump_kvstore_versions`, `record_memdb_change`, `record_memdb_reload`).
//!
//! Layout, byte for byte:
//!
//! ```text
//! {\n
//! "starttime": S,\n
//! "clinfo": C,\n
//! "vmlist": V,\n
//! "<path>": N,\n                      one line per MEMDB_CHANGE_PATHS entry, in order
//! "kvstore": {\n
//! "<local node>": {\n"<key>": v,\n"<key>": v}\n      always present, even when empty
//! ,\n"<remote node>": {\n"<key>": v}\n               once per remote node with a kv table
//! }\n
//! }\n
//! ```
//!
//! A kv block with no keys is `"<node>": {\n}\n`; the last key of a block is
//! followed directly by `}` (no newline in between). Remote blocks are joined
//! to the previous block's `}\n` by `,\n`.

use std::collections::BTreeMap;
use std::fmt::Write;

/// The paths whose changes are counted in `.version`, in the exact order of
/// status.c `memdb_change_array` (pmxcfs 9.1.6).
pub const MEMDB_CHANGE_PATHS: [&str; 43] = [
    "corosync.conf",
    "corosync.conf.new",
    "storage.cfg",
    "user.cfg",
    "domains.cfg",
    "notifications.cfg",
    "priv/notifications.cfg",
    "priv/shadow.cfg",
    "priv/acme/plugins.cfg",
    "priv/tfa.cfg",
    "priv/token.cfg",
    "priv/wg-keys.cfg",
    "datacenter.cfg",
    "vzdump.cron",
    "vzdump.conf",
    "jobs.cfg",
    "ha/crm_commands",
    "ha/manager_status",
    "ha/resources.cfg",
    "ha/rules.cfg",
    "ha/groups.cfg",
    "ha/fence.cfg",
    "status.cfg",
    "replication.cfg",
    "ceph.conf",
    "sdn/vnets.cfg",
    "sdn/zones.cfg",
    "sdn/controllers.cfg",
    "sdn/subnets.cfg",
    "sdn/ipams.cfg",
    "sdn/mac-cache.json",
    "sdn/pve-ipam-state.json",
    "sdn/dns.cfg",
    "sdn/fabrics.cfg",
    "sdn/route-maps.cfg",
    "sdn/prefix-lists.cfg",
    "sdn/.running-config",
    "virtual-guest/cpu-models.conf",
    "virtual-guest/profiles.cfg",
    "firewall/cluster.fw",
    "mapping/directory.cfg",
    "mapping/pci.cfg",
    "mapping/usb.cfg",
];

/// One change counter per entry of [`MEMDB_CHANGE_PATHS`] (the `version`
/// fields of status.c `memdb_change_array`).
///
/// C keeps these as `uint32_t`; they are `u64` here, which only differs after
/// 2^32 changes of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathCounters {
    counts: [u64; MEMDB_CHANGE_PATHS.len()],
}

impl Default for PathCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl PathCounters {
    /// All counters at 0 (the state before the database is opened).
    pub fn new() -> Self {
        Self {
            counts: [0; MEMDB_CHANGE_PATHS.len()],
        }
    }

    /// Bumps the counter of `path` by one, like `record_memdb_change`.
    ///
    /// `path` must match an entry of [`MEMDB_CHANGE_PATHS`] exactly (relative,
    /// no leading slash); any other path is ignored.
    pub fn bump(&mut self, path: &str) {
        if let Some(i) = MEMDB_CHANGE_PATHS.iter().position(|p| *p == path) {
            self.counts[i] = self.counts[i].wrapping_add(1);
        }
    }

    /// Bumps every counter by one, like `record_memdb_reload` (called when the
    /// database is opened and after a resync).
    pub fn bump_all(&mut self) {
        for c in &mut self.counts {
            *c = c.wrapping_add(1);
        }
    }

    /// The counter of `path`, or `None` if it is not a tracked path.
    pub fn get(&self, path: &str) -> Option<u64> {
        MEMDB_CHANGE_PATHS
            .iter()
            .position(|p| *p == path)
            .map(|i| self.counts[i])
    }

    /// `(path, counter)` pairs in [`MEMDB_CHANGE_PATHS`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        MEMDB_CHANGE_PATHS
            .iter()
            .copied()
            .zip(self.counts.iter().copied())
    }
}

/// Versions of the kv-store entries shown in the `"kvstore"` block of
/// `.version`: per node name, per key, the entry's version.
///
/// What C shows (status.c `cfs_create_version_msg`):
/// - first, always, the local node (`cfs.nodename`) with the keys of the local
///   kv table, even when that table is empty;
/// - then every node of the current cluster info that has a kv table. C
///   creates a node's table on the first kv update received from that node
///   over CPG and keeps it across cluster-info reloads for the same node id;
///   updates from the local node itself are ignored, so the local node does
///   not appear twice. A remote table may be empty (all keys deleted, or the
///   first update was a delete) and is then still shown.
///
/// Keys are those set through `cfs_status_set` / kv updates except `rrd/...`
/// and `nodeip`, which live elsewhere. A new key has version 0, every further
/// update adds 1 (even with identical data), and empty data deletes the key.
///
/// C iterates GLib hash tables (keys by string hash, remote nodes by node id),
/// so its order is unspecified; here keys and remote nodes are in `BTreeMap`
/// (byte-wise) order, which is one valid C order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvVersions {
    /// Name of the local node (`cfs.nodename`); its block is always written.
    pub local_node: String,
    /// Versions of the local node's keys.
    pub local: BTreeMap<String, u64>,
    /// Versions per remote node that has a kv table, keyed by node name.
    pub remote: BTreeMap<String, BTreeMap<String, u64>>,
}

impl KvVersions {
    /// An empty kv store for the local node `local_node`.
    pub fn new(local_node: impl Into<String>) -> Self {
        Self {
            local_node: local_node.into(),
            ..Self::default()
        }
    }
}

/// Renders `.version` exactly as status.c `cfs_create_version_msg`.
///
/// `start_time` is the daemon start time in seconds since the epoch.
/// Node names and keys are written verbatim, without JSON escaping, as C does.
pub fn render_version(
    start_time: u64,
    clinfo_version: u64,
    vmlist_version: u64,
    counters: &PathCounters,
    kvstore: &KvVersions,
) -> Vec<u8> {
    let mut s = String::with_capacity(2048);
    // Writing into a String cannot fail.
    let _ = write_version(
        &mut s,
        start_time,
        clinfo_version,
        vmlist_version,
        counters,
        kvstore,
    );
    s.into_bytes()
}

fn write_version(
    s: &mut String,
    start_time: u64,
    clinfo_version: u64,
    vmlist_version: u64,
    counters: &PathCounters,
    kvstore: &KvVersions,
) -> std::fmt::Result {
    s.push_str("{\n");
    writeln!(s, "\"starttime\": {start_time},")?;
    writeln!(s, "\"clinfo\": {clinfo_version},")?;
    writeln!(s, "\"vmlist\": {vmlist_version},")?;
    for (path, version) in counters.iter() {
        writeln!(s, "\"{path}\": {version},")?;
    }
    s.push_str("\"kvstore\": {\n");
    write_kv_block(s, &kvstore.local_node, &kvstore.local)?;
    for (node, keys) in &kvstore.remote {
        s.push_str(",\n");
        write_kv_block(s, node, keys)?;
    }
    s.push_str("}\n}\n");
    Ok(())
}

/// One node's block, as status.c `dump_kvstore_versions`.
fn write_kv_block(s: &mut String, node: &str, keys: &BTreeMap<String, u64>) -> std::fmt::Result {
    writeln!(s, "\"{node}\": {{")?;
    for (i, (key, version)) in keys.iter().enumerate() {
        if i > 0 {
            s.push_str(",\n");
        }
        write!(s, "\"{key}\": {version}")?;
    }
    s.push_str("}\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 43 path lines with every counter at `n`.
    fn path_lines(n: u64) -> String {
        MEMDB_CHANGE_PATHS
            .iter()
            .map(|p| format!("\"{p}\": {n},\n"))
            .collect()
    }

    #[test]
    fn path_table_order_and_ends() {
        assert_eq!(MEMDB_CHANGE_PATHS[0], "corosync.conf");
        assert_eq!(MEMDB_CHANGE_PATHS[12], "datacenter.cfg");
        assert_eq!(MEMDB_CHANGE_PATHS[36], "sdn/.running-config");
        assert_eq!(MEMDB_CHANGE_PATHS[42], "mapping/usb.cfg");
        let mut sorted = MEMDB_CHANGE_PATHS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 43, "paths must be unique");
    }

    #[test]
    fn bump_exact_match_only() {
        let mut c = PathCounters::new();
        c.bump("storage.cfg");
        c.bump("storage.cfg");
        c.bump("/storage.cfg");
        c.bump("storage.cfg.tmp");
        c.bump("nodes/vm/qemu-server/100.conf");
        c.bump("mapping/usb.cfg");
        assert_eq!(c.get("storage.cfg"), Some(2));
        assert_eq!(c.get("mapping/usb.cfg"), Some(1));
        assert_eq!(c.get("user.cfg"), Some(0));
        assert_eq!(c.get("/storage.cfg"), None);
        c.bump_all();
        assert_eq!(c.get("storage.cfg"), Some(3));
        assert_eq!(c.get("user.cfg"), Some(1));
        assert!(c.iter().all(|(_, v)| v >= 1));
    }

    #[test]
    fn empty_local_mode() {
        let out = render_version(
            1700000000,
            0,
            0,
            &PathCounters::new(),
            &KvVersions::new("vm"),
        );
        let expected = concat!(
            "{\n",
            "\"starttime\": 1700000000,\n",
            "\"clinfo\": 0,\n",
            "\"vmlist\": 0,\n",
            "\"corosync.conf\": 0,\n",
            "\"corosync.conf.new\": 0,\n",
            "\"storage.cfg\": 0,\n",
            "\"user.cfg\": 0,\n",
            "\"domains.cfg\": 0,\n",
            "\"notifications.cfg\": 0,\n",
            "\"priv/notifications.cfg\": 0,\n",
            "\"priv/shadow.cfg\": 0,\n",
            "\"priv/acme/plugins.cfg\": 0,\n",
            "\"priv/tfa.cfg\": 0,\n",
            "\"priv/token.cfg\": 0,\n",
            "\"priv/wg-keys.cfg\": 0,\n",
            "\"datacenter.cfg\": 0,\n",
            "\"vzdump.cron\": 0,\n",
            "\"vzdump.conf\": 0,\n",
            "\"jobs.cfg\": 0,\n",
            "\"ha/crm_commands\": 0,\n",
            "\"ha/manager_status\": 0,\n",
            "\"ha/resources.cfg\": 0,\n",
            "\"ha/rules.cfg\": 0,\n",
            "\"ha/groups.cfg\": 0,\n",
            "\"ha/fence.cfg\": 0,\n",
            "\"status.cfg\": 0,\n",
            "\"replication.cfg\": 0,\n",
            "\"ceph.conf\": 0,\n",
            "\"sdn/vnets.cfg\": 0,\n",
            "\"sdn/zones.cfg\": 0,\n",
            "\"sdn/controllers.cfg\": 0,\n",
            "\"sdn/subnets.cfg\": 0,\n",
            "\"sdn/ipams.cfg\": 0,\n",
            "\"sdn/mac-cache.json\": 0,\n",
            "\"sdn/pve-ipam-state.json\": 0,\n",
            "\"sdn/dns.cfg\": 0,\n",
            "\"sdn/fabrics.cfg\": 0,\n",
            "\"sdn/route-maps.cfg\": 0,\n",
            "\"sdn/prefix-lists.cfg\": 0,\n",
            "\"sdn/.running-config\": 0,\n",
            "\"virtual-guest/cpu-models.conf\": 0,\n",
            "\"virtual-guest/profiles.cfg\": 0,\n",
            "\"firewall/cluster.fw\": 0,\n",
            "\"mapping/directory.cfg\": 0,\n",
            "\"mapping/pci.cfg\": 0,\n",
            "\"mapping/usb.cfg\": 0,\n",
            "\"kvstore\": {\n",
            "\"vm\": {\n",
            "}\n",
            "}\n",
            "}\n",
        );
        assert_eq!(String::from_utf8_lossy(&out), expected);
    }

    #[test]
    fn counters_and_header_values() {
        let mut c = PathCounters::new();
        c.bump_all();
        let out = render_version(42, 7, 3, &c, &KvVersions::new("n1"));
        let expected = format!(
            "{{\n\"starttime\": 42,\n\"clinfo\": 7,\n\"vmlist\": 3,\n{}\"kvstore\": {{\n\"n1\": {{\n}}\n}}\n}}\n",
            path_lines(1)
        );
        assert_eq!(String::from_utf8_lossy(&out), expected);
    }

    #[test]
    fn local_keys() {
        let mut kv = KvVersions::new("vm");
        kv.local.insert("ceph-version".into(), 0);
        kv.local.insert("a".into(), 5);
        let out = render_version(1, 2, 3, &PathCounters::new(), &kv);
        let tail = "\"kvstore\": {\n\"vm\": {\n\"a\": 5,\n\"ceph-version\": 0}\n}\n}\n";
        let text = String::from_utf8_lossy(&out);
        assert!(text.ends_with(tail), "got: {text}");
        assert_eq!(
            text,
            format!(
                "{{\n\"starttime\": 1,\n\"clinfo\": 2,\n\"vmlist\": 3,\n{}{tail}",
                path_lines(0)
            )
        );
    }

    #[test]
    fn remote_nodes() {
        let mut kv = KvVersions::new("n1");
        kv.local.insert("k".into(), 1);
        let mut n2 = BTreeMap::new();
        n2.insert("x".into(), 3);
        n2.insert("y".into(), 0);
        kv.remote.insert("n2".into(), n2);
        kv.remote.insert("n3".into(), BTreeMap::new());
        let out = render_version(0, 0, 0, &PathCounters::new(), &kv);
        let text = String::from_utf8_lossy(&out);
        let tail = concat!(
            "\"kvstore\": {\n",
            "\"n1\": {\n\"k\": 1}\n",
            ",\n\"n2\": {\n\"x\": 3,\n\"y\": 0}\n",
            ",\n\"n3\": {\n}\n",
            "}\n}\n",
        );
        assert_eq!(
            text,
            format!(
                "{{\n\"starttime\": 0,\n\"clinfo\": 0,\n\"vmlist\": 0,\n{}{tail}",
                path_lines(0)
            )
        );
    }
}
