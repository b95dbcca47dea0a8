//! The DFSM state machine (dfsm.c), without I/O.
//!
//! [`Dfsm`] is fed what corosync CPG delivers (configuration changes and
//! messages, in the agreed order) and answers with [`Output`]s: messages to
//! multicast, results for local senders waiting for their own message, mode
//! changes. The application (dcdb, kvstore) plugs in through
//! [`Application`], C's `dfsm_callbacks_t`. Being free of I/O, the machine
//! runs the same under real corosync and under the scripted CPG of the
//! tests.
//!
//! Modes and transitions are C's: START until the first configuration
//! change; alone in the group -> SYNCED; else START_SYNC: the lowest node
//! sends SYNC_START with its epoch, every member answers with its STATE,
//! and when all states are in the application picks the leader
//! (`process_state_update`). Nodes it marks synced go to SYNCED, the others
//! to UPDATE, where they apply the leader's UPDATEs and commit on
//! UPDATE_COMPLETE. NORMAL messages are queued while not synced and
//! delivered once their sender is synced. Errors lead to LEAVE (the service
//! leaves the group and joins again); a newer protocol to VERSION_ERROR,
//! permanently.

use std::collections::BTreeMap;

use pmxcfs_api_types::NodeId;

use crate::wire::{
    check_protocol_version, DfsmMessage, Frame, ProtocolCheck, SyncEpoch, WireError, CSUM_SIZE,
};

/// One member of the group: a process on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    pub nodeid: NodeId,
    pub pid: u32,
}

/// `dfsm_mode_t`. Values from [`Mode::Leave`] on are error modes: once in
/// one, only a worse one or a restart ([`Dfsm::restart`]) changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Start = 0,
    StartSync = 1,
    Synced = 2,
    Update = 3,
    Leave = 253,
    VersionError = 254,
    Error = 255,
}

impl Mode {
    pub fn is_error(self) -> bool {
        self >= Mode::Leave
    }
}

/// A member's part of a synchronisation round (`dfsm_node_info_t`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncNode {
    pub member: Member,
    /// Its STATE message, once received.
    pub state: Option<Vec<u8>>,
    /// Its data equals the leader's (set by the application).
    pub synced: bool,
}

/// The members of the current configuration, sorted by (nodeid, pid)
/// (`dfsm_sync_info_t`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncInfo {
    pub nodes: Vec<SyncNode>,
    /// Index of this process in `nodes`.
    pub local: Option<usize>,
}

impl SyncInfo {
    fn find(&self, m: Member) -> Option<usize> {
        self.nodes.binary_search_by(|n| n.member.cmp(&m)).ok()
    }

    pub fn local_synced(&self) -> bool {
        self.local.is_some_and(|i| self.nodes[i].synced)
    }
}

/// An application error that makes this node leave the group (C: a
/// callback result below 0); `permanent` ones stop it for good (C:
/// `dfsm_set_errormode`, e.g. when the database failed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct AppError {
    pub msg: String,
    pub permanent: bool,
}

impl AppError {
    pub fn leave(msg: impl Into<String>) -> Self {
        AppError {
            msg: msg.into(),
            permanent: false,
        }
    }

    pub fn permanent(msg: impl Into<String>) -> Self {
        AppError {
            msg: msg.into(),
            permanent: true,
        }
    }
}

/// What a delivered NORMAL message's application learns besides the
/// message, and where it puts NORMAL messages of its own (dcdb's UNLOCK).
#[derive(Debug)]
pub struct DeliverCtx {
    pub from: Member,
    /// The sender is this process.
    pub local: bool,
    /// This node has the lowest node id of the group.
    pub lowest: bool,
    sends: Vec<(u16, Vec<u8>)>,
}

impl DeliverCtx {
    /// Multicast a NORMAL message of this process after this delivery.
    pub fn send(&mut self, subtype: u16, payload: Vec<u8>) {
        self.sends.push((subtype, payload));
    }
}

/// Where the application puts the UPDATE messages it sends as leader.
#[derive(Debug, Default)]
pub struct Updates {
    pub(crate) updates: Vec<Vec<u8>>,
    pub(crate) complete: bool,
}

impl Updates {
    /// One UPDATE message (`dfsm_send_update`).
    pub fn update(&mut self, payload: Vec<u8>) {
        self.updates.push(payload);
    }

