//! The `ringgate` command line: `serve`, `echo` and `loadgen`.
//!
//! Settings for `serve` are layered: defaults, then a file (`--config` for
//! ringgate's TOML or `--goscon-config` for a goscon `config.yaml`), then the
//! flags given on the command line.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::loadgen::{LoadgenConfig, Protocol, TlsClientSettings, Transport, expand_range};
use crate::config::{
    Announce, ConfigError, ServeConfig, UpstreamHost, UpstreamNet, check_host_port, in_file,
    is_valid_host_name, parse_duration,
};

/// The `ringgate` command.
#[derive(Debug, Parser)]
#[command(
    name = "ringgate",
    version,
    about = "A connection gate on io_uring, wire-compatible with goscon"
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gate: accept SCP clients and proxy their sessions upstream.
    Serve(ServeArgs),
    /// Run a plain echo server (an upstream for tests and load generation).
    Echo(EchoArgs),
    /// Generate client load against a gate or an echo server.
    Loadgen(LoadgenArgs),
}

/// Options of `ringgate serve`; each one given overrides the file.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// ringgate settings file (TOML).
    #[arg(long, value_name = "FILE", conflicts_with = "goscon_config")]
    pub config: Option<PathBuf>,
    /// goscon config.yaml, used as it is.
    #[arg(long, value_name = "FILE")]
    pub goscon_config: Option<PathBuf>,
    /// Address clients connect to [default: 127.0.0.1:1248].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Threads, each with its own ring [default: from the cores and max_sessions].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Threads that drive the shards' rings [default: one per core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Upstream server; repeat for several. Replaces the file's hosts.
    #[arg(long = "upstream", value_name = "NAME=HOST:PORT[,WEIGHT]", value_parser = parse_upstream)]
    pub upstreams: Vec<UpstreamHost>,
    /// How to talk to upstreams: tcp or scp [default: tcp].
    #[arg(long, value_name = "NET", value_parser = parse_upstream_net)]
    pub upstream_net: Option<UpstreamNet>,
    /// Tell upstreams the client's address: none, sproto:TYPE or proxy-v2 [default: none].
    #[arg(long, value_name = "HOW", value_parser = parse_announce)]
    pub announce: Option<Announce>,
    /// How long a dropped session waits for its client to resume [default: 30s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub reuse_time: Option<Duration>,
    /// Longest time a client may take to send its handshake [default: 30s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// Close a client that sent nothing for this long; "off" or 0 for never [default: off].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Refuse new sessions above this many live ones [default: 1000000].
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<usize>,
    /// Serve plain TCP instead of SCP (a measurement baseline).
    #[arg(long)]
    pub plain: bool,
    /// Admin HTTP endpoint (metrics, reload, drain, sessions), e.g. 127.0.0.1:6620 [default: off].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Also listen here for cloudwu's stable-connection clients [default: off].
    #[arg(long, value_name = "ADDR")]
    pub stable: Option<SocketAddr>,
    /// Also listen here for WebSocket clients [default: off].
    #[arg(long, value_name = "ADDR")]
    pub ws: Option<SocketAddr>,
    /// What WebSocket messages carry: packets or scp [default: packets].
    #[arg(long, value_name = "MODE", value_parser = parse_ws_mode)]
    pub ws_mode: Option<crate::config::WsMode>,
    /// The WebSocket upgrade's request path [default: /].
    #[arg(long, value_name = "PATH")]
    pub ws_path: Option<String>,
    /// An origin allowed to open a WebSocket; repeat for several. Replaces the file's [default: any].
    #[arg(long = "ws-origin", value_name = "ORIGIN")]
    pub ws_origins: Vec<String>,
    /// Also listen here for WebSocket clients over TLS (wss://), with the same mode, path and origins as --ws; needs --tls-cert and --tls-key [default: off].
    #[arg(long, value_name = "ADDR")]
    pub wss: Option<SocketAddr>,
    /// PEM certificate chain (leaf first) of the wss listener; read again on reload.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the wss listener; read again on reload.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Also listen here (UDP) for SCP over KCP, as kcp-go clients speak it; may be the TCP address [default: off].
    #[arg(long, value_name = "ADDR")]
    pub kcp: Option<SocketAddr>,
}

