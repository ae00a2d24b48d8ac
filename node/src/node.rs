//! The node: one task owns the libp2p swarm; per-folder workers scan, plan and apply.
//!
//! Layout of a running node:
//! - the **swarm task** ([`run`]) owns the [`Swarm`] and every piece of peer state;
//!   other tasks reach the network only through [`Cmd`]s on a bounded channel;
//! - one **folder worker** per folder ([`crate::apply::folder_worker`]) is the only
//!   writer of that folder's index: kicked by the watcher, by newly accepted entries
//!   and by a timer, it scans, plans, and applies;
//! - the **watcher** turns filesystem events into kicks;
//! - the **control socket** answers the CLI.
//!
//! Peers: only certified devices of this person are served. A peer that is not known
//! yet may say Hello with a certificate from this person, or pair with a valid code;
//! anything else is refused, and a peer that has not proved itself within
//! [`VERIFY_GRACE`] is disconnected.
use crate::apply::{FolderKick, FolderStatus, folder_worker};
use crate::control::{ControlRequest, ControlResponse, PeerStatus};
use crate::pairing::{INVITE_TTL_MS, Invite, proof};
use crate::protocol::*;
use crate::{NodeError, Shared};
use libp2p::futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, PeerId, Swarm, connection_limits, dcutr, identify, mdns, noise, ping, relay,
    rendezvous, tcp, yamux,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use weft_crypto::{
    ChunkId, ChunkKey, DeviceCertificate, DeviceId, FolderId, PublicKey, SealedChunk,
};
use weft_store::Store;
use weft_store::store::now_ms;

/// How long an unknown peer may stay connected without proving itself.
pub const VERIFY_GRACE: Duration = Duration::from_secs(10);
/// How often a device renews its registration at a relay's rendezvous point.
const REGISTER_EVERY: Duration = Duration::from_secs(3600);
/// How many chunk requests may be in flight to one peer: about 4 MiB of answers,
/// enough to cover the hops between the two swarm tasks and their blocking pools on a
/// fast link (4 synced the large-file set a tenth slower on loopback than 6, 8 a little
/// faster again once answers stopped being copied into frame buffers), few enough that
/// the serving device's buffers stay small (peak RSS ~50 MiB on the large-file set).
pub const CHUNK_REQUESTS_PER_PEER: usize = 8;

/// Settings of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Extra peers to dial at start.
    pub peers: Vec<Multiaddr>,
    /// Whether to discover peers with mDNS.
    pub mdns: bool,
    /// Full rescan interval (catches what the watcher missed).
    pub rescan_every: Duration,
    /// Pull interval (catches a missed notification).
    pub pull_every: Duration,
    /// How long the watcher waits for a burst of events to settle.
    pub debounce: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/0.0.0.0/tcp/0"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
            ],
            peers: Vec::new(),
            mdns: true,
            rescan_every: Duration::from_secs(60),
            pull_every: Duration::from_secs(30),
            debounce: Duration::from_millis(100),
        }
    }
}

/// Requests from the node's other tasks to the swarm task.
pub enum Cmd {
    /// Fetch one chunk from any peer that has it.
    FetchChunk {
        /// The chunk.
        id: ChunkId,
        /// Its key and plaintext length: with them the chunk is opened as it arrives
        /// (off the swarm task) and the reply is the plaintext.
        open: Option<(ChunkKey, u32)>,
        /// The ciphertext (the plaintext if `open` was given), or `None` if no peer has
        /// it.
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    /// Tell every peer that `folder` has new entries here.
    Notify {
        /// The folder.
        folder: FolderId,
        /// A peer not to tell (the one the entries came from).
        except: Option<PeerId>,
    },
    /// Pull every folder from a peer (an uploader, once its relay knows this device).
    Pull {
        /// The peer.
        peer: PeerId,
    },
    /// A request to a relay's storage (from an uploader).
    Store {
        /// The relay.
        peer: PeerId,
        /// The request.
        req: StoreRequest,
        /// Its answer, or why there is none.
        reply: oneshot::Sender<Result<StoreResponse, String>>,
    },
    /// A control-socket request.
    Control {
        /// The request.
        req: ControlRequest,
        /// Where the answer goes.
        reply: oneshot::Sender<ControlResponse>,
    },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    relay_client: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
    rendezvous: rendezvous::client::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    sync: request_response::Behaviour<Codec<SyncRequest, SyncResponse>>,
    chunk: request_response::Behaviour<Codec<ChunkRequest, ChunkResponse>>,
    store: request_response::Behaviour<Codec<StoreRequest, StoreResponse>>,
    pair: request_response::Behaviour<Codec<PairRequest, PairResponse>>,
}

struct Peer {
    since: Instant,
    verified: bool,
    name: Option<String>,
    addr: Option<Multiaddr>,
    relayed: bool,
    rtt: Option<Duration>,
    chunk_in_flight: usize,
    /// A relay this device uses (pulled from and fetched from, never served).
    is_relay: bool,
    /// A relayed connection was upgraded to a direct one by hole punching.
    punched: bool,
}

struct ChunkFetch {
    id: ChunkId,
    open: Option<(ChunkKey, u32)>,
    tried: HashSet<PeerId>,
    reply: oneshot::Sender<Option<Vec<u8>>>,
}

/// Chunk work done on the blocking pool, handed back to the swarm task. Reading and
/// sealing a chunk for a peer, and checking and opening one from a peer, cost a few
/// passes over 64 KiB each: on the swarm task they would serialize every transfer on
/// one core. The channel holds at most one item per request in flight (the request
/// limits bound those).
enum Done {
    /// A chunk read for a peer: answer it.
    Served {
        channel: ResponseChannel<ChunkResponse>,
        resp: ChunkResponse,
    },
    /// A fetched chunk failed its check: try another peer.
    Rejected {
        fetch: ChunkFetch,
        peer: PeerId,
        reason: String,
    },
}

struct State {
    shared: Arc<Shared>,
    swarm: Swarm<Behaviour>,
    peers: HashMap<PeerId, Peer>,
    invites: HashMap<[u8; 16], u64>,
    pulls: HashMap<OutboundRequestId, (PeerId, FolderId)>,
    fetches: HashMap<OutboundRequestId, Vec<ChunkFetch>>,
    queued_fetches: VecDeque<ChunkFetch>,
    kicks: HashMap<FolderId, FolderKick>,
    known_addrs: HashMap<PeerId, Vec<Multiaddr>>,
    cmd_tx: mpsc::Sender<Cmd>,
    done_tx: mpsc::UnboundedSender<Done>,
    store_waiting: HashMap<OutboundRequestId, oneshot::Sender<Result<StoreResponse, String>>>,
    /// Relays by peer id: their uploader's kick, and the uploader once connected.
    relays: HashMap<PeerId, Relay>,
    /// Folder workers (one per folder) and the watcher that kicks them; a folder
    /// accepted while the node runs joins both.
    workers: Vec<tokio::task::JoinHandle<()>>,
    watch: Option<crate::watch::Watch>,
    cfg: NodeConfig,
}

struct Relay {
    addr: Multiaddr,
    kick: Arc<tokio::sync::Notify>,
    uploader: Option<tokio::task::JoinHandle<()>>,
    /// Listening through it (a circuit relay v2 reservation).
    circuit: Option<libp2p::core::transport::ListenerId>,
    /// When this device last registered at its rendezvous point (registrations
    /// expire after two hours; renewed every hour).
    registered: Option<Instant>,
}

fn store(s: &State) -> &Store {
    &s.shared.store
}

/// The libp2p PeerId of a device.
pub fn peer_id_of(d: &DeviceId) -> Option<PeerId> {
    peer_id(d)
}

fn peer_id(d: &DeviceId) -> Option<PeerId> {
    libp2p::identity::ed25519::PublicKey::try_from_bytes(d.as_bytes())
        .ok()
        .map(|k| PeerId::from_public_key(&libp2p::identity::PublicKey::from(k)))
}

/// The device id of a libp2p peer id (an ed25519 identity), if it is one.
pub fn device_of(p: &PeerId) -> Option<DeviceId> {
    device_id(p)
}

fn device_id(p: &PeerId) -> Option<DeviceId> {
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(&p.to_bytes()[2..]).ok()?;
    let ed = pk.try_into_ed25519().ok()?;
    Some(DeviceId(PublicKey(ed.to_bytes())))
}

/// A swarm over TCP and QUIC (Noise, Yamux) with the device key as its identity, and
/// the behaviour `make` builds; shared by the node and by `weft join`.
pub fn swarm_with<B: NetworkBehaviour>(
    device: &weft_crypto::SecretKey,
    idle: Duration,
    make: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> Result<Swarm<B>, NodeError> {
    let mut seed = *device.to_seed();
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)
        .map_err(|e| NodeError::Network(e.to_string()))?;
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NodeError::Network(e.to_string()))?
        .with_quic()
        .with_behaviour(|key| make(key))
        .map_err(|e| NodeError::Network(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build())
}

/// The node's swarm: [`swarm_with`]'s transports plus circuits through relays (the
/// relay client transport), for devices that cannot be dialed directly.
fn swarm_with_relay_client<B: NetworkBehaviour>(
    device: &weft_crypto::SecretKey,
    idle: Duration,
    make: impl FnOnce(&libp2p::identity::Keypair, relay::client::Behaviour) -> B,
) -> Result<Swarm<B>, NodeError> {
    let mut seed = *device.to_seed();
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)
        .map_err(|e| NodeError::Network(e.to_string()))?;
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NodeError::Network(e.to_string()))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| NodeError::Network(e.to_string()))?
        .with_behaviour(|key, relay| make(key, relay))
        .map_err(|e| NodeError::Network(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build())
}

