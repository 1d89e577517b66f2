//! guard: for a session of toolbox run from its image, a helper that ends what the
//! session leaves on the host once the session's toolbox process is gone, however it
//! went. toolbox cleans up after a session itself; but when the container it runs in is
//! killed (the pod deleted, `docker kill`), every process in the container's control
//! group dies at once, and what toolbox made outside that group would stay: the overlay
//! it mounted in the host's mount namespace, or the command it started in its super
//! privileged container through the engine. The guard is toolbox's own binary under
//! another name, moved out of the container's control group at once; it waits for its
//! parent to end, then
//! - for a systemd-nspawn session, removes its `--target`'s stage (mounted beside the
//!   toolbox) and, for an overlay toolbox, holding the mount lock, unmounts it unless
//!   another session or a process started in it still uses it;
//! - for an SPC session, kills the session's command and what it started, and, holding
//!   the SPC's lock, stops the SPC (its idle main process) when nothing else runs in it;
//!
//! and exits. It never runs longer than the session it guards needs.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::runtime::nspawn::enter::unmount_unused;
use crate::store::session::processes_rooted;
use crate::store::toolboxes;
use crate::sys;
use crate::sys::signals::{self, Signal};

/// The name the guard runs under (argv[0]).
pub const NAME: &str = "toolbox-session-guard";

/// What the guard prints once it is out of the container's control group and watching.
const READY: &str = "guarding";

/// How many times, 100 ms apart, the guard looks for the session's processes to be gone.
const LINGER_CHECKS: u32 = 50;

/// What a guard cleans up after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    /// A systemd-nspawn session: its target's stage, the mount of an overlay toolbox.
    Nspawn,
    /// A session in a super privileged container: the host PIDs of the session's
    /// command (the engine's exec) and of the container's main process.
    Spc { session: u32, main: u32 },
}

/// Starts the guard of toolbox `name` in `directory` for this process and waits until it
/// watches. Its standard streams are not the terminal's, and it has a process group of
/// its own, so the terminal's signals do not reach it.
pub fn start(directory: &Path, name: &str, guarded: Guarded) -> Result<()> {
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0(NAME)
        .arg(directory)
        .arg(name)
        .arg(std::process::id().to_string());
    if let Guarded::Spc { session, main } = guarded {
        command.args([session.to_string(), main.to_string()]);
    }
    let mut guard = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the guard that cleans up after the session")?;
    let mut line = String::new();
    let stdout = guard.stdout.take().expect("piped");
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != READY {
        let _ = guard.kill();
        let _ = guard.wait();
        bail!(
            "the guard that cleans up after the session did not start: {}",
            line.trim()
        );
    }
    Ok(())
}

