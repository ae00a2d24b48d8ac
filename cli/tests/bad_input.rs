//! End-to-end tests of `weft` given bad input: each must fail with a clear message and
//! exit code 1 (never a panic), and leave the store exactly as it was.
mod common;

use common::*;
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A home with one scanned folder `f` holding two files.
fn ready() -> Env {
    let env = Env::new();
    env.write("a.txt", b"alpha");
    env.write("sub/b.txt", b"beta");
    env.init_and_add();
    env
}

fn add(path: &Path) -> Vec<OsString> {
    vec!["folder".into(), "add".into(), path.as_os_str().to_owned()]
}

/// Runs a command that must fail with `needle`, and checks nothing changed.
#[track_caller]
fn refused(env: &Env, args: Vec<OsString>, needle: &str) {
    let before = env.state();
    env.run(&args).fails_with(needle);
    assert_eq!(env.state(), before, "a refused command changed the store");
}

#[test]
fn folder_add_of_a_file_is_refused() {
    let env = ready();
    refused(&env, add(&env.path("a.txt")), "not a directory");
}

#[test]
fn folder_add_of_a_missing_path_is_refused() {
    let env = ready();
    let missing = env.base().join("no-such-dir");
    refused(&env, add(&missing), "No such file or directory");
    assert!(
        !missing.exists(),
        "folder add must not create the directory"
    );
}

#[test]
fn folder_add_inside_an_existing_folder_is_refused() {
    let env = ready();
    refused(&env, add(&env.path("sub")), "inside folder \"f\"");
}

#[test]
fn folder_add_containing_an_existing_folder_is_refused() {
    let env = ready();
    // The base directory also contains the home: use a separate layout.
    let outer = tempfile::tempdir().expect("tempdir");
    let outer = std::fs::canonicalize(outer.path()).expect("canonicalize");
    let inner = outer.join("projects/inner");
    write_file(&inner.join("x"), b"x");
    env.json([OsStr::new("folder"), OsStr::new("add"), inner.as_os_str()]);
    refused(&env, add(&outer), "contains folder \"inner\"");
    refused(&env, add(&outer.join("projects")), "contains folder");
}

#[test]
fn folder_add_of_the_same_folder_twice_is_refused() {
    let env = ready();
    refused(&env, add(&env.folder), "already added");
    // Another spelling of the same directory, and another name, change nothing.
    let spelled = env.folder.join("sub/..");
    let mut args = add(&spelled);
    args.extend(["--name".into(), "again".into()]);
    refused(&env, args, "already added");
    let link = env.base().join("link-to-f");
    std::os::unix::fs::symlink(&env.folder, &link).expect("symlink");
    refused(&env, add(&link), "already added");
}

#[test]
fn folder_add_of_a_second_folder_with_the_same_name_asks_for_one() {
    let env = ready();
    let other = env.base().join("elsewhere/f");
    std::fs::create_dir_all(&other).expect("mkdir");
    refused(&env, add(&other), "pass --name");
    let mut args = add(&other);
    args.extend(["--name".into(), "f2".into()]);
    env.run(&args).ok();
    assert_eq!(env.folders().as_array().map(Vec::len), Some(2));
}

#[test]
fn folder_add_of_the_home_directory_is_refused() {
    let env = ready();
    refused(&env, add(&env.home), "weft's own state directory");
    refused(
        &env,
        add(&env.home.join("cache")),
        "weft's own state directory",
    );
    // A folder that holds the home.
    let project = Env::new();
    let nested = Env {
        home: project.folder.join("weft-state"),
        ..Env::new()
    };
    nested.init();
    refused(&nested, add(&project.folder), "weft's own state directory");
}

#[test]
fn scan_of_a_folder_whose_root_was_deleted_records_nothing() {
    let env = ready();
    let before = env.state();
    std::fs::remove_dir_all(&env.folder).expect("rm -r");
    env.run(["scan"]).fails_with("missing or not a directory");
    env.run(["scan", "f"])
        .fails_with("missing or not a directory");
    assert_eq!(env.state(), before, "a vanished root is not a deletion");
    // Replaced by a file: the same.
    write_file(&env.folder, b"not a directory");
    env.run(["scan"]).fails_with("missing or not a directory");
    assert_eq!(env.state(), before);
    env.verify_ok();
}

