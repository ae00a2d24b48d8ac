//! Disks that fail under a running node: one fills up, one goes away.
use std::time::Duration;
use weft_node::control::ControlResponse;
use weft_tests::*;

const WAIT: Duration = Duration::from_secs(60);

fn folder(d: &Device) -> weft_node::apply::FolderStatus {
    match d.status() {
        ControlResponse::Status { mut folders, .. } if folders.len() == 1 => folders.remove(0),
        other => panic!("unexpected {other:?}"),
    }
}

fn last_error(d: &Device) -> String {
    folder(d).last_error.unwrap_or_default()
}

/// The receiver's disk fills up: nothing half-written appears under a file's name, no
/// partial file holds on to the space, the store stays sound, the folder's status says
/// the disk is full (not that a chunk is missing), and everything arrives once there is
/// room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_the_receiving_side_loses_nothing_and_the_transfer_completes_later() {
    if !is_root() {
        eprintln!("note: needs root to mount a tmpfs; skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&tmp.path().join("b-disk"), "6m") else {
        return;
    };
    let mut a = Device::new(tmp.path(), "a");
    a.create_folder();
    // 12 MiB of large files (each assembled on its own) and 3 MiB of small ones
    // (fsynced in batches) for a disk of 6 MiB.
    for i in 0..4u64 {
        a.write(&format!("big/f{i}.bin"), &random_bytes(3 << 20, i + 1));
    }
    for i in 0..150u64 {
        a.write(&format!("small/s{i}.bin"), &random_bytes(20_000, i + 100));
    }
    a.start(&[]);
    let mut b = Device::new(tmp.path(), "b");
    // The folder lands next to the root given here: on the small disk. B's home (its
    // database) stays on the big one.
    b.root = disk.dir.join("b-files");
    b.join(&a.invite()).await;
    assert!(b.root.starts_with(&disk.dir));
    b.start(&[a.port]);

    eventually("b to report its full disk", WAIT, || {
        last_error(&b).contains("disk full")
    })
    .await;
    let err = last_error(&b);
    assert!(!err.contains("no connected device"), "{err}");

    // What B holds is A's, file for file; the rest is simply not there yet.
    let want = snapshot(&a.root);
    let got = snapshot(&b.root);
    let files = |s: &Snapshot| s.values().filter(|v| v.is_some()).count();
    assert!(
        files(&got) < files(&want),
        "the small disk cannot hold it all"
    );
    for (path, entry) in &got {
        assert_eq!(want.get(path), Some(entry), "{path} differs from a's");
    }
    // No partial file keeps the space a full disk needs.
    let parts = std::fs::read_dir(b.root.join(".weft/tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(parts, 0, "partial files left on a full disk");

    // The store is sound, and records only what is on disk.
    b.stop().await;
    {
        let store = weft_store::Store::open(&b.home).unwrap();
        let report = store.verify().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    // Room again: the rest arrives, and nothing is lost on either side.
    disk.resize("64m");
    b.start(&[a.port]);
    let s = converge(&[&a, &b], WAIT).await;
    assert_eq!(s, want);
    a.stop().await;
    b.stop().await;
}

/// The disk holding a folder is unmounted while its node runs: the folder stops with an
/// error that says so, and no other device deletes a thing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_whose_disk_goes_away_stops_and_nothing_is_deleted_anywhere() {
    if !is_root() {
        eprintln!("note: needs root to mount a tmpfs; skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("a-disk"), "16m");
    let Some(disk) = disk else { return };
    let mut a = Device::new(tmp.path(), "a");
    a.root = disk.dir.join("a-files");
    a.create_folder();
    for i in 0..20u64 {
        a.write(&format!("docs/d{i}.txt"), &random_bytes(5_000, i));
    }
    a.start(&[]);
    let mut b = Device::new(tmp.path(), "b");
    b.join(&a.invite()).await;
    b.start(&[a.port]);
    let before = converge(&[&a, &b], WAIT).await;
    assert_eq!(folder(&a).state, "in sync");

    drop(disk); // unmounted: a's folder root is gone with it
    eventually("a to stop its folder", WAIT, || {
        folder(&a).state == "stopped"
    })
    .await;
    assert!(
        last_error(&a).contains("is the disk mounted?"),
        "{}",
        last_error(&a)
    );
    // Several rounds later (rescans every 3 s here), b still has everything.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(folder(&a).state, "stopped");
    assert_eq!(snapshot(&b.root), before);
    a.stop().await;
    b.stop().await;
}

/// The disk under a running node's home (its database) fills up: redb then refuses
/// every request until it is opened again, so the node stops, opens it again once there
/// is room, and goes on; nothing recorded before is lost and the store verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_database_heals_once_there_is_room() {
    if !is_root() {
        eprintln!("note: needs root to mount a tmpfs; skipping");
        return;
    }
    logs::capture("warn,weft_node=info");
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&tmp.path().join("a-home-disk"), "16m") else {
        return;
    };
    let mut a = Device::new(tmp.path(), "a");
    a.home = weft_store::Home::new(disk.dir.join("a-home"));
    a.create_folder();
    // No chunk cache: the database is the only thing the node writes to that disk.
    std::fs::write(
        a.home.root().join("config.toml"),
        "[cache]\nmax_bytes = 0\n",
    )
    .unwrap();
    a.write("before.txt", b"recorded before the disk filled up");
    a.start(&[]);
    let mut b = Device::new(tmp.path(), "b");
    b.join(&a.invite()).await;
    b.start(&[a.port]);
    converge(&[&a, &b], WAIT).await;

    let already = logs::lines(&["opening it again"]).len();
    let df = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(&disk.dir)
        .output()
        .unwrap();
    let free: u64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("df's answer");
    let filler = disk.dir.join("filler");
    std::fs::write(&filler, vec![0u8; (free - 8192) as usize]).unwrap();
    for i in 0..400 {
        a.write(
            &format!("later/n{i}.txt"),
            format!("written while full {i}").as_bytes(),
        );
    }
    logs::wait(&["opening it again"], already, WAIT).await;

    std::fs::remove_file(&filler).unwrap();
    let s = converge(&[&a, &b], Duration::from_secs(120)).await;
    assert_eq!(s.values().filter(|v| v.is_some()).count(), 401);
    a.stop().await;
    b.stop().await;
    let store = weft_store::Store::open(&a.home).unwrap();
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
