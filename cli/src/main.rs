//! `weft`: the command-line interface.
//!
//! Every command opens the home directory (`--home`, `$WEFT_HOME`, or the platform
//! data dir), does one thing through the store, and prints a human form or, with
//! `--json`, one JSON document. Errors print their whole chain and exit with 1.
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use weft_node::control::{ControlRequest, ControlResponse};
use weft_node::sharing::{SharingAnswer, SharingRequest};
use weft_store::scan::{Progress, ScanSummary};
use weft_store::store::{now_ms, resolve_home};
use weft_store::{Home, Store};

mod links;
mod output;
use output::{human_bytes, print_json, when};

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "End-to-end encrypted peer-to-peer file sync"
)]
struct Cli {
    /// State directory (keys, database, chunk cache). Default: the platform data dir.
    #[arg(long, global = true, env = "WEFT_HOME")]
    home: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create this device's keys (person key, device key, certificate).
    Init {
        /// A name for this device.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show this device's id, person id, fingerprint and name.
    Id {
        /// Also show the person id as a QR code, for someone adding you as a contact
        /// to scan and compare.
        #[arg(long)]
        qr: bool,
    },
    /// Manage folders.
    #[command(subcommand)]
    Folder(FolderCmd),
    /// Record what changed on disk in a folder (all folders if none given).
    Scan {
        /// Folder name, id or path.
        folder: Option<String>,
    },
    /// List a file's versions.
    History {
        /// The file's path on disk.
        path: PathBuf,
    },
    /// Write an old version of a file back.
    Restore {
        /// The file's path on disk.
        path: PathBuf,
        /// The version number (from `weft history`).
        #[arg(long)]
        version: u64,
        /// Write it here instead of in place.
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Remove cached chunks no retained version needs.
    Gc,
    /// Check the whole store: signatures, hash chains, chunks, index.
    Verify,
    /// Show a folder's change log (all folders if none given).
    Log {
        /// Folder name, id or path.
        folder: Option<String>,
    },
    /// Run the node in the foreground: sync every folder with this person's other
    /// devices until Ctrl-C. With PATH, first set up the device and that folder.
    Up {
        /// A folder to sync (initializes the device and adds the folder if needed).
        path: Option<PathBuf>,
        /// Address to listen on (repeatable). Default: QUIC and TCP on all interfaces, random ports.
        #[arg(long)]
        listen: Vec<String>,
        /// A peer address to dial at start (repeatable).
        #[arg(long)]
        peer: Vec<String>,
        /// Do not discover devices on the LAN with mDNS.
        #[arg(long)]
        no_mdns: bool,
    },
    /// Print a one-time pairing code for a new device (needs `weft up` running).
    Invite,
    /// Pair this device with another device of yours, using a code from `weft invite`;
    /// or, with your recovery key and --relay, set it up from a relay alone.
    Join {
        /// The pairing code, or the recovery key (`weft-recovery-...`).
        code: String,
        /// With a recovery key: the relay that backs up your folders.
        #[arg(long)]
        relay: Option<String>,
        /// Where to put the folders (default: the current directory).
        #[arg(long)]
        path: Option<PathBuf>,
        /// A name for this device.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show connected devices and each folder's sync state (needs `weft up` running).
    Status,
    /// Show the recovery key: with it and a relay, a new device gets every folder back
    /// after all your devices are lost. Whoever has it can read your folders.
    RecoveryKey,
    /// List conflict copies.
    Conflicts,
    /// Relays: back this device's folders up to one and sync through it (add, list,
    /// remove), or run one (serve).
    #[command(subcommand)]
    Relay(RelayCmd),
    /// People you share with: record one after comparing fingerprints, list them.
    #[command(subcommand)]
    Contact(ContactCmd),
    /// Share a folder you own with a contact (or change their role).
    Share {
        /// Folder name, id or path.
        folder: String,
        /// The contact (name or person id).
        #[arg(long)]
        with: String,
        /// viewer (reads only) or editor (reads and writes).
        #[arg(long)]
        role: weft_store::members::Role,
    },
    /// Remove a person from a folder you own; the folder gets a new key.
    Unshare {
        /// Folder name, id or path.
        folder: String,
        /// The contact (name or person id).
        #[arg(long)]
        with: String,
    },
    /// List a folder's members and roles.
    Members {
        /// Folder name, id or path.
        folder: String,
    },
    /// List folders shared with you that this device does not sync yet.
    Shares,
    /// Start syncing a folder shared with you.
    Accept {
        /// The share's name or folder id (from `weft shares`).
        share: String,
        /// Where to put it (default: next to your other folders).
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Decline a folder shared with you.
    Decline {
        /// The share's name or folder id.
        share: String,
    },
    /// Share a file or directory with anyone through a link a relay serves, end to end
    /// encrypted (the key is in the link's #fragment); `link list`, `link revoke TOKEN`.
    Link(LinkArgs),
    /// Download a share link here, decrypting and verifying it locally.
    Get {
        /// The link (`https://relay/s/TOKEN#KEY`).
        url: String,
        /// Where to write it (default: its name in the current directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The link has a password: ask for it (or read a line of stdin).
        #[arg(long)]
        password: bool,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct LinkArgs {
    #[command(subcommand)]
    cmd: Option<LinkCmd>,
    /// The file or directory to share (inside a synced folder).
    #[arg(required = true)]
    path: Option<PathBuf>,
    /// Stop working after this long (e.g. 7d, 12h, 30m, 45s).
    #[arg(long, value_parser = links::parse_duration)]
    expires: Option<u64>,
    /// Protect it with a password (asked for, or read as a line of stdin).
    #[arg(long)]
    password: bool,
    /// Allow this many downloads.
    #[arg(long)]
    max_downloads: Option<u64>,
}

#[derive(Subcommand)]
enum LinkCmd {
    /// The links this device created.
    List,
    /// Make a link stop working.
    Revoke {
        /// The link's token (from `weft link list`).
        token: String,
    },
}

#[derive(Subcommand)]
enum ContactCmd {
    /// Record a person, after comparing the fingerprint this shows with the one their
    /// `weft id` shows (in person, or on a call).
    Add {
        /// Their person id (from their `weft id`).
        person: String,
        /// A name for them.
        #[arg(long)]
        name: String,
        /// Do not ask: the fingerprint was already compared.
        #[arg(long)]
        yes: bool,
    },
    /// List contacts.
    List,
}

#[derive(Subcommand)]
enum RelayCmd {
    /// Run a relay in the foreground until Ctrl-C/SIGTERM: durable ciphertext storage
    /// for the persons who add it, circuit relaying and rendezvous for NAT traversal.
    Serve {
        /// Where the relay keeps its key, database and blobs.
        #[arg(long)]
        data: PathBuf,
        /// Address to listen on (repeatable). Default: TCP and QUIC on all interfaces, random ports.
        #[arg(long)]
        listen: Vec<String>,
        /// Serve HTTP at ADDR: Prometheus metrics at /metrics and share links at /s/….
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// The public base URL of the --http server as share links show it (e.g.
        /// https://relay.example.org behind a TLS proxy). Default: http://<--http address>.
        #[arg(long, requires = "http")]
        public_url: Option<String>,
        /// Bytes each person may store (suffixes K, M, G, T: powers of 1024).
        #[arg(long, value_parser = parse_bytes)]
        quota_per_person: Option<u64>,
        /// Days superseded and deleted versions are kept.
        #[arg(long, default_value_t = weft_relay::server::DEFAULT_RETENTION_DAYS)]
        retention_days: u32,
    },
    /// On a stopped relay: forget versions older than the retention period that no
    /// device still needs, and remove unreferenced blobs.
    Gc {
        /// The relay's data directory.
        #[arg(long)]
        data: PathBuf,
        /// Days superseded and deleted versions are kept.
        #[arg(long, default_value_t = weft_relay::server::DEFAULT_RETENTION_DAYS)]
        retention_days: u32,
    },
    /// Back up to a relay and sync through it (ADDR as `weft relay serve` prints it,
    /// ending in /p2p/<id>).
    Add {
        /// The relay's multiaddr.
        addr: String,
    },
    /// List this device's relays (and their state, when the node runs).
    List,
    /// Stop using a relay.
    Remove {
        /// The relay's multiaddr, as added.
        addr: String,
    },
}

/// Parses a byte count with an optional K/M/G/T suffix (powers of 1024).
fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a byte count (like 500M or 10G)"))
}

#[derive(Subcommand)]
enum FolderCmd {
    /// Register a directory as a folder and index it (initializing the device if needed).
    Add {
        /// The directory.
        path: PathBuf,
        /// A name (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
        /// Register only; index on the next `weft scan`.
        #[arg(long)]
        no_scan: bool,
    },
    /// List folders.
    List,
}

/// Buffers of a megabyte or more (chunks of files over 4 GiB, large frames) are
/// mapped and unmapped on their own instead of coming from glibc's arenas: by default
/// the arenas of the many threads that handle chunks each kept several freed
/// megabytes, and a node syncing a 4 GiB file peaked at ~100 MiB instead of ~45 MiB.
/// Fixing the mmap threshold also fixes the trim threshold at glibc's 128 KiB, so every
/// freed chunk buffer (64–256 KiB) gave its pages back and the next one faulted them in
/// afresh: a tenth of a serving node's CPU. An arena now keeps up to 8 MiB free at its
/// top (peak RSS of a 1.4 GB sync ~45 → ~50 MiB; W2 sync ~15% less CPU). And there
/// are as many arenas as cores, not glibc's eight per core: each arena keeps its own
/// free memory, and the threads handling chunks spread over many of them (one arena
/// per core took peak RSS of the W1 sync from ~62 to ~54 MiB and of W2 from ~50 to
/// ~44 MiB, CPU and times unchanged within the noise, 2026-12-04).
/// The project's one `unsafe`: glibc has no safe binding for these settings.
#[allow(unsafe_code)]
fn bound_malloc_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes allocator settings; called before any other
        // thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

fn main() {
    bound_malloc_retention();
    let cli = Cli::parse();
    let default_filter = if matches!(cli.cmd, Cmd::Up { .. }) {
        "weft_node=info,weft_store=warn,warn"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            if is_broken_pipe(&e) {
                std::process::exit(0);
            }
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::exit(1);
        }
    }
}

/// `weft link`: create, list or revoke share links through the running node.
fn link(home: &Home, args: LinkArgs, json: bool) -> Result<i32> {
    use weft_store::links::LocalLink;
    let show = |l: &LocalLink| -> Result<()> {
        if json {
            print_json(l)?;
        } else if l.revoked {
            println!("revoked {}", l.token);
        } else {
            println!("{}", l.url);
        }
        Ok(())
    };
    match args.cmd {
        Some(LinkCmd::List) => {
            let links = match control(home, ControlRequest::LinkList)? {
                ControlResponse::Links { links } => links,
                other => bail!("unexpected answer: {other:?}"),
            };
            if json {
                print_json(&links)?;
                return Ok(0);
            }
            if links.is_empty() {
                println!("no share links (create one with `weft link PATH`)");
            }
            for l in &links {
                let state = if l.revoked {
                    "revoked".to_string()
                } else if l.expires_ms.is_some_and(|e| e <= now_ms()) {
                    "expired".to_string()
                } else {
                    "active".to_string()
                };
                println!(
                    "{}  {state:<8} expires {:<19}  downloads {:<5} {}{}",
                    l.token,
                    l.expires_ms.map(when).unwrap_or_else(|| "never".into()),
                    l.max_downloads
                        .map(|n| format!("≤{n}"))
                        .unwrap_or_else(|| "any".into()),
                    l.path,
                    if l.password { "  (password)" } else { "" }
                );
            }
            Ok(0)
        }
        Some(LinkCmd::Revoke { token }) => {
            match control(home, ControlRequest::LinkRevoke { token })? {
                ControlResponse::Link { link } => show(&link)?,
                other => bail!("unexpected answer: {other:?}"),
            }
            Ok(0)
        }
        None => {
            let Some(path) = args.path else {
                bail!("give the file or directory to share: weft link PATH");
            };
            let password = if args.password {
                Some(links::read_password("Password for the link: ")?)
            } else {
                None
            };
            let options = weft_node::links::LinkOptions {
                path: absolute(&path)?,
                password,
                expires_secs: args.expires,
                max_downloads: args.max_downloads,
            };
            match control(home, ControlRequest::LinkCreate { options })? {
                ControlResponse::Link { link } => show(&link)?,
                other => bail!("unexpected answer: {other:?}"),
            }
            Ok(0)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn open(home: &Home) -> Result<Store> {
    if home.is_initialized()
        && std::os::unix::net::UnixStream::connect(weft_node::control::socket_path(home)).is_ok()
    {
        bail!(
            "the weft node is running for {} (`weft up`): stop it first; this command works on a stopped node for now",
            home.root().display()
        );
    }
    Store::open(home).with_context(|| format!("cannot open weft home {}", home.root().display()))
}

fn node_running(home: &Home) -> bool {
    std::os::unix::net::UnixStream::connect(weft_node::control::socket_path(home)).is_ok()
}

/// An absolute path for the node, which runs in another working directory.
fn absolute(p: &std::path::Path) -> Result<String> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    Ok(abs.to_string_lossy().into_owned())
}

/// Runs a sharing command: through the node when it runs (it holds the store), on
/// the store directly otherwise.
fn sharing(home: &Home, command: SharingRequest) -> Result<SharingAnswer> {
    if node_running(home) {
        match control(home, ControlRequest::Sharing { command })? {
            ControlResponse::Sharing { answer } => Ok(answer),
            _ => bail!("unexpected answer from the node"),
        }
    } else {
        let store = open(home)?;
        Ok(weft_node::sharing::handle(&store, command)?)
    }
}

/// Runs a sharing command whose answer is a message, and prints it.
fn say(home: &Home, command: SharingRequest, json: bool) -> Result<()> {
    let message = match sharing(home, command)? {
        SharingAnswer::Changed { message, .. } | SharingAnswer::Declined(message) => message,
        _ => bail!("unexpected answer from the node"),
    };
    if json {
        print_json(&serde_json::json!({ "message": message }))
    } else {
        println!("{message}");
        Ok(())
    }
}

/// A FOLDER argument for the node, which runs elsewhere: a path that exists becomes
/// absolute; a name or id stays as it is.
fn folder_arg(arg: &str) -> Result<String> {
    let p = std::path::Path::new(arg);
    if p.exists() {
        absolute(p)
    } else {
        Ok(arg.to_string())
    }
}

fn control(home: &Home, req: ControlRequest) -> Result<ControlResponse> {
    match weft_node::control::request(home, &req)? {
        ControlResponse::Error { message } => bail!("{message}"),
        other => Ok(other),
    }
}

fn run(cli: Cli) -> Result<i32> {
    let home = resolve_home(cli.home.clone())?;
    let json = cli.json;
    match cli.cmd {
        Cmd::Init { name } => {
            let name = name.unwrap_or_else(default_device_name);
            let (id, created) = home.init(&name, now_ms())?;
            if json {
                print_json(&serde_json::json!({
                    "created": created,
                    "device_id": id.device_id().to_string(),
                    "person_id": id.person_id().to_string(),
                    "name": id.name(),
                    "home": home.root().display().to_string(),
                }))?;
            } else {
                if created {
                    println!("Initialized weft in {}", home.root().display());
                } else {
                    println!(
                        "Already initialized in {}: nothing changed.",
                        home.root().display()
                    );
                }
                println!("device id: {}", id.device_id());
                println!("person id: {}", id.person_id());
                println!("name:      {}", id.name());
                if created {
                    println!(
                        "recovery key (write it down and keep it secret: with it and a relay, a new device gets your folders back; `weft recovery-key` shows it again):"
                    );
                    println!("  {}", weft_crypto::recovery::encode(&id.person));
                }
            }
            // Create the database now so `init` leaves a complete home.
            open(&home)?;
        }
        Cmd::Id { qr } => {
            let id = home.load_identity()?;
            if json {
                print_json(&serde_json::json!({
                    "device_id": id.device_id().to_string(),
                    "person_id": id.person_id().to_string(),
                    "fingerprint": id.person_id().fingerprint(),
                    "name": id.name(),
                }))?;
            } else {
                println!("device id:   {}", id.device_id());
                println!("person id:   {}", id.person_id());
                println!("fingerprint: {}", id.person_id().fingerprint());
                println!("name:        {}", id.name());
                if qr {
                    let code = qrcode::QrCode::new(id.person_id().to_string().as_bytes())
                        .context("cannot make a QR code of the person id")?;
                    println!(
                        "\nperson id as a QR code:\n{}",
                        code.render::<qrcode::render::unicode::Dense1x2>()
                            .dark_color(qrcode::render::unicode::Dense1x2::Light)
                            .light_color(qrcode::render::unicode::Dense1x2::Dark)
                            .build()
                    );
                }
            }
        }
        Cmd::Folder(FolderCmd::Add {
            path,
            name,
            no_scan,
        }) => {
            if !home.is_initialized() {
                let (id, _) = home.init(&default_device_name(), now_ms())?;
                if !json {
                    println!(
                        "Initialized weft in {} (device {}, person {})",
                        home.root().display(),
                        id.device_id(),
                        id.person_id()
                    );
                }
            }
            let store = open(&home)?;
            let rec = store.add_folder(&path, name.as_deref())?;
            let summary = if no_scan {
                None
            } else {
                Some(scan_one(&store, &rec, json)?)
            };
            if json {
                print_json(&serde_json::json!({
                    "id": rec.id.to_string(),
                    "name": rec.name,
                    "path": rec.root_path().display().to_string(),
                    "scan": summary,
                }))?;
            } else {
                println!(
                    "Added folder {:?} ({}) at {}",
                    rec.name,
                    rec.id,
                    rec.root_path().display()
                );
                if let Some(s) = summary {
                    println!("{}", summary_line(&s));
                }
            }
        }
        Cmd::Folder(FolderCmd::List) => {
            let store = open(&home)?;
            let infos = store.folder_infos()?;
            if json {
                print_json(&infos)?;
            } else if infos.is_empty() {
                println!("No folders yet: add one with `weft folder add PATH`.");
            } else {
                println!(
                    "{:<20} {:<32} {:>8} {:>10}  {:<19}  PATH",
                    "NAME", "ID", "FILES", "SIZE", "LAST SCAN"
                );
                for f in infos {
                    println!(
                        "{:<20} {:<32} {:>8} {:>10}  {:<19}  {}",
                        f.name,
                        f.id,
                        f.files,
                        human_bytes(f.bytes),
                        f.last_scan_ms.map(when).unwrap_or_else(|| "never".into()),
                        f.path
                    );
                }
            }
        }
        Cmd::Scan { folder } => {
            let store = open(&home)?;
            let folders = match folder {
                Some(f) => vec![store.find_folder(&f)?],
                None => store.folders()?,
            };
            if folders.is_empty() {
                bail!("no folders yet: add one with `weft folder add PATH`");
            }
            let mut all = Vec::new();
            for f in &folders {
                let s = scan_one(&store, f, json)?;
                if !json {
                    println!("{}", summary_line(&s));
                }
                all.push(s);
            }
            if json {
                if all.len() == 1 {
                    print_json(&all[0])?;
                } else {
                    print_json(&all)?;
                }
            }
        }
        Cmd::History { path } => {
            let items: Vec<serde_json::Value> = if node_running(&home) {
                let ControlResponse::History { items } = control(
                    &home,
                    ControlRequest::History {
                        path: absolute(&path)?,
                    },
                )?
                else {
                    bail!("unexpected answer from the node");
                };
                serde_json::from_value(items)?
            } else {
                let store = open(&home)?;
                let (folder, rel) = store.locate(&path)?;
                store
                    .history(&folder, &rel)?
                    .into_iter()
                    .map(|(h, _)| serde_json::to_value(h))
                    .collect::<Result<_, _>>()?
            };
            if items.is_empty() {
                bail!(
                    "{} has no recorded versions (not scanned yet?)",
                    path.display()
                );
            }
            if json {
                print_json(&items)?;
            } else {
                println!(
                    "{:>4}  {:<19}  {:>10}  {:<8}  {:<20}  NOTE",
                    "VER", "TIME", "SIZE", "KIND", "AUTHOR"
                );
                for h in items {
                    let s = |k: &str| h[k].as_str().unwrap_or_default().to_owned();
                    let author_id = s("author");
                    let author = match h["author_name"].as_str() {
                        Some(n) => format!("{n} ({})", author_id.get(8..15).unwrap_or(&author_id)),
                        None => author_id.clone(),
                    };
                    let mut note = Vec::new();
                    if h["current"] == true {
                        note.push("current");
                    }
                    if s("kind") == "file" && h["restorable"] == false {
                        note.push(if node_running(&home) {
                            "not restorable here (other devices are asked)"
                        } else {
                            "not restorable here"
                        });
                    }
                    println!(
                        "{:>4}  {:<19}  {:>10}  {:<8}  {:<20}  {}",
                        h["number"].as_u64().unwrap_or_default(),
                        when(h["time_ms"].as_u64().unwrap_or_default()),
                        h["size"].as_u64().map(human_bytes).unwrap_or_default(),
                        s("kind"),
                        author,
                        note.join(", ")
                    );
                }
            }
        }
        Cmd::Restore { path, version, to } => {
            let rep: weft_store::history::RestoreReport = if node_running(&home) {
                let to = to.as_ref().map(|t| absolute(t)).transpose()?;
                let ControlResponse::Restored { report } = control(
                    &home,
                    ControlRequest::Restore {
                        path: absolute(&path)?,
                        version,
                        to,
                    },
                )?
                else {
                    bail!("unexpected answer from the node");
                };
                serde_json::from_value(report)?
            } else {
                let store = open(&home)?;
                let (folder, rel) = store.locate(&path)?;
                store.restore(&folder, &rel, version, to.as_deref())?
            };
            if json {
                print_json(&rep)?;
            } else if rep.new_version {
                println!(
                    "Restored version {} of {} ({}); recorded as its newest version.",
                    rep.version,
                    rep.written_to,
                    human_bytes(rep.bytes)
                );
            } else {
                println!(
                    "Wrote version {} of {} to {} ({}).",
                    rep.version,
                    path.display(),
                    rep.written_to,
                    human_bytes(rep.bytes)
                );
            }
        }
        Cmd::Gc => {
            let store = open(&home)?;
            let rep = store.gc(now_ms())?;
            if json {
                print_json(&rep)?;
            } else {
                println!(
                    "Freed {} ({} chunks removed, {} versions past retention of {} days, {} packs compacted).",
                    human_bytes(rep.bytes_freed),
                    rep.chunks_removed,
                    rep.versions_expired,
                    store.config().history.retention_days,
                    rep.packs_rewritten
                );
            }
        }
        Cmd::Verify => {
            let store = open(&home)?;
            let rep = store.verify()?;
            if json {
                print_json(&rep)?;
            } else {
                for p in &rep.problems {
                    println!("PROBLEM [{}] {}", p.area, p.detail);
                }
                println!(
                    "Checked {} log entries, {} cached chunks, {} index rows: {}",
                    rep.entries,
                    rep.chunks,
                    rep.index_rows,
                    if rep.problems.is_empty() {
                        "no problems found.".to_string()
                    } else {
                        format!("{} problem(s).", rep.problems.len())
                    }
                );
            }
            if !rep.problems.is_empty() {
                return Ok(1);
            }
        }
        Cmd::Log { folder } => {
            let store = open(&home)?;
            let folders = match folder {
                Some(f) => vec![store.find_folder(&f)?],
                None => store.folders()?,
            };
            let mut all = Vec::new();
            for f in &folders {
                for item in store.log_items(f)? {
                    all.push((f.name.clone(), item));
                }
            }
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|(f, i)| serde_json::json!({"folder": f, "entry": i}))
                    .collect();
                print_json(&v)?;
            } else {
                for (f, i) in all {
                    let who = i.author_name.clone().unwrap_or_else(|| i.author.clone());
                    let path = match &i.to {
                        Some(to) => format!("{} -> {to}", i.path),
                        None => i.path.clone(),
                    };
                    println!(
                        "{}  {f}  {who}#{:<5} {:<7} {path}",
                        when(i.time_ms),
                        i.seq,
                        i.op
                    );
                }
            }
        }
        Cmd::Up {
            path,
            listen,
            peer,
            no_mdns,
        } => return up(&home, path, listen, peer, no_mdns, json),
        Cmd::Invite => {
            let ControlResponse::Invite { code, expires_ms } =
                control(&home, ControlRequest::Invite)?
            else {
                bail!("unexpected answer from the node");
            };
            if json {
                print_json(&serde_json::json!({"code": code, "expires_ms": expires_ms}))?;
            } else {
                println!(
                    "On the new device, run (valid until {} UTC, once):",
                    when(expires_ms)
                );
                println!("  weft join <code>");
                println!("{code}");
            }
        }
        Cmd::RecoveryKey => {
            let id = home.load_identity()?;
            let key = weft_crypto::recovery::encode(&id.person);
            if json {
                print_json(&serde_json::json!({ "recovery_key": key }))?;
            } else {
                println!(
                    "Keep this secret and safe (on paper): whoever has it can read your folders."
                );
                println!("With it and a relay: weft join RECOVERY-KEY --relay RELAY-ADDR");
                println!("{key}");
            }
        }
        Cmd::Join {
            code,
            relay,
            path,
            name,
        } => {
            if node_running(&home) {
                bail!(
                    "this device's node is running ({}): a device that syncs already cannot join another person's devices; use a fresh --home",
                    home.root().display()
                );
            }
            let dir = match path {
                Some(p) => p,
                None => std::env::current_dir()?,
            };
            let name = name.unwrap_or_else(default_device_name);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let recovering = weft_crypto::recovery::is_recovery_key(&code);
            let joined = if recovering {
                let Some(relay) = relay else {
                    bail!(
                        "recovering with a recovery key needs the relay that backs up your folders: --relay ADDR"
                    );
                };
                rt.block_on(weft_node::recover::recover(
                    &home, &code, &relay, &dir, &name,
                ))?
            } else {
                rt.block_on(weft_node::join::join(&home, &code, &dir, &name))?
            };
            if json {
                print_json(&joined)?;
            } else {
                println!(
                    "{}: this device ({}) is now one of person {}.",
                    if recovering { "Recovered" } else { "Paired" },
                    joined.device,
                    joined.person
                );
                for (name, path) in &joined.folders {
                    println!("  folder {name:?} at {}", path.display());
                }
                println!("Start syncing with `weft up`.");
            }
        }
        Cmd::Status => {
            let ControlResponse::Status {
                device,
                listen,
                peers,
                folders,
                bytes_received,
                bytes_sent,
                relays,
                offers,
            } = control(&home, ControlRequest::Status)?
            else {
                bail!("unexpected answer from the node");
            };
            if json {
                print_json(&serde_json::json!({
                    "device": device, "listen": listen, "peers": peers, "folders": folders,
                    "bytes_received": bytes_received, "bytes_sent": bytes_sent,
                    "relays": relays, "offers": offers,
                }))?;
            } else {
                println!("device {device}");
                for a in &listen {
                    println!("  listening on {a}");
                }
                if peers.is_empty() {
                    println!("no devices connected");
                }
                for p in &peers {
                    println!(
                        "peer {} ({}) {} via {}{}",
                        p.name.as_deref().unwrap_or("?"),
                        p.id,
                        p.connection,
                        p.address.as_deref().unwrap_or("?"),
                        p.latency_ms
                            .map(|l| format!(", {l:.1} ms"))
                            .unwrap_or_default()
                    );
                }
                for r in &relays {
                    println!("{}", relay_line(r));
                }
                for f in &folders {
                    let mut line = format!("folder {}: {}", f.name, f.state);
                    if f.files_to_go > 0 {
                        line += &format!(
                            ", {} files ({}) to go",
                            f.files_to_go,
                            human_bytes(f.bytes_to_go)
                        );
                        // Nothing moving (waiting for a peer or for room): no rate.
                        if f.rate >= 1.0 {
                            line += &format!(" at {}/s", human_bytes(f.rate as u64));
                        }
                    }
                    if f.conflicts > 0 {
                        line += &format!(", {} conflict(s)", f.conflicts);
                    }
                    match f.role.as_deref() {
                        Some("viewer") => line += ", you are a viewer",
                        Some("removed") => line += ", you were removed from it",
                        _ => {}
                    }
                    if f.local_only > 0 {
                        line += &format!(
                            ", {} local change(s) not shared (others do not accept them)",
                            f.local_only
                        );
                    }
                    if let Some(e) = &f.last_error {
                        line += &format!(" (last round: {e})");
                    }
                    println!("{line}");
                    const SHOWN: usize = 5;
                    if f.not_synced_count > 0 {
                        println!("  {} path(s) not synced:", f.not_synced_count);
                    }
                    for w in f.not_synced.iter().take(SHOWN) {
                        println!("    {w}");
                    }
                    if f.not_synced_count > SHOWN as u64 {
                        println!(
                            "    … and {} more (the node's log has them all)",
                            f.not_synced_count - SHOWN as u64
                        );
                    }
                }
                for o in &offers {
                    println!("shared with you, not synced here: {o} (`weft accept {o}`)");
                }
            }
        }
        Cmd::Relay(cmd) => return relay(&home, cmd, json),
        Cmd::Share { folder, with, role } => {
            let folder = folder_arg(&folder)?;
            say(&home, SharingRequest::Share { folder, with, role }, json)?;
        }
        Cmd::Unshare { folder, with } => {
            let folder = folder_arg(&folder)?;
            say(&home, SharingRequest::Unshare { folder, with }, json)?;
        }
        Cmd::Decline { share } => say(&home, SharingRequest::Decline { share }, json)?,
        Cmd::Members { folder } => {
            let folder = folder_arg(&folder)?;
            let SharingAnswer::Members(members) =
                sharing(&home, SharingRequest::Members { folder })?
            else {
                bail!("unexpected answer from the node");
            };
            if json {
                let v: Vec<_> = members
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "person": m.person.to_string(), "role": m.role.to_string(),
                            "name": m.name, "fingerprint": m.person.fingerprint(),
                        })
                    })
                    .collect();
                print_json(&v)?;
            } else {
                for m in &members {
                    let name = m.name.clone().unwrap_or_else(|| "(not a contact)".into());
                    println!("{:<8} {:<20} {}", m.role.to_string(), name, m.person);
                }
            }
        }
        Cmd::Shares => {
            let SharingAnswer::Shares(offers) = sharing(&home, SharingRequest::Shares)? else {
                bail!("unexpected answer from the node");
            };
            let contacts = match sharing(&home, SharingRequest::Contacts)? {
                SharingAnswer::Contacts(c) => c,
                _ => Vec::new(),
            };
            let from = |p: &weft_crypto::PersonId| {
                contacts
                    .iter()
                    .find(|c| c.person == *p)
                    .map(|c| c.name.clone())
                    .unwrap_or_else(|| format!("unverified person {}", p.fingerprint()))
            };
            if json {
                let v: Vec<_> = offers
                    .iter()
                    .map(|o| {
                        serde_json::json!({
                            "folder": o.folder.to_string(), "name": o.name,
                            "owner": o.owner.to_string(), "from": from(&o.owner),
                            "role": o.role.to_string(), "declined": o.declined,
                        })
                    })
                    .collect();
                print_json(&v)?;
            } else if offers.is_empty() {
                println!("No folders shared with you (they arrive through a relay you both use).");
            } else {
                for o in &offers {
                    println!(
                        "{:<20} {}  from {} as {}{}",
                        o.name,
                        o.folder,
                        from(&o.owner),
                        o.role,
                        if o.declined { " (declined)" } else { "" }
                    );
                }
            }
        }
        Cmd::Accept { share, path } => {
            let path = match path {
                Some(p) => Some(PathBuf::from(absolute(&p)?)),
                None => None,
            };
            let SharingAnswer::Accepted { name, root, .. } =
                sharing(&home, SharingRequest::Accept { share, path })?
            else {
                bail!("unexpected answer from the node");
            };
            if json {
                print_json(&serde_json::json!({ "name": name, "path": root }))?;
            } else {
                println!("accepted {name}: it syncs into {}", root.display());
            }
        }
        Cmd::Contact(ContactCmd::Add { person, name, yes }) => {
            let person: weft_crypto::PersonId = person
                .trim()
                .parse()
                .context("not a person id (it is the `person id` line of their `weft id`)")?;
            if !yes {
                use std::io::{BufRead, Write};
                eprintln!("fingerprint of {person}:");
                eprintln!("  {}", person.fingerprint());
                eprint!("Does {name}'s `weft id` show exactly this fingerprint? [y/N] ");
                std::io::stderr().flush()?;
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    bail!(
                        "not added: compare the fingerprints first (a different one means a different person, or an attack)"
                    );
                }
            }
            let SharingAnswer::Contact(c) =
                sharing(&home, SharingRequest::ContactAdd { person, name })?
            else {
                bail!("unexpected answer from the node");
            };
            if json {
                print_json(&serde_json::json!({
                    "person": c.person.to_string(), "name": c.name,
                    "fingerprint": c.person.fingerprint(),
                }))?;
            } else {
                println!("added contact {:?} ({})", c.name, c.person);
            }
        }
        Cmd::Link(args) => {
            link(&home, args, json)?;
        }
        Cmd::Get { url, out, password } => {
            let password = if password {
                Some(links::read_password("Password: ")?)
            } else {
                None
            };
            let got = links::get(&url, out, password)?;
            if json {
                print_json(&got)?;
            } else {
                println!(
                    "wrote {} ({} file{}, {}), verified",
                    got.path,
                    got.files,
                    if got.files == 1 { "" } else { "s" },
                    human_bytes(got.bytes)
                );
            }
        }
        Cmd::Contact(ContactCmd::List) => {
            let SharingAnswer::Contacts(contacts) = sharing(&home, SharingRequest::Contacts)?
            else {
                bail!("unexpected answer from the node");
            };
            if json {
                let v: Vec<_> = contacts
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "person": c.person.to_string(), "name": c.name,
                            "fingerprint": c.person.fingerprint(), "added_ms": c.added_ms,
                        })
                    })
                    .collect();
                print_json(&v)?;
            } else if contacts.is_empty() {
                println!("No contacts: add one with `weft contact add PERSON_ID --name NAME`.");
            } else {
                for c in &contacts {
                    println!("{:<20} {}  {}", c.name, c.person, c.person.fingerprint());
                }
            }
        }
        Cmd::Conflicts => {
            let copies: Vec<(String, String, String)> = if node_running(&home) {
                let ControlResponse::Conflicts { copies } =
                    control(&home, ControlRequest::Conflicts)?
                else {
                    bail!("unexpected answer from the node");
                };
                copies
            } else {
                let store = open(&home)?;
                let mut all = Vec::new();
                for f in store.folders()? {
                    for (path, _) in store.index_rows(&f)? {
                        if path
                            .file_name()
                            .windows(15)
                            .any(|w| w == b".sync-conflict-")
                        {
                            let on_disk = path.to_path(&f.root_path()).display().to_string();
                            all.push((f.name.clone(), path.to_string(), on_disk));
                        }
                    }
                }
                all
            };
            if json {
                let v: Vec<_> = copies
                    .iter()
                    .map(|(f, p, d)| serde_json::json!({"folder": f, "path": p, "on_disk": d}))
                    .collect();
                print_json(&v)?;
            } else if copies.is_empty() {
                println!("No conflicts.");
            } else {
                for (_, _, d) in copies {
                    println!("{d}");
                }
            }
        }
    }
    Ok(0)
}

