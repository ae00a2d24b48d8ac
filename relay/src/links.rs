//! Share links at the relay: what it keeps of each link and the checks it makes
//! before serving one (the HTTP side is `web.rs`; the format is `weft_crypto::link`).
//!
//! Goals: the relay enforces expiry, revocation, a download limit and the access
//! token (a password, when the link has one) without holding any key: it keeps the
//! sealed record as uploaded, the hash of the access token, and the clear list of
//! chunk ids the link may read, so a link serves only its own chunks and only while
//! it is valid. Only the person who created a link may revoke it, and a link dies
//! with its creator's membership of the folder (a removed member's links stop
//! working, as on Dropbox). Everything is
//! bounded: records ([`MAX_RECORD_LEN`]), chunks per link ([`MAX_LINK_CHUNKS`]),
//! links per person ([`MAX_LINKS_PER_PERSON`]).
//!
//! A download is counted when the record is fetched (what `weft get` and the page do
//! first); chunk requests are checked for expiry, revocation and the access token but
//! not counted, so the download that reaches the limit can still fetch its chunks
//! (whoever holds the record holds its chunk keys anyway).
//!
//! Not enforced here: what a link costs. Its chunks are the folder's own, already
//! charged to the folder's owner; the record is small and bounded.
use crate::storage::{
    BLOBS, DEVICES, FOLDER_CHUNKS, MEMBERS, RelayError, RelayStore, chunk_bytes, corrupt, key2,
    now_ms, person_bytes, person_in, role_in, scan_prefix, u64_value,
};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use weft_crypto::link::{MAX_LINK_CHUNKS, MAX_RECORD_LEN, access_hash};
use weft_crypto::{ChunkId, DeviceId, FolderId, PersonId};

/// `token (16) → LinkRow` (postcard).
pub(crate) const LINKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("links-1");
/// `token (16) ‖ chunk (32) → ()`: the chunks a link may read.
pub(crate) const LINK_CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("link-chunks-1");
/// `person (32) ‖ token (16) → ()`: each person's links.
pub(crate) const PERSON_LINKS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("person-links-1");

/// Most usable links one person may have at this relay. A revoked link stops counting at
/// once; an expired, used-up or orphaned one (its creator left the folder) when the
/// limit is reached.
pub const MAX_LINKS_PER_PERSON: usize = 1000;

/// One link as the relay keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LinkRow {
    owner: PersonId,
    folder: FolderId,
    created_ms: u64,
    expires_ms: Option<u64>,
    max_downloads: Option<u64>,
    downloads: u64,
    revoked: bool,
    access_hash: [u8; 32],
    record: Vec<u8>,
}

/// What a device asks for when it creates a link.
#[derive(Clone, Debug)]
pub struct NewLink {
    /// The token.
    pub token: [u8; 16],
    /// The folder whose chunks it reads.
    pub folder: FolderId,
    /// The sealed record.
    pub record: Vec<u8>,
    /// The chunks it may read.
    pub chunks: Vec<ChunkId>,
    /// BLAKE3 of the access token.
    pub access_hash: [u8; 32],
    /// Expiry, Unix ms.
    pub expires_ms: Option<u64>,
    /// Download limit.
    pub max_downloads: Option<u64>,
}

/// Why a link cannot be served. Each maps to an HTTP status and a page.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No such link.
    #[error("there is no such link")]
    Unknown,
    /// Past its expiry.
    #[error("this link has expired")]
    Expired,
    /// Revoked by its creator.
    #[error("this link was revoked")]
    Revoked,
    /// Its download limit is reached.
    #[error("this link has reached its download limit")]
    LimitReached,
    /// Wrong access token: a wrong password (or a wrong key).
    #[error("wrong password")]
    WrongPassword,
    /// A chunk that is not one of the link's, or not stored.
    #[error("no such chunk in this link")]
    NoChunk,
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] RelayError),
}

impl LinkError {
    /// The HTTP status code for it.
    pub fn status(&self) -> u16 {
        match self {
            LinkError::Unknown | LinkError::NoChunk => 404,
            LinkError::Expired | LinkError::Revoked | LinkError::LimitReached => 410,
            LinkError::WrongPassword => 403,
            LinkError::Storage(_) => 500,
        }
    }
}

