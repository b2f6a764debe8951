//! One `criu swrk` worker and the request/notify loop spoken with it.
//!
//! The engine creates a `SOCK_SEQPACKET` socketpair, keeps one end and starts
//! `criu swrk 3` with the other end at fd 3 (the same convention as runc's
//! `criu_linux.go`; libcriu passes whatever number the fd happens to have). Extra fds CRIU must
//! inherit — `inherit_fd` entries, a page-server socket — follow at 4, 5, …. Fd-valued options
//! such as `images_dir_fd` are *not* inherited: CRIU opens them through
//! `/proc/<client pid>/fd/<n>`, so they name fds in our own table.
//!
//! A request is one packet; CRIU answers with zero or more NOTIFY packets, each of which we
//! must acknowledge, and then one final reply whose type must match the request's. Normally
//! CRIU serves one request and exits.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use criu_proto::rpc::{CriuOpts, CriuReq, CriuReqType, CriuResp};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, Interest};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::channel::{Channel, ChannelError};
use super::error::{CriuError, LogExcerpt};
use super::notify::{Notification, NotifyHandler};
use crate::fault::FaultPoint;
use crate::sys;

/// fd number of the RPC socket in the worker.
const SOCKET_FD: RawFd = 3;
/// Keep at most this much of CRIU's stderr for error reports.
const STDERR_KEEP: usize = 8 << 10;

/// How to start a worker.
#[derive(Debug, Default)]
pub struct SpawnSpec {
    /// fds the worker inherits at 4, 5, … in this order (for `inherit_fd`, `ps.fd`).
    pub inherit: Vec<OwnedFd>,
    /// The worker's stdin/stdout/stderr; `None` means /dev/null for stdin and stdout and a
    /// captured pipe for stderr.
    pub stdio: [Option<OwnedFd>; 3],
    /// Keep the worker in our process group (a shell-job restore: CRIU puts the restored job
    /// in its own group, which must then be the caller's). By default the worker leads a group
    /// of its own, so that a terminal's signals reach only us (we stop CRIU the gentle way; see
    /// [`Session::abort`]) and whatever a failed or killed CRIU forked can be killed with it.
    pub share_process_group: bool,
    /// The worker keeps our `oom_score_adj` instead of [`WORKER_OOM_SCORE_ADJ`]: a restore.
    /// The tasks it forks inherit the worker's score and CRIU sets an image's only when it is
    /// not 0, so a protected worker would hand -1000 to every task whose image says 0. (The
    /// protection matters where CRIU's parasite is inside live tasks: a dump.)
    pub keep_oom_score: bool,
}

impl SpawnSpec {
    /// The fd number the `i`-th inherited fd gets in the worker.
    pub fn inherited_fd_number(i: usize) -> RawFd {
        SOCKET_FD + 1 + i as RawFd
    }
}

/// A timed record of one hook.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookTiming {
    pub script: String,
    /// Time since the request was sent.
    #[serde(serialize_with = "crate::report::ser_duration_ms")]
    pub at: Duration,
    pub acked: bool,
}

/// The final reply and the hooks seen on the way.
#[derive(Debug)]
pub struct Exchange {
    pub resp: CriuResp,
    pub hooks: Vec<HookTiming>,
    pub elapsed: Duration,
}

impl Exchange {
    /// When the hook `script` was first seen, relative to the request.
    pub fn hook_at(&self, script: &str) -> Option<Duration> {
        self.hooks.iter().find(|h| h.script == script).map(|h| h.at)
    }
}

/// A connection to one CRIU worker.
#[derive(Debug)]
pub struct Session {
    channel: Channel,
    child: Option<Child>,
    stderr: Option<JoinHandle<String>>,
    /// A pidfd of the worker: readable once it has exited, without reaping it, so that its pid
    /// (and the process group it leads) stays ours until we reap it.
    exit_watch: Option<AsyncFd<OwnedFd>>,
    /// The worker leads its own process group (see [`SpawnSpec::share_process_group`]).
    own_group: bool,
    binary: PathBuf,
    log: Option<PathBuf>,
    fault: Option<FaultPoint>,
}

