//! What a session is connected to, as the shards see it: the built-in echo,
//! an upstream chosen by an [`UpstreamPolicy`], or the embedding program's
//! worker queues.
//!
//! The engine drives the sockets; the decisions (which upstream, what to
//! announce) belong to whoever implements the policy, so the engine needs
//! to know nothing of how hosts are configured.

use super::workers::WorkerHub;
use rand::RngCore;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The far side of every session of a gate.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Each session's bytes are sent back to it (no upstream configured).
    Echo,
    /// Each session gets its own upstream connection, as the policy decides.
    Proxy(Arc<dyn UpstreamPolicy>),
    /// Each session's frames go to the embedding program's worker threads.
    Workers(Arc<WorkerHub>),
}

/// One upstream a session may connect to, as the policy named it when the
/// session started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamChoice {
    /// The host's index in the policy's host list at that time: a key for
    /// per-host accounting, not something to look the address up by later.
    pub host: usize,
    /// Where to connect.
    pub addr: SocketAddr,
}

/// Proxy mode's decisions: which upstream a session connects to, over what,
/// and what the gate says first.
///
/// Every shard calls it from its own thread, hence `Send + Sync` and `&self`.
/// A policy may answer differently as time goes on (hosts reloaded, weights
/// moved by measurements): a shard asks once per session for that session's
/// [`candidates`](Self::candidates) and keeps the owned answer, so a session
/// keeps its choice while later sessions see the new one.
/// [`connect_timeout`](Self::connect_timeout) is read for each connect
/// attempt, so it may change too. [`scp`](Self::scp) describes the link
/// itself and is read whenever a shard needs it, so it should stay fixed
/// for the policy's life.
pub trait UpstreamPolicy: Send + Sync + Debug {
    /// The upstreams to try for a new session that asked for `target` (an
    /// SCP client's `targetServer`), first choice first; empty when none
    /// fits. `rng` is the shard's, for random choices.
    fn candidates(&self, target: Option<&str>, rng: &mut dyn RngCore) -> Vec<UpstreamChoice>;

    /// Whether the gate speaks SCP to upstreams (otherwise plain TCP).
    fn scp(&self) -> bool;

    /// The first bytes of a new upstream stream for a client at `client`
    /// that reached the gate at `local`; empty when nothing is announced.
    fn announcement(&self, client: SocketAddr, local: SocketAddr) -> Vec<u8>;

    /// How long one connect attempt may take.
    fn connect_timeout(&self) -> Duration;

    /// How many upstream hosts there are now (for status lines).
    fn host_count(&self) -> usize;
}