impl From<redb::Error> for LinkError {
    fn from(e: redb::Error) -> Self {
        LinkError::Storage(e.into())
    }
}

macro_rules! link_db_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for LinkError {
            fn from(e: $t) -> Self {
                LinkError::Storage(e.into())
            }
        }
    )*};
}
link_db_error_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl LinkRow {
    fn decode(b: &[u8]) -> Result<LinkRow, RelayError> {
        postcard::from_bytes(b).map_err(|_| corrupt("link record"))
    }

    fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Why the link cannot be used now, if it cannot.
    fn check_live(&self, now: u64) -> Result<(), LinkError> {
        if self.revoked {
            return Err(LinkError::Revoked);
        }
        if self.expires_ms.is_some_and(|e| now >= e) {
            return Err(LinkError::Expired);
        }
        Ok(())
    }

    /// A link lives only as long as its creator's person is a member of its folder: a
    /// person removed from a shared folder no longer hands out its files (as if each
    /// of their links had been revoked).
    fn check_creator<T: ReadableTable<&'static [u8], &'static [u8]>>(
        &self,
        members: &T,
    ) -> Result<(), LinkError> {
        match role_in(members, &self.folder, &self.owner)? {
            Some(_) => Ok(()),
            None => Err(LinkError::Revoked),
        }
    }

    /// Whether the link could still serve a download.
    fn usable<T: ReadableTable<&'static [u8], &'static [u8]>>(
        &self,
        now: u64,
        members: &T,
    ) -> bool {
        self.check_live(now).is_ok() && self.check_creator(members).is_ok() && !self.used_up()
    }

    /// Whether its download limit is reached.
    fn used_up(&self) -> bool {
        self.max_downloads.is_some_and(|max| self.downloads >= max)
    }

    fn check_access(&self, access: Option<&[u8; 32]>) -> Result<(), LinkError> {
        match access {
            Some(a) if constant_eq(&access_hash(a), &self.access_hash) => Ok(()),
            _ => Err(LinkError::WrongPassword),
        }
    }
}

/// How many links count against `person`'s limit.
fn person_link_count<T: ReadableTable<&'static [u8], &'static [u8]>>(
    by_person: &T,
    person: &PersonId,
) -> Result<usize, RelayError> {
    let mut count = 0usize;
    scan_prefix(by_person, person_bytes(person), |_, _| {
        count += 1;
        Ok(true)
    })?;
    Ok(count)
}

/// Lets a link that can no longer serve anything go: it stops counting against its
/// person's limit and loses its chunk grants and sealed record. Its row (when there is
/// one) stays, so the page still says why the link does not work.
fn release(
    links: &mut redb::Table<&[u8], &[u8]>,
    by_person: &mut redb::Table<&[u8], &[u8]>,
    link_chunks: &mut redb::Table<&[u8], &[u8]>,
    person: &PersonId,
    token: &[u8; 16],
    row: Option<LinkRow>,
) -> Result<(), RelayError> {
    by_person.remove(key2(person_bytes(person), token).as_slice())?;
    let mut grants = Vec::new();
    scan_prefix(&*link_chunks, token, |k, _| {
        grants.push(k.to_vec());
        Ok(true)
    })?;
    for k in grants {
        link_chunks.remove(k.as_slice())?;
    }
    if let Some(mut row) = row {
        row.record = Vec::new();
        // Expired and used-up stay so for ever; anything else (a creator who left the
        // folder might come back) is revoked, so the emptied row never serves again.
        if row.check_live(now_ms()).is_ok() && !row.used_up() {
            row.revoked = true;
        }
        links.insert(token.as_slice(), row.encode().as_slice())?;
    }
    Ok(())
}

fn constant_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// What the page learns before asking for a password: whether the link is usable.
#[derive(Clone, Debug, Serialize)]
pub struct LinkInfo {
    /// Always true here (an unusable link is an error).
    pub ok: bool,
}

