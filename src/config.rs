//! Settings of `ringgate serve`: plain types with safe defaults, read from
//! ringgate's own TOML or from a goscon `config.yaml`, and validated before
//! anything listens.
//!
//! Durations in TOML are human strings (`"30s"`, `"500ms"`, `"2m"`) or
//! integers counted in seconds; optional ones also take `"off"` (or `0`).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::engine::ws::WsMode;
pub use crate::gate::{Announce, UpstreamNet};

/// Why settings could not be read or are not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A settings file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A settings file was read but its content is wrong.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<ConfigError>,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// Not valid YAML.
    #[error("invalid YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    /// A value is out of range or inconsistent with another.
    #[error("{0}")]
    Invalid(String),
    /// A goscon feature that ringgate does not implement and cannot ignore
    /// without serving something other than what was asked for.
    #[error("not supported: {0}")]
    Unsupported(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// Smallest replay window accepted: below a page, resumes after any real
/// burst of traffic would fail with 406.
pub const MIN_REUSE_BUFFER: usize = 4096;
/// Largest replay window accepted: more per session is a configuration
/// mistake, not a plan.
pub const MAX_REUSE_BUFFER: usize = 1 << 30;
/// The most shards (threads) accepted.
pub const MAX_SHARDS: usize = 1024;
/// The listen address goscon uses when its file names none.
pub const GOSCON_DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 1248));
/// The weight goscon gives a host whose weight is missing or not positive.
pub const GOSCON_DEFAULT_WEIGHT: u32 = 100;

/// Everything `ringgate serve` needs to know before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Address clients connect to. Default `127.0.0.1:1248`: goscon's port,
    /// but only on loopback until the operator says otherwise.
    pub listen: SocketAddr,
    /// Threads, each with its own ring and its own sessions. Default 0: the
    /// gate chooses, at least one per core and more when a ring's
    /// descriptor table (capped at `RLIMIT_NOFILE`) cannot hold its share
    /// of `max_sessions`.
    pub shards: usize,
    /// Threads that drive the shards' rings, each turning every
    /// `threads`-th one. Default 0: one per core (at most one per shard).
    pub threads: usize,
    /// Longest time a client may take to send its handshake record. Default 30 s.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// How long a session (and its upstream connection) waits for the client
    /// to resume after its connection dropped. Default 30 s.
    #[serde(with = "duration")]
    pub reuse_time: Duration,
    /// Bytes of sent stream kept per session for replay on resume. Default 65536.
    pub reuse_buffer: usize,
    /// Close a client connection that sent nothing for this long. Default off
    /// (goscon's `tcp_option.read_timeout: 0`).
    #[serde(with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// TCP keep-alive probe interval on client sockets; `None` turns
    /// keep-alive off. Default 60 s, as goscon.
    #[serde(with = "opt_duration")]
    pub tcp_keepalive: Option<Duration>,
    /// Live sessions (connected or waiting for a resume) above which new
    /// sessions are refused. Default 1 000 000.
    pub max_sessions: usize,
    /// Connections still in their handshake above which new connections are
    /// closed at once, so a flood of silent sockets cannot take all memory.
    /// Default 65 536 for the process.
    pub max_pending_handshakes: usize,
    /// Bytes buffered per direction between a client and its upstream before
    /// the gate stops reading from the faster side. Default 65536.
    pub relay_buffer: usize,
    /// Receive buffers each shard lends the kernel (a power of two ≤ 32768);
    /// only connections with bytes in flight hold one. Default 0: sized from
    /// the shard count (about 32 MiB in all, 64 to 1024 per shard).
    pub recv_buffers: u16,
    /// Size of each receive buffer. Default 16384.
    pub recv_buffer_size: usize,
    /// Direct descriptors per shard (client plus upstream sockets). 0, the
    /// default, derives it from `max_sessions`; the kernel caps it at the fd
    /// limit per shard, so shards × this is what one process can hold.
    pub direct_table: usize,
    /// What to tell an upstream about the client's address.
    #[serde(with = "text")]
    pub announce: Announce,
    /// Where sessions are proxied to.
    pub upstream: UpstreamConfig,
    /// Serve plain TCP instead of SCP: no handshake, no encryption, no
    /// resume. A baseline for measurements, not for real clients.
    pub plain: bool,
    /// Address of a listener speaking cloudwu's stable-connection dialect.
    /// Default: none (off).
    pub stable: Option<SocketAddr>,
    /// The operator's HTTP endpoint (metrics, reload, drain).
    pub admin: AdminConfig,
    /// A WebSocket listener, for browsers and skynet's WebSocket clients.
    pub websocket: WebSocketConfig,
    /// A KCP listener (SCP over KCP over UDP), for kcp-go clients.
    pub kcp: KcpConfig,
}

/// A KCP listener (`[kcp]`; goscon's `kcp:` and `kcp_option`). Off unless
/// an address is given; it may be the TCP listener's own address (UDP and
/// TCP ports are apart), as goscon's sample configuration has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KcpConfig {
    /// UDP address. Default: none (off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Largest datagram, headers included (`opt_mtu`). Default 1400.
    pub mtu: usize,
    /// Fast retransmission (`opt_nodelay`). Default on.
    pub nodelay: bool,
    /// Milliseconds between KCP flushes (`opt_interval`, 10 to 5000). Default 10.
    pub interval: u32,
    /// Fast resend after this many later acks, 0 off (`opt_resend`). Default 2.
    pub resend: u32,
    /// No congestion window (`opt_nc`). Default on.
    pub nc: bool,
    /// Send window in segments (`opt_sndwnd`). Default 256. With the
    /// receive window it bounds a conversation's buffers (segments of `mtu`).
    pub sndwnd: u16,
    /// Receive window in segments (`opt_rcvwnd`). Default 256.
    pub rcvwnd: u16,
    /// Stream mode: writes merge into full segments (`opt_stream`). Default on.
    pub stream: bool,
    /// Accepted for goscon's `opt_writedelay`; the gate always sends what a
    /// batch of completions produced at the end of the batch.
    pub writedelay: bool,
    /// A conversation that receives nothing for this long ends, and its
    /// session waits for a resume (`read_timeout`). Default 60 s.
    #[serde(with = "duration")]
    pub read_timeout: Duration,
    /// Kernel receive buffer of each shard's socket, 0 the system's (`read_buffer`).
    pub read_buffer: usize,
    /// Kernel send buffer of each shard's socket, 0 the system's (`write_buffer`).
    pub write_buffer: usize,
    /// FEC data shards (`fec_data_shards`); FEC is on when both are above 0.
    pub fec_data_shards: usize,
    /// FEC parity shards (`fec_parity_shards`).
    pub fec_parity_shards: usize,
    /// Conversations across all shards; datagrams that would open more are
    /// dropped. Default 100 000.
    pub max_conversations: usize,
}

impl Default for KcpConfig {
    fn default() -> Self {
        let s = crate::proto::kcp::KcpSettings::default();
        let l = crate::engine::kcp::KcpListen::new(GOSCON_DEFAULT_LISTEN);
        KcpConfig {
            listen: None,
            mtu: s.mtu,
            nodelay: s.nodelay,
            interval: s.interval,
            resend: s.resend,
            nc: s.nc,
            sndwnd: s.sndwnd,
            rcvwnd: s.rcvwnd,
            stream: s.stream,
            writedelay: false,
            read_timeout: l.read_timeout,
            read_buffer: 0,
            write_buffer: 0,
            fec_data_shards: s.fec_data,
            fec_parity_shards: s.fec_parity,
            max_conversations: l.max_conversations,
        }
    }
}

impl KcpConfig {
    /// The conversations' settings.
    pub fn settings(&self) -> crate::proto::kcp::KcpSettings {
        crate::proto::kcp::KcpSettings {
            mtu: self.mtu,
            nodelay: self.nodelay,
            interval: self.interval,
            resend: self.resend,
            nc: self.nc,
            sndwnd: self.sndwnd,
            rcvwnd: self.rcvwnd,
            stream: self.stream,
            fec_data: self.fec_data_shards,
            fec_parity: self.fec_parity_shards,
        }
    }

