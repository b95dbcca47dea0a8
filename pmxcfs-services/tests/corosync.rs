//! The services against a real corosync (2 nodes in private network
//! namespaces, see lab/). Runs as root; prints "skipped" otherwise.
//!
//! One process acts as both CPG members (one thread per node, each in its
//! node's network namespace: same pid, different node ids). Two handles of
//! one process cannot join the same group on the same node: corosync
//! answers CS_ERR_EXIST to a join with a pid and group already joined.

mod lab;

use std::collections::BTreeSet;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pmxcfs_api_types::NodeId;
use pmxcfs_services::{
    ConfdbService, CpgError, CpgEvent, CpgService, NodeInfo, QuorumService, STOP_TIMEOUT,
};

const GROUP: &str = "pmxcfs_test_group";

fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// Collects events until `pred` holds for one (returned last) or the
/// timeout passes (panics, showing what came).
fn wait_event(
    who: &str,
    rx: &Receiver<CpgEvent>,
    timeout: Duration,
    mut pred: impl FnMut(&CpgEvent) -> bool,
) -> Vec<CpgEvent> {
    let end = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) => {
                let hit = pred(&ev);
                seen.push(ev);
                if hit {
                    return seen;
                }
            }
            Err(e) => {
                panic!("{who}: expected event not seen within {timeout:?} ({e}); saw {seen:?}")
            }
        }
    }
}

fn member_set(members: &[(NodeId, u32)]) -> BTreeSet<u32> {
    members.iter().map(|(n, _)| n.0).collect()
}

fn is_confchg_with(ev: &CpgEvent, ids: &[u32]) -> bool {
    matches!(ev, CpgEvent::Confchg { members, .. } if member_set(members) == ids.iter().copied().collect())
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn deliveries(events: &[CpgEvent]) -> Vec<(u32, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            CpgEvent::Deliver { nodeid, msg, .. } => Some((nodeid.0, msg.clone())),
            _ => None,
        })
        .collect()
}

/// Receives `n` deliveries (other events are skipped).
fn recv_deliveries(who: &str, rx: &Receiver<CpgEvent>, n: usize) -> Vec<(u32, Vec<u8>)> {
    let mut got = Vec::new();
    while got.len() < n {
        let evs = wait_event(who, rx, Duration::from_secs(5), |e| {
            matches!(e, CpgEvent::Deliver { .. })
        });
        got.extend(deliveries(&evs));
    }
    got
}

fn timed_stop(what: &str, f: impl FnOnce() -> Result<(), pmxcfs_services::StopError>) {
    let t = Instant::now();
    f().unwrap_or_else(|e| panic!("{what}: {e}"));
    let took = t.elapsed();
    eprintln!("{what} stopped in {took:?}");
    assert!(took < STOP_TIMEOUT, "{what}: stop took {took:?}");
}

