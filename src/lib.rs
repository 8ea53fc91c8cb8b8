//! ringgate: a connection gate for Linux on io_uring.
//!
//! It terminates large numbers of long-lived client connections, keeps each
//! session alive across reconnects with the stable connection protocol (SCP,
//! wire-compatible with goscon), and hands the byte stream to an upstream
//! server or to the embedding program's worker threads.
//!
//! Modules, each using only those listed before it (client not gate
//! either), so the arrows point one way: proto <- engine <- gate <- config
//! <- admin <- cli, with client beside gate. `tests/layers.rs` checks it.
//! - [`proto`]: sans-IO protocol code (crypto, SCP handshake, sessions,
//!   replay window, frame codecs, WebSocket, the TLS stage on rustls).
//!   Names no other module.
//! - [`engine`]: io_uring, thread per core: shards, rings, timers, buffers,
//!   session ids, and the shape of what a session is connected to
//!   ([`engine::Backend`], [`engine::UpstreamPolicy`], the worker queues).
//!   Uses proto.
//! - [`gate`]: what a session is connected to: the proxy-mode decisions
//!   ([`gate::Proxy`], an upstream policy) and the embedded front end.
//!   Uses engine and proto.
//! - [`client`]: the client side over real sockets. Uses engine and proto.
//! - [`config`]: the settings of `ringgate serve`, from ringgate's TOML or a
//!   goscon `config.yaml`, turned into an engine config with a gate backend.
//!   Uses gate, engine and proto.
//! - [`admin`]: operating a running gate: Prometheus metrics, the settings
//!   in force, reload, drain and sessions, over HTTP. Uses config, gate,
//!   engine and proto.
//! - [`cli`]: the `ringgate` command line. Uses all of the above.
//!
//! To run the gate inside your own process, use [`gate::embedded`]: a
//! [`Builder`](gate::embedded::Builder) starts the shards and hands each
//! worker thread an [`EventReceiver`](gate::embedded::EventReceiver) of
//! session events and frames; a [`Handle`](gate::embedded::Handle) sends
//! frames back, broadcasts, kicks and shuts down.

pub mod admin;
pub mod cli;
pub mod client;
pub mod config;
pub mod engine;
pub mod gate;
pub mod proto;
