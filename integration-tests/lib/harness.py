"""Harness for the pmxcfs integration tests.

Everything a test starts is registered here (daemon pids, mount points, temp
dirs) so that the runner can tear it down even when a test fails, times out, or
the runner itself gets SIGINT/SIGTERM/SIGHUP.

Public API used by the test modules:

    Daemon(tmp=None, **options)   context manager: a pmxcfs instance
    TempDir()                     context manager: a unique dir under /tmp
    TestFailure, check(), eq(), expect_errno(), wait_for()
    mounted(path), read(path), write(path, data), sha256_file(path)
    timeout(seconds)              decorator: per-test time limit

With `integration-tests/test --c-binary PATH` the same tests also run
against a C pmxcfs (Config.mode "c"): see "the C daemon" below.
"""

import ctypes
import errno
import grp
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TMP_PREFIX = "pmxcfs-it-"

# --------------------------------------------------------------------------
# errors and assertions


class TestFailure(Exception):
    """A test assertion failed; the message is the one-line reason."""


class TestTimeout(BaseException):
    """Raised in the main thread by the watchdog when a test exceeds its limit.

    A BaseException so that a test's `except Exception` cannot swallow it."""


class RunnerInterrupted(BaseException):
    """SIGTERM/SIGHUP received by the runner."""


class NotRunnableOnC(BaseException):
    """The test needs something the C daemon cannot do (an option only ours
    has, two daemons at once); raised in C mode, reported as `not run against
    C`. A BaseException so that a test's `except Exception` cannot swallow it."""


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def eq(actual, expected, what):
    if actual != expected:
        raise TestFailure(f"{what}: expected {expected!r}, got {actual!r}")


def errname(e):
    return errno.errorcode.get(e, str(e)) if e is not None else "success"


def expect_errno(expected, fn, *args, what=None, **kwargs):
    """Call fn(*args) and require it to fail with OSError.errno == expected.

    `expected` may be an int or a tuple of acceptable errno values."""
    exp = expected if isinstance(expected, tuple) else (expected,)
    label = what or f"{getattr(fn, '__name__', fn)}{tuple(_short(a) for a in args)}"
    try:
        res = fn(*args, **kwargs)
    except OSError as e:
        if e.errno in exp:
            return e
        raise TestFailure(
            f"{label}: expected {'/'.join(errname(x) for x in exp)}, got {errname(e.errno)} ({e})"
        )
    raise TestFailure(
        f"{label}: expected {'/'.join(errname(x) for x in exp)}, but it succeeded (returned {_short(res)})"
    )


def expect_ok(fn, *args, what=None, **kwargs):
    label = what or f"{getattr(fn, '__name__', fn)}{tuple(_short(a) for a in args)}"
    try:
        return fn(*args, **kwargs)
    except OSError as e:
        raise TestFailure(f"{label}: expected success, got {errname(e.errno)} ({e})")


def _short(v, n=60):
    s = repr(v)
    if isinstance(v, str) and v.startswith("/tmp/" + TMP_PREFIX):
        # keep only the part below the instance dir
        parts = v.split("/")
        s = repr("<tmp>/" + "/".join(parts[4:]))
    return s if len(s) <= n else s[: n - 3] + "..."


def wait_for(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until it returns a true value; return it or raise TestFailure."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TestFailure(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def timeout(seconds):
    """Decorator: set the watchdog limit of a test (default 60 s)."""

    def deco(fn):
        fn.timeout = seconds
        return fn

    return deco


# --------------------------------------------------------------------------
# small file helpers


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    """One open + one write() call + close; returns the write() result."""
    if isinstance(data, str):
        data = data.encode()
    fd = os.open(path, flags, 0o640)
    try:
        return os.write(fd, data) if data else 0
    finally:
        os.close(fd)


def write_all(path, data):
    if isinstance(data, str):
        data = data.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def www_data_gid():
    try:
        return grp.getgrnam("www-data").gr_gid
    except KeyError:
        raise TestFailure("group www-data does not exist on this machine")


# --------------------------------------------------------------------------
# mounts


def _unescape_mountinfo(s):
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _canon(path):
    """realpath of the parent + the last component: never stats the path
    itself (a mount point of a hung daemon would block)."""
    path = os.path.abspath(os.fspath(path))
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def mount_table():
    """List of (mount_point, fstype) from /proc/self/mountinfo."""
    res = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) < 5:
                continue
            fstype = right.split()[0] if right else ""
            res.append((_unescape_mountinfo(fields[4]), fstype))
    return res


