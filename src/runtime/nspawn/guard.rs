//! guard: for an overlay toolbox entered by toolbox run from its image, a helper that
//! unmounts the toolbox once the session's toolbox process is gone, however it went.
//! toolbox unmounts after the last session itself; but when the container it runs in is
//! killed (the pod deleted, `docker kill`), every process in the container's cgroup dies
//! at once, and the overlay it mounted in the host's mount namespace would stay. The
//! guard is toolbox's own binary under another name, moved out of the container's
//! cgroup at once: it waits for its parent to end, then, holding the mount lock,
//! unmounts the toolbox unless another session or a process started in it still uses it,
//! and exits. It never runs longer than the session it guards.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::runtime::nspawn::enter::unmount_unused;
use crate::store::toolboxes;
use crate::sys;

/// The name the guard runs under (argv[0]).
pub const NAME: &str = "toolbox-overlay-guard";

/// How many times, 100 ms apart, the guard looks for the session's processes to be gone.
const LINGER_CHECKS: u32 = 50;

/// What the guard prints once it is out of the container's cgroup and watching.
const READY: &str = "guarding";

/// Starts the guard of toolbox `name` in `directory` for this process and waits until it
/// watches. Its standard streams are not the terminal's, and it has a process group of
/// its own, so the terminal's signals do not reach it.
pub fn start(directory: &Path, name: &str) -> Result<()> {
    let mut guard = Command::new("/proc/self/exe")
        .arg0(NAME)
        .arg(directory)
        .arg(name)
        .arg(std::process::id().to_string())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the guard that unmounts the toolbox after the session")?;
    let mut line = String::new();
    let stdout = guard.stdout.take().expect("piped");
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != READY {
        let _ = guard.kill();
        let _ = guard.wait();
        bail!("the guard that unmounts the toolbox after the session did not start");
    }
    Ok(())
}

/// The guard: `toolbox-overlay-guard DIRECTORY NAME PID`.
pub fn run(args: Vec<OsString>) -> Result<u8> {
    let [directory, name, pid] = args.as_slice() else {
        bail!("usage: {NAME} DIRECTORY NAME PID");
    };
    let directory = PathBuf::from(directory);
    let name = name.to_string_lossy().into_owned();
    let pid: u32 = pid.to_string_lossy().parse().context("PID")?;
    let proc_root = Path::new("/proc");
    sys::leave_cgroups(proc_root).context("cannot leave the container's control group")?;
    let parent = sys::pidfd(pid)?;
    // The parent may have ended before the handle was taken: then it is not ours.
    if sys::proc_stat(proc_root, std::process::id()).map(|s| s.parent) != Some(pid) {
        return Ok(0);
    }
    let mut out = std::io::stdout();
    writeln!(out, "{READY}")?;
    out.flush()?;
    sys::wait_exited(&parent)?;
    // The session's processes die with the container's other processes, not always
    // before the guard looks: they get a few seconds. Processes started in the toolbox
    // that run on (detached with setsid) keep it mounted, as after any session.
    for _ in 0..LINGER_CHECKS {
        let lock = toolboxes::lock_for_mount(&directory, &name)?;
        let lingering = unmount_unused(&directory, &name, proc_root)?;
        drop(lock);
        if lingering.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(0)
}
