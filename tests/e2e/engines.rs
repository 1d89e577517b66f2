//! The engines users run today, where this test machine cannot show them (the testbed
//! guest of `scripts/testbed` can): Docker with its containerd image store, whose images
//! toolbox copies and says why, and Podman 5 running a container that `--target`
//! debugs. Where the engine is not configured so, these fail when `TOOLBOX_E2E=required`
//! (CI runs them in the testbed guest only) and otherwise skip, saying why.

use std::fs;
use std::process::Command;

use crate::common::*;
use crate::podman::{PodmanService, podman, podman_env, run_with};

/// With Docker's containerd image store (`"containerd-snapshotter": true`), an image's
/// inspect has no layer directories: the default storage copies the image, saying why
/// (with -v) in the store's own terms, and `--storage overlay` is refused with the same
/// reason, leaving nothing behind.
#[test]
fn dockers_containerd_image_store_is_copied_and_says_why() {
    let Some(t) = TestEnv::new("containerd_store", BUSYBOX_IMAGE) else {
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
    let reason = "the Docker daemon keeps images in containerd's image store (snapshotter \
                  `overlayfs`), whose snapshots toolbox does not mount yet";
    let out = t
        .command()
        .env_remove("TOOLBOX_STORAGE")
        .args(["-v", "/usr/bin/busybox", "true"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(
        toolbox_lines(&out).contains(&format!(
            "toolbox: {reason}; copying the image instead of mounting it"
        )),
        "{}",
        describe(&out)
    );
    assert!(t.tree().join("usr/bin/busybox").exists(), "not a copy");
    let out = t
        .command()
        .args(["--storage", "overlay", "--name", "demanded", "true"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert_eq!(
        toolbox_lines(&out),
        [format!(
            "toolbox: cannot use overlay storage (--storage overlay): {reason}"
        )]
    );
    assert!(!t.toolboxes.join("tester-demanded").exists());
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
