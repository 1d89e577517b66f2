//! session: the record of a toolbox's running sessions. Each entry into a toolbox is one
//! systemd-nspawn process (toolbox execs into it, so it keeps toolbox's PID; for overlay
//! storage toolbox stays as its parent, and the PID is toolbox's) with its own
//! `--machine=` name; a small file per session in `$TOOLBOX_DIRECTORY/.NAME.sessions/`
//! names that PID with its start time, so `list` and `rm` know which sessions are alive
//! even after PIDs are reused. Records of dead sessions are removed when found.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A running session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub pid: i32,
    pub machine: String,
    /// The container or process it debugs (`--target`), as given.
    pub target: Option<String>,
}

fn records_dir(directory: &Path, name: &str) -> PathBuf {
    directory.join(format!(".{name}.sessions"))
}

/// The start time (field 22 of `/proc/PID/stat`) of a running process, which tells it
/// from a later one that reused its PID. `None` for a process that is gone or a zombie
/// (ended, not yet reaped by its parent).
fn start_time(proc_root: &Path, pid: i32) -> Option<u64> {
    let stat = crate::sys::proc_stat(proc_root, u32::try_from(pid).ok()?)?;
    (stat.state != 'Z').then_some(stat.start_time)
}

/// Records the calling process as a session of toolbox `name` under `machine`, debugging
/// `target` (a word without spaces) if it has one.
pub fn register(
    directory: &Path,
    proc_root: &Path,
    name: &str,
    machine: &str,
    target: Option<&str>,
) -> Result<()> {
    let dir = records_dir(directory, name);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let pid = std::process::id() as i32;
    let started = start_time(proc_root, pid).context("cannot read this process's start time")?;
    let record = dir.join(pid.to_string());
    let partial = dir.join(format!(".{pid}.partial"));
    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)?;
        match target {
            Some(target) => writeln!(file, "{started} {machine} {target}")?,
            None => writeln!(file, "{started} {machine}")?,
        }
        fs::rename(&partial, &record)
    };
    write().with_context(|| format!("cannot record the session in {}", record.display()))
}

/// Removes the calling process's record: its session of toolbox `name` has ended.
pub fn end(directory: &Path, name: &str) -> Result<()> {
    let record = records_dir(directory, name).join(std::process::id().to_string());
    match fs::remove_file(&record) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", record.display()))
        }
        _ => Ok(()),
    }
}

/// The live sessions of toolbox `name`; records of ended ones are removed on the way.
pub fn live(directory: &Path, proc_root: &Path, name: &str) -> Result<Vec<Session>> {
    let dir = records_dir(directory, name);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut sessions = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let record = fs::read_to_string(&path).unwrap_or_default();
        let mut fields = record.split_whitespace();
        let started: Option<u64> = fields.next().and_then(|s| s.parse().ok());
        let machine = fields.next().unwrap_or_default();
        if started.is_some() && start_time(proc_root, pid) == started {
            sessions.push(Session {
                pid,
                machine: machine.to_string(),
                target: fields.next().map(String::from),
            });
        } else {
            // Ended: best effort, a reader without write access just skips it.
            let _ = fs::remove_file(&path);
        }
    }
    sessions.sort_by_key(|s| s.pid);
    Ok(sessions)
}

/// Removes the session records directory of a toolbox that is gone.
pub fn forget(directory: &Path, name: &str) -> Result<()> {
    let dir = records_dir(directory, name);
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Processes whose root directory is `root` itself, as `/proc/PID/root` shows it (the
/// same device and inode): a copy toolbox's, after its sessions ended, are processes
/// started inside and left running (the host's PID namespace is shared, so nothing ends
/// them with the session).
pub fn rooted_at(root: &Path, proc_root: &Path) -> Result<Vec<i32>> {
    use std::os::unix::fs::MetadataExt;
    let wanted = match fs::metadata(root) {
        Ok(meta) => (meta.dev(), meta.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", root.display())),
    };
    processes_rooted(proc_root, |meta| (meta.dev(), meta.ino()) == wanted)
}

/// The processes whose root directory (`/proc/PID/root`, in the process's own mount
/// namespace) `rooted` accepts, in PID order.
pub fn processes_rooted(
    proc_root: &Path,
    rooted: impl Fn(&fs::Metadata) -> bool,
) -> Result<Vec<i32>> {
    let entries =
        fs::read_dir(proc_root).with_context(|| format!("cannot list {}", proc_root.display()))?;
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if fs::metadata(entry.path().join("root")).is_ok_and(|m| rooted(&m)) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Ends sessions: SIGTERM to each systemd-nspawn (which then kills its payload), and
/// SIGKILL to any still there after `grace`.
pub fn stop(directory: &Path, proc_root: &Path, name: &str, grace: Duration) -> Result<()> {
    let running = || {
        Ok(live(directory, proc_root, name)?
            .iter()
            .map(|s| s.pid)
            .collect())
    };
    let left = terminate(running, grace)?;
    anyhow::ensure!(
        left.is_empty(),
        "sessions {left:?} of `{name}` did not stop"
    );
    Ok(())
}

/// Ends the processes `running` lists: SIGTERM to each, SIGKILL to those still listed
/// after `grace`; returns any listed even then.
pub fn terminate(
    mut running: impl FnMut() -> Result<Vec<i32>>,
    grace: Duration,
) -> Result<Vec<i32>> {
    for pid in running()? {
        crate::sys::signals::send(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    loop {
        let left = running()?;
        if left.is_empty() {
            return Ok(left);
        }
        if Instant::now() >= deadline {
            for pid in left {
                crate::sys::signals::send(pid, rustix::process::Signal::KILL);
            }
            std::thread::sleep(Duration::from_millis(200));
            return running();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_this_process() {
        let pid = std::process::id() as i32;
        assert!(start_time(Path::new("/proc"), pid).is_some());
        assert!(start_time(Path::new("/proc"), i32::MAX).is_none());
    }

    #[test]
    fn records_follow_live_processes() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = Path::new("/proc");
        register(dir.path(), proc_root, "core-x", "core-x-1", Some("web")).unwrap();
        let me = std::process::id() as i32;
        assert_eq!(
            live(dir.path(), proc_root, "core-x").unwrap(),
            [Session {
                pid: me,
                machine: "core-x-1".into(),
                target: Some("web".into()),
            }]
        );
        register(dir.path(), proc_root, "core-x", "core-x-1", None).unwrap();
        assert_eq!(
            live(dir.path(), proc_root, "core-x").unwrap()[0].target,
            None
        );

        // A record whose PID is gone, and one whose PID was reused by another process.
        let records = dir.path().join(".core-x.sessions");
        fs::write(records.join(i32::MAX.to_string()), "1 core-x-2\n").unwrap();
        fs::write(records.join("1"), "999999999999 core-x-3\n").unwrap();
        assert_eq!(live(dir.path(), proc_root, "core-x").unwrap().len(), 1);
        assert!(!records.join("1").exists());
        end(dir.path(), "core-x").unwrap();
        assert!(live(dir.path(), proc_root, "core-x").unwrap().is_empty());
        end(dir.path(), "core-x").unwrap();
        assert!(live(dir.path(), proc_root, "core-y").unwrap().is_empty());
        forget(dir.path(), "core-x").unwrap();
        assert!(!records.exists());
    }
}
