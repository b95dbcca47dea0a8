//! Who may connect (server.c `s1_connection_accept_fn`).

/// What a connected client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// uid 0 with gid 0.
    ReadWrite,
    /// gid www-data (whatever the uid, root included): no SET_STATUS, no
    /// LOG_CLUSTER_MSG, no private paths with GET_CONFIG.
    ReadOnly,
}

/// The credentials of a client, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The access of a client, or None to refuse it. A gid of www-data makes a
/// connection read-only even for uid 0.
pub fn check_access(cred: &Credentials, www_data_gid: u32) -> Option<Access> {
    if cred.gid == www_data_gid {
        Some(Access::ReadOnly)
    } else if cred.uid == 0 && cred.gid == 0 {
        Some(Access::ReadWrite)
    } else {
        None
    }
}

/// The `error` a refused client finds in its connection response. The C
/// accept callback returns 1 and libqb passes it through, so the client's
/// `qb_ipcc_connect` fails with `errno = -1` (COMPAT.md section 8).
pub const REFUSED_ERROR: i32 = 1;

/// May a read-only client not read this path with GET_CONFIG? True if the
/// C check (`path_is_private`) says so, and also when the path only becomes
/// private after empty components are dropped (`nodes/n//priv/x`, which the
/// C check misses but the tree lookup resolves to `nodes/n/priv/x`).
pub fn is_private_path(path: &[u8]) -> bool {
    c_path_is_private(path) || normalized_is_private(path)
}

/// cfs-utils.c `path_is_private`, on bytes.
fn c_path_is_private(path: &[u8]) -> bool {
    let start = path.iter().position(|&b| b != b'/').unwrap_or(path.len());
    let path = &path[start..];
    let priv_at = |p: &[u8]| p.starts_with(b"priv") && matches!(p.get(4), None | Some(b'/'));
    if priv_at(path) {
        return true;
    }
    if let Some(rest) = path.strip_prefix(b"nodes/") {
        if let Some(slash) = rest.iter().position(|&b| b == b'/') {
            return priv_at(&rest[slash + 1..]);
        }
    }
    false
}

fn normalized_is_private(path: &[u8]) -> bool {
    let mut parts = path.split(|&b| b == b'/').filter(|c| !c.is_empty());
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(b"priv"), _, _) | (Some(b"nodes"), Some(_), Some(b"priv"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(uid: u32, gid: u32) -> Credentials {
        Credentials { pid: 1, uid, gid }
    }

    #[test]
    fn access_rules() {
        assert_eq!(check_access(&c(0, 0), 33), Some(Access::ReadWrite));
        assert_eq!(check_access(&c(0, 33), 33), Some(Access::ReadOnly));
        assert_eq!(check_access(&c(33, 33), 33), Some(Access::ReadOnly));
        assert_eq!(check_access(&c(1000, 33), 33), Some(Access::ReadOnly));
        assert_eq!(check_access(&c(1000, 0), 33), None);
        assert_eq!(check_access(&c(0, 1000), 33), None);
        assert_eq!(check_access(&c(65534, 65534), 33), None);
        // www-data gid 0 would make root read-only: the gid rule wins.
        assert_eq!(check_access(&c(0, 0), 0), Some(Access::ReadOnly));
    }

    #[test]
    fn private_paths() {
        for p in [
            "priv",
            "/priv",
            "priv/",
            "priv/x",
            "//priv//x",
            "nodes/a/priv",
            "nodes/a/priv/x",
            "/nodes/a/priv/",
            "nodes//priv",
            "nodes/a//priv/x",
            "nodes//a/priv",
        ] {
            assert!(is_private_path(p.as_bytes()), "{p}");
        }
        for p in [
            "",
            "/",
            "private",
            "privx/y",
            "storage.cfg",
            "nodes",
            "nodes/a",
            "nodes/a/privx",
            "nodes/a/qemu-server/100.conf",
            "x/priv",
            "nodes/a/b/priv",
        ] {
            assert!(!is_private_path(p.as_bytes()), "{p}");
        }
        assert!(is_private_path(b"priv/\xff"));
    }
}
