//! Merging file versions into a folder tree: pure functions, no I/O.
//!
//! # Heads and dominance
//!
//! Every log entry creates one or two [`Version`]s of paths. A device that writes a new
//! version of a path sets its version vector to the join of the vectors of every current
//! head it knows for that path, then sets its own component to the entry's sequence
//! number. Version vectors are therefore *per path*: a version says nothing about any
//! other path, and the versions of one path are partially ordered by dominance
//! (`a` supersedes `b` when `a.vv ≥ b.vv` component-wise and `a.vv ≠ b.vv`).
//!
//! A path's **heads** are its maximal versions: those no other known version of the path
//! supersedes. They form an antichain (no head supersedes another). One head means the
//! path's history is linear; several heads mean concurrent writes: a conflict.
//! [`apply_to_heads`] maintains the heads incrementally and [`MergeState`] does so for a
//! whole folder.
//!
//! # Why the result depends only on the set of versions
//!
//! "Supersedes" is a strict partial order, so the maximal elements of a finite set are a
//! function of the set alone. [`apply_to_heads`] keeps exactly those: when a version
//! arrives, either some head supersedes it (then it is below a maximal element and changes
//! nothing), or it is itself maximal, and the heads it supersedes stop being maximal
//! (nothing it supersedes can ever become maximal again, since it stays in the set).
//! Induction over any delivery order gives the same heads; they are kept sorted by
//! [`VersionId`], so even the stored `Vec` is identical on every device. [`resolve`] then
//! orders a path's heads by a total order ([`winner_order`]) and [`derive_tree`] visits
//! paths in byte order, so the tree is a function of the heads, hence of the set.
//! Two versions with one id and different contents (an author fork) would break this;
//! the log rejects forks before anything reaches the merge, and the merge keeps whichever
//! arrived first (reported as [`Applied::Duplicate`]).
//!
//! # Resolving one path
//!
//! - A version that supersedes another wins outright (the other is history only).
//! - Among concurrent heads, a live version (file or directory) beats a tombstone: an
//!   edit concurrent with a delete wins, and the delete just disappears.
//! - Among live heads the winner is the greatest by [`winner_order`]: a directory beats a
//!   file (a file cannot replace a directory that may hold children: the file becomes the
//!   conflict copy); between files the later `mtime_ns` wins, then the larger
//!   [`VersionId`] (author key bytes, then seq); between directories the larger
//!   [`VersionId`].
//! - The other live heads are **conflict losers**. A loser with the same content as the
//!   winner (same content hash for files; two directories) or as an already kept loser
//!   needs no copy. The executable bit is not part of "same content". Every other loser is
//!   kept beside the winner under [`conflict_name`], on every device. Losers are always
//!   files, since a directory can only lose to a directory.
//!
//! # Deriving the tree
//!
//! [`derive_tree`] (and [`MergeState::tree`]) puts each path's winner at its path and each
//! conflict loser at its conflict name, with two whole-tree rules that keep the tree
//! something a filesystem can hold:
//!
//! - **A file cannot have children.** If a path's winner is a file but some path below it
//!   has a live winner (a device replaced a directory by a file while another created a
//!   file inside it), the file is displaced: it is listed as a conflict copy of its path,
//!   and the path becomes a directory implied by its children.
//! - **Names do not collide.** Copies are placed after all winners, in path order. If a
//!   copy's name is already taken by an entry with the same content, the copy is omitted
//!   (its content is there); if it is taken by something else (or is a directory the tree
//!   needs), the next name in the sequence `…-<device>-2.ext`, `…-<device>-3.ext`, … is tried.
//!
//! Directories implied by live entries are not listed unless a live directory version
//! exists: callers create parents as needed. No tombstone is ever listed.
//!
//! # Directory deletes
//!
//! A directory delete is a tombstone for the directory and one for each path below it
//! that the deleting device knew of, each with that path's own joined vector. A file that
//! another device created (or edited) concurrently inside the directory is not superseded
//! by any of those tombstones, so it stays a live head and survives; its parent is then a
//! directory implied by a live child (the directory's own tombstone wins at its path, so
//! it is not listed, and callers recreate it). No special case is needed: it falls out of
//! per-path vectors.
//!
//! # How a device must write the next version
//!
//! A device's new version of a path joins the vectors of all the heads it knows, so it
//! supersedes every conflict loser too, and their copies vanish from the tree on every
//! device. If the device has materialized such a copy on disk (it holds a file at the
//! conflict name that [`derive_tree`] put there with `conflict_of == Some(path)`), it
//! must, before writing the next version of `path`, record that copy as a file version of
//! its own at the conflict name (an ordinary entry for an ordinary file). From then on the
//! copy is a real file with its own history; while the old loser is still a head on other
//! devices, its derived copy meets the real file at the same name with the same content
//! and is omitted. The same holds for a displaced file before writing its path.
use crate::model::{Content, RelPath, Version, VersionId};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use weft_crypto::Hash;

/// What happened when a version was offered to a path's heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Applied {
    /// The version is now a head of its path; heads it supersedes were removed.
    NewHead,
    /// An existing head supersedes it: it is history only and does not change the tree.
    Superseded,
    /// A head with the same [`VersionId`] is already present: nothing changed. (A version
    /// delivered again after it stopped being a head reports [`Applied::Superseded`],
    /// since only the heads are consulted.)
    Duplicate,
}

/// Whether `a` supersedes `b`: `a`'s vector dominates `b`'s and differs from it.
fn supersedes(a: &Version, b: &Version) -> bool {
    a.vv.compare(&b.vv) == Some(Ordering::Greater)
}

/// Per path, pure: offers `v` to the path's current `heads` (the maximal versions: none
/// supersedes another), all of which must be versions of `v.path`.
///
/// Removes the heads that `v` supersedes and keeps `v` as a head unless an existing head
/// supersedes it. The heads stay sorted by [`VersionId`], so the same set of versions gives
/// the same `Vec` whatever the order they were offered in. Two versions with equal vectors
/// and different ids (impossible in an honest history, where each version carries its own
/// entry's sequence number) are both kept, as concurrent.
pub fn apply_to_heads(heads: &mut Vec<Version>, v: Version) -> Applied {
    debug_assert!(
        heads.iter().all(|h| h.path == v.path),
        "heads of another path"
    );
    if heads.iter().any(|h| h.id == v.id) {
        return Applied::Duplicate;
    }
    if heads.iter().any(|h| supersedes(h, &v)) {
        return Applied::Superseded;
    }
    heads.retain(|h| !supersedes(&v, h));
    let at = heads.partition_point(|h| h.id < v.id);
    heads.insert(at, v);
    Applied::NewHead
}

