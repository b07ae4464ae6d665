//! The progress display: while a pipeline runs, one line per stage on stderr and an overall
//! line, redrawn about ten times a second (cargo feature `progress`, on by default).
//!
//! ```text
//! parse       12,000 done    4,210/s  busy  38%
//! store       12,000 done    4,208/s  busy  97%  <- bottleneck
//! ████████████░░░░░░░░░░░░░░░░░░░░░░░░░░░░ 12000/40000 (30%)  4,208 items/s, 96 in flight  ETA 7s
//! ```
//!
//! # The problem
//! A long run should show where it is and which stage holds it back, without costing the
//! pipeline anything, without ever writing into what the program writes (its stdout, a pipe,
//! a log file), and without being a way for a pipeline to hang or to outlive its handle.
//!
//! # The approach
//! Everything shown comes from [`stats_of`], which only reads the pipeline's counters
//! (atomics in [`Shared`]): the pipeline's own threads do nothing for the display. A thread
//! of its own (`forkpipe-progress`) reads them every [`REFRESH`] and hands the lines to
//! `indicatif`, which draws them on stderr. Per stage it shows the items done (finished
//! items that reached the stage), the rate, the share of its workers' time spent busy, and
//! marks the busiest stage, the bottleneck (once one is at least 1% busy); while the run goes on, rate, busy and the mark
//! are over the last [`WINDOW`] (so a change of pace shows), and the last frame gives the
//! whole run's, as [`crate::Stats`] does. The overall line is a bar with an ETA when the
//! number of items is known (the input iterator's exact `size_hint`, or
//! [`Pipeline::expected`](crate::Pipeline::expected)), else a count.
//!
//! A display is started by [`Results`](crate::Results) and [`Running`](crate::Running) only
//! - when stderr is a terminal (`IsTerminal`) and `TERM` is set and not `dumb`: never into a
//!   pipe or a file, and never on stdout;
//! - when it is not turned off ([`Pipeline::progress`](crate::Pipeline::progress)`(false)`);
//!   a fan-out's branches are started with it off (their stages are in the parent's lines);
//! - when no other pipeline of this process is drawing (two would overwrite each other's
//!   lines): the second one runs without a display.
//!
//! It draws nothing in a run's first [`FIRST_DRAW`], so short runs (and most tests) leave
//! no trace, even on a terminal; a run that lasted longer always draws at least its last
//! frame.
//!
//! # How it ends
//! The thread stops when its handle is dropped or finished (the results were drained,
//! [`Results`](crate::Results) dropped, [`Running::shutdown`](crate::Running::shutdown) or
//! drop), or when the pipeline's stop signal ends (`Engine::stop_rx`), whichever is first:
//! it draws a last frame, leaves it on the screen, and returns. The handle waits for it at
//! most [`JOIN_WITHIN`] and then detaches it, as [`Threads`](crate::caller::threads) does:
//! its only blocking point is a write to the terminal (one suspended with `^S` can block
//! it), and that must not hold up the pipeline's end. A detached display holds only the
//! counters, never a process or a descriptor of the pipeline.
//!
//! # Invariants
//! - Nothing is drawn unless stderr is a terminal; stdout is never written.
//! - The display never makes the pipeline wait: it only reads counters, and its handle's
//!   drop returns within [`JOIN_WITHIN`].
//! - At most one display per process draws at a time.
//!
//! Without the feature, [`Display::start`] starts nothing and the builder methods are kept,
//! so code that calls them builds either way.
//!
//! [`stats_of`]: crate::stats::stats_of
//! [`Shared`]: crate::caller::shared::Shared

#[cfg(feature = "progress")]
use std::time::Duration;

use crate::caller::engine::Engine;

/// What the pipeline's builder asked for: [`Pipeline::progress`](crate::Pipeline::progress)
/// and [`Pipeline::expected`](crate::Pipeline::expected).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub on: bool,
    /// How many items the run will have, if known.
    pub expected: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            on: true,
            expected: None,
        }
    }
}

/// How often the display reads the counters and redraws.
#[cfg(feature = "progress")]
pub(crate) const REFRESH: Duration = Duration::from_millis(100);

/// Rates and busy shares while running are over this much recent time.
#[cfg(feature = "progress")]
pub(crate) const WINDOW: Duration = Duration::from_secs(2);

/// Nothing is drawn before the pipeline has run this long.
#[cfg(feature = "progress")]
pub(crate) const FIRST_DRAW: Duration = Duration::from_millis(200);

