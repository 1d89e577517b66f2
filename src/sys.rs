//! sys: the few system calls toolbox rests on, with the reasons they are used. Most go
//! through rustix's safe wrappers; the signal handling around a session's child process
//! needs libc, and is the only `unsafe` here.
//!
//! Containment inside a toolbox tree is the kernel's job, not string checks that a later
//! archive entry could invalidate: paths are resolved with `openat2(RESOLVE_IN_ROOT)`
//! (Linux 5.6), which treats the tree's root as `/` for `..` and for symlinks, absolute or
//! relative, the way the container will see them.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

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

/// Restores the default action of SIGPIPE, which Rust's runtime ignores: then
/// `toolbox list | head -1` ends quietly, as C tools do, instead of failing to print.
pub fn default_sigpipe() {
    // SAFETY: setting a standard disposition, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Ignores SIGPIPE again: a write to a closed pipe then fails with `EPIPE` instead of
/// ending toolbox, for work that must be told (a container session passes it on).
pub fn ignore_sigpipe() {
    // SAFETY: setting a standard disposition has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Whether `error` comes from a full filesystem (or an exhausted quota).
pub fn is_no_space(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let io = cause
            .downcast_ref::<io::Error>()
            .or_else(|| cause.downcast_ref::<crate::unpack::Error>().map(|e| e.io()));
        io.is_some_and(|e| {
            [Errno::NOSPC, Errno::DQUOT]
                .iter()
                .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
        })
    })
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

/// Runs `command` as a child that cannot outlive this process, and returns its status.
/// It dies with SIGKILL if this process is killed (`PR_SET_PDEATHSIG`), as it would if
/// this process had exec'd it; SIGTERM, SIGHUP, and SIGINT or SIGQUIT sent with kill(2)
/// are passed on to it. The terminal's own SIGINT and SIGQUIT already reach the child,
/// which is in the same process group, so they are not passed on twice. Those signals stay
/// blocked on return: the caller finishes the session (unmounting) and exits, and a
/// Ctrl-C arriving then must not cut that short.
pub fn run_child(command: &mut Command) -> io::Result<ExitStatus> {
    const WAITED: [libc::c_int; 5] = [
        libc::SIGCHLD,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGHUP,
    ];
    // SAFETY: sigset_t is plain data that sigemptyset initialises.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t and the signal numbers are valid. Blocking before
    // the child exists means no signal meant for the session is lost or kills toolbox;
    // the child starts with an empty mask (std resets it between fork and exec).
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in WAITED {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let parent = rustix::process::getpid();
    // SAFETY: the closure makes only async-signal-safe system calls (prctl, getppid).
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The parent may have died before the death signal was armed.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::other(
                    "toolbox exited while starting the session",
                ));
            }
            Ok(())
        });
    }
    command.spawn().and_then(|mut child| {
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            // SAFETY: siginfo_t is plain data that sigwaitinfo fills in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `set` and `info` are valid for the call.
            let signal = unsafe { libc::sigwaitinfo(&set, &mut info) };
            if signal < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            // si_code <= 0 (SI_USER, SI_QUEUE, ...): sent by a process, not the kernel
            // on behalf of the terminal.
            let from_process = info.si_code <= 0;
            let forward = match signal {
                libc::SIGTERM | libc::SIGHUP => true,
                libc::SIGINT | libc::SIGQUIT => from_process,
                _ => false,
            };
            if forward {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            }
        }
    })
}

/// The first of SIGINT, SIGTERM and SIGHUP caught by a live [`Interruption`], 0 for none.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// SIGINT, SIGTERM and SIGHUP caught while work that must clean up runs without an async
/// runtime (`toolbox import`): while this lives they are blocked in the calling thread and
/// every thread it starts, and a watcher thread records the first that arrives, for the
/// work to notice ([`interrupted`]) and stop. Create it before starting other threads.
pub struct Interruption {
    stop: Arc<AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
    previous: libc::sigset_t,
}

const STOPPING: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn stopping_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; the signals are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in STOPPING {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

impl Interruption {
    pub fn catch() -> Interruption {
        let set = stopping_set();
        // SAFETY: sigset_t is plain data; pthread_sigmask writes the old mask into it.
        let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both sets are valid for the call.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut previous) };
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let timeout = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000_000,
                };
                while !stop.load(Ordering::SeqCst) {
                    // SAFETY: `set` and `timeout` are valid; no siginfo is asked for.
                    let signal =
                        unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
                    if signal > 0 {
                        let _ =
                            CAUGHT.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
                    }
                }
            }
        });
        Interruption {
            stop,
            watcher: Some(watcher),
            previous,
        }
    }
}

impl Drop for Interruption {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        // SAFETY: `previous` is the mask saved by `catch`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut()) };
    }
}

/// The signal an [`Interruption`] caught, if one did.
pub fn interrupted() -> Option<i32> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// A reader that fails once a signal was caught, so work reading a stream stops soon.
pub struct Interruptible<R>(pub R);

impl<R: io::Read> io::Read for Interruptible<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(signal) = interrupted() {
            return Err(io::Error::other(format!("interrupted by signal {signal}")));
        }
        self.0.read(buf)
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

/// Waits for SIGTERM, SIGINT or SIGHUP and returns it: the life of a process whose only
/// job is to be there until it is told to stop.
pub fn wait_for_stop_signal() -> i32 {
    let set = stopping_set();
    // SAFETY: `set` is a valid signal set; blocking them makes sigwait their only receiver.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let mut signal = 0;
    // SAFETY: `set` and `signal` are valid for the call; it retries only on failure.
    while unsafe { libc::sigwait(&set, &mut signal) } != 0 {}
    signal
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
