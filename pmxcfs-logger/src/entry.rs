//! One cluster log entry: the C `clog_entry_t` (logger.h) and `clog_pack`.
//!
//! # Binary layout
//!
//! The C struct on x86_64, all integers little-endian:
//!
//! ```text
//! offset  size  field         meaning
//!      0     4  prev          ring position of the previous entry (0 = none)
//!      4     4  next          ring position just after this entry (8-aligned)
//!      8     4  uid           per-daemon counter, starts at 1
//!     12     4  time          seconds since the epoch
//!     16     8  node_digest   FNV-1a 64 of the node name incl. its NUL
//!     24     8  ident_digest  FNV-1a 64 of the ident (user) incl. its NUL
//!     32     4  pid
//!     36     1  priority      syslog priority 0..=7
//!     37     1  node_len      incl. NUL, at most 255
//!     38     1  ident_len     incl. NUL, at most 255
//!     39     1  tag_len       incl. NUL, at most 255
//!     40     4  msg_len       incl. NUL
//!     44     -  data: node NUL, ident NUL, tag NUL, msg NUL
//! ```
//!
//! `sizeof(clog_entry_t)` is 48 (the struct is padded to the alignment of its
//! `u64` members although the flexible `data` member starts at 44), and C
//! counts the entry size as `48 + node_len + ident_len + tag_len + msg_len`.
//! So every entry ends with 4 bytes after the message's NUL; we write them as
//! zero and ignore them when reading, except for the one case described at
//! [`ClogEntry::decode`]. The biggest entry is 4096 bytes
//! (`CLOG_MAX_ENTRY_SIZE`).
//!
//! The digests are 64-bit FNV-1a (basis `0xcbf29ce484222325`, prime
//! `0x100000001b3`; C writes the multiplication as shifts and adds) over the
//! first `len` bytes of the string, where `len = min(strlen + 1, 255)`: the
//! NUL is included unless the string is capped, then it is the first 255
//! bytes of the original string. The stored string is then the first
//! `len - 1` bytes plus a NUL.

use crate::ascii::{bytes_to_string, c_str, utf8_to_ascii_limited};
use crate::ClogError;

/// `sizeof(clog_entry_t)`: the fixed part counted in every entry's size.
pub const CLOG_ENTRY_HEADER_SIZE: usize = 48;
/// Offset of the string data (`offsetof(clog_entry_t, data)`).
pub const CLOG_ENTRY_DATA_OFFSET: usize = 44;
/// `CLOG_MAX_ENTRY_SIZE`: the largest entry, header included.
pub const CLOG_MAX_ENTRY_SIZE: usize = 4096;
/// Largest node, ident and tag field, NUL included.
pub const CLOG_MAX_STRING_FIELD: usize = 255;
/// Syslog priorities are below this value; `clog_pack` refuses others.
pub const CLOG_PRIORITY_LIMIT: u8 = 8;

const FNV1A_64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const FNV1A_64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a over `bytes` (C `fnv_64a_buf` with `FNV1A_64_INIT`).
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV1A_64_INIT, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(FNV1A_64_PRIME)
    })
}

/// The digest `clog_pack` stores for a node or ident string: FNV-1a over the
/// C string including its NUL, capped at the first 255 bytes.
pub fn string_digest(s: &[u8]) -> u64 {
    let s = c_str(s);
    let len = field_len(s);
    if s.len() >= len {
        fnv1a_64(&s[..len])
    } else {
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(s);
        bytes.push(0);
        fnv1a_64(&bytes)
    }
}

/// Field length (NUL included) of a node, ident or tag string:
/// `CFS_MIN(strlen + 1, 255)`.
fn field_len(s: &[u8]) -> usize {
    (s.len() + 1).min(CLOG_MAX_STRING_FIELD)
}

