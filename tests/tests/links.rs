//! Share links end to end: a device shares through a real relay (libp2p + HTTP), the
//! `weft` binary creates, lists, revokes and downloads links, and a real headless
//! Chromium (Debian's, driven by playwright-core from `tests/browser/`) opens them.
//!
//! Checked: text, a PNG and a folder come back byte-identical through `weft get` and
//! render in the browser from the original bytes; a password is asked for and a
//! wrong one refused (403); expired, revoked and used-up links get their page and
//! status (410); a chunk or record tampered with on the way (a proxy standing in for
//! a hostile relay) or damaged in the relay's storage is refused by both the page and
//! `weft get`, which then writes nothing; and the relay's data directory, its access
//! log included, never holds a link's key or password.
//!
//! The browser half needs `node`, `/usr/bin/chromium` and `npm ci` in
//! `tests/browser/` (`.ci/run` installs them as root); without them it says it
//! skipped, except under CI (`CI` set), where it must run.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use weft_tests::*;

const WAIT: Duration = Duration::from_secs(60);
const CHROMIUM: &str = "/usr/bin/chromium";

fn weft(home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(weft_bin())
        .env("WEFT_HOME", home)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut i = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            i.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn fails(o: &Output, what: &str, says: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what} should fail");
    assert!(err.contains(says), "{what}: expected {says:?} in {err:?}");
}

// ---- a small valid PNG --------------------------------------------------------------

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for b in data {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A `w`×`h` RGB PNG with a gradient (zlib with stored blocks: valid, uncompressed).
fn png(w: u32, h: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0); // filter: none
        for x in 0..w {
            raw.extend_from_slice(&[(x * 255 / w) as u8, (y * 255 / h) as u8, 128]);
        }
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let n = b.len() as u16;
        z.extend_from_slice(&n.to_le_bytes());
        z.extend_from_slice(&(!n).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut bb) = (1u32, 0u32);
    for x in &raw {
        a = (a + u32::from(*x)) % 65_521;
        bb = (bb + a) % 65_521;
    }
    z.extend_from_slice(&((bb << 16) | a).to_be_bytes());
    let chunk = |out: &mut Vec<u8>, ty: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut td = ty.to_vec();
        td.extend_from_slice(data);
        out.extend_from_slice(&td);
        out.extend_from_slice(&crc32(&td).to_be_bytes());
    };
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn sha256_hex(b: &[u8]) -> String {
    // The browser script compares with node's sha256; computed here with sha256sum.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, b).unwrap();
    let o = Command::new("sha256sum").arg(&p).output().unwrap();
    String::from_utf8(o.stdout).unwrap()[..64].to_string()
}

// ---- a hostile relay: an HTTP proxy that flips a bit in what the relay serves --------

const PASS: u8 = 0;
const FLIP_CHUNKS: u8 = 1;
const FLIP_RECORDS: u8 = 2;

/// Forwards every request to `relay` (one request per connection) and, depending on
/// the mode, flips the last byte of chunk or record bodies.
fn tampering_proxy(relay: SocketAddr, mode: Arc<AtomicU8>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mode = mode.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 65_536 {
                    if c.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut lines = head.split("\r\n");
                let first = lines.next().unwrap_or("").to_string();
                let path = first.split(' ').nth(1).unwrap_or("/").to_string();
                let mut req = format!("{first}\r\n");
                for l in lines.filter(|l| !l.is_empty()) {
                    let lower = l.to_ascii_lowercase();
                    if !lower.starts_with("connection:") && !lower.starts_with("keep-alive") {
                        req.push_str(l);
                        req.push_str("\r\n");
                    }
                }
                req.push_str("Connection: close\r\n\r\n");
                let Ok(mut up) = TcpStream::connect(relay) else {
                    return;
                };
                up.write_all(req.as_bytes()).unwrap();
                let mut resp = Vec::new();
                up.read_to_end(&mut resp).unwrap();
                let split = resp
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|i| i + 4);
                let ok200 = resp.starts_with(b"HTTP/1.1 200");
                let m = mode.load(Ordering::SeqCst);
                let target = (m == FLIP_CHUNKS && path.contains("/c/"))
                    || (m == FLIP_RECORDS && path.ends_with("/record"));
                if let Some(s) = split
                    && ok200
                    && target
                    && resp.len() > s
                {
                    let last = resp.len() - 1;
                    resp[last] ^= 0x01;
                }
                let _ = c.write_all(&resp);
            });
        }
    });
    addr
}

fn via(url: &str, proxy: SocketAddr) -> String {
    let (_, rest) = url.split_once("/s/").unwrap();
    format!("http://{proxy}/s/{rest}")
}

// ---- the browser --------------------------------------------------------------------

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Whether the browser test can run here; why not otherwise.
fn browser_ready() -> Result<(), String> {
    if !Path::new(CHROMIUM).exists() {
        return Err(format!("{CHROMIUM} is missing (apt-get install chromium)"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Err("node is missing".into());
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Err("playwright-core is not installed (npm ci in tests/browser)".into());
    }
    Ok(())
}

fn run_browser(cases: serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cases.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&serde_json::json!({"chromium": CHROMIUM, "cases": cases})).unwrap(),
    )
    .unwrap();
    let out = Command::new("node")
        .arg(browser_dir().join("links.mjs"))
        .arg(&cfg)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("browser:\n{text}");
    assert!(out.status.success(), "the browser test failed:\n{text}");
}