impl Session {
    /// Starts `criu swrk 3` from `binary`.
    pub fn spawn(binary: &Path, spec: SpawnSpec) -> Result<Self, CriuError> {
        let spawn_err = |source| CriuError::Spawn {
            binary: binary.to_path_buf(),
            source,
        };
        let (ours, theirs) = sys::seqpacket_pair().map_err(spawn_err)?;

        // Move every fd the child must see at a fixed number above all target numbers first,
        // so that in the child each dup2 has distinct source and target (dup2 onto itself would
        // leave close-on-exec set).
        let floor = SpawnSpec::inherited_fd_number(spec.inherit.len());
        let mut staged = Vec::with_capacity(spec.inherit.len() + 1);
        staged.push((
            sys::dup_at_least(theirs.as_fd(), floor).map_err(spawn_err)?,
            SOCKET_FD,
        ));
        for (i, fd) in spec.inherit.iter().enumerate() {
            let high = sys::dup_at_least(fd.as_fd(), floor).map_err(spawn_err)?;
            staged.push((high, SpawnSpec::inherited_fd_number(i)));
        }
        let pairs: Vec<(RawFd, RawFd)> = staged.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect();
        drop(theirs);

        // Not `kill_on_drop`: a request future dropped mid-dump (a cancelled caller) must not
        // SIGKILL CRIU while its parasite may be inside a task. Dropping the session closes our
        // end of the socket instead, and CRIU aborts the request itself (see `Drop`).
        let mut cmd = Command::new(binary);
        cmd.arg("swrk").arg(SOCKET_FD.to_string());
        if !spec.share_process_group {
            cmd.process_group(0);
        }
        let [stdin, stdout, stderr] = spec.stdio;
        cmd.stdin(stdin.map_or_else(Stdio::null, Stdio::from));
        cmd.stdout(stdout.map_or_else(Stdio::null, Stdio::from));
        let capture = stderr.is_none();
        cmd.stderr(stderr.map_or_else(Stdio::piped, Stdio::from));
        let protect = !spec.keep_oom_score;
        // SAFETY: the closure runs between fork and exec; it only calls dup2 on fds that are
        // open in the child (the staged copies), open/write/close on a static path and buffer,
        // and reads a Vec allocated before the fork. It neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(move || {
                if protect {
                    protect_from_oom_killer();
                }
                for &(from, to) in &pairs {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        drop(staged);
        drop(spec.inherit);
        // Opened while the worker is our unreaped child: it is certainly that process. Where
        // pidfds are missing (kernel < 5.3, a seccomp profile denying them) the worker is
        // watched by reaping it, and its group is not killed (its id could not be vouched for).
        let exit_watch = match child.id().map(watch_exit).transpose() {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "no pidfd for the criu worker; watching it by reaping");
                None
            }
        };

