//! goscon's `upstream_option.resolv`: a `targetServer` that names no
//! configured host is looked up in DNS as `prefix + name + suffix` and the
//! session goes to the addresses found, at the configured port.
//!
//! Shards must never wait on DNS, so lookups run on a thread of their own
//! (hickory's resolver on a single-threaded tokio runtime) that is fed by a
//! bounded queue and publishes its answers as an immutable map that shards
//! read without locking. A shard asking for a name not in the map (or
//! expired there) queues a lookup and gets [`Answer::Pending`]: the session
//! cannot be parked until the answer comes, so the policy closes it and the
//! client's retry finds the answer. Names in use are refreshed shortly
//! before they expire, so a busy name never misses.

use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How names are formed and looked up; equal settings share one resolver
/// across a reload, so its cache survives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Put before the `targetServer` name.
    pub prefix: String,
    /// Put after it.
    pub suffix: String,
    /// The upstream port at every address found.
    pub port: u16,
    /// A regular expression the name must match somewhere (unanchored, as
    /// goscon's Go `MatchString`); empty matches every name.
    pub pattern: String,
    /// The DNS server to ask; `None` reads the system's `/etc/resolv.conf`.
    pub nameserver: Option<SocketAddr>,
    /// Answers are kept at least this long, whatever their TTL.
    pub min_ttl: Duration,
    /// And at most this long.
    pub max_ttl: Duration,
    /// How long a name that did not resolve is remembered as such.
    pub negative_ttl: Duration,
    /// Names kept at most; past it those expiring first are dropped.
    pub cache_entries: usize,
    /// Lookups waiting or running at most; a shard whose request finds the
    /// queue full leaves it (its session closes as with any miss).
    pub queue: usize,
    /// How long one query waits for the DNS server.
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            prefix: String::new(),
            suffix: String::new(),
            port: 0,
            pattern: String::new(),
            nameserver: None,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(5),
            cache_entries: 10_000,
            queue: 1024,
            timeout: Duration::from_secs(2),
        }
    }
}

impl Settings {
    /// The compiled pattern, or why it does not compile.
    pub fn compile_pattern(&self) -> Result<Option<regex::Regex>, regex::Error> {
        if self.pattern.is_empty() {
            Ok(None)
        } else {
            regex::Regex::new(&self.pattern).map(Some)
        }
    }
}

/// What the cache says about a name now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The upstream addresses, port included.
    Found(Arc<[SocketAddr]>),
    /// The name did not resolve (or the DNS server did not answer) recently.
    NotFound,
    /// Not known yet; a lookup has been asked for (unless the queue was full).
    Pending,
}

/// One name's answer, shared by the shards that read it.
#[derive(Debug)]
struct Entry {
    /// Empty for a name that did not resolve.
    addrs: Arc<[SocketAddr]>,
    expires: Instant,
    /// From when a shard reading it asks for a fresh answer.
    refresh_at: Instant,
    /// Set by the shard that asked for the fresh answer, so the others
    /// do not queue the same name again.
    refreshing: AtomicBool,
}

type Cache = HashMap<String, Arc<Entry>>;

