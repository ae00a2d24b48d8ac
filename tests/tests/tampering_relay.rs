//! A tampering relay (design.md, "What an attacker may try"): a relay that flips bits
//! in stored chunks, swaps two chunks, drops an entry, serves an older log, or
//! substitutes an entry from another folder. Devices detect every case, refuse the bad
//! data, report it (a warning naming the relay), and keep their own files intact; once
//! the relay is honest again they catch up, so a refusal does no lasting damage.
//!
//! The relay here is a harness: a libp2p swarm speaking `/weft/sync/1`,
//! `/weft/chunk/1` and `/weft/store/1` with weft's codec, backed by a real
//! [`RelayStore`] in a temporary directory (so what real devices upload is really
//! verified and stored), which alters what it serves according to a [`Tamper`] mode
//! the test sets. Device A writes and backs up through it while it is honest; device
//! B (paired with A, but never online at the same time) then syncs from it while it
//! tampers.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use weft_tests::*;

use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, ping};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use weft_crypto::{ChunkId, DeviceId, FolderId, SecretKey};
use weft_node::protocol::{
    ChunkAnswer, ChunkRequest, ChunkResponse, Codec, MAX_BATCH_BYTES, MAX_BATCH_CHUNKS,
    MAX_STORE_IDS, StoreRequest, StoreResponse, SyncRequest, SyncResponse, Use, chunk_behaviour,
    store_behaviour, sync_behaviour,
};
use weft_relay::storage::{RelayStore, StorageConfig};
use weft_store::log::Entry;
use weft_store::model::RelPath;

const WAIT: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------------
// Logs (as in hostile.rs: every node's logs, captured process-wide)

fn capture_logs() {
    logs::capture("warn,weft_node=info,weft_store=info");
}

fn log_lines(needles: &[&str]) -> Vec<String> {
    logs::lines(needles)
}

async fn wait_log(needles: &[&str], already: usize, within: Duration) -> String {
    logs::wait(needles, already, within).await
}

// ---------------------------------------------------------------------------------
// The tampering relay

/// Alters membership entries served from `folder`'s chain (after the first `since`).
fn tamper_membership(
    t: &Tamper,
    store: &RelayStore,
    folder: &FolderId,
    since: u64,
    entries: &mut Vec<Vec<u8>>,
) {
    use weft_store::members::{Keyring, Member, Membership, MembershipEntry, Role};
    match t {
        Tamper::SwapMember { from, to } => {
            for raw in entries.iter_mut() {
                let mut e = MembershipEntry::decode(raw).unwrap();
                for m in &mut e.body.members {
                    if m.person == *from {
                        m.person = *to;
                    }
                }
                *raw = e.encode().unwrap();
            }
        }
        Tamper::ForgeRotation { mallory } => {
            // The chain as stored, to forge the entry that would follow it.
            let mut chain = store.membership_chain(folder).unwrap();
            if chain.is_empty() {
                return;
            }
            let first = MembershipEntry::decode(&chain[0]).unwrap();
            let last = MembershipEntry::decode(chain.last().unwrap()).unwrap();
            let state = Membership::from_chain(*folder, first.body.owner, &chain).unwrap();
            let mut members: Vec<Member> = last.body.members.clone();
            members.push(Member {
                person: weft_crypto::PersonId(mallory.public()),
                role: Role::Editor,
            });
            let mut secrets = vec![weft_crypto::FolderSecret::generate()];
            for _ in 0..=state.epoch {
                let next = secrets.last().unwrap().rotate().unwrap();
                secrets.push(next);
            }
            let forged = MembershipEntry::create(
                mallory,
                *folder,
                Some(&state),
                members,
                Default::default(),
                &Keyring {
                    name: "forged".into(),
                    secrets,
                },
                1,
            )
            .unwrap();
            // It claims to come from the owner (Mallory's signature stays).
            let mut forged = MembershipEntry::decode(&forged).unwrap();
            forged.body.owner = first.body.owner;
            chain.push(forged.encode().unwrap());
            *entries = chain.into_iter().skip(since as usize).collect();
        }
        _ => {}
    }
}

/// What the harness alters in what it serves (uploads are always stored honestly).
#[derive(Clone, Debug, Default)]
enum Tamper {
    /// Serves what it stores, as the real relay does.
    #[default]
    Honest,
    /// Flips one bit in the bytes of these chunks.
    FlipBit(HashSet<ChunkId>),
    /// Answers a request for the key chunk with the stored bytes of the value chunk.
    Swap(HashMap<ChunkId, ChunkId>),
    /// Leaves this entry (author, sequence) out of every Pull answer.
    Drop(DeviceId, u64),
    /// Serves the log as it was when the chain tips were these: every Pull is answered
    /// with that whole old log (whatever the puller has), and Tips says the same.
    Older(Vec<(DeviceId, u64)>),
    /// Puts `with` (an entry of another folder) in the place of entry `at` of every
    /// Pull answer that holds it, and adds the `extra` entries (of other folders) to
    /// every Pull answer.
    Substitute {
        at: (DeviceId, u64),
        with: Vec<u8>,
        extra: Vec<Vec<u8>>,
    },
    /// Says in Tips that it holds this author's chain up to this sequence.
    Inflate(DeviceId, u64),
    /// Puts `to` in the place of member `from` in every membership entry it serves
    /// (a relay substituting a person's public key).
    SwapMember {
        from: weft_crypto::PersonId,
        to: weft_crypto::PersonId,
    },
    /// Serves, after the stored membership chain of a folder, one more entry: a key
    /// rotation made and signed by `mallory`, who adds herself as an editor.
    ForgeRotation { mallory: SecretKey },
}

impl Tamper {
    fn honest(&self) -> bool {
        matches!(self, Tamper::Honest)
    }
}

