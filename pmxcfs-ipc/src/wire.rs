//! Byte layouts of the libqb IPC protocol (qbipc_common.h, ipc_int.h) as
//! used by pmxcfs: the request and response headers that frame every
//! message, and the connection request/response exchanged on the setup
//! socket. All integers are little-endian (x86_64 host order); every struct
//! is 8-byte aligned, which is where the padding below comes from.

/// `struct qb_ipc_request_header`: `{i32 id @0, i32 size @8}`.
pub const REQUEST_HEADER_SIZE: usize = 16;
/// `struct qb_ipc_response_header`: `{i32 id @0, i32 size @8, i32 error @16}`.
pub const RESPONSE_HEADER_SIZE: usize = 24;

/// `struct qb_ipc_connection_request`: header + `u32 max_msg_size @16`.
pub const CONNECTION_REQUEST_SIZE: usize = 24;
/// `PATH_MAX`, the size of each path field of the connection response.
pub const QB_PATH_MAX: usize = 4096;
/// `struct qb_ipc_connection_response`: response header,
/// `i32 connection_type @24`, `u32 max_msg_size @28`, `intptr connection @32`,
/// `char request[4096] @40`, `char response[4096] @4136`,
/// `char event[4096] @8232`.
pub const CONNECTION_RESPONSE_SIZE: usize = 40 + 3 * QB_PATH_MAX;

/// `QB_IPC_MSG_AUTHENTICATE`: id of the connection request and response.
pub const MSG_AUTHENTICATE: i32 = -1;
/// `QB_IPC_MSG_DISCONNECT`: a request with this id ends the connection.
pub const MSG_DISCONNECT: i32 = -3;

/// `enum qb_ipc_type` values announced in the connection response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum IpcType {
    Socket = 0,
    Shm = 1,
}

fn i32_at(buf: &[u8], off: usize) -> Option<i32> {
    let b = buf.get(off..off.checked_add(4)?)?;
    Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u32_at(buf: &[u8], off: usize) -> Option<u32> {
    i32_at(buf, off).map(|v| v as u32)
}

/// Little-endian `u32` at `off`, if the buffer is long enough.
pub fn read_u32(buf: &[u8], off: usize) -> Option<u32> {
    u32_at(buf, off)
}

/// The header in front of every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    pub id: i32,
    /// Total message size the client claims, header included.
    pub size: i32,
}

impl RequestHeader {
    /// Decode the first 16 bytes; None if the message is shorter.
    pub fn parse(msg: &[u8]) -> Option<RequestHeader> {
        if msg.len() < REQUEST_HEADER_SIZE {
            return None;
        }
        Some(RequestHeader {
            id: i32_at(msg, 0)?,
            size: i32_at(msg, 8)?,
        })
    }

    /// Encode (padding bytes zero); used by tests and clients.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_SIZE] {
        let mut b = [0u8; REQUEST_HEADER_SIZE];
        b[0..4].copy_from_slice(&self.id.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b
    }
}

/// The header in front of every response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    pub id: i32,
    /// Total size, header included.
    pub size: i32,
    /// 0 or a negative errno.
    pub error: i32,
}

impl ResponseHeader {
    pub fn encode(&self) -> [u8; RESPONSE_HEADER_SIZE] {
        let mut b = [0u8; RESPONSE_HEADER_SIZE];
        b[0..4].copy_from_slice(&self.id.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b[16..20].copy_from_slice(&self.error.to_le_bytes());
        b
    }

    pub fn parse(msg: &[u8]) -> Option<ResponseHeader> {
        if msg.len() < RESPONSE_HEADER_SIZE {
            return None;
        }
        Some(ResponseHeader {
            id: i32_at(msg, 0)?,
            size: i32_at(msg, 8)?,
            error: i32_at(msg, 16)?,
        })
    }
}

/// The header of a response: `size` counts the header and the payload, the
/// payload is only sent on success (`result` Ok). A payload too large for
/// an `i32` size cannot be framed; callers limit payloads long before that.
pub fn response_header(id: i32, result: &Result<Vec<u8>, i32>) -> ResponseHeader {
    let (len, error) = match result {
        Ok(data) => (data.len(), 0),
        Err(e) => (0, *e),
    };
    ResponseHeader {
        id,
        size: i32::try_from(RESPONSE_HEADER_SIZE + len).unwrap_or(i32::MAX),
        error,
    }
}

/// The connection request a client sends first on the setup socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionRequest {
    pub id: i32,
    pub size: i32,
    /// The largest message the client wants to exchange.
    pub max_msg_size: u32,
}

impl ConnectionRequest {
    pub fn parse(buf: &[u8; CONNECTION_REQUEST_SIZE]) -> ConnectionRequest {
        let hdr = RequestHeader {
            id: i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]),
            size: i32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]),
        };
        ConnectionRequest {
            id: hdr.id,
            size: hdr.size,
            max_msg_size: u32::from_le_bytes([buf[16], buf[17], buf[18], buf[19]]),
        }
    }
}

/// The answer to a connection request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionResponse {
    /// 0 = accepted; anything else refuses the connection and the client's
    /// `qb_ipcc_connect` fails with `errno = -error`.
    pub error: i32,
    pub connection_type: IpcType,
    pub max_msg_size: u32,
    /// Opaque connection handle (libqb sends a pointer; clients ignore it).
    pub connection: u64,
    /// Name of the request channel (shm: ring buffer name without the
    /// `-header`/`-data` suffix).
    pub request: Vec<u8>,
    pub response: Vec<u8>,
    pub event: Vec<u8>,
}

