//! End-to-end tests of the `weft` user flows: each runs the real binary with its own
//! home and folder and checks both its JSON output and the files on disk.
mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

fn paths_in_log(env: &Env) -> BTreeSet<String> {
    env.log_ops()
        .into_iter()
        .flat_map(|(_, p, to)| std::iter::once(p).chain(to))
        .collect()
}

#[test]
fn init_creates_private_keys_and_a_second_init_changes_nothing() {
    let env = Env::new();
    let first = env.json(["init", "--name", "laptop"]);
    assert_eq!(first["created"], true, "{first}");
    assert_eq!(first["name"], "laptop");
    let device = first["device_id"].as_str().expect("device_id").to_owned();
    let person = first["person_id"].as_str().expect("person_id").to_owned();
    assert!(
        device.starts_with("12D3KooW"),
        "device id is a PeerId: {device}"
    );
    assert!(!person.is_empty() && person != device);

    let key_files = ["person.key", "device.key", "device.cert"];
    let mut before = Vec::new();
    for f in key_files {
        let p = env.home.join(f);
        assert_eq!(mode(&p), 0o600, "{f} must be readable by its owner only");
        before.push(std::fs::read(&p).expect("read key file"));
    }
    assert_eq!(mode(&env.home), 0o700, "the home is private");
    assert!(
        env.home.join("weft.redb").is_file(),
        "init leaves a database"
    );

    let second = env.json(["init", "--name", "other"]);
    assert_eq!(second["created"], false, "{second}");
    assert_eq!(second["device_id"], device.as_str());
    assert_eq!(second["person_id"], person.as_str());
    assert_eq!(second["name"], "laptop", "a second init renames nothing");
    for (f, old) in key_files.iter().zip(&before) {
        let now = std::fs::read(env.home.join(f)).expect("read key file");
        assert_eq!(&now, old, "{f} changed on a second init");
    }
    let human = env.run(["init"]).ok();
    assert!(human.stdout.contains("nothing changed"), "{}", human.stdout);
    assert!(human.stdout.contains(&device));
}