        let stderr = if capture {
            child.stderr.take().map(|mut pipe| {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = pipe.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.len() > 2 * STDERR_KEEP {
                            buf.drain(..buf.len() - STDERR_KEEP);
                        }
                    }
                    let start = buf.len().saturating_sub(STDERR_KEEP);
                    String::from_utf8_lossy(&buf[start..]).into_owned()
                })
            })
        } else {
            None
        };
        let channel = Channel::new(ours).map_err(spawn_err)?;
        tracing::debug!(binary = %binary.display(), pid = child.id(), "started criu swrk");
        if let Some(pid) = child.id()
            && protect
        {
            warn_once_if_oom_killable(pid);
        }
        Ok(Self {
            channel,
            child: Some(child),
            stderr,
            own_group: !spec.share_process_group && exit_watch.is_some(),
            exit_watch,
            binary: binary.to_path_buf(),
            log: None,
            fault: None,
        })
    }

    /// A session over an already-connected socket (a fake peer in tests).
    pub fn from_socket(sock: OwnedFd) -> std::io::Result<Self> {
        Ok(Self {
            channel: Channel::new(sock)?,
            child: None,
            stderr: None,
            exit_watch: None,
            own_group: false,
            binary: PathBuf::from("<socket>"),
            log: None,
            fault: None,
        })
    }

    /// Arms a fault for the next request (tests only; see [`crate::fault`]).
    pub fn set_fault(&mut self, fault: Option<FaultPoint>) {
        self.fault = fault;
    }

    /// The CRIU log file this request writes, quoted in errors.
    pub fn set_log(&mut self, path: PathBuf) {
        self.log = Some(path);
    }

    /// Pid of the worker process.
    pub fn worker_pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends `req`, answers hooks with `handler` until the final reply, and checks the reply.
    /// The whole exchange is bounded by `timeout`; on expiry the request is aborted (see
    /// [`Session::abort`]).
    pub async fn request(
        &mut self,
        req: CriuReq,
        handler: &mut dyn NotifyHandler,
        timeout: Duration,
    ) -> Result<Exchange, CriuError> {
        let req_type = req.r#type();
        let started = Instant::now();
        let mut hooks = Vec::new();
        if let Some(pid) = self.worker_pid() {
            handler.on_worker(pid);
        }
        // A timed fault: the worker is still our unreaped child until `kill`/`finish` waits
        // for it, so its pid cannot have been reused when the timer fires.
        let timed_fault = match (&self.fault, self.worker_pid()) {
            (Some(FaultPoint::KillCriuAfter(after)), Some(pid)) => {
                let after = *after;
                Some(tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    tracing::warn!(pid, ?after, "fault injection: killing criu");
                    kill_pid(pid);
                }))
            }
            _ => None,
        };
        let worker = self.worker_pid();
        let root = AtomicI32::new(0);
        let broke_deadlock = AtomicBool::new(false);
        let exchange = Self::exchange(
            &self.channel,
            self.fault.as_ref().zip(worker),
            &req,
            handler,
            &mut hooks,
            started,
            &root,
        );
        let watched = async {
            tokio::select! {
                r = until_worker_exits(exchange, self.exit_watch.as_ref(), self.child.as_mut(), req_type) => r,
                () = break_failed_restore_deadlock(worker, &root, &broke_deadlock) => {
                    unreachable!("the deadlock watch never returns")
                }
            }
        };
        let outcome = tokio::time::timeout(timeout, watched).await;
        if let Some(t) = timed_fault {
            t.abort();
        }
        let result = match outcome {
            Ok(r) => r,
            Err(_) => {
                self.abort().await;
                Err(CriuError::Timeout {
                    req_type,
                    after: timeout,
                })
            }
        };
        match result {
            Ok(resp) => Ok(Exchange {
                resp,
                hooks,
                elapsed: started.elapsed(),
            }),
            Err(_) if broke_deadlock.load(Ordering::Relaxed) => {
                let _ = self.wait_exit(Duration::from_secs(2)).await;
                let _ = self.stderr_tail().await;
                Err(CriuError::Failed {
                    req_type,
                    errno: None,
                    errmsg: Some(
                        "the restore failed; criu killed the restored tasks and then waited \
                         for them forever, and was stopped (see its log for the failure)"
                            .into(),
                    ),
                    log: self.log.as_deref().and_then(LogExcerpt::read),
                })
            }
            Err(e) => Err(self.explain(e, req_type).await),
        }
    }

    async fn exchange(
        channel: &Channel,
        fault: Option<(&FaultPoint, u32)>,
        req: &CriuReq,
        handler: &mut dyn NotifyHandler,
        hooks: &mut Vec<HookTiming>,
        started: Instant,
        root: &AtomicI32,
    ) -> Result<CriuResp, CriuError> {
        let req_type = req.r#type();
        channel
            .send(req, &[])
            .await
            .map_err(|e| channel_err(e, req_type))?;
        loop {
            let packet = channel
                .recv::<CriuResp>()
                .await
                .map_err(|e| channel_err(e, req_type))?;
            let resp = packet.msg;
            if resp.r#type == CriuReqType::Notify as i32 {
                let notify = resp.notify.unwrap_or_default();
                let script = notify.script.unwrap_or_default();
                // The restored root (`setup-namespaces`, `post-restore`), for the deadlock watch.
                if let Some(pid) = notify.pid.filter(|&p| p > 0) {
                    root.store(pid, Ordering::Relaxed);
                }
                if let Some((f, pid)) = fault
                    && f.fires_at(&script)
                {
                    tracing::warn!(pid, %script, "fault injection: killing criu at a hook");
                    kill_pid(pid);
                }
                let n = Notification::from_wire(&script, notify.pid, packet.fds);
                let ack = handler.on_notify(n);
                tracing::debug!(%script, success = ack.success, "criu hook");
                hooks.push(HookTiming {
                    script,
                    at: started.elapsed(),
                    acked: ack.success,
                });
                let opts = (!ack.external.is_empty()).then(|| CriuOpts {
                    external: ack.external,
                    ..Default::default()
                });
                let reply = CriuReq {
                    r#type: CriuReqType::Notify as i32,
                    notify_success: Some(ack.success),
                    opts,
                    ..Default::default()
                };
                channel
                    .send(&reply, &[])
                    .await
                    .map_err(|e| channel_err(e, req_type))?;
                continue;
            }
            if resp.r#type != req_type as i32 {
                return Err(CriuError::UnexpectedReply {
                    expected: req_type,
                    got: resp.r#type,
                });
            }
            if !resp.success {
                return Err(CriuError::Failed {
                    req_type,
                    errno: resp.cr_errno,
                    errmsg: resp.cr_errmsg.clone().filter(|m| !m.is_empty()),
                    log: None,
                });
            }
            return Ok(resp);
        }
    }

    /// Adds what we know from outside the socket: the worker's exit status and stderr, and the
    /// tail of the CRIU log.
    async fn explain(&mut self, e: CriuError, req_type: CriuReqType) -> CriuError {
        match e {
            CriuError::Closed { .. } => {
                let status = self.wait_exit(Duration::from_secs(2)).await;
                let stderr = self.stderr_tail().await;
                CriuError::Closed {
                    req_type,
                    status,
                    stderr,
                    log: self.log.as_deref().and_then(LogExcerpt::read),
                }
            }
            CriuError::Failed {
                req_type,
                errno,
                errmsg,
                ..
            } => CriuError::Failed {
                req_type,
                errno,
                errmsg,
                log: self.log.as_deref().and_then(LogExcerpt::read),
            },
            other => other,
        }
    }

    /// Waits up to `within` for the worker to exit, kills what is left of its process group
    /// (helpers a killed CRIU forked: its kernel probes stop or sleep in children of their own;
    /// tasks of a restore it did not finish), then reaps it.
    async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let Self {
            child, exit_watch, ..
        } = self;
        let child = child.as_mut()?;
        let own_group = self.own_group;
        tokio::time::timeout(within, async {
            if let Some(w) = exit_watch.as_ref() {
                let _ = w.readable().await;
            }
            if own_group {
                kill_group(exit_watch.as_ref(), child.id());
            }
            child.wait().await
        })
        .await
        .ok()
        .and_then(Result::ok)
    }

    async fn stderr_tail(&mut self) -> String {
        match self.stderr.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => String::new(),
        }
    }

    /// Stops the request the gentle way first: the socket is shut down, so CRIU aborts at its
    /// next hook or reply, curing and resuming the tasks it holds; only a CRIU that has not
    /// exited after [`ABORT_GRACE`] is killed.
    ///
    /// Why never SIGKILL first: while CRIU works inside a task (from the first code it plants
    /// there until the task is cured and detached), the task runs CRIU's code under CRIU's
    /// ptrace, and that code ends in a breakpoint (`int3`) CRIU itself catches; the bytes it
    /// swapped into the task's text to run system calls there are put back only by CRIU. A
    /// CRIU killed in that window leaves the task detached with the breakpoint pending or
    /// still ahead of it, and the task dies of SIGTRAP (the kernel logs nothing when the trap
    /// was taken while still traced). Nothing outside CRIU can undo that, which is why the
    /// engine only ever lets CRIU abort by itself, and why CRIU runs with `oom_score_adj`
    /// -1000 (see `protect_from_oom_killer`). An external SIGKILL of CRIU (an operator, a
    /// fault-injection test) in that window remains a hazard inherent to CRIU.
    pub async fn abort(&mut self) {
        self.channel.shutdown();
        if self.wait_exit(ABORT_GRACE).await.is_none() {
            tracing::warn!(
                pid = self.worker_pid(),
                "criu did not stop within {ABORT_GRACE:?} of being told to; killing it"
            );
            self.kill().await;
        }
    }

    /// Kills the worker (if any) with its process group, and reaps it.
    pub async fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if self.own_group {
                kill_group(self.exit_watch.as_ref(), child.id());
            }
            let _ = child.kill().await;
        }
    }

    /// Waits for the worker to exit after its final reply (CRIU exits after one request).
    pub async fn finish(mut self) -> Option<ExitStatus> {
        let status = self.wait_exit(Duration::from_secs(10)).await;
        if status.is_none() {
            self.kill().await;
        }
        status
    }

    /// The binary this session runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }
}

