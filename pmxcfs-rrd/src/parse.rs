//! `parse_update`: an RRD key and its status data to one file update.

use std::path::{Path, PathBuf};

use crate::error::{quote, RrdError};
use crate::key::{parse_key, KeyFormat};
use crate::schema::RrdKind;
use crate::value::{normalize, validate};

/// Status data of an RRD key must be shorter than this, NUL included
/// (status.c `len < 4096`).
pub const DATA_MAX: usize = 4096;

/// One update of one RRD file, ready to be written. Only [`parse_update`]
/// makes one, so the file is always a safe relative path and the value a
/// valid update string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RrdUpdate {
    kind: RrdKind,
    format: KeyFormat,
    file: String,
    value: String,
}

impl RrdUpdate {
    pub fn kind(&self) -> RrdKind {
        self.kind
    }

    /// The format of the key it came from.
    pub fn format(&self) -> KeyFormat {
        self.format
    }

    /// The file, relative to the RRD directory: `pve-node-9.0/<node>`,
    /// `pve-vm-9.0/<vmid>` or `pve-storage-9.0/<node>/<storage>`.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The `rrd_update` argument: timestamp and exactly
    /// `kind().columns()` data columns, separated by `:`.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The file under `rrd_dir`.
    pub fn path_in(&self, rrd_dir: &Path) -> PathBuf {
        rrd_dir.join(&self.file)
    }
}

