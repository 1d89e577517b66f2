//! Podman, end to end: toolboxes created through Podman's Docker-compatible service alone
//! (`podman system service` on a socket of the test's own; `DOCKER_HOST` points nowhere,
//! so dockerd cannot be what answers), from an image loaded with `podman import` and from
//! one Podman pulls from a registry the test serves on 127.0.0.1.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use crate::common::registry::{Image, Registry};
use crate::common::*;

/// `podman system service` on its own socket, with a registries.conf that lets it pull
/// over plain HTTP from the loopback registries tests serve, and either the host's storage
/// or one of its own; stopped when dropped.
pub(crate) struct PodmanService {
    dir: tempfile::TempDir,
    child: Child,
    pub(crate) host: String,
    /// The options that give `podman` the service's storage: none for the host's.
    storage: Vec<String>,
}

impl PodmanService {
    pub(crate) fn start(insecure_registry: Option<&str>) -> PodmanService {
        PodmanService::with_storage(insecure_registry, false)
    }

    /// A service with a storage of its own (`--root`, `--runroot`, `--tmpdir`), holding a
    /// copy of the busybox image: what a test prunes there is no other test's.
    pub(crate) fn isolated() -> PodmanService {
        let service = PodmanService::with_storage(None, true);
        let archive = service.dir.path().join("busybox.tar");
        let archive = archive.to_str().unwrap();
        podman(&["save", "-o", archive, BUSYBOX_IMAGE]);
        service.podman(&["load", "-q", "-i", archive]);
        fs::remove_file(archive).unwrap();
        service
    }

    fn with_storage(insecure_registry: Option<&str>, own: bool) -> PodmanService {
        let dir = tempfile::Builder::new()
            .prefix("toolbox-podman-")
            .tempdir()
            .unwrap();
        let host = format!("unix://{}/podman.sock", dir.path().display());
        let registries = dir.path().join("registries.conf");
        let insecure = insecure_registry
            .map(|r| format!("[[registry]]\nlocation = \"{r}\"\ninsecure = true\n"))
            .unwrap_or_default();
        fs::write(
            &registries,
            format!("unqualified-search-registries = []\n{insecure}"),
        )
        .unwrap();
        // Its state of its own too (`--tmpdir`, else the host's /run/libpod): `system
        // reset` at its end removes that directory, and with it the host's Podman's.
        let storage = match own {
            true => vec![
                format!("--root={}", dir.path().join("root").display()),
                format!("--runroot={}", dir.path().join("runroot").display()),
                format!("--tmpdir={}", dir.path().join("tmp").display()),
            ],
            false => Vec::new(),
        };
        let child = PodmanService::serve(&storage, &host, &registries);
        let mut service = PodmanService {
            dir,
            child,
            host,
            storage,
        };
        service.wait_listening();
        service
    }

    fn serve(storage: &[String], host: &str, registries: &Path) -> Child {
        Command::new("podman")
            .args(storage)
            .args(["system", "service", "--time=0", host])
            .env("CONTAINERS_REGISTRIES_CONF", registries)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start podman system service")
    }

    fn wait_listening(&mut self) {
        let socket = self.dir.path().join("podman.sock");
        wait_for("Podman's service to listen", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    /// Stops the service and starts it again, as `systemctl restart podman` does; its
    /// containers run on (each has its own `conmon`).
    pub(crate) fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(self.dir.path().join("podman.sock"));
        let registries = self.dir.path().join("registries.conf");
        self.child = PodmanService::serve(&self.storage, &self.host, &registries);
        self.wait_listening();
    }

    /// `podman` on the service's storage.
    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command.args(&self.storage);
        command
    }