/// What the harness did while tampering.
#[derive(Default, Debug)]
struct Seen {
    /// Pull answers served while tampering.
    tampered_pulls: usize,
    /// Chunks served altered (flipped or swapped).
    tampered_chunks: usize,
    /// The altered bytes served for flipped chunks.
    flipped: Vec<Vec<u8>>,
}

#[derive(NetworkBehaviour)]
struct HarnessBehaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    sync: request_response::Behaviour<Codec<SyncRequest, SyncResponse>>,
    chunk: request_response::Behaviour<Codec<ChunkRequest, ChunkResponse>>,
    store: request_response::Behaviour<Codec<StoreRequest, StoreResponse>>,
}

enum Done {
    Sync(ResponseChannel<SyncResponse>, SyncResponse),
    Chunk(ResponseChannel<ChunkResponse>, ChunkResponse),
    Store(ResponseChannel<StoreResponse>, StoreResponse),
}

/// The shared state the swarm task and the test both use.
#[derive(Clone)]
struct Shared {
    store: Arc<RelayStore>,
    tamper: Arc<Mutex<Tamper>>,
    seen: Arc<Mutex<Seen>>,
}

struct Harness {
    peer_id: PeerId,
    /// The full address (with `/p2p/<id>`), as a device's relay list wants it.
    addr: String,
    shared: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    /// Starts the harness on a random loopback port with its storage under `data`.
    async fn start(data: &Path) -> Harness {
        std::fs::create_dir_all(data).unwrap();
        let store = Arc::new(RelayStore::open(data, StorageConfig::default()).unwrap());
        let key = SecretKey::generate();
        let rr = |support, streams| Use {
            support,
            streams,
            timeout: Duration::from_secs(60),
        };
        let mut swarm =
            weft_node::node::swarm_with(&key, Duration::from_secs(120), |k| HarnessBehaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/weft-relay/1".into(),
                    k.public(),
                )),
                ping: ping::Behaviour::new(ping::Config::new()),
                sync: sync_behaviour(rr(ProtocolSupport::Full, 32)),
                chunk: chunk_behaviour(rr(ProtocolSupport::Inbound, 16)),
                store: store_behaviour(rr(ProtocolSupport::Inbound, 8)),
            })
            .unwrap();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let peer_id = *swarm.local_peer_id();
        let shared = Shared {
            store,
            tamper: Arc::new(Mutex::new(Tamper::Honest)),
            seen: Arc::new(Mutex::new(Seen::default())),
        };
        let (addr_tx, addr_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(swarm, shared.clone(), addr_tx, stop_rx));
        let addr = tokio::time::timeout(Duration::from_secs(20), addr_rx)
            .await
            .expect("the harness listens")
            .unwrap();
        Harness {
            peer_id,
            addr: addr.to_string(),
            shared,
            shutdown: Some(stop_tx),
            task: Some(task),
        }
    }

    /// The relay's peer id as the devices' logs print it.
    fn id(&self) -> String {
        self.peer_id.to_string()
    }

    fn set(&self, t: Tamper) {
        *self.shared.tamper.lock().unwrap() = t;
    }

    fn seen<R>(&self, f: impl FnOnce(&Seen) -> R) -> R {
        f(&self.shared.seen.lock().unwrap())
    }

    fn store(&self) -> &RelayStore {
        &self.shared.store
    }

    /// `author`'s last sequence number stored for `folder` (0 if none).
    fn tip(&self, folder: &FolderId, author: &DeviceId) -> u64 {
        self.store()
            .tips(folder)
            .unwrap()
            .into_iter()
            .find(|(a, _)| a == author)
            .map_or(0, |(_, s)| s)
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

async fn run(
    mut swarm: libp2p::Swarm<HarnessBehaviour>,
    shared: Shared,
    addr_tx: oneshot::Sender<Multiaddr>,
    mut stop: oneshot::Receiver<()>,
) {
    use request_response::{Event, Message};
    let mut addr_tx = Some(addr_tx);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let local = *swarm.local_peer_id();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } => {
                    if let Some(tx) = addr_tx.take() {
                        let _ = tx.send(address.with_p2p(local).unwrap());
                    }
                }
                SwarmEvent::Behaviour(HarnessBehaviourEvent::Sync(Event::Message {
                    peer,
                    message: Message::Request { request, channel, .. },
                    ..
                })) => {
                    let (s, done) = (shared.clone(), done_tx.clone());
                    tokio::task::spawn_blocking(move || {
                        let _ = done.send(Done::Sync(channel, sync_answer(&s, peer, request)));
                    });
                }
                SwarmEvent::Behaviour(HarnessBehaviourEvent::Chunk(Event::Message {
                    peer,
                    message: Message::Request { request, channel, .. },
                    ..
                })) => {
                    let (s, done) = (shared.clone(), done_tx.clone());
                    tokio::task::spawn_blocking(move || {
                        let _ = done.send(Done::Chunk(channel, chunk_answer(&s, peer, request)));
                    });
                }
                SwarmEvent::Behaviour(HarnessBehaviourEvent::Store(Event::Message {
                    peer,
                    message: Message::Request { request, channel, .. },
                    ..
                })) => {
                    let (s, done) = (shared.clone(), done_tx.clone());
                    tokio::task::spawn_blocking(move || {
                        let _ = done.send(Done::Store(channel, store_answer(&s, peer, request)));
                    });
                }
                _ => {}
            },
            Some(d) = done_rx.recv() => {
                let b = swarm.behaviour_mut();
                match d {
                    Done::Sync(ch, r) => { let _ = b.sync.send_response(ch, r); }
                    Done::Chunk(ch, r) => { let _ = b.chunk.send_response(ch, r); }
                    Done::Store(ch, r) => { let _ = b.store.send_response(ch, r); }
                }
            }
        }
    }
}

fn header_of(raw: &[u8]) -> Option<(DeviceId, u64)> {
    Entry::decode(raw)
        .ok()
        .map(|e| (e.header.author, e.header.seq))
}

