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
