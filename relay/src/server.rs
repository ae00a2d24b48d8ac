//! The relay's libp2p server: uploads over `/weft/store/1`, downloads over the same
//! `/weft/sync/1` (Pull) and `/weft/chunk/1` (Get) that devices speak among
//! themselves, circuit relay v2 and rendezvous for NAT traversal, and `/metrics`.
//!
//! Goals: the relay serves only what [`RelayStore`] allows (a device reads only
//! folders its person is a member of, stores only with write rights), every refusal is
//! logged with the peer and counted by reason; storage work runs on the blocking pool
//! so one slow disk write does not stall the swarm; circuits and reservations are
//! small and bounded (hole punching and log exchange, not bulk data: bulk goes through
//! storage on a direct connection).
use crate::storage::{RelayError, RelayStore, StorageConfig};
use libp2p::futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, connection_limits, identify, ping, relay, rendezvous};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};
use weft_crypto::{DeviceId, FolderId, SecretKey};
use weft_node::protocol::*;

/// Errors that stop the relay.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Storage could not be opened.
    #[error(transparent)]
    Storage(#[from] RelayError),
    /// The relay's key file.
    #[error("relay key {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Listening or building the swarm failed.
    #[error("network: {0}")]
    Network(String),
}

/// Settings of `weft relay serve`.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The data directory (database, blobs, the relay's key).
    pub data: PathBuf,
    /// libp2p addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Where `/metrics` and share links are served over HTTP, if anywhere.
    pub http: Option<SocketAddr>,
    /// The public base URL of that HTTP server, as share links show it
    /// (`https://relay.example`); `http://<the bound address>` if not set.
    pub public_url: Option<String>,
    /// Bytes each person may store.
    pub quota_per_person: Option<u64>,
    /// Circuit relay limits.
    pub circuits: CircuitLimits,
    /// Days superseded and deleted versions are kept.
    pub retention_days: u32,
}

/// How long a relay keeps superseded and deleted versions unless told otherwise.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
/// How often a running relay collects garbage.
const GC_EVERY: Duration = Duration::from_secs(6 * 3600);

/// What [`collect_garbage`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Chunks no retained version needs any more, forgotten.
    pub chunks: u64,
    /// Their bytes (no longer charged to anyone).
    pub bytes: u64,
    /// Blob and temporary files removed.
    pub files: u64,
    /// Bytes of those files.
    pub file_bytes: u64,
}

/// Applies the retention policy ([`RelayStore::expire`]) and removes unreferenced
/// files ([`RelayStore::gc`]): what `weft relay gc` and a running relay do.
pub fn collect_garbage(store: &RelayStore, retention_days: u32) -> Result<Collected, RelayError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let (chunks, bytes) = store.expire(now, retention_days)?;
    let (files, file_bytes) = store.gc()?;
    Ok(Collected {
        chunks,
        bytes,
        files,
        file_bytes,
    })
}

/// Limits on what any libp2p peer may use the relay for (reservations and circuits).
#[derive(Clone, Debug)]
pub struct CircuitLimits {
    /// Reservations held at once.
    pub max_reservations: usize,
    /// Circuits open at once.
    pub max_circuits: usize,
    /// Bytes a circuit may carry each way before it is closed.
    pub max_circuit_bytes: u64,
    /// How long a circuit may stay open.
    pub max_circuit_duration: Duration,
}

impl Default for CircuitLimits {
    fn default() -> Self {
        CircuitLimits {
            max_reservations: 128,
            max_circuits: 16,
            // Log exchange and hole punching, not chunks: those go through storage.
            max_circuit_bytes: 1 << 20,
            max_circuit_duration: Duration::from_secs(120),
        }
    }
}

