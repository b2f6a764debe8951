//! Sockets per process: unix sockets with their bound names and peers, inet sockets with
//! protocol, state and addresses, packet and netlink sockets with their buffers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criu_proto::images::{FileEntry, InetSkEntry, UnixSkEntry};
use serde::Serialize;

use super::{ImageSet, Result};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// One socket of a process (checkpointctl's `open_sockets` element, plus the descriptor).
#[derive(Debug, Clone, Serialize)]
pub struct Socket {
    pub fd: u32,
    /// `TCP`, `UDP`, `UNIX`, `PACKET`, `NETLINK`, ...
    pub protocol: String,
    pub data: SocketData,
}

/// What a socket is bound and connected to.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SocketData {
    /// Socket type: `STREAM`, `DGRAM`, `SEQPACKET`, `RAW`, ...
    #[serde(rename = "type")]
    pub sock_type: String,
    /// `IPv4`, `IPv6`, `UNIX`, `PACKET`, `NETLINK`.
    pub family: String,
    /// Bound name of a unix socket: a path, `@name` for the abstract namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// TCP-style state name (`LISTEN`, `ESTABLISHED`, `CLOSE`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(rename = "src", skip_serializing_if = "Option::is_none")]
    pub src_addr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u32>,
    #[serde(rename = "dst", skip_serializing_if = "Option::is_none")]
    pub dst_addr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u32>,
    /// SO_SNDBUF / SO_RCVBUF in bytes.
    pub send_buf: u32,
    pub recv_buf: u32,
    /// Socket inode number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ino: Option<u32>,
    /// Inode of the connected unix peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<u32>,
    /// Accept queue length of a listening socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u32>,
}

/// The sockets of one process (checkpointctl's `sockets` element).
#[derive(Debug, Clone, Serialize)]
pub struct ProcessSockets {
    pub pid: u32,
    pub command: String,
    pub open_sockets: Vec<Socket>,
}

/// A socket file entry, decoded for display.
pub(crate) struct SocketDesc {
    pub protocol: String,
    pub data: SocketData,
}

impl SocketDesc {
    /// One line: `TCP 127.0.0.1:80 LISTEN`, `UNIX STREAM /run/x.sock peer 1234`.
    pub fn summary(&self) -> String {
        let d = &self.data;
        let mut s = self.protocol.clone();
        if self.protocol == "UNIX" {
            s.push(' ');
            s.push_str(&d.sock_type);
        }
        match (&d.src_addr, d.src_port) {
            (Some(a), Some(p)) => s.push_str(&format!(" {}", endpoint(a, p))),
            _ => {
                if let Some(a) = &d.address {
                    s.push(' ');
                    s.push_str(a);
                }
            }
        }
        if let (Some(a), Some(p)) = (&d.dst_addr, d.dst_port)
            && (p != 0 || !a.is_unspecified())
        {
            s.push_str(&format!(" -> {}", endpoint(a, p)));
        }
        if let Some(st) = &d.state {
            s.push(' ');
            s.push_str(st);
        }
        if let Some(peer) = d.peer {
            s.push_str(&format!(" peer {peer}"));
        }
        s
    }
}