impl Drop for Session {
    /// A session dropped with its worker still running (its request was cancelled): our end of
    /// the socket is shut down so CRIU aborts the request itself at its next hook or reply,
    /// curing and resuming the tasks it holds; it is not killed (see [`Session::abort`]). The
    /// dropped `Child` is reaped by tokio once it exits.
    fn drop(&mut self) {
        // A worker that has exited (a failed reply, a killed CRIU) may have left helpers in
        // its group: killed before `try_wait` below or tokio's orphan queue reaps it.
        if self.own_group
            && let Some(child) = self.child.as_ref()
            && self.exit_watch.as_ref().is_some_and(has_exited)
        {
            kill_group(self.exit_watch.as_ref(), child.id());
        }
        if let Some(child) = self.child.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            tracing::warn!(
                pid = child.id(),
                "criu request abandoned; closing its socket so that criu aborts by itself"
            );
            self.channel.shutdown();
        }
    }
}

/// The worker's `oom_score_adj`: the OOM killer never picks CRIU. Killed while its parasite is
/// inside a task, CRIU would take the task with it (see [`Session::abort`]); the memory it
/// holds is small next to the workload's.
pub const WORKER_OOM_SCORE_ADJ: &str = "-1000";

/// Sets [`WORKER_OOM_SCORE_ADJ`] for the calling process. Runs between fork and exec: raw
/// system calls only, errors ignored (lowering the score needs CAP_SYS_RESOURCE; without it
/// CRIU runs with the score it inherited).
fn protect_from_oom_killer() {
    // SAFETY: open/write/close on a NUL-terminated static path and a static buffer; the fd is
    // closed before returning and nothing else uses it.
    unsafe {
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            let v = WORKER_OOM_SCORE_ADJ.as_bytes();
            let _ = libc::write(fd, v.as_ptr().cast(), v.len());
            libc::close(fd);
        }
    }
}

