//! W3 (DESIGN §5): 1 GiB through a `pipe_next` pair (producer and consumer in worker
//! processes), 64 KiB writes — next to a bare socketpair between two processes with the
//! same writes, in the same run.
//!
//! `cargo bench --bench w3_stream` (add `-- --test` for a quick smoke run).

mod bare;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use forkpipe::{Consumer, PipeReader, PipeWriter, Pipeline, Producer, Stage};

const CHUNK: usize = 64 * 1024;

fn forkpipe_gbps(bytes: u64) -> f64 {
    let produce = Producer::new("write", |n: u64, w: &mut PipeWriter| {
        let chunk = vec![7u8; CHUNK];
        let mut left = n as usize;
        while left > 0 {
            let k = left.min(CHUNK);
            w.write_all(&chunk[..k])?;
            left -= k;
        }
        Ok::<(), std::io::Error>(())
    })
    .subprocess();
    let consume = Consumer::new("count", |_n: u64, r: &mut PipeReader| {
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let k = r.read(&mut buf)?;
            if k == 0 {
                return Ok::<u64, std::io::Error>(total);
            }
            total += k as u64;
        }
    })
    .subprocess();
    let p = Pipeline::new(Stage::map("size", |n: u64| n)).then_pipe(produce, consume);
    let t = Instant::now();
    let got: Vec<u64> = p
        .run([bytes])
        .expect("start")
        .map(|r| r.expect("item"))
        .collect();
    let dt = t.elapsed();
    assert_eq!(got, [bytes]);
    bytes as f64 / dt.as_secs_f64() / 1e9
}

fn bare_gbps(bytes: u64) -> f64 {
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    let t = Instant::now();
    // The closure owns the writing end: the child writes, the parent drops its copy.
    let pid = bare::fork_child(move || {
        let chunk = vec![7u8; CHUNK];
        let mut left = bytes as usize;
        while left > 0 {
            let k = left.min(CHUNK);
            b.write_all(&chunk[..k]).expect("write");
            left -= k;
        }
    });
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let k = a.read(&mut buf).expect("read");
        if k == 0 {
            break;
        }
        total += k as u64;
    }
    let dt = t.elapsed();
    bare::reap(pid);
    assert_eq!(total, bytes);
    bytes as f64 / dt.as_secs_f64() / 1e9
}

fn main() {
    let (bytes, runs) = if bare::test_mode() {
        (8 << 20, 1)
    } else {
        (1u64 << 30, 5)
    };
    let mut f = Vec::new();
    let mut b = Vec::new();
    for _ in 0..runs {
        b.push(bare_gbps(bytes));
        f.push(forkpipe_gbps(bytes));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        v[v.len() / 2]
    };
    let (f, b) = (med(&mut f), med(&mut b));
    println!(
        "W3 stream: {} MiB through a pipe_next pair (processes), 64 KiB writes (median of {runs})",
        bytes >> 20
    );
    println!("  forkpipe        {f:>6.2} GB/s");
    println!("  bare socketpair {b:>6.2} GB/s");
    println!(
        "  ratio           {:>6.0} %   (target >= 80 %)",
        100.0 * f / b
    );
}