fn relay_line(r: &weft_node::upload::RelayStatus) -> String {
    let mut line = format!(
        "relay {} ({}): {}",
        r.address,
        if r.connected {
            "connected"
        } else {
            "not connected"
        },
        r.state
    );
    if let Some(e) = &r.last_error {
        line += &format!(" — {e}");
    }
    if let Some(rb) = &r.rollback
        && r.last_error.as_deref() != Some(rb.as_str())
    {
        line += &format!(" — warning: {rb}");
    }
    line
}

fn relay(home: &Home, cmd: RelayCmd, json: bool) -> Result<i32> {
    match cmd {
        RelayCmd::Gc {
            data,
            retention_days,
        } => {
            if !data.join("relay.redb").exists() {
                bail!("{} holds no relay (no relay.redb)", data.display());
            }
            let store = weft_relay::storage::RelayStore::open(
                &data,
                weft_relay::storage::StorageConfig::default(),
            )
            .with_context(|| {
                format!(
                    "cannot open the relay in {} (stop it first)",
                    data.display()
                )
            })?;
            let g = weft_relay::server::collect_garbage(&store, retention_days)?;
            if json {
                print_json(&serde_json::json!({
                    "chunks_forgotten": g.chunks, "bytes_forgotten": g.bytes,
                    "files_removed": g.files, "bytes_freed": g.file_bytes,
                }))?;
            } else {
                println!(
                    "forgot {} chunks ({}) no retained version needs; removed {} files, freed {}",
                    g.chunks,
                    human_bytes(g.bytes),
                    g.files,
                    human_bytes(g.file_bytes)
                );
            }
        }
        RelayCmd::Serve {
            data,
            listen,
            http,
            public_url,
            quota_per_person,
            retention_days,
        } => {
            let mut cfg = weft_relay::server::ServeConfig::new(data);
            cfg.listen = listen
                .iter()
                .map(|a| a.parse())
                .collect::<Result<_, _>>()
                .context("bad --listen address")?;
            cfg.http = http;
            cfg.public_url = public_url;
            cfg.quota_per_person = quota_per_person;
            cfg.retention_days = retention_days;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(weft_relay::server::serve(
                cfg,
                move |addrs| {
                    if json {
                        let v: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                        let _ = print_json(&serde_json::json!({ "listen": v }));
                    } else {
                        println!("weft relay serving; devices add it with `weft relay add ADDR`:");
                        for a in &addrs {
                            println!("{a}");
                        }
                    }
                },
                shutdown_signal(),
            ))?;
            if !json {
                println!("relay stopped.");
            }
        }
        RelayCmd::Add { addr } => {
            let message = if node_running(home) {
                let ControlResponse::Relay { message } =
                    control(home, ControlRequest::RelayAdd { addr })?
                else {
                    bail!("unexpected answer from the node");
                };
                message
            } else {
                let ma: libp2p::Multiaddr = addr.parse().context("not a multiaddr")?;
                if !matches!(ma.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
                    bail!(
                        "the address must end in /p2p/<relay id> (as `weft relay serve` prints it)"
                    );
                }
                let store = open(home)?;
                if store.add_relay(&addr)? {
                    format!("added relay {addr}; the node backs up to it when it runs (`weft up`)")
                } else {
                    format!("relay {addr} was already added")
                }
            };
            if json {
                print_json(&serde_json::json!({ "message": message }))?;
            } else {
                println!("{message}");
            }
        }
        RelayCmd::Remove { addr } => {
            let message = if node_running(home) {
                let ControlResponse::Relay { message } =
                    control(home, ControlRequest::RelayRemove { addr })?
                else {
                    bail!("unexpected answer from the node");
                };
                message
            } else {
                let store = open(home)?;
                if !store.remove_relay(&addr)? {
                    bail!("{addr} is not one of this device's relays (see `weft relay list`)");
                }
                format!("removed relay {addr}")
            };
            if json {
                print_json(&serde_json::json!({ "message": message }))?;
            } else {
                println!("{message}");
            }
        }
        RelayCmd::List => {
            let relays: Vec<weft_node::upload::RelayStatus> = if node_running(home) {
                let ControlResponse::Status { relays, .. } = control(home, ControlRequest::Status)?
                else {
                    bail!("unexpected answer from the node");
                };
                relays
            } else {
                open(home)?
                    .relays()?
                    .into_iter()
                    .map(|address| weft_node::upload::RelayStatus {
                        address,
                        state: "node not running".into(),
                        ..Default::default()
                    })
                    .collect()
            };
            if json {
                print_json(&relays)?;
            } else if relays.is_empty() {
                println!("No relays: add one with `weft relay add ADDR`.");
            } else {
                for r in &relays {
                    println!("{}", relay_line(r));
                }
            }
        }
    }
    Ok(0)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn up(
    home: &Home,
    path: Option<PathBuf>,
    listen: Vec<String>,
    peer: Vec<String>,
    no_mdns: bool,
    json: bool,
) -> Result<i32> {
    if let Some(p) = &path
        && !p.is_dir()
    {
        bail!(
            "{} is not a directory: create it first (mkdir -p {})",
            p.display(),
            p.display()
        );
    }
    if !home.is_initialized() {
        let (id, _) = home.init(&default_device_name(), now_ms())?;
        println!(
            "Initialized weft in {} (device {}, person {})",
            home.root().display(),
            id.device_id(),
            id.person_id()
        );
        println!(
            "Your recovery key (write it down, keep it secret; with it and a relay a new device gets your folders back; `weft recovery-key` shows it again):\n  {}",
            weft_crypto::recovery::encode(&id.person)
        );
    }
    if let Some(p) = path {
        let store = open(home)?;
        let canon = std::fs::canonicalize(&p).with_context(|| format!("{}", p.display()))?;
        if !store.folders()?.iter().any(|f| f.root_path() == canon) {
            let rec = store.add_folder(&p, None)?;
            println!(
                "Added folder {:?} at {}",
                rec.name,
                rec.root_path().display()
            );
        }
    }
    let mut cfg = weft_node::NodeConfig::default();
    if !listen.is_empty() {
        cfg.listen = listen
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()
            .context("bad --listen address")?;
    }
    cfg.peers = peer
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .context("bad --peer address")?;
    cfg.mdns = !no_mdns;
    let _ = json;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(weft_node::start(home, cfg, shutdown_signal()))?;
    println!("weft stopped.");
    Ok(0)
}

fn default_device_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "device".into())
}

