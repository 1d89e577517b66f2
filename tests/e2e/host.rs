//! The host stays untouched: hostile trees (symlinks out of the tree where systemd-nspawn
//! mounts and writes), through `toolbox import` and through images, with the host's `/`
//! mounted private and shared; options from configuration that would take over the
//! container's root; the images' setuid programs out of other users' reach; parallel
//! cold and warm starts; processes left in a copy toolbox, and none left by a killed
//! session. Each test that hands hostile input to toolbox compares a snapshot of the
//! host before and after. Lines starting `figure ` are read by scripts/reliability for
//! docs/RELIABILITY.md.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::*;

/// The symlinks each hostile tree carries, `VICTIM` standing for the victim directory.
const HOSTILE: &[(&str, &str)] = &[
    ("run", "VICTIM"),
    ("run", "../../../../../../../../../../../../../..VICTIM"),
    ("media", "VICTIM"),
    ("media/root", "/"),
    ("media/root", "/etc"),
    ("media/root", "../../../../../../../../../../../../../.."),
    ("etc/resolv.conf", "VICTIM/resolv.conf"),
    ("etc/localtime", "VICTIM/localtime"),
    ("tmp", "VICTIM"),
    ("var", "VICTIM"),
    ("dev", "VICTIM"),
    ("proc", "VICTIM"),
    ("sys", "VICTIM"),
    ("usr/local/bin", "VICTIM"),
];

fn enter(t: &TestEnv, wrapper: &[&str], name: &str) -> Output {
    t.command_through(wrapper)
        .env("TOOLBOX_NAME", name)
        .args([
            "sh",
            "-c",
            "cat /media/root/etc/hostname && ls /run/.toolboxenv",
        ])
        .output()
        .unwrap()
}

fn assert_entered(out: &Output, case: &str) {
    assert_eq!(status(out), 0, "{case}: {}", describe(out));
    let hostname = fs::read_to_string("/etc/hostname").unwrap();
    assert_eq!(
        stdout(out),
        format!("{hostname}/run/.toolboxenv\n"),
        "{case}: {}",
        describe(out)
    );
}

// Regression: `media/root -> /` emptied the host's /etc/resolv.conf and created
// /media/root/{usr,run} and /run/.toolboxenv on the host; `run -> /tmp/victim` (absolute
// or relative) created /tmp/victim/host/... on the host.
#[test]
fn hostile_trees_through_import_leave_the_host_untouched() {
    let Some(t) = TestEnv::new("host_import", BUSYBOX_IMAGE) else {
        return;
    };
    let _host = host_state_lock();
    let victim = victim(&t);
    let victim_text = victim.display().to_string();
    let mut figure = Figure::new("host-trees-import");
    figure.set("trees", HOSTILE.len());
    for (propagation, wrapper) in ROOT_PROPAGATIONS {
        for (i, (path, target)) in HOSTILE.iter().enumerate() {
            let case = format!("{propagation} {path} -> {target}");
            figure.case(&case, || {
                let target = target.replace("VICTIM", &victim_text);
                let name = format!("hostile-{propagation}-{i}");
                let tarball = rootfs_tarball(&t.root, &name, &[Entry::Link(path, &target)]);
                let before = host_snapshot(&victim);
                let out = t
                    .command()
                    .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
                    .args(["import", "--name", &name])
                    .arg(&tarball)
                    .output()
                    .unwrap();
                assert_eq!(status(&out), 0, "{case}: {}", describe(&out));
                let out = enter(&t, wrapper, &name);
                assert_entered(&out, &case);
                assert_host_untouched(&before, &victim, &case);
                // Said once, when the tree was mended; the next entry finds nothing to do.
                let again = enter(&t, wrapper, &name);
                assert_entered(&again, &case);
                assert!(
                    toolbox_lines(&again).is_empty(),
                    "{case}: {}",
                    describe(&again)
                );
                assert_host_untouched(&before, &victim, &case);
            });
        }
    }
    figure.finish();
}