/// Says once per process when CRIU could not be given [`WORKER_OOM_SCORE_ADJ`] (the engine
/// lacks CAP_SYS_RESOURCE), so an operator knows the OOM killer may pick it.
fn warn_once_if_oom_killable(pid: u32) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let Ok(score) = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")) else {
        return;
    };
    if score.trim() != WORKER_OOM_SCORE_ADJ && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            pid,
            score = score.trim(),
            "criu runs without oom_score_adj {WORKER_OOM_SCORE_ADJ} (cpengine lacks CAP_SYS_RESOURCE): \
             the OOM killer may pick it mid-dump, which kills the task its parasite is in"
        );
    }
}

/// How long CRIU gets to abort a request by itself (see [`Session::abort`]) before it is
/// killed. Aborting means curing every task of its parasite and resuming it, and CRIU notices
/// the closed socket only at its next hook, after the memory dump in progress.
pub const ABORT_GRACE: Duration = Duration::from_secs(30);

/// How long a reply CRIU sent just before it exited may still be read after its exit was seen.
const REPLY_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Runs the exchange, but stops waiting when the worker process exits. CRIU's socket alone
/// does not say so: tasks CRIU forked while restoring inherit the socket, so a CRIU killed
/// mid-restore leaves its peer end open in half-restored tasks, and a reader would wait for
/// the whole timeout while those tasks hang. A reply CRIU sent before it exited is still in the
/// socket and is read.
///
/// The worker is not reaped here (its exit is seen through its pidfd): until the session reaps
/// it, its pid and process group cannot be reused, so killing that group hits only what CRIU
/// left (see [`Session::wait_exit`]).
async fn until_worker_exits<F>(
    exchange: F,
    exit_watch: Option<&AsyncFd<OwnedFd>>,
    child: Option<&mut Child>,
    req_type: CriuReqType,
) -> Result<CriuResp, CriuError>
where
    F: std::future::Future<Output = Result<CriuResp, CriuError>>,
{
    let exited = async {
        match (exit_watch, child) {
            (Some(watch), _) => {
                let _ = watch.readable().await;
                Some(unreaped_exit_status(watch))
            }
            // No pidfd: watched by reaping it.
            (None, Some(child)) => Some(child.wait().await.ok()),
            (None, None) => None,
        }
    };
    tokio::pin!(exchange);
    tokio::select! {
        r = &mut exchange => r,
        Some(status) = exited => {
            match tokio::time::timeout(REPLY_AFTER_EXIT, &mut exchange).await {
                Ok(r) => r,
                Err(_) => Err(CriuError::Closed {
                    req_type,
                    status,
                    stderr: String::new(),
                    log: None,
                }),
            }
        }
    }
}

