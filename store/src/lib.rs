//! weft's store: everything one device knows, on its own disk, with no network.
//!
//! Data flows disk → [`scan`] → chunks ([`chunker`], sealed by `weft_crypto`) into the
//! [`cache`] and entries into the [`log`] → [`merge`] into per-path heads → the index.
//! A remote entry (from the node crate) enters at [`store::accept_entry`] and follows
//! the same path from the log on.
//!
//! Layout:
//! - [`model`]: paths, version vectors, versions, manifests (domain types).
//! - [`log`]: the signed, hash-chained, encrypted entry format and its operations.
//! - [`merge`]: per-path heads, conflicts and conflict copies; pure.
//! - [`db`]: the redb schema.
//! - [`chunker`], [`cache`]: FastCDC cutting and the pack-file chunk cache.
//! - [`scan`]: disk against index.
//! - [`members`]: folder membership chains (roles, cuts, wrapped keyrings).
//! - [`history`]: versions, restore, retention and gc; [`verify`]: the store check.
//! - [`links`]: the share links this device created.
//! - [`home`]: key files, config and paths of a device's home directory.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod cache;
pub mod chunker;
pub mod contacts;
pub mod db;
mod error;
pub mod history;
pub mod home;
pub mod links;
pub mod locs;
pub mod log;
pub mod members;
pub mod merge;
pub mod model;
pub mod scan;
pub mod sharing;
pub mod store;
pub mod sync;
pub mod verify;

pub use error::{Result, StoreError};
pub use home::{Config, Home, Identity};
pub use store::Store;

/// What the crate's unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use crate::{Home, Store};
    use std::path::{Path, PathBuf};

    /// An initialized store under `dir` and an empty directory for a folder's root.
    pub(crate) fn scratch(dir: &Path) -> (Store, PathBuf) {
        let home = Home::new(dir.join("home"));
        home.init("t", 0).expect("init");
        let store = Store::open(&home).expect("open");
        let root = dir.join("f");
        std::fs::create_dir(&root).expect("root");
        (store, root)
    }
}
