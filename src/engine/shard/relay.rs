//! Moving plaintext between a session's client side and its peer side, with the stashes that hold what the other side could not take yet.

use super::*;

impl Shard {
    /// Bytes from the client (ciphertext for SCP, decrypted here in place).
    pub(super) fn client_bytes(&mut self, si: usize, sg: u32, data: &mut [u8]) {
        let Some(s) = self.sessions.get_mut(si).filter(|s| s.epoch == sg) else {
            return;
        };
        if s.closing.is_some() {
            return;
        }
        if let Some(session) = s.client.session_mut() {
            session.decrypt(data);
        }
        if !s.from_client.is_empty() {
            s.from_client.extend_from_slice(data);
            // A connection that resumed the session is not paused yet.
            if let Some(ci) = s.conn {
                self.pause_recv(ci);
            }
            return;
        }
        let taken = self.deliver_to_peer(si, data);
        if taken < data.len() {
            let s = &mut self.sessions[si];
            s.from_client.extend_from_slice(&data[taken..]);
            if let Some(ci) = s.conn {
                self.pause_recv(ci);
            }
        }
    }

    /// Hands plaintext to the session's peer side; returns how much it took.
    pub(super) fn deliver_to_peer(&mut self, si: usize, data: &[u8]) -> usize {
        let s = &mut self.sessions[si];
        match &mut s.peer {
            Peer::Echo => {
                let n = s.client.push(data);
                if let Some(ci) = s.conn {
                    self.flush_conn(ci);
                }
                n
            }
            Peer::Up(up) => {
                let Some(out) = up.out.as_mut() else { return 0 };
                if matches!(up.state, UpState::Closed) {
                    return data.len(); // nowhere to go; the session is ending
                }
                let n = out.push(data);
                self.flush_up(si);
                n
            }
            Peer::Worker(_) => self.deliver_to_worker(si, data),
        }
    }

    /// Hands plaintext from the peer side to the client; returns how much it took.
    pub(super) fn deliver_to_client(&mut self, si: usize, data: &[u8]) -> usize {
        let s = &mut self.sessions[si];
        let n = s.client.push(data);
        if let Some(ci) = s.conn {
            self.flush_conn(ci);
        }
        n
    }

    pub(super) fn drain_from_client(&mut self, si: usize) {
        let s = &mut self.sessions[si];
        if s.from_client.is_empty() {
            if let Some(ci) = s.conn.filter(|_| !worker_holds(s)) {
                self.resume_recv(ci);
            }
            return;
        }
        let stash = std::mem::take(&mut s.from_client);
        let n = self.deliver_to_peer(si, &stash);
        let s = &mut self.sessions[si];
        if n < stash.len() {
            s.from_client = stash[n..].to_vec();
        } else if let Some(ci) = s.conn.filter(|_| !worker_holds(s)) {
            self.resume_recv(ci);
        }
    }

    pub(super) fn drain_from_peer(&mut self, si: usize) {
        let s = &mut self.sessions[si];
        if s.from_peer.is_empty() {
            let epoch = s.epoch;
            self.resume_up_recv(si, epoch);
            return;
        }
        let stash = std::mem::take(&mut s.from_peer);
        let n = self.deliver_to_client(si, &stash);
        let s = &mut self.sessions[si];
        if n < stash.len() {
            s.from_peer = stash[n..].to_vec();
        } else {
            let epoch = s.epoch;
            self.resume_up_recv(si, epoch);
        }
    }
}
