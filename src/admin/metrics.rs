//! The Prometheus exposition: the shards' counters, summed when scraped,
//! encoded by `prometheus-client` in the OpenMetrics text format, which
//! Prometheus asks for; other readers (promtool, curl) get the classic
//! Prometheus text format, which differs only in naming counter families
//! with their `_total` suffix and in having no `# EOF`.
//!
//! Names start with `ringgate_`; counters end in `_total`. The README's
//! "Operating" section maps goscon's metric names onto these.

use crate::engine::stats::{CLOSE_REASONS, CONNECT_BUCKETS, REFUSAL_CODES, close_reason_label};
use crate::engine::{Control, ShardSnapshot};
use crate::gate::ReloadableProxy;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::fmt::Error;
use std::sync::Arc;

/// The `Content-Type` of the OpenMetrics exposition.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of the classic Prometheus text exposition.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Reads the gate's counters at each scrape.
#[derive(Debug)]
struct GateCollector {
    control: Control,
    proxy: Option<Arc<ReloadableProxy>>,
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), Error> {
    let m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), Error> {
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

/// A counter with one label, one sample per `(label value, count)`.
fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (String, u64)>,
) -> Result<(), Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, v) in values {
        let labels = [(label, value.as_str())];
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge with one label.
fn gauges(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (String, i64)>,
) -> Result<(), Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, v) in values {
        let labels = [(label, value.as_str())];
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn per_shard(shards: &[ShardSnapshot], f: impl Fn(&ShardSnapshot) -> u64) -> Vec<(String, i64)> {
    shards
        .iter()
        .enumerate()
        .map(|(i, s)| (i.to_string(), f(s) as i64))
        .collect()
}

impl Collector for GateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), Error> {
        let shards = self.control.shard_stats();
        let sum = |f: fn(&ShardSnapshot) -> u64| shards.iter().map(f).sum::<u64>();
        let e = &mut e;