    /// The engine's door, when one is configured.
    pub fn listen(&self) -> Option<crate::engine::kcp::KcpListen> {
        let addr = self.listen?;
        Some(crate::engine::kcp::KcpListen {
            addr,
            settings: self.settings(),
            read_timeout: self.read_timeout,
            max_conversations: self.max_conversations,
            recv_buffer: (self.read_buffer > 0).then_some(self.read_buffer),
            send_buffer: (self.write_buffer > 0).then_some(self.write_buffer),
        })
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.settings()
            .validate()
            .map_err(|e| invalid(format!("kcp: {e}")))?;
        if !(10..=5000).contains(&self.interval) {
            return Err(invalid("kcp.interval must be between 10 and 5000 (ms)"));
        }
        if self.read_timeout.is_zero() {
            return Err(invalid(
                "kcp.read_timeout must be more than 0: UDP has no close, so a silent conversation must end",
            ));
        }
        if self.max_conversations == 0 {
            return Err(invalid("kcp.max_conversations must be at least 1"));
        }
        Ok(())
    }
}

/// A WebSocket listener (`[websocket]`). Off unless an address is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Address of the listener. Default: none (off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// What binary messages carry: `packets` (each one a packet with its
    /// 2-byte big-endian length, as skynet's WebSocket gate clients send)
    /// or `scp` (the SCP handshake and stream, resumable). Default `packets`.
    #[serde(with = "text")]
    pub mode: WsMode,
    /// The request path of the upgrade; others are answered 404. Default `/`.
    pub path: String,
    /// Origins allowed (`https://game.example`); others are answered 403.
    /// Empty, the default: any. Requests without an Origin (not from a
    /// browser) are always allowed.
    pub origins: Vec<String>,
    /// Largest message a client may send; larger closes with 1009.
    /// Default 1 MiB.
    pub max_message: usize,
    /// Largest upgrade request; larger is answered 431. Default 8192.
    pub max_request: usize,
    /// A second listener for the same WebSockets over TLS (`wss://`).
    pub tls: WssConfig,
}

/// The WebSocket listener over TLS (`[websocket.tls]`): same mode, path,
/// origins and limits as `[websocket]`, with a certificate. Off unless an
/// address is given. The certificate and key are read again on every
/// reload (SIGHUP, `POST /reload`): new connections get the new ones, open
/// connections keep theirs, and files that do not load refuse the reload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WssConfig {
    /// Address of the listener. Default: none (off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// PEM file with the certificate chain, leaf first (relative paths
    /// are from the working directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        let s = crate::proto::ws::WsSettings::default();
        Self {
            listen: None,
            mode: WsMode::Packets,
            path: s.path,
            origins: s.origins,
            max_message: s.max_message,
            max_request: s.max_request,
            tls: WssConfig::default(),
        }
    }
}

impl WebSocketConfig {
    /// The engine's settings for the listener.
    pub fn settings(&self) -> crate::proto::ws::WsSettings {
        crate::proto::ws::WsSettings {
            path: self.path.clone(),
            origins: self.origins.clone(),
            max_message: self.max_message,
            max_request: self.max_request,
        }
    }
}

/// The admin endpoint: Prometheus metrics, the settings in force, reload,
/// drain, sessions. Off unless an address is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the HTTP listener (goscon's `manager`), for example
    /// `127.0.0.1:6620`. Default: none, no listener. It answers anyone who
    /// can reach it, so keep it on loopback or a private network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1248)),
            shards: 0,
            threads: 0,
            handshake_timeout: Duration::from_secs(30),
            reuse_time: Duration::from_secs(30),
            reuse_buffer: 65536,
            idle_timeout: None,
            tcp_keepalive: Some(Duration::from_secs(60)),
            max_sessions: 1_000_000,
            max_pending_handshakes: 65_536,
            relay_buffer: 65_536,
            recv_buffers: 0,
            recv_buffer_size: 16_384,
            direct_table: 0,
            announce: Announce::None,
            upstream: UpstreamConfig::default(),
            plain: false,
            admin: AdminConfig::default(),
            stable: None,
            websocket: WebSocketConfig::default(),
            kcp: KcpConfig::default(),
        }
    }
}

/// The upstream servers sessions are proxied to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// How the gate talks to upstreams. Default `tcp`.
    #[serde(with = "text")]
    pub net: UpstreamNet,
    /// The servers. A client's `targetServer` picks among those with that
    /// name; otherwise one is drawn at random by weight.
    pub hosts: Vec<UpstreamHost>,
    /// Give up connecting to an upstream after this long. Default 10 s
    /// (goscon waits as long as the OS does, minutes, while the client waits).
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// goscon's `upstream_option.resolv`: a `targetServer` that names no
    /// host is looked up in DNS. Default: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolv: Option<ResolvConfig>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            net: UpstreamNet::Tcp,
            hosts: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            resolv: None,
        }
    }
}

/// Upstreams found in DNS, as goscon's `upstream_option.resolv`: a
/// `targetServer` that names no configured host and matches `pattern` goes
/// to the addresses of `prefix + name + suffix`, at `port`. The other keys
/// are ringgate's: where to ask and how long answers are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolvConfig {
    /// Put before the name. Default "".
    pub prefix: String,
    /// Put after the name. Default "".
    pub suffix: String,
    /// The upstream port; required.
    pub port: u16,
    /// A regular expression the name must match (anywhere, as goscon's);
    /// default "", every name.
    pub pattern: String,
    /// The DNS server to ask, `ip:port`. Default: the system's (`/etc/resolv.conf`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nameserver: Option<SocketAddr>,
    /// Answers are kept at least this long, whatever their TTL. Default 1 s.
    #[serde(with = "duration")]
    pub min_ttl: Duration,
    /// And at most this long. Default 5 min.
    #[serde(with = "duration")]
    pub max_ttl: Duration,
    /// How long a name that did not resolve is remembered. Default 5 s.
    #[serde(with = "duration")]
    pub negative_ttl: Duration,
    /// Names kept at most. Default 10000.
    pub cache_entries: usize,
    /// Lookups waiting or running at most. Default 1024.
    pub queue: usize,
    /// How long one query waits for the DNS server. Default 2 s.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for ResolvConfig {
    fn default() -> Self {
        Self::from(crate::gate::resolv::Settings::default())
    }
}

impl From<crate::gate::resolv::Settings> for ResolvConfig {
    fn from(s: crate::gate::resolv::Settings) -> Self {
        Self {
            prefix: s.prefix,
            suffix: s.suffix,
            port: s.port,
            pattern: s.pattern,
            nameserver: s.nameserver,
            min_ttl: s.min_ttl,
            max_ttl: s.max_ttl,
            negative_ttl: s.negative_ttl,
            cache_entries: s.cache_entries,
            queue: s.queue,
            timeout: s.timeout,
        }
    }
}

impl ResolvConfig {
    /// The resolver's settings.
    pub fn settings(&self) -> crate::gate::resolv::Settings {
        crate::gate::resolv::Settings {
            prefix: self.prefix.clone(),
            suffix: self.suffix.clone(),
            port: self.port,
            pattern: self.pattern.clone(),
            nameserver: self.nameserver,
            min_ttl: self.min_ttl,
            max_ttl: self.max_ttl,
            negative_ttl: self.negative_ttl,
            cache_entries: self.cache_entries,
            queue: self.queue,
            timeout: self.timeout,
        }
    }

    /// Checks the port, the pattern and the limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.port == 0 {
            return Err(invalid("upstream.resolv.port is required (1-65535)"));
        }
        self.settings()
            .compile_pattern()
            .map_err(|e| invalid(format!("upstream.resolv.pattern: {e}")))?;
        for (key, v) in [("prefix", &self.prefix), ("suffix", &self.suffix)] {
            if v.contains(char::is_whitespace) {
                return Err(invalid(format!(
                    "upstream.resolv.{key} `{v}`: a DNS name has no spaces"
                )));
            }
        }
        if self.max_ttl.is_zero() || self.min_ttl > self.max_ttl {
            return Err(invalid(
                "upstream.resolv: max_ttl must be more than 0 and at least min_ttl",
            ));
        }
        if self.negative_ttl.is_zero() || self.timeout.is_zero() {
            return Err(invalid(
                "upstream.resolv: negative_ttl and timeout must be more than 0",
            ));
        }
        if self.cache_entries == 0 || self.queue == 0 {
            return Err(invalid(
                "upstream.resolv: cache_entries and queue must be at least 1",
            ));
        }
        Ok(())
    }
}

// Announce and UpstreamNet belong to the gate; their spelling in settings
// files and on the command line (FromStr, Display) is defined here.

impl FromStr for WsMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "packets" => Ok(Self::Packets),
            "scp" => Ok(Self::Scp),
            other => Err(invalid(format!(
                "websocket mode `{other}`: expected `packets` or `scp`"
            ))),
        }
    }
}

impl fmt::Display for WsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Packets => "packets",
            Self::Scp => "scp",
        })
    }
}

