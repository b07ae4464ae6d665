mod stages {
    use forkpipe::prelude::*;

    #[stage]
    pub fn add_n(x: u64, n: u64) -> u64 {
        x + n
    }

    pub mod nested {
        use forkpipe::prelude::*;

        #[stage(name = "twice")]
        pub(crate) fn double(x: u64) -> u64 {
            x * 2
        }
    }
}

use forkpipe::pipeline;
use stages::add_n;
use stages::nested::double as twice;

fn main() {
    let _ = pipeline![add_n(1) | twice | stages::add_n(2) | crate::stages::nested::double];
    assert_eq!(add_n(1, 2), 3);
}
