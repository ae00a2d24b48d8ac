//! The domain types shared by the log, the merge and the index: folder-relative paths,
//! version vectors, version ids and what a version holds.
//!
//! These are not wire types: `log::wire` converts explicitly.
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use weft_crypto::{ChunkId, ChunkKey, DeviceId, Hash};

/// Why a byte string is not an acceptable folder-relative path.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// Empty path.
    #[error("empty path")]
    Empty,
    /// Starts with `/`.
    #[error("absolute path {0:?}")]
    Absolute(String),
    /// A `.` or `..` or empty component.
    #[error("path {0:?} has a '.', '..' or empty component")]
    BadComponent(String),
    /// A NUL byte.
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    /// Longer than [`RelPath::MAX_LEN`].
    #[error("path of {0} bytes is too long")]
    TooLong(usize),
}

/// A path inside a folder: relative, `/`-separated, holding the bytes the device's
/// filesystem gave (not necessarily UTF-8). Construction validates it, so a `RelPath`
/// can never escape its folder root.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<u8>", into = "Vec<u8>")]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// Longest accepted path, in bytes (Linux's PATH_MAX).
    pub const MAX_LEN: usize = 4096;

    /// Validates `bytes` as a folder-relative path.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<RelPath, PathError> {
        let b: Vec<u8> = bytes.into();
        let lossy = || String::from_utf8_lossy(&b).into_owned();
        if b.is_empty() {
            return Err(PathError::Empty);
        }
        if b.len() > Self::MAX_LEN {
            return Err(PathError::TooLong(b.len()));
        }
        if b[0] == b'/' {
            return Err(PathError::Absolute(lossy()));
        }
        if b.contains(&0) {
            return Err(PathError::Nul(lossy()));
        }
        if b.split(|c| *c == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..")
        {
            return Err(PathError::BadComponent(lossy()));
        }
        Ok(RelPath(b))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The parent directory, or `None` at the top level.
    pub fn parent(&self) -> Option<RelPath> {
        let i = self.0.iter().rposition(|c| *c == b'/')?;
        Some(RelPath(self.0[..i].to_vec()))
    }

    /// The last component.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|c| *c == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// `self/name`; `name` must be one valid component.
    pub fn join(&self, name: &[u8]) -> Result<RelPath, PathError> {
        let mut b = self.0.clone();
        b.push(b'/');
        b.extend_from_slice(name);
        RelPath::new(b)
    }

    /// Whether `self` is `other` or lies under it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.get(other.0.len()) == Some(&b'/'))
    }

    /// The path on disk under `root`.
    #[cfg(unix)]
    pub fn to_path(&self, root: &std::path::Path) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        root.join(std::ffi::OsStr::from_bytes(&self.0))
    }

    /// The path relative to `root`, if `path` is under it and valid.
    #[cfg(unix)]
    pub fn from_path(root: &std::path::Path, path: &std::path::Path) -> Result<RelPath, PathError> {
        use std::os::unix::ffi::OsStrExt;
        let rel = path
            .strip_prefix(root)
            .map_err(|_| PathError::Absolute(path.display().to_string()))?;
        RelPath::new(rel.as_os_str().as_bytes().to_vec())
    }
}

impl TryFrom<Vec<u8>> for RelPath {
    type Error = PathError;
    fn try_from(v: Vec<u8>) -> Result<Self, Self::Error> {
        RelPath::new(v)
    }
}

impl From<RelPath> for Vec<u8> {
    fn from(p: RelPath) -> Vec<u8> {
        p.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// A version vector: for each device that wrote the path, the log sequence number of
/// its latest write that this version has seen.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(pub BTreeMap<DeviceId, u64>);

impl VersionVector {
    /// The empty vector (dominated by everything).
    pub fn new() -> Self {
        Self::default()
    }

    /// The component for `device` (0 if absent).
    pub fn get(&self, device: &DeviceId) -> u64 {
        self.0.get(device).copied().unwrap_or(0)
    }

    /// Sets `device`'s component.
    pub fn set(&mut self, device: DeviceId, seq: u64) {
        self.0.insert(device, seq);
    }

    /// Component-wise maximum, in place.
    pub fn join(&mut self, other: &VersionVector) {
        for (d, s) in &other.0 {
            let e = self.0.entry(*d).or_insert(0);
            if *s > *e {
                *e = *s;
            }
        }
    }

    /// `self ≥ other` in every component.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(d, s)| self.get(d) >= *s)
    }

    /// `Some(Less|Equal|Greater)` when ordered, `None` when concurrent.
    pub fn compare(&self, other: &VersionVector) -> Option<Ordering> {
        match (self.dominates(other), other.dominates(self)) {
            (true, true) => Some(Ordering::Equal),
            (true, false) => Some(Ordering::Greater),
            (false, true) => Some(Ordering::Less),
            (false, false) => None,
        }
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (d, s)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}:{}", d.short(), s)?;
        }
        f.write_str("}")
    }
}

/// Names one version: the entry that created it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct VersionId {
    /// The device whose log entry created the version.
    pub author: DeviceId,
    /// That entry's sequence number in the author's log for the folder.
    pub seq: u64,
}

/// What a version of a path is.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Content {
    /// A regular file.
    File {
        /// Length in bytes.
        size: u64,
        /// Modification time, Unix nanoseconds.
        mtime_ns: i64,
        /// The owner-executable bit.
        executable: bool,
        /// Content hash: identifies equal contents within a folder.
        hash: Hash,
    },
    /// A directory (kept explicitly so empty directories sync).
    Dir,
    /// A tombstone: the path was deleted.
    Deleted,
}

impl Content {
    /// Whether this version makes the path exist.
    pub fn is_live(&self) -> bool {
        !matches!(self, Content::Deleted)
    }
}

/// One version of one path: the unit the merge works on.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct Version {
    /// The path this version is of.
    pub path: RelPath,
    /// The entry that created it.
    pub id: VersionId,
    /// Its causal history.
    pub vv: VersionVector,
    /// What it holds.
    pub content: Content,
}

/// One chunk of a file, as a manifest lists it.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct ChunkRef {
    /// BLAKE3 of the ciphertext.
    pub id: ChunkId,
    /// The convergent key that opens it.
    pub key: ChunkKey,
    /// Plaintext length.
    pub len: u32,
}

/// A file version's full description: metadata and the ordered chunk list.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct Manifest {
    /// Length in bytes (the sum of the chunk lengths).
    pub size: u64,
    /// Modification time, Unix nanoseconds.
    pub mtime_ns: i64,
    /// The owner-executable bit.
    pub executable: bool,
    /// BLAKE3 over the chunk keys and the size: equal for equal contents within a folder
    /// (chunk keys are keyed hashes of the plaintext), without a separate pass over the bytes.
    pub hash: Hash,
    /// The chunks, in file order.
    pub chunks: Vec<ChunkRef>,
}

impl Manifest {
    /// The content hash of a chunk list.
    pub fn content_hash(chunks: &[ChunkRef]) -> Hash {
        let mut h = blake3::Hasher::new_derive_key("weft file content hash v1");
        let mut size = 0u64;
        for c in chunks {
            h.update(&c.key.0);
            h.update(&c.len.to_le_bytes());
            size += u64::from(c.len);
        }
        h.update(&size.to_le_bytes());
        Hash(*h.finalize().as_bytes())
    }

    /// The merge's view of this manifest.
    pub fn content(&self) -> Content {
        Content::File {
            size: self.size,
            mtime_ns: self.mtime_ns,
            executable: self.executable,
            hash: self.hash,
        }
    }
}
