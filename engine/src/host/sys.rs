//! The few raw syscalls the engine needs that std and nix do not wrap the way we need them.
//! Everything returns `io::Result` and owns fds through `OwnedFd`.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};

/// Most fds CRIU attaches to one packet (it sends at most one: the `orphan-pts-master` fd).
const MAX_FDS_PER_PACKET: usize = 8;

/// A `SOCK_SEQPACKET` unix socketpair, both ends close-on-exec; the first end is
/// non-blocking (ours, driven by the reactor), the second blocking (the peer's: CRIU expects a
/// blocking socket and fails with EAGAIN otherwise).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    set_nonblocking(ours.as_fd())?;
    Ok((ours, theirs))
}

/// Sets `O_NONBLOCK` on an fd's file description.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a valid fd touch no memory.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One packet read off a `SOCK_SEQPACKET` socket.
#[derive(Debug)]
pub enum Received {
    /// A packet and the fds that came with it.
    Packet { data: Vec<u8>, fds: Vec<OwnedFd> },
    /// A packet of zero bytes (not the same as end of stream).
    Empty,
    /// The peer closed its end.
    Closed,
    /// A packet larger than the caller's limit was discarded.
    TooLarge(usize),
}

/// Receives one whole packet without blocking (`WouldBlock` if none is queued).
///
/// The size is learnt first with `MSG_PEEK | MSG_TRUNC` and no control buffer (a peek with a
/// control buffer would install duplicates of any passed fds), then the packet is read into a
/// buffer of exactly that size with room for passed fds, so nothing is truncated.
pub fn recv_packet(fd: BorrowedFd<'_>, max: usize) -> io::Result<Received> {
    let raw = fd.as_raw_fd();
    // SAFETY: a zero-length peek into a null buffer is valid; the kernel writes nothing.
    let n = unsafe {
        libc::recv(
            raw,
            std::ptr::null_mut(),
            0,
            libc::MSG_PEEK | libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let size = n as usize;
    if size == 0 {
        return if peer_hung_up(fd)? {
            Ok(Received::Closed)
        } else {
            discard(raw)?;
            Ok(Received::Empty)
        };
    }
    if size > max {
        discard(raw)?;
        return Ok(Received::TooLarge(size));
    }
    let mut data = vec![0u8; size];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_PACKET]);
    let mut iov = [IoSliceMut::new(&mut data)];
    let msg = socket::recvmsg::<()>(
        raw,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let got = msg.bytes;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw_fds) = c {
            for r in raw_fds {
                // SAFETY: SCM_RIGHTS just installed this fd in our table; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::other(
            "control data truncated: passed fds were lost",
        ));
    }
    data.truncate(got);
    Ok(Received::Packet { data, fds })
}

fn discard(raw: RawFd) -> io::Result<()> {
    // SAFETY: a zero-length read into a null buffer consumes the packet and writes nothing.
    let n = unsafe {
        libc::recv(
            raw,
            std::ptr::null_mut(),
            0,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn peer_hung_up(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pfd.revents & (libc::POLLHUP | libc::POLLRDHUP) != 0)
}

/// Sends one packet (with optional fds) without blocking. `SOCK_SEQPACKET` sends are atomic.
pub fn send_packet(fd: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let raw_fds: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if raw_fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw_fds)]
    };
    let iov = [IoSlice::new(data)];
    socket::sendmsg::<()>(
        fd.as_raw_fd(),
        &iov,
        &cmsgs,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)
}

/// Duplicates `fd` to the lowest free number ≥ `min`, close-on-exec.
pub fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd that we then own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// A pidfd of `pid` (close-on-exec). It becomes readable when the process exits, without
/// reaping it. Open it only for an unreaped child of ours: then the pid cannot have been reused.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a pid and a flags word, touches no memory of ours, and returns
    // a new fd (close-on-exec by definition) or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(r).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: `fd` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes this process a child subreaper: orphaned descendants (for instance children of a
/// restored tree whose root was killed) are re-parented to us instead of init, so we can reap
/// them promptly and their pids become free for the next restore.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let r = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if r > 0 { r as u64 } else { 4096 }
}

/// Opens a directory (read-only, close-on-exec) as an fd CRIU can reach via `/proc/<pid>/fd`.
pub fn open_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)?;
    Ok(f.into())
}

/// Creates `leaf` in the directory `dir` as a new regular file (mode 0600, never through a
/// symlink, failing if anything of that name exists) and opens it for writing.
pub fn create_new_at(dir: BorrowedFd<'_>, leaf: &std::ffi::OsStr) -> nix::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::openat(
        dir,
        leaf,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )?;
    Ok(std::fs::File::from(fd))
}
