//! Shared harness for the end-to-end tests: each test gets a fresh toolbox directory, a
//! fake HOME and a clean environment, and drives the real binary against the real Docker
//! daemon and systemd-nspawn.
//!
//! When Docker, systemd-nspawn, root or the test images are missing, a test fails if
//! `TOOLBOX_E2E=required` (CI sets it) and otherwise prints why it skipped.

pub mod hostile;
pub mod process;
pub mod registry;

pub use hostile::*;
pub use process::*;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use sha2::Digest;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BUSYBOX_IMAGE: &str = "toolbox-busybox:latest";
pub const DEBIAN_IMAGE: &str = "toolbox-debian:bookworm";

pub struct TestEnv {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub home: PathBuf,
    pub toolboxes: PathBuf,
    /// The toolbox name for this test (`--name`): unique, so tests do not share trees,
    /// and suffixed with this run's ID, so containers a killed run left in the daemon
    /// (an SPC is named after its toolbox) never collide with the next run's.
    pub name: String,
    pub image: String,
}

/// Why the e2e prerequisites are not met, if they are not. `image` must be local when given.
fn missing(image: Option<&str>) -> Option<String> {
    if !toolbox::sys::is_root() {
        return Some("e2e tests need root".into());
    }
    if which("systemd-nspawn").is_none() {
        return Some("systemd-nspawn is not installed (scripts/setup-host installs it)".into());
    }
    let docker = match image {
        Some(image) => Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", image])
            .output(),
        None => Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .output(),
    };
    match docker {
        Err(e) => Some(format!("cannot run the docker client: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "Docker or image {} unavailable ({}); run scripts/setup-host and scripts/build-images",
            image.unwrap_or("(none)"),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// What test `name` needs is missing, for `reason`: fails when `TOOLBOX_E2E=required`,
/// else says why it skips (the caller then returns).
pub fn unavailable(name: &str, reason: &str) {
    if std::env::var("TOOLBOX_E2E").as_deref() == Ok("required") {
        panic!("TOOLBOX_E2E=required but {reason}");
    }
    eprintln!("skipped {name}: {reason}");
}

/// Whether systemd is PID 1 here (as sd_booted(3) tells).
pub fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

impl TestEnv {
    /// A fresh environment for the test `name` using the local test image `image`, or
    /// `None` (after saying why) when the prerequisites are missing and not required.
    pub fn new(name: &str, image: &str) -> Option<TestEnv> {
        Self::setup(name, image, true)
    }

    /// Like [`TestEnv::new`] for an image the test has toolbox pull.
    pub fn pulling(name: &str, image: &str) -> Option<TestEnv> {
        Self::setup(name, image, false)
    }

    fn setup(name: &str, image: &str, local: bool) -> Option<TestEnv> {
        if let Some(reason) = missing(local.then_some(image)) {
            unavailable(name, &reason);
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("toolbox-e2e-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        let home = root.join("home");
        let toolboxes = root.join("toolboxes");
        std::fs::create_dir_all(&home).unwrap();
        // The system-wide settings file, empty: one named and missing is warned about.
        std::fs::write(root.join("etc-default-toolbox"), "").unwrap();
        Some(TestEnv {
            _dir: dir,
            root,
            home,
            toolboxes,
            name: format!("{}-{:x}", name.replace('_', "-"), std::process::id()),
            image: image.into(),
        })
    }

    /// The toolbox binary with a clean environment pointing at this test's directories.
    pub fn command(&self) -> Command {
        self.command_through(&[])
    }

    /// [`TestEnv::command`] run through `wrapper` (a program and its arguments, which
    /// then runs toolbox), or directly when `wrapper` is empty.
    pub fn command_through(&self, wrapper: &[&str]) -> Command {
        let toolbox = env!("CARGO_BIN_EXE_toolbox");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(toolbox);
                command
            }
            None => Command::new(toolbox),
        };
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("USER", "tester")
            .env("TOOLBOX_DIRECTORY", &self.toolboxes)
            .env("TOOLBOX_DOCKER_IMAGE", &self.image)
            .env("TOOLBOX_NAME", &self.name)
            // Copy storage unless a test asks for another: most tests look at the tree.
            // The default (`auto`) has tests of its own, which remove this.
            .env("TOOLBOX_STORAGE", "copy")
            // The host's own /etc/default/toolbox, if it has one, stays out of the tests.
            .env("TOOLBOX_SYSTEM_CONFIG", self.system_config())
            .stdin(std::process::Stdio::null());
        // An engine under emulation answers that much later.
        if patience() > 1 {
            let stall = patient(Duration::from_secs(30)).as_secs();
            command.env("TOOLBOX_STALL_TIMEOUT", stall.to_string());
        }
        // In the testbed's Podman configuration the tests' docker client reaches Podman
        // through DOCKER_HOST, and toolbox finds Podman's socket itself, as on a host
        // with Podman alone.
        if let Some(host) = std::env::var_os("DOCKER_HOST").filter(|_| !podman_alone()) {
            command.env("DOCKER_HOST", host);
        }
        command
    }

    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command().args(args).output().unwrap()
    }

    /// The system-wide settings file this test's toolbox reads (`TOOLBOX_SYSTEM_CONFIG`),
    /// empty unless the test writes it.
    pub fn system_config(&self) -> PathBuf {
        self.root.join("etc-default-toolbox")
    }

    /// The toolbox's directory name: `${USER}-${TOOLBOX_NAME}`.
    pub fn toolbox_name(&self) -> String {
        format!("tester-{}", self.name)
    }

    pub fn tree(&self) -> PathBuf {
        self.toolboxes.join(self.toolbox_name())
    }

    /// Partial trees left in the toolbox directory (being built, or set aside), and
    /// copies of archives being imported.
    pub fn leftovers(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.toolboxes) else {
            return Vec::new();
        };
        entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".partial-") || n.starts_with(".import-"))
            .collect()
    }

    /// Containers labelled as belonging to this test's toolbox, running or not.
    pub fn containers(&self) -> Vec<String> {
        let filter = format!("label=toolbox.name={}", self.toolbox_name());
        docker(&["ps", "-a", "-q", "--filter", &filter])
            .split_whitespace()
            .map(String::from)
            .collect()
    }
}

