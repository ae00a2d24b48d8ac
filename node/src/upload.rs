//! Backing up to a relay: every folder's log entries and the chunks they reference,
//! uploaded over `/weft/store/1` as they are produced.
//!
//! One uploader task per relay. A pass registers the device (its certificate), then
//! for each folder asks the relay's chain tips, and sends what the relay lacks in log
//! order: first the chunks of a batch of entries (only those the relay reports
//! missing, so an interrupted upload resumes where it stopped), then the entries
//! themselves, so the relay never holds an entry whose chunks it lacks while a
//! device that has them is uploading. A pass runs when the relay connects, after a
//! local change, and every minute.
//!
//! Memory: one batch of entries (≤ 4 MiB) and one batch of chunks (≈ 512 KiB) at a time.
use crate::node::Cmd;
use crate::protocol::{
    MAX_BATCH_BYTES, MAX_LIVE_IDS, MAX_PUT_CHUNKS, MAX_STORE_IDS, StoreRequest, StoreResponse,
};
use crate::{NodeError, Shared};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info, warn};
use weft_crypto::{ChunkId, DeviceId};
use weft_store::db::FolderRecord;

/// How often an idle uploader checks again.
const PASS_EVERY: Duration = Duration::from_secs(60);

/// A relay as `weft status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RelayStatus {
    /// Its address.
    pub address: String,
    /// Whether the node is connected to it.
    pub connected: bool,
    /// `connecting`, `uploading`, `in sync` (everything is stored there), or `error`.
    pub state: String,
    /// The last refusal or failure, until a pass succeeds.
    pub last_error: Option<String>,
    /// Entries uploaded since start.
    pub entries_uploaded: u64,
    /// Chunks uploaded since start.
    pub chunks_uploaded: u64,
    /// Why this node distrusts the relay, if it does: a rollback (it showed less than
    /// it had shown before) or a claim to hold entries of this device it never wrote.
    #[serde(default)]
    pub rollback: Option<String>,
}

/// Sends one store request to `relay` through the swarm task.
async fn ask(
    cmds: &mpsc::Sender<Cmd>,
    relay: PeerId,
    req: StoreRequest,
) -> Result<StoreResponse, NodeError> {
    let (tx, rx) = oneshot::channel();
    cmds.send(Cmd::Store {
        peer: relay,
        req,
        reply: tx,
    })
    .await
    .map_err(|_| NodeError::Network("node is shutting down".into()))?;
    relay_answer(rx.await)
}

/// What became of a store request: the relay's answer, its refusal, or a failure.
pub(crate) fn relay_answer(
    r: Result<Result<StoreResponse, String>, oneshot::error::RecvError>,
) -> Result<StoreResponse, NodeError> {
    match r {
        Ok(Ok(StoreResponse::Refused { reason })) => Err(NodeError::Refused(reason)),
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(NodeError::Network(e)),
        Err(_) => Err(NodeError::Network("node is shutting down".into())),
    }
}

/// An answer the request did not call for.
pub(crate) fn unexpected(r: StoreResponse) -> NodeError {
    NodeError::Network(format!("unexpected answer from the relay: {r:?}"))
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Network(e.to_string()))?
}

fn set(shared: &Shared, relay: &PeerId, f: impl FnOnce(&mut RelayStatus)) {
    if let Ok(mut m) = shared.relays.lock()
        && let Some(s) = m.get_mut(relay)
    {
        f(s);
    }
}

/// Keeps a rollback in the relay's status past the pass that found it (a pass that
/// succeeds clears `last_error`; this stays until the node restarts).
fn set_rollback(shared: &Shared, relay: &PeerId, msg: String) {
    set(shared, relay, |s| s.rollback = Some(msg));
}

