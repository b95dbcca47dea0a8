//! `config_version` extraction used by the corosync.conf sync rules.
//!
//! The C daemon does not parse corosync.conf to decide whether the copy in the
//! database may replace `/etc/corosync/corosync.conf`. It runs the GLib regex
//! `config_version\s*:\s*(\d+)` over the raw bytes and feeds the first capture
//! to `strtoull`. [`config_version`] reproduces that, including the parts that
//! follow from GLib's defaults rather than from the pattern itself:
//!
//! * GLib compiles every pattern with `PCRE2_UTF | PCRE2_UCP` and, without
//!   `G_REGEX_RAW`, lets PCRE2 validate the subject. Any invalid UTF-8
//!   anywhere in the buffer makes the match fail, so the version is 0.
//! * With `PCRE2_UCP`, `\s` is any Unicode space (`\p{Z}`, `\h`, `\v`: this
//!   includes NBSP, U+180E, U+3000, NEL, LS, PS, VT, FF, CR and LF) and `\d`
//!   is any `\p{Nd}` decimal digit, not only ASCII.
//! * `strtoull` only reads ASCII digits: a capture that starts with a
//!   non-ASCII digit yields 0, and it stops at the first non-ASCII one.
//!   Values above `u64::MAX` saturate (`ERANGE` is not checked).
//! * The search is unanchored and case-sensitive: the first place where the
//!   whole pattern matches wins, even inside a comment, another section or a
//!   longer word (`xconfig_version: 3`). An occurrence that does not match the
//!   whole pattern (`config_version: abc`) is skipped and the search goes on.

/// The literal that starts every match. No proper suffix of it is also a
/// prefix of it, so occurrences never overlap.
const NEEDLE: &str = "config_version";

/// Extract the cluster configuration version the way the C daemon does
/// (`cluster_config_version()` in cfs-utils.c).
///
/// Returns `None` wherever the C function returns 0: no match, a version of
/// 0, a capture starting with a non-ASCII digit, or input that is not valid
/// UTF-8. A returned value is therefore never 0, which is what the sync rule
/// "needs a non-zero `config_version`" checks.
pub fn config_version(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut from = 0;
    while let Some(pos) = text[from..].find(NEEDLE) {
        let after = from + pos + NEEDLE.len();
        match match_tail(&text[after..]) {
            Tail::Number(version) => return (version != 0).then_some(version),
            Tail::NotAscii => return None,
            Tail::NoMatch => from = after,
        }
    }
    None
}

/// Outcome of matching `\s*:\s*(\d+)` right after an occurrence of [`NEEDLE`].
enum Tail {
    /// The capture starts with an ASCII digit; this is what `strtoull` reads.
    Number(u64),
    /// The capture starts with a non-ASCII decimal digit: `strtoull` reads 0.
    NotAscii,
    /// The pattern does not match at this occurrence.
    NoMatch,
}

fn match_tail(rest: &str) -> Tail {
    let rest = rest.trim_start_matches(is_pcre_space);
    let Some(rest) = rest.strip_prefix(':') else {
        return Tail::NoMatch;
    };
    let rest = rest.trim_start_matches(is_pcre_space);
    match rest.chars().next() {
        Some(c) if c.is_ascii_digit() => Tail::Number(strtoull_ascii(rest)),
        Some(c) if is_unicode_decimal_digit(c) => Tail::NotAscii,
        _ => Tail::NoMatch,
    }
}

/// Value of the leading ASCII digits of `s`, saturating at `u64::MAX` like
/// `strtoull` does on overflow.
fn strtoull_ascii(s: &str) -> u64 {
    s.bytes()
        .take_while(u8::is_ascii_digit)
        .fold(0u64, |acc, digit| {
            acc.checked_mul(10)
                .and_then(|acc| acc.checked_add(u64::from(digit - b'0')))
                .unwrap_or(u64::MAX)
        })
}

/// `\s` of PCRE2 in UCP mode: `\p{Z}`, `\h` and `\v`.
fn is_pcre_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{180e}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// `\d` of PCRE2 in UCP mode: general category `Nd`.
fn is_unicode_decimal_digit(c: char) -> bool {
    let c = u32::from(c);
    DECIMAL_DIGITS
        .iter()
        .any(|&(first, last)| (first..=last).contains(&c))
}

