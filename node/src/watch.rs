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
use weft_store::scan::TEMP_DIR;

/// Watches every folder root; dropping the returned watcher stops it.
pub fn watch(folders: Vec<(PathBuf, FolderKick)>) -> Result<notify::RecommendedWatcher, NodeError> {
    let targets = folders.clone();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        // Opening or reading a file (weft's own scans do) changes nothing.
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        for (root, kick) in &targets {
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
        // A folder that cannot be watched (gone, or a directory vanishing under the
        // recursive walk) still syncs: its worker reports the error, and the periodic
        // rescan stands in for the watcher.
        if let Err(e) = w.watch(root, RecursiveMode::Recursive) {
            tracing::warn!(
                "cannot watch {}: {e}; relying on periodic rescans",
                root.display()
            );
            kick.kick();
        }
    }
    Ok(w)
}