#[test]
fn id_shows_the_identity_init_created() {
    let env = Env::new();
    let init = env.init();
    let id = env.json(["id"]);
    assert_eq!(id["device_id"], init["device_id"]);
    assert_eq!(id["person_id"], init["person_id"]);
    assert_eq!(id["name"], "testbox");
    let fp = id["fingerprint"].as_str().expect("fingerprint");
    assert!(
        fp.split(' ').count() >= 4 && fp.chars().all(|c| c.is_ascii_digit() || c == ' '),
        "a fingerprint to read aloud: {fp:?}"
    );
    let human = env.run(["id"]).ok();
    assert!(human.stdout.contains(fp), "{}", human.stdout);

    // `--qr` shows the person id as a QR code that a scanner reads back.
    let qr = env.run(["id", "--qr"]).ok();
    let rows: Vec<&str> = qr
        .stdout
        .lines()
        .filter(|l| l.chars().any(|c| "█▀▄".contains(c)))
        .collect();
    assert!(rows.len() > 10, "{}", qr.stdout);
    // Each character is two pixels, top and bottom; full blocks are light.
    let width = rows[0].chars().count();
    let scale = 4;
    let (w, h) = (width * scale, rows.len() * 2 * scale);
    let mut grey = vec![0u8; w * h];
    for (r, line) in rows.iter().enumerate() {
        for (x, c) in line.chars().enumerate() {
            let (top, bottom) = match c {
                '█' => (true, true),
                '▀' => (true, false),
                '▄' => (false, true),
                _ => (false, false),
            };
            for (half, light) in [(0, top), (1, bottom)] {
                for dy in 0..scale {
                    for dx in 0..scale {
                        let y = (r * 2 + half) * scale + dy;
                        grey[y * w + x * scale + dx] = if light { 255 } else { 0 };
                    }
                }
            }
        }
    }
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| grey[y * w + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code");
    let (_, content) = grids[0].decode().expect("the QR code decodes");
    assert_eq!(content, id["person_id"].as_str().expect("person id"));
}

#[test]
fn folder_add_initializes_indexes_and_list_shows_counts() {
    let env = Env::new();
    env.write("a.txt", b"hello");
    env.write("docs/b.md", &[b'b'; 300]);
    env.write("docs/deep/c.bin", &random_bytes(1, 70_000));
    let total = 5 + 300 + 70_000;

    let t0 = now_ms();
    // No `init` first: adding a folder initializes the device.
    let out = env.json([
        OsStr::new("folder"),
        OsStr::new("add"),
        env.folder.as_os_str(),
    ]);
    let t1 = now_ms();
    assert!(env.home.join("device.key").is_file());
    env.json(["id"]);
    assert_eq!(out["name"], "f");
    assert_eq!(out["path"], env.folder.to_str().expect("utf-8 path"));
    let id = out["id"].as_str().expect("folder id").to_owned();
    let scan = &out["scan"];
    expect_counts(scan, &[("files_added", 3), ("dirs_added", 2)]);
    assert_eq!(n(scan, "bytes_read"), total);
    // Entries are signed batches of operations: at least one, and five operations.
    assert!(n(scan, "log_entries") >= 1, "{scan}");
    assert_eq!(env.log().len(), 5);
    assert!(n(scan, "new_chunks") >= 3, "{scan}");
    assert!(warnings(scan).is_empty(), "{scan}");

    let list = env.folders();
    let list = list.as_array().expect("folder list is an array");
    assert_eq!(list.len(), 1);
    let f = &list[0];
    assert_eq!(f["id"], id.as_str());
    assert_eq!(f["name"], "f");
    assert_eq!(f["path"], out["path"]);
    assert_eq!(n(f, "files"), 3);
    assert_eq!(n(f, "bytes"), total);
    let last = n(f, "last_scan_ms");
    assert!(
        t0 <= last && last <= t1,
        "last scan {last} not in [{t0}, {t1}]"
    );

    let human = env.run(["folder", "list"]).ok();
    assert!(human.stdout.contains(&id) && human.stdout.contains("f "));
}

#[test]
fn folder_add_no_scan_registers_and_scan_indexes_later() {
    let env = Env::new();
    env.init();
    env.write("one", b"1");
    env.write("two", b"22");
    let out = env.json([
        OsStr::new("folder"),
        OsStr::new("add"),
        OsStr::new("--no-scan"),
        OsStr::new("--name"),
        OsStr::new("docs"),
        env.folder.as_os_str(),
    ]);
    assert_eq!(out["scan"], Value::Null);
    assert_eq!(out["name"], "docs");
    let f = &env.folders()[0];
    assert_eq!(n(f, "files"), 0);
    assert_eq!(f["last_scan_ms"], Value::Null);
    assert!(env.log().is_empty());

    let s = env.json(["scan", "docs"]);
    expect_counts(&s, &[("files_added", 2)]);
    assert_eq!(s["folder"], "docs");
    let f = &env.folders()[0];
    assert_eq!(n(f, "files"), 2);
    assert_eq!(n(f, "bytes"), 3);
    assert!(f["last_scan_ms"].is_u64());
}

#[test]
fn scan_records_new_modified_and_deleted_files() {
    let env = Env::new();
    env.write("a.txt", b"one");
    env.write("b.txt", b"two");
    env.init_and_add();
    let base = env.log().len();

    env.write("c.txt", b"three");
    let s = env.scan();
    expect_counts(&s, &[("files_added", 1)]);
    assert_eq!(n(&s, "bytes_read"), 5);
    assert_eq!(n(&s, "log_entries"), 1);

    env.write("a.txt", b"one, edited");
    let s = env.scan();
    expect_counts(&s, &[("files_changed", 1)]);
    assert_eq!(n(&s, "bytes_read"), 11);
    assert_eq!(n(&s, "log_entries"), 1);

    std::fs::remove_file(env.path("b.txt")).expect("rm");
    let s = env.scan();
    expect_counts(&s, &[("files_deleted", 1)]);
    assert_eq!(n(&s, "bytes_read"), 0);

    let ops = env.log_ops();
    assert_eq!(
        ops[base..],
        [
            ("put".into(), "c.txt".into(), None),
            ("put".into(), "a.txt".into(), None),
            ("delete".into(), "b.txt".into(), None),
        ]
    );
    let h = env.history("b.txt");
    assert_eq!(h.len(), 2);
    assert_eq!(h[1]["kind"], "deleted");
    assert_eq!(h[1]["current"], true);
    assert_eq!(h[0]["current"], false);
    let f = &env.folders()[0];
    assert_eq!(n(f, "files"), 2);
    assert_eq!(n(f, "bytes"), 11 + 5);
    env.verify_ok();
}

#[test]
fn unchanged_rescan_reads_nothing_and_a_touch_records_nothing() {
    let env = Env::new();
    env.write("a.txt", b"alpha");
    env.write("d/b.bin", &random_bytes(2, 200_000));
    env.write("d/e/c", b"");
    let first = env.init_and_add();
    assert_eq!(n(&first, "files_added"), 3);
    let log_len = env.log().len();

    expect_nothing(&env.scan());
    assert_eq!(env.log().len(), log_len);

    // A new mtime with the same content is not a new version.
    let f = std::fs::File::options()
        .write(true)
        .open(env.path("d/b.bin"))
        .expect("open");
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .expect("set mtime");
    drop(f);
    let s = env.scan();
    expect_counts(&s, &[]);
    assert_eq!(n(&s, "log_entries"), 0, "{s}");
    assert_eq!(n(&s, "new_chunks"), 0, "{s}");
    assert_eq!(env.history("d/b.bin").len(), 1);
    // …and the refreshed index makes the next scan read nothing again.
    expect_nothing(&env.scan());
    assert_eq!(env.log().len(), log_len);
}

#[test]
fn a_renamed_file_is_a_move_and_is_neither_read_nor_stored_again() {
    let env = Env::new();
    let big = random_bytes(3, 1_500_000);
    env.write("big.bin", &big);
    env.write("small.txt", b"small file");
    let first = env.init_and_add();
    assert!(
        n(&first, "new_chunks") >= 6,
        "the big file is cut into several chunks: {first}"
    );
    let packs = env.pack_bytes();
    let log_len = env.log().len();

    std::fs::create_dir_all(env.path("sub/new")).expect("mkdir");
    std::fs::rename(env.path("big.bin"), env.path("sub/new/big.bin")).expect("mv");
    std::fs::rename(env.path("small.txt"), env.path("renamed.txt")).expect("mv");
    let s = env.scan();
    expect_counts(&s, &[("files_moved", 2), ("dirs_added", 2)]);
    assert_eq!(n(&s, "bytes_read"), 0, "a move is not re-read: {s}");
    assert_eq!(n(&s, "new_chunks"), 0, "{s}");
    assert_eq!(n(&s, "new_chunk_bytes"), 0, "{s}");
    assert_eq!(env.pack_bytes(), packs, "nothing stored twice");

    let moves: BTreeSet<_> = env.log_ops()[log_len..]
        .iter()
        .filter(|(op, _, _)| op == "move")
        .map(|(_, from, to)| (from.clone(), to.clone().expect("move has a destination")))
        .collect();
    let want: BTreeSet<_> = [
        ("big.bin".to_owned(), "sub/new/big.bin".to_owned()),
        ("small.txt".to_owned(), "renamed.txt".to_owned()),
    ]
    .into_iter()
    .collect();
    assert_eq!(moves, want);

    let h = env.history("sub/new/big.bin");
    let cur = h.last().expect("a version at the new path");
    assert_eq!(cur["current"], true);
    assert_eq!(n(cur, "size"), big.len() as u64);
    let out = env.base().join("big.out");
    assert_eq!(
        env.restore_to("sub/new/big.bin", n(cur, "number"), &out),
        big
    );
    let f = &env.folders()[0];
    assert_eq!(n(f, "files"), 2);
    assert_eq!(n(f, "bytes"), big.len() as u64 + 10);
    env.verify_ok();
}

#[test]
fn a_renamed_directory_moves_its_files_without_reading_them() {
    let env = Env::new();
    for i in 0..3 {
        env.write(
            format!("photos/2024/p{i}.jpg"),
            &random_bytes(20 + i, 300_000),
        );
    }
    env.init_and_add();
    let packs = env.pack_bytes();
    std::fs::rename(env.path("photos"), env.path("pictures")).expect("mv");
    let s = env.scan();
    expect_counts(
        &s,
        &[("files_moved", 3), ("dirs_added", 2), ("dirs_deleted", 2)],
    );
    assert_eq!(n(&s, "bytes_read"), 0, "{s}");
    assert_eq!(env.pack_bytes(), packs);
    let f = &env.folders()[0];
    assert_eq!(n(f, "files"), 3);
    assert!(
        env.restore_to("pictures/2024/p1.jpg", 1, &env.base().join("p1"))
            == random_bytes(21, 300_000)
    );
    expect_nothing(&env.scan());
}

#[test]
fn a_copied_then_deleted_file_is_a_move_without_new_chunks() {
    let env = Env::new();
    let big = random_bytes(4, 900_000);
    env.write("orig.bin", &big);
    env.init_and_add();
    let packs = env.pack_bytes();
    // A copy has a new inode: weft reads it, finds the content of the deleted file.
    std::fs::copy(env.path("orig.bin"), env.path("copy.bin")).expect("cp");
    std::fs::remove_file(env.path("orig.bin")).expect("rm");
    let s = env.scan();
    expect_counts(&s, &[("files_moved", 1)]);
    assert_eq!(n(&s, "new_chunks"), 0, "{s}");
    assert_eq!(env.pack_bytes(), packs);
    let ops = env.log_ops();
    assert_eq!(
        ops.last(),
        Some(&("move".into(), "orig.bin".into(), Some("copy.bin".into())))
    );
}

#[test]
fn empty_directories_are_added_and_removed() {
    let env = Env::new();
    env.write("keep", b"k");
    env.init_and_add();
    std::fs::create_dir_all(env.path("e1/e2")).expect("mkdir");
    let s = env.scan();
    expect_counts(&s, &[("dirs_added", 2)]);
    assert!(n(&s, "log_entries") >= 1, "{s}");
    let ops = env.log_ops();
    assert_eq!(
        ops[ops.len() - 2..],
        [
            ("mkdir".into(), "e1".into(), None),
            ("mkdir".into(), "e1/e2".into(), None)
        ]
    );
    expect_nothing(&env.scan());

    std::fs::remove_dir_all(env.path("e1")).expect("rmdir");
    let s = env.scan();
    expect_counts(&s, &[("dirs_deleted", 2)]);
    let ops = env.log_ops();
    assert_eq!(
        ops[ops.len() - 2..],
        [
            ("delete".into(), "e1/e2".into(), None),
            ("delete".into(), "e1".into(), None)
        ],
        "children are deleted before their parent"
    );
    env.verify_ok();
}

#[test]
fn an_executable_bit_change_alone_is_a_change_without_reading() {
    let env = Env::new();
    let content = random_bytes(5, 300_000);
    env.write("run.sh", &content);
    chmod(&env.path("run.sh"), 0o644);
    env.init_and_add();

    chmod(&env.path("run.sh"), 0o755);
    let s = env.scan();
    expect_counts(&s, &[("files_changed", 1)]);
    assert_eq!(n(&s, "bytes_read"), 0, "{s}");
    assert_eq!(n(&s, "new_chunks"), 0, "{s}");
    assert_eq!(n(&s, "log_entries"), 1, "{s}");

    // Other permission bits are not synced.
    chmod(&env.path("run.sh"), 0o700);
    expect_nothing(&env.scan());

    let h = env.history("run.sh");
    assert_eq!(h.len(), 2);
    assert_eq!(h[0]["size"], h[1]["size"]);
    let v1 = env.base().join("v1");
    let v2 = env.base().join("v2");
    assert_eq!(env.restore_to("run.sh", 1, &v1), content);
    assert_eq!(env.restore_to("run.sh", 2, &v2), content);
    assert_eq!(mode(&v1) & 0o111, 0, "version 1 was not executable");
    assert_ne!(mode(&v2) & 0o100, 0, "version 2 was executable");
}

#[test]
fn weftignore_and_default_ignores_keep_files_out_of_the_log() {
    let env = Env::new();
    env.write(".weftignore", b"*.log\nbuild/\n/top-only.txt\n");
    env.write("keep.txt", b"keep");
    env.write("app.log", b"log");
    env.write("sub/app.log", b"log");
    env.write("build/out.o", b"obj");
    env.write("sub/build/x.o", b"obj");
    env.write("top-only.txt", b"top");
    env.write("sub/top-only.txt", b"not at the top");
    env.write("notes.txt.swp", b"vim swap");
    env.write(".#notes.txt", b"emacs lock");
    env.write("~$report.docx", b"office lock");
    env.write("sub/.#lock", b"emacs lock");
    // A weft folder copied in: its own state directory is not content.
    env.write("sub/.weft/folder", b"another folder's marker");
    env.write("sub/.weft/tmp/x.part", b"partial");
    let s = env.init_and_add();
    expect_counts(&s, &[("files_added", 3), ("dirs_added", 1)]);
    let want: BTreeSet<String> = [".weftignore", "keep.txt", "sub", "sub/top-only.txt"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(paths_in_log(&env), want);

    // Changes to ignored files record nothing.
    env.write("app.log", b"more log lines");
    env.write("build/new.o", b"obj2");
    env.write("later.swp", b"swap");
    expect_nothing(&env.scan());
    assert_eq!(paths_in_log(&env), want);

    // A file ignored after it was indexed is forgotten here, not deleted everywhere.
    env.write(".weftignore", b"*.log\nbuild/\n/top-only.txt\nkeep.txt\n");
    let s = env.scan();
    expect_counts(&s, &[("files_changed", 1)]);
    let ops = env.log_ops();
    assert_eq!(
        ops.last(),
        Some(&("put".into(), ".weftignore".into(), None))
    );
    assert!(
        !ops.iter().any(|(op, _, _)| op == "delete"),
        "ignoring must not delete: {ops:?}"
    );
    assert_eq!(n(&env.folders()[0], "files"), 2);
    assert!(env.path("keep.txt").exists());
    env.verify_ok();
}

#[test]
fn symlinks_are_skipped_with_a_warning() {
    let env = Env::new();
    env.write("real.txt", b"real");
    let outside = env.base().join("outside");
    write_file(&outside.join("secret.txt"), b"outside the folder");
    std::os::unix::fs::symlink("real.txt", env.path("link.txt")).expect("symlink");
    std::os::unix::fs::symlink(&outside, env.path("dirlink")).expect("symlink");
    std::os::unix::fs::symlink("nowhere", env.path("dangling")).expect("symlink");
    env.init();
    let r = env
        .run([
            OsStr::new("--json"),
            OsStr::new("folder"),
            OsStr::new("add"),
            env.folder.as_os_str(),
        ])
        .ok();
    let s = r.json()["scan"].clone();
    expect_counts(&s, &[("files_added", 1)]);
    let w = warnings(&s);
    for name in ["link.txt", "dirlink", "dangling"] {
        assert!(
            w.iter().any(|x| x.contains(name) && x.contains("symlink")),
            "no symlink warning for {name}: {w:?}"
        );
        assert!(r.stderr.contains(name), "warning on stderr: {}", r.stderr);
    }
    let want: BTreeSet<String> = ["real.txt".to_owned()].into_iter().collect();
    assert_eq!(
        paths_in_log(&env),
        want,
        "symlinks are neither synced nor followed"
    );
}

#[test]
fn history_lists_versions_with_numbers_sizes_and_current() {
    let env = Env::new();
    let init = env.init();
    env.write("doc.txt", b"a");
    env.json([
        OsStr::new("folder"),
        OsStr::new("add"),
        env.folder.as_os_str(),
    ]);
    for body in [&b"bb"[..], b"", b"dddd"] {
        env.write("doc.txt", body);
        assert_eq!(n(&env.scan(), "files_changed"), 1);
    }
    let h = env.history("doc.txt");
    assert_eq!(h.len(), 4);
    let sizes: Vec<u64> = h.iter().map(|v| n(v, "size")).collect();
    assert_eq!(sizes, [1, 2, 0, 4]);
    for (i, v) in h.iter().enumerate() {
        assert_eq!(n(v, "number"), i as u64 + 1);
        assert_eq!(v["kind"], "file");
        assert_eq!(v["current"], i == 3, "{v}");
        assert_eq!(v["restorable"], true, "{v}");
        assert_eq!(v["author"], init["device_id"]);
        assert_eq!(v["author_name"], "testbox");
    }
    assert!(h.windows(2).all(|w| n(&w[0], "seq") < n(&w[1], "seq")));
    assert!(
        h.windows(2)
            .all(|w| n(&w[0], "time_ms") <= n(&w[1], "time_ms"))
    );

    std::fs::remove_file(env.path("doc.txt")).expect("rm");
    env.scan();
    let h = env.history("doc.txt");
    assert_eq!(h.len(), 5);
    assert_eq!(h[4]["kind"], "deleted");
    assert_eq!(h[4]["size"], Value::Null);
    assert_eq!(h[4]["current"], true);
    assert!(h[..4].iter().all(|v| v["current"] == false));

    let human = env
        .run([OsStr::new("history"), env.path("doc.txt").as_os_str()])
        .ok();
    assert!(human.stdout.contains("current"), "{}", human.stdout);
}

#[test]
fn restore_to_writes_old_versions_byte_for_byte() {
    let env = Env::new();
    let v1 = random_bytes(6, 700_000);
    let mut v2 = v1.clone();
    v2[350_000..350_010].copy_from_slice(b"0123456789");
    v2.extend_from_slice(b"tail");
    let v3 = b"short now".to_vec();
    env.write("data.bin", &v1);
    env.init_and_add();
    env.write("data.bin", &v2);
    env.scan();
    env.write("data.bin", &v3);
    env.scan();

    let out = env.base().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    for (i, want) in [&v1, &v2, &v3].into_iter().enumerate() {
        let to = out.join(format!("v{}", i + 1));
        assert!(
            env.restore_to("data.bin", i as u64 + 1, &to) == *want,
            "version {} restored with other bytes",
            i + 1
        );
    }
    assert_eq!(
        env.read("data.bin"),
        v3,
        "restore --to leaves the file alone"
    );

    // Deleted from disk: old versions come from the chunk cache.
    std::fs::remove_file(env.path("data.bin")).expect("rm");
    env.scan();
    let again = out.join("v1-after-delete");
    assert!(env.restore_to("data.bin", 1, &again) == v1);

    // Refusals.
    let existing = out.join("v1");
    let p = env.path("data.bin");
    env.run([
        OsStr::new("restore"),
        p.as_os_str(),
        OsStr::new("--version"),
        OsStr::new("2"),
        OsStr::new("--to"),
        existing.as_os_str(),
    ])
    .fails_with("already exists");
    assert!(
        std::fs::read(&existing).expect("read") == v1,
        "--to target overwritten"
    );
    let nowhere = out.join("v99");
    env.run([
        OsStr::new("restore"),
        p.as_os_str(),
        OsStr::new("--version"),
        OsStr::new("99"),
        OsStr::new("--to"),
        nowhere.as_os_str(),
    ])
    .fails_with("has no version 99");
    assert!(!nowhere.exists());
    let tomb = out.join("tomb");
    env.run([
        OsStr::new("restore"),
        p.as_os_str(),
        OsStr::new("--version"),
        OsStr::new("4"),
        OsStr::new("--to"),
        tomb.as_os_str(),
    ])
    .fails_with("deleted or directory version");
    assert!(!tomb.exists());
}

#[test]
fn history_and_restore_accept_paths_relative_to_the_working_directory() {
    let env = Env::new();
    env.write("sub/a.txt", b"first");
    env.init_and_add();
    env.write("sub/a.txt", b"second!");
    env.scan();
    let r = env
        .cmd(["--json", "history", "a.txt"])
        .current_dir(env.path("sub"))
        .output()
        .expect("run");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let h: Value = serde_json::from_slice(&r.stdout).expect("json");
    assert_eq!(h.as_array().map(Vec::len), Some(2));
    let r = env
        .cmd(["restore", "a.txt", "--version", "1", "--to", "old.txt"])
        .current_dir(env.path("sub"))
        .output()
        .expect("run");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(env.read("sub/old.txt"), b"first");
}

#[test]
fn restore_in_place_becomes_the_newest_version() {
    let env = Env::new();
    env.write("notes.txt", b"first version");
    env.init_and_add();
    env.write("notes.txt", b"second, longer version");
    env.scan();
    let log_len = env.log().len();

    let p = env.path("notes.txt");
    let rep = env.json([
        OsStr::new("restore"),
        p.as_os_str(),
        OsStr::new("--version"),
        OsStr::new("1"),
    ]);
    assert_eq!(rep["new_version"], true, "{rep}");
    assert_eq!(rep["written_to"], p.to_str().expect("utf-8"));
    assert_eq!(n(&rep, "bytes"), 13);
    assert_eq!(env.read("notes.txt"), b"first version");

    let h = env.history("notes.txt");
    assert_eq!(h.len(), 3);
    assert_eq!(h[2]["current"], true);
    assert_eq!(n(&h[2], "size"), 13);
    assert!(h[..2].iter().all(|v| v["current"] == false));
    let ops = env.log_ops();
    assert_eq!(ops.len(), log_len + 1);
    assert_eq!(ops.last(), Some(&("put".into(), "notes.txt".into(), None)));

    // The restore updated the index: nothing left to scan, no temp files recorded.
    expect_nothing(&env.scan());
    assert!(
        !paths_in_log(&env).iter().any(|p| p.starts_with(".weft")),
        "weft's temp dir leaked into the log"
    );
    let tmp = env.path(".weft/tmp");
    if tmp.exists() {
        let left: Vec<_> = std::fs::read_dir(&tmp).expect("read_dir").collect();
        assert!(left.is_empty(), "temp files left behind: {left:?}");
    }
    env.verify_ok();
}

#[test]
fn restore_in_place_refuses_to_overwrite_unscanned_changes() {
    let env = Env::new();
    env.write("a.txt", b"v1");
    env.init_and_add();
    env.write("a.txt", b"v2 scanned");
    env.scan();
    let before = env.state();
    let hist = env.history("a.txt");

    env.write("a.txt", b"precious unsaved edits");
    let p = env.path("a.txt");
    let restore_v1 = [
        OsStr::new("restore"),
        p.as_os_str(),
        OsStr::new("--version"),
        OsStr::new("1"),
    ];
    env.run(restore_v1).fails_with("not scanned yet");
    assert_eq!(env.read("a.txt"), b"precious unsaved edits");
    assert_eq!(env.state(), before);
    assert_eq!(env.history("a.txt"), hist);

    // A new, never scanned file where a deleted one was is not overwritten either.
    std::fs::remove_file(&p).expect("rm");
    env.scan();
    env.write("a.txt", b"brand new, unscanned");
    let before = env.state();
    env.run(restore_v1).fails_with("not scanned yet");
    assert_eq!(env.read("a.txt"), b"brand new, unscanned");
    assert_eq!(env.state(), before);
}

#[test]
fn gc_with_zero_retention_frees_old_versions_and_keeps_current_ones() {
    let env = Env::new();
    let keep = random_bytes(7, 200_000);
    let old1 = random_bytes(8, 600_000);
    let old2 = random_bytes(9, 600_000);
    env.write("keep.bin", &keep);
    env.write("old.bin", &old1);
    env.init_and_add();
    env.write("old.bin", &old2);
    env.scan();
    env.write("old.bin", b"small now");
    env.scan();

    // Default retention (30 days): gc keeps every version.
    let rep = env.json(["gc"]);
    assert_eq!(n(&rep, "versions_expired"), 0, "{rep}");
    assert_eq!(n(&rep, "chunks_removed"), 0, "{rep}");
    assert_eq!(n(&rep, "bytes_freed"), 0, "{rep}");
    assert!(
        env.history("old.bin")
            .iter()
            .all(|v| v["restorable"] == true)
    );

    env.set_config("[history]\nretention_days = 0\n");
    let packs_before = env.pack_bytes();
    let rep = env.json(["gc"]);
    assert_eq!(n(&rep, "versions_expired"), 2, "{rep}");
    assert!(n(&rep, "chunks_removed") >= 10, "{rep}");
    let freed = n(&rep, "bytes_freed");
    assert!(freed >= 1_200_000, "two 600 kB versions freed: {rep}");
    assert_eq!(env.pack_bytes(), packs_before - freed);
    assert!(
        n(&rep, "packs_rewritten") >= 1,
        "the pack shared by keep.bin and old v1 is compacted: {rep}"
    );

    let h = env.history("old.bin");
    let restorable: Vec<bool> = h
        .iter()
        .map(|v| v["restorable"].as_bool().expect("bool"))
        .collect();
    assert_eq!(restorable, [false, false, true]);
    let gone = env.base().join("gone");
    let p = env.path("old.bin");
    env.run([
        OsStr::new("restore"),
        p.as_os_str(),
        OsStr::new("--version"),
        OsStr::new("1"),
        OsStr::new("--to"),
        gone.as_os_str(),
    ])
    .fails_with("not restorable here");
    assert!(!gone.exists(), "a failed restore leaves no file");
    assert_eq!(
        env.restore_to("old.bin", 3, &env.base().join("cur")),
        b"small now"
    );
    assert!(env.restore_to("keep.bin", 1, &env.base().join("keep")) == keep);
    let v = env.verify_ok();
    assert!(n(&v, "chunks") >= 3, "keep.bin's chunks stay cached: {v}");

    // A second gc finds nothing more to free.
    let rep = env.json(["gc"]);
    assert_eq!(n(&rep, "chunks_removed"), 0, "{rep}");
    assert_eq!(n(&rep, "bytes_freed"), 0, "{rep}");
    env.verify_ok();
}

#[test]
fn log_shows_every_operation_in_order() {
    let env = Env::new();
    let init = env.init();
    env.json([
        OsStr::new("folder"),
        OsStr::new("add"),
        env.folder.as_os_str(),
    ]);
    assert!(env.log().is_empty());
    let mut entries = 0;
    let mut scan = || entries += n(&env.scan(), "log_entries");
    env.write("d/a", b"a");
    scan();
    env.write("b", b"b");
    scan();
    env.write("b", b"b2");
    scan();
    std::fs::rename(env.path("b"), env.path("c")).expect("mv");
    scan();
    std::fs::remove_dir_all(env.path("d")).expect("rm");
    scan();

    let ops = env.log_ops();
    let want: Vec<(String, String, Option<String>)> = vec![
        ("mkdir".into(), "d".into(), None),
        ("put".into(), "d/a".into(), None),
        ("put".into(), "b".into(), None),
        ("put".into(), "b".into(), None),
        ("move".into(), "b".into(), Some("c".into())),
        ("delete".into(), "d/a".into(), None),
        ("delete".into(), "d".into(), None),
    ];
    assert_eq!(ops, want);
    // Each operation shows the sequence number of the signed entry carrying it.
    let log = env.log();
    let seqs: Vec<u64> = log.iter().map(|e| n(e, "seq")).collect();
    assert_eq!(seqs[0], 1);
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{seqs:?}");
    assert_eq!(seqs.last().copied(), Some(entries), "{seqs:?}");
    let v = env.verify_ok();
    assert_eq!(n(&v, "entries"), entries);
    for e in &log {
        assert_eq!(e["author"], init["device_id"]);
        assert_eq!(e["author_name"], "testbox");
    }
    assert!(
        log.windows(2)
            .all(|w| n(&w[0], "time_ms") <= n(&w[1], "time_ms"))
    );
    let raw = env.json(["log", "f"]);
    assert!(
        raw.as_array()
            .expect("array")
            .iter()
            .all(|i| i["folder"] == "f")
    );
    let human = env.run(["log"]).ok();
    assert!(human.stdout.contains("b -> c"), "{}", human.stdout);
    assert_eq!(human.stdout.lines().count(), 7);
}

#[test]
fn two_folders_scan_all_or_one_by_name() {
    let env = Env::new();
    env.init();
    let other = env.base().join("other");
    write_file(&other.join("x"), b"x");
    env.write("y", b"y");
    env.json([
        OsStr::new("folder"),
        OsStr::new("add"),
        OsStr::new("--no-scan"),
        env.folder.as_os_str(),
    ]);
    env.json([
        OsStr::new("folder"),
        OsStr::new("add"),
        OsStr::new("--no-scan"),
        other.as_os_str(),
    ]);
    let all = env.scan();
    let all = all.as_array().expect("one summary per folder");
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|s| n(s, "files_added") == 1));
    write_file(&other.join("x2"), b"x2");
    env.write("y2", b"y2");
    let one = env.json(["scan", "other"]);
    assert_eq!(one["folder"], "other");
    assert_eq!(n(&one, "files_added"), 1);
    let by_path = env.json([OsStr::new("scan"), env.folder.as_os_str()]);
    assert_eq!(by_path["folder"], "f");
    assert_eq!(n(&by_path, "files_added"), 1);
    let log = env.json(["log", "other"]);
    let paths: Vec<&str> = log
        .as_array()
        .expect("array")
        .iter()
        .map(|i| i["entry"]["path"].as_str().expect("path"))
        .collect();
    assert_eq!(paths, ["x", "x2"]);
    let list = env.folders();
    assert_eq!(list.as_array().map(Vec::len), Some(2));
}

