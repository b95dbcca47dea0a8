//! Guest config properties (ops 11 and 13; status.c
//! `cfs_create_guest_conf_properties_msg`, `_get_property_values`,
//! `_print_found_properties`).
//!
//! Only the main section of a config is searched: the search stops at the
//! first line starting with `[` (snapshots, pending changes). A property line
//! is `<prop>:<value>`; the value is trimmed of C-locale whitespace and ends
//! at an embedded NUL. When a property occurs more than once, the C code
//! keeps the later value but stops searching once it has seen as many
//! repeated lines as there are properties; this is reproduced exactly.

use std::sync::Arc;

use pmxcfs_api_types::Errno;
use pmxcfs_memdb::{MemDb, VmEntry};

use crate::request::GuestSelector;

/// `isspace` in the C locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `_get_property_value_from_line`: the value if `line` sets `prop`.
fn value_from_line<'c>(line: &'c [u8], prop: &[u8]) -> Option<&'c [u8]> {
    let plen = prop.len();
    if line.len() <= plen + 1 {
        return None;
    }
    if line[plen] != b':' || &line[..plen] != prop {
        return None;
    }
    let last = line.len() - 1;
    let mut start = plen + 1;
    while start < last && line[start] != 0 && is_c_space(line[start]) {
        start += 1;
    }
    if line[start] == 0 {
        return None;
    }
    let mut end = last;
    while end > start && is_c_space(line[end]) {
        end -= 1;
    }
    let value = &line[start..=end];
    // The C value is a C string: it ends at an embedded NUL.
    Some(match value.iter().position(|&b| b == 0) {
        Some(n) => &value[..n],
        None => value,
    })
}

/// `_get_property_values`: the value of each property in `conf`, which
/// must end with a newline (bytes after the last newline are ignored).
pub fn find_properties<'c>(conf: &'c [u8], props: &[&[u8]]) -> Vec<Option<&'c [u8]>> {
    let mut found: Vec<Option<&[u8]>> = vec![None; props.len()];
    // The first bytes of the properties bound the lines worth looking at;
    // C compares them as (signed) chars.
    let first = |p: &&[u8]| p.first().copied().unwrap_or(0) as i8;
    let min = props.iter().map(first).fold(b'z' as i8, i8::min);
    let max = props.iter().map(first).fold(b'a' as i8, i8::max);
    let num_props = props.len() as u8;
    let mut count: u8 = 0;

    let mut rest = conf;
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..nl];
        rest = &rest[nl + 1..];
        // An empty line (or one starting with NUL, empty as a C string).
        let c0 = line.first().copied().unwrap_or(0);
        if c0 == 0 {
            continue;
        }
        if c0 == b'[' {
            break;
        }
        if (c0 as i8) < min || (c0 as i8) > max {
            continue;
        }
        for (slot, prop) in found.iter_mut().zip(props) {
            if let Some(v) = value_from_line(line, prop) {
                // Counts lines that set an already found property.
                count = count.wrapping_add(u8::from(slot.is_some()));
                *slot = Some(v);
            }
        }
        if count == num_props {
            break;
        }
    }
    found
}

