//! Folder workers: bring a folder's disk to its merged tree, safely.
//!
//! Each round, under the folder's single worker: **scan** first (so an edit made
//! here is recorded, and becomes a conflict rather than being overwritten), **plan**
//! (merged tree against index), then **apply** each step:
//!
//! - a file is assembled chunk by chunk into a temporary file under the folder's
//!   `.weft/tmp/`, each chunk checked against its id and opened with its key (so the
//!   bytes are what the author wrote; the node does this off the swarm task as chunks
//!   arrive), the partial file is kept if the transfer is cut short (the next attempt,
//!   after a restart too, checks its chunks against their keys and goes on after the
//!   intact ones), the file is fsynced and
//!   renamed into place only if the file on disk still matches the index: a file
//!   modified locally meanwhile is never overwritten;
//! - a path is written only below real directories of the folder: a symlinked
//!   parent is refused;
//! - deletions remove only what the index says is unchanged;
//! - conflict copies are written, then recorded by the next scan as files of this
//!   device, so the copy survives whatever happens to the original.
//!
//! Memory: at most [`WINDOW`] chunks, about [`WINDOW_BYTES`], are in flight per file.
use crate::NodeError;
use crate::Shared;
use crate::node::{Cmd, NodeConfig};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{info, warn};
use weft_crypto::{ChunkId, FolderId, Hash, SealedChunk};
use weft_store::db::{FolderRecord, IndexKind, IndexRow};
use weft_store::locs::WrittenFile;
use weft_store::model::{ChunkRef, Manifest, RelPath, VersionId};
use weft_store::scan::{Progress, TEMP_DIR};
use weft_store::sync::Action;

/// Chunks requested ahead of the one being written.
pub const WINDOW: usize = 16;
/// Bytes requested ahead, at most (one chunk more when a chunk is larger): sixteen of
/// the largest ordinary chunks, four of a file over 4 GiB.
pub const WINDOW_BYTES: u64 = 4 << 20;

/// Wakes a folder worker.
#[derive(Clone, Default)]
pub struct FolderKick(pub(crate) Arc<Notify>);

impl FolderKick {
    /// A new kick.
    pub fn new() -> FolderKick {
        FolderKick(Arc::new(Notify::new()))
    }

    /// Asks for a round (coalesced with others).
    pub fn kick(&self) {
        self.0.notify_one();
    }

    /// Same as [`FolderKick::kick`]: remote changes are applied after the same short
    /// debounce, which also coalesces a burst of entries.
    pub fn kick_now(&self) {
        self.0.notify_one();
    }
}

/// What `weft status` shows for a folder.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FolderStatus {
    /// The folder's name.
    pub name: String,
    /// Its id.
    pub id: String,
    /// `in sync`, `scanning` or `syncing`.
    pub state: String,
    /// Files still to write.
    pub files_to_go: u64,
    /// Bytes still to write.
    pub bytes_to_go: u64,
    /// Bytes per second over the current round.
    pub rate: f64,
    /// Conflict copies in the folder.
    pub conflicts: u64,
    /// The last error, if the last round failed.
    pub last_error: Option<String>,
    /// This person's role (`owner`, `editor`, `viewer`, or `removed`); None until
    /// the first round.
    #[serde(default)]
    pub role: Option<String>,
    /// Changes made on this device that stay local: a viewer's (or a removed
    /// member's) edits, which no other device accepts.
    #[serde(default)]
    pub local_only: u64,
    /// Paths the last scan did not sync, and why (symlinks, special files, unreadable
    /// or ever-changing files, names that are not UTF-8, a bad `.weftignore`): the
    /// first [`NOT_SYNCED_SHOWN`] of them.
    #[serde(default)]
    pub not_synced: Vec<String>,
    /// How many paths the last scan did not sync.
    #[serde(default)]
    pub not_synced_count: u64,
    /// Hashes of the warnings already logged (each is logged once while it lasts).
    #[serde(skip)]
    logged: HashSet<u64>,
}

/// Most not-synced paths a folder's status lists (the log has every one).
pub const NOT_SYNCED_SHOWN: usize = 100;

fn set_status(shared: &Shared, folder: &FolderId, f: impl FnOnce(&mut FolderStatus)) {
    if let Ok(mut m) = shared.status.lock() {
        f(m.entry(*folder).or_default());
    }
}

/// Runs rounds for one folder until the task is dropped.
pub async fn folder_worker(
    shared: Arc<Shared>,
    folder: FolderRecord,
    kick: FolderKick,
    cmds: mpsc::Sender<Cmd>,
    cfg: NodeConfig,
) {
    set_status(&shared, &folder.id, |s| {
        s.name = folder.name.clone();
        s.id = folder.id.to_string();
        s.state = "scanning".into();
    });
    let mut first = true;
    let mut next_round = cfg.rescan_every;
    loop {
        if !first {
            tokio::select! {
                _ = kick.0.notified() => {}
                _ = tokio::time::sleep(next_round) => {}
            }
            tokio::time::sleep(cfg.debounce).await;
        }
        first = false;
        let (sh, f, c) = (shared.clone(), folder.clone(), cmds.clone());
        let res = tokio::task::spawn_blocking(move || round(&sh, &f, &c)).await;
        next_round = cfg.rescan_every;
        // A round that left steps for later is still syncing; any other failure (the
        // root gone, the store failing) stops the folder until a round succeeds.
        let (err, stopped) = match res {
            Ok(Ok(())) => (None, false),
            Ok(Err(e @ NodeError::Incomplete { disk_full, .. })) => {
                // Room on a full disk comes back without an event in the folder: look
                // again sooner than the rescan (each try fails at once while it is full).
                if disk_full {
                    next_round = next_round.min(DISK_FULL_RETRY);
                }
                (Some(e.to_string()), false)
            }
            Ok(Err(e)) => {
                shared.store_failed(&e);
                (Some(e.to_string()), true)
            }
            Err(e) => (Some(format!("worker failed: {e}")), true),
        };
        if let Some(e) = &err {
            warn!(folder = %folder.name, "sync round failed: {e}");
        }
        set_status(&shared, &folder.id, |s| {
            if stopped || (err.is_some() && s.state == "scanning") {
                s.state = "stopped".into();
            }
            s.last_error = err;
        });
    }
}

