//! host_exec: `host-exec CMD ARGS...` inside a toolbox runs CMD on the host, in the
//! namespaces of host PID 1 (mount, UTS, IPC, network, PID, cgroup), for the things that
//! must happen there (`useradd` changing the host's /etc/passwd, with the host's own
//! SELinux labels and audit). It is toolbox's own binary, bound read-only into every
//! toolbox and called under that name. It returns CMD's exit status.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::exit::CommandError;

/// The name toolbox answers to when it should act as host-exec.
pub const NAME: &str = "host-exec";

/// Where the binary is bound inside every toolbox (on the default `PATH`).
pub const PATH_IN_TOOLBOX: &str = "/usr/local/bin/host-exec";

/// Runs `args` (without the program name) on the host; returns the exit status to use.
/// `host_root` is where the host's `/` is mounted in the toolbox (`$HOST`), used to map
/// the working directory.
pub fn run(args: Vec<OsString>, proc_root: &Path, host_root: Option<&Path>) -> Result<u8> {
    let Some((program, rest)) = args.split_first() else {
        bail!("usage: host-exec CMD [ARGS...]");
    };
    if !crate::sys::is_root() {
        bail!(
            "host-exec needs root inside the toolbox: it enters the host's namespaces, which \
             only root may; run it as root (the toolbox's default user)"
        );
    }
    let cwd = std::env::current_dir().ok();
    // Outside the toolbox: in another mount namespace than this process.
    let inside = |pid| crate::sys::shares_mount_namespace(proc_root, pid).unwrap_or(true);
    let host = crate::host::host_process(proc_root, inside)
        .context("cannot find a process in the host's namespaces")?;
    crate::sys::join_host(proc_root, host).context("cannot enter the host's namespaces")?;
    // setns into a mount namespace leaves the root and working directory at its root.
    let dir = host_dir(cwd.as_deref(), host_root);
    let command = program.to_string_lossy().into_owned();
    let status = match Command::new(program).args(rest).current_dir(&dir).status() {
        Ok(status) => status,
        // As a shell (and the launcher, inside the toolbox) reports a command that
        // cannot run: 127 not found, 126 not executable.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CommandError::NotOnHost { command }.into());
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(CommandError::NotExecutable {
                command,
                reason: "not executable on the host (permission denied)".into(),
            }
            .into());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot run `{command}` on the host")),
    };
    Ok(crate::exit::of_command(status))
}

/// The host directory matching the toolbox's working directory: below the host root
/// mount it is the same place on the host; anywhere else, the host's `/`.
pub fn host_dir(cwd: Option<&Path>, host_root: Option<&Path>) -> PathBuf {
    let inside = cwd
        .zip(host_root)
        .and_then(|(cwd, root)| cwd.strip_prefix(root).ok());
    match inside {
        Some(relative) => Path::new("/").join(relative),
        None => PathBuf::from("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_directory_mapping() {
        let root = Some(Path::new("/media/root"));
        assert_eq!(
            host_dir(Some(Path::new("/media/root/etc/ssh")), root),
            PathBuf::from("/etc/ssh")
        );
        assert_eq!(
            host_dir(Some(Path::new("/media/root")), root),
            PathBuf::from("/")
        );
        assert_eq!(host_dir(Some(Path::new("/root")), root), PathBuf::from("/"));
        assert_eq!(
            host_dir(Some(Path::new("/media/rootfs")), root),
            PathBuf::from("/")
        );
        assert_eq!(host_dir(None, root), PathBuf::from("/"));
        assert_eq!(
            host_dir(Some(Path::new("/media/root/x")), None),
            PathBuf::from("/")
        );
    }
}
