//! The recovery key: the person key written so that a person can keep it on paper.
//!
//! With it and a relay that backs up the person's folders, a new device gets
//! everything back after every other device is lost: it certifies itself with the
//! person key, and the folder secrets come from the relay wrapped to the person's key
//! (see [`crate::wrap`]). Whoever holds it is that person: it is shown only on request.
//!
//! Format: `weft-recovery-` then base58check of a version byte (1) and the 32-byte
//! person key seed; a typo fails the checksum instead of recovering someone else.
use crate::CryptoError;
use crate::identity::SecretKey;

const PREFIX: &str = "weft-recovery-";
const VERSION: u8 = 1;

/// The recovery key of a person key.
pub fn encode(person: &SecretKey) -> String {
    let mut bytes = Vec::with_capacity(33);
    bytes.push(VERSION);
    bytes.extend_from_slice(person.to_seed().as_slice());
    format!(
        "{PREFIX}{}",
        bs58::encode(&bytes).with_check().into_string()
    )
}

/// Whether `s` looks like a recovery key (rather than a pairing code).
pub fn is_recovery_key(s: &str) -> bool {
    s.trim().starts_with(PREFIX)
}

/// The person key of a recovery key.
pub fn decode(s: &str) -> Result<SecretKey, CryptoError> {
    let bad = |reason: &str| CryptoError::Parse {
        what: "recovery key",
        reason: reason.into(),
    };
    let s = s.trim();
    if s.len() > 200 {
        return Err(bad("too long"));
    }
    let body = s
        .strip_prefix(PREFIX)
        .ok_or_else(|| bad("it does not start with weft-recovery-"))?;
    let bytes = bs58::decode(body)
        .with_check(None)
        .into_vec()
        .map_err(|_| bad("mistyped (the checksum does not match)"))?;
    match bytes.split_first() {
        Some((&VERSION, seed)) if seed.len() == 32 => {
            let mut s = [0u8; 32];
            s.copy_from_slice(seed);
            Ok(SecretKey::from_seed(&s))
        }
        Some((&VERSION, _)) => Err(bad("wrong length")),
        _ => Err(bad("unknown version")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_typos() {
        let k = SecretKey::generate();
        let s = encode(&k);
        assert!(is_recovery_key(&s));
        assert_eq!(decode(&s).unwrap().public(), k.public());
        assert_eq!(decode(&format!("  {s}\n")).unwrap().public(), k.public());
        // One character changed: the checksum catches it.
        let mut typo: Vec<char> = s.chars().collect();
        let i = typo.len() - 5;
        typo[i] = if typo[i] == 'a' { 'b' } else { 'a' };
        let typo: String = typo.into_iter().collect();
        assert!(decode(&typo).is_err());
        assert!(decode("weft-pair-abc").is_err());
        assert!(decode(&"weft-recovery-1".repeat(40)).is_err());
    }
}
