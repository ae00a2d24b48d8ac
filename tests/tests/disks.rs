//! Disks that fail under a running node: one fills up, one goes away.
use std::time::Duration;
use weft_node::control::ControlResponse;
use weft_tests::*;

const WAIT: Duration = Duration::from_secs(60);

/// A tmpfs of `size` at `base/name`, standing in for a small disk; `None` (with a note)
/// where none can be mounted (not root).
fn small_disk(base: &std::path::Path, name: &str, size: &str) -> Option<Tmpfs> {
    if !is_root() {
        eprintln!("note: needs root to mount a tmpfs; skipping");
        return None;
    }
    Tmpfs::mount(&base.join(name), size)
}

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
/// partial file holds on to the space, the folder's status says the disk is full (not
/// that a chunk is missing), everything arrives once there is room again (soon, not at
/// the next rescan), and the store stays sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_the_receiving_side_loses_nothing_and_the_transfer_completes_later() {
    logs::capture("warn,weft_node=info");
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = small_disk(tmp.path(), "b-disk", "6m") else {
        return;
    };
    let mut a = Device::new(tmp.path(), "a");
    a.create_folder();
    // 6 MiB of large files (each assembled on its own) and 8 MB of small ones
    // (fsynced in batches) for a disk of 6 MiB.
    for i in 0..2u64 {
        a.write(&format!("big/f{i}.bin"), &random_bytes(3 << 20, i));
    }
    for i in 0..400u64 {
        a.write(&format!("small/s{i}.bin"), &random_bytes(20_000, i + 100));
    }
    a.start(&[]);
    let mut b = Device::new(tmp.path(), "b");
    // The folder lands next to the root given here: on the small disk. B's home (its
    // database) stays on the big one. No rescan comes before the test is over: only a
    // full disk's own retries can bring the rest.
    b.root = disk.dir.join("b-files");
    b.rescan_every = Duration::from_secs(600);
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
    // The log says it once a round, with a count, not once a file.
    logs::wait(&["files could not be written: the disk is full"], 0, WAIT).await;
    let missing = files(&want) - files(&got);
    assert!(
        missing > 50,
        "only {missing} files missing: the disk is too large"
    );
    let per_file = logs::lines(&["disk full: cannot write", "b-disk"]).len();
    assert!(
        per_file * 4 < missing,
        "{per_file} lines for {missing} files"
    );
    // No partial file keeps the space a full disk needs: between two rounds (each
    // tries again and fails again) there is none.
    let tmp_dir = b.root.join(".weft/tmp");
    eventually("a moment without partial files", WAIT, || {
        std::fs::read_dir(&tmp_dir).map_or(0, |d| d.count()) == 0
    })
    .await;

    // Room again: the rest arrives while B runs, and nothing is lost on either side.
    // First let B's rounds settle (a round that wrote files raises events that start
    // the next one): from then on only its own retry can bring the rest.
    let failed = || logs::lines(&["sync round failed", "b-disk"]).len();
    let mut seen = failed();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = failed();
        if now == seen {
            break;
        }
        seen = now;
    }
    disk.resize("64m");
    let s = converge(&[&a, &b], WAIT).await;
    assert_eq!(s, want);
    a.stop().await;
    b.stop().await;
    // The store that went through it all is sound.
    let store = weft_store::Store::open(&b.home).unwrap();
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// The disk holding a folder is unmounted while its node runs: the folder stops with an
/// error that says so, and no other device deletes a thing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_whose_disk_goes_away_stops_and_nothing_is_deleted_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = small_disk(tmp.path(), "a-disk", "16m") else {
        return;
    };
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
    logs::capture("warn,weft_node=info");
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = small_disk(tmp.path(), "a-home-disk", "16m") else {
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

/// A relay's disk fills up during an upload: the upload is refused with the reason,
/// leaves no staged blob behind to take the room its retry needs, and goes through
/// once there is room.
#[test]
fn a_relay_whose_disk_is_full_refuses_an_upload_and_keeps_nothing_of_it() {
    use weft_relay::storage::{RelayError, RelayStore, StorageConfig};
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = small_disk(tmp.path(), "relay-disk", "1m") else {
        return;
    };
    let relay = RelayStore::open(&disk.dir.join("data"), StorageConfig::default()).unwrap();
    let home = weft_store::Home::new(tmp.path().join("home"));
    home.init("laptop", 0).unwrap();
    let store = weft_store::Store::open(&home).unwrap();
    let root = tmp.path().join("files");
    std::fs::create_dir(&root).unwrap();
    let folder = store.add_folder(&root, Some("f")).unwrap();
    relay.register(&store.identity().cert.to_bytes()).unwrap();
    let me = store.identity().device_id();
    let secret = *store.keys(&folder).convergence_secret();
    // 40 chunks of 30 kB: more than the 1 MiB disk holds.
    let chunks: Vec<(weft_crypto::ChunkId, Vec<u8>)> = (0..40u64)
        .map(|i| {
            let c = weft_crypto::SealedChunk::seal(&secret, &random_bytes(30_000, i));
            (c.id, c.ciphertext)
        })
        .collect();
    let ids: Vec<_> = chunks.iter().map(|(id, _)| *id).collect();

    let e = relay.put_chunks(&me, &folder.id, &chunks).unwrap_err();
    assert!(matches!(e, RelayError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("No space left"), "{e}");
    let staged: Vec<_> = std::fs::read_dir(disk.dir.join("data/blobs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tmp-"))
        .collect();
    assert!(staged.is_empty(), "staged blobs left: {staged:?}");
    assert_eq!(relay.missing_chunks(&folder.id, &ids).unwrap(), ids);

    disk.resize("16m");
    relay.put_chunks(&me, &folder.id, &chunks).unwrap();
    assert!(relay.missing_chunks(&folder.id, &ids).unwrap().is_empty());
}

/// A relay's database write fails on a full disk: redb refuses everything after that
/// until it is opened again, which the relay does by itself once there is room, with
/// nothing acknowledged before lost.
#[test]
fn a_relay_database_that_failed_on_a_full_disk_works_again_once_there_is_room() {
    use weft_relay::storage::{RelayStore, StorageConfig};
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = small_disk(tmp.path(), "relay-disk", "4m") else {
        return;
    };
    let relay = RelayStore::open(&disk.dir.join("data"), StorageConfig::default()).unwrap();
    let cert = |name: &str| {
        let home = weft_store::Home::new(tmp.path().join(name));
        let (id, _) = home.init(name, 0).unwrap();
        id.cert.to_bytes()
    };
    let first = cert("first");
    relay.register(&first).unwrap();

    let filler = disk.dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 << 10];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    drop(f);
    let second = cert("second");
    let e = relay.register(&second).unwrap_err();
    assert!(e.to_string().contains("space"), "{e}");

    std::fs::remove_file(&filler).unwrap();
    relay.register(&second).unwrap();
    assert_eq!(relay.stats().unwrap().persons, 2);
}
