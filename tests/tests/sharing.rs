//! Two persons share a folder through a relay: roles hold on every device and at the
//! relay, and a removed member cannot read what is written afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
use std::time::Duration;
use weft_node::control::{ControlRequest, ControlResponse, request};
use weft_node::sharing::{SharingAnswer, SharingRequest};
use weft_store::members::Role;
use weft_tests::*;

const WAIT: Duration = Duration::from_secs(60);

fn sharing(d: &Device, command: SharingRequest) -> Result<SharingAnswer, String> {
    match request(&d.home, &ControlRequest::Sharing { command }).unwrap() {
        ControlResponse::Sharing { answer } => Ok(answer),
        ControlResponse::Error { message } => Err(message),
        other => panic!("unexpected {other:?}"),
    }
}

fn offers(d: &Device) -> Vec<weft_store::sharing::Offer> {
    match sharing(d, SharingRequest::Shares).unwrap() {
        SharingAnswer::Shares(o) => o,
        other => panic!("unexpected {other:?}"),
    }
}

fn role_of(d: &Device, folder: &str, person: &weft_crypto::PersonId) -> Option<Role> {
    match sharing(
        d,
        SharingRequest::Members {
            folder: folder.into(),
        },
    ) {
        Ok(SharingAnswer::Members(m)) => m.iter().find(|m| m.person == *person).map(|m| m.role),
        _ => None,
    }
}

fn folder_status(d: &Device) -> Vec<weft_node::apply::FolderStatus> {
    match d.status() {
        ControlResponse::Status { folders, .. } => folders,
        other => panic!("unexpected {other:?}"),
    }
}

fn person(d: &Device) -> weft_crypto::PersonId {
    d.home.load_identity().unwrap().person_id()
}

/// A second device of `first`'s person, paired through `first` (running).
async fn second_device(base: &std::path::Path, first: &Device, name: &str) -> Device {
    let mut d = Device::new(base, name);
    let parent = base.join(format!("{name}-parent"));
    weft_node::join::join(&d.home, &first.invite(), &parent, name)
        .await
        .unwrap();
    d.root = parent;
    d
}