impl FromStr for UpstreamNet {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "scp" => Ok(Self::Scp),
            "kcp" => Err(ConfigError::Unsupported(
                "upstream net `kcp`: ringgate speaks TCP and SCP only".into(),
            )),
            other => Err(invalid(format!(
                "upstream net `{other}`: expected `tcp` or `scp`"
            ))),
        }
    }
}

impl fmt::Display for UpstreamNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Scp => "scp",
        })
    }
}

impl TryFrom<String> for UpstreamNet {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<UpstreamNet> for String {
    fn from(n: UpstreamNet) -> Self {
        n.to_string()
    }
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamHost {
    /// Name a client may ask for with `targetServer`; `[A-Za-z0-9_]*`, may
    /// be empty. Several hosts may share a name.
    #[serde(default)]
    pub name: String,
    /// `host:port`; resolved when the gate starts, not here.
    pub addr: String,
    /// Share of the random choice. 0 keeps the host out of the random choice
    /// while clients that name it still reach it. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl FromStr for Announce {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || {
            invalid(format!(
                "announce `{s}`: expected `none`, `sproto:<type>` or `proxy-v2`"
            ))
        };
        match s {
            "none" => Ok(Self::None),
            "proxy-v2" => Ok(Self::ProxyV2),
            _ => {
                let ty = s.strip_prefix("sproto:").ok_or_else(bad)?;
                let type_ = ty.parse().map_err(|_| bad())?;
                Ok(Self::Sproto { type_ })
            }
        }
    }
}

impl fmt::Display for Announce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Sproto { type_ } => write!(f, "sproto:{type_}"),
            Self::ProxyV2 => f.write_str("proxy-v2"),
        }
    }
}

impl TryFrom<String> for Announce {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Announce> for String {
    fn from(a: Announce) -> Self {
        a.to_string()
    }
}

/// Parses a duration as the settings write it: an integer is seconds,
/// otherwise a human form such as `500ms`, `30s`, `2m`; `off` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(Duration::ZERO);
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("`{s}`: too many seconds"));
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 30s, 500ms, 2m)"))
}

/// True when `name` can be a `targetServer` name: `[A-Za-z0-9_]*`.
pub fn is_valid_host_name(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks that `addr` looks like `host:port` (IPv6 in brackets) without
/// resolving it.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("`{addr}`: expected HOST:PORT"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("`{addr}`: expected HOST:PORT, the host is missing"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("`{addr}`: the port must be 1-65535")),
    }
}

impl ServeConfig {
    /// Reads ringgate's TOML settings; missing keys take their defaults,
    /// unknown keys are errors (a typo must not silently become a default).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let cfg = Self::parse_toml(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// [`from_toml_str`](Self::from_toml_str) on a file.
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        in_file(path, Self::from_toml_str)
    }

    /// Reads a goscon `config.yaml` as goscon would, including its defaults
    /// where they differ from ringgate's (it listens on `0.0.0.0:1248`, a
    /// host without a positive weight weighs 100). Settings ringgate does not
    /// implement are ignored with a warning that names them.
    pub fn from_goscon_yaml_str(text: &str) -> Result<Self, ConfigError> {
        let cfg = Self::parse_goscon_yaml(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// [`from_goscon_yaml_str`](Self::from_goscon_yaml_str) on a file.
    pub fn from_goscon_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        in_file(path, Self::from_goscon_yaml_str)
    }

    /// Reads TOML without validating, so that command-line flags can still
    /// correct a value before [`validate`](Self::validate) runs.
    pub(crate) fn parse_toml(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Reads a goscon file without validating; warns about ignored keys.
    pub(crate) fn parse_goscon_yaml(text: &str) -> Result<Self, ConfigError> {
        let (cfg, ignored) = goscon::parse(text)?;
        if !ignored.is_empty() {
            tracing::warn!(
                keys = %ignored.join(", "),
                "ignoring goscon settings that ringgate does not implement"
            );
        }
        Ok(cfg)
    }

    /// Checks ranges and consistency; the message names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.shards > MAX_SHARDS {
            return Err(invalid(format!(
                "shards = {}: must be between 0 (automatic) and {MAX_SHARDS}",
                self.shards
            )));
        }
        if self.threads > MAX_SHARDS {
            return Err(invalid(format!(
                "threads = {}: must be between 0 (one per core) and {MAX_SHARDS}",
                self.threads
            )));
        }
        if self.stable == Some(self.listen) {
            // Both would bind it with SO_REUSEPORT and split its clients.
            return Err(invalid(
                "stable must be another address than listen: one listener speaks one dialect",
            ));
        }
        if let Some(ws) = self.websocket.listen {
            if ws == self.listen || Some(ws) == self.stable {
                return Err(invalid(
                    "websocket.listen must be another address than listen and stable: one listener speaks one dialect",
                ));
            }
        }
        if let Some(wss) = self.websocket.tls.listen {
            // Port 0 asks for a free port of its own: never the same listener.
            let same = |other: Option<SocketAddr>| other == Some(wss) && wss.port() != 0;
            if same(Some(self.listen)) || same(self.stable) || same(self.websocket.listen) {
                return Err(invalid(
                    "websocket.tls.listen must be another address than listen, stable and websocket.listen: one listener speaks one dialect",
                ));
            }
            if self.websocket.tls.cert.is_none() || self.websocket.tls.key.is_none() {
                return Err(invalid(
                    "websocket.tls.listen needs websocket.tls.cert and websocket.tls.key (--tls-cert, --tls-key)",
                ));
            }
        } else if self.websocket.tls.cert.is_some() || self.websocket.tls.key.is_some() {
            return Err(invalid(
                "websocket.tls.cert and key are set but websocket.tls.listen (--wss) is not",
            ));
        }
        if !self.websocket.path.starts_with('/') {
            return Err(invalid("websocket.path must start with `/`"));
        }
        if self.websocket.max_message == 0 || self.websocket.max_request < 256 {
            return Err(invalid(
                "websocket.max_message must be more than 0 and websocket.max_request at least 256",
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(invalid(
                "handshake_timeout must be more than 0: a client that never finishes its handshake would hold its connection forever",
            ));
        }
        if !(MIN_REUSE_BUFFER..=MAX_REUSE_BUFFER).contains(&self.reuse_buffer) {
            return Err(invalid(format!(
                "reuse_buffer = {}: must be between {MIN_REUSE_BUFFER} and {MAX_REUSE_BUFFER} bytes",
                self.reuse_buffer
            )));
        }
        if self
            .tcp_keepalive
            .is_some_and(|d| d < Duration::from_secs(1))
        {
            return Err(invalid(
                "tcp_keepalive must be at least 1s (TCP counts it in seconds), or off",
            ));
        }
        if self.max_sessions == 0 {
            return Err(invalid("max_sessions must be at least 1"));
        }
        if self.relay_buffer < 1024 {
            return Err(invalid("relay_buffer must be at least 1024"));
        }
        if self.recv_buffers != 0
            && (!self.recv_buffers.is_power_of_two() || self.recv_buffers > 32768)
        {
            return Err(invalid(
                "recv_buffers must be 0 (automatic) or a power of two, at most 32768",
            ));
        }
        if !(512..=1 << 20).contains(&self.recv_buffer_size) {
            return Err(invalid("recv_buffer_size must be between 512 and 1048576"));
        }
        if self.max_pending_handshakes == 0 {
            return Err(invalid("max_pending_handshakes must be at least 1"));
        }
        self.kcp.validate()?;
        self.upstream.validate()
    }
}

impl UpstreamConfig {
    /// Checks host names, addresses and weights.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.connect_timeout.is_zero() {
            return Err(invalid("upstream.connect_timeout must be more than 0"));
        }
        let mut total: u64 = 0;
        for (i, host) in self.hosts.iter().enumerate() {
            if !is_valid_host_name(&host.name) {
                return Err(invalid(format!(
                    "upstream.hosts[{i}].name `{}`: only letters, digits and `_` are allowed",
                    host.name
                )));
            }
            check_host_port(&host.addr)
                .map_err(|e| invalid(format!("upstream.hosts[{i}].addr {e}")))?;
            total += u64::from(host.weight);
        }
        if total > u64::from(u32::MAX) {
            return Err(invalid(format!(
                "upstream.hosts: the weights add up to {total}, more than {}",
                u32::MAX
            )));
        }
        if let Some(r) = &self.resolv {
            r.validate()?;
        }
        if !self.hosts.is_empty() && total == 0 {
            return Err(invalid(
                "upstream.hosts: every weight is 0, so a client naming no host could reach none; give one a weight above 0",
            ));
        }
        Ok(())
    }
}

