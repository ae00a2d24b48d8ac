//! Share links in the relay's storage: who may create and revoke them, which chunks
//! they serve, and how expiry, download limits and the access token are enforced.
//! (HTTP and browsers: tests/tests/links.rs.)
#![allow(clippy::unwrap_used)]

use tempfile::TempDir;
use weft_crypto::link::{LinkKey, LinkSecrets, LinkToken};
use weft_crypto::{DeviceCertificate, DeviceId, FolderId, SealedChunk, SecretKey};
use weft_relay::links::{LinkError, NewLink};
use weft_relay::storage::{RelayError, RelayStore, StorageConfig};

/// A person with one registered device.
struct Person {
    device: DeviceId,
}

fn person(relay: &RelayStore) -> Person {
    let p = SecretKey::generate();
    let d = SecretKey::generate();
    let cert = DeviceCertificate::issue(&p, DeviceId(d.public()), "d", 0);
    relay.register(&cert.to_bytes()).unwrap();
    Person {
        device: DeviceId(d.public()),
    }
}

fn new_link(folder: FolderId, chunks: Vec<weft_crypto::ChunkId>, s: &LinkSecrets) -> NewLink {
    NewLink {
        token: LinkToken::generate().0,
        folder,
        record: vec![1, 2, 3],
        chunks,
        access_hash: s.access_hash(),
        expires_ms: None,
        max_downloads: None,
    }
}

#[test]
fn links_serve_their_own_chunks_to_the_access_token_within_their_limits() {
    let dir = TempDir::new().unwrap();
    let relay = RelayStore::open(dir.path(), StorageConfig::default()).unwrap();
    let alice = person(&relay);
    let bob = person(&relay);
    let folder = FolderId([1; 16]);
    let secret = [9u8; 32];
    let c1 = SealedChunk::seal(&secret, b"shared");
    let c2 = SealedChunk::seal(&secret, b"not shared");
    let absent = SealedChunk::seal(&secret, b"never stored");
    relay
        .put_chunks(
            &alice.device,
            &folder,
            &[
                (c1.id, c1.ciphertext.clone()),
                (c2.id, c2.ciphertext.clone()),
            ],
        )
        .unwrap();
    let s = LinkSecrets::derive(&LinkKey::generate(), &LinkToken([0; 16]), None).unwrap();

    // Only a member may link, and only chunks stored in the folder.
    assert!(matches!(
        relay.create_link(&bob.device, new_link(folder, vec![c1.id], &s)),
        Err(RelayError::NotAllowed { .. })
    ));
    assert!(matches!(
        relay.create_link(&alice.device, new_link(folder, vec![c1.id, absent.id], &s)),
        Err(RelayError::NotAllowed { .. })
    ));
    let stranger = DeviceId(SecretKey::generate().public());
    assert!(matches!(
        relay.create_link(&stranger, new_link(folder, vec![c1.id], &s)),
        Err(RelayError::UnknownDevice(_))
    ));
    let mut l = new_link(folder, vec![c1.id], &s);
    l.max_downloads = Some(2);
    let t = l.token;
    relay.create_link(&alice.device, l.clone()).unwrap();
    // The same token twice is refused.
    assert!(relay.create_link(&alice.device, l).is_err());

    // The access token is required; a wrong one is a wrong password and costs no download.
    let wrong = [7u8; 32];
    assert!(matches!(
        relay.link_record(&t, Some(&wrong)),
        Err(LinkError::WrongPassword)
    ));
    assert!(matches!(
        relay.link_record(&t, None),
        Err(LinkError::WrongPassword)
    ));
    assert_eq!(
        relay.link_record(&t, Some(&s.access)).unwrap(),
        vec![1, 2, 3]
    );
    // Its own chunk only.
    assert_eq!(
        relay.link_chunk(&t, Some(&s.access), &c1.id).unwrap(),
        c1.ciphertext
    );
    assert!(matches!(
        relay.link_chunk(&t, Some(&s.access), &c2.id),
        Err(LinkError::NoChunk)
    ));
    assert!(matches!(
        relay.link_chunk(&t, Some(&wrong), &c1.id),
        Err(LinkError::WrongPassword)
    ));
    // The download limit.
    relay.link_record(&t, Some(&s.access)).unwrap();
    assert!(matches!(
        relay.link_record(&t, Some(&s.access)),
        Err(LinkError::LimitReached)
    ));
    assert!(matches!(
        relay.link_status(&t),
        Err(LinkError::LimitReached)
    ));

    // Revocation: only by the creator's person.
    let mut l2 = new_link(folder, vec![c1.id], &s);
    l2.expires_ms = Some(u64::MAX);
    let t2 = l2.token;
    relay.create_link(&alice.device, l2).unwrap();
    assert!(relay.revoke_link(&bob.device, &t2).is_err());
    relay.link_status(&t2).unwrap();
    relay.revoke_link(&alice.device, &t2).unwrap();
    assert!(matches!(relay.link_status(&t2), Err(LinkError::Revoked)));
    assert!(matches!(
        relay.link_chunk(&t2, Some(&s.access), &c1.id),
        Err(LinkError::Revoked)
    ));

    // Expiry.
    let mut l3 = new_link(folder, vec![c1.id], &s);
    l3.expires_ms = Some(1);
    let t3 = l3.token;
    relay.create_link(&alice.device, l3).unwrap();
    assert!(matches!(relay.link_status(&t3), Err(LinkError::Expired)));
    assert!(matches!(
        relay.link_record(&t3, Some(&s.access)),
        Err(LinkError::Expired)
    ));

    // Unknown.
    assert!(matches!(
        relay.link_status(&[0xee; 16]),
        Err(LinkError::Unknown)
    ));

    // Oversized records and chunk lists are refused before any work.
    let mut big = new_link(folder, vec![c1.id], &s);
    big.record = vec![0; weft_crypto::link::MAX_RECORD_LEN + 1];
    assert!(matches!(
        relay.create_link(&alice.device, big),
        Err(RelayError::TooLarge(_))
    ));
    let mut many = new_link(folder, vec![c1.id], &s);
    many.chunks = vec![c1.id; weft_crypto::link::MAX_LINK_CHUNKS + 1];
    assert!(matches!(
        relay.create_link(&alice.device, many),
        Err(RelayError::TooLarge(_))
    ));

    // Links survive a restart.
    drop(relay);
    let relay = RelayStore::open(dir.path(), StorageConfig::default()).unwrap();
    assert!(matches!(relay.link_status(&t2), Err(LinkError::Revoked)));
    assert_eq!(
        relay.link_chunk(&t, Some(&s.access), &c1.id).unwrap(),
        c1.ciphertext
    );
}