#[test]
fn scan_of_an_unmounted_folder_records_no_deletion() {
    if !is_root() {
        eprintln!("note: needs root to mount a tmpfs; skipping");
        return;
    }
    let env = Env::new();
    let Some(mnt) = Tmpfs::mount(&env.folder, "4m") else {
        return;
    };
    env.write("a.txt", b"on the external disk");
    env.write("sub/b.txt", b"also");
    env.init_and_add();
    let before = env.state();
    drop(mnt); // the disk is unmounted: the root is an empty directory again
    assert!(env.folder.is_dir());
    let r = env.run(["scan"]);
    let deletes: Vec<_> = env
        .log_ops()
        .into_iter()
        .filter(|(op, _, _)| op == "delete")
        .collect();
    assert!(
        deletes.is_empty(),
        "an unmounted disk was recorded as deleting everything: {deletes:?}"
    );
    r.fails_with("is the disk mounted?");
    assert_eq!(env.state(), before);
}

#[test]
fn a_non_utf8_file_name_is_indexed_and_restorable() {
    let env = Env::new();
    let name = OsStr::from_bytes(b"caf\xe9-\xff.txt");
    let dir = OsStr::from_bytes(b"d\xfe");
    let content = b"latin-1 name, bytes kept".to_vec();
    env.write(name, &content);
    env.write(
        Path::new(dir).join("inner"),
        b"inside a non-UTF-8 directory",
    );
    let s = env.init_and_add();
    // Indexed (not refused): the bytes the filesystem gave are kept.
    expect_counts(&s, &[("files_added", 2), ("dirs_added", 1)]);
    assert!(warnings(&s).is_empty(), "{s}");
    let shown: Vec<String> = env.log_ops().into_iter().map(|(_, p, _)| p).collect();
    assert!(
        shown
            .iter()
            .any(|p| p.starts_with("caf") && p.contains('\u{FFFD}')),
        "{shown:?}"
    );
    expect_nothing(&env.scan());

    let h = env.history(name);
    assert_eq!(h.len(), 1);
    assert_eq!(n(&h[0], "size"), content.len() as u64);
    assert_eq!(env.restore_to(name, 1, &env.base().join("out")), content);
    assert_eq!(
        env.restore_to(Path::new(dir).join("inner"), 1, &env.base().join("out2")),
        b"inside a non-UTF-8 directory"
    );

    // Modified, then restored in place under its own name.
    env.write(name, b"changed");
    assert_eq!(n(&env.scan(), "files_changed"), 1);
    let p = env.path(name);
    let r = env
        .run([
            OsStr::new("restore"),
            p.as_os_str(),
            OsStr::new("--version"),
            OsStr::new("1"),
        ])
        .ok();
    assert!(
        r.stdout.contains("recorded as its newest version"),
        "{}",
        r.stdout
    );
    assert_eq!(std::fs::read(&p).expect("read"), content);
    assert_eq!(env.history(name).len(), 3);
    expect_nothing(&env.scan());

    // Renamed to another non-UTF-8 name: a move.
    let other = OsStr::from_bytes(b"\xe0-renamed");
    std::fs::rename(&p, env.path(other)).expect("mv");
    let s = env.scan();
    expect_counts(&s, &[("files_moved", 1)]);
    assert_eq!(env.restore_to(other, 1, &env.base().join("out3")), content);
    env.verify_ok();
}

