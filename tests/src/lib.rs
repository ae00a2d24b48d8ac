//! End-to-end tests that run several weft nodes on loopback, and the helpers they share.
//!
//! Nodes run in-process (each with its own home, database and folder, talking real
//! libp2p over 127.0.0.1); tests that kill a node with SIGKILL run the `weft` binary.
//! Single-device tests of the `weft` command live in `cli/tests/`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weft_node::NodeConfig;
use weft_store::Home;

/// A device under test: a home, a folder root, a fixed loopback port.
pub struct Device {
    pub name: String,
    pub home: Home,
    pub root: PathBuf,
    pub port: u16,
    /// Listen on nothing: reachable only through a relay's circuit.
    pub unreachable: bool,
    /// How often the node rescans its folder unasked (3 s unless a test sets it).
    pub rescan_every: Duration,
    running: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Device {
    /// A device with nothing set up yet, under `base/name`.
    pub fn new(base: &Path, name: &str) -> Device {
        Device {
            name: name.into(),
            home: Home::new(base.join(format!("{name}-home"))),
            root: base.join(format!("{name}-files")),
            port: free_port(),
            unreachable: false,
            rescan_every: Duration::from_secs(3),
            running: None,
        }
    }

    /// Initializes the device and adds its folder (the first device of a person).
    pub fn create_folder(&mut self) {
        std::fs::create_dir_all(&self.root).unwrap();
        self.home.init(&self.name, 0).unwrap();
        let store = weft_store::Store::open(&self.home).unwrap();
        store.add_folder(&self.root, Some("shared")).unwrap();
    }

    /// Starts the node, dialing `peers`' ports.
    pub fn start(&mut self, peers: &[u16]) {
        assert!(self.running.is_none(), "{} already running", self.name);
        let cfg = NodeConfig {
            listen: if self.unreachable {
                Vec::new()
            } else {
                vec![format!("/ip4/127.0.0.1/tcp/{}", self.port).parse().unwrap()]
            },
            peers: peers
                .iter()
                .map(|p| format!("/ip4/127.0.0.1/tcp/{p}").parse().unwrap())
                .collect(),
            mdns: false,
            rescan_every: self.rescan_every,
            pull_every: Duration::from_secs(2),
            debounce: Duration::from_millis(50),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let home = self.home.clone();
        let name = self.name.clone();
        let h = tokio::spawn(async move {
            if let Err(e) = weft_node::start(&home, cfg, async {
                let _ = rx.await;
            })
            .await
            {
                panic!("node {name} failed: {e}");
            }
        });
        self.running = Some((h, tx));
        self.wait_control();
    }

    fn wait_control(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while weft_node::control::request(&self.home, &weft_node::control::ControlRequest::Status)
            .is_err()
        {
            assert!(Instant::now() < deadline, "{} did not start", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the node and waits until its store is closed.
    pub async fn stop(&mut self) {
        if let Some((h, tx)) = self.running.take() {
            let _ = tx.send(());
            h.await.unwrap();
        }
    }

    /// A pairing code from this (running) device.
    pub fn invite(&self) -> String {
        match weft_node::control::request(&self.home, &weft_node::control::ControlRequest::Invite)
            .unwrap()
        {
            weft_node::control::ControlResponse::Invite { code, .. } => code,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Joins via `code`; the folder lands in this device's root.
    pub async fn join(&mut self, code: &str) {
        let parent = self
            .root
            .parent()
            .unwrap()
            .join(format!("{}-parent", self.name));
        let joined = weft_node::join::join(&self.home, code, &parent, &self.name)
            .await
            .unwrap();
        assert_eq!(joined.folders.len(), 1);
        self.root = joined.folders[0].1.clone();
    }

    /// The connected, verified peers.
    pub fn peers(&self) -> usize {
        match weft_node::control::request(&self.home, &weft_node::control::ControlRequest::Status)
            .unwrap()
        {
            weft_node::control::ControlResponse::Status { peers, .. } => peers.len(),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The node's status (it must be running).
    pub fn status(&self) -> weft_node::control::ControlResponse {
        weft_node::control::request(&self.home, &weft_node::control::ControlRequest::Status)
            .unwrap()
    }

    /// The relays as the running node reports them.
    pub fn relays(&self) -> Vec<weft_node::upload::RelayStatus> {
        match self.status() {
            weft_node::control::ControlResponse::Status { relays, .. } => relays,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Adds a relay to this (stopped) device.
    pub fn add_relay(&self, addr: &str) {
        let store = weft_store::Store::open(&self.home).unwrap();
        store.add_relay(addr).unwrap();
    }

    /// Entries this running device uploaded to its relays so far.
    pub fn uploaded(&self) -> u64 {
        self.relays().iter().map(|r| r.entries_uploaded).sum()
    }

    /// Waits until this running device's relays hold everything it has: more than
    /// `before` entries were uploaded, the uploader finished its pass, and that stays
    /// so for a moment (a burst of changes may take more than one scan).
    pub async fn wait_backed_up(&self, before: u64, within: Duration) {
        let deadline = Instant::now() + within;
        let mut stable: Option<(Instant, u64)> = None;
        loop {
            let r = self.relays();
            let n: u64 = r.iter().map(|r| r.entries_uploaded).sum();
            let done = !r.is_empty()
                && r.iter().all(|r| r.connected && r.state == "in sync")
                && n > before;
            match stable {
                Some((t, m)) if done && m == n => {
                    if t.elapsed() > Duration::from_millis(1500) {
                        return;
                    }
                }
                _ if done => stable = Some((Instant::now(), n)),
                _ => stable = None,
            }
            assert!(
                Instant::now() < deadline,
                "{} did not back up to its relay within {within:?}: {r:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn write(&self, rel: &str, data: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

/// What a folder holds, for comparing devices: path → file bytes and executable bit,
/// or a directory marker. weft's own `.weft/` is left out.
pub type Snapshot = BTreeMap<String, Option<(Vec<u8>, bool)>>;

pub fn snapshot(root: &Path) -> Snapshot {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".weft" {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.insert(rel, None);
                walk(root, &p, out);
            } else if m.is_file() {
                let exec = m.permissions().mode() & 0o100 != 0;
                out.insert(rel, Some((std::fs::read(&p).unwrap_or_default(), exec)));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Waits until every device's folder holds the same tree (and stays so for a moment).
pub async fn converge(devices: &[&Device], within: Duration) -> Snapshot {
    let deadline = Instant::now() + within;
    let mut stable_since: Option<(Instant, Snapshot)> = None;
    loop {
        let snaps: Vec<Snapshot> = devices.iter().map(|d| snapshot(&d.root)).collect();
        let same = snaps.windows(2).all(|w| w[0] == w[1]);
        if same {
            match &stable_since {
                Some((t, s)) if *s == snaps[0] && t.elapsed() > Duration::from_millis(700) => {
                    return snaps[0].clone();
                }
                Some((_, s)) if *s == snaps[0] => {}
                _ => stable_since = Some((Instant::now(), snaps[0].clone())),
            }
        } else {
            stable_since = None;
        }
        if Instant::now() > deadline {
            let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
            for (n, s) in names.iter().zip(&snaps) {
                eprintln!(
                    "{n}: {:?}",
                    s.iter()
                        .map(|(k, v)| (k, v.as_ref().map(|(b, x)| (b.len(), *x))))
                        .collect::<Vec<_>>()
                );
            }
            panic!("devices {names:?} did not converge within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A relay running in-process on 127.0.0.1.
pub struct Relay {
    pub data: PathBuf,
    pub addr: String,
    running: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
}

impl Relay {
    /// Starts a relay with its data under `data`, on a random port, with defaults.
    pub async fn start(data: &Path) -> Relay {
        Relay::start_with(data, |_| {}).await
    }

    /// Starts a relay with its data under `data`, on a random port, with settings
    /// changed by `tune`.
    pub async fn start_with(
        data: &Path,
        tune: impl FnOnce(&mut weft_relay::server::ServeConfig),
    ) -> Relay {
        let mut cfg = weft_relay::server::ServeConfig::new(data.to_path_buf());
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        tune(&mut cfg);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (atx, arx) = tokio::sync::oneshot::channel();
        let h = tokio::spawn(async move {
            weft_relay::server::serve(
                cfg,
                move |a| {
                    let _ = atx.send(a);
                },
                async {
                    let _ = rx.await;
                },
            )
            .await
            .unwrap();
        });
        let addrs = tokio::time::timeout(Duration::from_secs(20), arx)
            .await
            .expect("the relay listens")
            .unwrap();
        Relay {
            data: data.to_path_buf(),
            addr: addrs[0].to_string(),
            running: Some((h, tx)),
        }
    }

    /// Stops the relay.
    pub async fn stop(&mut self) {
        if let Some((h, tx)) = self.running.take() {
            let _ = tx.send(());
            h.await.unwrap();
        }
    }
}

/// `n` incompressible bytes (xorshift64 from `seed`): no two chunks alike, whatever
/// the seeds (each seed starts its own state; `seed | 1` once gave 2k and 2k+1 the
/// same bytes).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_add(1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .max(1);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Captured logs of every in-process node (process-wide), so tests can look for the
/// warnings a rejection must produce.
pub mod logs {
    use std::sync::{Mutex, Once};
    use std::time::{Duration, Instant};

    static LOGS: Mutex<String> = Mutex::new(String::new());

    struct Sink;

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut l) = LOGS.lock() {
                l.push_str(&String::from_utf8_lossy(b));
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Starts capturing (once per test process), with `filter` (an `EnvFilter`).
    pub fn capture(filter: &str) {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_ansi(false)
                .with_writer(|| Sink)
                .try_init();
        });
    }

    /// Captured log lines containing every one of `needles`.
    pub fn lines(needles: &[&str]) -> Vec<String> {
        LOGS.lock()
            .map(|l| {
                l.lines()
                    .filter(|line| needles.iter().all(|n| line.contains(n)))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until more than `already` captured lines contain every one of
    /// `needles`; returns the newest.
    pub async fn wait(needles: &[&str], already: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let found = lines(needles);
            if found.len() > already {
                return found.last().cloned().unwrap_or_default();
            }
            if Instant::now() > deadline {
                let related = lines(&needles[..1]);
                let tail: Vec<&String> = related.iter().rev().take(30).collect();
                panic!(
                    "no log line with {needles:?} within {within:?}; last lines with {:?}:\n{}",
                    needles[0],
                    tail.iter()
                        .rev()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// `GET /metrics` from a relay's HTTP address.
pub fn relay_metrics(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of one metric line (`name{labels} value`) of a `/metrics` text, 0 if
/// absent.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The `weft` binary of the same target directory as this test, built if needed.
pub fn weft_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // <target>/<profile>/deps/resume-xxxx
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target = profile_dir.parent().unwrap().to_path_buf();
        let bin = profile_dir.join("weft");
        // Always asked: cargo does nothing if the binary is up to date, and a stale
        // binary would test old code.
        {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
            let mut cmd = std::process::Command::new(cargo);
            cmd.current_dir(workspace)
                .env("CARGO_TARGET_DIR", &target)
                .args(["build", "-p", "weft-cli", "--bin", "weft"]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            eprintln!("building the weft binary: {cmd:?}");
            let status = cmd.status();
            eprintln!("cargo build: {status:?}");
        }
        assert!(
            bin.exists(),
            "the weft binary is missing at {} and building it failed: run \
             `cargo build -p weft-cli` with the same CARGO_TARGET_DIR ({})",
            bin.display(),
            target.display()
        );
        bin
    })
}

/// Waits for a condition.
pub async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether this process runs as root (by the owner of /proc/self): mounting a small
/// tmpfs (a full disk on demand) and network namespaces need it.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A tmpfs mounted for the life of the guard (unmounted on drop).
pub struct Tmpfs {
    /// The mount point.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `2m`) on `dir`; `None` (with a note) if impossible.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("create mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size}"))
            .arg("tmpfs")
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            Ok(o) => {
                eprintln!(
                    "note: cannot mount a tmpfs ({}); skipping",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("note: cannot run mount ({e}); skipping");
                None
            }
        }
    }

    /// Changes the size of the mounted tmpfs.
    pub fn resize(&self, size: &str) {
        let st = std::process::Command::new("mount")
            .arg("-o")
            .arg(format!("remount,size={size}"))
            .arg(&self.dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "remount {} failed", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
    }
}