/// Append `"\"<k>\": \"<v>\""` with `\` and `"` of the value escaped
/// (`_g_str_append_kv_jsonescaped`; the key is written as is).
fn append_kv(out: &mut Vec<u8>, k: &[u8], v: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(k);
    out.extend_from_slice(b"\": \"");
    for &b in v {
        if b == b'\\' || b == b'"' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// `_print_found_properties`: one `"<vmid>":{...}` object if any property
/// was found; `first` tells whether a separator is needed and is updated.
fn append_guest(
    out: &mut Vec<u8>,
    vmid: u32,
    props: &[&[u8]],
    values: &[Option<&[u8]>],
    first: &mut bool,
) {
    let mut any = false;
    for (prop, value) in props.iter().zip(values) {
        let Some(value) = value else { continue };
        if any {
            out.push(b',');
        } else {
            if !*first {
                out.extend_from_slice(b",\n");
            }
            *first = false;
            out.extend_from_slice(format!("\"{vmid}\":{{").as_bytes());
            any = true;
        }
        append_kv(out, prop, value);
    }
    if any {
        out.push(b'}');
    }
}

/// Path of a guest's config (`vminfo_to_path`).
fn config_path(vm: &VmEntry) -> String {
    format!(
        "nodes/{}/{}/{}.conf",
        vm.node,
        vm.vmtype.dir_name(),
        vm.vmid
    )
}

/// A config as C sees it: None when missing or empty (`memdb_read` gives no
/// buffer), with a newline appended when the last line has none.
fn read_config(memdb: &MemDb, vm: &VmEntry) -> Option<Vec<u8>> {
    let mut conf = memdb.read(&config_path(vm))?;
    if conf.is_empty() {
        return None;
    }
    if conf.last() != Some(&b'\n') {
        conf.push(b'\n');
    }
    Some(conf)
}

/// True if the VMID is registered (`vmlist_vm_exists`).
pub fn vm_exists(memdb: &MemDb, vmid: u32) -> bool {
    memdb.vmlist().1.iter().any(|vm| vm.vmid == vmid)
}

/// The reply of ops 11 and 13.
pub fn guest_config_properties(
    memdb: &Arc<MemDb>,
    guests: GuestSelector,
    props: &[&[u8]],
) -> Result<Vec<u8>, Errno> {
    let mut out = b"{\n".to_vec();
    let mut first = true;
    let (_, vms) = memdb.vmlist();
    match guests {
        GuestSelector::Vmid(vmid) => {
            let vm = vms.iter().find(|vm| vm.vmid == vmid).ok_or(Errno::ENOENT)?;
            let conf = read_config(memdb, vm).ok_or(Errno::EIO)?;
            let values = find_properties(&conf, props);
            append_guest(&mut out, vmid, props, &values, &mut first);
        }
        GuestSelector::All => {
            for vm in &vms {
                let Some(conf) = read_config(memdb, vm) else {
                    continue;
                };
                let values = find_properties(&conf, props);
                append_guest(&mut out, vm.vmid, props, &values, &mut first);
            }
        }
    }
    out.extend_from_slice(b"\n}\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(conf: &str, props: &[&str]) -> Vec<Option<String>> {
        let props: Vec<&[u8]> = props.iter().map(|p| p.as_bytes()).collect();
        find_properties(conf.as_bytes(), &props)
            .into_iter()
            .map(|v| v.map(|v| String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn values_are_trimmed() {
        let conf = "name: vm1  \nmemory:\t2048\r\ncores:4\nlock: \nempty:\n";
        assert_eq!(
            find(conf, &["name", "memory", "cores", "lock", "empty"]),
            vec![s("vm1"), s("2048"), s("4"), s(" "), None]
        );
    }

    #[test]
    fn only_the_main_section() {
        let conf = "a: 1\n[snap]\nb: 2\n";
        assert_eq!(find(conf, &["a", "b"]), vec![s("1"), None]);
        assert_eq!(find("[x]\na: 1\n", &["a"]), vec![None]);
    }

    #[test]
    fn prefix_and_unterminated_lines() {
        assert_eq!(find("ab: 1\na: 2\n", &["a"]), vec![s("2")]);
        // Without the final newline the last line is not looked at.
        assert_eq!(find("a: 1", &["a"]), vec![None]);
        assert_eq!(find("a:x\n", &["a"]), vec![s("x")]);
        assert_eq!(find("a:\n", &["a"]), vec![None]);
        assert_eq!(find("a: v\0w\n", &["a"]), vec![s("v")]);
        assert_eq!(find("a: \0w\n", &["a"]), vec![None]);
    }

    #[test]
    fn repeated_lines() {
        // The second occurrence wins and ends the search (C's counter).
        assert_eq!(find("a: 1\na: 2\na: 3\n", &["a"]), vec![s("2")]);
        assert_eq!(
            find("a: 1\nb: 1\na: 2\nb: 2\n", &["a", "b"]),
            vec![s("2"), s("2")]
        );
        assert_eq!(find("a: 1\na: 2\n", &["a", "a"]), vec![s("2"), s("2")]);
        assert_eq!(find("a: 1\n\0a: 2\na: 3\n", &["a"]), vec![s("3")]);
    }

    #[test]
    fn lines_outside_the_first_char_range_are_skipped() {
        // min..max = 'b'..'c': a line starting with 'a' is never looked at.
        assert_eq!(find("a: 1\nb: 2\n", &["c", "b"]), vec![None, s("2")]);
        // An empty property (op 11 does not validate) matches ":..." lines.
        assert_eq!(find(":x\n", &[""]), vec![s("x")]);
    }

    #[test]
    fn json_layout() {
        let mut out = Vec::new();
        let mut first = true;
        let props: Vec<&[u8]> = vec![b"a", b"b", b"c"];
        append_guest(
            &mut out,
            100,
            &props,
            &[Some(b"x\"y\\"), None, Some(b"z")],
            &mut first,
        );
        append_guest(&mut out, 101, &props, &[None, None, None], &mut first);
        append_guest(&mut out, 102, &props, &[None, Some(b"q"), None], &mut first);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"100\":{\"a\": \"x\\\"y\\\\\",\"c\": \"z\"},\n\"102\":{\"b\": \"q\"}"
        );
        assert!(!first);
    }
}
