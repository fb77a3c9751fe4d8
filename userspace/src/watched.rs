//! A command bufscope runs and watches for exactly its lifetime (`record -- CMD`, `live --
//! CMD`): started once the probes are attached, its processes optionally the only ones kept,
//! its exit the end of the session, its status bufscope's.

use std::process::{ExitStatus, Stdio};

use crate::probes::{LockProbes, ProbeError, descendants, keep_self_in};

/// Why the command could not be run or followed; each names the command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("running {0}")]
    Run(String, #[source] std::io::Error),
    #[error("keeping the command's processes")]
    Processes(#[source] ProbeError),
}

/// Where the command's standard input and output go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandStdio {
    /// bufscope's own (`record`, `live --no-tui`).
    Inherit,
    /// /dev/null, all three: the full-screen view owns the terminal.
    Null,
}

/// A running command whose lifetime bounds a session.
#[derive(Debug)]
pub struct Watched {
    child: tokio::process::Child,
    pid: u32,
    shown: String,
    /// Keep only its processes' lock waits (`--only-cmd`).
    only: bool,
}

impl Watched {
    /// Starts `argv` once the probes are attached. With `only`, the child puts its own process
    /// id in the probes' filter between fork and exec, so that not one of its lock waits is
    /// left out (the parent learns the id only after the exec).
    pub fn spawn(
        argv: &[String],
        probes: &mut LockProbes,
        only: bool,
        stdio: CommandStdio,
    ) -> Result<Self, CommandError> {
        let shown = argv.join(" ");
        let error = |e| CommandError::Run(shown.clone(), e);
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| error(std::io::Error::other("no command given")))?;
        let mut command = tokio::process::Command::new(program);
        command.args(args);
        if stdio == CommandStdio::Null {
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        }
        if only {
            let map = probes.processes_map_fd();
            // SAFETY: between fork and exec, one bpf(2) call on stack data (keep_self_in is
            // async-signal-safe); the map descriptor is the parent's, open until the exec.
            unsafe {
                command.pre_exec(move || {
                    if keep_self_in(map) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().map_err(error)?;
        let pid = child.id().unwrap_or(0);
        if only {
            // Also in the parent's own list, so that its children are followed.
            probes.keep_process(pid).map_err(CommandError::Processes)?;
        }
        Ok(Self {
            child,
            pid,
            shown,
            only,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line as given, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// With `--only-cmd`, keeps the processes the command started since the last call (from
    /// when they are seen: called each second, a child that lives less than that may be
    /// missed).
    pub fn follow(&self, probes: &mut LockProbes) -> Result<(), CommandError> {
        if self.only {
            for pid in descendants(std::path::Path::new("/proc"), self.pid) {
                probes.keep_process(pid).map_err(CommandError::Processes)?;
            }
        }
        Ok(())
    }
}

/// The watched command's exit, or never without one: a session loop's command arm.
pub async fn command_exit(watched: Option<&mut Watched>) -> Result<ExitStatus, CommandError> {
    match watched {
        Some(w) => {
            let status = w.child.wait().await;
            status.map_err(|e| CommandError::Run(w.shown.clone(), e))
        }
        None => std::future::pending().await,
    }
}

/// The status to exit with after the command ended so, as a shell reports it: its exit code,
/// or 128 + the signal that killed it.
pub fn shell_status(status: ExitStatus) -> u8 {
    status
        .code()
        .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
        .map_or(1, |c| c.clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn statuses_are_the_shell_s() {
        assert_eq!(shell_status(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(shell_status(ExitStatus::from_raw(0)), 0);
        // Killed by SIGKILL (9): 137, as sh says.
        assert_eq!(shell_status(ExitStatus::from_raw(9)), 137);
    }
}