/// Counts of what the resolver did, for logs and metrics.
#[derive(Debug, Default)]
pub struct Counts {
    /// Answers served from the cache.
    pub hits: AtomicU64,
    /// Sessions that found no answer yet.
    pub misses: AtomicU64,
    /// Lookups that found addresses.
    pub resolved: AtomicU64,
    /// Lookups that found none or failed.
    pub failed: AtomicU64,
    /// Requests dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// The resolver: the shards' side of the cache and the queue; the lookups
/// run on a thread that ends when this is dropped.
#[derive(Debug)]
pub struct Resolver {
    settings: Settings,
    pattern: Option<regex::Regex>,
    cache: Arc<ArcSwap<Cache>>,
    requests: mpsc::Sender<String>,
    counts: Arc<Counts>,
}

impl Resolver {
    /// Starts the lookup thread; fails when the pattern does not compile,
    /// the system's resolver settings cannot be read, or no thread can be
    /// started.
    pub fn start(settings: Settings) -> Result<Resolver, String> {
        let pattern = settings
            .compile_pattern()
            .map_err(|e| format!("resolv.pattern: {e}"))?;
        let resolver = build(&settings)?;
        let cache = Arc::new(ArcSwap::from_pointee(Cache::new()));
        let counts = Arc::new(Counts::default());
        let (requests, rx) = mpsc::channel(settings.queue.max(1));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("resolv: cannot start a runtime: {e}"))?;
        let worker = Worker {
            settings: settings.clone(),
            resolver,
            cache: cache.clone(),
            counts: counts.clone(),
        };
        std::thread::Builder::new()
            .name("ringgate-resolv".into())
            .spawn(move || runtime.block_on(worker.run(rx)))
            .map_err(|e| format!("resolv: cannot start a thread: {e}"))?;
        Ok(Resolver {
            settings,
            pattern,
            cache,
            requests,
            counts,
        })
    }

    /// The settings it was started with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What it did so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Whether `name` is to be looked up at all (goscon's pattern check).
    pub fn matches(&self, name: &str) -> bool {
        self.pattern.as_ref().is_none_or(|p| p.is_match(name))
    }

    /// The cached answer for `name`, asking for a lookup when there is none
    /// or it is about to expire. Never blocks: it reads a snapshot and at
    /// most tries to queue a request.
    pub fn lookup(&self, name: &str) -> Answer {
        let now = Instant::now();
        let cache = self.cache.load();
        match cache.get(name) {
            Some(e) if e.expires > now => {
                if e.refresh_at <= now && !e.refreshing.swap(true, Ordering::Relaxed) {
                    // Refused requests are forgotten so that a later
                    // session tries again.
                    if !self.request(name) {
                        e.refreshing.store(false, Ordering::Relaxed);
                    }
                }
                self.counts.hits.fetch_add(1, Ordering::Relaxed);
                if e.addrs.is_empty() {
                    Answer::NotFound
                } else {
                    Answer::Found(e.addrs.clone())
                }
            }
            stale => {
                // An expired entry asks once, as a fresh one nearing its end.
                if stale.is_none_or(|e| !e.refreshing.swap(true, Ordering::Relaxed))
                    && !self.request(name)
                    && let Some(e) = stale
                {
                    e.refreshing.store(false, Ordering::Relaxed);
                }
                self.counts.misses.fetch_add(1, Ordering::Relaxed);
                Answer::Pending
            }
        }
    }

    fn request(&self, name: &str) -> bool {
        let queued = self.requests.try_send(name.to_owned()).is_ok();
        if !queued {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }
}

fn build(settings: &Settings) -> Result<TokioResolver, String> {
    let mut builder = match settings.nameserver {
        Some(ns) => TokioResolver::builder_with_config(
            ResolverConfig::from_parts(
                None,
                Vec::new(),
                NameServerConfigGroup::from_ips_clear(&[ns.ip()], ns.port(), true),
            ),
            TokioConnectionProvider::default(),
        ),
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("resolv: cannot read the system's DNS settings: {e}"))?,
    };
    let opts = builder.options_mut();
    opts.timeout = settings.timeout;
    // The gate keeps its own cache, read by the shards; hickory's would
    // only hand back answers nearer their end.
    opts.cache_size = 0;
    opts.positive_min_ttl = Some(settings.min_ttl);
    opts.positive_max_ttl = Some(settings.max_ttl);
    Ok(builder.build())
}

/// The lookup thread's state.
struct Worker {
    settings: Settings,
    resolver: TokioResolver,
    cache: Arc<ArcSwap<Cache>>,
    counts: Arc<Counts>,
}

type Done = (String, Result<Vec<SocketAddr>, String>, Instant);

