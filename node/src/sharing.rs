//! Sharing commands (contacts, share, unshare, members, offers, accept, decline) as
//! one request type, answered by [`handle`] against a store.
//!
//! The same function serves the CLI directly when no node runs, and the node through
//! its control socket when one does (the node owns the database then), so the two
//! paths cannot drift apart. What travels to other persons (membership entries) is
//! sent by the uploader ([`crate::upload`]) on its next pass, which the node starts at
//! once after a change.
use crate::NodeError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use weft_store::Store;
use weft_store::contacts::Contact;
use weft_store::members::Role;
use weft_store::sharing::{MemberInfo, Offer};
use weft_store::store::now_ms;

/// A sharing command.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SharingRequest {
    /// Records a contact (the user compared the fingerprint).
    ContactAdd {
        /// Their person id.
        person: weft_crypto::PersonId,
        /// A name for them.
        name: String,
    },
    /// Lists contacts.
    Contacts,
    /// Shares a folder with a contact, or changes their role.
    Share {
        /// Folder name, id or absolute path.
        folder: String,
        /// Contact name or person id.
        with: String,
        /// viewer or editor.
        role: Role,
    },
    /// Removes a member and rotates the folder's secret.
    Unshare {
        /// Folder name, id or absolute path.
        folder: String,
        /// Contact name or person id.
        with: String,
    },
    /// A folder's members.
    Members {
        /// Folder name, id or absolute path.
        folder: String,
    },
    /// Folders shared with this person that this device does not sync.
    Shares,
    /// Starts syncing an offered folder.
    Accept {
        /// The folder's name or id.
        share: String,
        /// Where (absolute); default: next to this device's first folder.
        path: Option<PathBuf>,
    },
    /// Declines an offered folder.
    Decline {
        /// The folder's name or id.
        share: String,
    },
}

/// The answer to a [`SharingRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SharingAnswer {
    /// A contact recorded.
    Contact(Contact),
    /// Contacts.
    Contacts(Vec<Contact>),
    /// Members of a folder.
    Members(Vec<MemberInfo>),
    /// Offers.
    Shares(Vec<Offer>),
    /// Membership of `folder` changed (share, unshare).
    Changed {
        /// The folder.
        folder: weft_crypto::FolderId,
        /// What to tell the user.
        message: String,
    },
    /// An offer was accepted: the folder syncs at `root`.
    Accepted {
        /// The folder.
        folder: weft_crypto::FolderId,
        /// Its name.
        name: String,
        /// Where it is on this device.
        root: PathBuf,
    },
    /// An offer was declined.
    Declined(String),
}

/// Who `with` names: a contact's name or person id. Sharing only ever names a
/// contact, whose key the user verified by fingerprint.
fn contact(store: &Store, with: &str) -> Result<Contact, NodeError> {
    store.find_contact(with).map_err(|_| {
        NodeError::Control(format!(
            "{with:?} is not one of your contacts: compare fingerprints, then `weft contact add PERSON_ID --name NAME`"
        ))
    })
}

/// Where an accepted folder goes when no path is given: next to this device's first
/// folder, or `~/weft/<name>`.
fn default_root(store: &Store, name: &str) -> Result<PathBuf, NodeError> {
    let base = match store.folders()?.first() {
        Some(f) => f.root_path().parent().map(PathBuf::from),
        None => dirs::home_dir().map(|h| h.join("weft")),
    }
    .ok_or_else(|| NodeError::Control("no place for the folder: give --path".into()))?;
    let safe: String = name
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    let safe = match safe.as_str() {
        "" | "." | ".." => "shared".to_string(),
        _ => safe,
    };
    Ok(base.join(safe))
}

/// Answers one sharing command against `store`.
pub fn handle(store: &Store, req: SharingRequest) -> Result<SharingAnswer, NodeError> {
    Ok(match req {
        SharingRequest::ContactAdd { person, name } => {
            SharingAnswer::Contact(store.add_contact(person, &name, now_ms())?)
        }
        SharingRequest::Contacts => SharingAnswer::Contacts(store.contacts()?),
        SharingRequest::Share { folder, with, role } => {
            let f = store.find_folder(&folder)?;
            let c = contact(store, &with)?;
            store.share(&f, c.person, role)?;
            SharingAnswer::Changed {
                folder: f.id,
                message: format!(
                    "shared {} with {} as {role}; they see it in `weft shares` once a relay you both use has it",
                    f.name, c.name
                ),
            }
        }
        SharingRequest::Unshare { folder, with } => {
            let f = store.find_folder(&folder)?;
            let c = contact(store, &with)?;
            store.unshare(&f, c.person)?;
            SharingAnswer::Changed {
                folder: f.id,
                message: format!(
                    "removed {} from {}; the folder has a new key: nothing written from now on is readable with what they hold",
                    c.name, f.name
                ),
            }
        }
        SharingRequest::Members { folder } => {
            let f = store.find_folder(&folder)?;
            SharingAnswer::Members(store.members(&f)?)
        }
        SharingRequest::Shares => SharingAnswer::Shares(store.offers()?),
        SharingRequest::Accept { share, path } => {
            let offer = store.find_offer(&share)?;
            let root = match path {
                Some(p) => p,
                None => default_root(store, &offer.name)?,
            };
            let rec = store.accept_offer(&offer.folder, &root)?;
            SharingAnswer::Accepted {
                folder: rec.id,
                name: rec.name.clone(),
                root: rec.root_path(),
            }
        }
        SharingRequest::Decline { share } => {
            let offer = store.find_offer(&share)?;
            store.decline_offer(&offer.folder)?;
            SharingAnswer::Declined(format!("declined {}", offer.name))
        }
    })
}
