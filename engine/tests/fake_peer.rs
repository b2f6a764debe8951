//! Protocol edge cases of the swrk session against a fake CRIU peer on a socketpair.
//! No root and no CRIU needed; the real-CRIU proof lives in `integration/`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use cpengine::criu::{Ack, AckAll, Channel, CriuError, Notification, Session};
use criu_proto::rpc::{CriuNotify, CriuReq, CriuReqType, CriuResp, CriuVersion};

const T: Duration = Duration::from_secs(5);

fn pair() -> (Session, Channel) {
    let (ours, theirs) = cpengine::sys::seqpacket_pair().unwrap();
    cpengine::sys::set_nonblocking(theirs.as_fd()).unwrap();
    (
        Session::from_socket(ours).unwrap(),
        Channel::new(theirs).unwrap(),
    )
}

fn req(t: CriuReqType) -> CriuReq {
    CriuReq {
        r#type: t as i32,
        ..Default::default()
    }
}

fn resp(t: CriuReqType, success: bool) -> CriuResp {
    CriuResp {
        r#type: t as i32,
        success,
        ..Default::default()
    }
}

fn notify(script: &str, pid: Option<i32>) -> CriuResp {
    CriuResp {
        notify: Some(CriuNotify {
            script: Some(script.into()),
            pid,
        }),
        ..resp(CriuReqType::Notify, true)
    }
}