def mounted(path):
    """True if a FUSE filesystem is mounted exactly at path."""
    real = _canon(path)
    return any(mp == real and fs.startswith("fuse") for mp, fs in mount_table())


def mounts_below(prefix):
    real = _canon(prefix).rstrip("/") + "/"
    return [mp for mp, _ in mount_table() if (mp + "/").startswith(real)]


def force_unmount(path):
    """Lazy unmount, with fusermount fallbacks. Returns True if no longer mounted."""
    real = _canon(path)
    for _ in range(3):
        if real not in [mp for mp, _ in mount_table()]:
            return True
        for cmd in (["umount", "-l", real], ["fusermount3", "-uz", real], ["fusermount", "-uz", real]):
            if shutil.which(cmd[0]) is None:
                continue
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20)
            if real not in [mp for mp, _ in mount_table()]:
                return True
        time.sleep(0.2)
    return real not in [mp for mp, _ in mount_table()]


# --------------------------------------------------------------------------
# processes


def set_child_subreaper():
    """Become the subreaper so daemonized grandchildren are re-parented to us
    (we can then wait for them and read their exit status)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_CHILD_SUBREAPER = 36
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception:
        pass


def _proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
        return data[data.rindex(")") + 2]
    except (OSError, ValueError, IndexError):
        return None


class ProcWatch:
    """Tracks one process we started (a Popen child or a daemonized pid)."""

    def __init__(self, pid, popen=None):
        self.pid = pid
        self.popen = popen
        self.returncode = None

    def poll(self):
        if self.returncode is not None:
            return self.returncode
        if self.popen is not None:
            rc = self.popen.poll()
            if rc is not None:
                self.returncode = rc
            return rc
        try:
            wpid, status = os.waitpid(self.pid, os.WNOHANG)
            if wpid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                return self.returncode
            return None
        except ChildProcessError:
            # not our child (no subreaper): poll /proc
            st = _proc_state(self.pid)
            if st is None or st == "Z":
                self.returncode = -999  # unknown exit status
                return self.returncode
            return None

    def alive(self):
        return self.poll() is None

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)
        return self.returncode

    def signal(self, sig):
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------
# global registry for cleanup

_lock = threading.RLock()
_procs = {}  # pid -> ProcWatch
_mounts = set()
_tmpdirs = []
_instance_counter = itertools.count(1)


current_owner = None  # id of the test currently running (set by the runner)


def register_proc(pw):
    pw.owner = current_owner
    with _lock:
        _procs[pw.pid] = pw


def procs_of(owner):
    with _lock:
        return [pw for pw in _procs.values() if getattr(pw, "owner", None) == owner]


_mount_owner = {}


def register_mount(path):
    with _lock:
        _mounts.add(_canon(path))
        _mount_owner[_canon(path)] = current_owner


def mounts_of(owner):
    with _lock:
        return [m for m in _mounts if _mount_owner.get(m) == owner]


def forget_mount(path):
    with _lock:
        _mounts.discard(_canon(path))
        _mount_owner.pop(_canon(path), None)


def kill_proc(pw, term_timeout=5.0):
    """SIGTERM, wait, then SIGKILL. Returns (exitcode, needed_kill)."""
    if pw.poll() is not None:
        return pw.returncode, False
    pw.signal(signal.SIGTERM)
    rc = pw.wait(term_timeout)
    if rc is not None:
        return rc, False
    pw.signal(signal.SIGKILL)
    rc = pw.wait(5.0)
    return rc, True


def kill_all_procs(sig_first=signal.SIGTERM, term_timeout=5.0):
    with _lock:
        procs = list(_procs.values())
    for pw in procs:
        if pw.poll() is None:
            pw.signal(sig_first)
    deadline = time.monotonic() + term_timeout
    for pw in procs:
        while pw.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    for pw in procs:
        if pw.poll() is None:
            pw.signal(signal.SIGKILL)
            pw.wait(5.0)
    with _lock:
        for pw in procs:
            if pw.poll() is not None:
                _procs.pop(pw.pid, None)


def abort_fuse_connections_of(path):
    """Abort the FUSE connection serving path (unblocks stuck syscalls).

    Never stats the mount (that could block on a hung daemon): the device
    number comes from /proc/self/mountinfo."""
    real = _canon(path)
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.readlines()
    except OSError:
        return
    for line in lines:
        fields = line.split(" - ")[0].split()
        if len(fields) >= 5 and _unescape_mountinfo(fields[4]) == real:
            minor = fields[2].split(":")[1]
            try:
                with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as f:
                    f.write("1")
            except OSError:
                pass


def cleanup_all():
    """Kill every daemon, unmount every mount, remove every temp dir."""
    problems = []
    kill_all_procs()
    with _lock:
        mounts = list(_mounts)
        dirs = list(_tmpdirs)
    for dirpath in dirs:
        for mp in mounts_below(dirpath):
            if mp not in mounts:
                mounts.append(mp)
    for mp in mounts:
        if not force_unmount(mp):
            problems.append(f"could not unmount {mp}")
        else:
            with _lock:
                _mounts.discard(mp)
    for d in dirs:
        if mounts_below(d):
            problems.append(f"not removing {d}: still has mounts")
            continue
        shutil.rmtree(d, ignore_errors=True)
        with _lock:
            if d in _tmpdirs:
                _tmpdirs.remove(d)
    return problems


# --------------------------------------------------------------------------
# temp dirs


class TempDir:
    """A unique directory under /tmp, removed (after unmounting anything below
    it) when the context exits."""

    def __init__(self, keep=False):
        self.path = tempfile.mkdtemp(prefix=TMP_PREFIX, dir="/tmp")
        os.chmod(self.path, 0o755)
        self.keep = keep
        with _lock:
            _tmpdirs.append(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def __str__(self):
        return self.path

    def __fspath__(self):
        return self.path

    def join(self, *p):
        return os.path.join(self.path, *p)

    def remove(self):
        for mp in mounts_below(self.path):
            force_unmount(mp)
        if KEEP_TMP and self.keep:
            return
        if not mounts_below(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
            with _lock:
                if self.path in _tmpdirs:
                    _tmpdirs.remove(self.path)


KEEP_TMP = False  # set by the runner (--keep-tmp)


# --------------------------------------------------------------------------
# daemon


def with_pdeathsig(argv):
    """Prefix argv with `setpriv --pdeathsig TERM --` (util-linux) so that a
    foreground daemon gets SIGTERM even if the runner itself is SIGKILLed.
    setpriv execs the daemon, so the pid stays the same."""
    sp = shutil.which("setpriv")
    return [sp, "--pdeathsig", "TERM", "--"] + list(argv) if sp else list(argv)


class Config:
    binary = None
    build_error = None
    mode = "ours"  # "c": new daemons are the C daemon (set by the runner per run)
    c_binary = None
    c_ready = False  # setup_c_namespace() done
    isolate_net = False  # C daemons get a network namespace of their own (background tests)


def c_mode():
    return Config.mode == "c"


def binary_path():
    return Config.c_binary if c_mode() else Config.binary


def preflight():
    """Raise TestFailure if the environment cannot run a daemon."""
    if os.geteuid() != 0:
        raise TestFailure("tests must run as root (real FUSE mounts, chown checks)")
    if not os.path.exists("/dev/fuse"):
        raise TestFailure("/dev/fuse does not exist (FUSE kernel module missing?)")
    if c_mode() and not Config.c_ready:
        raise TestFailure("internal: C daemon requested outside the runner's private namespace")
    if Config.build_error and not c_mode():
        raise TestFailure(Config.build_error)
    b = binary_path()
    if not b or not os.path.isfile(b):
        raise TestFailure(f"daemon binary not found: {b}")
    if not os.access(b, os.X_OK):
        raise TestFailure(f"daemon binary not executable: {b}")
    www_data_gid()


class Daemon:
    """One pmxcfs instance with every path in a private temp dir.

        with Daemon() as d:             # fresh DB
            d.mount, d.db, d.pid, d.path("storage.cfg") ...
        with TempDir() as tmp:
            with Daemon(tmp) as d: ...  # first run
            with Daemon(tmp) as d: ...  # restart on the same DB

    Layout below tmp: db/config.db, db/.pmxcfs.lockfile, mnt/, run/ (created by
    the daemon), pid/pve-cluster.pid, rrd/, corosync.conf (absent), log/.
    """

    def __init__(
        self,
        tmp=None,
        *,
        nodename="testnode",
        node_ip="127.0.0.2",
        local=True,
        foreground=True,
        debug=False,
        db=None,
        lock_file=None,
        mount=None,
        run_dir=None,
        pid_file=None,
        ipc_name=None,
        extra_args=(),
        start_timeout=20.0,
        stop_timeout=15.0,
        check_stop=True,
    ):
        self.c = c_mode()
        if self.c:
            extra_args = _c_check_options(
                dict(db=db, lock_file=lock_file, mount=mount, run_dir=run_dir, pid_file=pid_file, ipc_name=ipc_name),
                extra_args,
            )
        self._own_tmp = tmp is None
        self.tmp = TempDir() if tmp is None else tmp
        base = os.fspath(self.tmp)
        self.base = base
        self.nodename = nodename
        self.node_ip = node_ip
        self.local = local
        self.foreground = foreground
        self.debug = debug
        self.db = db or os.path.join(base, "db", "config.db")
        self.lock_file = lock_file or os.path.join(os.path.dirname(self.db), ".pmxcfs.lockfile")
        self.mount = mount or os.path.join(base, "mnt")
        self.run_dir = run_dir or os.path.join(base, "run")
        self.restart_flag = os.path.join(self.run_dir, "cfs-restart-flag")
        self.pid_file = pid_file or os.path.join(base, "pid", "pve-cluster.pid")
        self.corosync_conf = os.path.join(base, "corosync.conf")
        self.rrd_dir = os.path.join(base, "rrd")
        n = next(_instance_counter)
        self.ipc_name = ipc_name or f"pmxcfs-it-{os.getpid()}-{n}"
        self.log_dir = os.path.join(base, "log")
        self.stdout_log = os.path.join(self.log_dir, f"daemon{n}.stdout")
        self.stderr_log = os.path.join(self.log_dir, f"daemon{n}.stderr")
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.check_stop = check_stop
        self.proc = None  # ProcWatch of the serving daemon
        self.parent = None  # ProcWatch of the launching parent (daemonize mode)
        self.pid = None
        self.startup_seconds = None
        self._exit_observed = False
        self._last_stderr_full = ""
        if self.c:
            self._c_layout(n)
        for d in (os.path.dirname(self.db), self.mount, os.path.dirname(self.pid_file), self.rrd_dir, self.log_dir):
            os.makedirs(d, exist_ok=True)
        _current_daemons.append(self)

    def _c_layout(self, n):
        """The C daemon's fixed paths, as seen from the runner (see c_wrap_spec)."""
        base = self.base
        self.mount = os.path.join(C_MOUNTS, f"{n}")
        self.run_dir = os.path.join(base, "c-run", "pve-cluster")  # /run/pve-cluster
        self.restart_flag = os.path.join(self.run_dir, "cfs-restart-flag")
        self.pid_file = os.path.join(base, "c-run", "pve-cluster.pid")  # /run/pve-cluster.pid
        self.corosync_conf = os.path.join(base, "c-corosync", "corosync.conf")  # /etc/corosync/corosync.conf
        self.ipc_name = "pve2"
        if self.node_ip.startswith("127."):
            self.node_ip = C_NODE_IP  # the C daemon refuses a name that resolves to loopback only
        self._c_net = False

    # ---- command line

    def argv(self, with_paths=True):
        a = [binary_path()]
        if self.debug:
            a.append("-d")
        if self.foreground:
            a.append("-f")
        if self.local:
            a.append("-l")
        if self.c:
            return a + self.extra_args  # -d -f -l are all the C daemon has
        if with_paths:
            a += [
                "--db", self.db,
                "--lock-file", self.lock_file,
                "--mount", self.mount,
                "--run-dir", self.run_dir,
                "--pid-file", self.pid_file,
                "--corosync-conf", self.corosync_conf,
                "--rrd-dir", self.rrd_dir,
                "--nodename", self.nodename,
                "--node-ip", self.node_ip,
                "--ipc-name", self.ipc_name,
            ]
            if "--rrdcached-socket" not in self.extra_args:
                # never the host's rrdcached: a socket path nobody serves
                a += ["--rrdcached-socket", os.path.join(os.path.dirname(self.rrd_dir), "no-rrdcached.sock")]
        return a + self.extra_args

    def spawn(self, argv=None):
        """Start the process without waiting for anything; returns ProcWatch."""
        preflight()
        argv = with_pdeathsig(argv or self.argv())
        if self.c:
            _c_one_at_a_time(self)
            spec = c_wrap_spec(self.base, self.mount, self.nodename, self.node_ip, os.path.dirname(self.db), self.rrd_dir)
            self._c_net = spec["net"]
            argv = c_wrap(spec, argv)
        out = open(self.stdout_log, "ab")
        err = open(self.stderr_log, "ab")
        try:
            p = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd="/",
                start_new_session=True,
            )
        finally:
            out.close()
            err.close()
        pw = ProcWatch(p.pid, p)
        register_proc(pw)
        register_mount(self.mount)
        if self.c:
            _c_daemons.append((self, pw, self._c_net))
        return pw

    # ---- lifecycle

    def start(self):
        t0 = time.monotonic()
        if self.foreground:
            self.proc = self.spawn()
            self.pid = self.proc.pid
            deadline = t0 + self.start_timeout
            while not mounted(self.mount):
                rc = self.proc.poll()
                if rc is not None:
                    raise TestFailure(
                        f"daemon exited with {rc} before mounting: {self.stderr_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise TestFailure(
                        f"mount did not appear within {self.start_timeout}s: {self.stderr_tail()}"
                    )
                time.sleep(0.02)
        else:
            self.parent = self.spawn()
            rc = self.parent.wait(self.start_timeout)
            if rc is None:
                raise TestFailure(f"daemonizing parent did not exit within {self.start_timeout}s")
            if rc != 0:
                raise TestFailure(f"daemonizing parent exited with {rc}: {self.stderr_tail()}")
            if not mounted(self.mount):
                raise TestFailure("daemonizing parent exited 0 but the mount is not there yet")
            try:
                pid = int(read(self.pid_file).decode().strip())
            except Exception as e:
                raise TestFailure(f"cannot read pid file after daemonizing: {e}")
            self.proc = ProcWatch(pid)
            register_proc(self.proc)
            if self.c:
                _c_daemons.append((self, self.proc, self._c_net))
            self.pid = pid
        # the mount is there: the root must answer
        try:
            os.stat(self.mount)
        except OSError as e:
            raise TestFailure(f"stat of the fresh mount failed: {e}")
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Signal the daemon and wait. Returns its exit code. Raises TestFailure
        if it does not exit in time (it is then killed) or leaves its mount."""
        timeout = self.stop_timeout if timeout is None else timeout
        if self.proc is None:
            return None
        self._exit_observed = True
        if self.proc.poll() is None:
            self._signalled = True
            self.proc.signal(sig)
            rc = self.proc.wait(timeout)
            if rc is None:
                threads = _thread_states(self.proc.pid) if self.c else ""
                kill_proc(self.proc, 1.0)
                force_unmount(self.mount)
                raise TestFailure(
                    f"daemon did not exit within {timeout}s after {signal.Signals(sig).name} (killed){threads}"
                )
        rc = self.proc.returncode
        if mounted(self.mount):
            # give the kernel a moment
            t = time.monotonic() + 2
            while mounted(self.mount) and time.monotonic() < t:
                time.sleep(0.05)
            if mounted(self.mount):
                force_unmount(self.mount)
                raise TestFailure(f"daemon exited ({rc}) but left {self.mount} mounted")
        return rc

    def wait_exit(self, timeout):
        """Wait for the daemon (or, before it forked, the launched process) to exit."""
        self._exit_observed = True
        pw = self.proc or self.parent
        return pw.wait(timeout) if pw else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        for pw in (self.proc, self.parent):
            if pw is not None:
                kill_proc(pw, 2.0)
        force_unmount(self.mount)
        if self.c:
            try:
                os.rmdir(self.mount)
            except OSError:
                pass

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.kill()
            if self._own_tmp:
                self.tmp.remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    rc = self.stop()
                except TestFailure:
                    if exc_type is None:
                        raise
                    rc = 0  # the test already failed; keep its reason
                if self.check_stop and exc_type is None and rc != 0:
                    raise TestFailure(f"daemon exited with {rc} on SIGTERM (expected 0)")
            elif self.proc is not None and exc_type is None and self.check_stop and not self._exit_observed:
                raise TestFailure(
                    f"daemon died during the test (exit code {self.proc.returncode}): {self.stderr_tail()}"
                )
        finally:
            self.kill()
            self._last_stderr_full = self.stderr_text()
            if self._own_tmp:
                self.tmp.remove()
        return False

    # ---- helpers

    def path(self, *rel):
        return os.path.join(self.mount, *rel)

    def stderr_text(self):
        try:
            with open(self.stderr_log, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return self._last_stderr_full

    def stderr_tail(self, n=3):
        lines = [l for l in self.stderr_text().splitlines() if l.strip()]
        if not lines:
            return "(no stderr output)"
        return " | ".join(lines[-n:])

    def makedirs(self, rel):
        """mkdir -p inside the mount (each level one mkdir)."""
        cur = self.mount
        for part in rel.strip("/").split("/"):
            cur = os.path.join(cur, part)
            if not os.path.isdir(cur):
                os.mkdir(cur)


_current_daemons = []  # daemons created during the current test (for diagnostics)


def take_current_daemons():
    global _current_daemons
    d, _current_daemons = _current_daemons, []
    return d


def shm_dirs_of(ipc_names):
    """The libqb ring directories under /dev/shm of the IPC services
    `ipc_names` (their files are named qb-<ring>-<service>-data and
    -header): {path: [file names]}."""
    found = {}
    suffixes = tuple(f"-{n}-{part}" for n in ipc_names for part in ("data", "header"))
    try:
        dirs = [d for d in os.listdir("/dev/shm") if d.startswith("qb-")]
    except OSError:
        return found
    for d in dirs:
        path = os.path.join("/dev/shm", d)
        try:
            files = os.listdir(path)
        except OSError:
            continue
        if any(f.endswith(suffixes) for f in files):
            found[path] = sorted(files)
    return found


def remove_shm_of(ipc_names):
    """Remove the ring directories of `ipc_names` (shm_dirs_of); returns a
    description of each. A daemon removes a connection's rings when the
    client goes away and when it stops: a directory still there after the
    test's daemons are gone is a leak."""
    found = []
    for path, files in shm_dirs_of(ipc_names).items():
        found.append(f"{path} ({', '.join(files)})")
        shutil.rmtree(path, ignore_errors=True)
    return found


