//! exit: the exit statuses toolbox reports and the error kinds that decide them, the
//! bottom of the crate: every layer may use it, it uses none. The command's own status
//! passes through; toolbox's own failures are 125, as container tools use; a command that
//! cannot run is 126 or 127, as in a shell; a signal that stopped toolbox is 128 + N.

use std::fmt;

/// Exit status for every failure of toolbox itself.
pub const TOOLBOX_FAILED: u8 = 125;

/// Why the command cannot run; the exit status follows the shell's convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Exit status 127. `hint`: what the user may have meant instead.
    NotFound {
        command: String,
        toolbox: String,
        hint: Option<String>,
    },
    /// Exit status 127: `host-exec`'s command is not on the host's `PATH`.
    NotOnHost { command: String },
    /// Exit status 126.
    NotExecutable { command: String, reason: String },
}

impl CommandError {
    pub fn exit_status(&self) -> u8 {
        match self {
            CommandError::NotFound { .. } | CommandError::NotOnHost { .. } => 127,
            CommandError::NotExecutable { .. } => 126,
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::NotFound {
                command,
                toolbox,
                hint,
            } => {
                write!(f, "`{command}`: command not found in toolbox `{toolbox}`")?;
                match hint {
                    Some(hint) => write!(f, "; {hint}"),
                    None => Ok(()),
                }
            }
            CommandError::NotOnHost { command } => {
                write!(f, "`{command}`: command not found on the host")
            }
            CommandError::NotExecutable { command, reason } => write!(f, "`{command}`: {reason}"),
        }
    }
}

impl std::error::Error for CommandError {}

/// Work was stopped by a signal; toolbox exits with 128 + the signal number.
#[derive(Debug)]
pub struct Interrupted(pub i32);

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupted by signal {}", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// The exit status to pass on for a command that ended with `status`: its own, or 128 + N
/// when signal N killed it, as shells report.
pub fn of_command(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => TOOLBOX_FAILED,
    }
}

/// The exit status for an error: 126 or 127 when the command cannot run, 128 + N when
/// signal N interrupted toolbox, [`TOOLBOX_FAILED`] for everything else.
pub fn status_of(error: &anyhow::Error) -> u8 {
    if let Some(e) = error.downcast_ref::<CommandError>() {
        return e.exit_status();
    }
    if let Some(Interrupted(signal)) = error.downcast_ref::<Interrupted>() {
        return 128 + *signal as u8;
    }
    TOOLBOX_FAILED
}
