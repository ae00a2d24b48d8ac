//! The file watcher: filesystem events become folder kicks.
//!
//! Events are not interpreted: any event under a folder (outside weft's own `.weft/`)
//! kicks that folder's worker, which debounces, then scans. The scan compares the whole
//! folder with the index in milliseconds when little changed, so a missed or coalesced
//! event costs nothing, and the periodic rescan catches what the watcher never saw.
use crate::NodeError;
use crate::apply::FolderKick;
use notify::{RecursiveMode, Watcher};
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
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        // Opening or reading a file (weft's own scans do) changes nothing.
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
    })
    .map_err(|e| NodeError::Watch(e.to_string()))?;
    for (root, kick) in &folders {
        watch_one(&mut w, root, kick);
    }
    Ok(Watch {
        watcher: w,
        targets,
    })
}