# --------------------------------------------------------------------------
# process helpers for tests that run the binary directly


def run_binary(args, timeout):
    """Run the daemon binary with args, wait up to timeout. Returns
    (returncode or None on timeout, stdout, stderr, elapsed)."""
    preflight()
    argv = with_pdeathsig([binary_path()] + list(args))
    scratch = None
    if c_mode():
        # the C daemon always uses its fixed paths: give it a throwaway set
        scratch = TempDir()
        mnt = os.path.join(C_MOUNTS, f"run-{next(_instance_counter)}")
        os.makedirs(os.path.join(scratch.path, "db"))
        os.makedirs(os.path.join(scratch.path, "rrd"))
        os.makedirs(mnt)
        register_mount(mnt)
        argv = c_wrap(c_wrap_spec(scratch.path, mnt, "testnode", C_NODE_IP, os.path.join(scratch.path, "db"),
                                  os.path.join(scratch.path, "rrd")), argv)
    try:
        return _run_binary(argv, timeout)
    finally:
        if scratch is not None:
            force_unmount(mnt)
            forget_mount(mnt)
            scratch.remove()


def _run_binary(argv, timeout):
    t0 = time.monotonic()
    p = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        start_new_session=True,
    )
    pw = ProcWatch(p.pid, p)
    register_proc(pw)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - t0
    except subprocess.TimeoutExpired:
        kill_proc(pw, 2.0)
        out, err = p.communicate()
        return None, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - t0