impl RelayStore {
    /// Creates a link for `creator`'s person: the creator must be registered and a
    /// member of the folder, every chunk must be stored in that folder, and the
    /// person must have fewer than [`MAX_LINKS_PER_PERSON`] links.
    pub fn create_link(&self, creator: &DeviceId, link: NewLink) -> Result<(), RelayError> {
        if link.record.len() > MAX_RECORD_LEN {
            return Err(RelayError::TooLarge(format!(
                "a link record of {} bytes (at most {MAX_RECORD_LEN})",
                link.record.len()
            )));
        }
        if link.chunks.len() > MAX_LINK_CHUNKS {
            return Err(RelayError::TooLarge(format!(
                "a link of {} chunks (at most {MAX_LINK_CHUNKS})",
                link.chunks.len()
            )));
        }
        let not_allowed = |why: String| RelayError::NotAllowed {
            folder: link.folder.to_string(),
            why,
        };
        let txn = self.db.begin_write()?;
        {
            let Some(person) = person_in(&txn.open_table(DEVICES)?, creator)? else {
                return Err(RelayError::UnknownDevice(creator.to_string()));
            };
            if role_in(&txn.open_table(MEMBERS)?, &link.folder, &person)?.is_none() {
                return Err(not_allowed(
                    "this device's person is not a member of the folder".into(),
                ));
            }
            let folder_chunks = txn.open_table(FOLDER_CHUNKS)?;
            for c in &link.chunks {
                if folder_chunks
                    .get(key2(&link.folder.0, chunk_bytes(c)).as_slice())?
                    .is_none()
                {
                    return Err(not_allowed(format!(
                        "chunk {c} of the link is not stored in the folder (upload it first)"
                    )));
                }
            }
            let mut links = txn.open_table(LINKS)?;
            if links.get(link.token.as_slice())?.is_some() {
                return Err(not_allowed("a link with this token exists".into()));
            }
            let mut by_person = txn.open_table(PERSON_LINKS)?;
            let mut lc = txn.open_table(LINK_CHUNKS)?;
            let mut count = person_link_count(&by_person, &person)?;
            if count >= MAX_LINKS_PER_PERSON {
                // Expired, used-up and orphaned links stop counting once the limit is
                // reached (revoked ones stopped when they were revoked).
                let members = txn.open_table(MEMBERS)?;
                let now = now_ms();
                let mut dead = Vec::new();
                scan_prefix(&by_person, person_bytes(&person), |k, _| {
                    let Some(token) = k.get(32..).and_then(|t| <[u8; 16]>::try_from(t).ok()) else {
                        return Err(corrupt("person's link key"));
                    };
                    let row = links
                        .get(token.as_slice())?
                        .map(|v| LinkRow::decode(v.value()))
                        .transpose()?;
                    if row.as_ref().is_none_or(|r| !r.usable(now, &members)) {
                        dead.push((token, row));
                    }
                    Ok(true)
                })?;
                count -= dead.len();
                for (token, row) in dead {
                    release(&mut links, &mut by_person, &mut lc, &person, &token, row)?;
                }
            }
            if count >= MAX_LINKS_PER_PERSON {
                return Err(RelayError::TooLarge(format!(
                    "this person has {MAX_LINKS_PER_PERSON} usable links at this relay already (revoke some)"
                )));
            }
            let row = LinkRow {
                owner: person,
                folder: link.folder,
                created_ms: now_ms(),
                expires_ms: link.expires_ms,
                max_downloads: link.max_downloads,
                downloads: 0,
                revoked: false,
                access_hash: link.access_hash,
                record: link.record,
            };
            links.insert(link.token.as_slice(), row.encode().as_slice())?;
            by_person.insert(
                key2(person_bytes(&person), &link.token).as_slice(),
                [].as_slice(),
            )?;
            for c in &link.chunks {
                lc.insert(key2(&link.token, chunk_bytes(c)).as_slice(), [].as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Revokes a link; only a device of the person who created it may.
    pub fn revoke_link(&self, device: &DeviceId, token: &[u8; 16]) -> Result<(), RelayError> {
        let txn = self.db.begin_write()?;
        {
            let person = person_in(&txn.open_table(DEVICES)?, device)?
                .ok_or_else(|| RelayError::UnknownDevice(device.to_string()))?;
            let mut links = txn.open_table(LINKS)?;
            let row = links
                .get(token.as_slice())?
                .map(|v| LinkRow::decode(v.value()))
                .transpose()?;
            let Some(mut row) = row else {
                return Err(RelayError::NotAllowed {
                    folder: "-".into(),
                    why: "no such link at this relay".into(),
                });
            };
            if row.owner != person {
                return Err(RelayError::NotAllowed {
                    folder: row.folder.to_string(),
                    why: "only the person who created a link may revoke it".into(),
                });
            }
            row.revoked = true;
            release(
                &mut links,
                &mut txn.open_table(PERSON_LINKS)?,
                &mut txn.open_table(LINK_CHUNKS)?,
                &person,
                token,
                Some(row),
            )?;
        }
        txn.commit()?;
        Ok(())
    }

    /// A link that can be used now: known, not revoked or expired, and its creator
    /// still a member of its folder (see [`LinkRow::check_creator`]).
    fn live_row(&self, token: &[u8; 16]) -> Result<LinkRow, LinkError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(LINKS)?;
        let row = t.get(token.as_slice())?.ok_or(LinkError::Unknown)?;
        let row = LinkRow::decode(row.value())?;
        row.check_live(now_ms())?;
        row.check_creator(&r.open_table(MEMBERS)?)?;
        Ok(row)
    }

    /// Whether a link can be opened now (for the page): unknown, expired, revoked
    /// and used-up links are errors.
    pub fn link_status(&self, token: &[u8; 16]) -> Result<LinkInfo, LinkError> {
        let row = self.live_row(token)?;
        if row.used_up() {
            return Err(LinkError::LimitReached);
        }
        Ok(LinkInfo { ok: true })
    }

    /// The sealed record, for a client presenting the right access token; counts a
    /// download (refused once the limit is reached).
    pub fn link_record(
        &self,
        token: &[u8; 16],
        access: Option<&[u8; 32]>,
    ) -> Result<Vec<u8>, LinkError> {
        let txn = self.db.begin_write()?;
        let record = {
            let mut links = txn.open_table(LINKS)?;
            let mut row = match links.get(token.as_slice())? {
                Some(v) => LinkRow::decode(v.value())?,
                None => return Err(LinkError::Unknown),
            };
            row.check_live(now_ms())?;
            row.check_creator(&txn.open_table(MEMBERS)?)?;
            if row.used_up() {
                return Err(LinkError::LimitReached);
            }
            row.check_access(access)?;
            row.downloads += 1;
            links.insert(token.as_slice(), row.encode().as_slice())?;
            row.record
        };
        txn.commit()?;
        Ok(record)
    }

    /// One of the link's chunks (checked against its id, as every blob the relay
    /// serves), for a client presenting the right access token.
    pub fn link_chunk(
        &self,
        token: &[u8; 16],
        access: Option<&[u8; 32]>,
        id: &ChunkId,
    ) -> Result<Vec<u8>, LinkError> {
        let row = self.live_row(token)?;
        row.check_access(access)?;
        let len = {
            let r = self.db.begin_read()?;
            if r.open_table(LINK_CHUNKS)?
                .get(key2(token, chunk_bytes(id)).as_slice())?
                .is_none()
            {
                return Err(LinkError::NoChunk);
            }
            match r.open_table(BLOBS)?.get(chunk_bytes(id).as_slice())? {
                Some(v) => u64_value("blob length", v.value())?,
                None => return Err(LinkError::NoChunk),
            }
        };
        self.read_blob(id, len)?.ok_or(LinkError::NoChunk)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    // The link checks are exercised end to end (real relay, real HTTP) in
    // tests/tests/links.rs; here only the pure parts.
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(LinkError::Unknown.status(), 404);
        assert_eq!(LinkError::Expired.status(), 410);
        assert_eq!(LinkError::Revoked.status(), 410);
        assert_eq!(LinkError::LimitReached.status(), 410);
        assert_eq!(LinkError::WrongPassword.status(), 403);
        assert!(constant_eq(&[1; 32], &[1; 32]));
        assert!(!constant_eq(&[1; 32], &[2; 32]));
    }
}
