"""logger: the cluster log over IPC and `.clusterlog` (COMPAT.md sections 5,
6 and 8; checklist item 10 single node).

LOG_CLUSTER_MSG and GET_CLUSTER_LOG go through the real libqb client
(lib/qb.py); the pid of an entry is the pid of that qbclient process."""

import json
import time

from lib import qb
from lib.harness import TestFailure, check, eq, read, www_data_gid
from lib.qb import EINVAL, EPERM, OK, get_log, log_msg

KEYS = ["uid", "time", "pri", "tag", "pid", "node", "user", "msg"]


def _parse(raw, what):
    try:
        j = json.loads(raw)
    except ValueError as e:
        raise TestFailure(f"{what} is not valid JSON ({e}): {raw[:300]!r}")
    check(isinstance(j, dict) and list(j) == ["data"] and isinstance(j["data"], list), f"{what}: not {{\"data\": [...]}}: {raw[:200]!r}")
    for e in j["data"]:
        eq(list(e), KEYS, f"{what}: keys of an entry")
    return j["data"]


def _log(svc, *msgs, creds=None):
    """Send LOG_CLUSTER_MSG payloads from one client; returns (client pid, errors)."""
    cmds = []
    for p in msgs:
        cmds += ["req", qb.OP_LOG_CLUSTER_MSG, qb.hexarg(p)]
    r = qb.run(svc, *cmds, creds=creds)
    lines = r.replies()
    eq(len(lines), len(msgs), f"replies to LOG_CLUSTER_MSG ({r.describe()})")
    return r.pid, [qb.check_reply(l, qb.OP_LOG_CLUSTER_MSG, "LOG_CLUSTER_MSG")[0] for l in lines]


def _dump(svc, max_entries=0, user="", **kw):
    return qb.ok(svc, qb.OP_GET_CLUSTER_LOG, get_log(max_entries, user, **kw), what=f"GET_CLUSTER_LOG max {max_entries} user {user!r}")


def _start_entry_ok(e, what):
    eq((e["msg"], e["node"], e["user"], e["tag"], e["pri"]), ("starting cluster log", "testnode", "root", "cluster", 6),
       f"{what}: oldest entry")


def test_item10_log_then_get(t):
    """item 10: LOG_CLUSTER_MSG then GET_CLUSTER_LOG returns the entry with the client's pid, node, user (ident), tag, priority, time; newest first, start entry at the bottom."""
    d = t.daemon()
    svc = d.ipc_name
    t0 = int(time.time())
    pid1, errs = _log(svc, log_msg(5, "root@pam", "vzdump", "first message"))
    eq(errs, [OK], "LOG_CLUSTER_MSG result")
    pid2, errs = _log(svc, log_msg(3, "alice@pve", "qmstart", "second message"))
    eq(errs, [OK], "LOG_CLUSTER_MSG result")
    t1 = int(time.time())
    data = _parse(_dump(svc), "GET_CLUSTER_LOG")
    eq(len(data), 3, f"entry count: {data}")
    e2, e1, start = data
    eq({k: e1[k] for k in ("pri", "tag", "pid", "node", "user", "msg")},
       {"pri": 5, "tag": "vzdump", "pid": pid1, "node": "testnode", "user": "root@pam", "msg": "first message"},
       "first logged entry")
    eq({k: e2[k] for k in ("pri", "tag", "pid", "node", "user", "msg")},
       {"pri": 3, "tag": "qmstart", "pid": pid2, "node": "testnode", "user": "alice@pve", "msg": "second message"},
       "second logged entry")
    check(t0 <= e1["time"] <= e2["time"] <= t1, f"entry times {e1['time']}, {e2['time']} not within [{t0}, {t1}]")
    check(e2["uid"] > e1["uid"] > start["uid"], f"uids not increasing with age: {[e['uid'] for e in data]}")
    _start_entry_ok(start, "GET_CLUSTER_LOG")