/// The uploader of one relay: a pass whenever `kick` fires, or every minute.
pub(crate) async fn uploader(
    shared: Arc<Shared>,
    cmds: mpsc::Sender<Cmd>,
    relay: PeerId,
    kick: Arc<Notify>,
) {
    let mut sent = Sent::default();
    loop {
        set(&shared, &relay, |s| s.state = "uploading".into());
        match pass(&shared, &cmds, relay, &mut sent).await {
            Ok(()) => set(&shared, &relay, |s| {
                s.state = "in sync".into();
                s.last_error = None;
            }),
            Err(e) => {
                warn!(relay = %relay, "backup to the relay: {e}");
                set(&shared, &relay, |s| {
                    s.state = "error".into();
                    s.last_error = Some(e.to_string());
                });
            }
        }
        tokio::select! {
            _ = kick.notified() => {}
            _ = tokio::time::sleep(PASS_EVERY) => {}
        }
    }
}

/// One pass: register, then bring every folder's copy on the relay up to date.
async fn pass(
    shared: &Arc<Shared>,
    cmds: &mpsc::Sender<Cmd>,
    relay: PeerId,
    sent: &mut Sent,
) -> Result<(), NodeError> {
    let cert = shared.store.identity().cert.to_bytes();
    let retention_days = match ask(cmds, relay, StoreRequest::Register { cert }).await? {
        StoreResponse::Registered { retention_days } => retention_days,
        r => return Err(unexpected(r)),
    };
    // Membership first: the relay judges entries by it, and it may bring offers or
    // a folder's new key.
    sync_membership(shared, cmds, relay).await?;
    // Registered: the relay now answers this device's pulls.
    let _ = cmds.send(Cmd::Pull { peer: relay }).await;
    let folders = {
        let s = shared.clone();
        blocking(move || Ok(s.store.folders()?)).await?
    };
    for folder in folders {
        // The folder's keys, sealed to this person's key: what a device recovering
        // with the recovery key gets them back from. Once per secret.
        if sent.keys.get(&folder.id) != Some(&folder.secret.epoch) {
            let envelope = key_envelope(shared, &folder)?;
            match ask(
                cmds,
                relay,
                StoreRequest::PutKey {
                    folder: folder.id,
                    envelope,
                },
            )
            .await?
            {
                StoreResponse::KeyStored => {}
                r => return Err(unexpected(r)),
            }
            sent.keys.insert(folder.id, folder.secret.epoch);
        }
        upload_folder(shared, cmds, relay, folder.clone()).await?;
        let due = sent
            .live
            .get(&folder.id)
            .is_none_or(|t| t.elapsed() >= LIVE_EVERY);
        if due {
            report_live(shared, cmds, relay, &folder, retention_days).await?;
            sent.live.insert(folder.id, std::time::Instant::now());
        }
    }
    Ok(())
}

/// The most folders shared with this person that a device keeps track of.
const MAX_SHARED_FOLDERS: usize = 1024;

