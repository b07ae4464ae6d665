use forkpipe::prelude::*;

#[derive(Clone)]
struct Config {
    offset: u64,
}

#[stage]
fn shift(x: u64, config: Config, mut times: u32, (a, b): (u64, u64)) -> u64 {
    while times > 0 {
        times -= 1;
    }
    x + config.offset + a + b
}

fn main() {
    let config = Config { offset: 1 };
    let p = pipeline![shift(config.clone(), 3, (1, 2),) | shift(config, 0, (0, 0))];
    let v: Vec<u64> = p.run([0u64]).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(v, [5]);
}
