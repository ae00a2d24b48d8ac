//! weft's node: a participant in the mesh.
//!
//! A node keeps a person's folders identical across their devices, live, over libp2p.
//! [`start`] runs one until shutdown: the swarm task in [`node`], one worker per
//! folder in [`apply`] (scan, plan, fetch, write atomically), the watcher in
//! [`watch`], the CLI's control socket in [`control`], backups to relays in [`upload`].
//! [`join`] pairs a new device.
//! Wire formats and limits are in [`protocol`]; pairing codes in [`pairing`].
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod apply;
pub mod control;
pub mod join;
pub mod links;
pub mod node;
pub mod pairing;
pub mod protocol;
pub mod recover;
pub mod sharing;
pub mod upload;
pub mod watch;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use weft_crypto::FolderId;
use weft_store::{Home, Store};

pub use node::NodeConfig;

/// Errors of the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] weft_store::StoreError),
    /// Networking failed.
    #[error("network: {0}")]
    Network(String),
    /// The watcher failed.
    #[error("file watcher: {0}")]
    Watch(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The control socket failed or the node is not running.
    #[error("{0}")]
    Control(String),
    /// Pairing failed.
    #[error("pairing failed: {0}")]
    Pairing(String),
    /// Recovering from the recovery key and a relay failed.
    #[error("recovery failed: {0}")]
    Recovery(String),
    /// A remote change would write outside the folder.
    #[error("refused to write {0}: a parent directory is a symlink or not a directory")]
    UnsafePath(String),
    /// A chunk could not be had from any peer.
    #[error("no connected device has chunk {0}")]
    ChunkUnavailable(String),
    /// A relay refused a request (over quota, not allowed, ...).
    #[error("the relay refused: {0}")]
    Refused(String),
    /// The disk under a folder is full: what was being written is dropped, nothing is
    /// recorded, and the next round tries again.
    #[error("disk full: cannot write {path}; syncing goes on once there is room")]
    DiskFull {
        /// What could not be written.
        path: std::path::PathBuf,
    },
    /// A round left steps undone (their files wait for the next round).
    #[error("{steps} step(s) could not be done yet: {reason}")]
    Incomplete {
        /// How many.
        steps: usize,
        /// The first error of the round, or what the steps wait for.
        reason: String,
        /// Whether steps failed on a full disk (the next round comes sooner).
        disk_full: bool,
    },
}

impl NodeError {
    /// An I/O error on `path`; a full disk is told apart ([`NodeError::DiskFull`]).
    pub fn io(path: &std::path::Path, source: std::io::Error) -> NodeError {
        if source.kind() == std::io::ErrorKind::StorageFull
            || source.kind() == std::io::ErrorKind::QuotaExceeded
        {
            return NodeError::DiskFull {
                path: path.to_path_buf(),
            };
        }
        NodeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// State shared by the node's tasks.
pub struct Shared {
    /// The store.
    pub store: Store,
    /// Per-folder sync status.
    pub status: Mutex<HashMap<FolderId, apply::FolderStatus>>,
    /// Addresses the node listens on.
    pub listen_addrs: Mutex<Vec<libp2p::Multiaddr>>,
    /// The relays this device backs up to, by peer id.
    pub relays: Mutex<HashMap<libp2p::PeerId, upload::RelayStatus>>,
    received: AtomicU64,
    sent: AtomicU64,
    /// Notified when the store failed in a way only reopening it cures
    /// ([`weft_store::StoreError::needs_reopen`]): the node stops and [`start`] opens
    /// the store again.
    reopen: tokio::sync::Notify,
}

impl Shared {
    /// Wraps a store.
    pub fn new(store: Store) -> Shared {
        Shared {
            store,
            status: Mutex::new(HashMap::new()),
            listen_addrs: Mutex::new(Vec::new()),
            relays: Mutex::new(HashMap::new()),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            reopen: tokio::sync::Notify::new(),
        }
    }

    /// Looks at an error of the store: one that only reopening cures stops the node,
    /// which [`start`] then runs again on a freshly opened store.
    pub(crate) fn store_failed(&self, e: &NodeError) {
        if let NodeError::Store(e) = e
            && e.needs_reopen()
        {
            self.reopen.notify_one();
        }
    }

    pub(crate) fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Chunk bytes received from peers since start.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Chunk bytes sent to peers since start.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Runs a node for `home` until `shutdown` resolves: swarm, folder workers, watcher
/// and control socket.
///
/// A store that failed for good while running (a write of the database failed, as on
/// a full disk: redb then refuses everything) stops the node, and the node starts
/// again on the store opened anew, after a pause that doubles (up to a minute) while
/// it keeps failing soon after (the disk still full). Stopping is always safe: every
/// change is one transaction.
pub async fn start(
    home: &Home,
    cfg: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    tokio::pin!(shutdown);
    let mut store = Store::open(home)?;
    let mut pause = REOPEN_FIRST;
    loop {
        let started = std::time::Instant::now();
        let shared = std::sync::Arc::new(Shared::new(store));
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(1024);
        let control = control::serve(home, cmd_tx.clone())?;
        let result = node::run(shared, cfg.clone(), cmd_rx, cmd_tx, shutdown.as_mut()).await;
        control.abort();
        let _ = std::fs::remove_file(control::socket_path(home));
        match result {
            Err(NodeError::Store(e)) if e.needs_reopen() => {}
            other => return other,
        }
        // Failing again soon after a restart (the disk still full) waits longer each
        // time, up to a minute; a node that ran a while starts over at once.
        pause = if started.elapsed() < REOPEN_LAST {
            (pause * 2).min(REOPEN_LAST)
        } else {
            REOPEN_FIRST
        };
        store = loop {
            tracing::warn!(
                "the database refuses writes since one failed (a full disk?): opening it again in {} s",
                pause.as_secs()
            );
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
            }
            match Store::open(home) {
                Ok(s) => break s,
                Err(e) => tracing::warn!("cannot open the database yet: {e}"),
            }
            pause = (pause * 2).min(REOPEN_LAST);
        };
        tracing::info!("database opened again; the node starts anew");
    }
}

/// The first pause before a store that must be reopened is opened again, and the
/// longest (also how long a node must run for the pause to start over).
const REOPEN_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const REOPEN_LAST: std::time::Duration = std::time::Duration::from_secs(60);
