//! The file watcher: filesystem events become folder kicks.
//!
//! Events are not interpreted: any event under a folder (outside weft's own `.weft/`)
//! kicks that folder's worker, which debounces, then scans. The scan compares the whole
//! folder with the index in milliseconds when little changed, so a missed or coalesced
//! event costs nothing, and the periodic rescan catches what the watcher never saw.
//!
//! Only changes are asked for ([`EventKindMask::CORE`]: create, remove, modify, rename,
//! attributes): with opens and closes too, every read of a watched file — weft's own
//! scans, every chunk it serves from a file, any program reading the folder — woke the
//! watcher thread for an event that changes nothing (4–5% of a node's CPU while it
//! served ten thousand small files).
use crate::NodeError;
use crate::apply::FolderKick;
use notify::{EventKindMask, RecursiveMode, Watcher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use weft_store::scan::TEMP_DIR;

type Targets = Arc<Mutex<Vec<(PathBuf, FolderKick)>>>;

/// The watcher of every folder root; dropping it stops it.
pub struct Watch {
    watcher: notify::RecommendedWatcher,
    targets: Targets,
}

impl Watch {
    /// Watches one more folder (one accepted while the node runs).
    pub fn add(&mut self, root: PathBuf, kick: FolderKick) {
        watch_one(&mut self.watcher, &root, &kick);
        if let Ok(mut t) = self.targets.lock() {
            t.push((root, kick));
        }
    }
}

fn watch_one(w: &mut notify::RecommendedWatcher, root: &std::path::Path, kick: &FolderKick) {
    // A folder that cannot be watched (gone, or a directory vanishing under the
    // recursive walk) still syncs: its worker reports the error, and the periodic
    // rescan stands in for the watcher.
    if let Err(e) = w.watch(root, RecursiveMode::Recursive) {
        tracing::warn!(
            "cannot watch {}: {e}; relying on periodic rescans",
            root.display()
        );
        kick.kick();
        return;
    }
    // weft's own `.weft/` is ignored anyway; unwatched, a file being received there
    // does not raise an event for every chunk written.
    let _ = w.unwatch(&root.join(TEMP_DIR));
}

/// Watches every folder root.
pub fn watch(folders: Vec<(PathBuf, FolderKick)>) -> Result<Watch, NodeError> {
    let targets: Targets = Arc::new(Mutex::new(folders.clone()));
    let seen = targets.clone();
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        // Not asked for (see the module docs), and nothing a scan would find.
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        let Ok(targets) = seen.lock() else { return };
        for (root, kick) in targets.iter() {
            let own = root.join(TEMP_DIR);
            if ev
                .paths
                .iter()
                .any(|p| p.starts_with(root) && !p.starts_with(&own))
            {
                kick.kick();
            }
        }
    };
    let config = notify::Config::default().with_event_kinds(EventKindMask::CORE);
    let mut w = notify::RecommendedWatcher::new(handler, config)
        .map_err(|e| NodeError::Watch(e.to_string()))?;
    for (root, kick) in &folders {
        watch_one(&mut w, root, kick);
    }
    Ok(Watch {
        watcher: w,
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    // inotify(7) event bits.
    const IN_ACCESS: u32 = 0x1;
    const IN_MODIFY: u32 = 0x2;
    const IN_ATTRIB: u32 = 0x4;
    const IN_CLOSE_WRITE: u32 = 0x8;
    const IN_CLOSE_NOWRITE: u32 = 0x10;
    const IN_OPEN: u32 = 0x20;
    const IN_MOVED_FROM: u32 = 0x40;
    const IN_MOVED_TO: u32 = 0x80;
    const IN_CREATE: u32 = 0x100;
    const IN_DELETE: u32 = 0x200;

    /// The event mask of every inotify watch this process holds, by watched inode.
    fn inotify_masks() -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        for fd in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            for line in info.lines().filter(|l| l.starts_with("inotify ")) {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|f| f.strip_prefix(name))
                        .and_then(|v| u64::from_str_radix(v, 16).ok())
                };
                if let (Some(ino), Some(mask)) = (field("ino:"), field("mask:")) {
                    out.push((ino, mask as u32));
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn a_folder_is_watched_for_changes_and_not_for_reads() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.txt"), b"a").unwrap();
        let kick = FolderKick::new();
        let _w = watch(vec![(root.clone(), kick.clone())]).unwrap();
        let ours = [&root, &root.join("sub")].map(|p| std::fs::metadata(p).unwrap().ino());
        let masks: Vec<u32> = inotify_masks()
            .into_iter()
            .filter(|(ino, _)| ours.contains(ino))
            .map(|(_, m)| m)
            .collect();
        assert_eq!(masks.len(), 2, "the root and its subdirectory are watched");
        let wanted = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE;
        let reads = IN_ACCESS | IN_OPEN | IN_CLOSE_NOWRITE | IN_CLOSE_WRITE;
        for m in masks {
            assert_eq!(m & wanted, wanted, "mask {m:#x} misses a change");
            assert_eq!(m & reads, 0, "mask {m:#x} asks for opens or reads");
        }
        // A change still kicks the folder.
        std::fs::write(root.join("sub/b.txt"), b"b").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), kick.0.notified())
            .await
            .expect("a new file kicks the folder");
    }
}
