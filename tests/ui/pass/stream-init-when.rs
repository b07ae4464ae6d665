// Tricky valid input for the newer options: paths in `init` and `when`, a determiner that
// takes a deref target of the item, state before `Emit`, a `stream` with a bound parameter
// and a concrete return type, and every option at once on a process stage.
use forkpipe::prelude::*;
use serde::{Deserialize, Serialize};

mod db {
    #[derive(Default)]
    pub struct Conn {
        pub queries: u64,
    }

    impl Conn {
        pub fn open() -> std::io::Result<Conn> {
            Ok(Conn::default())
        }
    }
}

mod rules {
    pub fn is_short(line: &str) -> bool {
        line.len() < 8
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Rec {
    line: String,
}

#[stage(subprocess, workers = 2, unordered, queue = 4, name = "store", init = db::Conn::open, when = rules::is_short, timeout_ms = 5000)]
fn store(line: String, conn: &mut db::Conn) -> Result<String, std::io::Error> {
    conn.queries += 1;
    Ok(line)
}

#[stage(init = db::Conn::default)]
fn words(line: String, conn: &mut db::Conn, out: &mut Emit<Rec>, prefix: String) {
    conn.queries += 1;
    for word in line.split(' ') {
        out.emit(Rec {
            line: format!("{prefix}{word}"),
        });
    }
}

#[stage(stream, subprocess, workers = 2)]
fn longest(recs: impl IntoIterator<Item = Rec>, at_least: usize) -> Option<String> {
    recs.into_iter()
        .map(|rec| rec.line)
        .filter(|line| line.len() >= at_least)
        .max_by_key(String::len)
}

fn main() {
    let _: Pipeline<String, String> = pipeline![store | words(String::from("> ")) | longest(2)];
}