#[test]
fn services_against_real_corosync() {
    if let Some(why) = lab::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    init_log();
    let t0 = Instant::now();
    let mut lab = lab::Lab::new(2, "svctest");
    lab.start_corosync(0);
    lab.start_corosync(1);
    lab.wait_corosync_ready(0, Duration::from_secs(10));
    lab.wait_corosync_ready(1, Duration::from_secs(10));
    eprintln!("[{:?}] corosync ready on both nodes", t0.elapsed());

    let pid = std::process::id();
    let (a, arx, quorum, confdb) = lab.in_node(0, || {
        let (a, arx) = CpgService::start(GROUP).unwrap();
        (
            a,
            arx,
            QuorumService::start().unwrap(),
            ConfdbService::start().unwrap(),
        )
    });
    let (b, brx) = lab.in_node(1, || CpgService::start(GROUP).unwrap());
    let (asend, bsend) = (a.sender(), b.sender());

    // --- join: both see Joined, then a membership of both nodes
    let ev = wait_event("A", &arx, Duration::from_secs(5), |e| {
        matches!(e, CpgEvent::Joined { .. })
    });
    assert_eq!(
        ev.last(),
        Some(&CpgEvent::Joined {
            nodeid: NodeId(1),
            pid
        })
    );
    let ev = wait_event("B", &brx, Duration::from_secs(5), |e| {
        matches!(e, CpgEvent::Joined { .. })
    });
    assert_eq!(
        ev.last(),
        Some(&CpgEvent::Joined {
            nodeid: NodeId(2),
            pid
        })
    );
    let ev = wait_event("A", &arx, Duration::from_secs(5), |e| {
        is_confchg_with(e, &[1, 2])
    });
    if let Some(CpgEvent::Confchg { members, .. }) = ev.last() {
        assert_eq!(members, &vec![(NodeId(1), pid), (NodeId(2), pid)]);
    }
    wait_event("B", &brx, Duration::from_secs(5), |e| {
        is_confchg_with(e, &[1, 2])
    });
    assert!(asend.is_joined() && bsend.is_joined());
    eprintln!("[{:?}] both members joined", t0.elapsed());

    // the group carries the trailing NUL, as the C daemon's
    let out = lab.nodes[0].run(&["corosync-cpgtool", "-n"]);
    let groups = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        groups.contains(&format!("{GROUP}\\x00")),
        "corosync-cpgtool does not show {GROUP}\\x00: {groups}"
    );

    // --- agreed order: messages of both senders, sent concurrently, arrive
    // in one order at both members, sender ids right, big ones intact
    const N: usize = 500;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sent = Instant::now();
    std::thread::scope(|s| {
        let big = &big;
        let (asend, bsend) = (&asend, &bsend);
        s.spawn(move || {
            for i in 0..N {
                asend.mcast_agreed(format!("a{i}").as_bytes()).unwrap();
            }
            asend.mcast_agreed(big).unwrap();
        });
        s.spawn(move || {
            for i in 0..N {
                bsend.mcast_agreed(format!("b{i}").as_bytes()).unwrap();
            }
        });
    });
    let da = recv_deliveries("A", &arx, 2 * N + 1);
    let db = recv_deliveries("B", &brx, 2 * N + 1);
    let took = sent.elapsed();
    assert_eq!(da, db, "members saw different orders");
    for (who, tag) in [(1u32, 'a'), (2, 'b')] {
        let mine: Vec<&Vec<u8>> = da
            .iter()
            .filter(|(n, m)| *n == who && m.len() < 10)
            .map(|(_, m)| m)
            .collect();
        let want: Vec<Vec<u8>> = (0..N).map(|i| format!("{tag}{i}").into_bytes()).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>(), "FIFO per sender");
    }
    assert!(
        da.contains(&(1, big.clone())),
        "big message not delivered intact"
    );
    eprintln!(
        "[{:?}] {} messages in agreed order in {took:?}",
        t0.elapsed(),
        2 * N + 1
    );

    // --- quorum and cmap on node 1
    let took = wait_until("quorate", Duration::from_secs(5), || quorum.is_quorate());
    eprintln!("[{:?}] quorate (waited {took:?})", t0.elapsed());
    wait_until("cmap read", Duration::from_secs(5), || {
        confdb.current().is_some()
    });
    let cfg = confdb.current().unwrap();
    assert_eq!(cfg.name, "svctest");
    assert_eq!(cfg.config_version, 3);
    assert_eq!(
        cfg.nodes,
        vec![
            NodeInfo {
                nodeid: NodeId(1),
                name: "node1".into(),
                votes: 1,
                ip: Some("10.99.0.1".into())
            },
            NodeInfo {
                nodeid: NodeId(2),
                name: "node2".into(),
                votes: 1,
                ip: Some("10.99.0.2".into())
            },
        ]
    );
    let mut cfg_rx = confdb.subscribe();
    cfg_rx.mark_unchanged();
    let mut q_rx = quorum.subscribe();
    q_rx.mark_unchanged();

    // a cmap change under a tracked prefix is published
    let out = lab.nodes[0].run(&["corosync-cmapctl", "-s", "totem.config_version", "u64", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("config_version 4 published", Duration::from_secs(3), || {
        confdb.current().is_some_and(|c| c.config_version == 4)
    });
    assert!(cfg_rx.has_changed().unwrap());
    // back to the version in the file: a restarted node 2 would refuse to
    // join a node with another config_version
    let out = lab.nodes[0].run(&["corosync-cmapctl", "-s", "totem.config_version", "u64", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("config_version 3 published", Duration::from_secs(3), || {
        confdb.current().is_some_and(|c| c.config_version == 3)
    });
    cfg_rx.mark_unchanged();

    // --- node 2's corosync dies: B is told, A sees node 2 leave, node 1
    // loses quorum (2 of 2 votes expected)
    lab.kill_corosync(1, Signal::SIGKILL);
    let killed = Instant::now();
    wait_event("B", &brx, Duration::from_secs(3), |e| {
        *e == CpgEvent::Disconnected
    });
    eprintln!(
        "[{:?}] B disconnected after {:?}",
        t0.elapsed(),
        killed.elapsed()
    );
    assert!(matches!(bsend.mcast_agreed(b"x"), Err(CpgError::NotJoined)));
    wait_event("A", &arx, Duration::from_secs(5), |e| {
        is_confchg_with(e, &[1])
    });
    let took = wait_until("quorum lost", Duration::from_secs(5), || {
        !quorum.is_quorate()
    });
    eprintln!("[{:?}] node 1 not quorate after {took:?}", t0.elapsed());
    assert!(q_rx.has_changed().unwrap());

    // ... and comes back: B joins again within ~6 s (5 s retry)
    lab.start_corosync(1);
    let restarted = Instant::now();
    wait_event("B", &brx, Duration::from_secs(8), |e| {
        matches!(e, CpgEvent::Joined { .. })
    });
    let rejoin = restarted.elapsed();
    eprintln!(
        "[{:?}] B rejoined {rejoin:?} after the restart",
        t0.elapsed()
    );
    assert!(
        rejoin < Duration::from_millis(6500),
        "rejoin took {rejoin:?}"
    );
    wait_event("B", &brx, Duration::from_secs(5), |e| {
        is_confchg_with(e, &[1, 2])
    });
    wait_event("A", &arx, Duration::from_secs(5), |e| {
        is_confchg_with(e, &[1, 2])
    });
    wait_until("quorate again", Duration::from_secs(5), || {
        quorum.is_quorate()
    });
    bsend.mcast_agreed(b"after restart").unwrap();
    assert_eq!(
        recv_deliveries("A", &arx, 1),
        vec![(2, b"after restart".to_vec())]
    );
    assert_eq!(
        recv_deliveries("B", &brx, 1),
        vec![(2, b"after restart".to_vec())]
    );

    // --- leave (DFSM LEAVE mode) and rejoin: A's last connection is more
    // than 5 s old, so it joins again as soon as corosync reported the leave
    asend.leave();
    let ev = wait_event("A", &arx, Duration::from_secs(5), |e| {
        is_confchg_with(e, &[2])
    });
    assert!(!asend.is_joined());
    assert!(matches!(asend.mcast_agreed(b"x"), Err(CpgError::NotJoined)));
    let left_at = Instant::now();
    drop(ev);
    wait_event(
        "B",
        &brx,
        Duration::from_secs(5),
        |e| matches!(e, CpgEvent::Confchg { left, .. } if left.contains(&(NodeId(1), pid))),
    );
    wait_event("A", &arx, Duration::from_secs(7), |e| {
        matches!(e, CpgEvent::Joined { .. })
    });
    let rejoin = left_at.elapsed();
    eprintln!("[{:?}] A rejoined {rejoin:?} after its leave", t0.elapsed());
    assert!(
        rejoin < Duration::from_secs(1),
        "rejoin after leave took {rejoin:?}"
    );
    wait_event("A", &arx, Duration::from_secs(5), |e| {
        is_confchg_with(e, &[1, 2])
    });
    wait_event("B", &brx, Duration::from_secs(5), |e| {
        is_confchg_with(e, &[1, 2])
    });

    // --- node 1's corosync dies: the quorum service reports not quorate at
    // once, the cmap snapshot stays; all three reconnect after the restart
    lab.kill_corosync(0, Signal::SIGKILL);
    wait_event("A", &arx, Duration::from_secs(3), |e| {
        *e == CpgEvent::Disconnected
    });
    wait_until(
        "not quorate while disconnected",
        Duration::from_secs(2),
        || !quorum.is_quorate(),
    );
    assert_eq!(
        confdb.current().map(|c| c.name),
        Some("svctest".to_string())
    );
    cfg_rx.mark_unchanged();
    lab.start_corosync(0);
    let restarted = Instant::now();
    wait_event("A", &arx, Duration::from_secs(8), |e| {
        matches!(e, CpgEvent::Joined { .. })
    });
    let rejoin = restarted.elapsed();
    eprintln!(
        "[{:?}] A rejoined {rejoin:?} after the restart",
        t0.elapsed()
    );
    assert!(
        rejoin < Duration::from_millis(6500),
        "rejoin took {rejoin:?}"
    );
    wait_until("quorate after restart", Duration::from_secs(8), || {
        quorum.is_quorate()
    });
    wait_until("cmap read after restart", Duration::from_secs(3), || {
        cfg_rx.has_changed().unwrap_or(false)
    });
    // the restarted corosync read its file again: version 3
    assert_eq!(confdb.current().map(|c| c.config_version), Some(3));
    eprintln!("[{:?}] quorum and cmap reconnected", t0.elapsed());

    // --- stop: each within 1 s, the CPG services during a flood of
    // messages (A sends as fast as it can, both receive)
    let flood = {
        let asend = asend.clone();
        std::thread::spawn(move || {
            let msg = vec![7u8; 1024];
            let mut sent = 0u64;
            loop {
                match asend.mcast_agreed(&msg) {
                    Ok(()) => sent += 1,
                    Err(e) => return (sent, e),
                }
            }
        })
    };
    wait_event(
        "B",
        &brx,
        Duration::from_secs(5),
        |e| matches!(e, CpgEvent::Deliver { msg, .. } if msg.len() == 1024),
    );
    std::thread::sleep(Duration::from_millis(300));
    timed_stop("cpg B (flooded)", || b.stop());
    timed_stop("cpg A (flooding)", || a.stop());
    let (sent, err) = flood.join().unwrap();
    eprintln!("flood: {sent} messages sent, then {err}");
    assert!(
        matches!(err, CpgError::Stopped | CpgError::NotJoined),
        "{err}"
    );
    timed_stop("quorum", || quorum.stop());
    timed_stop("confdb", || confdb.stop());
    assert!(matches!(asend.mcast_agreed(b"x"), Err(CpgError::Stopped)));
    eprintln!("[{:?}] done", t0.elapsed());
}

/// Without corosync: nothing is joined or quorate, sends fail at once, and
/// every service stops at once while it waits to retry.
#[test]
fn services_without_corosync_stop_at_once() {
    if let Some(why) = lab::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    init_log();
    let lab = lab::Lab::new(1, "svctest");
    let (cpg, rx, quorum, confdb) = lab.in_node(0, || {
        let (cpg, rx) = CpgService::start(GROUP).unwrap();
        (
            cpg,
            rx,
            QuorumService::start().unwrap(),
            ConfdbService::start().unwrap(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let send = cpg.sender();
    assert!(!send.is_joined());
    assert!(matches!(send.mcast_agreed(b"x"), Err(CpgError::NotJoined)));
    assert!(rx.try_recv().is_err(), "no event without corosync");
    assert!(!quorum.is_quorate());
    assert!(confdb.current().is_none());
    timed_stop("cpg", || cpg.stop());
    timed_stop("quorum", || quorum.stop());
    timed_stop("confdb", || confdb.stop());
    assert!(matches!(send.mcast_agreed(b"x"), Err(CpgError::Stopped)));
}
