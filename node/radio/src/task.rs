//! The radio task: owns the UDP socket, the per-device routing and buffers, and checkpoints.

mod handoff;
mod rekey;
mod state;
mod switch;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_market::{KeySigner, NodeId};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::{
    Checkpoint, CheckpointRecord, Command, FRAME_LEN, MAX_REPLAY_FRAMES, RADIO_TOPIC, RadioConfig,
    RadioFiles, RadioHandle, RadioRpc, RadioStats, RadioStatus, ReplayedDevice, SeqRange,
    parse_frame,
};
use crate::counters::CounterStore;
use crate::discovery::Discovery;
use crate::firmware::{Jobs, MAX_JOBS, Origin, Outgoing, load_image};
use crate::judge;
use crate::keys::KeyStore;
use crate::rotation::{Rotations, Step};
use crate::rules::{self, Forward, MAX_MANAGERS_PER_DEVICE};
use crate::table::{Admit, DeviceTable};
use agora_devices::handoff::{Handoffs, JobHandoff, MAX_HANDOFFS};
use agora_exchange::StorageHandle;
use agora_hosting::control::ServiceControl;
use agora_network::{GossipVerdict, Inbox, Interest, NetworkEvent, NetworkHandle};
use agora_wire::codec::{Envelope, Kind};
use agora_wire::now_ms;
use agora_wire::radio::endpoint::{encode_request, is_endpoint, seal_request};
use agora_wire::radio::{FrameRefusal, HandedKey, MAX_KEYS_PER_MESSAGE, authenticate, check_mic};

/// Checkpoints kept for `status`.
const KEPT_CHECKPOINTS: usize = 2048;

/// Peers asked for missed uplinks when a takeover has a gap.
const REPLAY_PEERS: usize = 4;
/// Most bytes of frames one replay answer carries (half the RPC limit: room for the envelope
/// and the encoding), whatever the request names.
pub(crate) const REPLAY_ANSWER_BYTES: usize = agora_wire::codec::MAX_RPC_BYTES / 2;
/// How long a takeover waits for peers' replays.
const REPLAY_TIMEOUT: Duration = Duration::from_millis(1_500);
/// How long a key request waits for the owner's answer.
const KEY_TIMEOUT: Duration = Duration::from_secs(3);
/// Interval between key requests to an owner that has not answered (or not yet known this
/// edge as a provider of its devices).
const KEY_RETRY: Duration = Duration::from_secs(2);

/// Requests per device before a key fetch is given up (with a log line): two minutes.
const KEY_ATTEMPTS: u32 = 60;

/// What came back from an owner asked for keys.
type KeyAnswer = (NodeId, Vec<HandedKey>);

/// A provider's answer to a hand-off: the job here, the provider, kept, sent finished.
type HandoffAnswer = (u64, NodeId, bool, bool);

/// A kept hand-off whose turn came, with its image loaded (or why not).
type Resume = (NodeId, JobHandoff, Result<Vec<u8>, String>);

/// A service's state snapshot answered by its providers: the service, whether all kept it.
type StateAnswer = (String, bool);

/// A provider took a device's next key: `(device, epoch, provider)`.
type KeyTaken = (u32, u32, NodeId);

/// Sends `env` to `peer` and returns its answer, decoded, when `peer` itself signed it within
/// `timeout`; otherwise logs why not (`what` names the request) and returns `None`. Every
/// request the radio task makes of one peer goes through here.
async fn ask_peer(
    network: &NetworkHandle,
    peer: NodeId,
    env: &Envelope,
    timeout: Duration,
    what: &str,
) -> Option<RadioRpc> {
    let pid = agora_network::keys::peer_id_of(&peer)?;
    match tokio::time::timeout(timeout, network.request(pid, env)).await {
        Ok(Ok(answer)) if answer.sender == peer => answer.body::<RadioRpc>(Kind::Radio).ok(),
        Ok(Ok(_)) => {
            warn!(%peer, "answer to {what} signed by another node: ignored");
            None
        }
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "peer not reached with {what}");
            None
        }
        Err(_) => {
            debug!(%peer, "peer did not answer {what}");
            None
        }
    }
}

struct RadioTask {
    me: NodeId,
    signer: KeySigner,
    seq: u64,
    cfg: RadioConfig,
    network: NetworkHandle,
    storage: StorageHandle,
    services: Arc<dyn ServiceControl>,
    table: DeviceTable,
    /// Frames fed to each service since its last checkpoint.
    pending: BTreeMap<String, Vec<(u32, u32, Vec<u8>)>>,
    checkpoints: VecDeque<CheckpointRecord>,
    stats: RadioStats,
    /// Frame keys held here (owned and received).
    keys: KeyStore,
    /// Owner: key rotation of the devices this node owns.
    rotation: Rotations,
    rot_tx: mpsc::Sender<KeyTaken>,
    /// Provider: when each device whose frames stopped verifying last had its key asked for
    /// again (the owner may have rotated it while this edge was away).
    refetched: BTreeMap<u32, Instant>,
    /// Last frame counter accepted over the radio, per device with a key (persisted).
    counters: CounterStore,
    /// Devices whose key this edge still has to fetch: from which owner, requests so far.
    key_fetches: BTreeMap<u32, (NodeId, u32)>,
    /// Owners asked and not answered yet.
    key_fetching: BTreeSet<NodeId>,
    next_key_fetch: Instant,
    keys_tx: mpsc::Sender<KeyAnswer>,
    /// Devices discovered with their metadata (issue #16).
    discovery: Discovery,
    /// Firmware jobs this edge runs (issue #16).
    jobs: Jobs,
    /// Who owns each device here: this node for its own service's devices, or the customer
    /// of the first live contract this edge provides that names them ([`crate::owners`]).
    owners: crate::owners::Owners,
    /// Where the customers' claims are persisted (`radio-owners.json`, threat R8).
    owners_file: Option<std::path::PathBuf>,
    /// Firmware jobs the devices' owners handed here, resumed when this edge takes custody.
    handoffs: Handoffs,
    /// Images of kept hand-offs this edge holds pinned (`handoff:<owner>:<job>`) until the
    /// hand-off leaves the table: a cached copy, unpinned, went at the next collection, and
    /// with the owner dead the resume then had no image.
    held_images: BTreeMap<(NodeId, u64), agora_storage::Cid>,
    /// Where they are persisted (`radio-handoffs.json`).
    handoffs_file: Option<std::path::PathBuf>,
    /// Where this edge's own jobs are persisted (`radio-jobs.json`).
    jobs_file: Option<std::path::PathBuf>,
    handoff_tx: mpsc::Sender<HandoffAnswer>,
    resume_tx: mpsc::Sender<Resume>,
    /// Counter of the last sealed endpoint request (threat R2): the wall clock in ms, or one
    /// more than the last when requests come faster, so it rises across restarts too.
    request_counter: u64,
    /// Stateful services (issue #15), see `state`.
    state: state::StateSide,
}

