//! Thin helpers over the kernel: ring construction with a clear error when
//! io_uring is unavailable, listening sockets, socket addresses, and the
//! operations the `io-uring` crate does not build for us.

use io_uring::{IoUring, opcode, squeue, types};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// io_uring is disabled or filtered out.
    #[error(
        "io_uring is not available ({0}): ringgate needs Linux ≥ 6.0 with io_uring enabled; \
         check `sysctl kernel.io_uring_disabled` (must be 0, or 1 with this user in \
         kernel.io_uring_group) and, in a container, a seccomp profile that allows \
         io_uring_setup, io_uring_enter and io_uring_register"
    )]
    Unavailable(io::Error),
    /// The kernel lacks a feature the engine relies on.
    #[error("this kernel's io_uring lacks {what} ({err}); ringgate needs Linux ≥ 6.0")]
    Missing {
        /// The missing feature.
        what: &'static str,
        /// What the kernel said.
        err: io::Error,
    },
    /// Binding or configuring the listening socket failed.
    #[error("cannot listen on {addr}: {err}")]
    Listen {
        /// Address asked for.
        addr: SocketAddr,
        /// What the kernel said.
        err: io::Error,
    },
    /// Any other resource failure while starting a shard.
    #[error("{0}")]
    Other(String),
}

/// Size of the direct-descriptor table a ring may register: the kernel caps a
/// table at the process's `RLIMIT_NOFILE`, but the cap applies per ring, not
/// to the sum of all rings.
pub fn direct_table_size(wanted: usize) -> u32 {
    let mut lim = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: getrlimit fills the struct on success.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) } == 0 {
        let lim = unsafe { lim.assume_init() };
        // Raise the soft limit to the hard one: the table size is checked against it.
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: plain syscall with a valid struct.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim.rlim_max
            } else {
                lim.rlim_cur
            }
        } else {
            lim.rlim_cur
        }
    } else {
        1024
    };
    let cap = soft.min(1 << 20) as usize;
    wanted.clamp(16, cap.max(16)) as u32
}

/// Socket options applied to a listener (accepted sockets inherit them).
#[derive(Debug, Clone, Copy)]
pub struct ListenOptions {
    /// TCP keepalive idle time, if any.
    pub keepalive: Option<Duration>,
    /// Listen backlog.
    pub backlog: i32,
}

/// A non-blocking TCP listener with SO_REUSEPORT, so that every shard can
/// bind the same address and the kernel spreads connections over them.
pub fn listener(addr: SocketAddr, opts: ListenOptions) -> Result<Socket, SetupError> {
    let err = |e: io::Error| SetupError::Listen { addr, err: e };
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    sock.set_reuse_port(true).map_err(err)?;
    // Accepted sockets inherit these from the listener: no per-connection syscall.
    sock.set_nodelay(true).map_err(err)?;
    if let Some(idle) = opts.keepalive {
        sock.set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(idle)
                .with_interval(idle / 3 + Duration::from_secs(1)),
        )
        .map_err(err)?;
    }
    sock.bind(&addr.into()).map_err(err)?;
    sock.listen(opts.backlog).map_err(err)?;
    Ok(sock)
}

/// A non-blocking UDP socket with SO_REUSEPORT, so that every shard can
/// bind the same address and the kernel spreads clients over them (by
/// their address: a client's datagrams keep reaching one shard). Kernel
/// buffer sizes are set when given.
pub fn udp_socket(
    addr: SocketAddr,
    recv_buffer: Option<usize>,
    send_buffer: Option<usize>,
) -> Result<Socket, SetupError> {
    let err = |e: io::Error| SetupError::Listen { addr, err: e };
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.cloexec().nonblocking(),
        Some(Protocol::UDP),
    )
    .map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    sock.set_reuse_port(true).map_err(err)?;
    if let Some(n) = recv_buffer {
        sock.set_recv_buffer_size(n).map_err(err)?;
    }
    if let Some(n) = send_buffer {
        sock.set_send_buffer_size(n).map_err(err)?;
    }
    sock.bind(&addr.into()).map_err(err)?;
    Ok(sock)
}

/// Storage for a socket address written by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct RawAddr {
    buf: [u8; 28],
}

impl RawAddr {
    /// The length to ask `SO_PEERNAME` for: it must equal the address size of
    /// the listener's family exactly (the kernel refuses a larger buffer).
    pub fn len_for(local: &SocketAddr) -> u32 {
        match local {
            SocketAddr::V4(_) => std::mem::size_of::<libc::sockaddr_in>() as u32,
            SocketAddr::V6(_) => std::mem::size_of::<libc::sockaddr_in6>() as u32,
        }
    }