impl Worker {
    async fn run(self, mut requests: mpsc::Receiver<String>) {
        let limit = self.settings.queue.max(1);
        let resolver = Arc::new(self.resolver.clone());
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut running: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                // Taking no request while `limit` lookups run leaves the
                // rest in the bounded queue, where shards find it full.
                req = requests.recv(), if running.len() < limit => {
                    let Some(name) = req else { break };
                    if !running.insert(name.clone()) {
                        continue;
                    }
                    let resolver = resolver.clone();
                    let done = done_tx.clone();
                    let full = format!("{}{}{}", self.settings.prefix, name, self.settings.suffix);
                    let port = self.settings.port;
                    tokio::spawn(async move {
                        let result = match resolver.lookup_ip(full.as_str()).await {
                            Ok(found) => {
                                let addrs: Vec<SocketAddr> =
                                    found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
                                Ok((addrs, found.valid_until()))
                            }
                            Err(e) => Err(format!("{full}: {e}")),
                        };
                        let (addrs, until) = match result {
                            Ok((a, until)) => (Ok(a), until),
                            Err(e) => (Err(e), Instant::now()),
                        };
                        let _ = done.send((name, addrs, until));
                    });
                }
                Some(first) = done_rx.recv() => {
                    // Publish every answer that is ready in one new map.
                    let mut batch = vec![first];
                    while let Ok(more) = done_rx.try_recv() {
                        batch.push(more);
                    }
                    for (name, _, _) in &batch {
                        running.remove(name);
                    }
                    self.publish(batch);
                }
            }
        }
    }

    fn publish(&self, batch: Vec<Done>) {
        let now = Instant::now();
        let mut cache: Cache = (**self.cache.load()).clone();
        for (name, result, valid_until) in batch {
            let (addrs, ttl): (Arc<[SocketAddr]>, Duration) = match result {
                Ok(addrs) if !addrs.is_empty() => {
                    self.counts.resolved.fetch_add(1, Ordering::Relaxed);
                    let ttl = valid_until
                        .saturating_duration_since(now)
                        .clamp(self.settings.min_ttl, self.settings.max_ttl);
                    (addrs.into(), ttl)
                }
                other => {
                    self.counts.failed.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = other {
                        tracing::debug!("resolv: {e}");
                    }
                    (Arc::from(Vec::new()), self.settings.negative_ttl)
                }
            };
            // A name in use asks again in the last fifth of its life, so
            // that its fresh answer is in before the old one expires.
            let refresh_at = now + ttl - ttl / 5;
            cache.insert(
                name,
                Arc::new(Entry {
                    addrs,
                    expires: now + ttl,
                    refresh_at,
                    refreshing: AtomicBool::new(false),
                }),
            );
        }
        if cache.len() > self.settings.cache_entries {
            cache.retain(|_, e| e.expires > now);
        }
        if cache.len() > self.settings.cache_entries {
            let mut by_expiry: Vec<(Instant, String)> =
                cache.iter().map(|(k, e)| (e.expires, k.clone())).collect();
            by_expiry.sort_unstable();
            let excess = cache.len() - self.settings.cache_entries;
            for (_, name) in by_expiry.into_iter().take(excess) {
                cache.remove(&name);
            }
        }
        self.cache.store(Arc::new(cache));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_unanchored_and_empty_matches_all() {
        let with = |pattern: &str| Settings {
            pattern: pattern.into(),
            port: 1,
            nameserver: Some("127.0.0.1:9".parse().unwrap()),
            ..Settings::default()
        };
        let r = Resolver::start(with("game[0-9]+")).unwrap();
        assert!(r.matches("game1") && r.matches("xgame12y") && !r.matches("lobby"));
        let r = Resolver::start(with("")).unwrap();
        assert!(r.matches("anything"));
        assert!(Resolver::start(with("(")).is_err());
    }
}
