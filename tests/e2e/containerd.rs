//! containerd alone, end to end: toolboxes made from the images of a containerd of the
//! test's own (its own root, state directory and socket; nothing else runs in it), as on a
//! Kubernetes node or Flatcar with neither Docker nor Podman: images found in `k8s.io` and
//! in `default`, overlay storage kept by a lease through `ctr images rm`, the garbage
//! collector and restarts, copy storage, and what `rm` gives back.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use toolbox::model::image::{architecture, digest};

use crate::common::registry::{Image as RegistryImage, Registry};
use crate::common::*;

/// The two-layer image the tests build by hand: `etc/marker` says `lower` in its first
/// layer and `upper` in its second, which also adds `layer/two`.
const TWO_LAYERS: &str = "toolbox-e2e-two-layers:1";
/// The name containerd gives it.
const TWO_LAYERS_STORED: &str = "docker.io/library/toolbox-e2e-two-layers:1";
const BUSYBOX_STORED: &str = "docker.io/library/toolbox-busybox:latest";

/// containerd on a socket of its own, with its own root and state directory and the CRI
/// plugin off; stopped, and its directory removed, when dropped.
struct OwnContainerd {
    dir: tempfile::TempDir,
    child: Child,
    socket: PathBuf,
}

impl OwnContainerd {
    /// Starts one, or says why it cannot (`None`).
    fn start(test: &str) -> Option<OwnContainerd> {
        for program in ["containerd", "ctr"] {
            if which(program).is_none() {
                unavailable(
                    test,
                    &format!("{program} is not installed (docker.io brings it)"),
                );
                return None;
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("toolbox-containerd-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("containerd.sock");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}\"\n",
            path("root"),
            path("state"),
            socket.display(),
            path("containerd.sock.ttrpc"),
        );
        fs::write(dir.path().join("config.toml"), config).unwrap();
        let child = Self::spawn(dir.path());
        let containerd = OwnContainerd { dir, child, socket };
        containerd.wait_until_up();
        Some(containerd)
    }

    fn spawn(dir: &Path) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("containerd.log"))
            .unwrap();
        Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn wait_until_up(&self) {
        wait_for("containerd to answer", || {
            Command::new("ctr")
                .arg("-a")
                .arg(&self.socket)
                .arg("version")
                .output()
                .is_ok_and(|out| out.status.success())
        });
    }

    /// Stops it (SIGTERM) and starts it again on the same directories.
    fn restart(&mut self) {
        toolbox::sys::signals::send(self.child.id() as i32, rustix::process::Signal::TERM);
        assert!(
            wait_exit(&mut self.child).is_some(),
            "containerd did not stop"
        );
        self.child = Self::spawn(self.dir.path());
        self.wait_until_up();
    }

    /// `ctr` in `namespace`, which must succeed; its output.
    fn ctr(&self, namespace: &str, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", namespace])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr -n {namespace} {}: {}",
            args.join(" "),
            describe(&out)
        );
        stdout(&out)
    }

    /// Imports the archive `archive` (`docker save`'s) into `namespace`.
    fn import(&self, namespace: &str, archive: &Path) {
        self.ctr(namespace, &["images", "import", archive.to_str().unwrap()]);
    }

    /// Whether it has a transfer service (containerd 1.7 and later).
    fn has_transfer(&self) -> bool {
        self.ctr("default", &["version"])
            .lines()
            .find_map(|line| line.trim().strip_prefix("Version:"))
            .is_some_and(|version| !version.trim().starts_with("1.6"))
    }

    /// The IDs `ctr ... ls -q` lists in `namespace` for `what` (`leases`, `snapshots`).
    fn listed(&self, namespace: &str, what: &str) -> Vec<String> {
        let args: &[&str] = match what {
            // `snapshots ls` has no `-q`: the key is the first column.
            "snapshots" => &["snapshots", "ls"],
            _ => &[what, "ls", "-q"],
        };
        self.ctr(namespace, args)
            .lines()
            .filter(|line| !line.starts_with("KEY"))
            .filter_map(|line| line.split_whitespace().next().map(String::from))
            .collect()
    }