/// A path does not fit a `PATH_MAX` field with its NUL.
#[derive(Debug, thiserror::Error)]
#[error("IPC path of {0} bytes does not fit PATH_MAX")]
pub struct PathTooLong(pub usize);

impl ConnectionResponse {
    /// A refusal: only the header is filled in.
    pub fn refused(error: i32) -> ConnectionResponse {
        ConnectionResponse {
            error,
            connection_type: IpcType::Socket,
            max_msg_size: 0,
            connection: 0,
            request: Vec::new(),
            response: Vec::new(),
            event: Vec::new(),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, PathTooLong> {
        let mut b = vec![0u8; CONNECTION_RESPONSE_SIZE];
        let hdr = ResponseHeader {
            id: MSG_AUTHENTICATE,
            size: CONNECTION_RESPONSE_SIZE as i32,
            error: self.error,
        };
        b[..RESPONSE_HEADER_SIZE].copy_from_slice(&hdr.encode());
        if self.error == 0 {
            b[24..28].copy_from_slice(&(self.connection_type as i32).to_le_bytes());
            b[28..32].copy_from_slice(&self.max_msg_size.to_le_bytes());
            b[32..40].copy_from_slice(&self.connection.to_le_bytes());
        }
        for (i, path) in [&self.request, &self.response, &self.event]
            .into_iter()
            .enumerate()
        {
            if path.len() >= QB_PATH_MAX {
                return Err(PathTooLong(path.len()));
            }
            let off = 40 + i * QB_PATH_MAX;
            b[off..off + path.len()].copy_from_slice(path);
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_layout() {
        let mut msg = vec![0u8; 20];
        msg[0..4].copy_from_slice(&6i32.to_le_bytes());
        msg[4..8].copy_from_slice(&[0xff; 4]); // padding is ignored
        msg[8..12].copy_from_slice(&20i32.to_le_bytes());
        assert_eq!(
            RequestHeader::parse(&msg),
            Some(RequestHeader { id: 6, size: 20 })
        );
        assert_eq!(RequestHeader::parse(&msg[..15]), None);
        assert_eq!(RequestHeader::parse(&[]), None);
        let h = RequestHeader { id: -3, size: 16 };
        assert_eq!(RequestHeader::parse(&h.encode()), Some(h));
    }

    #[test]
    fn response_header_layout() {
        let h = ResponseHeader {
            id: 5,
            size: 28,
            error: -2,
        };
        let b = h.encode();
        assert_eq!(&b[0..4], &5i32.to_le_bytes());
        assert_eq!(&b[4..8], &[0; 4]);
        assert_eq!(&b[8..12], &28i32.to_le_bytes());
        assert_eq!(&b[12..16], &[0; 4]);
        assert_eq!(&b[16..20], &(-2i32).to_le_bytes());
        assert_eq!(&b[20..24], &[0; 4]);
        assert_eq!(ResponseHeader::parse(&b), Some(h));
        assert_eq!(ResponseHeader::parse(&b[..23]), None);
    }

    #[test]
    fn response_header_sizes() {
        let ok = response_header(1, &Ok(vec![1, 2, 3]));
        assert_eq!((ok.id, ok.size, ok.error), (1, 27, 0));
        let err = response_header(9, &Err(-libc::ECHRNG));
        assert_eq!((err.id, err.size, err.error), (9, 24, -libc::ECHRNG));
    }

    #[test]
    fn connection_request_layout() {
        let mut b = [0u8; CONNECTION_REQUEST_SIZE];
        b[0..4].copy_from_slice(&(-1i32).to_le_bytes());
        b[8..12].copy_from_slice(&24i32.to_le_bytes());
        b[16..20].copy_from_slice(&(1u32 << 20).to_le_bytes());
        let r = ConnectionRequest::parse(&b);
        assert_eq!(r.id, MSG_AUTHENTICATE);
        assert_eq!(r.size, 24);
        assert_eq!(r.max_msg_size, 1 << 20);
    }

    #[test]
    fn connection_response_layout() {
        let r = ConnectionResponse {
            error: 0,
            connection_type: IpcType::Shm,
            max_msg_size: 1 << 20,
            connection: 7,
            request: b"/dev/shm/a".to_vec(),
            response: b"/dev/shm/b".to_vec(),
            event: b"/dev/shm/c".to_vec(),
        };
        let b = r.encode().unwrap();
        assert_eq!(b.len(), 12328);
        let hdr = ResponseHeader::parse(&b).unwrap();
        assert_eq!((hdr.id, hdr.size, hdr.error), (-1, 12328, 0));
        assert_eq!(&b[24..28], &1i32.to_le_bytes());
        assert_eq!(&b[28..32], &(1u32 << 20).to_le_bytes());
        assert_eq!(&b[32..40], &7u64.to_le_bytes());
        assert_eq!(&b[40..51], b"/dev/shm/a\0");
        assert_eq!(&b[4136..4147], b"/dev/shm/b\0");
        assert_eq!(&b[8232..8243], b"/dev/shm/c\0");

        let refused = ConnectionResponse::refused(1).encode().unwrap();
        assert_eq!(refused.len(), 12328);
        assert_eq!(&refused[16..20], &1i32.to_le_bytes());
        assert!(refused[24..].iter().all(|&x| x == 0));

        let long = ConnectionResponse {
            request: vec![b'a'; QB_PATH_MAX],
            ..r
        };
        assert!(long.encode().is_err());
    }
}
