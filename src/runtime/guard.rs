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
//! - for an SPC session, unless toolbox said the session ended, kills the session's
//!   command and what it started, and every process carrying the session's token in its
//!   environment (toolbox may be killed before the engine tells the command's PID, or
//!   the command may have left the tree), and, holding the SPC's lock, stops a
//!   persistent SPC (its idle main process) when nothing else runs in it;
//!
//! and exits. It never runs longer than the session it guards needs.
//!
//! An SPC session's guard starts before the engine starts the command: toolbox gives it
//! the token on its standard input (a socket), then the command's PID once the engine
//! gives it, then `ended` once the session ended and toolbox cleaned up after it.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

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

/// How long a guard never told the command's PID looks for the command: an engine under
/// load takes seconds to start one (`docker run` of busybox takes 2-4 s in the test bed's
/// emulated guest), and toolbox may have been killed just as it asked.
const COMMAND_START: Duration = Duration::from_secs(30);

/// How often the guard looks for processes carrying the session's token.
const CARRIERS_EVERY: Duration = Duration::from_millis(250);

/// How long a process the engine says it started may take to become what it starts
/// (runc's `runc init` executes the container's program a moment after), 20 ms apart.
const SETTLE_CHECKS: u32 = 100;

/// The variable an SPC session's command carries in its environment, valued with its
/// guard's token: how the guard finds the command when toolbox is killed before it can
/// tell the command's PID, and what the command started that left its process tree.
pub const SESSION_VARIABLE: &str = "TOOLBOX_SESSION";

/// What toolbox tells an SPC session's guard once the session ended and toolbox cleaned
/// up after it: nothing is left to guard.
const ENDED: &str = "ended";

/// Starts the guard of a systemd-nspawn session of toolbox `name` in `directory` (its
/// target's stage, the mount of an overlay toolbox) and waits until it watches.
pub fn start(directory: &Path, name: &str) -> Result<()> {
    let mut command = guard_command(directory, "nspawn");
    command.arg(name).stdin(Stdio::null());
    spawn(command, || Ok(())).map(drop)
}

/// The guard of a session in a super privileged container, started before the engine
/// starts the session's command: the command carries [`SpcGuard::variable`] in its
/// environment, and [`SpcGuard::tell_pid`] tells the guard its PID once the engine does.
pub struct SpcGuard {
    token: String,
    /// The guard's standard input: a socket, so that a guard that is gone makes writing
    /// fail instead of raising SIGPIPE (which ends toolbox outside a session's streaming).
    input: UnixStream,
}

impl SpcGuard {
    /// Starts the guard of an SPC session of a toolbox in `directory` and waits until it
    /// watches. `persistent`: the persistent SPC's name and the host PID of its idle main
    /// process, which the guard stops if the session was its last; `None` for a
    /// throwaway SPC, whose main process is the session's command.
    pub fn start(directory: &Path, persistent: Option<(&str, u32)>) -> Result<SpcGuard> {
        let token = session_token().context("cannot make the session's token")?;
        let (input, guards) = UnixStream::pair().context("cannot start the session's guard")?;
        let mut command = guard_command(directory, "spc");
        if let Some((name, main)) = persistent {
            command.arg(name).arg(main.to_string());
        }
        command.stdin(OwnedFd::from(guards));
        spawn(command, || tell(&input, &token))?;
        Ok(SpcGuard { token, input })
    }

    /// `NAME=VALUE` for the session's command's environment.
    pub fn variable(&self) -> String {
        format!("{SESSION_VARIABLE}={}", self.token)
    }

    /// Tells the guard the host PID of the session's command, once the engine gives it.
    pub fn tell_pid(&self, pid: u32) {
        // A guard that is gone has nothing to be told.
        let _ = tell(&self.input, &pid.to_string());
    }

    /// Tells the guard that the session ended and toolbox cleaned up after it. A guard
    /// not told so when toolbox ends ends the session itself.
    pub fn ended(self) {
        let _ = tell(&self.input, ENDED);
    }
}

