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
//! - [`engine`]: io_uring, thread per core: shards, rings, timers, buffers.
//! - [`gate`]: what a session is connected to (an upstream, the echo, or
//!   the embedding program's worker threads).
//! - [`client`]: the client side over real sockets.
//! - [`config`]: the settings of `ringgate serve`, from ringgate's TOML or a
//!   goscon `config.yaml`.
//! - [`cli`]: the `ringgate` command line.
//!
//! To run the gate inside your own process, use [`gate::embedded`]: a
//! [`Builder`](gate::embedded::Builder) starts the shards and hands each
//! worker thread an [`EventReceiver`](gate::embedded::EventReceiver) of
//! session events and frames; a [`Handle`](gate::embedded::Handle) sends
//! frames back, broadcasts, kicks and shuts down.

pub mod cli;
pub mod client;
pub mod config;
pub mod engine;
pub mod gate;
pub mod proto;
