//! Pairing codes: how a new device joins a person's devices.
//!
//! `weft invite` on a running node makes a one-time code, valid for
//! [`INVITE_TTL_MS`], carrying the node's device id, its addresses and a random
//! secret. `weft join CODE` dials those addresses; the Noise handshake proves it
//! reached that device id, and the joiner proves it holds the secret with a keyed
//! hash over its *own* device id, so an eavesdropper cannot replay the proof from
//! another device. On success the inviter sends the person key, a certificate for the
//! joiner's device key, the folders and the other devices' certificates, over the
//! same encrypted connection, and forgets the code.
use serde::{Deserialize, Serialize};
use weft_crypto::DeviceId;

/// How long a pairing code stays valid.
pub const INVITE_TTL_MS: u64 = 10 * 60 * 1000;
const CODE_PREFIX: &str = "weft-pair-";

/// What a pairing code carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// Format version (1).
    pub version: u8,
    /// The inviting device.
    pub device: DeviceId,
    /// Its listen addresses (multiaddrs as text).
    pub addrs: Vec<String>,
    /// The one-time secret.
    pub secret: [u8; 16],
    /// Expiry, Unix ms.
    pub expires_ms: u64,
}

/// Why a code was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodeError {
    /// Not a weft pairing code at all.
    #[error("not a weft pairing code (it should start with {CODE_PREFIX})")]
    NotACode,
    /// Damaged (a typo, a truncated copy).
    #[error("the pairing code is damaged: check it was copied whole")]
    Damaged,
}

impl Invite {
    /// The text form: `weft-pair-<base58>`.
    pub fn encode(&self) -> String {
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        format!(
            "{CODE_PREFIX}{}",
            bs58::encode(bytes).with_check().into_string()
        )
    }

    /// Parses the text form (with a checksum, so a typo is caught here).
    pub fn decode(code: &str) -> Result<Invite, CodeError> {
        let body = code
            .trim()
            .strip_prefix(CODE_PREFIX)
            .ok_or(CodeError::NotACode)?;
        if body.len() > 4096 {
            return Err(CodeError::Damaged);
        }
        let bytes = bs58::decode(body)
            .with_check(None)
            .into_vec()
            .map_err(|_| CodeError::Damaged)?;
        let inv: Invite = postcard::from_bytes(&bytes).map_err(|_| CodeError::Damaged)?;
        if inv.version != 1 {
            return Err(CodeError::Damaged);
        }
        Ok(inv)
    }
}

/// The joiner's proof of holding `secret`, bound to its own device id.
pub fn proof(secret: &[u8; 16], joiner: &DeviceId) -> [u8; 32] {
    let key = blake3::derive_key("weft pairing proof v1", secret);
    *blake3::keyed_hash(&key, joiner.as_bytes()).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite() -> Invite {
        Invite {
            version: 1,
            device: DeviceId(weft_crypto::SecretKey::from_seed(&[7; 32]).public()),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            secret: [9; 16],
            expires_ms: 123,
        }
    }

    #[test]
    fn code_round_trip_and_typos() {
        let code = invite().encode();
        assert_eq!(Invite::decode(&code).unwrap(), invite());
        let mut typo: Vec<char> = code.chars().collect();
        let i = typo.len() / 2;
        typo[i] = if typo[i] == 'a' { 'b' } else { 'a' };
        let typo: String = typo.into_iter().collect();
        assert_eq!(Invite::decode(&typo), Err(CodeError::Damaged));
        assert_eq!(Invite::decode("hello"), Err(CodeError::NotACode));
        assert_eq!(
            Invite::decode(&code[..code.len() - 3]),
            Err(CodeError::Damaged)
        );
    }

    #[test]
    fn proof_is_bound_to_secret_and_joiner() {
        let a = DeviceId(weft_crypto::SecretKey::from_seed(&[1; 32]).public());
        let b = DeviceId(weft_crypto::SecretKey::from_seed(&[2; 32]).public());
        assert_ne!(proof(&[1; 16], &a), proof(&[1; 16], &b));
        assert_ne!(proof(&[1; 16], &a), proof(&[2; 16], &a));
    }
}