/// A Pull answer: what the real relay serves (`relay/src/server.rs`), then altered.
fn sync_answer(s: &Shared, peer: PeerId, req: SyncRequest) -> SyncResponse {
    let refused = |reason: String| SyncResponse::Refused { reason };
    let Some(dev) = weft_node::node::device_of(&peer) else {
        return refused("not a device".into());
    };
    let (folder, have) = match req {
        SyncRequest::Pull { folder, have } => (folder, have),
        SyncRequest::Notify { .. } => return SyncResponse::Ack,
        SyncRequest::Members { .. } => {
            return SyncResponse::Members {
                entries: Vec::new(),
            };
        }
        SyncRequest::Hello { .. } => return refused("this is a relay, not a device".into()),
        SyncRequest::Malformed(reason) => return refused(reason),
    };
    let store = &s.store;
    if !store.may_read(&dev, &folder).unwrap_or(false) {
        return refused("this device's person is not a member".into());
    }
    let tamper = s.tamper.lock().unwrap().clone();
    let (mut entries, more) = match &tamper {
        Tamper::Older(tips) => {
            let (all, _) = store.entries_since(&folder, &[], 8 << 20).unwrap();
            let old = all
                .into_iter()
                .filter(|raw| {
                    header_of(raw)
                        .is_some_and(|(a, seq)| tips.iter().any(|(t, max)| *t == a && seq <= *max))
                })
                .collect();
            (old, false)
        }
        _ => store.entries_since(&folder, &have, 4 << 20).unwrap(),
    };
    match &tamper {
        Tamper::Drop(author, seq) => {
            entries.retain(|raw| header_of(raw) != Some((*author, *seq)));
        }
        Tamper::Substitute { at, with, extra } => {
            for raw in &mut entries {
                if header_of(raw) == Some(*at) {
                    raw.clone_from(with);
                }
            }
            entries.extend(extra.iter().cloned());
        }
        _ => {}
    }
    if !tamper.honest() {
        s.seen.lock().unwrap().tampered_pulls += 1;
    }
    let certs = weft_store::log::authors(&entries)
        .iter()
        .filter_map(|a| store.device_cert(a).ok().flatten())
        .map(serde_bytes::ByteBuf::from)
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

/// A chunk answer: the stored ciphertexts, then altered.
fn chunk_answer(s: &Shared, peer: PeerId, req: ChunkRequest) -> ChunkResponse {
    let (Some(dev), ChunkRequest::Get { ids }) = (weft_node::node::device_of(&peer), req) else {
        return ChunkResponse::Refused;
    };
    if ids.len() > MAX_BATCH_CHUNKS {
        return ChunkResponse::Refused;
    }
    let tamper = s.tamper.lock().unwrap().clone();
    let mut answers = Vec::with_capacity(ids.len());
    let mut bytes = 0usize;
    for id in ids {
        if bytes >= MAX_BATCH_BYTES {
            break;
        }
        let source = match &tamper {
            Tamper::Swap(map) => map.get(&id).copied().unwrap_or(id),
            _ => id,
        };
        match s.store.chunk(&dev, &source) {
            Ok(Some(mut ct)) => {
                let mut seen = s.seen.lock().unwrap();
                if source != id {
                    seen.tampered_chunks += 1;
                }
                if let Tamper::FlipBit(set) = &tamper
                    && set.contains(&id)
                {
                    let mid = ct.len() / 2;
                    ct[mid] ^= 0x10;
                    seen.tampered_chunks += 1;
                    seen.flipped.push(ct.clone());
                }
                bytes += ct.len();
                answers.push(ChunkAnswer::Data(ct));
            }
            _ => answers.push(ChunkAnswer::Missing),
        }
    }
    ChunkResponse::Chunks(answers)
}

/// An upload, handled as `relay/src/server.rs` `store_request` does (without metrics);
/// always honest, except that Tips follows an `Older` mode.
fn store_answer(s: &Shared, peer: PeerId, req: StoreRequest) -> StoreResponse {
    let store = &s.store;
    let refused = |e: &dyn std::fmt::Display| StoreResponse::Refused {
        reason: e.to_string(),
    };
    let Some(dev) = weft_node::node::device_of(&peer) else {
        return refused(&"not an ed25519 device identity");
    };
    let registered = || match store.person_of(&dev) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(format!("unknown device {dev}")),
        Err(e) => Err(e.to_string()),
    };
    match req {
        StoreRequest::Register { cert } => {
            match weft_crypto::DeviceCertificate::from_bytes(&cert) {
                Ok(c) if c.body.device != dev => refused(&"the certificate is for another device"),
                Ok(_) => match store.register(&cert) {
                    Ok(_) => StoreResponse::Registered { retention_days: 30 },
                    Err(e) => refused(&e),
                },
                Err(e) => refused(&e),
            }
        }
        StoreRequest::Tips { folder } => {
            if let Err(e) = registered() {
                return refused(&e);
            }
            if !store.may_read(&dev, &folder).unwrap_or(false) {
                return StoreResponse::Tips { tips: Vec::new() };
            }
            let mut tips = store.tips(&folder).unwrap();
            if let Tamper::Older(cap) = &*s.tamper.lock().unwrap() {
                tips = tips
                    .into_iter()
                    .filter_map(|(a, seq)| {
                        cap.iter()
                            .find(|(c, _)| *c == a)
                            .map(|(_, max)| (a, seq.min(*max)))
                    })
                    .collect();
            }
            if let Tamper::Inflate(author, seq) = &*s.tamper.lock().unwrap() {
                tips.retain(|(a, _)| a != author);
                tips.push((*author, *seq));
            }
            StoreResponse::Tips { tips }
        }
        StoreRequest::PutEntries {
            folder,
            entries,
            certs,
        } => {
            let me = match registered() {
                Ok(p) => p,
                Err(e) => return refused(&e),
            };
            for c in &certs {
                if let Ok(cert) = weft_crypto::DeviceCertificate::from_bytes(c)
                    && cert.body.person == me
                    && let Err(e) = store.register(c)
                {
                    return refused(&e);
                }
            }
            let entries: Vec<Vec<u8>> = entries.into_iter().map(|b| b.into_vec()).collect();
            match store.put_entries(&dev, &folder, &entries) {
                Ok(p) => StoreResponse::Stored {
                    count: p.stored as u64,
                },
                Err(e) => refused(&e),
            }
        }
        StoreRequest::Missing { folder, mut ids } => {
            if ids.len() > MAX_STORE_IDS {
                return refused(&"too many ids");
            }
            if let Err(e) = registered() {
                return refused(&e);
            }
            if store.may_read(&dev, &folder).unwrap_or(false) {
                match store.missing_chunks(&folder, &ids) {
                    Ok(ids) => StoreResponse::Missing { ids, room: None },
                    Err(e) => refused(&e),
                }
            } else {
                ids.sort();
                ids.dedup();
                StoreResponse::Missing { ids, room: None }
            }
        }
        StoreRequest::PutChunks { folder, chunks } => {
            if let Err(e) = registered() {
                return refused(&e);
            }
            let chunks: Vec<_> = chunks
                .into_iter()
                .map(|(id, b)| (id, b.into_vec()))
                .collect();
            match store.put_chunks(&dev, &folder, &chunks) {
                Ok(n) => StoreResponse::Stored { count: n as u64 },
                Err(e) => refused(&e),
            }
        }
        StoreRequest::PutKey { folder, envelope } => {
            match registered().and_then(|_| {
                store
                    .put_key(&dev, &folder, &envelope)
                    .map_err(|e| e.to_string())
            }) {
                Ok(()) => StoreResponse::KeyStored,
                Err(e) => refused(&e),
            }
        }
        StoreRequest::Keys => {
            match registered().and_then(|p| store.keys_of(&p).map_err(|e| e.to_string())) {
                Ok(keys) => StoreResponse::Keys {
                    keys: keys
                        .into_iter()
                        .map(|(f, e)| (f, serde_bytes::ByteBuf::from(e)))
                        .collect(),
                },
                Err(e) => refused(&e),
            }
        }
        StoreRequest::Live { folder, ids } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            match registered().and_then(|_| {
                store
                    .report_live(&dev, &folder, &ids, now)
                    .map_err(|e| e.to_string())
            }) {
                Ok(n) => StoreResponse::Stored { count: n as u64 },
                Err(e) => refused(&e),
            }
        }
        StoreRequest::PutMembership { folder, entries } => {
            let entries: Vec<Vec<u8>> = entries.into_iter().map(|b| b.into_vec()).collect();
            match store.put_membership(&dev, &folder, &entries) {
                Ok(n) => StoreResponse::Stored { count: n as u64 },
                Err(e) => refused(&e),
            }
        }
        StoreRequest::Membership { folder, since } => {
            match store.membership_since(&dev, &folder, since) {
                Ok(mut entries) => {
                    let t = s.tamper.lock().unwrap().clone();
                    tamper_membership(&t, store, &folder, since, &mut entries);
                    StoreResponse::Membership {
                        entries: entries
                            .into_iter()
                            .map(serde_bytes::ByteBuf::from)
                            .collect(),
                    }
                }
                Err(e) => refused(&e),
            }
        }
        StoreRequest::Shared => match registered().map(|p| store.shared_with(&p)) {
            Ok(Ok(mut folders)) => {
                if let Tamper::ForgeRotation { .. } = &*s.tamper.lock().unwrap() {
                    for (_, n) in &mut folders {
                        if *n > 0 {
                            *n += 1;
                        }
                    }
                }
                StoreResponse::Shared { folders }
            }
            Ok(Err(e)) => refused(&e),
            Err(e) => refused(&e),
        },
        StoreRequest::CreateLink { .. } | StoreRequest::RevokeLink { .. } => {
            refused(&"this test relay serves no share links")
        }
        StoreRequest::Malformed(reason) => refused(&reason),
    }
}

