//! `kill -9` at random points of `weft scan`: after every kill the store verifies, and
//! once a scan completes the index matches the disk.
//!
//! The run is seeded; the seed is printed, and `WEFT_TEST_SEED=<seed>` replays it.
mod common;

use common::*;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// 20 × 103 small files: more than the 2000 operations of one scan batch, so a kill can
/// land between two commits of one scan.
const SMALL_DIRS: u64 = 20;
const SMALL_PER_DIR: u64 = 103;
const SMALL_MAX: u64 = 3000;
/// A few multi-MiB files, read last (`zz/` sorts after the small files' directories).
const BIG: u64 = 3;
const BIG_SIZE: usize = 2 << 20;
const ITERATIONS: usize = 12;
const LOOP_BUDGET: Duration = Duration::from_secs(45);

fn seed() -> u64 {
    match std::env::var("WEFT_TEST_SEED") {
        Ok(s) => s.trim().parse().expect("WEFT_TEST_SEED must be a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64,
    }
}

fn build(root: &Path, rng: &mut Rng) {
    for d in 0..SMALL_DIRS {
        for i in 0..SMALL_PER_DIR {
            let len = rng.below(SMALL_MAX) as usize;
            write_file(&root.join(format!("d{d:02}/s{i:03}")), &rng.bytes(len));
        }
    }
    for b in 0..BIG {
        write_file(&root.join(format!("zz/big{b}.bin")), &rng.bytes(BIG_SIZE));
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&dst).expect("mkdir");
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

/// Gives the next scan work: modified, renamed, deleted and new small files, a big file
/// changed in place or replaced, an empty directory added or removed.
fn mutate(root: &Path, rng: &mut Rng, iter: usize) {
    let small: Vec<String> = disk_files(root)
        .into_keys()
        .filter(|p| !p.starts_with("zz/"))
        .collect();
    let pick = |rng: &mut Rng| small[rng.below(small.len() as u64) as usize].clone();
    for _ in 0..20 {
        let p = root.join(pick(rng));
        if p.exists() {
            let len = rng.below(SMALL_MAX) as usize;
            write_file(&p, &rng.bytes(len));
        }
    }
    for k in 0..5 {
        let p = root.join(pick(rng));
        let to = root.join(format!("d{:02}/m{iter}_{k}", rng.below(SMALL_DIRS)));
        if p.exists() {
            std::fs::rename(&p, &to).expect("rename");
        }
    }
    for _ in 0..5 {
        let p = root.join(pick(rng));
        if p.exists() {
            std::fs::remove_file(&p).expect("rm");
        }
    }
    for k in 0..10 {
        let len = rng.below(SMALL_MAX) as usize;
        let p = root.join(format!("d{:02}/n{iter}_{k}", rng.below(SMALL_DIRS)));
        write_file(&p, &rng.bytes(len));
    }
    let big = root.join(format!("zz/big{}.bin", rng.below(BIG)));
    if iter.is_multiple_of(2) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options()
            .write(true)
            .open(&big)
            .expect("open big");
        let at = rng.below((BIG_SIZE - (100 << 10)) as u64);
        f.write_all_at(&rng.bytes(100 << 10), at)
            .expect("write big");
    } else {
        write_file(&big, &rng.bytes(BIG_SIZE));
    }
    let _ = std::fs::remove_dir(root.join(format!("empty{}", iter.wrapping_sub(1))));
    std::fs::create_dir(root.join(format!("empty{iter}"))).expect("mkdir");
}

#[test]
fn scans_killed_at_random_points_leave_a_consistent_store() {
    let seed = seed();
    eprintln!("crash test seed: {seed} (replay with WEFT_TEST_SEED={seed})");
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let env = Env::new();
    build(&env.folder, &mut rng);

    // One uninterrupted scan of a copy sets the range of the kill delays.
    let full = {
        let copy = Env::new();
        copy_tree(&env.folder, &copy.folder);
        copy.init();
        let t = Instant::now();
        copy.json([
            OsStr::new("folder"),
            OsStr::new("add"),
            copy.folder.as_os_str(),
        ]);
        t.elapsed()
    };
    eprintln!("an uninterrupted first scan takes {full:?}");

    env.init();
    env.json([
        OsStr::new("folder"),
        OsStr::new("add"),
        OsStr::new("--no-scan"),
        env.folder.as_os_str(),
    ]);
    let mut expected = full;
    let (mut kills, mut completions, mut recorded) = (0, 0, 0);
    for i in 0..ITERATIONS {
        if started.elapsed() > LOOP_BUDGET {
            eprintln!("time budget reached after {i} iterations");
            break;
        }
        let ctx = format!("seed {seed}, iteration {i}");
        let max = expected.mul_f64(1.2).as_micros() as u64;
        let delay = Duration::from_micros(rng.below(max + 1));
        let mut child = env
            .cmd(["--json", "scan"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weft scan");
        let t = Instant::now();
        while t.elapsed() < delay && child.try_wait().expect("try_wait").is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill(); // SIGKILL; harmless if it already exited
        let out = child.wait_with_output().expect("wait");
        let took = t.elapsed();
        match out.status.code() {
            None => {
                kills += 1;
                eprintln!("{ctx}: killed after {took:?}");
            }
            Some(0) => {
                completions += 1;
                expected = took;
                eprintln!("{ctx}: completed in {took:?} (delay {delay:?})");
            }
            Some(c) => panic!(
                "{ctx}: scan failed with {c}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
        let r = env.run(["--json", "verify"]);
        assert_eq!(
            r.code,
            Some(0),
            "{ctx}: verify failed after the scan was killed:\n{}\n{}",
            r.stdout,
            r.stderr
        );
        assert_eq!(r.json()["problems"], serde_json::json!([]), "{ctx}");
        // What a batch committed survives the kill.
        let ops = env.log().len();
        eprintln!("{ctx}: {ops} operations recorded so far");
        assert!(
            ops >= recorded,
            "{ctx}: the log shrank from {recorded} to {ops}"
        );
        recorded = ops;
        mutate(&env.folder, &mut rng, i);
    }
    eprintln!("{kills} scans killed, {completions} completed");
    assert!(kills >= 2, "seed {seed}: too few kills to mean anything");

    // A complete scan, then the index must match the disk.
    let ctx = format!("seed {seed}");
    env.scan();
    env.verify_ok();
    let again = env.scan();
    assert_eq!(n(&again, "log_entries"), 0, "{ctx}: {again}");
    assert_eq!(n(&again, "bytes_read"), 0, "{ctx}: {again}");

    let disk = disk_files(&env.folder);
    let (mut files, mut dirs) = (BTreeSet::new(), BTreeSet::new());
    for (op, path, to) in env.log_ops() {
        match op.as_str() {
            "put" => {
                dirs.remove(&path);
                files.insert(path);
            }
            "mkdir" => {
                files.remove(&path);
                dirs.insert(path);
            }
            "delete" => {
                files.remove(&path);
                dirs.remove(&path);
            }
            "move" => {
                files.remove(&path);
                files.insert(to.expect("move destination"));
            }
            other => panic!("unexpected op {other}"),
        }
    }
    let on_disk: BTreeSet<String> = disk.keys().cloned().collect();
    assert_eq!(files, on_disk, "{ctx}: the log's files are not the disk's");
    let disk_dirs: BTreeSet<String> = disk_dirs(&env.folder).into_iter().collect();
    assert_eq!(
        dirs, disk_dirs,
        "{ctx}: the log's directories are not the disk's"
    );
    let list = &env.folders()[0];
    assert_eq!(n(list, "files"), disk.len() as u64, "{ctx}");
    assert_eq!(n(list, "bytes"), disk.values().sum::<u64>(), "{ctx}");

    // Sizes and bytes of a sample: every big file and some small ones.
    let names: Vec<&String> = disk.keys().collect();
    let mut sample: Vec<String> = (0..BIG).map(|b| format!("zz/big{b}.bin")).collect();
    for _ in 0..25 {
        sample.push(names[rng.below(names.len() as u64) as usize].clone());
    }
    let out = env.base().join("restored");
    std::fs::create_dir(&out).expect("mkdir");
    for (k, rel) in sample.iter().enumerate() {
        let h = env.history(rel);
        let cur = h.last().expect("a version");
        assert_eq!(cur["current"], true, "{ctx}: {rel}");
        assert_eq!(n(cur, "size"), disk[rel], "{ctx}: size of {rel}");
        if k < BIG as usize + 5 {
            let to = out.join(k.to_string());
            let got = env.restore_to(rel, n(cur, "number"), &to);
            assert!(
                got == env.read(rel),
                "{ctx}: {rel} restored with other bytes"
            );
        }
    }
}
