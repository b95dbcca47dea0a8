"""durability: no answered change is lost or half-seen, whatever the
daemon's end (kill -9) and whatever other observers do meanwhile; open
files replaced under hostile numbers of handles."""

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time

from lib import qb
from lib.harness import (
    Daemon,
    TestFailure,
    check,
    eq,
    expect_errno,
    force_unmount,
    forget_mount,
    mounted,
    read,
    register_mount,
    shm_dirs_of,
    timeout,
    wait_for,
    write,
)

MIB = 1048576


def kill9(d):
    """SIGKILL the daemon, wait for it, and detach its dead mount."""
    d._exit_observed = True
    d.proc.signal(signal.SIGKILL)
    if d.proc.wait(10) is None:
        raise TestFailure("daemon did not die on SIGKILL")
    force_unmount(d.mount)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise TestFailure(f"no VmRSS for pid {pid}")


# ---------------------------------------------------------------- O_TRUNC


def test_otrunc_applied_when_close_returns(t):
    """open(O_TRUNC) then close (with and without fsync), kill -9 right after close: the file is empty after restart, every round."""
    tmp = t.tmpdir()
    for rnd in range(12):
        with Daemon(tmp, check_stop=False) as d:
            if rnd == 0:
                write(d.path("f"), b"")
            else:
                eq(len(read(d.path("f"))), 0, f"round {rnd}: size after restart")
            write(d.path("f"), b"x" * 3000)
            fd = os.open(d.path("f"), os.O_WRONLY | os.O_TRUNC)
            if rnd % 2:
                os.fsync(fd)
            os.close(fd)
            kill9(d)
    with Daemon(tmp) as d:
        eq(len(read(d.path("f"))), 0, "size after the last restart")


@timeout(180)
def test_large_writes_survive_kill9_right_after_close(t):
    """Transactions larger than SQLite's page cache (1 MiB files, new content each round, also rewritten in place and by rename) are whole after a kill -9 right after close: SQLite spills pages to the WAL mid-transaction and rewrites frame headers after the commit frame, and all of it must be in the file when the write is answered."""
    tmp = t.tmpdir()
    rng = random.Random(11)
    expect = {}
    for rnd in range(10):
        with Daemon(tmp, check_stop=False) as d:
            for name, data in expect.items():
                eq(_digest(read(d.path(name))), _digest(data), f"round {rnd}: {name} after restart")
            a = bytes(rng.getrandbits(8) for _ in range(1024)) * (MIB // 1024 - rnd - 1)
            write(d.path("big-a"), a)
            b = os.urandom(MIB - 4096 * rnd)
            write(d.path("big-b.tmp"), b)
            os.rename(d.path("big-b.tmp"), d.path("big-b"))
            expect = {"big-a": a, "big-b": b}
            kill9(d)
    with Daemon(tmp) as d:
        for name, data in expect.items():
            eq(_digest(read(d.path(name))), _digest(data), f"{name} after the last restart")


def _digest(data):
    return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}"


def test_otrunc_handle_keeps_later_write_of_another(t):
    """A handle opened with O_TRUNC and never written must not wipe a write another process made and closed after that open."""
    d = t.daemon()
    write(d.path("f"), b"old content")
    fd = os.open(d.path("f"), os.O_WRONLY | os.O_TRUNC)
    try:
        write(d.path("f"), b"new", os.O_WRONLY)
    finally:
        os.close(fd)
    eq(read(d.path("f")), b"new", "content after both closed")


def test_otrunc_then_ftruncate_keeps_size(t):
    """open(O_RDWR|O_TRUNC), ftruncate(fd, 100), close: a 100-byte file of zeros, also after a restart."""
    tmp = t.tmpdir()
    with Daemon(tmp) as d:
        write(d.path("f"), b"y" * 500)
        fd = os.open(d.path("f"), os.O_RDWR | os.O_TRUNC)
        try:
            os.ftruncate(fd, 100)
        finally:
            os.close(fd)
        eq(read(d.path("f")), b"\0" * 100, "content after close")
    with Daemon(tmp) as d:
        eq(read(d.path("f")), b"\0" * 100, "content after restart")


