//! What a load run found: per-shard tallies merged into one report, printed
//! as text and written as JSON.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

/// Largest latency a histogram records, µs (longer ones count as this).
const MAX_LATENCY_US: u64 = 600_000_000;

/// A latency histogram in microseconds.
pub(crate) fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| unreachable!())
}

/// The tallies of one shard.
pub(crate) struct ShardReport {
    pub established: u64,
    pub resumes_ok: u64,
    pub storm_resumes: u64,
    pub resumes_failed: BTreeMap<String, u64>,
    pub messages: u64,
    pub bytes: u64,
    pub messages_total: u64,
    pub latency: Histogram<u64>,
    pub bytes_lost: u64,
    pub bytes_duplicated: u64,
    pub repeats_answered: u64,
    pub errors: BTreeMap<String, u64>,
    pub storm_done: Option<Instant>,
}

impl ShardReport {
    pub fn new() -> Self {
        ShardReport {
            established: 0,
            resumes_ok: 0,
            storm_resumes: 0,
            resumes_failed: BTreeMap::new(),
            messages: 0,
            bytes: 0,
            messages_total: 0,
            latency: new_histogram(),
            bytes_lost: 0,
            bytes_duplicated: 0,
            repeats_answered: 0,
            errors: BTreeMap::new(),
            storm_done: None,
        }
    }

    /// Counts one error of kind `what` (a short, stable description).
    pub fn error(&mut self, what: impl Into<String>) {
        *self.errors.entry(what.into()).or_default() += 1;
    }
}

/// Latency percentiles of completed echoes, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest seen.
    pub max: u64,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Connections asked for.
    pub target_connections: usize,
    /// Connections that completed a handshake (at the end of the ramp).
    pub connections: u64,
    /// Client shards (threads) used.
    pub shards: usize,
    /// Whether the shard count was chosen from the connection count.
    pub shards_auto: bool,
    /// Seconds the ramp-up took.
    pub ramp_seconds: f64,
    /// New connections (socket, connect, handshake) completed per second during the ramp.
    pub handshakes_per_sec: f64,
    /// Seconds of the measured run.
    pub measured_seconds: f64,
    /// Resumes accepted (SCP: answered 200; msgserver: reconnects whose
    /// handshake got `200 OK`; whole run).
    pub resumes_ok: u64,
    /// Resumes refused, by status code (whole run). stable-connection has
    /// no codes: `closed` is a resume the gate closed before answering,
    /// `out-of-window` one answered with a count the client cannot resend from.
    pub resumes_failed: BTreeMap<String, u64>,
    /// Echoes completed and verified during the measured run.
    pub messages: u64,
    /// `messages` per second.
    pub msgs_per_sec: f64,
    /// Echoed payload+header megabytes (10^6) per second, one direction.
    pub mb_per_sec: f64,
    /// Echoes completed over the whole run (ramp, storm and drain included).
    pub messages_total: u64,
    /// Round trip of a message, from commit to the last byte of its echo, during the measured run.
    pub latency_us: Latency,
    /// Bytes sent whose echo never came back by the end of the final drain.
    pub bytes_lost: u64,
    /// Bytes received beyond or different from what was sent.
    pub bytes_duplicated: u64,
    /// Seconds from dropping every connection to all of them being back (with `--storm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm_seconds: Option<f64>,
    /// Resumes per second during the storm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm_resumes_per_sec: Option<f64>,
    /// msgserver: requests repeated after a reconnect and answered once,
    /// with the request's bytes (from the gate's cache, or when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeats_answered: Option<u64>,
    /// Failures by kind (connect errors, timeouts, broken connections...).
    pub errors: BTreeMap<String, u64>,
}

fn add_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Sums shard tallies.
pub(crate) struct Merged {
    pub shard: ShardReport,
}

impl Merged {
    pub fn new(parts: Vec<ShardReport>) -> Merged {
        let mut m = ShardReport::new();
        for p in parts {
            m.established += p.established;
            m.resumes_ok += p.resumes_ok;
            m.storm_resumes += p.storm_resumes;
            add_map(&mut m.resumes_failed, &p.resumes_failed);
            m.messages += p.messages;
            m.bytes += p.bytes;
            m.messages_total += p.messages_total;
            // Same bounds everywhere: adding cannot fail.
            let _ = m.latency.add(&p.latency);
            m.bytes_lost += p.bytes_lost;
            m.bytes_duplicated += p.bytes_duplicated;
            m.repeats_answered += p.repeats_answered;
            add_map(&mut m.errors, &p.errors);
            m.storm_done = match (m.storm_done, p.storm_done) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        Merged { shard: m }
    }

    pub fn latency(&self) -> Latency {
        let h = &self.shard.latency;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

impl Report {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        // A struct of numbers and string maps always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = if self.shards_auto {
            " (chosen from the connection count)"
        } else {
            ""
        };
        writeln!(
            f,
            "connections      {} of {} on {} shards{how}",
            self.connections, self.target_connections, self.shards
        )?;
        writeln!(
            f,
            "ramp             {:.2} s, {:.0} handshakes/s",
            self.ramp_seconds, self.handshakes_per_sec
        )?;
        writeln!(
            f,
            "measured         {:.2} s: {} messages, {:.0} msgs/s, {:.2} MB/s",
            self.measured_seconds, self.messages, self.msgs_per_sec, self.mb_per_sec
        )?;
        let l = &self.latency_us;
        writeln!(
            f,
            "latency µs       p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        writeln!(
            f,
            "resumes          {} ok, failed {:?}",
            self.resumes_ok, self.resumes_failed
        )?;
        if let (Some(s), Some(r)) = (self.storm_seconds, self.storm_resumes_per_sec) {
            writeln!(f, "storm            all back in {s:.3} s, {r:.0} resumes/s")?;
        }
        if let Some(n) = self.repeats_answered {
            writeln!(f, "repeats          {n} answered once after a reconnect")?;
        }
        writeln!(
            f,
            "verification     {} messages in all, bytes_lost {}, bytes_duplicated {}",
            self.messages_total, self.bytes_lost, self.bytes_duplicated
        )?;
        write!(f, "errors           {:?}", self.errors)
    }
}