/// The guard: `toolbox-session-guard DIRECTORY NAME PID [SESSION MAIN]`.
pub fn run(args: Vec<OsString>) -> Result<u8> {
    let number = |arg: &OsString| -> Result<u32> { arg.to_string_lossy().parse().context("a PID") };
    let (directory, name, pid, guarded) = match args.as_slice() {
        [directory, name, pid] => (directory, name, number(pid)?, Guarded::Nspawn),
        [directory, name, pid, session, main] => {
            let spc = Guarded::Spc {
                session: number(session)?,
                main: number(main)?,
            };
            (directory, name, number(pid)?, spc)
        }
        _ => bail!("usage: {NAME} DIRECTORY NAME PID [SESSION MAIN]"),
    };
    let directory = PathBuf::from(directory);
    let name = name.to_string_lossy().into_owned();
    let proc_root = Path::new("/proc");
    let watching = (|| -> Result<_> {
        sys::leave_cgroups(proc_root).context("cannot leave the container's control group")?;
        let parent = sys::pidfd(pid).context("cannot watch toolbox's process")?;
        let spc = match guarded {
            Guarded::Spc { session, main } => match spc_handles(proc_root, session, main) {
                Some(handles) => Some(handles),
                // The session or its container ended already: nothing to guard.
                None => return Ok(None),
            },
            Guarded::Nspawn => None,
        };
        Ok(Some((parent, spc)))
    })();
    // Said to toolbox, which waits for the first line.
    let mut out = std::io::stdout();
    let (parent, spc) = match watching {
        Ok(Some(watching)) => watching,
        Ok(None) => {
            writeln!(out, "{READY}")?;
            return Ok(0);
        }
        Err(e) => {
            writeln!(out, "{e:#}")?;
            return Ok(1);
        }
    };
    // The parent may have ended before the handle was taken: then it is not ours.
    if sys::proc_stat(proc_root, std::process::id()).map(|s| s.parent) != Some(pid) {
        return Ok(0);
    }
    writeln!(out, "{READY}")?;
    out.flush()?;
    sys::wait_exited(&parent)?;
    // Until its parent reaps it, the process is still there (a zombie), and what it
    // leaves is not yet taken for stale.
    for _ in 0..LINGER_CHECKS {
        if sys::proc_stat(proc_root, pid).is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match spc {
        None => {
            toolboxes::remove_stale_stages(&directory, &name)?;
            unmount_when_unused(&directory, &name, proc_root)
        }
        Some((session_fd, session, main_fd, main)) => end_spc_session(
            &directory,
            &name,
            proc_root,
            (session_fd, session),
            (main_fd, main),
        ),
    }?;
    Ok(0)
}

/// Handles on an SPC's session process and main process, the PIDs the engine gave: `None`
/// when either is gone, or its PID is another process's now (the main process is no
/// longer `toolbox-idle`, or the session's root is not the container's).
fn spc_handles(proc_root: &Path, session: u32, main: u32) -> Option<(OwnedFd, u32, OwnedFd, u32)> {
    let root = |pid| root_of(proc_root, pid);
    // Each handle taken first, then the process it holds checked: a PID reused after
    // the check would not be the one held.
    let main_fd = sys::pidfd(main).ok()?;
    let cmdline = std::fs::read(proc_root.join(main.to_string()).join("cmdline")).ok()?;
    let program = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    if !program.ends_with(crate::engine::IDLE_NAME.as_bytes()) {
        return None;
    }
    let session_fd = sys::pidfd(session).ok()?;
    (root(session)? == root(main)?).then_some((session_fd, session, main_fd, main))
}

/// The session's processes die with the container's other processes, not always before
/// the guard looks: they get a few seconds. Processes started in the toolbox that run on
/// (detached with setsid) keep it mounted, as after any session.
fn unmount_when_unused(directory: &Path, name: &str, proc_root: &Path) -> Result<()> {
    for _ in 0..LINGER_CHECKS {
        let lock = toolboxes::lock_for_mount(directory, name)?;
        let lingering = unmount_unused(directory, name, proc_root)?;
        drop(lock);
        if lingering.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Kills the SPC session's command and its descendants, then stops the SPC when its main
/// process is the only one left in it (of the processes whose root is the container's).
fn end_spc_session(
    directory: &Path,
    name: &str,
    proc_root: &Path,
    (session_fd, session): (OwnedFd, u32),
    (main_fd, main): (OwnedFd, u32),
) -> Result<()> {
    // Stopped first, so that none forks or is handed to another parent meanwhile; the
    // tree is read again until stopping finds no more.
    signals::send_pidfd(&session_fd, Signal::STOP);
    let mut tree = Vec::new();
    for _ in 0..LINGER_CHECKS {
        let found = descendants(proc_root, session);
        let new: Vec<u32> = found
            .iter()
            .copied()
            .filter(|p| !tree.contains(p))
            .collect();
        if new.is_empty() {
            break;
        }
        for &pid in &new {
            signals::send(pid as i32, Signal::STOP);
        }
        tree.extend(new);
    }
    signals::send_pidfd(&session_fd, Signal::KILL);
    for pid in tree {
        signals::send(pid as i32, Signal::KILL);
    }
    let Some(container) = root_of(proc_root, main) else {
        return Ok(());
    };
    // The killed processes take a moment to let go of the container; another session's
    // keep it running, and its toolbox stops it after.
    for _ in 0..LINGER_CHECKS {
        let lock = toolboxes::lock_for_spc(directory, name)?;
        let others = processes_rooted(proc_root, |m| (m.dev(), m.ino()) == container)?;
        if others.iter().all(|&pid| pid as u32 == main) {
            // toolbox-idle ends on it, and the container stops.
            signals::send_pidfd(&main_fd, Signal::TERM);
            break;
        }
        drop(lock);
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// What process `pid` has as its root directory (device and inode).
fn root_of(proc_root: &Path, pid: u32) -> Option<(u64, u64)> {
    let root = std::fs::metadata(proc_root.join(pid.to_string()).join("root")).ok()?;
    Some((root.dev(), root.ino()))
}

/// The processes descending from `ancestor` (which may be gone: its children are then
/// another's, and not found).
fn descendants(proc_root: &Path, ancestor: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = processes_rooted(proc_root, |_| true)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|pid| {
            let pid = pid as u32;
            Some((pid, sys::proc_stat(proc_root, pid)?.parent))
        })
        .collect();
    let mut tree = vec![ancestor];
    let mut next = 0;
    while next < tree.len() {
        for &(pid, parent) in &parents {
            if parent == tree[next] && !tree.contains(&pid) {
                tree.push(pid);
            }
        }
        next += 1;
    }
    tree.remove(0);
    tree
}