/// One cluster log entry, decoded.
///
/// The strings hold the C strings without their NUL. Bytes that are not
/// valid UTF-8 (possible in entries from other nodes) are replaced by one `?`
/// each, so field lengths are preserved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClogEntry {
    pub prev: u32,
    pub next: u32,
    pub uid: u32,
    pub time: u32,
    pub node_digest: u64,
    pub ident_digest: u64,
    pub pid: u32,
    pub priority: u8,
    pub node: String,
    /// The user (JSON `"user"`), e.g. `root@pam`.
    pub ident: String,
    pub tag: String,
    /// The message as stored: already converted by `utf8_to_ascii`.
    pub msg: String,
}

impl ClogEntry {
    /// Builds an entry as C `clog_pack` does (prev and next are 0).
    ///
    /// Every string is taken up to its first NUL. Node, ident and tag are
    /// capped at 254 bytes (plus NUL); the digests are computed from the
    /// original bytes as C does ([`string_digest`]). The message is
    /// converted with `utf8_to_ascii(quotequote)` into the space left in a
    /// 4096-byte entry. Where C would then overflow the entry by up to three
    /// bytes and cut off the message's NUL (an entry other C nodes reject as
    /// "unterminated"), the last converted character is dropped instead.
    ///
    /// Priority 8 and above is refused with [`ClogError::InvalidPriority`]
    /// (C: `clog_pack` returns 0 and the caller drops the entry).
    #[allow(clippy::too_many_arguments)]
    pub fn pack(
        uid: u32,
        node: &[u8],
        ident: &[u8],
        tag: &[u8],
        pid: u32,
        time: u32,
        priority: u8,
        msg: &[u8],
    ) -> Result<ClogEntry, ClogError> {
        if priority >= CLOG_PRIORITY_LIMIT {
            return Err(ClogError::InvalidPriority(priority));
        }
        let (node, ident, tag) = (c_str(node), c_str(ident), c_str(tag));
        let strings_len = field_len(node) + field_len(ident) + field_len(tag);
        // C: the message buffer is what is left of a 4096-byte entry after
        // the 44-byte header and the three strings.
        let bufsize = CLOG_MAX_ENTRY_SIZE - CLOG_ENTRY_DATA_OFFSET - strings_len;
        // Longest message text (without NUL) that keeps the entry <= 4096.
        let max_msg = CLOG_MAX_ENTRY_SIZE - CLOG_ENTRY_HEADER_SIZE - strings_len - 1;
        let msg = utf8_to_ascii_limited(msg, bufsize, true, max_msg);

        Ok(ClogEntry {
            prev: 0,
            next: 0,
            uid,
            time,
            node_digest: string_digest(node),
            ident_digest: string_digest(ident),
            pid,
            priority,
            node: bytes_to_string(&node[..field_len(node) - 1]),
            ident: bytes_to_string(&ident[..field_len(ident) - 1]),
            tag: bytes_to_string(&tag[..field_len(tag) - 1]),
            msg,
        })
    }

    /// Size of the encoded entry (`clog_entry_size`).
    pub fn size(&self) -> usize {
        let [node, ident, tag, msg] = self.fields();
        CLOG_ENTRY_HEADER_SIZE + node.len() + ident.len() + tag.len() + msg.len() + 4
    }

    /// The four string fields as written, each without its NUL: cut at an
    /// embedded NUL, node/ident/tag capped at 254 bytes, the message capped
    /// so that the entry stays within 4096 bytes.
    fn fields(&self) -> [&[u8]; 4] {
        fn cap(s: &str, max: usize) -> &[u8] {
            let s = c_str(s.as_bytes());
            &s[..s.len().min(max)]
        }
        let node = cap(&self.node, CLOG_MAX_STRING_FIELD - 1);
        let ident = cap(&self.ident, CLOG_MAX_STRING_FIELD - 1);
        let tag = cap(&self.tag, CLOG_MAX_STRING_FIELD - 1);
        let strings_len = node.len() + ident.len() + tag.len() + 3;
        let msg = cap(
            &self.msg,
            CLOG_MAX_ENTRY_SIZE - CLOG_ENTRY_HEADER_SIZE - strings_len - 1,
        );
        [node, ident, tag, msg]
    }