/// A pidfd of the unreaped child `pid`, registered to wake us when it exits.
fn watch_exit(pid: u32) -> std::io::Result<AsyncFd<OwnedFd>> {
    let fd = sys::pidfd_open(pid)?;
    // SAFETY: `fd` is a valid open pidfd whose number never changes, owned by the `AsyncFd`
    // for its whole life (nothing else can close it).
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(Into::into)
}

/// Whether the process behind `pidfd` has exited (it stays unreaped).
fn has_exited(pidfd: &AsyncFd<OwnedFd>) -> bool {
    use nix::sys::wait::WaitStatus;
    matches!(
        peek(pidfd),
        Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..))
    )
}

/// The child behind `pidfd` as its parent sees it, without reaping it: `StillAlive` while it
/// runs, `Exited`/`Signaled` once it is a zombie, `Err` (ECHILD) once anyone has reaped it.
fn peek(pidfd: &AsyncFd<OwnedFd>) -> nix::Result<nix::sys::wait::WaitStatus> {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    waitid(Id::PIDFd(pidfd.get_ref().as_fd()), flags)
}

/// How an exited, not yet reaped child ended (its zombie stays).
fn unreaped_exit_status(pidfd: &AsyncFd<OwnedFd>) -> Option<ExitStatus> {
    use nix::sys::wait::WaitStatus;
    use std::os::unix::process::ExitStatusExt;
    match peek(pidfd).ok()? {
        WaitStatus::Exited(_, code) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
        WaitStatus::Signaled(_, sig, core) => Some(ExitStatus::from_raw(
            sig as i32 | if core { 0x80 } else { 0 },
        )),
        _ => None,
    }
}

