//! The bottom layer: this host's kernel interfaces, returning `io::Result` and naming no
//! container, checkpoint or archive. Syscall wrappers ([`sys`]), processes ([`proc`]),
//! cgroups ([`cgroups`]), durable writes ([`fs`]), the mount table ([`mountinfo`]), network locking ([`netlock`]),
//! privilege dropping ([`privilege`]) and `openat2(RESOLVE_BENEATH)` (`beneath`). Nothing
//! here imports from the layers above (checked by `scripts/layers.sh`).

pub(crate) mod beneath;
pub mod cgroups;
pub mod fs;
pub mod mountinfo;
pub mod netlock;
pub mod privilege;
pub mod proc;
pub mod sys;