def test_item10_at_most_50_and_max_n(t):
    """item 10: max 0 gives the newest 50 entries, newest first; max N gives N; a larger max gives all."""
    d = t.daemon()
    svc = d.ipc_name
    pid, errs = _log(svc, *[log_msg(6, "root@pam", "t", f"msg {i}") for i in range(60)])
    eq(errs, [OK] * 60, "60 LOG_CLUSTER_MSG results")
    data = _parse(_dump(svc, 0), "max 0")
    eq([e["msg"] for e in data], [f"msg {i}" for i in range(59, 9, -1)], "max 0: the newest 50, newest first")
    check(all(e["pid"] == pid for e in data), "pid of the entries")
    uids = [e["uid"] for e in data]
    eq(uids, sorted(uids, reverse=True), "uids newest first")
    eq(len(set(uids)), 50, "distinct uids")
    eq([e["msg"] for e in _parse(_dump(svc, 5), "max 5")], [f"msg {i}" for i in range(59, 54, -1)], "max 5")
    eq([e["msg"] for e in _parse(_dump(svc, 1), "max 1")], ["msg 59"], "max 1")
    full = _parse(_dump(svc, 100), "max 100")
    eq(len(full), 61, "max 100: all 60 entries + the start entry")
    _start_entry_ok(full[-1], "max 100")


def test_user_filter(t):
    """GET_CLUSTER_LOG filters by user (the ident) unless "": max counts only matches; a user without final NUL loses its last byte; payload of 16 bytes or less -EINVAL."""
    d = t.daemon()
    svc = d.ipc_name
    msgs = []
    for i in range(6):
        msgs.append(log_msg(6, "alice@pve", "t", f"a{i}"))
        msgs.append(log_msg(6, "bob@pve", "t", f"b{i}"))
    eq(_log(svc, *msgs)[1], [OK] * 12, "LOG results")
    eq([e["msg"] for e in _parse(_dump(svc, 0, "alice@pve"), "alice")], [f"a{i}" for i in range(5, -1, -1)], "user alice@pve")
    eq([e["msg"] for e in _parse(_dump(svc, 0, "bob@pve"), "bob")], [f"b{i}" for i in range(5, -1, -1)], "user bob@pve")
    eq([e["msg"] for e in _parse(_dump(svc, 2, "alice@pve"), "alice max 2")], ["a5", "a4"], "user alice@pve max 2")
    eq([e["msg"] for e in _parse(_dump(svc, 0, "alice@pveX", nul=False), "no NUL")], [f"a{i}" for i in range(5, -1, -1)],
       "user alice@pveX without NUL (last byte dropped)")
    eq(_parse(_dump(svc, 0, "carol@pve"), "carol"), [], "unknown user")
    eq(_dump(svc, 0, "carol@pve"), b'{\n"data": [\n]\n}\n', "bytes of an empty result")
    eq([e["user"] for e in _parse(_dump(svc, 0, "root"), "root")], ["root"], "user root: the start entry")
    res = qb.calls(svc, [(qb.OP_GET_CLUSTER_LOG, b""), (qb.OP_GET_CLUSTER_LOG, get_log(0, "")[:16])], what="short GET_CLUSTER_LOG")
    eq([e for e, _ in res], [EINVAL, EINVAL], "GET_CLUSTER_LOG with 0 and 16 payload bytes")


def test_priority_8_and_more_not_stored(t):
    """LOG_CLUSTER_MSG with priority >= 8 returns success but stores nothing; 0..7 are stored."""
    d = t.daemon()
    svc = d.ipc_name
    before = _dump(svc)
    eq(_log(svc, log_msg(8, "root@pam", "t", "p8"), log_msg(255, "root@pam", "t", "p255"))[1], [OK, OK], "priority 8 and 255")
    eq(_dump(svc), before, "cluster log after priority >= 8")
    eq(_log(svc, log_msg(0, "root@pam", "t", "p0"), log_msg(7, "root@pam", "t", "p7"))[1], [OK, OK], "priority 0 and 7")
    eq([(e["pri"], e["msg"]) for e in _parse(_dump(svc, 2), "after 0 and 7")], [(7, "p7"), (0, "p0")], "stored priorities")