fn parse_ws_mode(s: &str) -> Result<crate::config::WsMode, String> {
    s.parse()
        .map_err(|e: crate::config::ConfigError| e.to_string())
}

impl ServeArgs {
    /// The settings to serve with: defaults, then the file, then the flags;
    /// validated once at the end, so that a flag can correct the file.
    pub fn resolve(&self) -> Result<ServeConfig, ConfigError> {
        let mut cfg = match (&self.config, &self.goscon_config) {
            (Some(path), _) => in_file(path, ServeConfig::parse_toml)?,
            (None, Some(path)) => in_file(path, ServeConfig::parse_goscon_yaml)?,
            (None, None) => ServeConfig::default(),
        };
        if let Some(listen) = self.listen {
            cfg.listen = listen;
        }
        if let Some(shards) = self.shards {
            cfg.shards = shards;
        }
        if let Some(threads) = self.threads {
            cfg.threads = threads;
        }
        if !self.upstreams.is_empty() {
            cfg.upstream.hosts = self.upstreams.clone();
        }
        if let Some(net) = self.upstream_net {
            cfg.upstream.net = net;
        }
        if let Some(announce) = self.announce {
            cfg.announce = announce;
        }
        if let Some(d) = self.reuse_time {
            cfg.reuse_time = d;
        }
        if let Some(d) = self.handshake_timeout {
            cfg.handshake_timeout = d;
        }
        if let Some(d) = self.idle_timeout {
            cfg.idle_timeout = (!d.is_zero()).then_some(d);
        }
        if let Some(n) = self.max_sessions {
            cfg.max_sessions = n;
        }
        // A flag can turn plain mode on, never off: absent means "as the file says".
        cfg.plain |= self.plain;
        if let Some(admin) = self.admin {
            cfg.admin.listen = Some(admin);
        }
        if let Some(addr) = self.stable {
            cfg.stable = Some(addr);
        }
        if let Some(addr) = self.ws {
            cfg.websocket.listen = Some(addr);
        }
        if let Some(mode) = self.ws_mode {
            cfg.websocket.mode = mode;
        }
        if let Some(path) = &self.ws_path {
            cfg.websocket.path = path.clone();
        }
        if !self.ws_origins.is_empty() {
            cfg.websocket.origins = self.ws_origins.clone();
        }
        if let Some(addr) = self.wss {
            cfg.websocket.tls.listen = Some(addr);
        }
        if let Some(path) = &self.tls_cert {
            cfg.websocket.tls.cert = Some(path.clone());
        }
        if let Some(path) = &self.tls_key {
            cfg.websocket.tls.key = Some(path.clone());
        }
        if let Some(addr) = self.kcp {
            cfg.kcp.listen = Some(addr);
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Options of `ringgate echo`.
#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Threads, each with its own ring [default: from the cores and the fd limit, for a million connections].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
}

/// Options of `ringgate loadgen`.
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// Address of the gate or server to load.
    #[arg(long, value_name = "ADDR")]
    pub connect: SocketAddr,
    /// Connections to hold open.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub connections: usize,
    /// New connections per second while ramping up [default: all at once].
    #[arg(long, value_name = "PER_SEC")]
    pub ramp: Option<u32>,
    /// Seconds to run after the ramp.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub duration: u64,
    /// Messages per second per connection; 0 sends the next as soon as the echo returns.
    #[arg(long, value_name = "F64", default_value_t = 0.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Message size in bytes, fixed (N) or drawn from a range (MIN-MAX).
    #[arg(long, value_name = "BYTES", default_value = "64")]
    pub size: SizeRange,
    /// What the clients speak.
    #[arg(long, value_enum, default_value_t = LoadProtocol::Scp)]
    pub protocol: LoadProtocol,
    /// targetServer name sent in the SCP handshake.
    #[arg(long, value_name = "NAME", value_parser = parse_target)]
    pub target: Option<String>,
    /// Drop and resume each connection after every K messages.
    #[arg(long, value_name = "K")]
    pub resume_every: Option<u64>,
    /// Chance, per message, that a connection is cut abruptly (0 to 1).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub abort_probability: f64,
    /// Drop every connection at once and resume them all (a reconnect storm).
    #[arg(long)]
    pub storm: bool,
    /// Source addresses to spread connections over, e.g. 127.0.0.2-127.0.0.50.
    #[arg(long, value_name = "A-B")]
    pub source_ips: Option<IpRange>,
    /// Client rings [default: enough for --connections under the fd limit, at least one per core].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Threads that drive the client rings [default: one per core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// skynet login server each user logs in at once (--protocol msgserver;
    /// --connect is then the msgserver gate).
    #[arg(long, value_name = "ADDR")]
    pub login: Option<SocketAddr>,
    /// msgserver users are named this followed by their number.
    #[arg(long, value_name = "NAME", default_value = "user")]
    pub user_prefix: String,
    /// Password of every msgserver user.
    #[arg(long, value_name = "TEXT", default_value = "password")]
    pub password: String,
    /// Game server named in the msgserver login token.
    #[arg(long, value_name = "NAME", default_value = "sample")]
    pub server: String,
    /// What carries the streams: tcp; kcp (SCP over KCP over UDP, to a gate's --kcp address); ws (binary WebSocket messages, SCP or plain, to a --ws address); wss (the same over TLS, to a --wss address; needs --tls-ca or --tls-insecure).
    #[arg(long, value_enum, default_value_t = LoadTransport::Tcp)]
    pub transport: LoadTransport,
    /// KCP: chance that the clients' link loses a datagram, each way (0 to 1).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub loss: f64,
    /// KCP: chance that the clients' link delivers a datagram twice (0 to 1).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub duplicate: f64,
    /// KCP: the clients' link holds datagrams a random time, so they overtake each other.
    #[arg(long)]
    pub reorder: bool,
    /// KCP: the clients' link delays every datagram this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub delay: u64,
    /// KCP: FEC data and parity shards, as the gate's (e.g. 3,2) [default: none].
    #[arg(long, value_name = "D,P", value_parser = parse_fec)]
    pub kcp_fec: Option<(usize, usize)>,
    /// Seed of the payloads and of the KCP link's choices.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Request path of the WebSocket upgrade.
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub ws_path: String,
    /// PEM file of the certificate(s) to trust for wss (the gate's own, when self-signed).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Accept any certificate for wss (signatures are still checked): for load tests only.
    #[arg(long)]
    pub tls_insecure: bool,
    /// Name the gate's certificate must carry [default: the --connect address].
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
}

fn parse_fec(s: &str) -> Result<(usize, usize), String> {
    let (d, p) = s
        .split_once(',')
        .ok_or_else(|| "expected DATA,PARITY (e.g. 3,2)".to_string())?;
    let n = |x: &str| x.trim().parse::<usize>().map_err(|e| e.to_string());
    Ok((n(d)?, n(p)?))
}

/// What carries load-generator streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadTransport {
    /// TCP.
    Tcp,
    /// KCP over UDP (SCP only).
    Kcp,
    /// WebSocket.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl LoadgenArgs {
    /// The TLS settings for `--transport wss`, read from `--tls-ca`.
    fn tls(&self) -> Result<Option<TlsClientSettings>, String> {
        use rustls::pki_types::ServerName;
        if self.transport != LoadTransport::Wss {
            return Ok(None);
        }
        let config = match (&self.tls_ca, self.tls_insecure) {
            (Some(_), true) => return Err("--tls-ca and --tls-insecure exclude each other".into()),
            (None, false) => {
                return Err("--transport wss needs --tls-ca FILE or --tls-insecure".into());
            }
            (None, true) => crate::proto::tls::insecure_client_config(),
            (Some(path), false) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("--tls-ca: cannot read {}: {e}", path.display()))?;
                crate::proto::tls::client_config(&pem)
                    .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?
            }
        };
        let server_name = match &self.tls_name {
            Some(name) => {
                ServerName::try_from(name.clone()).map_err(|e| format!("--tls-name {name}: {e}"))?
            }
            None => ServerName::IpAddress(self.connect.ip().into()),
        };
        Ok(Some(TlsClientSettings {
            config,
            server_name,
        }))
    }

    /// The load generator's settings for these options (a `--tls-ca` file
    /// that does not read is an error).
    pub fn to_config(&self) -> Result<LoadgenConfig, String> {
        Ok(LoadgenConfig {
            connect: self.connect,
            connections: self.connections,
            ramp: self.ramp,
            duration: Duration::from_secs(self.duration),
            rate: self.rate,
            size_min: self.size.min,
            size_max: self.size.max,
            protocol: match self.protocol {
                LoadProtocol::Scp => Protocol::Scp,
                LoadProtocol::Plain => Protocol::Plain,
                LoadProtocol::StableConnection => Protocol::StableConnection,
                LoadProtocol::Msgserver => Protocol::Msgserver,
            },
            target: self.target.clone(),
            resume_every: self.resume_every,
            abort_probability: self.abort_probability,
            storm: self.storm,
            source_ips: self
                .source_ips
                .map(|r| expand_range(r.first, r.last))
                .unwrap_or_default(),
            shards: self.shards,
            threads: self.threads,
            json: self.json.clone(),
            progress: true,
            login: self.login,
            user_prefix: self.user_prefix.clone(),
            password: self.password.clone(),
            server: self.server.clone(),
            transport: match self.transport {
                LoadTransport::Tcp => Transport::Tcp,
                LoadTransport::Kcp => Transport::Kcp,
                LoadTransport::Ws => Transport::Ws,
                LoadTransport::Wss => Transport::Wss,
            },
            ws_path: self.ws_path.clone(),
            tls: self.tls()?,
            kcp: crate::proto::kcp::KcpSettings {
                fec_data: self.kcp_fec.map_or(0, |f| f.0),
                fec_parity: self.kcp_fec.map_or(0, |f| f.1),
                ..crate::proto::kcp::KcpSettings::default()
            },
            impair: crate::client::kcp::Impair {
                loss: self.loss,
                duplicate: self.duplicate,
                reorder: self.reorder,
                delay: Duration::from_millis(self.delay),
                seed: self.seed.unwrap_or(1),
            },
            seed: self.seed.unwrap_or(LoadgenConfig::default().seed),
            ..LoadgenConfig::default()
        })
    }
}

