//! Shared harness for the end-to-end tests: each test gets a fresh toolbox directory, a
//! fake HOME and a clean environment, and drives the real binary against the real Docker
//! daemon and systemd-nspawn.
//!
//! When Docker, systemd-nspawn, root or the test images are missing, a test fails if
//! `TOOLBOX_E2E=required` (CI sets it) and otherwise prints why it skipped.

#![allow(dead_code)]

pub mod registry;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BUSYBOX_IMAGE: &str = "toolbox-busybox:latest";
pub const DEBIAN_IMAGE: &str = "toolbox-debian:bookworm";

pub struct TestEnv {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub home: PathBuf,
    pub toolboxes: PathBuf,
    /// The toolbox name for this test (`--name`), unique so tests do not share trees.
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

fn which(program: &str) -> Option<PathBuf> {
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
            if std::env::var("TOOLBOX_E2E").as_deref() == Ok("required") {
                panic!("TOOLBOX_E2E=required but {reason}");
            }
            eprintln!("skipped {name}: {reason}");
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
        Some(TestEnv {
            _dir: dir,
            root,
            home,
            toolboxes,
            name: name.replace('_', "-"),
            image: image.into(),
        })
    }

    /// The toolbox binary with a clean environment pointing at this test's directories.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_toolbox"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("USER", "tester")
            .env("TOOLBOX_DIRECTORY", &self.toolboxes)
            .env("TOOLBOX_DOCKER_IMAGE", &self.image)
            .env("TOOLBOX_NAME", &self.name)
            .stdin(std::process::Stdio::null());
        if let Some(host) = std::env::var_os("DOCKER_HOST") {
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

    /// The toolbox's directory name: `${USER}-${TOOLBOX_NAME}`.
    pub fn toolbox_name(&self) -> String {
        format!("tester-{}", self.name)
    }

    pub fn tree(&self) -> PathBuf {
        self.toolboxes.join(self.toolbox_name())
    }

    /// Partial trees left in the toolbox directory (being built, or set aside).
    pub fn leftovers(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.toolboxes) else {
            return Vec::new();
        };
        entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".partial-"))
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