fn build_swarm(shared: &Shared, cfg: &NodeConfig) -> Result<Swarm<Behaviour>, NodeError> {
    let mdns_on = cfg.mdns;
    let rr = |support, streams| Use {
        support,
        streams,
        timeout: Duration::from_secs(30),
    };
    swarm_with_relay_client(
        &shared.store.identity().device,
        Duration::from_secs(300),
        |key, relay_client| {
            let local = key.public().to_peer_id();
            let mdns = if mdns_on {
                mdns::tokio::Behaviour::new(mdns::Config::default(), local).ok()
            } else {
                None
            };
            Behaviour {
                relay_client,
                dcutr: dcutr::Behaviour::new(local),
                rendezvous: rendezvous::client::Behaviour::new(key.clone()),
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established_per_peer(Some(4))
                        .with_max_established_incoming(Some(64))
                        .with_max_pending_incoming(Some(16)),
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/weft/1".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_secs(15)),
                ),
                mdns: Toggle::from(mdns),
                sync: sync_behaviour(rr(ProtocolSupport::Full, 32)),
                chunk: chunk_behaviour(rr(ProtocolSupport::Full, 64)),
                store: store_behaviour(rr(ProtocolSupport::Outbound, 8)),
                pair: pair_behaviour(rr(ProtocolSupport::Full, 4)),
            }
        },
    )
}

/// Runs a node until `shutdown` resolves.
pub async fn run(
    shared: Arc<Shared>,
    cfg: NodeConfig,
    mut cmds: mpsc::Receiver<Cmd>,
    cmd_tx: mpsc::Sender<Cmd>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let mut swarm = build_swarm(&shared, &cfg)?;
    for a in &cfg.listen {
        swarm
            .listen_on(a.clone())
            .map_err(|e| NodeError::Network(format!("cannot listen on {a}: {e}")))?;
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut st = State {
        shared: shared.clone(),
        swarm,
        peers: HashMap::new(),
        invites: HashMap::new(),
        pulls: HashMap::new(),
        fetches: HashMap::new(),
        queued_fetches: VecDeque::new(),
        kicks: HashMap::new(),
        known_addrs: HashMap::new(),
        cmd_tx: cmd_tx.clone(),
        done_tx,
        store_waiting: HashMap::new(),
        relays: HashMap::new(),
        workers: Vec::new(),
        watch: None,
        cfg: cfg.clone(),
    };
    for a in shared.store.relays()? {
        if let Err(e) = add_relay(&mut st, &a) {
            warn!("relay {a}: {e}");
        }
    }
    // One worker per folder, and the watcher that kicks them.
    let mut watched = Vec::new();
    let mut workers = Vec::new();
    for f in shared.store.folders()? {
        let kick = FolderKick::new();
        st.kicks.insert(f.id, kick.clone());
        watched.push((f.root_path(), kick.clone()));
        workers.push(tokio::spawn(folder_worker(
            shared.clone(),
            f,
            kick,
            cmd_tx.clone(),
            cfg.clone(),
        )));
    }
    st.watch = Some(crate::watch::watch(watched)?);
    st.workers = workers;
    // Dial what we know.
    for (dev, addrs) in shared.store.peer_addrs()? {
        if let Some(p) = peer_id(&dev) {
            let addrs: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
            st.known_addrs.insert(p, addrs);
        }
    }
    for a in &cfg.peers {
        if let Err(e) = st.swarm.dial(a.clone()) {
            warn!("cannot dial {a}: {e}");
        }
    }
    redial(&mut st);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut pull_tick = tokio::time::interval(cfg.pull_every);
    tokio::pin!(shutdown);
    let mut reopen = false;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = shared.reopen.notified() => {
                reopen = true;
                break;
            }
            ev = st.swarm.select_next_some() => on_swarm_event(&mut st, ev),
            Some(cmd) = cmds.recv() => {
                on_cmd(&mut st, cmd);
                // Fetches come in bursts (a file's window, the prefetch): take what else
                // is waiting, so that one request carries many chunks.
                for _ in 0..4 * MAX_BATCH_CHUNKS {
                    let Ok(cmd) = cmds.try_recv() else { break };
                    on_cmd(&mut st, cmd);
                }
                drain_queue(&mut st);
            }
            Some(done) = done_rx.recv() => on_done(&mut st, done),
            _ = tick.tick() => {
                drop_unverified(&mut st);
                redial(&mut st);
                drain_queue(&mut st);
                let relays: Vec<PeerId> = st.relays.keys().copied().collect();
                for r in relays {
                    rendezvous_round(&mut st, r);
                }
                expire_invites(&mut st);
            }
            _ = pull_tick.tick() => {
                let verified: Vec<PeerId> = st.peers.iter().filter(|(_, p)| p.verified || p.is_relay).map(|(id, _)| *id).collect();
                for p in verified { pull_all(&mut st, p); }
            }
        }
    }
    info!("shutting down");
    // Stop the workers; a round in progress finishes its current step (a fetch fails
    // at once now that the swarm is gone) and the store closes when the last of them
    // lets go of it.
    let workers = std::mem::take(&mut st.workers);
    let watcher = st.watch.take();
    for w in &workers {
        w.abort();
    }
    let uploaders: Vec<_> = st
        .relays
        .values_mut()
        .filter_map(|r| r.uploader.take())
        .collect();
    for u in &uploaders {
        u.abort();
    }
    drop(st);
    for u in uploaders {
        let _ = u.await;
    }
    drop(cmds);
    drop(cmd_tx);
    drop(watcher);
    for w in workers {
        let _ = w.await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Arc::strong_count(&shared) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if reopen {
        return Err(NodeError::Store(weft_store::StoreError::DatabaseFailed));
    }
    Ok(())
}