/// The owner table's caps from the config (threats R8, R9).
fn owner_caps(cfg: &RadioConfig) -> crate::owners::Caps {
    crate::owners::Caps {
        total: cfg.max_devices,
        per_customer: cfg.max_devices_per_customer,
    }
}

/// How long a restored job's image may take to be read again at start.
const IMAGE_RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a discovered device is asked for its metadata again, ms.
const DISCOVERY_REFRESH_MS: u64 = 30_000;

/// Binds the radio (if configured) and starts its task.
pub async fn spawn(
    signer: KeySigner,
    cfg: RadioConfig,
    network: NetworkHandle,
    storage: StorageHandle,
    services: Arc<dyn ServiceControl>,
    files: RadioFiles,
    cancel: CancellationToken,
) -> std::io::Result<(RadioHandle, JoinHandle<()>)> {
    let socket = if cfg.listen.is_empty() {
        None
    } else {
        let s = UdpSocket::bind(&cfg.listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("radio.listen {}: {e}; pick another address", cfg.listen),
            )
        })?;
        Some(s)
    };
    let addr: Option<Arc<str>> = match &socket {
        Some(s) => Some(s.local_addr()?.to_string().into()),
        None => None,
    };
    let (tx, rx) = mpsc::channel(256);
    let events = network.inbox(
        Interest::new("radio")
            .topic(RADIO_TOPIC)
            .requests(Kind::Radio),
    );
    // Judged: a peer checkpoint travels on only once this edge applied it (threat N7).
    if let Err(e) = network.subscribe_judged(RADIO_TOPIC).await {
        warn!(error = %e, "radio checkpoints topic not subscribed");
    }
    let (keys_tx, keys_rx) = mpsc::channel(16);
    let (handoff_tx, handoff_rx) = mpsc::channel(64);
    let (resume_tx, resume_rx) = mpsc::channel(MAX_HANDOFFS);
    let (state_tx, state_rx) = mpsc::channel(64);
    let state = state::StateSide::load(files.states, state_tx);
    let rotation = Rotations::load(files.rotation, cfg.device_keys.iter().map(|e| e.device));
    let mut keys = KeyStore::load(&cfg.device_keys, files.keys, &rotation.epochs());
    for (device, epoch) in rotation.pending() {
        keys.begin_rotation(device, epoch);
    }
    let (rot_tx, rot_rx) = mpsc::channel(64);
    let counters = CounterStore::load(files.counters, cfg.max_devices, cfg.max_unsaved_frames);
    let cfg_max_devices = cfg.max_devices;
    let owners = crate::owners_file::load(files.owners.as_deref(), owner_caps(&cfg));
    let task = RadioTask {
        keys,
        rotation,
        rot_tx,
        refetched: BTreeMap::new(),
        counters,
        key_fetches: BTreeMap::new(),
        key_fetching: BTreeSet::new(),
        next_key_fetch: Instant::now(),
        keys_tx,
        me: network.node_id(),
        signer,
        seq: 0,
        cfg,
        network,
        storage,
        services,
        table: DeviceTable::default(),
        discovery: Discovery::new(cfg_max_devices, DISCOVERY_REFRESH_MS),
        jobs: crate::jobs_file::load(files.jobs.as_deref(), now_ms(), MAX_JOBS),
        jobs_file: files.jobs,
        owners,
        owners_file: files.owners,
        handoffs: crate::handoff_file::load(files.handoffs.as_deref(), now_ms()),
        handoffs_file: files.handoffs,
        held_images: BTreeMap::new(),
        handoff_tx,
        resume_tx,
        request_counter: 0,
        state,
        pending: BTreeMap::new(),
        checkpoints: VecDeque::new(),
        stats: RadioStats::default(),
    };
    let handle = tokio::spawn(
        task.run(
            socket,
            rx,
            keys_rx,
            (handoff_rx, resume_rx, state_rx, rot_rx),
            events,
            cancel,
        )
        .in_current_span(),
    );
    Ok((RadioHandle { tx, addr }, handle))
}

