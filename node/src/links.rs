//! Creating and revoking share links (`weft link`), on a running node.
//!
//! A link shares the current version of one file, or of every file under one
//! directory, through one of this device's relays: the node builds the record
//! (`weft_crypto::link::LinkRecord`: names, sizes, and each file's chunk ids and
//! keys), seals it under a key that only the URL's fragment carries, makes sure the
//! relay stores every chunk the record names (`Missing`, then `PutChunks`), and
//! asks the relay to create the link with the chunk ids in clear (so it serves those
//! and no others), the expiry, the download limit and the hash of the access token.
//! The URL is `<relay's public HTTP URL>/s/<token>#<key>`.
//!
//! Runs on a blocking thread (store reads, scrypt); talks to the relay through the
//! swarm task with [`Cmd::Store`].
use crate::NodeError;
use crate::Shared;
use crate::control::ControlResponse;
use crate::node::Cmd;
use crate::protocol::{
    MAX_BATCH_BYTES, MAX_PUT_CHUNKS, MAX_STORE_IDS, StoreRequest, StoreResponse,
};
use crate::upload::unexpected;
use libp2p::PeerId;
use serde_bytes::ByteBuf;
use std::path::Path;
use tokio::sync::{mpsc, oneshot};
use weft_crypto::ChunkId;
use weft_crypto::link::{
    LinkChunk, LinkFile, LinkKey, LinkKind, LinkRecord, LinkSecrets, LinkToken, MAX_LINK_CHUNKS,
    MAX_LINK_FILES, MAX_RECORD_LEN, guess_mime,
};
use weft_store::links::LocalLink;
use weft_store::merge::TreeEntry;
use weft_store::model::{Content, RelPath};

/// What `weft link PATH` asks for.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LinkOptions {
    /// The file or directory (absolute path).
    pub path: String,
    /// A password, if any.
    pub password: Option<String>,
    /// Seconds until the link expires.
    pub expires_secs: Option<u64>,
    /// How many downloads it allows.
    pub max_downloads: Option<u64>,
}

fn ask(
    cmds: &mpsc::Sender<Cmd>,
    relay: PeerId,
    req: StoreRequest,
) -> Result<StoreResponse, NodeError> {
    let (tx, rx) = oneshot::channel();
    cmds.blocking_send(Cmd::Store {
        peer: relay,
        req,
        reply: tx,
    })
    .map_err(|_| NodeError::Network("node is shutting down".into()))?;
    crate::upload::relay_answer(rx.blocking_recv())
}

fn crypto(e: weft_crypto::CryptoError) -> NodeError {
    NodeError::Control(e.to_string())
}

