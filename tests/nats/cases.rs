//! The cases (see `main.rs`).

use std::time::{Duration, Instant};

use forkpipe::Broker;
use forkpipe::prelude::*;
use libtest_mimic::{Arguments, Trial};

use crate::support::{self, Host, Server, hosts, with_deadline};

#[stage(source)]
fn numbers(n: u64) -> impl Iterator<Item = u64> {
    0..n
}

#[stage]
fn plus_one(x: u64) -> u64 {
    x + 1
}

#[stage(subprocess, distributed, workers = 2)]
fn square(x: u64) -> u64 {
    x * x
}

#[stage(subprocess, distributed, workers = 2)]
fn times(x: u64, k: u64) -> u64 {
    x * k
}

/// Sleeps `ms`, then says which host ran the item.
#[stage(subprocess, distributed, workers = 2)]
fn on_host(x: u64, ms: u64) -> (u64, String) {
    std::thread::sleep(Duration::from_millis(ms));
    let host = std::env::var("FORKPIPE_HOST_NAME").unwrap_or_else(|_| "caller".into());
    (x, host)
}

/// Notes in `dir/marks` that this host started the item (one line, one `O_APPEND`
/// write), sleeps `ms`, then says which host ran it.
#[stage(subprocess, distributed, workers = 2)]
fn marked(x: u64, ms: u64, dir: String) -> (u64, String) {
    use std::io::Write;
    let host = std::env::var("FORKPIPE_HOST_NAME").unwrap_or_else(|_| "caller".into());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(format!("{dir}/marks"))
        .expect("the marks file");
    f.write_all(format!("{x} {host}\n").as_bytes())
        .expect("a mark");
    std::thread::sleep(Duration::from_millis(ms));
    (x, host)
}

/// An item of `kib` KiB that comes back as it went, after `us` µs.
#[stage(subprocess, distributed, workers = 2)]
fn slow_echo(v: Vec<u8>, us: u64) -> Vec<u8> {
    std::thread::sleep(Duration::from_micros(us));
    v
}

#[stage(source)]
fn blobs(n: u64, kib: usize) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(move |i| vec![i as u8; kib << 10])
}

#[stage(subprocess, distributed, workers = 2)]
fn segv_at(x: u64, bad: u64) -> u64 {
    if x == bad {
        // SAFETY: a real invalid write in this worker process is what the test is about.
        unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
    }
    x
}

#[stage(subprocess, distributed)]
fn byte_len(v: Vec<u8>) -> usize {
    v.len()
}

