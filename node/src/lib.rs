//! weft's node: a participant in the mesh.
//!
//! Not built yet. This crate will own the libp2p swarm and weft's protocols
//! (`/weft/sync/1`, `/weft/chunk/1`, `/weft/pair/1`), the file watcher, the transfer
//! scheduler, applying remote changes to disk atomically, and the control API the CLI
//! talks to. It builds on `weft_store::store::accept_entry` for every received entry.