/// The total order that picks a path's winner among its heads: the greatest wins.
///
/// By kind first (a directory beats a file, a file beats a tombstone), then, between
/// files, the later `mtime_ns`, then the larger [`VersionId`] (author key bytes, then
/// seq). Between two directories or two tombstones, the larger [`VersionId`].
pub fn winner_order(a: &Version, b: &Version) -> Ordering {
    fn rank(c: &Content) -> (u8, i64) {
        match c {
            Content::Deleted => (0, 0),
            Content::File { mtime_ns, .. } => (1, *mtime_ns),
            Content::Dir => (2, 0),
        }
    }
    rank(&a.content)
        .cmp(&rank(&b.content))
        .then_with(|| a.id.cmp(&b.id))
}

/// Whether two contents need no separate copies: files with the same content hash (the
/// executable bit and mtime are not compared), two directories, or two tombstones.
fn same_content(a: &Content, b: &Content) -> bool {
    match (a, b) {
        (Content::File { hash: x, .. }, Content::File { hash: y, .. }) => x == y,
        (Content::Dir, Content::Dir) | (Content::Deleted, Content::Deleted) => true,
        _ => false,
    }
}

/// One path's resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution<'a> {
    /// The head that keeps the name, or `None` when every head is a tombstone.
    pub winner: Option<&'a Version>,
    /// The losing live heads that must appear as conflict copies, best first by
    /// [`winner_order`]. Losers with the same content as the winner, or as a loser
    /// already in this list, are omitted; tombstones never appear here.
    pub conflicts: Vec<&'a Version>,
}

/// Resolves one path's heads (in any order) into the winner and the conflict copies.
/// See the module documentation for the rules.
pub fn resolve(heads: &[Version]) -> Resolution<'_> {
    let mut live: Vec<&Version> = heads.iter().filter(|v| v.content.is_live()).collect();
    live.sort_by(|a, b| winner_order(b, a));
    let mut live = live.into_iter();
    let Some(winner) = live.next() else {
        return Resolution {
            winner: None,
            conflicts: Vec::new(),
        };
    };
    let mut conflicts: Vec<&Version> = Vec::new();
    for l in live {
        if same_content(&l.content, &winner.content)
            || conflicts
                .iter()
                .any(|k| same_content(&k.content, &l.content))
        {
            continue;
        }
        conflicts.push(l);
    }
    Resolution {
        winner: Some(winner),
        conflicts,
    }
}

/// The deterministic conflict-copy name for a losing version `v` of `path`:
/// `stem.sync-conflict-YYYYMMDD-HHMMSS-<device short>.ext`.
///
/// - The time is `v`'s mtime in UTC, truncated to the second. A version that is not a
///   file (never a copy in [`derive_tree`], since losers are always files) uses its seq as
///   the number of seconds since the Unix epoch.
/// - `<device short>` is `v.id.author.short()`.
/// - `.ext` is the part of the file name from its last `.`, when that dot is not the
///   first byte; otherwise there is no ext and the stem is the whole name (`.bashrc` gives
///   `.bashrc.sync-conflict-…`).
///
/// The result is a valid [`RelPath`] in the same directory, built on bytes (names need not
/// be UTF-8). When the full name would make the path longer than [`RelPath::MAX_LEN`], the
/// stem is shortened, then the ext dropped, and as a last resort (a directory path leaving
/// less room than the marker) the name is a prefix of a hex digest of the full name.
pub fn conflict_name(path: &RelPath, v: &Version) -> RelPath {
    conflict_name_nth(path, v, 0)
}

/// [`conflict_name`] with a disambiguator: `n == 0` is the plain name, `n ≥ 1` appends
/// `-{n+1}` after the device short.
/// The longest file name (one component) most filesystems accept, in bytes.
pub const MAX_NAME: usize = 255;

fn conflict_name_nth(path: &RelPath, v: &Version, n: u32) -> RelPath {
    let name = path.file_name();
    let (stem, ext) = match name.iter().rposition(|b| *b == b'.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, &[][..]),
    };
    let mut marker = format!(".sync-conflict-{}-{}", stamp(v), v.id.author.short());
    if n > 0 {
        marker.push('-');
        marker.push_str(&(u64::from(n) + 1).to_string());
    }
    let marker = marker.into_bytes();
    let mut out = match path.parent() {
        Some(p) => {
            let mut b = p.as_bytes().to_vec();
            b.push(b'/');
            b
        }
        None => Vec::new(),
    };
    // `path` is valid, so the room left for a name is at least its current name's length;
    // a name is also kept within the 255 bytes common filesystems allow for one name.
    let room = RelPath::MAX_LEN.saturating_sub(out.len()).min(MAX_NAME);
    if stem.len() + marker.len() + ext.len() <= room {
        out.extend_from_slice(stem);
        out.extend_from_slice(&marker);
        out.extend_from_slice(ext);
    } else if room > marker.len() + ext.len() {
        out.extend_from_slice(&stem[..stem.len().min(room - marker.len() - ext.len())]);
        out.extend_from_slice(&marker);
        out.extend_from_slice(ext);
    } else if room > marker.len() {
        out.extend_from_slice(&stem[..stem.len().min(room - marker.len())]);
        out.extend_from_slice(&marker);
    } else {
        let mut full = name.to_vec();
        full.extend_from_slice(&marker);
        let hex = Hash::of(&full).to_hex();
        out.extend_from_slice(&hex.as_bytes()[..hex.len().min(room.max(1))]);
    }
    // Every branch yields a non-empty component that is not `.` or `..` and holds no `/`
    // or NUL, within MAX_LEN: this cannot fail. Falling back to `path` keeps the function
    // total; `derive_tree` never places a copy at its origin.
    RelPath::new(out).unwrap_or_else(|_| path.clone())
}

