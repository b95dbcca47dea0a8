//! The `.vmlist` plugin file (status.c `cfs_create_vmlist_msg`).
//!
//! Empty list:
//!
//! ```text
//! {\n"version": V\n\n}\n
//! ```
//!
//! Otherwise (entries joined by `,\n`, the last one followed by `}\n`):
//!
//! ```text
//! {\n
//! "version": V,\n
//! "ids": {\n
//! "100": { "node": "vm", "type": "qemu", "version": 1 },\n
//! "200": { "node": "vm", "type": "lxc", "version": 2 }}\n
//! \n
//! }\n
//! ```

use std::fmt::Write;

pub use pmxcfs_api_types::VmType;
pub use pmxcfs_memdb::VmEntry;

/// Renders `.vmlist` exactly as status.c `cfs_create_vmlist_msg`.
///
/// Entries are rendered in the order given (C uses GLib hash order, which is
/// unspecified; callers sort by vmid). Node names are written verbatim,
/// without JSON escaping, as C does.
pub fn render_vmlist(version: u64, entries: &[VmEntry]) -> Vec<u8> {
    let mut s = String::with_capacity(32 + entries.len() * 64);
    // Writing into a String cannot fail.
    let _ = write_vmlist(&mut s, version, entries);
    s.into_bytes()
}

fn write_vmlist(s: &mut String, version: u64, entries: &[VmEntry]) -> std::fmt::Result {
    s.push_str("{\n");
    if entries.is_empty() {
        writeln!(s, "\"version\": {version}")?;
    } else {
        writeln!(s, "\"version\": {version},")?;
        s.push_str("\"ids\": {\n");
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                s.push_str(",\n");
            }
            write!(
                s,
                "\"{}\": {{ \"node\": \"{}\", \"type\": \"{}\", \"version\": {} }}",
                e.vmid,
                e.node,
                e.vmtype.as_str(),
                e.version
            )?;
        }
        s.push_str("}\n");
    }
    s.push_str("\n}\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(vmid: u32, node: &str, vmtype: VmType, version: u64) -> VmEntry {
        VmEntry {
            vmid,
            node: node.into(),
            vmtype,
            version,
        }
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).expect("renderer output is UTF-8")
    }

    #[test]
    fn vmtype_names() {
        for t in [VmType::Qemu, VmType::Lxc, VmType::Openvz] {
            assert_eq!(VmType::from_dir_name(t.dir_name()), Some(t));
        }
        assert_eq!(VmType::Qemu.as_str(), "qemu");
        assert_eq!(VmType::Lxc.as_str(), "lxc");
        assert_eq!(VmType::Openvz.as_str(), "openvz");
        assert_eq!(VmType::from_dir_name("qemu-server"), Some(VmType::Qemu));
        assert_eq!(VmType::from_dir_name("qemu"), None);
        assert_eq!(VmType::from_dir_name(""), None);
    }

    #[test]
    fn empty() {
        assert_eq!(text(render_vmlist(0, &[])), "{\n\"version\": 0\n\n}\n");
        assert_eq!(text(render_vmlist(17, &[])), "{\n\"version\": 17\n\n}\n");
    }

    #[test]
    fn one_entry() {
        let out = render_vmlist(1, &[entry(100, "vm", VmType::Qemu, 1)]);
        assert_eq!(
            text(out),
            "{\n\"version\": 1,\n\"ids\": {\n\"100\": { \"node\": \"vm\", \"type\": \"qemu\", \"version\": 1 }}\n\n}\n"
        );
    }

    #[test]
    fn three_entries() {
        let out = render_vmlist(
            9,
            &[
                entry(100, "n1", VmType::Qemu, 3),
                entry(200, "n2", VmType::Lxc, 1),
                entry(300, "n1", VmType::Openvz, 2),
            ],
        );
        assert_eq!(
            text(out),
            concat!(
                "{\n",
                "\"version\": 9,\n",
                "\"ids\": {\n",
                "\"100\": { \"node\": \"n1\", \"type\": \"qemu\", \"version\": 3 },\n",
                "\"200\": { \"node\": \"n2\", \"type\": \"lxc\", \"version\": 1 },\n",
                "\"300\": { \"node\": \"n1\", \"type\": \"openvz\", \"version\": 2 }}\n",
                "\n",
                "}\n",
            )
        );
    }

    /// Parses one `"<id>": { "node": "<n>", "type": "<t>", "version": <v> }`
    /// line of the fixture (without the trailing `,` or `}`).
    fn parse_fixture_entry(line: &str) -> Option<VmEntry> {
        let rest = line.strip_prefix('"')?;
        let (vmid, rest) = rest.split_once("\": { \"node\": \"")?;
        let (node, rest) = rest.split_once("\", \"type\": \"")?;
        let (vmtype, rest) = rest.split_once("\", \"version\": ")?;
        let version = rest.strip_suffix(" }")?;
        let vmtype = match vmtype {
            "qemu" => VmType::Qemu,
            "lxc" => VmType::Lxc,
            "openvz" => VmType::Openvz,
            _ => return None,
        };
        Some(VmEntry {
            vmid: vmid.parse().ok()?,
            node: node.to_owned(),
            vmtype,
            version: version.parse().ok()?,
        })
    }

    /// `.vmlist` as served by the C daemon 9.1.6: rendering the same entries
    /// in the same (hash) order must reproduce the file byte for byte.
    #[test]
    fn c_fixture_round_trip() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../integration-tests/fixtures/c-9.1.6-local/vmlist.json");
        let fixture = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("C fixture {} is missing or unreadable: {e}", path.display())
        });

        let mut lines = fixture.lines();
        assert_eq!(lines.next(), Some("{"), "fixture: first line");
        let version: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("\"version\": "))
            .and_then(|l| l.strip_suffix(','))
            .and_then(|v| v.parse().ok())
            .expect("fixture: second line is `\"version\": N,`");
        assert_eq!(lines.next(), Some("\"ids\": {"), "fixture: third line");

        let mut entries = Vec::new();
        for line in lines.by_ref() {
            if let Some(body) = line.strip_suffix(',') {
                entries.push(parse_fixture_entry(body).expect("fixture: entry line"));
            } else {
                let body = line
                    .strip_suffix('}')
                    .expect("fixture: last entry line ends with `}`");
                entries.push(parse_fixture_entry(body).expect("fixture: last entry line"));
                break;
            }
        }
        assert_eq!(lines.next(), Some(""), "fixture: blank line before `}}`");
        assert_eq!(lines.next(), Some("}"), "fixture: closing brace");
        assert_eq!(lines.next(), None, "fixture: nothing after `}}`");

        assert_eq!(version, 56);
        assert_eq!(entries.len(), 54);
        assert!(entries.iter().any(|e| e.vmtype == VmType::Lxc));
        assert!(entries.iter().any(|e| e.node == "other"));

        let rendered = render_vmlist(version, &entries);
        assert_eq!(text(rendered), fixture);
    }
}
