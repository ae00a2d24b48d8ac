//! `kill -9` in the middle of a transfer, with real `weft` processes: the receiving
//! device resumes from the chunks it had already written (the sender sends little more
//! than what was missing), and the file only ever appears under its real name whole.
//!
//! The tests crate cannot use `CARGO_BIN_EXE_weft` (the binary is another package's),
//! so the binary is looked up next to the test executable and built if it is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weft_store::Home;
use weft_store::model::{Content, RelPath};
use weft_tests::weft_bin;

/// Size of the file transferred.
const FILE_SIZE: u64 = 200 << 20;
/// Largest chunk on the wire: 256 KiB of plaintext and the Poly1305 tag.
const MAX_WIRE_CHUNK: u64 = (256 << 10) + 16;
/// The file's name inside the folder.
const NAME: &str = "big.bin";

/// Runs `weft --home HOME args…` to completion; panics with its output on failure.
fn weft(home: &Path, args: &[&str]) -> String {
    let out = Command::new(weft_bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`weft --home {} {}` failed ({:?})\n--- stdout\n{}\n--- stderr\n{}",
        home.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `weft status --json`, or `None` while the node does not answer.
fn status(home: &Path) -> Option<Value> {
    let out = Command::new(weft_bin())
        .arg("--home")
        .arg(home)
        .args(["status", "--json"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn bytes_sent(home: &Path) -> u64 {
    status(home).expect("the sender answers `weft status`")["bytes_sent"]
        .as_u64()
        .unwrap()
}

/// Background `weft up` processes, killed (SIGKILL) when dropped, whatever happens.
#[derive(Default)]
struct Procs {
    running: Vec<(String, Child, PathBuf)>,
}

impl Procs {
    /// Starts `weft --home HOME up args…`, its output going to `log`.
    fn up(&mut self, name: &str, home: &Path, args: &[&str], log: PathBuf) -> u32 {
        let out = File::create(&log).unwrap();
        let child = Command::new(weft_bin())
            .arg("--home")
            .arg(home)
            .arg("up")
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.running.push((name.to_owned(), child, log));
        pid
    }

    /// SIGKILLs one process and reaps it.
    fn kill(&mut self, name: &str) {
        let i = self.running.iter().position(|(n, _, _)| n == name).unwrap();
        let (_, mut child, _) = self.running.remove(i);
        child.kill().unwrap(); // SIGKILL on Unix
        let st = child.wait().unwrap();
        assert!(!st.success(), "{name} was killed, not exited: {st:?}");
    }

    /// Asserts every process is still running (a crashed node fails the test at once).
    fn check_alive(&mut self) {
        for (name, child, log) in &mut self.running {
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "`weft up` of {name} exited ({st}):\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for (name, _, log) in &self.running {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            s += &format!("--- {name} (last lines)\n");
            for l in tail.iter().rev() {
                s += l;
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for (_, child, _) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `size` incompressible bytes (xorshift64) to `path`.
fn write_random(path: &Path, size: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

/// Whether two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// The target path, seen while the receiver runs: absent, or the whole file. A file
/// of another size under the real name is a partial write exposed to the user.
fn check_never_partial(target: &Path) -> bool {
    match std::fs::metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => panic!("{}: {e}", target.display()),
        Ok(m) => {
            assert_eq!(
                m.len(),
                FILE_SIZE,
                "{} appeared under its real name with {} of {FILE_SIZE} bytes: a partial \
                 file must stay under .weft/tmp/",
                target.display(),
                m.len()
            );
            true
        }
    }
}

#[test]
fn a_transfer_killed_midway_resumes_from_the_chunks_already_saved() {
    weft_bin(); // built first, if needed: the timings below are the transfer's
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let (ha, hb) = (base.join("a-home"), base.join("b-home"));
    let folder_a = base.join("shared");
    let dir_b = base.join("b-files");
    std::fs::create_dir_all(&folder_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let source = folder_a.join(NAME);
    write_random(&source, FILE_SIZE, 0x9e37_79b9_7f4a_7c15);
    eprintln!("wrote {FILE_SIZE} bytes in {:?}", started.elapsed());

    let (pa, pb) = (free_port(), free_port());
    let addr_a = format!("/ip4/127.0.0.1/tcp/{pa}");
    let addr_b = format!("/ip4/127.0.0.1/tcp/{pb}");
    let mut procs = Procs::default();

    // A: initializes, adds and scans the folder, serves it.
    procs.up(
        "a",
        &ha,
        &[folder_a.to_str().unwrap(), "--listen", &addr_a, "--no-mdns"],
        base.join("a.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        procs.check_alive();
        if let Some(s) = status(&ha) {
            let listening = !s["listen"].as_array().unwrap().is_empty();
            let in_sync = s["folders"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["state"] == "in sync");
            if listening && in_sync {
                break;
            }
        }
        assert!(Instant::now() < deadline, "A did not index its folder");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("A indexed its folder at {:?}", started.elapsed());

    // Pair B.
    let inv: Value = serde_json::from_str(&weft(&ha, &["invite", "--json"])).unwrap();
    let code = inv["code"].as_str().unwrap();
    let joined: Value = serde_json::from_str(&weft(
        &hb,
        &[
            "join",
            code,
            "--path",
            dir_b.to_str().unwrap(),
            "--name",
            "b",
            "--json",
        ],
    ))
    .unwrap();
    let root_b = PathBuf::from(joined["folders"][0][1].as_str().unwrap());
    let target = root_b.join(NAME);
    let b_args = ["--listen", &addr_b, "--peer", &addr_a, "--no-mdns"];

    // B runs until A has sent between 20% and 80% of the file, then is killed.
    procs.up("b", &hb, &b_args, base.join("b1.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let sent_at_kill = loop {
        procs.check_alive();
        check_never_partial(&target);
        let sent = status(&ha).map(|s| s["bytes_sent"].as_u64().unwrap());
        if let Some(sent) = sent {
            assert!(
                sent < FILE_SIZE * 8 / 10,
                "A sent {sent} bytes before the test saw 20%: the transfer was too fast \
                 to interrupt"
            );
            if sent > FILE_SIZE / 5 {
                // B says what is left: the whole file, until it is renamed into place.
                let st = status(&hb).expect("B answers `weft status`");
                let f = &st["folders"][0];
                assert_eq!(
                    (f["files_to_go"].as_u64(), f["bytes_to_go"].as_u64()),
                    (Some(1), Some(FILE_SIZE)),
                    "B's status mid-transfer: {st}"
                );
                procs.kill("b");
                break sent;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the transfer did not reach 20%:\n{}",
            procs.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!(
        "killed B after A sent {sent_at_kill} bytes, at {:?}",
        started.elapsed()
    );
    assert!(
        !target.exists(),
        "B was killed mid-transfer, yet {} exists",
        target.display()
    );

    // What B holds now, read from its store while it is stopped.
    let (missing, held, chunks) = {
        let store = weft_store::Store::open(&Home::new(&hb)).unwrap();
        let folder = store.folders().unwrap().pop().unwrap();
        let rel = RelPath::new(NAME.as_bytes().to_vec()).unwrap();
        let tree = store.tree(&folder.id).unwrap();
        let entry = tree.get(&rel).expect("B knows the file from A's log");
        assert!(matches!(entry.content, Content::File { size, .. } if size == FILE_SIZE));
        let manifest = store.manifest(&folder.id, &rel, &entry.version).unwrap();
        // B keeps what it received in the partial file; what it can resume from is
        // the intact leading chunks of it.
        let secret = *store.keys(&folder).convergence_secret();
        let part = weft_node::apply::part_path(&folder.root_path(), &manifest);
        let (kept, _) = weft_node::apply::resumable(&secret, &manifest, &part).unwrap();
        let (mut missing, mut held) = (0u64, 0u64);
        for (i, c) in manifest.chunks.iter().enumerate() {
            let wire = u64::from(c.len) + 16;
            if i < kept || store.has_chunk(&c.id).unwrap() {
                held += wire;
            } else {
                missing += wire;
            }
        }
        (missing, held, manifest.chunks.len())
    };
    eprintln!("B holds {held} bytes of chunks, misses {missing} ({chunks} chunks in all)");
    assert!(
        held > 0,
        "B saved none of the chunks it received before the kill ({sent_at_kill} bytes \
         sent): a killed transfer must resume from the chunks already fetched"
    );

    // A's counter, once the requests in flight at the kill are answered.
    let mut before = bytes_sent(&ha);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = bytes_sent(&ha);
        if now == before {
            break;
        }
        before = now;
    }

    // B again: the file arrives whole, and A sends little more than what B lacked.
    procs.up("b", &hb, &b_args, base.join("b2.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        procs.check_alive();
        if check_never_partial(&target) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B did not finish the transfer after its restart:\n{}",
            procs.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        same_bytes(&source, &target),
        "B's copy differs from A's file"
    );
    let after = bytes_sent(&ha);
    let resent = after - before;
    eprintln!(
        "after the restart A sent {resent} bytes for {missing} missing; done at {:?}",
        started.elapsed()
    );
    assert!(
        resent <= missing + MAX_WIRE_CHUNK,
        "after the restart A sent {resent} bytes, but B lacked only {missing} \
         (B held {held} of {} bytes of chunks): the transfer did not resume",
        missing + held
    );
    // B reports the folder in sync, and nothing but the finished file is left.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status(&hb).expect("B answers `weft status`");
        let f = &st["folders"][0];
        if f["state"] == "in sync" {
            assert_eq!(f["bytes_to_go"].as_u64(), Some(0), "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "B never reported in sync: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let tmp_dir = root_b.join(".weft").join("tmp");
    let leftovers: Vec<_> = std::fs::read_dir(&tmp_dir)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "temporary files left in {}: {leftovers:?}",
        tmp_dir.display()
    );
}
