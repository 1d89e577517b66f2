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
//!   environment (toolbox may be killed before the engine tells the command's PID), and,
//!   holding the SPC's lock, stops a persistent SPC (its idle main process) when nothing
//!   else runs in it;
//!
//! and exits. It never runs longer than the session it guards needs.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// The variable an SPC session's command carries in its environment, valued with its
/// guard's token: how the guard finds the command when toolbox is killed before it can
/// tell the command's PID (the engine starts it, and tells its PID only after).
pub const SESSION_VARIABLE: &str = "TOOLBOX_SESSION";

/// What toolbox tells an SPC session's guard once the session ended: nothing is left to
/// guard.
const ENDED: &str = "ended";

/// Starts the guard of a systemd-nspawn session of toolbox `name` in `directory` (its
/// target's stage, the mount of an overlay toolbox) and waits until it watches.
pub fn start(directory: &Path, name: &str) -> Result<()> {
    let mut command = guard_command(directory, name);
    command.stdin(Stdio::null());
    spawn(command).map(drop)
}

/// The guard of a session in a super privileged container, started before the engine
/// starts the session's command: the command carries [`SpcGuard::variable`] in its
/// environment, and [`SpcGuard::command`] tells the guard its PID once the engine does.
pub struct SpcGuard {
    token: String,
    /// The guard's standard input: a socket, so that telling a guard that is gone fails
    /// instead of raising SIGPIPE (which ends toolbox outside a session's streaming).
    said: UnixStream,
}

impl SpcGuard {
    /// Starts the guard of an SPC session of toolbox `name` in `directory` and waits until
    /// it watches. `main` is the host PID of a persistent SPC's idle main process, which
    /// the guard stops if the session was its last; a throwaway SPC's main process is the
    /// session's command.
    pub fn start(directory: &Path, name: &str, main: Option<u32>) -> Result<SpcGuard> {
        let token = session_token().context("cannot make the session's token")?;
        let (said, heard) = UnixStream::pair().context("cannot start the session's guard")?;
        let mut command = guard_command(directory, name);
        command.arg("spc");
        command.args(main.map(|main| main.to_string()));
        command.stdin(OwnedFd::from(heard));
        spawn_with(command, || tell(&said, &token))?;
        Ok(SpcGuard { token, said })
    }

    /// `NAME=VALUE` for the session's command's environment.
    pub fn variable(&self) -> String {
        format!("{SESSION_VARIABLE}={}", self.token)
    }

    /// Tells the guard the host PID of the session's command, once the engine gives it.
    pub fn command(&mut self, pid: u32) {
        // A guard that is gone has nothing to be told.
        let _ = tell(&self.said, &pid.to_string());
    }

    /// Tells the guard that the session ended and toolbox cleaned up after it. A guard
    /// not told so when toolbox ends ends the session itself.
    pub fn ended(self) {
        let _ = tell(&self.said, ENDED);
    }
}

/// Writes `line` and a newline to a guard's socket, without SIGPIPE.
fn tell(said: &UnixStream, line: &str) -> std::io::Result<()> {
    let line = format!("{line}\n");
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        let sent = rustix::net::send(said, rest, rustix::net::SendFlags::NOSIGNAL)?;
        rest = &rest[sent..];
    }
    Ok(())
}

/// `toolbox-session-guard DIRECTORY NAME PID`, for this process.
fn guard_command(directory: &Path, name: &str) -> Command {
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0(NAME)
        .arg(directory)
        .arg(name)
        .arg(std::process::id().to_string());
    command
}

fn spawn(command: Command) -> Result<Child> {
    spawn_with(command, || Ok(()))
}

