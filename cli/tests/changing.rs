//! A file that changes while `weft scan` reads it: it is either skipped with a "kept
//! changing" warning or recorded with content it really had; never with a hash that
//! does not match what was stored.
mod common;

use common::*;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const BLOCK: usize = 16 << 10;

/// The growing file's content at any length: a prefix of one fixed stream.
fn stream(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + BLOCK);
    let mut b = 0u64;
    while v.len() < len {
        v.extend_from_slice(&random_bytes(1000 + b, BLOCK));
        b += 1;
    }
    v.truncate(len);
    v
}

#[test]
fn a_file_appended_to_during_a_scan_is_skipped_or_recorded_as_it_was() {
    // Larger than the 4 MiB blocks the scanner reads at a time, so a read spans
    // appends (a one-block file is read in one go and sealed afterwards).
    const INITIAL: usize = 6 << 20;
    const CAP: usize = 32 << 20;
    let env = Env::new();
    env.write("growing.log", &stream(INITIAL));
    env.write("steady.txt", b"steady");
    env.init_and_add();
    assert_eq!(env.history("growing.log").len(), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let stop = stop.clone();
        let path = env.path("growing.log");
        std::thread::spawn(move || {
            let mut f = std::fs::File::options()
                .append(true)
                .open(&path)
                .expect("open for append");
            let mut len = INITIAL;
            while !stop.load(Ordering::Relaxed) && len < CAP {
                let block = random_bytes(1000 + (len / BLOCK) as u64, BLOCK);
                f.write_all(&block).expect("append");
                len += BLOCK;
                // Pace the writer (~1.6 MB/s): it keeps appending during every attempt.
                std::thread::sleep(Duration::from_millis(10));
            }
            len
        })
    };
    let r = env.run(["--json", "scan"]);
    stop.store(true, Ordering::Relaxed);
    let final_len = appender.join().expect("appender");
    let s = r.ok().json();
    assert_eq!(
        std::fs::metadata(env.path("growing.log"))
            .expect("stat")
            .len(),
        final_len as u64
    );
    env.verify_ok();

    let skipped = warnings(&s)
        .iter()
        .any(|w| w.contains("growing.log") && w.contains("kept changing"));
    let h = env.history("growing.log");
    if skipped {
        eprintln!("the growing file was skipped: {:?}", warnings(&s));
        expect_counts(&s, &[]);
        assert_eq!(h.len(), 1, "a skipped file gets no version");
    } else {
        eprintln!("the growing file was recorded at {} bytes", h[1]["size"]);
        expect_counts(&s, &[("files_changed", 1)]);
        assert_eq!(h.len(), 2);
    }
    let full = stream(final_len);
    let check = |h: &[serde_json::Value], tag: &str| {
        for v in h {
            let size = n(v, "size") as usize;
            assert!(
                (INITIAL..=final_len).contains(&size),
                "recorded size {size} the file never had"
            );
            let num = n(v, "number");
            let to = env.base().join(format!("{tag}-v{num}"));
            let got = env.restore_to("growing.log", num, &to);
            assert_eq!(got.len(), size, "version {num} restores to another length");
            assert!(
                got == full[..size],
                "version {num} restores to content the file never had"
            );
        }
    };
    check(&h, "during");

    // Still now: the next scan records it whole.
    let h_last = n(h.last().expect("version"), "size") as usize;
    let s = env.scan();
    if h_last == final_len {
        expect_nothing(&s);
    } else {
        expect_counts(&s, &[("files_changed", 1)]);
    }
    let h = env.history("growing.log");
    assert_eq!(n(h.last().expect("version"), "size") as usize, final_len);
    check(&h, "after");
    env.verify_ok();
}

#[test]
fn a_file_rewritten_in_place_during_a_scan_is_never_recorded_torn() {
    const SIZE: usize = 4 << 20;
    let env = Env::new();
    env.write("inplace.bin", &vec![0u8; SIZE]);
    env.init_and_add();

    let stop = Arc::new(AtomicBool::new(false));
    let rewrites = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let writer = {
        let stop = stop.clone();
        let rewrites = rewrites.clone();
        let path = env.path("inplace.bin");
        std::thread::spawn(move || {
            let f = std::fs::File::options()
                .write(true)
                .open(&path)
                .expect("open for writing");
            let mut fill = 0u8;
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) && rounds < 2000 {
                fill = fill.wrapping_add(1).max(1);
                f.write_all_at(&vec![fill; SIZE], 0).expect("rewrite");
                rounds += 1;
                rewrites.store(rounds, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(3));
            }
            fill
        })
    };
    // The scan starts once the file has changed (else it may run before the writer
    // and, rightly, find nothing to read).
    let t0 = std::time::Instant::now();
    while rewrites.load(Ordering::Relaxed) < 2 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = env.run(["--json", "scan"]);
    stop.store(true, Ordering::Relaxed);
    let last_fill = writer.join().expect("writer");
    let s = r.ok().json();
    env.verify_ok();

    let h = env.history("inplace.bin");
    let skipped = warnings(&s)
        .iter()
        .any(|w| w.contains("inplace.bin") && w.contains("kept changing"));
    eprintln!(
        "rewritten file: {}",
        if skipped { "skipped" } else { "recorded" }
    );
    assert_eq!(h.len(), if skipped { 1 } else { 2 }, "{s}");
    for v in &h {
        let num = n(v, "number");
        let got = env.restore_to("inplace.bin", num, &env.base().join(format!("v{num}")));
        assert_eq!(got.len(), SIZE);
        assert_eq!(n(v, "size") as usize, SIZE);
        assert!(
            got.iter().all(|b| *b == got[0]),
            "version {num} mixes two writes: content the file never had"
        );
    }
    env.scan();
    let h = env.history("inplace.bin");
    let cur = h.last().expect("version");
    let got = env.restore_to("inplace.bin", n(cur, "number"), &env.base().join("final"));
    assert!(
        got.iter().all(|b| *b == last_fill),
        "the still file is recorded as it is"
    );
    env.verify_ok();
}