    /// Pointer for the kernel to write into.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.buf.as_mut_ptr()
    }

    /// Parses what the kernel wrote.
    pub fn to_socket_addr(&self) -> Option<SocketAddr> {
        let family = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as i32;
        match family {
            libc::AF_INET => {
                // SAFETY: buffer is large enough and sockaddr_in is plain data.
                let sin: libc::sockaddr_in =
                    unsafe { std::ptr::read_unaligned(self.buf.as_ptr() as *const _) };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    u32::from_be(sin.sin_addr.s_addr).into(),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: as above for sockaddr_in6 (28 bytes).
                let sin6: libc::sockaddr_in6 =
                    unsafe { std::ptr::read_unaligned(self.buf.as_ptr() as *const _) };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    sin6.sin6_addr.s6_addr.into(),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// Parses an address the kernel wrote into a `recvmsg` name.
    pub fn parse(name: &[u8]) -> Option<SocketAddr> {
        let mut raw = RawAddr::default();
        let n = name.len().min(raw.buf.len());
        raw.buf[..n].copy_from_slice(&name[..n]);
        raw.to_socket_addr()
    }

    /// Encodes `addr` for a connect.
    pub fn from_socket_addr(addr: SocketAddr) -> (RawAddr, u32) {
        let sa: socket2::SockAddr = addr.into();
        let mut raw = RawAddr::default();
        let len = (sa.len() as usize).min(raw.buf.len());
        // SAFETY: SockAddr's storage is at least `len` bytes.
        let src = unsafe { std::slice::from_raw_parts(sa.as_ptr() as *const u8, len) };
        raw.buf[..len].copy_from_slice(src);
        (raw, len as u32)
    }

    /// Pointer for a connect.
    pub fn as_sockaddr(&self) -> *const libc::sockaddr {
        self.buf.as_ptr() as *const libc::sockaddr
    }
}

/// getsockopt(SOL_SOCKET, SO_PEERNAME) on a direct descriptor, as an
/// `IORING_OP_URING_CMD` (Linux ≥ 6.7): a direct descriptor has no fd number
/// for getpeername(2), and multishot accept reports no address.
pub fn peername_entry(fd: types::Fixed, out: *mut u8, len: u32) -> squeue::Entry {
    const SOCKET_URING_OP_GETSOCKOPT: u32 = 2;
    // The crate builds SETSOCKOPT; GETSOCKOPT uses the same fields and differs
    // only in `cmd_op`, the u32 at byte offset 8 of the 64-byte SQE.
    let entry = opcode::SetSockOpt::new(
        fd,
        libc::SOL_SOCKET as u32,
        libc::SO_PEERNAME as u32,
        out as *const _,
        len,
    )
    .build();
    const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
    // SAFETY: Entry is a repr(C) wrapper of the 64-byte io_uring_sqe.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(entry) };
    raw[8..12].copy_from_slice(&SOCKET_URING_OP_GETSOCKOPT.to_ne_bytes());
    // SAFETY: same layout back.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// An eventfd used to wake a shard from another thread.
pub fn eventfd() -> io::Result<i32> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

/// Adds one to an eventfd (wakes the shard reading it).
pub fn eventfd_signal(fd: i32) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64; failure (counter full) is harmless.
    unsafe {
        libc::write(fd, &one as *const u64 as *const libc::c_void, 8);
    }
}

/// Waits until `fd` (a non-blocking eventfd) has been signalled, at most
/// `timeout`, and resets it. Returns false when the wait timed out.
pub fn eventfd_wait(fd: i32, timeout: std::time::Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n <= 0 {
        // Timed out, or a signal: either way the caller looks everywhere.
        return false;
    }
    let mut word = 0u64;
    // SAFETY: reads 8 bytes into a valid u64; EAGAIN (already reset) is harmless.
    unsafe { libc::read(fd, &mut word as *mut u64 as *mut libc::c_void, 8) };
    true
}

/// A TCP socket for `peer`'s address family, created straight into the
/// ring's direct-descriptor table (the kernel picks the slot).
pub fn direct_tcp_socket(peer: &SocketAddr) -> squeue::Entry {
    let domain = if peer.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    opcode::Socket::new(domain, libc::SOCK_STREAM, 0)
        .file_index(Some(types::DestinationSlot::auto_target()))
        .build()
}

/// Registers a sparse direct-descriptor table of `wanted` slots (capped as
/// [`direct_table_size`] says) and returns its size.
pub fn register_direct_table(ring: &IoUring, wanted: usize) -> Result<u32, SetupError> {
    let table = direct_table_size(wanted);
    ring.submitter()
        .register_files_sparse(table)
        .map_err(|err| SetupError::Missing {
            what: "a direct descriptor table",
            err,
        })?;
    Ok(table)
}

/// setsockopt(level, name, 1) on a direct descriptor, as a URING_CMD.
pub fn enable_sockopt(fd: types::Fixed, level: i32, name: i32) -> squeue::Entry {
    static ONE: i32 = 1;
    opcode::SetSockOpt::new(
        fd,
        level as u32,
        name as u32,
        &ONE as *const i32 as *const libc::c_void,
        4,
    )
    .build()
}