/// Code point ranges of general category `Nd` in Unicode 16.0, the version of
/// the PCRE2 (10.45) that GLib uses on Debian trixie / Proxmox VE 9. Older
/// PCRE2 builds lack the ranges added in Unicode 15 and 16 (for example PCRE2
/// 10.42 on Debian bookworm is Unicode 14); they only matter for a
/// `config_version:` followed by one of those rare digits.
const DECIMAL_DIGITS: &[(u32, u32)] = &[
    (0x30, 0x39),
    (0x660, 0x669),
    (0x6F0, 0x6F9),
    (0x7C0, 0x7C9),
    (0x966, 0x96F),
    (0x9E6, 0x9EF),
    (0xA66, 0xA6F),
    (0xAE6, 0xAEF),
    (0xB66, 0xB6F),
    (0xBE6, 0xBEF),
    (0xC66, 0xC6F),
    (0xCE6, 0xCEF),
    (0xD66, 0xD6F),
    (0xDE6, 0xDEF),
    (0xE50, 0xE59),
    (0xED0, 0xED9),
    (0xF20, 0xF29),
    (0x1040, 0x1049),
    (0x1090, 0x1099),
    (0x17E0, 0x17E9),
    (0x1810, 0x1819),
    (0x1946, 0x194F),
    (0x19D0, 0x19D9),
    (0x1A80, 0x1A89),
    (0x1A90, 0x1A99),
    (0x1B50, 0x1B59),
    (0x1BB0, 0x1BB9),
    (0x1C40, 0x1C49),
    (0x1C50, 0x1C59),
    (0xA620, 0xA629),
    (0xA8D0, 0xA8D9),
    (0xA900, 0xA909),
    (0xA9D0, 0xA9D9),
    (0xA9F0, 0xA9F9),
    (0xAA50, 0xAA59),
    (0xABF0, 0xABF9),
    (0xFF10, 0xFF19),
    (0x104A0, 0x104A9),
    (0x10D30, 0x10D39),
    (0x10D40, 0x10D49),
    (0x11066, 0x1106F),
    (0x110F0, 0x110F9),
    (0x11136, 0x1113F),
    (0x111D0, 0x111D9),
    (0x112F0, 0x112F9),
    (0x11450, 0x11459),
    (0x114D0, 0x114D9),
    (0x11650, 0x11659),
    (0x116C0, 0x116C9),
    (0x116D0, 0x116E3),
    (0x11730, 0x11739),
    (0x118E0, 0x118E9),
    (0x11950, 0x11959),
    (0x11BF0, 0x11BF9),
    (0x11C50, 0x11C59),
    (0x11D50, 0x11D59),
    (0x11DA0, 0x11DA9),
    (0x11F50, 0x11F59),
    (0x16130, 0x16139),
    (0x16A60, 0x16A69),
    (0x16AC0, 0x16AC9),
    (0x16B50, 0x16B59),
    (0x16D70, 0x16D79),
    (0x1CCF0, 0x1CCF9),
    (0x1D7CE, 0x1D7FF),
    (0x1E140, 0x1E149),
    (0x1E2F0, 0x1E2F9),
    (0x1E4F0, 0x1E4F9),
    (0x1E5F1, 0x1E5FA),
    (0x1E950, 0x1E959),
    (0x1FBF0, 0x1FBF9),
];

#[cfg(test)]
mod tests {
    use super::config_version;

    #[test]
    fn plain_totem_entry() {
        let conf = b"totem {\n  cluster_name: pve\n  config_version: 7\n}\n";
        assert_eq!(config_version(conf), Some(7));
    }

    #[test]
    fn missing_or_empty() {
        assert_eq!(config_version(b""), None);
        assert_eq!(config_version(b"totem {\n  cluster_name: pve\n}\n"), None);
        assert_eq!(config_version(b"config_version"), None);
        assert_eq!(config_version(b"config_version:"), None);
        assert_eq!(config_version(b"config_version: "), None);
    }

    #[test]
    fn zero_means_none() {
        assert_eq!(config_version(b"config_version: 0"), None);
        assert_eq!(config_version(b"config_version: 000"), None);
        // The first full match wins even when it is 0.
        assert_eq!(
            config_version(b"config_version: 0\nconfig_version: 4"),
            None
        );
    }

