//! tracing: what a session needs for bpftrace, perf and bcc's tools to trace the host
//! (`TOOLBOX_TRACING`, on by default). Pure: the host's facts ([`Kernel`]) and where its
//! kernel directories land in the toolbox go in, options come out.
//!
//! systemd-nspawn's seccomp filter refuses `bpf` and `perf_event_open` (systemd 252
//! `nspawn-seccomp.c` excludes them knowingly); tracefs, debugfs and the bpf filesystem
//! are not mounted in a container; bcc and bpftrace look for the kernel's headers under
//! `/lib/modules/$(uname -r)/build`, where a toolbox has the image's files. So a session
//! gets the two system calls, the host's three filesystems where the host has them
//! mounted (read-write: tools write `kprobe_events` and pin maps), the host's modules and
//! header directories read-only at the same paths (merged under the image's own files
//! when the image has some there, so nothing the image ships is hidden), and the
//! locked-memory limit raised as far as the host lets toolbox raise it.

use std::path::{Path, PathBuf};

use crate::host::kernel::{Kernel, Memlock};

/// The system calls tracing tools need that systemd-nspawn filters out.
pub const SYSTEM_CALLS: [&str; 2] = ["bpf", "perf_event_open"];

/// systemd 235 added `--system-call-filter=`.
const SYSTEM_CALL_FILTER_SINCE: u32 = 235;
/// systemd 239 added `--rlimit=`.
const RLIMIT_SINCE: u32 = 239;
/// systemd 220 added `--overlay-ro=`.
const OVERLAY_SINCE: u32 = 220;

/// A kernel directory of the host and the path inside a toolbox tools look for it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelDirectory {
    pub host: PathBuf,
    /// `/lib/modules/RELEASE` for the modules, the host's own path for headers.
    pub wanted: String,
}

/// The host's kernel directories to show inside a toolbox.
pub fn kernel_directories(kernel: &Kernel) -> Vec<KernelDirectory> {
    let modules = kernel.modules.iter().map(|host| KernelDirectory {
        host: host.clone(),
        wanted: format!("/lib/modules/{}", kernel.release),
    });
    let headers = kernel.headers.iter().map(|host| KernelDirectory {
        host: host.clone(),
        wanted: host.display().to_string(),
    });
    modules.chain(headers).collect()
}

/// The mounts tracing asks for, as systemd-nspawn options, for the session's mount points
/// to be placed with the rest (see `model::placement`): the filesystems, and the kernel
/// directories at the paths tools look at.
pub fn requests(kernel: &Kernel) -> Vec<String> {
    let filesystems = kernel.mounted.iter().map(|at| format!("--bind={at}"));
    let directories = kernel_directories(kernel)
        .into_iter()
        .map(|dir| format!("--bind-ro={}:{}", dir.host.display(), dir.wanted));
    filesystems.chain(directories).collect()
}

/// Where a kernel directory lands in a toolbox's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub host: PathBuf,
    /// Its path inside the toolbox, the tree's own symlinks resolved.
    pub destination: String,
    /// The tree's own directory there, on the host, when it has files in it.
    pub tree_has: Option<PathBuf>,
}

/// The systemd-nspawn options that let a session trace the host.
pub fn nspawn_options(kernel: &Kernel, placed: &[Placed], nspawn_version: u32) -> Vec<String> {
    let mut options = Vec::new();
    if nspawn_version >= SYSTEM_CALL_FILTER_SINCE {
        options.extend(
            SYSTEM_CALLS
                .iter()
                .map(|call| format!("--system-call-filter={call}")),
        );
    }
    options.extend(kernel.mounted.iter().map(|at| format!("--bind={at}")));
    for dir in placed {
        let host = dir.host.display();
        let destination = &dir.destination;
        match &dir.tree_has {
            // The image's files on top: what it ships stays, the host's fills in.
            Some(own) if nspawn_version >= OVERLAY_SINCE && !has_colon(own) => options.push(
                format!("--overlay-ro={host}:{}:{destination}", own.display()),
            ),
            _ => options.push(format!("--bind-ro={host}:{destination}")),
        }
    }
    if nspawn_version >= RLIMIT_SINCE
        && let Some(memlock) = kernel.memlock
    {
        let limit = match memlock {
            Memlock::Unlimited => "infinity".to_string(),
            Memlock::To(bytes) => bytes.to_string(),
        };
        options.push(format!("--rlimit=RLIMIT_MEMLOCK={limit}"));
    }
    options
}

/// systemd-nspawn splits mount options at `:`.
fn has_colon(path: &Path) -> bool {
    path.as_os_str().as_encoded_bytes().contains(&b':')
}

/// A super privileged container's binds for tracing, `SOURCE:DESTINATION[:OPTIONS]`. The
/// engine puts a bind over whatever the image has at its destination.
pub fn spc_binds(kernel: &Kernel) -> Vec<String> {
    let filesystems = kernel.mounted.iter().map(|at| format!("{at}:{at}"));
    let directories = kernel_directories(kernel)
        .into_iter()
        .map(|dir| format!("{}:{}:ro", dir.host.display(), dir.wanted));
    filesystems.chain(directories).collect()
}