/// Brings membership chains level with the relay: fetches entries of folders shared
/// with this person (offers, role changes, new keys) and sends the entries of folders
/// this person owns that the relay lacks.
async fn sync_membership(
    shared: &Arc<Shared>,
    cmds: &mpsc::Sender<Cmd>,
    relay: PeerId,
) -> Result<(), NodeError> {
    let there: HashMap<weft_crypto::FolderId, u64> =
        match ask(cmds, relay, StoreRequest::Shared).await? {
            StoreResponse::Shared { folders } => folders.into_iter().collect(),
            r => return Err(unexpected(r)),
        };
    // Bounded: a relay cannot make a device take in more than this many shares.
    for (folder, n) in there.iter().take(MAX_SHARED_FOLDERS) {
        loop {
            let have = {
                let (s, f) = (shared.clone(), *folder);
                blocking(move || Ok(s.store.membership_chain(&f)?.len() as u64)).await?
            };
            if have >= *n {
                break;
            }
            let entries = match ask(
                cmds,
                relay,
                StoreRequest::Membership {
                    folder: *folder,
                    since: have,
                },
            )
            .await?
            {
                StoreResponse::Membership { entries } => entries,
                r => return Err(unexpected(r)),
            };
            if entries.is_empty() {
                break;
            }
            let entries: Vec<Vec<u8>> = entries.into_iter().map(|b| b.into_vec()).collect();
            let (s, f) = (shared.clone(), *folder);
            let change = blocking(move || Ok(s.store.accept_membership(&f, &entries)?)).await?;
            if change.offered {
                info!(folder = %folder, "a folder was shared with you: see `weft shares`");
            }
            if change.rotated {
                info!(folder = %folder, "the folder's key was rotated by its owner");
            }
            if change.removed {
                warn!(folder = %folder, "you were removed from a shared folder: what you have stays, nothing new arrives");
            }
            if change.accepted == 0 {
                break;
            }
        }
    }
    let me = shared.store.identity().person_id();
    let folders = {
        let s = shared.clone();
        blocking(move || Ok(s.store.folders()?)).await?
    };
    // A folder shared with this person that the relay no longer lists for it: it
    // was removed (the relay still shows the chain to persons it ever listed).
    for f in folders
        .iter()
        .filter(|f| f.owner != me && !there.contains_key(&f.id))
    {
        // Once known to be removed, there is nothing more to learn.
        let (since, member) = {
            let (s, rec) = (shared.clone(), f.clone());
            blocking(move || {
                let m = s.store.membership(&rec)?;
                let member = m.role(&s.store.identity().person_id()).is_some();
                Ok((m.seq, member))
            })
            .await?
        };
        if !member {
            continue;
        }
        let entries = match ask(
            cmds,
            relay,
            StoreRequest::Membership {
                folder: f.id,
                since,
            },
        )
        .await
        {
            Ok(StoreResponse::Membership { entries }) => entries,
            _ => continue, // a relay that never held it
        };
        if entries.is_empty() {
            continue;
        }
        let entries: Vec<Vec<u8>> = entries.into_iter().map(|b| b.into_vec()).collect();
        let (s, id) = (shared.clone(), f.id);
        let change = blocking(move || Ok(s.store.accept_membership(&id, &entries)?)).await?;
        if change.removed {
            warn!(folder = %f.name, "you were removed from this shared folder: what you have stays, nothing new arrives");
        }
    }
    for f in folders.into_iter().filter(|f| f.owner == me) {
        let chain = {
            let (s, id) = (shared.clone(), f.id);
            blocking(move || Ok(s.store.membership_chain(&id)?)).await?
        };
        let sent = there.get(&f.id).copied().unwrap_or(0) as usize;
        for batch in chain
            .get(sent..)
            .unwrap_or_default()
            .chunks(weft_store::members::MAX_CHAIN_BATCH)
        {
            match ask(
                cmds,
                relay,
                StoreRequest::PutMembership {
                    folder: f.id,
                    entries: batch.iter().cloned().map(ByteBuf::from).collect(),
                },
            )
            .await?
            {
                StoreResponse::Stored { .. } => {}
                r => return Err(unexpected(r)),
            }
        }
    }
    Ok(())
}

/// What an uploader already told its relay since it started.
#[derive(Default)]
struct Sent {
    /// Per folder, the secret epoch whose key envelope the relay has.
    keys: HashMap<weft_crypto::FolderId, u32>,
    /// Per folder, when the last live report went.
    live: HashMap<weft_crypto::FolderId, std::time::Instant>,
}

/// How often a device tells a relay which chunks its retained versions still need.
const LIVE_EVERY: Duration = Duration::from_secs(3600);

/// Tells the relay which of `folder`'s chunks the versions it must keep (under its
/// retention) reference, so it can forget the rest in time. A folder with more chunks
/// than one report holds is not reported (the relay then keeps everything of it).
async fn report_live(
    shared: &Arc<Shared>,
    cmds: &mpsc::Sender<Cmd>,
    relay: PeerId,
    folder: &FolderRecord,
    retention_days: u32,
) -> Result<(), NodeError> {
    let ids = {
        let (s, f) = (shared.clone(), folder.id);
        blocking(move || {
            Ok(s.store
                .retained_chunks(&f, weft_store::store::now_ms(), retention_days)?)
        })
        .await?
    };
    if ids.len() > MAX_LIVE_IDS {
        warn!(folder = %folder.name, "too many chunks ({}) to tell the relay which it may forget; it keeps them all", ids.len());
        return Ok(());
    }
    match ask(
        cmds,
        relay,
        StoreRequest::Live {
            folder: folder.id,
            ids,
        },
    )
    .await?
    {
        StoreResponse::Stored { .. } => Ok(()),
        r => Err(unexpected(r)),
    }
}

