//! A scripted CPG for the state machine tests: one agreed order of
//! configuration changes and messages for all members, the processes'
//! outputs fed back as CPG would.

use std::collections::{BTreeMap, VecDeque};

use pmxcfs_api_types::NodeId;

use crate::machine::{Application, Dfsm, Member, Mode, Output};

/// What must be equal on all members once they are synced.
pub(crate) trait Fingerprint {
    fn fingerprint(&self) -> Vec<u8>;
}

pub(crate) fn all(n: u32) -> Vec<Member> {
    (1..=n)
        .map(|i| Member {
            nodeid: NodeId(i),
            pid: 100 + i,
        })
        .collect()
}

pub(crate) struct Proc<A> {
    pub(crate) m: Member,
    pub(crate) dfsm: Dfsm,
    pub(crate) app: A,
    /// counts of this process's messages answered, with their result
    pub(crate) answered: BTreeMap<u64, Option<i32>>,
    /// counts sent and not answered yet
    pub(crate) waiting: Vec<u64>,
    aborted: usize,
}

/// A scripted CPG: one agreed order of configuration changes and messages
/// for all members.
pub(crate) struct Net<A> {
    pub(crate) procs: Vec<Proc<A>>,
    pub(crate) members: Vec<Member>,
    pub(crate) pending: VecDeque<(Member, Vec<u8>)>,
    pub(crate) now: u32,
    pub(crate) log: Vec<String>,
    /// members leaving in the configuration change being applied
    departing: Vec<Member>,
    /// members that fell into LEAVE while staying in the group
    pub(crate) spurious_leaves: usize,
}

impl<A: Application + Fingerprint> Net<A> {
    pub(crate) fn new_with(n: u32, proto: u32, mut make: impl FnMut(Member) -> A) -> Self {
        let procs = (1..=n)
            .map(|i| {
                let m = Member {
                    nodeid: NodeId(i),
                    pid: 100 + i,
                };
                Proc {
                    m,
                    dfsm: Dfsm::new(m.nodeid, m.pid, proto),
                    app: make(m),
                    answered: BTreeMap::new(),
                    waiting: Vec::new(),
                    aborted: 0,
                }
            })
            .collect();
        Net {
            procs,
            members: Vec::new(),
            pending: VecDeque::new(),
            now: 1_700_000_000,
            log: Vec::new(),
            departing: Vec::new(),
            spurious_leaves: 0,
        }
    }

    pub(crate) fn idx(&self, m: Member) -> usize {
        self.procs.iter().position(|p| p.m == m).expect("member")
    }

    pub(crate) fn handle(&mut self, i: usize, out: Vec<Output>) {
        let from = self.procs[i].m;
        for o in out {
            match o {
                Output::Send(b) => self.pending.push_back((from, b)),
                Output::LocalResult { count, result } => {
                    let p = &mut self.procs[i];
                    assert!(
                        p.answered.insert(count, result).is_none(),
                        "{from:?}: message {count} answered twice"
                    );
                    p.waiting.retain(|&c| c != count);
                }
                Output::AbortWaiters => {
                    let p = &mut self.procs[i];
                    p.aborted += p.waiting.len();
                    p.waiting.clear();
                }
                Output::Mode(m) => {
                    if m == Mode::Leave
                        && self.members.contains(&from)
                        && !self.departing.contains(&from)
                    {
                        self.spurious_leaves += 1;
                    }
                    self.log.push(format!("{from:?} -> {m:?}"))
                }
            }
        }
    }

    /// A process sends an op (if it is a synced or syncing member).
    pub(crate) fn submit(&mut self, i: usize, key: &str) {
        self.submit_msg(i, 0, key.as_bytes());
    }

    /// A process sends a NORMAL message; its counter (None if the process
    /// is not a member in a good mode).
    pub(crate) fn submit_msg(&mut self, i: usize, subtype: u16, payload: &[u8]) -> Option<u64> {
        if !self.members.contains(&self.procs[i].m) || self.procs[i].dfsm.mode().is_error() {
            return None;
        }
        self.now += 1;
        let (count, bytes) = self.procs[i]
            .dfsm
            .normal_message(subtype, payload, self.now);
        self.procs[i].waiting.push(count);
        let m = self.procs[i].m;
        self.pending.push_back((m, bytes));
        Some(count)
    }

    /// Deliver the next message to every member.
    pub(crate) fn deliver_one(&mut self) -> bool {
        let Some((from, bytes)) = self.pending.pop_front() else {
            return false;
        };
        self.now += 1;
        for m in self.members.clone() {
            let i = self.idx(m);
            let now = self.now;
            let p = &mut self.procs[i];
            let out = p.dfsm.deliver(from, &bytes, now, &mut p.app);
            self.handle(i, out);
        }
        true
    }

    /// A new membership. `flush`: deliver what is pending first (messages
    /// sent in the old configuration); otherwise what is pending is
    /// delivered after the change (members that had not seen it yet sent
    /// it), except messages of members that left.
    pub(crate) fn confchg(&mut self, new: Vec<Member>, flush: bool) {
        if flush {
            while self.deliver_one() {}
        } else {
            self.pending.retain(|(f, _)| new.contains(f));
        }
        let joined = new.iter().filter(|m| !self.members.contains(m)).count();
        // members that are not in the new configuration see it without
        // themselves (they left), then the service restarts them
        self.now += 1;
        self.departing = self
            .members
            .iter()
            .copied()
            .filter(|m| !new.contains(m))
            .collect();
        for m in self.members.clone() {
            if new.contains(&m) {
                continue;
            }
            let i = self.idx(m);
            let now = self.now;
            let p = &mut self.procs[i];
            let out = p.dfsm.confchg(&new, joined, now, &mut p.app);
            self.handle(i, out);
            let p = &mut self.procs[i];
            if let Some(out) = p.dfsm.restart(&mut p.app) {
                self.handle(i, out);
            }
        }
        self.now += 1;
        self.members = new.clone();
        self.members.sort();
        for m in self.members.clone() {
            let i = self.idx(m);
            let now = self.now;
            let p = &mut self.procs[i];
            let out = p.dfsm.confchg(&new, joined, now, &mut p.app);
            self.handle(i, out);
        }
    }

    /// Members that fell into LEAVE leave the group (the service does so).
    pub(crate) fn members_in_good_mode(&self) -> Vec<Member> {
        self.members
            .iter()
            .copied()
            .filter(|m| !self.procs[self.idx(*m)].dfsm.mode().is_error())
            .collect()
    }

    pub(crate) fn settle(&mut self) {
        for _ in 0..20 {
            while self.deliver_one() {}
            let good = self.members_in_good_mode();
            if good.len() == self.members.len() {
                return;
            }
            self.confchg(good, true);
        }
        panic!("did not settle: {:?}", self.log);
    }

    pub(crate) fn check_converged(&self, what: &str) {
        let first = &self.procs[self.idx(self.members[0])];
        for &m in &self.members {
            let p = &self.procs[self.idx(m)];
            assert_eq!(p.dfsm.mode(), Mode::Synced, "{what}: {m:?} not synced");
            assert_eq!(
                p.app.fingerprint(),
                first.app.fingerprint(),
                "{what}: {m:?} differs from {:?}",
                first.m
            );
        }
    }
}
