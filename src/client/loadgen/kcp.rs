//! `--transport kcp`: SCP sessions over KCP conversations, as kcp-go
//! clients open them to goscon's (or the gate's) KCP door.
//!
//! Each client thread drives its conversations from one loop: a `poll` on
//! their UDP sockets (non-blocking [`KcpLink`]s), then every conversation's
//! received bytes, clock and next message. The link impairment
//! ([`Impair`](crate::client::kcp::Impair): `--loss`, `--duplicate`,
//! `--reorder`, `--delay`, seeded by `--seed`) is applied on this side's
//! sends and receives, so the gate sees a bad network without the host
//! having one.
//!
//! Every echoed byte is checked against the message pattern, as on the TCP
//! path: bytes lost or doubled across `--resume-every` resumes (a new
//! conversation from a new port carrying SCP's resume) show up in the
//! report. One message is in flight per session (or `--rate` per second).

use super::conn::Pattern;
use super::report::ShardReport;
use super::{Control, LoadgenConfig, LoadgenError, phase};
use crate::client::kcp::{KcpDial, KcpLink};
use crate::proto::client::{ClientEvent, ClientHandshake};
use crate::proto::session::Session;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A session with no progress for this long is given up.
const STALL: Duration = Duration::from_secs(15);

/// One simulated client.
struct Client {
    /// Connection number: seeds its messages.
    n: u64,
    link: KcpLink,
    hs: Option<ClientHandshake>,
    session: Option<Session>,
    /// Messages written, and echoes completed (with the position in the
    /// current one).
    tx_msg: u64,
    rx_msg: u64,
    rx_off: usize,
    sent_at: VecDeque<Instant>,
    since_resume: u64,
    next_send: Instant,
    last_progress: Instant,
    lost: bool,
    rx: Vec<u8>,
}

impl Client {
    fn open(n: u64, cfg: &LoadgenConfig, dial: &KcpDial) -> std::io::Result<Client> {
        let mut link = KcpLink::open(cfg.connect, dial)?;
        let mut hs = ClientHandshake::new_session(rand::random(), cfg.target.as_deref(), None);
        link.send(&hs.take_output());
        link.flush();
        let now = Instant::now();
        Ok(Client {
            n,
            link,
            hs: Some(hs),
            session: None,
            tx_msg: 0,
            rx_msg: 0,
            rx_off: 0,
            sent_at: VecDeque::new(),
            since_resume: 0,
            next_send: now,
            last_progress: now,
            lost: false,
            rx: Vec::new(),
        })
    }

    /// A new conversation carrying SCP's resume of this session.
    fn resume(&mut self, cfg: &LoadgenConfig, dial: &KcpDial) -> std::io::Result<()> {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        let req = s.resume_request();
        let mut hs = ClientHandshake::resume(req.id, req.index, req.received, s.secret());
        let mut link = KcpLink::open(cfg.connect, dial)?;
        link.send(&hs.take_output());
        link.flush();
        self.link = link;
        self.hs = Some(hs);
        self.since_resume = 0;
        self.last_progress = Instant::now();
        Ok(())
    }

    /// Sends the window's unsent bytes, as far as KCP's window takes them.
    fn push_window(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let w = s.window();
        let pieces: Vec<Vec<u8>> = w.slices_from(w.flushed()).map(|p| p.to_vec()).collect();
        let mut sent = 0;
        for p in pieces {
            let n = self.link.send(&p);
            sent += n;
            if n < p.len() {
                break;
            }
        }
        if sent > 0 {
            s.window_mut().mark_sent(sent);
            self.link.flush();
        }
    }
}

