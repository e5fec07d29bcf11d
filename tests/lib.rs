//! Support for the end-to-end tests in this folder. The tests themselves are test targets of
//! the `reservoir-tools` package (see `tools/Cargo.toml`), so that Cargo builds the real
//! `reservoir` binary first and hands them its path in `CARGO_BIN_EXE_reservoir`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The longest any one end-to-end command may run before the test calls it hung.
pub const COMMAND_DURATION_MAX: Duration = Duration::from_secs(120);

/// Runs `binary` with `arguments`, waits (bounded) and returns what it printed.
pub fn run(binary: &Path, arguments: &[&str]) -> Output {
    let mut child = Command::new(binary)
        .args(arguments)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > COMMAND_DURATION_MAX {
            let _ = child.kill();
            panic!("{} {arguments:?} ran past {COMMAND_DURATION_MAX:?}", binary.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