/// SIGKILLs the process group the worker behind `pidfd` leads, if the worker is still our
/// unreaped child (alive or a zombie): then no other group can have its id. Checked through the
/// pidfd itself, not the pid: another reaper in this process (the shim reaps stray zombies)
/// may have reaped the worker, and its pid may name someone else by now.
/// `leader` is the worker's pid as spawned (the pidfd's process).
fn kill_group(pidfd: Option<&AsyncFd<OwnedFd>>, leader: Option<u32>) {
    let (Some(fd), Some(pgid)) = (pidfd, leader.and_then(|p| i32::try_from(p).ok())) else {
        return;
    };
    if peek(fd).is_err() {
        return; // ECHILD: reaped already, by someone else
    }
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// How long CRIU must have been seen waiting for an exiting restored root before the wait is
/// taken for the deadlock [`break_failed_restore_deadlock`] breaks.
const DEADLOCK_AFTER: Duration = Duration::from_secs(1);

/// Watches a restore for CRIU's deadlock after a failure, and breaks it; never returns.
///
/// When a restore fails once every task exists (e.g. CRIU's restorer cannot set credentials the
/// images ask for: "Unable to restore capabilities"), CRIU SIGKILLs the restored root — the
/// init of the restored pid namespace — and waits for it (`wait4`). That root is not CRIU's
/// child but ours (`rst_sibling`), and CRIU is still the ptrace tracer of every restored task.
/// The dying init waits, as any pid namespace's init does, until every task of its namespace
/// has been reaped; but its children are zombies a tracer holds: only CRIU can reap them, and
/// CRIU waits for the init. Nothing moves until CRIU dies (its tracees are released then), so
/// a failed restore would wait for the whole request timeout.
///
/// CRIU kills the root only when the restore has failed (a successful restore detaches and
/// replies without waiting for anything), so a root that is exiting while CRIU sleeps in
/// `wait4` for [`DEADLOCK_AFTER`] means exactly that: CRIU is SIGKILLed (it holds no parasite
/// in a task that is to live: the tasks are being killed), its tracees are released, the init
/// finishes exiting, and the request fails with CRIU's log.
async fn break_failed_restore_deadlock(worker: Option<u32>, root: &AtomicI32, fired: &AtomicBool) {
    let Some(worker) = worker else {
        return std::future::pending().await;
    };
    let mut since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = root.load(Ordering::Relaxed);
        let stuck = r > 0 && is_exiting(r) && waits_for_a_child(worker);
        if !stuck {
            since = None;
            continue;
        }
        let at = *since.get_or_insert_with(Instant::now);
        if at.elapsed() >= DEADLOCK_AFTER {
            tracing::warn!(
                criu = worker,
                root = r,
                "the restore failed and criu waits forever for the restored root it killed; stopping criu"
            );
            fired.store(true, Ordering::Relaxed);
            kill_pid(worker);
            return std::future::pending().await;
        }
    }
}

/// Whether `pid` has begun to exit (`PF_EXITING` in the flags of `/proc/<pid>/stat`).
fn is_exiting(pid: i32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Field 9 (flags) is the 7th after the command name's closing parenthesis.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6))
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|f| f & PF_EXITING != 0)
}

/// Whether `pid` sleeps in `wait4`/`waitid`: its wait channel is `do_wait`, or (where the
/// kernel hides wait channels) the system call it is blocked in is one of those.
fn waits_for_a_child(pid: u32) -> bool {
    if std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.trim() == "do_wait") {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/syscall")).is_ok_and(|s| {
        s.split_whitespace()
            .next()
            .and_then(|n| n.parse::<libc::c_long>().ok())
            .is_some_and(|n| n == libc::SYS_wait4 || n == libc::SYS_waitid)
    })
}

