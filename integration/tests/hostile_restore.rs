//! Hostile checkpoints: a real runc container checkpointed by cpengine, its real CRIU images
//! edited with prost the way an attacker would (capabilities raised, `no_new_privs` cleared,
//! a devtmpfs or host bind mount added, a block device or set-id file put in the `/dev` tmpfs
//! image, a namespace pointed at the host's, a file outside the root), repacked, and handed
//! to `cpengine restore`. Each must be refused by the restore policy with the typed error
//! naming the image and field — before anything is mounted or started, and with nothing left
//! behind. The unedited archive must still restore.
//!
//! Run under the global lock (see the helper brief):
//! `flock /tmp/cpengine-realcriu.lock cargo test -p cpengine-integration --test hostile_restore -- --test-threads=1`

use std::path::{Path, PathBuf};
use std::process::Command;

use cpengine::container::manage;
use cpengine::container::state::StateRoot;
use cpengine_integration::faults::{mounts_under, restore_cgroups};
use cpengine_integration::leftovers::{
    CliRestored, assert_refused_restore_left_nothing, cli_restore,
};
use cpengine_integration::runc::*;
use cpengine_integration::*;
use criu_proto::image::{ImageReader, ImageWriter, header_for};
use criu_proto::images::{
    CoreEntry, CredsEntry, FdTypes, FileEntry, Fstype, InventoryEntry, MntEntry, RegFileEntry,
    TaskKobjIdsEntry,
};
use criu_proto::prost::Message;

/// A checkpoint of a counting busybox container, and the base its rootfs diff applies to.
struct Checkpointed {
    bundle: Bundle,
    archive: PathBuf,
    _dir: tempfile::TempDir,
    _state: tempfile::TempDir,
}

async fn checkpointed() -> Checkpointed {
    let engine = engine().await;
    let state_dir = scratch("cpe-hstate-");
    let (bundle, dir, archive) =
        checkpointed_counter(&engine, &StateRoot::at(state_dir.path()), "cpe-h").await;
    Checkpointed {
        bundle,
        archive,
        _dir: dir,
        _state: state_dir,
    }
}

/// The archive unpacked into a directory, edited, and packed again.
struct Unpacked {
    dir: tempfile::TempDir,
}

impl Unpacked {
    fn new(archive: &Path) -> Self {
        let dir = scratch("cpe-hedit-");
        let (st, _, err) = run(Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(dir.path()));
        assert!(st.success(), "untar: {err}");
        Self { dir }
    }

    fn images(&self) -> PathBuf {
        self.dir.path().join("checkpoint")
    }

    fn image_names(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.images())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect();
        v.sort();
        v
    }

    /// Decodes every entry of `name`, lets `f` edit them, and writes the image back.
    fn edit<M: Message + Default>(&self, name: &str, f: impl FnOnce(&mut Vec<M>)) {
        let path = self.images().join(name);
        let h = header_for(name).unwrap_or_else(|| panic!("no header known for {name}"));
        let mut entries: Vec<M> = ImageReader::new(std::fs::File::open(&path).unwrap(), h)
            .unwrap()
            .all()
            .unwrap();
        f(&mut entries);
        let mut w = ImageWriter::new(Vec::new(), h).unwrap();
        for e in &entries {
            w.write(e).unwrap();
        }
        std::fs::write(&path, w.into_inner()).unwrap();
    }

    fn read<M: Message + Default>(&self, name: &str) -> Vec<M> {
        let h = header_for(name).unwrap();
        ImageReader::new(std::fs::File::open(self.images().join(name)).unwrap(), h)
            .unwrap()
            .all()
            .unwrap()
    }

    /// The core image of the container's init (the first task of pstree.img).
    fn init_core(&self) -> String {
        let tasks: Vec<criu_proto::images::PstreeEntry> = self.read("pstree.img");
        format!("core-{}.img", tasks[0].pid)
    }

    /// Lets `f` edit the credentials in the init's core image.
    fn edit_init_creds(&self, f: impl FnOnce(&mut CredsEntry)) {
        self.edit::<CoreEntry>(&self.init_core(), |e| {
            f(e[0].thread_core.as_mut().unwrap().creds.as_mut().unwrap())
        })
    }

    fn pack(&self, out: &Path) {
        let names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let (st, _, err) = run(Command::new("tar")
            .arg("-cf")
            .arg(out)
            .arg("-C")
            .arg(self.dir.path())
            .args(&names));
        assert!(st.success(), "tar: {err}");
    }
}