/// `YYYYMMDD-HHMMSS` (UTC) for a version: its mtime for a file, its seq as seconds since
/// the epoch otherwise.
fn stamp(v: &Version) -> String {
    let secs = match v.content {
        Content::File { mtime_ns, .. } => mtime_ns.div_euclid(1_000_000_000),
        Content::Dir | Content::Deleted => i64::try_from(v.id.seq).unwrap_or(i64::MAX),
    };
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// An entry of the derived tree: a file or a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    /// The version shown here.
    pub version: VersionId,
    /// Its content: [`Content::File`] or [`Content::Dir`], never a tombstone.
    pub content: Content,
    /// For a conflict copy, the path it is a losing (or displaced) version of.
    pub conflict_of: Option<RelPath>,
}

/// Derives the folder tree from every path's heads, as [`MergeState::tree`] does; for
/// callers (the store) that keep heads elsewhere. Each path must appear at most once;
/// the order of paths and of each path's heads does not matter.
pub fn derive_tree<'a, I>(heads: I) -> BTreeMap<RelPath, TreeEntry>
where
    I: IntoIterator<Item = (&'a RelPath, &'a [Version])>,
{
    let mut resolved: Vec<(&RelPath, Resolution<'a>)> =
        heads.into_iter().map(|(p, h)| (p, resolve(h))).collect();
    resolved.sort_by(|a, b| a.0.cmp(b.0));

    // Directories the tree needs: the strict ancestors of every path that has a winner
    // (its copies, if any, live in its directory, below the same ancestors).
    let mut needed: BTreeSet<RelPath> = BTreeSet::new();
    for (p, r) in &resolved {
        if r.winner.is_none() {
            continue;
        }
        let mut up = p.parent();
        while let Some(dir) = up {
            up = dir.parent();
            if !needed.insert(dir) {
                break; // its ancestors are in already
            }
        }
    }

    let mut tree = BTreeMap::new();
    let mut copies: Vec<(&RelPath, &Version)> = Vec::new();
    for (p, r) in &resolved {
        if let Some(w) = r.winner {
            let displaced = matches!(w.content, Content::File { .. }) && needed.contains(*p);
            if displaced {
                copies.push((p, w));
            } else {
                tree.insert(
                    (*p).clone(),
                    TreeEntry {
                        version: w.id,
                        content: w.content.clone(),
                        conflict_of: None,
                    },
                );
            }
        }
        copies.extend(r.conflicts.iter().map(|l| (*p, *l)));
    }

    // Each attempt for one copy is either free or blocked by a distinct taken name, so
    // this many attempts always find a free name (short of a directory path so long that
    // names degrade to truncated digests).
    let attempts = tree.len() + needed.len() + copies.len() + 2;
    let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
    for (origin, v) in copies {
        place_copy(&mut tree, &needed, origin, v, attempts);
    }
    tree
}

/// Puts a conflict copy of `v` (a version of `origin`) at the first free conflict name.
fn place_copy(
    tree: &mut BTreeMap<RelPath, TreeEntry>,
    needed: &BTreeSet<RelPath>,
    origin: &RelPath,
    v: &Version,
    attempts: u32,
) {
    for n in 0..attempts {
        let name = conflict_name_nth(origin, v, n);
        if name == *origin || needed.contains(&name) {
            continue;
        }
        match tree.get(&name) {
            None => {
                tree.insert(
                    name,
                    TreeEntry {
                        version: v.id,
                        content: v.content.clone(),
                        conflict_of: Some(origin.clone()),
                    },
                );
                return;
            }
            Some(e) if same_content(&e.content, &v.content) => return,
            Some(_) => {}
        }
    }
}

/// In-memory merge state over a whole folder: every path's heads. Used by tests and small
/// callers; the store keeps heads in redb and uses [`apply_to_heads`] and [`derive_tree`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeState {
    heads: BTreeMap<RelPath, Vec<Version>>,
}

impl MergeState {
    /// An empty folder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers a version to its path's heads (see [`apply_to_heads`]).
    pub fn apply(&mut self, v: Version) -> Applied {
        let heads = self.heads.entry(v.path.clone()).or_default();
        apply_to_heads(heads, v)
    }

