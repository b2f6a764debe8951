//! The one place engine options become CRIU's `CriuOpts`.
//!
//! Settings every engine request carries, and why:
//! * `notify_scripts` — so hooks reach our [`super::NotifyHandler`] (timing, network lock,
//!   namespace setup, pty masters).
//! * `rst_sibling` on restore — the restored root becomes our child (swrk-only option), so we
//!   can wait for it and, as a subreaper, reap its orphans.
//! * `log_file` is a bare name: CRIU writes it into the work dir and rejects paths.

use std::os::fd::RawFd;

use criu_proto::rpc::{
    CgroupRoot as WireCgroupRoot, CriuCgMode, CriuNetworkLockMethod, CriuOpts, CriuReq,
    CriuReqType, ExtMountMap, InheritFd as WireInheritFd, JoinNamespace as WireJoin,
};

use crate::options::{
    CgroupMode, CheckpointOptions, CriuFlags, ExtMount, NetworkLock, RestoreOptions,
};

/// Name of CRIU's log in the work dir for a dump.
pub const DUMP_LOG: &str = "dump.log";
/// Name of CRIU's log in the work dir for a restore.
pub const RESTORE_LOG: &str = "restore.log";

/// `CLONE_NEWNET`, the only namespace CRIU accepts in `empty_ns`.
const CLONE_NEWNET: u32 = 0x4000_0000;

/// Builds the DUMP request. `images_fd` and `work_fd` are fds in *our* table.
pub fn dump_request(o: &CheckpointOptions, images_fd: RawFd, work_fd: Option<RawFd>) -> CriuReq {
    let opts = CriuOpts {
        images_dir_fd: images_fd,
        work_dir_fd: work_fd,
        pid: Some(o.pid),
        link_remap: o.link_remap.then_some(true),
        tcp_skip_in_flight: o.tcp_skip_in_flight.then_some(true),
        root: o.root.as_ref().map(|p| p.to_string_lossy().into_owned()),
        freeze_cgroup: o
            .freeze_cgroup
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        manage_cgroups: o.cgroups.map(|m| m != CgroupMode::Ignore),
        manage_cgroups_mode: o.cgroups.map(|m| cg_mode(m) as i32),
        external: o.external.clone(),
        ext_mnt: ext_mounts(&o.ext_mounts),
        empty_ns: o.empty_net_ns.then_some(CLONE_NEWNET),
        orphan_pts_master: o.orphan_pts_master.then_some(true),
        ghost_limit: o.ghost_limit,
        parent_img: o
            .parent_images
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        track_mem: o.track_mem.then_some(true),
        lazy_pages: o.lazy_pages.then_some(true),
        log_file: Some(DUMP_LOG.to_string()),
        notify_scripts: Some(true),
        ..flag_opts(&o.flags, CriuReqType::Dump)
    };
    CriuReq {
        r#type: CriuReqType::Dump as i32,
        opts: Some(opts),
        ..Default::default()
    }
}

/// Builds the RESTORE request. `inherit` maps each `inherit_fd` key to the fd number it has
/// in the *worker* (see [`super::SpawnSpec::inherited_fd_number`]).
pub fn restore_request(
    o: &RestoreOptions,
    images_fd: RawFd,
    work_fd: Option<RawFd>,
    inherit: &[(String, RawFd)],
) -> CriuReq {
    let opts = CriuOpts {
        images_dir_fd: images_fd,
        work_dir_fd: work_fd,
        rst_sibling: Some(true),
        evasive_devices: o.evasive_devices.then_some(true),
        root: o.root.as_ref().map(|p| p.to_string_lossy().into_owned()),
        inherit_fd: inherit
            .iter()
            .map(|(key, fd)| WireInheritFd {
                key: key.clone(),
                fd: *fd,
            })
            .collect(),
        external: o.external.clone(),
        ext_mnt: ext_mounts(&o.ext_mounts),
        cg_root: o
            .cgroup_roots
            .iter()
            .map(|c| WireCgroupRoot {
                ctrl: c.controller.clone(),
                path: c.path.clone(),
            })
            .collect(),
        manage_cgroups: o.cgroups.map(|m| m != CgroupMode::Ignore),
        manage_cgroups_mode: o.cgroups.map(|m| cg_mode(m) as i32),
        join_ns: o
            .join_ns
            .iter()
            .map(|j| WireJoin {
                ns: j.ns.clone(),
                ns_file: j.path.to_string_lossy().into_owned(),
                extra_opt: None,
            })
            .collect(),
        empty_ns: o.empty_net_ns.then_some(CLONE_NEWNET),
        orphan_pts_master: o.orphan_pts_master.then_some(true),
        lazy_pages: o.lazy_pages.then_some(true),
        lsm_profile: o.lsm_profile.clone(),
        lsm_mount_context: o.lsm_mount_context.clone(),
        log_file: Some(RESTORE_LOG.to_string()),
        notify_scripts: Some(true),
        ..flag_opts(&o.flags, CriuReqType::Restore)
    };
    CriuReq {
        r#type: CriuReqType::Restore as i32,
        opts: Some(opts),
        ..Default::default()
    }
}

