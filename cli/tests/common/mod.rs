//! Helpers shared by the end-to-end tests of the `weft` binary: a private home and
//! folder per test, running the real binary, reading its JSON, files on disk, and a
//! tiny seeded RNG.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The binary under test.
pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// The counters of a scan summary that say what was recorded.
pub const COUNTS: [&str; 6] = [
    "files_added",
    "files_changed",
    "files_deleted",
    "files_moved",
    "dirs_added",
    "dirs_deleted",
];

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    /// The command line, for messages.
    pub what: String,
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Asserts the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "`{}` failed\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts the command failed cleanly: exit code 1, an `error:` line, no panic.
    #[track_caller]
    pub fn failed(self) -> Run {
        assert_eq!(
            self.code,
            Some(1),
            "`{}` should have failed with exit code 1\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.stdout,
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "`{}` panicked:\n{}",
            self.what,
            self.stderr
        );
        self
    }

    /// Asserts the command failed with an error message containing `needle`.
    #[track_caller]
    pub fn fails_with(self, needle: &str) -> Run {
        let r = self.failed();
        assert!(
            r.stderr.contains("error:") && r.stderr.contains(needle),
            "`{}`: expected an error mentioning {needle:?}, got:\n{}",
            r.what,
            r.stderr
        );
        r
    }

    /// Stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`{}` printed no JSON ({e}):\n{}\n--- stderr\n{}",
                self.what, self.stdout, self.stderr
            )
        })
    }
}

/// A private weft home and folder in a temporary directory.
pub struct Env {
    /// The temporary directory holding everything (removed on drop).
    pub dir: tempfile::TempDir,
    /// `--home`.
    pub home: PathBuf,
    /// The folder's root (canonical).
    pub folder: PathBuf,
    /// A command that runs the binary (e.g. `setpriv …` to run as another user).
    pub prefix: Vec<OsString>,
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Env {
    /// A fresh temporary directory with an (uncreated) home and an empty folder `f`.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = std::fs::canonicalize(dir.path()).expect("canonicalize tempdir");
        let folder = base.join("f");
        std::fs::create_dir(&folder).expect("create folder");
        Env {
            home: base.join("home"),
            folder,
            dir,
            prefix: Vec::new(),
        }
    }

    /// The base directory (canonical).
    pub fn base(&self) -> PathBuf {
        self.folder
            .parent()
            .expect("folder has a parent")
            .to_path_buf()
    }