        counter(
            e,
            "ringgate_connections_accepted",
            "Client connections accepted.",
            sum(|s| s.accepted),
        )?;
        counter(
            e,
            "ringgate_sessions_opened",
            "Sessions opened (new-session handshakes, or plain connections).",
            sum(|s| s.sessions_opened),
        )?;
        counter(
            e,
            "ringgate_sessions_resumed",
            "Sessions resumed by their client on a new connection.",
            sum(|s| s.sessions_resumed),
        )?;
        counters(
            e,
            "ringgate_sessions_closed",
            "Sessions closed, by reason.",
            "reason",
            CLOSE_REASONS.iter().enumerate().map(|(i, r)| {
                let n = shards.iter().map(|s| s.closed_by[i]).sum();
                (close_reason_label(*r).to_string(), n)
            }),
        )?;
        counters(
            e,
            "ringgate_resumes_refused",
            "Resume requests answered with an error, by SCP answer code.",
            "code",
            REFUSAL_CODES.iter().enumerate().map(|(i, c)| {
                let n = shards.iter().map(|s| s.refused_by[i]).sum();
                ((*c as u16).to_string(), n)
            }),
        )?;
        counter(
            e,
            "ringgate_handshakes_failed",
            "Client handshakes that failed: garbage, a bad key, a timeout, the connection closed, or a limit.",
            sum(|s| s.handshake_failed),
        )?;
        counter(
            e,
            "ringgate_new_sessions_refused_draining",
            "New sessions refused because the gate is draining.",
            sum(|s| s.new_refused_draining),
        )?;
        counter(
            e,
            "ringgate_handoffs",
            "Resumes handed to the shard that owns their session.",
            sum(|s| s.handoffs_in),
        )?;
        counter(
            e,
            "ringgate_resend_bytes",
            "Bytes replayed to clients when they resumed.",
            sum(|s| s.resend_bytes),
        )?;
        {
            let mut m = e.encode_descriptor(
                "ringgate_bytes",
                "Bytes carried, by peer (client or upstream) and direction (in: received by the gate).",
                None,
                MetricType::Counter,
            )?;
            for (peer, dir, v) in [
                ("client", "in", sum(|s| s.client_rx_bytes)),
                ("client", "out", sum(|s| s.client_tx_bytes)),
                ("upstream", "in", sum(|s| s.upstream_rx_bytes)),
                ("upstream", "out", sum(|s| s.upstream_tx_bytes)),
            ] {
                let labels = [("peer", peer), ("direction", dir)];
                ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        counter(
            e,
            "ringgate_backpressure_pauses",
            "Times reading from one side paused because the other side was full.",
            sum(|s| s.backpressure_pauses),
        )?;
        counter(
            e,
            "ringgate_recv_buffer_shortages",
            "Receives that found no provided buffer free (ENOBUFS) and were re-armed; raise recv_buffers if this climbs.",
            sum(|s| s.recv_nobufs),
        )?;
        counter(
            e,
            "ringgate_kcp_datagrams_dropped",
            "KCP datagrams dropped: from an address without a conversation that open none, refused by their conversation, or over kcp.max_conversations.",
            sum(|s| s.kcp_dropped),
        )?;
        counter(
            e,
            "ringgate_accept_pauses",
            "Times a shard stopped accepting because its descriptor table was nearly full.",
            sum(|s| s.accept_pauses),
        )?;
        counter(
            e,
            "ringgate_upstream_unreachable",
            "Sessions closed because no upstream could be connected.",
            sum(|s| s.upstream_failed),
        )?;
        counter(
            e,
            "ringgate_worker_queue_full",
            "Embedded mode: times a session found its worker's queue full.",
            sum(|s| s.worker_queue_full),
        )?;

        gauges(
            e,
            "ringgate_sessions_live",
            "Sessions open now (connected or waiting for a resume), by shard.",
            "shard",
            per_shard(&shards, ShardSnapshot::live),
        )?;
        gauges(
            e,
            "ringgate_sessions_detached",
            "Sessions waiting for their client to resume, by shard.",
            "shard",
            per_shard(&shards, |s| s.detached),
        )?;
        gauges(
            e,
            "ringgate_descriptors_used",
            "Direct descriptors in use (client and upstream sockets), by shard.",
            "shard",
            per_shard(&shards, |s| s.table_used),
        )?;
        gauges(
            e,
            "ringgate_descriptors_size",
            "Size of each shard's direct-descriptor table.",
            "shard",
            per_shard(&shards, |s| s.table_size),
        )?;
        gauges(
            e,
            "ringgate_handoffs_parked",
            "Resume hand-overs from other shards whose connection has not arrived yet, by shard.",
            "shard",
            per_shard(&shards, |s| s.handoffs_parked),
        )?;
        gauges(
            e,
            "ringgate_kcp_conversations",
            "KCP conversations held, by shard.",
            "shard",
            per_shard(&shards, |s| s.kcp_conversations),
        )?;
        gauges(
            e,
            "ringgate_command_queue_depth",
            "Embedded mode: application commands waiting for each shard.",
            "shard",
            per_shard(&shards, |s| s.commands_queued),
        )?;
        gauges(
            e,
            "ringgate_worker_queue_depth",
            "Embedded mode: events waiting in each worker's queue.",
            "worker",
            self.control
                .worker_queue_depths()
                .into_iter()
                .enumerate()
                .map(|(i, d)| (i.to_string(), d as i64)),
        )?;
        gauge(
            e,
            "ringgate_draining",
            "1 while the gate refuses new sessions and serves only resumes.",
            i64::from(self.control.draining()),
        )?;
        gauge(
            e,
            "ringgate_upstream_hosts",
            "Upstream hosts configured now.",
            self.proxy.as_ref().map_or(0, |p| {
                use crate::engine::UpstreamPolicy;
                p.host_count() as i64
            }),
        )?;
        let resolv = self.proxy.as_ref().and_then(|p| p.current().resolv.clone());
        let count = |f: fn(&crate::gate::resolv::Counts) -> &std::sync::atomic::AtomicU64| {
            resolv.as_ref().map_or(0, |r| {
                f(r.counts()).load(std::sync::atomic::Ordering::Relaxed)
            })
        };
        counters(
            e,
            "ringgate_resolv",
            "upstream.resolv: sessions answered from the cache (hit) or not yet (miss), lookups that found addresses (resolved) or none (failed), requests dropped on a full queue (dropped); since its settings last changed.",
            "outcome",
            [
                ("hit", count(|c| &c.hits)),
                ("miss", count(|c| &c.misses)),
                ("resolved", count(|c| &c.resolved)),
                ("failed", count(|c| &c.failed)),
                ("dropped", count(|c| &c.dropped)),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        )?;

        let hosts = self.control.upstream_stats();
        counters(
            e,
            "ringgate_upstream_connects",
            "Upstream connections established, by upstream address.",
            "upstream",
            hosts.iter().map(|(a, h)| (a.to_string(), h.connects)),
        )?;
        counters(
            e,
            "ringgate_upstream_connect_failures",
            "Upstream connect attempts that failed (refused, timed out, no socket), by upstream address.",
            "upstream",
            hosts.iter().map(|(a, h)| (a.to_string(), h.failures)),
        )?;
        let mut m = e.encode_descriptor(
            "ringgate_upstream_connect_seconds",
            "Time to establish an upstream connection, by upstream address.",
            None,
            MetricType::Histogram,
        )?;
        for (addr, h) in &hosts {
            let addr = addr.to_string();
            let labels = [("upstream", addr.as_str())];
            let mut buckets: Vec<(f64, u64)> = CONNECT_BUCKETS
                .iter()
                .zip(h.latency_buckets)
                .map(|(le, n)| (*le, n))
                .collect();
            buckets.push((f64::INFINITY, h.latency_buckets[CONNECT_BUCKETS.len()]));
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                h.latency_sum,
                h.connects,
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

/// A registry that reads `control` (and the proxy's host count) when encoded.
pub fn registry(control: Control, proxy: Option<Arc<ReloadableProxy>>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(GateCollector { control, proxy }));
    r
}

/// The exposition in OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out = "# EOF\n".into();
    }
    out
}

/// OpenMetrics text turned into the classic Prometheus text format: a
/// counter family's `# HELP` and `# TYPE` name its samples' `_total` name,
/// and there is no `# EOF`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let mut out = String::with_capacity(openmetrics.len() + 256);
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" {
            continue;
        }
        let counter_family = |l: &str| {
            l.strip_prefix("# TYPE ")
                .and_then(|r| r.strip_suffix(" counter"))
                .map(str::to_owned)
        };
        if let Some(name) = counter_family(line) {
            out.push_str(&format!("# TYPE {name}_total counter\n"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            let next_is_counter = lines
                .get(i + 1)
                .and_then(|l| counter_family(l))
                .is_some_and(|n| n == name);
            if next_is_counter {
                out.push_str(&format!("# HELP {name}_total{}\n", &rest[name.len()..]));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}