/// Reads `path` and parses it, naming the file in any error.
pub(crate) fn in_file(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<ServeConfig, ConfigError>,
) -> Result<ServeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|e| ConfigError::InFile {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

/// Serde for a value written as a string: printed with `Display`, read
/// with `FromStr` (for the gate's types, which know nothing of serde).
mod text {
    use serde::{Deserialize, Deserializer, Serializer, de};
    use std::fmt::Display;
    use std::str::FromStr;

    pub(super) fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub(super) fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// Serde for a required duration: integer seconds or a human string in,
/// a human string out.
mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer, de};

    pub(super) struct Visitor;

    impl de::Visitor<'_> for Visitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(
                "a duration: seconds as an integer, or a string such as \"30s\" or \"500ms\"",
            )
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("duration {v}: must not be negative")))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse_duration(v).map_err(E::custom)
        }
    }

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Visitor)
    }
}

/// Serde for a duration that can be turned off: as [`duration`], with
/// `"off"` and `0` meaning `None`.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_str("off"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let d = d.deserialize_any(super::duration::Visitor)?;
        Ok((!d.is_zero()).then_some(d))
    }
}

/// Reading goscon's `config.yaml`. goscon reads it through viper, which
/// matches keys without regard to case and takes numbers written as strings,
/// so this walks the YAML by hand instead of deriving a schema.
mod goscon {
    use std::net::SocketAddr;
    use std::time::Duration;

    use serde_norway::{Mapping, Value};

    use super::{
        ConfigError, GOSCON_DEFAULT_LISTEN, GOSCON_DEFAULT_WEIGHT, ServeConfig, UpstreamHost,
        invalid,
    };

    /// The settings, and the keys that were ignored (dotted paths).
    pub(super) fn parse(text: &str) -> Result<(ServeConfig, Vec<String>), ConfigError> {
        let root: Value = serde_norway::from_str(text)?;
        let mut cfg = ServeConfig {
            listen: GOSCON_DEFAULT_LISTEN,
            ..ServeConfig::default()
        };
        let mut ignored = Vec::new();
        let empty = Mapping::new();
        let map = match &root {
            Value::Null => &empty,
            Value::Mapping(m) => m,
            _ => return Err(invalid("a goscon config must be a mapping of keys")),
        };

        let mut tcp: Option<String> = None;
        let mut kcp = String::new();
        for (key, value) in map {
            let key = key_name(key);
            match key.as_str() {
                "tcp" => tcp = Some(string(value, "tcp")?),
                "manager" => {
                    let m = string(value, "manager")?;
                    cfg.admin.listen = if m.is_empty() {
                        None
                    } else {
                        Some(listen_addr(&m).map_err(|_| {
                            invalid(format!(
                                "manager `{m}`: expected a listen address such as 127.0.0.1:6620"
                            ))
                        })?)
                    };
                }
                "kcp" => kcp = string(value, "kcp")?,
                "kcp_option" => {
                    for (k, v) in section(value, &key)? {
                        let k = key_name(k);
                        let path = format!("{key}.{k}");
                        let int = |v| -> Result<i64, ConfigError> { integer(v, &path) };
                        let size = |v| -> Result<usize, ConfigError> {
                            usize::try_from(integer(v, &path)?.max(0))
                                .map_err(|_| invalid(format!("{path}: too large")))
                        };
                        let window = |v| -> Result<u16, ConfigError> {
                            u16::try_from(integer(v, &path)?.clamp(1, 65535))
                                .map_err(|_| invalid(format!("{path}: too large")))
                        };
                        let o = &mut cfg.kcp;
                        match k.as_str() {
                            "read_timeout" => {
                                // goscon's 0 is no deadline; a conversation
                                // must end some time, so the default stays.
                                let d = seconds(v, &path)?;
                                if !d.is_zero() {
                                    o.read_timeout = d;
                                }
                            }
                            "read_buffer" => o.read_buffer = size(v)?,
                            "write_buffer" => o.write_buffer = size(v)?,
                            "fec_data_shards" => o.fec_data_shards = size(v)?,
                            "fec_parity_shards" => o.fec_parity_shards = size(v)?,
                            "opt_mtu" => o.mtu = size(v)?,
                            "opt_nodelay" => o.nodelay = int(v)? != 0,
                            "opt_interval" => o.interval = int(v)?.clamp(10, 5000) as u32,
                            "opt_resend" => o.resend = int(v)?.max(0) as u32,
                            "opt_nc" => o.nc = int(v)? != 0,
                            "opt_sndwnd" => o.sndwnd = window(v)?,
                            "opt_rcvwnd" => o.rcvwnd = window(v)?,
                            "opt_stream" => o.stream = boolean(v, &path)?,
                            "opt_writedelay" => o.writedelay = boolean(v, &path)?,
                            _ => ignored.push(path),
                        }
                    }
                }
                "scp" | "scp_option" => {
                    for (k, v) in section(value, &key)? {
                        let k = key_name(k);
                        let path = format!("{key}.{k}");
                        match k.as_str() {
                            "handshake_timeout" => cfg.handshake_timeout = seconds(v, &path)?,
                            "reuse_time" => cfg.reuse_time = seconds(v, &path)?,
                            "reuse_buffer" => {
                                cfg.reuse_buffer = usize::try_from(integer(v, &path)?.max(0))
                                    .map_err(|_| invalid(format!("{path}: too large")))?;
                            }
                            _ => ignored.push(path),
                        }
                    }
                }
                "tcp_option" => {
                    let mut keepalive = true;
                    let mut interval = Duration::from_secs(60);
                    for (k, v) in section(value, &key)? {
                        let k = key_name(k);
                        let path = format!("{key}.{k}");
                        match k.as_str() {
                            "read_timeout" => {
                                let d = seconds(v, &path)?;
                                cfg.idle_timeout = (!d.is_zero()).then_some(d);
                            }
                            "keepalive" => keepalive = boolean(v, &path)?,
                            "keepalive_interval" => interval = seconds(v, &path)?,
                            _ => ignored.push(path),
                        }
                    }
                    // goscon passes a zero interval to Go, which then uses
                    // its own 15 s default.
                    if interval.is_zero() {
                        interval = Duration::from_secs(15);
                    }
                    cfg.tcp_keepalive = keepalive.then_some(interval);
                }
                "hosts" => cfg.upstream.hosts = hosts(value, "hosts", &mut ignored)?,
                "upstream_option" => {
                    for (k, v) in section(value, &key)? {
                        let k = key_name(k);
                        let path = format!("{key}.{k}");
                        match k.as_str() {
                            "net" => {
                                let net = string(v, &path)?;
                                if !net.is_empty() {
                                    cfg.upstream.net = net.parse()?;
                                }
                            }
                            "hosts" => cfg.upstream.hosts = hosts(v, &path, &mut ignored)?,
                            "resolv" => cfg.upstream.resolv = resolv(v, &path, &mut ignored)?,
                            _ => ignored.push(path),
                        }
                    }
                }
                "server" => {
                    return Err(ConfigError::Unsupported(
                        "goscon's `server:` section (several listeners in one process); \
                         write the one server's settings at the top level instead"
                            .into(),
                    ));
                }
                _ => ignored.push(key),
            }
        }

        // goscon listens on TCP unless `tcp` is set to the empty string.
        let tcp = tcp.unwrap_or_else(|| GOSCON_DEFAULT_LISTEN.to_string());
        if tcp.is_empty() {
            return Err(if kcp.is_empty() {
                invalid("goscon config: `tcp` is empty, so there is nothing to listen on")
            } else {
                ConfigError::Unsupported(format!(
                    "KCP only (`kcp: {kcp}` with `tcp` empty): ringgate serves KCP beside a TCP listener; set `tcp` to a listen address"
                ))
            });
        }
        if !kcp.is_empty() {
            cfg.kcp.listen = Some(listen_addr(&kcp)?);
        }
        cfg.listen = listen_addr(&tcp)?;
        Ok((cfg, ignored))
    }

