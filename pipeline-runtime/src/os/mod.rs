//! The operating-system boundary: syscalls and the runtime's own descriptors.

pub(crate) mod current;
pub(crate) mod fds;
pub(crate) mod sys;