    /// `podman ARGS` on the service's storage; its output, trimmed.
    pub(crate) fn podman(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().unwrap();
        assert!(out.status.success(), "podman {args:?}: {}", describe(&out));
        stdout(&out).trim().to_string()
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A storage of its own goes with its containers (which it would otherwise leave
        // running, their layers mounted) and images. Not by `podman system reset`: that
        // removes /run/podman too, the host's Podman socket with it.
        if !self.storage.is_empty() {
            let _ = self.command().args(["rm", "--all", "--force"]).output();
            let _ = self.command().args(["rmi", "--all", "--force"]).output();
            let _ = Command::new("umount")
                .arg("-R")
                .arg(self.dir.path().join("root/overlay"))
                .output();
        }
        let _ = fs::remove_dir_all(self.dir.path());
    }
}

/// A test environment whose toolbox talks to Podman only, or `None` when the
/// prerequisites are missing and not required.
pub(crate) fn podman_env(name: &str) -> Option<TestEnv> {
    let t = TestEnv::new(name, BUSYBOX_IMAGE)?;
    let image = Command::new("podman")
        .args(["image", "exists", BUSYBOX_IMAGE])
        .status();
    if !image.is_ok_and(|s| s.success()) {
        let reason = "Podman or its busybox image is missing; run scripts/setup-host and \
                      scripts/build-images podman";
        unavailable(name, reason);
        return None;
    }
    Some(t)
}

pub(crate) fn podman(args: &[&str]) -> String {
    let out = Command::new("podman").args(args).output().unwrap();
    assert!(out.status.success(), "podman {args:?}: {}", describe(&out));
    stdout(&out).trim().to_string()
}

/// The toolbox command with Podman as its engine (`DOCKER_HOST` pointing nowhere).
fn podman_command(t: &TestEnv, service: &PodmanService) -> Command {
    let mut command = t.command();
    command
        .env("TOOLBOX_ENGINE", "podman")
        .env("CONTAINER_HOST", &service.host)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    command
}

/// Runs toolbox with Podman as its engine.
pub(crate) fn run_with(t: &TestEnv, service: &PodmanService, args: &[&str]) -> Output {
    podman_command(t, service).args(args).output().unwrap()
}

fn recorded_id(tree: &Path) -> String {
    let metadata = fs::read_to_string(tree.join(toolbox::store::toolboxes::METADATA)).unwrap();
    let metadata: serde_json::Value = serde_json::from_str(&metadata).unwrap();
    metadata["image_id"].as_str().unwrap().to_string()
}

fn podman_containers(t: &TestEnv) -> String {
    let filter = format!("label=toolbox.name={}", t.toolbox_name());
    podman(&["ps", "-a", "-q", "--filter", &filter])
}

#[test]
fn podman_alone_creates_a_toolbox_from_an_imported_image() {
    let Some(t) = podman_env("podman_import") else {
        return;
    };
    let service = PodmanService::start(None);
    let run = |args: &[&str]| run_with(&t, &service, args);
    let out = run(&["-v", "true"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("toolbox: Podman at {} (API", service.host)),
        "{said}"
    );
    assert_sees_the_host(&run, "/media/root");
    assert_statuses_come_back(&run);
    // Podman's socket named by DOCKER_HOST, as Podman's documentation suggests, is
    // Podman's: its `Libpod-Api-Version` tells.
    let named = TestEnv::new("podman_docker_host", BUSYBOX_IMAGE).unwrap();
    let out = named
        .command()
        .env("TOOLBOX_ENGINE", "docker")
        .env("DOCKER_HOST", &service.host)
        .env_remove("CONTAINER_HOST")
        .args(["-v", "true"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("toolbox: Podman at {} (API", service.host)),
        "{said}"
    );

    // Podman's own ID for its `localhost/` image, reached by the short name.
    let id = podman(&["image", "inspect", "--format", "{{.Id}}", BUSYBOX_IMAGE]);
    assert_eq!(recorded_id(&t.tree()), format!("sha256:{id}"));
    assert_eq!(podman_containers(&t), "", "a container was left in Podman");

    // The fully qualified name a Podman user sees is the same image.
    let qualified = TestEnv::new("podman_qualified", BUSYBOX_IMAGE).unwrap();
    let out = podman_command(&qualified, &service)
        .env("TOOLBOX_DOCKER_IMAGE", format!("localhost/{BUSYBOX_IMAGE}"))
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(recorded_id(&qualified.tree()), format!("sha256:{id}"));
}

#[test]
fn podman_pulls_a_missing_image() {
    let Some(mut t) = podman_env("podman_pull") else {
        return;
    };
    let busybox = fs::read("/bin/busybox").expect("busybox-static provides /bin/busybox");
    let tag = format!("podman-{}", std::process::id());
    let registry = Registry::serve(Image {
        repository: "toolbox-test/podman".into(),
        tag: tag.clone(),
        files: vec![
            ("usr/bin/busybox".into(), 0o755, busybox),
            ("etc/tag".into(), 0o644, tag.clone().into_bytes()),
        ],
        corrupt_layer: false,
        stall_layer: false,
    });
    let service = PodmanService::start(Some(&registry.address));
    let reference = format!("{}/toolbox-test/podman:{tag}", registry.address);
    t.image = reference.clone();
    let out = run_with(&t, &service, &["busybox", "cat", "/etc/tag"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), tag);
    let id = podman(&["image", "inspect", "--format", "{{.Id}}", &reference]);
    assert_eq!(recorded_id(&t.tree()), format!("sha256:{id}"));
    assert_eq!(podman_containers(&t), "");
    let _ = Command::new("podman")
        .args(["rmi", "-f", &reference])
        .output();
}

#[test]
fn podman_chosen_without_a_socket_says_how_to_start_one() {
    let Some(t) = podman_env("podman_missing") else {
        return;
    };
    // No Podman socket anywhere, whatever this host runs: an empty /run of the test's own,
    // in a mount namespace of its own.
    let empty_run = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs toolbox-test /run && exec \"$@\"",
        "sh",
    ];
    let out = t
        .command_through(&empty_run)
        .args(["--engine", "podman", "true"])
        .env("XDG_RUNTIME_DIR", t.root.join("runtime"))
        .output()
        .unwrap();
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert_eq!(
        toolbox_lines(&out),
        [format!(
            "toolbox: no Podman socket at {}/runtime/podman/podman.sock or /run/podman/podman.sock; \
             start one (`systemctl start podman.socket`, or `podman system service --time=0`) or set CONTAINER_HOST",
            t.root.display()
        )]
    );
}

