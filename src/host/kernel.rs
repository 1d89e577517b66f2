//! kernel: what the running kernel and the host offer the tools that trace it: where
//! tracefs, debugfs and the bpf filesystem are mounted, the kernel's modules and headers,
//! and how far the locked-memory limit may be raised. Only reads.

use std::path::{Path, PathBuf};

/// The filesystems tracing tools use, and where systemd mounts them on every host.
pub const TRACING_FILESYSTEMS: [(&str, &str); 3] = [
    ("tracefs", "/sys/kernel/tracing"),
    ("debugfs", "/sys/kernel/debug"),
    ("bpf", "/sys/fs/bpf"),
];

/// Where a distribution keeps a kernel's modules (`/lib/modules` is `/usr/lib/modules` on
/// merged-`/usr` hosts such as Fedora CoreOS and Flatcar).
const MODULE_DIRECTORIES: [&str; 2] = ["/lib/modules", "/usr/lib/modules"];
/// Where a distribution keeps kernel headers: Debian's and Ubuntu's
/// `/usr/src/linux-headers-*`, Fedora's `/usr/src/kernels/*`.
const SOURCE_DIRECTORY: &str = "/usr/src";

/// How far a session's locked-memory limit may be raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memlock {
    /// toolbox holds `CAP_SYS_RESOURCE`: no limit.
    Unlimited,
    /// Up to the hard limit toolbox has, above its soft limit.
    To(u64),
}

/// The running kernel, as tracing tools inside a toolbox need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
    /// The mount points of [`TRACING_FILESYSTEMS`] where the host has that filesystem
    /// mounted.
    pub mounted: Vec<&'static str>,
    /// The host's directory of this kernel's modules, symlinks resolved.
    pub modules: Option<PathBuf>,
    /// The host's kernel header directories in `/usr/src`.
    pub headers: Vec<PathBuf>,
    /// How far the locked-memory limit may be raised; `None`: not at all.
    pub memlock: Option<Memlock>,
}

/// `CAP_SYS_RESOURCE`, which raising a hard limit needs.
const CAP_SYS_RESOURCE: u32 = 24;

impl Kernel {
    /// Reads the running kernel's facts from the host (`proc_root` is the host's `/proc`).
    pub fn read(proc_root: &Path) -> Kernel {
        let release = rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned();
        let mountinfo =
            std::fs::read_to_string(proc_root.join("self/mountinfo")).unwrap_or_default();
        let mounted = TRACING_FILESYSTEMS
            .iter()
            .filter(|(fstype, at)| mounted(&mountinfo, fstype, at))
            .map(|(_, at)| *at)
            .collect();
        let modules = MODULE_DIRECTORIES
            .iter()
            .map(|dir| Path::new(dir).join(&release))
            .find(|dir| dir.is_dir())
            .and_then(|dir| dir.canonicalize().ok());
        let headers = kernel_sources(Path::new(SOURCE_DIRECTORY));
        let privileged = crate::sys::capability_bounding_set(proc_root)
            .is_some_and(|(set, _)| set & (1 << CAP_SYS_RESOURCE) != 0);
        let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock);
        let memlock = match (privileged, limit.current, limit.maximum) {
            (true, _, _) => Some(Memlock::Unlimited),
            (false, Some(soft), Some(hard)) if soft < hard => Some(Memlock::To(hard)),
            (false, Some(_), None) => Some(Memlock::Unlimited),
            _ => None,
        };
        Kernel {
            release,
            mounted,
            modules,
            headers,
            memlock,
        }
    }
}

/// Whether `mountinfo` (proc(5)'s format) has a filesystem of type `fstype` mounted at
/// `at`.
pub fn mounted(mountinfo: &str, fstype: &str, at: &str) -> bool {
    mountinfo.lines().any(|line| {
        let Some((fields, rest)) = line.split_once(" - ") else {
            return false;
        };
        fields.split(' ').nth(4) == Some(at) && rest.split(' ').next() == Some(fstype)
    })
}

/// The kernel header directories in `dir`: `linux-*` and `kernels`, symlinks resolved.
fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("linux") || name == "kernels"
        })
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_found_by_type_and_place() {
        let mountinfo = "\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
30 22 0:13 / /sys/kernel/tracing rw,relatime shared:43 - tracefs tracefs rw
31 22 0:8 / /sys/kernel/debug rw,relatime - debugfs debugfs rw
40 1 0:50 / /srv/sys/fs/bpf rw - bpf bpf rw
";
        assert!(mounted(mountinfo, "tracefs", "/sys/kernel/tracing"));
        assert!(mounted(mountinfo, "debugfs", "/sys/kernel/debug"));
        assert!(!mounted(mountinfo, "bpf", "/sys/fs/bpf"));
        assert!(!mounted(mountinfo, "tracefs", "/sys/kernel/debug"));
    }

    #[test]
    fn header_directories_are_the_kernels_only() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["linux-headers-6.1.0-57-amd64", "kernels", "python3.11"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        std::fs::write(dir.path().join("linux-notes"), "").unwrap();
        let names: Vec<String> = kernel_sources(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["kernels", "linux-headers-6.1.0-57-amd64"]);
    }
}
