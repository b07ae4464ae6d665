//! The progress display (`pipeline-runtime/src/progress.rs`), seen from outside: this test
//! binary runs itself again as a child (`PROGRESS_CHILD=<mode>`) whose stderr is a real
//! pseudo-terminal (`openpty`), a pipe or a file, and whose stdout is always a pipe, and
//! reads what each received.
//!
//! A pty crate that spawns the program (expectrl, rexpect, portable-pty) gives the child the
//! terminal as stdin, stdout *and* stderr; here only stderr is the terminal, so the tests
//! can also assert that nothing of the display ever reaches stdout.
//!
//! Every child run lasts well over the display's first-draw delay (200 ms: a stage sleeps
//! 3 ms an item over 400 items, on 2 workers), and a run that long always draws at least
//! its last frame, so the asserts are on what is drawn, never on when.
//!
//! One more child has a terminal whose output is stopped (`^S`): the display blocks on its
//! first write, and the program must end all the same.
//!
//! Without the `progress` feature, the tests that expect a display are ignored and the
//! others still run (nothing may be drawn either way).

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use forkpipe::{Pipeline, Source, Stage};
use libtest_mimic::{Arguments, Failed, Trial};

/// Items of a child's run.
const ITEMS: u64 = 400;
/// The child's mode, in its environment.
const CHILD: &str = "PROGRESS_CHILD";
/// A child still running after this is hung: it is killed and the test fails.
const HANG: Duration = Duration::from_secs(60);
/// The size of the child's terminal.
const ROWS: u16 = 40;
const COLS: u16 = 160;

fn main() {
    if let Ok(mode) = std::env::var(CHILD) {
        child(&mode);
        return;
    }
    let mut args = Arguments::from_args();
    // (Each test runs a child with two worker processes: on 2 cores, one at a time.)
    args.test_threads = Some(1);
    let drawn = cfg!(feature = "progress");
    let trials = vec![
        Trial::test("terminal_shows_stages_rate_bottleneck_and_eta", || {
            on_terminal_shows_everything()
        })
        .with_ignored_flag(!drawn),
        Trial::test("pipe_gets_nothing", || not_a_terminal(To::Pipe)),
        Trial::test("file_gets_nothing", || not_a_terminal(To::File)),
        Trial::test("progress_false_draws_nothing_on_a_terminal", progress_false),
        Trial::test("running_draws_and_ends_on_shutdown", running).with_ignored_flag(!drawn),
        Trial::test("dropped_results_end_the_display", dropped).with_ignored_flag(!drawn),
        Trial::test("fan_out_branches_draw_no_bars_of_their_own", fan_out)
            .with_ignored_flag(!drawn),
        Trial::test("source_without_length_counts_items", source).with_ignored_flag(!drawn),
        Trial::test("a_stopped_terminal_does_not_hang_the_program", stopped),
    ];
    libtest_mimic::run(&args, trials).exit();
}

// ---------------------------------------------------------------------------------------
// The child: one pipeline per mode; its result (never anything of the display) on stdout
// ---------------------------------------------------------------------------------------

fn slow(x: u64) -> u64 {
    thread::sleep(Duration::from_millis(3));
    x
}

/// `parse | slow | store`: `slow` (2 worker processes, 3 ms an item) is the bottleneck.
fn chain() -> Pipeline<u64, u64> {
    Pipeline::new(Stage::map("parse", |x: u64| x + 1).queue(16))
        .then(Stage::map("slow", slow).subprocess().workers(2).queue(16))
        .then(Stage::map("store", |x: u64| x * 2))
}

/// The number of a run's outputs, every item a success.
fn all(results: Result<forkpipe::Results<u64>, forkpipe::Error>) -> usize {
    let out: Vec<u64> = results
        .expect("start")
        .collect::<Result<_, _>>()
        .expect("items");
    out.len()
}