    #[test]
    fn odd_spacing() {
        assert_eq!(config_version(b"config_version:12"), Some(12));
        assert_eq!(config_version(b"config_version :12"), Some(12));
        assert_eq!(config_version(b"config_version\t:\t12"), Some(12));
        assert_eq!(config_version(b"config_version   :    12  "), Some(12));
        // \s also matches newlines, vertical tab, form feed and CR.
        assert_eq!(config_version(b"config_version\n:\n12"), Some(12));
        assert_eq!(config_version(b"config_version:\x0b\x0c\r\n 8"), Some(8));
        // Unicode spaces: NBSP, MONGOLIAN VOWEL SEPARATOR, IDEOGRAPHIC SPACE, NEL.
        assert_eq!(
            config_version("config_version\u{a0}:\u{3000}12".as_bytes()),
            Some(12)
        );
        assert_eq!(
            config_version("config_version \u{180e}: 4".as_bytes()),
            Some(4)
        );
        assert_eq!(
            config_version("config_version: \u{85} 6".as_bytes()),
            Some(6)
        );
    }

    #[test]
    fn not_a_separator() {
        // A zero width space is not \s; the occurrence does not match.
        assert_eq!(config_version("config_version:\u{200b}5".as_bytes()), None);
        assert_eq!(config_version(b"config_version = 5"), None);
        assert_eq!(config_version(b"config_version: -5"), None);
        assert_eq!(config_version(b"config_version: +5"), None);
        assert_eq!(config_version(b"Config_Version: 5"), None);
        assert_eq!(config_version(b"config version: 5"), None);
    }

    #[test]
    fn digits_end_at_first_non_digit() {
        assert_eq!(config_version(b"config_version: 12abc"), Some(12));
        assert_eq!(config_version(b"config_version: 12 34"), Some(12));
        assert_eq!(config_version(b"config_version: 3.5"), Some(3));
        assert_eq!(config_version(b"config_version: 0012"), Some(12));
    }

    #[test]
    fn unanchored_first_full_match_wins() {
        assert_eq!(
            config_version(b"# config_version: 3\nconfig_version: 9"),
            Some(3)
        );
        assert_eq!(config_version(b"xconfig_version: 3"), Some(3));
        assert_eq!(config_version(b"totem.config_version: 3"), Some(3));
        assert_eq!(config_version(b"config_versionconfig_version: 3"), Some(3));
        // Occurrences that do not match the whole pattern are skipped.
        assert_eq!(
            config_version(b"config_version: x\nconfig_version: 3"),
            Some(3)
        );
        assert_eq!(config_version(b"config_version config_version: 5"), Some(5));
    }

    #[test]
    fn overflow_saturates() {
        assert_eq!(
            config_version(b"config_version: 18446744073709551615"),
            Some(u64::MAX)
        );
        assert_eq!(
            config_version(b"config_version: 99999999999999999999999"),
            Some(u64::MAX)
        );
        assert_eq!(
            config_version(b"config_version: 18446744073709551614"),
            Some(u64::MAX - 1)
        );
    }

    #[test]
    fn non_ascii_digits() {
        // ARABIC-INDIC DIGIT THREE is \d, so the pattern matches here and
        // strtoull reads nothing: version 0, the later entry is never seen.
        let text = "config_version: \u{663}\nconfig_version: 9";
        assert_eq!(config_version(text.as_bytes()), None);
        // FULLWIDTH DIGIT ONE, same story.
        assert_eq!(config_version("config_version: \u{ff11}".as_bytes()), None);
        // strtoull stops at the first non-ASCII digit.
        assert_eq!(
            config_version("config_version: 1\u{663}2".as_bytes()),
            Some(1)
        );
        // SUPERSCRIPT TWO is No, not Nd: no match here, search goes on.
        let text = "config_version: \u{b2}\nconfig_version: 9";
        assert_eq!(config_version(text.as_bytes()), Some(9));
    }

    #[test]
    fn invalid_utf8_anywhere_means_none() {
        assert_eq!(config_version(b"config_version: 5\xff"), None);
        assert_eq!(config_version(b"\xc3config_version: 5"), None);
        assert_eq!(config_version(b"config_version: 5\n# \xed\xa0\x80"), None);
    }

    #[test]
    fn nul_bytes_are_ordinary() {
        assert_eq!(config_version(b"\0config_version: 5"), Some(5));
        assert_eq!(config_version(b"config_version: 5\0 6"), Some(5));
        assert_eq!(config_version(b"config_version:\0 5"), None);
    }
}