    /// Encodes the entry in the C layout (see the module documentation).
    ///
    /// The result is `48 + node_len + ident_len + tag_len + msg_len` bytes,
    /// the last 4 of them zero. This is the payload of a kvstore LOG message.
    pub fn encode(&self) -> Vec<u8> {
        let [node, ident, tag, msg] = self.fields();
        let mut out = Vec::with_capacity(self.size());
        out.extend_from_slice(&self.prev.to_le_bytes());
        out.extend_from_slice(&self.next.to_le_bytes());
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.time.to_le_bytes());
        out.extend_from_slice(&self.node_digest.to_le_bytes());
        out.extend_from_slice(&self.ident_digest.to_le_bytes());
        out.extend_from_slice(&self.pid.to_le_bytes());
        out.push(self.priority);
        // The caps in `fields` keep these lengths within their types.
        for s in [node, ident, tag] {
            out.push(u8::try_from(s.len() + 1).unwrap_or(u8::MAX));
        }
        let msg_len = u32::try_from(msg.len() + 1).unwrap_or(u32::MAX);
        out.extend_from_slice(&msg_len.to_le_bytes());
        for s in [node, ident, tag, msg] {
            out.extend_from_slice(s);
            out.push(0);
        }
        // Trailing padding: sizeof(clog_entry_t) - offsetof(data).
        out.extend_from_slice(&[0; 4]);
        out
    }

    /// Decodes an entry received from another node (kvstore LOG message),
    /// with the checks of C `kvstore_parse_log_message`: at least 48 bytes,
    /// exactly the size the header declares, every string field ending in a
    /// NUL. In addition (where C would read outside the entry or later refuse
    /// to store it) empty string fields and entries over 4096 bytes are
    /// rejected. Each string is read up to its first NUL.
    ///
    /// Never panics, whatever the input.
    pub fn decode(bytes: &[u8]) -> Result<ClogEntry, ClogError> {
        let raw = RawEntry::parse(bytes)?;
        if bytes.len() != raw.size {
            return Err(ClogError::SizeMismatch {
                expected: raw.size,
                got: bytes.len(),
            });
        }
        let data = &bytes[CLOG_ENTRY_DATA_OFFSET..];
        let mut start = 0;
        let mut strings: [&[u8]; 4] = [&[]; 4];
        for (i, (len, field)) in raw.lens.iter().zip(FIELD_NAMES).enumerate() {
            let field_bytes = &data[start..start + len];
            if field_bytes.last() != Some(&0) {
                return Err(ClogError::Unterminated { field });
            }
            strings[i] = c_str(field_bytes);
            start += len;
        }
        Ok(raw.into_entry(strings))
    }

    /// Decodes the entry at the start of `bytes` inside a ring buffer, as the
    /// C readers (`clog_dump_json`, `clog_sort`, `clusterlog_merge`) see it:
    /// no NUL checks, each string read up to its first NUL but not beyond its
    /// field. The message may continue into the 4 trailing bytes: a C node
    /// that had to shorten an overlong message stores a `msg_len` without the
    /// NUL, which then lies in those bytes.
    ///
    /// Returns the entry and its size. Never panics.
    pub(crate) fn decode_in_ring(bytes: &[u8]) -> Result<(ClogEntry, usize), ClogError> {
        let raw = RawEntry::parse(bytes)?;
        let data = &bytes[CLOG_ENTRY_DATA_OFFSET..raw.size];
        let mut start = 0;
        let mut strings: [&[u8]; 4] = [&[]; 4];
        for (i, len) in raw.lens.iter().enumerate() {
            let end = if i == 3 { data.len() } else { start + len };
            strings[i] = c_str(&data[start..end]);
            start += len;
        }
        let size = raw.size;
        Ok((raw.into_entry(strings), size))
    }
}

const FIELD_NAMES: [&str; 4] = ["node", "ident", "tag", "msg"];

/// The fixed header of an entry, checked against the available bytes.
struct RawEntry {
    prev: u32,
    next: u32,
    uid: u32,
    time: u32,
    node_digest: u64,
    ident_digest: u64,
    pid: u32,
    priority: u8,
    /// node_len, ident_len, tag_len, msg_len.
    lens: [usize; 4],
    /// `48 + sum(lens)`, guaranteed `<= bytes.len()` and `<= 4096`.
    size: usize,
}