/// One round: scan, plan, apply, and scan again if anything was written.
fn round(
    shared: &Shared,
    folder: &FolderRecord,
    cmds: &mpsc::Sender<Cmd>,
) -> Result<(), NodeError> {
    let store = &shared.store;
    let folder = store.folder(&folder.id)?;
    scan_and_notify(shared, &folder, cmds)?;
    let (role, local_only) = store.local_only(&folder)?;
    set_status(shared, &folder.id, |s| {
        s.role = Some(role.map_or_else(|| "removed".into(), |r| r.to_string()));
        s.local_only = local_only;
    });
    let plan = local_plan(shared, &folder)?;
    let (files, bytes) = plan.iter().fold((0u64, 0u64), |(n, b), a| match a {
        Action::WriteFile { manifest, .. } => (n + 1, b + manifest.size),
        _ => (n, b),
    });
    set_status(shared, &folder.id, |s| {
        s.state = if plan.is_empty() {
            "in sync"
        } else {
            "syncing"
        }
        .into();
        s.files_to_go = files;
        s.bytes_to_go = bytes;
    });
    if plan.is_empty() {
        update_conflicts(shared, &folder)?;
        return Ok(());
    }
    let kept = keep_parts(store, &folder, &plan)?;
    let mut prefetch = Prefetch::new(shared, &plan, kept)?;
    prefetch.pump(shared, cmds)?;
    let mut tally = Tally {
        started: Instant::now(),
        done_bytes: 0,
        skipped: 0,
        held: Vec::new(),
        first_error: None,
        disk_full: 0,
    };
    let mut batch = FsyncBatch::default();
    for action in plan {
        if let Action::WriteFile {
            path,
            conflict_of: None,
            ..
        } = &action
            && tally.held.contains(path)
        {
            tally.skipped += 1;
            continue;
        }
        // A small file joins the batch whose fsyncs run together; anything else
        // first lets the batch finish, so every other step keeps its order.
        if let Action::WriteFile {
            path,
            manifest,
            conflict_of: None,
            ..
        } = &action
            && manifest.size < BATCH_FILE_BELOW
        {
            // The same content is assembled in the same temporary file: the one
            // waiting must be renamed first.
            if batch.holds(&manifest.hash) {
                batch.flush(shared, &folder, &mut tally);
            }
            match prepare_file(shared, &folder, path, manifest, cmds, &mut prefetch, false) {
                Ok(Some(a)) => {
                    batch.push(action, a);
                    if batch.is_full() {
                        batch.send_behind(shared, &folder, &mut tally);
                    }
                }
                Ok(None) => tally.record(shared, &folder, &action, Ok(false)),
                Err(e) => tally.record(shared, &folder, &action, Err(e)),
            }
            continue;
        }
        batch.flush(shared, &folder, &mut tally);
        let res = match &action {
            Action::MakeDir { path, version } => make_dir(shared, &folder, path, *version),
            Action::Adopt {
                path,
                version,
                executable,
            } => adopt(shared, &folder, path, *version, *executable),
            Action::Remove { path, kind } => remove(shared, &folder, path, *kind),
            Action::WriteFile {
                path,
                version,
                manifest,
                conflict_of,
            } => write_file(
                shared,
                &folder,
                path,
                *version,
                manifest,
                conflict_of.as_ref(),
                cmds,
                &mut prefetch,
            ),
        };
        tally.record(shared, &folder, &action, res);
    }
    batch.flush(shared, &folder, &mut tally);
    let Tally {
        skipped,
        first_error,
        disk_full,
        ..
    } = tally;
    if disk_full > 1 {
        warn!(folder = %folder.name, "{disk_full} files could not be written: the disk is full");
    }
    // Record conflict copies (and anything that changed meanwhile) as this device's;
    // the scan's commit also makes the round's light commits durable.
    scan_and_notify(shared, &folder, cmds)?;
    store.persist()?;
    update_conflicts(shared, &folder)?;
    let left = local_plan(shared, &folder)?;
    set_status(shared, &folder.id, |s| {
        s.state = if left.is_empty() {
            "in sync"
        } else {
            "syncing"
        }
        .into();
    });
    if skipped > 0 || !left.is_empty() {
        // Chunks may arrive from a peer that connects later, the disk may have room
        // again: try again soon. Nothing moves until then.
        set_status(shared, &folder.id, |s| s.rate = 0.0);
        return Err(NodeError::Incomplete {
            disk_full: disk_full > 0,
            steps: left.len().max(skipped),
            reason: first_error
                .unwrap_or_else(|| "waiting for chunks from devices not connected now".into()),
        });
    }
    Ok(())
}

/// What a round's steps came to: bytes written (for the rate), steps not done, and
/// origins whose conflict copy could not be written (their file is not replaced this
/// round: it may be the only copy of the losing version).
struct Tally {
    started: Instant,
    done_bytes: u64,
    skipped: usize,
    held: Vec<RelPath>,
    /// The round's first error, which `weft status` shows (a full disk, above all, must
    /// not read as a missing chunk).
    first_error: Option<String>,
    /// Steps that failed on a full disk.
    disk_full: usize,
}

