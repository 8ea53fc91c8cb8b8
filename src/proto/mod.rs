//! Sans-IO protocol code: bytes in, bytes and events out.
//!
//! Nothing in this module opens a socket, starts a thread, reads a clock or
//! draws randomness: callers feed it received bytes and the random numbers it
//! needs, and take from it the bytes to write and the outcomes. The gate, the
//! blocking client and the load generator all drive the same code. The one
//! exception is the TLS stage ([`tls`]): rustls draws its own randomness for
//! its keys; it is sans-IO all the same.

pub mod announce;
pub mod client;
pub mod crypt;
pub mod dh64;
pub mod frame;
pub mod kcp;
pub mod message;
pub mod rc4;
pub mod replay;
pub mod server;
pub mod session;
pub mod skynet;
pub mod stable;
pub mod tls;
pub mod ws;
pub mod ws_client;
