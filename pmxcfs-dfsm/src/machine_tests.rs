//! The state machine under a scripted CPG: membership changes at every
//! step of a synchronisation, messages of an old epoch delivered in a new
//! one, leaders leaving mid-update, protocol versions, verification.
//! Seeded and replayable: a failing seed is printed.

use std::collections::BTreeMap;

use crate::bytes::test_util::Rng;
use crate::machine::{AppError, Application, DeliverCtx, Member, Mode, Output, SyncInfo, Updates};
use crate::sim::{all, Fingerprint, Net};
use crate::wire::{DfsmMessage, CSUM_SIZE};

const PROTO: u32 = 1;

/// A replicated key/value map: the data every member must agree on.
#[derive(Default)]
struct KvApp {
    data: BTreeMap<String, u64>,
    version: u64,
    incoming: Option<Vec<u8>>,
    leader: Option<Member>,
}

impl KvApp {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.version.to_le_bytes().to_vec();
        for (k, n) in &self.data {
            v.extend_from_slice(&(k.len() as u32).to_le_bytes());
            v.extend_from_slice(k.as_bytes());
            v.extend_from_slice(&n.to_le_bytes());
        }
        v
    }

    fn decode(b: &[u8]) -> Option<(u64, BTreeMap<String, u64>)> {
        let version = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let mut data = BTreeMap::new();
        let mut i = 8;
        while i < b.len() {
            let l = u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize;
            let k = std::str::from_utf8(b.get(i + 4..i + 4 + l)?)
                .ok()?
                .to_string();
            let n = u64::from_le_bytes(b.get(i + 4 + l..i + 12 + l)?.try_into().ok()?);
            data.insert(k, n);
            i += 12 + l;
        }
        Some((version, data))
    }
}

impl Fingerprint for KvApp {
    fn fingerprint(&self) -> Vec<u8> {
        self.encode()
    }
}

impl Net<KvApp> {
    fn new(n: u32) -> Self {
        Net::new_with(n, PROTO, |_| KvApp::default())
    }
}

impl Application for KvApp {
    fn deliver(
        &mut self,
        _ctx: &mut DeliverCtx,
        _subtype: u16,
        _time: u32,
        p: &[u8],
    ) -> Result<i32, AppError> {
        let k = String::from_utf8(p.to_vec()).map_err(|_| AppError::leave("bad op"))?;
        *self.data.entry(k).or_insert(0) += 1;
        self.version += 1;
        Ok(0)
    }

    fn get_state(&mut self) -> Result<Vec<u8>, AppError> {
        Ok(self.encode())
    }

    fn process_state_update(
        &mut self,
        sync: &mut SyncInfo,
        out: &mut Updates,
    ) -> Result<(), AppError> {
        // leader: highest version, then the lowest member (nodes sorted)
        let mut leader = 0;
        for (i, n) in sync.nodes.iter().enumerate() {
            let v = KvApp::decode(n.state.as_deref().unwrap_or_default()).map(|s| s.0);
            let lv =
                KvApp::decode(sync.nodes[leader].state.as_deref().unwrap_or_default()).map(|s| s.0);
            if v > lv {
                leader = i;
            }
        }
        let lstate = sync.nodes[leader].state.clone();
        let mut all = true;
        for n in &mut sync.nodes {
            n.synced = n.state == lstate;
            all &= n.synced;
        }
        self.leader = Some(sync.nodes[leader].member);
        if Some(leader) == sync.local && !all {
            out.update(lstate.unwrap_or_default());
            out.complete();
        }
        Ok(())
    }

    fn process_update(
        &mut self,
        _sync: &SyncInfo,
        from: Member,
        update: &[u8],
    ) -> Result<(), AppError> {
        if Some(from) != self.leader {
            return Err(AppError::leave("update from a non-leader"));
        }
        self.incoming = Some(update.to_vec());
        Ok(())
    }

    fn commit(&mut self, _sync: &SyncInfo) -> Result<(), AppError> {
        let b = self
            .incoming
            .take()
            .ok_or(AppError::leave("commit without update"))?;
        let (v, d) = KvApp::decode(&b).ok_or(AppError::leave("bad update"))?;
        self.version = v;
        self.data = d;
        Ok(())
    }

    fn cleanup(&mut self) {
        self.incoming = None;
    }

