//! Fault tests (stub: filled in by the work on issue 5).

use libtest_mimic::Trial;

pub fn trials(_t: &mut Vec<Trial>) {}

/// Victim scenarios of this file (see `support::Victim`); returns without exiting only
/// for a scenario that is not this file's.
pub fn victim(_scenario: &str) {}
