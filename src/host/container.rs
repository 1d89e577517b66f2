//! host::container: toolbox started from its own image (`scripts/image-archive`) in a
//! container, as `kubectl debug node/NODE --profile=sysadmin` or
//! `docker run --privileged --pid=host -v /:/host IMAGE` start it. The image sets
//! [`HOST_MOUNT`]; this module tells whether the container has the shape toolbox needs to
//! work on the host (privileged, the host's PID namespace, the host's `/` mounted) and,
//! when not, which flag is missing. It only reads; moving into the host's namespaces is
//! `sys::join_host`.

use std::fmt;
use std::path::{Path, PathBuf};

use rustix::fs as rfs;

/// Set in toolbox's image: the path at which the container has the host's `/` (`/host`,
/// where `kubectl debug node` mounts it).
pub const HOST_MOUNT: &str = "TOOLBOX_HOST_MOUNT";

/// Capabilities toolbox needs from the container to join the host's namespaces and trace
/// its processes, none of which a container has unless privileged: `CAP_SYS_ADMIN` (21)
/// and `CAP_SYS_PTRACE` (19).
const NEEDED_CAPABILITIES: [u32; 2] = [21, 19];

/// What the container lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    Privileged,
    HostPid,
    /// The host's `/` is not at this path (nothing there, or something else).
    HostMount(PathBuf),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Privileged => write!(
                f,
                "toolbox runs from its image in a container that is not privileged: start it \
                 with `--privileged` (Kubernetes: `kubectl debug node/NODE --profile=sysadmin`)"
            ),
            Missing::HostPid => write!(
                f,
                "toolbox runs from its image in a container with a PID namespace of its own: \
                 start it with `--pid=host` (Kubernetes: `hostPID: true`)"
            ),
            Missing::HostMount(path) => write!(
                f,
                "toolbox runs from its image without the host's `/` at `{}`: start it with \
                 `-v /:{}`",
                path.display(),
                path.display()
            ),
        }
    }
}

impl std::error::Error for Missing {}

/// Checks the container toolbox runs in, through `proc_root` (`/proc`): privileged, in the
/// host's PID namespace, and with something at `host_mount` (whether it is the host's `/`
/// is known once toolbox is in the host's mount namespace: the caller compares). Returns
/// the process whose namespaces are the host's: process 1, or where process 1's are out
/// of reach (a sandbox may guard its init), the nearest ancestor outside the container's
/// mount namespace (the engine's shim). In a PID namespace of its own, toolbox is process
/// 1 or the child of an init in the container, and no ancestor is outside.
pub fn check(proc_root: &Path, host_mount: &Path) -> Result<u32, Missing> {
    let me = std::process::id();
    let effective = std::fs::read_to_string(proc_root.join(me.to_string()).join("status"))
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .unwrap_or(0);
    if NEEDED_CAPABILITIES
        .iter()
        .any(|cap| effective & (1 << cap) == 0)
    {
        return Err(Missing::Privileged);
    }
    let mounts = |pid: &str| {
        rfs::stat(proc_root.join(pid).join("ns/mnt"))
            .ok()
            .map(|s| (s.st_dev, s.st_ino))
    };
    let ours = mounts(&me.to_string()).ok_or(Missing::HostPid)?;
    let outside = |pid: u32| mounts(&pid.to_string()).is_some_and(|theirs| theirs != ours);
    let host = if outside(1) {
        Some(1)
    } else {
        let mut ancestor = parent(proc_root, me);
        // A bound on the walk: a process table read while it changes could loop.
        for _ in 0..64 {
            match ancestor {
                Some(pid) if pid > 1 && !outside(pid) => ancestor = parent(proc_root, pid),
                _ => break,
            }
        }
        ancestor.filter(|&pid| pid > 1 && outside(pid))
    };
    let host = host.ok_or(Missing::HostPid)?;
    if !host_mount.is_dir() {
        return Err(Missing::HostMount(host_mount.to_path_buf()));
    }
    Ok(host)
}

