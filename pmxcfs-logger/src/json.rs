//! JSON output of the cluster log (C `clog_dump_json`): what `.clusterlog`
//! and the IPC op GET_CLUSTER_LOG return.
//!
//! The layout is C's, byte for byte:
//!
//! ```text
//! {
//! "data": [
//! {"uid": 4, "time": 1700000002, "pri": 5, "tag": "t", "pid": 102, "node": "n", "user": "u", "msg": "m"},
//! {"uid": 1, ...}
//! ]
//! }
//! ```
//!
//! (no entries: `{\n"data": [\n]\n}\n`), newest entry first.
//!
//! Escaping differs from C on purpose, C prints every string verbatim. The
//! aim: every field decodes to what the client meant, and the output is
//! always valid JSON.
//!
//! * Non-ASCII text arrives already written as `\uXXXX`: PVE::Cluster
//!   `log_msg` encodes `user` and `msg` that way before sending them, and
//!   `utf8_to_ascii` does the same to raw UTF-8 in `msg`. C prints these
//!   escapes verbatim, so a JSON decoder turns them back into the
//!   characters. So in every field (`tag`, `node`, `user`, `msg`) a `\u`
//!   plus four hex digits is kept as it is, when it names a character that
//!   is not a UTF-16 surrogate or is a high/low surrogate pair; text that
//!   literally contained such an escape cannot be told apart (the stored
//!   bytes are the same) and shows as that character, as in C.
//! * `msg` only: `\"` is kept too (`utf8_to_ascii` writes `"` that way).
//! * Everything else is escaped as in any JSON string: other backslashes as
//!   `\\`, `"` as `\"`, control characters; raw UTF-8 is written as it is.

use std::fmt::Write as _;

use crate::ascii::c_str;
use crate::{fnv1a_64, ClogBuffer, ClogEntry};

impl ClogBuffer {
    /// Newest first, at most `max_entries` entries; with a non-empty `user`
    /// only the entries whose ident digest equals the FNV-1a 64 of the user
    /// name plus NUL (C compares digests, not strings).
    pub fn dump_json(&self, max_entries: usize, user: Option<&str>) -> String {
        let user_digest = user
            .map(|u| c_str(u.as_bytes()))
            .filter(|u| !u.is_empty())
            .map(|u| fnv1a_64(&[u, &[0]].concat()));

        let mut out = String::from("{\n\"data\": [\n");
        let mut count = 0;
        for entry in self.iter() {
            if count >= max_entries {
                break;
            }
            if user_digest.is_some_and(|d| d != entry.ident_digest) {
                continue;
            }
            if count > 0 {
                out.push_str(",\n");
            }
            push_entry(&mut out, &entry);
            count += 1;
        }
        if count > 0 {
            out.push('\n');
        }
        out.push_str("]\n}\n");
        out
    }
}

