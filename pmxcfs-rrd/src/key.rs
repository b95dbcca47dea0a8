//! RRD keys: which file an update goes to, and in which format it came.
//!
//! The rules of status.c `update_rrd_data`:
//!
//! | key prefix                     | kind    | format  | file                           |
//! |--------------------------------|---------|---------|--------------------------------|
//! | `pve2-node/<n>`                | node    | legacy  | `pve-node-9.0/<n>`             |
//! | `pve-node-9.0/<n>`             | node    | current | `pve-node-9.0/<n>`             |
//! | `pve-node-<other>/<n>`         | node    | newer   | `pve-node-9.0/<n>`             |
//! | `pve2.3-vm/<id>`               | vm      | legacy  | `pve-vm-9.0/<id>`              |
//! | `pve-vm-9.0/<id>`              | vm      | current | `pve-vm-9.0/<id>`              |
//! | `pve-vm-<other>/<id>`          | vm      | newer   | `pve-vm-9.0/<id>`              |
//! | `pve2-storage/<n>/<s>`         | storage | legacy  | `pve-storage-9.0/<n>/<s>`      |
//! | `pve-storage-9.0/<n>/<s>`      | storage | current | `pve-storage-9.0/<n>/<s>`      |
//! | `pve-storage-<other>/<n>/<s>`  | storage | newer   | `pve-storage-9.0/<n>/<s>`      |
//!
//! The name is everything after the first `/` of the key. For nodes and
//! guests it must be non-empty without `/`; for storages it is
//! `<node>/<storage>` with a non-empty storage without `/`. Guest ids are not
//! checked to be numbers, and the version part of `pve-*-<ver>` is not
//! checked at all (as in C).
//!
//! Stricter than C, because these names become paths: a name part may not
//! be `.` or `..` nor contain control characters, and the node part of a
//! storage name may not be empty (C accepts `pve2-storage//s` and writes
//! `pve-storage-9.0/s`, a file where node directories live).

use crate::error::{quote, RrdError};
use crate::schema::RrdKind;

/// Longest key: the IPC request and the kvstore message carry the key in a
/// 256-byte NUL-terminated field.
pub const KEY_MAX: usize = 255;

/// The format the sender used, which decides padding and cutting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// `pve2-node`, `pve2.3-vm`, `pve2-storage`: fewer columns, padded with `U`.
    Legacy,
    /// `pve-<kind>-9.0`: taken as is.
    Current,
    /// Any other `pve-<kind>-<ver>`: assumed newer, extra columns are cut.
    Newer,
}

/// A key split into its parts; `name` borrows from the key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ParsedKey<'a> {
    pub kind: RrdKind,
    pub format: KeyFormat,
    /// `<node>`, `<vmid>` or `<node>/<storage>`.
    pub name: &'a str,
}

impl ParsedKey<'_> {
    /// The file, relative to the RRD directory.
    pub fn file(&self) -> String {
        format!("{}/{}", self.kind.dir(), self.name)
    }
}

/// (legacy prefix, new-style prefix, current prefix, kind), in the order
/// status.c tests them.
const FAMILIES: [(&str, &str, &str, RrdKind); 3] = [
    ("pve2-node/", "pve-node-", "pve-node-9.0/", RrdKind::Node),
    ("pve2.3-vm/", "pve-vm-", "pve-vm-9.0/", RrdKind::Vm),
    (
        "pve2-storage/",
        "pve-storage-",
        "pve-storage-9.0/",
        RrdKind::Storage,
    ),
];

pub(crate) fn parse_key(key: &str) -> Result<ParsedKey<'_>, RrdError> {
    if key.len() > KEY_MAX {
        return Err(RrdError::KeyTooLong { len: key.len() });
    }
    let (format, kind) = FAMILIES
        .iter()
        .find_map(|&(legacy, new, current, kind)| {
            if key.starts_with(legacy) {
                Some((KeyFormat::Legacy, kind))
            } else if key.starts_with(current) {
                Some((KeyFormat::Current, kind))
            } else if key.starts_with(new) {
                Some((KeyFormat::Newer, kind))
            } else {
                None
            }
        })
        .ok_or_else(|| RrdError::UnknownKey {
            key: quote(key.as_bytes()),
        })?;

    let bad = |reason| RrdError::BadKey {
        key: quote(key.as_bytes()),
        reason,
    };
    // rrd_skip_data(key, 1, '/'): after the first '/', or "" without one
    let name = key.split_once('/').map_or("", |(_, rest)| rest);

    match kind {
        RrdKind::Node | RrdKind::Vm => {
            check_component(name).map_err(bad)?;
        }
        RrdKind::Storage => {
            if name.is_empty() {
                return Err(bad("missing node and storage name"));
            }
            let Some((node, storage)) = name.split_once('/') else {
                return Err(bad("missing storage name"));
            };
            if node.is_empty() {
                return Err(bad("empty node name"));
            }
            check_component(node).map_err(bad)?;
            check_component(storage).map_err(bad)?;
        }
    }
    Ok(ParsedKey { kind, format, name })
}

