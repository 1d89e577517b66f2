//! Hostile input for the tests that check the host stays untouched: busybox root
//! filesystems with symlinks, FIFOs and devices planted where toolbox, systemd-nspawn or
//! the engine reads or mounts, as tarballs and as local images; the victim directory they
//! aim at; paths into it that only resolve on the host; and containers to target.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{TestEnv, describe, docker, wait_for};

/// What a test plants in a busybox root filesystem, at a path relative to its root.
pub enum Entry<'a> {
    /// A symlink to the target given.
    Link(&'a str, &'a str),
    /// A FIFO: whoever opens it waits for the other end.
    Fifo(&'a str),
    /// A character device of that major and minor number (1:5 is `/dev/zero`).
    CharDevice(&'a str, u32, u32),
}

/// A busybox root filesystem (`sh`, `cat`, `true`, `ls`, `sleep`, `bin -> usr/bin` and an
/// `etc/os-release`) with `entries` planted, each replacing what was at its path; made in
/// `dir/name` and returned as the tarball `dir/name.tar`.
pub fn rootfs_tarball(dir: &Path, name: &str, entries: &[Entry]) -> PathBuf {
    let tree = dir.join(name);
    fs::create_dir_all(tree.join("usr/bin")).unwrap();
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::copy("/bin/busybox", tree.join("usr/bin/busybox")).unwrap();
    for applet in ["sh", "cat", "true", "ls", "sleep"] {
        symlink("busybox", tree.join("usr/bin").join(applet)).unwrap();
    }
    symlink("usr/bin", tree.join("bin")).unwrap();
    fs::write(tree.join("etc/os-release"), "ID=hostile\n").unwrap();
    for entry in entries {
        let path = match entry {
            Entry::Link(path, _) | Entry::Fifo(path) | Entry::CharDevice(path, ..) => path,
        };
        let at = tree.join(path);
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        let _ = fs::remove_dir_all(&at);
        let _ = fs::remove_file(&at);
        let (kind, device) = match entry {
            Entry::Link(_, target) => {
                symlink(target, &at).unwrap();
                continue;
            }
            Entry::Fifo(_) => (rustix::fs::FileType::Fifo, 0),
            Entry::CharDevice(_, major, minor) => (
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::makedev(*major, *minor),
            ),
        };
        let mode = rustix::fs::Mode::from_raw_mode(0o644);
        rustix::fs::mknodat(rustix::fs::CWD, &at, kind, mode, device).unwrap();
    }
    let tarball = dir.join(format!("{name}.tar"));
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .output()
        .unwrap();
    assert!(tar.status.success(), "{}", describe(&tar));
    tarball
}

/// A root filesystem of [`rootfs_tarball`] `docker import`ed as a local image, tagged
/// `toolbox-test-NAME-PID:v`; when dropped, the containers made from it (anchors,
/// throwaway containers a failed test left) and then the image are removed.
pub struct ImportedImage(pub String);

impl ImportedImage {
    pub fn new(t: &TestEnv, name: &str, entries: &[Entry]) -> ImportedImage {
        Self::with_changes(t, name, entries, &[])
    }

    /// [`ImportedImage::new`] with `docker import --change` instructions
    /// (`LABEL RUN=...`).
    pub fn with_changes(
        t: &TestEnv,
        name: &str,
        entries: &[Entry],
        changes: &[&str],
    ) -> ImportedImage {
        let tarball = rootfs_tarball(&t.root, name, entries);
        let tag = format!("toolbox-test-{name}-{}:v", std::process::id());
        let mut args = vec!["import"];
        for change in changes {
            args.extend(["--change", change]);
        }
        args.extend([tarball.to_str().unwrap(), &tag]);
        docker(&args);
        ImportedImage(tag)
    }
}

impl Drop for ImportedImage {
    fn drop(&mut self) {
        remove_image(&self.0);
    }
}

/// Removes image `reference`, one of the test's own, and every container made from it
/// (anchors, throwaway containers a failed run left).
pub fn remove_image(reference: &str) {
    let made = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("ancestor={reference}"))
        .output();
    for id in made
        .map(|out| super::stdout(&out))
        .unwrap_or_default()
        .split_whitespace()
    {
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }
    let _ = Command::new("docker")
        .args(["rmi", "-f", reference])
        .output();
}

/// A victim directory beside the toolbox directory, with a file in it: what hostile
/// input aims at, compared by [`super::host_snapshot`].
pub fn victim(t: &TestEnv) -> PathBuf {
    let victim = t.root.join("victim");
    restore_victim(&victim);
    victim
}

/// Makes the victim directory anew, as [`victim`] made it: what one case left there must
/// not hide what the next one does.
pub fn restore_victim(victim: &Path) {
    let _ = fs::remove_dir_all(victim);
    fs::create_dir_all(victim).unwrap();
    fs::write(victim.join("resolv.conf"), "nameserver 192.0.2.1\n").unwrap();
}

/// The host's `path` as a toolbox reaches it from `host_root` (where it sees the host's
/// `/`: `/media/root`, `/host`) through the host's symlink `/bin -> usr/bin` and `..`:
/// `HOST_ROOT/bin/../..PATH`. Taken lexically, as a check that never looks at the host
/// would, that is `/media/PATH`, beside the host's `/`; followed as systemd-nspawn and
/// the kernel follow it, `bin` is `usr/bin` first and `../..` climbs back to the host's
/// `/`: it is the host's `path`.
pub fn behind_host_symlink(host_root: &str, path: &Path) -> String {
    assert_eq!(
        fs::read_link("/bin").ok(),
        Some(PathBuf::from("usr/bin")),
        "the host's /bin is not a symlink to usr/bin, which this path relies on"
    );
    format!("{host_root}/bin/../..{}", path.display())
}

/// A container running in the default daemon, removed with its anonymous volumes when
/// dropped.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker run -d --name NAME ARGS...` (options, image and command), with a name
    /// unique to `test`, this run and this container.
    pub fn run(test: &str, args: &[&str]) -> Container {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "toolbox-test-{test}-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        );
        let container = Container { name };
        let mut all = vec!["run", "-d", "--name", &container.name];
        all.extend_from_slice(args);
        docker(&all);
        container
    }

    /// Its main process on the host; 0 when it does not run.
    pub fn pid(&self) -> u32 {
        docker(&["inspect", "-f", "{{.State.Pid}}", &self.name])
            .parse()
            .unwrap()
    }

    /// Waits until the container has run `marker`'s creation: a file its command writes
    /// in its root once it is ready.
    pub fn wait_for_file(&self, marker: &str) {
        wait_for("the container to be ready", || {
            let pid = self.pid();
            pid != 0 && Path::new(&format!("/proc/{pid}/root{marker}")).exists()
        });
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "--volumes", &self.name])
            .stdout(Stdio::null())
            .output();
    }
}