/// Starts using a relay: remembered by address, dialed (and redialed), backed up to
/// once connected.
fn add_relay(st: &mut State, addr: &str) -> Result<PeerId, String> {
    let ma: Multiaddr = addr.parse().map_err(|e| format!("not a multiaddr: {e}"))?;
    let Some(libp2p::multiaddr::Protocol::P2p(peer)) = ma.iter().last() else {
        return Err(
            "the address must end in /p2p/<relay id> (as `weft relay serve` prints it)".into(),
        );
    };
    st.known_addrs.insert(peer, vec![ma.clone()]);
    if let Ok(mut m) = st.shared.relays.lock() {
        m.entry(peer).or_insert_with(|| crate::upload::RelayStatus {
            address: addr.to_string(),
            state: "connecting".into(),
            ..Default::default()
        });
    }
    st.relays.entry(peer).or_insert_with(|| Relay {
        addr: ma.clone(),
        kick: Arc::new(tokio::sync::Notify::new()),
        uploader: None,
        circuit: None,
        registered: None,
    });
    if !st.swarm.is_connected(&peer)
        && let Err(e) = st.swarm.dial(ma)
    {
        debug!(peer = %peer, "dial relay: {e}");
    }
    Ok(peer)
}

/// A relay connected: start (or wake) its uploader and pull what it holds.
fn relay_connected(st: &mut State, peer: PeerId) {
    info!(relay = %peer, "connected to relay");
    if let Ok(mut m) = st.shared.relays.lock()
        && let Some(s) = m.get_mut(&peer)
    {
        s.connected = true;
    }
    let (shared, cmds) = (st.shared.clone(), st.cmd_tx.clone());
    if let Some(r) = st.relays.get_mut(&peer) {
        match &r.uploader {
            Some(u) if !u.is_finished() => r.kick.notify_one(),
            _ => {
                r.uploader = Some(tokio::spawn(crate::upload::uploader(
                    shared,
                    cmds,
                    peer,
                    r.kick.clone(),
                )))
            }
        }
    }
    // The uploader pulls once the relay knows this device (see `upload::pass`).
    rendezvous_round(st, peer);
}

/// The rendezvous namespace of this person's devices: derived from the person's secret
/// key, which only their devices hold, so a device finds its siblings' current
/// addresses while nobody else (the relay, a person they share a folder with, anyone who
/// knows the person id) can look up where this person's devices are.
fn namespace(st: &State) -> Option<rendezvous::Namespace> {
    let seed = store(st).identity().person.to_seed();
    let h = blake3::derive_key("weft rendezvous namespace v2", &seed[..]);
    rendezvous::Namespace::new(format!("weft/{}", hex::encode(&h[..16]))).ok()
}

/// With a connected relay: take a reservation (listen through it, so others can reach
/// this device), register this device's addresses under the person's namespace, and
/// look up the siblings'. Repeated every tick until each step has succeeded (a
/// registration needs an address to register).
fn rendezvous_round(st: &mut State, relay_peer: PeerId) {
    if !st.swarm.is_connected(&relay_peer) {
        return;
    }
    let Some(r) = st.relays.get(&relay_peer) else {
        return;
    };
    let (circuit, registered) = (r.circuit, r.registered);
    let circuit_addr = r.addr.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
    if circuit.is_none() {
        match st.swarm.listen_on(circuit_addr) {
            Ok(id) => {
                if let Some(r) = st.relays.get_mut(&relay_peer) {
                    r.circuit = Some(id);
                }
            }
            Err(e) => debug!(relay = %relay_peer, "cannot listen through the relay: {e}"),
        }
    }
    let Some(ns) = namespace(st) else {
        return;
    };
    if registered.is_none_or(|t| t.elapsed() > REGISTER_EVERY) {
        let r = st
            .swarm
            .behaviour_mut()
            .rendezvous
            .register(ns.clone(), relay_peer, None);
        if let Err(e) = r {
            debug!(relay = %relay_peer, "rendezvous registration: {e}");
        }
    }
    st.swarm
        .behaviour_mut()
        .rendezvous
        .discover(Some(ns), None, None, relay_peer);
}

fn on_rendezvous(st: &mut State, ev: rendezvous::client::Event) {
    use rendezvous::client::Event;
    match ev {
        Event::Registered {
            rendezvous_node, ..
        } => {
            debug!(relay = %rendezvous_node, "registered at the rendezvous point");
            if let Some(r) = st.relays.get_mut(&rendezvous_node) {
                r.registered = Some(Instant::now());
            }
        }
        Event::RegisterFailed {
            rendezvous_node,
            error,
            ..
        } => debug!(relay = %rendezvous_node, "rendezvous registration refused: {error:?}"),
        Event::Discovered { registrations, .. } => {
            let me = *st.swarm.local_peer_id();
            for reg in registrations {
                let peer = reg.record.peer_id();
                let mine =
                    device_id(&peer).is_some_and(|d| store(st).is_my_device(&d).unwrap_or(false));
                if peer == me || !mine || st.swarm.is_connected(&peer) {
                    continue;
                }
                let addrs: Vec<Multiaddr> = reg.record.addresses().to_vec();
                debug!(peer = %peer, "found at the rendezvous point: {addrs:?}");
                st.known_addrs.insert(peer, addrs.clone());
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .build();
                if let Err(e) = st.swarm.dial(opts) {
                    debug!(peer = %peer, "dial: {e}");
                }
            }
        }
        Event::DiscoverFailed {
            rendezvous_node,
            error,
            ..
        } => debug!(relay = %rendezvous_node, "rendezvous lookup failed: {error:?}"),
        Event::Expired { .. } => {}
    }
}

fn on_store(st: &mut State, ev: request_response::Event<StoreRequest, StoreResponse>) {
    use request_response::{Event, Message};
    match ev {
        Event::Message {
            message:
                Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some(tx) = st.store_waiting.remove(&request_id) {
                let _ = tx.send(Ok(response));
            }
        }
        Event::OutboundFailure {
            request_id, error, ..
        } => {
            if let Some(tx) = st.store_waiting.remove(&request_id) {
                let _ = tx.send(Err(error.to_string()));
            }
        }
        _ => {}
    }
}

