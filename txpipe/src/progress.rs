//! Progress display of a local run: an indicatif bar on a terminal (`--progress auto` or
//! `always`), or a log line on stderr every 5 s (`never`, or stderr is not a terminal).
//!
//! The bar's length is the run's length: `--count` until the producer reports its planned
//! count ([`txpipe_client::summary::Summary::planned`]), then that.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use txpipe_client::broker::v1::StreamInfo;

/// How often a log line is written without a bar.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The display (see the module docs).
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    len: u64,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    /// A display for `mode` (`auto`, `always`, `never`) of a run of `len` transactions that
    /// started at `started`.
    pub fn new(mode: &str, len: u64, started: Instant) -> Self {
        let show = match mode {
            "always" => true,
            "never" => false,
            _ => std::io::stderr().is_terminal(),
        };
        let bar = show.then(|| {
            let b = indicatif::ProgressBar::new(len);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} decided  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        });
        Self {
            bar,
            len,
            started,
            last_log: Instant::now(),
        }
    }

    /// The run's length in transactions.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Sets the run's length (the producer's planned count).
    pub fn set_len(&mut self, len: u64) {
        self.len = len;
        if let Some(b) = &self.bar {
            b.set_length(len);
        }
    }

    /// Shows `resolved` transactions and the `transactions` stream's figures.
    pub fn show(&mut self, resolved: u64, info: &StreamInfo) {
        let rate = resolved as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        if let Some(b) = &self.bar {
            b.set_position(resolved.min(self.len));
            b.set_message(format!(
                "stored {}  pending {}  in flight {}  {rate:.0} tx/s",
                info.end_offset, info.pending, info.in_flight
            ));
        } else if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            eprintln!(
                "txpipe: {resolved}/{} resolved, {} stored, {} pending, {rate:.0} tx/s",
                self.len, info.end_offset, info.pending
            );
        }
    }

    /// Prints a line above the bar, or to stderr without one.
    pub fn say(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("txpipe: {line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