impl Drop for TestEnv {
    /// Removes what a failed test can leave outside its directory: the anchor containers
    /// of its overlay toolboxes, its super privileged containers, and its mounts.
    fn drop(&mut self) {
        let spcs = format!("label=toolbox.directory={}", self.toolboxes.display());
        let spcs = Command::new("docker")
            .args(["ps", "-a", "-q", "--filter", &spcs])
            .output();
        for id in spcs
            .map(|out| stdout(&out))
            .unwrap_or_default()
            .split_whitespace()
        {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
        let prefix = format!("{}/", self.toolboxes.display());
        let anchors = Command::new("docker")
            .args(["ps", "-a", "--filter", "label=toolbox.anchor"])
            .args(["--format", "{{.ID}} {{.Label \"toolbox.anchor\"}}"])
            .output();
        for line in anchors.map(|out| stdout(&out)).unwrap_or_default().lines() {
            if let Some((id, path)) = line.split_once(' ')
                && path.starts_with(&prefix)
            {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for mount_point in mountinfo.lines().filter_map(|l| l.split(' ').nth(4)) {
            if mount_point.starts_with(&prefix) {
                let _ = Command::new("umount").args(["-l", mount_point]).output();
            }
        }
    }
}

/// Runs the docker client, which must succeed, and returns its output.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The toolbox command with overlay storage where the engine offers it (see
/// [`storages`]); elsewhere with copy storage, which every toolbox has there.
pub fn overlay_command(t: &TestEnv) -> Command {
    let mut command = t.command();
    if storages().contains(&"overlay") {
        command.env("TOOLBOX_STORAGE", "overlay");
    }
    command
}

/// The storage modes a toolbox can have with the engine the tests run against: `copy`,
/// and `overlay` where that engine keeps its images in layers toolbox mounts: Docker's
/// overlay2, its containerd image store with snapshotter `overlayfs`, Podman's `overlay`.
pub fn storages() -> Vec<&'static str> {
    match matches!(storage_driver().0.as_str(), "overlay2" | "overlay")
        || containerd_image_store() && storage_driver().0 == "overlayfs"
    {
        true => vec!["copy", "overlay"],
        false => vec!["copy"],
    }
}

/// The engine's storage driver and its status, as `docker info` says them.
fn storage_driver() -> &'static (String, String) {
    static DRIVER: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    DRIVER.get_or_init(|| {
        let info = Command::new("docker")
            .args(["info", "--format", "{{.Driver}} {{.DriverStatus}}"])
            .output()
            .map(|out| stdout(&out))
            .unwrap_or_default();
        let (driver, status) = info.trim().split_once(' ').unwrap_or((info.trim(), ""));
        (driver.to_string(), status.to_string())
    })
}

/// Whether the engine is Docker with its containerd image store (the default of new
/// Docker 29 installs): its image IDs are manifest digests, its layers containerd's
/// snapshots.
pub fn containerd_image_store() -> bool {
    storage_driver().1.contains("io.containerd.snapshotter.v1")
}

/// The standard output of a run that must have succeeded.
pub fn succeeded(out: &Output) -> String {
    assert_eq!(status(out), 0, "{}", describe(out));
    stdout(out)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// toolbox's own lines on stderr (systemd-nspawn may add warnings of its own).
pub fn toolbox_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("toolbox:"))
        .map(String::from)
        .collect()
}

