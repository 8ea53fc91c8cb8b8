//! Encoding of io_uring `user_data`: which operation completed, on which
//! slab entry, and that entry's epoch (so a completion that arrives
//! after its entry was reused is recognised as stale and ignored).

/// What an operation was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Multishot accept on the listener.
    Accept = 1,
    /// getsockopt(SO_PEERNAME) on a new client connection.
    PeerName,
    /// Multishot receive on a client connection.
    Recv,
    /// Send on a client connection.
    Send,
    /// Send of handshake bytes on a client connection.
    HsSend,
    /// Cancel + close of a client connection.
    Close,
    /// Socket creation for an upstream connection.
    UpSocket,
    /// Connect of an upstream connection.
    UpConnect,
    /// Multishot receive on an upstream connection.
    UpRecv,
    /// Send on an upstream connection.
    UpSend,
    /// Cancel + close of an upstream connection.
    UpClose,
    /// The shard's periodic tick.
    Tick,
    /// The shard's wake-up eventfd became readable.
    Wake,
    /// A connection handed over from another shard arrived.
    HandoffIn,
    /// Our hand-over of a connection to another shard completed.
    HandoffOut,
    /// A direct descriptor closed that no connection entry tracked.
    SlotClosed,
    /// Completions whose result needs no handling (cancels, timeouts of links).
    Ignore,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        use Op::*;
        const ALL: [Op; 17] = [
            Accept, PeerName, Recv, Send, HsSend, Close, UpSocket, UpConnect, UpRecv, UpSend,
            UpClose, Tick, Wake, HandoffIn, HandoffOut, SlotClosed, Ignore,
        ];
        ALL.iter().copied().find(|op| *op as u8 == v)
    }
}

/// Largest slab index a token can carry.
pub const MAX_INDEX: usize = (1 << 24) - 1;

/// Packs `op` (8 bits), `index` (24 bits) and `epoch` (32 bits).
#[inline]
pub fn encode(op: Op, index: usize, epoch: u32) -> u64 {
    debug_assert!(index <= MAX_INDEX);
    ((op as u64) << 56) | (((index & MAX_INDEX) as u64) << 32) | epoch as u64
}

/// Unpacks a token; `None` for values this engine never produced.
#[inline]
pub fn decode(user_data: u64) -> Option<(Op, usize, u32)> {
    let op = Op::from_u8((user_data >> 56) as u8)?;
    Some((
        op,
        ((user_data >> 32) as usize) & MAX_INDEX,
        user_data as u32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for op in [Op::Accept, Op::UpSend, Op::Ignore, Op::HandoffIn] {
            for (i, g) in [(0, 0), (MAX_INDEX, u32::MAX), (12345, 7)] {
                assert_eq!(decode(encode(op, i, g)), Some((op, i, g)));
            }
        }
        assert_eq!(decode(0), None);
    }
}
