//! End-to-end tests that run several weft nodes and a relay on loopback.
//!
//! Multi-device tests arrive with the node crate; single-device end-to-end tests of the
//! `weft` command live in `cli/tests/`, where Cargo can hand them the built binary.