pub fn status(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn read_link(path: impl AsRef<Path>) -> String {
    std::fs::read_link(path).unwrap().display().to_string()
}

pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + patient(Duration::from_secs(30));
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn wait_exit(child: &mut Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + patient(Duration::from_secs(20));
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Whether a process whose command line matches `pattern` (`pgrep -f`) runs.
pub fn running(pattern: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", "--", pattern])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// A toolbox command line that leaves `command` running in the background after the
/// session, as `setsid CMD &` in a shell does (busybox's shell: any image has it).
pub fn leave_running(command: &str) -> [String; 4] {
    [
        "busybox".into(),
        "sh".into(),
        "-c".into(),
        format!("setsid {command} </dev/null >/dev/null 2>&1 & echo started"),
    ]
}

/// A unique local tag for `image`, removed when dropped.
/// Names `image` (a name, or an ID) `name` in the engine the tests use.
/// Whether the engine is Podman alone (the testbed's Podman configuration), reached by
/// the tests' docker client through DOCKER_HOST.
pub fn podman_alone() -> bool {
    std::env::var("TOOLBOX_E2E_TESTBED").as_deref() == Ok("podman")
}

pub fn tag(image: &str, name: &str) {
    // Podman's API reads `sha256:ID` as a name and a tag; both engines take the bare ID.
    let image = image.strip_prefix("sha256:").unwrap_or(image);
    docker(&["tag", image, name]);
}

pub struct Tag(pub String);

impl Tag {
    pub fn new(test: &str, image: &str) -> Tag {
        let tag = Tag(format!("toolbox-test-{test}-{}:v", std::process::id()));
        tag.point_at(image);
        tag
    }

    pub fn point_at(&self, image: &str) {
        tag(image, &self.0);
    }
}

impl Drop for Tag {
    /// Untagged; forced only where this is the image's last name and an anchor container
    /// still uses it (the test's toolboxes are removed after the tag). Never forced
    /// otherwise: through Podman's service, the plain removal of one name among several
    /// can fail while a container uses the image, and the forced one then deletes the
    /// image with every name.
    fn drop(&mut self) {
        let untagged = Command::new("docker").args(["rmi", &self.0]).output();
        if untagged.is_ok_and(|out| out.status.success()) {
            return;
        }
        let names = Command::new("docker")
            .args(["image", "inspect", "--format", "{{len .RepoTags}}", &self.0])
            .output()
            .map(|out| stdout(&out).trim().to_string());
        if names.is_ok_and(|names| names == "1") {
            let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
        }
    }
}

/// Builds image `tag` from `dockerfile` with the daemon's legacy builder (no registry and
/// no network needed: `FROM` a local image).
pub fn build_image(tag: &str, dockerfile: &str) {
    let context = tempfile::tempdir().unwrap();
    fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
    let out = Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "--network=none", "-t", tag])
        .arg(context.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cannot build {tag}: {}",
        describe(&out)
    );
}

/// Imports a one-file-plus-busybox image with `marker` in /etc/marker; returns its ID.
pub fn import_marker_image(marker: &str) -> String {
    import_marker_image_into(None, marker)
}

/// [`import_marker_image`] into the daemon at `host` (`-H`), or the default one.
pub fn import_marker_image_into(host: Option<&str>, marker: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
    fs::create_dir_all(dir.path().join("etc")).unwrap();
    fs::copy("/bin/busybox", dir.path().join("usr/bin/busybox")).unwrap();
    fs::write(dir.path().join("etc/marker"), marker).unwrap();
    let tar = Command::new("tar")
        .args(["-C", dir.path().to_str().unwrap(), "-c", "."])
        .output()
        .unwrap();
    let mut import = Command::new("docker")
        .args(host.map(|h| ["-H", h]).into_iter().flatten())
        .args(["import", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    import.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    let out = import.wait_with_output().unwrap();
    assert!(out.status.success());
    // Docker prints the ID; through Podman's service, `ID: sha256:ID`.
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    printed
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// The core host checks, through `run` (a toolbox command line): the host's `/` is at
/// `host_root`, the PID, IPC, UTS and network namespaces are the host's, and host PID 1
/// is visible.
pub fn assert_sees_the_host(run: &dyn Fn(&[&str]) -> Output, host_root: &str) {
    let out = run(&["cat", &format!("{host_root}/etc/hostname")]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), fs::read_to_string("/etc/hostname").unwrap());
    for ns in ["pid", "ipc", "uts", "net"] {
        let path = format!("/proc/self/ns/{ns}");
        let out = run(&["readlink", &path]);
        assert_eq!(status(&out), 0, "{}", describe(&out));
        assert_eq!(
            stdout(&out).trim(),
            read_link(&path),
            "{ns} namespace differs"
        );
    }
    let out = run(&["cat", "/proc/1/comm"]);
    assert_eq!(
        stdout(&out),
        fs::read_to_string("/proc/1/comm").unwrap(),
        "host PID 1 is not visible"
    );
}

/// The command's own exit status comes back through `run`, and 126/127 for a command
/// that cannot run or is not found in a busybox toolbox.
/// gdb and strace, run with `run` (in a toolbox with them), attach to host process
/// `pid`, a shell writing `x` lines in a loop.
pub fn assert_gdb_and_strace_attach(run: &dyn Fn(&[&str]) -> Output, pid: &str) {
    let out = run(&["gdb", "-p", pid, "-batch", "-ex", "info inferiors"]);
    assert!(
        succeeded(&out).contains(&format!("process {pid}")),
        "{}",
        describe(&out)
    );
    let out = run(&[
        "timeout",
        "-s",
        "INT",
        "2",
        "strace",
        "-e",
        "trace=write",
        "-p",
        pid,
    ]);
    let traced = String::from_utf8_lossy(&out.stderr);
    assert!(
        traced.contains(&format!("Process {pid} attached")) && traced.contains("write(1, \"x\\n\""),
        "{}",
        describe(&out)
    );
}

pub fn assert_statuses_come_back(run: &dyn Fn(&[&str]) -> Output) {
    let cases: &[(&[&str], i32)] = &[
        (&["true"], 0),
        (&["false"], 1),
        (&["sh", "-c", "exit 7"], 7),
        (&["/etc/passwd"], 126),
        (&["/usr/bin"], 126),
        (&["no-such-command"], 127),
        (&["/no/such/path"], 127),
    ];
    for (args, expected) in cases {
        let out = run(args);
        assert_eq!(status(&out), *expected, "{args:?}: {}", describe(&out));
    }
}

/// A second dockerd with a storage driver (or containerd snapshotter) of the test's choice, on its own socket, data
/// root, exec root and bridge; stopped (and its files and bridge removed) when dropped.
pub struct OwnDaemon {
    dir: tempfile::TempDir,
    child: Child,
    /// Its address, for `DOCKER_HOST` and `docker -H`.
    pub host: String,
    /// A bridge of its own: with `--bridge=none`, dockerd deletes `docker0`, the bridge
    /// of the daemon every other test uses.
    bridge: String,
    driver: &'static str,
}

impl OwnDaemon {
    /// A daemon with the `vfs` storage driver, whose layers overlay storage cannot use.
    pub fn vfs() -> OwnDaemon {
        Self::start("vfs")
    }

    /// A daemon that keeps images as the one the tests use does, in layers overlay
    /// storage mounts, to prune and restart without touching that one: with its containerd image store (snapshotter `overlayfs`, in a
    /// containerd namespace of its own) where that one has it, else with `overlay2`.
    pub fn like_the_tested_one() -> OwnDaemon {
        let status = docker(&["info", "--format", "{{.DriverStatus}}"]);
        match status.contains("io.containerd.snapshotter.v1") {
            true => Self::start("overlayfs"),
            false => Self::start("overlay2"),
        }
    }

    fn start(driver: &'static str) -> OwnDaemon {
        static DAEMONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = tempfile::Builder::new()
            .prefix("toolbox-dockerd-")
            .tempdir()
            .unwrap();
        let host = format!("unix://{}/docker.sock", dir.path().display());
        let number = DAEMONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bridge = format!("tbx{}-{number}", std::process::id() % 100_000);
        let made = Command::new("ip")
            .args(["link", "add", &bridge, "type", "bridge"])
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", describe(&made));
        let child = Self::spawn(dir.path(), &host, &bridge, driver);
        let daemon = OwnDaemon {
            dir,
            child,
            host,
            bridge,
            driver,
        };
        daemon.wait_until_up();
        daemon
    }

    fn spawn(dir: &Path, host: &str, bridge: &str, driver: &str) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .unwrap();
        let path = |name: &str| dir.join(name).display().to_string();
        // A configuration of its own: the host's (Docker's containerd image store, in a
        // testbed configuration) is not this daemon's.
        let config = dir.join("daemon.json");
        let store = driver == "overlayfs";
        if !config.exists() {
            let features = r#"{"features": {"containerd-snapshotter": true}}"#;
            fs::write(&config, if store { features } else { "{}" }).unwrap();
        }
        // With the containerd image store, it shares the host's containerd: in a namespace
        // of its own, not Docker's `moby`.
        let namespace = format!("toolbox-{bridge}");
        let namespaces = [
            "--containerd-namespace".to_string(),
            namespace.clone(),
            "--containerd-plugins-namespace".to_string(),
            format!("{namespace}-plugins"),
        ];
        Command::new("dockerd")
            .args(["--config-file", &path("daemon.json")])
            .args(namespaces.iter().filter(|_| store))
            .args([
                "--storage-driver",
                driver,
                "--iptables=false",
                "--bridge",
                bridge,
            ])
            .args(["--data-root", &path("data"), "--exec-root", &path("exec")])
            .args(["--pidfile", &path("dockerd.pid"), "-H", host])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start a second dockerd")
    }

    fn wait_until_up(&self) {
        let answers = || {
            Command::new("docker")
                .args(["-H", &self.host, "version"])
                .output()
                .is_ok_and(|out| out.status.success())
        };
        let deadline = Instant::now() + patient(Duration::from_secs(30));
        while !answers() {
            if Instant::now() > deadline {
                let log = fs::read_to_string(self.dir.path().join("dockerd.log"));
                let log = log.unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                panic!("the {} dockerd does not answer: {tail:#?}", self.driver);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the daemon as its service manager does at shutdown (SIGTERM, then waits):
    /// it stops its containers first.
    pub fn stop(&mut self) {
        toolbox::sys::signals::send(self.child.id() as i32, rustix::process::Signal::TERM);
        assert!(
            wait_exit(&mut self.child).is_some(),
            "the {} dockerd did not stop",
            self.driver
        );
    }

    /// Kills the daemon outright (SIGKILL) with the containerd it started, as a crash of
    /// its service does.
    pub fn kill(&mut self) {
        let daemon = self.child.id();
        let children: Vec<i32> = fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| {
                toolbox::sys::proc_stat(Path::new("/proc"), pid).is_some_and(|s| s.parent == daemon)
            })
            .map(|pid| pid as i32)
            .collect();
        let _ = self.child.kill();
        for pid in children {
            toolbox::sys::signals::send(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
    }

    /// Starts the daemon again on the same socket and data root, as after a crash. The
    /// dead daemon's pid files go first: its containerd, orphaned, may stay a zombie
    /// where PID 1 does not reap (as on this test machine), and dockerd would take that
    /// PID for a live containerd and wait for it forever.
    pub fn restart(&mut self) {
        let _ = fs::remove_file(self.dir.path().join("dockerd.pid"));
        let _ = fs::remove_file(self.dir.path().join("exec/containerd/containerd.pid"));
        self.child = Self::spawn(self.dir.path(), &self.host, &self.bridge, self.driver);
        self.wait_until_up();
    }

    /// Runs the docker client against this daemon; it must succeed.
    pub fn docker(&self, args: &[&str]) -> String {
        let mut all = vec!["-H", self.host.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }

    /// Copies `image` from the default daemon into this one (`docker save | docker load`),
    /// under the name `image`: Podman's service saves `localhost/NAME`, which this daemon
    /// would keep as it is.
    pub fn load(&self, image: &str) {
        let mut saved = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let loaded = Command::new("docker")
            .args(["-H", &self.host, "load", "-q"])
            .stdin(saved.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(saved.wait().unwrap().success(), "docker save {image}");
        assert!(loaded.status.success(), "{}", describe(&loaded));
        let printed = stdout(&loaded);
        let name = printed
            .lines()
            .find_map(|line| line.strip_prefix("Loaded image: "))
            .map(str::trim);
        if let Some(name) = name.filter(|&name| name != image) {
            self.docker(&["tag", name, image]);
        }
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        toolbox::sys::signals::send(self.child.id() as i32, rustix::process::Signal::TERM);
        if wait_exit(&mut self.child).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // dockerd bind-mounts its data root on itself; a killed one leaves that mount.
        let data = self.dir.path().join("data");
        let _ = Command::new("umount").arg("-l").arg(&data).output();
        let _ = fs::remove_dir_all(self.dir.path());
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// One line per path of the tree at `root`: type, size and content hash, link target,
/// mode, owner, modification time (not for directories, whose times move as entries are
/// added), xattrs and hard-link group; for comparing trees.
pub fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let kind = meta.file_type();
            let detail = if kind.is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if kind.is_dir() {
                pending.push(path.clone());
                "dir".to_string()
            } else if kind.is_file() {
                format!(
                    "file {} {:?}",
                    meta.len(),
                    sha2::Sha256::digest(fs::read(&path).unwrap()).as_slice()
                )
            } else if kind.is_char_device() || kind.is_block_device() {
                format!("dev {}", meta.rdev())
            } else if kind.is_fifo() {
                "fifo".to_string()
            } else {
                "other".to_string()
            };
            let mut xattrs = Vec::new();
            if !kind.is_symlink() {
                let mut names = [0u8; 4096];
                let n = rustix::fs::listxattr(&path, &mut names[..]).unwrap_or(0);
                for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
                    let name = std::str::from_utf8(name).unwrap();
                    let mut value = [0u8; 4096];
                    let len = rustix::fs::getxattr(&path, name, &mut value[..]).unwrap_or(0);
                    xattrs.push(format!("{name}={:?}", &value[..len]));
                }
            }
            // Hard links: every name of an inode points at the first one listed.
            let group = if meta.nlink() > 1 && !kind.is_dir() {
                let first = inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_insert_with(|| rel.clone());
                format!(" linked-to {first}")
            } else {
                String::new()
            };
            // Directory times change as entries are added inside: compared for the rest.
            let mtime = if kind.is_dir() {
                String::new()
            } else {
                format!(" mtime {}", meta.mtime())
            };
            out.insert(
                rel,
                format!(
                    "{detail} mode {:o} owner {}:{}{mtime} {}{group}",
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    xattrs.join(",")
                ),
            );
        }
    }
    out
}

/// The tree of a toolbox, without what only one way of making it, or entering it, adds:
/// toolbox's metadata, the empty files `docker export` puts where the container's mounts
/// go, and the mount points the first entry creates (systemd-nspawn's, `host-exec`, and
/// the host's kernel modules and headers for tracing).
pub fn tree_listing(tree: &Path) -> BTreeMap<String, String> {
    let mut listing = listing(tree);
    let kernel = toolbox::host::kernel::Kernel::read(Path::new("/proc"));
    let mut kernel_points = vec![
        "usr/lib/modules".to_string(),
        format!("usr/lib/modules/{}", kernel.release),
    ];
    kernel_points.extend(kernel.headers.iter().map(|dir| {
        dir.display()
            .to_string()
            .trim_start_matches('/')
            .to_string()
    }));
    for point in kernel_points {
        if listing
            .get(&point)
            .is_some_and(|line| line.starts_with("dir "))
        {
            listing.remove(&point);
        }
    }
    for not_the_image in [
        ".toolbox.json",
        ".dockerenv",
        "dev/console",
        "etc/hostname",
        "etc/hosts",
        "etc/resolv.conf",
        "etc/mtab",
        "media/root",
        "usr/local/bin/host-exec",
        "var/log/journal",
    ] {
        listing.remove(not_the_image);
    }
    listing
}

pub fn assert_same_tree(exported: &Path, imported: &Path) {
    // Both made from one image, one through an engine's export, one imported.
    let (exported, imported) = (tree_listing(exported), tree_listing(imported));
    assert!(exported.len() > 100, "only {} paths", exported.len());
    let differing = differences(&exported, &imported, ("export", "import"));
    assert!(differing.is_empty(), "{differing:#?}");
}

/// The paths whose listings differ between two trees (at most 20), each saying what the
/// trees, called `names`, hold there.
pub fn differences(
    expected: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
    names: (&str, &str),
) -> Vec<String> {
    let (first, second) = names;
    expected
        .iter()
        .filter(|(path, line)| actual.get(*path) != Some(line))
        .map(|(path, line)| format!("{path}: {first} {line:?}, {second} {:?}", actual.get(path)))
        .chain(
            actual
                .keys()
                .filter(|path| !expected.contains_key(*path))
                .map(|path| format!("{path}: only {second}")),
        )
        .take(20)
        .collect()
}

/// A wrapper for [`TestEnv::command_through`] that runs toolbox with the host's `/` as
/// every systemd host has it, a shared mount (`mount --make-rshared /`), in a mount
/// namespace of its own so the test machine's own mounts stay as they are.
pub const SHARED_ROOT: &[&str] = &[
    "unshare",
    "--mount",
    "--propagation",
    "unchanged",
    "sh",
    "-c",
    "mount --make-rshared / && exec \"$@\"",
    "sh",
];

/// The ways the host's `/` is mounted that a test runs toolbox under: private (this
/// machine) and shared (every systemd host), with the wrapper for each.
pub const ROOT_PROPAGATIONS: [(&str, &[&str]); 2] = [("private", &[]), ("shared", SHARED_ROOT)];

/// The host's state a toolbox session must leave as it was: the entries of `/` and of
/// `/run` (less the daemons' own), everything under `/etc` and `/media`, and everything
/// under `victim`, with type, mode, owner, link target and content; and the kernel's
/// filesystems a session binds for tracing, where a directory made is a kernel object
/// (an ftrace instance, a bpffs directory): the entries of
/// `/sys/kernel/tracing/instances` and everything under `/sys/fs/bpf`, by name and type.
pub fn host_snapshot(victim: &Path) -> BTreeMap<String, String> {
    let mut snapshot = BTreeMap::new();
    for (top, recursive) in [
        (Path::new("/"), false),
        (Path::new("/run"), false),
        (Path::new("/etc"), true),
        (Path::new("/media"), true),
        (victim, true),
    ] {
        let entries = if recursive {
            listing(top)
        } else {
            fs::read_dir(top)
                .unwrap()
                .map(|e| e.unwrap().path())
                .map(|path| {
                    let meta = fs::symlink_metadata(&path).unwrap();
                    let link = fs::read_link(&path).ok();
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    let line = format!(
                        "{:?} mode {:o} link {link:?}",
                        meta.file_type(),
                        meta.mode()
                    );
                    (name, line)
                })
                .filter(|(name, _)| !(top == Path::new("/run") && is_daemon_state(name)))
                .collect()
        };
        for (path, line) in entries {
            snapshot.insert(format!("{}/{path}", top.display()), line);
        }
    }
    for (top, recursive) in [
        (Path::new("/sys/kernel/tracing/instances"), false),
        (Path::new("/sys/fs/bpf"), true),
    ] {
        for (path, kind) in kinds(top, recursive) {
            snapshot.insert(format!("{}/{path}", top.display()), kind);
        }
    }
    snapshot
}

/// The entries under `top` (beneath it too when `recursive`), relative to it, with their
/// type only: nothing is read from them (reading a tracefs file can start or change a
/// trace, and a bpffs pin is no file to read).
fn kinds(top: &Path, recursive: bool) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut pending = vec![top.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && recursive {
                pending.push(path.clone());
            }
            let rel = path.strip_prefix(top).unwrap().display().to_string();
            found.insert(rel, format!("{kind:?}"));
        }
    }
    found
}

/// Entries of the host's `/run` that its daemons and other tests change while tests run
/// (Docker, containerd, Podman's service, sudo's timestamps, user accounts added).
fn is_daemon_state(name: &str) -> bool {
    [
        "docker",
        "containerd",
        "containers",
        "libpod",
        "crun",
        "runc",
        "netns",
        "sudo",
        "user",
        "adduser",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
}

/// Held by a test that changes the host's own files (a user added for the sudo test) and
/// by each test that compares snapshots of them, so that neither sees the other's changes.
pub fn host_state_lock() -> std::sync::MutexGuard<'static, ()> {
    static HOST_STATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HOST_STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asserts that the host is as `before` found it (see [`host_snapshot`]), and that none
/// of the marks a toolbox session leaves when it runs on the host's own `/` is there.
pub fn assert_host_untouched(before: &BTreeMap<String, String>, victim: &Path, case: &str) {
    let after = host_snapshot(victim);
    let changed = differences(before, &after, ("before", "after"));
    assert!(changed.is_empty(), "{case}: the host changed: {changed:#?}");
    for mark in ["/run/.toolboxenv", "/run/host", "/media/root"] {
        assert!(
            !Path::new(mark).exists(),
            "{case}: {mark} exists on the host"
        );
    }
    let resolv = fs::metadata("/etc/resolv.conf").unwrap();
    assert!(
        resolv.len() > 0,
        "{case}: the host's /etc/resolv.conf is empty"
    );
}

/// A reliability figure: the cases a test ran and how each ended, printed as one line
/// `figure CLASS cases=N passed=P failed=F [KEY=VALUE...]` that scripts/reliability
/// turns into a row of docs/RELIABILITY.md. Each case runs to its end even when one
/// before it failed, so a failing test still reports how far it got; [`Figure::finish`]
/// then fails the test with every failed case. A test that panics outside a case prints
/// what it has so far, marked `incomplete`.
pub struct Figure {
    class: &'static str,
    cases: usize,
    failures: Vec<String>,
    counts: Vec<(&'static str, String)>,
    finished: bool,
}

impl Figure {
    pub fn new(class: &'static str) -> Figure {
        Figure {
            class,
            cases: 0,
            failures: Vec::new(),
            counts: Vec::new(),
            finished: false,
        }
    }

    /// Runs one case; a panic in it (a failed assertion) is recorded as its failure.
    pub fn case<T>(&mut self, name: &str, case: impl FnOnce() -> T) -> Option<T> {
        self.cases += 1;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(case)) {
            Ok(value) => Some(value),
            Err(panic) => {
                self.failures
                    .push(format!("{name}: {}", panic_message(panic.as_ref())));
                None
            }
        }
    }

    /// A further measured figure for the line (`landed=19`).
    pub fn set(&mut self, key: &'static str, value: impl std::fmt::Display) {
        self.counts.retain(|(k, _)| *k != key);
        self.counts.push((key, value.to_string()));
    }

    fn line(&self) -> String {
        let mut line = format!(
            "figure {} cases={} passed={} failed={}",
            self.class,
            self.cases,
            self.cases - self.failures.len(),
            self.failures.len()
        );
        for (key, value) in &self.counts {
            line.push_str(&format!(" {key}={value}"));
        }
        line
    }

    /// Prints the figure and fails the test if any case failed.
    pub fn finish(mut self) {
        self.finished = true;
        println!("{}", self.line());
        assert!(
            self.failures.is_empty(),
            "{} of {} cases failed:\n{}",
            self.failures.len(),
            self.cases,
            self.failures.join("\n")
        );
    }
}

/// What a panic (a failed assertion) said.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Runs every check, then fails with what each that failed said: a case reports every
/// way it went wrong (its status and the host's changes), not only the first.
pub fn check_all(checks: &[&dyn Fn()]) {
    let failed: Vec<String> = checks
        .iter()
        .filter_map(|check| std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)).err())
        .map(|panic| panic_message(panic.as_ref()))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

impl Drop for Figure {
    fn drop(&mut self) {
        if !self.finished {
            println!("{} incomplete", self.line());
        }
    }
}