    /// A toolbox command of `t` against this containerd, with the default storage.
    fn toolbox(&self, t: &TestEnv) -> Command {
        let mut command = t.command();
        command
            .env("TOOLBOX_ENGINE", "containerd")
            .env("TOOLBOX_CONTAINERD_ADDRESS", &self.socket)
            .env_remove("TOOLBOX_STORAGE");
        command
    }
}

impl Drop for OwnContainerd {
    /// Ends the tasks the test started (their shims outlive containerd), then containerd.
    fn drop(&mut self) {
        for namespace in ["k8s.io", "default"] {
            let ctr = |args: &[&str]| {
                Command::new("ctr")
                    .arg("-a")
                    .arg(&self.socket)
                    .args(["-n", namespace])
                    .args(args)
                    .output()
            };
            let tasks = ctr(&["tasks", "ls", "-q"]).map(|out| stdout(&out));
            for task in tasks.unwrap_or_default().split_whitespace() {
                let _ = ctr(&["tasks", "kill", "-s", "SIGKILL", task]);
                let _ = ctr(&["tasks", "rm", "-f", task]);
                let _ = ctr(&["containers", "rm", task]);
            }
        }
        toolbox::sys::signals::send(self.child.id() as i32, rustix::process::Signal::TERM);
        if wait_exit(&mut self.child).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let prefix = format!("{}/", self.dir.path().display());
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for mount_point in mountinfo.lines().filter_map(|l| l.split(' ').nth(4)) {
            if mount_point.starts_with(&prefix) {
                let _ = Command::new("umount").args(["-l", mount_point]).output();
            }
        }
    }
}

impl OwnContainerd {
    /// Imports the busybox test image into `namespace` (which holds no other image) from
    /// `docker save` into `dir`, under the name containerd gives it from Docker: Podman's
    /// save names it `localhost/...`.
    fn import_busybox(&self, namespace: &str, dir: &Path) {
        let archive = dir.join("busybox.tar");
        docker(&["save", "-o", archive.to_str().unwrap(), BUSYBOX_IMAGE]);
        self.import(namespace, &archive);
        let names = self.ctr(namespace, &["images", "ls", "-q"]);
        if !names.lines().any(|name| name == BUSYBOX_STORED) {
            let imported = names.lines().next().expect("an imported image");
            self.ctr(namespace, &["images", "tag", imported, BUSYBOX_STORED]);
            self.ctr(namespace, &["images", "rm", imported]);
        }
    }
}

