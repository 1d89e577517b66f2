//! sys: the few system calls toolbox's file handling rests on, with the reasons they are
//! used. All go through rustix's safe wrappers; this module holds no `unsafe`.
//!
//! Containment inside a toolbox tree is the kernel's job, not string checks that a later
//! archive entry could invalidate: paths are resolved with `openat2(RESOLVE_IN_ROOT)`
//! (Linux 5.6), which treats the tree's root as `/` for `..` and for symlinks, absolute or
//! relative, the way the container will see them.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};

pub use rustix::io::Errno;

/// Opens `path` as a directory to resolve other paths against.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens `path` (relative, `/`-separated bytes) inside `root` with the container's view of
/// symlinks: nothing outside `root` can be reached. `flags` adds to `O_CLOEXEC`; pass
/// `O_NOFOLLOW` to refuse a symlink as the last component. `mode` applies to a file
/// created by `O_CREAT`.
pub fn open_in_root(root: impl AsFd, path: &[u8], flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
    let path = if path.is_empty() { &b"."[..] } else { path };
    // RESOLVE_NO_MAGICLINKS: /proc/self/root-style links would jump out of the tree.
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    loop {
        match rfs::openat2(
            root.as_fd(),
            path,
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
            resolve,
        ) {
            // openat2 with RESOLVE_IN_ROOT returns EAGAIN when a concurrent rename raced
            // the lookup; retrying is the documented answer (openat2(2)).
            Err(Errno::AGAIN) => continue,
            Err(Errno::NOSYS) => {
                return Err(io::Error::other(
                    "the kernel lacks openat2 (Linux 5.6 or newer is required)",
                ));
            }
            result => return Ok(result?),
        }
    }
}

/// Flushes the filesystem holding `fd` to disk: one call for a whole tree, instead of an
/// fsync per file.
pub fn sync_filesystem(fd: impl AsFd) -> io::Result<()> {
    Ok(rfs::syncfs(fd)?)
}

/// Takes an exclusive `flock` on `fd`, waiting for it.
pub fn lock_exclusive(fd: impl AsFd) -> io::Result<()> {
    Ok(rfs::flock(fd, rfs::FlockOperation::LockExclusive)?)
}

/// Whether a process with this ID exists (signal 0).
pub fn process_exists(pid: i32) -> bool {
    match rustix::process::Pid::from_raw(pid) {
        Some(pid) => !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH)),
        None => false,
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Sends `signal` to process `pid`; a process that is already gone is not an error.
pub fn signal(pid: i32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// What toolbox reads of `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `Z` (zombie), ...
    pub state: char,
    /// Field 4.
    pub parent: u32,
    /// Field 22, in clock ticks since boot: with the PID, it names one process.
    pub start_time: u64,
}

/// Reads `/proc/PID/stat` under `proc_root`; `None` when the process is gone.
pub fn proc_stat(proc_root: &std::path::Path, pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        parent: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_of_this_process() {
        let stat = proc_stat(std::path::Path::new("/proc"), std::process::id()).unwrap();
        assert_eq!(stat.parent, std::os::unix::process::parent_id());
        assert_ne!(stat.state, 'Z');
        assert!(proc_stat(std::path::Path::new("/proc"), u32::MAX).is_none());
    }
}
