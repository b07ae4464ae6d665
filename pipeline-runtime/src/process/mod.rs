//! What runs in forked processes: the supervisor and the workers it forks.

pub(crate) mod fork_server;
pub(crate) mod protocol;
pub(crate) mod supervisor;
pub(crate) mod worker;
