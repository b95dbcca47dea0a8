//! RRD values: from the status data to the exact `rrd_update` argument.
//!
//! Normalization follows status.c `update_rrd_data`:
//!
//! 1. skip the live columns that are not archived (node: 2, guest: 4,
//!    storage: 0), i.e. everything up to and including that many `:`; with
//!    fewer `:` nothing is left;
//! 2. legacy format (`pve2-node`, `pve2.3-vm`): append `:U` once per column
//!    the 9.0 layout has more (7 for both), whatever the value holds, and
//!    keep at most 4095 bytes of the result (C formats it into a 4096-byte
//!    buffer with `g_snprintf`);
//! 3. newer format (`pve-<kind>-<ver>` other than 9.0): keep the timestamp
//!    and the first `columns` data columns, i.e. cut before the
//!    `(columns + 1)`-th `:`.
//!
//! C bug not copied in step 3: when the value has no such `:` (it has at
//! most `columns` data columns), C still overwrites the byte before the end
//! with NUL, chopping the last character of the last column (`...:18`
//! becomes `...:1`), and for an empty storage value it writes one byte
//! before the buffer. Here such a value is kept whole.
//!
//! Then [`validate`] checks the result the way librrd will read it, so that
//! neither rrdcached nor librrd is handed something it refuses or
//! misreads (see the function).

use crate::error::ValueError;
use crate::key::KeyFormat;
use crate::schema::{DsType, RrdKind};

/// Size of C's `rrd_format_update_buffer`; a padded value keeps at most
/// this minus one bytes.
const PAD_BUFFER: usize = 4096;

/// Index of the `count`-th (1-based) `sep` of `data`, if there are that many.
fn nth_sep(data: &[u8], count: usize, sep: u8) -> Option<usize> {
    let n = count.checked_sub(1)?;
    data.iter()
        .enumerate()
        .filter(|&(_, &b)| b == sep)
        .nth(n)
        .map(|(i, _)| i)
}

/// Position just after the `count`-th `sep` of `data`, or `data.len()` when
/// there are fewer (status.c `rrd_skip_data`).
fn skip_fields(data: &[u8], count: usize, sep: u8) -> usize {
    if count == 0 {
        return 0;
    }
    nth_sep(data, count, sep).map_or(data.len(), |i| i + 1)
}

/// The value passed to rrd_update, before validation. `data` is the status
/// data up to (not including) its first NUL.
pub(crate) fn normalize(kind: RrdKind, format: KeyFormat, data: &[u8]) -> Vec<u8> {
    let dp = &data[skip_fields(data, kind.skipped_fields(), b':')..];
    match format {
        KeyFormat::Legacy => {
            let padding = kind.columns() - kind.legacy_columns();
            let mut out = dp.to_vec();
            if padding > 0 {
                for _ in 0..padding {
                    out.extend_from_slice(b":U");
                }
                out.truncate(PAD_BUFFER - 1);
            }
            out
        }
        KeyFormat::Current => dp.to_vec(),
        KeyFormat::Newer => {
            let keep = kind.columns() + 1; // the timestamp is a column too
            match nth_sep(dp, keep, b':') {
                // cut before the keep-th ':'
                Some(cut) => dp[..cut].to_vec(),
                None => dp.to_vec(),
            }
        }
    }
}

/// Bytes that can appear in a valid update: digits, letters (`N`, `U`,
/// `e`, `nan`, `inf`), `.`, `+`, `-` and the separator `:`. This keeps out
/// what would break the rrdcached line protocol (newline, space, backslash),
/// librrd's at-style time syntax (`@`, which also makes `rrd_update_r` not
/// thread-safe) and anything not ASCII.
fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-' | b':')
}