/// What load-generator clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadProtocol {
    /// SCP, as game clients do.
    Scp,
    /// Plain TCP.
    Plain,
    /// cloudwu's stable-connection dialect (a gate's `--stable` address).
    StableConnection,
    /// skynet's msgserver gate (needs --login): each user logs in once, then
    /// sends requests with sessions, each answer verified; --resume-every K
    /// reconnects and repeats a session, which must be answered once. Runs
    /// blocking clients on the client threads, one request in flight per
    /// user, rather than the io_uring client: thousands of users, not more.
    Msgserver,
}

/// A message size: `N` or `MIN-MAX` bytes, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRange {
    /// Smallest size.
    pub min: usize,
    /// Largest size.
    pub max: usize,
}

impl FromStr for SizeRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}`: expected BYTES or MIN-MAX, e.g. 64 or 16-4096");
        let num = |t: &str| t.trim().parse::<usize>().map_err(|_| bad());
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(s)?, num(s)?),
        };
        if min == 0 || min > max {
            return Err(format!(
                "`{s}`: sizes must be at least 1 and MIN no more than MAX"
            ));
        }
        Ok(Self { min, max })
    }
}

/// An inclusive range of source addresses of one family, `A-B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    /// First address.
    pub first: IpAddr,
    /// Last address.
    pub last: IpAddr,
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}`: expected FIRST-LAST, e.g. 127.0.0.2-127.0.0.50");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let last: IpAddr = b.trim().parse().map_err(|_| bad())?;
        if first.is_ipv4() != last.is_ipv4() || first > last {
            return Err(format!(
                "`{s}`: both ends must be of one family and FIRST no more than LAST"
            ));
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

const UPSTREAM_USAGE: &str = "--upstream expects NAME=HOST:PORT[,WEIGHT]";

/// Parses `NAME=HOST:PORT[,WEIGHT]`; the name may be empty, the weight
/// defaults to 1.
pub fn parse_upstream(s: &str) -> Result<UpstreamHost, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{UPSTREAM_USAGE}, got `{s}`"))?;
    let (addr, weight) = match rest.split_once(',') {
        Some((addr, w)) => {
            let w = w
                .trim()
                .parse()
                .map_err(|_| format!("{UPSTREAM_USAGE}: weight `{w}` is not a whole number"))?;
            (addr, w)
        }
        None => (rest, 1),
    };
    if !is_valid_host_name(name) {
        return Err(format!(
            "{UPSTREAM_USAGE}: NAME `{name}` may hold only letters, digits and `_`"
        ));
    }
    check_host_port(addr).map_err(|e| format!("{UPSTREAM_USAGE}: {e}"))?;
    Ok(UpstreamHost {
        name: name.to_owned(),
        addr: addr.to_owned(),
        weight,
    })
}

fn parse_upstream_net(s: &str) -> Result<UpstreamNet, String> {
    s.parse().map_err(|e: ConfigError| e.to_string())
}

fn parse_announce(s: &str) -> Result<Announce, String> {
    s.parse().map_err(|e: ConfigError| e.to_string())
}

fn parse_target(s: &str) -> Result<String, String> {
    if is_valid_host_name(s) {
        Ok(s.to_owned())
    } else {
        Err(format!("`{s}`: may hold only letters, digits and `_`"))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "`{s}`: expected a number of messages per second, 0 or more"
        )),
    }
}

fn parse_probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("`{s}`: expected a probability between 0 and 1")),
    }
}

/// Logs to stderr in the compact format, filtered by `RUST_LOG` (default
/// `info`). Calling it again does nothing.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // An error only means a subscriber is already installed (tests, embedding).
    let _ = tracing_subscriber::fmt()
        .compact()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let argv = ["ringgate", "serve"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(a) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn websocket_door_from_flags_and_file() {
        let cfg = serve(&[
            "--ws",
            "127.0.0.1:1250",
            "--ws-mode",
            "scp",
            "--ws-path",
            "/game",
            "--ws-origin",
            "https://a.example",
            "--ws-origin",
            "https://b.example",
        ])
        .unwrap()
        .resolve()
        .unwrap();
        let (engine, _) = cfg.build().unwrap();
        assert_eq!(
            engine.doors,
            vec![(
                "127.0.0.1:1250".parse().unwrap(),
                crate::engine::Door::Ws(crate::config::WsMode::Scp)
            )]
        );
        assert_eq!(engine.ws.path, "/game");
        assert_eq!(engine.ws.origins.len(), 2);
        let file = temp_file(
            "ws.toml",
            "[websocket]\nlisten = \"127.0.0.1:7\"\nmode = \"packets\"\nmax_message = 4096\n",
        );
        let cfg = serve(&["--config", file.to_str().unwrap()])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(cfg.websocket.listen, Some("127.0.0.1:7".parse().unwrap()));
        assert_eq!(cfg.build().unwrap().0.ws.max_message, 4096);
        assert!(serve(&["--ws", "127.0.0.1:1", "--ws-mode", "text"]).is_err());
        let same = serve(&["--listen", "127.0.0.1:9", "--ws", "127.0.0.1:9"]).unwrap();
        assert!(same.resolve().is_err(), "one listener, one dialect");
        let path = serve(&["--ws", "127.0.0.1:1", "--ws-path", "game"]).unwrap();
        assert!(path.resolve().is_err(), "a path starts with /");
    }

    #[test]
    fn wss_door_from_flags_and_file() {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = temp_file("wss-cert.pem", &c.cert.pem());
        let key = temp_file("wss-key.pem", &c.signing_key.serialize_pem());
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let cfg = serve(&[
            "--wss",
            "127.0.0.1:1443",
            "--ws-mode",
            "scp",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ])
        .unwrap()
        .resolve()
        .unwrap();
        let (engine, _) = cfg.build().unwrap();
        assert_eq!(
            engine.doors,
            vec![(
                "127.0.0.1:1443".parse().unwrap(),
                crate::engine::Door::Wss(crate::config::WsMode::Scp)
            )]
        );
        assert!(engine.tls.is_some());
        let file = temp_file(
            "wss.toml",
            &format!(
                "[websocket]\nlisten = \"127.0.0.1:7\"\n[websocket.tls]\nlisten = \"127.0.0.1:8\"\ncert = {cert:?}\nkey = {key:?}\n"
            ),
        );
        let cfg = serve(&["--config", file.to_str().unwrap()])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(cfg.build().unwrap().0.doors.len(), 2);
        // What is refused, and why.
        let refused = |args: &[&str]| serve(args).unwrap().resolve().unwrap_err().to_string();
        assert!(refused(&["--wss", "127.0.0.1:1"]).contains("websocket.tls.cert"));
        assert!(refused(&["--tls-cert", cert, "--tls-key", key]).contains("--wss"));
        assert!(
            refused(&[
                "--listen",
                "127.0.0.1:9",
                "--wss",
                "127.0.0.1:9",
                "--tls-cert",
                cert,
                "--tls-key",
                key
            ])
            .contains("one dialect")
        );
        let missing = serve(&[
            "--wss",
            "127.0.0.1:1",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            key,
        ])
        .unwrap()
        .resolve()
        .unwrap();
        let e = missing.build().unwrap_err().to_string();
        assert!(e.contains("cannot read /nonexistent.pem"), "{e}");
        let swapped = serve(&["--wss", "127.0.0.1:1", "--tls-cert", key, "--tls-key", cert])
            .unwrap()
            .resolve()
            .unwrap();
        assert!(swapped.build().is_err());
    }

    #[test]
    fn loadgen_transports() {
        let parse = |extra: &[&str]| {
            let argv = ["ringgate", "loadgen", "--connect", "127.0.0.1:1"]
                .into_iter()
                .chain(extra.iter().copied());
            let Command::Loadgen(l) = Cli::try_parse_from(argv).unwrap().command else {
                unreachable!()
            };
            l.to_config()
        };
        assert_eq!(parse(&[]).unwrap().transport, Transport::Tcp);
        let c = parse(&["--transport", "ws", "--ws-path", "/game"]).unwrap();
        assert_eq!((c.transport, c.ws_path.as_str()), (Transport::Ws, "/game"));
        let c = parse(&["--transport", "wss", "--tls-insecure"]).unwrap();
        assert!(c.tls.is_some());
        assert!(parse(&["--transport", "wss"]).is_err());
        let e = parse(&["--transport", "wss", "--tls-ca", "/nonexistent.pem"]).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn stable_door_from_flag_and_file() {
        let cfg = serve(&["--stable", "127.0.0.1:1249"])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(cfg.stable, Some("127.0.0.1:1249".parse().unwrap()));
        let engine = cfg.engine_config().unwrap();
        assert_eq!(
            engine.doors,
            vec![(
                "127.0.0.1:1249".parse().unwrap(),
                crate::engine::Door::Stable
            )]
        );
        let file = temp_file("stable.toml", "stable = \"127.0.0.1:7\"\n");
        let cfg = serve(&["--config", file.to_str().unwrap()])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(cfg.stable, Some("127.0.0.1:7".parse().unwrap()));
        assert_eq!(ServeConfig::default().stable, None, "off by default");
        let same = serve(&["--listen", "127.0.0.1:9", "--stable", "127.0.0.1:9"]).unwrap();
        assert!(same.resolve().is_err());
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringgate-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn no_flags_give_the_defaults() {
        assert_eq!(
            serve(&[]).unwrap().resolve().unwrap(),
            ServeConfig::default()
        );
    }

    #[test]
    fn flags_override_the_file() {
        let file = temp_file(
            "override.toml",
            "listen = \"0.0.0.0:1\"\nshards = 5000\nreuse_time = 5\nidle_timeout = \"1m\"\nannounce = \"proxy-v2\"\n\
             [upstream]\nnet = \"scp\"\n[[upstream.hosts]]\nname = \"old\"\naddr = \"h:1\"\n",
        );
        let file = file.to_str().unwrap();
        // shards = 5000 in the file is corrected by the flag before validation.
        let cfg = serve(&[
            "--config",
            file,
            "--listen",
            "127.0.0.1:2",
            "--shards",
            "4",
            "--upstream",
            "a=10.0.0.1:80,7",
            "--upstream",
            "=backend:81",
            "--upstream-net",
            "tcp",
            "--announce",
            "sproto:9",
            "--reuse-time",
            "90s",
            "--handshake-timeout",
            "500ms",
            "--idle-timeout",
            "off",
            "--max-sessions",
            "10",
            "--plain",
            "--admin",
            "127.0.0.1:6620",
        ])
        .unwrap()
        .resolve()
        .unwrap();
        assert_eq!(cfg.admin.listen, Some("127.0.0.1:6620".parse().unwrap()));
        assert_eq!(cfg.listen, "127.0.0.1:2".parse().unwrap());
        assert_eq!(cfg.shards, 4);
        assert_eq!(
            cfg.upstream.hosts,
            [
                UpstreamHost {
                    name: "a".into(),
                    addr: "10.0.0.1:80".into(),
                    weight: 7
                },
                UpstreamHost {
                    name: String::new(),
                    addr: "backend:81".into(),
                    weight: 1
                },
            ]
        );
        assert_eq!(cfg.upstream.net, UpstreamNet::Tcp);
        assert_eq!(cfg.announce, Announce::Sproto { type_: 9 });
        assert_eq!(cfg.reuse_time, Duration::from_secs(90));
        assert_eq!(cfg.handshake_timeout, Duration::from_millis(500));
        assert_eq!(cfg.idle_timeout, None);
        assert_eq!(cfg.max_sessions, 10);
        assert!(cfg.plain);

        // Without flags the file is what counts, and it must be valid.
        let err = serve(&["--config", file])
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("shards"), "{err}");
        let cfg = serve(&["--config", file, "--shards", "2"])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(cfg.reuse_time, Duration::from_secs(5));
        assert_eq!(cfg.idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(cfg.announce, Announce::ProxyV2);
        assert_eq!(cfg.upstream.hosts[0].name, "old");
    }

    #[test]
    fn goscon_file_with_flags() {
        let file = temp_file("goscon.yaml", "tcp: 0.0.0.0:7000\nscp:\n  reuse_time: 40\n");
        let file = file.to_str().unwrap();
        let cfg = serve(&["--goscon-config", file, "--listen", "127.0.0.1:7001"])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(cfg.reuse_time, Duration::from_secs(40));
    }

    #[test]
    fn config_and_goscon_config_exclude_each_other() {
        let err = serve(&["--config", "a.toml", "--goscon-config", "b.yaml"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn bad_flag_values_are_usage_errors() {
        for args in [
            &["--upstream", "a:1"][..],
            &["--upstream", "a=h"],
            &["--upstream-net", "kcp"],
            &["--announce", "sproto"],
            &["--reuse-time", "soon"],
            &["--listen", "localhost"],
        ] {
            let err = serve(args).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
        }
        let err = serve(&["--handshake-timeout", "0"])
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("handshake_timeout"), "{err}");
        let err = serve(&["--config", "/nonexistent.toml"])
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
    }

    #[test]
    fn upstream_flag_parsing() {
        let h = parse_upstream("lobby_1=10.0.0.1:9000,3").unwrap();
        assert_eq!(
            (h.name.as_str(), h.addr.as_str(), h.weight),
            ("lobby_1", "10.0.0.1:9000", 3)
        );
        let h = parse_upstream("=[::1]:80").unwrap();
        assert_eq!(
            (h.name.as_str(), h.addr.as_str(), h.weight),
            ("", "[::1]:80", 1)
        );
        assert_eq!(parse_upstream("a=h:1,0").unwrap().weight, 0);
        for (bad, needle) in [
            ("10.0.0.1:9000", "got `10.0.0.1:9000`"),
            ("a=", "HOST:PORT"),
            ("a=h", "HOST:PORT"),
            ("a=h:0", "port"),
            ("a=:80", "host is missing"),
            ("a=h:1,x", "weight `x`"),
            ("a=h:1,-1", "weight"),
            ("a b=h:1", "NAME `a b`"),
        ] {
            let err = parse_upstream(bad).unwrap_err();
            assert!(
                err.starts_with(UPSTREAM_USAGE) && err.contains(needle),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn echo_and_loadgen_parse() {
        let cli = Cli::try_parse_from([
            "ringgate",
            "echo",
            "--listen",
            "127.0.0.1:9",
            "--shards",
            "2",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Echo(EchoArgs {
                shards: Some(2),
                ..
            })
        ));
        assert!(Cli::try_parse_from(["ringgate", "echo"]).is_err());

        let cli = Cli::try_parse_from([
            "ringgate",
            "loadgen",
            "--connect",
            "127.0.0.1:1248",
            "--connections",
            "5000",
            "--ramp",
            "1000",
            "--duration",
            "30",
            "--rate",
            "2.5",
            "--size",
            "16-4096",
            "--protocol",
            "plain",
            "--target",
            "lobby",
            "--resume-every",
            "100",
            "--abort-probability",
            "0.01",
            "--storm",
            "--source-ips",
            "127.0.0.2-127.0.0.50",
            "--shards",
            "4",
            "--json",
            "out.json",
        ])
        .unwrap();
        let Command::Loadgen(l) = cli.command else {
            panic!("not loadgen")
        };
        assert_eq!(l.connections, 5000);
        assert_eq!(l.ramp, Some(1000));
        assert_eq!(l.rate, 2.5);
        assert_eq!(l.size, SizeRange { min: 16, max: 4096 });
        assert_eq!(l.protocol, LoadProtocol::Plain);
        assert_eq!(l.target.as_deref(), Some("lobby"));
        assert_eq!(l.resume_every, Some(100));
        assert!(l.storm);
        assert_eq!(l.source_ips.unwrap().to_string(), "127.0.0.2-127.0.0.50");
        assert_eq!(l.json, Some(PathBuf::from("out.json")));

        let l = match Cli::try_parse_from(["ringgate", "loadgen", "--connect", "127.0.0.1:1"])
            .unwrap()
            .command
        {
            Command::Loadgen(l) => l,
            _ => unreachable!(),
        };
        assert_eq!(
            (l.size, l.protocol, l.rate),
            (SizeRange { min: 64, max: 64 }, LoadProtocol::Scp, 0.0)
        );
        let argv = ["ringgate", "loadgen", "--connect", "127.0.0.1:1"];
        let argv = argv.into_iter().chain(["--protocol", "stable-connection"]);
        let Command::Loadgen(l) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        assert_eq!(l.to_config().unwrap().protocol, Protocol::StableConnection);
        let argv = ["ringgate", "loadgen", "--connect", "127.0.0.1:1"];
        let argv = argv.into_iter().chain([
            "--protocol",
            "msgserver",
            "--login",
            "127.0.0.1:2",
            "--user-prefix",
            "bot",
        ]);
        let Command::Loadgen(l) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        let c = l.to_config().unwrap();
        assert_eq!(c.protocol, Protocol::Msgserver);
        assert_eq!(c.login, Some("127.0.0.1:2".parse().unwrap()));
        assert_eq!(
            (c.user_prefix.as_str(), c.password.as_str()),
            ("bot", "password")
        );
        for bad in [
            &["--size", "0"][..],
            &["--size", "10-5"],
            &["--rate", "-1"],
            &["--abort-probability", "1.5"],
            &["--source-ips", "127.0.0.9-127.0.0.2"],
            &["--source-ips", "127.0.0.1-::1"],
            &["--target", "a-b"],
        ] {
            let argv = ["ringgate", "loadgen", "--connect", "127.0.0.1:1"]
                .into_iter()
                .chain(bad.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
