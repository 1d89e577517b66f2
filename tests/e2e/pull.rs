//! Creating a toolbox from an image the daemon does not have: the real Docker daemon pulls
//! it from a registry served on loopback by the test, with progress; a pull that fails
//! inside the stream leaves nothing behind.

use std::process::Command;

use crate::common::registry::{Image, Registry};
use crate::common::*;

fn image(corrupt_layer: bool) -> (Registry, String, String) {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static provides /bin/busybox");
    let tag = format!("v{}-{}", std::process::id(), u8::from(corrupt_layer));
    let registry = Registry::serve(Image {
        repository: "toolbox-test/pulled".into(),
        tag: tag.clone(),
        // The tag file makes each test's layer distinct: the daemon shares downloads of
        // the same layer digest between concurrent pulls.
        files: vec![
            ("usr/bin/busybox".into(), 0o755, busybox),
            ("etc/tag".into(), 0o644, tag.clone().into_bytes()),
        ],
        corrupt_layer,
        stall_layer: false,
    });
    let repository = format!("{}/toolbox-test/pulled", registry.address);
    (registry, repository, tag)
}

fn remove_image(reference: &str) {
    let _ = Command::new("docker")
        .args(["rmi", "-f", reference])
        .output();
}

#[test]
fn a_missing_image_is_pulled_with_progress() {
    let (_registry, repository, tag) = image(false);
    let reference = format!("{repository}:{tag}");
    let Some(t) = TestEnv::pulling("pulled", &repository) else {
        return;
    };
    let out = t.run(["--tag", &tag, "/usr/bin/busybox", "echo", "pulled"]);
    let inspected = Command::new("docker")
        .args(["image", "inspect", &reference])
        .output()
        .unwrap();
    remove_image(&reference);

    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "pulled\n");
    let lines = toolbox_lines(&out);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("image {reference} is not here; pulling it"))),
        "{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            // Docker's last word on a layer; Podman's service says the download's.
            .any(|l| l.starts_with("toolbox: pulling ")
                && (l.ends_with(": Pull complete") || l.ends_with(": Download complete"))),
        "no per-layer progress: {stderr}"
    );
    assert!(
        inspected.status.success(),
        "the image was not pulled into the daemon"
    );
    assert!(t.tree().join(".toolbox.json").is_file());
    assert!(t.containers().is_empty());
}

#[test]
fn a_pull_failing_mid_stream_leaves_nothing() {
    let (_registry, repository, tag) = image(true);
    let reference = format!("{repository}:{tag}");
    let Some(t) = TestEnv::pulling("pull_fails", &repository) else {
        return;
    };
    let out = t.run(["--tag", &tag, "true"]);
    remove_image(&reference);

    assert_eq!(status(&out), 125, "{}", describe(&out));
    let last = toolbox_lines(&out).pop().unwrap_or_default();
    assert!(
        last.starts_with(&format!("toolbox: cannot pull image `{reference}`: ")),
        "{}",
        describe(&out)
    );
    assert!(!t.toolboxes.exists(), "{:?}", t.leftovers());
    assert!(t.containers().is_empty());
}

#[test]
fn an_unknown_tag_fails_cleanly() {
    let (_registry, repository, _tag) = image(false);
    let Some(t) = TestEnv::pulling("unknown_tag", &repository) else {
        return;
    };
    let out = t.run(["--tag", "no-such-tag", "true"]);
    assert_eq!(status(&out), 125, "{}", describe(&out));
    let last = toolbox_lines(&out).pop().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "toolbox: cannot pull image `{repository}:no-such-tag`: "
        )),
        "{}",
        describe(&out)
    );
    assert!(!t.toolboxes.exists());
}