impl Tally {
    fn record(
        &mut self,
        shared: &Shared,
        folder: &FolderRecord,
        action: &Action,
        res: Result<bool, NodeError>,
    ) {
        let ok = match res {
            Ok(ok) => ok,
            Err(e) => {
                // A full disk fails every file after the first the same way: one line
                // for the first, a count at the end of the round.
                let full = matches!(e, NodeError::DiskFull { .. });
                self.disk_full += usize::from(full);
                if !full || self.disk_full == 1 {
                    warn!(folder = %folder.name, "{e}");
                }
                self.first_error.get_or_insert_with(|| e.to_string());
                false
            }
        };
        let Action::WriteFile {
            path,
            manifest,
            conflict_of,
            ..
        } = action
        else {
            self.skipped += usize::from(!ok);
            return;
        };
        if !ok {
            self.skipped += 1;
            if let Some(origin) = conflict_of {
                self.held.push(origin.clone());
            }
            return;
        }
        self.done_bytes += manifest.size;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.done_bytes as f64 / secs;
        set_status(shared, &folder.id, |s| {
            s.files_to_go = s.files_to_go.saturating_sub(1);
            s.bytes_to_go = s.bytes_to_go.saturating_sub(manifest.size);
            s.rate = rate;
        });
        match conflict_of {
            Some(orig) => {
                info!(folder = %folder.name, "conflict: {orig} changed on two devices; the other version is kept as {path}")
            }
            None => info!(folder = %folder.name, "received {path}"),
        }
    }
}

/// How soon a round that failed on a full disk is tried again (at most).
const DISK_FULL_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Files below this size may wait in an [`FsyncBatch`].
const BATCH_FILE_BELOW: u64 = 1 << 20;
/// Most files, and bytes, one [`FsyncBatch`] holds.
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 8 << 20;
/// Threads a batch's fsyncs run on.
const FSYNC_THREADS: usize = 4;

/// Small files assembled in their temporary files and waiting for fsync. One fsync
/// after another cost the receiver about half a millisecond a file here (most of a
/// many-small-files sync, waiting on the disk); run side by side, the file system
/// commits them together. Each file is still fsynced before it is renamed into place,
/// and renamed only if the disk still matches the index at that moment.
///
/// A full batch is not waited for: its fsyncs run on their threads while the worker
/// assembles the next batch, and it is renamed and indexed, in plan order, when that
/// next batch is full or anything else must happen first ([`FsyncBatch::flush`]). So
/// at most two batches are open at once, and the worker does not sit idle while the
/// disk commits.
#[derive(Default)]
struct FsyncBatch {
    files: Vec<(Action, Assembled)>,
    /// The batch before, whose fsyncs are running, and the content hashes it holds.
    syncing: Vec<FsyncPart>,
    syncing_hashes: Vec<Hash>,
}

/// Files of a batch with the outcome of their fsyncs, in plan order.
type Synced = Vec<((Action, Assembled), std::io::Result<()>)>;

/// One thread's share of a batch's fsyncs; `Done` when it ran on the worker itself.
enum FsyncPart {
    Running(std::thread::JoinHandle<Synced>, usize),
    Done(Synced),
}

fn fsync_all(part: Vec<(Action, Assembled)>) -> Synced {
    part.into_iter()
        .map(|(action, a)| {
            let synced = a.unsynced.as_ref().map_or(Ok(()), |f| f.sync_all());
            ((action, a), synced)
        })
        .collect()
}

impl FsyncBatch {
    fn push(&mut self, action: Action, a: Assembled) {
        self.files.push((action, a));
    }

    fn manifests(&self) -> impl Iterator<Item = &Manifest> {
        self.files.iter().filter_map(|(a, _)| match a {
            Action::WriteFile { manifest, .. } => Some(manifest),
            _ => None,
        })
    }

    /// Whether a file of this content waits here (in the temporary file named by it).
    fn holds(&self, hash: &Hash) -> bool {
        self.syncing_hashes.contains(hash) || self.manifests().any(|m| m.hash == *hash)
    }

    fn is_full(&self) -> bool {
        self.files.len() >= BATCH_FILES
            || self.manifests().map(|m| m.size).sum::<u64>() >= BATCH_BYTES
    }

    /// Finishes the batch before, then starts this one's fsyncs and returns at once.
    fn send_behind(&mut self, shared: &Shared, folder: &FolderRecord, tally: &mut Tally) {
        self.finish_syncing(shared, folder, tally);
        let mut files = std::mem::take(&mut self.files);
        if files.is_empty() {
            return;
        }
        self.syncing_hashes = files
            .iter()
            .filter_map(|(a, _)| match a {
                Action::WriteFile { manifest, .. } => Some(manifest.hash),
                _ => None,
            })
            .collect();
        let per_thread = files.len().div_ceil(FSYNC_THREADS);
        while !files.is_empty() {
            let rest = files.split_off(per_thread.min(files.len()));
            let part = std::mem::replace(&mut files, rest);
            let n = part.len();
            // The thread is started first and given its part after: if it cannot be
            // started, the part is still here and is fsynced on the worker instead.
            let (tx, rx) = std::sync::mpsc::channel::<Vec<(Action, Assembled)>>();
            let spawned = std::thread::Builder::new()
                .name("weft-fsync".into())
                .spawn(move || rx.recv().map(fsync_all).unwrap_or_default());
            match spawned {
                Ok(h) => match tx.send(part) {
                    Ok(()) => self.syncing.push(FsyncPart::Running(h, n)),
                    Err(std::sync::mpsc::SendError(part)) => {
                        self.syncing.push(FsyncPart::Done(fsync_all(part)))
                    }
                },
                Err(e) => {
                    warn!("cannot start an fsync thread ({e}); fsyncing on the worker");
                    self.syncing.push(FsyncPart::Done(fsync_all(part)));
                }
            }
        }
    }

    /// Fsyncs, renames and indexes everything waiting, in plan order.
    fn flush(&mut self, shared: &Shared, folder: &FolderRecord, tally: &mut Tally) {
        self.send_behind(shared, folder, tally);
        self.finish_syncing(shared, folder, tally);
    }