/// Writes `line` and a newline to a guard's standard input, without SIGPIPE.
fn tell(input: &UnixStream, line: &str) -> std::io::Result<()> {
    let line = format!("{line}\n");
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        let sent = rustix::net::send(input, rest, rustix::net::SendFlags::NOSIGNAL)?;
        rest = &rest[sent..];
    }
    Ok(())
}

/// `toolbox-session-guard DIRECTORY PID KIND`, for this process.
fn guard_command(directory: &Path, kind: &str) -> Command {
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0(NAME)
        .arg(directory)
        .arg(std::process::id().to_string())
        .arg(kind);
    command
}

/// Spawns the guard, has `tell` give it what it reads first, and waits for it to say it
/// watches. Its standard output is not the terminal's, and it has a process group of its
/// own, so the terminal's signals do not reach it.
fn spawn(mut command: Command, tell: impl FnOnce() -> std::io::Result<()>) -> Result<Child> {
    let mut guard = command
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the guard that cleans up after the session")?;
    let told = tell();
    let mut line = String::new();
    let stdout = guard.stdout.take().expect("piped");
    let read = told.and_then(|()| BufReader::new(stdout).read_line(&mut line));
    if read.is_err() || line.trim() != READY {
        let _ = guard.kill();
        let _ = guard.wait();
        bail!(
            "the guard that cleans up after the session did not start: {}",
            line.trim()
        );
    }
    Ok(guard)
}

/// 128 random bits in hexadecimal.
fn session_token() -> std::io::Result<String> {
    let mut bits = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bits)?;
    Ok(bits.iter().map(|b| format!("{b:02x}")).collect())
}

/// What a guard watches, as its command line says.
enum Guarded {
    Nspawn {
        name: String,
    },
    /// `name` and `main`: a persistent SPC's name and main process.
    Spc {
        persistent: Option<(String, u32)>,
    },
}