#[test]
fn hostile_images_leave_the_host_untouched_in_both_storage_modes() {
    let Some(t) = TestEnv::new("host_image", BUSYBOX_IMAGE) else {
        return;
    };
    let _host = host_state_lock();
    let victim = victim(&t);
    let victim_text = victim.display().to_string();
    let in_victim = |name: &str| format!("{victim_text}/{name}");
    // Every link of HOSTILE that one tree can hold at once.
    let links = [
        ("media/root", "/".to_string()),
        ("run", victim_text.clone()),
        (
            "tmp",
            "../../../../../../../../../../../../../../tmp".to_string(),
        ),
        ("usr/local/bin", victim_text.clone()),
        ("etc/localtime", in_victim("localtime")),
        ("var", in_victim("var")),
        ("dev", in_victim("dev")),
        ("proc", in_victim("proc")),
        ("sys", in_victim("sys")),
    ];
    let links: Vec<Entry> = links.iter().map(|(p, t)| Entry::Link(p, t)).collect();
    let image = ImportedImage::new(&t, "hostile", &links);
    let mut figure = Figure::new("host-trees-image");
    for storage in storages() {
        for (propagation, wrapper) in ROOT_PROPAGATIONS {
            let case = format!("{storage} {propagation}");
            figure.case(&case, || {
                let name = format!("image-{storage}-{propagation}");
                let before = host_snapshot(&victim);
                let out = t
                    .command_through(wrapper)
                    .env("TOOLBOX_DOCKER_IMAGE", &image.0)
                    .env("TOOLBOX_STORAGE", storage)
                    .env("TOOLBOX_NAME", &name)
                    .args([
                        "sh",
                        "-c",
                        "cat /media/root/etc/hostname && ls /run/.toolboxenv",
                    ])
                    .output()
                    .unwrap();
                assert_entered(&out, &case);
                let said = toolbox_lines(&out).join("\n");
                // (The engine's export makes /dev, /proc and /sys directories of its own.)
                for path in ["/media/root", "/run", "/tmp", "/usr/local/bin", "/var"] {
                    assert!(
                        said.contains(&format!("replaced the symlink `{path}`")),
                        "{case}: {said}"
                    );
                }
                assert_host_untouched(&before, &victim, &case);
                let out = t.run(["rm", "--force", &format!("tester-{name}")]);
                assert_eq!(status(&out), 0, "{case}: {}", describe(&out));
            });
        }
    }
    figure.finish();
}

#[test]
fn options_that_would_take_over_the_root_are_refused() {
    let Some(t) = TestEnv::new("host_options", BUSYBOX_IMAGE) else {
        return;
    };
    let _host = host_state_lock();
    assert_eq!(status(&t.run(["true"])), 0);
    let victim = victim(&t);
    let mut figure = Figure::new("host-options");
    for (key, value, says) in [
        (
            "TOOLBOX_ENV",
            "--directory=/tmp/..",
            "TOOLBOX_ENV: `--directory=/tmp/..`: --directory is toolbox's",
        ),
        (
            "TOOLBOX_FLAGS",
            "-D /tmp/..",
            "TOOLBOX_FLAGS: `-D /tmp/..`: --directory is toolbox's",
        ),
        (
            "TOOLBOX_FLAGS",
            "--image=/dev/sda",
            "TOOLBOX_FLAGS: `--image=/dev/sda`: --image is toolbox's",
        ),
        (
            "TOOLBOX_ENV",
            "--machine=x --template=/",
            "TOOLBOX_ENV: `--machine=x`: --machine is toolbox's",
        ),
        (
            "TOOLBOX_ENV",
            "--ephemeral",
            "TOOLBOX_ENV: `--ephemeral`: --ephemeral is toolbox's",
        ),
        (
            "TOOLBOX_ENV",
            "EDITOR=vi",
            "TOOLBOX_ENV: `EDITOR=vi`: not an option",
        ),
        (
            "TOOLBOX_ENV",
            "-- /bin/rm -rf /media/root",
            "TOOLBOX_ENV: `--`: not an option",
        ),
        (
            "TOOLBOX_BIND",
            "--bind=/:/media/root --bind=/tmp:/media/root/..",
            "TOOLBOX_BIND: `--bind=/tmp:/media/root/..` would cover /media/root",
        ),
        (
            "TOOLBOX_BIND",
            "--bind=/:/media/root --bind=/tmp:/run",
            "TOOLBOX_BIND: `--bind=/tmp:/run` would cover /run",
        ),
        (
            "TOOLBOX_BIND",
            "--bind=/:/media/root --bind=/srv:/media/root/no-such-directory-here",
            "`--bind=/srv:/media/root/no-such-directory-here`: /no-such-directory-here is not on \
             the host, and systemd-nspawn would create it there",
        ),
    ] {
        figure.case(value, || {
            let before = host_snapshot(&victim);
            let out = t.command().env(key, value).args(["true"]).output().unwrap();
            assert_eq!(status(&out), 125, "{value}: {}", describe(&out));
            let lines = toolbox_lines(&out);
            assert_eq!(lines.len(), 1, "{value}: {}", describe(&out));
            assert!(lines[0].contains(says), "{value}: {}", lines[0]);
            assert_host_untouched(&before, &victim, value);
        });
    }
    figure.finish();
}

