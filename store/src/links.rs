//! The share links this device created (`links-1`), for `weft link list` and
//! `weft link revoke`: the relay keeps the authoritative state (expiry, downloads,
//! revocation); this is the creator's own list of what it handed out.
//!
//! The full URL, key included, is kept: this device already holds every key of its
//! folders, so the link key adds nothing an attacker of this disk would not have.
use crate::db;
use crate::error::Result;
use crate::store::Store;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

/// One link this device created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalLink {
    /// The token (base64url), as in the URL.
    pub token: String,
    /// The URL, with the key in its fragment.
    pub url: String,
    /// The shared path on disk, as given.
    pub path: String,
    /// The relay (peer id) that serves it.
    pub relay: String,
    /// When it was created, Unix ms.
    pub created_ms: u64,
    /// When it expires, Unix ms.
    pub expires_ms: Option<u64>,
    /// Its download limit.
    pub max_downloads: Option<u64>,
    /// Whether it has a password.
    pub password: bool,
    /// Whether it was revoked.
    pub revoked: bool,
}

impl Store {
    /// Records (or updates) a link.
    pub fn put_link(&self, l: &LocalLink) -> Result<()> {
        let txn = self.db().begin_write()?;
        txn.open_table(db::LINKS)?
            .insert(l.token.as_str(), db::enc(l).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Every link, oldest first.
    pub fn links(&self) -> Result<Vec<LocalLink>> {
        let r = self.db().begin_read()?;
        let t = r.open_table(db::LINKS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(db::dec::<LocalLink>("link", v.value())?);
        }
        out.sort_by_key(|l| l.created_ms);
        Ok(out)
    }

    /// A link by its token.
    pub fn link(&self, token: &str) -> Result<Option<LocalLink>> {
        let r = self.db().begin_read()?;
        let t = r.open_table(db::LINKS)?;
        t.get(token)?
            .map(|v| db::dec::<LocalLink>("link", v.value()))
            .transpose()
    }
}
