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
    /// Run as this user in the container.
    Root(u32),
    Privileged,
    HostPid,
    /// The host's `/` is not at this path (nothing there, or something else).
    HostMount(PathBuf),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Root(uid) => write!(
                f,
                "toolbox runs from its image as user {uid} in the container: start it as root \
                 (without `--user`)"
            ),
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

/// Checks the container toolbox runs in, through `proc_root` (`/proc`): root,
/// privileged, in the host's PID namespace (the initial one, the only one where the
/// kernel's threads, `kthreadd` as PID 2, are seen), and with something at `host_mount`
/// (whether it is the host's `/` is known once toolbox is in the host's mount namespace:
/// the caller compares). Returns the process whose namespaces are the host's: process 1,
/// or where its namespaces are out of reach (a sandbox may guard its init), the nearest
/// ancestor in neither this process's control group nor its mount namespace: the
/// engine's shim, outside the container.
pub fn check(proc_root: &Path, host_mount: &Path) -> Result<u32, Missing> {
    let me = std::process::id();
    let status =
        std::fs::read_to_string(proc_root.join(me.to_string()).join("status")).unwrap_or_default();
    let field = |name: &str, index: usize| {
        let line = status.lines().find_map(|l| l.strip_prefix(name))?;
        line.split_whitespace().nth(index).map(str::to_string)
    };
    let euid = field("Uid:", 1).and_then(|uid| uid.parse::<u32>().ok());
    if let Some(uid @ 1..) = euid {
        return Err(Missing::Root(uid));
    }
    let effective = field("CapEff:", 0)
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .unwrap_or(0);
    if NEEDED_CAPABILITIES
        .iter()
        .any(|cap| effective & (1 << cap) == 0)
    {
        return Err(Missing::Privileged);
    }
    let kthreadd = std::fs::read_to_string(proc_root.join("2/stat")).unwrap_or_default();
    if !kthreadd.starts_with("2 (kthreadd) ")
        || crate::sys::proc_stat(proc_root, 2).map(|stat| stat.parent) != Some(0)
    {
        return Err(Missing::HostPid);
    }
    let mounts = |pid: u32| {
        rfs::stat(proc_root.join(pid.to_string()).join("ns/mnt"))
            .ok()
            .map(|s| (s.st_dev, s.st_ino))
    };
    let cgroup =
        |pid: u32| std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok();
    let (our_mounts, our_cgroup) = (mounts(me), cgroup(me));
    // Outside the container: in neither its mount namespace nor its control group.
    let inside = |pid: u32| {
        mounts(pid).is_none_or(|theirs| Some(theirs) == our_mounts)
            || cgroup(pid).is_none_or(|theirs| Some(theirs) == our_cgroup)
    };
    let host = super::host_process(proc_root, inside);
    // The host's PID namespace, and no way into the host from it.
    let host = host.ok_or(Missing::Privileged)?;
    if !host_mount.is_dir() {
        return Err(Missing::HostMount(host_mount.to_path_buf()));
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/proc` holding this process (user `uid`, capabilities `cap_eff`), its
    /// ancestors, process 1 and, in the host's PID namespace, `kthreadd`; each process in
    /// the container or on the host: its mount namespace a file shared with the
    /// container's or the host's, its control group the container's or the host's.
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

    /// Where a process is.
    #[derive(Clone, Copy)]
    enum In {
        Host,
        Container,
        /// On the host, its namespaces out of reach.
        Guarded,
    }

    impl FakeProc {
        fn new(uid: u32, cap_eff: u64, host_pid_namespace: bool) -> FakeProc {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("container-mnt"), "container").unwrap();
            std::fs::write(dir.path().join("host-mnt"), "host").unwrap();
            std::fs::create_dir(dir.path().join("host")).unwrap();
            let proc = FakeProc { dir };
            let me = std::process::id();
            proc.process(me, 0, In::Container);
            std::fs::write(
                proc.path().join(me.to_string()).join("status"),
                format!(
                    "Name:\ttoolbox\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nCapEff:\t{cap_eff:016x}\n"
                ),
            )
            .unwrap();
            if host_pid_namespace {
                proc.process(2, 0, In::Host);
                std::fs::write(proc.path().join("2/stat"), stat_line(2, "kthreadd", 0)).unwrap();
            }
            proc
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        /// Process `pid`, child of `parent`, where `place` says.
        fn process(&self, pid: u32, parent: u32, place: In) -> &Self {
            let dir = self.path().join(pid.to_string());
            std::fs::create_dir_all(dir.join("ns")).unwrap();
            std::fs::write(dir.join("stat"), stat_line(pid, "a b", parent)).unwrap();
            let (mounts, cgroup) = match place {
                In::Host => (Some("host-mnt"), "0::/system.slice/containerd.service\n"),
                In::Container => (
                    Some("container-mnt"),
                    "0::/system.slice/docker-c0ffee.scope\n",
                ),
                In::Guarded => (None, "0::/init.scope\n"),
            };
            if let Some(mounts) = mounts {
                std::fs::hard_link(self.path().join(mounts), dir.join("ns/mnt")).unwrap();
            }
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
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
    fn the_host_is_process_1_or_else_the_nearest_ancestor_outside_the_container() {
        let proc = FakeProc::new(0, PRIVILEGED, true);
        proc.process(1, 0, In::Host)
            .process(700, 1, In::Host)
            .parent(700);
        assert_eq!(proc.check(), Ok(1));
        // Process 1 out of reach (a sandbox's init): the engine's shim is the host; a
        // process of the container in a mount namespace of its own (`unshare -m`) is not.
        let proc = FakeProc::new(0, PRIVILEGED, true);
        proc.process(1, 0, In::Guarded)
            .process(700, 1, In::Host)
            .process(800, 700, In::Container)
            .parent(800);
        std::fs::write(proc.path().join("800/ns/mnt"), "unshared").unwrap();
        assert_eq!(proc.check(), Ok(700));
    }

    #[test]
    fn each_missing_flag_is_named() {
        let proc = FakeProc::new(1000, 0, true);
        proc.process(1, 0, In::Host).parent(1);
        assert_eq!(proc.check(), Err(Missing::Root(1000)));

        let proc = FakeProc::new(0, UNPRIVILEGED, true);
        proc.process(1, 0, In::Host).parent(1);
        assert_eq!(proc.check(), Err(Missing::Privileged));
        // CAP_SYS_ADMIN alone (`--cap-add SYS_ADMIN`) is not enough to trace.
        let proc = FakeProc::new(0, UNPRIVILEGED | 1 << 21, true);
        proc.process(1, 0, In::Host).parent(1);
        assert_eq!(proc.check(), Err(Missing::Privileged));

        // A PID namespace of its own, or another container's (`--pid=container:X`): no
        // kernel threads there.
        let proc = FakeProc::new(0, PRIVILEGED, false);
        proc.process(1, 0, In::Container).parent(1);
        assert_eq!(proc.check(), Err(Missing::HostPid));

        let proc = FakeProc::new(0, PRIVILEGED, true);
        proc.process(1, 0, In::Host).parent(1);
        std::fs::remove_dir(proc.path().join("host")).unwrap();
        assert_eq!(
            proc.check(),
            Err(Missing::HostMount(proc.path().join("host")))
        );
    }

    #[test]
    fn messages_are_one_line_naming_the_flag() {
        for (missing, flag) in [
            (Missing::Root(1000), "--user"),
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