/// The one place [`CriuFlags`] become CRIU options (the rest of the request is filled in by
/// the caller). `leave_running` and `network_lock` go into a dump only: CRIU takes a
/// restore's network lock method from the images. `timeout` and `fault` bound and test the
/// session, not the request.
fn flag_opts(f: &CriuFlags, kind: CriuReqType) -> CriuOpts {
    let dump = kind == CriuReqType::Dump;
    CriuOpts {
        leave_running: dump.then_some(f.leave_running),
        tcp_established: Some(f.tcp_established),
        shell_job: Some(f.shell_job),
        ext_unix_sk: Some(f.ext_unix_sk),
        file_locks: Some(f.file_locks),
        network_lock: f.network_lock.filter(|_| dump).map(|n| net_lock(n) as i32),
        log_level: Some(f.log_level as i32),
        ..Default::default()
    }
}

fn ext_mounts(m: &[ExtMount]) -> Vec<ExtMountMap> {
    m.iter()
        .map(|e| ExtMountMap {
            key: e.key.clone(),
            val: e.value.clone(),
        })
        .collect()
}

fn cg_mode(m: CgroupMode) -> CriuCgMode {
    match m {
        CgroupMode::Ignore => CriuCgMode::Ignore,
        CgroupMode::None => CriuCgMode::CgNone,
        CgroupMode::Props => CriuCgMode::Props,
        CgroupMode::Soft => CriuCgMode::Soft,
        CgroupMode::Full => CriuCgMode::Full,
        CgroupMode::Strict => CriuCgMode::Strict,
        CgroupMode::Default => CriuCgMode::Default,
    }
}

fn net_lock(n: NetworkLock) -> CriuNetworkLockMethod {
    match n {
        NetworkLock::Iptables => CriuNetworkLockMethod::Iptables,
        NetworkLock::Nftables => CriuNetworkLockMethod::Nftables,
        NetworkLock::Skip => CriuNetworkLockMethod::Skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use criu_proto::prost::Message;

    #[test]
    fn dump_request_carries_the_options() {
        let mut o = CheckpointOptions::new(42, "/tmp/x");
        o.flags.leave_running = true;
        o.flags.shell_job = true;
        o.empty_net_ns = true;
        o.cgroups = Some(CgroupMode::Soft);
        o.ext_mounts.push(ExtMount::new("/data", "/data"));
        let req = dump_request(&o, 7, Some(8));
        assert_eq!(req.r#type(), CriuReqType::Dump);
        let opts = req.opts.unwrap();
        assert_eq!(opts.images_dir_fd, 7);
        assert_eq!(opts.work_dir_fd, Some(8));
        assert_eq!(opts.pid, Some(42));
        assert_eq!(opts.leave_running, Some(true));
        assert_eq!(opts.shell_job, Some(true));
        assert_eq!(opts.empty_ns, Some(0x4000_0000));
        assert_eq!(opts.manage_cgroups_mode, Some(CriuCgMode::Soft as i32));
        assert_eq!(opts.notify_scripts, Some(true));
        assert_eq!(opts.log_file.as_deref(), Some("dump.log"));
        assert_eq!(opts.ext_mnt[0].key, "/data");
    }

    #[test]
    fn images_dir_fd_is_always_encoded() {
        // Field 1 is `required` in CRIU's schema: it must be on the wire even when 0.
        let req = dump_request(&CheckpointOptions::new(1, "/x"), 0, None);
        let bytes = req.opts.unwrap().encode_to_vec();
        assert_eq!(&bytes[..2], &[0x08, 0x00]);
    }

    #[test]
    fn restore_request_is_a_sibling_with_inherited_fds() {
        let o = RestoreOptions::new("/tmp/x");
        let req = restore_request(&o, 5, None, &[("pipe:[123]".into(), 4)]);
        assert_eq!(req.r#type(), CriuReqType::Restore);
        let opts = req.opts.unwrap();
        assert_eq!(opts.rst_sibling, Some(true));
        assert_eq!(opts.inherit_fd[0].key, "pipe:[123]");
        assert_eq!(opts.inherit_fd[0].fd, 4);
        assert_eq!(opts.log_file.as_deref(), Some("restore.log"));
        assert_eq!(opts.leave_running, None);
    }

    #[test]
    fn flags_reach_both_requests() {
        let flags = CriuFlags {
            leave_running: true,
            tcp_established: true,
            ext_unix_sk: true,
            file_locks: true,
            shell_job: true,
            log_level: 2,
            network_lock: Some(NetworkLock::Skip),
            ..Default::default()
        };
        let mut d = CheckpointOptions::new(1, "/x");
        d.flags = flags.clone();
        let mut r = RestoreOptions::new("/x");
        r.flags = flags;
        let dump = dump_request(&d, 3, None).opts.unwrap();
        let restore = restore_request(&r, 3, None, &[]).opts.unwrap();
        for o in [&dump, &restore] {
            assert_eq!(o.tcp_established, Some(true));
            assert_eq!(o.ext_unix_sk, Some(true));
            assert_eq!(o.file_locks, Some(true));
            assert_eq!(o.shell_job, Some(true));
            assert_eq!(o.log_level, Some(2));
        }
        assert_eq!(dump.leave_running, Some(true));
        assert_eq!(dump.network_lock, Some(CriuNetworkLockMethod::Skip as i32));
        assert_eq!(restore.leave_running, None);
        assert_eq!(restore.network_lock, None);
    }

    #[test]
    fn cgroup_mode_round_trips_and_rejects_unknown() {
        for m in [
            CgroupMode::Ignore,
            CgroupMode::None,
            CgroupMode::Props,
            CgroupMode::Soft,
            CgroupMode::Full,
            CgroupMode::Strict,
            CgroupMode::Default,
        ] {
            assert_eq!(CgroupMode::try_from(cg_mode(m) as i32), Ok(m));
        }
        assert_eq!(CgroupMode::try_from(99), Err(99));
    }
}
