//! A relay stores a person's folders as ciphertext, so devices that are never online
//! together still sync, and it never learns a name or a byte of content.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
use std::time::Duration;
use weft_tests::*;

const WAIT: Duration = Duration::from_secs(40);

/// A and B, paired (both online for the pairing only), each using the relay.
async fn pair_with_relay(base: &std::path::Path, relay: &Relay) -> (Device, Device) {
    let mut a = Device::new(base, "a");
    let mut b = Device::new(base, "b");
    a.create_folder();
    a.start(&[]);
    b.join(&a.invite()).await;
    a.stop().await;
    a.add_relay(&relay.addr);
    b.add_relay(&relay.addr);
    // Each restarts on a new port, so neither can reach the other directly: whatever
    // they exchange goes through the relay.
    a.port = free_port();
    b.port = free_port();
    (a, b)
}

/// Runs `d` alone until it holds `want` (from the relay), then makes `change` (if
/// any) and waits until the relay holds it.
async fn online_alone(d: &mut Device, want: Option<&Snapshot>, change: Option<fn(&Device)>) {
    d.start(&[]);
    if let Some(want) = want {
        eventually(&format!("{} receives from the relay", d.name), WAIT, || {
            &snapshot(&d.root) == want
        })
        .await;
    }
    if let Some(change) = change {
        let before = d.uploaded();
        change(d);
        d.wait_backed_up(before, WAIT).await;
    }
    d.stop().await;
}

/// A burst of small files (one small chunk each): every upload stays within what the
/// relay takes per request, so all of them reach it, and the other device, never
/// online at the same time, gets them from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_small_files_reaches_the_relay_and_the_other_device() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&tmp.path().join("relay")).await;
    let (mut a, mut b) = pair_with_relay(tmp.path(), &relay).await;
    online_alone(
        &mut a,
        None,
        Some(|a| {
            for i in 0..300 {
                a.write(&format!("many/n{i}.txt"), format!("file {i}").as_bytes());
            }
        }),
    )
    .await;
    let after_a = snapshot(&a.root);
    assert_eq!(after_a.values().filter(|v| v.is_some()).count(), 300);
    online_alone(&mut b, Some(&after_a), None).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_never_online_together_converge_through_the_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&tmp.path().join("relay")).await;
    let (mut a, mut b) = pair_with_relay(tmp.path(), &relay).await;

    // A alone: new files, a directory, a big-ish file of several chunks.
    let big = random_bytes(3_000_000, 13);
    std::fs::write(tmp.path().join("big.bin"), &big).unwrap();
    online_alone(
        &mut a,
        None,
        Some(|a| {
            a.write("notes/todo.txt", b"buy milk");
            let big = a.root.parent().unwrap().join("big.bin");
            std::fs::copy(big, a.path("big.bin")).unwrap();
            std::fs::create_dir_all(a.path("empty-dir")).unwrap();
        }),
    )
    .await;
    let after_a = snapshot(&a.root);

    // B alone, later: receives all of it from the relay, then edits and deletes.
    online_alone(
        &mut b,
        Some(&after_a),
        Some(|b| {
            b.write("notes/todo.txt", b"buy milk and bread");
            std::fs::remove_file(b.path("big.bin")).unwrap();
            b.write("from-b.txt", b"hello from b");
        }),
    )
    .await;
    let after_b = snapshot(&b.root);
    assert!(after_b.contains_key("from-b.txt"));
    assert!(!after_b.contains_key("big.bin"));

    // A again: B's changes arrive through the relay.
    online_alone(&mut a, Some(&after_b), None).await;

    // Concurrent edits while each is offline: each edits `notes/todo.txt` without
    // having seen the other's edit, and each ends with the same winner and copy.
    online_alone(
        &mut a,
        None,
        Some(|a| a.write("notes/todo.txt", b"A's version")),
    )
    .await;
    b.write("notes/todo.txt", b"B's version");
    b.start(&[]);
    eventually("b makes a conflict copy", WAIT, || {
        snapshot(&b.root)
            .keys()
            .any(|k| k.contains(".sync-conflict-"))
    })
    .await;
    // (its counter started at zero with this run: B's edit and the copy went up)
    b.wait_backed_up(0, WAIT).await;
    b.stop().await;
    let final_b = snapshot(&b.root);
    online_alone(&mut a, Some(&final_b), None).await;
    let copies: Vec<&String> = final_b
        .keys()
        .filter(|k| k.contains(".sync-conflict-"))
        .collect();
    assert_eq!(copies.len(), 1, "{final_b:?}");
    let versions: Vec<&[u8]> = [&final_b["notes/todo.txt"], &final_b[copies[0]]]
        .iter()
        .map(|v| v.as_ref().unwrap().0.as_slice())
        .collect();
    assert!(versions.contains(&b"A's version".as_slice()));
    assert!(versions.contains(&b"B's version".as_slice()));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_cannot_reach_each_other_sync_live_through_the_relay() {
    let tmp = tempfile::tempdir().unwrap();
    // No circuits at this relay, and neither device listens: they can never connect
    // to each other. Storage is the only way between them.
    let mut relay = Relay::start_with(&tmp.path().join("relay"), |c| {
        c.circuits.max_circuits = 0;
        c.circuits.max_reservations = 0;
    })
    .await;
    let (mut a, mut b) = pair_with_relay(tmp.path(), &relay).await;
    a.unreachable = true;
    b.unreachable = true;
    a.start(&[]);
    b.start(&[]);
    a.write("live.txt", b"through the relay, while both are up");
    let s = converge(&[&a, &b], WAIT).await;
    assert!(s.contains_key("live.txt"));
    assert_eq!(
        a.peers(),
        0,
        "a reached b directly: the test proves nothing"
    );
    b.write("back.txt", b"and back");
    let s = converge(&[&a, &b], WAIT).await;
    assert!(s.contains_key("back.txt"));
    a.stop().await;
    b.stop().await;
    relay.stop().await;
}