/// How long the handle's drop waits for the display thread before detaching it.
#[cfg(feature = "progress")]
pub(crate) const JOIN_WITHIN: Duration = Duration::from_secs(1);

/// A running display (see the module docs); dropping it ends the display.
#[cfg(feature = "progress")]
#[derive(Debug)]
pub(crate) struct Display {
    /// Never sent to: dropping it tells the thread to draw its last frame and return.
    stop: Option<crossbeam_channel::Sender<()>>,
    /// Disconnected when the thread ends, however it ends.
    done: crossbeam_channel::Receiver<()>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// Without the `progress` feature there is never a display.
#[cfg(not(feature = "progress"))]
#[derive(Debug)]
pub(crate) enum Display {}

#[cfg(not(feature = "progress"))]
impl Display {
    /// Starts nothing: the feature is off.
    pub(crate) fn start(opts: Options, engine: &Engine) -> Option<Display> {
        let _ = (opts.on, opts.expected, engine);
        None
    }
}

#[cfg(feature = "progress")]
impl Display {
    /// Starts the display of the pipeline `engine` runs, if it is to be drawn at all (see
    /// the module docs); `None` if not. Never fails the pipeline: a display that cannot
    /// start is simply not there.
    pub(crate) fn start(opts: Options, engine: &Engine) -> Option<Display> {
        use std::io::IsTerminal;
        if !opts.on || !std::io::stderr().is_terminal() || dumb_terminal() {
            return None;
        }
        let claim = draw::Claim::take()?;
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let shared = std::sync::Arc::clone(&engine.shared);
        let ended = engine.stop_rx.clone();
        let handle = std::thread::Builder::new()
            .name("forkpipe-progress".into())
            .spawn(move || {
                let _done = done_tx; // dropped when the thread ends, however it ends
                let _claim = claim;
                draw::run(&shared, &stop_rx, &ended, opts.expected);
            })
            .ok()?;
        Some(Display {
            stop: Some(stop_tx),
            done: done_rx,
            handle: Some(handle),
        })
    }
}

#[cfg(feature = "progress")]
impl Drop for Display {
    /// Ends the display: the thread draws its last frame and returns; waits for it at most
    /// [`JOIN_WITHIN`], then detaches it (see the module docs).
    fn drop(&mut self) {
        self.stop = None;
        if let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
            self.done.recv_timeout(JOIN_WITHIN)
        {
            tracing::warn!("forkpipe: the progress display is blocked writing to stderr; detached");
            return;
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `TERM` unset or `dumb`: a terminal that cannot move the cursor (indicatif draws nothing
/// there either).
#[cfg(feature = "progress")]
fn dumb_terminal() -> bool {
    std::env::var_os("TERM").is_none_or(|t| t.is_empty() || t == "dumb")
}

#[cfg(feature = "progress")]
mod draw {
    //! The display thread: sampling the counters, and the lines.

    use std::collections::VecDeque;
    use std::fmt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use crossbeam_channel::{Receiver, select};
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

    use super::{FIRST_DRAW, REFRESH, WINDOW};
    use crate::caller::shared::Shared;
    use crate::stats::{Stats, stats_of};

    /// Set while a display of this process draws.
    static DRAWING: AtomicBool = AtomicBool::new(false);

    /// The right to draw, held by the one display that draws (see the module docs).
    #[derive(Debug)]
    pub(super) struct Claim(());

    impl Claim {
        pub(super) fn take() -> Option<Claim> {
            DRAWING
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .ok()
                .map(|_| Claim(()))
        }
    }

    impl Drop for Claim {
        fn drop(&mut self) {
            DRAWING.store(false, Ordering::Release);
        }
    }

    /// The display thread: a frame every [`REFRESH`] (from [`FIRST_DRAW`] on) until `stop`
    /// or `ended` disconnects, then the last frame.
    pub(super) fn run(
        shared: &Shared,
        stop: &Receiver<()>,
        ended: &Receiver<()>,
        expected: Option<u64>,
    ) {
        let tick = crossbeam_channel::tick(REFRESH);
        let mut recent = Recent::new(shared.started, &stats_of(shared));
        let mut screen: Option<Screen> = None;
        loop {
            let last = select! {
                recv(stop) -> _ => true,
                recv(ended) -> _ => true,
                recv(tick) -> _ => false,
            };
            let stats = stats_of(shared);
            let now = Instant::now();
            if screen.is_none() && now.saturating_duration_since(shared.started) >= FIRST_DRAW {
                screen = Some(Screen::new(&stats, expected));
            }
            if last {
                if let Some(s) = screen {
                    s.finish(&stats);
                }
                return;
            }
            recent.push(now, &stats);
            if let Some(s) = &screen {
                s.update(&stats, &recent.lines(&stats));
            }
        }
    }

    /// A stage's figures as a line shows them.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub(super) struct Figures {
        pub done: u64,
        /// Items per second.
        pub rate: f64,
        /// The share of its workers' time spent busy, 0.0 to 1.0.
        pub busy: f64,
        pub bottleneck: bool,
    }

    /// The samples of the last [`WINDOW`]: per stage, items done and busy time.
    struct Recent {
        samples: VecDeque<(Instant, Vec<(u64, Duration)>)>,
    }

    impl Recent {
        /// Starts with what `stats` says at `start` (the pipeline's start: all zeros).
        fn new(start: Instant, stats: &Stats) -> Self {
            let zeros = stats.stages.iter().map(|_| (0, Duration::ZERO)).collect();
            Recent {
                samples: VecDeque::from([(start, zeros)]),
            }
        }

        fn push(&mut self, now: Instant, stats: &Stats) {
            let per_stage = stats.stages.iter().map(|s| (s.items_in, s.busy)).collect();
            self.samples.push_back((now, per_stage));
            // Keep one sample at least WINDOW old, so the window spans WINDOW once it can.
            while self.samples.len() > 2
                && now.saturating_duration_since(self.samples[1].0) >= WINDOW
            {
                self.samples.pop_front();
            }
        }

        /// Each stage's figures over the window (the newest sample against the oldest).
        fn lines(&self, stats: &Stats) -> Vec<Figures> {
            let (Some((t0, first)), Some((t1, last))) = (self.samples.front(), self.samples.back())
            else {
                return Vec::new();
            };
            let dt = t1.saturating_duration_since(*t0).as_secs_f64();
            let mut lines: Vec<Figures> = (stats.stages.iter().zip(first.iter().zip(last)))
                .map(|(s, (&(n0, b0), &(n1, b1)))| {
                    let busy = b1.saturating_sub(b0).as_secs_f64();
                    Figures {
                        done: s.items_in,
                        rate: per_second(n1.saturating_sub(n0), dt),
                        busy: share(busy, dt, s.workers),
                        bottleneck: false,
                    }
                })
                .collect();
            let busiest = (lines.iter_mut()).max_by(|a, b| a.busy.total_cmp(&b.busy));
            if let Some(f) = busiest {
                f.bottleneck = f.busy >= MARKED;
            }
            lines
        }
    }

    /// The whole run's figures (the last frame's), as [`Stats`] gives them.
    pub(super) fn whole_run(stats: &Stats) -> Vec<Figures> {
        let bottleneck = stats.bottleneck().map(|b| b as *const _);
        let secs = stats.elapsed.as_secs_f64();
        (stats.stages.iter())
            .map(|s| Figures {
                done: s.items_in,
                rate: per_second(s.items_in, secs),
                busy: s.utilization(stats.elapsed),
                bottleneck: bottleneck == Some(s as *const _)
                    && s.utilization(stats.elapsed) >= MARKED,
            })
            .collect()
    }

    /// The least busy share a stage marked as the bottleneck has (a line reading `busy 0%`
    /// is not marked: a process stage's busy time arrives when its workers pause, so early
    /// in a run the busiest stage may not be known yet).
    const MARKED: f64 = 0.01;

    fn per_second(n: u64, secs: f64) -> f64 {
        if secs > 0.0 { n as f64 / secs } else { 0.0 }
    }

    fn share(busy: f64, secs: f64, workers: usize) -> f64 {
        let capacity = secs * workers.max(1) as f64;
        if capacity > 0.0 {
            (busy / capacity).min(1.0)
        } else {
            0.0
        }
    }

    /// What the terminal shows: one `indicatif` bar of several lines (the stages', then the
    /// overall one). The lines are written into `frame` first and read by the bar's
    /// template keys when it draws, so that one setter (`set_position`) draws a whole,
    /// consistent frame: setting several bars (or several fields) one by one would let
    /// indicatif draw a mix of two refreshes in between.
    struct Screen {
        bar: ProgressBar,
        frame: Arc<Mutex<Frame>>,
        names: Vec<String>,
        expected: Option<u64>,
    }

    /// The text of one frame, as the template keys `{stages}` and `{total}` show it.
    #[derive(Default)]
    struct Frame {
        stages: String,
        total: String,
    }

    impl Screen {
        fn new(stats: &Stats, expected: Option<u64>) -> Self {
            let frame = Arc::new(Mutex::new(Frame::default()));
            let template = match expected {
                Some(_) => "{stages}\n{bar:40} {pos}/{len} ({percent}%)  {total}  ETA {eta}",
                None => "{stages}\n{pos} items  {total}  {elapsed}",
            };
            let (f1, f2) = (Arc::clone(&frame), Arc::clone(&frame));
            let style = ProgressStyle::with_template(template)
                .expect("a valid template")
                .with_key(
                    "stages",
                    move |_: &ProgressState, w: &mut dyn fmt::Write| {
                        let _ = w.write_str(&f1.lock().unwrap_or_else(|p| p.into_inner()).stages);
                    },
                )
                .with_key("total", move |_: &ProgressState, w: &mut dyn fmt::Write| {
                    let _ = w.write_str(&f2.lock().unwrap_or_else(|p| p.into_inner()).total);
                });
            let bar = ProgressBar::with_draw_target(expected, ProgressDrawTarget::stderr());
            Screen {
                bar: bar.with_style(style),
                frame,
                names: names(stats),
                expected,
            }
        }

        /// Writes the frame of `figures`; the bar draws it (rate-limited by indicatif).
        fn update(&self, stats: &Stats, figures: &[Figures]) {
            {
                let mut frame = self.frame.lock().unwrap_or_else(|p| p.into_inner());
                frame.stages = (self.names.iter().zip(figures))
                    .map(|(name, f)| stage_line(name, f))
                    .collect::<Vec<_>>()
                    .join("\n");
                frame.total = total_line(stats, figures);
            }
            if let Some(n) = self.expected
                && stats.submitted > n
                && self.bar.length() != Some(stats.submitted)
            {
                self.bar.set_length(stats.submitted); // (the hint was short)
            }
            self.bar.set_position(stats.completed);
        }

        /// The last frame, with the whole run's figures, left on the screen.
        fn finish(self, stats: &Stats) {
            self.update(stats, &whole_run(stats));
            self.bar.abandon();
        }
    }

    /// The stages' names, a branch's indented under its fan-out, padded to one width.
    pub(super) fn names(stats: &Stats) -> Vec<String> {
        let names: Vec<String> = (stats.stages.iter())
            .map(|s| format!("{}{}", "  ".repeat(s.branch.len()), s.name))
            .collect();
        let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        names.into_iter().map(|n| format!("{n:<width$}")).collect()
    }

    /// `parse       12,000 done    4,210/s  busy  38%  <- bottleneck`
    pub(super) fn stage_line(name: &str, f: &Figures) -> String {
        let mark = if f.bottleneck { "  <- bottleneck" } else { "" };
        format!(
            "{name}  {:>10} done  {:>9}/s  busy {:>3.0}%{mark}",
            grouped(f.done),
            grouped(f.rate.round() as u64),
            100.0 * f.busy
        )
    }

    /// The overall line's message: the rate of the last stage of the pipeline's own chain
    /// (items leaving the pipeline) and the items in flight.
    fn total_line(stats: &Stats, figures: &[Figures]) -> String {
        let rate = (stats.stages.iter().zip(figures))
            .rfind(|(s, _)| s.branch.is_empty())
            .map_or(0.0, |(_, f)| f.rate);
        format!(
            "{} items/s, {} in flight",
            grouped(rate.round() as u64),
            stats.in_flight
        )
    }

    /// `12345678` as `12,345,678`.
    pub(super) fn grouped(n: u64) -> String {
        let digits = n.to_string();
        let mut out = String::with_capacity(digits.len() + digits.len() / 3);
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
}

#[cfg(all(test, feature = "progress"))]
mod tests {
    use super::draw::{Figures, grouped, stage_line};

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(12_345_678), "12,345,678");
    }

    #[test]
    fn a_stage_line_shows_done_rate_busy_and_the_mark() {
        let f = Figures {
            done: 12_000,
            rate: 4210.4,
            busy: 0.97,
            bottleneck: true,
        };
        assert_eq!(
            stage_line("store", &f),
            "store      12,000 done      4,210/s  busy  97%  <- bottleneck"
        );
        let f = Figures {
            bottleneck: false,
            ..f
        };
        assert!(!stage_line("store", &f).contains("bottleneck"));
    }
}
