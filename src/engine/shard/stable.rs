//! The stable-connection door on a shard: its greeting, new sessions,
//! resumes found through the shard's [`StableIndex`] (or handed to the next
//! shard), and keeping that index in step with each session's fingerprints.
//! See [`crate::engine::door`] for why lookups stay cheap.

use super::*;
use crate::engine::door::{Candidate, StableGreeted, StableGreeting};
use crate::engine::outbound::Outbound;
use crate::proto::stable::{CHUNK, Role, StableSession};
use rand::Rng;
use tracing::info;

impl Shard {
    fn stable_greeting(&mut self, ci: usize) -> Option<&mut StableGreeting> {
        match &mut self.conns.get_mut(ci)?.state {
            ConnState::Greeting(g) => match &mut **g {
                DoorGreeting::Stable(g) => Some(g),
                _ => None,
            },
            _ => None,
        }
    }

    /// Bytes of a stable-connection handshake.
    pub(super) fn greet_stable(&mut self, ci: usize, data: &[u8]) {
        let mut input = data;
        loop {
            let Some(g) = self.stable_greeting(ci) else {
                return;
            };
            let step = g.handle_bytes(input);
            input = &[];
            match step {
                StableGreeted::NeedMore | StableGreeted::AwaitingProof => return,
                StableGreeted::AnswerNew => {
                    let (private, challenge) = (self.rng.random(), self.rng.random());
                    let Some(g) = self.stable_greeting(ci) else {
                        return;
                    };
                    let answer = g.accept_new(private, challenge);
                    self.conns[ci].answer.extend_from_slice(&answer);
                }
                StableGreeted::Lookup {
                    received,
                    fingerprint,
                } => {
                    if !self.stable_lookup(ci, received, fingerprint) {
                        return;
                    }
                }
                StableGreeted::New { secret, rest } => {
                    self.new_stable_session(ci, secret, rest);
                    return;
                }
                StableGreeted::Proof { rest } => {
                    self.stable_resume(ci, rest);
                    return;
                }
                StableGreeted::Refused(e) => {
                    self.fail_greeting(ci, &e.to_string(), Vec::new());
                    return;
                }
            }
        }
    }

    /// Looks for the session a resume names; answers for it (true), or
    /// hands the connection to the next shard, or closes it once every
    /// shard has looked (false).
    fn stable_lookup(&mut self, ci: usize, received: u64, fingerprint: u32) -> bool {
        let Shard {
            stable_index,
            sessions,
            ..
        } = self;
        let found = stable_index.find(received, fingerprint, |(si, epoch)| {
            sessions.get(si).is_some_and(|s| {
                s.epoch == epoch
                    && !s.ended
                    && s.relay
                        .stable()
                        .is_some_and(|st| st.matches(received, fingerprint))
            })
        });
        if let Some((si, epoch)) = found {
            let server_received = self.sessions[si].relay.stable().map_or(0, |s| s.received());
            let challenge = self.rng.random();
            let Some(g) = self.stable_greeting(ci) else {
                return false;
            };
            let answer = g.answer_resume(
                Candidate {
                    session: (si, epoch),
                    received,
                    fingerprint,
                    server_received,
                },
                challenge,
            );
            self.conns[ci].answer.extend_from_slice(&answer);
            return true;
        }
        let hops = self.stable_greeting(ci).map_or(0, |g| g.hops()) + 1;
        if (hops as usize) < self.cfg.shards {
            self.hand_off(ci, (self.index + 1) % self.cfg.shards, hops);
        } else {
            self.end_greeting(ci);
            self.count(|s| &s.resumes_failed);
            let conn = &mut self.conns[ci];
            debug!(shard = self.index, peer = %Addr(conn.peer), received, "stable-connection resume matches no session: closed");
            conn.state = ConnState::Finishing;
        }
        false
    }

