//! `ValueEnum` wrappers for the engine's closed sets: the library knows nothing of clap, the
//! command line names each value once here.

use cpengine::archive;
use cpengine::options;
use cpengine::policy;

/// Compression of the whole archive stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// A plain tar: what the kubelet, CRI-O and containerd expect.
    #[default]
    None,
    Gzip,
    /// Multi-threaded zstd (Podman's default).
    Zstd,
}

impl From<Compression> for archive::Compression {
    fn from(c: Compression) -> Self {
        match c {
            Compression::None => Self::None,
            Compression::Gzip => Self::Gzip,
            Compression::Zstd => Self::Zstd,
        }
    }
}

/// How CRIU locks the container's network during the dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkLock {
    Iptables,
    Nftables,
    Skip,
}

impl From<NetworkLock> for options::NetworkLock {
    fn from(n: NetworkLock) -> Self {
        match n {
            NetworkLock::Iptables => Self::Iptables,
            NetworkLock::Nftables => Self::Nftables,
            NetworkLock::Skip => Self::Skip,
        }
    }
}

/// Whether every restored thread must run under a seccomp filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Seccomp {
    /// No requirement (the checkpoint's own filters, if any, are restored as they are).
    #[default]
    Optional,
    /// Every thread must be in seccomp filter (or strict) mode, with its filter in the images.
    Required,
}

impl From<Seccomp> for policy::SeccompRequirement {
    fn from(s: Seccomp) -> Self {
        match s {
            Seccomp::Optional => Self::Optional,
            Seccomp::Required => Self::Required,
        }
    }
}

/// A host namespace a restore may keep its tasks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HostNamespace {
    Net,
    Ipc,
    Uts,
    Pid,
}

impl From<HostNamespace> for policy::Namespace {
    fn from(n: HostNamespace) -> Self {
        match n {
            HostNamespace::Net => Self::Net,
            HostNamespace::Ipc => Self::Ipc,
            HostNamespace::Uts => Self::Uts,
            HostNamespace::Pid => Self::Pid,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    #[test]
    fn names_match_the_engine() {
        for v in super::Compression::value_variants() {
            let name = v.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(cpengine::archive::Compression::from(*v).as_str(), name);
        }
        for v in super::NetworkLock::value_variants() {
            let name = v.to_possible_value().unwrap().get_name().to_owned();
            let engine = serde_json::to_value(cpengine::options::NetworkLock::from(*v)).unwrap();
            assert_eq!(engine, serde_json::Value::String(name));
        }
    }
}