    /// A path's heads, sorted by [`VersionId`]; empty for a path never written.
    pub fn heads(&self, path: &RelPath) -> &[Version] {
        self.heads.get(path).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every path that has at least one version, in byte order.
    pub fn paths(&self) -> impl Iterator<Item = &RelPath> {
        self.heads.keys()
    }

    /// The tree every device with the same set of versions derives, byte for byte: each
    /// path's winner at its path, each conflict loser at its [`conflict_name`] (see the
    /// module documentation for displaced files and name collisions). Directories implied
    /// by live entries are not listed unless a live directory version exists.
    pub fn tree(&self) -> BTreeMap<RelPath, TreeEntry> {
        derive_tree(self.heads.iter().map(|(p, h)| (p, h.as_slice())))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::VersionVector;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use weft_crypto::{DeviceId, SecretKey};

    fn dev(i: u8) -> DeviceId {
        DeviceId(SecretKey::from_seed(&[i; 32]).public())
    }

    fn p(s: impl Into<Vec<u8>>) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn vv(parts: &[(DeviceId, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for (d, s) in parts {
            v.set(*d, *s);
        }
        v
    }

    fn file_content(h: u8, mtime_ns: i64) -> Content {
        Content::File {
            size: u64::from(h),
            mtime_ns,
            executable: false,
            hash: Hash::of(&[h]),
        }
    }

    fn version(
        path: &RelPath,
        author: DeviceId,
        seq: u64,
        vv: VersionVector,
        content: Content,
    ) -> Version {
        Version {
            path: path.clone(),
            id: VersionId { author, seq },
            vv,
            content,
        }
    }

    /// Nanoseconds of a UTC date-time, through the `time` crate (independent of ours).
    fn ns(dt: time::OffsetDateTime) -> i64 {
        i64::try_from(dt.unix_timestamp_nanos()).unwrap()
    }

    fn is_file(c: &Content) -> bool {
        matches!(c, Content::File { .. })
    }

    fn state_of(vs: impl IntoIterator<Item = Version>) -> MergeState {
        let mut s = MergeState::new();
        for v in vs {
            s.apply(v);
        }
        s
    }

    #[test]
    fn dominating_version_replaces_head() {
        let (a, b) = (dev(1), dev(2));
        let path = p("notes.txt");
        let v1 = version(&path, a, 1, vv(&[(a, 1)]), file_content(1, 10));
        let v2 = version(&path, b, 1, vv(&[(a, 1), (b, 1)]), file_content(2, 5));
        let mut s = MergeState::new();
        assert_eq!(s.apply(v1.clone()), Applied::NewHead);
        assert_eq!(s.apply(v2.clone()), Applied::NewHead);
        assert_eq!(s.heads(&path), std::slice::from_ref(&v2));
        let tree = s.tree();
        assert_eq!(tree.len(), 1);
        // The later write wins even with an older mtime: dominance, not time.
        assert_eq!(tree[&path].version, v2.id);
        // Other order: v1 arrives late and is history only.
        let mut s2 = MergeState::new();
        assert_eq!(s2.apply(v2), Applied::NewHead);
        assert_eq!(s2.apply(v1), Applied::Superseded);
        assert_eq!(s2, s);
    }

    #[test]
    fn concurrent_edit_makes_named_conflict_copy() {
        let (a, b) = (dev(1), dev(2));
        let path = p("docs/report.txt");
        let base = version(&path, a, 1, vv(&[(a, 1)]), file_content(0, 0));
        let t_a = ns(time::macros::datetime!(2026-11-25 10:45:00 UTC));
        let t_b = ns(time::macros::datetime!(2026-11-25 10:30:00.75 UTC));
        let va = version(&path, a, 2, vv(&[(a, 2)]), file_content(1, t_a));
        let vb = version(&path, b, 7, vv(&[(a, 1), (b, 7)]), file_content(2, t_b));
        let s = state_of([base, va.clone(), vb.clone()]);
        assert_eq!(s.heads(&path).len(), 2);
        let r = resolve(s.heads(&path));
        assert_eq!(r.winner, Some(&va), "later mtime wins");
        assert_eq!(r.conflicts, vec![&vb]);
        let copy = p(format!(
            "docs/report.sync-conflict-20261125-103000-{}.txt",
            b.short()
        ));
        assert_eq!(conflict_name(&path, &vb), copy);
        let tree = s.tree();
        assert_eq!(tree.len(), 2);
        assert_eq!(tree[&path].version, va.id);
        assert_eq!(
            tree[&copy],
            TreeEntry {
                version: vb.id,
                content: vb.content.clone(),
                conflict_of: Some(path.clone()),
            }
        );
    }

    fn loser(path: &RelPath, content: Content) -> Version {
        version(path, dev(3), 42, vv(&[(dev(3), 42)]), content)
    }

    #[test]
    fn conflict_name_of_dotfile_has_no_ext() {
        let path = p("home/.bashrc");
        let t = ns(time::macros::datetime!(1999-12-31 23:59:59.999 UTC));
        let v = loser(&path, file_content(1, t));
        let want = format!(
            "home/.bashrc.sync-conflict-19991231-235959-{}",
            dev(3).short()
        );
        assert_eq!(conflict_name(&path, &v), p(want));
    }

    #[test]
    fn conflict_name_without_extension() {
        let path = p("Makefile");
        let t = ns(time::macros::datetime!(2024-02-29 00:00:01 UTC));
        let v = loser(&path, file_content(1, t));
        let want = format!("Makefile.sync-conflict-20240229-000001-{}", dev(3).short());
        assert_eq!(conflict_name(&path, &v), p(want));
    }

    #[test]
    fn conflict_name_uses_last_dot_only() {
        let path = p("a/archive.tar.gz");
        let v = loser(&path, file_content(1, 0));
        let want = format!(
            "a/archive.tar.sync-conflict-19700101-000000-{}.gz",
            dev(3).short()
        );
        assert_eq!(conflict_name(&path, &v), p(want));
    }

    #[test]
    fn conflict_name_of_non_utf8_name_keeps_bytes() {
        let path = p(b"m\xfcsic/caf\xe9.\xff".to_vec());
        let t = ns(time::macros::datetime!(2026-01-02 03:04:05 UTC));
        let v = loser(&path, file_content(1, t));
        let mut want = b"m\xfcsic/caf\xe9.sync-conflict-20260102-030405-".to_vec();
        want.extend_from_slice(dev(3).short().as_bytes());
        want.extend_from_slice(b".\xff");
        assert_eq!(conflict_name(&path, &v).as_bytes(), want.as_slice());
    }

    #[test]
    fn conflict_name_before_1970_and_of_a_dir_is_deterministic() {
        let path = p("old");
        // 1969-12-31 23:59:59.5: floor, not truncation towards zero.
        let v = loser(&path, file_content(1, -500_000_000));
        assert_eq!(
            conflict_name(&path, &v),
            p(format!(
                "old.sync-conflict-19691231-235959-{}",
                dev(3).short()
            ))
        );
        let d = loser(&path, Content::Dir); // seq 42 → 42 s after the epoch
        assert_eq!(
            conflict_name(&path, &d),
            p(format!(
                "old.sync-conflict-19700101-000042-{}",
                dev(3).short()
            ))
        );
    }

    #[test]
    fn conflict_name_of_long_paths_stays_valid() {
        let v = loser(&p("x"), file_content(1, 0));
        // Room for a shortened stem.
        let dir = "d".repeat(4000);
        let path = p(format!("{dir}/{}.txt", "s".repeat(80)));
        let c = conflict_name(&path, &v);
        assert_eq!(c.parent(), path.parent());
        assert_eq!(c.as_bytes().len(), RelPath::MAX_LEN);
        assert!(c.file_name().ends_with(b".txt"));
        assert!(c.file_name().starts_with(b"sss"));
        // Room for the marker only: the ext goes.
        let dir = "d".repeat(4040);
        let path = p(format!("{dir}/a.{}", "e".repeat(50)));
        let c = conflict_name(&path, &v);
        assert_eq!(c.parent(), path.parent());
        assert!(c.as_bytes().len() <= RelPath::MAX_LEN);
        assert!(c.file_name().starts_with(b"a.sync-conflict-"));
        // Less room than the marker: a digest prefix, still in the same directory.
        let dir = "d".repeat(4090);
        let path = p(format!("{dir}/.x"));
        let c = conflict_name(&path, &v);
        assert_eq!(c.parent(), path.parent());
        assert_ne!(c, path);
        assert_eq!(c.file_name().len(), 5); // 4096 - 4091
    }

    #[test]
    fn edit_beats_concurrent_delete() {
        let (a, b) = (dev(1), dev(2));
        let path = p("f");
        let base = version(&path, a, 1, vv(&[(a, 1)]), file_content(0, 100));
        let del = version(&path, a, 2, vv(&[(a, 2)]), Content::Deleted);
        // The edit has an older mtime than the delete's base: liveness alone decides.
        let edit = version(&path, b, 1, vv(&[(a, 1), (b, 1)]), file_content(1, 1));
        for order in [
            vec![base.clone(), del.clone(), edit.clone()],
            vec![edit.clone(), del.clone(), base.clone()],
        ] {
            let s = state_of(order);
            assert_eq!(s.heads(&path).len(), 2);
            let r = resolve(s.heads(&path));
            assert_eq!(r.winner, Some(&edit));
            assert!(r.conflicts.is_empty(), "the delete just disappears");
            let tree = s.tree();
            assert_eq!(tree.len(), 1);
            assert_eq!(tree[&path].version, edit.id);
        }
    }

    #[test]
    fn all_heads_deleted_lists_nothing() {
        let (a, b) = (dev(1), dev(2));
        let path = p("gone");
        let base = version(&path, a, 1, vv(&[(a, 1)]), file_content(0, 0));
        let d1 = version(&path, a, 2, vv(&[(a, 2)]), Content::Deleted);
        let d2 = version(&path, b, 1, vv(&[(a, 1), (b, 1)]), Content::Deleted);
        let s = state_of([base, d1, d2]);
        assert_eq!(s.heads(&path).len(), 2);
        assert_eq!(
            resolve(s.heads(&path)),
            Resolution {
                winner: None,
                conflicts: vec![]
            }
        );
        assert!(s.tree().is_empty());
    }

    #[test]
    fn equal_content_concurrent_versions_make_no_copy() {
        let (a, b, c) = (dev(1), dev(2), dev(3));
        let path = p("same.bin");
        let va = version(&path, a, 1, vv(&[(a, 1)]), file_content(7, 50));
        let mut vb = version(&path, b, 1, vv(&[(b, 1)]), file_content(7, 60));
        if let Content::File { executable, .. } = &mut vb.content {
            *executable = true; // not part of "same content"
        }
        let s = state_of([va.clone(), vb.clone()]);
        let r = resolve(s.heads(&path));
        assert_eq!(r.winner, Some(&vb));
        assert!(r.conflicts.is_empty());
        assert_eq!(s.tree().len(), 1);
        // Three-way: two losers with one content give one copy (the better one).
        let l1 = version(&path, c, 1, vv(&[(c, 1)]), file_content(8, 10));
        let l2 = version(&path, c, 9, vv(&[(c, 9), (a, 1)]), file_content(8, 20)); // supersedes va
        let s = state_of([va, vb.clone(), l1.clone()]);
        assert_eq!(resolve(s.heads(&path)).conflicts, vec![&l1]);
        let d = dev(4);
        let l3 = version(&path, d, 1, vv(&[(d, 1)]), file_content(8, 20));
        let s = state_of([vb.clone(), l1.clone(), l2.clone(), l3.clone()]);
        assert_eq!(s.heads(&path).len(), 3, "l1 is superseded by l2");
        let r = resolve(s.heads(&path));
        assert_eq!(r.winner, Some(&vb));
        let best = if l2.id > l3.id { &l2 } else { &l3 };
        assert_eq!(r.conflicts, vec![best]);
        assert_eq!(s.tree().len(), 2);
    }

    #[test]
    fn duplicate_and_superseded_are_reported() {
        let (a, b) = (dev(1), dev(2));
        let path = p("x");
        let v1 = version(&path, a, 1, vv(&[(a, 1)]), file_content(1, 0));
        let v2 = version(&path, a, 2, vv(&[(a, 2)]), file_content(2, 0));
        let w = version(&path, b, 1, vv(&[(b, 1)]), file_content(3, 0));
        let mut heads = Vec::new();
        assert_eq!(apply_to_heads(&mut heads, v2.clone()), Applied::NewHead);
        assert_eq!(apply_to_heads(&mut heads, v2.clone()), Applied::Duplicate);
        assert_eq!(apply_to_heads(&mut heads, v1.clone()), Applied::Superseded);
        assert_eq!(apply_to_heads(&mut heads, w.clone()), Applied::NewHead);
        assert_eq!(apply_to_heads(&mut heads, w.clone()), Applied::Duplicate);
        assert_eq!(heads.len(), 2);
        assert!(
            heads.windows(2).all(|p| p[0].id < p[1].id),
            "heads sorted by id"
        );
        // A merge of both supersedes both.
        let m = version(&path, a, 3, vv(&[(a, 3), (b, 1)]), file_content(4, 0));
        assert_eq!(apply_to_heads(&mut heads, m.clone()), Applied::NewHead);
        assert_eq!(heads, vec![m]);
    }

    #[test]
    fn dir_beats_concurrent_file_and_file_becomes_copy() {
        let (a, b) = (dev(1), dev(2));
        let path = p("thing");
        let dir = version(&path, a, 1, vv(&[(a, 1)]), Content::Dir);
        let file = version(&path, b, 1, vv(&[(b, 1)]), file_content(1, i64::MAX));
        let s = state_of([file.clone(), dir.clone()]);
        let r = resolve(s.heads(&path));
        assert_eq!(r.winner, Some(&dir));
        assert_eq!(r.conflicts, vec![&file]);
        let tree = s.tree();
        assert_eq!(tree[&path].content, Content::Dir);
        let copy = conflict_name(&path, &file);
        assert_eq!(tree[&copy].conflict_of, Some(path));
        // Two concurrent mkdirs need no copy.
        let dir2 = version(&dir.path, b, 2, vv(&[(b, 2)]), Content::Dir);
        let s = state_of([dir.clone(), dir2.clone()]);
        assert_eq!(s.tree().len(), 1);
        assert_eq!(s.tree()[&dir.path].version, dir.id.max(dir2.id));
    }

    #[test]
    fn winner_among_files_is_later_mtime_then_larger_id() {
        let (a, b) = (dev(1), dev(2));
        let path = p("t");
        let va = version(&path, a, 1, vv(&[(a, 1)]), file_content(1, 5));
        let vb = version(&path, b, 1, vv(&[(b, 1)]), file_content(2, 5));
        let s = state_of([va.clone(), vb.clone()]);
        let want = if va.id > vb.id { &va } else { &vb };
        assert_eq!(resolve(s.heads(&path)).winner, Some(want));
        let vb6 = version(&path, b, 2, vv(&[(b, 2)]), file_content(2, 6));
        let s = state_of([va, vb6.clone()]);
        assert_eq!(resolve(s.heads(&path)).winner, Some(&vb6));
    }

    #[test]
    fn dir_delete_removes_only_known_children() {
        let (a, b) = (dev(1), dev(2));
        let (d, known, new) = (p("d"), p("d/known"), p("d/new"));
        let mk = version(&d, a, 1, vv(&[(a, 1)]), Content::Dir);
        let k = version(&known, a, 2, vv(&[(a, 2)]), file_content(1, 0));
        // b knew d and d/known, deletes both.
        let del_k = version(&known, b, 1, vv(&[(a, 2), (b, 1)]), Content::Deleted);
        let del_d = version(&d, b, 2, vv(&[(a, 1), (b, 2)]), Content::Deleted);
        // a concurrently created d/new.
        let n = version(&new, a, 3, vv(&[(a, 3)]), file_content(2, 0));
        let s = state_of([mk, k, del_k, del_d, n.clone()]);
        let tree = s.tree();
        assert_eq!(
            tree.keys().collect::<Vec<_>>(),
            vec![&new],
            "d is implied, not listed"
        );
        assert_eq!(tree[&new].version, n.id);
    }

    #[test]
    fn file_with_live_children_is_displaced() {
        let (a, b) = (dev(1), dev(2));
        let (d, child) = (p("d"), p("d/x"));
        let mk = version(&d, a, 1, vv(&[(a, 1)]), Content::Dir);
        // b replaced the directory by a file; a concurrently created d/x.
        let f = version(&d, b, 1, vv(&[(a, 1), (b, 1)]), file_content(1, 0));
        let x = version(&child, a, 2, vv(&[(a, 2)]), file_content(2, 0));
        let s = state_of([mk, f.clone(), x.clone()]);
        assert_eq!(s.heads(&d), std::slice::from_ref(&f));
        let tree = s.tree();
        assert_eq!(tree.len(), 2);
        assert_eq!(tree[&child].version, x.id);
        assert_eq!(
            tree[&conflict_name(&d, &f)],
            TreeEntry {
                version: f.id,
                content: f.content.clone(),
                conflict_of: Some(d.clone()),
            }
        );
        assert!(!tree.contains_key(&d));
    }

    #[test]
    fn copy_name_taken_by_real_file() {
        let (a, b) = (dev(1), dev(2));
        let path = p("r.txt");
        let va = version(&path, a, 1, vv(&[(a, 1)]), file_content(1, 9));
        let vb = version(&path, b, 1, vv(&[(b, 1)]), file_content(2, 1));
        let name = conflict_name(&path, &vb);
        // a materialized the copy as a file of its own: same content, no second entry.
        let real = version(&name, a, 2, vv(&[(a, 2)]), file_content(2, 1));
        let s = state_of([va.clone(), vb.clone(), real.clone()]);
        let tree = s.tree();
        assert_eq!(tree.len(), 2);
        assert_eq!(tree[&name].version, real.id);
        assert_eq!(tree[&name].conflict_of, None);
        // Then a writes the next version of r.txt: the loser is superseded, the copy stays.
        let next = version(&path, a, 3, vv(&[(a, 3), (b, 1)]), file_content(3, 10));
        let mut s2 = s.clone();
        s2.apply(next.clone());
        let tree = s2.tree();
        assert_eq!(tree.len(), 2);
        assert_eq!(tree[&path].version, next.id);
        assert_eq!(tree[&name].version, real.id);
        // Different content under the name: the copy moves on to the "-2" name.
        let other = version(&name, a, 2, vv(&[(a, 2)]), file_content(9, 1));
        let s = state_of([va, vb.clone(), other.clone()]);
        let tree = s.tree();
        assert_eq!(tree.len(), 3);
        assert_eq!(tree[&name].version, other.id);
        let second = p(format!(
            "r.sync-conflict-19700101-000000-{}-2.txt",
            b.short()
        ));
        assert_eq!(tree[&second].version, vb.id);
        assert_eq!(tree[&second].conflict_of, Some(path));
    }

    #[test]
    fn civil_dates_match_the_time_crate() {
        for secs in [
            -62_135_596_800, // 0001-01-01
            -86_401,
            -1,
            0,
            951_782_400, // 2000-02-29
            4_102_444_799,
            253_402_300_799, // 9999-12-31 23:59:59
        ] {
            let dt = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            assert_eq!(
                (y, m, d),
                (
                    i64::from(dt.year()),
                    i64::from(u8::from(dt.month())),
                    i64::from(dt.day())
                )
            );
        }
    }

    // ---- property tests: random causal histories ----

    /// Paths the simulated devices write: nested ones so files and directories collide,
    /// a dotfile and a non-UTF-8 name.
    const SIM_PATHS: &[&[u8]] = &[
        b"a.txt",
        b".rc",
        b"d",
        b"d/x.txt",
        b"d/e",
        b"d/e/y.md",
        b"d/e/z",
        b"n\xffo.bin",
    ];

    /// 2025-11-25 10:30:00 UTC.
    const BASE_SECS: i64 = 1_764_066_600;

    #[derive(Clone, Debug)]
    enum Op {
        Write {
            dev: usize,
            path: usize,
            content: u8,
            mtime: u8,
        },
        Mkdir {
            dev: usize,
            path: usize,
        },
        Delete {
            dev: usize,
            path: usize,
        },
        Rename {
            dev: usize,
            from: usize,
            to: usize,
        },
        Sync {
            to: usize,
            from: usize,
            seed: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let n = SIM_PATHS.len();
        prop_oneof![
            5 => (0..4usize, 0..n, 0..4u8, 0..6u8)
                .prop_map(|(dev, path, content, mtime)| Op::Write { dev, path, content, mtime }),
            1 => (0..4usize, 0..n).prop_map(|(dev, path)| Op::Mkdir { dev, path }),
            2 => (0..4usize, 0..n).prop_map(|(dev, path)| Op::Delete { dev, path }),
            1 => (0..4usize, 0..n, 0..n).prop_map(|(dev, from, to)| Op::Rename { dev, from, to }),
            5 => (0..4usize, 0..4usize, any::<u64>()).prop_map(|(to, from, seed)| Op::Sync { to, from, seed }),
        ]
    }

    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn shuffle<T>(v: &mut [T], seed: u64) {
        let mut s = seed;
        for i in (1..v.len()).rev() {
            let j = (splitmix(&mut s) % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }

    struct Device {
        id: DeviceId,
        seq: u64,
        state: MergeState,
        known: Vec<Version>,
        seen: HashSet<(RelPath, VersionId)>,
    }

    /// Devices that only ever write what a real device would: each new version's vector
    /// is the join of the heads that device has seen, plus its own new seq.
    struct Sim {
        devices: Vec<Device>,
        all: Vec<Version>,
    }

    impl Sim {
        fn new(n: usize) -> Sim {
            let devices = (0..n)
                .map(|i| Device {
                    id: dev(i as u8 + 1),
                    seq: 0,
                    state: MergeState::new(),
                    known: Vec::new(),
                    seen: HashSet::new(),
                })
                .collect();
            Sim {
                devices,
                all: Vec::new(),
            }
        }

        /// One log entry by device `d`, creating one version per (path, content).
        fn entry(&mut self, d: usize, writes: Vec<(RelPath, Content)>) {
            let dv = &mut self.devices[d];
            dv.seq += 1;
            let id = VersionId {
                author: dv.id,
                seq: dv.seq,
            };
            let mut made = Vec::new();
            for (path, content) in writes {
                let mut vv = VersionVector::new();
                for h in dv.state.heads(&path) {
                    vv.join(&h.vv);
                }
                vv.set(dv.id, dv.seq);
                made.push(Version {
                    path,
                    id,
                    vv,
                    content,
                });
            }
            for v in made {
                assert_eq!(
                    dv.state.apply(v.clone()),
                    Applied::NewHead,
                    "own write must be a head"
                );
                dv.seen.insert((v.path.clone(), v.id));
                dv.known.push(v.clone());
                self.all.push(v);
            }
        }

        fn tree(&self, d: usize) -> BTreeMap<RelPath, TreeEntry> {
            self.devices[d].state.tree()
        }

        /// The protocol: before writing `path`, record its materialized copies as files.
        fn materialize(&mut self, d: usize, path: &RelPath) {
            let copies: Vec<(RelPath, Content)> = self
                .tree(d)
                .into_iter()
                .filter(|(_, e)| e.conflict_of.as_ref() == Some(path))
                .map(|(c, e)| (c, e.content))
                .collect();
            for (c, content) in copies {
                self.entry(d, vec![(c, content)]);
            }
        }

        /// Makes every ancestor of `path` a directory in `d`'s view.
        fn ensure_parents(&mut self, d: usize, path: &RelPath) {
            let mut ancestors = Vec::new();
            let mut up = path.parent();
            while let Some(a) = up {
                up = a.parent();
                ancestors.push(a);
            }
            for a in ancestors.into_iter().rev() {
                let is_dir = matches!(self.tree(d).get(&a), Some(e) if e.content == Content::Dir);
                if !is_dir {
                    self.materialize(d, &a);
                    self.entry(d, vec![(a, Content::Dir)]);
                }
            }
        }

        /// Paths strictly below `path` that are live in `d`'s view.
        fn live_under(&self, d: usize, path: &RelPath) -> Vec<RelPath> {
            let st = &self.devices[d].state;
            st.paths()
                .filter(|q| q.starts_with(path) && *q != path)
                .filter(|q| resolve(st.heads(q)).winner.is_some())
                .cloned()
                .collect()
        }

        fn clear_under(&mut self, d: usize, path: &RelPath) {
            for q in self.live_under(d, path) {
                self.entry(d, vec![(q, Content::Deleted)]);
            }
        }

        fn run(&mut self, op: &Op) {
            let n = self.devices.len();
            let sp = |i: usize| p(SIM_PATHS[i].to_vec());
            match *op {
                Op::Write {
                    dev,
                    path,
                    content,
                    mtime,
                } => {
                    let (d, path) = (dev % n, sp(path));
                    self.ensure_parents(d, &path);
                    self.clear_under(d, &path);
                    self.materialize(d, &path);
                    let mut c =
                        file_content(content, (BASE_SECS + i64::from(mtime)) * 1_000_000_000);
                    if let Content::File { executable, .. } = &mut c {
                        *executable = mtime % 2 == 0;
                    }
                    self.entry(d, vec![(path, c)]);
                }
                Op::Mkdir { dev, path } => {
                    let (d, path) = (dev % n, sp(path));
                    self.ensure_parents(d, &path);
                    if matches!(self.tree(d).get(&path), Some(e) if e.content == Content::Dir) {
                        return;
                    }
                    self.materialize(d, &path);
                    self.entry(d, vec![(path, Content::Dir)]);
                }
                Op::Delete { dev, path } => {
                    let (d, path) = (dev % n, sp(path));
                    let live = resolve(self.devices[d].state.heads(&path)).winner.is_some();
                    if !live && self.live_under(d, &path).is_empty() {
                        return;
                    }
                    self.materialize(d, &path);
                    self.clear_under(d, &path);
                    self.entry(d, vec![(path, Content::Deleted)]);
                }
                Op::Rename { dev, from, to } => {
                    let (d, from, to) = (dev % n, sp(from), sp(to));
                    if from.starts_with(&to) || to.starts_with(&from) {
                        return;
                    }
                    if !self.live_under(d, &to).is_empty() {
                        return;
                    }
                    self.ensure_parents(d, &to);
                    let Some(e) = self.tree(d).get(&from).cloned() else {
                        return;
                    };
                    if !matches!(e.content, Content::File { .. }) {
                        return;
                    }
                    self.materialize(d, &from);
                    self.materialize(d, &to);
                    self.entry(d, vec![(from, Content::Deleted), (to, e.content)]);
                }
                Op::Sync { to, from, seed } => {
                    let (t, f) = (to % n, from % n);
                    if t == f {
                        return;
                    }
                    let mut s = seed;
                    let everything = seed % 3 == 0;
                    let incoming: Vec<Version> = self.devices[f]
                        .known
                        .iter()
                        .filter(|_| everything || splitmix(&mut s).is_multiple_of(2))
                        .cloned()
                        .collect();
                    let dv = &mut self.devices[t];
                    for v in incoming {
                        dv.state.apply(v.clone());
                        if dv.seen.insert((v.path.clone(), v.id)) {
                            dv.known.push(v);
                        }
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Random causal histories: the tree depends only on the set of versions, no
        /// version is lost, and every tree path is valid and placed where it belongs.
        #[test]
        fn random_histories_merge_order_independently(
            n in 2usize..=4,
            ops in vec(op(), 1..40),
            shuffles in vec(any::<u64>(), 3),
        ) {
            let mut sim = Sim::new(n);
            for o in &ops {
                sim.run(o);
            }
            let all = sim.all;
            let reference = state_of(all.iter().cloned());
            let tree = reference.tree();

            // (1) Any delivery order, with or without duplicates, gives the same heads and tree.
            for (i, seed) in shuffles.iter().enumerate() {
                let mut order = all.clone();
                if i == 0 {
                    order.extend(all.iter().cloned());
                }
                shuffle(&mut order, *seed);
                let s = state_of(order);
                prop_assert_eq!(&s, &reference);
                prop_assert_eq!(&s.tree(), &tree);
            }
            let reversed = state_of(all.iter().rev().cloned());
            prop_assert_eq!(&reversed.tree(), &tree);

            // Heads are exactly the maximal versions of each path.
            for path in reference.paths() {
                let of_path: Vec<&Version> = all.iter().filter(|v| &v.path == path).collect();
                let mut maximal: Vec<VersionId> = of_path
                    .iter()
                    .filter(|v| !of_path.iter().any(|w| supersedes(w, v)))
                    .map(|v| v.id)
                    .collect();
                maximal.sort();
                let heads: Vec<VersionId> = reference.heads(path).iter().map(|h| h.id).collect();
                prop_assert_eq!(heads, maximal);
            }

            // (2) No lost version: dominated by another version of its path, or present.
            for v in &all {
                let dominated = all
                    .iter()
                    .any(|w| w.path == v.path && w.id != v.id && w.vv.dominates(&v.vv));
                if dominated {
                    continue;
                }
                match &v.content {
                    Content::Deleted => {
                        // It lost only to a live concurrent head, if anything of its own
                        // path is there (a concurrent loser of another path may take the
                        // name as its copy: the delete did not know of that version).
                        if tree.get(&v.path).is_some_and(|e| e.conflict_of.is_none()) {
                            prop_assert!(reference.heads(&v.path).iter().any(|h| h.content.is_live()));
                        }
                    }
                    Content::Dir => {
                        prop_assert_eq!(tree.get(&v.path).map(|e| &e.content), Some(&Content::Dir));
                    }
                    Content::File { .. } => {
                        // Its content is at its path, in a copy of its path, or in a file at
                        // a copy name of its path: losers with equal content share one copy,
                        // and a copy whose name holds a file with its content is omitted
                        // (a device recorded that copy as its own file before writing on).
                        let names: Vec<RelPath> = all
                            .iter()
                            .filter(|w| w.path == v.path)
                            .flat_map(|w| (0..8).map(|k| conflict_name_nth(&v.path, w, k)))
                            .collect();
                        let found = tree.iter().any(|(q, e)| {
                            same_content(&e.content, &v.content)
                                && (q == &v.path || e.conflict_of.as_ref() == Some(&v.path) || names.contains(q))
                        });
                        prop_assert!(found, "lost {:?}\ntree {:#?}", v, tree);
                    }
                }
            }

            // (3) Valid paths; copies beside their origin; files have no children; no tombstones.
            for (q, e) in &tree {
                prop_assert!(RelPath::new(q.as_bytes().to_vec()).is_ok());
                prop_assert!(e.content.is_live());
                if let Some(origin) = &e.conflict_of {
                    prop_assert_eq!(q.parent(), origin.parent());
                    prop_assert_ne!(q, origin);
                    prop_assert!(is_file(&e.content));
                    let origin_heads = reference.heads(origin);
                    prop_assert!(origin_heads.iter().any(|h| h.id == e.version));
                }
                if matches!(e.content, Content::File { .. }) {
                    prop_assert!(!tree.keys().any(|k| k != q && k.starts_with(q)), "file {:?} has children", q);
                }
            }
        }

        /// Conflict names of arbitrary valid names are valid, beside the original, and
        /// carry the mtime the `time` crate formats.
        #[test]
        fn conflict_names_are_valid(
            dir in proptest::option::of("[a-z]{1,3}(/[a-z.]{1,3}){0,2}"),
            name in vec(1u8..=255, 1..40),
            mtime_ns in any::<i64>(),
            author in 1u8..5,
        ) {
            let name: Vec<u8> = name.into_iter().map(|b| if b == b'/' { b'_' } else { b }).collect();
            prop_assume!(name != b"." && name != b"..");
            prop_assume!(dir.as_deref().is_none_or(|d| d.split('/').all(|c| c != "." && c != "..")));
            let path = match &dir {
                Some(d) => p(d.as_str()).join(&name).unwrap(),
                None => p(name.clone()),
            };
            let v = version(&path, dev(author), 3, vv(&[(dev(author), 3)]), file_content(1, mtime_ns));
            let c = conflict_name(&path, &v);
            prop_assert!(RelPath::new(c.as_bytes().to_vec()).is_ok());
            prop_assert_eq!(c.parent(), path.parent());
            prop_assert_ne!(&c, &path);
            let dt = time::OffsetDateTime::from_unix_timestamp(mtime_ns.div_euclid(1_000_000_000)).unwrap();
            let fmt = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
            let marker = format!(".sync-conflict-{}-{}", dt.format(&fmt).unwrap(), dev(author).short());
            let fname = c.file_name();
            prop_assert!(fname.windows(marker.len()).any(|w| w == marker.as_bytes()));
            prop_assert!(fname.starts_with(&name[..1]));
        }
    }
}
