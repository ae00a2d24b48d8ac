//! Sharing a folder with other persons: membership chains on disk, offers, and the
//! folder secrets of every epoch.
//!
//! The owner's device writes membership entries ([`crate::members`]) with
//! [`Store::share`] and [`Store::unshare`]; every device takes them in with
//! [`Store::accept_membership`] (from a relay or a peer), which keeps the chain,
//! learns new epochs' secrets for folders it syncs, and records an **offer** for a
//! folder shared with this person that it does not sync yet ([`Store::offers`],
//! [`Store::accept_offer`], [`Store::decline_offer`]).
//!
//! Entries are opened with the secret of the epoch that sealed them
//! ([`Store::epoch_keys`]): after a rotation the old secrets stay, so history stays
//! readable to those who had it, while new entries use the new one.
use crate::db::{self, FolderRecord};
use crate::error::{Result, StoreError};
use crate::members::{Keyring, Member, Membership, MembershipEntry, Role};
use crate::store::{Store, now_ms};
use crate::sync::SharedFolder;
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use weft_crypto::{DeviceCertificate, DeviceId, FolderId, FolderKeys, FolderSecret, PersonId};

/// A folder shared with this person that this device does not sync (yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The folder.
    pub folder: FolderId,
    /// Its name, as the owner calls it.
    pub name: String,
    /// Who shares it.
    pub owner: PersonId,
    /// The role offered.
    pub role: Role,
    /// Whether the user declined it.
    pub declined: bool,
    /// When it was (last) received, Unix ms.
    pub received_ms: u64,
}

/// What taking in membership entries changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipChange {
    /// Entries that were new.
    pub accepted: usize,
    /// A new offer appeared (or an old one changed).
    pub offered: bool,
    /// A folder this device syncs got a new secret epoch.
    pub rotated: bool,
    /// This person is no longer a member of a folder this device syncs.
    pub removed: bool,
}

/// The keys of every epoch of a folder that this device holds.
pub struct EpochKeys {
    by_epoch: HashMap<u32, FolderKeys>,
}

impl EpochKeys {
    /// The keys of `epoch`, if held.
    pub fn get(&self, epoch: u32) -> Option<&FolderKeys> {
        self.by_epoch.get(&epoch)
    }
}

/// One member as `weft members` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The person.
    pub person: PersonId,
    /// Their role.
    pub role: Role,
    /// The contact name, "you", or None for a person not among the contacts.
    pub name: Option<String>,
}

fn chain_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    folder: &FolderId,
) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    db::scan_prefix(t, &folder.0, |_, v| {
        out.push(v.to_vec());
        Ok(())
    })?;
    Ok(out)
}