#[test]
fn json_restore_of_a_non_utf8_name_reports_success() {
    let env = Env::new();
    let name = OsStr::from_bytes(b"caf\xe9.txt");
    env.write(name, b"v1");
    env.init_and_add();
    env.write(name, b"version 2");
    env.scan();
    let p = env.path(name);
    let r = env.run([
        OsStr::new("--json"),
        OsStr::new("restore"),
        p.as_os_str(),
        OsStr::new("--version"),
        OsStr::new("1"),
    ]);
    // Whatever the exit code, the file was restored and recorded…
    assert_eq!(std::fs::read(&p).expect("read"), b"v1");
    assert_eq!(env.history(name).len(), 3);
    // …so the command must say so: success, and one whole JSON report.
    let rep = r.ok().json();
    assert_eq!(rep["new_version"], true);
    assert_eq!(n(&rep, "bytes"), 2);
    let to = env.base().join(OsStr::from_bytes(b"out-\xe9"));
    let rep = env
        .run([
            OsStr::new("--json"),
            OsStr::new("restore"),
            p.as_os_str(),
            OsStr::new("--version"),
            OsStr::new("1"),
            OsStr::new("--to"),
            to.as_os_str(),
        ])
        .ok()
        .json();
    assert_eq!(rep["new_version"], false);
}

#[test]
fn an_unreadable_file_is_skipped_with_a_warning_and_never_recorded_as_deleted() {
    let mut env = Env::new();
    if is_root() {
        // Root reads mode 000 files: run weft as `nobody`.
        let probe = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                WEFT,
                "--version",
            ])
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            eprintln!("note: cannot run weft as nobody with setpriv; skipping");
            return;
        }
        env.prefix = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]
        .map(OsString::from)
        .to_vec();
    }
    chmod(&env.base(), 0o777);
    chmod(&env.folder, 0o777);
    env.write("a.txt", b"readable a");
    env.write("b.txt", b"readable b");
    env.write("secret.txt", b"nobody may read this");
    env.write("locked/x.txt", b"in a directory that will be locked");
    for p in ["a.txt", "b.txt", "secret.txt", "locked/x.txt"] {
        chmod(&env.path(p), 0o666);
    }
    chmod(&env.path("locked"), 0o777);
    chmod(&env.path("secret.txt"), 0o000);

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
    expect_counts(&s, &[("files_added", 3), ("dirs_added", 1)]);
    let w = warnings(&s);
    assert!(
        w.iter()
            .any(|x| x.contains("secret.txt") && x.contains("Permission denied")),
        "{w:?}"
    );
    assert!(r.stderr.contains("secret.txt"), "{}", r.stderr);
    let paths: BTreeSet<String> = env.log_ops().into_iter().map(|(_, p, _)| p).collect();
    let want: BTreeSet<String> = ["a.txt", "b.txt", "locked", "locked/x.txt"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(paths, want, "the unreadable file is not recorded");

    // Readable again: indexed. Then changed and unreadable: nothing recorded, no delete.
    chmod(&env.path("secret.txt"), 0o666);
    expect_counts(&env.scan(), &[("files_added", 1)]);
    write_file(&env.path("secret.txt"), b"changed, then made unreadable");
    chmod(&env.path("secret.txt"), 0o000);
    let before = env.state();
    let s = env.scan();
    expect_counts(&s, &[]);
    assert!(warnings(&s).iter().any(|x| x.contains("secret.txt")), "{s}");
    assert_eq!(env.state().0, before.0, "log unchanged");

    // An unreadable directory: nothing under it is deleted.
    chmod(&env.path("locked"), 0o000);
    let s = env.scan();
    expect_counts(&s, &[]);
    assert!(warnings(&s).iter().any(|x| x.contains("locked")), "{s}");
    assert_eq!(env.state().0, before.0, "log unchanged");
    chmod(&env.path("locked"), 0o777);
    chmod(&env.path("secret.txt"), 0o666);
    env.verify_ok();
}

/// A home on a 2 MiB tmpfs and a folder with 8 MiB of random data elsewhere.
fn full_disk_setup() -> Option<(Env, Tmpfs)> {
    if !is_root() {
        eprintln!("note: needs root to mount a tmpfs; skipping");
        return None;
    }
    let mut env = Env::new();
    let mnt = Tmpfs::mount(&env.base().join("small-disk"), "2m")?;
    env.home = mnt.dir.join("home");
    for i in 0..4u64 {
        env.write(format!("r{i}.bin"), &random_bytes(100 + i, 2 << 20));
    }
    env.init();
    env.json([
        OsStr::new("folder"),
        OsStr::new("add"),
        OsStr::new("--no-scan"),
        env.folder.as_os_str(),
    ]);
    Some((env, mnt))
}

