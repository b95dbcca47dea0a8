"""libqb IPC for the integration tests: the REAL libqb client library.

`pmxcfs-ipc/tests/qbclient.c` (a scriptable libqb client, see its header
comment) is compiled once per run with `cc -O1 -o <tmp>/qbclient qbclient.c
-lqb` into a temp dir that lives until the runner exits. A compile failure
fails every test that needs it, with the compiler's reason (never a skip).

Clients that must run as another user are started with real set*id calls
(subprocess user=/group=/extra_groups=[]: setgroups([]), setgid, setuid before
exec), so the daemon sees those credentials through the kernel.

    r = run(svc, "req", 1, "-")              # one client, any commands
    err, data = call(svc, OP_GET_FS_VERSION) # one request, header checked
    out = calls(svc, [(op, payload), ...])   # several requests, one client
    c = spawn(svc, ...); ...; res = c.finish()
    f = flood(svc, creds, n, ...); f.summary; ...; f.release()

Request payload encoders: name256, cstr, set_status, get_status, log_msg,
get_log, vmid_prop, vmid_props, raw_msg. Errors are negative errno values.
"""

import errno
import json
import os
import time
import select
import shutil
import struct
import subprocess
import sys
import threading

from lib import harness
from lib.harness import TestFailure

QBCLIENT_SRC = os.path.join(harness.REPO_ROOT, "pmxcfs-ipc", "tests", "qbclient.c")

OP_GET_FS_VERSION = 1
OP_GET_CLUSTER_INFO = 2
OP_GET_GUEST_LIST = 3
OP_SET_STATUS = 4
OP_GET_STATUS = 5
OP_GET_CONFIG = 6
OP_LOG_CLUSTER_MSG = 7
OP_GET_CLUSTER_LOG = 8
OP_GET_RRD_DUMP = 10
OP_GET_GUEST_CONFIG_PROPERTY = 11
OP_VERIFY_TOKEN = 12
OP_GET_GUEST_CONFIG_PROPERTIES = 13

REQ_HEADER = 16
RESP_HEADER = 24
MAX_MSG = 1024 * 1024

OK = 0
EPERM = -errno.EPERM
ENOENT = -errno.ENOENT
EIO = -errno.EIO
ENOMEM = -errno.ENOMEM
EEXIST = -errno.EEXIST
EINVAL = -errno.EINVAL
EFBIG = -errno.EFBIG
ECHRNG = -errno.ECHRNG
ENOBUFS = -errno.ENOBUFS

ROOT = (0, 0)
NOBODY = (65534, 65534)
WWW_DATA_UID = 33


def errstr(e):
    if e is None:
        return "None"
    if e == 0:
        return "0"
    name = errno.errorcode.get(-e) if e < 0 else None
    return f"-{name}" if name else str(e)


# --------------------------------------------------------------------------
# building the client

_build_lock = threading.Lock()
_build = {"path": None, "error": None}


def qbclient():
    """Path of the compiled qbclient (compiled on first use, once per run)."""
    with _build_lock:
        if _build["path"]:
            return _build["path"]
        if _build["error"]:
            raise TestFailure(_build["error"])
        try:
            _build["path"] = _compile()
        except TestFailure as e:
            _build["error"] = str(e)
            raise
        return _build["path"]


def _compile():
    if not os.path.isfile(QBCLIENT_SRC):
        raise TestFailure(f"qbclient source missing: {QBCLIENT_SRC}")
    cc = shutil.which("cc")
    if cc is None:
        raise TestFailure("cannot build the libqb client: no `cc` in PATH (apt-get install gcc libqb-dev)")
    # a temp dir outside every test's ExitStack: removed by cleanup_all() at exit;
    # under /tmp and 0755 (never inside the repo, which may lie under a
    # directory other users cannot enter, such as /root) so that clients run
    # as www-data or nobody can execute it
    tmp = harness.TempDir()
    out = os.path.join(tmp.path, "qbclient")
    cmd = [cc, "-O1", "-o", out, QBCLIENT_SRC, "-lqb"]
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    except subprocess.TimeoutExpired:
        raise TestFailure(f"compiling the libqb client timed out: {' '.join(cmd)}")
    if p.returncode != 0:
        msg = " | ".join(p.stdout.decode(errors="replace").strip().splitlines()[-4:])
        raise TestFailure(
            f"cannot compile the libqb client ({' '.join(cmd)}, exit {p.returncode}; "
            f"is libqb-dev installed?): {msg}"
        )
    os.chmod(out, 0o755)  # also run as www-data / nobody
    return out


# --------------------------------------------------------------------------
# payload encoders


def _b(s):
    return s.encode() if isinstance(s, str) else bytes(s)


def hexarg(payload):
    return payload.hex() if payload else "-"