    /// Waits for the batch before's fsyncs, then renames and indexes each file in plan
    /// order; each directory a file was renamed into is fsynced once, after the batch.
    fn finish_syncing(&mut self, shared: &Shared, folder: &FolderRecord, tally: &mut Tally) {
        self.syncing_hashes.clear();
        let parts = std::mem::take(&mut self.syncing);
        if parts.is_empty() {
            return;
        }
        let mut renamed_into: Vec<Option<RelPath>> = Vec::new();
        // Each file is renamed into place in plan order; those that are then recorded
        // all go into one transaction, and count as done once it committed.
        let mut placed: Vec<(Action, Option<IndexRow>, IndexRow)> = Vec::new();
        for part in parts {
            let synced = match part {
                FsyncPart::Done(synced) => synced,
                FsyncPart::Running(h, n) => h.join().unwrap_or_else(|_| {
                    // Their temporary files stay; the next round assembles them again.
                    warn!("an fsync thread panicked; {n} files are left for the next round");
                    Vec::new()
                }),
            };
            for ((action, a), synced) in synced {
                let Action::WriteFile {
                    path,
                    version,
                    manifest,
                    conflict_of,
                } = &action
                else {
                    continue;
                };
                let res = match synced {
                    Ok(()) => place_file(
                        shared,
                        folder,
                        path,
                        *version,
                        manifest,
                        conflict_of.as_ref(),
                        a,
                    ),
                    Err(e) => {
                        let _ = std::fs::remove_file(&a.tmp);
                        Err(io_err(&a.tmp)(e))
                    }
                };
                if matches!(res, Ok(Placed::Copy | Placed::File { .. })) {
                    let dir = path.parent();
                    if !renamed_into.contains(&dir) {
                        renamed_into.push(dir);
                    }
                }
                match res {
                    Ok(Placed::File { old, row }) => placed.push((action, old, row)),
                    Ok(Placed::Copy) => tally.record(shared, folder, &action, Ok(true)),
                    Ok(Placed::Skipped) => tally.record(shared, folder, &action, Ok(false)),
                    Err(e) => tally.record(shared, folder, &action, Err(e)),
                }
            }
        }
        let written: Vec<WrittenFile<'_>> = placed
            .iter()
            .filter_map(|(action, old, row)| match action {
                Action::WriteFile { path, manifest, .. } => Some(WrittenFile {
                    path,
                    old: old.as_ref(),
                    manifest,
                    row,
                }),
                _ => None,
            })
            .collect();
        let recorded = shared.store.record_written(&folder.id, &written);
        if let Err(e) = &recorded {
            // The files are in place; the next round's scan finds them.
            warn!(folder = %folder.name, "cannot index {} files just written: {e}", placed.len());
        }
        for (action, _, _) in placed {
            tally.record(shared, folder, &action, Ok(recorded.is_ok()));
        }
        let root = folder.root_path();
        for dir in &renamed_into {
            sync_dir(&root, dir.as_ref());
        }
    }
}

/// Partial files of earlier attempts: those of files this plan still writes are kept
/// (with how many of their leading chunks are intact), the rest removed.
fn keep_parts(
    store: &weft_store::Store,
    folder: &FolderRecord,
    plan: &[Action],
) -> Result<std::collections::HashMap<Hash, usize>, NodeError> {
    let root = folder.root_path();
    let dir = root.join(TEMP_DIR).join("tmp");
    let mut kept = std::collections::HashMap::new();
    let Ok(listing) = std::fs::read_dir(&dir) else {
        return Ok(kept);
    };
    let mut wanted = std::collections::HashMap::new();
    for a in plan {
        if let Action::WriteFile { manifest, .. } = a {
            wanted.insert(part_path(&root, manifest), manifest);
        }
    }
    let secret = *store.keys(folder).convergence_secret();
    for e in listing.flatten() {
        let path = e.path();
        match wanted.get(&path) {
            Some(m) => {
                let (n, _) = resumable(&secret, m, &path)?;
                kept.insert(m.hash, n);
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(kept)
}

/// The store's plan, minus what this device ignores (`.weftignore` holds on each side).
fn local_plan(shared: &Shared, folder: &FolderRecord) -> Result<Vec<Action>, NodeError> {
    let root = folder.root_path();
    let (ignore, _) = weft_store::scan::ignore_matcher(&root)?;
    let mut plan = shared.store.plan(folder)?;
    plan.retain(|a| match a {
        Action::WriteFile { path, .. } | Action::MakeDir { path, .. } => {
            let dir = matches!(a, Action::MakeDir { .. });
            !ignore
                .matched_path_or_any_parents(path.to_path(&root), dir)
                .is_ignore()
        }
        _ => true,
    });
    Ok(plan)
}

fn update_conflicts(shared: &Shared, folder: &FolderRecord) -> Result<(), NodeError> {
    let n = conflicts(shared, folder)?.len() as u64;
    set_status(shared, &folder.id, |s| s.conflicts = n);
    Ok(())
}

/// The conflict copies in a folder (indexed files with a conflict-copy name).
pub fn conflicts(shared: &Shared, folder: &FolderRecord) -> Result<Vec<String>, NodeError> {
    Ok(shared
        .store
        .index_rows(folder)?
        .into_keys()
        .filter(|p| p.file_name().windows(15).any(|w| w == b".sync-conflict-"))
        .map(|p| p.to_string())
        .collect())
}

/// Tells the peers about a scan's entries at each commit that holds some, so a long
/// scan's first files travel while it reads the rest (a peer that pulls finds them
/// committed). The scan runs on the folder worker's blocking thread.
struct NotifyAtCommits<'a> {
    folder: FolderId,
    cmds: &'a mpsc::Sender<Cmd>,
}

impl Progress for NotifyAtCommits<'_> {
    fn committed(&self) {
        let _ = self.cmds.blocking_send(Cmd::Notify {
            folder: self.folder,
            except: None,
        });
    }
}

fn scan_and_notify(
    shared: &Shared,
    folder: &FolderRecord,
    cmds: &mpsc::Sender<Cmd>,
) -> Result<(), NodeError> {
    let progress = NotifyAtCommits {
        folder: folder.id,
        cmds,
    };
    let s = shared.store.scan(folder, &progress)?;
    report_not_synced(shared, folder, s.warnings);
    if s.log_entries > 0 {
        info!(
            folder = %folder.name,
            "local changes: {} added, {} changed, {} deleted, {} moved",
            s.files_added, s.files_changed, s.files_deleted, s.files_moved
        );
    }
    Ok(())
}

/// Logs what a scan did not sync, each once (not again at every rescan while it stays
/// so), and keeps the first of them for `weft status`.
fn report_not_synced(shared: &Shared, folder: &FolderRecord, mut warnings: Vec<String>) {
    let hash = |w: &String| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        w.hash(&mut h);
        h.finish()
    };
    set_status(shared, &folder.id, |st| {
        let now: HashSet<u64> = warnings.iter().map(hash).collect();
        for w in warnings.iter().filter(|w| !st.logged.contains(&hash(w))) {
            warn!(folder = %folder.name, "{w}");
        }
        st.logged = now;
        st.not_synced_count = warnings.len() as u64;
        warnings.truncate(NOT_SYNCED_SHOWN);
        st.not_synced = warnings;
    });
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::io(path, source)
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

/// Whether the disk at `target` is what the index says (no unscanned local change).
/// A path that cannot even be looked at (too long, permission) is an error, not a
/// silent "changed here".
fn disk_matches(target: &Path, row: Option<&IndexRow>) -> Result<bool, NodeError> {
    Ok(match (std::fs::symlink_metadata(target), row) {
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => true,
        (Err(e), _) => return Err(io_err(target)(e)),
        (Ok(_), None) => false,
        (Ok(m), Some(r)) => match r.kind {
            IndexKind::File => {
                m.is_file() && m.len() == r.size && mtime_ns(&m) == r.mtime_ns && m.ino() == r.inode
            }
            IndexKind::Dir => m.is_dir(),
        },
    })
}

/// Refuses a path whose existing parents are not plain directories inside the root.
fn check_parents(root: &Path, path: &RelPath) -> Result<(), NodeError> {
    let mut p = path.parent();
    let mut chain = Vec::new();
    while let Some(q) = p {
        p = q.parent();
        chain.push(q);
    }
    for dir in chain.iter().rev() {
        match std::fs::symlink_metadata(dir.to_path(root)) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(NodeError::UnsafePath(path.to_string())),
            Err(_) => break, // will be created as a real directory
        }
    }
    Ok(())
}