/// The peers of a running device, as `weft status` shows them: (id, connection).
fn peers(d: &Device) -> Vec<(String, String)> {
    match d.status() {
        weft_node::control::ControlResponse::Status { peers, .. } => {
            peers.into_iter().map(|p| (p.id, p.connection)).collect()
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_find_each_other_at_the_relay_and_connect_directly_or_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&tmp.path().join("relay")).await;
    let (mut a, mut b) = pair_with_relay(tmp.path(), &relay).await;
    // On new ports, neither knows where the other is: the rendezvous point tells them.
    a.start(&[]);
    b.start(&[]);
    eventually(
        "a and b find each other at the rendezvous point",
        WAIT,
        || peers(&a).len() == 1 && peers(&b).len() == 1,
    )
    .await;
    assert_eq!(peers(&b)[0].1, "direct", "{:?}", peers(&b));
    a.stop().await;
    b.stop().await;

    // Both listen nowhere: each is reachable only through its reservation at the
    // relay. They find each other's circuit addresses at the rendezvous point and
    // connect through the relay (hole punching has nothing to dial here).
    a.unreachable = true;
    b.unreachable = true;
    a.start(&[]);
    b.start(&[]);
    eventually("a and b reach each other through the relay", WAIT, || {
        peers(&a).len() == 1 && peers(&b).len() == 1
    })
    .await;
    assert_eq!(
        peers(&a)[0].1,
        "relayed",
        "{:?} {:?}",
        a.status(),
        b.status()
    );
    // The log travels over the circuit; the chunks through the relay's storage.
    let big = random_bytes(2_000_000, 5);
    a.write("through-the-relay.bin", &big);
    let s = converge(&[&a, &b], WAIT).await;
    assert_eq!(s["through-the-relay.bin"], Some((big, false)));
    assert_eq!(peers(&a)[0].1, "relayed", "{:?}", peers(&a));
    a.stop().await;
    b.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_never_sees_a_name_or_a_byte_of_content() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&tmp.path().join("relay")).await;
    let (mut a, mut b) = pair_with_relay(tmp.path(), &relay).await;
    online_alone(
        &mut a,
        None,
        Some(|a| {
            a.write(
                "MARKERDIR-b7e2/MARKERNAME-91ac.txt",
                &b"MARKERCONTENT-4f1d9c ".repeat(5000),
            );
            a.write("small-MARKERNAME-91ac.md", b"MARKERCONTENT-4f1d9c");
        }),
    )
    .await;
    let want = snapshot(&a.root);
    online_alone(&mut b, Some(&want), None).await;
    relay.stop().await;

    let markers: [&[u8]; 3] = [
        b"MARKERCONTENT-4f1d9c",
        b"MARKERNAME-91ac",
        b"MARKERDIR-b7e2",
    ];
    let mut files = 0;
    for entry in walk(&relay.data) {
        let name = entry.to_string_lossy().into_owned();
        for m in markers {
            assert!(
                !name.contains(std::str::from_utf8(m).unwrap()),
                "a relay file is named after a marker: {name}"
            );
        }
        let bytes = std::fs::read(&entry).unwrap();
        for m in markers {
            assert!(
                !bytes.windows(m.len()).any(|w| w == m),
                "{name} holds {:?}",
                String::from_utf8_lossy(m)
            );
        }
        files += 1;
    }
    assert!(files > 2, "the relay stored nothing: {files} files");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_quota_is_refused_clearly_and_stored_data_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut relay = Relay::start_with(&tmp.path().join("relay"), |c| {
        c.quota_per_person = Some(1 << 20);
        c.http = Some(http);
    })
    .await;
    let (mut a, mut b) = pair_with_relay(tmp.path(), &relay).await;
    a.start(&[]);
    a.write("small.txt", b"fits in the quota");
    a.wait_backed_up(0, WAIT).await;
    let before = relay_metrics(http);
    assert_eq!(metric(&before, "weft_relay_persons"), 1, "{before}");
    assert_eq!(metric(&before, "weft_relay_folders"), 1, "{before}");
    assert!(metric(&before, "weft_relay_entries") >= 1, "{before}");
    let stored = metric(&before, "weft_relay_stored_bytes");
    assert!(stored > 0, "{before}");

    // 3 MB of incompressible bytes do not fit in 1 MiB: refused, with the reason on
    // the device, counted at the relay, and nothing already stored is touched.
    let big = random_bytes(3_000_000, 11);
    a.write("big.bin", &big);
    eventually("a reports the refusal", WAIT, || {
        a.relays().iter().any(|r| {
            r.last_error
                .as_deref()
                .is_some_and(|e| e.contains("over quota"))
        })
    })
    .await;
    // The device saw it would not fit (the relay says how much room is left) and
    // sent none of it: nothing stored, no room taken by a half upload. (The relay's
    // own refusal of an upload over quota is tested in relay/tests/storage.rs.)
    let after = relay_metrics(http);
    assert_eq!(metric(&after, "weft_relay_stored_bytes"), stored, "{after}");
    assert_eq!(
        metric(&after, "weft_relay_upload_bytes_total"),
        metric(&before, "weft_relay_upload_bytes_total"),
        "{after}"
    );
    a.stop().await;

    // B, never online with A, gets what the relay kept.
    b.start(&[]);
    eventually("b receives the file that fit", WAIT, || {
        b.path("small.txt").exists()
    })
    .await;
    assert_eq!(
        std::fs::read(b.path("small.txt")).unwrap(),
        b"fits in the quota"
    );
    assert!(!b.path("big.bin").exists());
    b.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_losing_every_device_the_recovery_key_and_the_relay_bring_it_all_back() {
    use weft_node::control::{ControlRequest, ControlResponse, request};
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&tmp.path().join("relay")).await;
    let mut a = Device::new(tmp.path(), "a");
    a.create_folder();
    a.add_relay(&relay.addr);
    a.start(&[]);
    // Two versions of a file (the first is an edit away), and another file.
    a.write("report.txt", b"first draft");
    a.wait_backed_up(0, WAIT).await;
    let n = a.uploaded();
    a.write("report.txt", b"final version");
    a.write("photos/cat.jpg", &vec![7u8; 300_000]);
    a.wait_backed_up(n, WAIT).await;
    a.stop().await;
    let want = snapshot(&a.root);
    let key = weft_crypto::recovery::encode(&a.home.load_identity().unwrap().person);

    // The only device is wiped.
    std::fs::remove_dir_all(a.home.root()).unwrap();
    std::fs::remove_dir_all(&a.root).unwrap();

    // A wrong key is refused and writes nothing.
    let mut c = Device::new(tmp.path(), "c");
    let parent = tmp.path().join("c-parent");
    let wrong = weft_crypto::recovery::encode(&weft_crypto::SecretKey::generate());
    let e = weft_node::recover::recover(&c.home, &wrong, &relay.addr, &parent, "c")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no folder"), "{e}");
    assert!(!c.home.is_initialized(), "a refused recovery wrote a home");

    // The recovery key and the relay alone: every folder, file and version.
    let got = weft_node::recover::recover(&c.home, &key, &relay.addr, &parent, "c")
        .await
        .unwrap();
    assert_eq!(got.folders.len(), 1);
    c.root = got.folders[0].1.clone();
    c.start(&[]);
    eventually("c gets every file back from the relay", WAIT, || {
        snapshot(&c.root) == want
    })
    .await;
    let path = c.path("report.txt").to_string_lossy().into_owned();
    let ControlResponse::History { items } =
        request(&c.home, &ControlRequest::History { path: path.clone() }).unwrap()
    else {
        panic!("no history");
    };
    let items = items.as_array().unwrap().clone();
    assert_eq!(items.len(), 2, "{items:?}");
    let first = items
        .iter()
        .find(|i| i["current"] == false)
        .expect("the old version is listed");
    let to = tmp.path().join("restored.txt");
    let r = request(
        &c.home,
        &ControlRequest::Restore {
            path,
            version: first["number"].as_u64().unwrap(),
            to: Some(to.to_string_lossy().into_owned()),
        },
    )
    .unwrap();
    assert!(matches!(r, ControlResponse::Restored { .. }), "{r:?}");
    assert_eq!(std::fs::read(&to).unwrap(), b"first draft");
    c.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_beyond_the_relays_limit_are_refused_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut relay = Relay::start_with(&tmp.path().join("relay"), |c| {
        c.circuits.max_reservations = 2;
        c.http = Some(http);
    })
    .await;
    // Four unrelated persons' devices, each asking for a reservation.
    let mut devices = Vec::new();
    for i in 0..4 {
        let mut d = Device::new(tmp.path(), &format!("d{i}"));
        d.create_folder();
        d.add_relay(&relay.addr);
        d.start(&[]);
        devices.push(d);
    }
    eventually("two reservations held, the others refused", WAIT, || {
        let m = relay_metrics(http);
        metric(&m, "weft_relay_reservations") == 2
            && metric(
                &m,
                "weft_relay_rejections_total{reason=\"reservation_denied\"}",
            ) >= 2
    })
    .await;
    // Storage is not a reservation: all four back up all the same.
    for d in &devices {
        eventually("every device backs up", WAIT, || {
            d.relays().iter().all(|r| r.state == "in sync")
        })
        .await;
    }
    for d in &mut devices {
        d.stop().await;
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_resumes_without_sending_stored_chunks_again() {
    let tmp = tempfile::tempdir().unwrap();
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut relay = Relay::start_with(&tmp.path().join("relay"), |c| c.http = Some(http)).await;
    let mut a = Device::new(tmp.path(), "a");
    a.create_folder();
    a.add_relay(&relay.addr);
    // 40 MB of incompressible bytes, written before the node starts.
    let size = 40_000_000u32;
    let big = random_bytes(size as usize, 7);
    a.write("big.bin", &big);
    a.start(&[]);
    // Stop it in the middle of the upload.
    eventually("a starts uploading chunks", WAIT, || {
        a.relays().iter().any(|r| r.chunks_uploaded > 0)
    })
    .await;
    a.stop().await;
    let sent_before = metric(&relay_metrics(http), "weft_relay_upload_bytes_total");
    assert!(
        sent_before < u64::from(size),
        "the upload finished before the stop ({sent_before} bytes): the test proves nothing"
    );
    // Again: it finishes, and sends only what the relay lacked, plus at most the
    // batch that was in flight at the stop.
    a.start(&[]);
    a.wait_backed_up(0, WAIT).await;
    a.stop().await;
    let sent = metric(&relay_metrics(http), "weft_relay_upload_bytes_total");
    let overhead = u64::from(size) / 10; // sealing adds 16 bytes per chunk; batches ≤ ~1.25 MiB
    assert!(
        sent <= u64::from(size) + overhead.min(1_400_000),
        "{sent} bytes uploaded in all for a {size}-byte file"
    );
    relay.stop().await;
}