/// What the key envelope of a folder is sealed for.
pub const KEY_ENVELOPE_PURPOSE: &str = "folder-keys";

/// What the envelope's signature is made for.
const KEY_ENVELOPE_CONTEXT: &str = "folder-key-envelope";

/// A key envelope as stored at a relay: the folder sealed to the person's X25519 key,
/// and signed with the person key. Sealing alone is not enough: anyone can seal to a
/// public key, so a relay could hand a recovering device a folder whose secret it
/// chose, and read what is then written into it. The signature says one of this
/// person's devices made it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    wrapped: weft_crypto::wrap::WrappedKey,
    signature: weft_crypto::Signature,
}

fn envelope_message(folder: &weft_crypto::FolderId, plain: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + plain.len());
    m.extend_from_slice(&folder.0);
    m.extend_from_slice(plain);
    m
}

/// Seals and signs `folder` for `person` (its own person key).
pub fn seal_key_envelope(
    person: &weft_crypto::SecretKey,
    folder: &weft_store::sync::SharedFolder,
) -> Result<Vec<u8>, NodeError> {
    let plain = postcard::to_stdvec(folder).map_err(|e| NodeError::Network(e.to_string()))?;
    let wrapped =
        weft_crypto::wrap::wrap(&person.public(), KEY_ENVELOPE_PURPOSE, &folder.id.0, &plain)
            .map_err(weft_store::StoreError::from)?;
    let signature = person.sign(KEY_ENVELOPE_CONTEXT, &envelope_message(&folder.id, &plain));
    postcard::to_stdvec(&Envelope { wrapped, signature })
        .map_err(|e| NodeError::Network(e.to_string()))
}

/// A folder's id, name, secret and owner, sealed to this device's person's key.
fn key_envelope(shared: &Shared, folder: &FolderRecord) -> Result<Vec<u8>, NodeError> {
    seal_key_envelope(
        &shared.store.identity().person,
        &weft_store::sync::SharedFolder::from(folder),
    )
}

/// Opens a key envelope of `folder` with the person key, and checks that this person
/// made it.
pub fn open_key_envelope(
    person: &weft_crypto::SecretKey,
    folder: &weft_crypto::FolderId,
    envelope: &[u8],
) -> Result<weft_store::sync::SharedFolder, NodeError> {
    let bad =
        |reason: String| NodeError::Refused(format!("a key envelope from the relay: {reason}"));
    let env: Envelope = postcard::from_bytes(envelope).map_err(|e| bad(e.to_string()))?;
    let plain = weft_crypto::wrap::unwrap(person, KEY_ENVELOPE_PURPOSE, &folder.0, &env.wrapped)
        .map_err(|e| bad(e.to_string()))?;
    person
        .public()
        .verify(
            KEY_ENVELOPE_CONTEXT,
            &envelope_message(folder, &plain),
            &env.signature,
        )
        .map_err(|_| bad("not signed by this person: not made by one of your devices".into()))?;
    let shared: weft_store::sync::SharedFolder =
        postcard::from_bytes(&plain).map_err(|e| bad(e.to_string()))?;
    if shared.id != *folder {
        return Err(bad("it is for another folder".into()));
    }
    Ok(shared)
}

