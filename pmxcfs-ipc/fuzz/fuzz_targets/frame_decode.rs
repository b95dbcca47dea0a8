//! Fuzz target: the framing layer (`pmxcfs_ipc::wire`) on whole messages as
//! they arrive in the request ring, header included.
//!
//! The input is one message. It goes through what the server does with it:
//! `RequestHeader::parse`, the size check of the header (the payload ends at
//! `size`, which must be >= 16 and within the message) and `parse_request`
//! on that payload. Alongside, the same bytes feed the other decoders of the
//! module: `ConnectionRequest::parse` (first 24 bytes), `ResponseHeader::parse`
//! and `read_u32`, and the encoders are checked to round-trip:
//! `RequestHeader`/`ResponseHeader` encode -> parse gives the same values,
//! `response_header` counts header + payload, and `ConnectionResponse::encode`
//! (ring names cut from the input) is always 12328 bytes or `PathTooLong`.
//!
//!     cargo +nightly fuzz run frame_decode

#![no_main]

use libfuzzer_sys::fuzz_target;
use pmxcfs_ipc::wire::{
    read_u32, response_header, ConnectionRequest, ConnectionResponse, IpcType, RequestHeader,
    ResponseHeader, CONNECTION_REQUEST_SIZE, CONNECTION_RESPONSE_SIZE, MSG_DISCONNECT, QB_PATH_MAX,
    REQUEST_HEADER_SIZE, RESPONSE_HEADER_SIZE,
};
use pmxcfs_ipc::{parse_request, OpId};

fn le_i32(b: &[u8], off: usize) -> i32 {
    i32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// The request path: header, size check, payload decoder.
fn request_path(msg: &[u8]) {
    let Some(hdr) = RequestHeader::parse(msg) else {
        assert!(msg.len() < REQUEST_HEADER_SIZE);
        return;
    };
    assert!(msg.len() >= REQUEST_HEADER_SIZE);
    assert_eq!(hdr.id, le_i32(msg, 0));
    assert_eq!(hdr.size, le_i32(msg, 8));

    // Encoding keeps id and size, zeroes the padding.
    let enc = hdr.encode();
    assert_eq!(RequestHeader::parse(&enc), Some(hdr));
    assert_eq!(&enc[4..8], &[0; 4]);
    assert_eq!(&enc[12..16], &[0; 4]);

    if hdr.id == MSG_DISCONNECT {
        return;
    }
    let Ok(end) = usize::try_from(hdr.size) else {
        return;
    };
    if end < REQUEST_HEADER_SIZE || end > msg.len() {
        return;
    }
    let payload = &msg[REQUEST_HEADER_SIZE..end];
    let result = parse_request(hdr.id, payload);
    if OpId::from_i32(hdr.id).is_none() {
        assert_eq!(result.map_err(|e| e.0), Err(44), "unknown op not ECHRNG");
    }
}

/// The response side: header parse/encode round trip and size accounting.
fn response_path(msg: &[u8]) {
    match ResponseHeader::parse(msg) {
        None => assert!(msg.len() < RESPONSE_HEADER_SIZE),
        Some(h) => {
            assert_eq!((h.id, h.size, h.error), (le_i32(msg, 0), le_i32(msg, 8), le_i32(msg, 16)));
            assert_eq!(ResponseHeader::parse(&h.encode()), Some(h));
        }
    }
    let id = msg.first().map_or(0, |&b| i32::from(b as i8));
    let ok = response_header(id, &Ok(msg.to_vec()));
    assert_eq!(ok.id, id);
    assert_eq!(ok.error, 0);
    assert_eq!(ok.size as usize, RESPONSE_HEADER_SIZE + msg.len());
    let errno = -(msg.len() as i32 % 200) - 1;
    let err = response_header(id, &Err(errno));
    assert_eq!((err.size as usize, err.error), (RESPONSE_HEADER_SIZE, errno));
}

/// The setup socket: connection request decode, connection response encode.
fn connection_path(msg: &[u8]) {
    if let Some(buf) = msg.first_chunk::<CONNECTION_REQUEST_SIZE>() {
        let r = ConnectionRequest::parse(buf);
        assert_eq!((r.id, r.size), (le_i32(buf, 0), le_i32(buf, 8)));
        assert_eq!(r.max_msg_size, read_u32(buf, 16).unwrap());
    }
    for off in [0, 1, msg.len().saturating_sub(4), msg.len()] {
        let v = read_u32(msg, off);
        assert_eq!(v.is_some(), off + 4 <= msg.len());
    }

    // Ring names: two slices of the input cut at points chosen by its first
    // bytes, and the input repeated to 0..5100 bytes (byte 2 times 20), so
    // that names at and beyond PATH_MAX occur.
    let total = msg.len();
    let byte = |i: usize| msg.get(i).map_or(0, |&b| usize::from(b));
    let cut = |i: usize| byte(i) * 64 % (total + 1);
    let (a, b) = (cut(0).min(cut(1)), cut(0).max(cut(1)));
    let long: Vec<u8> = msg.iter().copied().cycle().take(byte(2) * 20).collect();
    let names = [msg[..a].to_vec(), msg[a..b].to_vec(), long];
    let too_long = names.iter().any(|n| n.len() >= QB_PATH_MAX);
    let resp = ConnectionResponse {
        error: 0,
        connection_type: IpcType::Shm,
        max_msg_size: 1 << 20,
        connection: total as u64,
        request: names[0].clone(),
        response: names[1].clone(),
        event: names[2].clone(),
    };
    match resp.encode() {
        Ok(bytes) => {
            assert!(!too_long);
            assert_eq!(bytes.len(), CONNECTION_RESPONSE_SIZE);
            let hdr = ResponseHeader::parse(&bytes).unwrap();
            assert_eq!((hdr.size as usize, hdr.error), (CONNECTION_RESPONSE_SIZE, 0));
            for (i, name) in names.iter().enumerate() {
                let field = &bytes[40 + i * QB_PATH_MAX..40 + (i + 1) * QB_PATH_MAX];
                assert_eq!(&field[..name.len()], &name[..]);
                assert_eq!(field[name.len()], 0, "ring name not NUL-terminated");
            }
        }
        Err(_) => assert!(too_long),
    }
    let refused = ConnectionResponse::refused(1).encode().unwrap();
    assert_eq!(refused.len(), CONNECTION_RESPONSE_SIZE);
}

fuzz_target!(|data: &[u8]| {
    request_path(data);
    response_path(data);
    connection_path(data);
});
