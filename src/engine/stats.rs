//! The gate's counters.
//!
//! Each shard writes only its own `ShardStats` (relaxed increments on a
//! cache line no other writer touches); readers sum the shards when they
//! look ([`super::Stats`], [`ShardSnapshot`], [`HostSnapshot`]), so counting costs
//! the data path no shared cache line.

use super::session::CloseReason;
use crate::proto::message::Status;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Every close reason, in the order of [`close_reason_index`].
pub const CLOSE_REASONS: [CloseReason; 11] = [
    CloseReason::ClientClosed,
    CloseReason::UpstreamClosed,
    CloseReason::UpstreamUnreachable,
    CloseReason::UpstreamError,
    CloseReason::UpstreamHandshake,
    CloseReason::ReuseTimeout,
    CloseReason::ReplayExceeded,
    CloseReason::Kicked,
    CloseReason::ProtocolError,
    CloseReason::SendOverflow,
    CloseReason::Shutdown,
];

/// The position of `r` in [`CLOSE_REASONS`].
pub fn close_reason_index(r: CloseReason) -> usize {
    CLOSE_REASONS.iter().position(|&x| x == r).unwrap_or(0)
}

/// A short label for a close reason (a metric label value).
pub fn close_reason_label(r: CloseReason) -> &'static str {
    match r {
        CloseReason::ClientClosed => "client_closed",
        CloseReason::UpstreamClosed => "upstream_closed",
        CloseReason::UpstreamUnreachable => "upstream_unreachable",
        CloseReason::UpstreamError => "upstream_error",
        CloseReason::UpstreamHandshake => "upstream_handshake",
        CloseReason::ReuseTimeout => "reuse_timeout",
        CloseReason::ReplayExceeded => "replay_exceeded",
        CloseReason::Kicked => "kicked",
        CloseReason::ProtocolError => "protocol_error",
        CloseReason::SendOverflow => "send_overflow",
        CloseReason::Shutdown => "shutdown",
    }
}

/// The answer codes a resume can be refused with, in counter order.
pub const REFUSAL_CODES: [Status; 6] = [
    Status::BadRequest,
    Status::Unauthorized,
    Status::IndexExpired,
    Status::NotFound,
    Status::NotAcceptable,
    Status::NetworkError,
];

/// Upper bounds (seconds) of the upstream connect latency buckets; one
/// more bucket counts everything slower.
pub const CONNECT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counters of one upstream address, kept by each shard that connects to it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HostSnapshot {
    /// Connections established.
    pub connects: u64,
    /// Connect attempts that failed (refused, timed out, no socket).
    pub failures: u64,
    /// Established connections by latency bucket ([`CONNECT_BUCKETS`], then
    /// one for slower), not cumulative.
    pub latency_buckets: [u64; CONNECT_BUCKETS.len() + 1],
    /// Seconds spent connecting, summed over established connections.
    pub latency_sum: f64,
}

impl HostSnapshot {
    fn add(&mut self, o: &HostSnapshot) {
        self.connects += o.connects;
        self.failures += o.failures;
        for (a, b) in self.latency_buckets.iter_mut().zip(o.latency_buckets) {
            *a += b;
        }
        self.latency_sum += o.latency_sum;
    }
}

