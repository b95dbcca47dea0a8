//! Decoding of pmxcfs requests (server.c `s1_msg_process_fn`, the request
//! structs at its top and cfs-ipc-ops.h) into a typed [`Request`].
//!
//! [`parse_request`] sees the request id and the payload, i.e. the bytes
//! after the 16-byte header up to the size the header claims. Offsets in the
//! comments are relative to the payload. C strings are handed on as their
//! bytes without the NUL, cut at the first NUL exactly as the C server's
//! `char *` would be. Where the C server forces a NUL into the last byte of
//! a field or of the message, the last byte is dropped here too (a payload
//! without its final NUL "loses its last byte", COMPAT.md section 8).
//!
//! The decoder never panics and never looks past the payload; where the C
//! server would read past the end of a short message, the request is
//! invalid (EINVAL).

use pmxcfs_api_types::Errno;

use crate::wire::read_u32;

/// Size of the fixed name fields of SET_STATUS and GET_STATUS.
pub const STATUS_NAME_SIZE: usize = 256;

/// The operation numbers of cfs-ipc-ops.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum OpId {
    GetFsVersion = 1,
    GetClusterInfo = 2,
    GetGuestList = 3,
    SetStatus = 4,
    GetStatus = 5,
    GetConfig = 6,
    LogClusterMsg = 7,
    GetClusterLog = 8,
    GetRrdDump = 10,
    GetGuestConfigProperty = 11,
    VerifyToken = 12,
    GetGuestConfigProperties = 13,
}

impl OpId {
    pub fn from_i32(id: i32) -> Option<OpId> {
        Some(match id {
            1 => OpId::GetFsVersion,
            2 => OpId::GetClusterInfo,
            3 => OpId::GetGuestList,
            4 => OpId::SetStatus,
            5 => OpId::GetStatus,
            6 => OpId::GetConfig,
            7 => OpId::LogClusterMsg,
            8 => OpId::GetClusterLog,
            10 => OpId::GetRrdDump,
            11 => OpId::GetGuestConfigProperty,
            12 => OpId::VerifyToken,
            13 => OpId::GetGuestConfigProperties,
            _ => return None,
        })
    }

    /// Operations a read-only (www-data) client may not use at all; the C
    /// server answers EPERM before it looks at the payload.
    pub fn is_write(self) -> bool {
        matches!(self, OpId::SetStatus | OpId::LogClusterMsg)
    }
}

/// Which guests a guest-config query is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestSelector {
    /// vmid 0: every registered guest.
    All,
    /// One VMID (>= 100); it must be registered.
    Vmid(u32),
}