# --------------------------------------------------------------------------
# the C daemon (integration-tests/test --c-binary PATH)
#
# The C pmxcfs has fixed paths (/etc/pve, /var/lib/pve-cluster, /run/...,
# /var/lib/rrdcached/db, IPC service @pve2), takes its node name from
# `uname -n` and refuses a name that resolves only to loopback. The runner
# therefore runs in private mount, network and PID namespaces (runner.py;
# setup_c_namespace() prepares them), and every C daemon starts through
# `python3 harness.py c-wrap SPEC -- ARGV`: that process enters a mount and
# UTS namespace of its own, sets the host name, lays an overlay over /etc and
# /var/lib whose upper layer lives in the instance's temp dir (hosts file,
# symlinks pve-cluster -> <tmp>/db, rrdcached/db -> <tmp>/rrd, corosync ->
# <tmp>/c-corosync, pve -> C_MOUNTS/<n>), binds <tmp>/c-run over /run, and
# execs the daemon (same pid). The daemon's FUSE mount on C_MOUNTS/<n>
# reaches the runner by mount propagation (C_MOUNTS is a shared mount); an
# unmount in the runner reaches the daemon the same way. Everything else the
# daemon mounts or writes dies with its namespace; the host sees nothing but
# the instance's temp dir.

C_SCRATCH = "/dev/shm/pmxcfs-it-c"  # in the runner's private /dev/shm tmpfs
C_MOUNTS = C_SCRATCH + "/mnt"
C_NODE_IP = "192.0.2.10"  # TEST-NET-1: only resolved through the hosts file, never contacted
C_FIXED_PATHS = ("/etc", "/var/lib", "/run")
OUR_ONLY_OPTIONS = (
    "--db", "--lock-file", "--mount", "--run-dir", "--pid-file", "--corosync-conf", "--rrd-dir",
    "--rrdcached-socket", "--nodename", "--node-ip", "--ipc-name",
)

