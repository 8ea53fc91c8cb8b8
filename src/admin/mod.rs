//! The operator's side of a running `ringgate serve`: Prometheus metrics,
//! the settings in force, reloading the settings file, draining, and
//! looking at or kicking sessions. [`Admin`] does the work (signals use it
//! too); [`serve`] answers it over HTTP on a thread of its own, never on a
//! shard.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /metrics` | the counters, Prometheus/OpenMetrics text |
//! | `GET /config` | the settings in force, TOML (YAML when started from a goscon file) |
//! | `POST /reload` (or `GET`, as goscon) | re-read the file: `succeed ...` or 400 `failed: why` |
//! | `GET /drain`, `POST /drain`, `DELETE /drain` | draining state; start; stop |
//! | `GET /sessions?limit=N` | up to N sessions (default 100), JSON |
//! | `POST /sessions/ID/kick` | close session ID |
//!
//! What a reload changes: upstream hosts and weights, `upstream.resolv`, `announce` and
//! `upstream.connect_timeout` (for sessions that start afterwards: live
//! sessions keep their upstreams), and `handshake_timeout`, `reuse_time`,
//! `idle_timeout`, `max_sessions`, `max_pending_handshakes` (at once, for
//! timers already running too), and the wss listener's certificate and key
//! (read from their files again on every reload: new connections get them,
//! open ones keep theirs; files that do not load refuse the whole reload).
//! Everything else is read when the gate starts; a reload that changes it
//! says so and leaves it as it is.

pub mod http;
pub mod metrics;

use crate::config::{ConfigError, ServeConfig};
use crate::engine::Control;
use crate::engine::ws::TlsKeys;
use crate::gate::ReloadableProxy;
use http::{Request, Response};
use prometheus_client::registry::Registry;
use serde_json::json;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

/// Sessions listed when `/sessions` names no limit.
pub const DEFAULT_SESSION_LIST: usize = 100;
/// The most sessions one `/sessions` answer lists.
pub const MAX_SESSION_LIST: usize = 10_000;

