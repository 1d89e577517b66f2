//! sys: the few system calls toolbox rests on, with the reasons they are used, and the
//! only place `unsafe` is allowed (each with a SAFETY line). Most go through rustix's safe
//! wrappers; signal handling, which needs libc, is [`signals`].
//!
//! Containment inside a toolbox tree is the kernel's job, not string checks that a later
//! archive entry could invalidate: paths are resolved with `openat2(RESOLVE_IN_ROOT)`
//! (Linux 5.6), which treats the tree's root as `/` for `..` and for symlinks, absolute or
//! relative, the way the container will see them.

pub mod signals;

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};
use rustix::mount::{MountFlags, UnmountFlags};

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

/// `statfs`'s `f_type` for overlayfs (linux/magic.h).
const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// Whether an overlay filesystem is mounted at `path`: an overlay, on another device than
/// the directory holding it (so an overlay toolbox directory that itself lies on overlayfs,
/// as inside a container, does not count).
pub fn is_overlay_mount(path: &Path) -> io::Result<bool> {
    let here = std::fs::symlink_metadata(path)?;
    let parent = std::fs::symlink_metadata(path.join(".."))?;
    Ok(here.dev() != parent.dev() && rfs::statfs(path)?.f_type as u64 == OVERLAYFS_SUPER_MAGIC)
}

/// Mounts an overlay filesystem at `target`; `options` as overlayfs(5) takes them.
pub fn mount_overlay(target: &Path, options: &CStr) -> io::Result<()> {
    Ok(rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        Some(options),
    )?)
}

/// Unmounts the filesystem at `target`; fails with `EBUSY` while a process uses it.
pub fn unmount(target: &Path) -> io::Result<()> {
    Ok(rustix::mount::unmount(target, UnmountFlags::empty())?)
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

/// Moves the calling thread into the namespace `fd` refers to (`/proc/PID/ns/NAME`,
/// opened earlier so the namespace cannot go away meanwhile): `net`, `ipc` or `uts`, the
/// kinds a process with other threads may join. A child started or a program executed
/// afterwards from this thread is in it too.
pub fn join_namespace(fd: impl AsFd, name: &str) -> io::Result<()> {
    use rustix::thread::LinkNameSpaceType as Kind;
    let kind = match name {
        "net" => Kind::Network,
        "ipc" => Kind::InterProcessCommunication,
        "uts" => Kind::HostNameAndNISDomainName,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot join a `{other}` namespace"),
            ));
        }
    };
    Ok(rustix::thread::move_into_link_name_space(
        fd.as_fd(),
        Some(kind),
    )?)
}

/// Drops this process's root privileges for good: supplementary groups, then group,
/// then user, as `su` does. Run before starting a command as a toolbox's user.
pub fn become_user(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: `groups` is a valid array of its length; setgroups only reads it.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: setgid and setuid have no memory-safety preconditions.
    if unsafe { libc::setgid(gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::setuid(uid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A handle on process `pid` that stays its own even after the PID is reused.
pub fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Blocks until the process of `pidfd` has exited.
pub fn wait_exited(pidfd: impl AsFd) -> io::Result<()> {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    loop {
        match poll(&mut fds, None) {
            Err(Errno::INTR) => continue,
            result => return result.map(|_| ()).map_err(Into::into),
        }
    }
}

/// Standard input's terminal in raw mode (no echo, no line editing, no signals from keys,
/// no output processing), as a container's pseudo-terminal wants it; its settings are
/// restored when this is dropped, on every way out that unwinds.
pub struct RawTerminal {
    saved: rustix::termios::Termios,
}

impl RawTerminal {
    pub fn enter() -> io::Result<RawTerminal> {
        use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
        let stdin = io::stdin();
        let saved = tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use rustix::termios::{OptionalActions, tcsetattr};
        // Drain: output already written is shown with the settings it was written for.
        let _ = tcsetattr(io::stdin(), OptionalActions::Drain, &self.saved);
    }
}

/// Standard output's terminal size as (columns, rows), if it is a terminal.
pub fn window_size() -> Option<(u16, u16)> {
    let size = rustix::termios::tcgetwinsize(io::stdout()).ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// This process's capability bounding set and the kernel's highest capability number,
/// from `/proc/self/status` and `/proc/sys/kernel/cap_last_cap` under `proc_root`.
pub fn capability_bounding_set(proc_root: &Path) -> Option<(u64, u32)> {
    let status = std::fs::read_to_string(proc_root.join("self/status")).ok()?;
    let bounding = status
        .lines()
        .find_map(|line| line.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
    let last = std::fs::read_to_string(proc_root.join("sys/kernel/cap_last_cap")).ok()?;
    Some((bounding, last.trim().parse().ok()?))
}

/// This process's peak resident memory since it was executed, in KiB (`VmHWM` of
/// `/proc/self/status`), for tests that bound what a piece of work may grow to. Not
/// `getrusage`: its `ru_maxrss` survives `execve`, so a child started from a large test
/// process would report the parent's peak and hide any growth below it.
#[cfg(test)]
pub fn peak_rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
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
