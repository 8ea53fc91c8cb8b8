//! `ringgate loadgen`: a load generator that holds very many SCP,
//! stable-connection, plain or msgserver sessions, resumes them, checks every echoed byte and measures latency.
//!
//! It is the client side of [`crate::proto`] on the same kind of engine as
//! the gate: shards (threads), each one io_uring with its sockets as direct
//! descriptors and multishot receives into a provided-buffer ring. A ring's
//! direct table is capped at `RLIMIT_NOFILE` per ring, not per process, so
//! one process holds far more connections than its fd limit as long as each
//! shard stays under the cap; [`plan_shards`] picks the count.
//!
//! A run goes through phases: ramp-up (open every connection), the measured
//! run, an optional reconnect storm, a drain (no new messages; wait for every
//! echo), then the report. It speaks standard SCP, so it loads any SCP
//! gate, goscon included; cloudwu's stable-connection dialect, as its
//! published client does (a resume resends the ciphertext the server has not
//! received, and the server resends after the client's count); or plain TCP.
//! SCP and plain streams may also travel as binary WebSocket messages, with
//! or without TLS (`--transport ws|wss`, see the `wire` module), on the same
//! io_uring path, verified and resumed the same way.
//!
//! `--protocol msgserver` loads skynet's login server and msgserver gate
//! (as the gate's `skynet` module serves them) on another client path: threads driving the
//! blocking [`crate::client::skynet::SkynetClient`], one request in flight
//! per user, each answer verified and each repeat after a reconnect checked
//! to be answered once. It reuses the phases and the report; see its module.

mod conn;
mod kcp;
mod msgserver;
mod report;
mod shard;
mod wire;

pub use report::{Latency, Report};
pub use wire::TlsClientSettings;

use crate::engine::sys;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the simulated clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// SCP, as game clients do; messages are u16-BE length frames inside the stream.
    Scp,
    /// The same frames over plain TCP (for baselines against plain relays).
    Plain,
    /// The same frames inside cloudwu's stable-connection dialect.
    StableConnection,
    /// skynet's msgserver gate: each user logs in at
    /// [`LoadgenConfig::login`], then sends requests with sessions to
    /// [`LoadgenConfig::connect`] (blocking clients on threads, not io_uring).
    Msgserver,
}

/// What carries the clients' streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP (the io_uring client).
    Tcp,
    /// KCP over UDP, as kcp-go clients (SCP only; see the `kcp` module).
    Kcp,
    /// Binary WebSocket messages, client-masked (the io_uring client; see
    /// the `wire` module).
    Ws,
    /// Binary WebSocket messages over TLS (the same, with
    /// [`LoadgenConfig::tls`]).
    Wss,
}

/// Settings of a load run; mirrors the options of `ringgate loadgen`.
#[derive(Debug, Clone)]
pub struct LoadgenConfig {
    /// Address of the gate or server.
    pub connect: SocketAddr,
    /// Connections to hold.
    pub connections: usize,
    /// New connections per second while ramping up (`None`: all at once,
    /// with at most [`MAX_PENDING_PER_SHARD`] connecting per shard).
    pub ramp: Option<u32>,
    /// Length of the measured run, after the ramp.
    pub duration: Duration,
    /// Messages per second per connection; 0 sends the next as soon as the echo returns.
    pub rate: f64,
    /// Smallest payload, bytes.
    pub size_min: usize,
    /// Largest payload, bytes (at most 65535).
    pub size_max: usize,
    /// What the clients speak.
    pub protocol: Protocol,
    /// `targetServer` for the SCP handshake (SCP only).
    pub target: Option<String>,
    /// Drop (TCP RST) and resume every connection after this many messages.
    pub resume_every: Option<u64>,
    /// Chance per message of dropping the connection and resuming.
    pub abort_probability: f64,
    /// After the measured run, drop every connection at once and resume them all.
    pub storm: bool,
    /// Source addresses to spread connections over.
    pub source_ips: Vec<IpAddr>,
    /// Client shards; `None` chooses from the connection count.
    pub shards: Option<usize>,
    /// Threads that drive the shards; `None`: one per core.
    pub threads: Option<usize>,
    /// Where to write the JSON report.
    pub json: Option<PathBuf>,
    /// Show a progress line (only drawn when stdout is a terminal).
    pub progress: bool,
    /// Seed of the payloads.
    pub seed: u64,
    /// Wait this long after a drop before reconnecting (a client noticing a
    /// network loss is rarely instant).
    pub resume_delay: Duration,
    /// Longest wait for outstanding echoes at the end.
    pub drain_timeout: Duration,
    /// skynet login server (msgserver only).
    pub login: Option<SocketAddr>,
    /// Users are named this followed by their number (msgserver only).
    pub user_prefix: String,
    /// Password every user logs in with (msgserver only).
    pub password: String,
    /// Game server name in the login token (msgserver only).
    pub server: String,
    /// What carries the streams: TCP, KCP, or WebSocket messages (over
    /// TLS for [`Transport::Wss`]).
    pub transport: Transport,
    /// KCP: the conversations' settings (FEC must match the gate's).
    pub kcp: crate::proto::kcp::KcpSettings,
    /// KCP: what the clients' link does to their datagrams.
    pub impair: crate::client::kcp::Impair,
    /// The request path of WebSocket upgrades.
    pub ws_path: String,
    /// TLS settings for [`Transport::Wss`].
    pub tls: Option<TlsClientSettings>,
}