/// A connected relay of this device.
fn connected_relay(shared: &Shared) -> Result<PeerId, NodeError> {
    let relays = shared
        .relays
        .lock()
        .map(|m| {
            m.iter()
                .filter(|(_, s)| s.connected)
                .map(|(p, _)| *p)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut relays = relays;
    relays.sort();
    relays.into_iter().next().ok_or_else(|| {
        NodeError::Control(
            "no relay is connected: a share link is served by a relay (add one with \
             `weft relay add ADDR`, and check `weft status`)"
                .into(),
        )
    })
}

/// Creates a link; see the module docs.
pub fn create(
    shared: &Shared,
    cmds: &mpsc::Sender<Cmd>,
    opts: LinkOptions,
) -> Result<LocalLink, NodeError> {
    let store = &shared.store;
    let given = Path::new(&opts.path);
    let abs = std::fs::canonicalize(given).map_err(|e| NodeError::Io {
        path: given.to_path_buf(),
        source: e,
    })?;
    // The folder root itself, or a path inside a folder.
    let (folder, rel) = match store
        .folders()?
        .into_iter()
        .find(|f| std::fs::canonicalize(f.root_path()).is_ok_and(|r| r == abs))
    {
        Some(f) => (f, None),
        None => {
            let (f, rel) = store.locate(&abs)?;
            (f, Some(rel))
        }
    };
    let tree = store.tree(&folder.id)?;
    let name = abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| folder.name.clone());
    let file_of = |path: &RelPath, e: &TreeEntry, shown: String| -> Result<LinkFile, NodeError> {
        let origin = e.conflict_of.as_ref().unwrap_or(path);
        let m = store.manifest(&folder.id, origin, &e.version)?;
        Ok(LinkFile {
            mime: guess_mime(&shown).map(str::to_string),
            path: shown,
            size: m.size,
            chunks: m
                .chunks
                .iter()
                .map(|c| LinkChunk::new(&c.id, &c.key, c.len))
                .collect(),
        })
    };
    let (kind, files) = match rel.as_ref().and_then(|r| tree.get(r).map(|e| (r, e))) {
        Some((r, e)) if matches!(e.content, Content::File { .. }) => {
            (LinkKind::File, vec![file_of(r, e, name.clone())?])
        }
        Some((_, e)) if !matches!(e.content, Content::Dir) => {
            return Err(NodeError::Control(format!(
                "{} is not a file or directory weft has synced",
                opts.path
            )));
        }
        None if rel.is_some() => {
            return Err(NodeError::Control(format!(
                "{} is not indexed yet (wait for the scan, see `weft status`)",
                opts.path
            )));
        }
        _ => {
            let mut files = Vec::new();
            for (p, e) in &tree {
                if !matches!(e.content, Content::File { .. }) {
                    continue;
                }
                let shown = match &rel {
                    None => p.to_string(),
                    Some(r) if p.starts_with(r) && p != r => {
                        String::from_utf8_lossy(&p.as_bytes()[r.as_bytes().len() + 1..])
                            .into_owned()
                    }
                    Some(_) => continue,
                };
                if files.len() >= MAX_LINK_FILES {
                    return Err(NodeError::Control(format!(
                        "a link holds at most {MAX_LINK_FILES} files"
                    )));
                }
                files.push(file_of(p, e, shown)?);
            }
            (LinkKind::Folder, files)
        }
    };
    let record = LinkRecord {
        v: 1,
        kind,
        name,
        files,
    };
    let ids = record.chunk_ids().map_err(crypto)?;
    if ids.len() > MAX_LINK_CHUNKS {
        return Err(NodeError::Control(format!(
            "a link holds at most {MAX_LINK_CHUNKS} chunks; share a smaller directory"
        )));
    }
    let plain = record.to_json();
    if plain.len() + 64 > MAX_RECORD_LEN {
        return Err(NodeError::Control(
            "too many files for one link; share a smaller directory".into(),
        ));
    }
    let relay = connected_relay(shared)?;
    ensure_chunks(shared, cmds, relay, &folder.id, &ids)?;
    let token = LinkToken::generate();
    let key = LinkKey::generate();
    let secrets = LinkSecrets::derive(&key, &token, opts.password.as_deref()).map_err(crypto)?;
    let sealed = secrets.seal(&token, &plain);
    let now = weft_store::store::now_ms();
    let expires_ms = opts
        .expires_secs
        .map(|s| now.saturating_add(s.saturating_mul(1000)));
    let base_url = match ask(
        cmds,
        relay,
        StoreRequest::CreateLink {
            token: token.0,
            folder: folder.id,
            record: sealed,
            chunks: ids,
            access_hash: secrets.access_hash(),
            expires_ms,
            max_downloads: opts.max_downloads,
        },
    )? {
        StoreResponse::LinkCreated { base_url } => base_url,
        r => return Err(unexpected(r)),
    };
    let link = LocalLink {
        url: format!("{base_url}/s/{}#{}", token.encode(), key.encode()),
        token: token.encode(),
        path: abs.display().to_string(),
        relay: relay.to_string(),
        created_ms: now,
        expires_ms,
        max_downloads: opts.max_downloads,
        password: opts.password.is_some(),
        revoked: false,
    };
    store.put_link(&link)?;
    Ok(link)
}

/// Uploads whichever of `ids` the relay lacks in `folder` (normally none: the
/// uploader has stored them already).
fn ensure_chunks(
    shared: &Shared,
    cmds: &mpsc::Sender<Cmd>,
    relay: PeerId,
    folder: &weft_crypto::FolderId,
    ids: &[ChunkId],
) -> Result<(), NodeError> {
    let mut missing = Vec::new();
    for group in ids.chunks(MAX_STORE_IDS) {
        match ask(
            cmds,
            relay,
            StoreRequest::Missing {
                folder: *folder,
                ids: group.to_vec(),
            },
        )? {
            StoreResponse::Missing { ids, .. } => missing.extend(ids),
            r => return Err(unexpected(r)),
        }
    }
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    let flush = |batch: &mut Vec<(ChunkId, ByteBuf)>| -> Result<(), NodeError> {
        if batch.is_empty() {
            return Ok(());
        }
        match ask(
            cmds,
            relay,
            StoreRequest::PutChunks {
                folder: *folder,
                chunks: std::mem::take(batch),
            },
        )? {
            StoreResponse::Stored { .. } => Ok(()),
            r => Err(unexpected(r)),
        }
    };
    for id in missing {
        let ct = shared.store.chunk(&id)?.ok_or_else(|| {
            NodeError::ChunkUnavailable(format!(
                "{id} (the file changed since it was indexed; try again after the next scan)"
            ))
        })?;
        bytes += ct.len();
        batch.push((id, ByteBuf::from(ct)));
        if bytes >= MAX_BATCH_BYTES || batch.len() >= MAX_PUT_CHUNKS {
            flush(&mut batch)?;
            bytes = 0;
        }
    }
    flush(&mut batch)
}

/// Revokes a link this device created.
pub fn revoke(
    shared: &Shared,
    cmds: &mpsc::Sender<Cmd>,
    token: &str,
) -> Result<LocalLink, NodeError> {
    let store = &shared.store;
    let mut link = store.link(token)?.ok_or_else(|| {
        NodeError::Control(format!(
            "no link {token} was created on this device (see `weft link list`)"
        ))
    })?;
    let t = LinkToken::decode(token).map_err(crypto)?;
    let relay: PeerId = link
        .relay
        .parse()
        .map_err(|_| NodeError::Control(format!("bad relay id {}", link.relay)))?;
    match ask(cmds, relay, StoreRequest::RevokeLink { token: t.0 })? {
        StoreResponse::LinkRevoked => {}
        r => return Err(unexpected(r)),
    }
    link.revoked = true;
    store.put_link(&link)?;
    Ok(link)
}

/// Handles a link control request (blocking thread).
pub fn control(
    shared: &Shared,
    cmds: &mpsc::Sender<Cmd>,
    req: crate::control::ControlRequest,
) -> ControlResponse {
    use crate::control::ControlRequest as R;
    let r = match req {
        R::LinkCreate { options } => {
            create(shared, cmds, options).map(|l| ControlResponse::Link { link: l })
        }
        R::LinkRevoke { token } => {
            revoke(shared, cmds, &token).map(|l| ControlResponse::Link { link: l })
        }
        R::LinkList => shared
            .store
            .links()
            .map(|links| ControlResponse::Links { links })
            .map_err(NodeError::from),
        _ => Err(NodeError::Control("not a link request".into())),
    };
    r.unwrap_or_else(|e| ControlResponse::Error {
        message: e.to_string(),
    })
}
