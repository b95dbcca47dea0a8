"""lab: the multi-node test infrastructure itself (lib/cluster.py): real
corosync nodes in private namespaces, quorum, partitions, and nothing left
behind. No pmxcfs runs here (integration-tests/lab-c-smoke runs the C
daemon on every node)."""

import os
import signal
import subprocess
import time

from lib import harness
from lib.cluster import Cluster, qb_shm_of
from lib.harness import NotRunnableOnC, check, eq


def _ours_only():
    if harness.c_mode():
        raise NotRunnableOnC("the lab group starts no pmxcfs (integration-tests/lab-c-smoke runs the C daemon on 3 nodes)")


def _host_netns():
    p = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return sorted(p.stdout.decode(errors="replace").splitlines())


def _host_addrs():
    p = subprocess.run(["ip", "-br", "addr"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return p.stdout.decode(errors="replace")


def test_three_nodes_quorate(t):
    """3 corosync nodes become quorate; each sees 3 joined members; each node has its own host name, /etc and network."""
    _ours_only()
    with Cluster(3) as c:
        t.note(f"namespaces {c.timings['namespaces']:.2f}s, corosync quorate {c.timings['corosync_quorate']:.2f}s")
        for n in c.nodes:
            q = n.quorum()
            check(q is not None, f"{n.name}: corosync-quorumtool gave no status")
            eq((q["quorate"], q["members"], q["total_votes"]), (True, [1, 2, 3], 3), f"{n.name}: quorum")
            eq(n.cmap_members(), [1, 2, 3], f"{n.name}: cmap runtime.members joined")
            eq(n.cmap("totem.cluster_name").get("totem.cluster_name"), "test", f"{n.name}: cmap totem.cluster_name")
            eq(n.run(["uname", "-n"], check=True).stdout.strip(), n.name, f"{n.name}: host name")
            eq(n.run(["getent", "hosts", n.name], check=True).stdout.split()[0], n.ip, f"{n.name}: resolves to")
            eq(os.listdir(n.path()), [], f"{n.name}: /etc/pve before any daemon")
            eq(harness.read(n.root_path("/etc/corosync/corosync.conf")), c.conf, f"{n.name}: corosync.conf")
            # libqb IPC inside the node: corosync's cmap answers, no @pve2 there
            check(n.qb_run(service="cmap").connected(), f"{n.name}: libqb client cannot connect to cmap in the node")
            check(not n.qb_run(service="pve2").connected(), f"{n.name}: a @pve2 server answers in a fresh node")
        check(f"{c.subnet}." not in _host_addrs(), "the cluster's subnet appears in the host's network namespace")


def test_partition_and_heal(t):
    """partition n3 (nft drop of UDP 5405): n3 loses quorum, n1/n2 keep it with 2 members; heal: all quorate with 3."""
    _ours_only()
    with Cluster(3) as c:
        n1, n2, n3 = c.nodes
        n3.partition()
        check(n3.partitioned(), "n3: nft table missing after partition()")
        s = c.wait_quorum({n1: True, n2: True, n3: False}, timeout=10, members=2)
        t.note(f"partition detected in {s:.2f}s")
        eq(n1.quorum()["members"], [1, 2], "n1: members while n3 is partitioned")
        eq(n3.quorum()["members"], [3], "n3: members while partitioned")
        n3.heal()
        check(not n3.partitioned(), "n3: nft table still there after heal()")
        s = c.wait_quorum({n: True for n in c.nodes}, timeout=15, members=3)
        t.note(f"healed in {s:.2f}s")
        # corosync restart on one node
        n2.stop_corosync()
        c.wait_quorum({n1: True, n3: True}, timeout=10, members=2)
        n2.start_corosync()
        s = c.wait_quorum({n: True for n in c.nodes}, timeout=15, members=3)
        t.note(f"corosync restart on n2: quorate again in {s:.2f}s")


def test_nothing_left_behind(t):
    """after the Cluster context exits (also after kill -9 of corosync and of a client): no process, namespace, mount, /dev/shm entry or temp dir of it is left."""
    _ours_only()
    netns_before = _host_netns()
    with Cluster(3) as c:
        n3 = c.nodes[2]
        # a connected client, then kill -9 of both ends: libqb's connection
        # dir in /dev/shm is left behind (cleanup must remove it)
        client, pw = n3.spawn(["corosync-cmapctl", "-t", "runtime.members"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = n3.corosync.pid
        harness.wait_for(lambda: qb_shm_of({client.pid}), 5, what="the client's libqb dir in /dev/shm")
        # stopped first, so that neither end can clean up after the other
        # dies (corosync removes a killed client's dir, a client the dir
        # of a dead server)
        pw.signal(signal.SIGSTOP)
        n3.corosync.signal(signal.SIGSTOP)
        pw.signal(signal.SIGKILL)
        n3.corosync.signal(signal.SIGKILL)
        client.stdin.close()
        pw.wait(5)
        n3.corosync.wait(5)
        time.sleep(0.2)
        leaked = qb_shm_of({client.pid, server})
        check(leaked, "no libqb dir left after kill -9 of corosync and its client (nothing to clean up?)")
        pids = c.all_pids()
        base = c.base
        check(len(c.net_inodes) == 4 and len(c.mnt_inodes) == 3, "namespace inodes not recorded")
    eq(c.leftovers(), [], "left behind")
    eq(qb_shm_of(pids), [], "/dev/shm entries of the cluster's pids")
    check(not os.path.exists(base), f"{base} still exists")
    eq(harness.mounts_below(base), [], "host mounts below the cluster's dir")
    eq(_host_netns(), netns_before, "ip netns list")
    alive = [p for p in pids if harness._proc_state(p) not in (None, "Z")]
    eq(alive, [], "processes of the cluster still alive")
    t.note(f"{len(pids)} processes started and gone; libqb dirs removed: {len(leaked)}")
