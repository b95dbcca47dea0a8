//! The `.members` plugin file (status.c `cfs_create_memberlist_msg`).
//!
//! Without cluster nodes (local mode, or a cluster info with no nodes) C
//! writes only:
//!
//! ```text
//! {\n"nodename": "<node>",\n"version": <clinfo_version>\n}\n
//! ```
//!
//! With nodes:
//!
//! ```text
//! {\n
//! "nodename": "<node>",\n
//! "version": <clinfo_version>,\n
//! "cluster": { "name": "<cluster>", "version": <config_version>, "nodes": <count>, "quorate": <0|1> },\n
//! "nodelist": {\n
//!   "<name>": { "id": <nodeid>, "online": <0|1>[, "ip": "<ip>"]},\n      (",\n" between nodes)
//!   "<name>": { "id": <nodeid>, "online": <0|1>}\n
//!   }\n
//! }\n
//! ```

use std::fmt::Write;

/// One configured cluster node (status.c `cfs_clnode_t`, plus the node's
/// `nodeip` kv entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberNode {
    /// Node name from corosync.conf.
    pub name: String,
    /// Corosync node id.
    pub nodeid: u32,
    /// Whether the node is a member of the current CPG membership.
    pub online: bool,
    /// The node's `nodeip` kv entry, if one was received (status.c `iphash`).
    pub ip: Option<String>,
}

/// Cluster information from corosync (status.c `cfs_clinfo_t`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    /// `totem.cluster_name`.
    pub cluster_name: String,
    /// `totem.config_version`.
    pub config_version: u64,
    /// Configured nodes, in the order they are rendered.
    pub nodes: Vec<MemberNode>,
}

/// Renders `.members` exactly as status.c `cfs_create_memberlist_msg`.
///
/// `cluster` is `None` in local mode; `None` and a cluster info without nodes
/// give the same short output (no `"cluster"` or `"nodelist"`, so node IPs are
/// not shown, even though setting `nodeip` still bumps `clinfo_version`).
///
/// Nodes are rendered in the order given (C uses GLib hash order by node id,
/// which is unspecified). Strings are written verbatim, without JSON
/// escaping, as C does. C stores the config version as `uint32_t` and prints
/// it and the node id with `%d`, so both are shown as signed 32-bit values
/// here too.
pub fn render_members(
    nodename: &str,
    clinfo_version: u64,
    cluster: Option<&ClusterInfo>,
    quorate: bool,
) -> Vec<u8> {
    let mut s = String::with_capacity(256);
    // Writing into a String cannot fail.
    let _ = write_members(&mut s, nodename, clinfo_version, cluster, quorate);
    s.into_bytes()
}

