//! ringgate: a connection gate for Linux on io_uring.
//!
//! It terminates large numbers of long-lived client connections, keeps each
//! session alive across reconnects with the stable connection protocol (SCP,
//! wire-compatible with goscon), and hands the byte stream to an upstream
//! server or to the embedding program's worker threads.
//!
//! Layers, each knowing nothing of those above it:
//! - [`proto`]: sans-IO protocol code (crypto, SCP handshake, sessions,
//!   replay window, frame codecs).
//! - [`config`]: the settings of `ringgate serve`, from ringgate's TOML or a
//!   goscon `config.yaml`.
//! - [`cli`]: the `ringgate` command line.

pub mod cli;
pub mod config;
pub mod proto;
