//! Progress of a long replay (recovery, verify, restore): an indicatif spinner with the
//! records/s on a terminal, a log line every [`reservoir_wal::PROGRESS_RECORDS_INTERVAL`]
//! records otherwise (CI, journald, a pipe).

use std::io::IsTerminal as _;
use std::time::Instant;

use reservoir_engine::Lsn;

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    what: &'static str,
    started: Instant,
}

impl Progress {
    pub fn new(what: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg}: {pos} records, {per_sec}, {elapsed}")
                    .expect("a valid template"),
            );
            bar.set_message(what);
            bar
        });
        Progress { bar, what, started: Instant::now() }
    }

    /// `records` replayed so far, the last at `lsn`.
    pub fn update(&self, lsn: Lsn, records: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(records),
            None => {
                let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
                eprintln!(
                    "{}: {records} records replayed, at LSN {}, {:.0} records/s",
                    self.what,
                    lsn.0,
                    records as f64 / seconds
                );
            }
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A bar that fills over a run of known length (a benchmark), on a terminal only.
pub struct Countdown {
    bar: Option<indicatif::ProgressBar>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Countdown {
    pub fn start(what: &'static str, seconds: f64) -> Countdown {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Countdown { bar: None, stop, ticker: None };
        }
        let bar = indicatif::ProgressBar::new((seconds * 10.0) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {elapsed}/{duration}").expect("a valid template"),
        );
        bar.set_message(what);
        let (ticking, flag) = (bar.clone(), stop.clone());
        let ticker = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                ticking.inc(1);
            }
        });
        Countdown { bar: Some(bar), stop, ticker: Some(ticker) }
    }

    pub fn finish(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
