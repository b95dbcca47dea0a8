//! Byte-string helpers: the C `utf8_to_ascii` (cfs-utils.c) and the
//! conversion of C strings read from the wire into Rust strings.
//!
//! `utf8_to_ascii` turns a message into 7-bit ASCII that is safe for syslog
//! and (with `quotequote`) for a JSON string body:
//!
//! * The input is a C string: only the bytes before the first NUL count.
//! * Valid UTF-8 input is converted per character: `"` becomes `\"` when
//!   `quotequote` is set; control characters (`< 32`) and DEL (127) become `#`
//!   plus three decimal digits (`#001`, `#127`); other ASCII is copied; other
//!   characters of the Basic Multilingual Plane become `\u` plus four
//!   lowercase hex digits; characters outside the BMP are dropped.
//! * If the input is not valid UTF-8 anywhere, the C code falls back to a
//!   byte-wise conversion of the whole string: `"` as above, bytes `< 32` as
//!   `#0dd`, printable ASCII copied, every other byte (DEL and all bytes
//!   `>= 128`, also those of otherwise valid sequences) becomes `?`.
//! * The output is bounded like the C buffer of `bufsize` bytes: a character
//!   is only converted while fewer than `bufsize - 7` bytes were written, so
//!   the output is at most `bufsize - 2` bytes long; `bufsize <= 10` yields an
//!   empty string.
//!
//! Backslashes are copied unchanged, exactly as in C; the JSON writer
//! ([`crate::json`]) deals with them.

/// Port of the C `utf8_to_ascii(buf, bufsize, msg, quotequote)`.
///
/// Returns what C writes into `buf` (without the terminating NUL).
pub fn utf8_to_ascii(input: &[u8], bufsize: usize, quotequote: bool) -> String {
    utf8_to_ascii_limited(input, bufsize, quotequote, usize::MAX)
}

/// Like [`utf8_to_ascii`], but additionally stops before the first converted
/// token (one input character's output, e.g. `\u00e4`) that would make the
/// output longer than `max_len` bytes. Used by the entry packer so that a
/// message never has to be cut in the middle of an escape sequence.
pub(crate) fn utf8_to_ascii_limited(
    input: &[u8],
    bufsize: usize,
    quotequote: bool,
    max_len: usize,
) -> String {
    let input = c_str(input);
    let mut out = String::new();
    if bufsize <= 10 {
        return out;
    }
    // C: `end = buf + bufsize - 7`, loop `while (*p && d < end)`.
    let end = bufsize - 7;
    let mut token = String::with_capacity(6);

    match std::str::from_utf8(input) {
        Ok(text) => {
            for ch in text.chars() {
                if out.len() >= end {
                    break;
                }
                token.clear();
                push_char_token(&mut token, ch, quotequote);
                if out.len() + token.len() > max_len {
                    break;
                }
                out.push_str(&token);
            }
        }
        Err(_) => {
            for &byte in input {
                if out.len() >= end {
                    break;
                }
                token.clear();
                push_byte_token(&mut token, byte, quotequote);
                if out.len() + token.len() > max_len {
                    break;
                }
                out.push_str(&token);
            }
        }
    }
    out
}

/// Conversion of one character of a valid UTF-8 string.
fn push_char_token(token: &mut String, ch: char, quotequote: bool) {
    let u = u32::from(ch);
    if ch == '"' && quotequote {
        token.push_str("\\\"");
    } else if u < 32 || u == 127 {
        push_decimal3(token, u);
    } else if u < 127 {
        token.push(ch);
    } else if u < 0x1_0000 {
        token.push_str("\\u");
        for shift in [12, 8, 4, 0] {
            token.push(hex_digit((u >> shift) & 0xf));
        }
    }
    // Characters outside the BMP are dropped (C: "we simply ignore this").
}

/// Conversion of one byte of a string that is not valid UTF-8.
fn push_byte_token(token: &mut String, byte: u8, quotequote: bool) {
    if byte == b'"' && quotequote {
        token.push_str("\\\"");
    } else if byte < 32 {
        push_decimal3(token, u32::from(byte));
    } else if byte < 127 {
        token.push(char::from(byte));
    } else {
        // C: a `char` >= 127 (DEL) or negative (bytes >= 128).
        token.push('?');
    }
}

