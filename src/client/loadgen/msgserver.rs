//! `--protocol msgserver`: skynet's login server and msgserver gate, loaded
//! by logged-in users that send requests with increasing sessions.
//!
//! This is a different client path from the io_uring shards of the other
//! protocols: every shard thread drives its users with the blocking
//! [`SkynetClient`], in rounds. A round sends one request on each of the
//! thread's connections, then reads each answer, so a thread keeps as many
//! requests in flight as it has users (the gate's agent usually answers
//! after a delay, which this overlaps). It scales to thousands of users, not
//! to the hundreds of thousands of connections the io_uring path holds; what
//! it is for is checking the gate's session rules under load:
//!
//! - every answer must carry the session asked for, `ok`, and the request's
//!   payload (the agent echoes it) — anything else counts as duplicated
//!   bytes and an error;
//! - with `--resume-every K`, after every K answers a user sends its next
//!   request, drops the connection before reading the answer, reconnects
//!   with the next index and repeats that session. The gate must answer the
//!   repeat exactly once, with the request's bytes (from its cache, or when
//!   the agent's answer is ready); a second answer would show up as an
//!   unexpected session on the next read, which is why the last round (in
//!   the drain) makes no reconnects.

use super::conn::Pattern;
use super::report::ShardReport;
use super::{Control, LoadgenConfig, LoadgenError, phase};
use crate::client::skynet::{SkynetClient, SkynetError, SkynetOptions};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// One simulated user.
struct User {
    /// Global user number: names the user and seeds its payloads.
    n: u64,
    /// `None` once the user is lost (login or connection failure).
    client: Option<SkynetClient>,
    /// The last session sent.
    session: u32,
    /// Answers since the last reconnect.
    since_resume: u64,
    /// The request awaiting its answer: payload, first send, repeated after a reconnect.
    pending: Option<(Vec<u8>, Instant, bool)>,
}

/// Why a call failed, as a short stable description for the report.
fn describe(what: &str, e: &SkynetError) -> String {
    match e {
        SkynetError::Refused(code) => format!("{what}: refused {code}"),
        SkynetError::Protocol(_) => format!("{what}: protocol error"),
        SkynetError::Io(io) => format!("{what}: {:?}", io.kind()),
    }
}

/// Runs `count` users of shard `index` of `shards`; the signature of the
/// io_uring shards, so the driver in [`super::run`] serves both.
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
    let login = cfg
        .login
        .ok_or_else(|| LoadgenError::Config("--protocol msgserver needs --login".into()))?;
    let opts = SkynetOptions {
        timeout: Some(Duration::from_secs(10)),
    };

    let mut users = Vec::with_capacity(count);
    for k in 0..count {
        let n = (index + k * shards) as u64;
        let name = format!("{}{n}", cfg.user_prefix);
        let client = match SkynetClient::login(
            login,
            cfg.connect,
            name.as_bytes(),
            cfg.server.as_bytes(),
            cfg.password.as_bytes(),
            opts.clone(),
        ) {
            Ok(c) => {
                report.established += 1;
                progress.established.fetch_add(1, Ordering::Relaxed);
                Some(c)
            }
            Err(e) => {
                report.error(describe("login", &e));
                progress.gave_up.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        users.push(User {
            n,
            client,
            session: 0,
            since_resume: 0,
            pending: None,
        });
    }
    progress.ramp_done_us.store(
        (ctl.start.elapsed().as_micros() as u64).max(1),
        Ordering::Release,
    );

    while ctl.phase.load(Ordering::Acquire) == phase::RAMP {
        std::thread::sleep(Duration::from_millis(1));
    }
    loop {
        let now = ctl.phase.load(Ordering::Acquire);
        if now >= phase::DRAIN {
            // The last round: no reconnects, so that a second answer to the
            // previous round's repeats would have shown up in its reads.
            round(
                &mut users,
                &cfg,
                &pattern,
                &mut report,
                &ctl,
                index,
                false,
                true,
            );
            break;
        }
        let measuring = now == phase::MEASURE;
        round(
            &mut users,
            &cfg,
            &pattern,
            &mut report,
            &ctl,
            index,
            measuring,
            false,
        );
        if cfg.rate > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(1.0 / cfg.rate));
        }
    }
    progress.drained.store(true, Ordering::Release);
    Ok(report)
}

