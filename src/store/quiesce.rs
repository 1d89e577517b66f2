//! quiesce: before a toolbox is removed or replaced, nothing may run in it: its sessions
//! are refused or stopped, the processes left in it likewise (those whose root is its
//! tree, or that use its overlay), and the overlay is unmounted.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::host::ui;
use crate::store::toolboxes::{self, Lock};
use crate::store::{overlay, session};

/// How long `rm --force` and `update --force` give sessions to end before killing them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Under the toolbox's lock: refuses when sessions run, or stops them with `force`.
fn settle_sessions(directory: &Path, proc_root: &Path, name: &str, force: bool) -> Result<()> {
    let sessions = session::live(directory, proc_root, name)?;
    if sessions.is_empty() {
        return Ok(());
    }
    if !force {
        bail!(
            "toolbox `{name}` has {} running session(s) (PID {}); use --force to stop them",
            sessions.len(),
            ui::pid_list(&sessions.iter().map(|s| s.pid).collect::<Vec<_>>())
        );
    }
    session::stop(directory, proc_root, name, STOP_GRACE)
}

/// Under the toolbox's creation lock, before its tree is removed or replaced: no session
/// may run (refused, or stopped with `force`) and the overlay, if any, is unmounted.
/// Returns the mount lock, which keeps new sessions out until it is dropped.
pub fn quiesce(directory: &Path, proc_root: &Path, name: &str, force: bool) -> Result<Lock> {
    settle_sessions(directory, proc_root, name, force)?;
    // Ending sessions take the mount lock to unmount, so it is taken only now.
    let lock = toolboxes::lock_for_mount(directory, name)?;
    if !session::live(directory, proc_root, name)?.is_empty() {
        bail!("a session of toolbox `{name}` started meanwhile; try again");
    }
    let path = directory.join(name);
    let lingering = lingering(&path, proc_root)?;
    if !lingering.is_empty() {
        if !force {
            bail!(
                "processes started in toolbox `{name}` still run (PID {}); stop them or use --force",
                ui::pid_list(&lingering)
            );
        }
        stop_processes(&path, proc_root)?;
    }
    overlay::unmount(&path)?;
    Ok(lock)
}

/// Processes started in the toolbox at `path` that outlived their session: those on its
/// mounted overlay, or those whose root is its tree.
fn lingering(path: &Path, proc_root: &Path) -> Result<Vec<i32>> {
    if overlay::is_mounted(path)? {
        overlay::processes(path, proc_root)
    } else {
        session::rooted_at(path, proc_root)
    }
}

/// Ends processes left running in a toolbox, as sessions are ended.
fn stop_processes(path: &Path, proc_root: &Path) -> Result<()> {
    let left = session::terminate(|| lingering(path, proc_root), STOP_GRACE)?;
    anyhow::ensure!(
        left.is_empty(),
        "processes {} in {} did not stop",
        ui::pid_list(&left),
        path.display()
    );
    Ok(())
}