/// struct vfs_cap_data, revision 2, effective, permitted = CAP_NET_RAW (13): what
/// `setcap cap_net_raw+ep` gives `ping`.
const NET_RAW: &[u8] = &[
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// A `docker save` archive of [`TWO_LAYERS`], written by hand, into `dir`. Its lower
/// layer holds `usr/bin/pinger` with the file capability [`NET_RAW`] and a FIFO
/// `srv/pipe`.
fn two_layer_archive(dir: &Path) -> PathBuf {
    let layer = |files: &[(&str, &[u8], u32)], lower: bool| {
        let mut builder = tar::Builder::new(Vec::new());
        let header = |size: usize, mode: u32, kind: tar::EntryType| {
            let mut header = tar::Header::new_gnu();
            header.set_size(size as u64);
            header.set_mode(mode);
            header.set_mtime(1);
            header.set_entry_type(kind);
            header
        };
        for (path, content, mode) in files {
            let mut header = header(content.len(), *mode, tar::EntryType::Regular);
            builder.append_data(&mut header, path, *content).unwrap();
        }
        if lower {
            let capability = [("SCHILY.xattr.security.capability", NET_RAW)];
            builder.append_pax_extensions(capability).unwrap();
            let mut pinger = header(4, 0o755, tar::EntryType::Regular);
            builder
                .append_data(&mut pinger, "usr/bin/pinger", &b"ping"[..])
                .unwrap();
            let mut pipe = header(0, 0o640, tar::EntryType::Fifo);
            builder
                .append_data(&mut pipe, "srv/pipe", std::io::empty())
                .unwrap();
        }
        builder.into_inner().unwrap()
    };
    let busybox = fs::read("/bin/busybox").unwrap();
    let lower = layer(
        &[
            ("usr/bin/busybox", &busybox, 0o755),
            ("etc/marker", b"lower\n", 0o644),
        ],
        true,
    );
    let upper = layer(
        &[
            ("etc/marker", b"upper\n", 0o644),
            ("layer/two", b"two\n", 0o644),
        ],
        false,
    );
    let config = format!(
        r#"{{"architecture":"{}","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
        architecture(),
        digest(&lower),
        digest(&upper)
    );
    let manifest = format!(
        r#"[{{"Config":"config.json","RepoTags":["{TWO_LAYERS}"],"Layers":["lower/layer.tar","upper/layer.tar"]}}]"#
    );
    let mut archive = tar::Builder::new(Vec::new());
    for (path, content) in [
        ("lower/layer.tar", lower.as_slice()),
        ("upper/layer.tar", upper.as_slice()),
        ("config.json", config.as_bytes()),
        ("manifest.json", manifest.as_bytes()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        archive.append_data(&mut header, path, content).unwrap();
    }
    let path = dir.join("two-layers.tar");
    fs::write(&path, archive.into_inner().unwrap()).unwrap();
    path
}

/// The recorded metadata of `t`'s toolbox.
fn metadata(t: &TestEnv) -> serde_json::Value {
    serde_json::from_slice(&fs::read(t.tree().join(".toolbox.json")).unwrap()).unwrap()
}

/// The test `name`'s environment and containerd, or `None` (after saying why) when what
/// they need is missing.
fn setup(name: &str) -> Option<(TestEnv, OwnContainerd)> {
    let t = TestEnv::new(name, BUSYBOX_IMAGE)?;
    let containerd = OwnContainerd::start(name)?;
    Some((t, containerd))
}

fn succeeded_with(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn toolboxes_come_from_containerds_images_in_k8s_io_and_default() {
    let Some((t, containerd)) =
        setup("toolboxes_come_from_containerds_images_in_k8s_io_and_default")
    else {
        return;
    };
    containerd.import_busybox("k8s.io", &t.root);
    containerd.import("default", &two_layer_archive(&t.root));

    // Found in k8s.io, where the kubelet keeps images; overlay storage by default.
    let out = containerd
        .toolbox(&t)
        .args([
            "-v",
            "--image",
            BUSYBOX_IMAGE,
            "--",
            "busybox",
            "echo",
            "in k8s.io",
        ])
        .output()
        .unwrap();
    assert_eq!(
        succeeded_with(out.clone(), "busybox from k8s.io"),
        "in k8s.io\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("containerd 1."), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "`{BUSYBOX_STORED}` in containerd namespace k8s.io"
        )),
        "{stderr}"
    );
    assert!(
        metadata(&t)["overlay"]["anchor"].is_string(),
        "{}",
        metadata(&t)
    );
    let leases = containerd.listed("k8s.io", "leases");
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(metadata(&t)["overlay"]["anchor"], leases[0].as_str());

    // Found in default, where `ctr` keeps them: both layers, the upper one winning.
    let two = format!("{}-two", t.name);
    let out = containerd
        .toolbox(&t)
        .args(["-v", "--name", &two, "--image", TWO_LAYERS, "--"])
        .args(["busybox", "cat", "/etc/marker", "/layer/two"])
        .output()
        .unwrap();
    assert_eq!(
        succeeded_with(out.clone(), "two layers from default"),
        "upper\ntwo\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "`{TWO_LAYERS_STORED}` in containerd namespace default"
        )),
        "{stderr}"
    );
    let two_tree = t.toolboxes.join(format!("tester-{two}"));
    let recorded: serde_json::Value =
        serde_json::from_slice(&fs::read(two_tree.join(".toolbox.json")).unwrap()).unwrap();
    assert_eq!(
        recorded["overlay"]["layers"].as_array().map(Vec::len),
        Some(2),
        "{recorded}"
    );

    // A copy of the same image: the tree holds the files, and no lease is left for it.
    let copy = format!("{two}-copy");
    let out = containerd
        .toolbox(&t)
        .args([
            "--storage",
            "copy",
            "--name",
            &copy,
            "--image",
            TWO_LAYERS,
            "--",
        ])
        .args(["busybox", "cat", "/etc/marker"])
        .output()
        .unwrap();
    assert_eq!(succeeded_with(out, "a copy"), "upper\n");
    let copy_tree = t.toolboxes.join(format!("tester-{copy}"));
    assert_eq!(
        fs::read_to_string(copy_tree.join("etc/marker")).unwrap(),
        "upper\n"
    );
    // Bug: a copy from containerd lost file capabilities, and named a FIFO by the path
    // it was read from.
    let mut capability = [0u8; 64];
    let size = rustix::fs::lgetxattr(
        copy_tree.join("usr/bin/pinger"),
        "security.capability",
        &mut capability[..],
    )
    .expect("the copy keeps pinger's file capability");
    assert_eq!(&capability[..size], NET_RAW);
    use std::os::unix::fs::FileTypeExt;
    let pipe = fs::symlink_metadata(copy_tree.join("srv/pipe")).expect("srv/pipe copied");
    assert!(pipe.file_type().is_fifo(), "{pipe:?}");
    assert_eq!(containerd.listed("default", "leases").len(), 1);

    // A namespace set is the only one looked in, and a missing image names the command
    // that pulls it.
    let out = containerd
        .toolbox(&t)
        .env("TOOLBOX_CONTAINERD_NAMESPACE", "default")
        .args([
            "--name",
            "elsewhere",
            "--image",
            BUSYBOX_IMAGE,
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(status(&out), 125, "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    // With a transfer service, the pull is tried (no registry answers here).
    let pull = match containerd.has_transfer() {
        true => format!("cannot pull image `{BUSYBOX_STORED}` into containerd namespace default"),
        false => format!("ctr -n default images pull {BUSYBOX_STORED}"),
    };
    assert!(last.contains(&pull), "{stderr}");

    // The super privileged container runtime is refused in one line.
    let out = containerd
        .toolbox(&t)
        .args(["--runtime", "spc", "--name", "spc", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 125, "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("the spc runtime needs Docker or Podman"),
        "{stderr}"
    );

    let listed = succeeded_with(containerd.toolbox(&t).arg("list").output().unwrap(), "list");
    for tree in [
        t.toolbox_name(),
        format!("tester-{two}"),
        format!("tester-{copy}"),
    ] {
        assert!(listed.contains(&tree), "{tree} not in:\n{listed}");
    }
    for tree in [t.name.clone(), two, copy] {
        succeeded_with(
            containerd.toolbox(&t).args(["rm", &tree]).output().unwrap(),
            "rm",
        );
    }
    for namespace in ["k8s.io", "default"] {
        assert_eq!(containerd.listed(namespace, "leases"), Vec::<String>::new());
    }
}

#[test]
fn a_containerd_toolbox_outlives_its_images_removal_gc_and_restarts() {
    let Some((t, mut containerd)) =
        setup("a_containerd_toolbox_outlives_its_images_removal_gc_and_restarts")
    else {
        return;
    };
    containerd.import("k8s.io", &two_layer_archive(&t.root));
    let out = containerd
        .toolbox(&t)
        .args([
            "--image",
            TWO_LAYERS,
            "--",
            "busybox",
            "sh",
            "-c",
            "echo mine > /etc/mine",
        ])
        .output()
        .unwrap();
    succeeded_with(out, "create and write");
    assert!(metadata(&t)["overlay"].is_object(), "{}", metadata(&t));

    // What the kubelet's image garbage collection does (`crictl rmi --prune`), with a
    // collection run at once; then containerd restarts.
    containerd.ctr("k8s.io", &["images", "rm", "--sync", TWO_LAYERS_STORED]);
    assert_eq!(containerd.listed("k8s.io", "content"), Vec::<String>::new());
    containerd.restart();
    let out = containerd
        .toolbox(&t)
        .args([
            "--image",
            TWO_LAYERS,
            "--",
            "busybox",
            "cat",
            "/etc/mine",
            "/etc/marker",
        ])
        .output()
        .unwrap();
    assert_eq!(
        succeeded_with(out, "enter after the removal"),
        "mine\nupper\n"
    );

    // The name now means another image: `update` rebuilds from it, under a lease of its
    // own, and keeps the replaced tree with its lease for a rollback.
    containerd.import_busybox("k8s.io", &t.root);
    containerd.ctr(
        "k8s.io",
        &[
            "images",
            "tag",
            "--force",
            BUSYBOX_STORED,
            TWO_LAYERS_STORED,
        ],
    );
    let out = containerd
        .toolbox(&t)
        .args(["--image", TWO_LAYERS, "update"])
        .output()
        .unwrap();
    let report = succeeded_with(out, "update");
    assert!(report.contains("rebuilt from"), "{report}");
    let out = containerd
        .toolbox(&t)
        .args(["--image", TWO_LAYERS, "--", "busybox", "ls", "/etc/mine"])
        .output()
        .unwrap();
    assert_ne!(status(&out), 0, "the rebuilt tree has the old one's file");
    assert_eq!(containerd.listed("k8s.io", "leases").len(), 2);

    // `rm` gives the leases back: the collector then deletes the image's snapshots.
    succeeded_with(
        containerd
            .toolbox(&t)
            .args(["rm", &t.name])
            .output()
            .unwrap(),
        "rm",
    );
    assert_eq!(containerd.listed("k8s.io", "leases"), Vec::<String>::new());
    for image in [BUSYBOX_STORED, TWO_LAYERS_STORED] {
        containerd.ctr("k8s.io", &["images", "rm", "--sync", image]);
    }
    wait_for("containerd to delete the image's snapshots", || {
        containerd.listed("k8s.io", "snapshots").is_empty()
    });
    assert!(!t.tree().exists());
}

#[test]
fn a_pods_container_is_a_target_by_its_kubernetes_names() {
    let Some((t, containerd)) = setup("a_pods_container_is_a_target_by_its_kubernetes_names")
    else {
        return;
    };
    containerd.import_busybox("k8s.io", &t.root);
    // A pod as the kubelet's CRI plugin makes it: a sandbox, and a container serving on a
    // port in the sandbox's network namespace (here, a namespace of its own).
    let run = |id: &str, kind: &str, container: &str, command: &str| {
        containerd.ctr(
            "k8s.io",
            &[
                "run",
                "-d",
                "--label",
                "io.kubernetes.pod.namespace=default",
                "--label",
                "io.kubernetes.pod.name=web",
                "--label",
                &format!("io.kubernetes.container.name={container}"),
                "--label",
                &format!("io.cri-containerd.kind={kind}"),
                BUSYBOX_STORED,
                id,
                "busybox",
                "sh",
                "-c",
                command,
            ],
        )
    };
    let sandbox = format!("tbx-sandbox-{}", std::process::id());
    let server = format!("tbx-server-{}", std::process::id());
    run(&sandbox, "sandbox", "POD", "exec busybox sleep 1000");
    run(
        &server,
        "container",
        "server",
        "mkdir -p /www && echo page > /www/index.html && exec busybox httpd -f -p 18081 -h /www",
    );
    let pid = containerd
        .ctr("k8s.io", &["tasks", "ls"])
        .lines()
        .find(|line| line.starts_with(&server))
        .and_then(|line| line.split_whitespace().nth(1).map(String::from))
        .expect("the server's task");

    for target in ["pod/default/web", "pod/default/web/server", server.as_str()] {
        let out = containerd
            .toolbox(&t)
            .args(["--target", target, "--", "sh", "-c"])
            .arg(
                "for i in $(seq 100); do netstat -ltn | grep -q :18081 && break; sleep 0.1; done; \
                 netstat -ltn | grep -c :18081; cat /media/target/www/index.html; \
                 echo $TOOLBOX_TARGET_PID",
            )
            .output()
            .unwrap();
        assert_eq!(
            succeeded_with(out, target),
            format!("1\npage\n{pid}\n"),
            "{target}"
        );
    }
    let out = containerd
        .toolbox(&t)
        .args(["--target", "pod/default/web/db", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 125, "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().last().unwrap_or_default(),
        "toolbox: pod default/web has no container `db` (it has server)",
        "{stderr}"
    );
}

/// containerd 1.7 and later pulls through its transfer service; 1.6 has none, and the
/// error says how to pull.
#[test]
fn a_missing_image_is_pulled_through_containerd_or_the_pull_is_named() {
    let Some((t, containerd)) =
        setup("a_missing_image_is_pulled_through_containerd_or_the_pull_is_named")
    else {
        return;
    };
    let busybox = fs::read("/bin/busybox").expect("busybox-static provides /bin/busybox");
    let registry = Registry::serve(RegistryImage {
        repository: "toolbox-test/pulled".into(),
        tag: "1".into(),
        files: vec![("usr/bin/busybox".into(), 0o755, busybox)],
        corrupt_layer: false,
        stall_layer: false,
    });
    let reference = format!("{}/toolbox-test/pulled:1", registry.address);
    let transfer = containerd.has_transfer();
    let out = containerd
        .toolbox(&t)
        .args(["--image", &reference, "--", "busybox", "echo", "pulled"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if transfer {
        // The transfer service reached the test's registry; containerd 1.7 speaks only
        // HTTPS to it (its resolver knows no default scheme), 2.0 plain HTTP as asked.
        assert!(
            stderr.contains(&format!(
                "pulling {reference} into containerd namespace k8s.io"
            )),
            "{stderr}"
        );
        if out.status.success() {
            assert_eq!(stdout(&out), "pulled\n");
            assert!(
                containerd
                    .ctr("k8s.io", &["images", "ls", "-q"])
                    .contains(&reference)
            );
        } else {
            let last = stderr.lines().last().unwrap_or_default();
            assert!(
                last.contains(&format!("cannot pull image `{reference}`"))
                    && last.contains(&format!("https://{}/v2/", registry.address)),
                "{stderr}"
            );
        }
    } else {
        assert_eq!(status(&out), 125, "{}", describe(&out));
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.contains(&format!("ctr -n k8s.io images pull {reference}")),
            "{stderr}"
        );
    }

    // No registry answers: one line naming the image.
    let nowhere = "127.0.0.1:1/toolbox-test/nowhere:1";
    let out = containerd
        .toolbox(&t)
        .args(["--name", "nowhere", "--image", nowhere, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 125, "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("toolbox: ") && last.contains(nowhere),
        "{stderr}"
    );
    assert!(!t.toolboxes.join("tester-nowhere").exists());
}

/// An image fetched but not unpacked (`ctr images import --no-unpack`, `ctr content
/// fetch`) is unpacked, and its snapshots are kept as long as the image is there.
#[test]
fn an_image_not_unpacked_is_unpacked_and_kept_with_the_image() {
    let Some((t, containerd)) = setup("an_image_not_unpacked_is_unpacked_and_kept_with_the_image")
    else {
        return;
    };
    let archive = two_layer_archive(&t.root);
    containerd.ctr(
        "default",
        &["images", "import", "--no-unpack", archive.to_str().unwrap()],
    );
    assert_eq!(
        containerd.listed("default", "snapshots"),
        Vec::<String>::new()
    );
    let out = containerd
        .toolbox(&t)
        .args(["--image", TWO_LAYERS, "--", "busybox", "cat", "/etc/marker"])
        .output()
        .unwrap();
    assert_eq!(succeeded_with(out, "create"), "upper\n");
    // Every toolbox, with an engine that runs no super privileged container.
    succeeded_with(
        containerd
            .toolbox(&t)
            .args(["rm", "--all"])
            .output()
            .unwrap(),
        "rm --all",
    );
    assert!(!t.tree().exists());
    // A collection run at once (deleting a lease with --sync runs one).
    let collect = || {
        containerd.ctr("default", &["leases", "create", "--id", "toolbox-e2e-gc"]);
        containerd.ctr("default", &["leases", "delete", "--sync", "toolbox-e2e-gc"]);
    };
    collect();
    let snapshots = containerd.listed("default", "snapshots");
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    assert_eq!(containerd.listed("default", "leases"), Vec::<String>::new());
    containerd.ctr("default", &["images", "rm", "--sync", TWO_LAYERS_STORED]);
    collect();
    assert_eq!(
        containerd.listed("default", "snapshots"),
        Vec::<String>::new()
    );
}

/// toolbox's own image run by containerd in the shape of `kubectl debug node
/// --profile=sysadmin` (privileged, the host's PID namespace and network, `/` at
/// `/host`), as the kubelet's containerd would run its pod: it creates a toolbox from
/// containerd's image that the installed toolbox lists and enters, and a task killed
/// mid-session leaves no process or mount.
#[test]
fn toolbox_from_its_image_in_containerd_works_on_the_host() {
    let Some((t, containerd)) = setup("toolbox_from_its_image_in_containerd_works_on_the_host")
    else {
        return;
    };
    containerd.import_busybox("k8s.io", &t.root);
    let (archive, image) = crate::fleet::image_archive(&t.root);
    containerd.import("k8s.io", &archive);
    let mut shape: Vec<String> = crate::fleet::privileged()
        .into_iter()
        .filter(|flag| flag == "--privileged" || flag.starts_with("--cap-add="))
        .map(|flag| match flag.strip_prefix("--cap-add=") {
            Some(capability) => format!("--cap-add=CAP_{capability}"),
            None => flag,
        })
        .collect();
    shape.extend([
        format!("--with-ns=pid:/proc/{}/ns/pid", std::process::id()),
        "--net-host".into(),
        "--mount=type=bind,src=/,dst=/host,options=rbind:rw".into(),
    ]);
    let mut settings = crate::fleet::settings(&t);
    settings.extend([
        "TOOLBOX_ENGINE=containerd".to_string(),
        format!("TOOLBOX_CONTAINERD_ADDRESS={}", containerd.socket.display()),
        format!("TOOLBOX_DOCKER_IMAGE={BUSYBOX_STORED}"),
    ]);
    let run = |id: &str, detach: bool, env: &[&str], args: &[&str]| {
        let mut command = Command::new("ctr");
        command
            .arg("-a")
            .arg(&containerd.socket)
            .args(["-n", "k8s.io", "run"])
            .args(if detach { &["-d"][..] } else { &["--rm"][..] })
            .args(&shape)
            .args(settings.iter().map(|s| format!("--env={s}")))
            .args(env.iter().map(|s| format!("--env={s}")))
            .args([image.as_str(), id, "/usr/bin/toolbox"])
            .args(args)
            .stdin(Stdio::null());
        command
    };
    let id = |what: &str| format!("tbx-{what}-{}", std::process::id());
    let out = run(
        &id("make"),
        false,
        &[],
        &["run", "sh", "-c", "echo from-containerd > /root/made"],
    )
    .output()
    .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(metadata(&t)["overlay"].is_object(), "{}", describe(&out));
    let out = containerd
        .toolbox(&t)
        .args(["run", "cat", "/root/made"])
        .output()
        .unwrap();
    assert_eq!(
        succeeded_with(out, "the installed toolbox"),
        "from-containerd\n"
    );

    // A node without systemd-nspawn: containerd runs no super privileged container.
    let out = run(&id("no-nspawn"), false, &["PATH=/usr/local/bin"], &["true"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert_eq!(
        toolbox_lines(&out),
        [
            "toolbox: the host has no systemd-nspawn and its engine, containerd, runs no super \
          privileged container for toolbox: install systemd-nspawn on the host (Debian: \
          systemd-container)"
        ],
        "{}",
        describe(&out)
    );

    // Killed mid-session: nothing of the session is left, nor its mount.
    let payload = "sleep 1223";
    let task = id("killed");
    let args: Vec<&str> = ["run"].into_iter().chain(payload.split(' ')).collect();
    succeeded_with(run(&task, true, &[], &args).output().unwrap(), "ctr run -d");
    crate::fleet::assert_killed_session_leaves_nothing(&t, payload, || {
        containerd.ctr("k8s.io", &["tasks", "kill", "-s", "SIGKILL", &task]);
    });
    let out = containerd
        .toolbox(&t)
        .args(["list", "--names"])
        .output()
        .unwrap();
    assert_eq!(succeeded_with(out, "list").trim(), t.toolbox_name());
}