/// Re-reads the settings as at start (the file, then the command line's
/// flags), validated.
pub type Reread = Box<dyn Fn() -> Result<ServeConfig, ConfigError> + Send + Sync>;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Settings that changed and are now in force.
    pub applied: Vec<&'static str>,
    /// Settings that changed but only take effect at a restart (left as
    /// they were).
    pub needs_restart: Vec<&'static str>,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // "succeed" first, as goscon answers, for scripts written for it.
        writeln!(f, "succeed")?;
        if self.applied.is_empty() {
            writeln!(f, "applied: nothing changed")?;
        } else {
            writeln!(f, "applied: {}", self.applied.join(", "))?;
        }
        if !self.needs_restart.is_empty() {
            writeln!(
                f,
                "needs a restart (not applied): {}",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The operator's handle on a running gate.
pub struct Admin {
    control: Control,
    proxy: Option<Arc<ReloadableProxy>>,
    /// The settings in force (restart-only ones as started).
    current: Mutex<ServeConfig>,
    /// Started from a goscon file: `/config` answers in its shape.
    goscon: bool,
    reread: Reread,
    registry: Registry,
    /// The wss listener's certificate, if the gate has one.
    tls: Option<Arc<TlsKeys>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("control", &self.control)
            .field("goscon", &self.goscon)
            .finish()
    }
}

impl Admin {
    /// An admin for a gate started with `started` (`proxy` is the one the
    /// gate was given, if any); `reread` reads the settings again.
    pub fn new(
        control: Control,
        proxy: Option<Arc<ReloadableProxy>>,
        started: ServeConfig,
        goscon: bool,
        reread: Reread,
    ) -> Admin {
        let registry = metrics::registry(control.clone(), proxy.clone());
        Admin {
            control,
            proxy,
            current: Mutex::new(started),
            goscon,
            reread,
            registry,
            tls: None,
        }
    }

    /// Reloads also replace `tls`, the certificate the gate's wss listener
    /// serves (see [`crate::engine::Config::tls`]).
    pub fn with_tls(mut self, tls: Option<Arc<TlsKeys>>) -> Admin {
        self.tls = tls;
        self
    }

    /// The settings in force.
    pub fn current(&self) -> ServeConfig {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ServeConfig> {
        // A panic elsewhere while holding it left a whole config behind.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the settings and puts in force what can change while the
    /// gate runs. A file that does not read or validate, or an upstream
    /// that does not resolve, changes nothing.
    pub fn reload(&self) -> Result<ReloadReport, ConfigError> {
        let new = (self.reread)()?;
        // Read before anything is applied: a certificate that does not
        // load refuses the whole reload.
        let certificate = match &self.tls {
            Some(_) => new.tls_server_config()?,
            None => None,
        };
        let mut current = self.lock();
        let old = current.clone();
        let mut report = ReloadReport {
            applied: Vec::new(),
            needs_restart: Vec::new(),
        };
        macro_rules! restart_only {
            ($($field:ident).+, $name:literal) => {
                if new.$($field).+ != old.$($field).+ {
                    report.needs_restart.push($name);
                }
            };
        }
        restart_only!(listen, "listen");
        restart_only!(shards, "shards");
        restart_only!(reuse_buffer, "reuse_buffer");
        restart_only!(relay_buffer, "relay_buffer");
        restart_only!(recv_buffers, "recv_buffers");
        restart_only!(recv_buffer_size, "recv_buffer_size");
        restart_only!(direct_table, "direct_table");
        restart_only!(tcp_keepalive, "tcp_keepalive");
        restart_only!(plain, "plain");
        restart_only!(upstream.net, "upstream.net");
        restart_only!(admin, "admin.listen");
        restart_only!(websocket.listen, "websocket.listen");
        restart_only!(websocket.mode, "websocket.mode");
        restart_only!(websocket.path, "websocket.path");
        restart_only!(websocket.origins, "websocket.origins");
        restart_only!(websocket.max_message, "websocket.max_message");
        restart_only!(websocket.max_request, "websocket.max_request");
        restart_only!(websocket.tls.listen, "websocket.tls.listen");

        // Hosts, resolv, announce and the connect timeout travel together
        // in the proxy.
        let routes_changed = new.upstream.hosts != old.upstream.hosts
            || new.upstream.resolv != old.upstream.resolv
            || new.announce != old.announce
            || new.upstream.connect_timeout != old.upstream.connect_timeout;
        let mut routes = None;
        if routes_changed {
            let echo = new.upstream.hosts.is_empty() && new.upstream.resolv.is_none();
            match (&self.proxy, echo) {
                (Some(_), false) => routes = new.proxy()?,
                // Echo and proxy mode are different gates.
                (None, false) | (Some(_), true) => {
                    report
                        .needs_restart
                        .push("upstream.hosts and upstream.resolv (between none and some)");
                }
                (None, true) => {}
            }
        }
        if let (Some(proxy), Some(routes)) = (&self.proxy, routes) {
            proxy.replace(routes);
            current.upstream.hosts = new.upstream.hosts.clone();
            current.upstream.resolv = new.upstream.resolv.clone();
            current.announce = new.announce;
            current.upstream.connect_timeout = new.upstream.connect_timeout;
            if new.upstream.hosts != old.upstream.hosts {
                report.applied.push("upstream.hosts");
            }
            if new.upstream.resolv != old.upstream.resolv {
                report.applied.push("upstream.resolv");
            }
            if new.announce != old.announce {
                report.applied.push("announce");
            }
            if new.upstream.connect_timeout != old.upstream.connect_timeout {
                report.applied.push("upstream.connect_timeout");
            }
        }
        if let (Some(keys), Some(certificate)) = (&self.tls, certificate) {
            keys.replace(certificate);
            current.websocket.tls.cert = new.websocket.tls.cert.clone();
            current.websocket.tls.key = new.websocket.tls.key.clone();
            report
                .applied
                .push("websocket.tls.cert and key (read again)");
        }
        let (was, now) = (old.limits(), new.limits());
        if was != now {
            self.control.set_limits(&now);
            current.handshake_timeout = new.handshake_timeout;
            current.reuse_time = new.reuse_time;
            current.idle_timeout = new.idle_timeout;
            current.max_sessions = new.max_sessions;
            current.max_pending_handshakes = new.max_pending_handshakes;
            for (changed, name) in [
                (
                    was.handshake_timeout != now.handshake_timeout,
                    "handshake_timeout",
                ),
                (was.reuse_time != now.reuse_time, "reuse_time"),
                (was.idle_timeout != now.idle_timeout, "idle_timeout"),
                (was.max_sessions != now.max_sessions, "max_sessions"),
                (
                    was.max_pending_handshakes != now.max_pending_handshakes,
                    "max_pending_handshakes",
                ),
            ] {
                if changed {
                    report.applied.push(name);
                }
            }
        }
        Ok(report)
    }

    /// [`reload`](Self::reload) with a log line either way, as SIGHUP and
    /// `/reload` report it.
    pub fn reload_logged(&self) -> Response {
        match self.reload() {
            Ok(report) => {
                tracing::info!(
                    applied = %report.applied.join(", "),
                    needs_restart = %report.needs_restart.join(", "),
                    "settings reloaded"
                );
                Response::text(200, report.to_string())
            }
            Err(e) => {
                tracing::warn!("reload refused, nothing changed: {e}");
                Response::text(400, format!("failed: {e}\nnothing changed"))
            }
        }
    }

    /// Starts or stops draining; the answer says how many sessions remain.
    pub fn drain(&self, on: bool) -> serde_json::Value {
        let was = self.control.draining();
        self.control.set_draining(on);
        if on != was {
            tracing::info!(
                sessions = self.control.stats().sessions_live,
                "{}",
                if on {
                    "draining: new sessions are refused, resumes are served"
                } else {
                    "draining ended: new sessions are accepted"
                }
            );
        }
        self.drain_state()
    }

    fn drain_state(&self) -> serde_json::Value {
        let s = self.control.stats();
        json!({
            "draining": self.control.draining(),
            "sessions": s.sessions_live,
            "detached": s.sessions_detached,
        })
    }

    /// The exposition, OpenMetrics text.
    pub fn metrics(&self) -> String {
        metrics::encode(&self.registry)
    }

    /// The settings in force as text, and its content type.
    pub fn config_text(&self) -> (&'static str, String) {
        let cfg = self.current();
        if self.goscon {
            ("text/vnd.yaml; charset=utf-8", cfg.to_goscon_yaml())
        } else {
            let text = toml::to_string(&cfg)
                .unwrap_or_else(|e| format!("# cannot show the settings: {e}\n"));
            ("application/toml; charset=utf-8", text)
        }
    }

    fn sessions(&self, req: &Request) -> Response {
        let limit = match req.param("limit") {
            None => DEFAULT_SESSION_LIST,
            Some(n) => match n.parse::<usize>() {
                Ok(n) if (1..=MAX_SESSION_LIST).contains(&n) => n,
                _ => {
                    return Response::text(
                        400,
                        format!("limit must be a whole number from 1 to {MAX_SESSION_LIST}"),
                    );
                }
            },
        };
        let list: Vec<_> = self
            .control
            .sessions(limit)
            .into_iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "shard": s.shard,
                    "peer": s.peer.map(|a| a.to_string()),
                    "state": s.state.as_str(),
                    "upstream": s.upstream.map(|a| a.to_string()),
                    "target": s.target,
                    "age_seconds": s.age.as_secs_f64(),
                    "bytes_in": s.bytes_in,
                    "bytes_out": s.bytes_out,
                })
            })
            .collect();
        Response::json(
            200,
            &json!({ "live": self.control.stats().sessions_live, "sessions": list }),
        )
    }

    fn kick(&self, id: &str) -> Response {
        let Ok(id) = id.parse::<u32>() else {
            return Response::text(400, format!("`{id}` is not a session id"));
        };
        if id == 0 {
            return Response::text(400, "session 0 names no session");
        }
        if self.control.kick(id) {
            tracing::info!(session = id, "session kicked by the operator");
            Response::text(200, format!("session {id} closed"))
        } else {
            Response::text(404, format!("no live session {id}"))
        }
    }

    /// Answers one admin request.
    pub fn handle(&self, req: &Request) -> Response {
        let m = req.method.as_str();
        match req.path.as_str() {
            "/metrics" => match m {
                "GET" | "HEAD" => {
                    let text = self.metrics();
                    let (content_type, body) = if metrics::wants_openmetrics(req.accept.as_deref())
                    {
                        (metrics::OPENMETRICS, text)
                    } else {
                        (metrics::PROMETHEUS_TEXT, metrics::to_prometheus_text(&text))
                    };
                    Response {
                        status: 200,
                        content_type,
                        body,
                        headers: Vec::new(),
                    }
                }
                _ => Response::method_not_allowed("GET"),
            },
            "/config" => match m {
                "GET" | "HEAD" => {
                    let (content_type, body) = self.config_text();
                    Response {
                        status: 200,
                        content_type,
                        body,
                        headers: Vec::new(),
                    }
                }
                _ => Response::method_not_allowed("GET"),
            },
            "/reload" => match m {
                "GET" | "POST" => self.reload_logged(),
                _ => Response::method_not_allowed("POST, GET"),
            },
            "/drain" => match m {
                "GET" => Response::json(200, &self.drain_state()),
                "POST" => Response::json(200, &self.drain(true)),
                "DELETE" => Response::json(200, &self.drain(false)),
                _ => Response::method_not_allowed("GET, POST, DELETE"),
            },
            "/sessions" => match m {
                "GET" => self.sessions(req),
                _ => Response::method_not_allowed("GET"),
            },
            path => match path
                .strip_prefix("/sessions/")
                .and_then(|rest| rest.strip_suffix("/kick"))
            {
                Some(id) if m == "POST" => self.kick(id),
                Some(_) => Response::method_not_allowed("POST"),
                None => Response::text(
                    404,
                    "not found; try /metrics, /config, /reload, /drain, /sessions",
                ),
            },
        }
    }
}

/// Binds the admin listener (before the gate starts, so that a taken
/// address is a clear startup error).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Answers admin requests on `listener` on a thread of its own.
pub fn serve(admin: Arc<Admin>, listener: TcpListener) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringgate-admin".into())
        .spawn(move || http::serve(listener, Arc::new(move |req: &Request| admin.handle(req))))
        .map(|_| ())
}