#[test]
fn the_link_limit_counts_only_links_that_still_work() {
    use weft_relay::links::MAX_LINKS_PER_PERSON;
    let dir = TempDir::new().unwrap();
    let relay = RelayStore::open(dir.path(), StorageConfig::default()).unwrap();
    let alice = person(&relay);
    let folder = FolderId([2; 16]);
    let secret = [3u8; 32];
    let c = SealedChunk::seal(&secret, b"linked");
    relay
        .put_chunks(&alice.device, &folder, &[(c.id, c.ciphertext.clone())])
        .unwrap();
    let s = LinkSecrets::derive(&LinkKey::generate(), &LinkToken([0; 16]), None).unwrap();
    let refused = |relay: &RelayStore| {
        matches!(
            relay.create_link(&alice.device, new_link(folder, vec![c.id], &s)),
            Err(RelayError::TooLarge(_))
        )
    };

    let mut once = new_link(folder, vec![c.id], &s);
    once.max_downloads = Some(1);
    let t_once = once.token;
    relay.create_link(&alice.device, once).unwrap();
    let mut plain = Vec::new();
    for _ in 1..MAX_LINKS_PER_PERSON {
        let l = new_link(folder, vec![c.id], &s);
        plain.push(l.token);
        relay.create_link(&alice.device, l).unwrap();
    }
    assert!(refused(&relay), "the limit holds while every link works");

    // A used-up link stops counting; it still says why it does not work.
    relay.link_record(&t_once, Some(&s.access)).unwrap();
    relay
        .create_link(&alice.device, new_link(folder, vec![c.id], &s))
        .unwrap();
    assert!(matches!(
        relay.link_status(&t_once),
        Err(LinkError::LimitReached)
    ));
    assert!(refused(&relay));

    // A revoked one stops counting at once, and serves nothing.
    relay.revoke_link(&alice.device, &plain[0]).unwrap();
    let mut expired = new_link(folder, vec![c.id], &s);
    expired.expires_ms = Some(1);
    let t_expired = expired.token;
    relay.create_link(&alice.device, expired).unwrap();
    assert!(matches!(
        relay.link_chunk(&plain[0], Some(&s.access), &c.id),
        Err(LinkError::Revoked)
    ));

    // An expired one stops counting when the limit is reached.
    relay
        .create_link(&alice.device, new_link(folder, vec![c.id], &s))
        .unwrap();
    assert!(matches!(
        relay.link_status(&t_expired),
        Err(LinkError::Expired)
    ));
    assert!(refused(&relay));
    // The links that work were never touched.
    assert_eq!(
        relay.link_chunk(&plain[1], Some(&s.access), &c.id).unwrap(),
        c.ciphertext
    );
    assert_eq!(
        relay
            .link_record(plain.last().unwrap(), Some(&s.access))
            .unwrap(),
        vec![1, 2, 3]
    );
}