fn write_members(
    s: &mut String,
    nodename: &str,
    clinfo_version: u64,
    cluster: Option<&ClusterInfo>,
    quorate: bool,
) -> std::fmt::Result {
    s.push_str("{\n");
    writeln!(s, "\"nodename\": \"{nodename}\",")?;
    match cluster.filter(|c| !c.nodes.is_empty()) {
        None => writeln!(s, "\"version\": {clinfo_version}")?,
        Some(c) => {
            writeln!(s, "\"version\": {clinfo_version},")?;
            // C: cman_version is uint32_t, printed with %d.
            let config_version = c.config_version as u32 as i32;
            writeln!(
                s,
                "\"cluster\": {{ \"name\": \"{}\", \"version\": {config_version}, \
                 \"nodes\": {}, \"quorate\": {} }},",
                c.cluster_name,
                c.nodes.len(),
                u8::from(quorate),
            )?;
            s.push_str("\"nodelist\": {\n");
            for (i, node) in c.nodes.iter().enumerate() {
                if i > 0 {
                    s.push_str(",\n");
                }
                write!(
                    s,
                    "  \"{}\": {{ \"id\": {}, \"online\": {}",
                    node.name,
                    node.nodeid as i32,
                    u8::from(node.online),
                )?;
                if let Some(ip) = &node.ip {
                    write!(s, ", \"ip\": \"{ip}\"")?;
                }
                s.push('}');
            }
            s.push_str("\n  }\n");
        }
    }
    s.push_str("}\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, nodeid: u32, online: bool, ip: Option<&str>) -> MemberNode {
        MemberNode {
            name: name.into(),
            nodeid,
            online,
            ip: ip.map(Into::into),
        }
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).expect("renderer output is UTF-8")
    }

    #[test]
    fn local_mode() {
        assert_eq!(
            text(render_members("vm", 0, None, false)),
            "{\n\"nodename\": \"vm\",\n\"version\": 0\n}\n"
        );
        // Quorate does not matter without nodes.
        assert_eq!(
            text(render_members("vm", 3, None, true)),
            "{\n\"nodename\": \"vm\",\n\"version\": 3\n}\n"
        );
    }

    #[test]
    fn cluster_without_nodes_is_local_layout() {
        let c = ClusterInfo {
            cluster_name: "test".into(),
            config_version: 4,
            nodes: Vec::new(),
        };
        assert_eq!(
            text(render_members("vm", 2, Some(&c), true)),
            "{\n\"nodename\": \"vm\",\n\"version\": 2\n}\n"
        );
    }

    #[test]
    fn single_node() {
        let c = ClusterInfo {
            cluster_name: "lab".into(),
            config_version: 1,
            nodes: vec![node("n1", 1, true, None)],
        };
        assert_eq!(
            text(render_members("n1", 5, Some(&c), true)),
            concat!(
                "{\n",
                "\"nodename\": \"n1\",\n",
                "\"version\": 5,\n",
                "\"cluster\": { \"name\": \"lab\", \"version\": 1, \"nodes\": 1, \"quorate\": 1 },\n",
                "\"nodelist\": {\n",
                "  \"n1\": { \"id\": 1, \"online\": 1}\n",
                "  }\n",
                "}\n",
            )
        );
    }

    #[test]
    fn three_nodes_with_ips() {
        let c = ClusterInfo {
            cluster_name: "prod".into(),
            config_version: 12,
            nodes: vec![
                node("n1", 1, true, Some("192.168.1.11")),
                node("n2", 2, false, None),
                node("n3", 3, true, Some("fd00::3")),
            ],
        };
        assert_eq!(
            text(render_members("n1", 9, Some(&c), false)),
            concat!(
                "{\n",
                "\"nodename\": \"n1\",\n",
                "\"version\": 9,\n",
                "\"cluster\": { \"name\": \"prod\", \"version\": 12, \"nodes\": 3, \"quorate\": 0 },\n",
                "\"nodelist\": {\n",
                "  \"n1\": { \"id\": 1, \"online\": 1, \"ip\": \"192.168.1.11\"},\n",
                "  \"n2\": { \"id\": 2, \"online\": 0},\n",
                "  \"n3\": { \"id\": 3, \"online\": 1, \"ip\": \"fd00::3\"}\n",
                "  }\n",
                "}\n",
            )
        );
    }

    #[test]
    fn c_integer_formats() {
        // config_version is truncated to uint32_t and printed with %d, the
        // node id (uint32_t) is printed with %d too.
        let c = ClusterInfo {
            cluster_name: "c".into(),
            config_version: (1 << 32) + 0xFFFF_FFFF,
            nodes: vec![node("n", 0x8000_0000, false, None)],
        };
        assert_eq!(
            text(render_members("n", 1, Some(&c), false)),
            concat!(
                "{\n",
                "\"nodename\": \"n\",\n",
                "\"version\": 1,\n",
                "\"cluster\": { \"name\": \"c\", \"version\": -1, \"nodes\": 1, \"quorate\": 0 },\n",
                "\"nodelist\": {\n",
                "  \"n\": { \"id\": -2147483648, \"online\": 0}\n",
                "  }\n",
                "}\n",
            )
        );
    }
}