/// One hostile edit: what is changed, the extra flags, and what the refusal must name.
struct Case {
    name: &'static str,
    edit: Box<dyn Fn(&Unpacked)>,
    flags: &'static [&'static str],
    expect: &'static [&'static str],
}

fn all_caps() -> Vec<u32> {
    vec![0xffff_ffff, 0x1ff]
}

/// Every capability in the init's effective and permitted sets.
fn raise_caps(u: &Unpacked) {
    u.edit_init_creds(|c| {
        c.cap_eff = all_caps();
        c.cap_prm = all_caps();
    })
}

fn tmpfs_dev_image(u: &Unpacked) -> String {
    let names = u.image_names("tmpfs-dev-");
    assert!(
        !names.is_empty(),
        "the checkpoint has no /dev tmpfs image: {:?}",
        u.image_names("")
    );
    names[0].clone()
}

/// Rewrites a tmpfs image (gzip tar) with one more entry.
fn add_to_tmpfs(
    u: &Unpacked,
    name: &str,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    dev: (u32, u32),
) {
    let p = u.images().join(name);
    let mut entries = Vec::new();
    {
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap());
        let mut ar = tar::Archive::new(gz);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            entries.push((h, data));
        }
    }
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (h, data) in &entries {
        b.append(h, data.as_slice()).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(0);
    h.set_device_major(dev.0).unwrap();
    h.set_device_minor(dev.1).unwrap();
    h.set_cksum();
    b.append(&h, std::io::empty()).unwrap();
    std::fs::write(&p, b.into_inner().unwrap().finish().unwrap()).unwrap();
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "capabilities raised",
            edit: Box::new(raise_caps),
            flags: &[],
            expect: &["creds.cap_prm has", "CAP_SYS_ADMIN", "core-"],
        },
        Case {
            name: "bounding set raised",
            edit: Box::new(|u| u.edit_init_creds(|c| c.cap_bnd = all_caps())),
            flags: &[],
            expect: &["creds.cap_bnd has", "CAP_SYS_MODULE"],
        },
        Case {
            name: "no_new_privs cleared",
            edit: Box::new(|u| u.edit_init_creds(|c| c.no_new_privs = Some(0))),
            flags: &[],
            expect: &["creds.no_new_privs is 0"],
        },
        Case {
            name: "seccomp missing where required",
            edit: Box::new(|_| {}),
            flags: &["--seccomp", "required"],
            expect: &["seccomp_mode"],
        },
        Case {
            name: "devtmpfs mount",
            edit: Box::new(|u| {
                let name = u.image_names("mountpoints-")[0].clone();
                u.edit::<MntEntry>(&name, |m| {
                    let mut e = m.iter().find(|e| e.mountpoint == "/proc").unwrap().clone();
                    e.mnt_id = 9999;
                    e.fstype = Fstype::Devtmpfs as u32;
                    e.mountpoint = "/mnt".into();
                    e.root = "/".into();
                    e.source = "devtmpfs".into();
                    e.flags = 2 | 4;
                    e.ext_key = None;
                    e.ext_mount = None;
                    m.push(e);
                })
            }),
            flags: &[],
            expect: &["mountpoints-", "mount 9999 (/mnt) fstype is DEVTMPFS"],
        },
        Case {
            name: "host bind mount",
            edit: Box::new(|u| {
                let name = u.image_names("mountpoints-")[0].clone();
                u.edit::<MntEntry>(&name, |m| {
                    let mut e = m.iter().find(|e| e.mountpoint == "/proc").unwrap().clone();
                    e.mnt_id = 9998;
                    e.mountpoint = "/hostetc".into();
                    e.ext_key = Some("/etc".into());
                    m.push(e);
                })
            }),
            flags: &[],
            expect: &[
                "mount 9998 (/hostetc) ext_key",
                "/etc is not an external mount",
            ],
        },
        Case {
            name: "host directory as a device in spec.dump",
            edit: Box::new(|u| {
                let p = u.dir.path().join("spec.dump");
                let mut spec: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                spec["linux"]["devices"] = serde_json::json!([
                    {"path": "/etc", "type": "c", "major": 1, "minor": 3}
                ]);
                std::fs::write(&p, serde_json::to_vec(&spec).unwrap()).unwrap();
            }),
            flags: &[],
            expect: &["spec.dump: linux.devices[0].path /etc"],
        },
        Case {
            name: "block device in the /dev tmpfs image",
            edit: Box::new(|u| {
                let name = tmpfs_dev_image(u);
                add_to_tmpfs(u, &name, "./sda", tar::EntryType::Block, 0o660, (8, 0));
            }),
            flags: &[],
            expect: &["tmpfs-dev-", "entry sda", "block device 8:0"],
        },
        Case {
            name: "set-id file in the /dev tmpfs image",
            edit: Box::new(|u| {
                let name = tmpfs_dev_image(u);
                add_to_tmpfs(u, &name, "./su", tar::EntryType::Regular, 0o4755, (0, 0));
            }),
            flags: &[],
            expect: &["entry su mode", "set-id"],
        },
        Case {
            name: "network namespace pointed at the host's",
            edit: Box::new(|u| {
                let inv: Vec<InventoryEntry> = u.read("inventory.img");
                let host = inv[0].root_ids.as_ref().unwrap().net_ns_id;
                // CRIU reads a task's namespaces from ids-<pid>.img.
                u.edit::<TaskKobjIdsEntry>(&u.init_core().replace("core-", "ids-"), |e| {
                    e[0].net_ns_id = host;
                })
            }),
            flags: &[],
            expect: &["ids.net_ns_id is the host's net namespace"],
        },
        Case {
            name: "pid namespace missing",
            edit: Box::new(|u| {
                u.edit::<TaskKobjIdsEntry>(&u.init_core().replace("core-", "ids-"), |e| {
                    e[0].pid_ns_id = None;
                })
            }),
            flags: &[],
            expect: &["ids.pid_ns_id is missing or 0"],
        },
        Case {
            name: "file outside the root",
            edit: Box::new(|u| {
                u.edit::<FileEntry>("files.img", |f| {
                    f.push(FileEntry {
                        r#type: FdTypes::Reg as i32,
                        id: 99_999,
                        reg: Some(RegFileEntry {
                            id: 99_999,
                            flags: 0,
                            pos: 0,
                            name: "/../../../etc/shadow".into(),
                            mnt_id: None,
                            size: None,
                            ext: None,
                            mode: None,
                        }),
                        ..Default::default()
                    });
                })
            }),
            flags: &[],
            expect: &["files.img: file 99999 name", "outside the container's root"],
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_edits_are_refused_before_anything_is_created() {
    let ck = checkpointed().await;
    let mut failures = Vec::new();
    for case in cases() {
        let u = Unpacked::new(&ck.archive);
        (case.edit)(&u);
        let out = scratch("cpe-hostile-");
        let edited = out.path().join("edited.tar");
        u.pack(&edited);
        let state = scratch("cpe-hstate-");
        let id = unique_id("cpe-hr");
        let (ok, stdout, stderr) =
            cli_restore(&edited, &id, &ck.bundle.base, state.path(), case.flags);
        if ok {
            // Never leave a restored hostile container running.
            drop(CliRestored::new(state.path(), &id));
            failures.push(format!("{}: restored! {stdout}", case.name));
            continue;
        }
        let missing: Vec<_> = case
            .expect
            .iter()
            .filter(|e| !stderr.contains(*e))
            .collect();
        if !missing.is_empty() || !stderr.contains("restore refused by policy") {
            failures.push(format!("{}: error lacks {missing:?}: {stderr}", case.name));
        }
        eprintln!("{}: {}", case.name, stderr.trim());
        assert_refused_restore_left_nothing(state.path(), &id);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unedited_and_the_trusted_archive_restore() {
    let ck = checkpointed().await;
    // Unpacked and packed again untouched: the repacking itself is not what tests refuse.
    let u = Unpacked::new(&ck.archive);
    let out = scratch("cpe-hok-");
    let repacked = out.path().join("repacked.tar");
    u.pack(&repacked);
    for (archive, flags, verified) in [
        (&ck.archive, &[][..], true),
        (&repacked, &["--json"][..], true),
    ] {
        let state = scratch("cpe-hstate-");
        let id = unique_id("cpe-hok");
        let (ok, stdout, stderr) = cli_restore(archive, &id, &ck.bundle.base, state.path(), flags);
        let _guard = CliRestored::new(state.path(), &id);
        assert!(ok, "restore failed: {stderr}");
        if flags.is_empty() {
            // The shell and its sleep, each one thread.
            assert!(stdout.contains("verified 2 threads, 2 tasks"), "{stdout}");
        } else {
            let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(v["verification"]["trusted_unverified"], !verified);
            assert!(v["verification"]["mounts"].as_u64().unwrap() > 5, "{v}");
        }
        let root = StateRoot::at(state.path());
        let rec =
            cpengine::container::state::ContainerRecord::load(&root.container_record(&id)).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/status", rec.pid)).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .unwrap_or_default()
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string()
        };
        // runc's default spec: KILL, NET_BIND_SERVICE, AUDIT_WRITE; no_new_privs on.
        assert_eq!(field("CapEff:"), "0000000020000420", "{status}");
        assert_eq!(field("NoNewPrivs:"), "1");
        manage::delete(&root, &id, true).await.unwrap();
    }
    // --trust-archive skips verification of an archive the policy would refuse, loudly.
    let state = scratch("cpe-hstate-");
    let id = unique_id("cpe-htr");
    let (ok, _, stderr) = cli_restore(
        &ck.archive,
        &id,
        &ck.bundle.base,
        state.path(),
        &["--seccomp", "required"],
    );
    assert!(!ok && stderr.contains("seccomp_mode"), "{stderr}");
    assert_refused_restore_left_nothing(state.path(), &id);
    let (ok, stdout, stderr) = cli_restore(
        &ck.archive,
        &id,
        &ck.bundle.base,
        state.path(),
        &["--seccomp", "required", "--trust-archive"],
    );
    let _guard = CliRestored::new(state.path(), &id);
    assert!(ok, "trusted restore failed: {stderr}");
    assert!(stderr.contains("WARNING: --trust-archive"), "{stderr}");
    assert!(stdout.contains("verified NO"), "{stdout}");
    manage::delete(&StateRoot::at(state.path()), &id, true)
        .await
        .unwrap();
}

/// The shim's restore at CreateContainer: a hostile archive is refused at StartContainer
/// with PERMISSION_DENIED naming the field, nothing of the container runs or stays mounted;
/// with `--restore-mode checkpoint-only` a checkpoint is not even created as a container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_refuses_a_hostile_archive_and_honours_the_restore_mode() {
    use cpengine_integration::cri::*;
    use k8s_cri::v1 as pb;
    let f = ShimPod::start("hostile", pb::NamespaceMode::Pod).await;
    let mut rt = f.rt.clone();
    let script = QUIET_COUNTER;
    let ctr = f
        .pod
        .start(container_config("counter", "busybox", script))
        .await;
    let dest = scratch("cpe-kubelet-checkpoints-");
    let loc = kubelet_location(dest.path(), "hostile", "default", "counter");
    checkpoint_to(&mut rt, &ctr, &loc, 60)
        .await
        .expect("CheckpointContainer");
    stop(&mut rt, &ctr, 0).await;

    // Raised capabilities in the archive's init core.
    let u = Unpacked::new(&loc);
    raise_caps(&u);
    let edited = dest.path().join("edited.tar");
    u.pack(&edited);
    let pod2 = f
        .another_pod("hostile-restored", pb::NamespaceMode::Pod)
        .await;
    let id = pod2
        .create(restore_config("counter", &edited.display().to_string()))
        .await
        .expect("CreateContainer");
    let e = rt
        .start_container(pb::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect_err("a hostile archive must not start");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("creds.cap_prm has") && e.message().contains("CAP_SYS_ADMIN"),
        "{e:?}"
    );
    let s = status_of(&mut rt, &id).await;
    assert_ne!(
        s.state,
        pb::ContainerState::ContainerRunning as i32,
        "{s:?}"
    );
    let state = f.shim.state();
    assert_eq!(
        mounts_under(&state.container_run_dir(&id)),
        Vec::<PathBuf>::new()
    );
    for cg in restore_cgroups(&id) {
        assert!(!cg.exists(), "cgroup {} left", cg.display());
    }
    assert!(!state.container_record(&id).exists(), "engine record left");
    let pod2_cfg = pod2.config.clone();
    drop(pod2);
    drop(f);

    // checkpoint-only: CreateContainer naming a checkpoint is refused before anything.
    let dir = scratch("cpe-shim-").keep();
    let shim = Shim::start_in(&dir, &["--restore-mode", "checkpoint-only"]);
    import_busybox(&shim.state(), BUSYBOX);
    let (rt, _) = shim.clients();
    let pod3 = Pod::run(&rt, pod2_cfg).await;
    let e = pod3
        .create(restore_config("counter", &loc.display().to_string()))
        .await
        .expect_err("restore is switched off");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("--restore-mode checkpoint-only"),
        "{e:?}"
    );
}
