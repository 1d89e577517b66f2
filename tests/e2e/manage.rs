//! Living with toolboxes on the real daemon and systemd-nspawn: concurrent sessions,
//! `list`, `rm`, `update`, freshness notices, parallel first runs, `host-exec`, the
//! markers inside, and a normal user going through sudo.

use std::fs;
use std::process::{Command, Stdio};

use crate::common::*;

fn list_json(t: &TestEnv) -> serde_json::Value {
    let out = t.run(["list", "--json"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    serde_json::from_slice(&out.stdout).expect("list --json prints JSON")
}

fn sessions_of(t: &TestEnv) -> u64 {
    let rows = list_json(t);
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == t.toolbox_name().as_str());
    row.map_or(0, |r| r["sessions"].as_u64().unwrap())
}

#[test]
fn concurrent_sessions_list_and_rm() {
    let Some(t) = TestEnv::new("sessions", BUSYBOX_IMAGE) else {
        return;
    };
    assert_eq!(status(&t.run(["true"])), 0);
    let mut first = t.command().args(["sleep", "120"]).spawn().unwrap();
    let mut second = t.command().args(["sleep", "120"]).spawn().unwrap();
    wait_for("two sessions", || sessions_of(&t) == 2);

    // A third shell while two run: no "Directory tree ... is currently busy".
    let out = t.run(["echo", "third"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "third\n");

    let rows = list_json(&t);
    let row = &rows.as_array().unwrap()[0];
    assert_eq!(row["name"], t.toolbox_name().as_str());
    assert_eq!(row["image"], BUSYBOX_IMAGE);
    assert!(row["image_id"].as_str().unwrap().starts_with("sha256:"));
    assert!(row["created"].as_str().unwrap().ends_with('Z'));
    assert!(row["size_bytes"].as_u64().unwrap() > 1_000_000);
    assert_eq!(row["sessions"], 2);
    assert_eq!(row["image_changed"], false);
    assert_eq!(row["adopted"], false);
    let table = t.run(["list"]);
    assert!(
        stdout(&table)
            .lines()
            .nth(1)
            .unwrap()
            .starts_with(&t.toolbox_name()),
        "{}",
        describe(&table)
    );

    let out = t.run(["rm", &t.toolbox_name()]);
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("running session"),
        "{}",
        describe(&out)
    );
    assert!(t.tree().exists());

    // A second toolbox side by side, from the same image under another name.
    assert_eq!(status(&t.run(["--name", "other", "true"])), 0);
    let names: Vec<_> = list_json(&t)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["tester-other", t.toolbox_name().as_str()]);

    let out = t.run(["rm", "--force", "--all"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(!t.tree().exists());
    assert!(
        wait_exit(&mut first).is_some() && wait_exit(&mut second).is_some(),
        "sessions still running"
    );
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
    assert_eq!(list_json(&t), serde_json::json!([]));
}

/// `rm --all` where no engine answers removes the trees, which need none, and says the
/// super privileged containers were left.
#[test]
fn rm_all_without_an_engine_removes_the_trees_and_says_what_is_left() {
    let Some(t) = TestEnv::new("rm_all_no_engine", BUSYBOX_IMAGE) else {
        return;
    };
    let created = t
        .command()
        .env("TOOLBOX_STORAGE", "copy")
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(status(&created), 0, "{}", describe(&created));
    let out = t
        .command()
        .env("TOOLBOX_ENGINE", "docker")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["rm", "--all"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(!t.tree().exists(), "{}", describe(&out));
    assert!(
        toolbox_lines(&out)
            .iter()
            .any(|l| l.contains("super privileged containers are not removed")),
        "{}",
        describe(&out)
    );
}

#[test]
fn eight_parallel_first_runs_export_once() {
    let Some(t) = TestEnv::new("parallel", DEBIAN_IMAGE) else {
        return;
    };
    let children: Vec<_> = (0..8)
        .map(|i| {
            t.command()
                .args(["sh", "-c", &format!("echo run {i}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut creations = 0;
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(status(&out), 0, "{}", describe(&out));
        assert_eq!(stdout(&out), format!("run {i}\n"));
        creations += toolbox_lines(&out)
            .iter()
            .filter(|l| l.starts_with("toolbox: creating"))
            .count();
    }
    assert_eq!(creations, 1, "one export for eight first runs");
    assert!(t.containers().is_empty());
}

#[test]
fn update_rebuilds_when_the_image_changes() {
    let Some(mut t) = TestEnv::new("update", BUSYBOX_IMAGE) else {
        return;
    };
    let tag = Tag::new("update", BUSYBOX_IMAGE);
    t.image = tag.0.clone();
    assert_eq!(status(&t.run(["true"])), 0);
    let out = t.run(["update"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(stdout(&out).contains("is up to date"), "{}", describe(&out));

    let new_id = import_marker_image("v2");
    tag.point_at(&new_id);
    // Entering waits 300 ms for the engine to say whether the image changed (a start is
    // never held up longer): an engine under emulation answers later, so what entering
    // notices is checked where the engine runs at full speed.
    let at_full_speed = patience() == 1;
    // The warm start notices (interval 0: ask every time), and `never` does not ask.
    let out = t
        .command()
        .env("TOOLBOX_UPDATE_INTERVAL", "0")
        .args(["/usr/bin/busybox", "true"])
        .output()
        .unwrap();
    assert!(
        !at_full_speed
            || toolbox_lines(&out)
                .iter()
                .any(|l| l.contains("has changed since") && l.contains("toolbox update")),
        "{}",
        describe(&out)
    );
    let out = t
        .command()
        .env("TOOLBOX_UPDATE", "never")
        .env("TOOLBOX_UPDATE_INTERVAL", "0")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(toolbox_lines(&out).is_empty(), "{}", describe(&out));

    let out = t.run(["update"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(stdout(&out).contains("rebuilt"), "{}", describe(&out));
    let metadata: serde_json::Value =
        serde_json::from_slice(&fs::read(t.tree().join(".toolbox.json")).unwrap()).unwrap();
    assert_eq!(metadata["image_id"], new_id.as_str());
    let out = t.run(["/usr/bin/busybox", "cat", "/etc/marker"]);
    assert_eq!(stdout(&out), "v2", "{}", describe(&out));
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());

    // TOOLBOX_UPDATE=auto rebuilds before entering.
    let newer_id = import_marker_image("v3");
    tag.point_at(&newer_id);
    let out = t
        .command()
        .env("TOOLBOX_UPDATE", "auto")
        .env("TOOLBOX_UPDATE_INTERVAL", "0")
        .args(["/usr/bin/busybox", "cat", "/etc/marker"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    if at_full_speed {
        assert_eq!(stdout(&out), "v3", "{}", describe(&out));
    }
    for id in [new_id, newer_id] {
        let _ = Command::new("docker").args(["rmi", "-f", &id]).output();
    }
}

#[test]
fn host_exec_and_markers() {
    let Some(t) = TestEnv::new("host_exec", BUSYBOX_IMAGE) else {
        return;
    };
    let out = t.run([
        "sh",
        "-c",
        "test -e /run/.toolboxenv && echo \"$TOOLBOX_NAME $HOST\"",
    ]);
    assert_eq!(
        stdout(&out),
        format!("{} /media/root\n", t.toolbox_name()),
        "{}",
        describe(&out)
    );

    let out = t.run(["host-exec", "sh", "-c", "exit 3"]);
    assert_eq!(status(&out), 3, "{}", describe(&out));

    // The host's passwd changes: not while another test adds a user or compares snapshots.
    let host = host_state_lock();
    let user = format!("tbxhe{}", std::process::id());
    let out = t.run([
        "host-exec",
        "useradd",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        &user,
    ]);
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    let _ = Command::new("userdel").arg(&user).output();
    drop(host);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(
        passwd.lines().any(|l| l.starts_with(&format!("{user}:"))),
        "useradd did not reach the host"
    );

    // The working directory under /media/root maps to the same host directory.
    let out = t.run(["sh", "-c", "cd /media/root/etc && host-exec pwd"]);
    assert_eq!(stdout(&out), "/etc\n", "{}", describe(&out));
}

#[test]
fn config_shows_where_each_value_comes_from() {
    let Some(t) = TestEnv::new("config_cmd", BUSYBOX_IMAGE) else {
        return;
    };
    let rc = t.home.join(".toolboxrc");
    fs::write(&rc, "# mine\nTOOLBOX_USER=root\n").unwrap();
    let out = t.run(["--tag", "latest", "config"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("TOOLBOX_USER=root\t# {}:2", rc.display())),
        "{text}"
    );
    assert!(
        text.contains("TOOLBOX_DOCKER_IMAGE=toolbox-busybox:latest\t# environment"),
        "{text}"
    );
    assert!(
        text.contains("TOOLBOX_DOCKER_TAG=latest\t# option --tag"),
        "{text}"
    );
    assert!(text.contains("TOOLBOX_FLAGS=''\t# default"), "{text}");
    let out = t.run(["config", "--path"]);
    assert_eq!(
        stdout(&out),
        format!(
            "{}\tread\n{}\tread\n{}\tabsent\n",
            t.system_config().display(),
            rc.display(),
            t.home.join(".config/toolbox/toolbox.conf").display()
        )
    );
    // The system-wide file, where TOOLBOX_SYSTEM_CONFIG puts it, comes first.
    fs::write(t.system_config(), "TOOLBOX_UPDATE_INTERVAL=900\n").unwrap();
    let out = t.run(["config"]);
    let system = format!(
        "TOOLBOX_UPDATE_INTERVAL=900\t# {}:1",
        t.system_config().display()
    );
    assert!(stdout(&out).contains(&system), "{}", describe(&out));
    // Named and not there: said once, and nothing else changes.
    fs::remove_file(t.system_config()).unwrap();
    let out = t.run(["config"]);
    assert_eq!(
        toolbox_lines(&out),
        [format!(
            "toolbox: warning: TOOLBOX_SYSTEM_CONFIG names {}, which is not there; no \
             system-wide settings are read",
            t.system_config().display()
        )],
        "{}",
        describe(&out)
    );
}

#[test]
fn a_normal_user_goes_through_sudo() {
    let Some(t) = TestEnv::new("sudo_user", DEBIAN_IMAGE) else {
        return;
    };
    let _host = host_state_lock();
    let user = format!("tbxu{}", std::process::id());
    let home = format!("/home/{user}");
    let sudoers = format!("/etc/sudoers.d/{user}");
    let cleanup = || {
        let _ = Command::new("userdel").args(["-r", &user]).output();
        let _ = fs::remove_file(&sudoers);
    };
    let added = Command::new("useradd")
        .args(["-m", "-s", "/bin/sh", &user])
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "useradd: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    fs::write(&sudoers, format!("{user} ALL=(ALL) NOPASSWD: ALL\n")).unwrap();
    let rc = format!("{home}/.toolboxrc");
    // $USER, $LOGNAME and $HOME are the user's also when read again under sudo.
    fs::write(
        &rc,
        "TOOLBOX_ENV=\"--setenv=FROM_RC=yes --setenv=RC_USER=$USER:$LOGNAME:$HOME\"\n\
         TOOLBOX_TYPO=1\n",
    )
    .unwrap();
    Command::new("chown")
        .args([&format!("{user}:{user}"), &rc])
        .status()
        .unwrap();

    // The user needs to reach the binary wherever the checkout is: give them a copy.
    let bin = t.root.join("bin");
    fs::create_dir(&bin).unwrap();
    let exe = bin.join("toolbox");
    fs::copy(env!("CARGO_BIN_EXE_toolbox"), &exe).unwrap();
    for dir in [&t.root, &bin] {
        Command::new("chmod").arg("755").arg(dir).status().unwrap();
    }
    let run_as_user = |args: &[&str]| {
        Command::new("runuser")
            .args(["-u", &user, "--", "env", "-i"])
            .arg(format!("PATH={}", std::env::var("PATH").unwrap()))
            .arg(format!("HOME={home}"))
            .arg(format!("USER={user}"))
            .arg(format!("TOOLBOX_DIRECTORY={}", t.toolboxes.display()))
            .arg(format!("TOOLBOX_DOCKER_IMAGE={DEBIAN_IMAGE}"))
            .arg(format!("TOOLBOX_NAME={}", t.name))
            .arg(format!("TOOLBOX_USER={user}"))
            .arg("https_proxy=http://proxy.invalid:3128")
            .arg(&exe)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run_as_user(&[
        "sh",
        "-c",
        "echo \"$FROM_RC $https_proxy $RC_USER\"; id -un; id -u; test -d \"$HOME\" && echo \"$HOME\"",
    ]);
    let uid = Command::new("id").args(["-u", &user]).output().unwrap();
    fs::write(
        &rc,
        "TOOLBOX_ENV=\"--setenv=FROM_RC=yes\"\nTOOLBOX_TYPO=1\n",
    )
    .unwrap();
    Command::new("chmod").args(["666", &rc]).status().unwrap();
    let refused = run_as_user(&["true"]);
    let tree = t.toolboxes.join(format!("{user}-{}", t.name));
    cleanup();

    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "yes http://proxy.invalid:3128 {user}:{user}:{home}\n{user}\n{}{home}\n",
            String::from_utf8_lossy(&uid.stdout)
        )
    );
    assert!(
        tree.join(".toolbox.json").exists(),
        "the toolbox is named after the user"
    );
    // Read twice (before and after sudo), reported once.
    let warnings = toolbox_lines(&out)
        .into_iter()
        .filter(|l| l.contains("unknown setting `TOOLBOX_TYPO`"))
        .count();
    assert_eq!(warnings, 1, "{}", describe(&out));
    assert_eq!(status(&refused), 125, "{}", describe(&refused));
    assert!(
        toolbox_lines(&refused)
            .iter()
            .any(|l| l.contains(&format!("refusing {rc}: it is writable by others"))),
        "{}",
        describe(&refused)
    );
}

#[test]
fn a_mistyped_subcommand_is_suggested_and_list_names_each_column_once() {
    let Some(t) = TestEnv::new("typo", BUSYBOX_IMAGE) else {
        return;
    };
    let out = t.run(["lsit"]);
    assert_eq!(status(&out), 127, "{}", describe(&out));
    assert_eq!(
        toolbox_lines(&out).last().map(String::as_str),
        Some(
            format!(
                "toolbox: `lsit`: command not found in toolbox `{}`; did you mean \
                 `toolbox list`? (`toolbox run lsit` runs it inside)",
                t.toolbox_name()
            )
            .as_str()
        ),
        "{}",
        describe(&out)
    );
    let out = t.run(["run", "lsit"]);
    assert_eq!(status(&out), 127, "{}", describe(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("did you mean"));
    let out = t.run(["list"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let listing = stdout(&out);
    let header: Vec<&str> = listing.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "RUNTIME",
            "IMAGE",
            "ID",
            "CREATED",
            "STORAGE",
            "SIZE",
            "SESSIONS",
            "FRESHNESS",
            "TARGETS"
        ]
    );
}

#[test]
fn names_with_characters_a_directory_cannot_have_are_found_by_every_command() {
    let Some(t) = TestEnv::new("odd_names", BUSYBOX_IMAGE) else {
        return;
    };
    let named = |name: &str, args: &[&str]| {
        t.command()
            .env_remove("TOOLBOX_NAME")
            .args(["--name", name])
            .args(args)
            .output()
            .unwrap()
    };
    for (name, directory) in [("a b", "tester-a_b"), ("../x", "tester-.._x")] {
        let out = named(name, &["true"]);
        assert_eq!(status(&out), 0, "{}", describe(&out));
        assert!(t.toolboxes.join(directory).join(".toolbox.json").exists());
        let out = named(name, &["update"]);
        assert_eq!(status(&out), 0, "{name}: {}", describe(&out));
        let out = t.run(["update", name]);
        assert_eq!(status(&out), 0, "{name}: {}", describe(&out));
        let out = t.run(["rm", name]);
        assert_eq!(status(&out), 0, "{name}: {}", describe(&out));
        assert!(!t.toolboxes.join(directory).exists());
    }
}