MS_BIND = 0x1000
MS_SHARED = 1 << 20
MNT_DETACH = 2
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000

_c_daemons = []  # (Daemon, ProcWatch, own netns) of every C daemon started


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _enc(s):
    return None if s is None else os.fsencode(s)


def _sys_mount(src, target, fstype=None, flags=0, data=None):
    if _libc().mount(_enc(src), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount({src}, {target}, {fstype}, {flags:#x}, {data}): {os.strerror(e)}")


def _sys_unshare(flags):
    if _libc().unshare(ctypes.c_int(flags)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"unshare({flags:#x}): {os.strerror(e)}")


def _detach_fuse_mounts(keep_below=None):
    """Lazily detach, in this mount namespace only, every FUSE mount not below
    keep_below: a copy of another namespace's FUSE mount would keep that
    filesystem alive (its daemon would not see an unmount done elsewhere)."""
    keep = keep_below.rstrip("/") + "/" if keep_below else None
    for mp, fs in mount_table():
        if not (fs in ("fuse", "fuseblk") or fs.startswith("fuse.")):
            continue
        if keep and (mp + "/").startswith(keep):
            continue
        _libc().umount2(_enc(mp), ctypes.c_int(MNT_DETACH))


def setup_c_namespace(outer_mnt_ns):
    """Once, in the runner's private namespaces (runner.py): a private
    /dev/shm (libqb's files vanish with the namespace), the shared mount
    C_MOUNTS, and no copies of the host's FUSE mounts. Refuses to touch
    anything when the mount namespace is still outer_mnt_ns (the host's)."""
    if os.readlink("/proc/self/ns/mnt") == outer_mnt_ns:
        raise RuntimeError("not in a private mount namespace; refusing to mount anything")
    _detach_fuse_mounts()
    _sys_mount("tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777")
    os.makedirs(C_MOUNTS)
    _sys_mount(C_MOUNTS, C_MOUNTS, None, MS_BIND)
    _sys_mount(None, C_MOUNTS, None, MS_SHARED)
    for p in C_FIXED_PATHS:
        if not os.path.isdir(p):
            raise RuntimeError(f"{p} is not a directory")
    Config.c_ready = True


def _thread_states(pid):
    """' (threads: comm state wchan, ...)' of a hung process, for the failure message."""
    out = []
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    st = f.read()
                with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                    wchan = f.read().strip() or "-"
                comm = st[st.index("(") + 1 : st.rindex(")")]
                out.append(f"{comm} {st[st.rindex(')') + 2]} {wchan}")
            except (OSError, ValueError):
                pass
    except OSError:
        return ""
    return f" (threads: {', '.join(out)})" if out else ""


def _c_check_options(opts, extra_args):
    """Raise NotRunnableOnC for an option only our daemon has; returns the
    extra args to pass to the C daemon."""
    for name, val in opts.items():
        if val is not None:
            raise NotRunnableOnC(f"uses --{name.replace('_', '-')} (an option only our daemon has)")
    out, args = [], list(extra_args)
    while args:
        a = args.pop(0)
        if a == "--rrdcached-socket" and args:
            sock = args.pop(0)
            if os.path.exists(sock):
                raise NotRunnableOnC(
                    "uses --rrdcached-socket with a private rrdcached (the C daemon's socket and RRD paths are fixed;"
                    " rrdcached would not accept them)"
                )
            continue  # an unserved socket: the C daemon's fixed socket is not served either
        if a.split("=", 1)[0] in OUR_ONLY_OPTIONS:
            raise NotRunnableOnC(f"uses {a.split('=', 1)[0]} (an option only our daemon has)")
        out.append(a)
    return out


def _c_one_at_a_time(d):
    """The C daemon's IPC service name is fixed (@pve2): two C daemons in one
    network namespace cannot both serve it."""
    _c_daemons[:] = [x for x in _c_daemons if x[1].poll() is None]
    if Config.isolate_net:
        return
    for other, pw, own_net in _c_daemons:
        if other is not d and not own_net and pw.poll() is None:
            raise NotRunnableOnC("runs two daemons at once (the C daemon's paths and IPC name @pve2 are fixed)")


def c_wrap_spec(base, mount, nodename, node_ip, db_dir, rrd_dir):
    """The namespace set-up of one C daemon; files below base (the instance's temp dir)."""
    etc_up = os.path.join(base, "c-etc", "upper")
    lib_up = os.path.join(base, "c-varlib", "upper")
    run = os.path.join(base, "c-run")
    coro = os.path.join(base, "c-corosync")
    for p in (etc_up, os.path.join(base, "c-etc", "work"), os.path.join(lib_up, "rrdcached"),
              os.path.join(base, "c-varlib", "work"), run, coro, db_dir, rrd_dir, mount):
        os.makedirs(p, exist_ok=True)
    with open(os.path.join(etc_up, "hosts"), "w") as f:
        f.write(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{node_ip}\t{nodename}\n")
    for link, target in (
        (os.path.join(etc_up, "pve"), mount),
        (os.path.join(etc_up, "corosync"), coro),
        (os.path.join(lib_up, "pve-cluster"), db_dir),
        (os.path.join(lib_up, "rrdcached", "db"), rrd_dir),
    ):
        if os.path.islink(link):
            os.unlink(link)  # a restart on the same temp dir: a new mount point
        os.symlink(target, link)
    return {
        "hostname": nodename,
        "overlays": [
            ["/etc", etc_up, os.path.join(base, "c-etc", "work")],
            ["/var/lib", lib_up, os.path.join(base, "c-varlib", "work")],
        ],
        "binds": [[run, "/run"]],
        "net": bool(Config.isolate_net),
    }


def c_wrap(spec, argv):
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), "c-wrap", json.dumps(spec), "--"] + list(argv)


def _c_wrap_main(args):
    """`harness.py c-wrap SPEC -- ARGV` (see above): set up, then exec ARGV."""
    try:
        spec = json.loads(args[1])
        cmd = args[3:]
        _sys_unshare(CLONE_NEWNS | CLONE_NEWUTS | (CLONE_NEWNET if spec["net"] else 0))
        _detach_fuse_mounts(keep_below=C_MOUNTS)
        name = spec["hostname"].encode()
        if _libc().sethostname(name, ctypes.c_size_t(len(name))) != 0:
            raise OSError(ctypes.get_errno(), "sethostname")
        for target, upper, work in spec["overlays"]:
            _sys_mount("overlay", target, "overlay", 0, f"lowerdir={target},upperdir={upper},workdir={work}")
        for src, target in spec["binds"]:
            _sys_mount(src, target, None, MS_BIND)
        os.execv(cmd[0], cmd)
    except Exception as e:  # noqa: BLE001
        print(f"c-wrap: {e}", file=sys.stderr, flush=True)
        return 121


if __name__ == "__main__" and sys.argv[1:2] == ["c-wrap"]:
    sys.exit(_c_wrap_main(sys.argv[1:]))