fn kill_pid(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn channel_err(e: ChannelError, req_type: CriuReqType) -> CriuError {
    match e {
        ChannelError::Closed => CriuError::Closed {
            req_type,
            status: None,
            stderr: String::new(),
            log: None,
        },
        ChannelError::Io(source) => CriuError::Socket { req_type, source },
        ChannelError::Empty => CriuError::BadReply {
            req_type,
            reason: "empty packet".into(),
        },
        ChannelError::TooLarge(n) => CriuError::BadReply {
            req_type,
            reason: format!("{n}-byte packet over the limit"),
        },
        ChannelError::Decode(e) => CriuError::BadReply {
            req_type,
            reason: format!("undecodable packet: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_task_is_not_exiting_and_a_waiting_shell_waits() {
        assert!(!is_exiting(std::process::id() as i32));
        assert!(!waits_for_a_child(std::process::id()));
        // bash waits for a foreground command in wait4 (dash's `wait` sleeps in sigsuspend).
        let mut sh = std::process::Command::new("bash")
            .args(["-c", "sleep 30; :"])
            .spawn()
            .unwrap();
        let pid = sh.id();
        let mut seen = false;
        for _ in 0..500 {
            if waits_for_a_child(pid) {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = sh.kill();
        let _ = sh.wait();
        assert!(seen, "sh waiting for its child was not seen in wait4");
    }

    /// Whether `pid` still runs (not gone, not a zombie).
    fn runs(pid: i32) -> bool {
        crate::host::proc::task_state(pid).is_some_and(|s| s.state != 'Z')
    }

    /// A worker SIGKILLed from outside while a process it forked still holds the socket: the
    /// request ends when the worker exits (not at the timeout), and the forked process dies
    /// with it when the worker led its own process group; it outlives it otherwise (the
    /// shell-job case), which shows that the group kill is what ends it.
    #[tokio::test]
    async fn a_killed_workers_group_is_killed_before_it_is_reaped() {
        use criu_proto::rpc::CriuReqType;
        let dir = tempfile::tempdir().unwrap();
        for share in [false, true] {
            let pidfile = dir.path().join(format!("helper-{share}"));
            let script = dir.path().join(format!("worker-{share}"));
            // Stands for a CRIU whose probe forked a child that keeps the socket (fd 3).
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\nsleep 300 &\necho $! > {}.tmp && mv {0}.tmp {0}\nexec sleep 300\n",
                    pidfile.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            let mut session = Session::spawn(
                &script,
                SpawnSpec {
                    share_process_group: share,
                    ..Default::default()
                },
            )
            .unwrap();
            let worker = session.worker_pid().unwrap();
            let mut helper = None;
            for _ in 0..1000 {
                if let Ok(p) = std::fs::read_to_string(&pidfile) {
                    helper = p.trim().parse::<i32>().ok();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let helper = helper.expect("the worker's helper started");
            kill_pid(worker);
            let req = CriuReq {
                r#type: CriuReqType::Dump as i32,
                ..Default::default()
            };
            let r = session
                .request(
                    req,
                    &mut crate::criu::notify::AckAll,
                    Duration::from_secs(120),
                )
                .await;
            let Err(CriuError::Closed { status, .. }) = &r else {
                panic!("share={share}: {r:?}");
            };
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.and_then(|s| s.signal()),
                Some(libc::SIGKILL),
                "{r:?}"
            );
            // Let `explain` reap the worker (it kills the group first).
            drop(session);
            // Killed: gone within seconds on a busy host; kept: still there after a second.
            let mut gone = false;
            for _ in 0..if share { 100 } else { 1000 } {
                if !runs(helper) {
                    gone = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if share {
                assert!(!gone, "a helper in our own group was killed");
                kill_pid(helper as u32);
            } else {
                assert!(gone, "the helper of a killed worker outlived it");
            }
        }
    }
}
