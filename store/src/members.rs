//! Folder membership: who may read and who may write a folder, signed by its owner.
//!
//! A folder's members are persons with a role (design.md "Identities"). Until the
//! owner first shares it, a folder has one implicit member, its owner. From then on
//! its **membership chain** says who the members are: entries signed by the owner's
//! person key, numbered from 1 and hash-chained like a device's log, each holding the
//! whole member list after the change, so the latest entry alone says who is in.
//!
//! An entry is readable by the relay (public keys, roles, epochs, device cuts) so it
//! can check who may write without reading anything; the folder's secrets travel in
//! it too, but only wrapped to each member's X25519 key ([`weft_crypto::wrap`]): every
//! epoch's secret and the folder's name, so a member's devices (and a device
//! recovering that person) can read the whole history. Removing a member starts a new
//! epoch whose secret the removed person never gets.
//!
//! Write rights are judged per entry with no clocks: an owner or editor may write; a
//! person whose write right ended (downgraded to viewer, or removed) keeps exactly
//! the entries the owner had accepted from their devices at that moment — the entry
//! records each such device's last sequence number (its **cut**) — and nothing after.
//! So every device and the relay, whenever they hear of the change, accept the same
//! entries.
//!
//! What an entry's signature protects against: a relay or peer swapping a member's
//! public key, adding a member, or pushing a key rotation of its own making — each
//! breaks the owner's signature or the chain and is refused.
use crate::error::{Result, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use weft_crypto::wrap::WrappedKey;
use weft_crypto::{DeviceId, FolderId, FolderSecret, Hash, PersonId, SecretKey, Signature};

/// The membership entry format this code writes and reads.
pub const FORMAT: u8 = 1;
/// The most members a folder may have.
pub const MAX_MEMBERS: usize = 256;
/// The largest encoded membership entry accepted.
pub const MAX_MEMBERSHIP_LEN: usize = 1 << 20;
/// The most membership entries sent in one message.
pub const MAX_CHAIN_BATCH: usize = 64;
/// The most entries a membership chain may have (role changes and removals).
pub const MAX_CHAIN: u64 = 4096;
const SIG_CONTEXT: &str = "folder-membership";
const WRAP_PURPOSE: &str = "folder-keyring";

/// What a member may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Created the folder; changes membership; reads and writes.
    Owner,
    /// Reads and writes.
    Editor,
    /// Reads only: its changes stay on its own devices.
    Viewer,
}

impl Role {
    /// Whether this role may write entries.
    pub fn writes(self) -> bool {
        matches!(self, Role::Owner | Role::Editor)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Owner => "owner",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Role> {
        match s {
            "editor" => Ok(Role::Editor),
            "viewer" => Ok(Role::Viewer),
            "owner" => Ok(Role::Owner),
            _ => Err(StoreError::Membership(format!(
                "unknown role {s:?}: viewer or editor"
            ))),
        }
    }
}

/// One member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The person.
    pub person: PersonId,
    /// Their role.
    pub role: Role,
}

/// The signed part of a membership entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipBody {
    /// [`FORMAT`].
    pub format: u8,
    /// The folder.
    pub folder: FolderId,
    /// 1 for the first entry, then +1 each.
    pub seq: u64,
    /// Hash of the previous entry ([`Hash::ZERO`] for seq 1).
    pub prev: Hash,
    /// The folder's owner, who signs every entry.
    pub owner: PersonId,
    /// When it was written, Unix ms (the owner's clock).
    pub time_ms: u64,
    /// The current secret epoch.
    pub epoch: u32,
    /// Every member after this change (the owner included), ordered by person.
    pub members: Vec<Member>,
    /// Per member, the [`Keyring`] wrapped to their key; same order as `members`.
    pub keys: Vec<WrappedKey>,
    /// Devices of persons who may no longer write, each with the last sequence number
    /// of theirs that stays accepted.
    pub cuts: Vec<(DeviceId, u64)>,
}

/// A signed membership entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipEntry {
    /// What the owner signed.
    pub body: MembershipBody,
    /// The owner's signature over the encoded body.
    pub signature: Signature,
}

/// What each member receives, wrapped: the folder's name and every epoch's secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Keyring {
    /// The folder's name (secret: the relay never sees it).
    pub name: String,
    /// Secrets of epochs 0, 1, … up to the entry's epoch, in order.
    pub secrets: Vec<FolderSecret>,
}

fn invalid(reason: impl Into<String>) -> StoreError {
    StoreError::Membership(reason.into())
}

fn body_bytes(body: &MembershipBody) -> Result<Vec<u8>> {
    postcard::to_stdvec(body).map_err(|e| StoreError::decode("membership entry", e))
}