/// A relay served these entries: it holds them (up to what this device accepted), a
/// mark it must not fall below later.
fn relay_served(st: &State, relay: PeerId, folder: FolderId, entries: &[Vec<u8>]) {
    let mut served: HashMap<DeviceId, u64> = HashMap::new();
    for e in entries {
        if let Ok(e) = weft_store::log::Entry::decode(e) {
            let s = served.entry(e.header.author).or_default();
            *s = (*s).max(e.header.seq);
        }
    }
    let Ok(tips) = store(st).tips(&folder) else {
        return;
    };
    let tips: HashMap<DeviceId, u64> = tips.into_iter().collect();
    let seen: Vec<(DeviceId, u64)> = served
        .into_iter()
        .map(|(a, s)| (a, s.min(tips.get(&a).copied().unwrap_or(0))))
        .filter(|(_, s)| *s > 0)
        .collect();
    if let Err(e) = store(st).raise_relay_marks(&relay.to_string(), &folder, &seen) {
        warn!(relay = %relay, "cannot record what the relay holds: {e}");
    }
}

fn expire_invites(st: &mut State) {
    let now = now_ms();
    st.invites.retain(|_, exp| *exp > now);
}

fn drop_unverified(st: &mut State) {
    // A device joining with a code pairs within seconds of connecting; while a code
    // is outstanding, strangers get a little longer, not forever.
    let grace = if st.invites.is_empty() {
        VERIFY_GRACE
    } else {
        3 * VERIFY_GRACE
    };
    let stale: Vec<PeerId> = st
        .peers
        .iter()
        .filter(|(_, p)| !p.verified && !p.is_relay && p.since.elapsed() > grace)
        .map(|(id, _)| *id)
        .collect();
    for p in stale {
        warn!(peer = %p, "refusing peer: not a device of this person");
        let _ = st.swarm.disconnect_peer_id(p);
    }
}

fn redial(st: &mut State) {
    let targets: Vec<(PeerId, Vec<Multiaddr>)> = st
        .known_addrs
        .iter()
        .filter(|(p, _)| !st.swarm.is_connected(p))
        .map(|(p, a)| (*p, a.clone()))
        .collect();
    for (p, addrs) in targets {
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(p)
            .addresses(addrs)
            .build();
        if let Err(e) = st.swarm.dial(opts) {
            debug!(peer = %p, "dial: {e}");
        }
    }
}

fn my_cert(st: &State) -> Vec<u8> {
    store(st).identity().cert.to_bytes()
}

fn on_swarm_event(st: &mut State, ev: SwarmEvent<BehaviourEvent>) {
    match ev {
        SwarmEvent::NewListenAddr { address, .. } => {
            info!("listening on {address}");
            // What this device registers at rendezvous points: its own listen
            // addresses and its circuits through relays.
            st.swarm.add_external_address(address.clone());
            let relays: Vec<PeerId> = st.relays.keys().copied().collect();
            for r in relays {
                if let Some(rel) = st.relays.get_mut(&r) {
                    rel.registered = None;
                }
                rendezvous_round(st, r);
            }
            st.shared
                .listen_addrs
                .lock()
                .map(|mut v| v.push(address))
                .ok();
        }
        SwarmEvent::ConnectionEstablished {
            peer_id, endpoint, ..
        } => {
            let addr = endpoint.get_remote_address().clone();
            // Through a circuit, dialed or accepted (an accepted one shows the
            // circuit in its local address only).
            let relayed = endpoint.is_relayed();
            let known =
                device_id(&peer_id).is_some_and(|d| store(st).is_my_device(&d).unwrap_or(false));
            let name = device_id(&peer_id)
                .and_then(|d| store(st).device_cert(&d).ok().flatten())
                .map(|c| c.body.name);
            let is_relay = st.relays.contains_key(&peer_id);
            let entry = st.peers.entry(peer_id).or_insert(Peer {
                since: Instant::now(),
                verified: false,
                name,
                addr: Some(addr),
                relayed,
                rtt: None,
                chunk_in_flight: 0,
                is_relay,
                punched: false,
            });
            if !relayed && entry.relayed {
                // A direct connection next to a relayed one (hole punching, or a
                // dial to an address found at the rendezvous): use it.
                entry.relayed = false;
                entry.addr = Some(endpoint.get_remote_address().clone());
            }
            if is_relay {
                relay_connected(st, peer_id);
                return;
            }
            if known && !entry.verified {
                entry.verified = true;
                info!(peer = %peer_id, name = entry.name.as_deref().unwrap_or("?"), "peer connected");
                let cert = my_cert(st);
                st.swarm
                    .behaviour_mut()
                    .sync
                    .send_request(&peer_id, SyncRequest::Hello { cert });
                pull_all(st, peer_id);
                kick_all(st);
            }
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            num_established,
            ..
        } => {
            if num_established == 0
                && let Some(p) = st.peers.remove(&peer_id)
            {
                if p.verified {
                    info!(peer = %peer_id, name = p.name.as_deref().unwrap_or("?"), "peer disconnected");
                }
                if p.is_relay {
                    info!(relay = %peer_id, "disconnected from relay");
                    if let Ok(mut m) = st.shared.relays.lock()
                        && let Some(s) = m.get_mut(&peer_id)
                    {
                        s.connected = false;
                    }
                }
            }
            // Fetches waiting on it are retried elsewhere when their request fails.
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
            for (p, addr) in list {
                let mine =
                    device_id(&p).is_some_and(|d| store(st).is_my_device(&d).unwrap_or(false));
                if mine && !st.swarm.is_connected(&p) {
                    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(p)
                        .addresses(vec![addr])
                        .build();
                    let _ = st.swarm.dial(opts);
                }
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) => {
            let verified = st.peers.get(&peer_id).is_some_and(|p| p.verified);
            if verified && let Some(d) = device_id(&peer_id) {
                let addrs: Vec<String> = info.listen_addrs.iter().map(|a| a.to_string()).collect();
                st.known_addrs.insert(peer_id, info.listen_addrs.clone());
                let _ = store(st).remember_addrs(&d, &addrs);
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
            peer,
            result: Ok(rtt),
            ..
        })) => {
            if let Some(p) = st.peers.get_mut(&peer) {
                p.rtt = Some(rtt);
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Sync(ev)) => on_sync(st, ev),
        SwarmEvent::Behaviour(BehaviourEvent::Chunk(ev)) => on_chunk(st, ev),
        SwarmEvent::Behaviour(BehaviourEvent::Store(ev)) => on_store(st, ev),
        SwarmEvent::Behaviour(BehaviourEvent::Pair(ev)) => on_pair(st, ev),
        SwarmEvent::Behaviour(BehaviourEvent::Rendezvous(ev)) => on_rendezvous(st, ev),
        SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
            remote_peer_id,
            result,
        })) => match result {
            Ok(_) => {
                info!(peer = %remote_peer_id, "hole punched: direct connection");
                if let Some(p) = st.peers.get_mut(&remote_peer_id) {
                    p.punched = true;
                }
            }
            Err(e) => debug!(peer = %remote_peer_id, "hole punching failed: {e}"),
        },
        SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
            relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
        )) => info!(relay = %relay_peer_id, "reachable through the relay"),
        SwarmEvent::ListenerClosed { listener_id, .. } => {
            // A lost reservation is taken again at the next tick.
            for r in st.relays.values_mut() {
                if r.circuit == Some(listener_id) {
                    r.circuit = None;
                }
            }
        }
        _ => {}
    }
}

/// Kicks every folder worker: a peer just proved itself, so transfers that waited for
/// a chunk only it has can go on now.
fn kick_all(st: &State) {
    for k in st.kicks.values() {
        k.kick();
    }
}