    fn checksum(&mut self) -> Option<Result<[u8; CSUM_SIZE], AppError>> {
        let mut c = [0u8; CSUM_SIZE];
        for (i, b) in self.encode().iter().enumerate() {
            c[i % CSUM_SIZE] ^= b.wrapping_add(i as u8);
        }
        Some(Ok(c))
    }
}

#[test]
fn alone_is_synced_and_delivers_own_messages() {
    let mut net = Net::new(1);
    net.confchg(all(1), true);
    assert_eq!(net.procs[0].dfsm.mode(), Mode::Synced);
    net.submit(0, "a");
    net.settle();
    assert_eq!(net.procs[0].answered.get(&1), Some(&Some(0)));
    assert_eq!(net.procs[0].app.data.get("a"), Some(&1));
}

#[test]
fn joining_nodes_sync_from_the_leader() {
    let mut net = Net::new(3);
    net.confchg(all(1), true);
    for k in ["a", "b", "c"] {
        net.submit(0, k);
    }
    net.settle();
    net.confchg(all(3), true);
    net.settle();
    net.check_converged("after join");
    assert_eq!(net.procs[2].app.data.len(), 3);
    // messages while syncing are queued and delivered in order
    net.submit(1, "x");
    net.submit(2, "y");
    net.settle();
    net.check_converged("after writes");
    assert_eq!(net.procs[1].answered.get(&1), Some(&Some(0)));
}

#[test]
fn messages_sent_during_a_sync_are_delivered_after_it() {
    let mut net = Net::new(3);
    net.confchg(all(2), true);
    net.settle();
    net.submit(0, "a");
    net.settle();
    // n3 joins; before the sync completes everybody writes
    net.confchg(all(3), true);
    for i in 0..3 {
        net.submit(i, "during");
    }
    net.settle();
    net.check_converged("after sync");
    assert_eq!(net.procs[0].app.data.get("during"), Some(&3));
    for p in &net.procs {
        assert_eq!(
            p.answered.values().filter(|r| r.is_some()).count(),
            p.answered.len()
        );
    }
}

#[test]
fn state_messages_of_an_old_epoch_are_ignored() {
    let mut net = Net::new(3);
    net.confchg(all(2), true);
    net.settle();
    // a sync starts (SYNC_START, STATEs pending) and the membership changes
    // before any of it is delivered: the old round's messages arrive in
    // the new epoch and must be ignored
    net.confchg(all(3), false);
    net.confchg(all(3)[..2].to_vec(), false);
    net.settle();
    net.check_converged("after two quick changes");
    assert!(
        !net.log
            .iter()
            .any(|l| l.contains("Leave") && !l.contains("NodeId(3)")),
        "old-epoch messages made a remaining member leave: {:?}",
        net.log
    );
}

#[test]
fn leader_leaving_mid_update() {
    let mut net = Net::new(3);
    net.confchg(all(1), true);
    for k in ["a", "b"] {
        net.submit(0, k);
    }
    net.settle();
    net.confchg(all(3), false);
    // deliver SYNC_START and the states, then the leader (n1) goes away
    // before its UPDATE reaches the others
    for _ in 0..4 {
        net.deliver_one();
    }
    let rest: Vec<Member> = all(3)[1..].to_vec();
    net.confchg(rest, false);
    net.settle();
    net.check_converged("after the leader left");
    // n1 comes back: everybody converges on the highest version
    net.confchg(all(3), true);
    net.settle();
    net.check_converged("after the leader came back");
    assert_eq!(net.procs[2].app.data.get("a"), Some(&1));
}

#[test]
fn newer_protocol_is_a_permanent_error_older_is_ignored() {
    let mut net = Net::new(2);
    net.confchg(all(2), true);
    net.settle();
    let from = net.procs[1].m;
    let newer = DfsmMessage::Normal {
        subtype: 0,
        count: 1,
        payload: b"k".to_vec(),
    }
    .encode(PROTO + 1, 1);
    let older = DfsmMessage::Normal {
        subtype: 0,
        count: 1,
        payload: b"k".to_vec(),
    }
    .encode(PROTO - 1, 1);
    let p = &mut net.procs[0];
    p.dfsm.deliver(from, &older, 1, &mut p.app);
    assert_eq!(p.dfsm.mode(), Mode::Synced);
    assert!(p.app.data.is_empty());
    p.dfsm.deliver(from, &newer, 1, &mut p.app);
    assert_eq!(p.dfsm.mode(), Mode::VersionError);
    assert!(!p.dfsm.restartable());
    assert!(p.dfsm.restart(&mut p.app).is_none());
}

