//! What a session is connected to: an upstream server (proxy mode), the
//! application's worker threads ([`embedded`] mode) or the built-in echo.
//!
//! This module holds the decisions — which upstream, what to announce — and
//! no I/O: the engine's shards drive the sockets and ask [`Proxy`], through
//! the engine's [`UpstreamPolicy`], what to do.

pub mod embedded;
pub mod upstream;

use rand::RngCore;
use std::net::SocketAddr;
use std::time::Duration;
pub use upstream::{Host, Upstreams};

pub use crate::engine::backend::{Backend, UpstreamChoice, UpstreamPolicy};

/// How the gate connects to an upstream server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpstreamNet {
    /// Plain TCP.
    #[default]
    Tcp,
    /// SCP over TCP, so that the gate-to-upstream link survives reconnects too.
    Scp,
}

/// What the gate sends first on a new upstream connection so that the
/// backend learns the client's real address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Announce {
    /// Nothing.
    #[default]
    None,
    /// goscon's sproto `announce{remote_addr, local_addr}` message, with this
    /// package type. Written `sproto:<type>`.
    Sproto {
        /// The sproto package `type` field.
        type_: u32,
    },
    /// A PROXY protocol v2 header. Written `proxy-v2`.
    ProxyV2,
}

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

/// Proxy mode settings; the shards read them through [`UpstreamPolicy`].
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

impl UpstreamPolicy for Proxy {
    fn candidates(&self, target: Option<&str>, mut rng: &mut dyn RngCore) -> Vec<UpstreamChoice> {
        let hosts = self.upstreams.hosts();
        self.upstreams
            .order(target, &mut rng)
            .into_iter()
            .map(|host| UpstreamChoice {
                host,
                addr: hosts[host].addr,
            })
            .collect()
    }

    fn scp(&self) -> bool {
        self.net == UpstreamNet::Scp
    }

    fn announcement(&self, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
        self.announce.bytes(client, local)
    }

    fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    fn host_count(&self) -> usize {
        self.upstreams.hosts().len()
    }
}