async fn upload_folder(
    shared: &Arc<Shared>,
    cmds: &mpsc::Sender<Cmd>,
    relay: PeerId,
    folder: FolderRecord,
) -> Result<(), NodeError> {
    let mut have: HashMap<DeviceId, u64> =
        match ask(cmds, relay, StoreRequest::Tips { folder: folder.id }).await? {
            StoreResponse::Tips { tips } => tips.into_iter().collect(),
            r => return Err(unexpected(r)),
        };
    // A relay never forgets an entry it once held: less than it showed before is a
    // rollback (lost data, or an attack). Reported; the upload below restores it.
    let rid = relay.to_string();
    let marks = shared.store.relay_marks(&rid, &folder.id)?;
    let mut rolled_back = Vec::new();
    for (author, mark) in &marks {
        let now = have.get(author).copied().unwrap_or(0);
        if now < *mark {
            rolled_back.push(format!("{author} #{mark} → #{now}"));
        }
    }
    if !rolled_back.is_empty() {
        let msg = format!(
            "the relay rolled back folder {}: it showed entries it no longer has ({})",
            folder.name,
            rolled_back.join(", ")
        );
        warn!(relay = %relay, "{msg}; uploading them again");
        set(shared, &relay, |s| s.last_error = Some(msg.clone()));
        set_rollback(shared, &relay, msg);
    }
    // Nor can it hold entries of this device beyond the last one this device wrote:
    // a relay claiming so would keep this device's changes from being backed up.
    let me = shared.store.identity().device_id();
    let mine = shared
        .store
        .tips(&folder.id)?
        .into_iter()
        .find(|(a, _)| *a == me)
        .map_or(0, |(_, s)| s);
    if have.get(&me).is_some_and(|t| *t > mine) {
        let msg = format!(
            "the relay claims entries of this device it never wrote in folder {} (#{} > #{mine}): not trusting its tips",
            folder.name, have[&me]
        );
        warn!(relay = %relay, "{msg}");
        set(shared, &relay, |s| s.last_error = Some(msg.clone()));
        set_rollback(shared, &relay, msg.clone());
        return Err(NodeError::Refused(msg));
    }
    let seen: Vec<(DeviceId, u64)> = have.iter().map(|(a, s)| (*a, *s)).collect();
    shared.store.raise_relay_marks(&rid, &folder.id, &seen)?;
    loop {
        let (entries, more) = {
            let (s, f, h) = (shared.clone(), folder.id, have.clone());
            blocking(move || {
                let h: Vec<(DeviceId, u64)> = h.into_iter().collect();
                Ok(s.store.entries_since(&f, &h)?)
            })
            .await?
        };
        if entries.is_empty() {
            return Ok(());
        }
        // The chunks of these entries first, those the relay lacks.
        let refs: Vec<(ChunkId, u64)> = {
            let (s, f, e) = (shared.clone(), folder.clone(), entries.clone());
            blocking(move || {
                let mut seen = HashSet::new();
                let mut refs = Vec::new();
                for raw in &e {
                    for c in s.store.chunks_of_entry(&f, raw)? {
                        if seen.insert(c.id) {
                            refs.push((c.id, u64::from(c.len) + 16));
                        }
                    }
                }
                Ok(refs)
            })
            .await?
        };
        let sizes: HashMap<ChunkId, u64> = refs.iter().copied().collect();
        let mut missing = Vec::new();
        let mut room = None;
        for group in refs.chunks(MAX_STORE_IDS) {
            match ask(
                cmds,
                relay,
                StoreRequest::Missing {
                    folder: folder.id,
                    ids: group.iter().map(|(id, _)| *id).collect(),
                },
            )
            .await?
            {
                StoreResponse::Missing { ids, room: r } => {
                    missing.extend(ids);
                    room = r;
                }
                r => return Err(unexpected(r)),
            }
        }
        // Over quota: say so before sending any of it (a partial upload would only
        // take room that nothing can use).
        let need: u64 = missing.iter().filter_map(|id| sizes.get(id)).sum();
        if let Some(room) = room
            && need > room
        {
            return Err(NodeError::Refused(format!(
                "over quota: the relay has room for {room} more bytes of yours, these changes need {need}"
            )));
        }
        upload_chunks(shared, cmds, relay, &folder, missing).await?;
        // Then the entries, with their authors' certificates.
        let tips: Vec<(DeviceId, u64)> = entries
            .iter()
            .filter_map(|raw| weft_store::log::Entry::decode(raw).ok())
            .map(|e| (e.header.author, e.header.seq))
            .collect();
        let certs = weft_store::log::authors(&entries)
            .iter()
            .filter_map(|a| shared.store.device_cert(a).ok().flatten())
            .map(|c| ByteBuf::from(c.to_bytes()))
            .collect();
        let n = entries.len() as u64;
        match ask(
            cmds,
            relay,
            StoreRequest::PutEntries {
                folder: folder.id,
                entries: entries.into_iter().map(ByteBuf::from).collect(),
                certs,
            },
        )
        .await?
        {
            StoreResponse::Stored { count } => {
                debug!(relay = %relay, folder = %folder.name, "stored {count} of {n} entries");
                set(shared, &relay, |s| s.entries_uploaded += count);
                shared
                    .store
                    .raise_relay_marks(&relay.to_string(), &folder.id, &tips)?;
            }
            r => return Err(unexpected(r)),
        }
        for (author, seq) in tips {
            let t = have.entry(author).or_default();
            *t = (*t).max(seq);
        }
        if !more {
            info!(relay = %relay, folder = %folder.name, "backed up to the relay");
            return Ok(());
        }
    }
}