fn pull_all(st: &mut State, peer: PeerId) {
    let folders: Vec<FolderId> = st.kicks.keys().copied().collect();
    for f in folders {
        pull(st, peer, f);
    }
}

/// Catches up with `peer` on `folder`: a device is first asked for the folder's
/// membership (entries are judged by it), then for entries; a relay (whose membership
/// the uploader brings) for entries at once.
fn pull(st: &mut State, peer: PeerId, folder: FolderId) {
    if st.peers.get(&peer).is_some_and(|p| p.is_relay) {
        return pull_entries(st, peer, folder);
    }
    let since = match store(st).membership_chain(&folder) {
        Ok(c) => c.len() as u64,
        Err(e) => {
            warn!("cannot read the membership chain: {e}");
            return;
        }
    };
    let id = st
        .swarm
        .behaviour_mut()
        .sync
        .send_request(&peer, SyncRequest::Members { folder, since });
    st.pulls.insert(id, (peer, folder));
}

fn pull_entries(st: &mut State, peer: PeerId, folder: FolderId) {
    let have = match store(st).tips(&folder) {
        Ok(t) => t,
        Err(e) => {
            warn!("cannot read chain tips: {e}");
            return;
        }
    };
    let id = st
        .swarm
        .behaviour_mut()
        .sync
        .send_request(&peer, SyncRequest::Pull { folder, have });
    st.pulls.insert(id, (peer, folder));
}

fn verified(st: &State, peer: &PeerId) -> bool {
    st.peers.get(peer).is_some_and(|p| p.verified)
}

fn on_sync(st: &mut State, ev: request_response::Event<SyncRequest, SyncResponse>) {
    use request_response::{Event, Message};
    match ev {
        Event::Message {
            peer,
            message: Message::Request {
                request, channel, ..
            },
            ..
        } => {
            let resp = handle_sync_request(st, peer, request);
            let _ = st.swarm.behaviour_mut().sync.send_response(channel, resp);
        }
        Event::Message {
            peer,
            message:
                Message::Response {
                    request_id,
                    response,
                },
            ..
        } => match response {
            SyncResponse::Entries {
                entries,
                more,
                certs,
            } => {
                let Some((_, folder)) = st.pulls.remove(&request_id) else {
                    return;
                };
                let me = store(st).identity().person_id();
                // Certificates of this person's devices, or (from a relay) of the
                // devices of other members of shared folders: each verifies against
                // its person's key; whether its entries are accepted is the folder's
                // membership's call.
                let from_relay = st.peers.get(&peer).is_some_and(|p| p.is_relay);
                for c in certs.iter().take(1024) {
                    match DeviceCertificate::from_bytes(c) {
                        Ok(cert) if cert.body.person == me || from_relay => {
                            let _ = store(st).remember_device(&cert);
                        }
                        _ => {
                            warn!(peer = %peer, "ignored a certificate that is not from this person")
                        }
                    }
                }
                let Ok(rec) = store(st).folder(&folder) else {
                    return;
                };
                let entries: Vec<Vec<u8>> = entries.into_iter().map(|b| b.into_vec()).collect();
                match store(st).accept_entries(&rec, &entries) {
                    Ok(acc) => {
                        for r in &acc.rejected {
                            warn!(peer = %peer, "rejected entry: {r}");
                        }
                        if acc.accepted > 0 {
                            debug!(peer = %peer, n = acc.accepted, "accepted entries");
                            if let Some(k) = st.kicks.get(&folder) {
                                k.kick_now();
                            }
                            notify_peers(st, folder, Some(peer));
                        }
                        if more && acc.rejected.is_empty() {
                            pull_entries(st, peer, folder);
                        }
                        if st.peers.get(&peer).is_some_and(|p| p.is_relay) {
                            relay_served(st, peer, folder, &entries);
                        }
                    }
                    Err(e) => warn!(peer = %peer, "cannot store entries: {e}"),
                }
            }
            SyncResponse::Members { entries } => {
                let Some((_, folder)) = st.pulls.remove(&request_id) else {
                    return;
                };
                if !entries.is_empty() {
                    let entries: Vec<Vec<u8>> = entries
                        .into_iter()
                        .take(weft_store::members::MAX_CHAIN_BATCH)
                        .map(|b| b.into_vec())
                        .collect();
                    match store(st).accept_membership(&folder, &entries) {
                        Ok(c) if c.rotated => {
                            info!(folder = %folder, "the folder's key was rotated by its owner")
                        }
                        Ok(_) => {}
                        Err(e) => warn!(peer = %peer, "rejected membership entries: {e}"),
                    }
                }
                pull_entries(st, peer, folder);
            }
            SyncResponse::Hello { cert } => {
                accept_hello(st, peer, &cert);
            }
            SyncResponse::Refused { reason } => {
                st.pulls.remove(&request_id);
                warn!(peer = %peer, "peer refused: {reason}");
            }
            SyncResponse::Ack => {}
        },
        Event::OutboundFailure {
            request_id,
            peer,
            error,
            ..
        } => {
            st.pulls.remove(&request_id);
            debug!(peer = %peer, "sync request failed: {error}");
        }
        Event::InboundFailure { peer, error, .. } => {
            warn!(peer = %peer, "bad sync request: {error}");
        }
        Event::ResponseSent { .. } => {}
    }
}

/// Checks a Hello's certificate: it must be this person's, for this very peer.
fn accept_hello(st: &mut State, peer: PeerId, cert: &[u8]) -> bool {
    let me = store(st).identity().person_id();
    let ok = DeviceCertificate::from_bytes(cert)
        .ok()
        .filter(|c| c.body.person == me && peer_id(&c.body.device) == Some(peer));
    match ok {
        Some(c) => {
            let _ = store(st).remember_device(&c);
            if let Some(p) = st.peers.get_mut(&peer) {
                let newly = !p.verified;
                p.verified = true;
                p.name = Some(c.body.name.clone());
                if newly {
                    info!(peer = %peer, name = %c.body.name, "peer connected");
                    pull_all(st, peer);
                    kick_all(st);
                }
            }
            true
        }
        None => {
            warn!(peer = %peer, "refusing peer: its certificate is not from this person");
            false
        }
    }
}