def name256(s):
    """A char[256] field: the bytes, NUL-padded to 256 (no NUL if 256 long)."""
    b = _b(s)
    if len(b) > 256:
        raise ValueError("name longer than 256 bytes")
    return b + b"\0" * (256 - len(b))


def cstr(s):
    return _b(s) + b"\0"


def set_status(name, data):
    return name256(name) + _b(data)


def get_status(name, node=""):
    return name256(name) + name256(node)


def log_msg(prio, ident, tag, msg, *, msg_nul=True):
    """LOG_CLUSTER_MSG: u8 prio, u8 ident_len, u8 tag_len, ident NUL, tag NUL, msg NUL."""
    ident, tag, msg = _b(ident), _b(tag), _b(msg)
    return bytes([prio, len(ident) + 1, len(tag) + 1]) + ident + b"\0" + tag + b"\0" + msg + (b"\0" if msg_nul else b"")


def get_log(max_entries, user, *, nul=True):
    """GET_CLUSTER_LOG: u32 max, 3 x u32 reserved, user NUL."""
    return struct.pack("<4I", max_entries, 0, 0, 0) + _b(user) + (b"\0" if nul else b"")


def vmid_prop(vmid, prop):
    """op 11: u32 vmid + property (give the NUL yourself)."""
    return struct.pack("<I", vmid) + _b(prop)


def vmid_props(vmid, n, props):
    """op 13: u32 vmid, u8 n, the property bytes as given."""
    return struct.pack("<IB", vmid, n) + _b(props)


def raw_msg(op, size, payload=b""):
    """A request with an arbitrary header size field: {i32 id @0, i32 size @8}."""
    return struct.pack("<i4xi4x", op, size) + _b(payload)


# --------------------------------------------------------------------------
# running clients


class Line:
    """One output line of qbclient."""

    def __init__(self, text):
        self.text = text
        f = text.split()
        self.kind = f[0] if f else ""
        self.res = self.id = self.size = self.error = None
        self.data = None
        self.value = None
        if self.kind == "REPLY" and len(f) == 6:
            self.res = int(f[1])
            if f[2] != "-":
                self.id, self.size, self.error = int(f[2]), int(f[3]), int(f[4])
                self.data = b"" if f[5] == "-" else bytes.fromhex(f[5])
        elif self.kind in ("CONNECT_FAIL", "FAIL", "SENT") and len(f) == 2:
            self.value = int(f[1])
        elif self.kind == "REPEAT" and len(f) == 3:
            self.value = int(f[1])

    def __repr__(self):
        t = self.text
        return repr(t if len(t) <= 120 else t[:117] + "...")


class Result:
    def __init__(self, argv, pid, rc, out, err):
        self.argv = argv
        self.pid = pid
        self.rc = rc
        self.stdout = out.decode(errors="replace")
        self.stderr = err.decode(errors="replace")
        self.lines = [Line(l) for l in self.stdout.splitlines() if l.strip()]

    def describe(self):
        s = f"qbclient pid {self.pid} exit {self.rc}, output {self.lines[:6]!r}"
        if self.stderr.strip():
            s += f", stderr {self.stderr.strip()[:200]!r}"
        return s

    def connected(self):
        return bool(self.lines) and self.lines[0].kind == "CONNECTED"

    def replies(self):
        """The lines after CONNECTED (fails if the connect failed)."""
        if not self.connected():
            raise TestFailure(f"libqb client could not connect: {self.describe()}")
        return self.lines[1:]


def _argv(service, cmds, max_size):
    a = [qbclient(), service]
    if max_size is not None:
        a += ["--max", str(max_size)]
    return a + [str(c) for c in cmds]


def _cred_kwargs(creds):
    if creds is None:
        return {}
    uid, gid = creds
    return {"user": uid, "group": gid, "extra_groups": []}


class Client:
    """A qbclient process running in the background (registered for cleanup)."""

    def __init__(self, service, cmds, creds=None, max_size=None):
        self.argv = _argv(service, cmds, max_size)
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            **_cred_kwargs(creds),
        )
        self.pid = self.popen.pid
        self.watch = harness.ProcWatch(self.pid, self.popen)
        harness.register_proc(self.watch)
        self._early = b""

    def wait_lines(self, n, timeout=10):
        """Wait until the client has printed n lines (kept for finish());
        returns them."""
        import select
        fd = self.popen.stdout.fileno()
        end = time.monotonic() + timeout
        while self._early.count(b"\n") < n and time.monotonic() < end:
            r, _, _ = select.select([fd], [], [], 0.05)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                self._early += chunk
        return [Line(l) for l in self._early.decode(errors="replace").splitlines() if l.strip()]

    def finish(self, timeout=20):
        try:
            out, err = self.popen.communicate(timeout=timeout)
            out = self._early + out
        except subprocess.TimeoutExpired:
            self.popen.kill()
            out, err = self.popen.communicate()
            out = self._early + out
            raise TestFailure(
                f"libqb client {self.argv[2:8]} did not finish within {timeout}s "
                f"(daemon not answering?); output so far {out.decode(errors='replace')[:300]!r}"
            )
        return Result(self.argv, self.pid, self.popen.returncode, out, err)

    def kill(self, sig):
        self.watch.signal(sig)