#[tokio::test]
async fn a_200k_reply_arrives_whole() {
    let (mut s, peer) = pair();
    let name = "x".repeat(200 * 1024);
    let fake = tokio::spawn(async move {
        let r = peer.recv::<CriuReq>().await.unwrap();
        assert_eq!(r.msg.r#type(), CriuReqType::Version);
        let v = CriuVersion {
            major_number: 4,
            minor_number: 2,
            name: Some(name),
            ..Default::default()
        };
        peer.send(
            &CriuResp {
                version: Some(v),
                ..resp(CriuReqType::Version, true)
            },
            &[],
        )
        .await
        .unwrap();
    });
    let ex = s
        .request(req(CriuReqType::Version), &mut AckAll, T)
        .await
        .unwrap();
    assert_eq!(ex.resp.version.unwrap().name.unwrap().len(), 200 * 1024);
    fake.await.unwrap();
}

#[tokio::test]
async fn notifications_are_acked_in_order_before_the_reply() {
    let (mut s, peer) = pair();
    let fake = tokio::spawn(async move {
        peer.recv::<CriuReq>().await.unwrap();
        let mut acks = Vec::new();
        for (script, pid) in [
            ("pre-dump", None),
            ("query-ext-files", None),
            ("post-dump", None),
        ] {
            peer.send(&notify(script, pid), &[]).await.unwrap();
            let ack = peer.recv::<CriuReq>().await.unwrap().msg;
            assert_eq!(ack.r#type(), CriuReqType::Notify);
            acks.push((
                ack.notify_success,
                ack.opts.map(|o| o.external).unwrap_or_default(),
            ));
        }
        peer.send(&resp(CriuReqType::Dump, true), &[])
            .await
            .unwrap();
        acks
    });
    let mut seen = Vec::new();
    let mut handler = |n: Notification| {
        seen.push(n.script().to_string());
        match n {
            Notification::QueryExtFiles => Ack {
                success: true,
                external: vec!["mnt[/data]:data".into()],
            },
            _ => Ack::ok(),
        }
    };
    let ex = s
        .request(req(CriuReqType::Dump), &mut handler, T)
        .await
        .unwrap();
    assert!(ex.resp.success);
    assert_eq!(seen, ["pre-dump", "query-ext-files", "post-dump"]);
    assert_eq!(ex.hooks.len(), 3);
    let acks = fake.await.unwrap();
    assert_eq!(acks[0], (Some(true), vec![]));
    assert_eq!(acks[1], (Some(true), vec!["mnt[/data]:data".to_string()]));
}

#[tokio::test]
async fn a_negative_ack_is_sent_when_the_handler_refuses() {
    let (mut s, peer) = pair();
    let fake = tokio::spawn(async move {
        peer.recv::<CriuReq>().await.unwrap();
        peer.send(&notify("pre-dump", None), &[]).await.unwrap();
        let ack = peer.recv::<CriuReq>().await.unwrap().msg;
        peer.send(&resp(CriuReqType::Dump, false), &[])
            .await
            .unwrap();
        ack.notify_success
    });
    let err = s
        .request(
            req(CriuReqType::Dump),
            &mut |_n: Notification| Ack::fail(),
            T,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CriuError::Failed {
                req_type: CriuReqType::Dump,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(fake.await.unwrap(), Some(false));
}

#[tokio::test]
async fn failure_carries_errno_and_message() {
    let (mut s, peer) = pair();
    tokio::spawn(async move {
        peer.recv::<CriuReq>().await.unwrap();
        let r = CriuResp {
            cr_errno: Some(3),
            cr_errmsg: Some("No such process".into()),
            ..resp(CriuReqType::Dump, false)
        };
        peer.send(&r, &[]).await.unwrap();
    });
    let err = s
        .request(req(CriuReqType::Dump), &mut AckAll, T)
        .await
        .unwrap_err();
    match &err {
        CriuError::Failed {
            req_type,
            errno,
            errmsg,
            log,
        } => {
            assert_eq!(*req_type, CriuReqType::Dump);
            assert_eq!(*errno, Some(3));
            assert_eq!(errmsg.as_deref(), Some("No such process"));
            assert!(log.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.errno(), Some(3));
    let text = err.to_string();
    assert!(
        text.contains("DUMP") && text.contains("errno 3") && text.contains("No such process"),
        "{text}"
    );
}

#[tokio::test]
async fn garbage_and_empty_replies_are_bad_replies() {
    let (mut s, peer) = pair();
    tokio::spawn(async move {
        peer.recv::<CriuReq>().await.unwrap();
        // Not a protobuf message: field 1 with an invalid wire type.
        peer.send_raw(&[0x0f, 0xff, 0xff]).await.unwrap();
    });
    let err = s
        .request(req(CriuReqType::Version), &mut AckAll, T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CriuError::BadReply {
                req_type: CriuReqType::Version,
                ..
            }
        ),
        "{err:?}"
    );

    let (mut s, peer) = pair();
    let keep = tokio::spawn(async move {
        peer.recv::<CriuReq>().await.unwrap();
        peer.send_raw(&[]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(peer);
    });
    let err = s
        .request(req(CriuReqType::Version), &mut AckAll, T)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CriuError::BadReply { reason, .. } if reason.contains("empty")),
        "{err:?}"
    );
    keep.await.unwrap();
}

#[tokio::test]
async fn the_peer_dying_mid_request_is_a_closed_error() {
    let (mut s, peer) = pair();
    tokio::spawn(async move {
        peer.recv::<CriuReq>().await.unwrap();
        peer.send(&notify("pre-dump", None), &[]).await.unwrap();
        drop(peer);
    });
    let err = s
        .request(req(CriuReqType::Dump), &mut AckAll, T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CriuError::Closed {
                req_type: CriuReqType::Dump,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_reply_of_the_wrong_type_is_refused() {
    let (mut s, peer) = pair();
    tokio::spawn(async move {
        peer.recv::<CriuReq>().await.unwrap();
        peer.send(&resp(CriuReqType::Restore, true), &[])
            .await
            .unwrap();
    });
    let err = s
        .request(req(CriuReqType::Dump), &mut AckAll, T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CriuError::UnexpectedReply {
                expected: CriuReqType::Dump,
                got: 2
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("RESTORE"));
}

#[tokio::test]
async fn a_notification_can_carry_an_fd() {
    let (mut s, peer) = pair();
    tokio::spawn(async move {
        peer.recv::<CriuReq>().await.unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(b"tick4").unwrap();
        peer.send(&notify("orphan-pts-master", None), &[r.as_fd()])
            .await
            .unwrap();
        drop(r);
        peer.recv::<CriuReq>().await.unwrap();
        let ok = CriuResp {
            restore: Some(criu_proto::rpc::CriuRestoreResp { pid: 77 }),
            ..resp(CriuReqType::Restore, true)
        };
        peer.send(&ok, &[]).await.unwrap();
    });
    let mut got: Option<OwnedFd> = None;
    let mut handler = |n: Notification| {
        if let Notification::OrphanPtsMaster { master } = n {
            got = master;
        }
        Ack::ok()
    };
    let ex = s
        .request(req(CriuReqType::Restore), &mut handler, T)
        .await
        .unwrap();
    assert_eq!(ex.resp.restore.unwrap().pid, 77);
    let mut text = String::new();
    std::fs::File::from(got.expect("fd passed with the notification"))
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "tick4");
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let (mut s, peer) = pair();
    let _keep = tokio::spawn(async move {
        peer.recv::<CriuReq>().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let err = s
        .request(
            req(CriuReqType::Dump),
            &mut AckAll,
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CriuError::Timeout {
                req_type: CriuReqType::Dump,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn setup_namespaces_and_post_restore_carry_the_pid() {
    let (mut s, peer) = pair();
    tokio::spawn(async move {
        peer.recv::<CriuReq>().await.unwrap();
        for (script, pid) in [
            ("pre-restore", None),
            ("setup-namespaces", Some(41)),
            ("post-restore", Some(42)),
            ("pre-resume", None),
            ("post-resume", None),
            ("status-ready", None),
            ("something-new", Some(7)),
        ] {
            peer.send(&notify(script, pid), &[]).await.unwrap();
            peer.recv::<CriuReq>().await.unwrap();
        }
        let ok = CriuResp {
            restore: Some(criu_proto::rpc::CriuRestoreResp { pid: 42 }),
            ..resp(CriuReqType::Restore, true)
        };
        peer.send(&ok, &[]).await.unwrap();
    });
    let mut pids = Vec::new();
    let mut handler = |n: Notification| {
        match n {
            Notification::SetupNamespaces { pid } | Notification::PostRestore { pid } => {
                pids.push(pid)
            }
            Notification::Other { script, pid } => {
                assert_eq!(script, "something-new");
                assert_eq!(pid, Some(7));
            }
            _ => {}
        }
        Ack::ok()
    };
    let ex = s
        .request(req(CriuReqType::Restore), &mut handler, T)
        .await
        .unwrap();
    assert_eq!(pids, [41, 42]);
    assert!(ex.hook_at("post-restore").unwrap() >= ex.hook_at("setup-namespaces").unwrap());
}

/// A fake `criu` that runs `body` (a shell script; `$D` is its own directory).
fn fake_criu(body: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("criu");
    std::fs::write(&bin, format!("#!/bin/sh\nD=$(dirname \"$0\")\n{body}\n")).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, bin)
}

/// Waits for a file the fake writes.
async fn written(path: &std::path::Path) -> String {
    for _ in 0..1000 {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} was never written", path.display());
}

#[tokio::test]
async fn the_worker_runs_out_of_the_oom_killers_reach() {
    let (dir, bin) = fake_criu(
        "cat /proc/$$/oom_score_adj > \"$D/score.tmp\"; mv \"$D/score.tmp\" \"$D/score\"",
    );
    let s = Session::spawn(&bin, cpengine::criu::SpawnSpec::default()).unwrap();
    let score = written(&dir.path().join("score")).await;
    s.finish().await;
    // Lowering the score needs CAP_SYS_RESOURCE (bit 24): without it (as on a host whose
    // bounding set lacks it) the worker keeps ours.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let expect = if eff & (1 << 24) != 0 {
        cpengine::criu::WORKER_OOM_SCORE_ADJ.to_string()
    } else {
        std::fs::read_to_string("/proc/self/oom_score_adj").unwrap()
    };
    assert_eq!(score.trim(), expect.trim());
}

#[tokio::test]
async fn a_dropped_session_lets_its_worker_stop_by_itself() {
    // The fake reads its socket until our end goes away, then says so: a SIGKILL (what a
    // cancelled request used to send) would leave no such word.
    let (dir, bin) =
        fake_criu("cat <&3 >/dev/null; echo eof > \"$D/eof.tmp\"; mv \"$D/eof.tmp\" \"$D/eof\"");
    let s = Session::spawn(&bin, cpengine::criu::SpawnSpec::default()).unwrap();
    let pid = s.worker_pid().unwrap();
    // Started, and still there: the drop is what ends it.
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(s);
    assert_eq!(written(&dir.path().join("eof")).await, "eof\n");
}
