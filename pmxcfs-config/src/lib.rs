//! corosync.conf parser for pmxcfs.
//!
//! pmxcfs keeps the cluster's `corosync.conf` in its database and needs two
//! things from it:
//!
//! * the cluster description that the C daemon reads from corosync's cmap
//!   (`totem.cluster_name`, `totem.config_version` and the `nodelist`), here
//!   parsed from the file into a [`CorosyncConf`];
//! * the `config_version` that decides whether the copy in the database may
//!   replace the host's `/etc/corosync/corosync.conf`. The C daemon finds it
//!   with a regular expression over the raw bytes rather than by parsing;
//!   [`config_version`] reproduces that search bit for bit.
//!
//! The two can disagree on purpose: [`config_version`] takes the first
//! `config_version: N` anywhere in the file (even in a comment), while
//! [`CorosyncConf`] reads the `totem.config_version` key as corosync does.
//!
//! ```
//! use pmxcfs_config::{config_version, CorosyncConf};
//!
//! let text = "totem {\n  cluster_name: demo\n  config_version: 4\n}\n\
//!             nodelist {\n  node {\n    name: pve1\n    nodeid: 1\n  }\n}\n";
//! let conf: CorosyncConf = text.parse()?;
//! assert_eq!(conf.totem.cluster_name, "demo");
//! assert_eq!(conf.nodelist[0].name, "pve1");
//! assert_eq!(conf.get("totem.config_version"), Some("4"));
//! assert_eq!(config_version(text.as_bytes()), Some(4));
//! # Ok::<(), pmxcfs_config::ParseError>(())
//! ```
//!
//! Parsing never panics: every malformed input is a [`ParseError`] that names
//! the offending line.

#![deny(unsafe_op_in_unsafe_fn)]

mod conf;
mod error;
mod raw;
#[cfg(test)]
mod testdata;
mod version;

pub use conf::{CorosyncConf, NodeConfig, TotemConfig};
pub use error::ParseError;
pub use raw::{Entry, Item, Section};
pub use version::config_version;

#[cfg(test)]
mod tests {
    //! Robustness: no input may make the parsers panic.

    use super::*;
    use crate::testdata::PVE_THREE_NODES;

    /// Feed one input to every entry point and check the answers are sane.
    fn exercise(bytes: &[u8]) {
        let _ = config_version(bytes);
        let lines = bytes.split(|&b| b == b'\n').count();
        match CorosyncConf::parse(bytes) {
            Ok(conf) => {
                let _ = conf.get("totem.cluster_name");
                let _ = conf.get("");
                let _ = conf.get(".");
                let _ = conf.raw().sections_at("nodelist.node");
                assert!(conf.nodelist.iter().all(|node| node.nodeid != 0));
            }
            Err(err) => {
                assert!(!err.to_string().is_empty());
                if let Some(line) = err.line() {
                    assert!((1..=lines).contains(&line), "{err} in {lines} lines");
                }
            }
        }
    }

    #[test]
    fn truncations_never_panic() {
        let sample = PVE_THREE_NODES.as_bytes();
        for end in 0..=sample.len() {
            exercise(&sample[..end]);
            exercise(&sample[end..]);
        }
    }

    #[test]
    fn byte_edits_never_panic() {
        let sample = PVE_THREE_NODES.as_bytes();
        let replacements = [
            b'{', b'}', b':', b'#', b'\n', b'\r', b'\t', b' ', b'0', b'x', 0, 0x80, 0xc3, 0xff,
        ];
        let mut buf = Vec::with_capacity(sample.len() + 1);
        for at in 0..sample.len() {
            buf.clear();
            buf.extend_from_slice(&sample[..at]);
            buf.extend_from_slice(&sample[at + 1..]);
            exercise(&buf);
            for &byte in &replacements {
                buf.clear();
                buf.extend_from_slice(sample);
                buf[at] = byte;
                exercise(&buf);
                buf.insert(at, byte);
                exercise(&buf);
            }
        }
    }

    #[test]
    fn line_shuffles_never_panic() {
        let lines: Vec<&str> = PVE_THREE_NODES.lines().collect();
        for skip in 0..lines.len() {
            let dropped: Vec<&str> = lines
                .iter()
                .enumerate()
                .filter_map(|(i, line)| (i != skip).then_some(*line))
                .collect();
            exercise(dropped.join("\n").as_bytes());
            let mut doubled = lines.clone();
            doubled.insert(skip, lines[skip]);
            exercise(doubled.join("\n").as_bytes());
            let mut swapped = lines.clone();
            swapped.swap(skip, (skip * 7 + 3) % lines.len());
            exercise(swapped.join("\r\n").as_bytes());
        }
    }

    #[test]
    fn random_garbling_never_panics() {
        // A fixed xorshift generator keeps the test deterministic.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let sample = PVE_THREE_NODES.as_bytes();
        let alphabet = b"{}:# \t\r\n0123456789abcxyz_.-\xc2\xa0\xff\0";
        for _ in 0..2000 {
            let mut buf = sample.to_vec();
            let edits = next() % 8 + 1;
            for _ in 0..edits {
                let len = buf.len().max(1);
                let at = (next() % len as u64) as usize;
                let pick = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 3 {
                    0 if at < buf.len() => buf[at] = pick,
                    1 if at < buf.len() => {
                        buf.remove(at);
                    }
                    _ => buf.insert(at.min(buf.len()), pick),
                }
            }
            exercise(&buf);
        }
    }

    #[test]
    fn pathological_inputs_never_panic() {
        exercise(&[]);
        exercise(b"\n");
        exercise(&[b'{'; 10_000]);
        exercise(&[b'}'; 10_000]);
        exercise(&[b':'; 10_000]);
        exercise("a {\n".repeat(100_000).as_bytes());
        exercise("}\n".repeat(1000).as_bytes());
        exercise("config_version".repeat(10_000).as_bytes());
        exercise(format!("config_version:{}", " ".repeat(100_000)).as_bytes());
        exercise(format!("config_version: {}", "9".repeat(100_000)).as_bytes());
        let long_line = format!("totem {{\n cluster_name: {}\n}}\n", "x".repeat(600));
        exercise(long_line.as_bytes());
    }
}
