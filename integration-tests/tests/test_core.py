"""core: daemon life cycle (COMPAT.md section 1, checklist item 15)."""

import errno
import os
import signal
import stat
import subprocess
import time

from lib import pmxdb
from lib.harness import (
    Daemon,
    TempDir,
    TestFailure,
    check,
    eq,
    expect_errno,
    mounted,
    read,
    run_binary,
    sha256_file,
    wait_for,
    write,
    www_data_gid,
    timeout,
)


def _check_clean_exit(d, rc, what):
    """After a signal/unmount: exit 0, restart flag 0440 root:www-data, pid
    file gone, mount gone."""
    eq(rc, 0, f"exit code after {what}")
    check(not mounted(d.mount), f"{d.mount} still mounted after {what}")
    check(os.path.exists(d.restart_flag), f"restart flag {d.restart_flag} not created on {what}")
    st = os.stat(d.restart_flag)
    eq(oct(stat.S_IMODE(st.st_mode)), oct(0o440), "restart flag mode")
    eq((st.st_uid, st.st_gid), (0, www_data_gid()), "restart flag owner (uid, gid)")
    check(not os.path.exists(d.pid_file), f"pid file {d.pid_file} still exists after {what}")


def test_item15_pid_file_holds_daemon_pid(t):
    """item 15: the pid file holds the pid of the serving daemon (-f mode)."""
    d = t.daemon()
    check(os.path.exists(d.pid_file), "pid file not written")
    txt = read(d.pid_file).decode()
    eq(txt, f"{d.pid}\n", "pid file content")
    check(d.alive(), "daemon not running")


def test_item15_sigterm_unmounts_flags_and_exits_0(t):
    """item 15: SIGTERM unmounts, writes the restart flag (0440), removes the pid file, exits 0."""
    d = t.daemon()
    write(d.path("storage.cfg"), b"dir: local\n")
    check(not os.path.exists(d.restart_flag), "restart flag exists while the daemon runs")
    rc = d.stop(signal.SIGTERM)
    _check_clean_exit(d, rc, "SIGTERM")


def test_sigint_and_sighup_end_daemon_cleanly(t):
    """SIGINT and SIGHUP end the daemon like SIGTERM (section 1)."""
    tmp = t.tmpdir()
    for sig in (signal.SIGINT, signal.SIGHUP):
        with Daemon(tmp) as d:
            rc = d.stop(sig)
            _check_clean_exit(d, rc, sig.name)
        os.unlink(d.restart_flag)


def test_item15_local_mode_is_quorate(t):
    """item 15: with -l the node is quorate: root can create, write, mkdir, rename, delete."""
    d = t.daemon(local=True)
    os.mkdir(d.path("ha"))
    write(d.path("ha/x.tmp"), b"x")
    os.rename(d.path("ha/x.tmp"), d.path("ha/x.cfg"))
    eq(read(d.path("ha/x.cfg")), b"x", "content")
    eq(oct(stat.S_IMODE(os.stat(d.path("ha/x.cfg")).st_mode)), oct(0o640), "file mode (quorate)")
    os.unlink(d.path("ha/x.cfg"))
    os.rmdir(d.path("ha"))


def test_item15_no_corosync_conf_means_local_mode(t):
    """item 15: without -l and without corosync.conf (none in the DB, none on the host) the daemon runs in local mode, quorate."""
    d = t.daemon(local=False)
    check(not os.path.exists(d.corosync_conf), "test setup: host corosync.conf must not exist")
    os.mkdir(d.path("priv"))
    write(d.path("priv/x"), b"secret")
    eq(oct(stat.S_IMODE(os.stat(d.path("priv/x")).st_mode)), oct(0o600), "private file mode (quorate)")
    eq(oct(stat.S_IMODE(os.stat(d.path("priv")).st_mode)), oct(0o700), "private dir mode (quorate)")


@timeout(90)
def test_item15_second_instance_fails_after_10s(t):
    """item 15: a second instance with the same lock file exits 255 after about 10 s; the first keeps serving."""
    tmp = t.tmpdir()
    a = t.daemon(tmp)
    write(a.path("storage.cfg"), b"first\n")
    other = t.tmpdir()
    b = Daemon(
        other,
        db=a.db,
        lock_file=a.lock_file,
        check_stop=False,
    )
    t0 = time.monotonic()
    pw = b.spawn()
    rc = pw.wait(40)
    elapsed = time.monotonic() - t0
    if rc is None:
        b.proc = pw
        b.kill()
        raise TestFailure("second instance still running after 40 s")
    check(not mounted(b.mount), "second instance mounted its mount point")
    eq(rc, 255, f"second instance exit code (stderr: {b.stderr_tail()})")
    check(8.0 <= elapsed <= 20.0, f"second instance gave up after {elapsed:.1f}s, expected about 10 s")
    check(a.alive() and mounted(a.mount), "first instance stopped serving")
    eq(read(a.path("storage.cfg")), b"first\n", "first instance content")
    eq(read(a.pid_file).decode(), f"{a.pid}\n", "first instance pid file")


