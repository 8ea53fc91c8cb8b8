//! The client side of SCP over real sockets: a blocking client for tests,
//! examples and tools, and the io_uring load generator. Both drive the same
//! sans-IO [`crate::proto`] code as the gate.

pub mod blocking;
pub mod loadgen;
pub mod stable;

pub use blocking::{ClientOptions, ResumeError, ScpClient};
pub use stable::StableClient;