#[test]
fn verify_passes_on_a_healthy_store_and_fails_on_a_corrupted_pack() {
    let env = Env::new();
    let v1 = random_bytes(10, 150_000);
    let v2 = random_bytes(11, 150_000);
    env.write("a.bin", &v1);
    env.init_and_add();
    env.write("a.bin", &v2);
    env.scan();
    let v = env.verify_ok();
    assert_eq!(n(&v, "entries"), 2);
    assert_eq!(n(&v, "index_rows"), 1);
    assert!(n(&v, "chunks") >= 2);
    let human = env.run(["verify"]).ok();
    assert!(
        human.stdout.contains("no problems found"),
        "{}",
        human.stdout
    );

    // The first pack holds only version 1's chunks: flip one byte in its middle.
    let packs = env.packs();
    assert!(packs.len() >= 2, "one pack per scan: {packs:?}");
    let mut bytes = std::fs::read(&packs[0]).expect("read pack");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&packs[0], &bytes).expect("write pack");

    let r = env.run(["verify"]).failed();
    assert!(r.stdout.contains("PROBLEM [chunk]"), "{}", r.stdout);
    let r = env.run(["--json", "verify"]).failed();
    let problems = r.json()["problems"].clone();
    let problems = problems.as_array().expect("problems");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["area"], "chunk");

    // The damaged version is refused, never written with wrong bytes.
    let to = env.base().join("v1");
    let p = env.path("a.bin");
    env.run([
        OsStr::new("restore"),
        p.as_os_str(),
        OsStr::new("--version"),
        OsStr::new("1"),
        OsStr::new("--to"),
        to.as_os_str(),
    ])
    .fails_with("not restorable");
    assert!(!to.exists());
    assert!(env.restore_to("a.bin", 2, &env.base().join("v2")) == v2);
}