fn parent(proc_root: &Path, pid: u32) -> Option<u32> {
    crate::sys::proc_stat(proc_root, pid).map(|stat| stat.parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/proc` holding this process (capabilities `cap_eff`, its parent), its
    /// ancestors and process 1, each with a mount namespace: a file, shared with the
    /// container's (this process's) or the host's.
    struct FakeProc {
        dir: tempfile::TempDir,
    }

    /// A `/proc/PID/stat` line with every field up to the start time (22).
    fn stat_line(pid: u32, name: &str, parent: u32) -> String {
        format!("{pid} ({name}) S {parent}{}\n", " 0".repeat(18))
    }

    const PRIVILEGED: u64 = 0x000001ff_ffffffff;
    /// Docker's default set.
    const UNPRIVILEGED: u64 = 0x00000000_a80425fb;

    impl FakeProc {
        fn new(cap_eff: u64) -> FakeProc {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("container-mnt"), "container").unwrap();
            std::fs::write(dir.path().join("host-mnt"), "host").unwrap();
            std::fs::create_dir(dir.path().join("host")).unwrap();
            let proc = FakeProc { dir };
            let me = std::process::id();
            proc.process(me, 0, false);
            std::fs::write(
                proc.path().join(me.to_string()).join("status"),
                format!("Name:\ttoolbox\nCapInh:\t0\nCapEff:\t{cap_eff:016x}\n"),
            )
            .unwrap();
            proc
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        /// Process `pid`, child of `parent`, in the host's mount namespace or the
        /// container's; `None`: its namespace cannot be read.
        fn process(&self, pid: u32, parent: u32, host: impl Into<Option<bool>>) -> &Self {
            let dir = self.path().join(pid.to_string());
            std::fs::create_dir_all(dir.join("ns")).unwrap();
            std::fs::write(dir.join("stat"), stat_line(pid, "a b", parent)).unwrap();
            if let Some(host) = host.into() {
                let from = if host { "host-mnt" } else { "container-mnt" };
                std::fs::hard_link(self.path().join(from), dir.join("ns/mnt")).unwrap();
            }
            self
        }

        /// This process's parent is `parent`.
        fn parent(&self, parent: u32) -> &Self {
            let me = std::process::id();
            let stat = self.path().join(me.to_string()).join("stat");
            std::fs::write(stat, stat_line(me, "toolbox", parent)).unwrap();
            self
        }

        fn check(&self) -> Result<u32, Missing> {
            check(self.path(), &self.path().join("host"))
        }
    }

    #[test]
    fn the_host_is_process_1_or_else_the_nearest_ancestor_outside() {
        let proc = FakeProc::new(PRIVILEGED);
        proc.process(1, 0, true).process(700, 1, true).parent(700);
        assert_eq!(proc.check(), Ok(1));
        // Process 1 out of reach (a sandbox's init): the engine's shim is the host.
        let proc = FakeProc::new(PRIVILEGED);
        proc.process(1, 0, None)
            .process(700, 1, true)
            .process(800, 700, false)
            .parent(800);
        assert_eq!(proc.check(), Ok(700));
    }

    #[test]
    fn each_missing_flag_is_named() {
        let proc = FakeProc::new(UNPRIVILEGED);
        proc.process(1, 0, true).parent(1);
        assert_eq!(proc.check(), Err(Missing::Privileged));
        // CAP_SYS_ADMIN alone (`--cap-add SYS_ADMIN`) is not enough to trace.
        let proc = FakeProc::new(UNPRIVILEGED | 1 << 21);
        proc.process(1, 0, true).parent(1);
        assert_eq!(proc.check(), Err(Missing::Privileged));

        // A PID namespace of its own: toolbox is process 1, or an init's child there.
        let proc = FakeProc::new(PRIVILEGED);
        proc.parent(0);
        assert_eq!(proc.check(), Err(Missing::HostPid));
        let proc = FakeProc::new(PRIVILEGED);
        proc.process(1, 0, false).parent(1);
        assert_eq!(proc.check(), Err(Missing::HostPid));

        let proc = FakeProc::new(PRIVILEGED);
        proc.process(1, 0, true).parent(1);
        std::fs::remove_dir(proc.path().join("host")).unwrap();
        assert_eq!(
            proc.check(),
            Err(Missing::HostMount(proc.path().join("host")))
        );
    }

    #[test]
    fn messages_are_one_line_naming_the_flag() {
        for (missing, flag) in [
            (Missing::Privileged, "--privileged"),
            (Missing::HostPid, "--pid=host"),
            (Missing::HostMount("/host".into()), "-v /:/host"),
        ] {
            let text = missing.to_string();
            assert!(text.contains(flag), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }
}