    /// UPDATE_COMPLETE after the updates (`dfsm_send_update_complete`).
    pub fn complete(&mut self) {
        self.complete = true;
    }
}

/// The application of a group (C's `dfsm_callbacks_t`).
pub trait Application {
    /// A NORMAL message, delivered in agreed order while synced. Ok: its
    /// result (for the sender, if that is this process); Err: this node
    /// leaves the group.
    fn deliver(
        &mut self,
        ctx: &mut DeliverCtx,
        subtype: u16,
        time: u32,
        payload: &[u8],
    ) -> Result<i32, AppError>;

    /// The members after a configuration change (`dfsm_confchg_fn`).
    fn confchg(&mut self, _members: &[Member]) {}

    /// This node's STATE for a synchronisation round.
    fn get_state(&mut self) -> Result<Vec<u8>, AppError>;

    /// All states are in: choose the leader, mark the synced nodes, and,
    /// as leader, send the updates.
    fn process_state_update(
        &mut self,
        sync: &mut SyncInfo,
        out: &mut Updates,
    ) -> Result<(), AppError>;

    /// An UPDATE from the leader (this node is not synced).
    fn process_update(
        &mut self,
        sync: &SyncInfo,
        from: Member,
        update: &[u8],
    ) -> Result<(), AppError>;

    /// UPDATE_COMPLETE: make the received updates this node's data.
    fn commit(&mut self, sync: &SyncInfo) -> Result<(), AppError>;

    /// The round ended or was abandoned: drop what it collected.
    fn cleanup(&mut self) {}

    /// The checksum of this node's data (VERIFY), if the group verifies.
    fn checksum(&mut self) -> Option<Result<[u8; CSUM_SIZE], AppError>> {
        None
    }

    /// Entered SYNCED.
    fn synced(&mut self) {}
}

/// What the machine asks of its surroundings, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Multicast this message to the group (agreed order).
    Send(Vec<u8>),
    /// This process's NORMAL message `count` was delivered: its result, or
    /// None if it was not processed.
    LocalResult { count: u64, result: Option<i32> },
    /// No message sent before will be answered any more: wake every
    /// waiting sender (`dfsm_send_sync_message_abort`).
    AbortWaiters,
    /// The mode changed to this one.
    Mode(Mode),
}

/// A NORMAL message waiting for its sender to be synced.
#[derive(Clone, Debug)]
struct Queued {
    from: Member,
    raw: Vec<u8>,
}

/// The state machine of one group for one process.
pub struct Dfsm {
    me: Member,
    protocol_version: u32,
    mode: Mode,
    sync: SyncInfo,
    local_epoch_counter: u32,
    sync_epoch: SyncEpoch,
    lowest_nodeid: Option<NodeId>,
    we_are_member: bool,
    /// NORMAL messages of not yet synced members, by (count, arrival):
    /// C keeps them sorted by count, because they may be resent.
    queue: BTreeMap<(u64, u64), Queued>,
    queue_seq: u64,
    /// Messages of synced members that arrived during UPDATE.
    sync_queue: Vec<Queued>,
    msgcount: u64,
    // state verification
    csum: [u8; CSUM_SIZE],
    csum_epoch: SyncEpoch,
    csum_id: u64,
    csum_counter: u64,
}

type Out = Vec<Output>;

