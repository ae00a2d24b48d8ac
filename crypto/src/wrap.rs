//! Sealing a secret to a person: ECIES over the X25519 key derived from their person key.
//!
//! A fresh ephemeral X25519 key per wrap; the wrapping key is
//! `derive_key("weft key wrap v1", dh ‖ ephemeral public ‖ recipient public)`, and the
//! AEAD's associated data names the purpose and what the secret is for (e.g. a folder
//! id), so a wrapped key cannot be replayed for another purpose or another folder.
use crate::CryptoError;
use crate::identity::{PublicKey, SecretKey};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

/// A secret sealed to one person's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The sender's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// The sealed secret (ciphertext ‖ tag).
    pub ciphertext: Vec<u8>,
}

/// The associated data: `purpose ‖ 0 ‖ context`. `purpose` must not contain NUL, or
/// two different (purpose, context) pairs could give the same bytes; [`wrap`] and
/// [`unwrap`] refuse such a purpose.
fn aad(purpose: &str, context: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(purpose.len() + 1 + context.len());
    a.extend_from_slice(purpose.as_bytes());
    a.push(0);
    a.extend_from_slice(context);
    a
}

fn wrapping_key(dh: &[u8; 32], eph: &[u8; 32], recipient: &[u8; 32]) -> [u8; 32] {
    let mut input = [0u8; 96];
    input[..32].copy_from_slice(dh);
    input[32..64].copy_from_slice(eph);
    input[64..].copy_from_slice(recipient);
    blake3::derive_key("weft key wrap v1", &input)
}

/// Seals `secret` to the person whose ed25519 key is `recipient`, for `purpose` and `context`.
///
/// `purpose` is a fixed name and must not contain NUL.
pub fn wrap(
    recipient: &PublicKey,
    purpose: &str,
    context: &[u8],
    secret: &[u8],
) -> Result<WrappedKey, CryptoError> {
    if purpose.contains('\0') {
        return Err(CryptoError::Parse {
            what: "key-wrap purpose",
            reason: "contains NUL".into(),
        });
    }
    let their = recipient.x25519_public()?;
    let eph = x25519_dalek::StaticSecret::from(crate::random_bytes::<32>());
    let eph_pub = x25519_dalek::PublicKey::from(&eph);
    let dh = eph.diffie_hellman(&their);
    if !dh.was_contributory() {
        return Err(CryptoError::BadPublicKey);
    }
    let k = wrapping_key(dh.as_bytes(), eph_pub.as_bytes(), their.as_bytes());
    let cipher = XChaCha20Poly1305::new(&Key::from(k));
    let ciphertext = cipher
        .encrypt(
            &XNonce::default(),
            Payload {
                msg: secret,
                aad: &aad(purpose, context),
            },
        )
        .map_err(|_| CryptoError::Decrypt {
            what: "wrapped key",
        })?;
    Ok(WrappedKey {
        ephemeral: eph_pub.to_bytes(),
        ciphertext,
    })
}

/// Opens a [`WrappedKey`] with the recipient's person secret key.
pub fn unwrap(
    recipient: &SecretKey,
    purpose: &str,
    context: &[u8],
    wrapped: &WrappedKey,
) -> Result<Vec<u8>, CryptoError> {
    let err = CryptoError::Decrypt {
        what: "wrapped key",
    };
    if purpose.contains('\0') {
        return Err(err);
    }
    let mine = recipient.x25519_secret();
    let my_pub = recipient.public().x25519_public()?;
    let eph = x25519_dalek::PublicKey::from(wrapped.ephemeral);
    let dh = mine.diffie_hellman(&eph);
    if !dh.was_contributory() {
        return Err(err);
    }
    let k = wrapping_key(dh.as_bytes(), &wrapped.ephemeral, my_pub.as_bytes());
    let cipher = XChaCha20Poly1305::new(&Key::from(k));
    cipher
        .decrypt(
            &XNonce::default(),
            Payload {
                msg: &wrapped.ciphertext,
                aad: &aad(purpose, context),
            },
        )
        .map_err(|_| err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn aad_layout() {
        assert_eq!(aad("folder-secret", &[1, 2]), b"folder-secret\0\x01\x02");
        assert_eq!(aad("", &[]), b"\0");
    }

    #[test]
    fn wrapping_key_depends_on_every_input_byte() {
        let (dh, eph, rcp) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let k = wrapping_key(&dh, &eph, &rcp);
        assert_eq!(
            k,
            blake3::derive_key("weft key wrap v1", &[dh, eph, rcp].concat())
        );
        for i in 0..32 {
            let mut x = dh;
            x[i] ^= 1;
            assert_ne!(wrapping_key(&x, &eph, &rcp), k);
            let mut x = eph;
            x[i] ^= 1;
            assert_ne!(wrapping_key(&dh, &x, &rcp), k);
            let mut x = rcp;
            x[i] ^= 1;
            assert_ne!(wrapping_key(&dh, &eph, &x), k);
        }
    }

    #[test]
    fn unwrap_checks_the_purpose_before_anything_else() {
        let person = SecretKey::from_seed(&[5; 32]);
        let w = wrap(&person.public(), "p", b"", b"s").unwrap();
        assert_eq!(
            unwrap(&person, "p\0", b"", &w),
            Err(CryptoError::Decrypt {
                what: "wrapped key"
            })
        );
    }
}