@timeout(90)
def test_second_instance_other_lock_file_same_db_refused(t):
    """Two instances on one database must not run, even when their --lock-file differs: the second exits 255, the first keeps serving its unchanged database."""
    tmp = t.tmpdir()
    a = t.daemon(tmp)
    write(a.path("storage.cfg"), b"first\n")
    other = t.tmpdir()
    b = Daemon(other, db=a.db, lock_file=other.join("another.lockfile"), check_stop=False)
    pw = b.spawn()
    rc = pw.wait(40)
    if rc is None:
        b.proc = pw
        b.kill()
        raise TestFailure("second instance on the same database still running after 40 s")
    check(not mounted(b.mount), "second instance mounted its mount point")
    eq(rc, 255, f"second instance exit code (stderr: {b.stderr_tail()})")
    check("lock" in b.stderr_text(), f"second instance's message names the lock: {b.stderr_tail()}")
    write(a.path("storage.cfg"), b"still first\n")
    eq(read(a.path("storage.cfg")), b"still first\n", "first instance still writes")


def test_item15_db_survives_restart(t):
    """item 15: the DB survives restart unchanged: data written before reads back after, rows identical."""
    tmp = t.tmpdir()
    files = {
        "storage.cfg": b"dir: local\n\tpath /var/lib/vz\n",
        "nodes/testnode/qemu-server/100.conf": b"memory: 512\n",
        "priv/authkey.key": bytes(range(256)) * 3,
        "deep/a/b/empty": b"",
    }
    with Daemon(tmp) as d:
        for p, data in files.items():
            d.makedirs(os.path.dirname(p))
            write(d.path(p), data)
        os.utime(d.path("storage.cfg"), (1600000000, 1600000000))
        before = {p: (read(d.path(p)), os.stat(d.path(p)).st_mtime) for p in files}
        vmlist_before = read(d.path(".vmlist"))
    rows1 = [r.astuple() for r in pmxdb.rows_of(d.db)]
    sha1 = sha256_file(d.db)
    with Daemon(tmp) as d2:
        for p, (data, mt) in before.items():
            eq(read(d2.path(p)), data, f"{p} content after restart")
            eq(os.stat(d2.path(p)).st_mtime, mt, f"{p} mtime after restart")
        check(b'"100"' in read(d2.path(".vmlist")), f".vmlist lost VM 100 after restart: {vmlist_before!r}")
    rows2 = [r.astuple() for r in pmxdb.rows_of(d.db)]
    check(rows1 == rows2, "DB rows changed by a restart without mutations")
    eq(sha256_file(d.db), sha1, "DB file sha256 after a restart without mutations")


def test_db_and_lock_file_modes(t):
    """The DB is created 0600 (database.c chmod), the lock file 0600."""
    d = t.daemon()
    eq(oct(stat.S_IMODE(os.stat(d.db).st_mode)), oct(0o600), "config.db mode")
    check(os.path.exists(d.lock_file), "lock file not created")
    eq(oct(stat.S_IMODE(os.stat(d.lock_file).st_mode)), oct(0o600), "lock file mode")


def test_daemonize_parent_exits_after_mount_ready(t):
    """Without -f the parent exits 0 only once the child serves the mount; pid file holds the child pid."""
    d = t.daemon(foreground=False)  # start() fails unless the mount is there when the parent exits
    check(d.pid != d.parent.pid, "pid file holds the parent's pid, not the daemon's")
    check(d.alive(), f"daemon pid {d.pid} from the pid file is not running")
    eq(read(d.pid_file).decode(), f"{d.pid}\n", "pid file content")
    # serving right away
    check(".version" in os.listdir(d.mount), "mount not serving right after the parent exited")
    write(d.path("storage.cfg"), b"x\n")
    eq(read(d.path("storage.cfg")), b"x\n", "content")
    rc = d.stop(signal.SIGTERM)
    _check_clean_exit(d, rc, "SIGTERM (daemonized)")


def test_option_extra_argument_exits_255(t):
    """An extra (non-option) argument: exit 255, nothing mounted."""
    d = Daemon(t.tmpdir(), extra_args=["extra-argument"])
    rc, out, err, _ = run_binary(d.argv()[1:], timeout=15)
    check(not mounted(d.mount), "daemon mounted despite the extra argument")
    eq(rc, 255, "exit code")


def test_option_unknown_exits_1(t):
    """An unknown option: exit 1, nothing mounted."""
    d = Daemon(t.tmpdir(), extra_args=["--no-such-option"])
    rc, out, err, _ = run_binary(d.argv()[1:], timeout=15)
    check(not mounted(d.mount), "daemon mounted despite the unknown option")
    eq(rc, 1, "exit code")