fn handle_sync_request(st: &mut State, peer: PeerId, req: SyncRequest) -> SyncResponse {
    match req {
        SyncRequest::Hello { cert } => {
            if accept_hello(st, peer, &cert) {
                SyncResponse::Hello { cert: my_cert(st) }
            } else {
                SyncResponse::Refused {
                    reason: "not a device of this person".into(),
                }
            }
        }
        // A relay says it stored new entries of a folder: fetch them.
        SyncRequest::Notify { folder } if st.peers.get(&peer).is_some_and(|p| p.is_relay) => {
            // New entries, or a membership change (an offer, a new key): pull, and
            // let the uploader look at membership.
            if st.kicks.contains_key(&folder) {
                pull(st, peer, folder);
            }
            if let Some(r) = st.relays.get(&peer) {
                r.kick.notify_one();
            }
            SyncResponse::Ack
        }
        _ if !verified(st, &peer) => {
            warn!(peer = %peer, "refused sync request from an unpaired peer");
            SyncResponse::Refused {
                reason: "not paired".into(),
            }
        }
        SyncRequest::Pull { folder, have } => {
            if have.len() > 4096 {
                return SyncResponse::Refused {
                    reason: "too many authors".into(),
                };
            }
            match store(st).entries_since(&folder, &have) {
                Ok((entries, more)) => {
                    let certs = weft_store::log::authors(&entries)
                        .iter()
                        .filter_map(|a| store(st).device_cert(a).ok().flatten())
                        .map(|c| serde_bytes::ByteBuf::from(c.to_bytes()))
                        .collect();
                    SyncResponse::Entries {
                        entries: entries
                            .into_iter()
                            .map(serde_bytes::ByteBuf::from)
                            .collect(),
                        more,
                        certs,
                    }
                }
                Err(e) => SyncResponse::Refused {
                    reason: e.to_string(),
                },
            }
        }
        SyncRequest::Malformed(reason) => {
            warn!(peer = %peer, "refused a sync request: {reason}");
            SyncResponse::Refused { reason }
        }
        SyncRequest::Notify { folder } => {
            if st.kicks.contains_key(&folder) {
                pull(st, peer, folder);
            }
            SyncResponse::Ack
        }
        SyncRequest::Members { folder, since } => match store(st).membership_chain(&folder) {
            Ok(chain) => SyncResponse::Members {
                entries: chain
                    .into_iter()
                    .skip(usize::try_from(since).unwrap_or(usize::MAX))
                    .take(weft_store::members::MAX_CHAIN_BATCH)
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
            },
            Err(e) => SyncResponse::Refused {
                reason: e.to_string(),
            },
        },
    }
}

fn notify_peers(st: &mut State, folder: FolderId, except: Option<PeerId>) {
    let targets: Vec<PeerId> = st
        .peers
        .iter()
        .filter(|(id, p)| p.verified && Some(**id) != except)
        .map(|(id, _)| *id)
        .collect();
    for p in targets {
        st.swarm
            .behaviour_mut()
            .sync
            .send_request(&p, SyncRequest::Notify { folder });
    }
}

fn on_chunk(st: &mut State, ev: request_response::Event<ChunkRequest, ChunkResponse>) {
    use request_response::{Event, Message};
    match ev {
        Event::Message {
            peer,
            message: Message::Request {
                request, channel, ..
            },
            ..
        } => serve_chunks(st, peer, request, channel),
        Event::Message {
            peer,
            message:
                Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some(p) = st.peers.get_mut(&peer) {
                p.chunk_in_flight = p.chunk_in_flight.saturating_sub(1);
            }
            let Some(batch) = st.fetches.remove(&request_id) else {
                return;
            };
            let answers = match response {
                ChunkResponse::Chunks(a) => a,
                ChunkResponse::Refused => Vec::new(),
            };
            if answers.len() > batch.len() {
                warn!(peer = %peer, "a chunk answer held more chunks than asked for");
            }
            let mut answers = answers.into_iter();
            let mut arrived = Vec::new();
            for mut f in batch {
                match answers.next() {
                    Some(ChunkAnswer::Data(ct)) => {
                        st.shared.add_received(ct.len() as u64);
                        arrived.push((f, ct));
                    }
                    Some(ChunkAnswer::Missing) => {
                        f.tried.insert(peer);
                        st.queued_fetches.push_back(f);
                    }
                    // Not answered (the answer was full, or refused): ask again.
                    None => {
                        f.tried.insert(peer);
                        st.queued_fetches.push_back(f);
                    }
                }
            }
            if !arrived.is_empty() {
                open_arrived(st, peer, arrived);
            }
            drain_queue(st);
        }
        Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            if let Some(p) = st.peers.get_mut(&peer) {
                p.chunk_in_flight = p.chunk_in_flight.saturating_sub(1);
            }
            debug!(peer = %peer, "chunk request failed: {error}");
            for mut f in st.fetches.remove(&request_id).unwrap_or_default() {
                f.tried.insert(peer);
                st.queued_fetches.push_back(f);
            }
            drain_queue(st);
        }
        Event::InboundFailure { peer, error, .. } => {
            warn!(peer = %peer, "bad chunk request: {error}")
        }
        Event::ResponseSent { .. } => {}
    }
}

/// Checks (and opens, when the key came with the fetch) chunks that arrived from
/// `peer`, on the blocking pool; a chunk that fails goes back to the swarm task to be
/// asked of another peer.
fn open_arrived(st: &State, peer: PeerId, arrived: Vec<(ChunkFetch, Vec<u8>)>) {
    let done = st.done_tx.clone();
    tokio::task::spawn_blocking(move || {
        for (f, ct) in arrived {
            let checked = match f.open {
                Some((key, len)) => SealedChunk::open_owned(&f.id, &key, len, ct),
                None => f.id.check(&ct).map(|()| ct),
            };
            match checked {
                Ok(bytes) => {
                    let _ = f.reply.send(Some(bytes));
                }
                Err(e) => {
                    let _ = done.send(Done::Rejected {
                        fetch: f,
                        peer,
                        reason: e.to_string(),
                    });
                }
            }
        }
    });
}

fn serve_chunks(
    st: &mut State,
    peer: PeerId,
    req: ChunkRequest,
    channel: ResponseChannel<ChunkResponse>,
) {
    let ids = match req {
        _ if !verified(st, &peer) => {
            warn!(peer = %peer, "refused chunk request from an unpaired peer");
            None
        }
        ChunkRequest::Get { ids } if ids.len() > MAX_BATCH_CHUNKS => {
            warn!(peer = %peer, "refused a chunk request for {} chunks (at most {MAX_BATCH_CHUNKS})", ids.len());
            None
        }
        ChunkRequest::Get { ids } => Some(ids),
        ChunkRequest::Malformed(reason) => {
            warn!(peer = %peer, "refused a chunk request: {reason}");
            None
        }
    };
    let Some(ids) = ids else {
        let _ = st
            .swarm
            .behaviour_mut()
            .chunk
            .send_response(channel, ChunkResponse::Refused);
        return;
    };
    // Reading (and, for chunks served from files, sealing) happens on the blocking
    // pool; the answer comes back through `Done::Served`.
    let shared = st.shared.clone();
    let done = st.done_tx.clone();
    tokio::task::spawn_blocking(move || {
        let answers = match shared.store.chunks(&ids, MAX_BATCH_BYTES) {
            Ok(found) => found
                .into_iter()
                .map(|c| match c {
                    Some(ct) => {
                        shared.add_sent(ct.len() as u64);
                        ChunkAnswer::Data(ct)
                    }
                    None => ChunkAnswer::Missing,
                })
                .collect(),
            Err(e) => {
                warn!("cannot read chunks to serve: {e}");
                ids.iter().map(|_| ChunkAnswer::Missing).collect()
            }
        };
        let _ = done.send(Done::Served {
            channel,
            resp: ChunkResponse::Chunks(answers),
        });
    });
}

fn on_done(st: &mut State, done: Done) {
    match done {
        Done::Served { channel, resp } => {
            let _ = st.swarm.behaviour_mut().chunk.send_response(channel, resp);
        }
        Done::Rejected {
            mut fetch,
            peer,
            reason,
        } => {
            warn!(peer = %peer, chunk = %fetch.id, "rejected chunk: {reason}");
            fetch.tried.insert(peer);
            st.queued_fetches.push_back(fetch);
            drain_queue(st);
        }
    }
}