    fn key_name(key: &Value) -> String {
        match key {
            Value::String(s) => s.to_ascii_lowercase(),
            other => serde_norway::to_string(other)
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "?".into()),
        }
    }

    fn section<'a>(value: &'a Value, path: &str) -> Result<&'a Mapping, ConfigError> {
        match value {
            Value::Mapping(m) => Ok(m),
            _ => Err(invalid(format!("{path}: expected a mapping of keys"))),
        }
    }

    fn string(value: &Value, path: &str) -> Result<String, ConfigError> {
        match value {
            Value::Null => Ok(String::new()),
            Value::String(s) => Ok(s.trim().to_owned()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(invalid(format!("{path}: expected a string"))),
        }
    }

    fn integer(value: &Value, path: &str) -> Result<i64, ConfigError> {
        let bad = || invalid(format!("{path}: expected an integer"));
        match value {
            Value::Number(n) => n.as_i64().ok_or_else(bad),
            Value::String(s) => s.trim().parse().map_err(|_| bad()),
            _ => Err(bad()),
        }
    }

    /// goscon's times are whole seconds, and zero or less means zero.
    fn seconds(value: &Value, path: &str) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(
            integer(value, path)?.max(0).unsigned_abs(),
        ))
    }

    fn boolean(value: &Value, path: &str) -> Result<bool, ConfigError> {
        match value {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            _ => Err(invalid(format!("{path}: expected true or false"))),
        }
    }

    fn hosts(
        value: &Value,
        path: &str,
        ignored: &mut Vec<String>,
    ) -> Result<Vec<UpstreamHost>, ConfigError> {
        let list = match value {
            Value::Null => return Ok(Vec::new()),
            Value::Sequence(list) => list,
            _ => return Err(invalid(format!("{path}: expected a list of hosts"))),
        };
        let mut out = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            let here = format!("{path}[{i}]");
            let mut host = UpstreamHost {
                name: String::new(),
                addr: String::new(),
                weight: GOSCON_DEFAULT_WEIGHT,
            };
            for (k, v) in section(entry, &here)? {
                let k = key_name(k);
                let field = format!("{here}.{k}");
                match k.as_str() {
                    "name" => host.name = string(v, &field)?,
                    "addr" => host.addr = string(v, &field)?,
                    "weight" => {
                        let w = integer(v, &field)?;
                        host.weight = if w <= 0 {
                            GOSCON_DEFAULT_WEIGHT
                        } else {
                            u32::try_from(w)
                                .map_err(|_| invalid(format!("{field}: {w} is too large")))?
                        };
                    }
                    _ => ignored.push(field),
                }
            }
            if host.addr.is_empty() {
                return Err(invalid(format!("{here}: `addr` is missing")));
            }
            out.push(host);
        }
        Ok(out)
    }

    /// goscon's four keys, and ringgate's own beside them (times in whole
    /// seconds, as goscon writes them). An empty `resolv:` is off, as in goscon.
    fn resolv(
        value: &Value,
        path: &str,
        ignored: &mut Vec<String>,
    ) -> Result<Option<super::ResolvConfig>, ConfigError> {
        if value.is_null() {
            return Ok(None);
        }
        let mut r = super::ResolvConfig::default();
        for (k, v) in section(value, path)? {
            let k = key_name(k);
            let field = format!("{path}.{k}");
            let count = |v: &Value| -> Result<usize, ConfigError> {
                usize::try_from(integer(v, &field)?)
                    .map_err(|_| invalid(format!("{field}: expected a count")))
            };
            match k.as_str() {
                "prefix" => r.prefix = string(v, &field)?,
                "suffix" => r.suffix = string(v, &field)?,
                "pattern" => r.pattern = string(v, &field)?,
                "port" => {
                    let p = string(v, &field)?;
                    r.port = p.parse().map_err(|_| {
                        invalid(format!(
                            "{field} `{p}`: expected a port number (ringgate does not look up service names)"
                        ))
                    })?;
                }
                "nameserver" => {
                    let ns = string(v, &field)?;
                    r.nameserver =
                        if ns.is_empty() {
                            None
                        } else {
                            Some(ns.parse().map_err(|_| {
                                invalid(format!("{field} `{ns}`: expected IP:PORT"))
                            })?)
                        };
                }
                "min_ttl" => r.min_ttl = seconds(v, &field)?,
                "max_ttl" => r.max_ttl = seconds(v, &field)?,
                "negative_ttl" => r.negative_ttl = seconds(v, &field)?,
                "timeout" => r.timeout = seconds(v, &field)?,
                "cache_entries" => r.cache_entries = count(v)?,
                "queue" => r.queue = count(v)?,
                _ => ignored.push(field),
            }
        }
        Ok(Some(r))
    }

    /// Go accepts `:port` for every interface.
    pub(super) fn listen_addr(tcp: &str) -> Result<SocketAddr, ConfigError> {
        let full = match tcp.strip_prefix(':') {
            Some(port) => format!("0.0.0.0:{port}"),
            None => tcp.to_owned(),
        };
        full.parse().map_err(|_| {
            invalid(format!(
                "tcp `{tcp}`: expected a listen address such as 0.0.0.0:1248 (an IP, not a host name)"
            ))
        })
    }
}

impl ServeConfig {
    /// The engine settings these describe. Upstream addresses are resolved
    /// here, once, at start: a name that does not resolve is an error now
    /// rather than a failed session later.
    pub fn engine_config(&self) -> Result<crate::engine::Config, ConfigError> {
        self.build().map(|(cfg, _)| cfg)
    }

    /// The proxy settings these describe, with upstream addresses resolved
    /// now (blocking) and the DNS resolver for `resolv` started; `None` when
    /// neither hosts nor `resolv` are configured (the built-in echo).
    pub fn proxy(&self) -> Result<Option<crate::gate::Proxy>, ConfigError> {
        use crate::gate::{Host, Proxy, Upstreams};
        use std::net::ToSocketAddrs;
        let mut hosts = Vec::with_capacity(self.upstream.hosts.len());
        for h in &self.upstream.hosts {
            let addr = h
                .addr
                .to_socket_addrs()
                .map_err(|e| invalid(format!("upstream `{}`: cannot resolve: {e}", h.addr)))?
                .next()
                .ok_or_else(|| invalid(format!("upstream `{}`: no address", h.addr)))?;
            hosts.push(Host {
                name: h.name.clone(),
                addr,
                weight: h.weight,
            });
        }
        let resolv = match &self.upstream.resolv {
            Some(r) => Some(std::sync::Arc::new(
                crate::gate::resolv::Resolver::start(r.settings()).map_err(invalid)?,
            )),
            None => None,
        };
        if hosts.is_empty() && resolv.is_none() {
            return Ok(None);
        }
        Ok(Some(Proxy {
            upstreams: Upstreams::new(hosts),
            net: self.upstream.net,
            announce: self.announce,
            connect_timeout: self.upstream.connect_timeout,
            resolv,
        }))
    }

    /// The limits and timeouts of these settings that can change while the
    /// gate runs.
    pub fn limits(&self) -> crate::engine::Limits {
        crate::engine::Limits {
            handshake_timeout: self.handshake_timeout,
            reuse_time: self.reuse_time,
            idle_timeout: self.idle_timeout.filter(|d| !d.is_zero()),
            max_sessions: self.max_sessions,
            max_pending_handshakes: self.max_pending_handshakes,
        }
    }