impl Default for LoadgenConfig {
    fn default() -> Self {
        LoadgenConfig {
            connect: SocketAddr::from(([127, 0, 0, 1], 1248)),
            connections: 100,
            ramp: None,
            duration: Duration::from_secs(10),
            rate: 0.0,
            size_min: 64,
            size_max: 64,
            protocol: Protocol::Scp,
            target: None,
            resume_every: None,
            abort_probability: 0.0,
            storm: false,
            source_ips: Vec::new(),
            shards: None,
            threads: None,
            json: None,
            progress: false,
            seed: 0x005e_ed0f_1a4d,
            resume_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(15),
            login: None,
            // skynet's examples/login: any user, password `password`, server `sample`.
            user_prefix: "user".into(),
            password: "password".into(),
            server: "sample".into(),
            transport: Transport::Tcp,
            kcp: crate::proto::kcp::KcpSettings::default(),
            impair: crate::client::kcp::Impair::default(),
            ws_path: "/".into(),
            tls: None,
        }
    }
}

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The settings do not make sense.
    #[error("{0}")]
    Config(String),
    /// A shard could not set up its ring.
    #[error(transparent)]
    Setup(#[from] sys::SetupError),
    /// Writing the JSON report failed.
    #[error("cannot write {path}: {err}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        err: std::io::Error,
    },
    /// A shard thread panicked or could not start.
    #[error("{0}")]
    Thread(String),
}

/// Connections one shard may open while ramping up before waiting for some
/// to finish their handshake (bounds SYN bursts and memory).
pub const MAX_PENDING_PER_SHARD: usize = 1000;

/// Direct descriptors a shard keeps free for sockets being replaced during
/// resumes (old one closing, new one opening).
const SLOT_HEADROOM: usize = 1000;

/// How many connections go on each shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPlan {
    /// Shard count.
    pub shards: usize,
    /// Whether it was chosen automatically.
    pub auto: bool,
    /// Most connections one ring may hold here.
    pub per_ring_cap: usize,
}

/// Chooses the shard count: the requested one, or enough shards that each
/// ring's direct table (capped at `RLIMIT_NOFILE`) holds its connections,
/// and at least one per core.
pub fn plan_shards(connections: usize, requested: Option<usize>) -> Result<ShardPlan, String> {
    let table = sys::direct_table_size(usize::MAX >> 1) as usize;
    let cap = table.saturating_sub(SLOT_HEADROOM).max(16);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match requested {
        Some(0) => Err("--shards must be at least 1".into()),
        Some(s) if connections.div_ceil(s) > cap => Err(format!(
            "{connections} connections on {s} shards is {} per ring, over the {cap} a ring's \
             direct-descriptor table holds here (RLIMIT_NOFILE {table} less headroom); use at \
             least {} shards",
            connections.div_ceil(s),
            connections.div_ceil(cap)
        )),
        Some(s) => Ok(ShardPlan {
            shards: s,
            auto: false,
            per_ring_cap: cap,
        }),
        None => Ok(ShardPlan {
            shards: connections.div_ceil(cap).max(cores.min(connections)).max(1),
            auto: true,
            per_ring_cap: cap,
        }),
    }
}