// ---------------------------------------------------------------------------------
// The scene: A writes through the honest harness, B later syncs from it

/// Deterministic bytes that do not compress or repeat (so they cut into several
/// chunks and share none with another seed's).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes a file in one step (written next to the folder, then renamed into it), so
/// that no scan sees it half-written.
fn put(d: &Device, rel: &str, data: &[u8]) {
    let p = d.path(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let staging =
        d.root
            .parent()
            .unwrap()
            .join(format!(".staging-{}-{}", d.name, rel.replace('/', "_")));
    std::fs::write(&staging, data).unwrap();
    std::fs::rename(&staging, &p).unwrap();
}

const DOC: &str = "doc.bin";
const BIG: &str = "new/big.bin";
const SMALL: &str = "new/small.txt";

struct Scene {
    tmp: tempfile::TempDir,
    harness: Harness,
    a: Device,
    b: Device,
    folder: FolderId,
    a_id: DeviceId,
    b_id: DeviceId,
    /// The relay's chain tips once the first versions were backed up (before A's
    /// later changes).
    tips_before: Vec<(DeviceId, u64)>,
    /// A's last sequence number before its later changes.
    a_tip0: u64,
    /// What B holds after the first phase (A's first versions and B's own file).
    b_before: Snapshot,
    /// What A holds after its later changes.
    after_a: Snapshot,
    doc_v1: Vec<u8>,
    doc_v2: Vec<u8>,
    big: Vec<u8>,
}

/// What A's store says are the chunks of `path`'s current version.
fn chunks_of(d: &Device, folder: &FolderId, path: &str) -> Vec<ChunkId> {
    let store = weft_store::Store::open(&d.home).unwrap();
    let p = RelPath::new(path).unwrap();
    let tree = store.tree(folder).unwrap();
    let v = tree[&p].version;
    store
        .manifest(folder, &p, &v)
        .unwrap()
        .chunks
        .iter()
        .map(|c| c.id)
        .collect()
}

/// Runs `d` until `f` holds of its folder.
async fn until(d: &Device, what: &str, f: impl Fn(&Snapshot) -> bool) {
    eventually(&format!("{}: {what}", d.name), WAIT, || {
        f(&snapshot(&d.root))
    })
    .await;
}

/// A and B paired, both using the harness; never online together after pairing.
///
/// Phase 1: A writes `base.txt` and `doc.bin` (v1) and backs them up; B receives
/// them from the relay and adds a file of its own, `from-b.txt`. Phase 2: A receives
/// B's file, then (one backed-up step each, so one entry each) edits `doc.bin` (v2),
/// adds `new/big.bin`, adds `new/small.txt`. `before_phase2` runs on A while it is
/// stopped, before phase 2; `in_phase2` runs while A is up, before A's changes.
async fn scene(before_phase2: impl FnOnce(&Device), in_phase2: impl FnOnce(&Device)) -> Scene {
    capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let harness = Harness::start(&tmp.path().join("relay")).await;
    let mut a = Device::new(tmp.path(), "a");
    let mut b = Device::new(tmp.path(), "b");
    a.create_folder();
    a.start(&[]);
    b.join(&a.invite()).await;
    a.stop().await;
    a.add_relay(&harness.addr);
    b.add_relay(&harness.addr);
    // New ports: A and B can never reach each other; all goes through the harness.
    a.port = free_port();
    b.port = free_port();
    let folder = weft_store::Store::open(&a.home).unwrap().folders().unwrap()[0].id;
    let a_id = a.home.load_identity().unwrap().device_id();
    let b_id = b.home.load_identity().unwrap().device_id();

    // Phase 1.
    let doc_v1 = noise(1, 600_000);
    a.start(&[]);
    put(&a, "base.txt", b"the base file");
    put(&a, DOC, &doc_v1);
    a.wait_backed_up(0, WAIT).await;
    a.stop().await;
    let after_a1 = snapshot(&a.root);
    b.start(&[]);
    until(&b, "A's first versions", |s| *s == after_a1).await;
    let before = b.uploaded();
    put(&b, "from-b.txt", b"b's own file");
    b.wait_backed_up(before, WAIT).await;
    b.stop().await;
    let b_before = snapshot(&b.root);
    assert_eq!(
        b_before["base.txt"],
        Some((b"the base file".to_vec(), false))
    );
    assert_eq!(b_before[DOC], Some((doc_v1.clone(), false)));

    // Phase 2.
    before_phase2(&a);
    let tips_before = harness.store().tips(&folder).unwrap();
    let a_tip0 = harness.tip(&folder, &a_id);
    assert!(a_tip0 > 0 && harness.tip(&folder, &b_id) > 0);
    a.start(&[]);
    until(&a, "B's file", |s| s.contains_key("from-b.txt")).await;
    in_phase2(&a);
    let doc_v2 = noise(2, 600_000);
    let big = noise(3, 700_000);
    let mut tips = vec![a_tip0];
    for (path, data) in [
        (DOC, doc_v2.as_slice()),
        (BIG, big.as_slice()),
        (SMALL, b"a small new file".as_slice()),
    ] {
        let before = a.uploaded();
        put(&a, path, data);
        a.wait_backed_up(before, WAIT).await;
        tips.push(harness.tip(&folder, &a_id));
    }
    a.stop().await;
    assert_eq!(
        tips[1],
        a_tip0 + 1,
        "A's edit of doc.bin is one entry (tips {tips:?})"
    );
    assert!(tips.windows(2).all(|w| w[0] < w[1]), "tips {tips:?}");
    let after_a = snapshot(&a.root);
    assert_eq!(after_a[DOC], Some((doc_v2.clone(), false)));
    assert_eq!(after_a[BIG], Some((big.clone(), false)));
    assert!(after_a.contains_key("from-b.txt"));
    Scene {
        tmp,
        harness,
        a,
        b,
        folder,
        a_id,
        b_id,
        tips_before,
        a_tip0,
        b_before,
        after_a,
        doc_v1,
        doc_v2,
        big,
    }
}

impl Scene {
    /// B's files from phase 1 are as they were.
    fn assert_b_kept_its_files(&self) {
        let now = snapshot(&self.b.root);
        for p in ["base.txt", "from-b.txt"] {
            assert_eq!(now.get(p), self.b_before.get(p), "{p} on b changed");
        }
    }

    /// The relay turns honest; B (running) catches up with A's tree.
    async fn honest_again_b_converges(&self) {
        self.harness.set(Tamper::Honest);
        let want = &self.after_a;
        until(&self.b, "A's tree once the relay is honest", |s| s == want).await;
    }

    /// B's chain tip of author `who` in its store (B stopped).
    fn b_tip(&self, who: &DeviceId) -> u64 {
        weft_store::Store::open(&self.b.home)
            .unwrap()
            .tips(&self.folder)
            .unwrap()
            .into_iter()
            .find(|(a, _)| a == who)
            .map_or(0, |(_, s)| s)
    }

    async fn finish(mut self) {
        self.b.stop().await;
        self.a.stop().await;
        self.harness.stop().await;
        drop(self.tmp);
    }
}

/// Whether any file under `dir` holds `needle`.
fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            dir_contains(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        }
    })
}

