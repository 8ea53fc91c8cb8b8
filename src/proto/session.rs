//! An established SCP session: two RC4 states, stream counters, resume index,
//! and the replay window. (API fixed here; implementation in progress.)

use super::message::{ReuseConnReq, Status};
use super::replay::ReplayWindow;

/// One established session, as either side holds it.
pub struct Session {
    _private: (),
}

#[allow(unused_variables, missing_docs)]
impl Session {
    /// A fresh session with both ciphers keyed from `secret`.
    pub fn new(id: u32, secret: u64, window_capacity: usize) -> Self {
        todo!()
    }
    pub fn id(&self) -> u32 {
        todo!()
    }
    pub fn secret(&self) -> u64 {
        todo!()
    }
    /// Stream bytes received from the peer (full width).
    pub fn received(&self) -> u64 {
        todo!()
    }
    /// Stream bytes written for the peer (full width) = `window().written()`.
    pub fn sent(&self) -> u64 {
        todo!()
    }
    /// Last accepted (server) or last used (client) resume index.
    pub fn last_index(&self) -> u64 {
        todo!()
    }
    /// Decrypts received ciphertext in place and counts it.
    pub fn decrypt(&mut self, buf: &mut [u8]) {
        todo!()
    }
    /// Encrypts as much of `plain` as the window has room for straight into
    /// the window; returns the number of plaintext bytes taken.
    pub fn encrypt(&mut self, plain: &[u8]) -> usize {
        todo!()
    }
    pub fn window(&self) -> &ReplayWindow {
        todo!()
    }
    pub fn window_mut(&mut self) -> &mut ReplayWindow {
        todo!()
    }
    /// Server side: checks a resume request (401 bad sum, 403 stale index, 406
    /// window can't cover it), and on success records the index, rewinds the
    /// window so its unsent bytes are exactly the resend, and returns the
    /// number of bytes to resend. The response to write is
    /// `ReuseConnResp { received: self.received() as u32, code }`.
    pub fn accept_resume(&mut self, req: &ReuseConnReq) -> Result<usize, Status> {
        todo!()
    }
    /// Client side: the next resume request (index = last_index + 1), signed.
    pub fn resume_request(&mut self) -> ReuseConnReq {
        todo!()
    }
    /// Client side: after a 200 carrying `server_received`, rewinds the window
    /// so its unsent bytes are the resend; returns its length, or 406.
    pub fn resumed(&mut self, server_received: u32) -> Result<usize, Status> {
        todo!()
    }
}
