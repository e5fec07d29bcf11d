//! Support for the end-to-end tests in this folder. The tests themselves are test targets of
//! the `reservoir-tools` package (see `tools/Cargo.toml`), so that Cargo builds the real
//! `reservoir` binary first and hands them its path in `CARGO_BIN_EXE_reservoir`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// The longest any one end-to-end command may run before the test calls it hung.
pub const COMMAND_DURATION_MAX: Duration = Duration::from_secs(120);

/// Runs `binary` with `arguments`, waits (bounded) and returns what it printed. Output is read
/// while the child runs, so a chatty child never blocks on a full pipe.
pub fn run(binary: &Path, arguments: &[&str]) -> Output {
    run_in(binary, arguments, Path::new("."))
}

/// [`run`] in the working directory `directory`.
pub fn run_in(binary: &Path, arguments: &[&str], directory: &Path) -> Output {
    let child = Command::new(binary)
        .args(arguments)
        .current_dir(directory)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(COMMAND_DURATION_MAX) {
        Ok(output) => output.expect("wait for the child"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{} {arguments:?} ran past {COMMAND_DURATION_MAX:?}", binary.display());
        }
    }
}

/// A long-running child (a server, a gateway) and the lines it printed until it was ready.
/// Killed when dropped.
pub struct Spawned {
    pub child: std::process::Child,
    pub lines: Vec<String>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `binary arguments` in `directory` (`RUST_LOG=warn`, stderr dropped) and waits, at
/// most `COMMAND_DURATION_MAX`, for a line of its stdout that starts with `ready`. Its stdout
/// is drained afterwards, so it never blocks on a full pipe. `Err` has the lines printed
/// before it exited or the wait ran out.
pub fn spawn_until(binary: &Path, arguments: &[&str], directory: &Path, ready: &str) -> Result<Spawned, Vec<String>> {
    use std::io::BufRead as _;
    let mut child = Command::new(binary)
        .args(arguments)
        .current_dir(directory)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
    let stdout = child.stdout.take().expect("piped");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + COMMAND_DURATION_MAX;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = receiver.recv_timeout(left) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(lines);
        };
        let done = line.starts_with(ready);
        lines.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || while receiver.recv().is_ok() {});
    Ok(Spawned { child, lines })
}
