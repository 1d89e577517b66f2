//! `toolbox import`, end to end: toolboxes from `docker save` archives (a file, and
//! standard input), root filesystem tarballs and corrupt archives, with no engine
//! contacted (`DOCKER_HOST` points nowhere). An imported Debian image, single-layer and
//! built in three layers with deletions and an opaque directory, gives the same tree as the
//! engine's export path.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::*;

/// Runs `toolbox import` with no engine reachable; `stdin` is piped from `feed` if given.
fn import(t: &TestEnv, args: &[&str], feed: Option<&Path>) -> Output {
    let mut command = t.command();
    // Named by `--name` or after the archive, not by the harness's TOOLBOX_NAME.
    command
        .env_remove("TOOLBOX_NAME")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("TOOLBOX_ENGINE", "docker")
        .arg("import")
        .args(args);
    if let Some(feed) = feed {
        command.stdin(fs::File::open(feed).unwrap());
    }
    command.output().unwrap()
}

/// `docker save IMAGE` into the test's directory.
fn save(t: &TestEnv, image: &str, name: &str) -> PathBuf {
    let path = t.root.join(name);
    docker(&["save", "-o", path.to_str().unwrap(), image]);
    path
}

/// The `manifest.json` of a `docker save` archive.
fn saved_manifest(archive: &Path) -> serde_json::Value {
    let mut outer = tar::Archive::new(fs::File::open(archive).unwrap());
    for entry in outer.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.path().unwrap().as_os_str() == "manifest.json" {
            return serde_json::from_reader(entry).unwrap();
        }
    }
    panic!("{} has no manifest.json", archive.display());
}

/// The digest of the configuration a `docker save` archive names: the image ID import
/// records. Its path is `ID.json` (Docker before 25) or `blobs/sha256/DIGEST`.
fn saved_config_id(archive: &Path) -> String {
    let manifest = saved_manifest(archive);
    let config = manifest[0]["Config"].as_str().unwrap();
    let digest = config.rsplit('/').next().unwrap().trim_end_matches(".json");
    format!("sha256:{digest}")
}

/// The whiteout markers in the layers of a `docker save` archive.
fn whiteouts(archive: &Path) -> Vec<String> {
    // The layers `manifest.json` names: `ID/layer.tar` (Docker before 25), or
    // `blobs/sha256/DIGEST` of the OCI layout Docker 25 and later save.
    let manifest = saved_manifest(archive);
    let layers: Vec<PathBuf> = manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| PathBuf::from(layer.as_str().unwrap()))
        .collect();
    let mut found = Vec::new();
    let mut outer = tar::Archive::new(fs::File::open(archive).unwrap());
    for entry in outer.entries().unwrap() {
        let entry = entry.unwrap();
        if !layers.contains(&entry.path().unwrap().into_owned()) {
            continue;
        }
        // Docker's containerd image store saves its layers gzip-compressed.
        let mut layer = std::io::BufReader::new(entry);
        let gzip = std::io::BufRead::fill_buf(&mut layer)
            .unwrap()
            .starts_with(&[0x1f, 0x8b]);
        let layer: Box<dyn std::io::Read> = match gzip {
            true => Box::new(flate2::read::GzDecoder::new(layer)),
            false => Box::new(layer),
        };
        for inner in tar::Archive::new(layer).entries().unwrap() {
            let name = inner.unwrap().path().unwrap().display().to_string();
            if name.contains(".wh.") {
                found.push(name);
            }
        }
    }
    found
}

/// The image's ID as the engine shows it where that is its configuration's digest (as
/// import records it): with overlay2 and Podman; `None` with Docker's containerd image
/// store, which shows its manifest's digest instead.
fn engine_config_id(image: &str) -> Option<String> {
    (!containerd_image_store()).then(|| docker(&["image", "inspect", "--format", "{{.Id}}", image]))
}

fn recorded(tree: &Path) -> serde_json::Value {
    serde_json::from_str(
        &fs::read_to_string(tree.join(toolbox::store::toolboxes::METADATA)).unwrap(),
    )
    .unwrap()
}