#[test]
fn garbage_makes_a_member_leave_and_rejoin() {
    let mut net = Net::new(2);
    net.confchg(all(2), true);
    net.settle();
    let from = net.procs[1].m;
    let p = &mut net.procs[0];
    let out = p.dfsm.deliver(from, b"short", 1, &mut p.app);
    assert!(out.contains(&Output::Mode(Mode::Leave)));
    net.settle();
    net.confchg(all(2), true);
    net.settle();
    net.check_converged("after rejoin");
}

#[test]
fn verification_detects_divergence() {
    let mut net = Net::new(2);
    net.confchg(all(2), true);
    net.settle();
    net.submit(0, "a");
    net.settle();
    let now = net.now;
    let req = net.procs[0]
        .dfsm
        .verify_request(now)
        .expect("lowest node asks");
    assert!(
        net.procs[1].dfsm.verify_request(now).is_none(),
        "only the lowest node"
    );
    let m = net.procs[0].m;
    net.pending.push_back((m, req));
    net.settle();
    net.check_converged("verification with equal data");
    // diverge n2 behind the machine's back: the next round makes it leave
    net.procs[1].app.data.insert("rogue".into(), 1);
    let req = net.procs[0]
        .dfsm
        .verify_request(net.now)
        .expect("next round");
    net.pending.push_back((m, req));
    while net.deliver_one() {}
    let modes: Vec<Mode> = net.procs.iter().map(|p| p.dfsm.mode()).collect();
    assert!(
        modes.contains(&Mode::Leave),
        "a checksum mismatch leaves: {modes:?}"
    );
}

/// Random schedules: writes, deliveries and membership changes at every
/// point (with and without flushing what is in flight). At the end the
/// group settles and every member is synced with equal data, no message is
/// answered twice, and writes made in a stable group are answered and seen
/// everywhere.
#[test]
fn random_schedules_converge() {
    for seed in 1..=300u64 {
        let result = std::panic::catch_unwind(|| random_schedule(seed));
        if let Err(e) = result {
            panic!("seed {seed} failed (replay with random_schedule({seed})): {e:?}");
        }
    }
}

fn random_schedule(seed: u64) {
    let mut rng = Rng::new(seed);
    let n = 2 + (rng.next_u64() % 3) as u32;
    let mut net = Net::new(n);
    let everybody = all(n);
    net.confchg(vec![everybody[0]], true);
    for step in 0..150 {
        match rng.next_u64() % 10 {
            0..=3 => {
                let i = (rng.next_u64() % n as u64) as usize;
                net.submit(i, &format!("k{}", rng.next_u64() % 5));
            }
            4..=7 => {
                net.deliver_one();
            }
            _ => {
                let mut new: Vec<Member> = everybody
                    .iter()
                    .copied()
                    .filter(|_| rng.next_u64() % 3 != 0)
                    .collect();
                if new.is_empty() {
                    new.push(everybody[step % n as usize]);
                }
                let good: Vec<Member> = new
                    .into_iter()
                    .filter(|m| {
                        net.procs[net.idx(*m)].dfsm.mode() != Mode::Leave
                            || !net.members.contains(m)
                    })
                    .collect();
                if !good.is_empty() {
                    net.confchg(good, rng.next_u64() % 2 == 0);
                }
            }
        }
    }
    net.settle();
    net.confchg(everybody.clone(), true);
    net.settle();
    net.check_converged(&format!("seed {seed}"));
    // a stable group: every write is answered and seen everywhere
    for i in 0..n as usize {
        net.submit(i, "final");
    }
    net.settle();
    net.check_converged(&format!("seed {seed}, final writes"));
    assert_eq!(
        net.spurious_leaves, 0,
        "seed {seed}: members left without cause: {:?}",
        net.log
    );
    let finals = net.procs[0].app.data.get("final").copied();
    assert_eq!(finals, Some(n as u64), "seed {seed}: final writes");
    for p in &net.procs {
        assert!(
            p.waiting.is_empty(),
            "seed {seed}: {:?} still waits for {:?}",
            p.m,
            p.waiting
        );
    }
}