impl ServeConfig {
    /// Defaults for `data`: TCP and QUIC on all interfaces, random ports.
    pub fn new(data: PathBuf) -> ServeConfig {
        ServeConfig {
            data,
            listen: Vec::new(),
            http: None,
            public_url: None,
            quota_per_person: None,
            circuits: CircuitLimits::default(),
            retention_days: DEFAULT_RETENTION_DAYS,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<&'static str, u64>>,
    rejections: Mutex<BTreeMap<&'static str, u64>>,
    reservations: AtomicU64,
    circuits: AtomicU64,
    upload_bytes: AtomicU64,
}

impl Metrics {
    fn request(&self, kind: &'static str) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry(kind).or_default() += 1;
        }
    }

    fn reject(&self, reason: &'static str) {
        if let Ok(mut m) = self.rejections.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// The Prometheus text exposition of these counters and the storage's totals.
    pub fn render(&self, store: &RelayStore) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let stats = store.stats().unwrap_or_default();
        let gauges = [
            (
                "weft_relay_persons",
                "Persons with a registered device.",
                stats.persons,
            ),
            (
                "weft_relay_folders",
                "Folders with something stored.",
                stats.folders,
            ),
            (
                "weft_relay_stored_bytes",
                "Bytes of entries and chunks stored.",
                stats.stored_bytes,
            ),
            ("weft_relay_chunks", "Chunks stored.", stats.chunks),
            ("weft_relay_entries", "Log entries stored.", stats.entries),
            (
                "weft_relay_reservations",
                "Circuit relay reservations held now.",
                self.reservations.load(Ordering::Relaxed),
            ),
            (
                "weft_relay_circuits",
                "Relayed circuits open now.",
                self.circuits.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP weft_relay_upload_bytes_total Chunk bytes received in uploads, stored or not.\n# TYPE weft_relay_upload_bytes_total counter\nweft_relay_upload_bytes_total {}",
            self.upload_bytes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP weft_relay_requests_total Requests served, by kind.\n# TYPE weft_relay_requests_total counter"
        );
        if let Ok(m) = self.requests.lock() {
            for (k, v) in m.iter() {
                let _ = writeln!(out, "weft_relay_requests_total{{kind=\"{k}\"}} {v}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP weft_relay_rejections_total Requests refused, by reason.\n# TYPE weft_relay_rejections_total counter"
        );
        if let Ok(m) = self.rejections.lock() {
            for (k, v) in m.iter() {
                let _ = writeln!(out, "weft_relay_rejections_total{{reason=\"{k}\"}} {v}");
            }
        }
        out
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    relay: relay::Behaviour,
    rendezvous: rendezvous::server::Behaviour,
    sync: request_response::Behaviour<Codec<SyncRequest, SyncResponse>>,
    chunk: request_response::Behaviour<Codec<ChunkRequest, ChunkResponse>>,
    store: request_response::Behaviour<Codec<StoreRequest, StoreResponse>>,
}

/// Answers computed on the blocking pool.
enum Done {
    Sync(ResponseChannel<SyncResponse>, SyncResponse),
    Chunk(ResponseChannel<ChunkResponse>, ChunkResponse),
    Store(ResponseChannel<StoreResponse>, StoreResponse),
    /// New entries were stored in a folder: tell the other readers' devices.
    Stored(FolderId, PeerId),
}

struct State {
    swarm: Swarm<Behaviour>,
    store: Arc<RelayStore>,
    metrics: Arc<Metrics>,
    done_tx: mpsc::UnboundedSender<Done>,
    connected: HashMap<PeerId, usize>,
    retention_days: u32,
    /// The public HTTP base URL, if the relay serves HTTP (share links need it).
    public_url: Option<String>,
}

/// The relay's own key: `relay.key` in the data directory (created on first start,
/// mode 0600).
fn relay_key(data: &std::path::Path) -> Result<SecretKey, ServeError> {
    let path = data.join("relay.key");
    let err = |reason: String| ServeError::Key {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(&path) {
        Ok(b) => {
            let seed: [u8; 32] = b
                .as_slice()
                .try_into()
                .map_err(|_| err(format!("{} bytes, expected 32", b.len())))?;
            Ok(SecretKey::from_seed(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate();
            weft_store::home::write_private(&path, key.to_seed().as_slice())
                .map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// The relay's peer id, creating its key if needed.
pub fn relay_id(data: &std::path::Path) -> Result<PeerId, ServeError> {
    std::fs::create_dir_all(data).map_err(|e| ServeError::Key {
        path: data.display().to_string(),
        reason: e.to_string(),
    })?;
    let key = relay_key(data)?;
    weft_node::node::peer_id_of(&DeviceId(key.public())).ok_or_else(|| ServeError::Key {
        path: data.display().to_string(),
        reason: "not an ed25519 identity".into(),
    })
}

/// Runs the relay until `shutdown` resolves. `ready` receives the full addresses it
/// listens on (with `/p2p/<id>`) once they are known.
pub async fn serve(
    cfg: ServeConfig,
    ready: impl FnOnce(Vec<Multiaddr>) + Send,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    std::fs::create_dir_all(&cfg.data).map_err(|e| ServeError::Key {
        path: cfg.data.display().to_string(),
        reason: e.to_string(),
    })?;
    let key = relay_key(&cfg.data)?;
    let store = Arc::new(RelayStore::open(
        &cfg.data,
        StorageConfig {
            quota_per_person: cfg.quota_per_person,
        },
    )?);
    let metrics = Arc::new(Metrics::default());
    let limits = cfg.circuits.clone();
    let rr = |support, streams| Use {
        support,
        streams,
        timeout: Duration::from_secs(60),
    };
    let mut swarm = weft_node::node::swarm_with(&key, Duration::from_secs(120), |k| {
        let local = k.public().to_peer_id();
        Behaviour {
            limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established_per_peer(Some(4))
                    .with_max_established_incoming(Some(1024))
                    .with_max_pending_incoming(Some(64)),
            ),
            identify: identify::Behaviour::new(identify::Config::new(
                "/weft-relay/1".into(),
                k.public(),
            )),
            ping: ping::Behaviour::new(ping::Config::new()),
            relay: relay::Behaviour::new(
                local,
                relay::Config {
                    max_reservations: limits.max_reservations,
                    max_reservations_per_peer: 2,
                    max_circuits: limits.max_circuits,
                    max_circuits_per_peer: 4,
                    max_circuit_bytes: limits.max_circuit_bytes,
                    max_circuit_duration: limits.max_circuit_duration,
                    ..relay::Config::default()
                },
            ),
            // Any peer may register and look up, within limits: a few namespaces
            // each, a bounded total, registrations that expire within hours.
            rendezvous: rendezvous::server::Behaviour::new(
                rendezvous::server::Config::default()
                    .with_max_registration_per_peer(4)
                    .with_max_registration_total(100_000)
                    .with_max_ttl(4 * 3600),
            ),
            sync: sync_behaviour(rr(ProtocolSupport::Full, 32)),
            chunk: chunk_behaviour(rr(ProtocolSupport::Inbound, 16)),
            store: store_behaviour(rr(ProtocolSupport::Inbound, 8)),
        }
    })
    .map_err(|e| ServeError::Network(e.to_string()))?;
    let listen = if cfg.listen.is_empty() {
        vec![
            "/ip4/0.0.0.0/tcp/0"
                .parse()
                .map_err(|e| ServeError::Network(format!("{e}")))?,
            "/ip4/0.0.0.0/udp/0/quic-v1"
                .parse()
                .map_err(|e| ServeError::Network(format!("{e}")))?,
        ]
    } else {
        cfg.listen.clone()
    };
    for a in &listen {
        swarm
            .listen_on(a.clone())
            .map_err(|e| ServeError::Network(format!("cannot listen on {a}: {e}")))?;
    }
    let mut public_url = None;
    if let Some(addr) = cfg.http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::Network(format!("cannot listen on http://{addr}: {e}")))?;
        let bound = listener.local_addr().unwrap_or(addr);
        let url = cfg
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{bound}"));
        info!("metrics on http://{bound}/metrics, share links at {url}/s/…");
        public_url = Some(url.trim_end_matches('/').to_string());
        let app = crate::web::router(store.clone(), metrics.clone(), &cfg.data);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!("http server stopped: {e}");
            }
        });
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut st = State {
        swarm,
        store,
        metrics,
        done_tx,
        connected: HashMap::new(),
        retention_days: cfg.retention_days,
        public_url,
    };
    // Retention: forget what no retained version needs any more, then remove the
    // blobs nothing references; now and every few hours.
    {
        let (store, days) = (st.store.clone(), cfg.retention_days);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(GC_EVERY);
            loop {
                every.tick().await;
                let store = store.clone();
                let r = tokio::task::spawn_blocking(move || collect_garbage(&store, days)).await;
                match r {
                    Ok(Ok(g)) if g.chunks > 0 || g.files > 0 => info!(
                        "retention: forgot {} chunks ({} bytes), removed {} files",
                        g.chunks, g.bytes, g.files
                    ),
                    Ok(Err(e)) => warn!("retention: {e}"),
                    _ => {}
                }
            }
        });
    }
    // Wait for the listen addresses, then announce them.
    let local = *st.swarm.local_peer_id();
    let mut ready = Some(ready);
    let mut addrs: Vec<Multiaddr> = Vec::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            ev = st.swarm.select_next_some() => {
                if let SwarmEvent::NewListenAddr { address, .. } = &ev {
                    st.swarm.add_external_address(address.clone());
                    addrs.push(address.clone().with_p2p(local).unwrap_or_else(|a| a));
                    if addrs.len() >= listen.len() && let Some(r) = ready.take() {
                        r(addrs.clone());
                    }
                }
                on_event(&mut st, ev);
            }
            Some(done) = done_rx.recv() => on_done(&mut st, done),
        }
    }
    info!("relay shutting down");
    Ok(())
}

fn on_event(st: &mut State, ev: SwarmEvent<BehaviourEvent>) {
    match ev {
        SwarmEvent::ConnectionEstablished { peer_id, .. } => {
            *st.connected.entry(peer_id).or_default() += 1;
        }
        SwarmEvent::ConnectionClosed { peer_id, .. } => {
            if let Some(n) = st.connected.get_mut(&peer_id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.connected.remove(&peer_id);
                }
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Relay(ev)) => on_relay(st, ev),
        SwarmEvent::Behaviour(BehaviourEvent::Rendezvous(
            rendezvous::server::Event::PeerNotRegistered { peer, error, .. },
        )) => {
            st.metrics.reject("registration_denied");
            warn!(peer = %peer, "rendezvous registration refused: {error:?}");
        }
        SwarmEvent::Behaviour(BehaviourEvent::Store(request_response::Event::Message {
            peer,
            message:
                request_response::Message::Request {
                    request, channel, ..
                },
            ..
        })) => on_store(st, peer, request, channel),
        SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
            peer,
            message:
                request_response::Message::Request {
                    request, channel, ..
                },
            ..
        })) => on_sync(st, peer, request, channel),
        SwarmEvent::Behaviour(BehaviourEvent::Chunk(request_response::Event::Message {
            peer,
            message:
                request_response::Message::Request {
                    request, channel, ..
                },
            ..
        })) => on_chunk(st, peer, request, channel),
        SwarmEvent::Behaviour(BehaviourEvent::Store(request_response::Event::InboundFailure {
            peer,
            error,
            ..
        }))
        | SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::InboundFailure {
            peer,
            error,
            ..
        }))
        | SwarmEvent::Behaviour(BehaviourEvent::Chunk(request_response::Event::InboundFailure {
            peer,
            error,
            ..
        })) => {
            st.metrics.reject("stream_failed");
            warn!(peer = %peer, "request failed: {error}");
        }
        _ => {}
    }
}