// Podman writes the OCI layouts Docker 20.10 cannot: read as directory and as tar, they
// give the same tree and image ID as Podman's `docker save`-style archive of the image.
#[test]
fn oci_layouts_and_archives_from_podman_import_alike() {
    let Some(t) = podman_env("podman_oci") else {
        return;
    };
    let id = podman(&["image", "inspect", "--format", "{{.Id}}", BUSYBOX_IMAGE]);
    let import = |format: &str| {
        let saved = t.root.join(format);
        podman(&[
            "save",
            "--quiet",
            "--format",
            format,
            "-o",
            saved.to_str().unwrap(),
            BUSYBOX_IMAGE,
        ]);
        let out = t
            .command()
            .env_remove("TOOLBOX_NAME")
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .args(["import", saved.to_str().unwrap(), "--name", format])
            .output()
            .unwrap();
        assert_eq!(status(&out), 0, "{format}: {}", describe(&out));
        let imported = t.toolboxes.join(format!("tester-{format}"));
        assert_eq!(recorded_id(&imported), format!("sha256:{id}"), "{format}");
        // What toolbox adds at creation, with its own time.
        let mut tree = listing(&imported);
        tree.remove(toolbox::store::toolboxes::METADATA);
        tree.remove("etc/os-release");
        tree
    };
    let reference = import("docker-archive");
    assert!(reference.len() > 100, "only {} paths", reference.len());
    for format in ["oci-archive", "oci-dir"] {
        assert_eq!(import(format), reference, "{format}");
    }
}

