//! The engines users run today, where this test machine cannot show them (the testbed
//! guest of `scripts/testbed` can): Docker with its containerd image store, whose
//! snapshots toolbox mounts and keeps, and Podman 5 running a container that `--target`
//! debugs. Where the engine is not configured so, these fail when `TOOLBOX_E2E=required`
//! (CI runs them in the testbed guest only) and otherwise skip, saying why.

use std::fs;
use std::process::Command;

use crate::common::*;
use crate::podman::{PodmanService, podman, podman_env, run_with};

/// With Docker's containerd image store (`"containerd-snapshotter": true`), the default
/// storage is overlay over the store's own snapshots: the image's layers are the lowest
/// directories of its running anchor's root, under containerd's `overlayfs` snapshotter.
/// The anchor keeps them through a forced `rmi` of the tag; `rm` releases the image.
/// (Prunes and daemon restarts, on a daemon of the test's own:
/// `overlay::prunes_and_daemon_restarts_leave_an_overlay_toolbox_whole`.)
#[test]
fn dockers_containerd_image_store_is_mounted_and_kept() {
    let Some(mut t) = TestEnv::new("containerd_store", BUSYBOX_IMAGE) else {
        return;
    };
    let driver_status = docker(&["info", "--format", "{{.DriverStatus}}"]);
    if !driver_status.contains("io.containerd.snapshotter.v1") {
        return unavailable(
            "containerd_store",
            "the Docker daemon does not use the containerd image store \
             (scripts/testbed test --engine docker-containerd)",
        );
    }
    let id = import_marker_image("snapshotted");
    let tag = Tag::new("containerd-store", &id);
    t.image = tag.0.clone();
    let session = |args: &[&str]| {
        t.command()
            .env_remove("TOOLBOX_STORAGE")
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
    assert!(
        toolbox_lines(&out)
            .iter()
            .any(|l| l.contains("over the layers of")),
        "{}",
        describe(&out)
    );
    assert!(!t.tree().join("usr/bin/busybox").exists(), "a copy");
    let metadata: serde_json::Value =
        serde_json::from_slice(&fs::read(t.tree().join(".toolbox.json")).unwrap()).unwrap();
    let layers = metadata["overlay"]["layers"].as_array().unwrap().clone();
    let expected: usize = docker(&["inspect", "--format", "{{len .RootFS.Layers}}", &id])
        .parse()
        .unwrap();
    assert_eq!(layers.len(), expected, "{metadata}");
    for layer in &layers {
        let layer = layer.as_str().unwrap();
        assert!(
            layer.contains("/io.containerd.snapshotter.v1.overlayfs/snapshots/"),
            "{layer}"
        );
    }
    let whole = |case: &str| {
        let out = session(&["/usr/bin/busybox", "cat", "/root/mine", "/etc/marker"]);
        assert_eq!(
            stdout(&out),
            "mine\nsnapshotted",
            "{case}: {}",
            describe(&out)
        );
    };
    whole("created");
    // Refused while the anchor uses it; forced, the tag goes and the layers stay.
    let refused = Command::new("docker").args(["rmi", &id]).output().unwrap();
    assert!(!refused.status.success(), "{}", describe(&refused));
    docker(&["rmi", "-f", &tag.0]);
    whole("after a forced rmi of its tag");

    // `rm` releases the image: nothing stops its removal then.
    let out = t.run(["rm", &t.name]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let _ = Command::new("docker").args(["rmi", &id]).output();
    let left = Command::new("docker")
        .args(["image", "inspect", &id])
        .output()
        .unwrap();
    assert!(
        !left.status.success(),
        "the image stayed: {}",
        describe(&left)
    );
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
}

/// A container Podman runs (Podman 5 with crun and netavark) is a target as Docker's
/// are: the session joins its network namespace, sees its root and its volume at
/// /media/target, and gets TOOLBOX_TARGET and TOOLBOX_TARGET_PID, with the host's PID
/// namespace and `/` kept.
#[test]
fn a_container_podman_runs_is_a_target() {
    let Some(t) = podman_env("podman_running_target") else {
        return;
    };
    let service = PodmanService::start(None);
    let name = format!("toolbox-test-podman-running-{}", std::process::id());
    let run = Command::new("podman")
        .args([
            "run",
            "-d",
            "--name",
            &name,
            "--volume",
            "/data",
            BUSYBOX_IMAGE,
        ])
        .args([
            "sh",
            "-c",
            "echo marked > /marker && echo in-volume > /data/marker && exec sleep 1000",
        ])
        .output()
        .unwrap();
    let _container = Removed(name.clone());
    if !run.status.success() {
        return unavailable(
            "podman_running_target",
            &format!(
                "Podman cannot run a container here ({}); scripts/testbed runs one",
                String::from_utf8_lossy(&run.stderr).trim()
            ),
        );
    }
    let pid: u32 = podman(&["inspect", "--format", "{{.State.Pid}}", &name])
        .parse()
        .unwrap();
    wait_for("the target's volume marker", || {
        fs::read_to_string(format!("/proc/{pid}/root/data/marker")).is_ok()
    });
    let script = "readlink /proc/self/ns/net; readlink /proc/self/ns/pid; \
                  echo \"$TOOLBOX_TARGET $TOOLBOX_TARGET_PID\"; \
                  cat /media/target/marker /media/target/data/marker; \
                  test -d /media/root/proc/1 && echo host-root";
    let out = run_with(&t, &service, &["--target", &name, "sh", "-c", script]);
    let report = succeeded(&out);
    assert_eq!(
        report.lines().collect::<Vec<_>>(),
        [
            read_link(format!("/proc/{pid}/ns/net")).as_str(),
            read_link("/proc/self/ns/pid").as_str(),
            &format!("{name} {pid}"),
            "marked",
            "in-volume",
            "host-root",
        ],
        "{}",
        describe(&out)
    );
}

/// Removes the Podman container named so when dropped.
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.0])
            .output();
    }
}