    /// The TLS door's certificate and key, read from their files, when it
    /// has one.
    pub fn tls_server_config(
        &self,
    ) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, ConfigError> {
        let t = &self.websocket.tls;
        let (Some(_), Some(cert), Some(key)) = (t.listen, &t.cert, &t.key) else {
            return Ok(None);
        };
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| {
                invalid(format!(
                    "websocket.tls.{what}: cannot read {}: {e}",
                    path.display()
                ))
            })
        };
        let (cert_pem, key_pem) = (read(cert, "cert")?, read(key, "key")?);
        crate::proto::tls::server_config(&cert_pem, &key_pem)
            .map(Some)
            .map_err(|e| {
                invalid(format!(
                    "websocket.tls ({}, {}): {e}",
                    cert.display(),
                    key.display()
                ))
            })
    }

    /// The engine settings, and in proxy mode the proxy whose hosts a
    /// reload can replace.
    #[allow(clippy::type_complexity)]
    pub fn build(
        &self,
    ) -> Result<
        (
            crate::engine::Config,
            Option<std::sync::Arc<crate::gate::ReloadableProxy>>,
        ),
        ConfigError,
    > {
        use crate::gate::{Backend, ReloadableProxy};
        let proxy = self
            .proxy()?
            .map(|p| std::sync::Arc::new(ReloadableProxy::new(p)));
        let backend = match &proxy {
            Some(p) => Backend::Proxy(p.clone()),
            None => Backend::Echo,
        };
        let cfg = crate::engine::Config {
            listen: self.listen,
            shards: self.shards,
            shard_threads: self.threads,
            scp: !self.plain,
            handshake_timeout: self.handshake_timeout,
            reuse_time: self.reuse_time,
            reuse_buffer: self.reuse_buffer,
            idle_timeout: self.idle_timeout.filter(|d| !d.is_zero()),
            keepalive: self.tcp_keepalive.filter(|d| !d.is_zero()),
            max_sessions: self.max_sessions,
            max_pending_handshakes: self.max_pending_handshakes,
            relay_buffer: self.relay_buffer,
            recv_buffers: self.recv_buffers,
            recv_buffer_size: self.recv_buffer_size,
            direct_table: self.direct_table,
            doors: self
                .stable
                .map(|a| (a, crate::engine::Door::Stable))
                .into_iter()
                .chain(
                    self.websocket
                        .listen
                        .map(|a| (a, crate::engine::Door::Ws(self.websocket.mode))),
                )
                .chain(
                    self.websocket
                        .tls
                        .listen
                        .map(|a| (a, crate::engine::Door::Wss(self.websocket.mode))),
                )
                .collect(),
            ws: self.websocket.settings(),
            tls: self
                .tls_server_config()?
                .map(crate::engine::ws::TlsKeys::new),
            kcp: self.kcp.listen(),
            backend,
            ..crate::engine::Config::default()
        };
        Ok((cfg, proxy))
    }

    /// These settings in goscon's `config.yaml` shape, for an operator who
    /// started the gate from one (times in whole seconds, as goscon reads them).
    pub fn to_goscon_yaml(&self) -> String {
        use serde_norway::{Mapping, Value};
        fn map(pairs: Vec<(&str, Value)>) -> Value {
            let mut m = Mapping::new();
            for (k, v) in pairs {
                m.insert(Value::String(k.into()), v);
            }
            Value::Mapping(m)
        }
        let secs = |d: Duration| Value::Number(d.as_secs().into());
        let hosts = self
            .upstream
            .hosts
            .iter()
            .map(|h| {
                map(vec![
                    ("name", Value::String(h.name.clone())),
                    ("addr", Value::String(h.addr.clone())),
                    ("weight", Value::Number(h.weight.into())),
                ])
            })
            .collect();
        let root = map(vec![
            (
                "manager",
                Value::String(self.admin.listen.map(|a| a.to_string()).unwrap_or_default()),
            ),
            ("tcp", Value::String(self.listen.to_string())),
            (
                "scp",
                map(vec![
                    ("handshake_timeout", secs(self.handshake_timeout)),
                    ("reuse_time", secs(self.reuse_time)),
                    ("reuse_buffer", Value::Number(self.reuse_buffer.into())),
                ]),
            ),
            (
                "tcp_option",
                map(vec![
                    ("read_timeout", secs(self.idle_timeout.unwrap_or_default())),
                    ("keepalive", Value::Bool(self.tcp_keepalive.is_some())),
                    (
                        "keepalive_interval",
                        secs(self.tcp_keepalive.unwrap_or_default()),
                    ),
                ]),
            ),
            ("upstream_option", {
                let mut option = vec![("net", Value::String(self.upstream.net.to_string()))];
                if let Some(r) = &self.upstream.resolv {
                    let mut keys = vec![
                        ("prefix", Value::String(r.prefix.clone())),
                        ("suffix", Value::String(r.suffix.clone())),
                        ("port", Value::Number(r.port.into())),
                        ("pattern", Value::String(r.pattern.clone())),
                        ("min_ttl", secs(r.min_ttl)),
                        ("max_ttl", secs(r.max_ttl)),
                        ("negative_ttl", secs(r.negative_ttl)),
                        ("timeout", secs(r.timeout)),
                        ("cache_entries", Value::Number(r.cache_entries.into())),
                        ("queue", Value::Number(r.queue.into())),
                    ];
                    if let Some(ns) = r.nameserver {
                        keys.push(("nameserver", Value::String(ns.to_string())));
                    }
                    option.push(("resolv", map(keys)));
                }
                map(option)
            }),
            ("hosts", Value::Sequence(hosts)),
        ]);
        let mut root = root;
        if let (Some(addr), Value::Mapping(m)) = (self.kcp.listen, &mut root) {
            let k = &self.kcp;
            let n = |v: u64| Value::Number(v.into());
            m.insert(Value::String("kcp".into()), Value::String(addr.to_string()));
            m.insert(
                Value::String("kcp_option".into()),
                map(vec![
                    ("read_timeout", secs(k.read_timeout)),
                    ("fec_data_shards", n(k.fec_data_shards as u64)),
                    ("fec_parity_shards", n(k.fec_parity_shards as u64)),
                    ("read_buffer", n(k.read_buffer as u64)),
                    ("write_buffer", n(k.write_buffer as u64)),
                    ("opt_mtu", n(k.mtu as u64)),
                    ("opt_nodelay", n(k.nodelay as u64)),
                    ("opt_interval", n(k.interval as u64)),
                    ("opt_resend", n(k.resend as u64)),
                    ("opt_nc", n(k.nc as u64)),
                    ("opt_sndwnd", n(k.sndwnd as u64)),
                    ("opt_rcvwnd", n(k.rcvwnd as u64)),
                    ("opt_stream", Value::Bool(k.stream)),
                    ("opt_writedelay", Value::Bool(k.writedelay)),
                ]),
            );
        }
        serde_norway::to_string(&root).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn host(name: &str, addr: &str, weight: u32) -> UpstreamHost {
        UpstreamHost {
            name: name.into(),
            addr: addr.into(),
            weight,
        }
    }

    fn invalid_message(cfg: &ServeConfig) -> String {
        match cfg.validate() {
            Err(ConfigError::Invalid(m)) => m,
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = ServeConfig::default();
        assert_eq!(c.listen, "127.0.0.1:1248".parse().unwrap());
        assert_eq!(c.shards, 0, "the gate chooses");
        assert_eq!(c.handshake_timeout, secs(30));
        assert_eq!(c.reuse_time, secs(30));
        assert_eq!(c.reuse_buffer, 65536);
        assert_eq!(c.idle_timeout, None);
        assert_eq!(c.tcp_keepalive, Some(secs(60)));
        assert_eq!(c.max_sessions, 1_000_000);
        assert_eq!(c.max_pending_handshakes, 65_536);
        assert_eq!(c.announce, Announce::None);
        assert_eq!(c.upstream.net, UpstreamNet::Tcp);
        assert!(c.upstream.hosts.is_empty());
        assert_eq!(c.upstream.connect_timeout, secs(10));
        assert!(!c.plain);
        c.validate().unwrap();
        assert_eq!(ServeConfig::from_toml_str("").unwrap(), c);
    }

    #[test]
    fn toml_round_trips() {
        let mut c = ServeConfig {
            listen: "[::1]:7000".parse().unwrap(),
            shards: 3,
            handshake_timeout: Duration::from_millis(1500),
            idle_timeout: Some(secs(120)),
            tcp_keepalive: None,
            announce: Announce::Sproto { type_: 7 },
            plain: true,
            ..ServeConfig::default()
        };
        c.upstream.net = UpstreamNet::Scp;
        c.upstream.hosts = vec![
            host("lobby", "10.0.0.1:9000", 5),
            host("", "backend:9001", 0),
        ];
        for cfg in [ServeConfig::default(), c] {
            let text = toml::to_string(&cfg).unwrap();
            assert_eq!(ServeConfig::from_toml_str(&text).unwrap(), cfg, "{text}");
        }
    }

    #[test]
    fn toml_durations_take_human_strings_and_integer_seconds() {
        let c = ServeConfig::from_toml_str(
            "handshake_timeout = \"500ms\"\nreuse_time = 45\nidle_timeout = \"2m\"\ntcp_keepalive = \"off\"\n[upstream]\nconnect_timeout = \"1s 500ms\"\n",
        )
        .unwrap();
        assert_eq!(c.handshake_timeout, Duration::from_millis(500));
        assert_eq!(c.reuse_time, secs(45));
        assert_eq!(c.idle_timeout, Some(secs(120)));
        assert_eq!(c.tcp_keepalive, None);
        assert_eq!(c.upstream.connect_timeout, Duration::from_millis(1500));
        let c = ServeConfig::from_toml_str("idle_timeout = 0\ntcp_keepalive = 30").unwrap();
        assert_eq!((c.idle_timeout, c.tcp_keepalive), (None, Some(secs(30))));
        for bad in [
            "reuse_time = -1",
            "reuse_time = \"soon\"",
            "reuse_time = 1.5",
        ] {
            assert!(ServeConfig::from_toml_str(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_toml_keys_are_rejected() {
        for text in [
            "listen_addr = \"0.0.0.0:1\"",
            "[upstream]\nnett = \"tcp\"",
            "[[upstream.hosts]]\naddr = \"a:1\"\nweigh = 3",
        ] {
            let err = ServeConfig::from_toml_str(text).unwrap_err().to_string();
            assert!(err.contains("unknown field"), "{text}: {err}");
        }
    }

    #[test]
    fn validation_errors_name_the_key() {
        let ok = ServeConfig::default;
        let cases: Vec<(ServeConfig, &str)> = vec![
            (
                ServeConfig {
                    shards: MAX_SHARDS + 1,
                    ..ok()
                },
                "shards",
            ),
            (
                ServeConfig {
                    handshake_timeout: Duration::ZERO,
                    ..ok()
                },
                "handshake_timeout",
            ),
            (
                ServeConfig {
                    reuse_buffer: MIN_REUSE_BUFFER - 1,
                    ..ok()
                },
                "reuse_buffer",
            ),
            (
                ServeConfig {
                    reuse_buffer: MAX_REUSE_BUFFER + 1,
                    ..ok()
                },
                "reuse_buffer",
            ),
            (
                ServeConfig {
                    tcp_keepalive: Some(Duration::from_millis(500)),
                    ..ok()
                },
                "tcp_keepalive",
            ),
            (
                ServeConfig {
                    max_sessions: 0,
                    ..ok()
                },
                "max_sessions",
            ),
            (
                ServeConfig {
                    max_pending_handshakes: 0,
                    ..ok()
                },
                "max_pending_handshakes",
            ),
            (
                ServeConfig {
                    relay_buffer: 10,
                    ..ok()
                },
                "relay_buffer",
            ),
            (
                ServeConfig {
                    recv_buffers: 1000,
                    ..ok()
                },
                "recv_buffers",
            ),
            (
                ServeConfig {
                    recv_buffer_size: 100,
                    ..ok()
                },
                "recv_buffer_size",
            ),
        ];
        for (cfg, key) in cases {
            let msg = invalid_message(&cfg);
            assert!(msg.contains(key), "{key}: {msg}");
        }
        for b in [MIN_REUSE_BUFFER, MAX_REUSE_BUFFER] {
            ServeConfig {
                reuse_buffer: b,
                ..ok()
            }
            .validate()
            .unwrap();
        }
    }

    #[test]
    fn upstream_validation() {
        let with = |hosts: Vec<UpstreamHost>| {
            let mut c = ServeConfig::default();
            c.upstream.hosts = hosts;
            c
        };
        let cases = [
            (with(vec![host("a-b", "h:1", 1)]), "hosts[0].name"),
            (
                with(vec![host("a", "h:1", 1), host("b", "h", 1)]),
                "hosts[1].addr",
            ),
            (with(vec![host("a", "h:0", 1)]), "port"),
            (with(vec![host("a", "h:99999", 1)]), "port"),
            (with(vec![host("a", ":80", 1)]), "host is missing"),
            (
                with(vec![host("a", "h:1", 0), host("b", "h:2", 0)]),
                "weight",
            ),
            (
                with(vec![host("a", "h:1", u32::MAX), host("b", "h:2", 1)]),
                "weights add up",
            ),
        ];
        for (cfg, needle) in cases {
            let msg = invalid_message(&cfg);
            assert!(msg.contains(needle), "{needle}: {msg}");
        }
        let mut c = with(vec![
            host("", "[::1]:80", 0),
            host("Lobby_2", "db.internal:9000", 1),
        ]);
        c.validate().unwrap();
        c.upstream.connect_timeout = Duration::ZERO;
        assert!(invalid_message(&c).contains("connect_timeout"));
        with(Vec::new()).validate().unwrap();
    }

    #[test]
    fn announce_parses_and_prints() {
        assert_eq!("none".parse::<Announce>().unwrap(), Announce::None);
        assert_eq!("proxy-v2".parse::<Announce>().unwrap(), Announce::ProxyV2);
        assert_eq!(
            "sproto:4294967295".parse::<Announce>().unwrap(),
            Announce::Sproto { type_: u32::MAX }
        );
        for a in [
            Announce::None,
            Announce::ProxyV2,
            Announce::Sproto { type_: 12 },
        ] {
            assert_eq!(a.to_string().parse::<Announce>().unwrap(), a);
        }
        for bad in [
            "",
            "sproto",
            "sproto:",
            "sproto:-1",
            "sproto:x",
            "sproto:4294967296",
            "proxy",
            "PROXY-V2",
        ] {
            let err = bad.parse::<Announce>().unwrap_err().to_string();
            assert!(
                err.contains("expected `none`, `sproto:<type>` or `proxy-v2`"),
                "{bad}: {err}"
            );
        }
        let c = ServeConfig::from_toml_str("announce = \"sproto:3\"").unwrap();
        assert_eq!(c.announce, Announce::Sproto { type_: 3 });
        assert!(ServeConfig::from_toml_str("announce = \"haproxy\"").is_err());
    }

    #[test]
    fn upstream_net_parses() {
        assert_eq!("tcp".parse::<UpstreamNet>().unwrap(), UpstreamNet::Tcp);
        assert_eq!("SCP".parse::<UpstreamNet>().unwrap(), UpstreamNet::Scp);
        assert!(matches!(
            "kcp".parse::<UpstreamNet>(),
            Err(ConfigError::Unsupported(_))
        ));
        assert!(matches!(
            "udp".parse::<UpstreamNet>(),
            Err(ConfigError::Invalid(_))
        ));
        let err = ServeConfig::from_toml_str("[upstream]\nnet = \"kcp\"").unwrap_err();
        assert!(err.to_string().contains("kcp"), "{err}");
    }

    #[test]
    fn parse_duration_forms() {
        assert_eq!(parse_duration("30").unwrap(), secs(30));
        assert_eq!(parse_duration(" 30s ").unwrap(), secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), secs(120));
        assert_eq!(parse_duration("off").unwrap(), Duration::ZERO);
        for bad in ["", "-1", "1.5", "soon", "99999999999999999999999"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn example_file_documents_the_defaults() {
        let text = include_str!("../ringgate.toml");
        assert_eq!(
            ServeConfig::from_toml_str(text).unwrap(),
            ServeConfig::default()
        );
        // Every key of the settings appears in the example, set or commented.
        let all = toml::to_string(&ServeConfig {
            upstream: UpstreamConfig {
                hosts: vec![host("a", "h:1", 1)],
                resolv: Some(ResolvConfig {
                    nameserver: Some("127.0.0.1:53".parse().unwrap()),
                    ..ResolvConfig::default()
                }),
                ..UpstreamConfig::default()
            },
            ..ServeConfig::default()
        })
        .unwrap();
        for line in all.lines() {
            if let Some((key, _)) = line.split_once(" = ") {
                assert!(
                    text.contains(&format!("{key} =")),
                    "ringgate.toml lacks `{key}`"
                );
            }
        }
    }

    #[test]
    fn goscon_fixture_maps_to_serve_config() {
        let text = include_str!("../tests/data/goscon-config.yaml");
        let (cfg, mut ignored) = goscon::parse(text).unwrap();
        let expected = ServeConfig {
            listen: "0.0.0.0:7000".parse().unwrap(),
            handshake_timeout: secs(10),
            reuse_time: secs(45),
            reuse_buffer: 131072,
            idle_timeout: Some(secs(300)),
            tcp_keepalive: Some(secs(20)),
            admin: AdminConfig {
                listen: Some("127.0.0.1:7100".parse().unwrap()),
            },
            upstream: UpstreamConfig {
                net: UpstreamNet::Scp,
                hosts: vec![
                    host("lobby", "10.0.0.5:9000", 3),
                    host("lobby", "10.0.0.6:9000", GOSCON_DEFAULT_WEIGHT),
                    host("battle_1", "battle1.internal:9100", GOSCON_DEFAULT_WEIGHT),
                    host("", "10.0.0.9:9200", GOSCON_DEFAULT_WEIGHT),
                ],
                resolv: Some(ResolvConfig {
                    prefix: "game-".into(),
                    suffix: ".svc.local".into(),
                    port: 9000,
                    ..ResolvConfig::default()
                }),
                ..UpstreamConfig::default()
            },
            kcp: KcpConfig {
                listen: Some("0.0.0.0:7000".parse().unwrap()),
                read_timeout: secs(30),
                mtu: 1200,
                nodelay: true,
                ..KcpConfig::default()
            },
            ..ServeConfig::default()
        };
        assert_eq!(cfg, expected);
        ignored.sort();
        assert_eq!(ignored, ["hosts[2].weigh", "kcp_option.reuseport"]);
        assert_eq!(ServeConfig::from_goscon_yaml_str(text).unwrap(), expected);
    }

    #[test]
    fn goscon_defaults_are_goscons() {
        let cfg = ServeConfig::from_goscon_yaml_str("hosts:\n  - addr: 127.0.0.1:1249\n").unwrap();
        assert_eq!(cfg.listen, GOSCON_DEFAULT_LISTEN);
        assert_eq!(cfg.handshake_timeout, secs(30));
        assert_eq!(cfg.reuse_time, secs(30));
        assert_eq!(cfg.reuse_buffer, 65536);
        assert_eq!(cfg.idle_timeout, None);
        assert_eq!(cfg.tcp_keepalive, Some(secs(60)));
        assert_eq!(cfg.upstream.hosts, [host("", "127.0.0.1:1249", 100)]);
        assert_eq!(goscon::parse("").unwrap().0.listen, GOSCON_DEFAULT_LISTEN);
    }

    #[test]
    fn goscon_values_as_viper_reads_them() {
        let text = "TCP: \":1300\"\nscp:\n  Reuse_Time: \"12\"\n  reuse_buffer: \"8192\"\n\
                    tcp_option:\n  keepalive: \"false\"\n  read_timeout: -5\n\
                    hosts:\n  - Name: a\n    ADDR: h:1\n    Weight: 0\n";
        let cfg = ServeConfig::from_goscon_yaml_str(text).unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:1300".parse().unwrap());
        assert_eq!(cfg.reuse_time, secs(12));
        assert_eq!(cfg.reuse_buffer, 8192);
        assert_eq!(cfg.tcp_keepalive, None);
        assert_eq!(cfg.idle_timeout, None);
        assert_eq!(
            cfg.upstream.hosts,
            [host("a", "h:1", GOSCON_DEFAULT_WEIGHT)]
        );
        let cfg = ServeConfig::from_goscon_yaml_str("scp_option:\n  reuse_time: 5\n").unwrap();
        assert_eq!(cfg.reuse_time, secs(5));
    }

    #[test]
    fn resolv_in_goscon_yaml_and_toml() {
        let yaml = "upstream_option:\n  resolv:\n    Prefix: g-\n    suffix: .svc\n    \
                    port: 7000\n    pattern: ^game[0-9]+$\n    nameserver: 127.0.0.1:5353\n    \
                    negative_ttl: 2\n    weird: 1\n";
        let (cfg, ignored) = goscon::parse(yaml).unwrap();
        let expected = ResolvConfig {
            prefix: "g-".into(),
            suffix: ".svc".into(),
            port: 7000,
            pattern: "^game[0-9]+$".into(),
            nameserver: Some("127.0.0.1:5353".parse().unwrap()),
            negative_ttl: secs(2),
            ..ResolvConfig::default()
        };
        assert_eq!(cfg.upstream.resolv.as_ref(), Some(&expected));
        assert_eq!(ignored, ["upstream_option.resolv.weird"]);
        // Written back in goscon's shape, it reads the same.
        let again = goscon::parse(&cfg.to_goscon_yaml()).unwrap().0;
        assert_eq!(again.upstream.resolv, cfg.upstream.resolv);
        // An empty `resolv:` is off, as in goscon.
        let off = goscon::parse("upstream_option:\n  resolv:\n").unwrap().0;
        assert_eq!(off.upstream.resolv, None);

        let toml = "[upstream.resolv]\nprefix = \"g-\"\nsuffix = \".svc\"\nport = 7000\n\
                    pattern = \"^game[0-9]+$\"\nnameserver = \"127.0.0.1:5353\"\nnegative_ttl = \"2s\"\n";
        let cfg = ServeConfig::from_toml_str(toml).unwrap();
        assert_eq!(cfg.upstream.resolv, Some(expected));
        let back = ServeConfig::from_toml_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);

        for (text, needle) in [
            (
                "[upstream.resolv]\nsuffix = \".x\"\n",
                "resolv.port is required",
            ),
            (
                "[upstream.resolv]\nport = 1\npattern = \"(\"\n",
                "resolv.pattern",
            ),
            (
                "[upstream.resolv]\nport = 1\nmin_ttl = \"2m\"\nmax_ttl = \"1m\"\n",
                "max_ttl",
            ),
            ("[upstream.resolv]\nport = 1\nqueue = 0\n", "queue"),
            ("[upstream.resolv]\nport = 1\nprefx = \"a\"\n", "prefx"),
        ] {
            let err = ServeConfig::from_toml_str(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        let err =
            ServeConfig::from_goscon_yaml_str("upstream_option:\n  resolv:\n    port: https\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("port number"), "{err}");
    }

    #[test]
    fn goscon_kcp_listens_beside_tcp() {
        let only_kcp = ServeConfig::from_goscon_yaml_str("tcp: \"\"\nkcp: 0.0.0.0:1248\n");
        assert!(
            matches!(&only_kcp, Err(ConfigError::Unsupported(m)) if m.contains("KCP")),
            "{only_kcp:?}"
        );
        let kcp_upstream = ServeConfig::from_goscon_yaml_str("upstream_option:\n  net: kcp\n");
        assert!(matches!(kcp_upstream, Err(ConfigError::Unsupported(_))));
        // goscon's sample: both on one port; every kcp_option key is read.
        let both = ServeConfig::from_goscon_yaml_str(
            "tcp: 0.0.0.0:1\nkcp: 0.0.0.0:1\nkcp_option:\n  read_timeout: 60\n  fec_data_shards: 3\n  \
             fec_parity_shards: 2\n  read_buffer: 4194304\n  write_buffer: 4194304\n  opt_mtu: 1300\n  \
             opt_nodelay: 0\n  opt_interval: 20\n  opt_resend: 0\n  opt_nc: 0\n  opt_sndwnd: 2048\n  \
             opt_rcvwnd: 1024\n  opt_stream: false\n  opt_writedelay: true\n",
        )
        .unwrap();
        assert_eq!(both.listen, "0.0.0.0:1".parse().unwrap());
        assert_eq!(
            both.kcp,
            KcpConfig {
                listen: Some("0.0.0.0:1".parse().unwrap()),
                mtu: 1300,
                nodelay: false,
                interval: 20,
                resend: 0,
                nc: false,
                sndwnd: 2048,
                rcvwnd: 1024,
                stream: false,
                writedelay: true,
                read_timeout: secs(60),
                read_buffer: 4194304,
                write_buffer: 4194304,
                fec_data_shards: 3,
                fec_parity_shards: 2,
                max_conversations: KcpConfig::default().max_conversations,
            }
        );
        both.validate().unwrap();
        // And back out in goscon's shape.
        let again = ServeConfig::from_goscon_yaml_str(&both.to_goscon_yaml()).unwrap();
        assert_eq!(again.kcp, both.kcp);
        let bad = ServeConfig::from_goscon_yaml_str("kcp: 0.0.0.0:1\nkcp_option:\n  opt_mtu: 10\n");
        assert!(bad.unwrap_err().to_string().contains("mtu"));
    }

    #[test]
    fn goscon_errors() {
        for (text, needle) in [
            ("tcp: \"\"\n", "nothing to listen on"),
            ("tcp: localhost:1248\n", "tcp `localhost:1248`"),
            ("server:\n  a:\n    tcp: 0.0.0.0:1\n", "server:"),
            ("scp: 3\n", "scp: expected a mapping"),
            ("scp:\n  reuse_time: soon\n", "scp.reuse_time"),
            ("tcp_option:\n  keepalive: 2\n", "tcp_option.keepalive"),
            ("hosts:\n  - name: a\n", "hosts[0]: `addr` is missing"),
            (
                "hosts:\n  - addr: h:1\n    weight: 99999999999\n",
                "too large",
            ),
            ("scp:\n  reuse_buffer: 100\n", "reuse_buffer"),
            ("- 1\n", "mapping"),
            ("a: [", "YAML"),
        ] {
            let err = ServeConfig::from_goscon_yaml_str(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn file_errors_name_the_file() {
        let missing = Path::new("/nonexistent/ringgate.toml");
        let err = ServeConfig::from_toml_file(missing).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/ringgate.toml"));
        let dir = std::env::temp_dir().join(format!("ringgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "shards = 5000\n").unwrap();
        let err = ServeConfig::from_toml_file(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("shards"), "{err}");
        let yaml = dir.join("goscon.yaml");
        std::fs::write(&yaml, "tcp: 127.0.0.1:9\n").unwrap();
        let cfg = ServeConfig::from_goscon_yaml_file(&yaml).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9".parse().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