def spawn(service, *cmds, creds=None, max_size=None):
    return Client(service, cmds, creds, max_size)


def run(service, *cmds, creds=None, max_size=None, timeout=20):
    """Run one qbclient with the given commands; returns a Result."""
    return Client(service, cmds, creds, max_size).finish(timeout)


def check_reply(line, op, what):
    """Checks the 24-byte response header of a REPLY line; returns (error, data)."""
    if line.kind == "FAIL":
        raise TestFailure(f"{what}: libqb client failed with {errstr(line.value)} ({line.value}) instead of a reply")
    if line.kind != "REPLY" or line.id is None:
        raise TestFailure(f"{what}: expected a reply, got {line!r}")
    if line.id != op:
        raise TestFailure(f"{what}: reply id {line.id}, expected {op}")
    if line.size != line.res:
        raise TestFailure(f"{what}: reply header size {line.size} != {line.res} bytes received")
    if line.res != RESP_HEADER + len(line.data):
        raise TestFailure(f"{what}: {line.res} bytes received but header + payload = {RESP_HEADER}+{len(line.data)}")
    if line.error != 0 and line.data:
        raise TestFailure(f"{what}: error reply {errstr(line.error)} carries {len(line.data)} payload bytes")
    return line.error, line.data


def calls(service, reqs, *, creds=None, what="", bufsize=None):
    """Send [(op, payload), ...] over one connection; returns [(error, data), ...]."""
    cmds = []
    if bufsize is not None:
        cmds += ["bufsize", bufsize]
    for op, payload in reqs:
        cmds += ["req", op, hexarg(_b(payload))]
    r = run(service, *cmds, creds=creds)
    lines = r.replies()
    if len(lines) != len(reqs):
        raise TestFailure(f"{what or 'requests'}: expected {len(reqs)} replies, got {r.describe()}")
    return [check_reply(l, op, f"{what} op {op}".strip()) for l, (op, _) in zip(lines, reqs)]


def expect_replies(service, op, cases, *, what=""):
    """Send every (payload, errno, data) case as one `op` request over one
    connection and require exactly that error and reply data for each."""
    res = calls(service, [(op, p) for p, _, _ in cases], what=what)
    bad = [
        f"{p!r}: got ({errstr(e)}, {data[:40]!r}), expected ({errstr(we)}, {wd[:40]!r})"
        for (p, we, wd), (e, data) in zip(cases, res)
        if (e, data) != (we, wd)
    ]
    if bad:
        raise TestFailure("; ".join(bad))


def call(service, op, payload=b"", *, creds=None, what=None):
    """One request over a fresh connection; returns (error, data)."""
    return calls(service, [(op, payload)], creds=creds, what=what or f"op {op}")[0]


def ok(service, op, payload=b"", *, creds=None, what=None):
    """One request that must succeed; returns the reply data."""
    label = what or f"op {op}"
    err, data = call(service, op, payload, creds=creds, what=label)
    if err != 0:
        raise TestFailure(f"{label}: expected success, got {errstr(err)}")
    return data


def expect(service, op, payload, expected, *, creds=None, what=None):
    """One request that must answer with error `expected` (0 or -errno)."""
    label = what or f"op {op}"
    err, data = call(service, op, payload, creds=creds, what=label)
    if err != expected:
        raise TestFailure(f"{label}: expected {errstr(expected)}, got {errstr(err)}")
    return data


def shm_dirs(server_pid, client_pid=None):
    """libqb connection dirs /dev/shm/qb-<server pid>-<client pid>-*."""
    prefix = f"qb-{server_pid}-" + (f"{client_pid}-" if client_pid is not None else "")
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))
    except OSError:
        return []