def test_log_payload_errors(t):
    """LOG_CLUSTER_MSG: empty msg (no msg bytes) -EINVAL; a msg that is only a NUL is accepted; ident/tag not NUL-terminated or too short a payload -EINVAL."""
    d = t.daemon()
    svc = d.ipc_name
    before = _dump(svc)
    bad = [
        log_msg(5, "root@pam", "t", "", msg_nul=False),  # msg_len 0
        b"",
        b"\x05\x01",
        bytes([5, 4, 2]) + b"rootxt\0m\0",  # ident not NUL-terminated at ident_len - 1
        bytes([5, 5, 2]) + b"root\0tx" + b"m\0",  # tag not NUL-terminated
        bytes([5, 200, 2]) + b"root\0t\0m\0",  # lengths beyond the payload
    ]
    pid, errs = _log(svc, *bad)
    eq(errs, [EINVAL] * len(bad), "errors of malformed LOG_CLUSTER_MSG payloads")
    eq(_dump(svc), before, "cluster log after the malformed requests")
    pid, errs = _log(svc, log_msg(5, "root@pam", "t", ""))
    eq(errs, [OK], "LOG_CLUSTER_MSG with a msg that is only a NUL")
    e = _parse(_dump(svc, 1), "after the NUL-only msg")[0]
    eq((e["msg"], e["user"], e["tag"], e["pid"]), ("", "root@pam", "t", pid), "entry of the NUL-only msg")


def test_read_only_client_eperm(t):
    """item 7: a read-only (www-data) client gets -EPERM for LOG_CLUSTER_MSG and nothing is stored; it may read the log."""
    d = t.daemon()
    svc = d.ipc_name
    gid = www_data_gid()
    before = _dump(svc)
    for creds in ((qb.WWW_DATA_UID, gid), (0, gid)):
        pid, errs = _log(svc, log_msg(5, "root@pam", "t", "from www-data"), creds=creds)
        eq(errs, [EPERM], f"LOG_CLUSTER_MSG as uid {creds[0]} gid {creds[1]}")
        eq(qb.ok(svc, qb.OP_GET_CLUSTER_LOG, get_log(0, ""), creds=creds), before,
           f"GET_CLUSTER_LOG as uid {creds[0]} gid {creds[1]}")
    eq(_dump(svc), before, "cluster log after the refused writes")


def test_json_escaping(t):
    """The cluster log JSON always parses: tag and user with `"` or `\\` are escaped (C bug fixed, section 8); msg: `"`, `\\`, control chars as #NNN, non-ASCII as \\uXXXX, outside the BMP dropped, invalid UTF-8 as ?."""
    d = t.daemon()
    svc = d.ipc_name
    cases = [
        (log_msg(5, 'us"er\\x', 'ta"g\\', 'say "hi" C:\\dir'), 'us"er\\x', 'ta"g\\', 'say "hi" C:\\dir'),
        (log_msg(5, "root@pam", "t", "line1\nline2\ttab"), "root@pam", "t", "line1#010line2#009tab"),
        (log_msg(5, "root@pam", "t", "gr\u00fc\u00dfe \u20ac"), "root@pam", "t", "gr\u00fc\u00dfe \u20ac"),
        (log_msg(5, "root@pam", "t", "x\U0001F600y"), "root@pam", "t", "xy"),
        (log_msg(5, "root@pam", "t", b"a\xffb"), "root@pam", "t", "a?b"),
    ]
    pid, errs = _log(svc, *[c[0] for c in cases])
    eq(errs, [OK] * len(cases), "LOG results")
    raw = _dump(svc, len(cases))
    data = _parse(raw, "GET_CLUSTER_LOG with quotes")
    got = [(e["user"], e["tag"], e["msg"]) for e in reversed(data)]
    eq(got, [c[1:] for c in cases], "user/tag/msg after JSON decoding")
    check(b'\\u00fc' in raw, f"non-ASCII not written as \\uXXXX: {raw!r}")
    fuse = read(d.path(".clusterlog"))
    _parse(fuse, ".clusterlog with quotes")