fn key_seq(folder: &FolderId, seq: u64) -> Vec<u8> {
    let mut k = folder.0.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn key_epoch(folder: &FolderId, epoch: u32) -> Vec<u8> {
    let mut k = folder.0.to_vec();
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

fn put_secrets(txn: &WriteTransaction, folder: &FolderId, secrets: &[FolderSecret]) -> Result<()> {
    let mut t = txn.open_table(db::SECRETS)?;
    for s in secrets {
        t.insert(key_epoch(folder, s.epoch).as_slice(), db::enc(s).as_slice())?;
    }
    Ok(())
}

impl Store {
    /// The membership chain of `folder` (oldest first), empty if never shared.
    pub fn membership_chain(&self, folder: &FolderId) -> Result<Vec<Vec<u8>>> {
        let r = self.db().begin_read()?;
        chain_in(&r.open_table(db::MEMBERSHIP)?, folder)
    }

    /// The membership of a folder this device syncs (its stored chain, each entry of
    /// which was verified when it was taken in).
    pub fn membership(&self, folder: &FolderRecord) -> Result<Membership> {
        Membership::from_stored_chain(folder.id, folder.owner, &self.membership_chain(&folder.id)?)
    }

    /// This person's role in `folder`.
    pub fn my_role(&self, folder: &FolderRecord) -> Result<Option<Role>> {
        Ok(self.membership(folder)?.role(&self.identity().person_id()))
    }

    /// The members of `folder`, with contact names.
    pub fn members(&self, folder: &FolderRecord) -> Result<Vec<MemberInfo>> {
        let m = self.membership(folder)?;
        let contacts = self.contacts()?;
        let me = self.identity().person_id();
        Ok(m.members
            .iter()
            .map(|(p, r)| MemberInfo {
                person: *p,
                role: *r,
                name: if *p == me {
                    Some("you".into())
                } else {
                    contacts
                        .iter()
                        .find(|c| c.person == *p)
                        .map(|c| c.name.clone())
                },
            })
            .collect())
    }

    /// The keys of every epoch of `folder` this device holds.
    pub fn epoch_keys(&self, folder: &FolderRecord) -> Result<EpochKeys> {
        let r = self.db().begin_read()?;
        let t = r.open_table(db::SECRETS)?;
        let mut by_epoch = HashMap::new();
        db::scan_prefix(&t, &folder.id.0, |_, v| {
            let s: FolderSecret = db::dec("folder secret", v)?;
            by_epoch.insert(s.epoch, s.keys(&folder.id));
            Ok(())
        })?;
        by_epoch.insert(folder.secret.epoch, folder.secret.keys(&folder.id));
        Ok(EpochKeys { by_epoch })
    }

    /// Every epoch's secret of `folder`, oldest first (what a member's keyring holds).
    fn keyring(&self, folder: &FolderRecord) -> Result<Keyring> {
        let r = self.db().begin_read()?;
        let t = r.open_table(db::SECRETS)?;
        let mut by_epoch: BTreeMap<u32, FolderSecret> = BTreeMap::new();
        db::scan_prefix(&t, &folder.id.0, |_, v| {
            let s: FolderSecret = db::dec("folder secret", v)?;
            by_epoch.insert(s.epoch, s);
            Ok(())
        })?;
        by_epoch.insert(folder.secret.epoch, folder.secret.clone());
        let secrets: Vec<FolderSecret> = by_epoch.into_values().collect();
        if secrets
            .iter()
            .enumerate()
            .any(|(i, s)| s.epoch as usize != i)
        {
            return Err(StoreError::Membership(format!(
                "folder {} lacks the secret of an earlier epoch: it cannot be shared from this device",
                folder.name
            )));
        }
        Ok(Keyring {
            name: folder.name.clone(),
            secrets,
        })
    }

    /// The devices of `person` that wrote in `folder`, with their last sequence number.
    fn tips_of_person(&self, folder: &FolderId, person: &PersonId) -> Result<Vec<(DeviceId, u64)>> {
        let mut out = Vec::new();
        for (d, seq) in self.tips(folder)? {
            if self
                .device_cert(&d)?
                .is_some_and(|c: DeviceCertificate| c.body.person == *person)
            {
                out.push((d, seq));
            }
        }
        Ok(out)
    }

    /// Writes the next membership entry of a folder this person owns: `change` turns
    /// the current member list into the new one; `rotate` starts a new secret epoch.
    fn change_membership(
        &self,
        folder: &FolderRecord,
        change: impl FnOnce(&mut BTreeMap<PersonId, Role>) -> Result<()>,
        rotate: bool,
    ) -> Result<Vec<u8>> {
        let me = self.identity().person_id();
        if folder.owner != me {
            return Err(StoreError::Membership(format!(
                "only the owner of {} can change who it is shared with",
                folder.name
            )));
        }
        let current = self.membership(folder)?;
        let mut members = current.members.clone();
        change(&mut members)?;
        // Persons whose write right ends now keep what their devices wrote so far.
        let mut cuts = current.cuts.clone();
        for (p, role) in &current.members {
            let writes_after = members.get(p).is_some_and(|r| r.writes());
            if role.writes() && !writes_after {
                for (d, seq) in self.tips_of_person(&folder.id, p)? {
                    cuts.insert(d, seq);
                }
            }
        }
        // Persons who (again) may write need no cut.
        let writers: Vec<PersonId> = members
            .iter()
            .filter(|(_, r)| r.writes())
            .map(|(p, _)| *p)
            .collect();
        for w in &writers {
            for (d, _) in self.tips_of_person(&folder.id, w)? {
                cuts.remove(&d);
            }
        }
        let mut ring = self.keyring(folder)?;
        let mut rec = folder.clone();
        if rotate {
            let next = rec.secret.rotate().ok_or_else(|| {
                StoreError::Membership("this folder's secret cannot be rotated any more".into())
            })?;
            ring.secrets.push(next.clone());
            rec.secret = next;
        }
        let list: Vec<Member> = members
            .iter()
            .map(|(p, r)| Member {
                person: *p,
                role: *r,
            })
            .collect();
        let prev = (current.seq > 0).then_some(&current);
        let raw = MembershipEntry::create(
            &self.identity().person,
            folder.id,
            prev,
            list,
            cuts,
            &ring,
            now_ms(),
        )?;
        current.apply(&raw)?; // what every other device will check
        let txn = self.db().begin_write()?;
        put_secrets(&txn, &folder.id, &ring.secrets)?;
        txn.open_table(db::MEMBERSHIP)?.insert(
            key_seq(&folder.id, current.seq + 1).as_slice(),
            raw.as_slice(),
        )?;
        if rotate {
            txn.open_table(db::FOLDERS)?
                .insert(rec.id.0.as_slice(), db::enc(&rec).as_slice())?;
        }
        txn.commit()?;
        Ok(raw)
    }

    /// Shares `folder` (owned by this person) with `person` as `role`, or changes
    /// their role. Returns the new membership entry.
    pub fn share(&self, folder: &FolderRecord, person: PersonId, role: Role) -> Result<Vec<u8>> {
        if role == Role::Owner {
            return Err(StoreError::Membership(
                "a folder has one owner: share as viewer or editor".into(),
            ));
        }
        if person == self.identity().person_id() {
            return Err(StoreError::Membership(
                "that is you: your own devices sync every folder after `weft join`".into(),
            ));
        }
        self.change_membership(
            folder,
            |m| {
                if m.get(&person) == Some(&role) {
                    return Err(StoreError::Membership(format!(
                        "already shared with them as {role}"
                    )));
                }
                m.insert(person, role);
                Ok(())
            },
            false,
        )
    }

    /// Removes `person` from `folder` and rotates its secret, so nothing written from
    /// now on is readable with what they hold. Returns the new membership entry.
    pub fn unshare(&self, folder: &FolderRecord, person: PersonId) -> Result<Vec<u8>> {
        self.change_membership(
            folder,
            |m| {
                if person == folder.owner {
                    return Err(StoreError::Membership("the owner cannot be removed".into()));
                }
                m.remove(&person).map(|_| ()).ok_or_else(|| {
                    StoreError::Membership("that person is not a member of this folder".into())
                })
            },
            true,
        )
    }

    /// Takes in membership entries of `folder` (oldest first; ones already held are
    /// skipped), from a relay or a peer. Each must follow the chain and carry the
    /// owner's signature; the first entry of a folder this device does not sync
    /// names its owner. Nothing is stored unless all are valid.
    pub fn accept_membership(
        &self,
        folder: &FolderId,
        entries: &[Vec<u8>],
    ) -> Result<MembershipChange> {
        let mut out = MembershipChange::default();
        let chain = self.membership_chain(folder)?;
        let rec = self.folder(folder).ok();
        let owner = match (&rec, chain.first().or(entries.first())) {
            (Some(r), _) => r.owner,
            (None, Some(first)) => MembershipEntry::decode(first)?.body.owner,
            (None, None) => return Ok(out),
        };
        let mut state = Membership::from_stored_chain(*folder, owner, &chain)?;
        let mut new = Vec::new();
        let mut last = None;
        for raw in entries {
            let e = MembershipEntry::decode(raw)?;
            if e.body.seq <= state.seq {
                let held = e
                    .body
                    .seq
                    .checked_sub(1)
                    .and_then(|i| chain.get(usize::try_from(i).ok()?));
                if held != Some(raw) {
                    return Err(StoreError::Membership(format!(
                        "membership entry #{} of {folder} differs from the one held: a fork",
                        e.body.seq
                    )));
                }
                continue;
            }
            state = state.apply(raw)?;
            new.push((state.seq, raw));
            last = Some(e);
        }
        let Some(last) = last else {
            return Ok(out);
        };
        out.accepted = new.len();
        let me = self.identity().person_id();
        let ring = match last.role_of(&me) {
            Some(_) => Some(last.open_keyring(&self.identity().person)?),
            None => None,
        };
        let txn = self.db().begin_write()?;
        {
            let mut t = txn.open_table(db::MEMBERSHIP)?;
            for (seq, raw) in &new {
                t.insert(key_seq(folder, *seq).as_slice(), raw.as_slice())?;
            }
        }
        match (&rec, ring) {
            (Some(r), Some(ring)) => {
                put_secrets(&txn, folder, &ring.secrets)?;
                if let Some(s) = ring.secrets.last()
                    && s.epoch > r.secret.epoch
                {
                    let mut r = r.clone();
                    r.secret = s.clone();
                    txn.open_table(db::FOLDERS)?
                        .insert(r.id.0.as_slice(), db::enc(&r).as_slice())?;
                    out.rotated = true;
                }
            }
            (Some(_), None) => out.removed = true,
            (None, Some(ring)) => {
                let mut offers = txn.open_table(db::OFFERS)?;
                let declined = match offers.get(folder.0.as_slice())? {
                    Some(v) => db::dec::<Offer>("offer", v.value())?.declined,
                    None => false,
                };
                let offer = Offer {
                    folder: *folder,
                    name: ring.name.clone(),
                    owner,
                    role: last.role_of(&me).unwrap_or(Role::Viewer),
                    declined,
                    received_ms: now_ms(),
                };
                offers.insert(folder.0.as_slice(), db::enc(&offer).as_slice())?;
                out.offered = !declined;
            }
            (None, None) => {
                // Removed before accepting: the offer goes.
                txn.open_table(db::OFFERS)?.remove(folder.0.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(out)
    }

    /// Folders shared with this person that this device does not sync.
    pub fn offers(&self) -> Result<Vec<Offer>> {
        let r = self.db().begin_read()?;
        let t = r.open_table(db::OFFERS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, v) = item?;
            out.push(db::dec::<Offer>("offer", v.value())?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Finds an offer by folder name or id (a prefix of the id will do).
    pub fn find_offer(&self, arg: &str) -> Result<Offer> {
        let offers = self.offers()?;
        let hits: Vec<&Offer> = offers
            .iter()
            .filter(|o| o.name == arg || o.folder.to_string().starts_with(arg))
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(StoreError::Membership(format!(
                "no share named or with id {arg:?}: `weft shares` lists them"
            ))),
            _ => Err(StoreError::Membership(format!(
                "{arg:?} matches several shares: give the folder id"
            ))),
        }
    }

    /// Declines an offer: it stays listed as declined, and is not synced.
    pub fn decline_offer(&self, folder: &FolderId) -> Result<()> {
        let txn = self.db().begin_write()?;
        {
            let mut t = txn.open_table(db::OFFERS)?;
            let mut o: Offer = match t.get(folder.0.as_slice())? {
                Some(v) => db::dec("offer", v.value())?,
                None => return Err(StoreError::Membership("no such share".into())),
            };
            o.declined = true;
            t.insert(folder.0.as_slice(), db::enc(&o).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Accepts an offer: the folder is set up at `root` and synced from now on.
    pub fn accept_offer(&self, folder: &FolderId, root: &std::path::Path) -> Result<FolderRecord> {
        let chain = self.membership_chain(folder)?;
        let last = chain
            .last()
            .ok_or_else(|| StoreError::Membership("no such share".into()))?;
        let entry = MembershipEntry::decode(last)?;
        let ring = entry.open_keyring(&self.identity().person)?;
        let secret = ring
            .secrets
            .last()
            .cloned()
            .ok_or_else(|| StoreError::Membership("the share holds no secret".into()))?;
        let rec = self.import_folder(
            &SharedFolder {
                id: *folder,
                name: ring.name.clone(),
                secret,
                owner: entry.body.owner,
            },
            root,
        )?;
        let txn = self.db().begin_write()?;
        put_secrets(&txn, folder, &ring.secrets)?;
        txn.open_table(db::OFFERS)?.remove(folder.0.as_slice())?;
        txn.commit()?;
        Ok(rec)
    }

    /// How far each author of `folder` may be served or accepted: all of a writer's
    /// chain, up to its cut for a device whose person lost the right, nothing for
    /// anyone else. Keyed by author; authors of unknown devices map to 0.
    pub fn writable_tips(&self, folder: &FolderRecord) -> Result<HashMap<DeviceId, u64>> {
        let m = self.membership(folder)?;
        let mut out = HashMap::new();
        for (d, tip) in self.tips(&folder.id)? {
            let person = self.device_cert(&d)?.map(|c| c.body.person);
            let allowed = match person {
                Some(p) if m.role(&p).is_some_and(Role::writes) => tip,
                Some(_) => m.cuts.get(&d).copied().unwrap_or(0).min(tip),
                None => 0,
            };
            out.insert(d, allowed);
        }
        Ok(out)
    }

    /// This person's role in `folder`, and how many of this device's entries there
    /// no other device accepts (a viewer's or removed member's local changes).
    pub fn local_only(&self, folder: &FolderRecord) -> Result<(Option<Role>, u64)> {
        let role = self.my_role(folder)?;
        let me = self.identity().device_id();
        let tip = self
            .tips(&folder.id)?
            .into_iter()
            .find(|(d, _)| *d == me)
            .map_or(0, |(_, t)| t);
        let allowed = self.writable_tips(folder)?.get(&me).copied().unwrap_or(0);
        Ok((role, tip.saturating_sub(allowed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Home;

    fn device(dir: &std::path::Path, name: &str) -> Store {
        let home = Home::new(dir.join(format!("{name}-home")));
        home.init(name, 0).unwrap();
        Store::open(&home).unwrap()
    }

    #[test]
    fn an_offer_arrives_is_accepted_and_forged_or_replayed_entries_change_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let alice = device(tmp.path(), "alice");
        let bob = device(tmp.path(), "bob");
        let root = tmp.path().join("photos");
        std::fs::create_dir(&root).unwrap();
        let folder = alice.add_folder(&root, Some("photos")).unwrap();
        let bob_id = bob.identity().person_id();
        let e1 = alice.share(&folder, bob_id, Role::Viewer).unwrap();

        // Garbage, a sequence number 0, and a swapped member key are refused, and
        // leave no offer behind.
        let mut swapped = MembershipEntry::decode(&e1).unwrap();
        swapped.body.members[0].person = PersonId(weft_crypto::SecretKey::generate().public());
        let mut zero = MembershipEntry::decode(&e1).unwrap();
        zero.body.seq = 0;
        for bad in [
            vec![1u8, 2, 3],
            zero.encode().unwrap(),
            swapped.encode().unwrap(),
        ] {
            assert!(bob.accept_membership(&folder.id, &[bad]).is_err());
        }
        assert!(bob.offers().unwrap().is_empty());
        assert!(bob.membership_chain(&folder.id).unwrap().is_empty());

        // The real entry: an offer with the folder's name and the role.
        let change = bob
            .accept_membership(&folder.id, std::slice::from_ref(&e1))
            .unwrap();
        assert!(change.offered);
        let offers = bob.offers().unwrap();
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].name, "photos");
        assert_eq!(offers[0].role, Role::Viewer);
        // Again: a duplicate, nothing new; the zero entry still refused.
        let again = bob
            .accept_membership(&folder.id, std::slice::from_ref(&e1))
            .unwrap();
        assert_eq!(again.accepted, 0);
        assert!(
            bob.accept_membership(&folder.id, &[zero.encode().unwrap()])
                .is_err()
        );

        // Accepted: the folder syncs with the owner's secret; declining is gone.
        let rec = bob
            .accept_offer(&folder.id, &tmp.path().join("bob-photos"))
            .unwrap();
        assert_eq!(rec.secret.bytes, folder.secret.bytes);
        assert_eq!(rec.owner, alice.identity().person_id());
        assert!(bob.offers().unwrap().is_empty());
        assert_eq!(bob.my_role(&rec).unwrap(), Some(Role::Viewer));

        // Removed: Bob learns it and gets no new secret.
        let e2 = alice.unshare(&folder, bob_id).unwrap();
        let change = bob.accept_membership(&folder.id, &[e2]).unwrap();
        assert!(change.removed);
        let rec = bob.folder(&folder.id).unwrap();
        assert_eq!(rec.secret.epoch, 0);
        assert!(bob.epoch_keys(&rec).unwrap().get(1).is_none());
        assert_eq!(alice.folder(&folder.id).unwrap().secret.epoch, 1);
    }
}
