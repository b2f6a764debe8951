//! CRIU's action-script hooks, delivered over RPC as NOTIFY messages.
//!
//! With `notify_scripts` set, CRIU stops at each hook, sends `criu_resp{type=NOTIFY,
//! notify{script, pid}}` and waits for `criu_req{type=NOTIFY, notify_success}`. A negative
//! ack makes the hook fail; what that does depends on the hook (a failed `pre-dump` aborts the
//! dump with the tasks untouched, a failed `post-restore` kills the restored tree, failures of
//! `pre-resume`/`post-resume` are only logged).

use std::os::fd::OwnedFd;

/// One hook, with what CRIU passes along with it.
#[derive(Debug)]
pub enum Notification {
    /// Dump starts; nothing is seized yet.
    PreDump,
    /// Dump of a tree with its own network namespace: lock the network now.
    NetworkLock,
    /// Unlock the network (failed dump, leave-running dump, or restore with a new netns).
    NetworkUnlock,
    /// The tree is frozen; the ack may name more external resources (`opts.external`).
    QueryExtFiles,
    /// Images are written; the tree is still frozen (it is resumed or killed after the ack).
    PostDump,
    /// Restore starts.
    PreRestore,
    /// The root task exists with its namespaces; `pid` is its host pid.
    SetupNamespaces { pid: i32 },
    /// Namespaces are configured.
    PostSetupNamespaces,
    /// A new pty master for an external or orphaned slave; the fd came with the message.
    OrphanPtsMaster { master: Option<OwnedFd> },
    /// Everything is restored and still stopped; `pid` is the restored root's host pid.
    PostRestore { pid: i32 },
    /// Tasks are about to run.
    PreResume,
    /// Tasks run; the final reply follows.
    PostResume,
    /// A page server or lazy-pages daemon is listening.
    StatusReady,
    /// Before connecting to an image streamer (CLI mode only; listed for completeness).
    PreStream,
    /// A hook this version of cpengine does not know.
    Other { script: String, pid: Option<i32> },
}

impl Notification {
    /// Builds the notification from the wire message and any fds that came with it.
    pub fn from_wire(script: &str, pid: Option<i32>, mut fds: Vec<OwnedFd>) -> Self {
        match script {
            "pre-dump" => Self::PreDump,
            "network-lock" => Self::NetworkLock,
            "network-unlock" => Self::NetworkUnlock,
            "query-ext-files" => Self::QueryExtFiles,
            "post-dump" => Self::PostDump,
            "pre-restore" => Self::PreRestore,
            "setup-namespaces" => Self::SetupNamespaces {
                pid: pid.unwrap_or(-1),
            },
            "post-setup-namespaces" => Self::PostSetupNamespaces,
            "orphan-pts-master" => Self::OrphanPtsMaster { master: fds.pop() },
            "post-restore" => Self::PostRestore {
                pid: pid.unwrap_or(-1),
            },
            "pre-resume" => Self::PreResume,
            "post-resume" => Self::PostResume,
            "status-ready" => Self::StatusReady,
            "pre-stream" => Self::PreStream,
            other => Self::Other {
                script: other.to_string(),
                pid,
            },
        }
    }

    /// The hook's script name as CRIU spells it.
    pub fn script(&self) -> &str {
        match self {
            Self::PreDump => "pre-dump",
            Self::NetworkLock => "network-lock",
            Self::NetworkUnlock => "network-unlock",
            Self::QueryExtFiles => "query-ext-files",
            Self::PostDump => "post-dump",
            Self::PreRestore => "pre-restore",
            Self::SetupNamespaces { .. } => "setup-namespaces",
            Self::PostSetupNamespaces => "post-setup-namespaces",
            Self::OrphanPtsMaster { .. } => "orphan-pts-master",
            Self::PostRestore { .. } => "post-restore",
            Self::PreResume => "pre-resume",
            Self::PostResume => "post-resume",
            Self::StatusReady => "status-ready",
            Self::PreStream => "pre-stream",
            Self::Other { script, .. } => script,
        }
    }
}

/// The answer to one hook.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ack {
    /// `false` makes the hook fail.
    pub success: bool,
    /// External resources to declare (honoured by CRIU on `query-ext-files`).
    pub external: Vec<String>,
}

impl Ack {
    /// A positive ack.
    pub fn ok() -> Self {
        Self {
            success: true,
            external: Vec::new(),
        }
    }

    /// A negative ack: the hook fails.
    pub fn fail() -> Self {
        Self {
            success: false,
            external: Vec::new(),
        }
    }
}

/// Answers CRIU's hooks during one request. The default acknowledges everything.
pub trait NotifyHandler: Send {
    /// Called once before the request is sent, with the CRIU worker's pid (e.g. to record it
    /// in a journal, so that a later recovery can stop a worker whose caller died).
    fn on_worker(&mut self, pid: u32) {
        let _ = pid;
    }

    /// Called for each hook in the order CRIU reaches them.
    fn on_notify(&mut self, notification: Notification) -> Ack {
        let _ = notification;
        Ack::ok()
    }
}

/// Acknowledges every hook and keeps nothing.
#[derive(Debug, Default)]
pub struct AckAll;

impl NotifyHandler for AckAll {}

impl<F> NotifyHandler for F
where
    F: FnMut(Notification) -> Ack + Send,
{
    fn on_notify(&mut self, notification: Notification) -> Ack {
        self(notification)
    }
}