/// `--target` finds containers through Podman too. A Podman container cannot be started on
/// this test machine (runc cannot set its rlimits without CAP_SYS_RESOURCE), so a created
/// one stands for the stopped case and an unknown name for the missing one.
#[test]
fn targets_are_found_through_podman() {
    let Some(t) = podman_env("podman_target") else {
        return;
    };
    let service = PodmanService::start(None);
    let name = format!("toolbox-test-podman-target-{}", std::process::id());
    podman(&["create", "--name", &name, BUSYBOX_IMAGE, "true"]);
    let out = run_with(&t, &service, &["--target", &name, "true"]);
    let _ = Command::new("podman").args(["rm", "-f", &name]).output();
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert_eq!(
        toolbox_lines(&out),
        [format!(
            "toolbox: container `{name}` is not running; start it first (its files are in \
             `podman cp` and `podman export` meanwhile)"
        )]
    );
    let out = run_with(&t, &service, &["--target", "toolbox-no-such", "true"]);
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert_eq!(
        toolbox_lines(&out),
        [format!(
            "toolbox: no container `toolbox-no-such` in the engine at {}",
            service.host
        )]
    );
}

/// Podman keeps images with its `overlay` driver: the default storage mounts those layers,
/// pinned by a running anchor and by an image name of its own, so that no prune, no `podman
/// rmi -f` of the image's tag and no restart of the service takes them; `rm` lets them go.
/// Where Podman cannot run the anchor (on a machine whose runc may not set rlimits), the
/// toolbox is a copy and -v says why, naming Podman.
#[test]
fn podman_toolboxes_mount_podmans_layers_kept_from_prunes() {
    let Some(t) = podman_env("podman_auto") else {
        return;
    };
    let mut service = PodmanService::isolated();
    let runs = service
        .command()
        .args(["run", "--rm", "--network=none", BUSYBOX_IMAGE, "true"])
        .output()
        .unwrap()
        .status
        .success();
    // The testbed's Podman runs containers: there the overlay path must be the one taken.
    if std::env::var_os("TOOLBOX_E2E_TESTBED").is_some() {
        assert!(runs, "Podman cannot run a container in the testbed");
    }
    let out = podman_command(&t, &service)
        .env_remove("TOOLBOX_STORAGE")
        .args(["-v", "sh", "-c", "echo kept > /etc/kept"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let metadata = fs::read_to_string(t.tree().join(toolbox::store::toolboxes::METADATA)).unwrap();
    let metadata: serde_json::Value = serde_json::from_str(&metadata).unwrap();
    if !runs {
        assert!(
            toolbox_lines(&out).iter().any(|l| l
                .starts_with("toolbox: Podman cannot run the anchor container")
                && l.ends_with("; copying the image instead of mounting it")),
            "{}",
            describe(&out)
        );
        assert!(metadata.get("overlay").is_none(), "{metadata}");
        assert_eq!(service.podman(&["ps", "-a", "-q"]), "", "containers left");
        return;
    }
    let anchor = metadata["overlay"]["anchor"].as_str().unwrap().to_string();
    let name = service.podman(&["inspect", "-f", "{{.Name}}", &anchor]);
    let prefix = format!("toolbox-anchor-{}-", t.toolbox_name());
    assert!(name.trim_start_matches('/').starts_with(&prefix), "{name}");
    let kept = |service: &PodmanService, when: &str| {
        // `cat` is the image's busybox, from its layer: the layers are there too.
        let out = run_with(&t, service, &["cat", "/etc/kept"]);
        assert_eq!(status(&out), 0, "{when}: {}", describe(&out));
        assert_eq!(stdout(&out), "kept\n", "{when}");
    };
    kept(&service, "created");
    for prune in [
        &["rmi", "-f", BUSYBOX_IMAGE][..],
        &["image", "prune", "-a", "-f"],
        &["system", "prune", "-a", "-f"],
    ] {
        service.podman(prune);
        kept(&service, &format!("after podman {}", prune.join(" ")));
    }
    service.restart();
    let running = service.podman(&["inspect", "-f", "{{.State.Running}}", &anchor]);
    assert_eq!(running, "true", "the anchor after a restart of the service");
    kept(&service, "after a restart of the service");

    let out = run_with(&t, &service, &["rm", &t.toolbox_name()]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(
        service.podman(&["ps", "-a", "-q"]),
        "",
        "rm leaves a container"
    );
    // The tag was removed above: the anchor's own name was the image's last.
    service.podman(&["image", "prune", "-a", "-f"]);
    assert_eq!(service.podman(&["images", "-q"]), "", "rm keeps the image");
}