fn make_dir(
    shared: &Shared,
    folder: &FolderRecord,
    path: &RelPath,
    version: VersionId,
) -> Result<bool, NodeError> {
    let root = folder.root_path();
    check_parents(&root, path)?;
    let target = path.to_path(&root);
    let row = shared.store.index_row(&folder.id, path)?;
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            if !disk_matches(&target, row.as_ref())? {
                return Ok(false);
            }
            std::fs::remove_file(&target).map_err(io_err(&target))?;
            std::fs::create_dir_all(&target).map_err(io_err(&target))?;
        }
        Err(_) => std::fs::create_dir_all(&target).map_err(io_err(&target))?,
    }
    let m = std::fs::symlink_metadata(&target).map_err(io_err(&target))?;
    shared.store.set_index_row(
        &folder.id,
        path,
        Some(&IndexRow {
            kind: IndexKind::Dir,
            size: 0,
            mtime_ns: mtime_ns(&m),
            inode: m.ino(),
            dev: m.dev(),
            executable: false,
            hash: Hash::ZERO,
            version,
        }),
    )?;
    Ok(true)
}

fn adopt(
    shared: &Shared,
    folder: &FolderRecord,
    path: &RelPath,
    version: VersionId,
    executable: Option<bool>,
) -> Result<bool, NodeError> {
    let Some(mut row) = shared.store.index_row(&folder.id, path)? else {
        return Ok(true);
    };
    let target = path.to_path(&folder.root_path());
    if let Some(exec) = executable
        && exec != row.executable
    {
        if !disk_matches(&target, Some(&row))? {
            return Ok(false);
        }
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::symlink_metadata(&target).map_err(io_err(&target))?;
        let mut mode = m.permissions().mode();
        if exec {
            mode |= (mode & 0o444) >> 2;
        } else {
            mode &= !0o111;
        }
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(&target))?;
        row.executable = exec;
    }
    row.version = version;
    shared.store.set_index_row(&folder.id, path, Some(&row))?;
    Ok(true)
}

fn remove(
    shared: &Shared,
    folder: &FolderRecord,
    path: &RelPath,
    kind: IndexKind,
) -> Result<bool, NodeError> {
    let target = path.to_path(&folder.root_path());
    let row = shared.store.index_row(&folder.id, path)?;
    match kind {
        IndexKind::File => {
            if !disk_matches(&target, row.as_ref())? {
                return Ok(false); // changed here: the scan records it, and the edit wins
            }
            match std::fs::remove_file(&target) {
                Ok(()) => info!(folder = %folder.name, "deleted {path}"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&target)(e)),
            }
            shared
                .store
                .replace_locs(&folder.id, path, row.as_ref(), None)?;
        }
        IndexKind::Dir => match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Not empty: something here that the deleting device did not know stays.
            Err(_) => return Ok(true),
        },
    }
    shared.store.set_index_row(&folder.id, path, None)?;
    Ok(true)
}

enum Source {
    /// The same chunk earlier in this file.
    Earlier,
    Cache,
    Fetch(ChunkReply),
}

/// Writes a remote file version: assembled, fsynced, renamed into place, indexed.
/// `Ok(false)` when a local change (or a later one) is in the way.
#[allow(clippy::too_many_arguments)]
fn write_file(
    shared: &Shared,
    folder: &FolderRecord,
    path: &RelPath,
    version: VersionId,
    manifest: &Manifest,
    conflict_of: Option<&RelPath>,
    cmds: &mpsc::Sender<Cmd>,
    prefetch: &mut Prefetch,
) -> Result<bool, NodeError> {
    let Some(a) = prepare_file(shared, folder, path, manifest, cmds, prefetch, true)? else {
        return Ok(false);
    };
    let placed = place_file(shared, folder, path, version, manifest, conflict_of, a)?;
    if let Placed::File { old, row } = &placed {
        shared.store.record_written(
            &folder.id,
            &[WrittenFile {
                path,
                old: old.as_ref(),
                manifest,
                row,
            }],
        )?;
    }
    let done = !matches!(placed, Placed::Skipped);
    if done {
        sync_dir(&folder.root_path(), path.parent().as_ref());
    }
    Ok(done)
}

