//! What runs in forked processes: the supervisor and the workers it forks.

pub(crate) mod budget;
mod death;
pub(crate) mod fork_server;
pub(crate) mod protocol;
pub(crate) mod runs;
mod spawn;
pub(crate) mod state;
pub(crate) mod supervisor;
mod timeout;
pub(crate) mod worker;
