//! weft's relay: a node with the relay role, which never holds a key.
//!
//! - [`storage`]: durable, verified storage of the signed log entries and ciphertext
//!   chunks of the folders whose owners enabled this relay, with per-person quotas.
//! - `server`: the libp2p swarm that serves `/weft/store/1` uploads and the sync and
//!   chunk protocols for downloads.
//! - `links`: share links as the relay keeps and checks them; `web`: the HTTP server
//!   (`/metrics`, the share-link page and its API, the access log).
pub mod links;
pub mod server;
pub mod storage;
pub mod web;