// ---- the test -----------------------------------------------------------------------

/// Every file under `dir`, with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn key_of(url: &str) -> (String, Vec<u8>) {
    let k = url.split_once('#').unwrap().1.to_string();
    let raw = weft_crypto::link::b64_decode(&k).unwrap();
    (k, raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_links_end_to_end() {
    let browser = match browser_ready() {
        Ok(()) => true,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("the browser test must run in CI, but {why}")
        }
        Err(why) => {
            eprintln!("skipped the browser half: {why}");
            false
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut relay = Relay::start_with(&tmp.path().join("relay"), |c| c.http = Some(http)).await;
    let mut a = Device::new(tmp.path(), "a");
    a.create_folder();
    a.add_relay(&relay.addr);
    let text = "Hello from weft ✓\nline two <b>not bold</b> & more\n";
    let image = png(40, 24);
    let big = random_bytes(600_000, 77);
    a.write("notes/hello.txt", text.as_bytes());
    a.write("notes/sub/inner.txt", b"inner file\n");
    a.write("pics/dot.png", &image);
    a.write("big.bin", &big);
    a.start(&[]);
    a.wait_backed_up(0, WAIT).await;
    let home = a.home.root().to_path_buf();
    let p = |rel: &str| a.path(rel).display().to_string();

    // Links.
    let link = |args: &[&str], stdin: Option<&str>| -> String {
        let mut all = vec!["link"];
        all.extend_from_slice(args);
        ok(&weft(&home, &all, stdin), "weft link")
            .trim()
            .to_string()
    };
    let l_text = link(&[&p("notes/hello.txt")], None);
    assert!(l_text.starts_with(&format!("http://{http}/s/")), "{l_text}");
    let l_png = link(&[&p("pics/dot.png")], None);
    let l_pw = link(
        &[&p("notes/hello.txt"), "--password"],
        Some("s3cret pass\n"),
    );
    let l_dir = link(&[&p("notes")], None);
    let l_big = link(&[&p("big.bin")], None);
    let l_exp = link(&[&p("notes/hello.txt"), "--expires", "2s"], None);
    let l_rev = link(&[&p("notes/hello.txt")], None);
    let l_max = link(&[&p("notes/hello.txt"), "--max-downloads", "1"], None);
    let token = |u: &str| {
        u.split("/s/")
            .nth(1)
            .unwrap()
            .split('#')
            .next()
            .unwrap()
            .to_string()
    };
    ok(
        &weft(&home, &["link", "revoke", &token(&l_rev)], None),
        "weft link revoke",
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(&weft(&home, &["--json", "link", "list"], None), "list")).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 8);
    assert!(
        list.iter()
            .any(|l| l["token"] == token(&l_rev) && l["revoked"] == true)
    );
    // Someone else's token cannot be revoked from here.
    fails(
        &weft(&home, &["link", "revoke", "AAAAAAAAAAAAAAAAAAAAAA"], None),
        "revoking an unknown link",
        "no link",
    );

    // weft get: byte-identical.
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let get = |url: &str, to: &Path, stdin: Option<&str>| {
        let mut args = vec!["get", url, "--out", to.to_str().unwrap()];
        if stdin.is_some() {
            args.push("--password");
        }
        weft(&home, &args, stdin)
    };
    ok(&get(&l_text, &out.join("t.txt"), None), "get text");
    assert_eq!(std::fs::read(out.join("t.txt")).unwrap(), text.as_bytes());
    ok(&get(&l_png, &out.join("i.png"), None), "get png");
    assert_eq!(std::fs::read(out.join("i.png")).unwrap(), image);
    ok(&get(&l_big, &out.join("big.bin"), None), "get big");
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), big);
    ok(&get(&l_dir, &out.join("dir"), None), "get folder");
    assert_eq!(
        std::fs::read(out.join("dir/hello.txt")).unwrap(),
        text.as_bytes()
    );
    assert_eq!(
        std::fs::read(out.join("dir/sub/inner.txt")).unwrap(),
        b"inner file\n"
    );
    fails(
        &get(&l_pw, &out.join("pw.txt"), None),
        "no password",
        "needs a password",
    );
    fails(
        &get(&l_pw, &out.join("pw.txt"), Some("wrong\n")),
        "wrong password",
        "wrong password",
    );
    assert!(!out.join("pw.txt").exists());
    ok(
        &get(&l_pw, &out.join("pw.txt"), Some("s3cret pass\n")),
        "get pw",
    );
    assert_eq!(std::fs::read(out.join("pw.txt")).unwrap(), text.as_bytes());
    fails(
        &get(&l_rev, &out.join("rev.txt"), None),
        "revoked",
        "revoked",
    );
    ok(&get(&l_max, &out.join("max.txt"), None), "first download");
    fails(
        &get(&l_max, &out.join("max2.txt"), None),
        "second download",
        "download limit",
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    fails(
        &get(&l_exp, &out.join("exp.txt"), None),
        "expired",
        "expired",
    );

    // A hostile relay: the same links through a proxy that flips a bit.
    let mode = Arc::new(AtomicU8::new(PASS));
    let proxy = tampering_proxy(http, mode.clone());
    ok(
        &get(&via(&l_big, proxy), &out.join("via.bin"), None),
        "get through an honest proxy",
    );
    mode.store(FLIP_CHUNKS, Ordering::SeqCst);
    fails(
        &get(&via(&l_big, proxy), &out.join("t1.bin"), None),
        "tampered chunk",
        "does not verify",
    );
    fails(
        &get(&via(&l_dir, proxy), &out.join("t1dir"), None),
        "tampered chunk in a folder",
        "does not verify",
    );
    mode.store(FLIP_RECORDS, Ordering::SeqCst);
    fails(
        &get(&via(&l_text, proxy), &out.join("t2.txt"), None),
        "tampered record",
        "does not verify",
    );
    assert!(!out.join("t1.bin").exists() && !out.join("t1dir").exists());
    assert!(!out.join("t2.txt").exists());
    // Nothing half-written either (staging directories are removed).
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".weft-get"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    if browser {
        let cases = serde_json::json!([
            {"name": "text file", "url": l_text, "expect": "shown", "text": text},
            {"name": "png", "url": l_png, "expect": "shown", "sha256": sha256_hex(&image),
             "width": 40, "height": 24},
            {"name": "password", "url": l_pw, "password": "s3cret pass", "expect": "shown",
             "text": text},
            {"name": "wrong password", "url": l_pw, "password": "nope",
             "expect": "wrong-password", "record_status": 403, "message": "Wrong password"},
            {"name": "folder", "url": l_dir, "open": "sub/inner.txt",
             "files": ["hello.txt", "sub/inner.txt"], "expect": "shown", "text": "inner file\n"},
            {"name": "expired", "url": l_exp, "status": 410, "error": "expired",
             "message": "expired"},
            {"name": "revoked", "url": l_rev, "status": 410, "error": "revoked",
             "message": "revoked"},
            {"name": "download limit", "url": l_max, "status": 410, "error": "limit"},
            {"name": "unknown", "url": format!("http://{http}/s/AAAAAAAAAAAAAAAAAAAAAA#x"),
             "status": 404, "error": "unknown"},
        ]);
        mode.store(PASS, Ordering::SeqCst);
        run_browser(cases);
        mode.store(FLIP_CHUNKS, Ordering::SeqCst);
        run_browser(serde_json::json!([
            {"name": "tampered chunk", "url": via(&l_text, proxy), "expect": "tampered",
             "message": "tampered"},
            {"name": "tampered chunk in a folder", "url": via(&l_dir, proxy),
             "open": "hello.txt", "files": ["hello.txt", "sub/inner.txt"],
             "expect": "tampered"},
        ]));
        mode.store(FLIP_RECORDS, Ordering::SeqCst);
        run_browser(serde_json::json!([
            {"name": "tampered record", "url": via(&l_png, proxy), "expect": "tampered"},
        ]));
    }

    // Damage in the relay's own storage: the relay checks blobs against their ids and
    // will not serve them; the page and weft get both refuse, writing nothing.
    let blobs = relay.data.join("blobs");
    for (path, mut bytes) in files_under(&blobs) {
        if let Some(b) = bytes.last_mut() {
            *b ^= 0x80;
        }
        std::fs::write(path, bytes).unwrap();
    }
    fails(
        &get(&l_text, &out.join("damaged.txt"), None),
        "damaged blob",
        "HTTP 404",
    );
    assert!(!out.join("damaged.txt").exists());
    if browser {
        mode.store(PASS, Ordering::SeqCst);
        run_browser(serde_json::json!([
            {"name": "damaged in storage", "url": l_png, "expect": "missing"},
        ]));
    }

    // What the relay saw: requests in its access log, and never a key or a password.
    let log = std::fs::read_to_string(relay.data.join("access.log")).unwrap();
    assert!(
        log.contains(&format!("GET /s/{}/record 200", token(&l_text))),
        "{log}"
    );
    assert!(
        log.contains(&format!("GET /s/{}/record 403", token(&l_pw))),
        "{log}"
    );
    let files = files_under(&relay.data);
    assert!(files.iter().any(|(p, _)| p.ends_with("access.log")));
    for url in [
        &l_text, &l_png, &l_pw, &l_dir, &l_big, &l_exp, &l_rev, &l_max,
    ] {
        let (b64, raw) = key_of(url);
        let hexkey = raw.iter().map(|b| format!("{b:02x}")).collect::<String>();
        for (path, bytes) in &files {
            for needle in [b64.as_bytes(), &raw[..], hexkey.as_bytes()] {
                assert!(
                    !contains(bytes, needle),
                    "{} holds a link key",
                    path.display()
                );
            }
            assert!(
                !contains(bytes, b"s3cret pass"),
                "{} holds the password",
                path.display()
            );
        }
    }
    a.stop().await;
    relay.stop().await;
}