def test_clusterlog_file_matches_ipc(t):
    """.clusterlog shows the same bytes as GET_CLUSTER_LOG max 0 (at most 50 entries), 'starting cluster log' at the bottom while it fits."""
    d = t.daemon()
    svc = d.ipc_name
    pid, errs = _log(svc, *[log_msg(6, "root@pam", "t", f"m{i}") for i in range(10)])
    eq(errs, [OK] * 10, "LOG results")
    f = read(d.path(".clusterlog"))
    eq(f, _dump(svc, 0), ".clusterlog vs GET_CLUSTER_LOG max 0 (11 entries)")
    data = _parse(f, ".clusterlog")
    eq(len(data), 11, ".clusterlog entry count")
    eq(data[0]["msg"], "m9", ".clusterlog newest entry first")
    check(data[0]["pid"] == pid, f".clusterlog pid {data[0]['pid']} != client pid {pid}")
    _start_entry_ok(data[-1], ".clusterlog")
    check(f.startswith(b'{\n"data": [\n{"uid": ') and f.endswith(b'"}\n]\n}\n'), f".clusterlog framing: {f[:40]!r} ... {f[-20:]!r}")
    eq(f.count(b"\n"), 4 + 11, ".clusterlog: one line per entry")
    pid, errs = _log(svc, *[log_msg(6, "root@pam", "t", f"n{i}") for i in range(45)])
    eq(errs, [OK] * 45, "LOG results")
    f = read(d.path(".clusterlog"))
    eq(f, _dump(svc, 0), ".clusterlog vs GET_CLUSTER_LOG max 0 (56 entries)")
    data = _parse(f, ".clusterlog")
    eq([e["msg"] for e in data], [f"n{i}" for i in range(44, -1, -1)] + [f"m{i}" for i in range(9, 4, -1)],
       ".clusterlog: the newest 50")


def _perl_ascii(s):
    """What PVE::Cluster::log_msg sends for ident and msg:
    encode("ascii", $s, sub { sprintf "\\u%04x", shift })."""
    return "".join(c if ord(c) < 128 else "\\u%04x" % ord(c) for c in s)


def test_non_ascii_fields_decode_to_what_the_client_sent(t):
    """Through GET_CLUSTER_LOG and .clusterlog, decoded as the Perl stack does (JSON): user, tag and msg with non-ASCII come back as sent, whether the client sent \\uXXXX (PVE::Cluster log_msg) or raw UTF-8; quotes and backslashes around them stay valid JSON."""
    d = t.daemon()
    svc = d.ipc_name
    cases = [
        # (user, tag, msg) as the client meant them; sent the Perl way
        ("r\u00e9user@pve", "qm\u00e4", "VM 100 \u00fcber Br\u00fccke"),
        ('q"uo\\te\u00e9@pve', 't"a\\g\u00f6', 'say "\u00e9" C:\\dir\\'),
    ]
    msgs = [log_msg(5, _perl_ascii(u), _perl_ascii(g), _perl_ascii(m)) for u, g, m in cases]
    # and raw UTF-8 from another client
    msgs.append(log_msg(5, "r\u00e9user@pve", "t\u00e4g", "caf\u00e9"))
    want = cases + [("r\u00e9user@pve", "t\u00e4g", "caf\u00e9")]
    pid, errs = _log(svc, *msgs)
    eq(errs, [OK] * len(msgs), "LOG results")
    for raw, what in ((_dump(svc, len(msgs)), "GET_CLUSTER_LOG"), (read(d.path(".clusterlog")), ".clusterlog")):
        data = _parse(raw, what)[: len(msgs)]
        got = [(e["user"], e["tag"], e["msg"]) for e in reversed(data)]
        eq(got, want, f"{what}: (user, tag, msg) after JSON decoding")
        eq({e["node"] for e in data}, {"testnode"}, f"{what}: node")
    # the Perl-encoded user is what the entry's filter digest was made of
    data = _parse(_dump(svc, 0, _perl_ascii("r\u00e9user@pve")), "filtered by the encoded user")
    eq([e["msg"] for e in data], [want[0][2]], "entries of user r\\u00e9user@pve")