fn child(mode: &str) {
    let n = match mode {
        "run" => all(chain().run(0..ITEMS)),
        "off" => all(chain().progress(false).run(0..ITEMS)),
        "start" => {
            let running = chain().start().expect("start");
            let tickets: Vec<_> = (0..ITEMS)
                .map(|x| running.submit(x).expect("submit"))
                .collect();
            let out: Vec<u64> = tickets
                .into_iter()
                .map(|t| t.wait().expect("item"))
                .collect();
            assert_eq!(out, (0..ITEMS).map(|x| 2 * (x + 1)).collect::<Vec<_>>());
            assert!(running.shutdown().expect("shutdown").is_graceful());
            out.len()
        }
        "drop" => {
            // (Long enough to be drawn: the first 200 results take about 300 ms.)
            let mut results = chain().run(0..1_000_000).expect("start");
            let n = (results.by_ref().take(200)).filter(|r| r.is_ok()).count();
            drop(results); // with most of the input never run
            n
        }
        "fan_out" => {
            let branches = [
                Pipeline::new(Stage::map("double", |x: u64| 2 * x))
                    .then(Stage::map("slow", slow).subprocess().workers(2)),
                Pipeline::new(Stage::map("triple", |x: u64| 3 * x)),
            ];
            let p = Pipeline::new(Stage::map("inc", |x: u64| x + 1)).fan_out(branches);
            all(p.run(0..ITEMS))
        }
        "source" => {
            let numbers = Source::new("numbers", || 0..ITEMS);
            let p = Pipeline::new(numbers).then(Stage::map("slow", slow).subprocess().workers(2));
            all(p.results())
        }
        other => panic!("unknown child mode {other}"),
    };
    println!("ok {n}");
}

// ---------------------------------------------------------------------------------------
// The parent: a child with its stderr on a terminal, a pipe or a file
// ---------------------------------------------------------------------------------------

/// Where the child's stderr goes.
#[derive(Clone, Copy)]
enum To {
    Terminal,
    /// A terminal whose output is stopped (`^S`, as a user pauses a program's output):
    /// every write to it blocks until `^Q`, which never comes.
    StoppedTerminal,
    Pipe,
    File,
}

/// What a child wrote: stdout, and stderr (what the terminal, pipe or file received).
struct Seen {
    stdout: String,
    stderr: Vec<u8>,
}

impl Seen {
    /// Everything stderr got, escape sequences and all.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// What the terminal shows at the end, as a person would see it: indicatif pads its
    /// lines to the terminal's width rather than ending them, and redraws over them, so
    /// the bytes go through a terminal emulator.
    fn screen(&self) -> String {
        let size = |n| std::num::NonZeroU16::new(n).expect("a terminal size");
        let mut term = vt100::Parser::new(size(ROWS), size(COLS), 0);
        term.process(&self.stderr);
        // (Row by row: a line as wide as the terminal is a soft wrap to `contents()`.)
        let rows: Vec<String> = term.screen().rows(0, COLS).collect();
        rows.join("\n")
    }
}

/// Reads `r` to its end on a thread; a pty master's read fails with `EIO` once every
/// holder of the terminal's other end has closed it: that is its end too.
fn drain(mut r: File) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break, // EIO: the terminal's last writer is gone
            }
        }
        out
    })
}