/// One path component of a name.
fn check_component(part: &str) -> Result<(), &'static str> {
    if part.is_empty() {
        return Err("empty name");
    }
    if part.contains('/') {
        return Err("name contains '/'");
    }
    if part == "." || part == ".." {
        return Err("name is '.' or '..'");
    }
    if part.chars().any(char::is_control) {
        return Err("name contains a control character");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(key: &str) -> (RrdKind, KeyFormat, String) {
        let k = parse_key(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        (k.kind, k.format, k.file())
    }

    fn err(key: &str) -> RrdError {
        match parse_key(key) {
            Ok(k) => panic!("{key} accepted: {k:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn node_keys() {
        use KeyFormat::*;
        assert_eq!(
            ok("pve2-node/n1"),
            (RrdKind::Node, Legacy, "pve-node-9.0/n1".into())
        );
        assert_eq!(
            ok("pve-node-9.0/n1"),
            (RrdKind::Node, Current, "pve-node-9.0/n1".into())
        );
        assert_eq!(
            ok("pve-node-9.2/n1"),
            (RrdKind::Node, Newer, "pve-node-9.0/n1".into())
        );
        // anything after "pve-node-" is a version, even nothing or garbage
        assert_eq!(ok("pve-node-/n1").1, Newer);
        assert_eq!(ok("pve-node-xyz/n1").1, Newer);
        // "pve-node-9.0" needs its slash to be the current format
        assert_eq!(ok("pve-node-9.0.1/n1").1, Newer);
    }

    #[test]
    fn vm_keys() {
        use KeyFormat::*;
        assert_eq!(
            ok("pve2.3-vm/100"),
            (RrdKind::Vm, Legacy, "pve-vm-9.0/100".into())
        );
        assert_eq!(
            ok("pve-vm-9.0/100"),
            (RrdKind::Vm, Current, "pve-vm-9.0/100".into())
        );
        assert_eq!(
            ok("pve-vm-10.0/100"),
            (RrdKind::Vm, Newer, "pve-vm-9.0/100".into())
        );
        // C does not check that the id is a number
        assert_eq!(ok("pve2.3-vm/abc").2, "pve-vm-9.0/abc");
    }

    #[test]
    fn storage_keys() {
        use KeyFormat::*;
        assert_eq!(
            ok("pve2-storage/n1/local"),
            (RrdKind::Storage, Legacy, "pve-storage-9.0/n1/local".into())
        );
        assert_eq!(
            ok("pve-storage-9.0/n1/local-lvm"),
            (
                RrdKind::Storage,
                Current,
                "pve-storage-9.0/n1/local-lvm".into()
            )
        );
        assert_eq!(ok("pve-storage-9.1/n1/local").1, Newer);
    }

    #[test]
    fn unknown_keys() {
        for key in [
            "",
            "pve2-vm/100",
            "pve2.3-node/n1",
            "pve-nodes/n1",
            "PVE2-NODE/n1",
            "pve2-node",
            "pve2.3-vm",
            "pve-storage",
            " pve2-node/n1",
            "kv/foo",
        ] {
            assert!(matches!(err(key), RrdError::UnknownKey { .. }), "{key}");
        }
    }

    #[test]
    fn bad_names() {
        for key in [
            "pve2-node/",
            "pve-node-9.0",
            "pve-node-9.0/",
            "pve2-node/a/b",
            "pve-vm-9.0/1/2",
            "pve2.3-vm/",
            "pve-vm-",
            "pve2-storage/",
            "pve2-storage/n1",
            "pve2-storage/n1/",
            "pve2-storage/n1/a/b",
            "pve-storage-9.0",
            // accepted by C, refused here
            "pve2-storage//local",
            "pve2-node/..",
            "pve2-node/.",
            "pve2-storage/../local",
            "pve2-storage/n1/..",
            "pve2-node/a\nb",
            "pve2.3-vm/1\u{0}",
        ] {
            assert!(matches!(err(key), RrdError::BadKey { .. }), "{key:?}");
        }
    }

    #[test]
    fn long_keys() {
        let name = "n".repeat(KEY_MAX - "pve2-node/".len());
        assert!(parse_key(&format!("pve2-node/{name}")).is_ok());
        assert!(matches!(
            err(&format!("pve2-node/{name}x")),
            RrdError::KeyTooLong { len: 256 }
        ));
        assert!(matches!(
            err(&"x".repeat(100_000)),
            RrdError::KeyTooLong { .. }
        ));
    }

    #[test]
    fn unusual_but_accepted_names() {
        // dots inside names, unicode, spaces: C accepts them, they are valid
        // file names, and rrdcached paths escape spaces
        assert_eq!(ok("pve2-node/a.b").2, "pve-node-9.0/a.b");
        assert_eq!(ok("pve2-node/...").2, "pve-node-9.0/...");
        assert_eq!(ok("pve2-node/nöde").2, "pve-node-9.0/nöde");
        assert_eq!(
            ok("pve2-storage/n 1/my store").2,
            "pve-storage-9.0/n 1/my store"
        );
    }
}
