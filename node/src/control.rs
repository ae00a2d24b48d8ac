//! The control socket: how the `weft` command talks to a running node.
//!
//! A Unix socket `control.sock` in the home directory, mode 0600 (the home is 0700):
//! one JSON request per line, one JSON response per line.
use crate::NodeError;
use crate::apply::FolderStatus;
use crate::node::Cmd;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use weft_store::Home;

/// Longest request line accepted.
const MAX_LINE: usize = 64 << 10;

/// Requests the CLI sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Peers and folders.
    Status,
    /// A new pairing code.
    Invite,
    /// Conflict copies, per folder.
    Conflicts,
    /// A file's versions.
    History {
        /// The file's absolute path.
        path: String,
    },
    /// Writes an old version back, fetching chunks from other devices if needed.
    Restore {
        /// The file's absolute path.
        path: String,
        /// The version number.
        version: u64,
        /// Where to write it instead of in place.
        to: Option<String>,
    },
    /// Starts backing up to a relay (a multiaddr ending in `/p2p/<id>`).
    RelayAdd {
        /// The relay's address.
        addr: String,
    },
    /// Stops using a relay.
    RelayRemove {
        /// The relay's address, as added.
        addr: String,
    },
    /// Contacts, sharing and offers (see [`crate::sharing`]).
    Sharing {
        /// The command.
        command: crate::sharing::SharingRequest,
    },
    /// Creates a share link (`weft link PATH`).
    LinkCreate {
        /// What to share and how.
        options: crate::links::LinkOptions,
    },
    /// The share links this device created.
    LinkList,
    /// Revokes a share link.
    LinkRevoke {
        /// Its token.
        token: String,
    },
}

/// One connected peer, for `weft status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its device id.
    pub id: String,
    /// Its name.
    pub name: Option<String>,
    /// The address of the connection.
    pub address: Option<String>,
    /// `direct` or `relayed`.
    pub connection: String,
    /// Round-trip time.
    pub latency_ms: Option<f64>,
}

/// Responses of the node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum ControlResponse {
    /// The node's state.
    Status {
        /// This device.
        device: String,
        /// Listen addresses.
        listen: Vec<String>,
        /// Connected devices of this person.
        peers: Vec<PeerStatus>,
        /// Folders.
        folders: Vec<FolderStatus>,
        /// Chunk bytes received since start.
        bytes_received: u64,
        /// Chunk bytes sent since start.
        bytes_sent: u64,
        /// The relays this device backs up to.
        #[serde(default)]
        relays: Vec<crate::upload::RelayStatus>,
        /// Names of folders shared with this person that wait for `weft accept` here.
        #[serde(default)]
        offers: Vec<String>,
    },
    /// A relay was added or removed.
    Relay {
        /// What happened, for a person.
        message: String,
    },
    /// The answer to a sharing command.
    Sharing {
        /// The answer.
        answer: crate::sharing::SharingAnswer,
    },
    /// A pairing code.
    Invite {
        /// The code.
        code: String,
        /// When it expires, Unix ms.
        expires_ms: u64,
    },
    /// `weft history` rows (as the CLI prints them with `--json`).
    History {
        /// The rows.
        items: serde_json::Value,
    },
    /// Conflict copies: folder name, path in the folder, path on disk.
    Conflicts {
        /// The copies.
        copies: Vec<(String, String, String)>,
    },
    /// What a restore did.
    Restored {
        /// The report.
        report: serde_json::Value,
    },
    /// A share link created or revoked.
    Link {
        /// The link.
        link: weft_store::links::LocalLink,
    },
    /// The share links this device created.
    Links {
        /// The links, oldest first.
        links: Vec<weft_store::links::LocalLink>,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// The socket's path.
pub fn socket_path(home: &Home) -> PathBuf {
    home.root().join("control.sock")
}

/// Starts serving the control socket.
pub fn serve(
    home: &Home,
    cmds: mpsc::Sender<Cmd>,
) -> Result<tokio::task::JoinHandle<()>, NodeError> {
    let path = socket_path(home);
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(NodeError::Control(format!(
            "a node is already running for {} (its control socket answers)",
            home.root().display()
        )));
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).map_err(|e| NodeError::Io {
        path: path.clone(),
        source: e,
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            NodeError::Io {
                path: path.clone(),
                source: e,
            }
        })?;
    }
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let cmds = cmds.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(r).take(MAX_LINE as u64).lines();
                let Ok(Some(line)) = lines.next_line().await else {
                    return;
                };
                let resp = match serde_json::from_str::<ControlRequest>(&line) {
                    Ok(req) => {
                        let (tx, rx) = oneshot::channel();
                        if cmds.send(Cmd::Control { req, reply: tx }).await.is_err() {
                            return;
                        }
                        rx.await.unwrap_or(ControlResponse::Error {
                            message: "node is shutting down".into(),
                        })
                    }
                    Err(e) => ControlResponse::Error {
                        message: format!("bad request: {e}"),
                    },
                };
                let mut out = serde_json::to_vec(&resp).unwrap_or_default();
                out.push(b'\n');
                let _ = w.write_all(&out).await;
            });
        }
    }))
}

use tokio::io::AsyncReadExt as _;

/// Sends one request to the node of `home` and waits for the answer.
pub fn request(home: &Home, req: &ControlRequest) -> Result<ControlResponse, NodeError> {
    let path = socket_path(home);
    let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(|_| {
        NodeError::Control(format!(
            "the weft node is not running for {} (start it with `weft up`)",
            home.root().display()
        ))
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut line = serde_json::to_vec(req).map_err(|e| NodeError::Control(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| NodeError::Control(format!("control socket: {e}")))?;
    let mut resp = String::new();
    BufReader::new(s)
        .take(16 << 20)
        .read_line(&mut resp)
        .map_err(|e| NodeError::Control(format!("control socket: {e}")))?;
    serde_json::from_str(&resp)
        .map_err(|e| NodeError::Control(format!("bad answer from the node: {e}")))
}
