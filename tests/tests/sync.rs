//! A person's devices keep a folder identical over real libp2p connections.
use std::time::Duration;
use weft_tests::*;

const WAIT: Duration = Duration::from_secs(40);

/// Three devices of one person: A creates the folder, B and C pair with it.
async fn three_devices(base: &std::path::Path) -> (Device, Device, Device) {
    let mut a = Device::new(base, "a");
    let mut b = Device::new(base, "b");
    let mut c = Device::new(base, "c");
    a.create_folder();
    a.write("hello.txt", b"hello from a");
    a.start(&[]);
    let code = a.invite();
    b.join(&code).await;
    let code = a.invite();
    c.join(&code).await;
    b.start(&[a.port]);
    c.start(&[a.port, b.port]);
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_converge_on_every_kind_of_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut c) = three_devices(tmp.path()).await;
    let s = converge(&[&a, &b, &c], WAIT).await;
    assert_eq!(s["hello.txt"], Some((b"hello from a".to_vec(), false)));

    // Every kind of change, each made on a different device.
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    b.write("docs/big.bin", &big);
    c.write("notes/todo.txt", b"one");
    std::fs::create_dir_all(c.path("empty/dir")).unwrap();
    converge(&[&a, &b, &c], WAIT).await;

    a.write("notes/todo.txt", b"one, two"); // modify
    std::fs::rename(b.path("docs/big.bin"), b.path("big-moved.bin")).unwrap(); // move
    std::fs::remove_file(c.path("hello.txt")).unwrap(); // delete
    std::fs::remove_dir(c.path("empty/dir")).unwrap(); // remove an empty dir
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(a.path("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(a.path("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let s = converge(&[&a, &b, &c], WAIT).await;
    assert_eq!(s["notes/todo.txt"], Some((b"one, two".to_vec(), false)));
    assert_eq!(s["big-moved.bin"], Some((big.clone(), false)));
    assert!(!s.contains_key("docs/big.bin"));
    assert!(!s.contains_key("hello.txt"));
    assert!(!s.contains_key("empty/dir"));
    assert!(s.contains_key("empty"));
    assert!(s["run.sh"].as_ref().unwrap().1, "the executable bit syncs");

    // C offline while A and B change things; C catches up when it returns.
    c.stop().await;
    a.write("while-away/a.txt", b"written while c was away");
    std::fs::remove_file(b.path("notes/todo.txt")).unwrap();
    converge(&[&a, &b], WAIT).await;
    c.start(&[a.port, b.port]);
    let s = converge(&[&a, &b, &c], WAIT).await;
    assert_eq!(
        s["while-away/a.txt"],
        Some((b"written while c was away".to_vec(), false))
    );
    assert!(!s.contains_key("notes/todo.txt"));

    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_while_partitioned_make_the_same_conflict_copy_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut c) = three_devices(tmp.path()).await;
    a.write("report.txt", b"first draft");
    converge(&[&a, &b, &c], WAIT).await;

    // B is cut off; A and B both edit the same file.
    b.stop().await;
    a.write("report.txt", b"edited on a");
    converge(&[&a, &c], WAIT).await;
    b.write("report.txt", b"edited on b, offline");
    b.start(&[a.port, c.port]);
    let s = converge(&[&a, &b, &c], WAIT).await;

    let copies: Vec<&String> = s
        .keys()
        .filter(|k| k.starts_with("report.sync-conflict-"))
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "exactly one conflict copy: {:?}",
        s.keys().collect::<Vec<_>>()
    );
    assert!(copies[0].ends_with(".txt"));
    let mut contents = vec![
        s["report.txt"].as_ref().unwrap().0.clone(),
        s[copies[0]].as_ref().unwrap().0.clone(),
    ];
    contents.sort();
    assert_eq!(
        contents,
        vec![b"edited on a".to_vec(), b"edited on b, offline".to_vec()],
        "nothing lost"
    );

    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_beats_a_concurrent_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Device::new(tmp.path(), "a");
    let mut b = Device::new(tmp.path(), "b");
    a.create_folder();
    a.write("keep.txt", b"v1");
    a.start(&[]);
    b.join(&a.invite()).await;
    b.start(&[a.port]);
    converge(&[&a, &b], WAIT).await;
    b.stop().await;
    std::fs::remove_file(a.path("keep.txt")).unwrap();
    eventually("a records the delete", WAIT, || {
        weft_node::control::request(&a.home, &weft_node::control::ControlRequest::Status).is_ok()
            && !a.path("keep.txt").exists()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.write("keep.txt", b"v2, edited while a deleted it");
    b.start(&[a.port]);
    let s = converge(&[&a, &b], WAIT).await;
    assert_eq!(
        s["keep.txt"],
        Some((b"v2, edited while a deleted it".to_vec(), false))
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_refuses_wrong_reused_and_expired_codes_and_strangers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Device::new(tmp.path(), "a");
    a.create_folder();
    a.write("secret.txt", b"for my devices only");
    a.start(&[]);
    let code = a.invite();

    // A damaged code is refused before anything happens.
    let mut b = Device::new(tmp.path(), "b");
    let mut bad = code.clone();
    bad.pop();
    let parent = tmp.path().join("b-parent");
    let err = weft_node::join::join(&b.home, &bad, &parent, "b")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
    assert!(!b.home.is_initialized(), "a refused join writes nothing");

    // A code with the right shape but the wrong secret is refused by the inviter.
    let mut inv = weft_node::pairing::Invite::decode(&code).unwrap();
    inv.secret[0] ^= 1;
    let err = weft_node::join::join(&b.home, &inv.encode(), &parent, "b")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(!b.home.is_initialized());

    // An expired code is refused.
    let mut old = weft_node::pairing::Invite::decode(&code).unwrap();
    old.expires_ms = 1;
    let err = weft_node::join::join(&b.home, &old.encode(), &parent, "b")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    // The real code works once...
    b.join(&code).await;
    // ...and not twice.
    let c = Device::new(tmp.path(), "c");
    let err = weft_node::join::join(&c.home, &code, &tmp.path().join("c-parent"), "c")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(!c.home.is_initialized());

    // A stranger (another person) that dials A is never served.
    let mut s = Device::new(tmp.path(), "stranger");
    s.create_folder();
    s.start(&[a.port]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.peers(), 0, "a stranger is not a peer");
    assert_eq!(a.peers(), 0);
    assert!(!s.root.join("secret.txt").exists());
    s.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_restore_fetch_old_chunks_from_other_devices() {
    use weft_node::control::{ControlRequest, ControlResponse, request};
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Device::new(tmp.path(), "a");
    let mut b = Device::new(tmp.path(), "b");
    a.create_folder();
    let v1: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2246822519) >> 11) as u8)
        .collect();
    a.write("doc.bin", &v1);
    a.start(&[]);
    eventually("a indexes v1", WAIT, || {
        match request(
            &a.home,
            &ControlRequest::History {
                path: a.path("doc.bin").to_string_lossy().into_owned(),
            },
        ) {
            Ok(ControlResponse::History { items }) => {
                items.as_array().is_some_and(|v| v.len() == 1)
            }
            _ => false,
        }
    })
    .await;
    a.write("doc.bin", b"version two");
    eventually("a indexes v2", WAIT, || {
        match request(
            &a.home,
            &ControlRequest::History {
                path: a.path("doc.bin").to_string_lossy().into_owned(),
            },
        ) {
            Ok(ControlResponse::History { items }) => {
                items.as_array().is_some_and(|v| v.len() == 2)
            }
            _ => false,
        }
    })
    .await;
    // B joins later: it receives the current version only, but the whole history.
    b.join(&a.invite()).await;
    b.start(&[a.port]);
    converge(&[&a, &b], WAIT).await;
    let out = tmp.path().join("restored-v1.bin");
    let resp = request(
        &b.home,
        &ControlRequest::Restore {
            path: b.path("doc.bin").to_string_lossy().into_owned(),
            version: 1,
            to: Some(out.to_string_lossy().into_owned()),
        },
    )
    .unwrap();
    assert!(matches!(resp, ControlResponse::Restored { .. }), "{resp:?}");
    assert_eq!(std::fs::read(&out).unwrap(), v1, "v1's chunks came from a");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_files_stay_on_their_device() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Device::new(tmp.path(), "a");
    let mut b = Device::new(tmp.path(), "b");
    a.create_folder();
    a.write(".weftignore", b"*.log\nbuild/\n");
    a.start(&[]);
    b.join(&a.invite()).await;
    b.start(&[a.port]);
    converge(&[&a, &b], WAIT).await;
    a.write("debug.log", b"local noise");
    a.write("build/out.o", b"object");
    a.write("src/main.rs", b"fn main() {}");
    b.write("b.log", b"b's own noise");
    eventually("src/main.rs reaches b", WAIT, || {
        b.path("src/main.rs").exists()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!b.path("debug.log").exists() && !b.path("build").exists());
    assert!(!a.path("b.log").exists());
    a.stop().await;
    b.stop().await;
}

/// A file whose content repeats (a zeroed region: the same chunk many times over) costs
/// its distinct chunks on the wire, once each, and arrives byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_recurs_in_a_file_is_transferred_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Device::new(tmp.path(), "a");
    let mut b = Device::new(tmp.path(), "b");
    a.create_folder();
    // 8 MiB of zeros (32 identical chunks of 256 KiB), then 100 KiB of other bytes.
    let mut data = vec![0u8; 8 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..(100 << 10) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.push(x as u8);
    }
    a.write("disk.img", &data);
    a.start(&[]);
    b.join(&a.invite()).await;
    b.start(&[a.port]);
    let s = converge(&[&a, &b], WAIT).await;
    assert_eq!(s["disk.img"], Some((data, false)));
    let weft_node::control::ControlResponse::Status { bytes_received, .. } =
        weft_node::control::request(&b.home, &weft_node::control::ControlRequest::Status).unwrap()
    else {
        panic!("b did not answer its status");
    };
    assert!(
        bytes_received < 1 << 20,
        "b received {bytes_received} bytes for 8 MiB of one repeated chunk and 100 KiB of others"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_files_of_the_same_content_all_arrive() {
    // Files are assembled in a temporary file named by their content, and small ones
    // wait there for a batched fsync: identical files (empty ones above all) must
    // still each end up under their own name.
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Device::new(tmp.path(), "a");
    let mut b = Device::new(tmp.path(), "b");
    a.create_folder();
    for i in 0..40 {
        a.write(&format!("same/{i}.txt"), b"the same few bytes");
        a.write(&format!("empty/{i}"), b"");
    }
    a.start(&[]);
    b.join(&a.invite()).await;
    b.start(&[a.port]);
    let s = converge(&[&a, &b], WAIT).await;
    for i in 0..40 {
        assert_eq!(
            s[&format!("same/{i}.txt")],
            Some((b"the same few bytes".to_vec(), false))
        );
        assert_eq!(s[&format!("empty/{i}")], Some((Vec::new(), false)));
    }
    a.stop().await;
    b.stop().await;
}

/// Symlinks and special files are not synced, and that is said once: in the log (not
/// again at every rescan) and in `weft status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_and_special_files_are_reported_once_and_not_synced() {
    logs::capture("warn,weft_node=info");
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Device::new(tmp.path(), "a");
    a.create_folder();
    a.write("real.txt", b"real");
    std::os::unix::fs::symlink("real.txt", a.path("a-symlink-to-real.txt")).unwrap();
    // More than a status lists (a project's node_modules/.bin has hundreds).
    let many = weft_node::apply::NOT_SYNCED_SHOWN + 5;
    std::fs::create_dir(a.path("bin")).unwrap();
    for i in 0..many {
        std::os::unix::fs::symlink("../real.txt", a.path(&format!("bin/tool-{i}"))).unwrap();
    }
    let fifo = std::process::Command::new("mkfifo")
        .arg(a.path("a-fifo"))
        .status()
        .unwrap();
    assert!(fifo.success());
    a.start(&[]);
    let mut b = Device::new(tmp.path(), "b");
    b.join(&a.invite()).await;
    b.start(&[a.port]);
    let s = converge(&[&a, &b], WAIT).await;
    assert_eq!(s["real.txt"], Some((b"real".to_vec(), false)));
    for name in ["a-symlink-to-real.txt", "a-fifo"] {
        assert!(std::fs::symlink_metadata(b.path(name)).is_err(), "{name}");
    }
    let (not_synced, count) = match a.status() {
        weft_node::control::ControlResponse::Status { folders, .. } => {
            (folders[0].not_synced.clone(), folders[0].not_synced_count)
        }
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(count as usize, many + 2);
    assert_eq!(not_synced.len(), weft_node::apply::NOT_SYNCED_SHOWN);
    assert!(
        not_synced.contains(&"a-symlink-to-real.txt: symlink, not synced".to_string())
            && not_synced
                .iter()
                .any(|w| w.starts_with("a-fifo: not a regular file")),
        "{not_synced:?}"
    );
    // Rescans come every 3 s here: two more have run, and said nothing new.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let said = logs::lines(&["a-symlink-to-real.txt", "symlink, not synced"]);
    assert_eq!(said.len(), 1, "{said:?}");
    assert_eq!(
        logs::lines(&["bin/tool-", "symlink, not synced"]).len(),
        many
    );
    a.stop().await;
    b.stop().await;
}
