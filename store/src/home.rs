//! The device's home directory: key files, config file, database and chunk cache.
//!
//! ```text
//! $WEFT_HOME/
//!   person.key    32-byte person key seed, mode 0600
//!   device.key    32-byte device key seed, mode 0600 (also the libp2p identity)
//!   device.cert   the person's certificate for this device
//!   config.toml   settings (history retention, …)
//!   weft.redb     the database
//!   cache/packs/  the chunk cache: ciphertext chunks appended to pack files
//! ```
use crate::error::{Result, StoreError};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use weft_crypto::{DeviceCertificate, DeviceId, PersonId, SecretKey};

/// The keys and certificate of this device.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The person key (shared by the person's devices).
    pub person: SecretKey,
    /// This device's key.
    pub device: SecretKey,
    /// The person's certificate for this device.
    pub cert: DeviceCertificate,
}

impl Identity {
    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        DeviceId(self.device.public())
    }

    /// The person's id.
    pub fn person_id(&self) -> PersonId {
        PersonId(self.person.public())
    }

    /// The device's name, from its certificate.
    pub fn name(&self) -> &str {
        &self.cert.body.name
    }
}

/// Settings read from `config.toml`; every field has a default.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Version history settings.
    pub history: HistoryConfig,
    /// Chunk cache settings.
    pub cache: crate::locs::CacheConfig,
}

/// `[history]` in `config.toml`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// How long a replaced or deleted version stays restorable, in days.
    pub retention_days: u32,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { retention_days: 30 }
    }
}

/// Paths inside a home directory.
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// A home rooted at `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// The platform default: `$XDG_DATA_HOME/weft` or equivalent.
    pub fn default_root() -> Option<PathBuf> {
        dirs::data_dir().map(|d| d.join("weft"))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("weft.redb")
    }

    /// The chunk cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    fn person_key(&self) -> PathBuf {
        self.root.join("person.key")
    }

    fn device_key_path(&self) -> PathBuf {
        self.root.join("device.key")
    }

    fn device_cert(&self) -> PathBuf {
        self.root.join("device.cert")
    }

    /// Whether `weft init` has run here.
    pub fn is_initialized(&self) -> bool {
        self.device_cert().exists()
    }

    /// Creates the keys and certificate. Returns `(identity, false)` without touching
    /// anything if they already exist.
    pub fn init(&self, name: &str, now_ms: u64) -> Result<(Identity, bool)> {
        if self.is_initialized() {
            return Ok((self.load_identity()?, false));
        }
        create_private_dir(&self.root)?;
        let person = SecretKey::generate();
        let device = SecretKey::generate();
        let cert = DeviceCertificate::issue(&person, DeviceId(device.public()), name, now_ms);
        write_private(&self.person_key(), person.to_seed().as_slice())?;
        write_private(&self.device_key_path(), device.to_seed().as_slice())?;
        // The certificate is written last: its presence marks a complete init.
        write_private(&self.device_cert(), &cert.to_bytes())?;
        Ok((
            Identity {
                person,
                device,
                cert,
            },
            true,
        ))
    }

    /// Makes this home a paired device of a person: its device key (new, or the one it
    /// already has), the person's key and the certificate the inviting device issued,
    /// which must certify that device key under that person key.
    pub fn init_joined(
        &self,
        device: &SecretKey,
        person_seed: &[u8; 32],
        cert: &DeviceCertificate,
    ) -> Result<Identity> {
        let person = SecretKey::from_seed(person_seed);
        cert.verify(Some(&PersonId(person.public())))?;
        if cert.body.device != DeviceId(device.public()) {
            return Err(StoreError::decode(
                "device certificate",
                "certifies another device",
            ));
        }
        create_private_dir(&self.root)?;
        write_private(&self.person_key(), person.to_seed().as_slice())?;
        write_private(&self.device_key_path(), device.to_seed().as_slice())?;
        write_private(&self.device_cert(), &cert.to_bytes())?;
        self.load_identity()
    }

    /// The device key alone (the libp2p identity).
    pub fn device_key(&self) -> Result<SecretKey> {
        Ok(SecretKey::from_seed(&read_seed(&self.device_key_path())?))
    }

    /// Loads the keys and certificate, checking they belong together.
    pub fn load_identity(&self) -> Result<Identity> {
        if !self.is_initialized() {
            return Err(StoreError::NotInitialized(self.root.clone()));
        }
        let person = SecretKey::from_seed(&read_seed(&self.person_key())?);
        let device = SecretKey::from_seed(&read_seed(&self.device_key_path())?);
        let cert_bytes =
            std::fs::read(self.device_cert()).map_err(|e| StoreError::io(self.device_cert(), e))?;
        let cert = DeviceCertificate::from_bytes(&cert_bytes)?;
        if cert.body.person != PersonId(person.public())
            || cert.body.device != DeviceId(device.public())
        {
            return Err(StoreError::decode(
                "device certificate",
                "does not match the key files",
            ));
        }
        Ok(Identity {
            person,
            device,
            cert,
        })
    }

    /// Reads `config.toml` (defaults if absent).
    pub fn load_config(&self) -> Result<Config> {
        let p = self.config_path();
        match std::fs::read_to_string(&p) {
            Ok(s) => toml::from_str(&s).map_err(|e| StoreError::Config {
                path: p,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(StoreError::io(p, e)),
        }
    }
}

fn read_seed(p: &Path) -> Result<[u8; 32]> {
    let b = std::fs::read(p).map_err(|e| StoreError::io(p, e))?;
    b.try_into().map_err(|_| {
        StoreError::decode("key file", format!("{} is not a 32-byte key", p.display()))
    })
}

/// Creates a directory (and parents) readable only by its owner.
pub fn create_private_dir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| StoreError::io(p, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| StoreError::io(p, e))?;
    }
    Ok(())
}

/// Writes a file with mode 0600 atomically (temp file, fsync, rename).
pub fn write_private(p: &Path, data: &[u8]) -> Result<()> {
    let tmp = p.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    f.write_all(data).map_err(|e| StoreError::io(&tmp, e))?;
    f.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
    std::fs::rename(&tmp, p).map_err(|e| StoreError::io(p, e))?;
    Ok(())
}
