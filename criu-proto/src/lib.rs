//! Wire types for CRIU and the framing of CRIU image files.
//!
//! * [`rpc`] — the messages exchanged with `criu swrk` (one protobuf message per
//!   `SOCK_SEQPACKET` packet): `CriuReq`, `CriuResp`, `CriuOpts` and friends.
//! * [`images`] — the image entries cpengine decodes: `stats-dump`, `stats-restore`,
//!   `inventory.img`, `pstree.img`, and for inspection `core-*`, `mm-*`, `pagemap-*`, `fs-*`,
//!   `ids-*`, `fdinfo-*`, `files.img` (with its file and socket kinds) and `tty-info.img`;
//!   for restore verification the credentials and seccomp mode of every thread,
//!   `mountpoints-*`, `seccomp.img` and `cgroup.img`.
//! * [`image`] — how image files are framed: magic numbers, then `u32` little-endian
//!   length-prefixed protobuf entries. Readers enforce a size cap before allocating.
//!
//! The `.proto` files under `proto/` are cpengine's own description of CRIU's formats; their
//! field numbers and types are checked against upstream CRIU by the drift test
//! (`tests/drift.rs`). This crate holds no policy.

pub mod image;

/// Generated protobuf types (package `criu`). Never edited by hand.
#[allow(
    clippy::all,
    missing_debug_implementations,
    missing_docs,
    rustdoc::invalid_html_tags
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/criu.rs"));
}

/// CRIU RPC messages.
pub mod rpc {
    pub use crate::generated::{
        CgroupRoot, CriuCgMode, CriuDumpResp, CriuFeatures, CriuNetworkLockMethod, CriuNotify,
        CriuOpts, CriuPageServerInfo, CriuPreDumpMode, CriuReq, CriuReqType, CriuResp,
        CriuRestoreResp, CriuVersion, CriuVethPair, ExtMountMap, InheritFd, JoinNamespace, UnixSk,
    };
}

/// CRIU image entries.
pub mod images {
    pub use crate::generated::core_entry::March;
    /// Restore verification: mounts, seccomp filters, cgroups.
    pub use crate::generated::{
        CgControllerEntry, CgMemberEntry, CgSetEntry, CgroupDirEntry, CgroupEntry, CgroupPerms,
        CgroupPropEntry, Fstype, MntEntry, RlimitEntry, SeccompEntry, SeccompFilter, SeccompMode,
        TaskRlimitsEntry,
    };
    pub use crate::generated::{
        CoreEntry, CredsEntry, DumpStatsEntry, EventfdFileEntry, EventpollFileEntry, ExtFileEntry,
        FdTypes, FdinfoEntry, FifoEntry, FileEntry, FsEntry, InetSkEntry, InotifyFileEntry,
        InventoryEntry, Lsmtype, MemfdFileEntry, MmEntry, NetlinkSkEntry, NsFileEntry,
        PacketSockEntry, PagemapEntry, PagemapHead, PidfdEntry, PipeEntry, PluginsEntry,
        PstreeEntry, RegFileEntry, RestoreStatsEntry, SignalfdEntry, SkOptsEntry, SkShutdown,
        StatsEntry, TaskCoreEntry, TaskKobjIdsEntry, ThreadCoreEntry, TimerfdEntry, TtyFileEntry,
        TtyInfoEntry, TtyPtyEntry, TtyType, UnixSkEntry, VmaEntry,
    };
}

/// The encoded `FileDescriptorSet` of this crate's `.proto` files (for drift checks and tools).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/criu-descriptors.bin"));

pub use prost;
