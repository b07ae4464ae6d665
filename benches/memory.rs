//! Memory (DESIGN §5; a measurement, not a timed test): 10,000,000 `u64` through
//! `inc | inc | slow`, where `slow` also spins ~0.2 µs per item (`bare::spin`, calibrated at
//! start), so that the stages before it run ahead and only backpressure bounds what waits.
//! Run once with process stages (direct mode) and once with thread stages.
//!
//! At the 1,000,000th output and at the end, prints the peak RSS (`VmHWM` in
//! `/proc/PID/status`) of the caller and of every process under it, found through `/proc`
//! (the supervisor is the caller's child, the workers are its children). Each kind runs in
//! a fresh child process (`bare::in_child`), so that one's peak does not hide the other's.
//! Bounded queues mean the figures at 1M and at 10M agree within noise. Nothing is
//! asserted; with `-- --test` a small count just runs.
//!
//! `cargo bench --bench memory` (add `-- --test` for a quick smoke run).

mod bare;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use forkpipe::{Pipeline, Stage};

/// Extra spin steps per item of the last stage: set before the pipeline starts.
static SLOW: AtomicU64 = AtomicU64::new(0);

/// `VmHWM` of `pid`, in KiB (`None` once it is gone).
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The parent of `pid`, from `/proc/PID/stat` (the field after the state, which follows
/// the parenthesised command name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// This process and all its descendants, as pid → depth (0 for this process).
fn tree() -> BTreeMap<u32, usize> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(ppid) = parent_of(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = BTreeMap::new();
    let mut todo = vec![(std::process::id(), 0)];
    while let Some((pid, depth)) = todo.pop() {
        out.insert(pid, depth);
        for &c in children.get(&pid).into_iter().flatten() {
            todo.push((c, depth + 1));
        }
    }
    out
}

/// pid → (depth, VmHWM KiB) of this process tree now.
type Snapshot = BTreeMap<u32, (usize, u64)>;

fn snapshot() -> Snapshot {
    tree()
        .into_iter()
        .filter_map(|(pid, depth)| Some((pid, (depth, vm_hwm_kib(pid)?))))
        .collect()
}

/// Runs `p` over `items`: a tree snapshot at the `mark`th output, then the last `VmHWM`
/// read of each of those processes while it lives (a thread re-reads them every 10 ms, and
/// once more at the last output): workers end with their input, before the caller has
/// the last output, so their final peak is their last reading.
fn measure(p: Pipeline<u64, u64>, items: u64, mark: u64) -> (Snapshot, Snapshot, Duration) {
    let t = Instant::now();
    let at_mark = Arc::new(Mutex::new(Snapshot::new()));
    let latest = Arc::new(Mutex::new(Snapshot::new()));
    let done = Arc::new(AtomicBool::new(false));
    let read_all = |mark: &Mutex<Snapshot>, latest: &Mutex<Snapshot>| {
        let pids: Vec<(u32, usize)> = mark
            .lock()
            .unwrap()
            .iter()
            .map(|(&p, v)| (p, v.0))
            .collect();
        for (pid, depth) in pids {
            if let Some(k) = vm_hwm_kib(pid) {
                latest.lock().unwrap().insert(pid, (depth, k));
            }
        }
    };
    let sampler = {
        let (at_mark, latest, done) = (at_mark.clone(), latest.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                read_all(&at_mark, &latest);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut got = 0u64;
    for r in p.run(0..items).expect("start") {
        assert_eq!(r.expect("item"), got + 3);
        got += 1;
        if got == mark {
            *at_mark.lock().unwrap() = snapshot();
        }
        if got == items {
            read_all(&at_mark, &latest);
        }
    }
    done.store(true, Ordering::Release);
    sampler.join().expect("sampler");
    assert_eq!(got, items);
    let (a, b) = (
        at_mark.lock().unwrap().clone(),
        latest.lock().unwrap().clone(),
    );
    (a, b, t.elapsed())
}

fn print(what: &str, items: u64, mark: u64, (a, b, dt): (Snapshot, Snapshot, Duration)) {
    println!(
        "  {what}: {:.2} s ({:.2} M items/s)",
        dt.as_secs_f64(),
        items as f64 / dt.as_secs_f64() / 1e6
    );
    println!(
        "    {:<12} {:>8} {:>14} {:>14} {:>10}",
        "process",
        "pid",
        format!("VmHWM @{}", mark),
        format!("@{} (a)", items),
        "change"
    );
    let pids: std::collections::BTreeSet<u32> = a.keys().chain(b.keys()).copied().collect();
    for pid in pids {
        let depth = a.get(&pid).or(b.get(&pid)).map_or(0, |d| d.0);
        let role = ["caller", "supervisor"].get(depth).unwrap_or(&"worker");
        let kib = |s: &Snapshot| s.get(&pid).map(|v| v.1);
        let show = |k: Option<u64>| k.map_or("-".into(), |k| format!("{k} KiB"));
        let change = match (kib(&a), kib(&b)) {
            (Some(x), Some(y)) => format!("{:+} KiB", y as i64 - x as i64),
            _ => "-".into(),
        };
        println!(
            "    {role:<12} {pid:>8} {:>14} {:>14} {change:>10}",
            show(kib(&a)),
            show(kib(&b))
        );
    }
}

fn pipeline(process: bool) -> Pipeline<u64, u64> {
    let inc = || Stage::map("inc", |x: u64| x + 1);
    let slow = Stage::map("slow", |x: u64| {
        std::hint::black_box(bare::spin(x, SLOW.load(Ordering::Relaxed)));
        x + 1
    });
    if process {
        Pipeline::new(inc().subprocess())
            .then(inc().subprocess())
            .then(slow.subprocess())
    } else {
        Pipeline::new(inc()).then(inc()).then(slow)
    }
}

fn main() {
    let items = if bare::test_mode() {
        100_000
    } else {
        10_000_000
    };
    let mark = items / 10;
    if let Some(mode) = bare::child_mode() {
        let slow = bare::calibrate(Duration::from_nanos(200));
        SLOW.store(slow, Ordering::Relaxed);
        let process = mode == "process";
        let what = format!("{mode} stages (slow: +{slow} spin steps)");
        print(&what, items, mark, measure(pipeline(process), items, mark));
        return;
    }
    println!(
        "memory: {items} u64 through inc | inc | slow (slow spins ~0.2 µs more per item), \
         peak RSS at output {mark} and at the end, each kind in a fresh child process"
    );
    for mode in ["process", "thread"] {
        print!("{}", bare::in_child(mode));
    }
    println!(
        "  (a) for the caller: at the last output; for the others: their last reading \
         while alive (read every 10 ms; they end with their input)"
    );
}
