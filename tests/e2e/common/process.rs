//! Processes a test starts or must find: a run that may hang, stopped after a deadline
//! with everything in its process group; and a toolbox's own processes, found through
//! their root directory (`/proc/PID/root`), never by a host-wide name match that would
//! also see another test's (or another person's) processes.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// How long a command that could hang may run before a test stops it (stretched by
/// [`patience`]).
pub const HANG_LIMIT: Duration = Duration::from_secs(20);

/// How many times longer than on real hardware things may take here:
/// `TOOLBOX_E2E_PATIENCE` (scripts/testbed sets it for a guest under emulation), else 1.
pub fn patience() -> u32 {
    std::env::var("TOOLBOX_E2E_PATIENCE")
        .ok()
        .and_then(|p| p.parse().ok())
        .filter(|&p| p >= 1)
        .unwrap_or(1)
}

/// `limit`, a deadline measured on real hardware, stretched by [`patience`].
pub fn patient(limit: Duration) -> Duration {
    limit * patience()
}

/// A run that may hang: what it wrote, how it ended, and whether it had to be killed.
pub struct Timed {
    /// Its output; when killed, what it had written by then (status: killed by SIGKILL).
    pub output: Output,
    /// Still running at its deadline: killed, with its whole process group.
    pub hung: bool,
    pub took: Duration,
}

impl Timed {
    pub fn describe(&self) -> String {
        let ending = if self.hung {
            format!("HUNG: still running after {:.1?}, killed\n", self.took)
        } else {
            format!("took {:.1?}\n", self.took)
        };
        format!("{ending}{}", super::describe(&self.output))
    }
}

/// Runs `command` in a process group of its own, collecting its output. If it has not
/// ended within [`HANG_LIMIT`], the whole group is killed (SIGKILL) and the run is marked
/// `hung`; what it leaves elsewhere (a container's processes, a stuck daemon) is the
/// test's to clean up.
pub fn run_timed(command: &mut Command) -> Timed {
    run_within(command, HANG_LIMIT)
}

/// [`run_timed`] with a deadline of `limit` (stretched by [`patience`]).
pub fn run_within(command: &mut Command, limit: Duration) -> Timed {
    let limit = patient(limit);
    let started = Instant::now();
    let mut child = command
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let mut hung = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            hung = true;
            if let Some(group) = Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(group, Signal::KILL);
            }
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    // A process outside the group (a container's) may hold the pipes open: what came
    // within a moment is all there is.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !(stdout.1.is_finished() && stderr.1.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let taken = |buffer: &Arc<Mutex<Vec<u8>>>| buffer.lock().unwrap().clone();
    Timed {
        output: Output {
            status,
            stdout: taken(&stdout.0),
            stderr: taken(&stderr.0),
        },
        hung,
        took,
    }
}

/// Reads `stream` to its end on a thread of its own, into the buffer returned.
fn collect(
    mut stream: impl Read + Send + 'static,
) -> (Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let filled = buffer.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = stream.read(&mut chunk) {
            filled.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buffer, reader)
}

/// What a toolbox's processes have as their root directory, as `/proc/PID/root` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolboxRoot {
    /// A copy toolbox: its tree, that very directory (device and inode).
    Tree(u64, u64),
    /// An overlay toolbox: any directory on its mounted overlay (the device).
    Overlay(u64),
}

impl ToolboxRoot {
    /// The root of the toolbox whose directory is `tree`, as it is now: its overlay
    /// while mounted at `tree/root`, else the tree itself; `None` when there is no tree.
    pub fn at(tree: &Path) -> Option<ToolboxRoot> {
        let meta = fs::metadata(tree).ok()?;
        match fs::metadata(tree.join("root")) {
            Ok(mounted) if mounted.dev() != meta.dev() => Some(ToolboxRoot::Overlay(mounted.dev())),
            _ => Some(ToolboxRoot::Tree(meta.dev(), meta.ino())),
        }
    }

    /// The host's processes whose root is this one: their PIDs and command lines (the
    /// arguments joined by spaces), in PID order.
    pub fn processes(&self) -> Vec<(u32, String)> {
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let Ok(root) = fs::metadata(entry.path().join("root")) else {
                continue;
            };
            let ours = match *self {
                ToolboxRoot::Tree(dev, ino) => (root.dev(), root.ino()) == (dev, ino),
                ToolboxRoot::Overlay(dev) => root.dev() == dev,
            };
            if ours && !gone(pid) {
                let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let words: Vec<_> = cmdline
                    .split(|&b| b == 0)
                    .filter(|w| !w.is_empty())
                    .map(String::from_utf8_lossy)
                    .collect();
                found.push((pid, words.join(" ")));
            }
        }
        found.sort();
        found
    }

    /// The PID of the process with command line `cmdline` whose root is this one, if one runs.
    pub fn find(&self, cmdline: &str) -> Option<u32> {
        self.processes()
            .into_iter()
            .find(|(_, found)| found == cmdline)
            .map(|(pid, _)| pid)
    }

    /// Kills (SIGKILL) every process whose root is this one.
    pub fn kill_all(&self) {
        for (pid, _) in self.processes() {
            if let Some(pid) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
    }
}

/// Kills, when dropped, every process still rooted in a toolbox: what a failed test, or a
/// run it had to kill, left running there.
pub struct Reaper(pub ToolboxRoot);

impl Drop for Reaper {
    fn drop(&mut self) {
        self.0.kill_all();
    }
}

/// Whether process `pid` has ended: gone, or a zombie no one has reaped yet (where PID 1
/// does not reap, as on the test machine, an orphan stays one).
pub fn gone(pid: u32) -> bool {
    toolbox::sys::proc_stat(Path::new("/proc"), pid).is_none_or(|s| matches!(s.state, 'Z' | 'X'))
}

/// Waits up to `limit` (stretched by [`patience`]) for process `pid` to end; whether it did.
pub fn ends_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + patient(limit);
    while !gone(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The host process the tools trace: its command name, as perf and `comm` show it.
pub const TRACEE: &str = "tbx-tracee";

/// A host process that writes to /dev/null in a loop, killed when dropped.
pub struct Tracee {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Tracee {
    pub fn start() -> Tracee {
        let dir = tempfile::tempdir().unwrap();
        let program: PathBuf = dir.path().join(TRACEE);
        std::fs::copy("/bin/dash", &program).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let child = Command::new(&program)
            .args(["-c", "while :; do echo x >/dev/null; done"])
            .spawn()
            .unwrap();
        Tracee { child, _dir: dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
