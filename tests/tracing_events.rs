//! The `tracing` events of a pipeline (issue 12): a span per pipeline and per stage, the
//! start (its shape and worker pids), a worker's death and replacement (stage, pid,
//! cause, inside the stage's span), and the end with the stats table. A subscriber is
//! installed for the whole process (events come from the pipeline's own threads), so this
//! target runs one case, without the libtest harness.

#[path = "common/log.rs"]
mod log;

use forkpipe::Worker;
use forkpipe::prelude::*;
use log::Log;

#[stage(subprocess)]
fn crash_on_7(x: u64) -> u64 {
    if x == 7 {
        std::process::abort();
    }
    x
}

#[stage]
fn inc(x: u64) -> u64 {
    x + 1
}

fn main() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();

    let results: Vec<Result<u64, Error>> = pipeline![crash_on_7 | inc]
        .run(0..20u64)
        .expect("start")
        .collect();
    let died = results[7].as_ref().expect_err("item 7 crashed its worker");
    let Some(Worker::Process(dead_pid)) = died.worker() else {
        panic!("a process worker died: {died}");
    };
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);

    let text = log.text();
    let line = |what: &str| -> &str {
        text.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no event {what:?} in:\n{text}"))
    };
    let started = line("forkpipe: pipeline started");
    assert!(started.contains(" INFO "), "{started}");
    assert!(started.contains("shape=crash_on_7 | inc"), "{started}");
    assert!(started.contains("crash_on_7: pids "), "{started}");
    assert!(started.contains("inc: 1 thread(s)"), "{started}");
    assert!(
        started.contains("pipeline{id="),
        "in the pipeline's span: {started}"
    );

    let death = line("forkpipe: worker died; replaced");
    assert!(death.contains(" WARN "), "{death}");
    assert!(death.contains("stage=crash_on_7"), "{death}");
    assert!(death.contains(&format!("pid={dead_pid}")), "{death}");
    assert!(death.contains("killed by SIGABRT"), "{death}");
    assert!(
        death.contains("stage{index=0 name=crash_on_7}"),
        "in the stage's span: {death}"
    );

    let table_at = text.find("forkpipe: pipeline finished").unwrap();
    let table = &text[table_at..];
    assert!(
        table.contains("crash_on_7") && table.contains("restarts"),
        "{table}"
    );
    assert!(table.contains("graceful=true"), "{table}");
    println!("{table}");
    assert_eq!(
        text.matches("forkpipe: pipeline finished").count(),
        1,
        "one end event:\n{text}"
    );
    println!("tracing events: ok");
}