/// Sends queued fetches in batches, each to the least busy verified peer that has not
/// been tried for it; answers `None` to a fetch every verified peer was tried for.
/// A batch holds at most [`MAX_BATCH_CHUNKS`] chunks of about [`MAX_BATCH_BYTES`]; a
/// peer has at most [`CHUNK_REQUESTS_PER_PEER`] batches in flight.
fn drain_queue(st: &mut State) {
    // Fetches no verified peer is left to try for.
    let verified: Vec<PeerId> = st
        .peers
        .iter()
        .filter(|(_, p)| (p.verified || p.is_relay) && !p.relayed)
        .map(|(id, _)| *id)
        .collect();
    let (hopeless, waiting): (VecDeque<ChunkFetch>, VecDeque<ChunkFetch>) = st
        .queued_fetches
        .drain(..)
        .partition(|f| verified.iter().all(|p| f.tried.contains(p)));
    st.queued_fetches = waiting;
    for f in hopeless {
        let _ = f.reply.send(None);
    }
    loop {
        if st.queued_fetches.is_empty() {
            return;
        }
        let mut peers: Vec<(PeerId, usize)> = st
            .peers
            .iter()
            // Not through a circuit: those are small by design; bulk data then comes
            // through the relay's storage.
            .filter(|(_, p)| {
                (p.verified || p.is_relay)
                    && !p.relayed
                    && p.chunk_in_flight < CHUNK_REQUESTS_PER_PEER
            })
            .map(|(id, p)| (*id, p.chunk_in_flight))
            .collect();
        peers.sort_by_key(|(_, n)| *n);
        let mut sent = false;
        for (peer, _) in peers {
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            let mut rest = VecDeque::with_capacity(st.queued_fetches.len());
            while let Some(f) = st.queued_fetches.pop_front() {
                if batch.len() < MAX_BATCH_CHUNKS
                    && bytes < MAX_BATCH_BYTES
                    && !f.tried.contains(&peer)
                {
                    bytes += f.open.map_or(256 << 10, |(_, len)| len as usize) + 16;
                    batch.push(f);
                } else {
                    rest.push_back(f);
                }
            }
            st.queued_fetches = rest;
            if batch.is_empty() {
                continue;
            }
            if let Some(p) = st.peers.get_mut(&peer) {
                p.chunk_in_flight += 1;
            }
            let ids = batch.iter().map(|f| f.id).collect();
            let id = st
                .swarm
                .behaviour_mut()
                .chunk
                .send_request(&peer, ChunkRequest::Get { ids });
            st.fetches.insert(id, batch);
            sent = true;
            break;
        }
        if !sent {
            return;
        }
    }
}

fn on_pair(st: &mut State, ev: request_response::Event<PairRequest, PairResponse>) {
    use request_response::{Event, Message};
    if let Event::Message {
        peer,
        message: Message::Request {
            request, channel, ..
        },
        ..
    } = ev
    {
        let resp = handle_pair(st, peer, request);
        let _ = st.swarm.behaviour_mut().pair.send_response(channel, resp);
    }
}

fn handle_pair(st: &mut State, peer: PeerId, req: PairRequest) -> PairResponse {
    let (got, name) = match req {
        PairRequest::Join { proof, name } => (proof, name),
        PairRequest::Malformed(reason) => {
            warn!(peer = %peer, "refused a pairing request: {reason}");
            return PairResponse::Refused { reason };
        }
    };
    let refuse = |reason: &str| PairResponse::Refused {
        reason: reason.into(),
    };
    let Some(joiner) = device_id(&peer) else {
        return refuse("unsupported key type");
    };
    let now = now_ms();
    let matched = st
        .invites
        .iter()
        .find(|(secret, exp)| **exp > now && proof(secret, &joiner) == got)
        .map(|(s, _)| *s);
    let Some(secret) = matched else {
        warn!(peer = %peer, "refused pairing: wrong, used or expired code");
        return refuse("wrong, already used or expired pairing code");
    };
    if name.len() > 256 {
        return refuse("device name too long");
    }
    let shared = st.shared.clone();
    let store = &shared.store;
    let id = store.identity();
    let cert = DeviceCertificate::issue(&id.person, joiner, &name, now);
    let folders = match store.folders() {
        Ok(f) => f.iter().map(Into::into).collect(),
        Err(e) => return refuse(&format!("inviter cannot read its folders: {e}")),
    };
    let devices = store
        .devices()
        .unwrap_or_default()
        .iter()
        .map(|c| c.to_bytes())
        .collect();
    if store.remember_device(&cert).is_err() {
        return refuse("inviter cannot record the new device");
    }
    st.invites.remove(&secret);
    if let Some(p) = st.peers.get_mut(&peer) {
        p.verified = true;
        p.name = Some(name.clone());
    }
    info!(peer = %peer, name = %name, "paired a new device");
    PairResponse::Welcome {
        person_seed: *id.person.to_seed(),
        cert: cert.to_bytes(),
        folders,
        devices,
        relays: store.relays().unwrap_or_default(),
    }
}

fn on_cmd(st: &mut State, cmd: Cmd) {
    match cmd {
        Cmd::FetchChunk { id, open, reply } => {
            st.queued_fetches.push_back(ChunkFetch {
                id,
                open,
                tried: HashSet::new(),
                reply,
            });
        }
        Cmd::Notify { folder, except } => {
            notify_peers(st, folder, except);
            // Something new to back up: the relays are behind until their uploader's
            // next pass ends.
            if let Ok(mut m) = st.shared.relays.lock() {
                for r in m.values_mut() {
                    r.state = "uploading".into();
                }
            }
            for r in st.relays.values() {
                r.kick.notify_one();
            }
        }
        Cmd::Pull { peer } => {
            if st.swarm.is_connected(&peer) {
                pull_all(st, peer);
            }
        }
        Cmd::Store { peer, req, reply } => {
            if st.swarm.is_connected(&peer) {
                let id = st.swarm.behaviour_mut().store.send_request(&peer, req);
                st.store_waiting.insert(id, reply);
            } else {
                let _ = reply.send(Err("not connected to the relay".into()));
            }
        }
        Cmd::Control { req, reply } => match req {
            ControlRequest::History { .. } | ControlRequest::Restore { .. } => {
                // Store work (and fetches through this very task) off the swarm task.
                let shared = st.shared.clone();
                let cmds = st.cmd_tx.clone();
                tokio::spawn(async move {
                    let resp =
                        tokio::task::spawn_blocking(move || history_request(&shared, &cmds, req))
                            .await
                            .unwrap_or_else(|e| ControlResponse::Error {
                                message: e.to_string(),
                            });
                    let _ = reply.send(resp);
                });
            }
            ControlRequest::LinkCreate { .. }
            | ControlRequest::LinkList
            | ControlRequest::LinkRevoke { .. } => {
                // Store reads, scrypt and relay requests through this very task: off it.
                let shared = st.shared.clone();
                let cmds = st.cmd_tx.clone();
                tokio::spawn(async move {
                    let resp = tokio::task::spawn_blocking(move || {
                        crate::links::control(&shared, &cmds, req)
                    })
                    .await
                    .unwrap_or_else(|e| ControlResponse::Error {
                        message: e.to_string(),
                    });
                    let _ = reply.send(resp);
                });
            }
            req => {
                let resp = control(st, req);
                let _ = reply.send(resp);
            }
        },
    }
}

