//! The untyped key tree of a corosync.conf and the line parser that builds it.
//!
//! The grammar and its corner cases follow corosync's own parser
//! (`exec/coroparse.c`), because what pmxcfs reports must agree with what
//! corosync loaded:
//!
//! * A line is handled after removing its `\n`, one trailing `\r`, and
//!   trailing spaces and tabs. Lines that are empty or whose first non-blank
//!   character is `#` are ignored; there are no comments after a value.
//! * A line containing `{` opens a section, named by what comes before the
//!   first `{` (trailing `:` allowed: `totem: {`); nothing may follow it.
//! * Otherwise a line containing `:` is `key: value`, split at the first `:`
//!   (so IPv6 addresses work). Values are kept verbatim: corosync does not
//!   strip quotes, so neither does this parser.
//! * Otherwise a line containing `}` closes the innermost section and must
//!   consist of the `}` alone.
//! * A dotted key path (`nodelist.node.ring0_addr`) must stay below
//!   corosync's 256 byte key name limit, and a line below its 512 byte buffer.

use crate::ParseError;

/// corosync's `ICMAP_KEYNAME_MAXLEN`.
const KEYNAME_MAXLEN: usize = 256;
/// Longest line corosync's `fgets(line, 512, ...)` accepts, without the `\n`.
const MAX_LINE_LEN: usize = 510;

/// One `key: value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    key: String,
    value: String,
    line: usize,
}

impl Entry {
    /// The key, without the surrounding section path.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value, verbatim apart from leading and trailing blanks.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The line the entry is on.
    pub fn line(&self) -> usize {
        self.line
    }
}

/// A child of a [`Section`], in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Entry(Entry),
    Section(Section),
}

/// A `name { ... }` block; the whole file is the root section, named `""`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    name: String,
    line: usize,
    items: Vec<Item>,
}

impl Section {
    fn new(name: String, line: usize) -> Self {
        Self {
            name,
            line,
            items: Vec::new(),
        }
    }

    /// Parse the text of a corosync.conf into its key tree, without checking
    /// what the keys mean. The result is the root section.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        parse(bytes)
    }

    /// The section name (`""` for the root).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The line that opens the section (0 for the root).
    pub fn line(&self) -> usize {
        self.line
    }

    /// The entries and subsections, in file order.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// The value at a dotted path below this section, such as
    /// `"totem.cluster_name"`.
    ///
    /// When the path occurs more than once (a key repeated, or a section
    /// opened twice) the last one wins, as later values overwrite earlier
    /// ones in corosync's cmap. Repeated sections such as `nodelist.node`
    /// are better read one by one through [`Section::sections_at`].
    pub fn get(&self, path: &str) -> Option<&str> {
        self.entries_at(path).last().map(|entry| entry.value())
    }

    /// Every entry at a dotted path below this section, in file order.
    pub fn entries_at(&self, path: &str) -> Vec<&Entry> {
        let mut found = Vec::new();
        self.collect_entries(path, &mut found);
        found
    }

    /// Every section at a dotted path below this section, in file order:
    /// `sections_at("nodelist.node")` yields each `node { }` block of each
    /// `nodelist { }`.
    pub fn sections_at(&self, path: &str) -> Vec<&Section> {
        let mut found = Vec::new();
        self.collect_sections(path, &mut found);
        found
    }

    fn collect_entries<'a>(&'a self, path: &str, found: &mut Vec<&'a Entry>) {
        for item in &self.items {
            match item {
                Item::Entry(entry) if entry.key == path => found.push(entry),
                Item::Entry(_) => {}
                Item::Section(section) => {
                    if let Some(rest) = strip_path_prefix(path, &section.name) {
                        section.collect_entries(rest, found);
                    }
                }
            }
        }
    }

    fn collect_sections<'a>(&'a self, path: &str, found: &mut Vec<&'a Section>) {
        for item in &self.items {
            if let Item::Section(section) = item {
                if section.name == path {
                    found.push(section);
                } else if let Some(rest) = strip_path_prefix(path, &section.name) {
                    section.collect_sections(rest, found);
                }
            }
        }
    }
}

/// `path` with `prefix.` removed from its front, if it starts with that.
fn strip_path_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)?.strip_prefix('.')
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// An open section while parsing, with its full dotted path.
struct Open {
    section: Section,
    path: String,
}

/// The dotted path of `name` inside the section at `parent`, checked against
/// corosync's key name limit (`strlen(path) + strlen(name) + 1` must stay
/// below `ICMAP_KEYNAME_MAXLEN`).
fn child_path(parent: &str, name: &str, line: usize) -> Result<String, ParseError> {
    let path = if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    };
    if parent.len() + name.len() + 1 >= KEYNAME_MAXLEN {
        return Err(ParseError::PathTooLong { line, path });
    }
    Ok(path)
}

/// What one significant line says.
enum Line<'a> {
    Open(&'a str),
    Entry(&'a str, &'a str),
    Close,
}