/// Uploads chunks in batches of about [`MAX_BATCH_BYTES`] and at most
/// [`MAX_PUT_CHUNKS`] chunks. A chunk this device can no
/// longer produce (its file changed since) is skipped: a later version supersedes it.
async fn upload_chunks(
    shared: &Arc<Shared>,
    cmds: &mpsc::Sender<Cmd>,
    relay: PeerId,
    folder: &FolderRecord,
    ids: Vec<ChunkId>,
) -> Result<(), NodeError> {
    let mut pending = ids;
    while !pending.is_empty() {
        // Read one batch's worth, on the blocking pool.
        let (chunks, rest) = {
            let s = shared.clone();
            blocking(move || {
                let mut batch = Vec::new();
                let mut bytes = 0usize;
                let mut ids = pending.into_iter();
                for id in ids.by_ref() {
                    if let Some(ct) = s.store.chunk(&id)? {
                        bytes += ct.len();
                        batch.push((id, ByteBuf::from(ct)));
                    }
                    if bytes >= MAX_BATCH_BYTES || batch.len() >= MAX_PUT_CHUNKS {
                        break;
                    }
                }
                Ok((batch, ids.collect::<Vec<_>>()))
            })
            .await?
        };
        pending = rest;
        if chunks.is_empty() {
            continue;
        }
        match ask(
            cmds,
            relay,
            StoreRequest::PutChunks {
                folder: folder.id,
                chunks,
            },
        )
        .await?
        {
            StoreResponse::Stored { count } => {
                set(shared, &relay, |s| s.chunks_uploaded += count);
            }
            r => return Err(unexpected(r)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_crypto::{FolderId, FolderSecret, PersonId, SecretKey};
    use weft_store::sync::SharedFolder;

    fn folder(person: &SecretKey) -> SharedFolder {
        SharedFolder {
            id: FolderId::generate(),
            name: "photos".into(),
            secret: FolderSecret::generate(),
            owner: PersonId(person.public()),
        }
    }

    #[test]
    fn an_envelope_opens_only_for_its_person_and_only_if_that_person_made_it() {
        let me = SecretKey::generate();
        let f = folder(&me);
        let env = seal_key_envelope(&me, &f).expect("seals");
        let got = open_key_envelope(&me, &f.id, &env).expect("opens");
        assert_eq!(got.secret, f.secret);
        assert_eq!(got.name, "photos");

        // Someone else's key opens nothing; another folder's id neither.
        let other = SecretKey::generate();
        assert!(open_key_envelope(&other, &f.id, &env).is_err());
        assert!(open_key_envelope(&me, &FolderId::generate(), &env).is_err());

        // Sealed to me by someone else (a relay choosing the secret): refused.
        let planted = folder(&me);
        let plain = postcard::to_stdvec(&planted).expect("encodes");
        let wrapped =
            weft_crypto::wrap::wrap(&me.public(), KEY_ENVELOPE_PURPOSE, &planted.id.0, &plain)
                .expect("wraps");
        let signature = other.sign(KEY_ENVELOPE_CONTEXT, &envelope_message(&planted.id, &plain));
        let forged = postcard::to_stdvec(&Envelope { wrapped, signature }).expect("encodes");
        let e = open_key_envelope(&me, &planted.id, &forged).expect_err("refused");
        assert!(e.to_string().contains("not signed by this person"), "{e}");

        // A flipped bit anywhere: refused.
        for i in [0, env.len() / 2, env.len() - 1] {
            let mut t = env.clone();
            t[i] ^= 1;
            assert!(open_key_envelope(&me, &f.id, &t).is_err(), "bit at {i}");
        }
    }
}