// Real configurations keep working: Flatcar's flags and binds, COS's trailing slashes,
// binds of the host's resolv.conf (which systemd-nspawn is then told not to overwrite).
#[test]
fn real_world_configurations_still_run() {
    let Some(t) = TestEnv::new("host_real_configs", BUSYBOX_IMAGE) else {
        return;
    };
    let _host = host_state_lock();
    let victim = victim(&t);
    let mut figure = Figure::new("host-real-configs");
    for (key, value, check) in [
        (
            "TOOLBOX_FLAGS",
            "--system-call-filter=bpf --capability=CAP_SYS_ADMIN",
            "true",
        ),
        (
            "TOOLBOX_BIND",
            "--bind=/:/media/root/ --bind=/usr:/media/root/usr --bind=/run:/media/root/run \
             --bind=/var/:/var/ --bind-ro=/etc/resolv.conf",
            "cat /etc/resolv.conf && test -d /var/lib",
        ),
        (
            "TOOLBOX_ENV",
            "--setenv=GREETING=hello -E OTHER=x --system-call-filter=perf_event_open",
            "test \"$GREETING\" = hello",
        ),
        (
            "TOOLBOX_BIND",
            "--bind=/:/media/root --bind=/etc:/etc",
            "test -s /etc/resolv.conf",
        ),
    ] {
        figure.case(value, || {
            let before = host_snapshot(&victim);
            let resolv = fs::read("/etc/resolv.conf").unwrap();
            let out = t
                .command()
                .env(key, value)
                .args(["sh", "-c", check])
                .output()
                .unwrap();
            assert_eq!(status(&out), 0, "{value}: {}", describe(&out));
            assert_eq!(fs::read("/etc/resolv.conf").unwrap(), resolv, "{value}");
            assert_host_untouched(&before, &victim, value);
        });
    }
    figure.finish();
}