/// Counters of one shard. Aligned so that they share no cache line with
/// what other threads write (the shard's wake flag and queues).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct ShardStats {
    pub(crate) accepted: AtomicU64,
    pub(crate) sessions_opened: AtomicU64,
    pub(crate) sessions_resumed: AtomicU64,
    pub(crate) sessions_closed: AtomicU64,
    pub(crate) resumes_failed: AtomicU64,
    pub(crate) handshake_failed: AtomicU64,
    pub(crate) handoffs_out: AtomicU64,
    pub(crate) handoffs_in: AtomicU64,
    pub(crate) upstream_failed: AtomicU64,
    pub(crate) paused: AtomicU64,
    pub(crate) worker_full: AtomicU64,
    pub(crate) accept_pauses: AtomicU64,
    /// Sessions waiting for a resume now (raised on detach, lowered on
    /// resume or close; only the owning shard writes it).
    pub(crate) detached: AtomicU64,
    pub(crate) closed_by: [AtomicU64; CLOSE_REASONS.len()],
    pub(crate) refused_by: [AtomicU64; REFUSAL_CODES.len()],
    pub(crate) resend_bytes: AtomicU64,
    pub(crate) client_rx_bytes: AtomicU64,
    pub(crate) client_tx_bytes: AtomicU64,
    pub(crate) upstream_rx_bytes: AtomicU64,
    pub(crate) upstream_tx_bytes: AtomicU64,
    pub(crate) recv_nobufs: AtomicU64,
    pub(crate) new_refused_draining: AtomicU64,
    /// Direct descriptors in use and the table's size (set each tick).
    pub(crate) table_used: AtomicU64,
    pub(crate) handoffs_parked: AtomicU64,
    pub(crate) table_size: AtomicU64,
    /// KCP conversations held now (set each tick), and datagrams dropped
    /// (for no conversation, refused by one, or over the cap).
    pub(crate) kcp_conversations: AtomicU64,
    pub(crate) kcp_dropped: AtomicU64,
    /// Per upstream address; locked once per connect attempt by the shard
    /// and at a scrape by the reader, so never contended on the data path.
    pub(crate) hosts: Mutex<HashMap<SocketAddr, HostSnapshot>>,
}

impl ShardStats {
    /// Records one connect attempt's outcome for `addr`; `latency` is the
    /// time an established connection took.
    pub(crate) fn upstream_connect(&self, addr: SocketAddr, latency: Option<Duration>) {
        let Ok(mut hosts) = self.hosts.lock() else {
            return;
        };
        let h = hosts.entry(addr).or_default();
        match latency {
            Some(d) => {
                h.connects += 1;
                let secs = d.as_secs_f64();
                let b = CONNECT_BUCKETS
                    .iter()
                    .position(|&le| secs <= le)
                    .unwrap_or(CONNECT_BUCKETS.len());
                h.latency_buckets[b] += 1;
                h.latency_sum += secs;
            }
            None => h.failures += 1,
        }
    }

