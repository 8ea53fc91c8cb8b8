//! The client side of SCP over real sockets: a blocking client for tests,
//! examples and tools. It drives the same sans-IO [`crate::proto`] code as
//! the gate.

pub mod blocking;

pub use blocking::{ClientOptions, ResumeError, ScpClient};