/// Phases of a run, published by the driver and read by every shard.
pub(crate) mod phase {
    pub const RAMP: u8 = 0;
    pub const MEASURE: u8 = 1;
    pub const STORM: u8 = 2;
    pub const DRAIN: u8 = 3;
    pub const STOP: u8 = 4;
}

/// Progress of one shard, for the driver and the progress line.
#[derive(Default)]
pub(crate) struct ShardProgress {
    pub established: AtomicU64,
    pub gave_up: AtomicU64,
    /// µs from the start until this shard's last first handshake (0: not yet).
    pub ramp_done_us: AtomicU64,
    pub messages: AtomicU64,
    pub storm_left: AtomicU64,
    pub storm_seen: AtomicBool,
    pub drained: AtomicBool,
}

/// What the driver and the shards share.
pub(crate) struct Control {
    pub phase: AtomicU8,
    pub start: Instant,
    pub shards: Vec<ShardProgress>,
}

impl Control {
    fn sum(&self, f: impl Fn(&ShardProgress) -> u64) -> u64 {
        self.shards.iter().map(f).sum()
    }
}

fn check(cfg: &LoadgenConfig) -> Result<(), LoadgenError> {
    let bad = |s: &str| Err(LoadgenError::Config(s.into()));
    if cfg.connections == 0 {
        return bad("--connections must be at least 1");
    }
    if cfg.size_min == 0 || cfg.size_min > cfg.size_max || cfg.size_max > u16::MAX as usize {
        return bad("--size must be within 1-65535 (messages are u16-length frames)");
    }
    if !(cfg.rate >= 0.0 && cfg.rate.is_finite()) {
        return bad("--rate must be a finite number ≥ 0");
    }
    if !(0.0..=1.0).contains(&cfg.abort_probability) {
        return bad("--abort-probability must be within 0-1");
    }
    if cfg.ramp == Some(0) {
        return bad("--ramp must be at least 1 connection per second");
    }
    let drops = cfg.resume_every.is_some() || cfg.abort_probability > 0.0 || cfg.storm;
    if drops && cfg.protocol == Protocol::Plain {
        return bad(
            "--resume-every, --abort-probability and --storm need --protocol scp or \
             stable-connection",
        );
    }
    if cfg.protocol == Protocol::Msgserver {
        if cfg.login.is_none() {
            return bad("--protocol msgserver needs --login");
        }
        if cfg.storm || cfg.abort_probability > 0.0 || cfg.target.is_some() {
            return bad(
                "--protocol msgserver takes --resume-every, not --storm, --abort-probability \
                 or --target",
            );
        }
        // A response is `payload ‖ u8 ok ‖ u32 session` in a u16 packet.
        if cfg.size_max > u16::MAX as usize - 5 {
            return bad("--size for msgserver must be at most 65530");
        }
        if !cfg.source_ips.is_empty() {
            return bad("--source-ips is not supported with --protocol msgserver");
        }
    } else if cfg.login.is_some() {
        return bad("--login is for --protocol msgserver");
    }
    if cfg.target.is_some() && cfg.protocol == Protocol::StableConnection {
        return bad("--target is part of the SCP handshake; stable-connection has none");
    }
    if cfg.transport == Transport::Kcp {
        if cfg.protocol != Protocol::Scp {
            return bad("--transport kcp carries --protocol scp");
        }
        if cfg.storm || cfg.abort_probability > 0.0 || !cfg.source_ips.is_empty() {
            return bad(
                "--transport kcp takes --resume-every, not --storm, --abort-probability or \
                 --source-ips",
            );
        }
        if let Err(e) = cfg.kcp.validate() {
            return bad(&e);
        }
    } else if !cfg.impair.is_clean() {
        return bad("--loss, --duplicate, --reorder and --delay apply to --transport kcp");
    }
    if !(0.0..=1.0).contains(&cfg.impair.loss) || !(0.0..=1.0).contains(&cfg.impair.duplicate) {
        return bad("--loss and --duplicate must be within 0-1");
    }
    if matches!(cfg.transport, Transport::Ws | Transport::Wss)
        && !matches!(cfg.protocol, Protocol::Scp | Protocol::Plain)
    {
        return bad("--transport ws and wss carry --protocol scp or plain");
    }
    if cfg.transport == Transport::Wss && cfg.tls.is_none() {
        return bad("--transport wss needs --tls-ca FILE or --tls-insecure");
    }
    if cfg.resume_every == Some(0) {
        return bad("--resume-every must be at least 1");
    }
    if cfg
        .source_ips
        .iter()
        .any(|ip| ip.is_ipv4() != cfg.connect.is_ipv4())
    {
        return bad("--source-ips must be of the same family as --connect");
    }
    if let Some(t) = &cfg.target {
        if !crate::proto::message::is_valid_target(t.as_bytes()) {
            return bad("--target may hold only letters, digits and `_`");
        }
    }
    Ok(())
}

