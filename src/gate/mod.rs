//! What a session is connected to: an upstream server (proxy mode), the
//! application's worker threads ([`embedded`] mode) or the built-in echo.
//!
//! This module holds the decisions — which upstream, what to announce — and
//! no I/O: the engine's shards drive the sockets.

pub mod embedded;
pub mod upstream;

use std::net::SocketAddr;
use std::time::Duration;
pub use upstream::{Host, Upstreams};

pub use crate::config::{Announce, UpstreamNet};

impl Announce {
    /// The first bytes of a new upstream stream for a client at `client`
    /// that reached the gate at `local`; empty when nothing is announced.
    pub fn bytes(&self, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
        match self {
            Announce::None => Vec::new(),
            Announce::Sproto { type_ } => crate::proto::announce::sproto_announce(
                *type_,
                &client.to_string(),
                &local.to_string(),
            ),
            Announce::ProxyV2 => crate::proto::announce::proxy_v2_header(client, local),
        }
    }
}

/// Proxy mode settings.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Where sessions go.
    pub upstreams: Upstreams,
    /// Plain TCP or SCP to the upstream.
    pub net: UpstreamNet,
    /// Client address announcement.
    pub announce: Announce,
    /// How long one connect attempt may take.
    pub connect_timeout: Duration,
}

/// The far side of every session of a gate.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Each session's bytes are sent back to it (no upstream configured).
    Echo,
    /// Each session gets its own upstream connection.
    Proxy(std::sync::Arc<Proxy>),
    /// Each session's frames go to worker threads ([`embedded`] mode; made
    /// by [`embedded::Builder`]).
    Workers(std::sync::Arc<embedded::WorkerHub>),
}