/// A decoded request. Byte slices borrow from the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// 1: `.version`.
    GetFsVersion,
    /// 2: `.members`.
    GetClusterInfo,
    /// 3: `.vmlist`.
    GetGuestList,
    /// 4: `char name[256]` then the data.
    SetStatus { name: &'a [u8], data: &'a [u8] },
    /// 5: `char name[256]`, `char nodename[256]`; an empty node means this
    /// node.
    GetStatus { name: &'a [u8], node: &'a [u8] },
    /// 6: the path, NUL-terminated.
    GetConfig { path: &'a [u8] },
    /// 7: `u8 priority, u8 ident_len, u8 tag_len`, then ident, tag and
    /// message, each NUL-terminated (the lengths include the NULs).
    LogClusterMsg {
        priority: u8,
        ident: &'a [u8],
        tag: &'a [u8],
        msg: &'a [u8],
    },
    /// 8: `u32 max_entries`, three reserved `u32`, the user, NUL-terminated.
    /// `max_entries` 0 is passed on as 0 (the C server uses 50).
    GetClusterLog { max_entries: u32, user: &'a [u8] },
    /// 10: the RRD dump.
    GetRrdDump,
    /// 11: `u32 vmid`, the property, NUL-terminated. The property is not
    /// validated (as in C).
    GetGuestConfigProperty {
        guests: GuestSelector,
        property: &'a [u8],
    },
    /// 12: `userid tokenid-secret`, NUL-terminated.
    VerifyToken { token: &'a [u8] },
    /// 13: `u32 vmid, u8 num_props`, then the properties, each
    /// NUL-terminated, non-empty and starting with `a`-`z`.
    GetGuestConfigProperties {
        guests: GuestSelector,
        properties: Vec<&'a [u8]>,
    },
    /// 11 or 13 with a valid VMID >= 100 but a malformed rest. The C
    /// server checks that the guest exists first (ENOENT), then answers
    /// `errno` for the rest.
    GuestConfigMalformed { vmid: u32, errno: Errno },
}

/// The bytes of a C string stored in `field`: up to the first NUL, or all
/// of it when there is none.
pub fn c_str(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

/// A C string in a field whose last byte the C server overwrites with NUL.
fn c_str_forced(field: &[u8]) -> &[u8] {
    c_str(&field[..field.len().saturating_sub(1)])
}

/// Decode one request. `payload` is the message after the 16-byte header,
/// limited to the size the header claims.
pub fn parse_request(id: i32, payload: &[u8]) -> Result<Request<'_>, Errno> {
    let op = OpId::from_i32(id).ok_or(Errno::ECHRNG)?;
    let p = payload;
    match op {
        OpId::GetFsVersion | OpId::GetClusterInfo | OpId::GetGuestList | OpId::GetRrdDump => {
            if !p.is_empty() {
                return Err(Errno::EINVAL);
            }
            Ok(match op {
                OpId::GetFsVersion => Request::GetFsVersion,
                OpId::GetClusterInfo => Request::GetClusterInfo,
                OpId::GetGuestList => Request::GetGuestList,
                _ => Request::GetRrdDump,
            })
        }
        OpId::SetStatus => {
            if p.len() < STATUS_NAME_SIZE {
                return Err(Errno::EINVAL);
            }
            Ok(Request::SetStatus {
                name: c_str_forced(&p[..STATUS_NAME_SIZE]),
                data: &p[STATUS_NAME_SIZE..],
            })
        }
        OpId::GetStatus => {
            if p.len() < 2 * STATUS_NAME_SIZE {
                return Err(Errno::EINVAL);
            }
            Ok(Request::GetStatus {
                name: c_str_forced(&p[..STATUS_NAME_SIZE]),
                node: c_str_forced(&p[STATUS_NAME_SIZE..2 * STATUS_NAME_SIZE]),
            })
        }
        OpId::GetConfig => {
            if p.is_empty() {
                return Err(Errno::EINVAL);
            }
            Ok(Request::GetConfig {
                path: c_str_forced(p),
            })
        }
        OpId::LogClusterMsg => parse_log_msg(p),
        OpId::GetClusterLog => {
            // u32 max_entries + 3 reserved u32, then at least one byte.
            if p.len() <= 16 {
                return Err(Errno::EINVAL);
            }
            Ok(Request::GetClusterLog {
                max_entries: read_u32(p, 0).ok_or(Errno::EINVAL)?,
                user: c_str_forced(&p[16..]),
            })
        }
        OpId::GetGuestConfigProperty => {
            let (guests, rest) = parse_vmid(p, 4)?;
            if rest.is_empty() {
                return malformed(guests, Errno::EINVAL);
            }
            Ok(Request::GetGuestConfigProperty {
                guests,
                property: c_str_forced(rest),
            })
        }
        OpId::GetGuestConfigProperties => {
            let (guests, rest) = parse_vmid(p, 5)?;
            let num_props = p[4];
            match parse_properties(num_props, rest) {
                Ok(properties) => Ok(Request::GetGuestConfigProperties { guests, properties }),
                Err(e) => malformed(guests, e),
            }
        }
        OpId::VerifyToken => parse_token(p),
    }
}

/// The VMID at offset 0 (1..=99 is invalid) and the payload from `rest_at`.
fn parse_vmid(p: &[u8], rest_at: usize) -> Result<(GuestSelector, &[u8]), Errno> {
    let vmid = read_u32(p, 0).ok_or(Errno::EINVAL)?;
    let guests = match vmid {
        0 => GuestSelector::All,
        1..=99 => return Err(Errno::EINVAL),
        v => GuestSelector::Vmid(v),
    };
    let rest = p.get(rest_at..).ok_or(Errno::EINVAL)?;
    Ok((guests, rest))
}

/// A guest query with a valid selector but a bad rest. For one VMID the C
/// server first checks that the guest exists (ENOENT), so the decision is
/// left to the caller; for all guests it is `errno` right away.
fn malformed(guests: GuestSelector, errno: Errno) -> Result<Request<'static>, Errno> {
    match guests {
        GuestSelector::All => Err(errno),
        GuestSelector::Vmid(vmid) => Ok(Request::GuestConfigMalformed { vmid, errno }),
    }
}

fn parse_properties(num_props: u8, mut rest: &[u8]) -> Result<Vec<&[u8]>, Errno> {
    if num_props == 0 || rest.len() <= 1 {
        return Err(Errno::EINVAL);
    }
    let mut props = Vec::with_capacity(num_props as usize);
    for _ in 0..num_props {
        let len = rest.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
        if len == 0 || !rest[0].is_ascii_lowercase() {
            return Err(Errno::EINVAL);
        }
        props.push(&rest[..len]);
        rest = &rest[len + 1..];
    }
    if !rest.is_empty() {
        return Err(Errno::EINVAL);
    }
    Ok(props)
}

fn parse_log_msg(p: &[u8]) -> Result<Request<'_>, Errno> {
    if p.len() < 3 {
        return Err(Errno::EINVAL);
    }
    let (priority, ident_len, tag_len) = (p[0], p[1] as usize, p[2] as usize);
    let data = &p[3..];
    // msg_len = datasize - ident_len - tag_len must be >= 1.
    if data.len() < ident_len + tag_len + 1 {
        return Err(Errno::EINVAL);
    }
    // Both lengths count a NUL: zero lengths make the C server alias the
    // strings onto each other; refuse them.
    if ident_len == 0 || tag_len == 0 {
        return Err(Errno::EINVAL);
    }
    if data[ident_len - 1] != 0 || data[ident_len + tag_len - 1] != 0 {
        return Err(Errno::EINVAL);
    }
    Ok(Request::LogClusterMsg {
        priority,
        ident: c_str(&data[..ident_len]),
        tag: c_str(&data[ident_len..ident_len + tag_len]),
        msg: c_str(&data[ident_len + tag_len..]),
    })
}

fn parse_token(p: &[u8]) -> Result<Request<'_>, Errno> {
    // tokenlen = payload - 1 (the NUL) must be > 0.
    if p.len() < 2 {
        return Err(Errno::EINVAL);
    }
    let (token, nul) = p.split_at(p.len() - 1);
    if token.contains(&b'\n') || nul[0] != 0 || token.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(Request::VerifyToken { token })
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