#[allow(deprecated)]
fn on_relay(st: &mut State, ev: relay::Event) {
    let m = &st.metrics;
    match ev {
        relay::Event::ReservationReqAccepted {
            src_peer_id,
            renewed,
        } => {
            if !renewed {
                m.reservations.fetch_add(1, Ordering::Relaxed);
            }
            info!(peer = %src_peer_id, "reservation accepted");
        }
        relay::Event::ReservationClosed { .. } | relay::Event::ReservationTimedOut { .. } => {
            let _ = m
                .reservations
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        relay::Event::ReservationReqDenied { src_peer_id, .. } => {
            m.reject("reservation_denied");
            warn!(peer = %src_peer_id, "reservation refused (limits)");
        }
        relay::Event::CircuitReqAccepted {
            src_peer_id,
            dst_peer_id,
        } => {
            m.circuits.fetch_add(1, Ordering::Relaxed);
            info!(src = %src_peer_id, dst = %dst_peer_id, "circuit opened");
        }
        relay::Event::CircuitClosed { .. } => {
            let _ = m
                .circuits
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        relay::Event::CircuitReqDenied { src_peer_id, .. } => {
            m.reject("circuit_denied");
            warn!(peer = %src_peer_id, "circuit refused (limits)");
        }
        _ => {}
    }
}

fn device(peer: &PeerId) -> Option<DeviceId> {
    weft_node::node::device_of(peer)
}

/// Logs and counts a refusal, and turns it into the answer's reason.
fn refuse(metrics: &Metrics, peer: &PeerId, e: &RelayError) -> String {
    metrics.reject(e.reason());
    warn!(peer = %peer, "refused: {e}");
    e.to_string()
}

fn on_store(
    st: &mut State,
    peer: PeerId,
    req: StoreRequest,
    channel: ResponseChannel<StoreResponse>,
) {
    let (store, metrics, done) = (st.store.clone(), st.metrics.clone(), st.done_tx.clone());
    let retention = st.retention_days;
    let public_url = st.public_url.clone();
    tokio::task::spawn_blocking(move || {
        let (resp, stored) = store_request(
            &store,
            &metrics,
            retention,
            public_url.as_deref(),
            peer,
            req,
        );
        if let Some(folder) = stored {
            let _ = done.send(Done::Stored(folder, peer));
        }
        let _ = done.send(Done::Store(channel, resp));
    });
}

/// Runs `f` for the registered person of `dev` (refused for an unknown device).
fn of_person<T>(
    store: &RelayStore,
    dev: &DeviceId,
    f: impl FnOnce(&weft_crypto::PersonId) -> Result<T, RelayError>,
) -> Result<T, RelayError> {
    match store.person_of(dev)? {
        Some(p) => f(&p),
        None => Err(RelayError::UnknownDevice(dev.to_string())),
    }
}

/// Handles one `/weft/store/1` request; also returns the folder when new entries were
/// stored in it.
fn store_request(
    store: &RelayStore,
    metrics: &Metrics,
    retention_days: u32,
    public_url: Option<&str>,
    peer: PeerId,
    req: StoreRequest,
) -> (StoreResponse, Option<FolderId>) {
    let Some(dev) = device(&peer) else {
        metrics.reject("not_a_device");
        return (
            StoreResponse::Refused {
                reason: "not an ed25519 device identity".into(),
            },
            None,
        );
    };
    let refused = |e: RelayError| StoreResponse::Refused {
        reason: refuse(metrics, &peer, &e),
    };
    let registered = || -> Result<(), RelayError> {
        match store.person_of(&dev)? {
            Some(_) => Ok(()),
            None => Err(RelayError::UnknownDevice(dev.to_string())),
        }
    };
    match req {
        StoreRequest::Register { cert } => {
            metrics.request("register");
            match weft_crypto::DeviceCertificate::from_bytes(&cert) {
                Ok(c) if c.body.device != dev => (
                    refused(RelayError::BadCertificate(
                        "the certificate is for another device".into(),
                    )),
                    None,
                ),
                Ok(_) => match store.register(&cert) {
                    Ok(person) => {
                        info!(peer = %peer, person = %person, "device registered");
                        (StoreResponse::Registered { retention_days }, None)
                    }
                    Err(e) => (refused(e), None),
                },
                Err(e) => (refused(RelayError::BadCertificate(e.to_string())), None),
            }
        }
        StoreRequest::Tips { folder } => {
            metrics.request("tips");
            let r = registered().and_then(|()| {
                if store.may_read(&dev, &folder)? {
                    store.tips(&folder)
                } else {
                    Ok(Vec::new())
                }
            });
            match r {
                Ok(tips) => (StoreResponse::Tips { tips }, None),
                Err(e) => (refused(e), None),
            }
        }
        StoreRequest::PutEntries {
            folder,
            entries,
            certs,
        } => {
            metrics.request("put_entries");
            let r = registered().and_then(|()| {
                // Certificates of the entries' authors travel with them: a device of
                // the uploader's person that never talked to this relay is still
                // that person's (the person key signed it).
                let me = store.person_of(&dev)?;
                for c in &certs {
                    if let Ok(cert) = weft_crypto::DeviceCertificate::from_bytes(c)
                        && Some(cert.body.person) == me
                    {
                        store.register(c)?;
                    }
                }
                let entries: Vec<Vec<u8>> = entries.into_iter().map(|b| b.into_vec()).collect();
                store.put_entries(&dev, &folder, &entries)
            });
            match r {
                Ok(p) => (
                    StoreResponse::Stored {
                        count: p.stored as u64,
                    },
                    (p.stored > 0).then_some(folder),
                ),
                Err(e) => (refused(e), None),
            }
        }
        StoreRequest::Missing { folder, ids } => {
            metrics.request("missing");
            if ids.len() > MAX_STORE_IDS {
                return (
                    refused(RelayError::TooLarge(format!(
                        "{} ids (at most {MAX_STORE_IDS})",
                        ids.len()
                    ))),
                    None,
                );
            }
            // Only a member learns what a folder holds; to anyone else (and for a
            // folder not claimed yet) everything is missing.
            let r = registered().and_then(|()| {
                if store.may_read(&dev, &folder)? {
                    store.missing_chunks(&folder, &ids)
                } else {
                    let mut ids = ids;
                    ids.sort();
                    ids.dedup();
                    Ok(ids)
                }
            });
            let room = store
                .person_of(&dev)
                .ok()
                .flatten()
                .and_then(|p| store.room(&p).ok().flatten());
            match r {
                Ok(ids) => (StoreResponse::Missing { ids, room }, None),
                Err(e) => (refused(e), None),
            }
        }
        StoreRequest::PutChunks { folder, chunks } => {
            metrics.request("put_chunks");
            let bytes: usize = chunks.iter().map(|(_, b)| b.len()).sum();
            metrics
                .upload_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
            let chunks: Vec<_> = chunks
                .into_iter()
                .map(|(id, b)| (id, b.into_vec()))
                .collect();
            match registered().and_then(|()| store.put_chunks(&dev, &folder, &chunks)) {
                Ok(n) => (StoreResponse::Stored { count: n as u64 }, None),
                Err(e) => (refused(e), None),
            }
        }
        StoreRequest::PutKey { folder, envelope } => {
            metrics.request("put_key");
            match registered().and_then(|()| store.put_key(&dev, &folder, &envelope)) {
                Ok(()) => (StoreResponse::KeyStored, None),
                Err(e) => (refused(e), None),
            }
        }
        StoreRequest::Live { folder, ids } => {
            metrics.request("live");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            match registered().and_then(|()| store.report_live(&dev, &folder, &ids, now)) {
                Ok(n) => (StoreResponse::Stored { count: n as u64 }, None),
                Err(e) => (refused(e), None),
            }
        }
        StoreRequest::Keys => {
            metrics.request("keys");
            let r = of_person(store, &dev, |p| store.keys_of(p));
            match r {
                Ok(keys) => (
                    StoreResponse::Keys {
                        keys: keys
                            .into_iter()
                            .map(|(f, e)| (f, serde_bytes::ByteBuf::from(e)))
                            .collect(),
                    },
                    None,
                ),
                Err(e) => (refused(e), None),
            }
        }
        StoreRequest::PutMembership { folder, entries } => {
            metrics.request("put_membership");
            let entries: Vec<Vec<u8>> = entries.into_iter().map(|b| b.into_vec()).collect();
            match registered().and_then(|()| store.put_membership(&dev, &folder, &entries)) {
                Ok(n) => (
                    StoreResponse::Stored { count: n as u64 },
                    (n > 0).then_some(folder),
                ),
                Err(e) => (refused(e), None),
            }
        }
        StoreRequest::Membership { folder, since } => {
            metrics.request("membership");
            match registered().and_then(|()| store.membership_since(&dev, &folder, since)) {
                Ok(entries) => (
                    StoreResponse::Membership {
                        entries: entries
                            .into_iter()
                            .map(serde_bytes::ByteBuf::from)
                            .collect(),
                    },
                    None,
                ),
                Err(e) => (refused(e), None),
            }
        }
        StoreRequest::Shared => {
            metrics.request("shared");
            let r = of_person(store, &dev, |p| store.shared_with(p));
            match r {
                Ok(folders) => (StoreResponse::Shared { folders }, None),
                Err(e) => (refused(e), None),
            }
        }
        StoreRequest::CreateLink {
            token,
            folder,
            record,
            chunks,
            access_hash,
            expires_ms,
            max_downloads,
        } => {
            metrics.request("create_link");
            let Some(base_url) = public_url else {
                metrics.reject("no_http");
                return (
                    StoreResponse::Refused {
                        reason: "this relay serves no HTTP, so it cannot serve share links \
                                 (its operator can start it with --http)"
                            .into(),
                    },
                    None,
                );
            };
            let link = crate::links::NewLink {
                token,
                folder,
                record,
                chunks,
                access_hash,
                expires_ms,
                max_downloads,
            };
            match registered().and_then(|()| store.create_link(&dev, link)) {
                Ok(()) => {
                    info!(peer = %peer, "share link created");
                    (
                        StoreResponse::LinkCreated {
                            base_url: base_url.to_string(),
                        },
                        None,
                    )
                }
                Err(e) => (refused(e), None),
            }
        }
        StoreRequest::RevokeLink { token } => {
            metrics.request("revoke_link");
            match registered().and_then(|()| store.revoke_link(&dev, &token)) {
                Ok(()) => (StoreResponse::LinkRevoked, None),
                Err(e) => (refused(e), None),
            }
        }
        StoreRequest::Malformed(reason) => {
            metrics.reject("malformed");
            warn!(peer = %peer, "refused a store request: {reason}");
            (StoreResponse::Refused { reason }, None)
        }
    }
}

fn on_sync(st: &mut State, peer: PeerId, req: SyncRequest, channel: ResponseChannel<SyncResponse>) {
    let (store, metrics, done) = (st.store.clone(), st.metrics.clone(), st.done_tx.clone());
    tokio::task::spawn_blocking(move || {
        let resp = sync_request(&store, &metrics, peer, req);
        let _ = done.send(Done::Sync(channel, resp));
    });
}

/// Serves Pull (a member's device catching up) and acknowledges Notify; Hello is for
/// devices, not relays.
fn sync_request(
    store: &RelayStore,
    metrics: &Metrics,
    peer: PeerId,
    req: SyncRequest,
) -> SyncResponse {
    let refused = |e: RelayError| SyncResponse::Refused {
        reason: refuse(metrics, &peer, &e),
    };
    let Some(dev) = device(&peer) else {
        return refused(RelayError::UnknownDevice(peer.to_string()));
    };
    match req {
        SyncRequest::Pull { folder, have } => {
            metrics.request("pull");
            let r = (|| {
                if !store.may_read(&dev, &folder)? && !store.claimed(&folder)? {
                    // Nothing stored yet: nothing to give (not a refusal).
                    return Ok(SyncResponse::Entries {
                        entries: Vec::new(),
                        more: false,
                        certs: Vec::new(),
                    });
                }
                if !store.may_read(&dev, &folder)? {
                    return Err(RelayError::NotAllowed {
                        folder: folder.to_string(),
                        why: "this device's person is not a member".into(),
                    });
                }
                let (entries, more) = store.entries_since(&folder, &have, 4 << 20)?;
                let mut certs = Vec::new();
                for a in weft_store::log::authors(&entries) {
                    if let Some(c) = store.device_cert(&a)? {
                        certs.push(serde_bytes::ByteBuf::from(c));
                    }
                }
                Ok(SyncResponse::Entries {
                    entries: entries
                        .into_iter()
                        .map(serde_bytes::ByteBuf::from)
                        .collect(),
                    more,
                    certs,
                })
            })();
            r.unwrap_or_else(refused)
        }
        SyncRequest::Notify { .. } => SyncResponse::Ack,
        SyncRequest::Members { folder, since } => {
            metrics.request("members");
            match store.membership_since(&dev, &folder, since) {
                Ok(entries) => SyncResponse::Members {
                    entries: entries
                        .into_iter()
                        .map(serde_bytes::ByteBuf::from)
                        .collect(),
                },
                Err(e) => refused(e),
            }
        }
        SyncRequest::Hello { .. } => SyncResponse::Refused {
            reason: "this is a relay, not a device".into(),
        },
        SyncRequest::Malformed(reason) => {
            metrics.reject("malformed");
            warn!(peer = %peer, "refused a sync request: {reason}");
            SyncResponse::Refused { reason }
        }
    }
}

fn on_chunk(
    st: &mut State,
    peer: PeerId,
    req: ChunkRequest,
    channel: ResponseChannel<ChunkResponse>,
) {
    let (store, metrics, done) = (st.store.clone(), st.metrics.clone(), st.done_tx.clone());
    tokio::task::spawn_blocking(move || {
        metrics.request("chunks");
        let resp = match (req, device(&peer)) {
            (ChunkRequest::Get { ids }, Some(dev)) if ids.len() <= MAX_BATCH_CHUNKS => {
                let mut answers = Vec::with_capacity(ids.len());
                let mut bytes = 0usize;
                for id in ids {
                    if bytes >= MAX_BATCH_BYTES {
                        break;
                    }
                    match store.chunk(&dev, &id) {
                        Ok(Some(ct)) => {
                            bytes += ct.len();
                            answers.push(ChunkAnswer::Data(ct));
                        }
                        _ => answers.push(ChunkAnswer::Missing),
                    }
                }
                ChunkResponse::Chunks(answers)
            }
            (ChunkRequest::Malformed(reason), _) => {
                metrics.reject("malformed");
                warn!(peer = %peer, "refused a chunk request: {reason}");
                ChunkResponse::Refused
            }
            _ => {
                metrics.reject("too_large");
                ChunkResponse::Refused
            }
        };
        let _ = done.send(Done::Chunk(channel, resp));
    });
}

fn on_done(st: &mut State, done: Done) {
    let b = st.swarm.behaviour_mut();
    match done {
        Done::Sync(ch, r) => {
            let _ = b.sync.send_response(ch, r);
        }
        Done::Chunk(ch, r) => {
            let _ = b.chunk.send_response(ch, r);
        }
        Done::Store(ch, r) => {
            let _ = b.store.send_response(ch, r);
        }
        Done::Stored(folder, from) => {
            // Connected devices that may read the folder pull what is new (and those
            // of removed members learn of their removal).
            let peers: Vec<PeerId> = st
                .connected
                .keys()
                .copied()
                .filter(|p| *p != from)
                .collect();
            for p in peers {
                let readable =
                    device(&p).is_some_and(|d| st.store.listed(&d, &folder).unwrap_or(false));
                if readable {
                    st.swarm
                        .behaviour_mut()
                        .sync
                        .send_request(&p, SyncRequest::Notify { folder });
                }
            }
        }
    }
}