/// Runs this binary as the child `mode`, its stderr to `err`; fails if it hangs or fails.
fn run_child(mode: &str, err: To) -> Result<Seen, Failed> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(CHILD, mode)
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut file = None;
    let reader = match err {
        To::Terminal | To::StoppedTerminal => {
            let size = nix::pty::Winsize {
                ws_row: ROWS,
                ws_col: COLS,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let pty = nix::pty::openpty(Some(&size), None)?;
            cmd.stderr(Stdio::from(pty.slave));
            if matches!(err, To::StoppedTerminal) {
                use std::io::Write;
                let mut master = File::from(pty.master);
                master.write_all(b"\x13")?; // ^S: IXON is on by default
                file = Some(master);
                None
            } else {
                Some(drain(File::from(pty.master)))
            }
        }
        To::Pipe => {
            cmd.stderr(Stdio::piped());
            None
        }
        To::File => {
            let f = tempfile::tempfile()?;
            cmd.stderr(f.try_clone()?);
            file = Some(f);
            None
        }
    };
    let mut child = cmd.spawn()?;
    drop(cmd); // (closes this process's copy of the terminal's end, if any)
    let stdout = drain(File::from(OwnedFd::from(
        child.stdout.take().expect("piped"),
    )));
    let piped = child
        .stderr
        .take()
        .map(|e| drain(File::from(OwnedFd::from(e))));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("child '{mode}' still running after {HANG:?}: killed").into());
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8(stdout.join().expect("stdout reader"))?;
    let stderr = match (reader, piped, file) {
        (Some(r), _, _) | (None, Some(r), _) => r.join().expect("stderr reader"),
        (None, None, Some(f)) if matches!(err, To::StoppedTerminal) => {
            drain(f).join().expect("stderr reader")
        }
        (None, None, Some(mut f)) => {
            use std::io::Seek;
            f.rewind()?;
            let mut v = Vec::new();
            f.read_to_end(&mut v)?;
            v
        }
        (None, None, None) => unreachable!("stderr goes somewhere"),
    };
    let seen = Seen { stdout, stderr };
    if !status.success() {
        return Err(format!("child '{mode}' failed ({status}); stderr:\n{}", seen.text()).into());
    }
    Ok(seen)
}

/// The child printed its result, and nothing of the display, on stdout.
fn clean_stdout(seen: &Seen, n: u64) -> Result<(), Failed> {
    if seen.stdout != format!("ok {n}\n") {
        return Err(format!("stdout is not just the result: {:?}", seen.stdout).into());
    }
    Ok(())
}

fn contains_all(screen: &str, wanted: &[&str]) -> Result<(), Failed> {
    for w in wanted {
        if !screen.contains(w) {
            return Err(format!("the terminal shows no {w:?}; it shows:\n{screen}").into());
        }
    }
    Ok(())
}

/// The screen's line for stage `name` (`name  <n> done  <rate>/s  busy <p>%`, indented
/// by two spaces per fan-out level), if there is one.
fn stage_line<'a>(screen: &'a str, name: &str) -> Option<&'a str> {
    screen.lines().find(|l| {
        l.trim_start().starts_with(&format!("{name} "))
            && l.contains(" done ")
            && l.contains("/s  busy ")
            && l.contains('%')
    })
}