#[test]
fn over_the_cache_budget_current_files_stay_restorable_from_themselves() {
    let env = Env::new();
    let v1 = random_bytes(21, 700_000);
    env.write("big.bin", &v1);
    env.init_and_add(); // within the default budget: cached
    env.set_config("[cache]\nmax_bytes = 0\n");
    let v2 = random_bytes(22, 700_000);
    env.write("big.bin", &v2);
    let s = env.scan();
    assert!(n(&s, "new_chunks") > 0, "{s}");
    assert_eq!(
        n(&s, "cached_bytes"),
        0,
        "over budget, nothing new is cached: {s}"
    );
    let restorable: Vec<bool> = env
        .history("big.bin")
        .iter()
        .map(|v| v["restorable"].as_bool().expect("bool"))
        .collect();
    assert_eq!(
        restorable,
        [true, true],
        "v1 from the cache, v2 from the file itself"
    );
    // The current version is restored from the file itself, byte for byte.
    let out = env.base().join("v2.bin");
    let p = env.path("big.bin");
    env.run([
        OsStr::new("restore"),
        p.as_os_str(),
        OsStr::new("--version"),
        OsStr::new("2"),
        OsStr::new("--to"),
        out.as_os_str(),
    ])
    .ok();
    assert_eq!(std::fs::read(&out).expect("read"), v2);
    // Once overwritten, an uncached version is gone here (a peer may still have it).
    env.write("big.bin", b"small");
    env.scan();
    let restorable: Vec<bool> = env
        .history("big.bin")
        .iter()
        .map(|v| v["restorable"].as_bool().expect("bool"))
        .collect();
    assert_eq!(restorable, [true, false, true]);
    // gc evicts the cache down to the budget; verify still passes.
    let rep = env.json(["gc"]);
    assert!(n(&rep, "bytes_freed") >= 700_000, "{rep}");
    env.verify_ok();
}