/// Checks a normalized value and returns it as a string.
///
/// Accepted, as librrd 1.7 reads them:
/// - timestamp: `N` or seconds since the epoch, `[0-9]{1,18}(\.[0-9]+)?`
///   (stricter than librrd, which also takes negative times relative to now,
///   exponents and `nan`);
/// - exactly `kind.columns()` data columns;
/// - a column starting with `U` is unknown (librrd's own test);
/// - GAUGE: a number as `rrd_strtod` parses it in full
///   (`[+-]?[0-9]*(\.[0-9]*)?([eE][+-]?[0-9]*)?` with at least one digit
///   before the exponent and a decimal exponent within the double range),
///   or `nan`, `-nan`, `inf`, `-inf` (any case, librrd compares prefixes);
/// - DERIVE: `-?[0-9]+`.
pub(crate) fn validate(kind: RrdKind, value: &[u8]) -> Result<String, ValueError> {
    if let Some(offset) = value.iter().position(|&b| !allowed(b)) {
        return Err(ValueError::BadByte {
            byte: value[offset],
            offset,
        });
    }
    // only ASCII is left
    let text = String::from_utf8_lossy(value).into_owned();
    let mut fields = text.split(':');
    let timestamp = fields.next().unwrap_or_default();
    if timestamp.is_empty() {
        return Err(ValueError::NoTimestamp);
    }
    if !valid_timestamp(timestamp) {
        return Err(ValueError::BadTimestamp(crate::error::quote(
            timestamp.as_bytes(),
        )));
    }
    let columns: Vec<&str> = fields.collect();
    if columns.len() != kind.columns() {
        return Err(ValueError::ColumnCount {
            expected: kind.columns(),
            got: columns.len(),
        });
    }
    for (col, ds) in columns.iter().zip(kind.data_sources()) {
        if col.starts_with('U') {
            continue;
        }
        let quoted = || crate::error::quote(col.as_bytes());
        match ds.ds_type {
            DsType::Gauge if !valid_number(col) => {
                return Err(ValueError::NotANumber {
                    ds: ds.name,
                    value: quoted(),
                })
            }
            DsType::Derive if !valid_integer(col) => {
                return Err(ValueError::NotAnInteger {
                    ds: ds.name,
                    value: quoted(),
                })
            }
            _ => {}
        }
    }
    Ok(text)
}

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

fn valid_timestamp(s: &str) -> bool {
    if s == "N" {
        return true;
    }
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    (1..=18).contains(&int.len())
        && all_digits(int)
        && frac.is_none_or(|f| !f.is_empty() && all_digits(f))
}

fn valid_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && all_digits(digits)
}

/// librrd's DBL_MIN_EXP / DBL_MAX_EXP check on the decimal exponent.
const MIN_EXP: i64 = -1021;
const MAX_EXP: i64 = 1024;