/// `#` followed by the value as three decimal digits (value < 1000).
fn push_decimal3(token: &mut String, value: u32) {
    token.push('#');
    token.push(hex_digit((value / 100) % 10));
    token.push(hex_digit((value / 10) % 10));
    token.push(hex_digit(value % 10));
}

fn hex_digit(value: u32) -> char {
    char::from_digit(value, 16).unwrap_or('0')
}

/// The bytes of a C string: everything before the first NUL.
pub(crate) fn c_str(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == 0) {
        Some(nul) => &bytes[..nul],
        None => bytes,
    }
}

/// Converts bytes to a `String`, replacing every byte that is not part of a
/// valid UTF-8 sequence by `?` (one `?` per byte, so the length in bytes is
/// unchanged). Used for strings read from binary entries.
pub(crate) fn bytes_to_string(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for _ in chunk.invalid() {
            out.push('?');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected outputs were obtained by compiling the C `utf8_to_ascii` from
    // cfs-utils.c on this machine and calling it with bufsize 4096.
    #[test]
    fn valid_utf8_like_c() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"plain", "plain", "plain"),
            (b"q\"uote", "q\\\"uote", "q\"uote"),
            (b"ctl\x01\x1f\x7f", "ctl#001#031#127", "ctl#001#031#127"),
            ("ä€".as_bytes(), "\\u00e4\\u20ac", "\\u00e4\\u20ac"),
            ("emoji😀!".as_bytes(), "emoji!", "emoji!"),
            (
                "\u{fdd0}nonchar\u{fffe}".as_bytes(),
                "\\ufdd0nonchar\\ufffe",
                "\\ufdd0nonchar\\ufffe",
            ),
            (b"back\\slash", "back\\slash", "back\\slash"),
            (b"", "", ""),
            (b"stop\0after nul", "stop", "stop"),
        ];
        for (input, quoted, plain) in cases {
            assert_eq!(utf8_to_ascii(input, 4096, true), *quoted, "{input:?}");
            assert_eq!(utf8_to_ascii(input, 4096, false), *plain, "{input:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_converted_bytewise() {
        // One invalid byte switches the whole string to the byte-wise mode:
        // the valid "ä" (c3 a4) becomes "??" as well.
        let input = b"bad\xff\xc3\xa4\x01\x7f\"";
        assert_eq!(utf8_to_ascii(input, 4096, true), "bad???#001?\\\"");
        assert_eq!(utf8_to_ascii(input, 4096, false), "bad???#001?\"");
        // Surrogates encoded in UTF-8 are invalid.
        assert_eq!(utf8_to_ascii(b"a\xed\xa0\x80", 4096, true), "a???");
    }

    #[test]
    fn bounded_like_the_c_buffer() {
        assert_eq!(
            utf8_to_ascii(b"abcdefghijklmnopqrstuvwxyz", 20, true),
            "abcdefghijklm"
        );
        assert_eq!(
            utf8_to_ascii("abcdefghijäxyz".as_bytes(), 20, true),
            "abcdefghij\\u00e4"
        );
        assert_eq!(utf8_to_ascii(b"abcdefghij", 11, true), "abcd");
        assert_eq!(utf8_to_ascii(b"abcdefghij", 10, true), "");
    }

    #[test]
    fn limited_drops_whole_tokens() {
        let s = utf8_to_ascii_limited("abcä".as_bytes(), 4096, true, 8);
        assert_eq!(s, "abc");
        let s = utf8_to_ascii_limited("abcä".as_bytes(), 4096, true, 9);
        assert_eq!(s, "abc\\u00e4");
    }

    #[test]
    fn lossy_conversion_keeps_length() {
        assert_eq!(bytes_to_string(b"ok"), "ok");
        assert_eq!(bytes_to_string(b"a\xffb\xc3"), "a?b?");
        assert_eq!(bytes_to_string("ä".as_bytes()), "ä");
        assert_eq!(bytes_to_string(b"\xe2\x82"), "??");
    }
}