// ---------------------------------------------------------------------------------
// Chunks: a flipped bit, two chunks swapped

/// B syncs from a relay that alters some chunks of A's later versions (the edit of
/// `doc.bin` and the new `big.bin`): each altered chunk is rejected with the relay
/// named, `doc.bin` keeps its previous content, `big.bin` is not written, and what the
/// relay serves intact (`small.txt`) still arrives; once the relay is honest, B has
/// A's tree. `make` gets the chunks of `doc.bin` v2 and of `big.bin` and returns the
/// mode and the chunks it alters.
async fn chunk_case(make: impl FnOnce(&[ChunkId], &[ChunkId]) -> (Tamper, Vec<ChunkId>)) -> Scene {
    let mut s = scene(|_| {}, |_| {}).await;
    let doc = chunks_of(&s.a, &s.folder, DOC);
    let big = chunks_of(&s.a, &s.folder, BIG);
    assert!(doc.len() >= 3 && big.len() >= 3, "{doc:?} {big:?}");
    let (tamper, bad) = make(&doc, &big);
    s.harness.set(tamper);
    let relay = s.harness.id();
    s.b.start(&[]);
    // Each altered chunk is rejected, naming the relay, with the same reason whatever
    // was done to it; and again in a later round.
    for id in &bad {
        let id = id.to_string();
        let needles = [
            relay.as_str(),
            "rejected chunk: chunk bytes do not match chunk id",
            id.as_str(),
        ];
        wait_log(&needles, 0, WAIT).await;
    }
    until(&s.b, "the intact new file", |snap| {
        snap.get(SMALL) == Some(&Some((b"a small new file".to_vec(), false)))
    })
    .await;
    let needles = [relay.as_str(), "rejected chunk: chunk bytes do not match"];
    let n = log_lines(&needles).len();
    wait_log(&needles, n, WAIT).await;
    let now = snapshot(&s.b.root);
    assert_eq!(
        now[DOC],
        Some((s.doc_v1.clone(), false)),
        "b's doc.bin is not its previous version"
    );
    assert!(
        !now.contains_key(BIG),
        "big.bin was written from bad chunks"
    );
    s.assert_b_kept_its_files();
    assert!(s.harness.seen(|x| x.tampered_chunks) >= bad.len());

    s.honest_again_b_converges().await;
    let now = snapshot(&s.b.root);
    assert_eq!(now[DOC], Some((s.doc_v2.clone(), false)));
    assert_eq!(now[BIG], Some((s.big.clone(), false)));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_a_chunk_is_rejected_and_the_previous_version_is_kept() {
    let mut s = chunk_case(|doc, big| {
        let bad = vec![doc[1], big[1]];
        (Tamper::FlipBit(bad.iter().copied().collect()), bad)
    })
    .await;
    s.b.stop().await;
    // The altered bytes never entered B's store or cache.
    let flipped = s.harness.seen(|x| x.flipped.clone());
    assert!(!flipped.is_empty());
    for ct in flipped {
        let mid = ct.len() / 2;
        let window = &ct[mid - 32..mid + 32];
        assert!(
            !dir_contains(s.b.home.root(), window),
            "the flipped bytes are in b's home"
        );
        assert!(
            !dir_contains(&s.b.root, window),
            "the flipped bytes are in b's folder"
        );
    }
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_swapped_chunks_are_rejected_and_the_previous_version_is_kept() {
    let s = chunk_case(|doc, big| {
        // Each is answered with the other's bytes: both are genuine chunks of the
        // folder, stored by the relay, just not the ones asked for.
        let map = HashMap::from([(doc[1], big[0]), (big[0], doc[1])]);
        (Tamper::Swap(map), vec![doc[1], big[0]])
    })
    .await;
    s.finish().await;
}

// ---------------------------------------------------------------------------------
// Entries: one dropped, one from another folder

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_entry_breaks_the_chain_and_nothing_after_it_is_applied() {
    let mut s = scene(|_| {}, |_| {}).await;
    // The relay leaves out A's edit of doc.bin: A's later entries no longer chain.
    let dropped = s.a_tip0 + 1;
    s.harness.set(Tamper::Drop(s.a_id, dropped));
    let relay = s.harness.id();
    let a = s.a_id.to_string();
    let next = format!("{a}#{} rejected: expected sequence {dropped}", dropped + 1);
    s.b.start(&[]);
    let line = wait_log(&[&relay, "rejected entry: log entry", &next], 0, WAIT).await;
    assert!(line.contains("WARN"), "{line}");
    // A later pull gets the same gap, and is refused the same way.
    wait_log(&[&relay, "rejected entry: log entry", &next], 1, WAIT).await;
    let now = snapshot(&s.b.root);
    assert_eq!(now, s.b_before, "b applied something after the gap");
    assert!(s.harness.seen(|x| x.tampered_pulls) >= 2);
    s.b.stop().await;
    assert_eq!(s.b_tip(&s.a_id), s.a_tip0, "b stored entries after the gap");
    let tree = weft_store::Store::open(&s.b.home)
        .unwrap()
        .tree(&s.folder)
        .unwrap();
    for p in [BIG, SMALL] {
        assert!(
            !tree.contains_key(&RelPath::new(p).unwrap()),
            "{p} in b's tree"
        );
    }

    // The refusal stored nothing that blocks the honest log later.
    s.b.start(&[]);
    s.honest_again_b_converges().await;
    s.assert_b_kept_its_files();
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_of_another_folder_is_rejected() {
    // A second folder of the same person (A's), and a folder of another person (C),
    // both stored at the same relay.
    let tmp2 = tempfile::tempdir().unwrap();
    let second = tmp2.path().join("a-second-folder");
    let mut s = scene(
        |a| {
            std::fs::create_dir_all(&second).unwrap();
            let store = weft_store::Store::open(&a.home).unwrap();
            store.add_folder(&second, Some("second")).unwrap();
        },
        |_| std::fs::write(second.join("second-secret.txt"), b"only in the second").unwrap(),
    )
    .await;
    let a_store = weft_store::Store::open(&s.a.home).unwrap();
    let f2 = a_store
        .folders()
        .unwrap()
        .into_iter()
        .find(|f| f.id != s.folder)
        .expect("a's second folder")
        .id;
    drop(a_store);
    let mut c = Device::new(tmp2.path(), "c");
    c.create_folder();
    c.add_relay(&s.harness.addr);
    c.start(&[]);
    put(&c, "c-secret.txt", b"another person's file");
    c.wait_backed_up(0, WAIT).await;
    c.stop().await;
    let fc = weft_store::Store::open(&c.home).unwrap().folders().unwrap()[0].id;
    let c_id = c.home.load_identity().unwrap().device_id();
    let (f2_entries, _) = s.harness.store().entries_since(&f2, &[], 1 << 20).unwrap();
    let (c_entries, _) = s.harness.store().entries_since(&fc, &[], 1 << 20).unwrap();
    assert!(!f2_entries.is_empty() && !c_entries.is_empty());
    let f2_first = f2_entries[0].clone();
    assert_eq!(header_of(&f2_first), Some((s.a_id, 1)));

    // In place of A's entry that adds big.bin: A's own entry of the other folder
    // (right author, valid signature, certified); and C's entry besides.
    let at = (s.a_id, s.a_tip0 + 2);
    s.harness.set(Tamper::Substitute {
        at,
        with: f2_first,
        extra: vec![c_entries[0].clone()],
    });
    let relay = s.harness.id();
    let a = s.a_id.to_string();
    let c_str = c_id.to_string();
    s.b.start(&[]);
    let other = "rejected: entry of another folder";
    wait_log(&[&relay, &format!("{a}#1 {other}")], 0, WAIT).await;
    wait_log(&[&relay, &format!("{c_str}#1 {other}")], 0, WAIT).await;
    // With big.bin's entry gone, A's next one does not chain.
    let next = format!("rejected: expected sequence {}", at.1);
    wait_log(&[&relay, &a, &next], 0, WAIT).await;
    // What came before the substituted entry is applied (doc.bin v2), nothing after.
    until(&s.b, "doc.bin v2", |snap| {
        snap.get(DOC) == Some(&Some((s.doc_v2.clone(), false)))
    })
    .await;
    wait_log(&[&relay, &format!("{c_str}#1 {other}")], 1, WAIT).await;
    let now = snapshot(&s.b.root);
    let mut want = s.b_before.clone();
    want.insert(DOC.into(), Some((s.doc_v2.clone(), false)));
    assert_eq!(now, want);
    s.assert_b_kept_its_files();
    for needle in [&b"only in the second"[..], b"another person's file"] {
        assert!(
            !dir_contains(&s.b.root, needle),
            "another folder's file on b"
        );
    }

    s.honest_again_b_converges().await;
    s.b.stop().await;
    let b_store = weft_store::Store::open(&s.b.home).unwrap();
    let tips = b_store.tips(&s.folder).unwrap();
    assert!(
        tips.iter().all(|(d, _)| *d == s.a_id || *d == s.b_id),
        "another folder's author has a chain here: {tips:?}"
    );
    assert_eq!(b_store.folders().unwrap().len(), 1);
    let tree = b_store.tree(&s.folder).unwrap();
    for p in ["second-secret.txt", "c-secret.txt"] {
        assert!(
            !tree.contains_key(&RelPath::new(p).unwrap()),
            "{p} in b's tree"
        );
    }
    drop(b_store);
    s.finish().await;
}

// ---------------------------------------------------------------------------------
// An older log

/// B has A's latest versions; the relay then serves its log as it was before A's
/// later changes (each Pull gets that whole old log; Tips says the same).
async fn older_log_scene() -> Scene {
    let mut s = scene(|_| {}, |_| {}).await;
    s.b.start(&[]);
    let want = s.after_a.clone();
    until(&s.b, "A's latest versions", |snap| *snap == want).await;
    s.b.stop().await;
    assert!(s.b_tip(&s.a_id) > s.a_tip0);
    s.harness.set(Tamper::Older(s.tips_before.clone()));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_log_changes_nothing() {
    let mut s = older_log_scene().await;
    let tips = weft_store::Store::open(&s.b.home)
        .unwrap()
        .tips(&s.folder)
        .unwrap();
    s.b.start(&[]);
    // Several old logs are served to B (on connect and at each periodic pull), and its
    // uploader sees the old tips; through all of it, B's files stay at the newest.
    let deadline = Instant::now() + WAIT;
    while s.harness.seen(|x| x.tampered_pulls) < 4 {
        assert!(Instant::now() < deadline, "b did not pull the old log");
        assert_eq!(snapshot(&s.b.root), s.after_a, "b regressed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually("b's uploader to finish a pass", WAIT, || {
        s.b.relays().iter().all(|r| r.state == "in sync")
    })
    .await;
    // A round after the last old log.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(snapshot(&s.b.root), s.after_a, "b regressed");
    s.b.stop().await;
    let now = weft_store::Store::open(&s.b.home)
        .unwrap()
        .tips(&s.folder)
        .unwrap();
    assert_eq!(now, tips, "b's chain tips moved");
    // The relay's real store still holds everything (the old log was only served).
    assert!(s.harness.tip(&s.folder, &s.a_id) > s.a_tip0);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_log_is_reported() {
    let mut s = older_log_scene().await;
    let relay = s.harness.id();
    let already = log_lines(&[" WARN ", &relay, "rolled back"]).len();
    s.b.start(&[]);
    wait_log(
        &[" WARN ", &relay, "rolled back"],
        already,
        Duration::from_secs(20),
    )
    .await;
    // `weft status` says so too.
    assert!(
        s.b.relays().iter().any(|r| r
            .rollback
            .as_deref()
            .is_some_and(|m| m.contains("rolled back"))),
        "{:?}",
        s.b.relays()
    );
    assert_eq!(snapshot(&s.b.root), s.after_a, "b regressed");
    s.finish().await;
}

/// The helpers above keep this test file's scenes comparable: a sanity check of the
/// harness itself, honest all along (B receives exactly A's tree, and nothing is
/// reported against the relay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_harness_serves_a_faithful_copy() {
    let mut s = scene(|_| {}, |_| {}).await;
    let relay = s.harness.id();
    s.b.start(&[]);
    let want = s.after_a.clone();
    until(&s.b, "A's tree", |snap| *snap == want).await;
    let warnings: Vec<String> = log_lines(&[" WARN ", &relay])
        .into_iter()
        .filter(|l| l.contains("rejected"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(s.harness.seen(|x| x.tampered_pulls), 0);
    s.b.stop().await;
    s.finish().await;
}

/// A relay claiming to hold more of a device's own chain than the device ever wrote
/// (so that its new changes would never be backed up) is caught by that device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_claiming_entries_a_device_never_wrote_is_reported() {
    let mut s = scene(|_| {}, |_| {}).await;
    let relay = s.harness.id();
    s.harness.set(Tamper::Inflate(s.a_id, s.a_tip0 + 1000));
    let already = log_lines(&[" WARN ", &relay, "never wrote"]).len();
    s.a.start(&[]);
    wait_log(
        &[" WARN ", &relay, "never wrote"],
        already,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        s.a.relays().iter().any(|r| r
            .rollback
            .as_deref()
            .is_some_and(|m| m.contains("never wrote"))),
        "{:?}",
        s.a.relays()
    );
    s.finish().await;
}

// ---------------------------------------------------------------------------------
// Sharing: a relay cannot substitute a member's key or make up a key rotation

fn sharing(
    d: &Device,
    command: weft_node::sharing::SharingRequest,
) -> weft_node::sharing::SharingAnswer {
    use weft_node::control::{ControlRequest, ControlResponse, request};
    match request(&d.home, &ControlRequest::Sharing { command }).unwrap() {
        ControlResponse::Sharing { answer } => answer,
        other => panic!("unexpected {other:?}"),
    }
}

fn members(d: &Device) -> Vec<weft_crypto::PersonId> {
    use weft_node::sharing::{SharingAnswer, SharingRequest};
    match sharing(
        d,
        SharingRequest::Members {
            folder: "shared".into(),
        },
    ) {
        SharingAnswer::Members(m) => m.iter().map(|m| m.person).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cannot_substitute_a_members_key_or_forge_a_key_rotation() {
    use weft_node::sharing::{SharingAnswer, SharingRequest};
    use weft_store::members::Role;
    capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Harness::start(&tmp.path().join("relay")).await;
    let relay = h.id();
    let mut a = Device::new(tmp.path(), "alice");
    a.create_folder();
    a.add_relay(&h.addr);
    let mut b = Device::new(tmp.path(), "bob");
    b.home.init("bob", 0).unwrap();
    b.add_relay(&h.addr);
    a.start(&[]);
    b.start(&[]);
    let bob = b.home.load_identity().unwrap().person_id();
    let alice = a.home.load_identity().unwrap().person_id();
    let carol = weft_crypto::PersonId(SecretKey::generate().public());
    let mallory = SecretKey::generate();
    let mallory_id = weft_crypto::PersonId(mallory.public());
    for (p, n) in [(bob, "bob"), (carol, "carol")] {
        sharing(
            &a,
            SharingRequest::ContactAdd {
                person: p,
                name: n.into(),
            },
        );
    }
    sharing(
        &a,
        SharingRequest::Share {
            folder: "shared".into(),
            with: "bob".into(),
            role: Role::Editor,
        },
    );
    eventually(
        "bob sees the offer",
        WAIT,
        || matches!(sharing(&b, SharingRequest::Shares), SharingAnswer::Shares(o) if !o.is_empty()),
    )
    .await;
    b.root = tmp.path().join("bob-shared");
    sharing(
        &b,
        SharingRequest::Accept {
            share: "shared".into(),
            path: Some(b.root.clone()),
        },
    );
    assert_eq!(members(&b), {
        let mut v = vec![alice, bob];
        v.sort_by_key(|p| p.0.0);
        v
    });

    // The relay swaps Carol's key for Mallory's in the entry that adds Carol.
    h.set(Tamper::SwapMember {
        from: carol,
        to: mallory_id,
    });
    let already = log_lines(&[" WARN ", &relay, "membership"]).len();
    sharing(
        &a,
        SharingRequest::Share {
            folder: "shared".into(),
            with: "carol".into(),
            role: Role::Viewer,
        },
    );
    // (This harness does not notify members of changes as a relay does: a local
    // change makes Bob's node look at the relay now rather than within a minute.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.write("poke-1.txt", b"1");
    let line = wait_log(&[" WARN ", &relay, "membership"], already, WAIT).await;
    assert!(line.contains("signature"), "{line}");
    assert!(!members(&b).contains(&mallory_id));
    assert!(
        !members(&b).contains(&carol),
        "the tampered entry was not taken in"
    );

    // The relay makes up a rotation that adds Mallory, claiming it is Alice's.
    h.set(Tamper::ForgeRotation {
        mallory: mallory.clone(),
    });
    let already = log_lines(&[" WARN ", &relay, "membership"]).len();
    let line = wait_log(&[" WARN ", &relay, "membership"], already, WAIT).await;
    assert!(
        line.contains("signature") || line.contains("owner"),
        "{line}"
    );
    assert!(!members(&b).contains(&mallory_id));

    // Honest again: Bob takes in the real entry (Carol as viewer) and nothing else.
    h.set(Tamper::Honest);
    b.write("poke-3.txt", b"3");
    eventually("bob takes in the real change", WAIT, || {
        members(&b).contains(&carol)
    })
    .await;
    assert!(!members(&b).contains(&mallory_id));
    a.stop().await;
    b.stop().await;
    let store = weft_store::Store::open(&b.home).unwrap();
    let rec = store.find_folder("shared").unwrap();
    assert_eq!(rec.secret.epoch, 0, "no made-up key was taken");
    assert_eq!(store.membership_chain(&rec.id).unwrap().len(), 2);
    drop(store);
    h.stop().await;
}
