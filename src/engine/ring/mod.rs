//! The ring driver, shared by the gate's shards and the load generator's:
//! operations that own their memory until they complete, `user_data`
//! tokens that name one operation, a backlog that never splits a linked
//! chain, submit-and-reap, and provided receive buffers as guards.

pub mod bufs;
mod driver;

pub use bufs::{BufRing, RecvBuf};
pub use driver::{
    Completion, Datagram, Driver, FOREIGN, MAX_IOV, MsgHeader, OpId, Owned, build, is_unavailable,
};
