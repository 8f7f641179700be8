//! Progress while the job runs: a bar on a terminal, a log line every few seconds elsewhere.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

/// A progress bar on a terminal, a log line every few seconds elsewhere.
pub(crate) enum Progress {
    Off,
    Bar(ProgressBar),
    Log {
        total: u64,
        start: Instant,
        next: std::cell::Cell<Instant>,
    },
}

impl Progress {
    const LOG_EVERY: Duration = Duration::from_secs(2);

    pub fn new(enabled: bool, total: u64) -> Self {
        if !enabled {
            return Self::Off;
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {per_sec} eta {eta}",
                )
                .expect("the template is valid"),
            );
            Self::Bar(bar)
        } else {
            let now = Instant::now();
            Self::Log {
                total,
                start: now,
                next: std::cell::Cell::new(now + Self::LOG_EVERY),
            }
        }
    }

    pub fn update(&self, done: u64) {
        match self {
            Self::Off => {}
            Self::Bar(bar) => bar.set_position(done),
            Self::Log { total, start, next } => {
                if Instant::now() >= next.get() {
                    next.set(Instant::now() + Self::LOG_EVERY);
                    let rate = done as f64 / start.elapsed().as_secs_f64();
                    info!("progress: {done}/{total} results ({rate:.0} tasks/s)");
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
