//! A client of rrdcached's text protocol over its unix socket (rrdcached(1),
//! "PROTOCOL"), speaking what librrd's `rrd_client.c` sends:
//!
//! - a command is one line: words separated by one space, a space or
//!   backslash inside a word escaped with a backslash, ended by `\n`; the
//!   whole line is at most 4096 bytes (`RRD_CMD_MAX`, the client's buffer);
//! - the answer is a status line `<int> <message>`; a negative status is an
//!   error, a positive one is the number of lines that follow;
//! - file names are absolute (for a unix socket the client library sends
//!   `realpath()` of the file; with `-B` the daemon accepts only paths
//!   under its base directory);
//! - `UPDATE <file> <value>`: rrdcached takes only absolute timestamps, so
//!   a leading `N:` is replaced by the current time, as the library does.
//!
//! Commands used: `UPDATE`, `FLUSH`, `FORGET`.

use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{send, MsgFlags};

/// Longest command line, newline included (`RRD_CMD_MAX` of rrd_client.h).
pub const CMD_MAX: usize = 4096;
/// Longest response line we read.
const LINE_MAX: u64 = 64 * 1024;
/// Most continuation lines we accept after a status line.
const LINES_MAX: i64 = 10_000;

/// What went wrong talking to rrdcached.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtoError {
    #[error("connect: {0}")]
    Connect(io::Error),
    /// Sending failed: nothing or part of the command reached the daemon.
    #[error("send: {0}")]
    Send(io::Error),
    #[error("receive: {0}")]
    Receive(io::Error),
    #[error("connection closed by rrdcached")]
    Closed,
    #[error("malformed status line {0:?}")]
    BadStatus(String),
    #[error("too many response lines ({0})")]
    TooManyLines(i64),
    #[error("command is {0} bytes, the protocol allows {CMD_MAX}")]
    TooLong(usize),
    #[error("a word of the command contains a newline or NUL")]
    BadWord,
    /// The daemon answered with a negative status.
    #[error("{status} {message}")]
    Failed { status: i64, message: String },
}

/// A successful response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: i64,
    pub message: String,
    pub lines: Vec<String>,
}

/// The command line for `words`: escaped, space-separated, newline-ended.
pub(crate) fn command_line(words: &[&str]) -> Result<Vec<u8>, ProtoError> {
    let mut line = Vec::new();
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            line.push(b' ');
        }
        for &b in word.as_bytes() {
            match b {
                b'\n' | b'\r' | 0 => return Err(ProtoError::BadWord),
                b' ' | b'\\' => line.extend_from_slice(&[b'\\', b]),
                _ => line.push(b),
            }
        }
    }
    line.push(b'\n');
    if line.len() > CMD_MAX {
        return Err(ProtoError::TooLong(line.len()));
    }
    Ok(line)
}

