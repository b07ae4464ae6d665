//! Fork tests run one at a time (libtest-mimic, `test_threads = 1`), so each can assert that
//! the whole test process is clean afterwards: no child process (zombies included), no
//! descendant, descriptors and threads back to their baseline.
//!
//! The scenarios live in `tests/common/mod.rs`; `tests/api.rs` runs a selection of them in
//! ordinary multi-threaded `#[test]`s.

mod common;

use libtest_mimic::{Arguments, Trial};

fn main() {
    let mut args = Arguments::from_args();
    // Tests here count every child of the process: they must not overlap.
    args.test_threads = Some(1);
    common::set_no_core_dumps();

    let mut trials: Vec<Trial> = common::scenario_trials("");

    trials.push(Trial::test("drop_100_pipelines_mid_stream", || {
        let base = common::Baseline::now();
        common::with_deadline(60, || common::drop_midstream_x100(true));
        base.assert_clean("drop_100_pipelines_mid_stream", true);
        Ok(())
    }));

    trials.push(Trial::test("helpers_see_children_and_zombies", || {
        helpers_see_children_and_zombies();
        Ok(())
    }));

    libtest_mimic::run(&args, trials).exit();
}

/// The cleanliness checks are only worth something if they can fail: a child we fork (and
/// a zombie we leave) must be seen.
fn helpers_see_children_and_zombies() {
    let base = common::Baseline::now();
    // SAFETY: the child only calls `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: async-signal-safe exit of the forked child.
        unsafe { libc::_exit(0) };
    }
    // Wait (without reaping) until it is a zombie.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let kids = common::children_of_me();
        if kids.contains(&(pid as u32, 'Z')) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saw the zombie child: {kids:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        common::descendants_of_me()
            .iter()
            .any(|&(p, _, s)| p == pid as u32 && s == 'Z')
    );
    let problems = base.problems(true);
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&format!("({pid}, 'Z')"))),
        "the clean check must report the zombie child: {problems:?}"
    );
    let mut status = 0;
    // SAFETY: reaping our own child by pid.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    base.assert_clean("after reaping", true);
}
