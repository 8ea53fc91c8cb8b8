//! The KCP front door: SCP over KCP over UDP, as goscon's `kcp` listener
//! serves kcp-go clients.
//!
//! Every shard binds the door's UDP address with SO_REUSEPORT and reads it
//! with one multishot `recvmsg` into its own provided buffers (the source
//! address comes with each datagram). The kernel picks the socket by the
//! client's address, so a client's datagrams keep reaching the same shard,
//! which holds its conversation: a [`Conversation`](crate::proto::kcp::Conversation)
//! keyed by that address (as kcp-go keys them), whose byte stream is a
//! client connection like a TCP one: its SCP greeting, then a session's
//! client side. A client that changes address is a new conversation, and
//! SCP's resume carries the session over.
//!
//! A conversation is opened only by a well-formed datagram carrying a first
//! push (see [`opening`](crate::proto::kcp::opening)): a flood from forged
//! addresses leaves no state. Conversations are capped per gate
//! ([`KcpListen::max_conversations`]), each buffers at most its windows'
//! worth of segments, and one that hears nothing for
//! [`KcpListen::read_timeout`] is dropped (its session waits for a resume,
//! as after a lost TCP connection).
//!
//! Datagrams a batch of completions produces are sent after the batch, one
//! `sendmsg` each; KCP's clocks run on a per-shard timeout at the
//! configured interval, armed while the shard has conversations.
//!
//! A resume whose session lives on another shard moves the conversation
//! there: its state travels through the owner's inbox, and the shard that
//! receives the client's datagrams forwards them to the owner from then on
//! (the owner answers from its own socket, bound to the same address).

use crate::proto::kcp::KcpSettings;
use std::net::SocketAddr;
use std::time::Duration;

/// A KCP door's address and settings.
#[derive(Debug, Clone)]
pub struct KcpListen {
    /// UDP address every shard binds.
    pub addr: SocketAddr,
    /// How conversations behave (goscon's `kcp_option`).
    pub settings: KcpSettings,
    /// A conversation that receives nothing for this long is dropped.
    pub read_timeout: Duration,
    /// Conversations across all shards; datagrams that would open more are
    /// dropped.
    pub max_conversations: usize,
    /// Kernel receive buffer of each shard's socket (`SO_RCVBUF`).
    pub recv_buffer: Option<usize>,
    /// Kernel send buffer of each shard's socket (`SO_SNDBUF`).
    pub send_buffer: Option<usize>,
}

impl KcpListen {
    /// A door on `addr` with the default settings.
    pub fn new(addr: SocketAddr) -> KcpListen {
        KcpListen {
            addr,
            settings: KcpSettings::default(),
            read_timeout: Duration::from_secs(60),
            max_conversations: 100_000,
            recv_buffer: None,
            send_buffer: None,
        }
    }
}