/// A progress bar on a terminal, nothing otherwise.
struct Bar(Option<indicatif::ProgressBar>);

impl Progress for Bar {
    fn start(&self, files: u64, bytes: u64) {
        if let Some(b) = &self.0 {
            b.set_length(bytes);
            b.set_message(format!("{files} files"));
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc(bytes);
        }
    }
    fn warn(&self, msg: &str) {
        match &self.0 {
            Some(b) => b.println(format!("warning: {msg}")),
            None => eprintln!("warning: {msg}"),
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

fn scan_one(store: &Store, f: &weft_store::db::FolderRecord, json: bool) -> Result<ScanSummary> {
    let bar = if !json && std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} scanning {msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let s = store.scan(f, &Bar(bar)).with_context(|| {
        format!(
            "scan of folder {:?} failed; nothing after the last completed batch was recorded",
            f.name
        )
    })?;
    Ok(s)
}

fn summary_line(s: &ScanSummary) -> String {
    let secs = s.elapsed_ms as f64 / 1000.0;
    let rate = if secs > 0.0 {
        s.bytes_read as f64 / secs
    } else {
        0.0
    };
    format!(
        "{}: {} added, {} changed, {} deleted, {} moved, {} dirs added, {} dirs deleted; {} read in {:.2} s ({}/s); {} new chunks ({}), {} log entries{}",
        s.folder,
        s.files_added,
        s.files_changed,
        s.files_deleted,
        s.files_moved,
        s.dirs_added,
        s.dirs_deleted,
        human_bytes(s.bytes_read),
        secs,
        human_bytes(rate as u64),
        s.new_chunks,
        human_bytes(s.new_chunk_bytes),
        s.log_entries,
        if s.warnings.is_empty() {
            String::new()
        } else {
            format!("; {} warning(s)", s.warnings.len())
        }
    )
}