    /// A `weft --home HOME args…` command, not started.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(WEFT);
                c
            }
            None => Command::new(WEFT),
        };
        c.arg("--home")
            .arg(&self.home)
            .args(args)
            .env_remove("WEFT_HOME")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Runs `weft --home HOME args…`.
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let what = format!(
            "weft {}",
            args.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = self.cmd(&args).output().expect("run weft");
        Run {
            what,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `weft --json args…`, asserts success and returns its JSON.
    #[track_caller]
    pub fn json<I, S>(&self, args: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut a: Vec<OsString> = vec!["--json".into()];
        a.extend(args.into_iter().map(|x| x.as_ref().to_owned()));
        self.run(a).ok().json()
    }

    /// `weft init`.
    #[track_caller]
    pub fn init(&self) -> Value {
        self.json(["init", "--name", "testbox"])
    }

    /// `weft init` then `weft folder add FOLDER`: returns the scan summary.
    #[track_caller]
    pub fn init_and_add(&self) -> Value {
        self.init();
        let out = self.json([
            OsStr::new("folder"),
            OsStr::new("add"),
            self.folder.as_os_str(),
        ]);
        out["scan"].clone()
    }

    /// `weft scan` of the one folder.
    #[track_caller]
    pub fn scan(&self) -> Value {
        self.json(["scan"])
    }

    /// `weft log`: the entries only, in the order printed.
    #[track_caller]
    pub fn log(&self) -> Vec<Value> {
        match self.json(["log"]) {
            Value::Array(items) => items.into_iter().map(|i| i["entry"].clone()).collect(),
            other => panic!("log is not an array: {other}"),
        }
    }

    /// `(op, path, to)` of every log entry.
    #[track_caller]
    pub fn log_ops(&self) -> Vec<(String, String, Option<String>)> {
        self.log()
            .iter()
            .map(|e| {
                (
                    e["op"].as_str().expect("op").to_owned(),
                    e["path"].as_str().expect("path").to_owned(),
                    e["to"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }

    /// `weft folder list`.
    #[track_caller]
    pub fn folders(&self) -> Value {
        self.json(["folder", "list"])
    }

    /// What a failed command must leave unchanged: the whole log and the folder list.
    #[track_caller]
    pub fn state(&self) -> (Value, Value) {
        (self.json(["log"]), self.folders())
    }

    /// `weft history PATH` (a path relative to the folder).
    #[track_caller]
    pub fn history(&self, rel: impl AsRef<Path>) -> Vec<Value> {
        let p = self.folder.join(rel);
        match self.json([OsStr::new("history"), p.as_os_str()]) {
            Value::Array(items) => items,
            other => panic!("history is not an array: {other}"),
        }
    }

    /// `weft restore PATH --version N --to TO`; returns the restored bytes.
    #[track_caller]
    pub fn restore_to(&self, rel: impl AsRef<Path>, version: u64, to: &Path) -> Vec<u8> {
        let p = self.folder.join(rel);
        let rep = self.json([
            OsStr::new("restore"),
            p.as_os_str(),
            OsStr::new("--version"),
            OsStr::new(&version.to_string()),
            OsStr::new("--to"),
            to.as_os_str(),
        ]);
        assert_eq!(rep["new_version"], false, "{rep}");
        assert_eq!(rep["version"], version, "{rep}");
        let bytes = std::fs::read(to).expect("read restored file");
        assert_eq!(rep["bytes"], bytes.len() as u64, "{rep}");
        bytes
    }

    /// `weft verify`, asserting it passes.
    #[track_caller]
    pub fn verify_ok(&self) -> Value {
        let r = self.run(["--json", "verify"]);
        let v = r.json();
        assert_eq!(
            v["problems"],
            Value::Array(vec![]),
            "verify found problems: {v}"
        );
        r.ok();
        v
    }

    /// A path inside the folder.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.folder.join(rel)
    }

    /// Writes a file inside the folder, creating parents.
    pub fn write(&self, rel: impl AsRef<Path>, data: &[u8]) -> PathBuf {
        let p = self.folder.join(rel);
        write_file(&p, data);
        p
    }

    /// Reads a file inside the folder.
    pub fn read(&self, rel: impl AsRef<Path>) -> Vec<u8> {
        let p = self.folder.join(rel);
        std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    /// The pack files of the chunk cache.
    pub fn packs(&self) -> Vec<PathBuf> {
        let dir = self.home.join("cache").join("packs");
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("read packs dir")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "pack"))
            .collect();
        v.sort();
        v
    }

    /// Total bytes of the pack files.
    pub fn pack_bytes(&self) -> u64 {
        self.packs()
            .iter()
            .map(|p| std::fs::metadata(p).expect("stat pack").len())
            .sum()
    }

    /// The config file of the home.
    pub fn set_config(&self, toml: &str) {
        std::fs::write(self.home.join("config.toml"), toml).expect("write config.toml");
    }
}

/// Writes a file, creating its parents.
pub fn write_file(p: &Path, data: &[u8]) {
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("create parent dirs");
    }
    std::fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// Sets a path's permission bits.
pub fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A scan summary's field as a number.
#[track_caller]
pub fn n(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a number in {v}"))
}

/// Asserts a scan summary recorded exactly these counts (every other count is 0).
#[track_caller]
pub fn expect_counts(summary: &Value, expected: &[(&str, u64)]) {
    for field in COUNTS {
        let want = expected
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, c)| *c)
            .unwrap_or(0);
        assert_eq!(n(summary, field), want, "{field} in {summary:#}");
    }
}

/// Asserts a scan recorded nothing and read nothing.
#[track_caller]
pub fn expect_nothing(summary: &Value) {
    expect_counts(summary, &[]);
    assert_eq!(n(summary, "bytes_read"), 0, "{summary:#}");
    assert_eq!(n(summary, "log_entries"), 0, "{summary:#}");
    assert_eq!(n(summary, "new_chunks"), 0, "{summary:#}");
}

/// The warnings of a scan summary.
pub fn warnings(summary: &Value) -> Vec<String> {
    summary["warnings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|w| w.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every regular file under `root` (relative path → size), skipping weft's `.weft`.
pub fn disk_files(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut dirs = Vec::new();
    walk(root, root, &mut out, &mut dirs);
    out
}

/// Every directory under `root` (relative), skipping weft's `.weft`.
pub fn disk_dirs(root: &Path) -> Vec<String> {
    let mut out = BTreeMap::new();
    let mut dirs = Vec::new();
    walk(root, root, &mut out, &mut dirs);
    dirs.sort();
    dirs
}

fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, u64>, dirs: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("dir entry");
        let p = e.path();
        let rel = p
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        if rel == ".weft" {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).expect("stat");
        if m.is_dir() {
            dirs.push(rel);
            walk(root, &p, files, dirs);
        } else if m.is_file() {
            files.insert(rel, m.len());
        }
    }
}

/// xorshift64*: a tiny seeded generator, so a failing run can be replayed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value).
    pub fn new(seed: u64) -> Rng {
        let mut r = Rng(seed ^ 0x9E37_79B9_7F4A_7C15);
        if r.0 == 0 {
            r.0 = 1;
        }
        r.next();
        r
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// `len` random bytes from a fixed seed.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}

// Not every test file that includes this module mounts a tmpfs.
#[allow(unused_imports)]
pub use weft_tests::{Tmpfs, is_root};
