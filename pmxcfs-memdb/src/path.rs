//! Path helpers with the C semantics (`split_path`, `path_contain_vm_config`).

use pmxcfs_api_types::VmType;

/// Split a path into (dirname, basename) after removing trailing slashes, as
/// the C `split_path` does with `g_path_get_dirname`/`g_path_get_basename`.
/// A path without a slash has dirname `"."`, which names the root.
pub fn split_path(path: &str) -> (&str, &str) {
    let p = path.trim_end_matches('/');
    match p.rfind('/') {
        Some(pos) => {
            let dir = p[..pos].trim_end_matches('/');
            (if dir.is_empty() { "/" } else { dir }, &p[pos + 1..])
        }
        None => (".", p),
    }
}

/// True for names that are not allowed as an entry name: `""`, `"."`, `".."`.
pub(crate) fn is_bad_name(name: &str) -> bool {
    name.is_empty() || name == "." || name == ".."
}

/// `<[1-9][0-9]*>.conf` with a value that fits in u32 (`name_is_vm_config`).
pub(crate) fn name_is_vm_config(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".conf")?;
    let first = *digits.as_bytes().first()?;
    if !(b'1'..=b'9').contains(&first) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u32>().ok()
}

/// Node names follow the LDH rule: letters, digits, and inner hyphens.
pub(crate) fn valid_nodename(name: &str) -> bool {
    let len = name.len();
    len >= 1
        && name
            .bytes()
            .enumerate()
            .all(|(i, c)| c.is_ascii_alphanumeric() || (c == b'-' && i != 0 && i != len - 1))
}

/// `nodes/<node>/(qemu-server|lxc|openvz)` -> (node, type).
pub(crate) fn dir_contains_vm_config(dirname: &str) -> Option<(&str, VmType)> {
    let rest = dirname.strip_prefix("nodes/")?;
    let (node, sub) = rest.split_once('/')?;
    if !valid_nodename(node) {
        return None;
    }
    Some((node, VmType::from_dir_name(sub)?))
}

/// If `path` is a guest config (`nodes/<node>/<type dir>/<vmid>.conf`),
/// return (node, type, vmid).
pub fn path_contains_vm_config(path: &str) -> Option<(&str, VmType, u32)> {
    let (dir, base) = split_path(path);
    let vmid = name_is_vm_config(base)?;
    let (node, vmtype) = dir_contains_vm_config(dir)?;
    Some((node, vmtype, vmid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split() {
        assert_eq!(split_path("a"), (".", "a"));
        assert_eq!(split_path("a/b/c"), ("a/b", "c"));
        assert_eq!(split_path("a/b/"), ("a", "b"));
        assert_eq!(split_path("/a"), ("/", "a"));
        assert_eq!(split_path(""), (".", ""));
    }

    #[test]
    fn vm_configs() {
        assert_eq!(
            path_contains_vm_config("nodes/n1/qemu-server/100.conf"),
            Some(("n1", VmType::Qemu, 100))
        );
        assert_eq!(
            path_contains_vm_config("nodes/n-1/lxc/4294967295.conf"),
            Some(("n-1", VmType::Lxc, u32::MAX))
        );
        for bad in [
            "nodes/n1/qemu-server/0100.conf",
            "nodes/n1/qemu-server/100.conf.tmp",
            "nodes/n1/qemu-server/4294967296.conf",
            "nodes/-n/qemu-server/100.conf",
            "nodes/n_1/qemu-server/100.conf",
            "nodes/n1/qemu/100.conf",
            "nodes/n1/qemu-server/x/100.conf",
            "x/nodes/n1/qemu-server/100.conf",
            "nodes/n1/qemu-server/.conf",
            "nodes/n1/qemu-server/1a.conf",
        ] {
            assert_eq!(path_contains_vm_config(bad), None, "{bad}");
        }
    }
}