/// The guard: `toolbox-session-guard DIRECTORY PID nspawn NAME` or
/// `toolbox-session-guard DIRECTORY PID spc [NAME MAIN]`.
pub fn run(args: Vec<OsString>) -> Result<u8> {
    let number = |arg: &OsString| -> Result<u32> { arg.to_string_lossy().parse().context("a PID") };
    let text = |arg: &OsString| arg.to_string_lossy().into_owned();
    let (directory, pid, guarded) = match args.as_slice() {
        [directory, pid, kind, name] if kind == "nspawn" => {
            (directory, pid, Guarded::Nspawn { name: text(name) })
        }
        [directory, pid, kind] if kind == "spc" => {
            (directory, pid, Guarded::Spc { persistent: None })
        }
        [directory, pid, kind, name, main] if kind == "spc" => {
            let persistent = Some((text(name), number(main)?));
            (directory, pid, Guarded::Spc { persistent })
        }
        _ => bail!("usage: {NAME} DIRECTORY PID nspawn NAME | DIRECTORY PID spc [NAME MAIN]"),
    };
    let pid = number(pid)?;
    let directory = PathBuf::from(directory);
    let proc_root = Path::new("/proc");
    let mut input = std::io::stdin().lock();
    let watching = (|| -> Result<_> {
        sys::leave_cgroups(proc_root).context("cannot leave the container's control group")?;
        let parent = sys::pidfd(pid).context("cannot watch toolbox's process")?;
        let watched = match guarded {
            Guarded::Nspawn { name } => Watched::Nspawn { name },
            Guarded::Spc { persistent } => {
                let token = read_line(&mut input)?.context("toolbox gave no session token")?;
                let persistent = match persistent {
                    Some((name, main)) => Some(Persistent::find(proc_root, name, main)?),
                    None => None,
                };
                let started = sys::proc_stat(proc_root, std::process::id())
                    .context("cannot read the guard's own start")?
                    .start_time;
                Watched::Spc(SpcSession {
                    token,
                    persistent,
                    started,
                })
            }
        };
        Ok((parent, watched))
    })();
    // Said to toolbox, which waits for the first line.
    let mut out = std::io::stdout();
    let (parent, watched) = match watching {
        Ok(watching) => watching,
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
    // What toolbox tells until it ends.
    let mut command = None;
    if let Watched::Spc(spc) = &watched {
        while let Ok(Some(line)) = read_line(&mut input) {
            if line == ENDED {
                return Ok(0);
            }
            command = line
                .parse()
                .ok()
                .and_then(|pid| spc.command_handle(proc_root, pid));
        }
    }
    sys::wait_exited(&parent)?;
    // Until its parent reaps it, the process is still there (a zombie), and what it
    // leaves is not yet taken for stale.
    for _ in 0..LINGER_CHECKS {
        if sys::proc_stat(proc_root, pid).is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match watched {
        Watched::Nspawn { name } => {
            toolboxes::remove_stale_stages(&directory, &name)?;
            unmount_when_unused(&directory, &name, proc_root)
        }
        Watched::Spc(spc) => spc.end(&directory, proc_root, command),
    }?;
    Ok(0)
}

/// A line of what toolbox tells, without its newline; `None` at the end.
fn read_line(input: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    Ok((input.read_line(&mut line)? > 0).then(|| line.trim_end().to_string()))
}

/// What a guard watches, once found.
enum Watched {
    Nspawn { name: String },
    Spc(SpcSession),
}

/// The SPC session a guard watches.
struct SpcSession {
    /// The value of [`SESSION_VARIABLE`] in its command's environment.
    token: String,
    persistent: Option<Persistent>,
    /// When this guard started, in clock ticks since boot (`/proc/PID/stat`'s field 22).
    started: u64,
}

/// A persistent SPC, which its last session stops.
struct Persistent {
    name: String,
    /// Its idle main process: a handle, its PID and its mount namespace (the container's,
    /// which every session's process is in, even one that changed its root).
    main: OwnedFd,
    main_pid: u32,
    namespace: (u64, u64),
    /// Its control groups, which every session's process is in, even one that left the
    /// mount namespace (`nsenter -t 1 -m`).
    cgroup: String,
}

impl Persistent {
    /// The SPC `name` whose main process has PID `main` (the engine's word): refused when
    /// the process is gone or its PID another process's now (it does not become
    /// `toolbox-idle`).
    fn find(proc_root: &Path, name: String, main: u32) -> Result<Persistent> {
        let not_idle = || {
            anyhow!(
                "the main process of `{name}` ({main}) is not toolbox's idle process (was the container stopped?)"
            )
        };
        // The handle taken first, then the process it holds checked: a PID reused after
        // the check would not be the one held.
        let handle = sys::pidfd(main).map_err(|_| not_idle())?;
        let idle = |pid: u32| {
            let cmdline = std::fs::read(proc_root.join(pid.to_string()).join("cmdline"));
            cmdline.is_ok_and(|cmdline| {
                let program = cmdline.split(|&b| b == 0).next().unwrap_or_default();
                program.ends_with(crate::engine::IDLE_NAME.as_bytes())
            })
        };
        if !settles(&handle, || idle(main)) {
            return Err(not_idle());
        }
        let namespace = namespace_of(proc_root, main).ok_or_else(not_idle)?;
        let cgroup = cgroup_of(proc_root, main).ok_or_else(not_idle)?;
        Ok(Persistent {
            name,
            main: handle,
            main_pid: main,
            namespace,
            cgroup,
        })
    }

    /// Whether process `pid` is in the SPC: in its mount namespace or its control groups.
    fn holds(&self, proc_root: &Path, pid: u32) -> bool {
        namespace_of(proc_root, pid) == Some(self.namespace)
            || cgroup_of(proc_root, pid).as_ref() == Some(&self.cgroup)
    }

    /// Stops the SPC, holding its lock, when its main process is the only one left in it
    /// (see [`Persistent::holds`]); the killed processes take a moment to let go of it.
    /// Another session's keep it running, and its toolbox stops it after.
    fn stop_if_idle(self, directory: &Path, proc_root: &Path) -> Result<()> {
        for _ in 0..LINGER_CHECKS {
            let lock = toolboxes::lock_for_spc(directory, &self.name)?;
            let others = processes_rooted(proc_root, |_| true)?
                .into_iter()
                .map(|pid| pid as u32)
                .filter(|&pid| pid != self.main_pid)
                .any(|pid| self.holds(proc_root, pid));
            if !others {
                // toolbox-idle ends on it, and the container stops; the lock is held
                // until it did, so that no session takes the container for running.
                signals::send_pidfd(&self.main, Signal::TERM);
                let _ = sys::exited_within(&self.main, Duration::from_secs(10));
                return Ok(());
            }
            drop(lock);
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl SpcSession {
    /// A handle on the session's command, the PID the engine gave, once checked to be the
    /// session's (in the persistent SPC, or started after this guard, as a throwaway's
    /// main process is, or carrying the token): `None` when it is gone or its PID another
    /// process's now.
    fn command_handle(&self, proc_root: &Path, pid: u32) -> Option<(OwnedFd, u32)> {
        let handle = sys::pidfd(pid).ok()?;
        let ours = || {
            let in_spc = match &self.persistent {
                Some(spc) => spc.holds(proc_root, pid),
                None => sys::proc_stat(proc_root, pid)
                    .is_some_and(|stat| stat.start_time >= self.started),
            };
            in_spc || carries(proc_root, pid, &self.token)
        };
        settles(&handle, ours).then_some((handle, pid))
    }

    /// Ends the session of a toolbox process that ended without saying the session did:
    /// kills the command the engine gave (`command`) with what it started, and every
    /// process carrying the session's token (for [`COMMAND_START`] when the engine gave no
    /// PID: it may be starting the command still); then stops a persistent SPC when
    /// nothing else runs in it.
    fn end(
        self,
        directory: &Path,
        proc_root: &Path,
        command: Option<(OwnedFd, u32)>,
    ) -> Result<()> {
        let mut killed = Vec::new();
        if let Some((handle, pid)) = &command {
            // One that ended has no tree left: its PID's children may be another's.
            if !sys::exited_within(handle, Duration::ZERO).unwrap_or(true) {
                killed = kill_tree(proc_root, handle, *pid);
                killed.push(*pid);
            }
        }
        let looking = match command {
            Some(_) => Duration::ZERO,
            None => COMMAND_START,
        };
        kill_carrying(proc_root, &self.token, looking, killed);
        match self.persistent {
            Some(spc) => spc.stop_if_idle(directory, proc_root),
            None => Ok(()),
        }
    }
}

/// Whether `ours` holds for the process `handle` holds within [`SETTLE_CHECKS`], while it
/// runs.
fn settles(handle: &OwnedFd, ours: impl Fn() -> bool) -> bool {
    for _ in 0..SETTLE_CHECKS {
        if ours() {
            return true;
        }
        if sys::exited_within(handle, Duration::from_millis(20)).unwrap_or(true) {
            return false;
        }
    }
    false
}

/// The mount namespace of process `pid` (device and inode).
fn namespace_of(proc_root: &Path, pid: u32) -> Option<(u64, u64)> {
    let namespace = std::fs::metadata(proc_root.join(pid.to_string()).join("ns/mnt")).ok()?;
    Some((namespace.dev(), namespace.ino()))
}

/// The control groups of process `pid`, as `/proc/PID/cgroup` lists them.
fn cgroup_of(proc_root: &Path, pid: u32) -> Option<String> {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()
}

/// Whether process `pid`'s environment holds the session variable valued `token`.
fn carries(proc_root: &Path, pid: u32, token: &str) -> bool {
    std::fs::read(proc_root.join(pid.to_string()).join("environ"))
        .is_ok_and(|environ| holds_token(&environ, token))
}

/// Whether an environment block (`NAME=VALUE` entries, each ended by a NUL) holds the
/// session variable valued `token`.
fn holds_token(environ: &[u8], token: &str) -> bool {
    let wanted = format!("{SESSION_VARIABLE}={token}");
    environ
        .split(|&b| b == 0)
        .any(|entry| entry == wanted.as_bytes())
}

/// Kills the processes carrying `token`, wherever they are (a session's may have changed
/// their root), with what they started, but for those in `killed`: every
/// [`CARRIERS_EVERY`] until a look finds none once some were killed (one that forked as
/// it was found is found by the next), or none were and `looking` is over.
fn kill_carrying(proc_root: &Path, token: &str, looking: Duration, mut killed: Vec<u32>) {
    let until = std::time::Instant::now() + looking;
    loop {
        let mut found = false;
        for pid in processes_rooted(proc_root, |_| true).unwrap_or_default() {
            let pid = pid as u32;
            if killed.contains(&pid) || !carries(proc_root, pid, token) {
                continue;
            }
            // As for the command: the handle first, then the process it holds checked.
            let Ok(handle) = sys::pidfd(pid) else {
                continue;
            };
            if carries(proc_root, pid, token) {
                killed.extend(kill_tree(proc_root, &handle, pid));
                killed.push(pid);
                found = true;
            }
        }
        let over = std::time::Instant::now() >= until;
        if !found && (over || !killed.is_empty()) {
            return;
        }
        std::thread::sleep(CARRIERS_EVERY);
    }
}

/// Kills process `pid` (held by `handle`) and its descendants, and returns them: stopped
/// first, so that none forks or is handed to another parent meanwhile; the tree is read
/// again until stopping finds no more.
fn kill_tree(proc_root: &Path, handle: &OwnedFd, pid: u32) -> Vec<u32> {
    signals::send_pidfd(handle, Signal::STOP);
    let mut tree = Vec::new();
    for _ in 0..LINGER_CHECKS {
        let found = descendants(proc_root, pid);
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
    signals::send_pidfd(handle, Signal::KILL);
    for &pid in &tree {
        signals::send(pid as i32, Signal::KILL);
    }
    tree
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

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn a_session_is_known_by_its_whole_variable_only() {
        let token = "0123abcd";
        assert!(holds_token(b"PATH=/bin\0TOOLBOX_SESSION=0123abcd\0", token));
        assert!(holds_token(b"TOOLBOX_SESSION=0123abcd", token));
        assert!(!holds_token(b"TOOLBOX_SESSION=0123abcde\0", token));
        assert!(!holds_token(b"TOOLBOX_SESSION=0123abc\0", token));
        assert!(!holds_token(b"OTHER_TOOLBOX_SESSION=0123abcd\0", token));
        assert!(!holds_token(b"", token));
    }

    /// The children of process `pid`, as the kernel lists them.
    fn children(pid: u32) -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    #[test]
    fn the_processes_carrying_the_token_end_with_what_they_started_and_no_other() {
        let token = session_token().unwrap();
        let carrier = || {
            let mut command = Command::new("sh");
            command
                .args(["-c", "env -i sleep 1000 & exec sleep 1001"])
                .env(SESSION_VARIABLE, &token);
            command.spawn().unwrap()
        };
        let mut carrier = carrier();
        let mut other = Command::new("sleep")
            .arg("1002")
            .env(SESSION_VARIABLE, session_token().unwrap())
            .spawn()
            .unwrap();
        // Its child, which sheds the token with its environment, is started.
        let mut started = Vec::new();
        for _ in 0..100 {
            started = children(carrier.id());
            let execed = std::fs::read(format!("/proc/{}/cmdline", carrier.id()))
                .is_ok_and(|c| c.starts_with(b"sleep\x001001"));
            if execed && !started.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(started.len(), 1, "the carrier's child did not start");

        kill_carrying(Path::new("/proc"), &token, Duration::ZERO, Vec::new());

        let mut ended = None;
        for _ in 0..100 {
            ended = carrier.try_wait().unwrap();
            let child_gone = sys::proc_stat(Path::new("/proc"), started[0]).is_none();
            if ended.is_some() && child_gone {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let child_gone = sys::proc_stat(Path::new("/proc"), started[0]).is_none();
        let untouched = other.try_wait().unwrap().is_none();
        for mut process in [carrier, other] {
            let _ = process.kill();
            let _ = process.wait();
        }
        signals::send(started[0] as i32, Signal::KILL);
        assert_eq!(
            ended.and_then(|status| status.signal()),
            Some(Signal::KILL.as_raw()),
            "the carrier was not killed"
        );
        assert!(child_gone, "the carrier's child runs on");
        assert!(untouched, "a process with another token was killed");
    }
}
