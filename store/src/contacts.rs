//! Contacts: other persons this person has verified and named.
//!
//! A person id is a public key anyone can hand out; what makes it trustworthy is
//! the user comparing its fingerprint with its owner out of band (`weft id` shows it).
//! A contact is recorded only after that, and is what sharing a folder names: a
//! folder is never shared with a bare key that arrived over the network.
use crate::db;
use crate::error::{Result, StoreError};
use crate::store::Store;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use weft_crypto::PersonId;

/// A person this one shares with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// Their person id.
    pub person: PersonId,
    /// A name for them, unique among contacts.
    pub name: String,
    /// When they were added, Unix ms.
    pub added_ms: u64,
}

/// Longest contact name, in bytes.
pub const MAX_CONTACT_NAME: usize = 64;

impl Store {
    /// Records a contact (after the user compared the fingerprint). Refuses this
    /// person's own id, a name another contact has, and an empty or overlong name;
    /// adding the same person again renames it.
    pub fn add_contact(&self, person: PersonId, name: &str, now_ms: u64) -> Result<Contact> {
        let name = name.trim();
        if name.is_empty() || name.len() > MAX_CONTACT_NAME || name.chars().any(char::is_control) {
            return Err(StoreError::Contact(format!(
                "a contact name must be 1 to {MAX_CONTACT_NAME} bytes of printable text"
            )));
        }
        if person == self.identity().person_id() {
            return Err(StoreError::Contact(
                "that is your own person id: your devices pair with `weft invite`".into(),
            ));
        }
        if let Some(other) = self
            .contacts()?
            .into_iter()
            .find(|c| c.name == name && c.person != person)
        {
            return Err(StoreError::Contact(format!(
                "another contact is already named {name:?} ({})",
                other.person
            )));
        }
        let c = Contact {
            person,
            name: name.to_string(),
            added_ms: now_ms,
        };
        let txn = self.db().begin_write()?;
        txn.open_table(db::CONTACTS)?
            .insert(person.0.0.as_slice(), db::enc(&c).as_slice())?;
        txn.commit()?;
        Ok(c)
    }

    /// Every contact, by name.
    pub fn contacts(&self) -> Result<Vec<Contact>> {
        let r = self.db().begin_read()?;
        let t = r.open_table(db::CONTACTS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(db::dec::<Contact>("contact", v.value())?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// A contact by name or person id.
    pub fn find_contact(&self, arg: &str) -> Result<Contact> {
        self.contacts()?
            .into_iter()
            .find(|c| c.name == arg || c.person.to_string() == arg)
            .ok_or_else(|| {
                StoreError::Contact(format!(
                    "no contact {arg:?}: add them with `weft contact add PERSON_ID --name NAME`"
                ))
            })
    }
}