def _corrupt_case(t, build, keywords, what):
    tmp = t.tmpdir()
    d = Daemon(tmp, check_stop=False)
    build(d.db)
    sha = sha256_file(d.db)
    size = os.path.getsize(d.db)
    pw = d.spawn()
    rc = pw.wait(20)
    if rc is None:
        d.proc = pw
        d.kill()
        raise TestFailure(f"daemon still running 20 s after start with a DB with {what}")
    check(not mounted(d.mount), f"daemon mounted a DB with {what}")
    check(rc != 0, f"daemon exited 0 with a DB with {what}")
    err = d.stderr_text() + open(d.stdout_log, errors="replace").read()
    low = err.lower()
    check(
        any(k.lower() in low for k in keywords),
        f"stderr does not name the problem ({' or '.join(repr(k) for k in keywords)}): {d.stderr_tail(4)}",
    )
    eq(os.path.getsize(d.db), size, "DB size after the failed start")
    eq(sha256_file(d.db), sha, "DB sha256 after the failed start (must be untouched)")


def _dir(inode, parent, name, version=None, data=None, mtime=1700000000):
    return (inode, parent, version or inode, 0, mtime, 4, name, data)


def _file(inode, parent, name, data=b"x", version=None, mtime=1700000000):
    return (inode, parent, version or inode, 0, mtime, 8, name, data)


def test_corrupt_db_duplicate_name(t):
    """A DB with two entries of the same name in one dir is refused, file untouched."""
    rows = [_dir(2, 0, "etc"), _file(3, 2, "dup-entry.cfg"), _file(4, 2, "dup-entry.cfg")]
    _corrupt_case(t, lambda p: pmxdb.make_db(p, rows), ["dup-entry.cfg"], "a duplicate name")


def test_corrupt_db_missing_parent(t):
    """A DB with an entry whose parent inode does not exist is refused, file untouched."""
    rows = [_dir(2, 0, "etc"), _file(3, 99, "orphan.cfg")]
    _corrupt_case(t, lambda p: pmxdb.make_db(p, rows), ["missing", "parent", "orphan"], "a missing parent")


def test_corrupt_db_dir_with_data(t):
    """A DB with a directory row holding non-empty data is refused, file untouched."""
    rows = [_dir(2, 0, "etc", data=b"junk")]
    _corrupt_case(t, lambda p: pmxdb.make_db(p, rows), ["data"], "a directory with data")


def test_corrupt_db_parent_not_dir(t):
    """A DB with an entry whose parent is a regular file is refused, file untouched."""
    rows = [_file(2, 0, "plain.cfg"), _file(3, 2, "child.cfg")]
    _corrupt_case(t, lambda p: pmxdb.make_db(p, rows), ["not a dir", "parent", "child.cfg"], "a non-directory parent")


def test_corrupt_db_unknown_type(t):
    """A DB with a row of unknown type is refused, file untouched."""
    rows = [(2, 0, 2, 0, 1700000000, 7, "weird", None)]
    _corrupt_case(t, lambda p: pmxdb.make_db(p, rows), ["type"], "an unknown entry type")


def test_corrupt_db_empty_name(t):
    """A DB with an entry with an empty name is refused, file untouched."""
    rows = [_file(2, 0, "")]
    _corrupt_case(t, lambda p: pmxdb.make_db(p, rows), ["name"], "an empty name")


def test_corrupt_db_not_sqlite(t):
    """A DB file that is not an SQLite database is refused, file untouched."""

    def build(p):
        with open(p, "wb") as f:
            f.write(b"this is not an SQLite database, just text\n" * 200)
        os.chmod(p, 0o600)

    _corrupt_case(t, build, ["not a database", "notadb", "sqlite"], "garbage instead of SQLite")


def test_external_umount_ends_daemon(t):
    """An external `umount` of the mount point ends the daemon cleanly (restart flag, pid file removed, exit 0)."""
    d = t.daemon()
    p = subprocess.run(["umount", d.mount], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    eq(p.returncode, 0, f"umount of the mount point ({p.stdout.decode(errors='replace').strip()})")
    rc = d.wait_exit(15)
    if rc is None:
        raise TestFailure("daemon still running 15 s after its mount was unmounted")
    _check_clean_exit(d, rc, "external umount")


def test_run_dir_created_0750_root_www_data(t):
    """The daemon creates its run dir with mode 0750, owner root:www-data."""
    d = t.daemon()
    check(os.path.isdir(d.run_dir), "run dir not created")
    st = os.stat(d.run_dir)
    eq(oct(stat.S_IMODE(st.st_mode)), oct(0o750), "run dir mode")
    eq((st.st_uid, st.st_gid), (0, www_data_gid()), "run dir owner (uid, gid)")


def test_restart_flag_removed_after_start(t):
    """A restart flag left by the previous run is removed once the daemon has started."""
    tmp = t.tmpdir()
    with Daemon(tmp) as d:
        pass
    check(os.path.exists(d.restart_flag), "restart flag not created by the first run")
    d2 = t.daemon(tmp)
    wait_for(lambda: not os.path.exists(d2.restart_flag), 10, what="removal of the restart flag after start")