/// Runs `program` with `args` as user `nobody`; its output. (Not `setpriv`, whose own
/// exec of the program still passed a root-only directory here.)
fn as_nobody(program: &Path, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

// Regression: the toolbox directory was 0755, so any local user ran the images' setuid
// programs with root's effective UID through the tree's path.
#[test]
fn other_users_cannot_reach_the_images_setuid_programs() {
    let Some(t) = TestEnv::new("host_setuid", BUSYBOX_IMAGE) else {
        return;
    };
    // An image with a setuid-root `id`, which prints the effective user ID.
    let dir = t.root.join("setuid");
    fs::create_dir_all(dir.join("usr/bin")).unwrap();
    fs::copy("/bin/busybox", dir.join("usr/bin/busybox")).unwrap();
    symlink("busybox", dir.join("usr/bin/true")).unwrap();
    let id = dir.join("usr/bin/suid-id");
    fs::copy("/usr/bin/id", &id).unwrap();
    fs::set_permissions(&id, fs::Permissions::from_mode(0o4755)).unwrap();
    let tarball = t.root.join("setuid.tar");
    let tar = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&dir)
        .args(["-cf"])
        .arg(&tarball)
        .arg(".")
        .output()
        .unwrap();
    assert!(tar.status.success(), "{}", describe(&tar));
    let tag = format!("toolbox-test-setuid-{}:v", std::process::id());
    docker(&["import", tarball.to_str().unwrap(), &tag]);
    let _image = Tag(tag.clone());
    // Only the toolbox directory's own mode may keep `nobody` out.
    for open in [&t.root, &t.home] {
        fs::set_permissions(open, fs::Permissions::from_mode(0o755)).unwrap();
    }

    let mut figure = Figure::new("host-setuid");
    let in_tree = t.tree().join("usr/bin/suid-id");
    let directory_mode =
        |t: &TestEnv| fs::metadata(&t.toolboxes).unwrap().permissions().mode() & 0o777;
    let enter = || {
        let out = t
            .command()
            .env("TOOLBOX_DOCKER_IMAGE", &tag)
            .arg("true")
            .output()
            .unwrap();
        assert_eq!(status(&out), 0, "{}", describe(&out));
        out
    };
    figure.case("a new toolbox directory", || {
        enter();
        let mode = fs::metadata(&in_tree).unwrap().permissions().mode();
        assert_eq!(mode & 0o4000, 0o4000, "the image's setuid bit was kept");
        assert_eq!(directory_mode(&t), 0o700, "a new toolbox directory");
        let out = as_nobody(&in_tree, &["-u"]);
        assert_ne!(status(&out), 0, "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            describe(&out)
        );
    });

    figure.case("a 0755 toolbox directory", || {
        // Made 0755 by the CoreOS script or an older toolbox: the hazard is real...
        fs::set_permissions(&t.toolboxes, fs::Permissions::from_mode(0o755)).unwrap();
        let out = as_nobody(&in_tree, &["-u"]);
        assert_eq!(stdout(&out), "0\n", "{}", describe(&out));
        // ...until the next entry tightens it, saying so.
        let out = enter();
        let said = toolbox_lines(&out).join("\n");
        assert!(said.contains("accessible to root only"), "{said}");
        assert_eq!(directory_mode(&t), 0o700);
        let out = as_nobody(&in_tree, &["-u"]);
        assert_ne!(status(&out), 0, "{}", describe(&out));
        assert_ne!(stdout(&out), "0\n");
    });
    figure.finish();
}

