//! sys::signals: every signal toolbox catches, blocks, forwards or sends, in one place and
//! by name. Work that must clean up before it stops (creating a toolbox, importing one, an
//! SPC session) catches [`STOPPING`] so a Ctrl-C, `kill` or closed terminal ends it with
//! 128 + the signal instead of killing toolbox half way; an overlay session forwards them
//! to its systemd-nspawn ([`run_child`]).

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

pub use rustix::process::Signal;

/// The signals that ask toolbox to stop: Ctrl-C, `kill`, a terminal that closed.
pub const STOPPING: [Signal; 3] = [Signal::INT, Signal::TERM, Signal::HUP];

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

/// Sends `signal` to process `pid`; a process that is already gone is not an error.
pub fn send(pid: i32, signal: Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Sends `signal` to the process `pidfd` holds, which is never another that reused its
/// PID; a process that is already gone is not an error.
pub fn send_pidfd(pidfd: impl std::os::fd::AsFd, signal: Signal) {
    let _ = rustix::process::pidfd_send_signal(pidfd, signal);
}

/// Sends `signal` to one thread of this process (`tgkill`), so that no other thread
/// takes it: for tests that signal the thread running the work they interrupt.
#[cfg(test)]
pub fn send_to_thread(tid: i32, signal: Signal) {
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    // SAFETY: tgkill takes plain integers and has no memory-safety preconditions.
    unsafe {
        libc::syscall(libc::SYS_tgkill, pid, tid, signal.as_raw());
    }
}

/// Signals caught for async work (creating a toolbox, an SPC session): each arrives here,
/// in order, instead of acting. Create it inside a tokio runtime.
pub struct Caught {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
}

impl Caught {
    pub fn catch(signals: &[Signal]) -> io::Result<Caught> {
        let mut streams = Vec::new();
        for &signal in signals {
            let kind = tokio::signal::unix::SignalKind::from_raw(signal.as_raw());
            streams.push((signal, tokio::signal::unix::signal(kind)?));
        }
        Ok(Caught { streams })
    }

    /// The next signal caught.
    pub async fn next(&mut self) -> Signal {
        let waits = self.streams.iter_mut().map(|(signal, stream)| {
            let signal = *signal;
            Box::pin(async move {
                stream.recv().await;
                signal
            })
        });
        futures_util::future::select_all(waits).await.0
    }

    /// The next of [`STOPPING`] caught; others are passed over.
    pub async fn stopping(&mut self) -> Signal {
        loop {
            let signal = self.next().await;
            if STOPPING.contains(&signal) {
                return signal;
            }
        }
    }

    /// A signal caught already, if any, without waiting.
    pub fn pending(&mut self) -> Option<Signal> {
        use futures_util::FutureExt;
        self.next().now_or_never()
    }
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
    // the child unblocks them again before exec (a blocked mask is inherited across exec:
    // `timeout` and `strace` started with SIGINT blocked never see it).
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in WAITED {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let parent = rustix::process::getpid();
    // SAFETY: the closure makes only async-signal-safe system calls (sigprocmask, prctl,
    // getppid), and `set` is a copy owned by it.
    unsafe {
        command.pre_exec(move || {
            if libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
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

/// The first of [`STOPPING`] caught by a live [`Interruption`], 0 for none.
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

fn stopping_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; the signals are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in STOPPING {
            libc::sigaddset(&mut set, signal.as_raw());
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