/// Turns an RRD key (the part after `rrd/`) and its status data into a file
/// update, by the rules of status.c `update_rrd_data` (see the `key` and
/// `value` modules for the rules and where we differ).
///
/// `data` is the status data as received: it ends at its first NUL (or at
/// its end when it has none). Never panics, whatever the input.
///
/// Errors: [`RrdError::EmptyData`] / [`RrdError::DataTooLong`] as C's
/// length checks, [`RrdError::KeyTooLong`], [`RrdError::UnknownKey`] and
/// [`RrdError::BadKey`] where C logs "unknown/wrong key", and
/// [`RrdError::BadValue`] for a value that librrd or rrdcached would refuse
/// or that is unsafe to send (C creates the file and then fails the update;
/// we check first and leave the disk alone).
pub fn parse_update(key: &str, data: &[u8]) -> Result<RrdUpdate, RrdError> {
    if data.is_empty() {
        return Err(RrdError::EmptyData);
    }
    if data.len() >= DATA_MAX {
        return Err(RrdError::DataTooLong { len: data.len() });
    }
    let data = data.split(|&b| b == 0).next().unwrap_or_default();
    let parsed = parse_key(key)?;
    let raw = normalize(parsed.kind, parsed.format, data);
    let value = validate(parsed.kind, &raw).map_err(|reason| RrdError::BadValue {
        key: quote(key.as_bytes()),
        reason,
    })?;
    Ok(RrdUpdate {
        kind: parsed.kind,
        format: parsed.format,
        file: parsed.file(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ValueError;

    fn cols(n: usize) -> String {
        (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(":")
    }

    fn u(count: usize) -> String {
        ":U".repeat(count)
    }

    #[test]
    fn node_legacy() {
        let data = format!("12345:0:1700000000:{}\0", cols(12));
        let up = parse_update("pve2-node/n1", data.as_bytes()).unwrap();
        assert_eq!(up.kind(), RrdKind::Node);
        assert_eq!(up.format(), KeyFormat::Legacy);
        assert_eq!(up.file(), "pve-node-9.0/n1");
        assert_eq!(up.value(), format!("1700000000:{}{}", cols(12), u(7)));
        assert_eq!(
            up.path_in(Path::new("/var/lib/rrdcached/db")),
            Path::new("/var/lib/rrdcached/db/pve-node-9.0/n1")
        );
    }

    #[test]
    fn node_current_and_newer() {
        let data = format!("12345:0:1700000000:{}", cols(19));
        let up = parse_update("pve-node-9.0/n1", data.as_bytes()).unwrap();
        assert_eq!(up.value(), format!("1700000000:{}", cols(19)));
        let data = format!("12345:0:1700000000:{}", cols(23));
        let up = parse_update("pve-node-9.3/n1", data.as_bytes()).unwrap();
        assert_eq!(up.format(), KeyFormat::Newer);
        assert_eq!(up.file(), "pve-node-9.0/n1");
        assert_eq!(up.value(), format!("1700000000:{}", cols(19)));
    }

    #[test]
    fn vm_legacy_current_newer() {
        let live = "3600:vm100:running:0";
        let up = parse_update(
            "pve2.3-vm/100",
            format!("{live}:1700000000:{}\0", cols(10)).as_bytes(),
        )
        .unwrap();
        assert_eq!(up.kind(), RrdKind::Vm);
        assert_eq!(up.file(), "pve-vm-9.0/100");
        assert_eq!(up.value(), format!("1700000000:{}{}", cols(10), u(7)));
        let up = parse_update(
            "pve-vm-9.0/100",
            format!("{live}:1700000000:{}", cols(17)).as_bytes(),
        )
        .unwrap();
        assert_eq!(up.value(), format!("1700000000:{}", cols(17)));
        let up = parse_update(
            "pve-vm-11.0/100",
            format!("{live}:1700000000:{}", cols(30)).as_bytes(),
        )
        .unwrap();
        assert_eq!(up.value(), format!("1700000000:{}", cols(17)));
    }

    #[test]
    fn storage_all_formats() {
        for (key, data) in [
            ("pve2-storage/n1/local", "1700000000:100:50\0"),
            ("pve-storage-9.0/n1/local", "1700000000:100:50"),
            ("pve-storage-9.5/n1/local", "1700000000:100:50:7:8\0"),
        ] {
            let up = parse_update(key, data.as_bytes()).unwrap();
            assert_eq!(up.kind(), RrdKind::Storage);
            assert_eq!(up.file(), "pve-storage-9.0/n1/local");
            assert_eq!(up.value(), "1700000000:100:50");
        }
    }

    #[test]
    fn data_ends_at_first_nul() {
        let up = parse_update("pve2-storage/n1/s", b"1700000000:1:2\0garbage:3\0").unwrap();
        assert_eq!(up.value(), "1700000000:1:2");
    }

    #[test]
    fn data_length_limits() {
        assert!(matches!(
            parse_update("pve2-storage/n/s", b""),
            Err(RrdError::EmptyData)
        ));
        let mut big = b"1700000000:1:2".to_vec();
        big.resize(DATA_MAX - 1, 0);
        assert!(parse_update("pve2-storage/n/s", &big).is_ok());
        big.push(0);
        assert!(matches!(
            parse_update("pve2-storage/n/s", &big),
            Err(RrdError::DataTooLong { len: 4096 })
        ));
        // the length check comes first, as in C
        assert!(matches!(
            parse_update("nonsense", &big),
            Err(RrdError::DataTooLong { .. })
        ));
        // "\0" alone: C goes on with an empty string, the update then fails
        assert!(matches!(
            parse_update("pve2-storage/n/s", b"\0"),
            Err(RrdError::BadValue {
                reason: ValueError::NoTimestamp,
                ..
            })
        ));
    }

    #[test]
    fn bad_inputs_have_clear_errors() {
        let e = parse_update("pve2-node/n1", b"1:0:abc\0").unwrap_err();
        assert!(e.to_string().contains("bad timestamp"), "{e}");
        let e = parse_update("pve2-node/n1", b"1:0:1700000000:1:2\0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad RRD value for \"pve2-node/n1\": expected 19 data columns after the timestamp, got 9"
        );
        let e = parse_update("pve2-storage/n1/s", b"1700000000:\xc3\xa9:1\0").unwrap_err();
        assert!(e.to_string().contains("byte 0xc3 at offset 11"), "{e}");
        let e = parse_update("pve2-nod/n1", b"1\0").unwrap_err();
        assert_eq!(e.to_string(), "unknown RRD key \"pve2-nod/n1\"");
        let e = parse_update("pve2-node/a/b", b"1\0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "wrong RRD key \"pve2-node/a/b\": name contains '/'"
        );
        let e = parse_update(&"x".repeat(300), b"1\0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "RRD key is 300 bytes, at most 255 are allowed"
        );
    }

    #[test]
    fn absurd_values() {
        let key = "pve2-storage/n/s";
        for data in [
            &b"99999999999999999999:1:2"[..],
            b"1700000000:1e999999:2",
            b"1700000000:0x10:2",
            b"1700000000:1,5:2",
            b"-1:1:2",
            b"N:1:2:",
            b"1700000000:::",
            b"\xff\xfe\xfd",
        ] {
            assert!(
                matches!(parse_update(key, data), Err(RrdError::BadValue { .. })),
                "{}",
                String::from_utf8_lossy(data)
            );
        }
    }
}