#[test]
fn contacts_are_added_only_after_the_fingerprint_is_confirmed_and_listed() {
    use std::io::Write;
    let alice = Env::new();
    let bob = Env::new();
    alice.init();
    let bob_id = bob.init();
    let bob_person = bob_id["person_id"].as_str().expect("person_id").to_owned();
    let bob_fp = bob.json(["id"])["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();

    // Asked, and answered no (stdin is empty): nothing recorded.
    let r = alice.run(["contact", "add", &bob_person, "--name", "bob"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(
        r.stderr.contains(&bob_fp),
        "the prompt shows the fingerprint: {r:?}"
    );
    assert!(r.stderr.contains("not added"), "{r:?}");
    assert_eq!(alice.json(["contact", "list"]), serde_json::json!([]));

    // Answered yes.
    let mut c = alice
        .cmd(["contact", "add", &bob_person, "--name", "bob"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weft runs");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(b"y\n")
        .expect("answer");
    let out = c.wait_with_output().expect("weft finishes");
    assert!(out.status.success(), "{out:?}");
    let list = alice.json(["contact", "list"]);
    assert_eq!(list[0]["name"], "bob");
    assert_eq!(list[0]["person"], bob_person.as_str());
    assert_eq!(list[0]["fingerprint"], bob_fp.as_str());

    // Refused, each with a reason: a malformed id, one's own id, a name taken.
    let r = alice.run(["contact", "add", "not-a-person", "--name", "x", "--yes"]);
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("not a person id"), "{r:?}");
    let own = alice.json(["id"])["person_id"]
        .as_str()
        .expect("person_id")
        .to_owned();
    let r = alice.run(["contact", "add", &own, "--name", "me", "--yes"]);
    assert!(r.stderr.contains("your own person id"), "{r:?}");
    let carol = Env::new();
    let carol_person = carol.init()["person_id"]
        .as_str()
        .expect("person_id")
        .to_owned();
    let r = alice.run(["contact", "add", &carol_person, "--name", "bob", "--yes"]);
    assert!(r.stderr.contains("already named"), "{r:?}");
    assert_eq!(
        alice.json(["contact", "list"]).as_array().map(Vec::len),
        Some(1)
    );
}
