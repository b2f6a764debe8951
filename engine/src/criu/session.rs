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
use std::time::{Duration, Instant};

use criu_proto::rpc::{CriuOpts, CriuReq, CriuReqType, CriuResp};
use tokio::io::AsyncReadExt;
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

        let mut cmd = Command::new(binary);
        cmd.arg("swrk")
            .arg(SOCKET_FD.to_string())
            .kill_on_drop(true);
        let [stdin, stdout, stderr] = spec.stdio;
        cmd.stdin(stdin.map_or_else(Stdio::null, Stdio::from));
        cmd.stdout(stdout.map_or_else(Stdio::null, Stdio::from));
        let capture = stderr.is_none();
        cmd.stderr(stderr.map_or_else(Stdio::piped, Stdio::from));
        // SAFETY: the closure runs between fork and exec; it only calls dup2 on fds that are
        // open in the child (the staged copies) and reads a Vec allocated before the fork. It
        // neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(move || {
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
        Ok(Self {
            channel,
            child: Some(child),
            stderr,
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
    /// The whole exchange is bounded by `timeout`; on expiry the worker is killed.
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
        let exchange = Self::exchange(
            &self.channel,
            self.fault.as_ref(),
            worker,
            &req,
            handler,
            &mut hooks,
            started,
        );
        let outcome = tokio::time::timeout(
            timeout,
            until_worker_exits(exchange, self.child.as_mut(), req_type),
        )
        .await;
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
            Err(e) => Err(self.explain(e, req_type).await),
        }
    }

    async fn exchange(
        channel: &Channel,
        fault: Option<&FaultPoint>,
        worker: Option<u32>,
        req: &CriuReq,
        handler: &mut dyn NotifyHandler,
        hooks: &mut Vec<HookTiming>,
        started: Instant,
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
                if fault.is_some_and(|f| f.fires_at(&script))
                    && let Some(pid) = worker
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

    async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        tokio::time::timeout(within, child.wait())
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
    /// exited after `ABORT_GRACE` is killed. A SIGKILL while CRIU's parasite code is inside a
    /// task (the breakpoint it plants in the task's code is then executed without a tracer,
    /// and the task dies of SIGTRAP) can kill the workload, so the engine never sends one
    /// first.
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

    /// Kills the worker (if any) and reaps it.
    pub async fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
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
async fn until_worker_exits<F>(
    exchange: F,
    child: Option<&mut Child>,
    req_type: CriuReqType,
) -> Result<CriuResp, CriuError>
where
    F: std::future::Future<Output = Result<CriuResp, CriuError>>,
{
    let Some(child) = child else {
        return exchange.await;
    };
    tokio::pin!(exchange);
    tokio::select! {
        r = &mut exchange => r,
        status = child.wait() => {
            match tokio::time::timeout(REPLY_AFTER_EXIT, &mut exchange).await {
                Ok(r) => r,
                Err(_) => Err(CriuError::Closed {
                    req_type,
                    status: status.ok(),
                    stderr: String::new(),
                    log: None,
                }),
            }
        }
    }
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