impl RawEntry {
    fn parse(bytes: &[u8]) -> Result<RawEntry, ClogError> {
        if bytes.len() < CLOG_ENTRY_HEADER_SIZE {
            return Err(ClogError::Truncated {
                needed: CLOG_ENTRY_HEADER_SIZE,
                got: bytes.len(),
            });
        }
        let u32_at = |off: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[off..off + 4]);
            u32::from_le_bytes(b)
        };
        let u64_at = |off: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[off..off + 8]);
            u64::from_le_bytes(b)
        };
        let msg_len = u32_at(40);
        let lens = [
            usize::from(bytes[37]),
            usize::from(bytes[38]),
            usize::from(bytes[39]),
            usize::try_from(msg_len).unwrap_or(usize::MAX),
        ];
        let size = lens
            .iter()
            .try_fold(CLOG_ENTRY_HEADER_SIZE, |acc, &l| acc.checked_add(l))
            .unwrap_or(usize::MAX);
        if size > CLOG_MAX_ENTRY_SIZE {
            return Err(ClogError::EntryTooLarge(size));
        }
        if size > bytes.len() {
            return Err(ClogError::Truncated {
                needed: size,
                got: bytes.len(),
            });
        }
        Ok(RawEntry {
            prev: u32_at(0),
            next: u32_at(4),
            uid: u32_at(8),
            time: u32_at(12),
            node_digest: u64_at(16),
            ident_digest: u64_at(24),
            pid: u32_at(32),
            priority: bytes[36],
            lens,
            size,
        })
    }

    fn into_entry(self, [node, ident, tag, msg]: [&[u8]; 4]) -> ClogEntry {
        ClogEntry {
            prev: self.prev,
            next: self.next,
            uid: self.uid,
            time: self.time,
            node_digest: self.node_digest,
            ident_digest: self.ident_digest,
            pid: self.pid,
            priority: self.priority,
            node: bytes_to_string(node),
            ident: bytes_to_string(ident),
            tag: bytes_to_string(tag),
            msg: bytes_to_string(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    /// `clog_pack(entry, "node1", "root", "cluster", 1234, 1700000000,
    /// LOG_INFO, "starting cluster log")` as the first entry (uid 1).
    ///
    /// Derived from the struct in logger.h: lengths 6, 5, 8 and 21 (each
    /// string plus NUL), size 48 + 40 = 88; time 1700000000 = 0x6553f100;
    /// pid 1234 = 0x4d2; digests = FNV-1a 64 of "node1\0" (0xe6f5e3c220c8fefc)
    /// and "root\0" (0x4dd1e2461dbc53bf). The bytes were cross-checked with
    /// logger.c compiled on this machine (clog_pack into a zeroed buffer).
    const STARTING_ENTRY: [u8; 88] = [
        0x00, 0x00, 0x00, 0x00, // prev
        0x00, 0x00, 0x00, 0x00, // next
        0x01, 0x00, 0x00, 0x00, // uid 1
        0x00, 0xf1, 0x53, 0x65, // time 1700000000
        0xfc, 0xfe, 0xc8, 0x20, 0xc2, 0xe3, 0xf5, 0xe6, // node_digest
        0xbf, 0x53, 0xbc, 0x1d, 0x46, 0xe2, 0xd1, 0x4d, // ident_digest
        0xd2, 0x04, 0x00, 0x00, // pid 1234
        0x06, // priority LOG_INFO
        0x06, 0x05, 0x08, // node_len, ident_len, tag_len
        0x15, 0x00, 0x00, 0x00, // msg_len 21
        b'n', b'o', b'd', b'e', b'1', 0x00, // offset 44: node
        b'r', b'o', b'o', b't', 0x00, // ident
        b'c', b'l', b'u', b's', b't', b'e', b'r', 0x00, // tag
        b's', b't', b'a', b'r', b't', b'i', b'n', b'g', b' ', b'c', b'l', b'u', b's', b't', b'e',
        b'r', b' ', b'l', b'o', b'g', 0x00, // msg
        0x00, 0x00, 0x00, 0x00, // padding up to sizeof(clog_entry_t)
    ];

    /// `clog_pack(entry, "n", "u\"x", "t", 7, 1, LOG_ERR,
    /// "a\"\\\x01ä😀z")` as uid 2: the message is converted by
    /// utf8_to_ascii (quote -> `\"`, backslash kept, 0x01 -> `#001`,
    /// ä -> `\u00e4`, the emoji dropped) to `a\"\#001\u00e4z` (15 bytes);
    /// the ident is not converted. Digests: FNV-1a 64 of "n\0"
    /// (0x08b3ac07b5592803) and "u\"x\0" (0x27dc01e5853169de). Cross-checked
    /// with the compiled logger.c like the vector above.
    const ESCAPED_ENTRY: [u8; 72] = [
        0x00, 0x00, 0x00, 0x00, // prev
        0x00, 0x00, 0x00, 0x00, // next
        0x02, 0x00, 0x00, 0x00, // uid 2
        0x01, 0x00, 0x00, 0x00, // time 1
        0x03, 0x28, 0x59, 0xb5, 0x07, 0xac, 0xb3, 0x08, // node_digest
        0xde, 0x69, 0x31, 0x85, 0xe5, 0x01, 0xdc, 0x27, // ident_digest
        0x07, 0x00, 0x00, 0x00, // pid 7
        0x03, // priority LOG_ERR
        0x02, 0x04, 0x02, // node_len, ident_len, tag_len
        0x10, 0x00, 0x00, 0x00, // msg_len 16
        b'n', 0x00, // node
        b'u', b'"', b'x', 0x00, // ident
        b't', 0x00, // tag
        b'a', b'\\', b'"', b'\\', b'#', b'0', b'0', b'1', b'\\', b'u', b'0', b'0', b'e', b'4',
        b'z', 0x00, // msg
        0x00, 0x00, 0x00, 0x00, // padding
    ];

    fn starting_entry() -> ClogEntry {
        ClogEntry::pack(
            1,
            b"node1",
            b"root",
            b"cluster",
            1234,
            1_700_000_000,
            6,
            b"starting cluster log",
        )
        .unwrap()
    }

    #[test]
    fn fnv_digests() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"node1\0"), 0xe6f5_e3c2_20c8_fefc);
        assert_eq!(string_digest(b"root"), 0x4dd1_e246_1dbc_53bf);
        assert_eq!(string_digest(b"root\0ignored"), 0x4dd1_e246_1dbc_53bf);
    }

    #[test]
    fn pack_and_encode_match_c_bytes() {
        let e = starting_entry();
        assert_eq!(e.size(), 88);
        assert_eq!(e.encode(), STARTING_ENTRY);

        let e =
            ClogEntry::pack(2, b"n", b"u\"x", b"t", 7, 1, 3, "a\"\\\x01ä😀z".as_bytes()).unwrap();
        assert_eq!(e.msg, "a\\\"\\#001\\u00e4z");
        assert_eq!(e.encode(), ESCAPED_ENTRY);
    }

    #[test]
    fn decode_c_bytes() {
        let e = ClogEntry::decode(&STARTING_ENTRY).unwrap();
        assert_eq!(e, starting_entry());
        assert_eq!(e.node, "node1");
        assert_eq!(e.ident, "root");
        assert_eq!(e.tag, "cluster");
        assert_eq!(e.msg, "starting cluster log");
        assert_eq!(
            (e.uid, e.time, e.pid, e.priority),
            (1, 1_700_000_000, 1234, 6)
        );

        let e = ClogEntry::decode(&ESCAPED_ENTRY).unwrap();
        assert_eq!(e.ident, "u\"x");
        assert_eq!(e.node_digest, 0x08b3_ac07_b559_2803);
        assert_eq!(e.ident_digest, 0x27dc_01e5_8531_69de);
        assert_eq!(e.encode(), ESCAPED_ENTRY);
    }

    #[test]
    fn round_trip_keeps_prev_next() {
        let mut e = starting_entry();
        e.prev = 0x0102_0304;
        e.next = 0x0a0b_0c0d;
        let bytes = e.encode();
        assert_eq!(&bytes[..8], &[4, 3, 2, 1, 0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(ClogEntry::decode(&bytes).unwrap(), e);
    }

    #[test]
    fn decode_rejects_bad_entries() {
        assert_eq!(
            ClogEntry::decode(&STARTING_ENTRY[..47]),
            Err(ClogError::Truncated {
                needed: 48,
                got: 47
            })
        );
        assert_eq!(
            ClogEntry::decode(&STARTING_ENTRY[..87]),
            Err(ClogError::Truncated {
                needed: 88,
                got: 87
            })
        );
        let mut longer = STARTING_ENTRY.to_vec();
        longer.push(0);
        assert_eq!(
            ClogEntry::decode(&longer),
            Err(ClogError::SizeMismatch {
                expected: 88,
                got: 89
            })
        );
        let mut bad = STARTING_ENTRY;
        bad[44 + 5] = b'x'; // node's NUL
        assert_eq!(
            ClogEntry::decode(&bad),
            Err(ClogError::Unterminated { field: "node" })
        );
        let mut bad = STARTING_ENTRY;
        bad[83] = b'x'; // msg's NUL
        assert_eq!(
            ClogEntry::decode(&bad),
            Err(ClogError::Unterminated { field: "msg" })
        );
        let mut bad = STARTING_ENTRY;
        bad[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            ClogEntry::decode(&bad),
            Err(ClogError::EntryTooLarge(_))
        ));
        // Empty node field: C would read the byte before the field.
        let mut bad = vec![0u8; 48 + 3];
        bad[38] = 1;
        bad[39] = 1;
        bad[40] = 1;
        assert_eq!(
            ClogEntry::decode(&bad),
            Err(ClogError::Unterminated { field: "node" })
        );
    }

    #[test]
    fn decode_embedded_nul_and_invalid_utf8() {
        let mut bytes = STARTING_ENTRY;
        bytes[44 + 2] = 0; // "no\0e1\0"
        bytes[44 + 11 + 1] = 0xff; // tag "c\xffuster"
        let e = ClogEntry::decode(&bytes).unwrap();
        assert_eq!(e.node, "no");
        assert_eq!(e.tag, "c?uster");
    }

    #[test]
    fn string_caps_255() {
        // Derived with the compiled logger.c: three 300-byte strings give
        // lengths 255 each, 254 bytes + NUL stored, and the digest is the
        // FNV-1a of the first 255 bytes (no NUL): 0xc2c977771654d7a9.
        let long = vec![b'n'; 300];
        let e = ClogEntry::pack(1, &long, &long, &long, 1, 5, 6, b"m").unwrap();
        assert_eq!(e.node.len(), 254);
        assert_eq!(e.ident.len(), 254);
        assert_eq!(e.tag.len(), 254);
        assert_eq!(e.node_digest, 0xc2c9_7777_1654_d7a9);
        assert_eq!(e.ident_digest, 0xc2c9_7777_1654_d7a9);
        let bytes = e.encode();
        assert_eq!(bytes.len(), 815);
        assert_eq!(&bytes[37..40], &[255, 255, 255]);
        assert_eq!(bytes[44 + 253], b'n');
        assert_eq!(bytes[44 + 254], 0);
        assert_eq!(bytes[44 + 255], b'n');
        assert_eq!(ClogEntry::decode(&bytes).unwrap(), e);

        // A string of exactly 254 bytes is not capped; 255 bytes are.
        let s254 = vec![b'a'; 254];
        let e = ClogEntry::pack(1, &s254, b"r", b"t", 1, 5, 6, b"m").unwrap();
        assert_eq!(e.node.len(), 254);
        assert_eq!(e.node_digest, fnv1a_64(&[&s254[..], &[0]].concat()));
        let s255 = vec![b'a'; 255];
        let e = ClogEntry::pack(1, &s255, b"r", b"t", 1, 5, 6, b"m").unwrap();
        assert_eq!(e.node.len(), 254);
        assert_eq!(e.node_digest, fnv1a_64(&s255));

        // A multi-byte character cut at the cap is stored as '?' per byte.
        let mut s = vec![b'a'; 253];
        s.extend_from_slice("ä".as_bytes());
        let e = ClogEntry::pack(1, &s, b"r", b"t", 1, 5, 6, b"m").unwrap();
        assert_eq!(e.node.len(), 254);
        assert!(e.node.ends_with("a?"));
    }

    #[test]
    fn overlong_message_stays_terminated() {
        // C (compiled logger.c): 4022 'a' + "ä" gives a 4028-byte converted
        // message, the entry would be 4099 bytes, C cuts msg_len to 4026 so
        // the field ends in "\u0" without NUL. We drop the "\u00e4" instead.
        let mut msg = vec![b'a'; 4022];
        msg.extend_from_slice("ätail".as_bytes());
        let e = ClogEntry::pack(1, b"testnode", b"root", b"cluster", 1, 5, 6, &msg).unwrap();
        assert_eq!(e.msg, "a".repeat(4022));
        let bytes = e.encode();
        assert_eq!(bytes.len(), 48 + 9 + 5 + 8 + 4023);
        assert_eq!(ClogEntry::decode(&bytes).unwrap(), e);

        // Plain ASCII is limited by the C loop alone (bufsize 4030, 4023
        // characters, entry of 4094 bytes), exactly as in C.
        let e =
            ClogEntry::pack(1, b"testnode", b"root", b"cluster", 1, 5, 6, &[b'a'; 4500]).unwrap();
        assert_eq!(e.msg.len(), 4023);
        assert_eq!(e.size(), 4094);

        // A hand-made entry with a too long message is capped on encoding.
        let mut e = starting_entry();
        e.msg = "b".repeat(5000);
        let bytes = e.encode();
        assert_eq!(bytes.len(), CLOG_MAX_ENTRY_SIZE);
        assert!(ClogEntry::decode(&bytes).is_ok());
    }

    #[test]
    fn priority_and_empty_message() {
        assert_eq!(
            ClogEntry::pack(1, b"n", b"u", b"t", 1, 1, 8, b"x"),
            Err(ClogError::InvalidPriority(8))
        );
        let e = ClogEntry::pack(1, b"n", b"u", b"t", 1, 1, 7, b"\0").unwrap();
        assert_eq!(e.msg, "");
        assert_eq!(e.size(), 48 + 2 + 2 + 2 + 1);
    }

    #[test]
    fn ring_decoding_reads_c_truncated_message() {
        // A C node's entry whose msg_len lost the NUL: the message goes on
        // into the 4 trailing bytes, where its NUL is.
        let mut bytes = starting_entry().encode();
        bytes[40] = 19; // msg_len 21 -> 19: "starting cluster lo", then "g\0"
        bytes.truncate(bytes.len() - 2);
        let (e, size) = ClogEntry::decode_in_ring(&bytes).unwrap();
        assert_eq!(size, 86);
        assert_eq!(e.msg, "starting cluster log");
        assert!(ClogEntry::decode(&bytes).is_err());
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = Rng::new(0x5eed);
        let valid = starting_entry().encode();
        for i in 0..20_000 {
            let bytes = match i % 4 {
                0 => {
                    let len = rng.below(200);
                    rng.bytes(len)
                }
                1 => valid[..rng.below(valid.len() + 1)].to_vec(),
                2 => rng.mutate(&valid, 4),
                _ => {
                    // Plausible lengths with random content.
                    let len = 48 + rng.below(300);
                    let mut b = rng.bytes(len);
                    b[37] = rng.below(100) as u8;
                    b[38] = rng.below(100) as u8;
                    b[39] = rng.below(100) as u8;
                    b[40..44].copy_from_slice(&(rng.below(100) as u32).to_le_bytes());
                    b
                }
            };
            if let Ok(e) = ClogEntry::decode(&bytes) {
                // Whatever decodes re-encodes to something that decodes to
                // the same entry.
                assert_eq!(ClogEntry::decode(&e.encode()).unwrap(), e);
            }
            let _ = ClogEntry::decode_in_ring(&bytes);
        }
    }
}