/// Makes renames into the directory `dir` of the folder at `root` (the root itself
/// if `None`) durable: without it a power loss could keep the index row (committed
/// later) but lose the name, and the next scan would take the missing file for a
/// local delete. A failure is logged; the files are there.
fn sync_dir(root: &Path, dir: Option<&RelPath>) {
    let dir = dir.map_or_else(|| root.to_path_buf(), |d| d.to_path(root));
    if let Err(e) = std::fs::File::open(&dir).and_then(|d| d.sync_all()) {
        warn!("cannot fsync {}: {e}", dir.display());
    }
}

/// A file assembled in its temporary file, not yet renamed into place.
struct Assembled {
    tmp: PathBuf,
    replaces_dir: bool,
    /// The open temporary file when its fsync is still to come (see [`FsyncBatch`]).
    unsynced: Option<std::fs::File>,
}

/// The first half of [`write_file`]: checks that the disk still matches the index,
/// then assembles the content in the temporary file (fsynced if `sync`). `None` when
/// a local change is in the way.
fn prepare_file(
    shared: &Shared,
    folder: &FolderRecord,
    path: &RelPath,
    manifest: &Manifest,
    cmds: &mpsc::Sender<Cmd>,
    prefetch: &mut Prefetch,
    sync: bool,
) -> Result<Option<Assembled>, NodeError> {
    let store = &shared.store;
    let root = folder.root_path();
    check_parents(&root, path)?;
    let target = path.to_path(&root);
    let row = store.index_row(&folder.id, path)?;
    let replaces_dir = row.as_ref().is_some_and(|r| r.kind == IndexKind::Dir);
    if !replaces_dir && !disk_matches(&target, row.as_ref())? {
        return Ok(None); // a local change the next scan records; the merge decides
    }
    let tmp = part_path(&root, manifest);
    if let Some(dir) = tmp.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let secret = *store.keys(folder).convergence_secret();
    match assemble(shared, &secret, manifest, &tmp, cmds, prefetch, sync) {
        Ok(unsynced) => Ok(Some(Assembled {
            tmp,
            replaces_dir,
            unsynced,
        })),
        Err(e) => {
            // A transfer cut short keeps what it wrote: the next attempt (after a
            // restart too) goes on from there. Anything else starts over.
            let resumable = matches!(e, NodeError::ChunkUnavailable(_) | NodeError::Network(_))
                && std::fs::metadata(&tmp).is_ok_and(|m| m.len() > 0);
            if !resumable {
                let _ = std::fs::remove_file(&tmp);
            }
            Err(e)
        }
    }
}

/// What [`place_file`] did.
// Lives for a moment on the worker's stack or in one batch's list: boxing the rows
// would only add an allocation per file.
#[allow(clippy::large_enum_variant)]
enum Placed {
    /// Nothing: the disk changed meanwhile (the temporary file is removed).
    Skipped,
    /// A conflict copy is in place; the next scan records it.
    Copy,
    /// The file is in place; its index row and locations are still to be recorded.
    File {
        old: Option<IndexRow>,
        row: IndexRow,
    },
}

/// Renames an assembled file into place, last checking right before the rename that
/// nothing changed there meanwhile.
fn place_file(
    shared: &Shared,
    folder: &FolderRecord,
    path: &RelPath,
    version: VersionId,
    manifest: &Manifest,
    conflict_of: Option<&RelPath>,
    a: Assembled,
) -> Result<Placed, NodeError> {
    let store = &shared.store;
    let target = path.to_path(&folder.root_path());
    let tmp = a.tmp;
    let row = store.index_row(&folder.id, path)?;
    if a.replaces_dir {
        if std::fs::remove_dir(&target).is_err() && target.exists() {
            let _ = std::fs::remove_file(&tmp);
            return Ok(Placed::Skipped);
        }
    } else if !disk_matches(&target, row.as_ref())? {
        let _ = std::fs::remove_file(&tmp);
        return Ok(Placed::Skipped);
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    std::fs::rename(&tmp, &target).map_err(io_err(&target))?;
    if conflict_of.is_some() {
        return Ok(Placed::Copy);
    }
    let m = std::fs::symlink_metadata(&target).map_err(io_err(&target))?;
    Ok(Placed::File {
        old: row,
        row: IndexRow {
            kind: IndexKind::File,
            size: m.len(),
            mtime_ns: mtime_ns(&m),
            inode: m.ino(),
            dev: m.dev(),
            executable: manifest.executable,
            hash: manifest.hash,
            version,
        },
    })
}

/// Where the file of `manifest` is assembled in `root`'s folder: named by its content,
/// so an interrupted transfer finds its partial file again after a restart.
pub fn part_path(root: &Path, manifest: &Manifest) -> PathBuf {
    root.join(TEMP_DIR)
        .join("tmp")
        .join(format!("{}.part", &manifest.hash.to_hex()[..32]))
}

/// How much of a partial file can be kept: the number of leading chunks of `manifest`
/// it holds intact (each checked against its key, which the folder's convergence
/// secret derives from the plaintext), and their bytes. A missing file keeps nothing.
/// Reads one chunk at a time.
pub fn resumable(
    secret: &[u8; 32],
    manifest: &Manifest,
    part: &Path,
) -> Result<(usize, u64), NodeError> {
    use std::io::Read;
    let file = match std::fs::File::open(part) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io_err(part)(e)),
    };
    let mut r = std::io::BufReader::with_capacity(256 << 10, file);
    let mut buf = Vec::new();
    let (mut n, mut bytes) = (0usize, 0u64);
    for c in &manifest.chunks {
        buf.resize(c.len as usize, 0);
        match r.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io_err(part)(e)),
        }
        if weft_crypto::ChunkKey::derive(secret, &buf) != c.key {
            break;
        }
        n += 1;
        bytes += u64::from(c.len);
    }
    Ok((n, bytes))
}