/// A super privileged container's locked-memory limit, in bytes (-1: none).
pub fn spc_memlock(kernel: &Kernel) -> Option<i64> {
    kernel.memlock.map(|memlock| match memlock {
        Memlock::Unlimited => -1,
        Memlock::To(bytes) => i64::try_from(bytes).unwrap_or(-1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Kernel {
        Kernel {
            release: "6.1.0-57-amd64".into(),
            mounted: vec!["/sys/kernel/tracing", "/sys/fs/bpf"],
            modules: Some("/usr/lib/modules/6.1.0-57-amd64".into()),
            headers: vec!["/usr/src/linux-headers-6.1.0-57-amd64".into()],
            memlock: Some(Memlock::Unlimited),
        }
    }

    #[test]
    fn modules_are_wanted_where_tools_look_and_headers_where_they_are() {
        let wanted: Vec<String> = kernel_directories(&kernel())
            .into_iter()
            .map(|d| d.wanted)
            .collect();
        assert_eq!(
            wanted,
            [
                "/lib/modules/6.1.0-57-amd64",
                "/usr/src/linux-headers-6.1.0-57-amd64"
            ]
        );
    }

    #[test]
    fn a_session_gets_the_calls_the_mounted_filesystems_and_the_kernel_read_only() {
        let placed = [
            Placed {
                host: "/usr/lib/modules/6.1.0-57-amd64".into(),
                destination: "/usr/lib/modules/6.1.0-57-amd64".into(),
                tree_has: None,
            },
            Placed {
                host: "/usr/src/linux-headers-6.1.0-57-amd64".into(),
                destination: "/usr/src/linux-headers-6.1.0-57-amd64".into(),
                tree_has: Some("/t/root/usr/src/linux-headers-6.1.0-57-amd64".into()),
            },
        ];
        assert_eq!(
            nspawn_options(&kernel(), &placed, 252),
            [
                "--system-call-filter=bpf",
                "--system-call-filter=perf_event_open",
                "--bind=/sys/kernel/tracing",
                "--bind=/sys/fs/bpf",
                "--bind-ro=/usr/lib/modules/6.1.0-57-amd64:/usr/lib/modules/6.1.0-57-amd64",
                "--overlay-ro=/usr/src/linux-headers-6.1.0-57-amd64:\
                 /t/root/usr/src/linux-headers-6.1.0-57-amd64:\
                 /usr/src/linux-headers-6.1.0-57-amd64",
                "--rlimit=RLIMIT_MEMLOCK=infinity",
            ]
        );
    }

    #[test]
    fn old_systemd_gets_only_what_it_knows() {
        let placed = [Placed {
            host: "/lib/modules/6.1".into(),
            destination: "/lib/modules/6.1".into(),
            tree_has: Some("/t/lib/modules/6.1".into()),
        }];
        let options = nspawn_options(&kernel(), &placed, 219);
        assert_eq!(
            options,
            [
                "--bind=/sys/kernel/tracing",
                "--bind=/sys/fs/bpf",
                "--bind-ro=/lib/modules/6.1:/lib/modules/6.1",
            ]
        );
    }

    #[test]
    fn a_tree_path_with_a_colon_is_bound_over_instead() {
        let placed = [Placed {
            host: "/lib/modules/6.1".into(),
            destination: "/lib/modules/6.1".into(),
            tree_has: Some("/a:b/lib/modules/6.1".into()),
        }];
        let options = nspawn_options(&Kernel::default(), &placed, 252);
        assert!(options.contains(&"--bind-ro=/lib/modules/6.1:/lib/modules/6.1".to_string()));
    }

    #[test]
    fn the_memlock_limit_is_raised_only_as_far_as_allowed() {
        let mut kernel = kernel();
        kernel.memlock = Some(Memlock::To(67108864));
        assert!(
            nspawn_options(&kernel, &[], 252)
                .contains(&"--rlimit=RLIMIT_MEMLOCK=67108864".to_string())
        );
        assert_eq!(spc_memlock(&kernel), Some(67108864));
        kernel.memlock = None;
        assert!(
            !nspawn_options(&kernel, &[], 252)
                .iter()
                .any(|o| o.starts_with("--rlimit"))
        );
        assert_eq!(spc_memlock(&kernel), None);
    }

    #[test]
    fn a_super_privileged_container_binds_the_same() {
        assert_eq!(
            spc_binds(&kernel()),
            [
                "/sys/kernel/tracing:/sys/kernel/tracing",
                "/sys/fs/bpf:/sys/fs/bpf",
                "/usr/lib/modules/6.1.0-57-amd64:/lib/modules/6.1.0-57-amd64:ro",
                "/usr/src/linux-headers-6.1.0-57-amd64:/usr/src/linux-headers-6.1.0-57-amd64:ro",
            ]
        );
    }
}