/// Runs a load test and returns its report (also written to `cfg.json`).
pub fn run(cfg: LoadgenConfig) -> Result<Report, LoadgenError> {
    check(&cfg)?;
    let plan = plan_shards(cfg.connections, cfg.shards).map_err(LoadgenError::Config)?;
    let shards = plan.shards.min(cfg.connections);
    let ctl = Arc::new(Control {
        phase: AtomicU8::new(phase::RAMP),
        start: Instant::now(),
        shards: (0..shards).map(|_| ShardProgress::default()).collect(),
    });
    let cfg = Arc::new(cfg);

    // One thread per core at most, each driving every `nthreads`-th shard.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // msgserver users and KCP conversations run one shard per thread.
    let one_each = cfg.protocol == Protocol::Msgserver || cfg.transport == Transport::Kcp;
    let nthreads = if one_each {
        shards
    } else {
        cfg.threads.unwrap_or(cores).clamp(1, shards)
    };
    let mut threads = Vec::with_capacity(nthreads);
    for t in 0..nthreads {
        let members: Vec<(usize, usize)> = (t..shards)
            .step_by(nthreads)
            .map(|index| {
                let count =
                    cfg.connections / shards + usize::from(index < cfg.connections % shards);
                (index, count)
            })
            .collect();
        let (cfg, ctl) = (cfg.clone(), ctl.clone());
        let t = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || {
                let single = match (cfg.protocol, cfg.transport) {
                    (Protocol::Msgserver, _) => msgserver::run,
                    (_, Transport::Kcp) => kcp::run,
                    _ => return shard::run(members, shards, cfg, ctl),
                };
                members
                    .into_iter()
                    .map(|(index, count)| single(index, shards, count, cfg.clone(), ctl.clone()))
                    .collect()
            })
            .map_err(|e| LoadgenError::Thread(format!("cannot start a shard: {e}")))?;
        threads.push(t);
    }
    let finished =
        |threads: &Vec<std::thread::JoinHandle<_>>| threads.iter().any(|t| t.is_finished());

    let bar = if cfg.progress && std::io::stdout().is_terminal() {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let n = cfg.connections as u64;
    let mut last_msgs = (Instant::now(), 0u64);
    let mut tick = |what: &str| {
        let msgs = ctl.sum(|s| s.messages.load(Ordering::Relaxed));
        let now = Instant::now();
        let rate = (msgs - last_msgs.1) as f64 / now.duration_since(last_msgs.0).as_secs_f64();
        last_msgs = (now, msgs);
        bar.set_message(format!(
            "{what}: {}/{n} connected, {msgs} echoes, {rate:.0}/s",
            ctl.sum(|s| s.established.load(Ordering::Relaxed))
        ));
        bar.tick();
        std::thread::sleep(Duration::from_millis(50));
    };

    // Ramp: until every connection is up or given up on, bounded in time.
    let ramp_limit = Duration::from_secs(60)
        + match cfg.ramp {
            Some(r) => Duration::from_secs_f64(n as f64 / r as f64 * 1.5),
            None => Duration::from_millis(n),
        };
    while ctl.sum(|s| s.established.load(Ordering::Relaxed) + s.gave_up.load(Ordering::Relaxed)) < n
        && ctl.start.elapsed() < ramp_limit
        && !finished(&threads)
    {
        tick("ramp");
    }
    // The shards timed their own ramps; the driver's polling would round them up.
    let ramp_seconds = match ctl
        .shards
        .iter()
        .map(|s| s.ramp_done_us.load(Ordering::Acquire))
        .max()
    {
        Some(us)
            if us > 0
                && ctl
                    .shards
                    .iter()
                    .all(|s| s.ramp_done_us.load(Ordering::Acquire) > 0) =>
        {
            us as f64 / 1e6
        }
        _ => ctl.start.elapsed().as_secs_f64(),
    };
    let connected = ctl.sum(|s| s.established.load(Ordering::Relaxed));

    ctl.phase.store(phase::MEASURE, Ordering::Release);
    let measure_start = Instant::now();
    while measure_start.elapsed() < cfg.duration && !finished(&threads) {
        tick("measure");
    }
    let measured_seconds = measure_start.elapsed().as_secs_f64();

    let mut storm_start = None;
    if cfg.storm {
        ctl.phase.store(phase::STORM, Ordering::Release);
        let start = Instant::now();
        storm_start = Some(start);
        let limit = Duration::from_secs(60) + Duration::from_millis(n);
        loop {
            let seen = ctl
                .shards
                .iter()
                .all(|s| s.storm_seen.load(Ordering::Acquire));
            let left = ctl.sum(|s| s.storm_left.load(Ordering::Acquire));
            if (seen && left == 0) || start.elapsed() > limit || finished(&threads) {
                break;
            }
            tick(&format!("storm: {left} to resume"));
        }
    }

    ctl.phase.store(phase::DRAIN, Ordering::Release);
    let drain_start = Instant::now();
    while !ctl.shards.iter().all(|s| s.drained.load(Ordering::Acquire))
        && drain_start.elapsed() < cfg.drain_timeout
        && !finished(&threads)
    {
        tick("drain");
    }
    ctl.phase.store(phase::STOP, Ordering::Release);
    bar.finish_and_clear();

    let mut parts = Vec::with_capacity(shards);
    let mut failure = None;
    for t in threads {
        match t.join() {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(r) => parts.push(r),
                        Err(e) => failure = failure.or(Some(e)),
                    }
                }
            }
            Err(_) => failure = failure.or(Some(LoadgenError::Thread("a shard panicked".into()))),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let m = report::Merged::new(parts);
    let latency = m.latency();
    let s = m.shard;
    let storm_seconds = storm_start.map(|start| {
        s.storm_done.map_or(f64::NAN, |done| {
            done.saturating_duration_since(start).as_secs_f64()
        })
    });
    let report = Report {
        target_connections: cfg.connections,
        connections: connected,
        shards,
        shards_auto: plan.auto,
        ramp_seconds,
        handshakes_per_sec: connected as f64 / ramp_seconds.max(1e-9),
        measured_seconds,
        resumes_ok: s.resumes_ok,
        resumes_failed: s.resumes_failed,
        messages: s.messages,
        msgs_per_sec: s.messages as f64 / measured_seconds.max(1e-9),
        mb_per_sec: s.bytes as f64 / 1e6 / measured_seconds.max(1e-9),
        messages_total: s.messages_total,
        latency_us: latency,
        bytes_lost: s.bytes_lost,
        bytes_duplicated: s.bytes_duplicated,
        storm_resumes_per_sec: storm_seconds.map(|secs| s.storm_resumes as f64 / secs.max(1e-9)),
        storm_seconds,
        repeats_answered: (cfg.protocol == Protocol::Msgserver).then_some(s.repeats_answered),
        errors: s.errors,
    };
    if let Some(path) = &cfg.json {
        std::fs::write(path, report.to_json() + "\n").map_err(|err| LoadgenError::Json {
            path: path.clone(),
            err,
        })?;
    }
    Ok(report)
}

/// Expands an inclusive address range (at most 65536 addresses).
pub fn expand_range(first: IpAddr, last: IpAddr) -> Vec<IpAddr> {
    match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a)..=u32::from(b))
            .take(65536)
            .map(|x| IpAddr::V4(x.into()))
            .collect(),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a)..=u128::from(b))
            .take(65536)
            .map(|x| IpAddr::V6(x.into()))
            .collect(),
        _ => Vec::new(),
    }
}
