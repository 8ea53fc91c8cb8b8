//! What a session is connected to: an upstream server (proxy mode), the
//! application's worker threads ([`embedded`] mode) or the built-in echo.
//!
//! This module holds the decisions — which upstream, what to announce — and
//! no I/O: the engine's shards drive the sockets and ask [`Proxy`], through
//! the engine's [`UpstreamPolicy`], what to do.

pub mod embedded;
pub mod events;
pub mod resolv;
pub mod skynet;
pub mod upstream;

use arc_swap::ArcSwap;
use rand::RngCore;
use rand::seq::SliceRandom;
use resolv::Answer;
use std::net::SocketAddr;
use std::sync::Arc;
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
    /// goscon's `resolv`: a `targetServer` naming no host is looked up in
    /// DNS. `None`: off.
    pub resolv: Option<Arc<resolv::Resolver>>,
}

impl UpstreamPolicy for Proxy {
    fn candidates(&self, target: Option<&str>, mut rng: &mut dyn RngCore) -> Vec<UpstreamChoice> {
        let hosts = self.upstreams.hosts();
        if let (Some(resolver), Some(name)) = (&self.resolv, target)
            && !name.is_empty()
            && resolver.matches(name)
            && !hosts.iter().any(|h| h.name == name)
        {
            match resolver.lookup(name) {
                Answer::Found(addrs) => {
                    // All addresses of the name, in random order, the later
                    // ones as fallbacks; their accounting key is one past
                    // the static hosts.
                    let mut addrs = addrs.to_vec();
                    addrs.shuffle(&mut rng);
                    return addrs
                        .into_iter()
                        .map(|addr| UpstreamChoice {
                            host: hosts.len(),
                            addr,
                        })
                        .collect();
                }
                // goscon sends a name that does not resolve to a host drawn
                // from all of them, as one naming no host.
                Answer::NotFound => {}
                // The session cannot wait for the lookup here: it closes as
                // unreachable rather than go to a server it did not ask for,
                // and the client's retry finds the answer.
                Answer::Pending => return Vec::new(),
            }
        }
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

/// A [`Proxy`] whose settings can be replaced while the gate runs: a
/// session asks for its candidates once, when it starts, so a replacement
/// reaches new sessions at once and leaves live ones on their upstreams.
/// The link kind (`net`) describes sessions already running and so is kept
/// from the first settings (see [`ReloadableProxy::replace`]).
#[derive(Debug)]
pub struct ReloadableProxy {
    current: ArcSwap<Proxy>,
}

impl ReloadableProxy {
    /// Starts with `proxy`.
    pub fn new(proxy: Proxy) -> Self {
        ReloadableProxy {
            current: ArcSwap::from_pointee(proxy),
        }
    }

    /// The settings in force.
    pub fn current(&self) -> Arc<Proxy> {
        self.current.load_full()
    }

    /// Puts `proxy` in force for new sessions; its `net` is replaced by the
    /// one in force, which only a restart changes. A resolver with the same
    /// settings as the one in force is replaced by that one, so its cache
    /// carries over (and the new one's thread ends).
    pub fn replace(&self, mut proxy: Proxy) {
        let current = self.current.load();
        proxy.net = current.net;
        if let (Some(old), Some(new)) = (&current.resolv, &proxy.resolv)
            && old.settings() == new.settings()
        {
            proxy.resolv = Some(old.clone());
        }
        self.current.store(Arc::new(proxy));
    }
}

impl UpstreamPolicy for ReloadableProxy {
    fn candidates(&self, target: Option<&str>, rng: &mut dyn RngCore) -> Vec<UpstreamChoice> {
        self.current.load().candidates(target, rng)
    }

    fn scp(&self) -> bool {
        self.current.load().scp()
    }

    fn announcement(&self, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
        self.current.load().announcement(client, local)
    }

    fn connect_timeout(&self) -> Duration {
        self.current.load().connect_timeout
    }

    fn host_count(&self) -> usize {
        self.current.load().host_count()
    }
}