fn wrap_context(folder: &FolderId, seq: u64, person: &PersonId) -> Vec<u8> {
    let mut c = Vec::with_capacity(56);
    c.extend_from_slice(&folder.0);
    c.extend_from_slice(&seq.to_be_bytes());
    c.extend_from_slice(&person.0.0);
    c
}

impl MembershipEntry {
    /// Decodes an entry, refusing oversized input and trailing bytes.
    pub fn decode(raw: &[u8]) -> Result<MembershipEntry> {
        if raw.len() > MAX_MEMBERSHIP_LEN {
            return Err(invalid(format!(
                "a membership entry of {} bytes (at most {MAX_MEMBERSHIP_LEN})",
                raw.len()
            )));
        }
        let (e, rest): (MembershipEntry, _) = postcard::take_from_bytes(raw)
            .map_err(|e| StoreError::decode("membership entry", e))?;
        if !rest.is_empty() {
            return Err(StoreError::decode("membership entry", "trailing bytes"));
        }
        Ok(e)
    }

    /// The encoding.
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(self).map_err(|e| StoreError::decode("membership entry", e))
    }

    /// The role of `person` in this entry's member list.
    pub fn role_of(&self, person: &PersonId) -> Option<Role> {
        self.body
            .members
            .iter()
            .find(|m| m.person == *person)
            .map(|m| m.role)
    }

    /// Opens the keyring wrapped for `person` with their person secret key.
    pub fn open_keyring(&self, person: &SecretKey) -> Result<Keyring> {
        let me = PersonId(person.public());
        let i = self
            .body
            .members
            .iter()
            .position(|m| m.person == me)
            .ok_or_else(|| invalid("this person is not a member"))?;
        let wrapped = self
            .body
            .keys
            .get(i)
            .ok_or_else(|| invalid("no key for this member"))?;
        let plain = weft_crypto::wrap::unwrap(
            person,
            WRAP_PURPOSE,
            &wrap_context(&self.body.folder, self.body.seq, &me),
            wrapped,
        )?;
        let ring: Keyring =
            postcard::from_bytes(&plain).map_err(|e| StoreError::decode("folder keyring", e))?;
        let epochs_ok = ring.secrets.len() == self.body.epoch as usize + 1
            && ring
                .secrets
                .iter()
                .enumerate()
                .all(|(i, s)| s.epoch as usize == i);
        if !epochs_ok {
            return Err(invalid("the keyring does not hold every epoch's secret"));
        }
        Ok(ring)
    }

    /// Builds and signs the entry that follows `prev` (None: the first), giving each
    /// member `ring` wrapped to their key.
    pub fn create(
        owner: &SecretKey,
        folder: FolderId,
        prev: Option<&Membership>,
        mut members: Vec<Member>,
        cuts: BTreeMap<DeviceId, u64>,
        ring: &Keyring,
        time_ms: u64,
    ) -> Result<Vec<u8>> {
        members.sort_by_key(|m| m.person.0.0);
        let seq = prev.map_or(1, |p| p.seq + 1);
        let plain = postcard::to_stdvec(ring).map_err(|e| StoreError::decode("keyring", e))?;
        let mut keys = Vec::with_capacity(members.len());
        for m in &members {
            keys.push(weft_crypto::wrap::wrap(
                &m.person.0,
                WRAP_PURPOSE,
                &wrap_context(&folder, seq, &m.person),
                &plain,
            )?);
        }
        let epoch = ring
            .secrets
            .last()
            .map(|s| s.epoch)
            .ok_or_else(|| invalid("a keyring without secrets"))?;
        let body = MembershipBody {
            format: FORMAT,
            folder,
            seq,
            prev: prev.map_or(Hash::ZERO, |p| p.head),
            owner: PersonId(owner.public()),
            time_ms,
            epoch,
            members,
            keys,
            cuts: cuts.into_iter().collect(),
        };
        let signature = owner.sign(SIG_CONTEXT, &body_bytes(&body)?);
        MembershipEntry { body, signature }.encode()
    }
}

/// A folder's membership as its chain so far establishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The folder.
    pub folder: FolderId,
    /// Its owner.
    pub owner: PersonId,
    /// The last entry's sequence number (0: never shared, the owner alone).
    pub seq: u64,
    /// The last entry's hash.
    pub head: Hash,
    /// The current secret epoch (as of the last entry).
    pub epoch: u32,
    /// Members and roles.
    pub members: BTreeMap<PersonId, Role>,
    /// Per device of a person who may not write: its last accepted sequence number.
    pub cuts: BTreeMap<DeviceId, u64>,
}

