//! The store's error type: one enum, each variant carrying what a person needs to act on it.
use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong in the store.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed (corruption, I/O under redb).
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The disk is full: nothing was recorded.
    #[error(
        "disk full while writing {path}: nothing was recorded; free some space and run the command again"
    )]
    DiskFull {
        /// What was being written.
        path: PathBuf,
    },
    /// A cryptographic check failed.
    #[error(transparent)]
    Crypto(#[from] weft_crypto::CryptoError),
    /// Stored or received bytes did not decode.
    #[error("malformed {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A path is not acceptable inside a folder.
    #[error(transparent)]
    Path(#[from] crate::model::PathError),
    /// A contact request that cannot be done (says why).
    #[error("{0}")]
    Contact(String),
    /// A membership entry or sharing request that cannot be accepted (says why).
    #[error("{0}")]
    Membership(String),
    /// `weft init` has not been run for this home.
    #[error("no device here yet: run `weft init` first (home: {0})")]
    NotInitialized(PathBuf),
    /// A folder argument matched nothing.
    #[error("no folder named, with id or at path {0:?}")]
    NoSuchFolder(String),
    /// A folder argument matched several folders.
    #[error("{0:?} names more than one folder; use its id")]
    AmbiguousFolder(String),
    /// The path given for a new folder cannot be one.
    #[error("cannot add {path}: {reason}")]
    BadFolderPath {
        /// The path given.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// A folder's root is gone: it is never read as "every file was deleted".
    #[error("folder root {0} is missing or not a directory: not scanning (is the disk mounted?)")]
    RootMissing(PathBuf),
    /// A folder root is there but its marker is not: most likely the disk that holds
    /// it is not mounted and this is the empty mount point.
    #[error(
        "folder root {0} lacks its .weft/folder marker: not scanning (is the disk mounted? if the folder was really emptied, remove and re-add it)"
    )]
    MarkerMissing(PathBuf),
    /// A path is not inside any registered folder.
    #[error("{0} is not inside a weft folder")]
    NotInFolder(PathBuf),
    /// A file has no such version.
    #[error("{path} has no version {version}")]
    NoSuchVersion {
        /// The file.
        path: String,
        /// The version number asked for.
        version: u64,
    },
    /// A version's chunks are not in the local cache.
    #[error(
        "version {version} of {path} is not restorable here: {missing} chunk(s) are not in the local cache"
    )]
    ChunksMissing {
        /// The file.
        path: String,
        /// The version number.
        version: u64,
        /// How many chunks are missing.
        missing: usize,
    },
    /// Restoring would overwrite local changes that were not scanned yet.
    #[error(
        "{0} has changes that are not scanned yet: run `weft scan` first, or restore with --to elsewhere"
    )]
    UnscannedChanges(PathBuf),
    /// The config file is invalid.
    #[error("config file {path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A write to the database failed earlier (a full disk, an I/O error), and redb
    /// refuses everything after that until the database is opened again.
    #[error("the database refuses writes since one failed (a full disk?): it must be opened again")]
    DatabaseFailed,
    /// A log entry failed verification.
    #[error("log entry {author}#{seq} rejected: {reason}")]
    BadEntry {
        /// The author device.
        author: String,
        /// The sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// The database's file name in a home, as errors name it.
const DB_FILE: &str = "weft.redb";

/// The store's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// Wraps an I/O error with its path, recognising a full disk.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> StoreError {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.kind() == std::io::ErrorKind::StorageFull
        {
            StoreError::DiskFull { path }
        } else {
            StoreError::Io { path, source }
        }
    }

    /// Whether the database is unusable until it is opened again: redb latches a failed
    /// write (of its own file) and answers every later request with an error. A
    /// long-running process (the node) reopens it; nothing committed is lost, since a
    /// failed commit leaves the one before it in place.
    pub fn needs_reopen(&self) -> bool {
        match self {
            StoreError::DatabaseFailed => true,
            StoreError::DiskFull { path } => path.as_os_str() == DB_FILE,
            StoreError::Db(redb::Error::Io(_)) => true,
            _ => false,
        }
    }

    pub(crate) fn decode(what: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Decode {
            what,
            reason: e.to_string(),
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                let e: redb::Error = e.into();
                // A full disk under redb is still a full disk.
                if let redb::Error::Io(io) = &e
                    && io.raw_os_error() == Some(libc::ENOSPC)
                {
                    return StoreError::DiskFull { path: PathBuf::from(DB_FILE) };
                }
                if matches!(e, redb::Error::PreviousIo) {
                    return StoreError::DatabaseFailed;
                }
                StoreError::Db(e)
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