/// Writes a manifest's content to `tmp`: first what an earlier, interrupted attempt
/// left there (checked), then chunks from the cache or from peers, each checked
/// against its id and opened with its key; then mode, mtime and, if `sync`, fsync.
/// Without `sync` the open file comes back for its caller to fsync.
fn assemble(
    shared: &Shared,
    secret: &[u8; 32],
    manifest: &Manifest,
    tmp: &Path,
    cmds: &mpsc::Sender<Cmd>,
    prefetch: &mut Prefetch,
    sync: bool,
) -> Result<Option<std::fs::File>, NodeError> {
    let store = &shared.store;
    let chunks = &manifest.chunks;
    // What an earlier attempt left: checked at the start of the round (the first
    // attempt of this round takes that count), or now.
    let (kept, kept_bytes) = match prefetch.kept.remove(&manifest.hash) {
        Some(n) => (n, chunks[..n].iter().map(|c| u64::from(c.len)).sum()),
        None => resumable(secret, manifest, tmp)?,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(tmp)
        .map_err(io_err(tmp))?;
    f.set_len(kept_bytes).map_err(io_err(tmp))?;
    if manifest.size >= PREALLOCATE_FROM as u64 {
        // The blocks are reserved in one go rather than page by page as data
        // arrives (a third of the cost of writing a large file here). The size stays
        // what was written, so a partial file still says how far it got. Advice: a
        // file system without it just allocates as it goes.
        let _ = rustix::fs::fallocate(
            &f,
            rustix::fs::FallocateFlags::KEEP_SIZE,
            kept_bytes,
            manifest.size.saturating_sub(kept_bytes),
        );
    }
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(kept_bytes))
        .map_err(io_err(tmp))?;
    if kept > 0 {
        info!(
            "resuming {}: {kept} of {} chunks already here",
            tmp.display(),
            chunks.len()
        );
    }
    let mut queue: VecDeque<(usize, Source)> = VecDeque::new();
    let mut next = kept;
    // Where each chunk requested or written so far sits in the file (known once it is
    // written): a chunk that recurs in the file (zeroed regions) is copied, not fetched.
    let mut at: std::collections::HashMap<ChunkId, Option<u64>> = std::collections::HashMap::new();
    let mut offset = 0u64;
    for c in &chunks[..kept] {
        at.entry(c.id).or_insert(Some(offset));
        offset += u64::from(c.len);
    }
    let request = |i: usize,
                   at: &mut std::collections::HashMap<ChunkId, Option<u64>>,
                   prefetch: &mut Prefetch|
     -> Result<Source, NodeError> {
        let c = &chunks[i];
        if at.contains_key(&c.id) {
            return Ok(Source::Earlier);
        }
        at.insert(c.id, None);
        if let Some(rx) = prefetch.take(&c.id) {
            return Ok(Source::Fetch(rx));
        }
        if store.has_chunk(&c.id)? {
            return Ok(Source::Cache);
        }
        Ok(Source::Fetch(fetch(cmds, c)?))
    };
    // Bytes of the chunks in `queue`.
    let mut ahead = 0u64;
    let room = |queue: &VecDeque<_>, ahead: u64| queue.len() < WINDOW && ahead < WINDOW_BYTES;
    while next < chunks.len() && room(&queue, ahead) {
        queue.push_back((next, request(next, &mut at, prefetch)?));
        ahead += u64::from(chunks[next].len);
        next += 1;
    }
    let mut writeback = Writeback::default();
    while let Some((i, src)) = queue.pop_front() {
        let c = &chunks[i];
        let pt = match src {
            Source::Earlier => {
                use std::os::unix::fs::FileExt;
                let Some(Some(pos)) = at.get(&c.id).copied() else {
                    return Err(NodeError::ChunkUnavailable(c.id.to_string()));
                };
                let mut buf = vec![0u8; c.len as usize];
                f.read_exact_at(&mut buf, pos).map_err(io_err(tmp))?;
                buf
            }
            Source::Cache => match store.chunk(&c.id)? {
                Some(ct) => SealedChunk::open(&c.id, &c.key, c.len, &ct)
                    .map_err(weft_store::StoreError::from)?,
                // Listed here but gone (the file changed since): ask the peers.
                None => match fetch(cmds, c)?.blocking_recv() {
                    Ok(Some(pt)) => pt,
                    _ => return Err(NodeError::ChunkUnavailable(c.id.to_string())),
                },
            },
            Source::Fetch(rx) => match rx.blocking_recv() {
                Ok(Some(pt)) => pt,
                _ => return Err(NodeError::ChunkUnavailable(c.id.to_string())),
            },
        };
        f.write_all(&pt).map_err(io_err(tmp))?;
        at.entry(c.id).or_insert(None).get_or_insert(offset);
        offset += pt.len() as u64;
        writeback.wrote(&f, pt.len());
        ahead = ahead.saturating_sub(u64::from(c.len));
        while next < chunks.len() && room(&queue, ahead) {
            queue.push_back((next, request(next, &mut at, prefetch)?));
            ahead += u64::from(chunks[next].len);
            next += 1;
        }
        prefetch.pump(shared, cmds)?;
    }
    if Manifest::content_hash(chunks) != manifest.hash {
        return Err(NodeError::Store(weft_store::StoreError::Decode {
            what: "manifest",
            reason: "content hash does not match its chunks".into(),
        }));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = if manifest.executable { 0o755 } else { 0o644 };
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_err(tmp))?;
    let mtime = if manifest.mtime_ns >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(manifest.mtime_ns as u64)
    } else {
        SystemTime::UNIX_EPOCH
    };
    f.set_modified(mtime).map_err(io_err(tmp))?;
    let large = writeback.started();
    drop(writeback);
    if !sync {
        return Ok(Some(f));
    }
    f.sync_all().map_err(io_err(tmp))?;
    if large {
        drop_cached(&f, 0);
    }
    Ok(None)
}