/// Parses a status line like C's `strtol` + message (leading whitespace
/// skipped, then an optional sign and decimal digits).
pub(crate) fn parse_status(line: &str) -> Result<(i64, String), ProtoError> {
    let bad = || ProtoError::BadStatus(line.chars().take(200).collect());
    let text = line.trim_start();
    let digits_start = usize::from(text.starts_with(['-', '+']));
    let digits_end = text[digits_start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(text.len(), |i| i + digits_start);
    if digits_end == digits_start {
        return Err(bad());
    }
    let status = text[..digits_end].parse::<i64>().map_err(|_| bad())?;
    let message = text[digits_end..]
        .trim_start_matches([' ', '\t'])
        .to_string();
    Ok((status, message))
}

/// The value as rrdcached wants it: `N:` replaced by `now`.
pub(crate) fn absolute_value(value: &str, now: u64) -> String {
    match value.strip_prefix("N:") {
        Some(rest) => format!("{now}:{rest}"),
        None => value.to_string(),
    }
}

/// One connection to rrdcached.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Connection {
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, ProtoError> {
        let stream = UnixStream::connect(socket).map_err(ProtoError::Connect)?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(ProtoError::Connect)?;
        let reader = BufReader::new(stream.try_clone().map_err(ProtoError::Connect)?);
        Ok(Connection { stream, reader })
    }

    fn send_all(&self, mut buf: &[u8]) -> Result<(), ProtoError> {
        while !buf.is_empty() {
            // MSG_NOSIGNAL: a daemon gone away is EPIPE, not SIGPIPE
            match send(self.stream.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
                Ok(0) => return Err(ProtoError::Send(io::ErrorKind::WriteZero.into())),
                Ok(n) => buf = &buf[n..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(ProtoError::Send(e.into())),
            }
        }
        Ok(())
    }

    fn read_line(&mut self) -> Result<String, ProtoError> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(LINE_MAX)
            .read_until(b'\n', &mut buf)
            .map_err(ProtoError::Receive)?;
        if n == 0 {
            return Err(ProtoError::Closed);
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Sends one command and reads its whole response. A negative status is
    /// [`ProtoError::Failed`].
    pub fn request(&mut self, words: &[&str]) -> Result<Response, ProtoError> {
        let line = command_line(words)?;
        self.send_all(&line)?;
        let (status, message) = parse_status(&self.read_line()?)?;
        if status < 0 {
            return Err(ProtoError::Failed { status, message });
        }
        if status > LINES_MAX {
            return Err(ProtoError::TooManyLines(status));
        }
        let mut lines = Vec::new();
        for _ in 0..status {
            lines.push(self.read_line()?);
        }
        Ok(Response {
            status,
            message,
            lines,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn command_lines_are_escaped() {
        assert_eq!(
            command_line(&["UPDATE", "/a b/c\\d", "1:2:3"]).unwrap(),
            b"UPDATE /a\\ b/c\\\\d 1:2:3\n".to_vec()
        );
        assert!(matches!(
            command_line(&["UPDATE", "a\nb"]),
            Err(ProtoError::BadWord)
        ));
        let long = "1".repeat(CMD_MAX);
        assert!(matches!(
            command_line(&["UPDATE", &long]),
            Err(ProtoError::TooLong(_))
        ));
        let fits = "1".repeat(CMD_MAX - "UPDATE \n".len());
        assert_eq!(command_line(&["UPDATE", &fits]).unwrap().len(), CMD_MAX);
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status("0 errors, enqueued 1 value(s).").unwrap(),
            (0, "errors, enqueued 1 value(s).".into())
        );
        assert_eq!(
            parse_status("-1 No such file: /x").unwrap(),
            (-1, "No such file: /x".into())
        );
        assert_eq!(parse_status("  9 Statistics follow").unwrap().0, 9);
        assert_eq!(parse_status("0").unwrap(), (0, String::new()));
        assert!(parse_status("").is_err());
        assert!(parse_status("x 1").is_err());
        assert!(parse_status("-").is_err());
        assert!(parse_status("99999999999999999999999 x").is_err());
    }

    #[test]
    fn n_becomes_now() {
        assert_eq!(absolute_value("N:1:2", 1_700_000_000), "1700000000:1:2");
        assert_eq!(
            absolute_value("1699999999:1:2", 1_700_000_000),
            "1699999999:1:2"
        );
    }

    /// A fake daemon answering each line with the next canned response.
    fn fake(
        responses: &'static [&'static str],
    ) -> (tempfile::TempDir, std::thread::JoinHandle<Vec<String>>) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut seen = Vec::new();
            for resp in responses {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                seen.push(line);
                writer.write_all(resp.as_bytes()).unwrap();
            }
            seen
        });
        (dir, handle)
    }

    #[test]
    fn request_reads_status_and_lines() {
        let (dir, server) = fake(&[
            "0 errors, enqueued 1 value(s).\n",
            "2 Two lines follow\nfirst\r\nsecond\n",
            "-1 No such file: /x\n",
        ]);
        let mut c = Connection::connect(&dir.path().join("sock"), Duration::from_secs(5)).unwrap();
        let r = c.request(&["UPDATE", "/f", "1:2"]).unwrap();
        assert_eq!(r.status, 0);
        let r = c.request(&["STATS"]).unwrap();
        assert_eq!(r.lines, vec!["first".to_string(), "second".to_string()]);
        match c.request(&["FLUSH", "/x"]) {
            Err(ProtoError::Failed {
                status: -1,
                message,
            }) => {
                assert_eq!(message, "No such file: /x")
            }
            other => panic!("{other:?}"),
        }
        let seen = server.join().unwrap();
        assert_eq!(seen, vec!["UPDATE /f 1:2\n", "STATS\n", "FLUSH /x\n"]);
        // the fake daemon is gone now
        assert!(c.request(&["FLUSH", "/x"]).is_err());
    }

    #[test]
    fn connect_to_nothing_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Connection::connect(&dir.path().join("none"), Duration::from_secs(1)),
            Err(ProtoError::Connect(_))
        ));
    }

    #[test]
    fn silent_daemon_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        // connected (in the backlog) but never answered
        let mut c = Connection::connect(&sock, Duration::from_millis(200)).unwrap();
        assert!(matches!(
            c.request(&["FLUSH", "/x"]),
            Err(ProtoError::Receive(_))
        ));
    }
}
