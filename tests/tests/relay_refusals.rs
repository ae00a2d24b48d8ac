//! What a relay must refuse, sent to a real relay over its real store protocol: each
//! bad upload is refused with a reason, counted by reason in `/metrics`, and leaves the
//! stored data as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
use libp2p::futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};
use serde_bytes::ByteBuf;
use std::time::Duration;
use weft_crypto::{ChunkId, FolderId, SecretKey};
use weft_node::protocol::*;
use weft_tests::*;

#[derive(NetworkBehaviour)]
struct Uploader {
    store: request_response::Behaviour<Codec<StoreRequest, StoreResponse>>,
}

/// A client of the relay's store protocol with a device's key.
struct Client {
    swarm: Swarm<Uploader>,
    relay: PeerId,
}

impl Client {
    fn new(device: &SecretKey, relay: &str) -> Client {
        let addr: Multiaddr = relay.parse().unwrap();
        let Some(libp2p::multiaddr::Protocol::P2p(relay)) = addr.iter().last() else {
            panic!("no /p2p in {relay}");
        };
        let mut swarm =
            weft_node::node::swarm_with(device, Duration::from_secs(60), |_| Uploader {
                store: store_behaviour(Use {
                    support: ProtocolSupport::Outbound,
                    streams: 2,
                    timeout: Duration::from_secs(20),
                }),
            })
            .unwrap();
        swarm.add_peer_address(relay, addr);
        Client { swarm, relay }
    }

    async fn ask(&mut self, req: StoreRequest) -> StoreResponse {
        self.swarm
            .behaviour_mut()
            .store
            .send_request(&self.relay, req);
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match self.swarm.select_next_some().await {
                    SwarmEvent::Behaviour(UploaderEvent::Store(
                        request_response::Event::Message {
                            message: request_response::Message::Response { response, .. },
                            ..
                        },
                    )) => return response,
                    SwarmEvent::Behaviour(UploaderEvent::Store(
                        request_response::Event::OutboundFailure { error, .. },
                    )) => panic!("request failed: {error}"),
                    _ => {}
                }
            }
        })
        .await
        .expect("the relay answers")
    }
}