fn stage_lines(screen: &str, names: &[&str]) -> Result<(), Failed> {
    for name in names {
        if stage_line(screen, name).is_none() {
            return Err(
                format!("no line for stage {name:?}; the terminal shows:\n{screen}").into(),
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

fn on_terminal_shows_everything() -> Result<(), Failed> {
    let seen = run_child("run", To::Terminal)?;
    clean_stdout(&seen, ITEMS)?;
    let screen = seen.screen();
    stage_lines(&screen, &["parse", "slow", "store"])?;
    // The overall bar (the input is a range: its length is known), at its end.
    contains_all(
        &screen,
        &["items/s", "ETA", "400/400 (100%)", "0 in flight"],
    )?;
    // One stage marked, the slow one (the last frame gives the whole run's figures).
    let marked: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains("<- bottleneck"))
        .collect();
    if marked.len() != 1 || stage_line(&screen, "slow") != Some(marked[0]) {
        return Err(format!("the bottleneck mark is not on 'slow' alone:\n{screen}").into());
    }
    // Each stage's line tells its count and a rate: every item passed every stage.
    for name in ["parse", "slow", "store"] {
        let line = stage_line(&screen, name).unwrap_or_default();
        if !line.contains(" 400 done ") || line.contains(" 0/s ") {
            return Err(format!("stage {name}: not 400 items at a rate above 0: {line:?}").into());
        }
    }
    Ok(())
}

fn not_a_terminal(err: To) -> Result<(), Failed> {
    let seen = run_child("run", err)?;
    clean_stdout(&seen, ITEMS)?;
    if !seen.stderr.is_empty() {
        return Err(format!("stderr is not a terminal but got: {:?}", seen.text()).into());
    }
    Ok(())
}

fn progress_false() -> Result<(), Failed> {
    let seen = run_child("off", To::Terminal)?;
    clean_stdout(&seen, ITEMS)?;
    if !seen.stderr.is_empty() {
        return Err(format!("progress(false) but the terminal got: {:?}", seen.text()).into());
    }
    Ok(())
}

fn running() -> Result<(), Failed> {
    // (The child exiting at all shows that the display ended with `shutdown`.)
    let seen = run_child("start", To::Terminal)?;
    clean_stdout(&seen, ITEMS)?;
    let screen = seen.screen();
    stage_lines(&screen, &["parse", "slow", "store"])?;
    // Work items: how many will come is not known, so a count, not a bar.
    contains_all(&screen, &["<- bottleneck", "400 items  ", "0 in flight"])?;
    if seen.text().contains("ETA") {
        return Err(format!("an ETA without a known length:\n{screen}").into());
    }
    Ok(())
}

fn dropped() -> Result<(), Failed> {
    let seen = run_child("drop", To::Terminal)?;
    clean_stdout(&seen, 200)?;
    let screen = seen.screen();
    stage_lines(&screen, &["parse", "slow", "store"])?;
    // The last frame stays, showing how far the run got.
    contains_all(&screen, &["/1000000 ("])?;
    if screen.contains("1000000/1000000") {
        return Err(format!("the dropped run shows as complete:\n{screen}").into());
    }
    Ok(())
}

fn fan_out() -> Result<(), Failed> {
    let seen = run_child("fan_out", To::Terminal)?;
    clean_stdout(&seen, 2 * ITEMS)?;
    let screen = seen.screen();
    // The branches' stages are lines of the parent's display, indented under the fan-out…
    stage_lines(
        &screen,
        &["inc", "(double | slow, triple)", "double", "slow", "triple"],
    )?;
    for name in ["double", "slow", "triple"] {
        let line = stage_line(&screen, name).unwrap_or_default();
        if !line.starts_with(&format!("  {name} ")) {
            return Err(format!("branch stage {name} is not indented: {line:?}").into());
        }
    }
    contains_all(&screen, &["ETA", "400/400 (100%)"])?;
    // …and no branch drew a display of its own: a branch knows no length, so its overall
    // line would be a count (`N items  …`), which the parent's bar never is. (Only one
    // display of a process draws at a time, and the branches start first: had they drawn,
    // the parent's bar would be missing too.)
    if seen.text().contains(" items  ") {
        return Err(format!("a branch drew its own overall line:\n{screen}").into());
    }
    Ok(())
}

fn source() -> Result<(), Failed> {
    let seen = run_child("source", To::Terminal)?;
    clean_stdout(&seen, ITEMS)?;
    let screen = seen.screen();
    stage_lines(&screen, &["slow"])?;
    contains_all(&screen, &["400 items  ", "items/s"])?;
    if seen.text().contains("ETA") {
        return Err(format!("an ETA without a known length:\n{screen}").into());
    }
    Ok(())
}

fn stopped() -> Result<(), Failed> {
    // The display's first write blocks; the pipeline ends all the same, the display's
    // handle gives up on it after a second and detaches it, and the program exits
    // (`run_child` fails a child that hangs) with its result.
    let t = Instant::now();
    let seen = run_child("run", To::StoppedTerminal)?;
    clean_stdout(&seen, ITEMS)?;
    println!(
        "  (ended in {:.1?}, the terminal got {} bytes)",
        t.elapsed(),
        seen.stderr.len()
    );
    Ok(())
}