impl RadioTask {
    async fn run(
        mut self,
        socket: Option<UdpSocket>,
        mut rx: mpsc::Receiver<Command>,
        mut keys_rx: mpsc::Receiver<KeyAnswer>,
        (mut handoff_rx, mut resume_rx, mut state_rx, mut rot_rx): (
            mpsc::Receiver<HandoffAnswer>,
            mpsc::Receiver<Resume>,
            mpsc::Receiver<StateAnswer>,
            mpsc::Receiver<KeyTaken>,
        ),
        mut events: Inbox,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.checkpoint_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = [0u8; 512];
        self.load_restored_images().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = recv(socket.as_ref(), &mut buf) => match r {
                    Some((n, from)) => {
                        let bytes = buf.get(..n).unwrap_or_default().to_vec();
                        self.on_datagram(socket.as_ref(), &bytes, from).await;
                    }
                    None => break,
                },
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        self.on_command(socket.as_ref(), cmd).await;
                        self.trim_table();
                    }
                    None => break,
                },
                Some((owner, keys)) = keys_rx.recv() => self.on_keys(owner, keys),
                Some((job, peer, kept, finished)) = handoff_rx.recv() => {
                    self.jobs.handoff_answered(job, peer, kept, finished);
                }
                Some((owner, handoff, image)) = resume_rx.recv() => {
                    self.on_resume(socket.as_ref(), owner, handoff, image).await;
                }
                Some((service, kept)) = state_rx.recv() => self.on_state_answer(&service, kept).await,
                Some((device, epoch, peer)) = rot_rx.recv() => self.rotation.acked(device, epoch, peer),
                ev = events.recv() => match ev {
                    NetworkEvent::Request { id, envelope, .. } if envelope.kind == Kind::Radio => {
                        match envelope.body::<RadioRpc>(Kind::Radio) {
                            Ok(RadioRpc::Replay { devices }) => self.answer_replay(id, &devices).await,
                            Ok(RadioRpc::KeyRequest { devices }) => {
                                self.answer_keys(id, envelope.sender, &devices).await;
                            }
                            Ok(RadioRpc::JobHandoff { handoff }) => {
                                self.on_handoff(id, envelope.sender, handoff).await;
                            }
                            Ok(RadioRpc::State { snapshot, checkpoint }) => {
                                self.on_state(id, envelope.sender, snapshot, checkpoint).await;
                            }
                            Ok(RadioRpc::KeyUpdate { keys }) => {
                                self.on_key_update(id, envelope.sender, keys).await;
                            }
                            Ok(_) | Err(_) => {}
                        }
                    }
                    NetworkEvent::GossipToJudge { topic, envelope, ticket, via } if topic == RADIO_TOPIC => {
                        let verdict = match envelope.body::<Checkpoint>(Kind::Radio) {
                            Ok(c) if envelope.sender != self.me => self.on_peer_checkpoint(envelope.sender, c),
                            Ok(_) => Forward::Ignore,
                            Err(e) => {
                                self.stats.checkpoints_rejected += 1;
                                if self.stats.checkpoints_rejected.is_power_of_two() {
                                    warn!(%via, sender = %envelope.sender, error = %e, rejected = self.stats.checkpoints_rejected, "undecodable radio checkpoint rejected");
                                }
                                Forward::Reject
                            }
                        };
                        let verdict = match verdict {
                            Forward::Accept => GossipVerdict::Accept,
                            Forward::Ignore => GossipVerdict::Ignore,
                            Forward::Reject => GossipVerdict::Reject,
                        };
                        self.network.judge(ticket, verdict).await;
                    }
                    _ => {}
                },
                _ = tick.tick() => {
                    self.tick_jobs(socket.as_ref()).await;
                    self.send_handoffs();
                    self.resume_handoffs();
                    self.hold_handoff_images();
                    self.counters.flush();
                    self.fetch_keys();
                    self.drive_rotations(socket.as_ref()).await;
                    let services: Vec<String> = self.pending.keys().cloned().collect();
                    for s in services {
                        if self.state.stateful(&s) {
                            self.checkpoint_with_state(&s).await;
                        } else {
                            self.checkpoint(&s, Vec::new()).await;
                        }
                    }
                }
            }
        }
        // Whatever moved since the last tick, before the process goes.
        self.counters.flush();
    }

    /// A datagram on the radio socket from `from`: an endpoint reply goes to discovery, an
    /// uplink to [`Self::on_frame`]; a device whose uplink passed is asked for its metadata
    /// when due.
    async fn on_datagram(&mut self, socket: Option<&UdpSocket>, bytes: &[u8], from: SocketAddr) {
        if is_endpoint(bytes) {
            let now = now_ms();
            let Some((device, reply)) = self.discovery.on_reply(bytes, from, now) else {
                return;
            };
            if let agora_devices::agent::Reply::Rekeyed { epoch } = reply {
                return self.on_rekeyed(device, epoch);
            }
            let is_meta = matches!(reply, agora_devices::agent::Reply::Meta(_));
            let (taken, out) = self.jobs.on_reply(now, device, reply);
            if !taken && !is_meta {
                self.discovery.stats.replies_unsolicited += 1;
            }
            return self.send_requests(socket, out).await;
        }
        if let Some(device) = self.on_frame(bytes)
            && let Some(req) =
                self.discovery
                    .heard(device, from, now_ms(), self.keys.get(device).is_some())
            && let Some(s) = socket
            && let Err(e) = s.send_to(&req, from).await
        {
            debug!(device, error = %e, "metadata request not sent");
        }
    }

    /// An uplink; returns its device if the frame passed authentication.
    fn on_frame(&mut self, frame: &[u8]) -> Option<u32> {
        let (device, seq) = match parse_frame(frame) {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "radio frame dropped");
                return None;
            }
        };
        let last = self.counters.get(device);
        let window = self.cfg.frame_counter_window;
        let mut checked = authenticate(frame, self.keys.get(device), last, window);
        if matches!(checked, Err(FrameRefusal::BadMic { .. }))
            && let Some(next) = self.keys.next(device)
        {
            // A rotation under way: the device may be at its next epoch already.
            checked = authenticate(frame, Some(next), last, window);
            if checked.is_ok() {
                self.moved_to_next(device);
            }
        }
        if matches!(checked, Err(FrameRefusal::BadMic { .. })) {
            self.ask_key_again(device);
        }
        match checked {
            Ok(a) if a.verified => {
                self.stats.frames_verified += 1;
                // Saved before it is delivered when it runs too far past the saved counter,
                // so a SIGKILL leaves at most `radio.max_unsaved_frames` replayable frames.
                if self.counters.accept(device, seq) {
                    self.counters.flush();
                }
            }
            Ok(_) => self.stats.frames_unverified += 1,
            Err(refusal) => {
                self.refuse_frame(refusal);
                return None;
            }
        }
        let max_buffer = self.cfg.buffer_per_device;
        if !self.make_room(device) {
            return Some(device);
        }
        let d = self.table.touch(device);
        d.status.received += 1;
        d.hear(seq);
        crate::pause::on_heard(&mut d.status, seq);
        if let Some(service) = d.status.service.clone() {
            self.process(device, seq, frame.to_vec(), &service, false);
        } else {
            // Every edge in range keeps what no checkpoint covers yet (see `RadioRpc`).
            if d.covered.is_some_and(|c| seq <= c) || d.buffer.iter().any(|(s, _)| *s == seq) {
                d.status.duplicates += 1;
                return Some(device);
            }
            d.buffer.push_back((seq, frame.to_vec()));
            while d.buffer.len() > max_buffer {
                d.buffer.pop_front();
            }
            d.status.buffered = d.buffer.len();
        }
        Some(device)
    }

    /// Counts and logs (one line per refusal at first, then fewer under a flood) a frame
    /// dropped before it reached a service, a buffer or a replay answer.
    fn refuse_frame(&mut self, refusal: FrameRefusal) {
        let s = &mut self.stats;
        match refusal {
            FrameRefusal::Malformed(e) => return debug!(error = %e, "radio frame dropped"),
            FrameRefusal::Unsigned { .. } => s.frames_refused_unsigned += 1,
            FrameRefusal::BadMic { .. } => s.frames_refused_bad_mic += 1,
            FrameRefusal::Replayed { .. } => s.frames_refused_replayed += 1,
            FrameRefusal::BeyondWindow { .. } => s.frames_refused_beyond_window += 1,
        }
        let total = s.frames_refused_unsigned
            + s.frames_refused_bad_mic
            + s.frames_refused_replayed
            + s.frames_refused_beyond_window;
        if total <= 16 || total.is_power_of_two() {
            warn!(total, "radio frame refused: {refusal}");
        }
    }

    /// Back to `radio.max_devices` after the orchestrator named devices (a contract's image
    /// may name 1,024): devices no contract here uses go, stalest first (counted as evictions).
    fn trim_table(&mut self) {
        let evicted = self.table.trim(self.cfg.max_devices);
        if evicted > 0 {
            self.stats.devices_evicted += evicted;
            warn!(
                evicted,
                total = self.stats.devices_evicted,
                "radio device table over radio.max_devices: devices no contract here uses evicted"
            );
        }
    }

    /// Whether `device` has (or now has) room in the table; counts and logs an eviction or a
    /// drop.
    fn make_room(&mut self, device: u32) -> bool {
        match self.table.admit(device, self.cfg.max_devices) {
            Admit::Known | Admit::Room => true,
            Admit::Evicted(victim) => {
                self.stats.devices_evicted += 1;
                if self.stats.devices_evicted.is_power_of_two() {
                    warn!(
                        device,
                        evicted = victim,
                        total = self.stats.devices_evicted,
                        "radio device table full (radio.max_devices): stalest device evicted"
                    );
                }
                true
            }
            Admit::Full => {
                self.stats.frames_dropped_table_full += 1;
                if self.stats.frames_dropped_table_full.is_power_of_two() {
                    warn!(
                        device,
                        dropped = self.stats.frames_dropped_table_full,
                        "radio device table full of devices in use (radio.max_devices): frame dropped"
                    );
                }
                false
            }
        }
    }

    /// Feeds one frame to `service` unless it is stale or a duplicate.
    fn process(&mut self, device: u32, seq: u32, frame: Vec<u8>, service: &str, replay: bool) {
        let Some(d) = self.table.get_mut(&device) else {
            return;
        };
        if d.status.last_processed.is_some_and(|l| seq <= l)
            || d.status.peer_covered.is_some_and(|l| seq <= l)
        {
            d.status.duplicates += 1;
            return;
        }
        // The service reads the 16-byte v1 reading; the MIC was checked here.
        let Some(reading) = agora_wire::radio::reading(&frame) else {
            return;
        };
        if let Err(e) = self.services.push_reading(service, reading.to_vec()) {
            return debug!(device, seq, error = %e, "reading not queued");
        }
        d.status.missing = d.status.missing.saturating_add(rules::skipped(
            d.status.last_processed,
            d.status.peer_covered,
            seq,
        ));
        d.status.processed += 1;
        d.status.replayed += u64::from(replay);
        d.status.last_processed = Some(seq);
        crate::pause::on_processed(&mut d.status, seq);
        d.status.first_processed_at.get_or_insert_with(now_ms);
        self.pending
            .entry(service.to_string())
            .or_default()
            .push((device, seq, frame));
    }

    async fn on_command(&mut self, socket: Option<&UdpSocket>, cmd: Command) {
        match cmd {
            Command::StartJob {
                request,
                image,
                reply,
            } => {
                let result = if socket.is_none() {
                    Err(crate::firmware::FirmwareError::NoRadio)
                } else {
                    let table = self.discovery.metas();
                    let managed = self.managed_here(table.iter().map(|m| m.id));
                    let owned = table
                        .iter()
                        .map(|m| m.id)
                        .filter(|d| self.owners.get(*d) == Some(self.me))
                        .collect();
                    let origin = Origin::local(owned);
                    self.jobs
                        .start(now_ms(), &request, image, table, managed, origin)
                };
                let result = match result {
                    Ok((started, out)) => {
                        self.send_requests(socket, out).await;
                        Ok(started)
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            Command::Rotate(device, reply) => {
                let started = self.rotation.start_now(device, now_ms());
                if let Ok(s) = &started
                    && s.fresh
                {
                    self.begin_rotation(s.device, s.epoch, &s.revoked, true);
                }
                let _ = reply.send(started);
            }
            Command::Jobs(reply) => {
                let mut list = self.jobs.list();
                list.handoffs = self.handoffs.list();
                list.handoff_stats = self.handoffs.stats;
                let _ = reply.send(list);
            }
            Command::Owners(devices) => {
                let devices: Vec<u32> = devices.into_iter().take(MAX_KEYS_PER_MESSAGE).collect();
                self.owners.own(&devices, self.me);
                self.save_owners();
            }
            Command::Claim {
                contract,
                customer,
                devices,
                reply,
            } => {
                let devices: Vec<u32> = devices.into_iter().take(MAX_KEYS_PER_MESSAGE).collect();
                let claimed =
                    self.owners
                        .claim(contract, customer, &devices, owner_caps(&self.cfg));
                // Saved before the contract is served: a restart must find the claim.
                self.save_owners();
                match &claimed {
                    Ok(dropped) => {
                        self.note_owners_dropped(*dropped);
                        // Keys another party handed for these devices are not this owner's.
                        let stale = self.keys.forget_unless_from(&devices, customer);
                        if !stale.is_empty() {
                            warn!(contract = %contract.short(), devices = ?stale, "received keys of another owner dropped: the devices are claimed anew");
                        }
                    }
                    Err(e) => {
                        if matches!(e, crate::owners::ClaimRefused::OverShare { .. }) {
                            self.stats.claims_refused_share += 1;
                        } else {
                            self.stats.claims_refused_taken += 1;
                        }
                        warn!(contract = %contract.short(), error = %e, "contract's devices refused")
                    }
                }
                let _ = reply.send(claimed.map(|_| ()));
            }
            Command::ReleaseClaim(contract) => {
                let freed = self.owners.release(&contract);
                self.save_owners();
                if !freed.is_empty() {
                    // Their keys came from the claim's owner: kept, they would seal a later
                    // claimant's requests to the devices.
                    self.keys.forget_received(&freed);
                    self.key_fetches.retain(|d, _| !freed.contains(d));
                    debug!(contract = %contract.short(), devices = ?freed, "devices released");
                }
            }
            Command::Claimed(reply) => {
                let _ = reply.send(self.owners.contracts().into_iter().collect());
            }
            Command::StateTo(service, targets) => self.state.set_targets(service, targets),
            Command::AcceptState(contract, customer, devices) => {
                self.state.accept(contract, customer, devices);
            }
            Command::ForgetState(contract) => self.state.forget(&contract),
            Command::StateBack(service, contract, customer) => {
                self.state.set_back(service, contract, customer);
            }
            Command::TakeState(contract, reply) => {
                let _ = reply.send(self.state.take(&contract));
            }
            Command::Job(id, reply) => {
                let _ = reply.send(self.jobs.view(id));
            }
            Command::Assign {
                devices,
                service,
                resume_after,
                ask_peers,
                reply,
            } => {
                let mut resume_after = resume_after;
                self.fill_gaps(&devices, &mut resume_after, ask_peers).await;
                let mut replayed = 0;
                for device in devices {
                    let d = self.table.local_entry(device);
                    if let Some(&after) = resume_after.get(&device) {
                        let cover = d.status.peer_covered.map_or(after, |c| c.max(after));
                        d.status.peer_covered = Some(cover);
                    }
                    d.status.service = Some(service.clone());
                    d.status.buffering = false;
                    // Counts from this assignment: an edge that managed the device before (an
                    // earlier handover) must not report that time as this takeover's.
                    d.status.first_processed_at = None;
                    let mut buffered: Vec<(u32, Vec<u8>)> = d.buffer.drain(..).collect();
                    buffered.sort_by_key(|(seq, _)| *seq);
                    d.status.buffered = 0;
                    for (seq, frame) in buffered {
                        let before = self.table.get(&device).map_or(0, |d| d.status.processed);
                        self.process(device, seq, frame, &service, true);
                        let after = self.table.get(&device).map_or(0, |d| d.status.processed);
                        replayed += after - before;
                    }
                }
                info!(%service, replayed, "devices assigned");
                let _ = reply.send(replayed);
            }
            Command::Switch {
                from,
                to,
                devices,
                reply,
            } => {
                let outcome = self.switch(&from, &to, &devices).await;
                let _ = reply.send(outcome);
            }
            Command::Release { devices, reply } => {
                let services: Vec<String> = devices
                    .iter()
                    .filter_map(|d| self.table.get(d)?.status.service.clone())
                    .collect();
                let mut services = services;
                services.sort();
                services.dedup();
                // What each service whose state goes back to a customer processed of the
                // released devices (its state reflects it).
                let coverage: BTreeMap<String, Vec<(u32, u32)>> = services
                    .iter()
                    .filter(|s| self.state.goes_back(s))
                    .map(|s| {
                        let c = devices
                            .iter()
                            .filter_map(|d| self.table.get(d))
                            .filter(|d| d.status.service.as_deref() == Some(s.as_str()))
                            .filter_map(|d| Some((d.status.device, d.status.last_processed?)))
                            .collect();
                        (s.clone(), c)
                    })
                    .collect();
                for d in &devices {
                    if let Some(dev) = self.table.get_mut(d) {
                        dev.status.service = None;
                    }
                }
                for s in services {
                    // A checkpoint waiting for its state snapshot's answer goes out first.
                    if let Some(p) = self.state.take_in_flight(&s) {
                        self.publish_checkpoint(p).await;
                    }
                    // The way back: the state reaches the customer before the release does.
                    let c = coverage.get(&s).cloned().unwrap_or_default();
                    self.state_back(&s, c).await;
                    let frames = self.pending.remove(&s).unwrap_or_default();
                    self.checkpoint_frames(&s, frames, devices.clone()).await;
                }
                let _ = reply.send(());
            }
            Command::Listen(devices, on) => {
                for device in devices {
                    let d = self.table.local_entry(device);
                    d.status.buffering = on && d.status.service.is_none();
                }
            }
            Command::KeyHolders(holders) => {
                for (device, epoch, revoked) in self.rotation.set_holders(holders, now_ms()) {
                    self.begin_rotation(device, epoch, &revoked, false);
                }
            }
            Command::Managers(devices, edges) => {
                for device in devices {
                    let d = self.table.local_entry(device);
                    for e in &edges {
                        if !d.managers.contains(e) {
                            d.managers.push(*e);
                        }
                    }
                    let excess = d.managers.len().saturating_sub(MAX_MANAGERS_PER_DEVICE);
                    d.managers.drain(..excess);
                    d.status.managers = d.managers.iter().map(ToString::to_string).collect();
                }
            }
            Command::FetchKeys(devices, owner) => {
                let max = self.cfg.max_devices;
                for device in devices.into_iter().take(MAX_KEYS_PER_MESSAGE) {
                    // Only from the device's owner here (its claim was taken at staging).
                    if self.owners.get(device) != Some(owner) {
                        continue;
                    }
                    if owner != self.me
                        && !self.keys.has(device)
                        && (self.key_fetches.len() < max || self.key_fetches.contains_key(&device))
                    {
                        self.key_fetches.insert(device, (owner, 0));
                    }
                }
                self.next_key_fetch = Instant::now();
                self.fetch_keys();
            }
            Command::Devices(reply) => {
                let list = self
                    .discovery
                    .list(|id| self.manager_of(id).map(|n| n.to_string()));
                let _ = reply.send((list, self.discovery.stats));
            }
            Command::Status(reply) => {
                let _ = reply.send(RadioStatus {
                    addr: None,
                    devices: self
                        .table
                        .values()
                        .map(|d| {
                            let mut st = d.status.clone();
                            st.authenticated = self.keys.has(st.device);
                            st.key_epoch = self.keys.epoch(st.device);
                            st
                        })
                        .collect(),
                    checkpoints: self.checkpoints.iter().cloned().collect(),
                    stats: self.stats.clone(),
                    state: self.state.store.stats,
                    states: self.state.kept(),
                });
            }
        }
    }

    /// Applies a peer's checkpoint (see [`judge::apply`]): each range moves its device's
    /// coverage only when [`rules::judge`] says so, each release counts only from a manager;
    /// the rest is dropped and counted, with one log line per checkpoint. Returns whether
    /// gossipsub forwards it (threat N7).
    fn on_peer_checkpoint(&mut self, edge: NodeId, mut c: Checkpoint) -> Forward {
        if judge::already_kept(&self.checkpoints, &edge.to_string(), &c) {
            self.stats.checkpoints_duplicate += 1;
            self.stats.checkpoints_ignored += 1;
            debug!(%edge, at = c.at, "peer checkpoint already kept: ignored");
            return Forward::Ignore;
        }
        let a = judge::apply(
            &mut self.table,
            &mut self.stats,
            &edge,
            &mut c,
            self.cfg.checkpoint_window,
            self.cfg.max_devices,
        );
        if let Some(e) = &a.malformed {
            if self.stats.checkpoints_rejected <= 16
                || self.stats.checkpoints_rejected.is_power_of_two()
            {
                warn!(%edge, error = %e, rejected = self.stats.checkpoints_rejected, "malformed radio checkpoint rejected");
            }
            return a.forward;
        }
        let total = self.stats.ranges_refused_not_manager
            + self.stats.ranges_refused_beyond_heard
            + self.stats.releases_refused;
        // One line per refused checkpoint, then fewer under a flood (the counters keep count).
        if (!a.refused.is_empty() || a.releases_refused > 0)
            && (total <= 64 || total.is_power_of_two())
        {
            let shown: Vec<_> = a.refused.iter().take(4).collect();
            warn!(
                %edge,
                refused = a.refused.len(),
                releases_refused = a.releases_refused,
                sample = ?shown,
                "peer checkpoint ranges refused (signer not a manager of the device, or beyond \
                 what this edge heard plus radio.checkpoint_window)"
            );
        }
        if a.keep {
            self.remember(CheckpointRecord {
                edge: edge.to_string(),
                mine: false,
                checkpoint: c,
                verified: a.verified,
            });
        }
        a.forward
    }

    fn remember(&mut self, rec: CheckpointRecord) {
        self.checkpoints.push_back(rec);
        while self.checkpoints.len() > KEPT_CHECKPOINTS {
            self.checkpoints.pop_front();
        }
    }

    /// Proves, stores and gossips what `service` processed since its last checkpoint.
    async fn checkpoint(&mut self, service: &str, released: Vec<u32>) {
        let frames = self.pending.remove(service).unwrap_or_default();
        self.checkpoint_frames(service, frames, released).await;
    }

    /// Proves, stores and gossips `frames` fed to `service` (and the devices it gives up).
    async fn checkpoint_frames(
        &mut self,
        service: &str,
        frames: Vec<(u32, u32, Vec<u8>)>,
        released: Vec<u32>,
    ) {
        if let Some(prepared) = self.prepare_checkpoint(service, frames, released).await {
            self.publish_checkpoint(prepared).await;
        }
    }

    /// Proves and stores `frames` fed to `service`, moves this edge's coverage, and seals the
    /// checkpoint (with the devices it gives up) for gossip; `None` when there is nothing to
    /// say or it could not be sealed.
    async fn prepare_checkpoint(
        &mut self,
        service: &str,
        frames: Vec<(u32, u32, Vec<u8>)>,
        released: Vec<u32>,
    ) -> Option<PreparedCheckpoint> {
        if frames.is_empty() && released.is_empty() {
            return None;
        }
        let mut ranges: BTreeMap<u32, SeqRange> = BTreeMap::new();
        for (device, seq, _) in &frames {
            let r = ranges.entry(*device).or_insert(SeqRange {
                device: *device,
                first: *seq,
                last: *seq,
                count: 0,
            });
            r.first = r.first.min(*seq);
            r.last = r.last.max(*seq);
            r.count += 1;
        }
        let proof = if frames.is_empty() {
            String::new()
        } else {
            let data: Vec<Vec<u8>> = frames.into_iter().map(|(_, _, f)| f).collect();
            // Frames as heard: a v2 frame keeps its MIC, so the proof shows the device's word.
            debug_assert!(data.iter().all(|f| f.len() >= FRAME_LEN));
            match self.storage.proof_create(data).await {
                Ok(p) => p.cid,
                Err(e) => {
                    warn!(%service, error = %e, "data-integrity proof not stored");
                    String::new()
                }
            }
        };
        for r in ranges.values() {
            if let Some(d) = self.table.get_mut(&r.device) {
                d.covered = Some(d.covered.map_or(r.last, |p| p.max(r.last)));
            }
        }
        let checkpoint = Checkpoint {
            service: service.to_string(),
            ranges: ranges.into_values().collect(),
            proof,
            released,
            at: now_ms(),
        };
        self.seq += 1;
        match Envelope::seal_body(&self.signer, Kind::Radio, now_ms(), self.seq, &checkpoint) {
            Ok(envelope) => Some(PreparedCheckpoint {
                checkpoint,
                envelope,
            }),
            Err(e) => {
                warn!(error = %e, "checkpoint not encoded");
                None
            }
        }
    }

    /// Gossips a sealed checkpoint of this edge and keeps it in the history.
    async fn publish_checkpoint(&mut self, p: PreparedCheckpoint) {
        if let Err(e) = self.network.publish(RADIO_TOPIC, &p.envelope).await {
            debug!(error = %e, "checkpoint not gossiped (no peers yet?)");
        }
        self.remember(CheckpointRecord {
            edge: self.me.to_string(),
            mine: true,
            checkpoint: p.checkpoint,
            verified: true,
        });
    }
}

/// A checkpoint of this edge, sealed for gossip and not gossiped yet.
pub(crate) struct PreparedCheckpoint {
    checkpoint: Checkpoint,
    envelope: Envelope,
}

impl RadioTask {
    /// Whether this edge has custody of `device`: the orchestrator assigned it to a service
    /// running here (the node's own service, or a contract's in effect), as the ledger says.
    fn custody(&self, device: u32) -> bool {
        self.table
            .get(&device)
            .is_some_and(|d| d.status.service.is_some())
    }

    /// Who manages `device` as this edge knows it (`agora device list`): this node while it has
    /// custody, else the last other edge the orchestrator named for it.
    fn manager_of(&self, device: u32) -> Option<NodeId> {
        if self.custody(device) {
            return Some(self.me);
        }
        self.table
            .get(&device)?
            .managers
            .iter()
            .rev()
            .find(|m| **m != self.me)
            .copied()
    }

    /// Of `devices`, those this edge manages (has custody of).
    fn managed_here(
        &self,
        devices: impl IntoIterator<Item = u32>,
    ) -> BTreeSet<agora_devices::DeviceId> {
        devices.into_iter().filter(|d| self.custody(*d)).collect()
    }

    /// Saves the customers' claims if one changed (threat R8).
    fn save_owners(&mut self) {
        if self.owners.take_dirty() {
            crate::owners_file::save(self.owners_file.as_deref(), &self.owners);
        }
    }

    fn note_owners_dropped(&self, dropped: usize) {
        if dropped > 0 {
            warn!(
                dropped,
                max = self.cfg.max_devices,
                known = self.owners.len(),
                "device owners not recorded: radio.max_devices owners known already"
            );
        }
    }

    /// Ticks the running firmware jobs (timeouts, who manages their devices now).
    async fn tick_jobs(&mut self, socket: Option<&UdpSocket>) {
        if !self.jobs.running() {
            return;
        }
        // Devices of restored jobs not heard since the restart, asked where they were.
        for (device, addr) in self.jobs.hints() {
            if let (Some(s), Some(req)) = (socket, self.discovery.hint(device, addr, now_ms()))
                && let Err(e) = s.send_to(&req, addr).await
            {
                debug!(device, error = %e, "metadata request not sent");
            }
        }
        let (table, discovery) = (&self.table, &self.discovery);
        let out = self.jobs.tick(
            now_ms(),
            |devices| {
                devices
                    .iter()
                    .copied()
                    .filter(|d| table.get(d).is_some_and(|d| d.status.service.is_some()))
                    .collect()
            },
            |d| discovery.meta_of(d),
        );
        self.send_requests(socket, out).await;
    }

    /// Saves the job table if a job changed in a way a restart must not lose.
    fn save_jobs(&mut self) {
        if self.jobs.take_dirty() {
            let discovery = &self.discovery;
            crate::jobs_file::save(self.jobs_file.as_deref(), &self.jobs, &|d| {
                discovery.addr_of(d)
            });
        }
    }

    /// Reads again the images of the jobs restored at start (from this node's store; a job
    /// whose image cannot be had within [`IMAGE_RELOAD_TIMEOUT`] is halted).
    async fn load_restored_images(&mut self) {
        for (id, cid) in self.jobs.images_needed() {
            let image =
                match tokio::time::timeout(IMAGE_RELOAD_TIMEOUT, load_image(&self.storage, &cid))
                    .await
                {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("not read within {IMAGE_RELOAD_TIMEOUT:?}")),
                };
            if image.is_ok() {
                info!(job = id, %cid, "restored firmware job: image read again");
            }
            self.jobs.image_loaded(now_ms(), id, image);
        }
        self.save_jobs();
    }

    /// Marks the devices the jobs took offline paused, and those back on a final firmware (or
    /// whose job ended) not, in the order the jobs said so. Only a device in the table (one
    /// this edge has custody of) is touched.
    fn apply_holds(&mut self) {
        for (device, paused) in self.jobs.take_holds() {
            let Some(d) = self.table.get_mut(&device) else {
                continue;
            };
            if paused {
                crate::pause::pause(&mut d.status);
                debug!(device, after = ?d.status.paused_after, "device readings paused: firmware job");
            } else if d.status.paused {
                crate::pause::resume(&mut d.status);
                debug!(device, "device readings resumed");
            }
        }
    }

    /// Sends firmware-job requests to the devices' addresses (as discovery knows them).
    async fn send_requests(&mut self, socket: Option<&UdpSocket>, out: Outgoing) {
        self.apply_holds();
        self.save_jobs();
        for (device, req) in out {
            // Threat R2: sealed under the device's key (if this edge holds it), with a rising
            // counter.
            let bytes = match self.keys.get(device).cloned() {
                Some(key) => {
                    self.request_counter = now_ms().max(self.request_counter.saturating_add(1));
                    seal_request(&key, device, self.request_counter, &req)
                }
                None => encode_request(device, &req),
            };
            let sent = match (socket, self.discovery.addr_of(device), bytes) {
                (Some(s), Some(addr), Ok(bytes)) => s
                    .send_to(&bytes, addr)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                (_, _, Err(e)) => Err(e.to_string()),
                (None, _, _) => Err("no radio socket".into()),
                (_, None, _) => Err("device address unknown".into()),
            };
            match sent {
                Ok(()) => self.jobs.stats.requests_sent += 1,
                Err(e) => {
                    self.jobs.stats.requests_failed += 1;
                    debug!(device, error = %e, "firmware job request not sent");
                }
            }
        }
    }

    /// `rpc` in an envelope signed by this node, with the next sequence number.
    fn seal(&mut self, rpc: &RadioRpc) -> Result<Envelope, agora_wire::codec::CodecError> {
        self.seq += 1;
        Envelope::seal_body(&self.signer, Kind::Radio, now_ms(), self.seq, rpc)
    }

    /// Answers a peer's replay request with what this edge buffered of the devices it names:
    /// each device once, at most [`MAX_KEYS_PER_MESSAGE`] of them, and at most
    /// [`REPLAY_ANSWER_BYTES`] of frames in all, so a small request (one device named ten
    /// thousand times) costs one answer's worth, not gigabytes (THREATS R1).
    async fn answer_replay(&mut self, id: u64, devices: &[u32]) {
        let mut asked = BTreeSet::new();
        for d in devices {
            if asked.len() >= MAX_KEYS_PER_MESSAGE {
                break;
            }
            asked.insert(*d);
        }
        let mut trimmed = asked.len() < devices.len();
        let mut budget = REPLAY_ANSWER_BYTES;
        let mut answered = Vec::new();
        for d in asked {
            let Some(dev) = self.table.get(&d) else {
                continue;
            };
            let mut frames: Vec<&(u32, Vec<u8>)> = dev.buffer.iter().collect();
            frames.sort_by_key(|(s, _)| *s);
            let mut kept = Vec::new();
            for (_, f) in frames.into_iter().take(MAX_REPLAY_FRAMES) {
                // The frame and its CBOR framing.
                let cost = f.len() + 8;
                if cost > budget {
                    trimmed = true;
                    break;
                }
                budget -= cost;
                kept.push(f.clone());
            }
            answered.push(ReplayedDevice {
                device: d,
                covered: dev.covered,
                frames: kept,
            });
            if trimmed && budget < 64 {
                break;
            }
        }
        if trimmed {
            self.stats.replay_requests_trimmed += 1;
            let n = self.stats.replay_requests_trimmed;
            if n <= 16 || n.is_power_of_two() {
                warn!(
                    devices = devices.len(),
                    answered = answered.len(),
                    trimmed = self.stats.replay_requests_trimmed,
                    "replay request answered in part: a device named twice, too many devices or too many frames"
                );
            }
        }
        let answer = RadioRpc::Frames { devices: answered };
        if let Ok(env) = self.seal(&answer) {
            let _ = self.network.respond(id, &env).await;
        }
    }

    /// When the local buffer cannot bridge from the resume point (this edge was down, or never
    /// heard the device), or when `always` is set, asks peers for what they heard and how far
    /// their checkpoints reach, and merges it in.
    async fn fill_gaps(
        &mut self,
        devices: &[u32],
        resume_after: &mut BTreeMap<u32, u32>,
        always: bool,
    ) {
        let gaps: Vec<u32> = devices
            .iter()
            .copied()
            .filter(|d| {
                if always {
                    return true;
                }
                let Some(resume) = resume_after.get(d) else {
                    return true;
                };
                // A device a firmware job here paused sends nothing: when nothing it sent
                // before is past the resume point, there is nothing to ask peers for.
                if self
                    .table
                    .get(d)
                    .is_some_and(|dev| crate::pause::silent_since(&dev.status, *resume))
                {
                    return false;
                }
                let oldest = self
                    .table
                    .get(d)
                    .and_then(|dev| dev.buffer.iter().map(|(s, _)| *s).min());
                oldest.is_none_or(|o| o > resume.saturating_add(1))
            })
            .collect();
        if gaps.is_empty() {
            return;
        }
        let Ok(peers) = self.network.peers().await else {
            return;
        };
        let Ok(env) = self.seal(&RadioRpc::Replay {
            devices: gaps.clone(),
        }) else {
            return;
        };
        // The devices' known managers first: their word on coverage is the one that counts.
        let managers: BTreeSet<agora_network::PeerId> = gaps
            .iter()
            .filter_map(|d| self.table.get(d))
            .flat_map(|d| d.managers.iter())
            .filter_map(agora_network::keys::peer_id_of)
            .collect();
        let mut peers: Vec<agora_network::PeerId> = peers
            .iter()
            .filter_map(|p| p.peer_id.parse::<agora_network::PeerId>().ok())
            .collect();
        peers.sort_by_key(|p| !managers.contains(p));
        let asks = peers.into_iter().take(REPLAY_PEERS).map(|peer| {
            let network = self.network.clone();
            let env = env.clone();
            async move { tokio::time::timeout(REPLAY_TIMEOUT, network.request(peer, &env)).await }
        });
        let answers = futures::future::join_all(asks).await;
        let mut got = 0usize;
        let mut claimed: Vec<(u32, u32, bool)> = Vec::new();
        let max_buffer = self.cfg.buffer_per_device;
        for answer in answers.into_iter().flatten().flatten() {
            let Ok(RadioRpc::Frames { devices }) = answer.body::<RadioRpc>(Kind::Radio) else {
                continue;
            };
            // Each device once per answer: a hostile peer repeating one device's entry would
            // make this edge check its frames again and again.
            let mut answered = BTreeSet::new();
            let mut entries_refused = 0u64;
            for rd in devices.into_iter().filter(|rd| gaps.contains(&rd.device)) {
                if !answered.insert(rd.device) {
                    entries_refused += 1;
                    continue;
                }
                if let Some(c) = rd.covered {
                    let by_manager = self
                        .table
                        .get(&rd.device)
                        .is_some_and(|d| d.managers.contains(&answer.sender));
                    claimed.push((rd.device, c, by_manager));
                }
                let keys = self.keys.candidates(rd.device);
                let mut refused = 0u64;
                let dev = self.table.local_entry(rd.device);
                // Sequence numbers already buffered, looked up once each (not a scan per frame).
                let mut have: std::collections::HashSet<u32> =
                    dev.buffer.iter().map(|(s, _)| *s).collect();
                let mut frames = rd.frames.into_iter().take(MAX_REPLAY_FRAMES);
                for f in frames.by_ref() {
                    if dev.buffer.len() >= max_buffer {
                        // The buffer's bound holds for replayed frames too.
                        entries_refused += 1;
                        break;
                    }
                    // A peer's replay is hearsay too: a device with a key here counts only
                    // frames its key signed (the counter is not checked: these are old frames
                    // by nature, and the buffer and coverage already drop duplicates).
                    if !keys.is_empty() && keys.iter().all(|k| check_mic(k, &f).is_err()) {
                        refused += 1;
                        continue;
                    }
                    if let Ok((device, seq)) = parse_frame(&f)
                        && device == rd.device
                        && have.insert(seq)
                    {
                        dev.hear(seq);
                        dev.buffer.push_back((seq, f));
                        got += 1;
                    }
                }
                entries_refused += frames.count() as u64;
                if refused > 0 {
                    self.stats.replay_frames_refused += refused;
                    warn!(
                        device = rd.device,
                        refused,
                        peer = %answer.sender,
                        "replayed frames refused: bad MIC or unsigned for a device with a key here"
                    );
                }
            }
            if entries_refused > 0 {
                self.stats.replay_entries_refused += entries_refused;
                warn!(
                    peer = %answer.sender,
                    refused = entries_refused,
                    "replay answer entries dropped: a device given twice or frames past the buffer bound"
                );
            }
        }
        // A peer's word on coverage is hearsay: never more than the window beyond what was
        // heard (here and in the replayed frames), so a hostile answer cannot skip a device.
        // A manager's own answer, when one came, is the word on coverage; others' is hearsay.
        let from_managers: BTreeSet<u32> = claimed.iter().filter(|c| c.2).map(|c| c.0).collect();
        for (device, c, by_manager) in claimed {
            if !by_manager && from_managers.contains(&device) {
                continue;
            }
            let heard = self.table.get(&device).and_then(|d| d.status.heard);
            let Some(c2) = rules::clamp_covered(c, heard, self.cfg.checkpoint_window) else {
                self.stats.replay_covered_clamped += 1;
                continue;
            };
            if c2 != c {
                self.stats.replay_covered_clamped += 1;
                warn!(
                    device,
                    claimed = c,
                    kept = c2,
                    "replay answer's coverage cut to the window"
                );
            }
            let r = resume_after.entry(device).or_insert(c2);
            *r = (*r).max(c2);
        }
        info!(?gaps, frames = got, "missed uplinks fetched from peers");
    }
}

async fn recv(socket: Option<&UdpSocket>, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    match socket {
        Some(s) => loop {
            match s.recv_from(buf).await {
                Ok((n, from)) => return Some((n, from)),
                Err(e) => debug!(error = %e, "radio receive failed"),
            }
        },
        None => std::future::pending().await,
    }
}

impl RadioTask {
    /// Asks each owner for the keys still missing (one request in flight per owner).
    fn fetch_keys(&mut self) {
        if self.key_fetches.is_empty() || Instant::now() < self.next_key_fetch {
            return;
        }
        self.next_key_fetch = Instant::now() + KEY_RETRY;
        let gave_up: Vec<u32> = self
            .key_fetches
            .iter()
            .filter(|(_, (_, n))| *n >= KEY_ATTEMPTS)
            .map(|(d, _)| *d)
            .collect();
        for d in gave_up {
            if let Some((owner, _)) = self.key_fetches.remove(&d) {
                warn!(
                    device = d,
                    %owner,
                    "device key not handed over by its owner: this edge hears the device as \
                     hearsay (frames unverified)"
                );
            }
        }
        let mut by_owner: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
        for (device, (owner, n)) in self.key_fetches.iter_mut() {
            if !self.key_fetching.contains(owner) {
                *n += 1;
            }
            by_owner.entry(*owner).or_default().push(*device);
        }
        for (owner, devices) in by_owner {
            if !self.key_fetching.insert(owner) {
                continue;
            }
            let env = self.seal(&RadioRpc::KeyRequest { devices });
            let (network, tx) = (self.network.clone(), self.keys_tx.clone());
            tokio::spawn(
                async move {
                    let mut keys = Vec::new();
                    if let Ok(env) = env
                        && let Some(RadioRpc::Keys { keys: k }) =
                            ask_peer(&network, owner, &env, KEY_TIMEOUT, "a key request").await
                    {
                        keys = k;
                    }
                    let _ = tx.send((owner, keys)).await;
                }
                .in_current_span(),
            );
        }
    }

    /// Keeps the keys `owner` sent for devices this edge asked it about; re-checks what was
    /// buffered for them before the key arrived.
    fn on_keys(&mut self, owner: NodeId, keys: Vec<HandedKey>) {
        self.key_fetching.remove(&owner);
        let asked: Vec<HandedKey> = keys
            .into_iter()
            .take(MAX_KEYS_PER_MESSAGE)
            .filter(|k| {
                self.key_fetches
                    .get(&k.device)
                    .is_some_and(|(o, _)| *o == owner)
            })
            .collect();
        for k in &asked {
            self.key_fetches.remove(&k.device);
        }
        let changed = self.keys.receive(asked, owner, self.cfg.max_devices);
        if changed.is_empty() {
            return;
        }
        self.stats.keys_received += changed.len() as u64;
        info!(%owner, devices = ?changed, "device keys received from their owner");
        for device in changed {
            self.recheck_buffer(device);
        }
    }

    /// Drops buffered frames of `device` that its (new) key did not sign, and recomputes what
    /// was heard from the rest: hearsay from before the key must not reach the service.
    fn recheck_buffer(&mut self, device: u32) {
        let keys = self.keys.candidates(device);
        if keys.is_empty() {
            return;
        }
        let Some(d) = self.table.get_mut(&device) else {
            return;
        };
        let before = d.buffer.len();
        d.buffer
            .retain(|(_, f)| keys.iter().any(|k| check_mic(k, f).is_ok()));
        let dropped = before - d.buffer.len();
        d.status.buffered = d.buffer.len();
        d.status.heard = d
            .buffer
            .iter()
            .map(|(s, _)| *s)
            .chain(d.status.last_processed)
            .chain(d.covered)
            .max();
        if let Some(last) = d.buffer.iter().map(|(s, _)| *s).max()
            && self.counters.accept(device, last)
        {
            self.counters.flush();
        }
        if dropped > 0 {
            self.stats.frames_refused_bad_mic += dropped as u64;
            warn!(
                device,
                dropped, "buffered frames not signed by the device's key dropped"
            );
        }
    }

    /// Answers a provider's key request: only keys this node owns, only for devices it knows
    /// `asker` manages (the provider of one of its contracts, from the ledger).
    async fn answer_keys(&mut self, id: u64, asker: NodeId, devices: &[u32]) {
        let mut keys = Vec::new();
        let mut refused = Vec::new();
        for &device in devices.iter().take(MAX_KEYS_PER_MESSAGE) {
            // Only a provider the ledger names for the device now: one whose contract ended
            // is refused (and its key rotated, see `rotation`).
            let holder = asker != self.me && self.rotation.may_hold(device, &asker);
            let owned = self.keys.owned(device);
            if holder && !owned.is_empty() && self.rotation.handed(device, asker) {
                keys.extend(owned);
            } else {
                refused.push(device);
            }
        }
        if !refused.is_empty() {
            self.stats.key_requests_refused += 1;
            if self.stats.key_requests_refused <= 16
                || self.stats.key_requests_refused.is_power_of_two()
            {
                warn!(
                    %asker,
                    ?refused,
                    "device keys not handed over: not this node's devices, or the asker is not \
                     a provider of them as far as this node's ledger knows (yet)"
                );
            }
        }
        if !keys.is_empty() {
            info!(%asker, devices = ?keys.iter().map(|k| k.device).collect::<Vec<_>>(), "device keys handed to their provider");
        }
        if let Ok(env) = self.seal(&RadioRpc::Keys { keys }) {
            let _ = self.network.respond(id, &env).await;
        }
    }
}