#[test]
fn a_scan_that_fills_the_disk_fails_clearly_and_leaves_a_consistent_store() {
    let Some((env, mnt)) = full_disk_setup() else {
        return;
    };
    let before = env.state();
    env.run(["scan"]).fails_with("disk full");
    mnt.resize("64m");
    env.verify_ok();
    assert_eq!(
        env.state(),
        before,
        "nothing of the failed scan was recorded"
    );
    let s = env.scan();
    expect_counts(&s, &[("files_added", 4)]);
    env.verify_ok();
    // The failed scan's unreferenced pack data is reclaimed by gc.
    let rep = env.json(["gc"]);
    assert!(n(&rep, "bytes_freed") > 0, "{rep}");
    env.verify_ok();
    assert!(env.restore_to("r2.bin", 1, &env.base().join("r2")) == random_bytes(102, 2 << 20));
    drop(mnt);
    drop(env);
}

#[test]
fn read_only_commands_work_on_a_full_disk() {
    if !is_root() {
        eprintln!("note: needs root to mount a tmpfs; skipping");
        return;
    }
    let mut env = Env::new();
    let Some(mnt) = Tmpfs::mount(&env.base().join("small-disk"), "2m") else {
        return;
    };
    env.home = mnt.dir.join("home");
    env.write("a.txt", b"alpha");
    env.write("b.bin", &random_bytes(5, 100_000));
    env.init_and_add();
    let before = env.state();
    let history = env.history("a.txt");
    // Something else fills the disk (a failed scan's pack data does the same).
    {
        use std::io::Write;
        let mut f = std::fs::File::create(mnt.dir.join("filler")).expect("create filler");
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let mut byte = [0u8; 1];
        while f.write_all(&byte).is_ok() {
            byte[0] = byte[0].wrapping_add(1);
        }
    }
    // Looking at the store must not need free space.
    env.verify_ok();
    assert_eq!(env.state(), before);
    assert_eq!(env.history("a.txt"), history);
    assert!(env.restore_to("b.bin", 1, &env.base().join("b")) == random_bytes(5, 100_000));
    drop(mnt);
    drop(env);
}

#[test]
fn other_bad_arguments_fail_clearly_and_change_nothing() {
    let fresh = Env::new();
    fresh.run(["id"]).fails_with("run `weft init` first");
    fresh.run(["scan"]).fails_with("run `weft init` first");
    assert!(!fresh.home.exists(), "a failed command created the home");
    fresh.init();
    fresh.run(["scan"]).fails_with("no folders yet");

    let env = ready();
    refused(
        &env,
        vec!["scan".into(), "nosuch".into()],
        "no folder named",
    );
    refused(&env, vec!["log".into(), "nosuch".into()], "no folder named");
    let outside = env.base().join("outside.txt");
    write_file(&outside, b"x");
    refused(
        &env,
        vec!["history".into(), outside.clone().into()],
        "not inside a weft folder",
    );
    env.write("unscanned.txt", b"new");
    refused(
        &env,
        vec!["history".into(), env.path("unscanned.txt").into()],
        "no recorded versions",
    );
    refused(
        &env,
        vec![
            "restore".into(),
            env.path("a.txt").into(),
            "--version".into(),
            "7".into(),
        ],
        "has no version 7",
    );
    refused(
        &env,
        vec![
            "restore".into(),
            env.path("sub").into(),
            "--version".into(),
            "1".into(),
        ],
        "deleted or directory version",
    );

    // A broken config is an error, never silently replaced by the defaults.
    let before = env.state();
    let packs = env.pack_bytes();
    env.set_config("[history]\nretention_days = \"forever\"\n");
    env.run(["gc"]).fails_with("config.toml");
    env.set_config("[history]\nretention_dayz = 365\n");
    env.run(["gc"]).fails_with("retention_dayz");
    env.run(["scan"]).fails_with("config.toml");
    assert_eq!(env.pack_bytes(), packs);
    std::fs::remove_file(env.home.join("config.toml")).expect("rm config");
    assert_eq!(env.state(), before);
}