/// `addr:port`, with IPv6 addresses in brackets.
pub fn endpoint(addr: &IpAddr, port: u32) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The socket a file entry describes, if it is one.
pub(crate) fn describe_socket(e: &FileEntry) -> Option<SocketDesc> {
    if let Some(s) = &e.isk {
        return Some(inet(s));
    }
    if let Some(s) = &e.usk {
        return Some(unix(s));
    }
    if let Some(s) = &e.psk {
        return Some(SocketDesc {
            protocol: "PACKET".into(),
            data: SocketData {
                sock_type: sock_type(s.r#type),
                family: "PACKET".into(),
                // The protocol is an ethertype in network byte order.
                address: Some(format!("proto {:#06x}", u16::from_be(s.protocol as u16))),
                send_buf: s.opts.so_sndbuf,
                recv_buf: s.opts.so_rcvbuf,
                ..Default::default()
            },
        });
    }
    if let Some(s) = &e.nlsk {
        return Some(SocketDesc {
            protocol: "NETLINK".into(),
            data: SocketData {
                sock_type: netlink_protocol(s.protocol),
                family: "NETLINK".into(),
                address: Some(format!("portid {}", s.portid)),
                state: Some(tcp_state(s.state)),
                send_buf: s.opts.so_sndbuf,
                recv_buf: s.opts.so_rcvbuf,
                ino: Some(s.ino),
                ..Default::default()
            },
        });
    }
    None
}

fn inet(s: &InetSkEntry) -> SocketDesc {
    let v6 = s.family == AF_INET6;
    let src = ip(&s.src_addr, v6);
    let dst = ip(&s.dst_addr, v6);
    let listening = s.state == 10;
    SocketDesc {
        protocol: ip_protocol(s.proto, s.r#type),
        data: SocketData {
            sock_type: sock_type(s.r#type),
            family: match s.family {
                AF_INET => "IPv4".into(),
                AF_INET6 => "IPv6".into(),
                f => format!("AF({f})"),
            },
            address: None,
            state: Some(tcp_state(s.state)),
            src_addr: Some(src),
            src_port: Some(s.src_port),
            dst_addr: Some(dst),
            dst_port: Some(s.dst_port),
            send_buf: s.opts.so_sndbuf,
            recv_buf: s.opts.so_rcvbuf,
            ino: Some(s.ino),
            peer: None,
            backlog: listening.then_some(s.backlog),
        },
    }
}

fn unix(s: &UnixSkEntry) -> SocketDesc {
    let name = unix_name(&s.name, s.name_dir.as_deref(), s.deleted == Some(true));
    SocketDesc {
        protocol: "UNIX".into(),
        data: SocketData {
            sock_type: sock_type(s.r#type),
            family: "UNIX".into(),
            address: Some(name),
            state: Some(tcp_state(s.state)),
            send_buf: s.opts.so_sndbuf,
            recv_buf: s.opts.so_rcvbuf,
            ino: Some(s.ino),
            peer: (s.peer != 0).then_some(s.peer),
            backlog: (s.state == 10).then_some(s.backlog),
            ..Default::default()
        },
    }
}

/// A unix socket's bound name: `(unnamed)`, `@abstract` (NULs inside shown as `@`), or a
/// path (joined to the directory CRIU recorded for relative names).
pub(crate) fn unix_name(name: &[u8], name_dir: Option<&str>, deleted: bool) -> String {
    if name.is_empty() {
        return "(unnamed)".into();
    }
    if name[0] == 0 {
        let rest: Vec<u8> = name[1..]
            .iter()
            .map(|&b| if b == 0 { b'@' } else { b })
            .collect();
        return format!("@{}", String::from_utf8_lossy(&rest));
    }
    let path = String::from_utf8_lossy(name.strip_suffix(&[0]).unwrap_or(name)).into_owned();
    let mut out = match name_dir {
        Some(dir) if !path.starts_with('/') && !dir.is_empty() => {
            format!("{}/{path}", dir.trim_end_matches('/'))
        }
        _ => path,
    };
    if deleted {
        out.push_str(" (deleted)");
    }
    out
}

/// An address from CRIU's 32-bit words (network-order bytes stored host-endian).
fn ip(words: &[u32], v6: bool) -> IpAddr {
    let mut bytes = [0u8; 16];
    for (chunk, w) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    if v6 {
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

fn sock_type(t: u32) -> String {
    match t {
        1 => "STREAM".into(),
        2 => "DGRAM".into(),
        3 => "RAW".into(),
        4 => "RDM".into(),
        5 => "SEQPACKET".into(),
        10 => "PACKET".into(),
        n => format!("TYPE({n})"),
    }
}

fn ip_protocol(proto: u32, sock_type: u32) -> String {
    match proto {
        6 => "TCP".into(),
        17 => "UDP".into(),
        136 => "UDPLITE".into(),
        1 => "ICMP".into(),
        58 => "ICMPV6".into(),
        255 => "RAW".into(),
        0 if sock_type == 1 => "TCP".into(),
        0 if sock_type == 2 => "UDP".into(),
        n => format!("IPPROTO({n})"),
    }
}

fn netlink_protocol(p: u32) -> String {
    match p {
        0 => "ROUTE".into(),
        4 => "SOCK_DIAG".into(),
        6 => "XFRM".into(),
        9 => "AUDIT".into(),
        12 => "NETFILTER".into(),
        15 => "KOBJECT_UEVENT".into(),
        16 => "GENERIC".into(),
        n => format!("NETLINK({n})"),
    }
}

/// The kernel's TCP state names; unix and UDP sockets reuse them.
fn tcp_state(s: u32) -> String {
    match s {
        1 => "ESTABLISHED".into(),
        2 => "SYN_SENT".into(),
        3 => "SYN_RECV".into(),
        4 => "FIN_WAIT1".into(),
        5 => "FIN_WAIT2".into(),
        6 => "TIME_WAIT".into(),
        7 => "CLOSE".into(),
        8 => "CLOSE_WAIT".into(),
        9 => "LAST_ACK".into(),
        10 => "LISTEN".into(),
        11 => "CLOSING".into(),
        n => format!("STATE({n})"),
    }
}

impl ImageSet {
    /// Sockets of every process that has any, in pstree order, descriptors ascending.
    pub fn sockets(&self) -> Result<Vec<ProcessSockets>> {
        let files = self.files()?;
        let mut out = Vec::new();
        for task in self.tasks() {
            if !task.state().has_memory() {
                continue;
            }
            let ids = self.ids(task.pid())?;
            let open_sockets: Vec<Socket> = self
                .fd_table(ids.files_id)?
                .iter()
                .filter_map(|fd| {
                    let d = describe_socket(files.get(&fd.id)?)?;
                    Some(Socket {
                        fd: fd.fd,
                        protocol: d.protocol,
                        data: d.data,
                    })
                })
                .collect();
            if !open_sockets.is_empty() {
                out.push(ProcessSockets {
                    pid: task.pid(),
                    command: task.comm().to_string(),
                    open_sockets,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_words() {
        // 127.0.0.1 as CRIU stores it on a little-endian host.
        let w = u32::from_le_bytes([127, 0, 0, 1]);
        assert_eq!(ip(&[w], false), "127.0.0.1".parse::<IpAddr>().unwrap());
        let v6: Vec<u32> = "::1"
            .parse::<Ipv6Addr>()
            .unwrap()
            .octets()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(ip(&v6, true), "::1".parse::<IpAddr>().unwrap());
        assert_eq!(ip(&[], false), "0.0.0.0".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn unix_names() {
        assert_eq!(unix_name(b"", None, false), "(unnamed)");
        assert_eq!(unix_name(b"\0abs\0x", None, false), "@abs@x");
        assert_eq!(
            unix_name(b"/run/a.sock", None, true),
            "/run/a.sock (deleted)"
        );
        assert_eq!(unix_name(b"a.sock", Some("/srv/"), false), "/srv/a.sock");
    }

    #[test]
    fn endpoints_bracket_ipv6() {
        assert_eq!(endpoint(&"::1".parse().unwrap(), 80), "[::1]:80");
        assert_eq!(endpoint(&"10.0.0.1".parse().unwrap(), 5), "10.0.0.1:5");
    }
}
