//! Overlay storage on the real Docker daemon (overlay2, or its containerd image store in
//! the testbed) and systemd-nspawn: the core host
//! checks, persistence, sessions sharing one mount, the anchor that pins the image's
//! layers, updates, and the fall back to copying on a daemon with another storage driver.

use std::fs;
use std::process::{Command, Output, Stdio};

use crate::common::*;

/// The toolbox command with overlay storage configured (not demanded).
fn overlay(t: &TestEnv) -> Command {
    overlay_command(t)
}

fn run(t: &TestEnv, args: &[&str]) -> Output {
    overlay(t).args(args).output().unwrap()
}

/// How many filesystems are mounted at the toolbox's mount point.
fn mounts(t: &TestEnv) -> usize {
    let root = t.tree().join("root");
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| line.split(' ').nth(4) == root.to_str())
        .count()
}

/// The anchor containers labelled with this test's toolbox.
fn anchors(t: &TestEnv) -> Vec<String> {
    let filter = format!("label=toolbox.anchor={}", t.tree().display());
    let mut anchors: Vec<String> = docker(&["ps", "-a", "-q", "--no-trunc", "--filter", &filter])
        .split_whitespace()
        .map(String::from)
        .collect();
    anchors.sort();
    anchors
}

/// Whether a process whose command line matches `pattern` (pgrep -f) runs.
fn metadata(t: &TestEnv) -> serde_json::Value {
    serde_json::from_slice(&fs::read(t.tree().join(".toolbox.json")).unwrap()).unwrap()
}

