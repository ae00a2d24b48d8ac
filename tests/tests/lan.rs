//! mDNS on a real (virtual) LAN: two `weft` processes in two network namespaces joined
//! by a veth pair find each other by multicast alone, and sync.
//!
//! Needs root and `ip` (iproute2), as CI has: loopback carries no multicast, so
//! nothing else here can show that mDNS works. Elsewhere the test says so and passes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weft_tests::{is_root, weft_bin};

/// Two network namespaces joined by a veth pair; removed on drop.
struct Lan {
    a: String,
    b: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Lan {
    fn new() -> Option<Lan> {
        let id = std::process::id() % 100_000;
        let lan = Lan {
            a: format!("weft-a-{id}"),
            b: format!("weft-b-{id}"),
        };
        let (va, vb) = (format!("wva{id}"), format!("wvb{id}"));
        let net = id % 250 + 1;
        let ok = ip(&["netns", "add", &lan.a])
            && ip(&["netns", "add", &lan.b])
            && ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])
            && ip(&["link", "set", &va, "netns", &lan.a])
            && ip(&["link", "set", &vb, "netns", &lan.b])
            && ip(&[
                "-n",
                &lan.a,
                "addr",
                "add",
                &format!("10.98.{net}.1/24"),
                "dev",
                &va,
            ])
            && ip(&[
                "-n",
                &lan.b,
                "addr",
                "add",
                &format!("10.98.{net}.2/24"),
                "dev",
                &vb,
            ])
            && ip(&["-n", &lan.a, "link", "set", &va, "up"])
            && ip(&["-n", &lan.b, "link", "set", &vb, "up"])
            && ip(&["-n", &lan.a, "link", "set", "lo", "up"])
            && ip(&["-n", &lan.b, "link", "set", "lo", "up"]);
        if ok { Some(lan) } else { None }
    }

    /// `weft` with `args`, inside namespace `ns`.
    fn weft(ns: &str, home: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(weft_bin())
            .arg("--home")
            .arg(home)
            .args(args);
        c
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.a]);
        ip(&["netns", "del", &self.b]);
    }
}

/// Running `weft up` processes, killed on drop.
struct Nodes(Vec<Child>);

impl Nodes {
    fn up(&mut self, ns: &str, home: &Path, extra: &[&str], log: PathBuf) {
        let mut args = vec!["up"];
        args.extend_from_slice(extra);
        let child = Lan::weft(ns, home, &args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        self.0.push(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !home.join("control.sock").exists()
            || weft_node::control::request(
                &weft_store::Home::new(home),
                &weft_node::control::ControlRequest::Status,
            )
            .is_err()
        {
            assert!(Instant::now() < deadline, "weft up did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_all(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
        self.0.clear();
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn peers(home: &Path) -> usize {
    match weft_node::control::request(
        &weft_store::Home::new(home),
        &weft_node::control::ControlRequest::Status,
    ) {
        Ok(weft_node::control::ControlResponse::Status { peers, .. }) => peers.len(),
        _ => 0,
    }
}

#[test]
fn devices_on_a_lan_find_each_other_by_mdns_alone() {
    let root = is_root();
    if !root || !ip(&["-V"]) {
        eprintln!("skipped: needs root and iproute2 to build a two-namespace LAN");
        return;
    }
    let Some(lan) = Lan::new() else {
        eprintln!("skipped: cannot create network namespaces here");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (ha, hb) = (tmp.path().join("ha"), tmp.path().join("hb"));
    let fa = tmp.path().join("a").join("shared");
    std::fs::create_dir_all(&fa).unwrap();
    let mut nodes = Nodes(Vec::new());
    let fa_s = fa.to_str().unwrap();

    // Pair them (the code carries A's addresses), then restart both on other ports:
    // the addresses they remember are stale, and nobody is told where the other is.
    nodes.up(
        &lan.a,
        &ha,
        &[fa_s, "--listen", "/ip4/0.0.0.0/tcp/4801"],
        tmp.path().join("a1.log"),
    );
    let out = Lan::weft(&lan.a, &ha, &["invite"]).output().unwrap();
    let code = String::from_utf8(out.stdout).unwrap();
    let code = code.lines().last().unwrap().trim().to_string();
    let out = Lan::weft(
        &lan.b,
        &hb,
        &[
            "join",
            &code,
            "--path",
            tmp.path().join("b").to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "join: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    nodes.stop_all();

    // Without mDNS they stay apart (the control: nothing else finds the peer).
    nodes.up(
        &lan.a,
        &ha,
        &["--listen", "/ip4/0.0.0.0/tcp/4811", "--no-mdns"],
        tmp.path().join("a2.log"),
    );
    nodes.up(
        &lan.b,
        &hb,
        &["--listen", "/ip4/0.0.0.0/tcp/4812", "--no-mdns"],
        tmp.path().join("b2.log"),
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        peers(&hb),
        0,
        "b found a without mDNS: the test proves nothing"
    );
    nodes.stop_all();

    // With mDNS (the default) they find each other and sync.
    nodes.up(
        &lan.a,
        &ha,
        &["--listen", "/ip4/0.0.0.0/tcp/4821"],
        tmp.path().join("a3.log"),
    );
    nodes.up(
        &lan.b,
        &hb,
        &["--listen", "/ip4/0.0.0.0/tcp/4822"],
        tmp.path().join("b3.log"),
    );
    std::fs::write(fa.join("over-the-lan.txt"), b"found by mDNS").unwrap();
    let target = tmp.path().join("b").join("shared").join("over-the-lan.txt");
    let deadline = Instant::now() + Duration::from_secs(40);
    while std::fs::read(&target).ok().as_deref() != Some(b"found by mDNS".as_slice()) {
        assert!(
            Instant::now() < deadline,
            "b did not receive the file; b's log:\n{}",
            std::fs::read_to_string(tmp.path().join("b3.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(peers(&hb), 1);
    nodes.stop_all();
}
