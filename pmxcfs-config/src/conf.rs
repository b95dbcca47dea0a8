//! The typed view of a corosync.conf: what pmxcfs reads from corosync's cmap.
//!
//! The C daemon reads `totem.cluster_name`, `totem.config_version` and, per
//! `nodelist.node.N`, the keys `nodeid`, `name`, `ring0_addr` and
//! `quorum_votes` (confdb.c). It registers a node only when it has a non-zero
//! `nodeid` and a name, where `name` is preferred and `ring0_addr` is the
//! fallback. [`CorosyncConf::parse`] applies the same rules to the file, and
//! rejects what corosync itself would refuse to load for these keys:
//! non-numeric or out of range numbers and node ids used twice.

use std::collections::HashMap;
use std::str::FromStr;

use crate::{Entry, ParseError, Section};

/// The `totem` keys pmxcfs uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotemConfig {
    /// `totem.cluster_name`.
    pub cluster_name: String,
    /// `totem.config_version`, 0 when missing.
    pub config_version: u64,
}

/// One node of the `nodelist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// `name`, or `ring0_addr` when the node has no `name`.
    pub name: String,
    /// `nodeid`, never 0.
    pub nodeid: u32,
    /// `ring0_addr`, if given.
    pub ring0_addr: Option<String>,
    /// `quorum_votes`, 1 when missing (corosync's default; the C daemon
    /// stores 0 instead but never uses the value).
    pub quorum_votes: u32,
}

/// A parsed corosync.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorosyncConf {
    /// The `totem` section.
    pub totem: TotemConfig,
    /// The nodes pmxcfs knows about, in file order. Nodes without a
    /// `nodeid` (or with `nodeid: 0`) or without both `name` and
    /// `ring0_addr` are left out, as the C daemon does.
    pub nodelist: Vec<NodeConfig>,
    raw: Section,
}

impl CorosyncConf {
    /// Parse and check a corosync.conf.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        Self::from_tree(Section::parse(bytes)?)
    }

    /// Build the typed view of an already parsed key tree.
    pub fn from_tree(raw: Section) -> Result<Self, ParseError> {
        let totem = TotemConfig {
            cluster_name: raw
                .get("totem.cluster_name")
                .ok_or(ParseError::MissingKey {
                    key: "totem.cluster_name",
                })?
                .to_owned(),
            config_version: last_number(raw.entries_at("totem.config_version"), "u64")?
                .unwrap_or(0),
        };
        let nodelist = read_nodelist(&raw)?;
        Ok(Self {
            totem,
            nodelist,
            raw,
        })
    }

    /// The value at a dotted path, such as `"totem.cluster_name"`; see
    /// [`Section::get`].
    pub fn get(&self, path: &str) -> Option<&str> {
        self.raw.get(path)
    }

    /// The whole key tree.
    pub fn raw(&self) -> &Section {
        &self.raw
    }

    /// The node with this node id.
    pub fn node_by_id(&self, nodeid: u32) -> Option<&NodeConfig> {
        self.nodelist.iter().find(|node| node.nodeid == nodeid)
    }

    /// The node with this name (the last one, should names repeat).
    pub fn node_by_name(&self, name: &str) -> Option<&NodeConfig> {
        self.nodelist.iter().rev().find(|node| node.name == name)
    }
}

impl FromStr for CorosyncConf {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text.as_bytes())
    }
}

fn read_nodelist(raw: &Section) -> Result<Vec<NodeConfig>, ParseError> {
    let mut nodes = Vec::new();
    // nodeid -> line of its first use
    let mut seen: HashMap<u32, usize> = HashMap::new();

    for section in raw.sections_at("nodelist.node") {
        let nodeid_entries = section.entries_at("nodeid");
        let nodeid: Option<u32> = last_number(nodeid_entries.iter().copied(), "u32")?;
        let quorum_votes: Option<u32> = last_number(section.entries_at("quorum_votes"), "u32")?;

        if let (Some(nodeid), Some(entry)) = (nodeid, nodeid_entries.last()) {
            if let Some(&first_line) = seen.get(&nodeid) {
                return Err(ParseError::DuplicateNodeId {
                    nodeid,
                    line: entry.line(),
                    first_line,
                });
            }
            seen.insert(nodeid, entry.line());
        }

        let ring0_addr = section.get("ring0_addr");
        let name = section.get("name").or(ring0_addr);
        if let (Some(nodeid @ 1..), Some(name)) = (nodeid, name) {
            nodes.push(NodeConfig {
                name: name.to_owned(),
                nodeid,
                ring0_addr: ring0_addr.map(str::to_owned),
                quorum_votes: quorum_votes.unwrap_or(1),
            });
        }
    }
    Ok(nodes)
}

