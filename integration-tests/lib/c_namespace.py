"""Private namespaces for running the C pmxcfs next to ours in a benchmark
(integration-tests/bench and integration-tests/bench-ipc, --c-binary).

The C daemon has fixed paths (/var/lib/pve-cluster/config.db, mount point
/etc/pve, /run/pve-cluster, /var/lib/rrdcached/db, /var/run/rrdcached.sock,
the IPC socket @pve2) and takes its node name from uname, which must resolve
to a non-loopback address. A benchmark script therefore re-executes itself
first (reexec()) as

  unshare --mount --uts --net --propagation private -- python3 SCRIPT ARGS...

and, inside the new namespaces only (enter(); it refuses to run in the
mount namespace of PID 1 or with / still shared), sets the host name, mounts
a tmpfs on TOP/ns and overlays (upper layer on that tmpfs) over /etc,
/var/lib and /run, writes /etc/hosts with `C_NODE_ADDR <nodename>`, removes
the journald sockets from /run (so no daemon logs to the host's journal),
creates /etc/pve and /run/pve-cluster and bind-mounts TOP/c-var-lib-pve-cluster
(on disk) over /var/lib/pve-cluster. With private_shm=True it also mounts a
tmpfs over /dev/shm, so that no libqb ring file of either daemon can outlive
the namespace. The host sees none of it; the namespaces, with their mounts,
end with the last process in them. The private network namespace keeps the
C daemon's @pve2 apart from a real one (abstract sockets are per network
namespace).
"""

import contextlib
import ctypes
import os
import shutil
import subprocess
import sys

C_NODE_ADDR = "192.0.2.10"  # TEST-NET-1: any non-loopback address will do
C_MNT = "/etc/pve"
C_DB_DIR = "/var/lib/pve-cluster"
C_RUN_DIR = "/run/pve-cluster"
C_RRD_DIR = "/var/lib/rrdcached/db"  # status.c RRDDIR
C_RRD_SOCK = "/var/run/rrdcached.sock"  # status.c rrdcsock (unix:...)
C_IPC_SERVICE = "pve2"

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(Exception):
    """The namespaces could not be made or set up."""


def same_mount_ns_as_init():
    try:
        return os.readlink("/proc/self/ns/mnt") == os.readlink("/proc/1/ns/mnt")
    except OSError:
        return False


def reexec(script, args, log=None):
    """Run `script` (a Python file) again with `args` inside new mount, UTS
    and network namespaces (exec: does not return)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise NamespaceError("--c-binary needs unshare (util-linux)")
    argv = [unshare, "--mount", "--uts", "--net", "--propagation", "private", "--",
            sys.executable, os.path.abspath(script)] + list(args)
    if log is not None:
        log("re-running inside private mount/UTS/network namespaces: " + " ".join(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(unshare, argv)


def enter(top, nodename, on_mount=None, private_shm=False):
    """Inside the namespaces made by reexec() (checked): host name, overlays
    over /etc, /var/lib and /run, /etc/hosts, the C daemon's directories
    (see the module docstring). `on_mount(path)` is called for every mount
    made. Returns the mount points made (innermost last)."""
    if same_mount_ns_as_init():
        raise NamespaceError("--in-ns given but this process shares the mount namespace of PID 1; "
                             "refusing to mount anything (run without --in-ns)")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            if fields[4] == "/" and "shared:" in line.split(" - ")[0]:
                raise NamespaceError("/ is still a shared mount in this namespace; refusing to mount")
    name = nodename.encode()
    if _libc.sethostname(name, len(name)) != 0:
        e = ctypes.get_errno()
        raise NamespaceError(f"sethostname: {os.strerror(e)}")
    made = []

    def mount(*args):
        r = subprocess.run(["mount", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        if r.returncode != 0:
            raise NamespaceError(f"mount {' '.join(args)}: {r.stdout.decode(errors='replace').strip()}")
        made.append(args[-1])
        if on_mount is not None:
            on_mount(args[-1])

    ns = os.path.join(top, "ns")
    os.makedirs(ns)
    mount("-t", "tmpfs", "-o", "mode=0700", "pmxcfs-bench", ns)
    for d in ("/etc", "/var/lib", "/run"):
        key = d.strip("/").replace("/", "-")
        upper, work = os.path.join(ns, key + "-upper"), os.path.join(ns, key + "-work")
        os.makedirs(upper)
        os.makedirs(work)
        mount("-t", "overlay", "overlay", "-o", f"lowerdir={d},upperdir={upper},workdir={work}", d)
    if private_shm:
        mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "pmxcfs-bench-shm", "/dev/shm")
    with open("/etc/hosts", "w") as f:
        f.write(f"127.0.0.1 localhost\n{C_NODE_ADDR} {nodename}\n")
    for sock in ("/run/systemd/journal/dev-log", "/run/systemd/journal/socket"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
    for p in (C_DB_DIR, C_RUN_DIR, C_MNT):
        os.makedirs(p, exist_ok=True)
    disk = os.path.join(top, "c-var-lib-pve-cluster")
    os.makedirs(disk)
    mount("--bind", disk, C_DB_DIR)
    if os.uname().nodename != nodename:
        raise NamespaceError("host name not set in the namespace")
    return made


def _mount_points():
    res = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ", 5)
            if len(fields) >= 5:
                res.append(fields[4].encode().decode("unicode_escape"))
    return res


def undo(made):
    """Lazily unmount what enter() made, innermost first (they would vanish
    with the namespace anyway; some, like /run, are also mount points
    below the ones made, so what is left is not checked here)."""
    for mp in reversed(made):
        if mp in _mount_points():
            subprocess.run(["umount", "-l", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