/// Runs `count` KCP clients of shard `index` of `shards`; the signature of
/// the io_uring shards, so the driver in [`super::run`] serves all.
pub(crate) fn run(
    index: usize,
    shards: usize,
    count: usize,
    cfg: Arc<LoadgenConfig>,
    ctl: Arc<Control>,
) -> Result<ShardReport, LoadgenError> {
    let progress = &ctl.shards[index];
    let mut report = ShardReport::new();
    let pattern = Pattern::new(cfg.seed, cfg.size_min, cfg.size_max);
    let dial = KcpDial {
        settings: cfg.kcp.clone(),
        impair: crate::client::kcp::Impair {
            seed: cfg.impair.seed ^ index as u64,
            ..cfg.impair
        },
    };
    let mut clients: Vec<Client> = Vec::with_capacity(count);
    for k in 0..count {
        let n = (index + k * shards) as u64;
        match Client::open(n, &cfg, &dial) {
            Ok(c) => clients.push(c),
            Err(e) => {
                report.error(format!("open: {:?}", e.kind()));
                progress.gave_up.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(count);
    let mut ramp_done = false;
    let mut frame = Vec::new();
    let interval = Duration::from_millis(cfg.kcp.interval.clamp(1, 5000) as u64);
    loop {
        let ph = ctl.phase.load(Ordering::Acquire);
        if ph == phase::STOP {
            break;
        }
        let sending = ph == phase::MEASURE || ph == phase::RAMP;
        let measuring = ph == phase::MEASURE;
        // Wait for datagrams, at most until the earliest clock.
        let now = Instant::now();
        let due = clients
            .iter()
            .filter(|c| !c.lost)
            .map(|c| c.link.next_due())
            .min()
            .unwrap_or(now + interval);
        fds.clear();
        fds.extend(clients.iter().map(|c| libc::pollfd {
            fd: if c.lost { -1 } else { c.link.fd() },
            events: libc::POLLIN,
            revents: 0,
        }));
        let ms = due
            .saturating_duration_since(now)
            .min(interval)
            .as_millis()
            .max(1) as i32;
        // SAFETY: `fds` holds valid pollfds for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        let now = Instant::now();
        for (i, c) in clients.iter_mut().enumerate() {
            if c.lost {
                continue;
            }
            if fds[i].revents != 0 {
                if let Err(e) = c.link.receive() {
                    report.error(format!("receive: {:?}", e.kind()));
                }
            }
            c.link.tick();
            c.rx.clear();
            c.link.recv(&mut c.rx);
            if !c.rx.is_empty() {
                c.last_progress = now;
            }
            let mut data = std::mem::take(&mut c.rx);
            let mut used = 0;
            if let Some(hs) = c.hs.as_mut() {
                used = hs.recv(&data);
                match hs.poll() {
                    ClientEvent::NeedMore => {}
                    ClientEvent::Established { id, secret } => {
                        c.hs = None;
                        c.session = Some(Session::new(id, secret, cfg_window()));
                        report.established += 1;
                        progress.established.fetch_add(1, Ordering::Relaxed);
                    }
                    ClientEvent::Resumed { server_received } => {
                        c.hs = None;
                        let ok = c
                            .session
                            .as_mut()
                            .is_some_and(|s| s.resumed(server_received).is_ok());
                        if ok {
                            report.resumes_ok += 1;
                            c.push_window();
                        } else {
                            *report
                                .resumes_failed
                                .entry("406 (ours)".into())
                                .or_default() += 1;
                            c.lost = true;
                        }
                    }
                    ClientEvent::Rejected { code, .. } => {
                        *report.resumes_failed.entry(code.to_string()).or_default() += 1;
                        c.lost = true;
                    }
                    ev => {
                        report.error(format!("handshake: {ev:?}"));
                        c.lost = true;
                    }
                }
            }
            if c.hs.is_none() && used < data.len() {
                if let Some(s) = c.session.as_mut() {
                    let rest = &mut data[used..];
                    s.decrypt(rest);
                    let mut rest: &[u8] = rest;
                    // Check the echo against the frames sent.
                    while !rest.is_empty() {
                        if c.rx_msg >= c.tx_msg {
                            report.bytes_duplicated += rest.len() as u64;
                            report.error("echo beyond what was sent");
                            break;
                        }
                        let fl = pattern.frame_len(c.n, c.rx_msg);
                        let take = rest.len().min(fl - c.rx_off);
                        if !pattern.check(c.n, c.rx_msg, c.rx_off, &rest[..take]) {
                            report.bytes_duplicated += rest.len() as u64;
                            report.error("echo with other bytes");
                            c.lost = true;
                            break;
                        }
                        c.rx_off += take;
                        rest = &rest[take..];
                        if c.rx_off == fl {
                            c.rx_off = 0;
                            c.rx_msg += 1;
                            c.since_resume += 1;
                            report.messages_total += 1;
                            let sent = c.sent_at.pop_front();
                            if measuring {
                                report.messages += 1;
                                report.bytes += fl as u64;
                                if let Some(t) = sent {
                                    let us = now.saturating_duration_since(t).as_micros() as u64;
                                    report.latency.saturating_record(us.max(1));
                                }
                                progress.messages.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
            c.rx = data;
            if c.lost {
                continue;
            }
            if c.hs.is_some() || c.session.is_none() {
                if now.duration_since(c.last_progress) > STALL {
                    report.error("handshake stalled");
                    c.lost = true;
                }
                continue;
            }
            // A resume every K echoes, with the next message unread.
            if cfg.resume_every.is_some_and(|k| c.since_resume >= k) && sending {
                if let Err(e) = c.resume(&cfg, &dial) {
                    report.error(format!("resume: {:?}", e.kind()));
                    c.lost = true;
                }
                continue;
            }
            let idle = c.rx_msg == c.tx_msg;
            let paced = cfg.rate <= 0.0 || now >= c.next_send;
            if sending && idle && paced {
                frame.clear();
                pattern.write_frame(c.n, c.tx_msg, &mut frame);
                if let Some(s) = c.session.as_mut() {
                    let mut rest = &frame[..];
                    while !rest.is_empty() {
                        let k = s.encrypt(rest);
                        if k == 0 {
                            break;
                        }
                        rest = &rest[k..];
                    }
                }
                c.tx_msg += 1;
                c.sent_at.push_back(now);
                c.last_progress = now;
                if cfg.rate > 0.0 {
                    c.next_send = now + Duration::from_secs_f64(1.0 / cfg.rate);
                }
            }
            c.push_window();
            if c.rx_msg < c.tx_msg && now.duration_since(c.last_progress) > STALL {
                report.error("echo stalled");
                report.bytes_lost += (pattern.frame_len(c.n, c.rx_msg) - c.rx_off) as u64;
                c.lost = true;
            }
        }
        if !ramp_done && clients.iter().all(|c| c.lost || c.session.is_some()) {
            ramp_done = true;
            progress.ramp_done_us.store(
                (ctl.start.elapsed().as_micros() as u64).max(1),
                Ordering::Release,
            );
            let lost = clients.iter().filter(|c| c.lost).count() as u64;
            progress.gave_up.fetch_add(lost, Ordering::Relaxed);
        }
        if ph == phase::DRAIN {
            let waiting = clients
                .iter()
                .any(|c| !c.lost && (c.hs.is_some() || c.rx_msg < c.tx_msg));
            if !waiting {
                progress.drained.store(true, Ordering::Release);
            }
        }
        if ph == phase::STORM {
            progress.storm_seen.store(true, Ordering::Release);
        }
    }
    for c in &clients {
        if !c.lost && c.rx_msg < c.tx_msg {
            let missing: usize = (c.rx_msg..c.tx_msg)
                .map(|m| pattern.frame_len(c.n, m))
                .sum();
            report.bytes_lost += (missing - c.rx_off) as u64;
            report.error("echo missing at the end");
        }
    }
    Ok(report)
}

/// Each session's replay window: enough for a message in flight and its
/// resend.
fn cfg_window() -> usize {
    1 << 17
}