/// Starts writing a large file's data to disk while it is still being received: a
/// helper thread flushes what was written every [`WRITEBACK_EVERY`] bytes, so the
/// final fsync (which must wait for all of it) finds little left, and the disk works
/// while the network does. Without it, the kernel starts writeback only when dirty
/// pages reach a share of RAM, and a 1 GiB file's fsync stalls the transfer.
///
/// What is flushed is then dropped from the page cache: a large incoming file would
/// otherwise fill memory the node has no use for, and every page of it would be
/// memory touched for the first time (slow on virtual machines whose free memory
/// goes back to the host); dropped pages are reused for the rest of the file.
#[derive(Default)]
struct Writeback {
    since: usize,
    written: u64,
    kick: Option<std::sync::mpsc::SyncSender<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Files from this size on get their blocks reserved before they are written.
const PREALLOCATE_FROM: usize = 1 << 20;

/// How much is written between two background flushes.
const WRITEBACK_EVERY: usize = 64 << 20;

impl Writeback {
    /// `n` more bytes were written to `file`.
    fn wrote(&mut self, file: &std::fs::File, n: usize) {
        self.since += n;
        self.written += n as u64;
        if self.since < WRITEBACK_EVERY {
            return;
        }
        self.since = 0;
        // The helper starts with the first flush: small files never need one.
        if self.thread.is_none()
            && let Ok(clone) = file.try_clone()
        {
            let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(1);
            self.thread = std::thread::Builder::new()
                .name("weft-writeback".into())
                .spawn(move || {
                    for upto in rx.iter() {
                        // A failure shows again in the final fsync, which is checked.
                        if clone.sync_data().is_ok() {
                            drop_cached(&clone, upto);
                        }
                    }
                })
                .ok();
            self.kick = self.thread.is_some().then_some(tx);
        }
        if let Some(k) = &self.kick {
            // Busy flushing already: the next kick will do.
            let _ = k.try_send(self.written);
        }
    }

    /// Whether a helper flushed part of the file (it is a large one).
    fn started(&self) -> bool {
        self.thread.is_some()
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.kick = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Drops the first `len` bytes of `file` (all of it if 0) from the page cache; only
/// pages already on disk go. Advice: a failure changes nothing but memory use.
fn drop_cached(file: &std::fs::File, len: u64) {
    let _ = rustix::fs::fadvise(
        file,
        0,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
}

/// Asks the swarm task for one chunk, opened with its key on arrival: the answer is
/// its plaintext.
fn fetch(cmds: &mpsc::Sender<Cmd>, c: &ChunkRef) -> Result<ChunkReply, NodeError> {
    let (tx, rx) = oneshot::channel();
    cmds.blocking_send(Cmd::FetchChunk {
        id: c.id,
        open: Some((c.key, c.len)),
        reply: tx,
    })
    .map_err(|_| NodeError::Network("node is shutting down".into()))?;
    Ok(rx)
}

/// Where the plaintext of a fetched chunk arrives (`None`: no peer had it).
type ChunkReply = oneshot::Receiver<Option<Vec<u8>>>;

/// Chunk fetches started ahead, across the files of a round, so that many small files
/// do not each wait a round trip. At most [`PREFETCH_BYTES`] of chunks are in flight
/// (bounded memory, whatever the chunk sizes).
pub(crate) struct Prefetch {
    ahead: VecDeque<ChunkRef>,
    /// Started fetches: the plaintext's receiver and its length.
    inflight: std::collections::HashMap<ChunkId, (ChunkReply, u32)>,
    /// Plaintext bytes of the chunks in `inflight`.
    inflight_bytes: usize,
    claimed: std::collections::HashSet<ChunkId>,
    /// Intact leading chunks of the partial files found at the start of the round, by
    /// manifest hash (taken by the first attempt at each file).
    kept: std::collections::HashMap<Hash, usize>,
}

/// Bytes of chunks fetched ahead of the file being written: 128 chunks of the average
/// size, enough to keep [`crate::node::CHUNK_REQUESTS_PER_PEER`] full batches in
/// flight to a peer with more queued behind them (64 chunks with 4 requests per peer
/// took a tenth longer to sync the large-file set on loopback). Counted in bytes, not
/// chunks, so that large chunks do not multiply the memory it holds.
pub const PREFETCH_BYTES: usize = 8 << 20;

impl Prefetch {
    /// Fetches for the chunks the plan's files need that neither the cache nor a
    /// partial file of an earlier attempt holds (`kept`: leading chunks per manifest).
    fn new(
        shared: &Shared,
        plan: &[Action],
        kept: std::collections::HashMap<Hash, usize>,
    ) -> Result<Prefetch, NodeError> {
        let mut seen = std::collections::HashSet::new();
        let mut ahead = VecDeque::new();
        for a in plan {
            if let Action::WriteFile { manifest, .. } = a {
                let skip = kept.get(&manifest.hash).copied().unwrap_or(0);
                for c in manifest.chunks.iter().skip(skip) {
                    if seen.insert(c.id) && !shared.store.has_chunk(&c.id)? {
                        ahead.push_back(*c);
                    }
                }
            }
        }
        Ok(Prefetch {
            ahead,
            inflight: std::collections::HashMap::new(),
            inflight_bytes: 0,
            claimed: std::collections::HashSet::new(),
            kept,
        })
    }

    /// The fetch of `id` if one was started (or will not be: it is claimed now).
    fn take(&mut self, id: &ChunkId) -> Option<ChunkReply> {
        self.claimed.insert(*id);
        let (rx, len) = self.inflight.remove(id)?;
        self.inflight_bytes -= len as usize;
        Some(rx)
    }

    /// Starts fetches until [`PREFETCH_BYTES`] are in flight.
    fn pump(&mut self, shared: &Shared, cmds: &mpsc::Sender<Cmd>) -> Result<(), NodeError> {
        while self.inflight_bytes < PREFETCH_BYTES {
            let Some(c) = self.ahead.pop_front() else {
                break;
            };
            if !self.claimed.contains(&c.id) && !shared.store.has_chunk(&c.id)? {
                self.inflight.insert(c.id, (fetch(cmds, &c)?, c.len));
                self.inflight_bytes += c.len as usize;
            }
        }
        Ok(())
    }
}