    /// A new stable-connection session whose client proved the secret.
    fn new_stable_session(&mut self, ci: usize, secret: u64, mut rest: Vec<u8>) {
        let Some(id) = self.admit_new_session(ci) else {
            return;
        };
        self.end_greeting(ci);
        let session = StableSession::new(Role::Server, secret, self.cfg.reuse_buffer);
        let si = self.insert_session(id, Outbound::Stable(Box::new(session)), ci, None, 0);
        if self.loud() {
            let peer = self.conns[ci].peer;
            info!(shard = self.index, session = id, peer = %Addr(peer), door = "stable-connection", "session opened");
        }
        if !rest.is_empty() {
            self.sessions[si].relay.handle_client_bytes(&mut rest);
        }
        self.sync(si);
    }

    /// A resume's proof arrived: attach the connection to the candidate it
    /// was answered for if the client proved that session's secret;
    /// otherwise close.
    fn stable_resume(&mut self, ci: usize, mut rest: Vec<u8>) {
        let peer = self.conns[ci].peer;
        let Some(DoorGreeting::Stable(g)) = self.end_greeting(ci).map(|g| *g) else {
            return;
        };
        let Some(cand) = g.candidate else {
            self.conns[ci].state = ConnState::Finishing;
            return;
        };
        let (si, epoch) = cand.session;
        let live = self
            .sessions
            .get(si)
            .filter(|s| s.epoch == epoch && !s.ended)
            .and_then(|s| s.relay.stable());
        let why = match live {
            None => Some("the session ended meanwhile"),
            Some(st) if !g.proves(st.secret()) => Some("wrong proof"),
            Some(_) => None,
        };
        if let Some(why) = why {
            // A collision on the fingerprint: the next attempt tries
            // another candidate first.
            self.stable_index
                .demote(cand.received / CHUNK, cand.fingerprint, cand.session);
            self.count(|s| &s.resumes_failed);
            debug!(shard = self.index, peer = %Addr(peer), "stable-connection resume refused: {why}");
            self.conns[ci].state = ConnState::Finishing;
            return;
        }
        // The old connection may have delivered more since the answer; the
        // client resends from what the answer said, and the session drops
        // what it already has.
        let relay = &mut self.sessions[si].relay;
        let Some(resend) = relay.handle_stable_resume(cand.received, cand.server_received) else {
            self.count(|s| &s.resumes_failed);
            self.conns[ci].state = ConnState::Finishing;
            self.sync(si);
            return;
        };
        if let Some(old) = self.sessions[si].conn.take() {
            debug!(
                shard = self.index,
                session = self.sessions[si].id,
                "resume takes over a live connection"
            );
            self.close_conn(old);
        }
        self.conns[ci].state = ConnState::Attached(si, epoch);
        let s = &mut self.sessions[si];
        s.conn = Some(ci);
        s.detach_token = 0;
        s.client_addr = peer.or(s.client_addr);
        let id = s.id;
        self.count(|s| &s.sessions_resumed);
        if self.loud() {
            info!(shard = self.index, session = id, peer = %Addr(peer), resend, door = "stable-connection", "session resumed");
        }
        self.note_peer(si);
        if !rest.is_empty() {
            self.sessions[si].relay.handle_client_bytes(&mut rest);
        }
        self.sync(si);
    }

    /// Keeps the index in step with session `si`'s fingerprints: boundaries
    /// crossed since the last call go in, those its window left come out;
    /// an ended session leaves the index altogether.
    pub(super) fn reindex(&mut self, si: usize) {
        let Shard {
            sessions,
            stable_index,
            ..
        } = self;
        let Some(s) = sessions.get_mut(si) else {
            return;
        };
        let key = (si, s.epoch);
        let Some(st) = s.relay.stable_mut() else {
            return;
        };
        let kept = st.boundaries();
        if s.ended {
            for k in kept.start..kept.end.min(s.indexed) {
                if let Some(fp) = st.fingerprint_at(k) {
                    stable_index.remove(k, fp, key);
                }
            }
            s.indexed = 0;
            return;
        }
        for k in s.indexed.max(kept.start)..kept.end {
            if let Some(fp) = st.fingerprint_at(k) {
                stable_index.insert(k, fp, key);
            }
        }
        s.indexed = kept.end;
        st.trim_fingerprints(|k, fp| stable_index.remove(k, fp, key));
    }
}