impl Membership {
    /// A folder never shared: its owner alone.
    pub fn solo(folder: FolderId, owner: PersonId) -> Membership {
        Membership {
            folder,
            owner,
            seq: 0,
            head: Hash::ZERO,
            epoch: 0,
            members: BTreeMap::from([(owner, Role::Owner)]),
            cuts: BTreeMap::new(),
        }
    }

    /// Checks that `raw` is the entry that follows this state (same folder and owner,
    /// next sequence, chained, signed by the owner, a well-formed member list whose
    /// only owner is the owner, one wrapped key per member, an epoch that never goes
    /// back and moves on whenever someone is removed) and returns the state after it.
    pub fn apply(&self, raw: &[u8]) -> Result<Membership> {
        self.next(raw, true)
    }

    fn next(&self, raw: &[u8], check_signature: bool) -> Result<Membership> {
        let e = MembershipEntry::decode(raw)?;
        let b = &e.body;
        let ctx = |r: &str| invalid(format!("membership entry #{} of {}: {r}", b.seq, b.folder));
        if b.format != FORMAT {
            return Err(ctx(&format!("unknown format {}", b.format)));
        }
        if b.folder != self.folder {
            return Err(ctx("it is for another folder"));
        }
        if b.owner != self.owner {
            return Err(ctx("not signed by the folder's owner"));
        }
        if b.seq != self.seq + 1 || b.seq > MAX_CHAIN {
            return Err(ctx(&format!("expected #{}", self.seq + 1)));
        }
        if b.prev != self.head {
            return Err(ctx("does not follow the previous membership entry"));
        }
        if check_signature {
            self.owner
                .0
                .verify(SIG_CONTEXT, &body_bytes(b)?, &e.signature)
                .map_err(|_| ctx("the owner's signature does not verify"))?;
        }
        if b.members.is_empty() || b.members.len() > MAX_MEMBERS {
            return Err(ctx("member count out of range"));
        }
        if b.keys.len() != b.members.len() {
            return Err(ctx("not one wrapped key per member"));
        }
        let mut members = BTreeMap::new();
        for m in &b.members {
            if members.insert(m.person, m.role).is_some() {
                return Err(ctx("a person listed twice"));
            }
            if (m.role == Role::Owner) != (m.person == self.owner) {
                return Err(ctx("only the folder's creator is its owner"));
            }
        }
        if !members.contains_key(&self.owner) {
            return Err(ctx("the owner is missing"));
        }
        if b.epoch < self.epoch {
            return Err(ctx("the secret epoch went back"));
        }
        let removed = self.members.keys().any(|p| !members.contains_key(p));
        if removed && b.epoch == self.epoch && self.seq > 0 {
            return Err(ctx("a member was removed without a new secret"));
        }
        if b.cuts.len() > 64 * MAX_MEMBERS {
            return Err(ctx("too many device cuts"));
        }
        Ok(Membership {
            folder: self.folder,
            owner: self.owner,
            seq: b.seq,
            head: Hash::of(raw),
            epoch: b.epoch,
            members,
            cuts: b.cuts.iter().copied().collect(),
        })
    }

    /// The state after a whole chain (oldest first), starting from the owner alone.
    pub fn from_chain(folder: FolderId, owner: PersonId, chain: &[Vec<u8>]) -> Result<Membership> {
        let mut m = Membership::solo(folder, owner);
        for raw in chain {
            m = m.apply(raw)?;
        }
        Ok(m)
    }

    /// As [`Membership::from_chain`] for a chain that was checked entry by entry
    /// before it was stored: replayed without verifying the signatures again (this
    /// runs for every batch of entries accepted or served). `weft verify` checks
    /// stored chains in full.
    pub fn from_stored_chain(
        folder: FolderId,
        owner: PersonId,
        chain: &[Vec<u8>],
    ) -> Result<Membership> {
        let mut m = Membership::solo(folder, owner);
        for raw in chain {
            m = m.next(raw, false)?;
        }
        Ok(m)
    }

    /// The role of `person`, if a member.
    pub fn role(&self, person: &PersonId) -> Option<Role> {
        self.members.get(person).copied()
    }