/// See [`Section::parse`].
fn parse(bytes: &[u8]) -> Result<Section, ParseError> {
    let mut root = Section::new(String::new(), 0);
    let mut open: Vec<Open> = Vec::new();

    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = index + 1;
        let Some(line) = classify(decode_line(raw, line_no)?, line_no)? else {
            continue;
        };
        let parent = open.last().map_or("", |o| o.path.as_str());
        match line {
            Line::Open(name) => {
                let path = child_path(parent, name, line_no)?;
                open.push(Open {
                    section: Section::new(name.to_owned(), line_no),
                    path,
                });
            }
            Line::Entry(key, value) => {
                child_path(parent, key, line_no)?;
                let target = open.last_mut().map_or(&mut root, |o| &mut o.section);
                target.items.push(Item::Entry(Entry {
                    key: key.to_owned(),
                    value: value.to_owned(),
                    line: line_no,
                }));
            }
            Line::Close => {
                let done = open
                    .pop()
                    .ok_or(ParseError::UnexpectedCloseBrace { line: line_no })?;
                let target = open.last_mut().map_or(&mut root, |o| &mut o.section);
                target.items.push(Item::Section(done.section));
            }
        }
    }

    match open.pop() {
        None => Ok(root),
        Some(unclosed) => Err(ParseError::UnclosedSection {
            section: unclosed.path,
            line: unclosed.section.line,
        }),
    }
}

/// Check one raw line (without its `\n`) and strip its line ending and
/// trailing blanks.
fn decode_line(raw: &[u8], line: usize) -> Result<&str, ParseError> {
    if raw.len() > MAX_LINE_LEN {
        return Err(ParseError::LineTooLong {
            line,
            len: raw.len(),
            max: MAX_LINE_LEN,
        });
    }
    if raw.contains(&0) {
        return Err(ParseError::NulByte { line });
    }
    let text = std::str::from_utf8(raw).map_err(|_| ParseError::InvalidUtf8 { line })?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    Ok(text.trim_end_matches(is_blank))
}