/// Every entry a (stopped) device holds of `folder`, raw, optionally of one author.
fn log_entries(
    d: &Device,
    folder: &weft_crypto::FolderId,
    author: Option<&weft_crypto::DeviceId>,
) -> Vec<Vec<u8>> {
    let store = weft_store::Store::open(&d.home).unwrap();
    let r = weft_store::db::read(store.db()).unwrap();
    let log = r.open_table(weft_store::db::LOG).unwrap();
    let mut prefix = folder.0.to_vec();
    if let Some(a) = author {
        prefix.extend_from_slice(a.as_bytes());
    }
    let mut out = Vec::new();
    weft_store::db::scan_prefix(&log, &prefix, |_, v| {
        out.push(v.to_vec());
        Ok(())
    })
    .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_edit_downgrade_and_unshare_between_two_persons() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let relay = Relay::start(&base.join("relay")).await;

    // Alice: two devices, her folder "shared".
    let mut a1 = Device::new(base, "a1");
    a1.create_folder();
    a1.start(&[]);
    let mut a2 = second_device(base, &a1, "a2").await;
    a2.root = a2.root.join("shared");
    a2.start(&[a1.port]);
    // Bob: two devices with no folder of their own yet.
    let mut b1 = Device::new(base, "b1");
    b1.home.init("b1", 0).unwrap();
    b1.start(&[]);
    let mut b2 = Device::new(base, "b2");
    weft_node::join::join(&b2.home, &b1.invite(), &base.join("b2-parent"), "b2")
        .await
        .unwrap();
    b2.start(&[b1.port]);
    for d in [&a1, &a2, &b1, &b2] {
        match request(
            &d.home,
            &ControlRequest::RelayAdd {
                addr: relay.addr.clone(),
            },
        )
        .unwrap()
        {
            ControlResponse::Relay { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    a1.write("hello.txt", b"from alice");

    // Alice records Bob (after comparing fingerprints) and shares as editor.
    let bob = person(&b1);
    let alice = person(&a1);
    sharing(
        &a1,
        SharingRequest::ContactAdd {
            person: bob,
            name: "bob".into(),
        },
    )
    .unwrap();
    // Only a contact can be named.
    let err = sharing(
        &a1,
        SharingRequest::Share {
            folder: "shared".into(),
            with: "carol".into(),
            role: Role::Editor,
        },
    )
    .unwrap_err();
    assert!(err.contains("not one of your contacts"), "{err}");
    sharing(
        &a1,
        SharingRequest::Share {
            folder: "shared".into(),
            with: "bob".into(),
            role: Role::Editor,
        },
    )
    .unwrap();

    // Both of Bob's devices see the offer; each accepts it.
    for d in [&b1, &b2] {
        eventually(&format!("{} sees the offer", d.name), WAIT, || {
            offers(d)
                .iter()
                .any(|o| o.name == "shared" && o.owner == alice)
        })
        .await;
        // `weft status` says so too.
        match d.status() {
            ControlResponse::Status { offers, .. } => assert_eq!(offers, vec!["shared"]),
            other => panic!("unexpected {other:?}"),
        }
    }
    b1.root = base.join("b1-shared");
    b2.root = base.join("b2-shared");
    for d in [&b1, &b2] {
        sharing(
            d,
            SharingRequest::Accept {
                share: "shared".into(),
                path: Some(d.root.clone()),
            },
        )
        .unwrap();
        assert!(offers(d).is_empty());
    }

    // Editors on both sides: everything converges on all four devices.
    b1.write("from-bob.txt", b"bob was here");
    let all = converge(&[&a1, &a2, &b1, &b2], WAIT).await;
    assert_eq!(all["hello.txt"], Some((b"from alice".to_vec(), false)));
    assert_eq!(all["from-bob.txt"], Some((b"bob was here".to_vec(), false)));
    a2.write("from-a2.txt", b"alice's laptop");
    let all = converge(&[&a1, &a2, &b1, &b2], WAIT).await;
    assert!(all.contains_key("from-a2.txt"));

    // Downgrade to viewer: Bob's later edits stay on his device.
    sharing(
        &a1,
        SharingRequest::Share {
            folder: "shared".into(),
            with: "bob".into(),
            role: Role::Viewer,
        },
    )
    .unwrap();
    for d in [&b1, &b2] {
        eventually(&format!("{} learns it is a viewer", d.name), WAIT, || {
            role_of(d, "shared", &bob) == Some(Role::Viewer)
        })
        .await;
    }
    b1.write("viewer-edit.txt", b"should stay local");
    eventually("b1 shows its local-only change", WAIT, || {
        folder_status(&b1)
            .iter()
            .any(|f| f.local_only > 0 && f.role.as_deref() == Some("viewer"))
    })
    .await;
    // Alice's changes still reach the viewer.
    a1.write("after-downgrade.txt", b"for viewers too");
    eventually("the viewer receives", WAIT, || {
        b1.path("after-downgrade.txt").exists() && b2.path("after-downgrade.txt").exists()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for d in [&a1, &a2, &b2] {
        assert!(
            !d.path("viewer-edit.txt").exists(),
            "a viewer's edit reached {}",
            d.name
        );
    }

    // Unshare: the folder gets a new key; what Alice writes next is unreadable with
    // everything Bob holds.
    sharing(
        &a1,
        SharingRequest::Unshare {
            folder: "shared".into(),
            with: "bob".into(),
        },
    )
    .unwrap();
    eventually("a2 learns the new key", WAIT, || {
        role_of(&a2, "shared", &bob).is_none()
    })
    .await;
    eventually("bob's devices learn they were removed", WAIT, || {
        [&b1, &b2].iter().all(|d| {
            folder_status(d)
                .iter()
                .any(|f| f.name == "shared" && f.role.as_deref() == Some("removed"))
        })
    })
    .await;
    a1.write("after-unshare.txt", b"not for bob");
    converge(&[&a1, &a2], WAIT).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!b1.path("after-unshare.txt").exists());
    assert!(!b2.path("after-unshare.txt").exists());

    for d in [&mut a1, &mut a2, &mut b1, &mut b2] {
        d.stop().await;
    }

    // Everything Bob holds: his person key, the secrets in his devices' stores.
    let a_store = weft_store::Store::open(&a1.home).unwrap();
    let rec = a_store.find_folder("shared").unwrap();
    assert_eq!(rec.secret.epoch, 1, "unshare rotated the secret");
    drop(a_store);
    let new_entries: Vec<weft_store::log::Entry> = log_entries(&a1, &rec.id, None)
        .iter()
        .map(|r| weft_store::log::Entry::decode(r).unwrap())
        .filter(|e| e.header.epoch == 1)
        .collect();
    assert!(!new_entries.is_empty());
    for b in [&b1, &b2] {
        let store = weft_store::Store::open(&b.home).unwrap();
        let brec = store.folder(&rec.id).unwrap();
        assert_eq!(brec.secret.epoch, 0, "{} never got the new secret", b.name);
        let keys = store.epoch_keys(&brec).unwrap();
        assert!(keys.get(1).is_none());
        let k0 = keys.get(0).unwrap();
        for e in &new_entries {
            assert!(
                e.open_change(k0).is_err(),
                "{} can read after removal",
                b.name
            );
        }
        // Nor does any stored membership entry open the new keyring with Bob's key.
        for raw in store.membership_chain(&rec.id).unwrap() {
            let e = weft_store::members::MembershipEntry::decode(&raw).unwrap();
            if let Ok(ring) = e.open_keyring(&b.home.load_identity().unwrap().person) {
                assert!(ring.secrets.iter().all(|s| s.epoch == 0));
            }
        }
    }

    // The viewer's local entry, and anything Bob writes after removal, is refused by
    // Alice's devices.
    let b1_dev = b1.home.load_identity().unwrap().device_id();
    let mine = log_entries(&b1, &rec.id, Some(&b1_dev));
    let last = mine.last().cloned().expect("b1 wrote entries");
    let a_store = weft_store::Store::open(&a1.home).unwrap();
    let rec = a_store.find_folder("shared").unwrap();
    let acc = a_store.accept_entries(&rec, &[last]).unwrap();
    assert_eq!(acc.accepted, 0);
    assert!(
        acc.rejected.iter().any(|r| r.contains("may not write")),
        "{:?}",
        acc.rejected
    );
}