pub fn main() {
    // (Before init: hosts inherit it, and a crashing worker writes no core.)
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall with a valid pointer to a local struct.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    // A host (FORKPIPE_HOST set) serves stages from here on and never returns.
    forkpipe::init().expect("forkpipe::init");
    if !support::have_nats_server() {
        println!(
            "nats tests skipped: `nats-server` is not on PATH (install it: `apt-get install nats-server` on Debian, or see https://nats.io)"
        );
        return;
    }
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let tests: Vec<(&str, fn())> = vec![
        ("ordered_100k_through_a_remote_middle_stage", ordered_100k),
        ("same_pipeline_runs_locally_without_on", local_without_on),
        (
            "consecutive_remote_stages_and_bound_parameters",
            consecutive,
        ),
        ("items_spread_over_three_hosts", spread),
        ("host_killed_mid_stream", host_killed),
        (
            "host_killed_fails_only_what_it_started",
            host_killed_started_only,
        ),
        ("memory_flat_on_caller_hosts_and_broker", memory_flat),
        ("host_stopped_past_ack_wait_then_continued", host_stopped),
        ("segfault_in_a_host_worker", segfault),
        ("broker_killed_mid_run", broker_killed),
        ("no_host_serves_the_stage", no_host),
        (
            "host_with_another_fingerprint_refuses",
            fingerprint_mismatch,
        ),
        ("item_larger_than_max_payload", too_large),
        (
            "drop_deletes_the_stream_and_leaves_no_process",
            drop_cleans_up,
        ),
        ("unreachable_broker_fails_the_start", unreachable),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            Trial::test(name, move || {
                with_deadline(120, f);
                let stray = support::stray_descendants(&[]);
                if stray.is_empty() {
                    Ok(())
                } else {
                    Err(format!("processes left behind: {stray:?}").into())
                }
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn broker(s: &Server) -> Broker {
    Broker::nats(s.url()).expect("a broker address")
}

fn ordered_100k() {
    let s = Server::start();
    let _hosts = hosts(&s.url(), 3);
    let n = 100_000u64;
    let p = pipeline![numbers(n) | plus_one | square | plus_one].on(broker(&s));
    let out: Vec<u64> = p.results().unwrap().collect::<Result<_, _>>().unwrap();
    let want: Vec<u64> = (0..n).map(|x| (x + 1) * (x + 1) + 1).collect();
    assert_eq!(out.len(), want.len());
    assert!(out == want, "outputs out of order or wrong");
}

fn local_without_on() {
    let out: Vec<u64> = pipeline![numbers(1000) | plus_one | square | plus_one]
        .results()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        out,
        (0..1000u64)
            .map(|x| (x + 1) * (x + 1) + 1)
            .collect::<Vec<_>>()
    );
}

fn consecutive() {
    let s = Server::start();
    let _hosts = hosts(&s.url(), 2);
    let p = pipeline![numbers(5000) | square | times(3) | plus_one].on(broker(&s));
    let out: Vec<u64> = p.results().unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(out, (0..5000u64).map(|x| x * x * 3 + 1).collect::<Vec<_>>());
}

fn spread() {
    let s = Server::start();
    let _hosts = hosts(&s.url(), 3);
    let p = pipeline![numbers(600) | on_host(5)].on(broker(&s).batch(8));
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for (i, r) in p.results().unwrap().enumerate() {
        let (x, host) = r.unwrap();
        assert_eq!(x, i as u64);
        *seen.entry(host).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "every host gets items: {seen:?}");
    assert!(!seen.contains_key("caller"));
}

/// Reads every outcome; each item (by its number) must have exactly one.
fn outcomes<T>(
    results: impl Iterator<Item = Result<T, forkpipe::Error>>,
    n: u64,
) -> Vec<Result<T, forkpipe::Error>> {
    let all: Vec<_> = results.collect();
    assert_eq!(all.len() as u64, n, "one outcome per item");
    for (i, r) in all.iter().enumerate() {
        if let Err(e) = r {
            assert_eq!(
                e.item(),
                Some(i as u64),
                "outcome {i} is about item {i}: {e}"
            );
        }
    }
    all
}

fn host_killed() {
    let s = Server::start();
    let mut hs = hosts(&s.url(), 3);
    let b = broker(&s)
        .batch(4)
        .host_timeout(Duration::from_secs(1))
        .ack_wait(Duration::from_secs(5));
    let dir = tempfile::tempdir().unwrap();
    let n = 400;
    let d = dir.path().to_str().unwrap().to_string();
    let mut results = pipeline![numbers(n) | marked(20, d)]
        .on(b)
        .results()
        .unwrap();
    let mut all = Vec::new();
    while all.len() < 30 {
        all.push(results.next().expect("an outcome"));
    }
    let victim = all[29].as_ref().unwrap().1.clone();
    kill_while_running(&mut hs, &victim, dir.path());
    all.extend(results);
    let all = outcomes(all.into_iter(), n);
    let failed: Vec<&forkpipe::Error> = all.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!failed.is_empty(), "the killed host held items");
    // (What it had started: an item per worker, and the items of a message done before
    // its last one.)
    assert!(
        failed.len() <= 3 * 4,
        "only what it held fails: {}",
        failed.len()
    );
    for e in &failed {
        assert_eq!(e.host().map(|h| h.0), Some(victim.as_str()), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("stopped answering") && m.contains("marked"),
            "{m}"
        );
    }
    let after: Vec<&String> = all[30..]
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|x| &x.1)
        .collect();
    assert!(after.iter().any(|h| **h != victim), "other hosts took over");
}

/// SIGKILLs host `victim` just after it started an item (a new line of its in the marks
/// file of [`marked`]), so it dies holding that item whatever the machine's load: mid-stream,
/// a host can be between messages, holding nothing.
fn kill_while_running(hs: &mut [Host], victim: &str, dir: &std::path::Path) {
    let path = dir.join("marks");
    let seen = std::fs::read_to_string(&path).unwrap_or_default().len();
    let tail = format!(" {victim}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let new = text.get(seen..).unwrap_or_default();
        if new.lines().any(|l| l.ends_with(&tail)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "host {victim} started no item in 20 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    hs.iter_mut().find(|h| h.name == victim).unwrap().kill();
}

/// The marks file of [`marked`]: each item's hosts, in the order they started it.
fn marks(dir: &std::path::Path) -> std::collections::HashMap<u64, Vec<String>> {
    let text = std::fs::read_to_string(dir.join("marks")).unwrap_or_default();
    let mut m = std::collections::HashMap::<u64, Vec<String>>::new();
    for line in text.lines() {
        let (x, host) = line.split_once(' ').expect("a mark line");
        m.entry(x.parse().unwrap())
            .or_default()
            .push(host.to_string());
    }
    m
}

fn host_killed_started_only() {
    let s = Server::start();
    let mut hs = hosts(&s.url(), 3);
    let dir = tempfile::tempdir().unwrap();
    let b = broker(&s)
        .batch(4)
        .host_timeout(Duration::from_secs(1))
        .ack_wait(Duration::from_secs(5));
    let n = 300;
    let d = dir.path().to_str().unwrap().to_string();
    let mut results = pipeline![numbers(n) | marked(50, d)]
        .on(b)
        .results()
        .unwrap();
    let mut all = Vec::new();
    while all.len() < 30 {
        all.push(results.next().expect("an outcome"));
    }
    let victim = all[29].as_ref().unwrap().1.clone();
    kill_while_running(&mut hs, &victim, dir.path());
    all.extend(results);
    let all = outcomes(all.into_iter(), n);
    let marks = marks(dir.path());
    let (mut failed, mut unstarted) = (0, 0);
    for (i, r) in all.iter().enumerate() {
        let ran = marks.get(&(i as u64)).cloned().unwrap_or_default();
        // Nothing runs twice: not a crashed item, nor one a redelivery brought back.
        assert!(ran.len() <= 1, "item {i} ran on {ran:?}");
        match r {
            Ok((x, host)) => {
                assert_eq!(*x, i as u64);
                assert_eq!(ran, [host.as_str()], "item {i} ran where its result says");
            }
            Err(e) => {
                failed += 1;
                assert_eq!(e.host().map(|h| h.0), Some(victim.as_str()), "{e}");
                // Only what the dead host had claimed fails: it ran there, or nowhere.
                assert!(
                    ran.is_empty() || ran == [victim.as_str()],
                    "item {i} failed but ran on {ran:?}: {e}"
                );
                // A claim reaches the broker before its item starts, so a host killed in
                // between fails an item whose function had not begun: at most one per
                // worker (the room for 50 ms items); its queued items are not failed.
                unstarted += usize::from(ran.is_empty());
            }
        }
    }
    assert!(
        unstarted <= 2,
        "only the items in its workers' hands fail: {unstarted} had not started"
    );
    // (Two workers run an item each; a message's outputs wait for its last item.)
    assert!(
        (1..=8).contains(&failed),
        "the items it was running fail: {failed}"
    );
    let later = (all[30..].iter()).filter(|r| matches!(r, Ok((_, h)) if *h != victim));
    assert!(
        later.count() > 100,
        "other hosts ran the rest, its queued items too"
    );
}

/// `VmRSS` and `VmHWM` of `pid`, KiB.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        (status.lines().find(|l| l.starts_with(name)))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The messages and bytes of the run's stream, from the server's `/jsz` report.
fn stream_state(s: &Server) -> (u64, u64) {
    let jsz = s.jsz();
    let Some(at) = jsz.find("\"FP_") else {
        return (0, 0);
    };
    let state = &jsz[at..];
    let num = |name: &str| -> u64 {
        let i = state.find(&format!("\"{name}\":")).expect(name) + name.len() + 3;
        let digits: String = state[i..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().expect("a number")
    };
    (num("messages"), num("bytes"))
}

/// A sample of memory: the caller's `VmRSS`, each host's (its process and every process
/// below it, summed) and `VmHWM`, and the stream's messages and bytes.
fn sample(s: &Server, hs: &[Host]) -> (u64, Vec<(u64, u64)>, (u64, u64)) {
    let caller = rss(std::process::id()).0;
    let hosts = (hs.iter())
        .map(|h| {
            let below: u64 = support::descendants(h.pid())
                .iter()
                .map(|&p| rss(p).0)
                .sum();
            (rss(h.pid()).0 + below, rss(h.pid()).1)
        })
        .collect();
    (caller, hosts, stream_state(s))
}

fn memory_flat() {
    let s = Server::start();
    let hs = hosts(&s.url(), 2);
    let (n, kib) = (60_000u64, 1);
    // (The remote stage is the bottleneck: the source could go 100 times faster.)
    let mut results = pipeline![blobs(n, kib) | slow_echo(200)]
        .on(broker(&s))
        .results()
        .unwrap();
    let mut samples = Vec::new();
    for i in 0..n {
        let v = results.next().expect("an outcome").expect("an item");
        assert_eq!(v.len(), kib << 10);
        if i == 10_000 || i == n - 10_000 {
            samples.push(sample(&s, &hs));
        }
    }
    assert!(results.next().is_none());
    let (a, b) = (&samples[0], &samples[1]);
    println!(
        "memory at outputs 10,000 and 50,000 (caller KiB, hosts (KiB, peak KiB), stream (messages, bytes)): {a:?} -> {b:?}"
    );
    // 40 MiB went through between the samples; what each side holds does not grow with it.
    let mib = 1024;
    assert!(b.0 < a.0 + 16 * mib, "caller VmRSS {} -> {} KiB", a.0, b.0);
    for (h, (x, y)) in a.1.iter().zip(&b.1).enumerate() {
        assert!(
            y.0 < x.0 + 16 * mib,
            "host {h} VmRSS {} -> {} KiB",
            x.0,
            y.0
        );
        assert!(
            y.1 < x.1 + 16 * mib,
            "host {h} VmHWM {} -> {} KiB",
            x.1,
            y.1
        );
    }
    for (m, bytes) in [a.2, b.2] {
        // (At most the pipeline's window of items, ~12 MiB here, in batches of up to
        // 1 MiB; a stream that kept what was acked would hold 40 MiB by the second sample.)
        assert!(
            m <= 64 && bytes <= 24 << 20,
            "stream: {m} messages, {bytes} bytes"
        );
    }
    assert!(
        a.2.0 + b.2.0 > 0,
        "the samples saw the run's stream: {:?} {:?}",
        a.2,
        b.2
    );
}

fn host_stopped() {
    let s = Server::start();
    let hs = hosts(&s.url(), 3);
    let b = broker(&s)
        .batch(4)
        .host_timeout(Duration::from_secs(20))
        .ack_wait(Duration::from_secs(1));
    let n = 300;
    let mut results = pipeline![numbers(n) | on_host(20)].on(b).results().unwrap();
    let mut all = Vec::new();
    while all.len() < 20 {
        all.push(results.next().expect("an outcome"));
    }
    let victim = &hs[0];
    victim.signal(libc::SIGSTOP);
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    victim.signal(libc::SIGCONT);
    all.extend(results);
    assert!(t.elapsed() >= Duration::from_millis(2500));
    let all = outcomes(all.into_iter(), n);
    for (i, r) in all.iter().enumerate() {
        let (x, _) = r.as_ref().unwrap_or_else(|e| panic!("item {i}: {e}"));
        assert_eq!(*x, i as u64);
    }
}

fn segfault() {
    let s = Server::start();
    let _hosts = hosts(&s.url(), 2);
    let all = outcomes(
        pipeline![numbers(100) | segv_at(17)]
            .on(broker(&s))
            .results()
            .unwrap(),
        100,
    );
    for (i, r) in all.iter().enumerate() {
        if i == 17 {
            let e = r.as_ref().unwrap_err();
            let m = e.to_string();
            assert!(
                m.contains("stage 'segv_at'") && m.contains("item 17"),
                "{m}"
            );
            assert!(
                m.contains("killed by SIGSEGV") && m.contains("on host 'h"),
                "{m}"
            );
            assert!(
                e.host().is_some() && e.worker().and_then(|w| w.pid()).is_some(),
                "{m}"
            );
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64);
        }
    }
}

fn broker_killed() {
    let mut s = Server::start();
    let _hosts = hosts(&s.url(), 2);
    let b = broker(&s).host_timeout(Duration::from_secs(1)).batch(4);
    let n = 2000;
    let mut results = pipeline![numbers(n) | on_host(5)].on(b).results().unwrap();
    let mut all = Vec::new();
    while all.len() < 20 {
        all.push(results.next().expect("an outcome"));
    }
    s.kill();
    let t = Instant::now();
    all.extend(results);
    assert!(t.elapsed() < Duration::from_secs(30), "no hang");
    let all = outcomes(all.into_iter(), n);
    let failed: Vec<String> = all
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| e.to_string())
        .collect();
    assert!(
        failed.len() > 1000,
        "the unfinished items fail: {}",
        failed.len()
    );
    for m in &failed {
        assert!(m.contains("unreachable") && m.contains("on_host"), "{m}");
    }
}

fn no_host() {
    let s = Server::start();
    let b = broker(&s).no_host_wait(Duration::from_secs(1));
    let t = Instant::now();
    let all = outcomes(pipeline![numbers(50) | square].on(b).results().unwrap(), 50);
    for r in &all {
        let m = r.as_ref().unwrap_err().to_string();
        assert!(m.contains("no host serves stage 'square'"), "{m}");
    }
    assert!(t.elapsed() < Duration::from_secs(20));
}

fn fingerprint_mismatch() {
    let s = Server::start();
    let salt = [("__FORKPIPE_TEST_FINGERPRINT_SALT", " (another build)")];
    let _h = Host::start_with(&s.url(), "h9", &salt);
    let b = broker(&s).no_host_wait(Duration::from_secs(1));
    let all = outcomes(pipeline![numbers(20) | square].on(b).results().unwrap(), 20);
    for r in &all {
        let m = r.as_ref().unwrap_err().to_string();
        assert!(m.contains("no host serves stage 'square'"), "{m}");
        assert!(
            m.contains("host 'h9' refused it") && m.contains("(another build)"),
            "{m}"
        );
        assert!(m.contains("nats::cases::square: u64 -> u64"), "{m}");
    }
}

fn too_large() {
    let s = Server::start();
    let _hosts = hosts(&s.url(), 1);
    let input = vec![vec![1u8; 10], vec![2u8; 2_000_000], vec![3u8; 10]];
    let all: Vec<_> = pipeline![byte_len]
        .on(broker(&s))
        .run(input)
        .unwrap()
        .collect();
    assert_eq!(*all[0].as_ref().unwrap(), 10);
    assert_eq!(*all[2].as_ref().unwrap(), 10);
    let m = all[1].as_ref().unwrap_err().to_string();
    assert!(
        m.contains("item 1") && m.contains("2000") && m.contains("1048576"),
        "{m}"
    );
}

fn drop_cleans_up() {
    let s = Server::start();
    let hs = hosts(&s.url(), 2);
    let mut results = pipeline![numbers(1000) | on_host(20)]
        .on(broker(&s))
        .results()
        .unwrap();
    for _ in 0..10 {
        results.next().unwrap().unwrap();
    }
    assert!(s.jsz().contains("FP_"), "the run has its stream");
    let t = Instant::now();
    drop(results);
    assert!(t.elapsed() < Duration::from_secs(5), "drop is prompt");
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.jsz().contains("FP_") {
        assert!(
            Instant::now() < deadline,
            "the stream is deleted: {}",
            s.jsz()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for h in &hs {
        // (What is left of a host: its fork server.)
        let left = support::settle(h.pid(), 1, 10);
        assert_eq!(
            left,
            1,
            "host {} reaped its workers: {:?}",
            h.name,
            support::descendants(h.pid())
        );
    }
}

fn unreachable() {
    let b = Broker::nats("nats://127.0.0.1:1").unwrap();
    let e = pipeline![numbers(10) | square].on(b).results().unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");
    assert!(Broker::nats("http://x/y").is_err());
    let _ = Host::start; // (used by the other tests)
}
