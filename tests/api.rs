//! A selection of the fork scenarios in ordinary multi-threaded `#[test]`s: that is how users
//! call forkpipe, and a multi-threaded harness is exactly the fork-safety situation they have
//! (other threads hold locks, allocate and print while a pipeline forks).
//!
//! Other tests fork at the same time, so most tests here check that *their own* processes
//! (workers and supervisors, as reported by the stages) are gone when they end. The tests
//! that count every child of the process take the fork lock exclusively.

mod common;

use common::{assert_gone, exclusive_fork_lock, shared_fork_lock, with_deadline};

/// Runs a scenario under the shared fork lock and a deadline; then its processes must be gone.
fn run(secs: u64, scenario: fn() -> Vec<u32>) {
    let _lock = shared_fork_lock();
    let pids = with_deadline(secs, scenario);
    assert_gone(&pids);
}

#[test]
fn atbu_basic_three_stage_work_item() {
    run(30, common::atbu_basic);
}

#[test]
fn atbu_mixed_twenty_stages() {
    run(30, common::atbu_mixed);
}

#[test]
fn hundred_subprocess_stages() {
    run(60, common::hundred_stages);
}

#[test]
fn mpipe_ordered_and_unordered_three_workers() {
    run(30, common::mpipe_ordered_unordered);
}

#[test]
fn filter_and_emit_in_process_and_thread_stages() {
    run(30, common::filter_and_emit);
}

#[test]
fn parallelpipe_range_add_n() {
    run(30, common::parallelpipe_add_n);
}

#[test]
fn item_error_fails_that_item_only() {
    run(30, common::item_errors);
}

#[test]
fn eight_threads_submit_to_one_running() {
    run(60, common::many_submitters);
}

#[test]
fn source_pipelines_with_results() {
    run(30, common::sources);
}

#[test]
fn drop_running_with_waiting_tickets() {
    run(30, common::drop_running_with_waiters);
}

#[test]
fn every_item_has_exactly_one_outcome() {
    run(60, common::exactly_one_outcome);
}

#[test]
fn stats_add_up() {
    run(30, common::stats_add_up);
}

#[test]
fn exec_children_inherit_no_sockets() {
    run(30, common::exec_sees_no_sockets);
}

#[test]
fn workers_hold_only_their_own_sockets() {
    run(30, common::worker_socket_hygiene);
}

#[test]
fn started_on_a_thread_that_exits() {
    run(30, common::started_on_a_thread_that_exits);
}

/// Counts every child of the process, so no other pipeline may run meanwhile. The thread
/// count is not compared here: libtest starts a thread for each test it begins, and those
/// block on the fork lock while this test runs (`tests/fork.rs` checks threads exactly).
#[test]
fn drop_100_pipelines_mid_stream() {
    let _lock = exclusive_fork_lock();
    let base = common::Baseline::now();
    with_deadline(60, || common::drop_midstream_x100(false));
    base.assert_clean("drop_100_pipelines_mid_stream", false);
}

/// Many pipelines at once from many threads (E6 in small): every result correct, then
/// every process of this test gone.
#[test]
fn pipelines_started_from_many_threads_at_once() {
    let _lock = shared_fork_lock();
    let pids = with_deadline(60, || {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        let mut pids = common::parallelpipe_add_n();
                        pids.extend(common::atbu_basic());
                        pids
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect::<Vec<u32>>()
        })
    });
    assert_gone(&pids);
}