fn push_entry(out: &mut String, e: &ClogEntry) {
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{{\"uid\": {}, \"time\": {}, \"pri\": {}, \"tag\": \"",
        e.uid, e.time, e.priority
    );
    push_json_str(out, &e.tag);
    let _ = write!(out, "\", \"pid\": {}, \"node\": \"", e.pid);
    push_json_str(out, &e.node);
    out.push_str("\", \"user\": \"");
    push_json_str(out, &e.ident);
    out.push_str("\", \"msg\": \"");
    push_json_escaped(out, &e.msg, true);
    out.push_str("\"}");
}

/// Appends a stored `tag`, `node` or `user` as the body of a JSON string,
/// keeping its `\uXXXX` escapes.
fn push_json_str(out: &mut String, s: &str) {
    push_json_escaped(out, s, false);
}

fn push_json_char(out: &mut String, ch: char) {
    match ch {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if u32::from(c) < 0x20 => {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// Appends a stored string as the body of a JSON string, keeping the
/// `\uXXXX` escapes it holds (and `\"` when `keep_quote`, for messages).
fn push_json_escaped(out: &mut String, s: &str, keep_quote: bool) {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let keep = match bytes.get(i + 1) {
                Some(b'"') if keep_quote => 2,
                Some(b'u') => unicode_escape_len(&bytes[i..]),
                _ => 0,
            };
            if keep > 0 {
                out.push_str(&s[i..i + keep]);
                i += keep;
                continue;
            }
        }
        // Not part of a kept escape: escape it as any other character.
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        push_json_char(out, ch);
        i += ch.len_utf8();
    }
}

/// The length of the JSON `\u` escape at the start of `b` that decodes to
/// a character: 6 for one that is not a surrogate, 12 for a high surrogate
/// followed by a low one; 0 for none (a lone surrogate, too few digits).
fn unicode_escape_len(b: &[u8]) -> usize {
    const HIGH: std::ops::RangeInclusive<u32> = 0xd800..=0xdbff;
    const LOW: std::ops::RangeInclusive<u32> = 0xdc00..=0xdfff;
    match escape_value(b) {
        Some(v) if HIGH.contains(&v) => match b.get(6..).and_then(escape_value) {
            Some(w) if LOW.contains(&w) => 12,
            _ => 0,
        },
        Some(v) if LOW.contains(&v) => 0,
        Some(_) => 6,
        None => 0,
    }
}

/// The value of `\u` plus four hex digits at the start of `b`.
fn escape_value(b: &[u8]) -> Option<u32> {
    let hex = b.strip_prefix(b"\\u")?.get(..4)?;
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use crate::ClusterLog;

    /// The C "json" scenario: output of the compiled logger.c for these five
    /// calls (one dropped for its priority, one by the dedup check).
    fn c_scenario() -> ClusterLog {
        let mut log = ClusterLog::new();
        let t = 1_700_000_000;
        let node = "testnode";
        log.add(node, "root", "cluster", 100, 6, t, "starting cluster log");
        log.add(node, "root@pam", "tag", 101, 3, t + 1, "hello \"w\" ä");
        assert!(log
            .add(node, "user2", "tag", 102, 9, t + 1, "dropped")
            .is_none());
        log.add(node, "user2", "tag", 102, 5, t, "older time: dedup drop");
        log.add(node, "user2", "tag", 102, 5, t + 2, "");
        log
    }

    const C_ALL: &str = r#"{
"data": [
{"uid": 4, "time": 1700000002, "pri": 5, "tag": "tag", "pid": 102, "node": "testnode", "user": "user2", "msg": ""},
{"uid": 2, "time": 1700000001, "pri": 3, "tag": "tag", "pid": 101, "node": "testnode", "user": "root@pam", "msg": "hello \"w\" \u00e4"},
{"uid": 1, "time": 1700000000, "pri": 6, "tag": "cluster", "pid": 100, "node": "testnode", "user": "root", "msg": "starting cluster log"}
]
}
"#;

    const C_ROOT: &str = r#"{
"data": [
{"uid": 1, "time": 1700000000, "pri": 6, "tag": "cluster", "pid": 100, "node": "testnode", "user": "root", "msg": "starting cluster log"}
]
}
"#;

    const C_MAX1: &str = r#"{
"data": [
{"uid": 4, "time": 1700000002, "pri": 5, "tag": "tag", "pid": 102, "node": "testnode", "user": "user2", "msg": ""}
]
}
"#;

    const C_EMPTY: &str = "{\n\"data\": [\n]\n}\n";

    #[test]
    fn same_output_as_c() {
        let log = c_scenario();
        assert_eq!(log.dump_json(50, None), C_ALL);
        assert_eq!(log.dump_json(50, Some("")), C_ALL);
        assert_eq!(log.dump_json(50, Some("root")), C_ROOT);
        assert_eq!(log.dump_json(1, None), C_MAX1);
        assert_eq!(log.dump_json(50, Some("nobody")), C_EMPTY);
        assert_eq!(log.dump_json(0, None), C_EMPTY);
        assert_eq!(ClusterLog::new().dump_json(50, None), C_EMPTY);
        let parsed: serde_json::Value = serde_json::from_str(C_ALL).unwrap();
        assert_eq!(parsed["data"][1]["msg"], "hello \"w\" ä");
    }

    #[test]
    fn user_filter_counts_only_matches() {
        let mut log = ClusterLog::new();
        for i in 0..10 {
            let user = if i % 2 == 0 { "alice@pve" } else { "bob@pve" };
            log.add("n1", user, "t", 1, 6, 100 + i, format!("m{i}"));
        }
        let v: serde_json::Value =
            serde_json::from_str(&log.dump_json(3, Some("bob@pve"))).unwrap();
        let msgs: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["msg"].as_str().unwrap())
            .collect();
        assert_eq!(msgs, ["m9", "m7", "m5"]);
        // The NUL ends the user name, as for the C string.
        assert_eq!(
            log.dump_json(50, Some("bob@pve\0junk")),
            log.dump_json(50, Some("bob@pve"))
        );
    }

    fn parse_single(log: &ClusterLog) -> serde_json::Value {
        let text = log.dump_json(50, None);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("invalid JSON ({e}): {text}");
        });
        v["data"][0].clone()
    }

    /// PVE::Cluster `log_msg` sends the user as ASCII with `\uXXXX` escapes
    /// (`encode("ascii", $ident, sub { sprintf "\\u%04x", shift })`); the
    /// JSON must decode to the original characters in every field.
    #[test]
    fn unicode_escapes_decode_in_every_field() {
        let mut log = ClusterLog::new();
        log.add(
            "n\\u00f6de",
            "r\\u00e9user@pve",
            "t\\u00e4g",
            1,
            6,
            5,
            "caf\\u00e9 \\ud83d\\ude00",
        );
        let e = parse_single(&log);
        assert_eq!(e["user"], "réuser@pve");
        assert_eq!(e["node"], "nöde");
        assert_eq!(e["tag"], "täg");
        assert_eq!(e["msg"], "café \u{1F600}");
        // raw UTF-8 (another client) decodes as well; msg goes through
        // utf8_to_ascii
        let mut log = ClusterLog::new();
        log.add("nöde", "réuser@pve", "täg", 1, 6, 5, "café");
        let e = parse_single(&log);
        assert_eq!(
            (&e["node"], &e["user"], &e["tag"], &e["msg"]),
            (
                &"nöde".into(),
                &"réuser@pve".into(),
                &"täg".into(),
                &"café".into()
            )
        );
        // what is not an escape of a character stays text, and valid JSON
        let cases: &[(&str, &str)] = &[
            ("a\\\"b", "a\\\"b"),
            ("\\ud800 lone", "\\ud800 lone"),
            ("\\ude00 low", "\\ude00 low"),
            ("\\ud83d\\u0041 half", "\\ud83dA half"),
            ("\\u12 short", "\\u12 short"),
            ("\\u12G4", "\\u12G4"),
            ("end\\u00e", "end\\u00e"),
            ("C:\\dir\\", "C:\\dir\\"),
        ];
        for (user, shown) in cases {
            let mut log = ClusterLog::new();
            log.add("n", *user, "t", 1, 6, 5, "m");
            assert_eq!(parse_single(&log)["user"], *shown, "user {user:?}");
        }
    }

    #[test]
    fn escapes_tag_node_and_user() {
        let mut log = ClusterLog::new();
        log.add("no\"de", "us\\er\"", "t\"a\\g\n\x01", 1, 6, 5, "m");
        let e = parse_single(&log);
        assert_eq!(e["node"], "no\"de");
        assert_eq!(e["user"], "us\\er\"");
        assert_eq!(e["tag"], "t\"a\\g\n\x01");
        assert!(log
            .dump_json(50, None)
            .contains(r#""tag": "t\"a\\g\n\u0001""#));
    }

    #[test]
    fn escapes_backslashes_in_messages() {
        let cases: &[(&str, &str)] = &[
            ("C:\\path\\new", "C:\\path\\new"),
            ("a\\b\\n\\t\\/", "a\\b\\n\\t\\/"),
            ("trailing\\", "trailing\\"),
            ("quote \" and \\\"", "quote \" and \\\""),
            ("ä and € stay", "ä and € stay"),
            ("tab\there", "tab#009here"),
            ("\\ud800 lone surrogate text", "\\ud800 lone surrogate text"),
            ("\\u12 short", "\\u12 short"),
            // Indistinguishable from a converted "ä", as in C.
            ("literal \\u00e4", "literal ä"),
        ];
        for (input, shown) in cases {
            let mut log = ClusterLog::new();
            log.add("n", "u", "t", 1, 6, 5, input);
            assert_eq!(parse_single(&log)["msg"], *shown, "input {input:?}");
        }
    }

    #[test]
    fn messages_from_other_nodes_are_escaped() {
        // A hand-made entry whose message was not converted at all.
        let mut e = crate::ClogEntry::pack(1, b"n", b"u", b"t", 1, 5, 6, b"x").unwrap();
        e.msg = "raw \"quote\" \u{1} ctl \u{1F600} \\x".into();
        let mut log = ClusterLog::new();
        assert!(log.insert(&e));
        assert_eq!(
            parse_single(&log)["msg"],
            "raw \"quote\" \u{1} ctl \u{1F600} \\x"
        );
    }

    #[test]
    fn non_bmp_dropped_and_invalid_utf8_as_question_marks() {
        let mut log = ClusterLog::new();
        log.add("n", "u", "t", 1, 6, 5, "a😀b");
        assert_eq!(parse_single(&log)["msg"], "ab");
        let mut log = ClusterLog::new();
        log.add("n", "u", "t", 1, 6, 5, b"x\xffy\xc3\xa4".as_slice());
        assert_eq!(parse_single(&log)["msg"], "x?y??");
    }
}
