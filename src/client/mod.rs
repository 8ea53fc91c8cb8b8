//! The client side over real sockets: a blocking SCP client for tests,
//! examples and tools, the io_uring load generator, and a blocking client
//! for skynet's login server and msgserver gate. All drive the same sans-IO
//! [`crate::proto`] code as the gate.

pub mod blocking;
pub mod kcp;
pub mod loadgen;
pub mod skynet;
pub mod stable;

pub use blocking::{ClientOptions, ResumeError, ScpClient, Via};
pub use kcp::{Impair, KcpDial, KcpLink, KcpStream};
pub use stable::StableClient;