// Regression: of eight parallel first starts, some failed with "Failed to create mount
// point .../media/root: File exists" (copy) or exit 127 "command not found" (overlay,
// looked up before the overlay was mounted).
#[test]
fn parallel_cold_and_warm_starts_never_fail() {
    let Some(t) = TestEnv::new("host_parallel", BUSYBOX_IMAGE) else {
        return;
    };
    let starts = |storage: &str, command: &str| -> Vec<Output> {
        let children: Vec<_> = (0..8)
            .map(|i| {
                t.command()
                    .env("TOOLBOX_STORAGE", storage)
                    .args(["sh", "-c", &format!("{command}; echo {i}")])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        children
            .into_iter()
            .map(|child| child.wait_with_output().unwrap())
            .collect()
    };
    let mut figure = Figure::new("host-parallel");
    for storage in storages() {
        for round in 0..3 {
            for (kind, command) in [("cold", "true"), ("warm", "sleep 0.$((RANDOM % 5))")] {
                for (i, out) in starts(storage, command).iter().enumerate() {
                    let case = format!("{storage} round {round} {kind} start {i}");
                    figure.case(&case, || {
                        assert_eq!(status(out), 0, "{case}: {}", describe(out));
                        assert_eq!(stdout(out), format!("{i}\n"), "{case}: {}", describe(out));
                    });
                }
            }
            let out = t.run(["rm", &t.toolbox_name()]);
            assert_eq!(status(&out), 0, "{}", describe(&out));
        }
    }
    figure.finish();
}

// Regression: a process left running in a copy toolbox (`setsid ... &`) was not seen, and
// `rm` deleted the tree under it. Where systemd runs, the session's scope ends it instead.
#[test]
fn processes_left_in_a_copy_toolbox_hold_rm_and_update() {
    let Some(t) = TestEnv::new("host_lingering", BUSYBOX_IMAGE) else {
        return;
    };
    let tag = Tag::new("host-lingering", BUSYBOX_IMAGE);
    let marker = "sleep 4343";
    // Starts the marker in the background in a session; the toolbox's root (through
    // which its processes are found: another test's `sleep` is not this one's).
    let start = || {
        let out = t
            .command()
            .env("TOOLBOX_DOCKER_IMAGE", &tag.0)
            .args(leave_running(marker))
            .output()
            .unwrap();
        assert_eq!(status(&out), 0, "{}", describe(&out));
        ToolboxRoot::at(&t.tree()).expect("no tree after a session")
    };
    if systemd_booted() {
        // Where systemd runs, a session is a scope of its own that ends with it: nothing
        // is left to hold the toolbox, and `rm` removes it.
        let root = start();
        let _reaper = Reaper(root);
        wait_for("the background process to end with its session", || {
            root.find(marker).is_none()
        });
        succeeded(&t.run(["rm", &t.toolbox_name()]));
        assert!(!t.tree().exists());
        return;
    }
    // Leaves the marker running in the toolbox, once it runs.
    let leave = || {
        let root = start();
        wait_for("the background process", || root.find(marker).is_some());
        Reaper(root)
    };
    let first = leave();
    let lingering = || first.0.find(marker).is_some();

    let mut figure = Figure::new("host-lingering");
    figure.case("rm refuses", || {
        let out = t.run(["rm", &t.toolbox_name()]);
        assert_eq!(status(&out), 125, "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("still run"),
            "{}",
            describe(&out)
        );
        assert!(t.tree().join(".toolbox.json").exists());
    });

    // A new image under the toolbox's tag: update would replace the tree.
    tag.point_at(&import_marker_image("host-lingering"));
    let update = |force: bool| {
        let mut command = t.command();
        command.env("TOOLBOX_DOCKER_IMAGE", &tag.0).arg("update");
        if force {
            command.arg("--force");
        }
        command.output().unwrap()
    };
    figure.case("update refuses", || {
        let out = update(false);
        assert_eq!(status(&out), 125, "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("still run"),
            "{}",
            describe(&out)
        );
        assert!(lingering());
    });
    figure.case("update --force ends it", || {
        let out = update(true);
        assert_eq!(status(&out), 0, "{}", describe(&out));
        assert!(!lingering(), "update --force ends it");
    });

    figure.case("rm --force ends it", || {
        let second = leave();
        let out = t.run(["rm", "--force", &t.toolbox_name()]);
        assert_eq!(status(&out), 0, "{}", describe(&out));
        assert_eq!(second.0.find(marker), None, "rm --force ends it");
        assert!(!t.tree().exists());
    });
    figure.finish();
}

// Regression: killing a copy session's toolbox process outright (after its exec, that is
// systemd-nspawn itself) left the session's command running in the host's PID namespace.
#[test]
fn a_killed_copy_session_leaves_nothing_running() {
    let Some(t) = TestEnv::new("host_killed_copy", BUSYBOX_IMAGE) else {
        return;
    };
    let payload = "sleep 1211";
    let mut killed = t.command().args(payload.split(' ')).spawn().unwrap();
    wait_for("the session's tree", || {
        t.tree().join(".toolbox.json").exists()
    });
    let root = ToolboxRoot::at(&t.tree()).unwrap();
    let _reaper = Reaper(root);
    wait_for("the session's command", || root.find(payload).is_some());
    let pid = root.find(payload).unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(
        ends_within(pid, Duration::from_secs(5)),
        "the session's command (PID {pid}) outlived its killed systemd-nspawn: {:?}",
        root.processes()
    );
}