/// Check that every entry is a number, as corosync does for each line it
/// reads, and return the last one (later lines overwrite earlier ones).
fn last_number<'a, T: FromStr>(
    entries: impl IntoIterator<Item = &'a Entry>,
    expected: &'static str,
) -> Result<Option<T>, ParseError> {
    let mut last = None;
    for entry in entries {
        let value = entry
            .value()
            .parse()
            .map_err(|_| ParseError::InvalidNumber {
                line: entry.line(),
                key: entry.key().to_owned(),
                value: entry.value().to_owned(),
                expected,
            })?;
        last = Some(value);
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::PVE_THREE_NODES;

    fn node(name: &str, nodeid: u32, addr: Option<&str>, votes: u32) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            nodeid,
            ring0_addr: addr.map(Into::into),
            quorum_votes: votes,
        }
    }

    fn parse(text: &str) -> Result<CorosyncConf, ParseError> {
        text.parse()
    }

    #[test]
    fn realistic_proxmox_config() {
        let conf = parse(PVE_THREE_NODES).unwrap();
        assert_eq!(
            conf.totem,
            TotemConfig {
                cluster_name: "testcluster".into(),
                config_version: 3,
            }
        );
        assert_eq!(
            conf.nodelist,
            [
                node("pve1", 1, Some("192.168.1.11"), 1),
                node("pve2", 2, Some("192.168.1.12"), 1),
                node("pve3", 3, Some("192.168.1.13"), 1),
            ]
        );
        assert_eq!(conf.get("totem.cluster_name"), Some("testcluster"));
        assert_eq!(conf.get("totem.interface.linknumber"), Some("0"));
        assert_eq!(conf.get("quorum.provider"), Some("corosync_votequorum"));
        assert_eq!(conf.get("logging.to_syslog"), Some("yes"));
        assert_eq!(conf.get("totem.nonexistent"), None);
        assert_eq!(conf.node_by_id(2).map(|n| n.name.as_str()), Some("pve2"));
        assert_eq!(conf.node_by_name("pve3").map(|n| n.nodeid), Some(3));
        assert_eq!(conf.node_by_id(4), None);
        assert_eq!(conf.raw().sections_at("nodelist.node").len(), 3);
        assert_eq!(crate::config_version(PVE_THREE_NODES.as_bytes()), Some(3));
    }

    #[test]
    fn missing_config_version_is_zero() {
        let conf = parse("totem {\n  cluster_name: c\n}\n").unwrap();
        assert_eq!(conf.totem.config_version, 0);
        assert!(conf.nodelist.is_empty());
    }

    #[test]
    fn big_config_version() {
        let conf =
            parse("totem {\n cluster_name: c\n config_version: 18446744073709551615\n}\n").unwrap();
        assert_eq!(conf.totem.config_version, u64::MAX);
    }

    #[test]
    fn missing_cluster_name() {
        assert_eq!(
            parse("totem {\n  config_version: 1\n}\n"),
            Err(ParseError::MissingKey {
                key: "totem.cluster_name"
            })
        );
        assert_eq!(
            parse(""),
            Err(ParseError::MissingKey {
                key: "totem.cluster_name"
            })
        );
    }

    #[test]
    fn comments_are_ignored() {
        let conf = parse(
            "# cluster_name: wrong\ntotem {\n  # config_version: 99\n  cluster_name: c\n\
             \t# nodelist {\n  config_version: 2\n}\n",
        )
        .unwrap();
        assert_eq!(conf.totem.cluster_name, "c");
        assert_eq!(conf.totem.config_version, 2);
    }

    #[test]
    fn name_falls_back_to_ring0_addr() {
        let conf = parse(
            "totem {\n cluster_name: c\n}\nnodelist {\n\
             node {\n  ring0_addr: 10.0.0.1\n  nodeid: 1\n }\n\
             node {\n  ring0_addr: 10.0.0.2\n  name: n2\n  nodeid: 2\n  quorum_votes: 3\n }\n\
             node {\n  nodeid: 3\n  ring0_addr: fe80::3\n }\n}\n",
        )
        .unwrap();
        assert_eq!(
            conf.nodelist,
            [
                node("10.0.0.1", 1, Some("10.0.0.1"), 1),
                node("n2", 2, Some("10.0.0.2"), 3),
                node("fe80::3", 3, Some("fe80::3"), 1),
            ]
        );
    }

    #[test]
    fn nodes_the_c_daemon_skips() {
        let conf = parse(
            "totem {\n cluster_name: c\n}\nnodelist {\n\
             node {\n  name: no-id\n }\n\
             node {\n  name: zero\n  nodeid: 0\n }\n\
             node {\n  nodeid: 5\n  quorum_votes: 1\n }\n\
             node {\n  name: ok\n  nodeid: 6\n }\n}\n",
        )
        .unwrap();
        assert_eq!(conf.nodelist, [node("ok", 6, None, 1)]);
    }

    #[test]
    fn repeated_keys_and_sections() {
        let conf = parse(
            "totem {\n cluster_name: a\n config_version: 1\n}\n\
             nodelist {\n node {\n  name: x\n  name: y\n  nodeid: 1\n }\n}\n\
             nodelist {\n node {\n  name: z\n  nodeid: 2\n }\n}\n\
             totem {\n cluster_name: b\n}\n",
        )
        .unwrap();
        assert_eq!(conf.totem.cluster_name, "b");
        assert_eq!(conf.totem.config_version, 1);
        let names: Vec<_> = conf.nodelist.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["y", "z"]);
    }

    #[test]
    fn bad_numbers() {
        let base = "totem {\n cluster_name: c\n";
        let err = parse(&format!("{base} config_version: three\n}}\n")).unwrap_err();
        assert_eq!(
            err,
            ParseError::InvalidNumber {
                line: 3,
                key: "config_version".into(),
                value: "three".into(),
                expected: "u64",
            }
        );
        assert_eq!(err.line(), Some(3));
        assert!(parse(&format!("{base} config_version: -1\n}}\n")).is_err());
        assert!(parse(&format!("{base} config_version:\n}}\n")).is_err());
        // Every occurrence is checked, not only the last one.
        assert!(parse(&format!(
            "{base} config_version: x\n config_version: 2\n}}\n"
        ))
        .is_err());

        let nodes = |body: &str| format!("{base}}}\nnodelist {{\n node {{\n{body} }}\n}}\n");
        assert_eq!(
            parse(&nodes("  name: a\n  nodeid: one\n")),
            Err(ParseError::InvalidNumber {
                line: 7,
                key: "nodeid".into(),
                value: "one".into(),
                expected: "u32",
            })
        );
        assert!(matches!(
            parse(&nodes("  name: a\n  nodeid: 4294967296\n")),
            Err(ParseError::InvalidNumber { line: 7, .. })
        ));
        assert!(matches!(
            parse(&nodes("  name: a\n  nodeid: -1\n")),
            Err(ParseError::InvalidNumber { line: 7, .. })
        ));
        assert!(matches!(
            parse(&nodes("  name: a\n  nodeid: 1\n  quorum_votes: many\n")),
            Err(ParseError::InvalidNumber { line: 8, .. })
        ));
        let conf = parse(&nodes("  name: a\n  nodeid: 4294967295\n")).unwrap();
        assert_eq!(conf.nodelist[0].nodeid, u32::MAX);
    }

    #[test]
    fn duplicate_nodeid() {
        let text = PVE_THREE_NODES.replacen("nodeid: 3", "nodeid: 1", 1);
        let err = parse(&text).unwrap_err();
        assert_eq!(
            err,
            ParseError::DuplicateNodeId {
                nodeid: 1,
                line: 21,
                first_line: 9,
            }
        );
        assert_eq!(
            err.to_string(),
            "line 21: nodeid 1 appears twice (first on line 9)"
        );
    }

    #[test]
    fn syntax_errors_carry_line_numbers() {
        let cases: &[(&str, ParseError)] = &[
            (
                "totem {\n cluster_name: c\n",
                ParseError::UnclosedSection {
                    section: "totem".into(),
                    line: 1,
                },
            ),
            ("}\n", ParseError::UnexpectedCloseBrace { line: 1 }),
            (
                "totem {\n cluster_name c\n}\n",
                ParseError::MissingColon { line: 2 },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                CorosyncConf::parse(text.as_bytes()).as_ref(),
                Err(expected),
                "{text:?}"
            );
        }
        assert_eq!(
            CorosyncConf::parse(b"totem {\n cluster_name: \xff\n}\n"),
            Err(ParseError::InvalidUtf8 { line: 2 })
        );
    }
}
