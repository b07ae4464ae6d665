//! W6 (DESIGN §5): items through a `distributed` stage on 1 and 3 loopback hosts, next to
//! the same stage as a local process stage and to a bare async-nats loop (publish + pull +
//! ack, same batching), in the same run; and the p50 round trip of one item.
//!
//! `cargo bench --features nats --bench w6_remote` (add `-- --test` for a quick smoke run).
//! Starts its own `nats-server -js` on a free loopback port; the hosts are this binary in
//! host mode. Needs `nats-server` on PATH (`apt-get install nats-server`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use forkpipe::Broker;
use forkpipe::prelude::*;

#[stage(subprocess, distributed, workers = 2)]
fn inc(x: u64) -> u64 {
    x + 1
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    l.local_addr().expect("its address").port()
}

fn server(dir: &std::path::Path) -> (Killed, String) {
    let port = free_port();
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server on PATH (apt-get install nats-server)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    (Killed(child), format!("nats://127.0.0.1:{port}"))
}

fn host(url: &str, name: &str) -> Killed {
    let mut c = Command::new(std::env::current_exe().expect("this bench"))
        .env("FORKPIPE_HOST", url)
        .env("FORKPIPE_HOST_NAME", name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("a host");
    let mut line = String::new();
    let _ = BufReader::new(c.stdout.take().expect("stdout")).read_line(&mut line);
    assert!(line.contains("serving"), "host {name}: {line:?}");
    Killed(c)
}

fn through(p: Pipeline<u64, u64>, n: u64) -> f64 {
    let t = Instant::now();
    let mut count = 0u64;
    for r in p.run(0..n).expect("start") {
        assert_eq!(r.expect("item"), count + 1);
        count += 1;
    }
    assert_eq!(count, n);
    n as f64 / t.elapsed().as_secs_f64()
}

fn p50_round_trip(url: &str, rounds: usize) -> Duration {
    let running = pipeline![inc]
        .on(Broker::nats(url).expect("url"))
        .start()
        .expect("start");
    let mut lat: Vec<Duration> = (0..rounds as u64)
        .map(|x| {
            let t = Instant::now();
            assert_eq!(
                running.submit(x).expect("submit").wait().expect("item"),
                x + 1
            );
            t.elapsed()
        })
        .collect();
    let _ = running.shutdown();
    lat.sort();
    lat[lat.len() / 2]
}

fn main() {
    forkpipe::init().expect("init"); // (on a host: serves `inc`, never returns)
    let test = std::env::args().any(|a| a == "--test");
    let (n, runs, rounds) = if test {
        (20_000, 1, 50)
    } else {
        (1_000_000, 3, 1_000)
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let (_server, url) = server(dir.path());
    let mut hosts = vec![host(&url, "h1")];
    let broker = || Broker::nats(&url).expect("url");
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut one, mut three, mut local, mut bare) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let took = forkpipe::__private::bare_nats_loop(&url, n, 512).expect("bare loop");
        bare.push(n as f64 / took.as_secs_f64());
        local.push(through(pipeline![inc], n));
        one.push(through(pipeline![inc].on(broker()), n));
    }
    hosts.push(host(&url, "h2"));
    hosts.push(host(&url, "h3"));
    for _ in 0..runs {
        three.push(through(pipeline![inc].on(broker()), n));
    }
    let p50 = p50_round_trip(&url, rounds);
    let (one, three, local, bare) = (med(one), med(three), med(local), med(bare));
    let m = |x: f64| x / 1e6;
    println!(
        "W6: {n} u64 through `inc` (x + 1, workers = 2 per host), batches of 512, median of {runs}"
    );
    println!(
        "  bare async-nats loop (publish + pull + ack): {:.2} M items/s",
        m(bare)
    );
    println!(
        "  distributed, 1 host:  {:.2} M items/s ({:.0}% of bare)",
        m(one),
        100.0 * one / bare
    );
    println!(
        "  distributed, 3 hosts: {:.2} M items/s ({:.0}% of bare)",
        m(three),
        100.0 * three / bare
    );
    println!(
        "  local process stage:  {:.2} M items/s (distributed/local {:.0}% with 1 host)",
        m(local),
        100.0 * one / local
    );
    println!(
        "  p50 round trip of one item (submit + wait, 1 of 3 hosts): {:.0} µs",
        p50.as_secs_f64() * 1e6
    );
    drop(hosts);
}