fn list_row(t: &TestEnv) -> serde_json::Value {
    let out = t.run(["list", "--json"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == t.toolbox_name().as_str())
        .cloned()
        .unwrap_or_default()
}

#[test]
fn an_overlay_toolbox_sees_the_host() {
    let Some(t) = TestEnv::new("overlay_host", BUSYBOX_IMAGE) else {
        return;
    };
    let out = run(&t, &["true"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(
        toolbox_lines(&out)
            .iter()
            .any(|l| l.starts_with("toolbox: creating") && l.contains("over the layers")),
        "{}",
        describe(&out)
    );
    assert_sees_the_host(&|args| run(&t, args), "/media/root");
    assert_statuses_come_back(&|args| run(&t, args));

    let mut wc = overlay(&t)
        .args(["wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    wc.stdin.take().unwrap().write_all(b"a\nb").unwrap();
    let out = wc.wait_with_output().unwrap();
    assert_eq!(stdout(&out).trim(), "3", "{}", describe(&out));

    let recorded = metadata(&t);
    let anchor = recorded["overlay"]["anchor"].as_str().unwrap().to_string();
    assert!(!recorded["overlay"]["layers"].as_array().unwrap().is_empty());
    assert_eq!(anchors(&t), [anchor]);
    assert!(t.containers().is_empty(), "{:?}", t.containers());
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
    assert_eq!(mounts(&t), 0, "unmounted after the last session");
    assert!(
        t.tree().join("root").read_dir().unwrap().next().is_none(),
        "the image's files are not copied"
    );

    let row = list_row(&t);
    assert_eq!(row["storage"], "overlay");
    // The toolbox's own disk use: its upper directory, not the 2 MB image.
    assert!(row["size_bytes"].as_u64().unwrap() < 1_000_000, "{row}");

    let out = t.run(["rm", &t.toolbox_name()]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(!t.tree().exists());
    assert!(anchors(&t).is_empty(), "rm removes the anchor");
}

#[test]
fn overlay_writes_persist_and_sessions_share_one_mount() {
    let Some(t) = TestEnv::new("overlay_sessions", BUSYBOX_IMAGE) else {
        return;
    };
    let out = run(&t, &["sh", "-c", "echo one > /kept"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let out = run(&t, &["cat", "/kept"]);
    assert_eq!(stdout(&out), "one\n", "{}", describe(&out));
    assert_eq!(fs::read(t.tree().join("upper/kept")).unwrap(), b"one\n");

    // Two sessions at once: one waits for what the other writes.
    let waiter = overlay(&t)
        .args([
            "sh",
            "-c",
            "while [ ! -e /stop ]; do sleep 0.1; done; cat /from-second",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first session", || list_row(&t)["sessions"] == 1);
    assert_eq!(mounts(&t), 1);
    let out = run(&t, &["sh", "-c", "echo second > /from-second; touch /stop"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "second\n");
    assert_eq!(mounts(&t), 0, "the last session unmounts");

    // Regression: a session whose toolbox process was killed outright lost its
    // systemd-nspawn, but its command ran on in the host's PID namespace, holding the
    // mount. Now nothing of the session's command is left (what it detached with setsid
    // is another matter): the next session shares the mount left behind, and unmounts
    // after itself.
    let payload = "sleep 1210";
    let mut killed = overlay(&t).args(payload.split(' ')).spawn().unwrap();
    wait_for("the session to start", || list_row(&t)["sessions"] == 1);
    let machine = format!("--machine={}-{}", t.toolbox_name(), killed.id());
    assert!(
        running(&machine),
        "the session's systemd-nspawn is not running"
    );
    let root = ToolboxRoot::at(&t.tree()).unwrap();
    let _reaper = Reaper(root);
    wait_for("the session's command", || root.find(payload).is_some());
    let pid = root.find(payload).unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    wait_for("systemd-nspawn to die with toolbox", || !running(&machine));
    assert!(
        ends_within(pid, std::time::Duration::from_secs(5)),
        "the session's command (PID {pid}) outlived its killed toolbox: {:?}",
        root.processes()
    );
    let out = run(&t, &["cat", "/kept"]);
    assert_eq!(stdout(&out), "one\n", "{}", describe(&out));
    assert_eq!(mounts(&t), 0, "the next session unmounts after itself");

    // `rm --force` stops a running session, which unmounts as it ends.
    let mut running = overlay(&t).args(["sleep", "120"]).spawn().unwrap();
    wait_for("the session to start", || list_row(&t)["sessions"] == 1);
    let out = t.run(["rm", "--force", &t.toolbox_name()]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(wait_exit(&mut running).is_some(), "the session still runs");
    assert_eq!(mounts(&t), 0);
    assert!(!t.tree().exists());
    assert!(anchors(&t).is_empty());
}

#[test]
fn overlay_update_gives_a_fresh_toolbox() {
    let Some(mut t) = TestEnv::new("overlay_update", BUSYBOX_IMAGE) else {
        return;
    };
    let first = import_marker_image("v1");
    let tag = Tag::new("overlay-update", &first);
    t.image = tag.0.clone();
    let out = run(&t, &["/usr/bin/busybox", "sh", "-c", "echo x > /mine"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let old_anchor = metadata(&t)["overlay"]["anchor"]
        .as_str()
        .unwrap()
        .to_string();

    let out = t.run(["update"]);
    assert!(stdout(&out).contains("is up to date"), "{}", describe(&out));

    let second = import_marker_image("v2");
    tag.point_at(&second);
    // No TOOLBOX_STORAGE here: the toolbox keeps the storage it was built with.
    let out = t.run(["update"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(stdout(&out).contains("rebuilt"), "{}", describe(&out));
    let recorded = metadata(&t);
    assert_eq!(recorded["image_id"], second.as_str());
    let new_anchor = recorded["overlay"]["anchor"].as_str().unwrap().to_string();
    // The old anchor stays: it pins the layers of the tree the update kept.
    let mut both = vec![new_anchor.clone(), old_anchor.clone()];
    both.sort();
    assert_eq!(anchors(&t), both);
    assert_ne!(new_anchor, old_anchor);
    let out = run(&t, &["/usr/bin/busybox", "cat", "/etc/marker", "/mine"]);
    assert_eq!(
        stdout(&out),
        "v2",
        "a fresh upper directory: {}",
        describe(&out)
    );
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());

    // `--storage` on entry does not change an existing toolbox, and says so.
    let out = t.run(["--storage", "copy", "/usr/bin/busybox", "true"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(
        toolbox_lines(&out)
            .iter()
            .any(|l| l.contains("with overlay storage, which --storage copy does not change")),
        "{}",
        describe(&out)
    );
    // `--storage` on the command line converts it; the kept tree holds `/mine`, which
    // only --force discards without a terminal to ask on.
    let out = t.run(["update", "--storage", "copy"]);
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert!(
        toolbox_lines(&out)
            .iter()
            .any(|line| line.contains("1 file(s) changed in it")),
        "{}",
        describe(&out)
    );
    let out = t.run(["update", "--storage", "copy", "--force"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(stdout(&out).contains("rebuilt"), "{}", describe(&out));
    assert!(metadata(&t).get("overlay").is_none());
    assert!(t.tree().join("usr/bin/busybox").is_file());
    // The overlay tree replaced is kept, pinned by its anchor; the one before it is gone.
    assert_eq!(anchors(&t), [new_anchor]);
    assert_eq!(list_row(&t)["storage"], "copy");
    drop(tag);
    for id in [first, second] {
        let _ = Command::new("docker").args(["rmi", "-f", &id]).output();
    }
}

// Bug: `rm -rf DIR/NAME`, as CoreOS's documentation resets a toolbox, left the anchor
// running and pinning the image for good, under a name like `tender_babbage`.
#[test]
fn an_anchor_whose_toolbox_was_removed_by_hand_goes_with_the_next_creation() {
    let Some(t) = TestEnv::new("overlay_by_hand", BUSYBOX_IMAGE) else {
        return;
    };
    let out = run(&t, &["true"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let anchor = metadata(&t)["overlay"]["anchor"]
        .as_str()
        .unwrap()
        .to_string();
    let name = docker(&["inspect", "-f", "{{.Name}}", &anchor]);
    let prefix = format!("/toolbox-anchor-{}-", t.toolbox_name());
    assert!(name.trim().starts_with(&prefix), "anchor named {name}");

    fs::remove_dir_all(t.tree()).unwrap();
    assert_eq!(
        anchors(&t),
        std::slice::from_ref(&anchor),
        "nothing runs toolbox in between"
    );
    // Any creation in that toolbox directory; the other toolbox's anchor stays.
    let other = format!("{}_other", t.name);
    let out = overlay(&t)
        .env("TOOLBOX_NAME", &other)
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(
        anchors(&t).is_empty(),
        "the abandoned anchor {anchor} runs on"
    );
    let kept = format!(
        "label=toolbox.anchor={}",
        t.toolboxes.join(format!("tester-{other}")).display()
    );
    let kept = docker(&["ps", "-q", "--filter", &kept]);
    assert_eq!(
        kept.split_whitespace().count(),
        1,
        "the new toolbox's anchor"
    );
    let out = t.run(["rm", &format!("tester-{other}")]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
}

#[test]
fn the_anchor_pins_the_layers_until_it_is_removed() {
    let Some(mut t) = TestEnv::new("overlay_anchor", BUSYBOX_IMAGE) else {
        return;
    };
    let id = import_marker_image("pinned");
    let tag = Tag::new("overlay-anchor", &id);
    t.image = tag.0.clone();
    let out = run(&t, &["/usr/bin/busybox", "cat", "/etc/marker"]);
    assert_eq!(stdout(&out), "pinned", "{}", describe(&out));

    // Plain `docker rmi` is refused while the anchor uses the image; forced, the image
    // goes but the layers stay while the anchor needs them.
    let out = Command::new("docker")
        .args(["rmi", &tag.0])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    docker(&["rmi", "-f", &tag.0]);
    let out = run(&t, &["/usr/bin/busybox", "cat", "/etc/marker"]);
    assert_eq!(stdout(&out), "pinned", "{}", describe(&out));

    // Without the anchor the image can go, and the toolbox says so.
    let anchor = metadata(&t)["overlay"]["anchor"]
        .as_str()
        .unwrap()
        .to_string();
    docker(&["rm", "-f", &anchor]);
    // Already gone with the forced rmi, on Docker 20.10.
    let _ = Command::new("docker").args(["rmi", &id]).output();
    let out = run(&t, &["/usr/bin/busybox", "true"]);
    assert_eq!(status(&out), 125, "{}", describe(&out));
    let lines = toolbox_lines(&out);
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    assert!(
        lines[0].contains("image layers of toolbox") && lines[0].contains("toolbox update"),
        "{}",
        describe(&out)
    );
    assert_eq!(mounts(&t), 0);

    // `update` rebuilds on the image the tag now names.
    let replacement = import_marker_image("replacement");
    tag.point_at(&replacement);
    let out = t.run(["update"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let out = run(&t, &["/usr/bin/busybox", "cat", "/etc/marker"]);
    assert_eq!(stdout(&out), "replacement", "{}", describe(&out));
    let out = t.run(["rm", &t.toolbox_name()]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(anchors(&t).is_empty());
    drop(tag);
    let _ = Command::new("docker")
        .args(["rmi", "-f", &replacement])
        .output();
}

#[test]
fn another_storage_driver_falls_back_to_copying() {
    let Some(mut t) = TestEnv::new("overlay_vfs", BUSYBOX_IMAGE) else {
        return;
    };
    let daemon = OwnDaemon::vfs();
    let id = import_marker_image_into(Some(&daemon.host), "vfs");
    daemon.docker(&["tag", &id, "toolbox-vfs:latest"]);
    t.image = "toolbox-vfs:latest".into();
    let with_vfs = |command: &mut Command| {
        command.env("DOCKER_HOST", &daemon.host);
    };

    let mut command = overlay(&t);
    with_vfs(&mut command);
    let out = command
        .args(["/usr/bin/busybox", "cat", "/etc/marker"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "vfs");
    assert!(
        toolbox_lines(&out).iter().any(|l| l
            == "toolbox: the Docker daemon stores images with `vfs`; toolbox mounts the \
                layers of Docker's overlay2 and Podman's overlay only; copying the image \
                instead of mounting it"),
        "{}",
        describe(&out)
    );
    assert!(metadata(&t).get("overlay").is_none());

    // Chosen automatically (the default), the reason is given with -v only.
    for (verbose, said) in [(false, 0), (true, 1)] {
        let name = format!("auto-{verbose}");
        let mut command = t.command();
        with_vfs(&mut command);
        command
            .env_remove("TOOLBOX_STORAGE")
            .args(["--name", &name]);
        if verbose {
            command.arg("-v");
        }
        let out = command.args(["/usr/bin/busybox", "true"]).output().unwrap();
        assert_eq!(status(&out), 0, "{}", describe(&out));
        let reasons = toolbox_lines(&out)
            .iter()
            .filter(|l| l.contains("copying the image instead of mounting it"))
            .count();
        assert_eq!(reasons, said, "{}", describe(&out));
        let tree = t.toolboxes.join(format!("tester-{name}"));
        assert!(tree.join("usr/bin/busybox").exists(), "not a copy");
    }

    // Demanded on the command line, it is an error instead, and nothing is left.
    let mut command = t.command();
    with_vfs(&mut command);
    let out = command
        .args(["--storage", "overlay", "--name", "demanded", "true"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert_eq!(
        toolbox_lines(&out),
        [
            "toolbox: cannot use overlay storage (--storage overlay): the Docker daemon stores \
          images with `vfs`; toolbox mounts the layers of Docker's overlay2 and Podman's \
          overlay only"
        ]
    );
    assert!(!t.toolboxes.join("tester-demanded").exists());
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
    assert_eq!(daemon.docker(&["ps", "-a", "-q"]), "");
}

// Deletions (whiteouts) and replaced directories (opaque) in upper layers hide what lower
// layers hold, as in the daemon's own containers, and the tree matches a copy toolbox's.
#[test]
fn upper_layers_hide_what_lower_layers_hold() {
    let Some(mut t) = TestEnv::new("overlay_layers", BUSYBOX_IMAGE) else {
        return;
    };
    let tag = Tag(format!("toolbox-test-layers-{}:v", std::process::id()));
    build_image(
        &tag.0,
        &format!(
            "FROM {BUSYBOX_IMAGE}\n\
             RUN mkdir -p /opt/a && echo lower > /opt/a/file && echo gone > /opt/gone\n\
             RUN rm /opt/gone && rm -rf /opt/a && mkdir /opt/a && echo new > /opt/a/new \\\n\
                 && echo top > /opt/top\n"
        ),
    );
    t.image = tag.0.clone();

    let look = ["sh", "-c", "ls /opt; ls /opt/a; cat /opt/a/new /opt/top"];
    let out = run(&t, &look);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(
        stdout(&out),
        "a\ntop\nnew\nnew\ntop\n",
        "{}",
        describe(&out)
    );
    // With the containerd image store the classic builder's chain also keeps the layer
    // Docker added for each step's container.
    let layers = metadata(&t)["overlay"]["layers"].as_array().unwrap().len();
    let store = docker(&["info", "--format", "{{.DriverStatus}}"]);
    match store.contains("io.containerd.snapshotter.v1") {
        true => assert!(layers >= 3, "{layers}"),
        false => assert_eq!(layers, 3),
    }
    let copy = t
        .command()
        .args(["--name", "copy"])
        .args(look)
        .output()
        .unwrap();
    assert_eq!(stdout(&copy), stdout(&out), "{}", describe(&copy));

    let out = t.run(["rm", "--all"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
}

// A creation killed outright leaves an anchor container and a partial directory, maybe with
// its overlay still mounted; the next creation removes all three before building.
#[test]
fn a_killed_creation_is_cleaned_up_by_the_next() {
    let Some(t) = TestEnv::new("overlay_killed", BUSYBOX_IMAGE) else {
        return;
    };
    let label = format!("toolbox.anchor={}", t.tree().display());
    let stale_anchor = docker(&["create", "--label", &label, BUSYBOX_IMAGE, "/bin/true"]);
    let partial = t
        .toolboxes
        .join(format!(".{}.partial-999999", t.toolbox_name()));
    for dir in ["upper", "work", "root"] {
        fs::create_dir_all(partial.join(dir)).unwrap();
    }
    // Any lower layer makes the mount a killed creation leaves (the engine's are not all
    // in an inspect).
    let layer = tempfile::tempdir().unwrap();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        layer.path().display(),
        partial.join("upper").display(),
        partial.join("work").display()
    );
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(partial.join("root"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));

    let out = run(&t, &["true"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(!partial.exists(), "the stale partial directory is removed");
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
    let anchors = anchors(&t);
    assert_eq!(anchors.len(), 1, "{anchors:?}");
    assert!(
        !anchors[0].starts_with(&stale_anchor),
        "the stale anchor is removed"
    );
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&partial.display().to_string()),
        "the stale mount is gone"
    );
    let out = t.run(["rm", "--all"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
}

// A process started in a session and left running (the host's PID namespace is shared, so
// nothing ends it with its session) still uses the overlay: the toolbox stays mounted and
// the next session shares that mount instead of mounting the same upper directory twice;
// `rm` refuses while it runs and `rm --force` ends it.
#[test]
fn processes_left_running_keep_the_mount() {
    let Some(t) = TestEnv::new("overlay_lingering", BUSYBOX_IMAGE) else {
        return;
    };
    let marker = "sleep 4242";
    let out = run(
        &t,
        &[
            "sh",
            "-c",
            &format!("setsid {marker} </dev/null >/dev/null 2>&1 & echo started"),
        ],
    );
    assert_eq!(status(&out), 0, "{}", describe(&out));
    // Found through the toolbox's overlay: another test's `sleep` is not this one's.
    let root = ToolboxRoot::at(&t.tree()).unwrap();
    let _reaper = Reaper(root);
    let lingering = || root.find(marker).is_some();
    if systemd_booted() {
        // Where systemd runs, a session is a scope of its own that ends with it: nothing
        // is left to hold the mount, and `rm` removes the toolbox without --force.
        wait_for("the background process to end with its session", || {
            !lingering()
        });
        succeeded(&t.run(["rm", &t.toolbox_name()]));
        assert_eq!(mounts(&t), 0);
        assert!(!t.tree().exists());
        assert!(anchors(&t).is_empty());
        return;
    }
    wait_for("the background process", lingering);
    assert_eq!(mounts(&t), 1, "kept mounted for the process left running");

    let out = run(&t, &["sh", "-c", "echo again > /again; cat /again"]);
    assert_eq!(stdout(&out), "again\n", "{}", describe(&out));
    assert_eq!(mounts(&t), 1, "one mount, shared");

    let out = t.run(["rm", &t.toolbox_name()]);
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still run"),
        "{}",
        describe(&out)
    );
    assert!(t.tree().exists());

    let out = t.run(["rm", "--force", &t.toolbox_name()]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(!lingering(), "rm --force ends it");
    assert_eq!(mounts(&t), 0);
    assert!(!t.tree().exists());
    assert!(anchors(&t).is_empty());
}

/// toolbox with no storage setting: the default, `auto`.
fn default_storage(t: &TestEnv) -> Command {
    let mut command = t.command();
    command.env_remove("TOOLBOX_STORAGE");
    command
}

#[test]
fn the_default_is_overlay_pinned_by_a_running_anchor() {
    let Some(t) = TestEnv::new("overlay_default", BUSYBOX_IMAGE) else {
        return;
    };
    let out = default_storage(&t).args(["-v", "true"]).output().unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(list_row(&t)["storage"], "overlay");
    let anchors = anchors(&t);
    assert_eq!(anchors.len(), 1);
    let state = docker(&[
        "inspect",
        "--format",
        "{{.State.Running}} {{.HostConfig.RestartPolicy.Name}} {{.HostConfig.NetworkMode}} \
         {{.HostConfig.ReadonlyRootfs}} {{.Config.User}} {{.HostConfig.LogConfig.Type}}",
        &anchors[0],
    ]);
    assert_eq!(state, "true always none true 65534:65534 none");
    // Where the toolbox's own files are, as list says.
    let out = default_storage(&t)
        .args(["sh", "-c", "echo mine > /root/mine"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let files = list_row(&t)["files"].as_str().unwrap().to_string();
    assert_eq!(files, t.tree().join("upper").display().to_string());
    assert_eq!(
        fs::read_to_string(t.tree().join("upper/root/mine")).unwrap(),
        "mine\n"
    );
    // An anchor that does not run (stopped by hand, or one made before anchors ran) is
    // replaced by `update`, the toolbox's files kept.
    docker(&["stop", &anchors[0]]);
    let out = default_storage(&t).arg("update").output().unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(
        toolbox_lines(&out)
            .iter()
            .any(|l| l.contains("is pinned by a running anchor")),
        "{}",
        describe(&out)
    );
    let renewed = self::anchors(&t);
    assert_eq!(renewed.len(), 1);
    assert_ne!(renewed[0], anchors[0]);
    assert_eq!(metadata(&t)["overlay"]["anchor"], renewed[0].as_str());
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.Running}}", &renewed[0]]),
        "true"
    );
    assert_eq!(
        fs::read_to_string(t.tree().join("upper/root/mine")).unwrap(),
        "mine\n"
    );

    // Released by rm: nothing of the toolbox's is left in the daemon.
    let out = t.run(["rm", &t.name]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(self::anchors(&t).is_empty());
}

#[test]
fn prunes_and_daemon_restarts_leave_an_overlay_toolbox_whole() {
    let Some(t) = TestEnv::new("overlay_prune", BUSYBOX_IMAGE) else {
        return;
    };
    let mut daemon = OwnDaemon::like_the_tested_one();
    let id = import_marker_image_into(Some(&daemon.host), "pinned");
    daemon.docker(&["tag", &id, "toolbox-pinned:latest"]);
    let host = daemon.host.clone();
    let session = |args: &[&str]| {
        default_storage(&t)
            .env("DOCKER_HOST", &host)
            .env("TOOLBOX_DOCKER_IMAGE", "toolbox-pinned:latest")
            .args(args)
            .output()
            .unwrap()
    };
    let out = session(&[
        "-v",
        "/usr/bin/busybox",
        "sh",
        "-c",
        "echo mine > /root/mine",
    ]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(metadata(&t).get("overlay").is_some(), "{}", describe(&out));
    let assert_whole = |case: &str| {
        let out = session(&["/usr/bin/busybox", "cat", "/root/mine", "/etc/marker"]);
        assert_eq!(status(&out), 0, "{case}: {}", describe(&out));
        assert_eq!(stdout(&out), "mine\npinned", "{case}");
    };
    for prune in [
        &["system", "prune", "-a", "-f"][..],
        &["system", "prune", "-a", "-f", "--volumes"],
        &["container", "prune", "-f"],
        &["image", "prune", "-a", "-f"],
    ] {
        daemon.docker(prune);
        assert_whole(&prune.join(" "));
    }
    // A daemon stopped and started again, as at a reboot, or killed and started again, as
    // after a crash, starts the anchor again.
    for (how, crash) in [("stopped", false), ("killed", true)] {
        if crash {
            daemon.kill();
        } else {
            daemon.stop();
        }
        daemon.restart();
        let filter = "label=toolbox.anchor";
        wait_for("the anchor to run again", || {
            !daemon.docker(&["ps", "-q", "--filter", filter]).is_empty()
        });
        daemon.docker(&["system", "prune", "-a", "-f"]);
        assert_whole(&format!(
            "prune after the daemon was {how} and started again"
        ));
    }
    // `rm` releases the pin: the next prune frees the image, and nothing is left.
    let out = default_storage(&t)
        .env("DOCKER_HOST", &daemon.host)
        .args(["rm", &t.name])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(daemon.docker(&["ps", "-a", "-q"]), "");
    daemon.docker(&["image", "prune", "-a", "-f"]);
    assert_eq!(daemon.docker(&["images", "-q"]), "");
}

/// A dry run prints what a session runs. For an overlay toolbox no session has mounted,
/// the mounts are placed through the image's own links all the same (`lib -> usr/lib`:
/// the host's modules at /usr/lib/modules/R, where a session finds them, over the
/// image's own files there), through layers whose paths are more than one overlay option
/// holds, and what is printed names the toolbox's tree, not the view it was read from.
#[test]
fn a_dry_run_places_mounts_as_a_session_does_while_unmounted() {
    let Some(t) = TestEnv::new("overlay_dry_run", BUSYBOX_IMAGE) else {
        return;
    };
    let release =
        String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
    let release = release.trim();
    assert!(
        std::path::Path::new("/lib/modules").join(release).is_dir(),
        "the host has no /lib/modules/{release} (scripts/test links one)"
    );
    let base = ImportedImage::new(&t, "overlay-dry-run", &[Entry::Link("lib", "usr/lib")]);
    let modules = format!("/usr/lib/modules/{release}");
    let layered = ImportedImage(format!(
        "toolbox-test-overlay-dry-run-layered-{}:v",
        std::process::id()
    ));
    build_image(
        &layered.0,
        &format!(
            "FROM {}\n\
             RUN [\"/usr/bin/busybox\", \"mkdir\", \"-p\", \"{modules}/from-the-image\"]\n\
             RUN [\"/usr/bin/busybox\", \"mkdir\", \"/layer-three\"]\n",
            base.0
        ),
    );
    let run = |args: &[&str]| {
        overlay(&t)
            .env("TOOLBOX_DOCKER_IMAGE", &layered.0)
            .args(args)
            .output()
            .unwrap()
    };
    succeeded(&run(&["ls", &format!("{modules}/from-the-image")]));
    assert_eq!(mounts(&t), 0, "a session is still mounted");
    let command = succeeded(&run(&["--dry-run"]));
    let tree = t.tree().join("root").display().to_string();
    assert!(
        command.contains(&format!(":{tree}{modules}:{modules} ")),
        "the host's modules not over the image's at {modules}: {command}"
    );
    assert!(!command.contains("/proc/self/fd"), "{command}");
}