#[test]
fn a_saved_debian_image_imports_as_the_export_path_makes_it() {
    let Some(t) = TestEnv::new("import_debian", DEBIAN_IMAGE) else {
        return;
    };
    // The export path, through the engine.
    let out = t.run(["true"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));

    // The same image, saved, and imported from standard input with no engine.
    let archive = save(&t, DEBIAN_IMAGE, "debian.tar");
    let out = import(&t, &["-", "--name", "imported"], Some(&archive));
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let imported = t.toolboxes.join("tester-imported");
    assert_same_tree(&t.tree(), &imported);
    assert_eq!(recorded(&imported)["image_id"], saved_config_id(&archive));
    if let Some(id) = engine_config_id(DEBIAN_IMAGE) {
        assert_eq!(recorded(&imported)["image_id"], id);
    }
    assert_eq!(recorded(&imported)["imported_from"], "standard input");

    // It is entered like any toolbox, and the tools attach to the host.
    let out = t
        .command()
        .args(["--name", "imported", "strace", "-V"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let out = t.run(["--name", "imported", "update"]);
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert!(
        toolbox_lines(&out)[0].contains("was imported from standard input"),
        "{}",
        describe(&out)
    );
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
}

#[test]
fn a_three_layer_image_with_deletions_imports_as_the_export_path_makes_it() {
    let Some(mut t) = TestEnv::new("import_layers", DEBIAN_IMAGE) else {
        return;
    };
    let tag = Tag(format!(
        "toolbox-test-import-layers-{}:v",
        std::process::id()
    ));
    build_image(
        &tag.0,
        &format!(
            "FROM {DEBIAN_IMAGE}\n\
             RUN rm -rf /usr/share/doc /etc/motd && mkdir -p /opt/a && echo lower > /opt/a/file \\\n\
                 && ln /etc/passwd /opt/passwd-link\n\
             RUN rm -rf /opt/a && mkdir /opt/a && echo new > /opt/a/new && rm /usr/bin/strace \\\n\
                 && chmod 700 /opt && echo top > /opt/top\n"
        ),
    );
    t.image = tag.0.clone();
    let out = t.run(["true"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));

    let archive = save(&t, &tag.0, "layers.tar");
    let markers = whiteouts(&archive);
    assert!(
        markers
            .iter()
            .any(|m| m.contains("/.wh.") && !m.contains(".wh..wh.")),
        "the saved layers carry no deletion marker: {markers:?}"
    );
    // overlay2 marks the directory made again opaque; containerd's differ (Docker's
    // containerd image store) writes a deletion marker for each file removed instead.
    assert!(
        containerd_image_store()
            || !storages().contains(&"overlay")
            || markers.iter().any(|m| m.ends_with("/.wh..wh..opq")),
        "the saved layers carry no opaque marker: {markers:?}"
    );
    let out = import(&t, &[archive.to_str().unwrap(), "--name", "layers"], None);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let imported = t.toolboxes.join("tester-layers");
    assert_same_tree(&t.tree(), &imported);
    assert!(!imported.join("usr/share/doc").exists() && !imported.join("usr/bin/strace").exists());
    assert_eq!(
        fs::read_to_string(imported.join("opt/a/new")).unwrap(),
        "new\n"
    );
    assert!(!imported.join("opt/a/file").exists());
    assert_eq!(recorded(&imported)["image_id"], saved_config_id(&archive));
    if let Some(id) = engine_config_id(&tag.0) {
        assert_eq!(recorded(&imported)["image_id"], id);
    }
}

#[test]
fn root_filesystem_tarballs_and_corrupt_archives() {
    let Some(t) = TestEnv::new("import_rootfs", BUSYBOX_IMAGE) else {
        return;
    };
    // `docker export | gzip`: a root filesystem, compressed.
    let container = docker(&["create", BUSYBOX_IMAGE, "/bin/true"]);
    let exported = t.root.join("rootfs.tar");
    docker(&["export", "-o", exported.to_str().unwrap(), &container]);
    docker(&["rm", &container]);
    let gzipped = t.root.join("busybox-rootfs.tar.gz");
    let status_of = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -c {} > {}",
            exported.display(),
            gzipped.display()
        ))
        .status()
        .unwrap();
    assert!(status_of.success());
    let out = import(&t, &[gzipped.to_str().unwrap()], None);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let tree = t.toolboxes.join("tester-busybox-rootfs");
    assert_eq!(recorded(&tree)["image_id"], "");
    let out = t
        .command()
        .args(["--name", "busybox-rootfs", "cat", "/etc/passwd"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(stdout(&out).starts_with("root:x:0:0"));

    // From standard input, a root filesystem has no name to give the toolbox.
    let out = import(&t, &["-"], Some(&exported));
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert_eq!(
        toolbox_lines(&out),
        ["toolbox: `-` names no image; give --name"]
    );

    // A layer altered after it was saved: its digest no longer matches the config's.
    let archive = save(&t, BUSYBOX_IMAGE, "busybox.tar");
    let mut bytes = fs::read(&archive).unwrap();
    let at = bytes
        .windows(7)
        .position(|w| w == b"root:x:")
        .expect("the layer holds /etc/passwd");
    bytes[at] = b'R';
    fs::write(&archive, &bytes).unwrap();
    let out = import(&t, &[archive.to_str().unwrap(), "--name", "corrupt"], None);
    assert_eq!(status(&out), 125, "{}", describe(&out));
    let lines = toolbox_lines(&out);
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    assert!(
        lines[0].contains("uncompressed, does not match its digest"),
        "{}",
        lines[0]
    );
    assert!(!t.toolboxes.join("tester-corrupt").exists());
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
}

#[test]
fn an_interrupted_import_leaves_nothing() {
    use rustix::process::Signal;
    let Some(t) = TestEnv::new("import_interrupted", DEBIAN_IMAGE) else {
        return;
    };
    let archive = save(&t, DEBIAN_IMAGE, "debian.tar");
    for (signal, from_stdin) in [(Signal::INT, false), (Signal::TERM, true)] {
        let mut command = t.command();
        command
            .env_remove("TOOLBOX_NAME")
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .args(["import", "--name", "stopped"])
            .stderr(Stdio::piped());
        if from_stdin {
            command.arg("-").stdin(fs::File::open(&archive).unwrap());
        } else {
            command.arg(&archive);
        }
        let child = command.spawn().unwrap();
        wait_for("the import to start unpacking", || {
            fs::read_dir(&t.toolboxes).is_ok_and(|entries| {
                entries.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".tester-stopped.partial-")
                        && e.path().join("usr").exists()
                })
            })
        });
        toolbox::sys::signals::send(child.id() as i32, signal);
        let out = child.wait_with_output().unwrap();
        let number = signal.as_raw();
        assert_eq!(status(&out), 128 + number, "{}", describe(&out));
        assert_eq!(
            toolbox_lines(&out).last().cloned(),
            Some(format!("toolbox: interrupted by signal {number}"))
        );
        assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
        assert!(!t.toolboxes.join("tester-stopped").exists());
    }
}