fn valid_number(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    if ["nan", "-nan", "inf", "-inf"]
        .iter()
        .any(|p| lower.starts_with(p))
    {
        return true;
    }
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let mut digits = i - int_start;
    let mut decimals: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        digits += i - frac_start;
        decimals = i64::try_from(i - frac_start).unwrap_or(i64::MAX);
    }
    if digits == 0 {
        return false;
    }
    let mut exponent: i64 = 0;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let negative = b.get(i) == Some(&b'-');
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        // librrd accepts an exponent without digits ("1e" is 1)
        while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            exponent = exponent
                .saturating_mul(10)
                .saturating_add(i64::from(d - b'0'));
            i += 1;
        }
        if negative {
            exponent = -exponent;
        }
    }
    let exponent = exponent.saturating_sub(decimals);
    i == b.len() && (MIN_EXP..=MAX_EXP).contains(&exponent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeyFormat::*;
    use RrdKind::*;

    fn norm(kind: RrdKind, format: KeyFormat, data: &str) -> String {
        String::from_utf8(normalize(kind, format, data.as_bytes())).unwrap()
    }

    fn cols(n: usize) -> String {
        (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(":")
    }

    #[test]
    fn skip_fields_like_rrd_skip_data() {
        assert_eq!(skip_fields(b"a:b:c", 0, b':'), 0);
        assert_eq!(skip_fields(b"a:b:c", 1, b':'), 2);
        assert_eq!(skip_fields(b"a:b:c", 2, b':'), 4);
        assert_eq!(skip_fields(b"a:b:c", 3, b':'), 5);
        assert_eq!(skip_fields(b"", 2, b':'), 0);
        assert_eq!(skip_fields(b"::", 2, b':'), 2);
    }

    #[test]
    fn node_legacy_is_padded_with_seven_u() {
        let data = format!("3600:0:1700000000:{}", cols(12));
        assert_eq!(
            norm(Node, Legacy, &data),
            format!("1700000000:{}:U:U:U:U:U:U:U", cols(12))
        );
    }

    #[test]
    fn vm_legacy_is_padded_with_seven_u() {
        let data = format!("3600:vm1:running:0:1700000000:{}", cols(10));
        assert_eq!(
            norm(Vm, Legacy, &data),
            format!("1700000000:{}:U:U:U:U:U:U:U", cols(10))
        );
    }

    #[test]
    fn legacy_padding_is_unconditional() {
        // C pads by format, not by what arrived: 19 columns become 26
        let data = format!("1:0:1700000000:{}", cols(19));
        let out = norm(Node, Legacy, &data);
        assert_eq!(out.split(':').count(), 1 + 26);
    }

    #[test]
    fn storage_legacy_and_current_are_untouched() {
        assert_eq!(norm(Storage, Legacy, "1700000000:10:5"), "1700000000:10:5");
        assert_eq!(norm(Storage, Current, "1700000000:10:5"), "1700000000:10:5");
        // too many columns are not cut for these formats
        assert_eq!(norm(Storage, Legacy, "1:2:3:4"), "1:2:3:4");
    }

    #[test]
    fn current_formats_skip_live_columns_only() {
        let node = format!("3600:0:1700000000:{}", cols(19));
        assert_eq!(
            norm(Node, Current, &node),
            format!("1700000000:{}", cols(19))
        );
        let vm = format!("3600:vm:running:0:1700000000:{}", cols(17));
        assert_eq!(norm(Vm, Current, &vm), format!("1700000000:{}", cols(17)));
    }

    #[test]
    fn newer_formats_are_cut() {
        let node = format!("3600:0:1700000000:{}", cols(25));
        assert_eq!(norm(Node, Newer, &node), format!("1700000000:{}", cols(19)));
        let vm = format!("3600:vm:running:0:1700000000:{}", cols(20));
        assert_eq!(norm(Vm, Newer, &vm), format!("1700000000:{}", cols(17)));
        assert_eq!(norm(Storage, Newer, "1700000000:1:2:3:4"), "1700000000:1:2");
        // exactly one column too many: cut at the last ':'
        assert_eq!(norm(Storage, Newer, "1700000000:1:2:3"), "1700000000:1:2");
        // a trailing ':' after the last kept column
        assert_eq!(norm(Storage, Newer, "1700000000:1:2:"), "1700000000:1:2");
        // fewer columns, ending in ':': kept whole
        assert_eq!(norm(Storage, Newer, "1700000000:1:"), "1700000000:1:");
    }

    #[test]
    fn newer_format_without_extra_columns_is_kept_whole() {
        // C chops the last character here ("2" -> ""), we do not
        assert_eq!(norm(Storage, Newer, "1700000000:1:22"), "1700000000:1:22");
        let node = format!("3600:0:1700000000:{}", cols(19));
        assert_eq!(norm(Node, Newer, &node), format!("1700000000:{}", cols(19)));
        assert_eq!(norm(Storage, Newer, ""), "");
        assert_eq!(norm(Node, Newer, "1:2"), "");
    }

    #[test]
    fn missing_fields_leave_nothing_or_padding() {
        assert_eq!(norm(Node, Current, "3600"), "");
        assert_eq!(norm(Node, Current, "3600:0"), "");
        assert_eq!(norm(Node, Current, "3600:0:"), "");
        assert_eq!(norm(Node, Legacy, "3600"), ":U:U:U:U:U:U:U");
        assert_eq!(norm(Vm, Current, "1:2:3"), "");
    }

    #[test]
    fn padding_is_capped_like_the_c_buffer() {
        let data = format!("1:0:{}", "1".repeat(4090));
        let out = normalize(Node, Legacy, data.as_bytes());
        // 4090 + 14 bytes of padding cut to 4095: the cut is mid-padding
        assert_eq!(out.len(), 4095);
        assert!(out.ends_with(b"1:U:U:"));
    }

    fn check(kind: RrdKind, value: &str) -> Result<String, ValueError> {
        validate(kind, value.as_bytes())
    }

    #[test]
    fn valid_values() {
        assert!(check(Storage, "1700000000:1000:500").is_ok());
        assert!(check(Storage, "N:1000:500").is_ok());
        assert!(check(Storage, "1700000000.25:U:500").is_ok());
        assert!(check(Storage, "1700000000:1.5e-05:-3").is_ok());
        assert!(check(Storage, "1700000000:+.5:5.").is_ok());
        assert!(check(Storage, "1700000000:1e:2E+3").is_ok());
        assert!(check(Storage, "1700000000:NaN:-inf").is_ok());
        assert!(check(Storage, "1700000000:Infinity:nanny").is_ok());
        assert!(check(Storage, "1700000000:Unknown:1").is_ok());
        assert!(check(Storage, "1700000000:9e1024:1e-1021").is_ok());
        let node = format!("1700000000:{}", vec!["1"; 19].join(":"));
        assert!(check(Node, &node).is_ok());
        let mut vm: Vec<&str> = vec!["0.5"; 17];
        vm[6] = "-12345"; // netin DERIVE
        vm[7] = "0"; // netout DERIVE
        vm[8] = "123456789012345678901234567890"; // diskread DERIVE
        vm[9] = "U"; // diskwrite DERIVE
        assert!(check(Vm, &format!("1700000000:{}", vm.join(":"))).is_ok());
    }

    #[test]
    fn invalid_values() {
        use ValueError::*;
        assert_eq!(check(Storage, ""), Err(NoTimestamp));
        assert_eq!(check(Storage, ":1:2"), Err(NoTimestamp));
        assert!(matches!(check(Storage, "abc:1:2"), Err(BadTimestamp(_))));
        assert!(matches!(check(Storage, "-5:1:2"), Err(BadTimestamp(_))));
        assert!(matches!(check(Storage, "1e9:1:2"), Err(BadTimestamp(_))));
        assert!(matches!(check(Storage, "1.:1:2"), Err(BadTimestamp(_))));
        assert!(matches!(
            check(Storage, "1234567890123456789:1:2"),
            Err(BadTimestamp(_))
        ));
        assert_eq!(
            check(Storage, "1700000000"),
            Err(ColumnCount {
                expected: 2,
                got: 0
            })
        );
        assert_eq!(
            check(Storage, "1700000000:1:2:3"),
            Err(ColumnCount {
                expected: 2,
                got: 3
            })
        );
        assert!(matches!(
            check(Storage, "1700000000::2"),
            Err(NotANumber { ds: "total", .. })
        ));
        assert!(matches!(
            check(Storage, "1700000000:1:2x"),
            Err(NotANumber { ds: "used", .. })
        ));
        assert!(matches!(
            check(Storage, "1700000000:1e99999999999999999999:2"),
            Err(NotANumber { .. })
        ));
        assert!(matches!(
            check(Storage, "1700000000:1e1025:2"),
            Err(NotANumber { .. })
        ));
        assert!(matches!(
            check(Storage, "1700000000:+inf:2"),
            Err(NotANumber { .. })
        ));
        assert!(matches!(
            check(Storage, "1700000000:.:2"),
            Err(NotANumber { .. })
        ));
        assert!(matches!(
            check(Storage, "1700000000:-:2"),
            Err(NotANumber { .. })
        ));
        let mut vm: Vec<&str> = vec!["1"; 17];
        vm[6] = "1.5";
        assert!(matches!(
            check(Vm, &format!("1:{}", vm.join(":"))),
            Err(NotAnInteger { ds: "netin", .. })
        ));
        vm[6] = "-";
        assert!(matches!(
            check(Vm, &format!("1:{}", vm.join(":"))),
            Err(NotAnInteger { ds: "netin", .. })
        ));
        vm[6] = "+1";
        assert!(matches!(
            check(Vm, &format!("1:{}", vm.join(":"))),
            Err(NotAnInteger { ds: "netin", .. })
        ));
    }

    #[test]
    fn dangerous_bytes_are_refused() {
        for (value, byte) in [
            ("1700000000:1:2\nFLUSHALL", b'\n'),
            ("1700000000:1 2:3", b' '),
            ("1700000000:1:2\\", b'\\'),
            ("now@1:2", b'@'),
            ("1700000000:1:2\r", b'\r'),
        ] {
            assert!(
                matches!(check(Storage, value), Err(ValueError::BadByte { byte: b, .. }) if b == byte),
                "{value:?}"
            );
        }
        assert!(matches!(
            validate(Storage, b"1700000000:\xff:1"),
            Err(ValueError::BadByte {
                byte: 0xff,
                offset: 11
            })
        ));
    }
}