/// Spawns the guard, has `tell` tell it what it needs, and waits for it to say it
/// watches. Its standard output is not the terminal's, and it has a process group of its
/// own, so the terminal's signals do not reach it.
fn spawn_with(mut command: Command, tell: impl FnOnce() -> std::io::Result<()>) -> Result<Child> {
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

/// The guard: `toolbox-session-guard DIRECTORY NAME PID [spc [MAIN]]`.
pub fn run(args: Vec<OsString>) -> Result<u8> {
    let number = |arg: &OsString| -> Result<u32> { arg.to_string_lossy().parse().context("a PID") };
    let (directory, name, pid, spc, main) = match args.as_slice() {
        [directory, name, pid] => (directory, name, pid, false, None),
        [directory, name, pid, spc] if spc == "spc" => (directory, name, pid, true, None),
        [directory, name, pid, spc, main] if spc == "spc" => {
            (directory, name, pid, true, Some(number(main)?))
        }
        _ => bail!("usage: {NAME} DIRECTORY NAME PID [spc [MAIN]]"),
    };
    let pid = number(pid)?;
    let directory = PathBuf::from(directory);
    let name = name.to_string_lossy().into_owned();
    let proc_root = Path::new("/proc");
    let mut told = std::io::stdin().lock();
    let watching = (|| -> Result<_> {
        sys::leave_cgroups(proc_root).context("cannot leave the container's control group")?;
        let parent = sys::pidfd(pid).context("cannot watch toolbox's process")?;
        if !spc {
            return Ok(Some((parent, None)));
        }
        let token = read_line(&mut told)?.context("toolbox gave no session token")?;
        let main = match main {
            None => None,
            Some(main) => match main_handle(proc_root, main) {
                Some(handle) => Some(handle),
                // The container stopped already: nothing to guard.
                None => return Ok(None),
            },
        };
        Ok(Some((parent, Some(SpcSession { token, main }))))
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
    // What toolbox tells until it ends: the command's PID once the engine gives it, and
    // that the session ended, when it did (nothing is left to do then).
    let mut command = None;
    if let Some(spc) = &spc {
        while let Ok(Some(line)) = read_line(&mut told) {
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
    match spc {
        None => {
            toolboxes::remove_stale_stages(&directory, &name)?;
            unmount_when_unused(&directory, &name, proc_root)
        }
        Some(spc) => spc.end(&directory, &name, proc_root, command),
    }?;
    Ok(0)
}

/// A line of what toolbox tells, without its newline; `None` at the end.
fn read_line(told: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    Ok((told.read_line(&mut line)? > 0).then(|| line.trim_end().to_string()))
}

/// The SPC session a guard watches.
struct SpcSession {
    /// The value of [`SESSION_VARIABLE`] in its command's environment.
    token: String,
    /// A persistent SPC's idle main process: its handle and PID.
    main: Option<(OwnedFd, u32)>,
}

impl SpcSession {
    /// The root of the container (device and inode), when it is persistent and running.
    fn container(&self, proc_root: &Path) -> Option<(u64, u64)> {
        self.main
            .as_ref()
            .and_then(|&(_, main)| root_of(proc_root, main))
    }

    /// A handle on the session's command, the PID the engine gave, once checked to be
    /// the one in the container: `None` when it is gone or its PID another process's now.
    fn command_handle(&self, proc_root: &Path, pid: u32) -> Option<(OwnedFd, u32)> {
        // The handle taken first, then the process it holds checked: a PID reused after
        // the check would not be the one held.
        let handle = sys::pidfd(pid).ok()?;
        let ours = match self.container(proc_root) {
            Some(container) => root_of(proc_root, pid) == Some(container),
            None => carries(proc_root, pid, &self.token),
        };
        ours.then_some((handle, pid))
    }

    /// Ends the session of a toolbox process that ended without saying the session did:
    /// kills the command the engine gave (`command`) and everything carrying the session's
    /// token, then stops a persistent SPC when its main process is the only one left in
    /// it (of the processes whose root is the container's).
    fn end(
        self,
        directory: &Path,
        name: &str,
        proc_root: &Path,
        command: Option<(OwnedFd, u32)>,
    ) -> Result<()> {
        let container = self.container(proc_root);
        let killed = match &command {
            Some((handle, pid)) => kill_tree(proc_root, handle, *pid),
            None => Vec::new(),
        };
        // Without the command's PID, the engine may be starting the command still: it is
        // looked for as long as a session's processes get to end.
        let checks = if command.is_some() { 1 } else { LINGER_CHECKS };
        kill_carrying(proc_root, &self.token, container, checks, killed);
        let (Some((main_handle, main)), Some(container)) = (self.main, container) else {
            return Ok(());
        };
        // The killed processes take a moment to let go of the container; another session's
        // keep it running, and its toolbox stops it after.
        for _ in 0..LINGER_CHECKS {
            let lock = toolboxes::lock_for_spc(directory, name)?;
            let others = processes_rooted(proc_root, |m| (m.dev(), m.ino()) == container)?;
            if others.iter().all(|&pid| pid as u32 == main) {
                // toolbox-idle ends on it, and the container stops.
                signals::send_pidfd(&main_handle, Signal::TERM);
                break;
            }
            drop(lock);
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// A handle on an SPC's main process, the PID the engine gave: `None` when it is gone or
/// its PID another process's now (no longer `toolbox-idle`).
fn main_handle(proc_root: &Path, main: u32) -> Option<(OwnedFd, u32)> {
    let handle = sys::pidfd(main).ok()?;
    let cmdline = std::fs::read(proc_root.join(main.to_string()).join("cmdline")).ok()?;
    let program = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    program
        .ends_with(crate::engine::IDLE_NAME.as_bytes())
        .then_some((handle, main))
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

/// Kills, `checks` times 100 ms apart, the processes carrying `token` (in `container`'s
/// root when given, else anywhere) with what they started, but for those in `killed`.
fn kill_carrying(
    proc_root: &Path,
    token: &str,
    container: Option<(u64, u64)>,
    checks: u32,
    mut killed: Vec<u32>,
) {
    let in_container = |m: &std::fs::Metadata| container.is_none_or(|c| (m.dev(), m.ino()) == c);
    for check in 0..checks {
        let found = processes_rooted(proc_root, in_container).unwrap_or_default();
        for pid in found.into_iter().map(|pid| pid as u32) {
            if killed.contains(&pid) {
                continue;
            }
            // As for the command: the handle first, then the process it holds checked.
            let Ok(handle) = sys::pidfd(pid) else {
                continue;
            };
            if carries(proc_root, pid, token) {
                killed.extend(kill_tree(proc_root, &handle, pid));
                killed.push(pid);
            }
        }
        if check + 1 < checks {
            std::thread::sleep(Duration::from_millis(100));
        }
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

        kill_carrying(Path::new("/proc"), &token, None, 1, Vec::new());

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