def test_otrunc_seen_alike_by_fuse_and_ipc(t):
    """While a handle opened with O_TRUNC is open and unwritten, FUSE reads, stat and IPC GET_CONFIG all show the empty file; after a write through it, all show the write."""
    d = t.daemon()
    write(d.path("storage.cfg"), b"dir: local\n")
    fd = os.open(d.path("storage.cfg"), os.O_WRONLY | os.O_TRUNC)
    try:
        eq(qb.ok(d.ipc_name, qb.OP_GET_CONFIG, qb.cstr("storage.cfg")), b"", "IPC GET_CONFIG while open")
        eq(read(d.path("storage.cfg")), b"", "FUSE read while open")
        eq(os.stat(d.path("storage.cfg")).st_size, 0, "stat while open")
        os.write(fd, b"dir: other\n")
        eq(qb.ok(d.ipc_name, qb.OP_GET_CONFIG, qb.cstr("storage.cfg")), b"dir: other\n", "IPC after the write")
        eq(read(d.path("storage.cfg")), b"dir: other\n", "FUSE after the write")
    finally:
        os.close(fd)
    eq(read(d.path("storage.cfg")), b"dir: other\n", "after close")


@timeout(90)
def test_otrunc_on_failed_database_fails(t):
    """The database on a full tmpfs fails (every mutation EIO): open(O_TRUNC) then fails with EIO too, and the file keeps its bytes."""
    tmp = t.tmpdir()
    dbdir = tmp.join("db")
    os.makedirs(dbdir, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", dbdir], check=True)
    register_mount(dbdir)
    try:
        with Daemon(tmp) as d:
            write(d.path("keep"), b"precious")
            # fill the tmpfs, leaving a little room
            filler = os.path.join(dbdir, "filler")
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            os.truncate(filler, max(0, os.path.getsize(filler) - 8192))
            failed = False
            for i in range(50):
                try:
                    write(d.path(f"big{i}"), os.urandom(MIB))
                except OSError as e:
                    check(e.errno in (errno.EIO, errno.ENOSPC), f"write on a full disk: {e}")
                    failed = True
                    break
            check(failed, "the database never failed on a full tmpfs")
            expect_errno(errno.EIO, os.open, d.path("keep"), os.O_WRONLY | os.O_TRUNC,
                         what="open(O_TRUNC) on a failed database")
            eq(read(d.path("keep")), b"precious", "content after the refused open(O_TRUNC)")
            eq(qb.ok(d.ipc_name, qb.OP_GET_CONFIG, qb.cstr("keep")), b"precious", "IPC view")
            # the daemon removes the client's rings when it sees it gone:
            # let it finish before the kill (else they stay in /dev/shm)
            wait_for(lambda: not shm_dirs_of([d.ipc_name]), 5, what="the IPC client's rings removed")
            kill9(d)
    finally:
        subprocess.run(["umount", "-l", dbdir], check=False)
        forget_mount(dbdir)


# ---------------------------------------------------------------- crash storm


class Writer(threading.Thread):
    """Changes its own file in one way, over and over, and records what an
    observer may find there: `acked` after each answered close/rename, and
    `maybe` (states an unanswered operation may have reached)."""

    def __init__(self, d, name, kind, seed):
        super().__init__(daemon=True)
        self.d, self.name, self.kind = d, name, kind
        self.rng = random.Random(seed)
        self.acked = None
        self.maybe = set()
        self.ops = 0
        self.stop = False

    def payload(self):
        n = self.rng.choice([0, 1, 100, 4096, 5000, 70000])
        return f"{self.name}:{self.ops}:".encode() + bytes(self.rng.randrange(256) for _ in range(min(n, 64))) * (n // 64 + 1)

    def run(self):
        p = self.d.path(self.name)
        holder = None
        try:
            write(p, b"start")
            self.acked = b"start"
            while not self.stop:
                new = self.payload()
                if self.kind == "otrunc":
                    self.maybe = {self.acked, b"", new}
                    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
                    try:
                        os.write(fd, new)
                    finally:
                        os.close(fd)
                elif self.kind == "otrunc_close":
                    # every other round: open(O_TRUNC) and close, no write
                    if self.ops % 2:
                        new = b""
                        self.maybe = {self.acked, b""}
                        os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
                    else:
                        self.maybe = {self.acked, b"", new}
                        write(p, new)
                elif self.kind == "ftruncate":
                    size = self.rng.choice([0, 10, 4096, 9000])
                    new = b"\0" * size
                    self.maybe = {self.acked, b"", new}
                    fd = os.open(p, os.O_RDWR | os.O_TRUNC)
                    try:
                        os.ftruncate(fd, size)
                    finally:
                        os.close(fd)
                elif self.kind == "rename":
                    # replace the file while a handle holds it open
                    if holder is None:
                        holder = os.open(p, os.O_RDONLY)
                    tmp = self.d.path(f"{self.name}.tmp.{self.ops}")
                    self.maybe = {self.acked, new}
                    write(tmp, new, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                    os.rename(tmp, p)
                    if os.pread(holder, len(self.acked) + 1, 0) != self.acked:
                        raise TestFailure(f"{self.name}: the open handle lost its content")
                    os.close(holder)
                    holder = None
                self.acked = new
                self.maybe = set()
                self.ops += 1
        except OSError:
            pass  # the daemon is gone
        finally:
            if holder is not None:
                try:
                    os.close(holder)
                except OSError:
                    pass


@timeout(120)
def test_crash_storm_loses_nothing_acknowledged(t):
    """kill -9 during a storm of O_TRUNC overwrites, ftruncates and renames over open files: after restart every file holds its last answered content (or what its one unanswered operation would have made), and the DB loads."""
    tmp = t.tmpdir()
    kinds = ["otrunc", "otrunc_close", "otrunc_close", "ftruncate", "rename", "rename"]
    for rnd in range(4):
        with Daemon(tmp, check_stop=False) as d:
            writers = [Writer(d, f"r{rnd}-{i}-{k}", k, rnd * 100 + i) for i, k in enumerate(kinds)]
            for w in writers:
                w.start()
            time.sleep(1.0 + 0.3 * rnd)
            kill9(d)
            for w in writers:
                w.stop = True
                w.join(10)
        with Daemon(tmp) as d:
            total = sum(w.ops for w in writers)
            check(total > 20, f"round {rnd}: only {total} operations before the kill")
            for w in writers:
                if w.acked is None:
                    continue
                got = read(d.path(w.name))
                ok = got == w.acked or got in w.maybe
                check(ok, f"round {rnd}: {w.name} ({w.kind}, {w.ops} ops): found {got[:30]!r} "
                          f"({len(got)} bytes), last answered {w.acked[:30]!r} ({len(w.acked)} bytes)")


# ---------------------------------------------------------------- open handles


HOLDER = r"""
import os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
fds = [os.open(sys.argv[1], os.O_RDONLY) for _ in range(int(sys.argv[2]))]
print("ready", flush=True)
sys.stdin.readline()
import hashlib
print(hashlib.sha256(os.pread(fds[0], 2 * 1048576, 0)).hexdigest(),
      hashlib.sha256(os.pread(fds[-1], 2 * 1048576, 0)).hexdigest(), flush=True)
sys.stdin.readline()
"""


@timeout(120)
def test_replace_file_held_open_by_thousands_costs_one_copy(t):
    """A www-data user holds 3,000 read handles on a 1 MiB file; root renames a new file over it (what every Proxmox tool does): the daemon grows by about one copy, not one per handle; the handles keep the old content."""
    import hashlib
    d = t.daemon()
    old = bytes((7 * i) % 251 for i in range(MIB))
    write(d.path("big.cfg"), old)
    n = 3000
    p = subprocess.Popen([sys.executable, "-c", HOLDER, d.path("big.cfg"), str(n)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, user=33, group=33,
                         extra_groups=[], text=True)
    try:
        line = p.stdout.readline().strip()
        eq(line, "ready", "the www-data holder's start")
        before = rss_kib(d.pid)
        write(d.path("big.cfg.tmp"), b"new" * 1000)
        t0 = time.monotonic()
        os.rename(d.path("big.cfg.tmp"), d.path("big.cfg"))
        took = time.monotonic() - t0
        eq(read(d.path("big.cfg")), b"new" * 1000, "the name's new content")
        grown = rss_kib(d.pid) - before
        t.note(f"# rename over {n} open handles: {took * 1000:.1f} ms, daemon grew {grown} KiB")
        check(grown < 32 * 1024, f"daemon grew by {grown} KiB replacing a 1 MiB file held by {n} handles")
        p.stdin.write("\n")
        p.stdin.flush()
        sums = p.stdout.readline().split()
        want = hashlib.sha256(old).hexdigest()
        eq(sums, [want, want], "old content through the first and last handle")
    finally:
        try:
            p.stdin.write("\n")
            p.stdin.flush()
        except OSError:
            pass
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    # every handle closed: the snapshot goes
    eq(read(d.path("big.cfg")), b"new" * 1000, "content after the holder exited")