/// Tell what a line says; `None` for empty lines and comments.
fn classify(text: &str, line: usize) -> Result<Option<Line<'_>>, ParseError> {
    let text = text.trim_start_matches(is_blank);
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }

    if let Some((head, tail)) = text.split_once('{') {
        let name = head.trim_end_matches(|c| is_blank(c) || c == ':');
        if name.is_empty() {
            return Err(ParseError::MissingSectionName { line });
        }
        if !tail.trim_matches(is_blank).is_empty() {
            return Err(ParseError::TextAfterOpenBrace { line });
        }
        return Ok(Some(Line::Open(name)));
    }

    if let Some((head, tail)) = text.split_once(':') {
        let key = head.trim_end_matches(is_blank);
        if key.is_empty() {
            return Err(ParseError::EmptyKey { line });
        }
        return Ok(Some(Line::Entry(key, tail.trim_matches(is_blank))));
    }

    if text.contains('}') {
        if text != "}" {
            return Err(ParseError::TextAroundCloseBrace { line });
        }
        return Ok(Some(Line::Close));
    }

    Err(ParseError::MissingColon { line })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Section, ParseError> {
        parse(text.as_bytes())
    }

    #[test]
    fn nested_sections_and_lookup() {
        let root = parse_str(
            "totem {\n  version: 2\n  interface {\n    linknumber: 0\n  }\n}\n\
             logging {\n  debug: off\n}\n",
        )
        .unwrap();
        assert_eq!(root.get("totem.version"), Some("2"));
        assert_eq!(root.get("totem.interface.linknumber"), Some("0"));
        assert_eq!(root.get("logging.debug"), Some("off"));
        assert_eq!(root.get("totem.debug"), None);
        assert_eq!(root.get("totem"), None);
        assert_eq!(root.get("totem.interface"), None);
        let totem = root.sections_at("totem");
        assert_eq!(totem.len(), 1);
        assert_eq!(totem[0].line(), 1);
        assert_eq!(totem[0].get("interface.linknumber"), Some("0"));
        assert_eq!(root.sections_at("totem.interface")[0].line(), 3);
    }

    #[test]
    fn comments_blanks_and_line_endings() {
        let root = parse_str(
            "# leading comment\n\n   \t\n  # indented comment\r\n\
             totem {\r\n\tcluster_name:\tpve \t\r\n  # key: ignored\n}\r\n",
        )
        .unwrap();
        assert_eq!(root.get("totem.cluster_name"), Some("pve"));
        assert_eq!(root.get("totem.# key"), None);
        assert_eq!(root.entries_at("totem.cluster_name")[0].line(), 6);
    }

    #[test]
    fn values_are_verbatim() {
        let root = parse_str(
            "a {\n  quoted: \"x y\"\n  v6: fe80::1\n  hash: 1 # not a comment\n  empty:\n  sp ace: 1\n}\n",
        )
        .unwrap();
        assert_eq!(root.get("a.quoted"), Some("\"x y\""));
        assert_eq!(root.get("a.v6"), Some("fe80::1"));
        assert_eq!(root.get("a.hash"), Some("1 # not a comment"));
        assert_eq!(root.get("a.empty"), Some(""));
        assert_eq!(root.get("a.sp ace"), Some("1"));
    }

    #[test]
    fn section_name_forms() {
        let root =
            parse_str("totem: {\n  a: 1\n}\nquorum{\n  b: 2\n}\nx.y {\n  c: 3\n}\n").unwrap();
        assert_eq!(root.get("totem.a"), Some("1"));
        assert_eq!(root.get("quorum.b"), Some("2"));
        assert_eq!(root.get("x.y.c"), Some("3"));
        assert_eq!(root.sections_at("x.y").len(), 1);
    }

    #[test]
    fn last_value_wins() {
        let root = parse_str("t {\n  a: 1\n  a: 2\n}\nt {\n  a: 3\n}\n").unwrap();
        assert_eq!(root.get("t.a"), Some("3"));
        let all: Vec<_> = root.entries_at("t.a").iter().map(|e| e.value()).collect();
        assert_eq!(all, ["1", "2", "3"]);
        assert_eq!(root.sections_at("t").len(), 2);
    }

    #[test]
    fn empty_input() {
        assert!(parse_str("").unwrap().items().is_empty());
        assert!(parse_str("\n\n# only comments\n")
            .unwrap()
            .items()
            .is_empty());
    }

    #[test]
    fn unbalanced_braces() {
        assert_eq!(
            parse_str("totem {\n  a: 1\n}\n}\n"),
            Err(ParseError::UnexpectedCloseBrace { line: 4 })
        );
        assert_eq!(
            parse_str("totem {\n  interface {\n    a: 1\n  }\n"),
            Err(ParseError::UnclosedSection {
                section: "totem".into(),
                line: 1
            })
        );
        assert_eq!(
            parse_str("totem {\n  interface {\n"),
            Err(ParseError::UnclosedSection {
                section: "totem.interface".into(),
                line: 2
            })
        );
    }

    #[test]
    fn malformed_lines() {
        assert_eq!(
            parse_str("totem {\n  cluster_name pve\n}\n"),
            Err(ParseError::MissingColon { line: 2 })
        );
        assert_eq!(
            parse_str("{\n}\n"),
            Err(ParseError::MissingSectionName { line: 1 })
        );
        assert_eq!(
            parse_str("totem { a: 1\n"),
            Err(ParseError::TextAfterOpenBrace { line: 1 })
        );
        // A `}` after a value is part of the value, so the section stays open.
        assert_eq!(
            parse_str("totem {\n a: 1 }\n"),
            Err(ParseError::UnclosedSection {
                section: "totem".into(),
                line: 1
            })
        );
        assert_eq!(
            parse_str("t {\n  : v\n}\n"),
            Err(ParseError::EmptyKey { line: 2 })
        );
        assert_eq!(
            parse_str("t {\n  a: 1\n} # end\n"),
            Err(ParseError::TextAroundCloseBrace { line: 3 })
        );
        // `{` is looked for before `:`, as corosync does.
        assert_eq!(
            parse_str("t {\n  a: b{c\n}\n"),
            Err(ParseError::TextAfterOpenBrace { line: 2 })
        );
    }

    #[test]
    fn byte_level_errors() {
        assert_eq!(
            parse(b"t {\n  a: \xff\n}\n"),
            Err(ParseError::InvalidUtf8 { line: 2 })
        );
        assert_eq!(
            parse(b"t {\n\n  a: \0\n}\n"),
            Err(ParseError::NulByte { line: 3 })
        );
        // "  a: " plus the value: 511 bytes do not fit, 510 do.
        let long = format!("t {{\n  a: {}\n}}\n", "x".repeat(MAX_LINE_LEN - 4));
        assert_eq!(
            parse_str(&long),
            Err(ParseError::LineTooLong {
                line: 2,
                len: MAX_LINE_LEN + 1,
                max: MAX_LINE_LEN
            })
        );
        let fits = format!("t {{\n  a: {}\n}}\n", "x".repeat(MAX_LINE_LEN - 5));
        assert!(parse_str(&fits).is_ok());
    }

    #[test]
    fn path_length_limit() {
        // "totem" + key + 1 must stay below 256.
        let key = "k".repeat(KEYNAME_MAXLEN - 7);
        let ok = format!("totem {{\n  {key}: 1\n}}\n");
        assert!(parse_str(&ok).is_ok());
        let key = "k".repeat(KEYNAME_MAXLEN - 6);
        let bad = format!("totem {{\n  {key}: 1\n}}\n");
        assert!(matches!(
            parse_str(&bad),
            Err(ParseError::PathTooLong { line: 2, .. })
        ));
        let deep = "a {\n".repeat(200);
        assert!(matches!(
            parse_str(&deep),
            Err(ParseError::PathTooLong { line: 129, .. })
        ));
    }
}