    pub(crate) fn refused(&self, status: Status) {
        if let Some(i) = REFUSAL_CODES.iter().position(|&s| s == status) {
            self.refused_by[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closed_by[close_reason_index(reason)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ShardSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut closed_by = [0; CLOSE_REASONS.len()];
        for (o, a) in closed_by.iter_mut().zip(&self.closed_by) {
            *o = get(a);
        }
        let mut refused_by = [0; REFUSAL_CODES.len()];
        for (o, a) in refused_by.iter_mut().zip(&self.refused_by) {
            *o = get(a);
        }
        ShardSnapshot {
            accepted: get(&self.accepted),
            sessions_opened: get(&self.sessions_opened),
            sessions_resumed: get(&self.sessions_resumed),
            sessions_closed: get(&self.sessions_closed),
            resumes_failed: get(&self.resumes_failed),
            handshake_failed: get(&self.handshake_failed),
            handoffs_out: get(&self.handoffs_out),
            handoffs_in: get(&self.handoffs_in),
            upstream_failed: get(&self.upstream_failed),
            backpressure_pauses: get(&self.paused),
            worker_queue_full: get(&self.worker_full),
            accept_pauses: get(&self.accept_pauses),
            detached: get(&self.detached),
            closed_by,
            refused_by,
            resend_bytes: get(&self.resend_bytes),
            client_rx_bytes: get(&self.client_rx_bytes),
            client_tx_bytes: get(&self.client_tx_bytes),
            upstream_rx_bytes: get(&self.upstream_rx_bytes),
            upstream_tx_bytes: get(&self.upstream_tx_bytes),
            recv_nobufs: get(&self.recv_nobufs),
            new_refused_draining: get(&self.new_refused_draining),
            table_used: get(&self.table_used),
            handoffs_parked: get(&self.handoffs_parked),
            table_size: get(&self.table_size),
            kcp_conversations: get(&self.kcp_conversations),
            kcp_dropped: get(&self.kcp_dropped),
            commands_queued: 0,
        }
    }
}

/// One shard's counters at one moment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// Connections accepted.
    pub accepted: u64,
    /// Sessions opened (new-session handshakes, or plain connections).
    pub sessions_opened: u64,
    /// Successful resumes.
    pub sessions_resumed: u64,
    /// Sessions closed.
    pub sessions_closed: u64,
    /// Resume requests answered with an error code.
    pub resumes_failed: u64,
    /// Handshakes that failed (garbage, timeout, closed, refused by a limit).
    pub handshake_failed: u64,
    /// Resumes this shard handed to their owning shard.
    pub handoffs_out: u64,
    /// Resumes this shard received from another.
    pub handoffs_in: u64,
    /// Sessions closed because no upstream could be reached.
    pub upstream_failed: u64,
    /// Times reading from a peer paused because the other side was full.
    pub backpressure_pauses: u64,
    /// Embedded mode: times a session found its worker's queue full.
    pub worker_queue_full: u64,
    /// Times the shard stopped accepting because its descriptor table was
    /// nearly full.
    pub accept_pauses: u64,
    /// Sessions waiting for their client to resume, now.
    pub detached: u64,
    /// Sessions closed, by [`CLOSE_REASONS`].
    pub closed_by: [u64; CLOSE_REASONS.len()],
    /// Resumes refused, by [`REFUSAL_CODES`].
    pub refused_by: [u64; REFUSAL_CODES.len()],
    /// Bytes replayed to clients on resume.
    pub resend_bytes: u64,
    /// Bytes received from clients (as on the wire).
    pub client_rx_bytes: u64,
    /// Bytes sent to clients (as on the wire, replays included).
    pub client_tx_bytes: u64,
    /// Bytes received from upstreams.
    pub upstream_rx_bytes: u64,
    /// Bytes sent to upstreams.
    pub upstream_tx_bytes: u64,
    /// Receives that found no provided buffer free (ENOBUFS) and were re-armed.
    pub recv_nobufs: u64,
    /// New sessions refused because the gate is draining.
    pub new_refused_draining: u64,
    /// Direct descriptors in use.
    pub table_used: u64,
    /// Size of the direct-descriptor table.
    pub table_size: u64,
    /// Hand-over messages from other shards whose connection has not
    /// arrived yet (one whose hand-over failed is dropped after the
    /// handshake timeout).
    pub handoffs_parked: u64,
    /// KCP conversations held (closed ones still delivering included).
    pub kcp_conversations: u64,
    /// KCP datagrams dropped: from an address without a conversation and
    /// not opening one, refused by their conversation, or over the cap.
    pub kcp_dropped: u64,
    /// Embedded mode: application commands waiting in the shard's queue.
    pub commands_queued: u64,
}

impl ShardSnapshot {
    /// Sessions open now (connected or waiting for a resume).
    pub fn live(&self) -> u64 {
        self.sessions_opened.saturating_sub(self.sessions_closed)
    }
}

/// Counters of every upstream address, summed over shards.
pub(crate) fn sum_hosts<'a>(
    shards: impl Iterator<Item = &'a ShardStats>,
) -> Vec<(SocketAddr, HostSnapshot)> {
    let mut all: HashMap<SocketAddr, HostSnapshot> = HashMap::new();
    for s in shards {
        if let Ok(hosts) = s.hosts.lock() {
            for (addr, h) in hosts.iter() {
                all.entry(*addr).or_default().add(h);
            }
        }
    }
    let mut v: Vec<_> = all.into_iter().collect();
    v.sort_by_key(|(a, _)| *a);
    v
}
