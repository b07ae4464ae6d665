//! The operating-system boundary: syscalls and the runtime's own descriptors.

pub(crate) mod current;
pub(crate) mod fds;
pub(crate) mod image;
pub(crate) mod rights;
pub(crate) mod sys;