    /// Whether entry `seq` of `device`, a device of `person`, may be accepted.
    pub fn may_write(&self, person: &PersonId, device: &DeviceId, seq: u64) -> bool {
        if self.role(person).is_some_and(Role::writes) {
            return true;
        }
        self.cuts.get(device).is_some_and(|&cut| seq <= cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(n: u32) -> Keyring {
        let mut s = vec![FolderSecret::generate()];
        for _ in 0..n {
            let next = s.last().and_then(FolderSecret::rotate).unwrap();
            s.push(next);
        }
        Keyring {
            name: "Photos".into(),
            secrets: s,
        }
    }

    fn setup() -> (SecretKey, SecretKey, FolderId) {
        (
            SecretKey::generate(),
            SecretKey::generate(),
            FolderId::generate(),
        )
    }

    fn pid(k: &SecretKey) -> PersonId {
        PersonId(k.public())
    }

    fn share(
        owner: &SecretKey,
        f: FolderId,
        prev: &Membership,
        others: &[(&SecretKey, Role)],
        r: &Keyring,
    ) -> Vec<u8> {
        let mut members = vec![Member {
            person: pid(owner),
            role: Role::Owner,
        }];
        for (k, role) in others {
            members.push(Member {
                person: pid(k),
                role: *role,
            });
        }
        let prev = (prev.seq > 0).then_some(prev);
        MembershipEntry::create(owner, f, prev, members, BTreeMap::new(), r, 1).unwrap()
    }

    #[test]
    fn share_then_members_read_the_keyring_and_roles() {
        let (a, b, f) = setup();
        let r = ring(0);
        let solo = Membership::solo(f, pid(&a));
        let e1 = share(&a, f, &solo, &[(&b, Role::Editor)], &r);
        let m1 = solo.apply(&e1).unwrap();
        assert_eq!(m1.role(&pid(&b)), Some(Role::Editor));
        let dev = DeviceId(SecretKey::generate().public());
        assert!(m1.may_write(&pid(&b), &dev, 5));
        let entry = MembershipEntry::decode(&e1).unwrap();
        let got = entry.open_keyring(&b).unwrap();
        assert_eq!(got.name, "Photos");
        assert_eq!(got.secrets[0].bytes, r.secrets[0].bytes);
        // A stranger cannot open it.
        assert!(entry.open_keyring(&SecretKey::generate()).is_err());
    }

    #[test]
    fn a_swapped_key_or_foreign_signer_is_refused() {
        let (a, b, f) = setup();
        let mallory = SecretKey::generate();
        let solo = Membership::solo(f, pid(&a));
        let e1 = share(&a, f, &solo, &[(&b, Role::Editor)], &ring(0));
        // The relay swaps B's key for its own.
        let mut e = MembershipEntry::decode(&e1).unwrap();
        for m in &mut e.body.members {
            if m.person == pid(&b) {
                m.person = pid(&mallory);
            }
        }
        assert!(solo.apply(&e.encode().unwrap()).is_err());
        // Mallory signs a rotation of her own.
        let m1 = solo.apply(&e1).unwrap();
        let forged = MembershipEntry::create(
            &mallory,
            f,
            Some(&m1),
            vec![
                Member {
                    person: pid(&a),
                    role: Role::Owner,
                },
                Member {
                    person: pid(&mallory),
                    role: Role::Editor,
                },
            ],
            BTreeMap::new(),
            &ring(1),
            2,
        )
        .unwrap();
        let err = m1.apply(&forged).unwrap_err().to_string();
        assert!(err.contains("owner"), "{err}");
    }

    #[test]
    fn removal_needs_a_new_epoch_and_cuts_bound_old_writers() {
        let (a, b, f) = setup();
        let solo = Membership::solo(f, pid(&a));
        let e1 = share(&a, f, &solo, &[(&b, Role::Editor)], &ring(0));
        let m1 = solo.apply(&e1).unwrap();
        // Removing B without rotating is refused.
        let same = share(&a, f, &m1, &[], &ring(0));
        assert!(m1.apply(&same).is_err());
        let dev = DeviceId(SecretKey::generate().public());
        let owner_only = vec![Member {
            person: pid(&a),
            role: Role::Owner,
        }];
        let e2 = MembershipEntry::create(
            &a,
            f,
            Some(&m1),
            owner_only,
            BTreeMap::from([(dev, 3)]),
            &ring(1),
            2,
        )
        .unwrap();
        let m2 = m1.apply(&e2).unwrap();
        assert_eq!(m2.epoch, 1);
        assert!(m2.may_write(&pid(&b), &dev, 3));
        assert!(!m2.may_write(&pid(&b), &dev, 4));
        // B cannot read the new keyring.
        assert!(
            MembershipEntry::decode(&e2)
                .unwrap()
                .open_keyring(&b)
                .is_err()
        );
        // Replaying e1 after e2, or e2 twice, is refused.
        assert!(m2.apply(&e1).is_err());
        assert!(m2.apply(&e2).is_err());
    }

    #[test]
    fn malformed_input_is_an_error() {
        let (a, _, f) = setup();
        let solo = Membership::solo(f, pid(&a));
        assert!(solo.apply(b"").is_err());
        assert!(solo.apply(&[0xff; 100]).is_err());
        assert!(solo.apply(&vec![0u8; MAX_MEMBERSHIP_LEN + 1]).is_err());
    }
}