impl Dfsm {
    pub fn new(nodeid: NodeId, pid: u32, protocol_version: u32) -> Self {
        Dfsm {
            me: Member { nodeid, pid },
            protocol_version,
            mode: Mode::Start,
            sync: SyncInfo::default(),
            local_epoch_counter: 0,
            sync_epoch: SyncEpoch::default(),
            lowest_nodeid: None,
            we_are_member: false,
            queue: BTreeMap::new(),
            queue_seq: 0,
            sync_queue: Vec::new(),
            msgcount: 0,
            csum: [0; CSUM_SIZE],
            csum_epoch: SyncEpoch::default(),
            csum_id: 0,
            csum_counter: 0,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn me(&self) -> Member {
        self.me
    }

    /// The current synchronisation epoch (of the lowest node, once its
    /// SYNC_START arrived).
    pub fn epoch(&self) -> SyncEpoch {
        self.sync_epoch
    }

    /// The members of the current configuration.
    pub fn members(&self) -> Vec<Member> {
        self.sync.nodes.iter().map(|n| n.member).collect()
    }

    /// Is this the node with the lowest id in the group?
    pub fn is_lowest(&self) -> bool {
        self.lowest_nodeid == Some(self.me.nodeid)
    }

    /// Not in a permanent error mode (`dfsm_restartable`).
    pub fn restartable(&self) -> bool {
        !matches!(self.mode, Mode::Error | Mode::VersionError)
    }

    /// Set the mode (`dfsm_set_mode`): an error mode is only replaced by a
    /// worse one or by a non-error mode (the restart path checks
    /// [`Dfsm::restartable`] first).
    fn set_mode(&mut self, new: Mode, app: &mut dyn Application, out: &mut Out) {
        if self.mode == new || (new.is_error() && self.mode.is_error() && new < self.mode) {
            return;
        }
        self.mode = new;
        out.push(Output::Mode(new));
        if new == Mode::Synced {
            app.synced();
        }
    }

    /// (Re)connecting to the group (`dfsm_initialize`): forget queued
    /// messages, wake waiting senders, back to START. None if the machine
    /// is in a permanent error mode.
    pub fn restart(&mut self, app: &mut dyn Application) -> Option<Out> {
        if !self.restartable() {
            return None;
        }
        let mut out = vec![Output::AbortWaiters];
        self.queue.clear();
        self.we_are_member = false;
        self.set_mode(Mode::Start, app, &mut out);
        Some(out)
    }

    /// Leaving the group for good (`dfsm_finalize`): wake waiting senders.
    pub fn finalize(&mut self) -> Out {
        self.we_are_member = false;
        vec![Output::AbortWaiters]
    }

    /// A NORMAL message of this process (`dfsm_send_message_sync`): its
    /// counter, by which [`Output::LocalResult`] reports it, and the bytes
    /// to multicast. The caller must multicast messages in the order of
    /// their counters.
    pub fn normal_message(&mut self, subtype: u16, payload: &[u8], now: u32) -> (u64, Vec<u8>) {
        self.msgcount += 1;
        let count = self.msgcount;
        let msg = DfsmMessage::Normal {
            subtype,
            count,
            payload: payload.to_vec(),
        };
        (count, msg.encode(self.protocol_version, now))
    }

    fn state_message(&self, msg: DfsmMessage, now: u32) -> Output {
        Output::Send(msg.encode(self.protocol_version, now))
    }

    /// The periodic verification (`dfsm_verify_request`): only the lowest
    /// node asks, only when synced and when the last round is answered.
    pub fn verify_request(&mut self, now: u32) -> Option<Vec<u8>> {
        if !self.is_lowest() || self.mode != Mode::Synced || self.csum_counter != self.csum_id {
            return None;
        }
        self.csum_counter += 1;
        let msg = DfsmMessage::VerifyRequest {
            epoch: self.sync_epoch,
            csum_id: self.csum_counter,
        };
        Some(msg.encode(self.protocol_version, now))
    }

    /// A configuration change (`dfsm_cpg_confchg_callback`). `members`:
    /// the whole membership; `joined`: how many joined in this change.
    pub fn confchg(
        &mut self,
        members: &[Member],
        joined: usize,
        now: u32,
        app: &mut dyn Application,
    ) -> Out {
        let mut out = Vec::new();
        self.we_are_member = false;
        self.local_epoch_counter = self.local_epoch_counter.wrapping_add(1);
        self.sync_epoch = SyncEpoch {
            epoch: self.local_epoch_counter,
            time: now,
            nodeid: self.me.nodeid,
            pid: self.me.pid,
        };
        // invalidate a saved checksum
        self.csum_id = self.csum_counter;
        self.csum_epoch = SyncEpoch::default();
        self.sync_queue.clear();

        if self.mode.is_error() {
            return out;
        }
        self.lowest_nodeid = members.iter().map(|m| m.nodeid).min();
        self.we_are_member = members.contains(&self.me);

        self.release_sync_resources(app);
        let mut nodes: Vec<SyncNode> = members
            .iter()
            .map(|&member| SyncNode {
                member,
                state: None,
                synced: false,
            })
            .collect();
        nodes.sort_by_key(|n| n.member);
        nodes.dedup_by(|a, b| a.member == b.member);
        let local = nodes.iter().position(|n| n.member == self.me);
        self.sync = SyncInfo { nodes, local };

        if !self.we_are_member {
            if self.mode == Mode::Start {
                return out;
            }
            tracing::info!(
                "we ({}/{}) left the process group",
                self.me.nodeid,
                self.me.pid
            );
            self.set_mode(Mode::Leave, app, &mut out);
            return out;
        }

        if self.sync.nodes.len() > 1 {
            if joined > 0 && !self.queue.is_empty() {
                // all members must have the same queue: resend ours
                tracing::info!("queue not empty - resending {} messages", self.queue.len());
                for q in self.queue.values() {
                    if q.from == self.me {
                        out.push(Output::Send(q.raw.clone()));
                    }
                }
                self.queue.clear();
            }
            self.set_mode(Mode::StartSync, app, &mut out);
            if self.is_lowest() {
                out.push(self.state_message(
                    DfsmMessage::SyncStart {
                        epoch: self.sync_epoch,
                    },
                    now,
                ));
            }
        } else {
            self.set_mode(Mode::Synced, app, &mut out);
            if let Some(l) = self.sync.local {
                self.sync.nodes[l].synced = true;
            }
            if let Err(e) = self.deliver_queue(app, &mut out) {
                self.leave(&e, app, &mut out);
                return out;
            }
        }
        app.confchg(&self.members());
        out
    }

    fn release_sync_resources(&mut self, app: &mut dyn Application) {
        app.cleanup();
        for n in &mut self.sync.nodes {
            n.state = None;
        }
    }

    fn leave(&mut self, why: &AppError, app: &mut dyn Application, out: &mut Out) {
        if why.permanent {
            tracing::error!("serious internal error - stop cluster connection: {why}");
            self.set_mode(Mode::Error, app, out);
        } else {
            tracing::error!("leaving CPG group: {why}");
            self.set_mode(Mode::Leave, app, out);
        }
        self.release_sync_resources(app);
    }

    /// A message delivered by CPG (`dfsm_cpg_deliver_callback`).
    pub fn deliver(
        &mut self,
        from: Member,
        raw: &[u8],
        now: u32,
        app: &mut dyn Application,
    ) -> Out {
        let mut out = Vec::new();
        if let Err(e) = self.deliver_inner(from, raw, now, app, &mut out) {
            self.leave(&e, app, &mut out);
        }
        out
    }

    fn deliver_inner(
        &mut self,
        from: Member,
        raw: &[u8],
        now: u32,
        app: &mut dyn Application,
        out: &mut Out,
    ) -> Result<(), AppError> {
        if self.mode.is_error() {
            return Ok(());
        }
        let frame = match Frame::decode(raw) {
            Ok(f) => f,
            Err(e) => return self.undecodable(&e, app, out),
        };
        match check_protocol_version(frame.protocol_version, self.protocol_version) {
            ProtocolCheck::Same => {}
            ProtocolCheck::Newer => {
                tracing::error!(
                    "received message with protocol version {}",
                    frame.protocol_version
                );
                self.set_mode(Mode::VersionError, app, out);
                return Ok(());
            }
            ProtocolCheck::Older => {
                tracing::info!(
                    "ignore message with wrong protocol version {}",
                    frame.protocol_version
                );
                return Ok(());
            }
        }
        let time = frame.time;
        match frame.message {
            DfsmMessage::Normal {
                subtype,
                count,
                payload,
            } => {
                if self.mode != Mode::Synced {
                    return self.queue_message(from, count, raw);
                }
                let mut ctx = DeliverCtx {
                    from,
                    local: from == self.me,
                    lowest: self.is_lowest(),
                    sends: Vec::new(),
                };
                let res = app.deliver(&mut ctx, subtype, time, &payload);
                if from == self.me {
                    out.push(Output::LocalResult {
                        count,
                        result: res.as_ref().ok().copied(),
                    });
                }
                for (subtype, payload) in ctx.sends {
                    let (_, msg) = self.normal_message(subtype, &payload, now);
                    out.push(Output::Send(msg));
                }
                res.map(|_| ())
            }
            state => self.state_message_delivered(from, state, now, app, out),
        }
    }

    /// C checks the protocol version, then the epoch of state messages,
    /// before it looks at the rest: the same order for what did not decode.
    fn undecodable(
        &mut self,
        e: &WireError,
        app: &mut dyn Application,
        out: &mut Out,
    ) -> Result<(), AppError> {
        if let Some(v) = e.protocol_version() {
            match check_protocol_version(v, self.protocol_version) {
                ProtocolCheck::Newer => {
                    self.set_mode(Mode::VersionError, app, out);
                    return Ok(());
                }
                ProtocolCheck::Older => return Ok(()),
                ProtocolCheck::Same => {}
            }
        }
        if let Some(epoch) = e.epoch() {
            // only VERIFY* and unknown types get here: never SYNC_START
            if *epoch != self.sync_epoch {
                return Ok(());
            }
        }
        let synced = self.mode == Mode::Synced;
        match e {
            // an unknown state message is ignored when synced
            WireError::UnknownType { .. } if synced => Ok(()),
            // a verify message of the wrong size is ignored when not synced
            WireError::BadLength { .. } if !synced => Ok(()),
            _ => Err(AppError::leave(format!("bad message: {e}"))),
        }
    }

    fn queue_message(&mut self, from: Member, count: u64, raw: &[u8]) -> Result<(), AppError> {
        let Some(i) = self.sync.find(from) else {
            return Err(AppError::leave(format!(
                "message from non-member {}/{}",
                from.nodeid, from.pid
            )));
        };
        let q = Queued {
            from,
            raw: raw.to_vec(),
        };
        if self.mode == Mode::Update && self.sync.nodes[i].synced {
            self.sync_queue.push(q);
        } else {
            self.queue_seq += 1;
            self.queue.insert((count, self.queue_seq), q);
        }
        Ok(())
    }

    fn state_message_delivered(
        &mut self,
        from: Member,
        msg: DfsmMessage,
        now: u32,
        app: &mut dyn Application,
        out: &mut Out,
    ) -> Result<(), AppError> {
        let Some(&epoch) = msg.epoch() else {
            return Ok(());
        };
        let is_sync_start = matches!(msg, DfsmMessage::SyncStart { .. });
        if !is_sync_start && epoch != self.sync_epoch {
            tracing::debug!("ignore state message with wrong epoch");
            return Ok(());
        }
        match (self.mode, msg) {
            (Mode::Synced, DfsmMessage::UpdateComplete { .. }) => {
                for n in &mut self.sync.nodes {
                    n.synced = true;
                }
                self.deliver_queue(app, out)
            }
            (Mode::Synced, DfsmMessage::VerifyRequest { csum_id, .. }) => {
                if let Some(csum) = app.checksum() {
                    self.csum = csum?;
                    self.csum_epoch = epoch;
                    self.csum_id = csum_id;
                    if from == self.me {
                        out.push(self.state_message(
                            DfsmMessage::Verify {
                                epoch: self.sync_epoch,
                                csum_id,
                                csum: self.csum,
                            },
                            now,
                        ));
                    }
                }
                Ok(())
            }
            (Mode::Synced, DfsmMessage::Verify { csum_id, csum, .. }) => {
                if app.checksum().is_none() {
                    return Ok(());
                }
                if self.csum_id == csum_id && self.csum_epoch == epoch {
                    if csum != self.csum {
                        return Err(AppError::leave("wrong checksum - restarting"));
                    }
                    tracing::info!("data verification successful");
                } else {
                    tracing::info!("skip verification - no checksum saved");
                }
                Ok(())
            }
            (Mode::Synced, _) => Ok(()), // already up to date, or the leader
            (Mode::StartSync, DfsmMessage::SyncStart { .. }) => {
                if Some(from.nodeid) != self.lowest_nodeid {
                    tracing::error!(
                        "ignore sync request from wrong member {}/{}",
                        from.nodeid,
                        from.pid
                    );
                }
                // C adopts the epoch all the same
                self.sync_epoch = epoch;
                self.release_sync_resources(app);
                let state = app.get_state()?;
                if state.is_empty() {
                    return Err(AppError::leave("get_state gave no state"));
                }
                out.push(self.state_message(
                    DfsmMessage::State {
                        epoch: self.sync_epoch,
                        state,
                    },
                    now,
                ));
                Ok(())
            }
            (Mode::StartSync, DfsmMessage::State { state, .. }) => {
                let Some(i) = self.sync.find(from) else {
                    return Err(AppError::leave(format!(
                        "received state for non-member {}/{}",
                        from.nodeid, from.pid
                    )));
                };
                if self.sync.nodes[i].state.is_some() {
                    return Err(AppError::leave(format!(
                        "received duplicate state for member {}/{}",
                        from.nodeid, from.pid
                    )));
                }
                self.sync.nodes[i].state = Some(state);
                if self.sync.nodes.iter().any(|n| n.state.is_none()) {
                    return Ok(());
                }
                tracing::info!("received all states");
                let mut updates = Updates::default();
                app.process_state_update(&mut self.sync, &mut updates)?;
                for u in updates.updates {
                    out.push(self.state_message(
                        DfsmMessage::Update {
                            epoch: self.sync_epoch,
                            update: u,
                        },
                        now,
                    ));
                }
                if updates.complete {
                    out.push(self.state_message(
                        DfsmMessage::UpdateComplete {
                            epoch: self.sync_epoch,
                        },
                        now,
                    ));
                }
                if self.sync.local_synced() {
                    self.set_mode(Mode::Synced, app, out);
                    self.release_sync_resources(app);
                } else {
                    self.set_mode(Mode::Update, app, out);
                }
                self.deliver_queue(app, out)
            }
            (Mode::Update, DfsmMessage::Update { update, .. }) => {
                app.process_update(&self.sync, from, &update)
            }
            (Mode::Update, DfsmMessage::UpdateComplete { .. }) => {
                app.commit(&self.sync)?;
                for n in &mut self.sync.nodes {
                    n.synced = true;
                }
                self.set_mode(Mode::Synced, app, out);
                self.deliver_sync_queue(app, out)?;
                self.deliver_queue(app, out)?;
                self.release_sync_resources(app);
                Ok(())
            }
            (_, DfsmMessage::VerifyRequest { .. } | DfsmMessage::Verify { .. }) => {
                tracing::debug!("ignore verify message while not synced");
                Ok(())
            }
            (mode, msg) => Err(AppError::leave(format!(
                "unexpected state message {:?} in mode {mode:?}",
                msg.msg_type()
            ))),
        }
    }

    /// Deliver a queued message as if CPG delivered it now.
    fn redeliver(&mut self, q: Queued, app: &mut dyn Application, out: &mut Out) {
        let now = 0; // NORMAL messages never send anything with a time
        let mut sub = Vec::new();
        if let Err(e) = self.deliver_inner(q.from, &q.raw, now, app, &mut sub) {
            out.append(&mut sub);
            self.leave(&e, app, out);
        } else {
            out.append(&mut sub);
        }
    }

    /// `dfsm_deliver_sync_queue`.
    fn deliver_sync_queue(
        &mut self,
        app: &mut dyn Application,
        out: &mut Out,
    ) -> Result<(), AppError> {
        let queued = std::mem::take(&mut self.sync_queue);
        let mut ok = true;
        for q in queued {
            if ok && self.mode == Mode::Synced {
                self.redeliver(q, app, out);
            } else {
                ok = false;
            }
        }
        if ok {
            Ok(())
        } else {
            Err(AppError::leave("sync queue not delivered"))
        }
    }

    /// `dfsm_deliver_queue`: messages of synced members are delivered (in
    /// SYNCED) or moved to the sync queue (in UPDATE); messages of
    /// non-members are dropped.
    fn deliver_queue(&mut self, app: &mut dyn Application, out: &mut Out) -> Result<(), AppError> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let keys: Vec<(u64, u64)> = self.queue.keys().copied().collect();
        for k in keys {
            let Some(q) = self.queue.get(&k) else {
                continue;
            };
            let Some(i) = self.sync.find(q.from) else {
                tracing::info!(
                    "remove message from non-member {}/{}",
                    q.from.nodeid,
                    q.from.pid
                );
                self.queue.remove(&k);
                continue;
            };
            let synced = self.sync.nodes[i].synced;
            match self.mode {
                Mode::Synced => {
                    if synced {
                        if let Some(q) = self.queue.remove(&k) {
                            self.redeliver(q, app, out);
                        }
                    }
                }
                Mode::Update => {
                    if synced {
                        if let Some(q) = self.queue.remove(&k) {
                            self.sync_queue.push(q);
                        }
                    }
                }
                _ => return Err(AppError::leave("queue delivered in a wrong mode")),
            }
        }
        Ok(())
    }
}
