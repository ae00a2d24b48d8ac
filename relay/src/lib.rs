//! weft's relay: a node with the relay role.
//!
//! Not built yet. This crate will own circuit relay v2, DCUtR and rendezvous service,
//! durable ciphertext storage of the folders it serves, quotas, and the HTTP server
//! for share links. It never holds a key.
