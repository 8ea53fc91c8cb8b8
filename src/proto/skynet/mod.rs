//! skynet's login server and msgserver gate protocols, sans-IO.
//!
//! A skynet game client first logs in to a **login server** ([`login`]: a
//! line protocol with a DH64 exchange and a DES-encrypted token) and gets a
//! subid; then it connects to the **gate** ([`gate`]: u16-framed packets)
//! with a handshake proving it holds the login secret, and exchanges
//! requests and responses tagged with 32-bit sessions. A repeated session
//! after a reconnect gets the cached response instead of a second run.
//!
//! Wire-compatible with skynet's `lualib/snax/loginserver.lua`,
//! `lualib/snax/msgserver.lua` and `examples/login/client.lua`. Nothing here
//! touches a socket, a clock or a random source: callers feed bytes and
//! random numbers and carry out the returned actions.
//!
//! - [`b64`]: skynet's lenient base64 decoding (protocol answers depend on it).
//! - [`des`]: DES-ECB with ISO/IEC 7816-4 padding for the login token.
//! - [`login`]: [`login::LoginServer`] and [`login::LoginClient`].
//! - [`packet`]: framing, request/response layouts, usernames, handshakes.
//! - [`gate`]: [`gate::MsgGate`], the users, caches and connections of a gate.

pub mod b64;
pub mod des;
pub mod gate;
pub mod login;
pub mod packet;