#[test]
fn odd_archives_are_told_plainly_and_leave_nothing() {
    let Some(t) = TestEnv::new("import_odd", BUSYBOX_IMAGE) else {
        return;
    };
    let left = || {
        fs::read_dir(&t.toolboxes)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.ends_with(".lock"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    // `docker save` of an image that is not there writes nothing.
    let saved = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker save toolbox-no-such:img 2>/dev/null > {}/nothing.tar",
            t.root.display()
        ))
        .status()
        .unwrap();
    assert!(!saved.success());
    let random = t.root.join("random");
    let noise: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    fs::write(&random, &noise).unwrap();
    for (args, feed, expected) in [
        (
            vec!["-", "--name", "x"],
            Some(t.root.join("nothing.tar")),
            "toolbox: standard input is empty; expected a tar archive".to_string(),
        ),
        (
            vec!["/dev/null", "--name", "x"],
            None,
            "toolbox: /dev/null is empty; expected a tar archive".to_string(),
        ),
        (
            vec!["-", "--name", "x"],
            Some(random.clone()),
            "toolbox: cannot unpack standard input: reading the archive: the data at byte 0 \
             is not a tar header"
                .to_string(),
        ),
    ] {
        let out = import(&t, &args, feed.as_deref());
        assert_eq!(status(&out), 125, "{}", describe(&out));
        let lines = toolbox_lines(&out);
        assert_eq!(lines.len(), 1, "{}", describe(&out));
        assert!(lines[0].starts_with(&expected), "{}", describe(&out));
        assert!(
            out.stderr.is_ascii(),
            "archive bytes printed: {}",
            describe(&out)
        );
        assert!(left().is_empty(), "{:?}", left());
    }
    // A `docker save` archive re-packed under `./`, as `tar -C dir -cf out.tar .` does, is
    // still an image, its digests checked.
    let archive = save(&t, BUSYBOX_IMAGE, "saved.tar");
    let unpacked = t.root.join("saved");
    fs::create_dir(&unpacked).unwrap();
    let repacked = t.root.join("repacked.tar");
    for (program, args) in [
        (
            "tar",
            vec![
                "-xf",
                archive.to_str().unwrap(),
                "-C",
                unpacked.to_str().unwrap(),
            ],
        ),
        (
            "tar",
            vec![
                "-C",
                unpacked.to_str().unwrap(),
                "-cf",
                repacked.to_str().unwrap(),
                ".",
            ],
        ),
    ] {
        assert!(
            Command::new(program)
                .args(&args)
                .status()
                .unwrap()
                .success()
        );
    }
    let out = import(&t, &[repacked.to_str().unwrap(), "--name", "dotted"], None);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let tree = t.toolboxes.join("tester-dotted");
    // The image's ID is its configuration's digest, as `docker images` shows it with
    // overlay2 (the containerd image store shows its manifest's instead).
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    let config = manifest[0]["Config"].as_str().unwrap();
    let digest = config.rsplit('/').next().unwrap().trim_end_matches(".json");
    assert_eq!(recorded(&tree)["image_id"], format!("sha256:{digest}"));
    if let Some(id) = engine_config_id(BUSYBOX_IMAGE) {
        assert_eq!(recorded(&tree)["image_id"], id);
    }
    assert!(!tree.join("manifest.json").exists());
    assert!(tree.join("usr/bin/busybox").exists());
}