def fd_count(pid):
    """Number of open descriptors of a process (/proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


# --------------------------------------------------------------------------
# hostile floods: many raw connections of one user, from one process

# Runs as root only to raise its own RLIMIT_NOFILE, then drops to the given
# uid/gid for real (setgroups([]), setgid, setuid) before the first connect.
# Opens N stream connections to the abstract socket as libqb does (name
# padded with NULs to 107 bytes); with mode "request" each sends the libqb
# connection request right after connect (id -1, size 24, max_msg_size),
# with "silent" nothing. A connect that blocks for 1 s (backlog full: the
# server no longer accepts) ends the attempts. Then it watches all sockets
# for `collect` seconds and prints one JSON line: per socket the outcome
# "accepted" (response error 0, connection held), "refused:<error>" (response
# error, then closed), "closed" (closed without a response) or "open"
# (nothing happened). It then holds every socket until stdin closes.
_FLOOD_HELPER = r"""
import json, os, resource, selectors, socket, struct, sys, time
svc, uid, gid, n, mode, max_size, collect = sys.argv[1:8]
uid, gid, n, max_size, collect = int(uid), int(gid), int(n), int(max_size), float(collect)
want = n + 64
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
ids = (os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups())
if ids != (uid, uid, gid, gid, []):
    print(json.dumps({"error": f"privileges not dropped: {ids}"}), flush=True)
    sys.exit(1)
addr = b"\0" + svc.encode().ljust(107, b"\0")
request = struct.pack("<i4xi4xI4x", -1, 24, max_size)
RESP = 12328
socks, errors = [], {}
t0 = time.monotonic()
for i in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(addr)
    except OSError as e:
        s.close()
        name = type(e).__name__ if e.errno is None else os.strerror(e.errno)
        errors[name] = errors.get(name, 0) + 1
        if isinstance(e, socket.timeout):
            break
        continue
    state = {"buf": b"", "out": None}
    if mode == "request":
        try:
            s.sendall(request)
        except OSError:
            state["out"] = "closed"
    s.setblocking(False)
    socks.append((s, state))
connect_s = time.monotonic() - t0
sel = selectors.DefaultSelector()
for s, st in socks:
    if st["out"] is None:
        sel.register(s, selectors.EVENT_READ, st)
deadline = time.monotonic() + collect
while sel.get_map() and time.monotonic() < deadline:
    for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
        s, st = key.fileobj, key.data
        try:
            data = s.recv(RESP - len(st["buf"]) if len(st["buf"]) < RESP else 4096)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if len(st["buf"]) < RESP and data:
            st["buf"] += data
            if len(st["buf"]) == RESP:
                err = struct.unpack_from("<i", st["buf"], 16)[0]
                if err == 0:
                    st["out"] = "accepted"
                    sel.unregister(s)
            continue
        if not data:
            if len(st["buf"]) == RESP:
                st["out"] = "refused:%d" % struct.unpack_from("<i", st["buf"], 16)[0]
            else:
                st["out"] = "closed"
            sel.unregister(s)
outcomes = {}
for s, st in socks:
    o = st["out"]
    if o is None:
        o = "refused-open:%d" % struct.unpack_from("<i", st["buf"], 16)[0] if len(st["buf"]) == RESP else "open"
    outcomes[o] = outcomes.get(o, 0) + 1
print(json.dumps({"connected": len(socks), "connect_errors": errors, "connect_seconds": round(connect_s, 2),
                  "outcomes": outcomes}), flush=True)
sys.stdin.read()
"""


class Flood:
    """A flood helper process (see _FLOOD_HELPER), registered for cleanup."""

    def __init__(self, service, creds, n, mode="request", max_size=MAX_MSG, collect=1.5):
        uid, gid = creds
        self.argv = [sys.executable, "-c", _FLOOD_HELPER, service, uid, gid, n, mode, max_size, collect]
        self.popen = subprocess.Popen(
            [str(a) for a in self.argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
        )
        self.pid = self.popen.pid
        self.watch = harness.ProcWatch(self.pid, self.popen)
        harness.register_proc(self.watch)
        self.summary = None

    def wait_summary(self, timeout):
        """The helper's JSON summary (after its attempts and `collect` seconds)."""
        r, _, _ = select.select([self.popen.stdout], [], [], timeout)
        line = self.popen.stdout.readline() if r else b""
        if not line:
            self.release()
            raise TestFailure(
                f"flood helper gave no summary within {timeout}s "
                f"(stderr {self.popen.stderr.read().decode(errors='replace')[-300:]!r})"
            )
        self.summary = json.loads(line)
        if "error" in self.summary:
            raise TestFailure(f"flood helper: {self.summary['error']}")
        return self.summary

    def outcome(self, name):
        return self.summary["outcomes"].get(name, 0)

    def release(self):
        """Close every socket of the helper and let it exit."""
        if self.popen.poll() is None:
            try:
                self.popen.stdin.close()
            except OSError:
                pass
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for f in (self.popen.stdout, self.popen.stderr):
            f.close()


def flood(service, creds, n, *, mode="request", max_size=MAX_MSG, collect=1.5, timeout=30):
    """Open n connections as creds (uid, gid); returns the Flood holding them
    (its .summary is filled in). Call .release() when done."""
    f = Flood(service, creds, n, mode, max_size, collect)
    f.wait_summary(timeout)
    return f