/// The bytes of request `session` of user `n` (a frame of the pattern
/// without its length header).
fn payload(pattern: &Pattern, n: u64, session: u32) -> Vec<u8> {
    let mut frame = Vec::with_capacity(pattern.frame_len(n, session.into()));
    pattern.write_frame(n, session.into(), &mut frame);
    frame.split_off(2)
}

/// Sends one request per user (reconnecting and repeating it where one is
/// due), then reads and verifies every answer.
#[allow(clippy::too_many_arguments)]
fn round(
    users: &mut [User],
    cfg: &LoadgenConfig,
    pattern: &Pattern,
    report: &mut ShardReport,
    ctl: &Control,
    index: usize,
    measuring: bool,
    last: bool,
) {
    for u in users.iter_mut() {
        let Some(client) = u.client.as_mut() else {
            continue;
        };
        u.session = u.session.wrapping_add(1);
        let body = payload(pattern, u.n, u.session);
        if let Err(e) = client.conn().and_then(|c| c.send(&body, u.session)) {
            report.error(describe("send", &e));
            report.bytes_lost += body.len() as u64;
            u.client = None;
            continue;
        }
        let sent = Instant::now();
        let mut repeat = false;
        if !last && cfg.resume_every.is_some_and(|k| u.since_resume >= k) {
            // The answer may be on its way or still with the agent: either
            // way the gate must give it to the repeat, once.
            u.since_resume = 0;
            match client.reconnect() {
                Ok(()) => report.resumes_ok += 1,
                Err(e) => {
                    let key = match e {
                        SkynetError::Refused(code) => code.to_string(),
                        ref other => describe("reconnect", other),
                    };
                    *report.resumes_failed.entry(key).or_default() += 1;
                    report.bytes_lost += body.len() as u64;
                    u.client = None;
                    continue;
                }
            }
            if let Err(e) = client.conn().and_then(|c| c.send(&body, u.session)) {
                report.error(describe("send", &e));
                report.bytes_lost += body.len() as u64;
                u.client = None;
                continue;
            }
            repeat = true;
        }
        u.pending = Some((body, sent, repeat));
    }

    for u in users.iter_mut() {
        let Some((body, sent, repeat)) = u.pending.take() else {
            continue;
        };
        let Some(client) = u.client.as_mut() else {
            continue;
        };
        // Only one request is in flight, so any other session is an answer
        // the gate should not have sent (a repeat answered twice, say).
        let answer = loop {
            match client.conn().and_then(|c| c.recv()) {
                Ok(r) if r.session == u.session => break Ok(r),
                Ok(r) => {
                    report.error("answer for another session");
                    report.bytes_duplicated += r.payload.len() as u64;
                }
                Err(e) => break Err(e),
            }
        };
        match answer {
            Ok(r) if r.ok && r.payload == body => {
                let len = r.payload.len() as u64;
                report.messages_total += 1;
                u.since_resume += 1;
                if repeat {
                    report.repeats_answered += 1;
                }
                if measuring {
                    report.messages += 1;
                    report.bytes += len + 6;
                    let us = sent.elapsed().as_micros() as u64;
                    report.latency.saturating_record(us.max(1));
                    ctl.shards[index].messages.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(r) => {
                report.error(if r.ok {
                    "answer with other bytes"
                } else {
                    "answer not ok"
                });
                report.bytes_duplicated += r.payload.len() as u64;
            }
            Err(e) => {
                report.error(describe("recv", &e));
                report.bytes_lost += body.len() as u64;
                u.client = None;
            }
        }
    }
}