fn refused(r: &StoreResponse) -> bool {
    matches!(r, StoreResponse::Refused { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_truncated_and_foreign_uploads_are_refused_counted_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut relay = Relay::start_with(&tmp.path().join("relay"), |c| c.http = Some(http)).await;

    // A real device with a folder and two entries (two scans), never started: its
    // keys and log are what the test uploads, by hand.
    let mut a = Device::new(tmp.path(), "a");
    a.create_folder();
    let store = weft_store::Store::open(&a.home).unwrap();
    let rec = store.folders().unwrap()[0].clone();
    a.write("one.txt", b"first file");
    store.scan(&rec, &weft_store::scan::NoProgress).unwrap();
    a.write("two.txt", b"second file");
    store.scan(&rec, &weft_store::scan::NoProgress).unwrap();
    drop(store);
    let store = weft_store::Store::open(&a.home).unwrap();
    let folder = store.folders().unwrap()[0].clone();
    let (entries, _) = store.entries_since(&folder.id, &[]).unwrap();
    assert!(entries.len() >= 2, "{} entries", entries.len());
    let cert = store.identity().cert.to_bytes();
    let key = store.identity().device.clone();
    let chunk_ids: Vec<ChunkId> = entries
        .iter()
        .flat_map(|e| store.chunks_of_entry(&folder, e).unwrap())
        .map(|c| c.id)
        .collect();
    let chunk = store.chunk(&chunk_ids[0]).unwrap().unwrap();
    drop(store);

    let mut c = Client::new(&key, &relay.addr);
    let bufs = |v: &[Vec<u8>]| v.iter().cloned().map(ByteBuf::from).collect::<Vec<_>>();
    let put = |entries: Vec<ByteBuf>| StoreRequest::PutEntries {
        folder: folder.id,
        entries,
        certs: Vec::new(),
    };

    // Before registering: refused.
    assert!(refused(&c.ask(put(bufs(&entries))).await));
    assert!(matches!(
        c.ask(StoreRequest::Register { cert: cert.clone() }).await,
        StoreResponse::Registered { .. }
    ));
    let stored = |m: &str| {
        (
            metric(m, "weft_relay_entries"),
            metric(m, "weft_relay_chunks"),
            metric(m, "weft_relay_stored_bytes"),
        )
    };
    let empty = stored(&relay_metrics(http));

    // Forged: one bit of the last entry flipped.
    let mut forged = entries.clone();
    let last = forged.last_mut().unwrap();
    let n = last.len();
    last[n - 70] ^= 1;
    assert!(refused(&c.ask(put(bufs(&forged))).await));
    // Truncated.
    let mut truncated = entries.clone();
    truncated[0].truncate(entries[0].len() / 2);
    assert!(refused(&c.ask(put(bufs(&truncated))).await));
    // A gap: the second entry without the first.
    assert!(refused(&c.ask(put(bufs(&entries[1..]))).await));
    // A chunk that does not hash to its id.
    let mut bad = chunk.clone();
    bad[0] ^= 0x40;
    let r = c
        .ask(StoreRequest::PutChunks {
            folder: folder.id,
            chunks: vec![(chunk_ids[0], ByteBuf::from(bad))],
        })
        .await;
    assert!(refused(&r));
    assert_eq!(
        stored(&relay_metrics(http)),
        empty,
        "a refused upload stored something"
    );

    // The real thing is stored; replaying it stores nothing more.
    let r = c
        .ask(StoreRequest::PutChunks {
            folder: folder.id,
            chunks: vec![(chunk_ids[0], ByteBuf::from(chunk.clone()))],
        })
        .await;
    assert!(matches!(r, StoreResponse::Stored { count: 1 }), "{r:?}");
    let r = c.ask(put(bufs(&entries))).await;
    assert!(
        matches!(r, StoreResponse::Stored { count } if count == entries.len() as u64),
        "{r:?}"
    );
    let full = stored(&relay_metrics(http));
    let r = c.ask(put(bufs(&entries))).await;
    assert!(matches!(r, StoreResponse::Stored { count: 0 }), "{r:?}");
    assert_eq!(stored(&relay_metrics(http)), full);

    // Another person's device: may not write into this folder, nor read it, nor learn
    // what it holds.
    let mut b = Device::new(tmp.path(), "b");
    b.create_folder();
    let bstore = weft_store::Store::open(&b.home).unwrap();
    let bcert = bstore.identity().cert.to_bytes();
    let bkey = bstore.identity().device.clone();
    drop(bstore);
    let mut cb = Client::new(&bkey, &relay.addr);
    // Its connection presenting A's certificate: refused.
    assert!(refused(
        &cb.ask(StoreRequest::Register { cert: cert.clone() }).await
    ));
    assert!(matches!(
        cb.ask(StoreRequest::Register { cert: bcert }).await,
        StoreResponse::Registered { .. }
    ));
    assert!(refused(&cb.ask(put(bufs(&entries))).await));
    let r = cb
        .ask(StoreRequest::PutChunks {
            folder: folder.id,
            chunks: vec![(chunk_ids[0], ByteBuf::from(chunk.clone()))],
        })
        .await;
    assert!(refused(&r));
    let r = cb
        .ask(StoreRequest::Missing {
            folder: folder.id,
            ids: vec![chunk_ids[0]],
        })
        .await;
    assert!(
        matches!(&r, StoreResponse::Missing { ids, .. } if ids == &vec![chunk_ids[0]]),
        "a stranger learned that the folder holds a chunk: {r:?}"
    );
    // An entry of A's folder uploaded as if it belonged to another folder.
    let other = FolderId([9u8; 16]);
    let r = c
        .ask(StoreRequest::PutEntries {
            folder: other,
            entries: bufs(&entries),
            certs: Vec::new(),
        })
        .await;
    assert!(refused(&r));
    assert_eq!(
        stored(&relay_metrics(http)),
        full,
        "a refused upload changed the store"
    );

    // Every refusal is counted by its reason.
    let m = relay_metrics(http);
    for reason in [
        "unknown_device",
        "bad_entry",
        "chunk_mismatch",
        "not_allowed",
        "bad_certificate",
    ] {
        assert!(
            metric(
                &m,
                &format!("weft_relay_rejections_total{{reason=\"{reason}\"}}")
            ) >= 1,
            "no {reason} counted:\n{m}"
        );
    }
    relay.stop().await;
}