/// Starts syncing a folder set up while the node runs (an accepted share).
fn start_folder(st: &mut State, f: weft_store::db::FolderRecord) {
    if st.kicks.contains_key(&f.id) {
        return;
    }
    let kick = FolderKick::new();
    st.kicks.insert(f.id, kick.clone());
    if let Some(w) = st.watch.as_mut() {
        w.add(f.root_path(), kick.clone());
    }
    st.workers.push(tokio::spawn(folder_worker(
        st.shared.clone(),
        f,
        kick,
        st.cmd_tx.clone(),
        st.cfg.clone(),
    )));
}

/// Wakes every relay's uploader (membership to send, or shares to look for).
fn kick_relays(st: &State) {
    for r in st.relays.values() {
        r.kick.notify_one();
    }
}

fn control(st: &mut State, req: ControlRequest) -> ControlResponse {
    match req {
        ControlRequest::Sharing { command } => match crate::sharing::handle(store(st), command) {
            Ok(answer) => {
                if let crate::sharing::SharingAnswer::Accepted { folder, .. } = &answer {
                    match store(st).folder(folder) {
                        Ok(f) => {
                            info!(folder = %f.name, "accepted a shared folder");
                            start_folder(st, f);
                        }
                        Err(e) => warn!("accepted folder not found: {e}"),
                    }
                }
                kick_relays(st);
                ControlResponse::Sharing { answer }
            }
            Err(e) => ControlResponse::Error {
                message: e.to_string(),
            },
        },
        ControlRequest::RelayAdd { addr } => match add_relay(st, &addr) {
            Ok(peer) => match store(st).add_relay(&addr) {
                Ok(new) => ControlResponse::Relay {
                    message: if new {
                        format!("added relay {peer}; backing up to it from now on")
                    } else {
                        format!("relay {peer} was already added")
                    },
                },
                Err(e) => ControlResponse::Error {
                    message: e.to_string(),
                },
            },
            Err(message) => ControlResponse::Error { message },
        },
        ControlRequest::RelayRemove { addr } => match store(st).remove_relay(&addr) {
            Ok(true) => {
                let peer = st
                    .relays
                    .iter()
                    .find(|(_, r)| r.addr.to_string() == addr)
                    .map(|(p, _)| *p);
                if let Some(p) = peer {
                    if let Some(mut r) = st.relays.remove(&p)
                        && let Some(u) = r.uploader.take()
                    {
                        u.abort();
                    }
                    st.known_addrs.remove(&p);
                    if let Ok(mut m) = st.shared.relays.lock() {
                        m.remove(&p);
                    }
                    let _ = st.swarm.disconnect_peer_id(p);
                }
                ControlResponse::Relay {
                    message: format!("removed relay {addr}"),
                }
            }
            Ok(false) => ControlResponse::Error {
                message: format!(
                    "{addr} is not one of this device's relays (see `weft relay list`)"
                ),
            },
            Err(e) => ControlResponse::Error {
                message: e.to_string(),
            },
        },
        ControlRequest::History { .. }
        | ControlRequest::Restore { .. }
        | ControlRequest::LinkCreate { .. }
        | ControlRequest::LinkList
        | ControlRequest::LinkRevoke { .. } => ControlResponse::Error {
            message: "handled elsewhere".into(),
        },
        ControlRequest::Conflicts => {
            let mut copies = Vec::new();
            for f in store(st).folders().unwrap_or_default() {
                for p in crate::apply::conflicts(&st.shared, &f).unwrap_or_default() {
                    let on_disk = f.root_path().join(&p).display().to_string();
                    copies.push((f.name.clone(), p, on_disk));
                }
            }
            ControlResponse::Conflicts { copies }
        }
        ControlRequest::Invite => {
            let secret = weft_crypto::random_bytes::<16>();
            let expires_ms = now_ms() + INVITE_TTL_MS;
            st.invites.insert(secret, expires_ms);
            let addrs: Vec<String> = st
                .shared
                .listen_addrs
                .lock()
                .map(|v| v.iter().map(|a| a.to_string()).collect())
                .unwrap_or_default();
            let inv = Invite {
                version: 1,
                device: store(st).identity().device_id(),
                addrs,
                secret,
                expires_ms,
            };
            ControlResponse::Invite {
                code: inv.encode(),
                expires_ms,
            }
        }
        ControlRequest::Status => {
            let peers = st
                .peers
                .iter()
                .filter(|(_, p)| p.verified)
                .map(|(id, p)| PeerStatus {
                    id: id.to_string(),
                    name: p.name.clone(),
                    address: p.addr.as_ref().map(|a| a.to_string()),
                    connection: if p.relayed {
                        "relayed"
                    } else if p.punched {
                        "hole-punched"
                    } else {
                        "direct"
                    }
                    .into(),
                    latency_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                })
                .collect();
            let folders: Vec<FolderStatus> = st
                .shared
                .status
                .lock()
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            let relays = st
                .shared
                .relays
                .lock()
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            ControlResponse::Status {
                relays,
                device: store(st).identity().device_id().to_string(),
                listen: st
                    .shared
                    .listen_addrs
                    .lock()
                    .map(|v| v.iter().map(|a| a.to_string()).collect())
                    .unwrap_or_default(),
                peers,
                folders,
                bytes_received: st.shared.received(),
                bytes_sent: st.shared.sent(),
                offers: store(st)
                    .offers()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|o| !o.declined)
                    .map(|o| o.name)
                    .collect(),
            }
        }
    }
}

/// `weft history` and `weft restore` against a running node (blocking thread).
fn history_request(
    shared: &Shared,
    cmds: &mpsc::Sender<Cmd>,
    req: ControlRequest,
) -> ControlResponse {
    let err = |e: &dyn std::fmt::Display| ControlResponse::Error {
        message: e.to_string(),
    };
    let store = &shared.store;
    match req {
        ControlRequest::History { path } => {
            let (folder, rel) = match store.locate(std::path::Path::new(&path)) {
                Ok(x) => x,
                Err(e) => return err(&e),
            };
            match store.history(&folder, &rel) {
                Ok(h) => {
                    let items: Vec<_> = h.into_iter().map(|(i, _)| i).collect();
                    ControlResponse::History {
                        items: serde_json::to_value(items).unwrap_or_default(),
                    }
                }
                Err(e) => err(&e),
            }
        }
        ControlRequest::Restore { path, version, to } => {
            let (folder, rel) = match store.locate(std::path::Path::new(&path)) {
                Ok(x) => x,
                Err(e) => return err(&e),
            };
            let fetch = |id: &ChunkId| -> Option<Vec<u8>> {
                let (tx, rx) = oneshot::channel();
                cmds.blocking_send(Cmd::FetchChunk {
                    id: *id,
                    open: None,
                    reply: tx,
                })
                .ok()?;
                rx.blocking_recv().ok().flatten()
            };
            let to = to.map(std::path::PathBuf::from);
            match store.restore_with(&folder, &rel, version, to.as_deref(), &fetch) {
                Ok(r) => ControlResponse::Restored {
                    report: serde_json::to_value(r).unwrap_or_default(),
                },
                Err(e) => err(&e),
            }
        }
        _ => err(&"not a history request"),
    }
}
