//! Message framing over the swrk socket: one protobuf message per `SOCK_SEQPACKET` packet.
//!
//! Every receive peeks the packet size first and reads with a control buffer, because CRIU
//! attaches an fd (SCM_RIGHTS) to the `orphan-pts-master` notification and a receive without
//! room for it silently drops the fd.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use criu_proto::prost::{self, Message};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::sys::{self, Received};

/// Largest packet accepted from CRIU. Replies are small (the largest carry an error string
/// or a version); anything near this is a broken peer, refused rather than allocated.
pub const MAX_PACKET: usize = 16 << 20;

/// What can go wrong moving packets.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("socket i/o with criu")]
    Io(#[from] io::Error),
    #[error("criu closed the connection")]
    Closed,
    #[error("criu sent an empty packet")]
    Empty,
    #[error("criu sent a {0}-byte packet, over the {MAX_PACKET}-byte limit")]
    TooLarge(usize),
    #[error("criu sent a packet that is not a valid message")]
    Decode(#[source] prost::DecodeError),
}

/// A decoded message and the fds that came with it.
#[derive(Debug)]
pub struct Packet<M> {
    pub msg: M,
    pub fds: Vec<OwnedFd>,
}

/// One end of a swrk socketpair, registered with the tokio reactor.
#[derive(Debug)]
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    /// Wraps a non-blocking `SOCK_SEQPACKET` socket.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: `OwnedFd` is a valid open fd whose number never changes, and it is owned by
        // the `AsyncFd` for its whole life (nothing else can close it).
        let fd = unsafe {
            AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)
        }?;
        Ok(Self { fd })
    }

    /// Sends one message, with fds attached if any.
    pub async fn send<M: Message>(
        &self,
        msg: &M,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ChannelError> {
        let bytes = msg.encode_to_vec();
        self.send_bytes(&bytes, fds).await
    }

    async fn send_bytes(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|inner| sys::send_packet(inner.get_ref().as_fd(), bytes, fds)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(classify(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends raw bytes as one packet (fake peers in tests send malformed packets with this).
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<(), ChannelError> {
        self.send_bytes(bytes, &[]).await
    }

    /// Shuts the socket down in both directions: CRIU sees its client gone (a failed hook, a
    /// failed final write) and aborts the request itself, undoing what it did.
    pub fn shutdown(&self) {
        let _ = nix::sys::socket::shutdown(
            self.fd.get_ref().as_raw_fd(),
            nix::sys::socket::Shutdown::Both,
        );
    }

    /// Receives and decodes one message.
    pub async fn recv<M: Message + Default>(&self) -> Result<Packet<M>, ChannelError> {
        loop {
            let mut guard = self.fd.readable().await?;
            let got =
                match guard.try_io(|inner| sys::recv_packet(inner.get_ref().as_fd(), MAX_PACKET)) {
                    Ok(r) => r.map_err(classify)?,
                    Err(_would_block) => continue,
                };
            return match got {
                Received::Packet { data, fds } => {
                    let msg = M::decode(data.as_slice()).map_err(ChannelError::Decode)?;
                    Ok(Packet { msg, fds })
                }
                Received::Empty => Err(ChannelError::Empty),
                Received::Closed => Err(ChannelError::Closed),
                Received::TooLarge(n) => Err(ChannelError::TooLarge(n)),
            };
        }
    }
}

/// A peer that went away shows up as EPIPE or ECONNRESET depending on timing: both mean the
/// same to us.
fn classify(e: io::Error) -> ChannelError {
    match e.raw_os_error() {
        Some(libc::EPIPE | libc::ECONNRESET) => ChannelError::Closed,
        _ => ChannelError::Io(e),
    }
}
