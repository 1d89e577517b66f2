//! The super privileged container runtime (`--runtime spc`) on the real dockerd: the
//! host seen from inside, the container in `docker ps` while a session runs and stopped
//! after the last, a second session as an exec, exit statuses, standard streams and
//! input, throwaway containers, `list`, `rm` and `update`, and an image's `RUN` label.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::common::*;

/// toolbox with the spc runtime, and `--rm` for a throwaway container.
fn spc(t: &TestEnv, throwaway: bool) -> Command {
    let mut command = t.command();
    command.env("TOOLBOX_RUNTIME", "spc");
    if throwaway {
        command.arg("--rm");
    }
    command
}

fn run(t: &TestEnv, throwaway: bool, args: &[&str]) -> Output {
    spc(t, throwaway).args(args).output().unwrap()
}

/// Runs the command with `input` on its standard input.
fn run_with_input(t: &TestEnv, throwaway: bool, args: &[&str], input: &[u8]) -> Output {
    let mut child = spc(t, throwaway)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written beside the reading of the output, as a pipeline would.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

/// Whether container `name` runs; `None` when there is no such container.
fn running(name: &str) -> Option<bool> {
    let out = Command::new("docker")
        .args(["inspect", "--format", "{{.State.Running}}", name])
        .output()
        .unwrap();
    out.status.success().then(|| stdout(&out).trim() == "true")
}

fn list_rows(t: &TestEnv) -> Vec<serde_json::Value> {
    let out = t.run(["list", "--json"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array().unwrap().clone()
}

fn spc_row(t: &TestEnv) -> Option<serde_json::Value> {
    list_rows(t)
        .into_iter()
        .find(|r| r["name"] == t.toolbox_name().as_str() && r["runtime"] == "spc")
}

#[test]
fn an_spc_sees_the_host_and_is_a_container_while_a_session_runs() {
    let Some(t) = TestEnv::new("spc_host", BUSYBOX_IMAGE) else {
        return;
    };
    let name = t.toolbox_name();
    assert_sees_the_host(&|args| run(&t, false, args), "/host");
    let out = run(
        &t,
        false,
        &["sh", "-c", "echo \"$HOST $IMAGE $NAME $container\""],
    );
    assert_eq!(
        stdout(&out),
        format!("/host {BUSYBOX_IMAGE} {name} docker\n"),
        "{}",
        describe(&out)
    );
    // Kept, stopped, between sessions.
    assert_eq!(running(&name), Some(false));

    // A session held open until the test lets it go.
    let gate = t.root.join("gate");
    let mut first = spc(&t, false)
        .args([
            "sh",
            "-c",
            &format!(
                "while [ ! -e /host{} ]; do sleep 0.1; done; exit 3",
                gate.display()
            ),
        ])
        .spawn()
        .unwrap();
    wait_for("the first session", || {
        spc_row(&t).is_some_and(|r| r["sessions"] == 1)
    });
    let filter = format!("name=^{name}$");
    assert_eq!(
        docker(&["ps", "--filter", &filter, "--format", "{{.Names}}"]),
        name
    );
    let started_at = docker(&["inspect", "--format", "{{.State.StartedAt}}", &name]);

    // A second session is an exec into the running container, which stays up after it.
    let out = run(&t, false, &["sh", "-c", "exit 5"]);
    assert_eq!(status(&out), 5, "{}", describe(&out));
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.StartedAt}}", &name]),
        started_at
    );
    assert_eq!(running(&name), Some(true));

    let row = spc_row(&t).unwrap();
    assert_eq!(row["image"], BUSYBOX_IMAGE);
    assert!(row["image_id"].as_str().unwrap().starts_with("sha256:"));
    assert!(row["created"].as_str().unwrap().ends_with('Z'), "{row}");
    assert_eq!(row["storage"], serde_json::Value::Null);
    assert_eq!(row["size_bytes"], serde_json::Value::Null);
    assert_eq!(row["image_changed"], false);
    let table = stdout(&t.run(["list"]));
    let line = table.lines().find(|l| l.starts_with(&name)).unwrap();
    assert_eq!(line.split_whitespace().nth(1), Some("spc"), "{table}");

    // The last session to end stops the container.
    std::fs::write(&gate, "").unwrap();
    assert_eq!(first.wait().unwrap().code(), Some(3));
    assert_eq!(running(&name), Some(false));
    assert_eq!(spc_row(&t).unwrap()["sessions"], 0);
}

#[test]
fn statuses_streams_and_input_pass_through() {
    let Some(mut t) = TestEnv::new("spc_streams", BUSYBOX_IMAGE) else {
        return;
    };
    // An image of this test's own, to count its throwaway containers.
    let tag = Tag::new("spc-streams", BUSYBOX_IMAGE);
    t.image = tag.0.clone();
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for throwaway in [false, true] {
        assert_statuses_come_back(&|args| run(&t, throwaway, args));

        let out = run_with_input(&t, throwaway, &["wc", "-c"], b"a\nb");
        assert_eq!(status(&out), 0, "{}", describe(&out));
        assert_eq!(stdout(&out).trim(), "3", "{}", describe(&out));

        // Standard output and error stay apart and unchanged: no terminal, no CRLF.
        let out = run(
            &t,
            throwaway,
            &["sh", "-c", "printf 'out\\n'; printf 'err\\n' >&2; exit 4"],
        );
        assert_eq!(status(&out), 4, "{}", describe(&out));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");

        let out = run_with_input(&t, throwaway, &["cat"], &data);
        assert_eq!(status(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == data, "binary data changed on its way");

        // A command that reads no input does not wait for it.
        let out = run(&t, throwaway, &["echo", "no-input"]);
        assert_eq!(stdout(&out), "no-input\n");
    }
    // Throwaway containers are gone; the persistent one stays, stopped.
    let by_image = format!("label=toolbox.image={}", tag.0);
    let left = docker(&["ps", "-a", "--filter", &by_image, "--format", "{{.Names}}"]);
    assert_eq!(left, t.toolbox_name());
    assert_eq!(running(&t.toolbox_name()), Some(false));
}

#[test]
fn rm_and_update_cover_spcs() {
    let Some(mut t) = TestEnv::new("spc_manage", BUSYBOX_IMAGE) else {
        return;
    };
    let tag = Tag::new("spc-manage", BUSYBOX_IMAGE);
    t.image = tag.0.clone();
    let name = t.toolbox_name();
    // Both runtimes have a toolbox of this name.
    assert_eq!(status(&run(&t, false, &["true"])), 0);
    assert_eq!(status(&t.run(["true"])), 0);
    let runtimes: Vec<_> = list_rows(&t)
        .iter()
        .map(|r| r["runtime"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(runtimes, ["nspawn", "spc"]);

    // The configured runtime picks: nspawn by default.
    let out = t.run(["update", &t.name]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(
        stdout(&out).starts_with(&format!("toolbox `{name}` is up to date ({} ", tag.0)),
        "{}",
        describe(&out)
    );
    let out = spc(&t, false).args(["update", &t.name]).output().unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(
        stdout(&out).starts_with(&format!("toolbox `{name}` (spc) is up to date ({} ", tag.0)),
        "{}",
        describe(&out)
    );

    // A new image: the SPC is replaced, and its next session uses the new image.
    let new_id = import_marker_image("spc-v2");
    tag.point_at(&new_id);
    assert_eq!(spc_row(&t).unwrap()["image_changed"], true);
    let out = run(&t, false, &["true"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has changed since"),
        "{}",
        describe(&out)
    );
    let out = spc(&t, false).arg("update").output().unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(
        stdout(&out).contains("its next session creates it anew"),
        "{}",
        describe(&out)
    );
    assert_eq!(running(&name), None);
    let out = run(&t, false, &["/usr/bin/busybox", "cat", "/etc/marker"]);
    assert_eq!(stdout(&out), "spc-v2", "{}", describe(&out));

    // TOOLBOX_UPDATE=auto replaces a stopped container whose image changed, at once.
    tag.point_at(BUSYBOX_IMAGE);
    let out = spc(&t, false)
        .env("TOOLBOX_UPDATE", "auto")
        .args(["sh", "-c", "test -e /etc/marker || echo replaced"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "replaced\n", "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("recreating it"),
        "{}",
        describe(&out)
    );

    // A running session is not removed without --force.
    let mut session = spc(&t, false)
        .args(["/usr/bin/busybox", "sleep", "120"])
        .spawn()
        .unwrap();
    wait_for("the session", || running(&name) == Some(true));
    wait_for("the session's exec", || {
        spc_row(&t).is_some_and(|r| r["sessions"] == 1)
    });
    let out = spc(&t, false).args(["rm", &t.name]).output().unwrap();
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has 1 running session(s)"),
        "{}",
        describe(&out)
    );
    let out = spc(&t, false)
        .args(["rm", "--force", &t.name])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), format!("removed {name}\n"));
    assert!(
        wait_exit(&mut session).is_some(),
        "the session outlived rm --force"
    );
    assert_eq!(running(&name), None);
    // The nspawn toolbox is still there, and now `rm` needs no --runtime.
    let runtimes: Vec<_> = list_rows(&t).iter().map(|r| r["runtime"].clone()).collect();
    assert_eq!(runtimes, ["nspawn"]);

    // rm --all covers both runtimes.
    assert_eq!(status(&run(&t, false, &["/usr/bin/busybox", "true"])), 0);
    let out = t.run(["rm", "--all"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out).lines().count(), 2, "{}", describe(&out));
    assert!(list_rows(&t).is_empty());
    assert_eq!(running(&name), None);
}

#[test]
fn a_container_of_that_name_that_is_not_toolboxs_is_left_alone() {
    let Some(t) = TestEnv::new("spc_foreign", BUSYBOX_IMAGE) else {
        return;
    };
    let name = t.toolbox_name();
    docker(&["create", "--name", &name, BUSYBOX_IMAGE, "true"]);
    let out = run(&t, false, &["true"]);
    let removed = Command::new("docker").args(["rm", "-f", &name]).output();
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert_eq!(
        toolbox_lines(&out),
        [format!(
            "toolbox: container `{name}` exists and is not toolbox's; remove or rename it, or choose another --name"
        )]
    );
    assert!(removed.unwrap().status.success());
}

#[test]
fn the_run_label_is_shown_and_applied_only_when_asked() {
    let Some(mut t) = TestEnv::new("spc_label", BUSYBOX_IMAGE) else {
        return;
    };
    let tag = format!("toolbox-test-spc-label-{}:v", std::process::id());
    let label = "docker run -it --rm --privileged --name NAME -e LABELLED=yes -e NAME=${NAME} \
                 -v /etc:/labelled-etc:ro IMAGE sh -c 'echo labelled-command $LABELLED'";
    build_image(
        &tag,
        // Quoted for the Dockerfile, which would expand `$NAME` itself.
        &format!(
            "FROM {BUSYBOX_IMAGE}\nLABEL RUN=\"{}\"\n",
            label.replace('"', "\\\"").replace('$', "\\$")
        ),
    );
    let _tag = Tag(tag.clone());
    t.image = tag.clone();

    let out = spc(&t, false).arg("--dry-run").output().unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let printed = stdout(&out);
    assert_eq!(
        printed.lines().next().unwrap(),
        format!("# RUN label of {tag}: {label}"),
        "{printed}"
    );
    let commands: Vec<_> = printed.lines().skip(1).collect();
    assert!(commands[0].starts_with("docker run "), "{printed}");
    assert!(!commands.concat().contains("labelled-etc"), "{printed}");
    let out = spc(&t, false)
        .args(["--dry-run", "--use-run-label"])
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains(" --volume=/etc:/labelled-etc:ro "),
        "{}",
        describe(&out)
    );
    // Nothing was created by either.
    assert_eq!(running(&t.toolbox_name()), None);

    // Not applied unless asked.
    let out = run(
        &t,
        true,
        &["sh", "-c", "echo \"[$LABELLED]\"; ls /labelled-etc"],
    );
    assert_eq!(stdout(&out), "[]\n", "{}", describe(&out));
    // Applied: its options, and its command when none is given.
    let out = spc(&t, true).arg("--use-run-label").output().unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "labelled-command yes\n");
    let out = spc(&t, false)
        .args(["--use-run-label", "cat", "/labelled-etc/hostname"])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out),
        std::fs::read_to_string("/etc/hostname").unwrap(),
        "{}",
        describe(&out)
    );
    // The persistent container keeps what it was created with, and says so.
    let out = run(&t, false, &["true"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was created with its image's RUN label"),
        "{}",
        describe(&out)
    );

    // --rm and --use-run-label belong to the spc runtime.
    let out = t.run(["--rm", "true"]);
    assert_eq!(status(&out), 125);
    assert_eq!(
        toolbox_lines(&out),
        ["toolbox: --rm needs the spc runtime (--runtime spc or TOOLBOX_RUNTIME=spc)"]
    );
}

#[test]
fn signals_and_a_closed_pipe_reach_the_command() {
    let Some(t) = TestEnv::new("spc_signals", BUSYBOX_IMAGE) else {
        return;
    };
    let name = t.toolbox_name();
    for throwaway in [false, true] {
        // `| head -1`: the command is told as a pipe would tell it, and does not go on
        // writing into nothing.
        let mut yes = spc(&t, throwaway)
            .arg("yes")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = [0u8; 2];
        std::io::Read::read_exact(yes.stdout.as_mut().unwrap(), &mut line).unwrap();
        assert_eq!(&line, b"y\n");
        drop(yes.stdout.take());
        let status = wait_exit(&mut yes).expect("toolbox went on after its reader left");
        assert_eq!(status.code(), Some(141), "throwaway: {throwaway}");

        // SIGTERM and SIGINT to toolbox end the command with them.
        for (signal, expected) in [("TERM", 143), ("INT", 130)] {
            // This session's own command, not one a previous session left exiting.
            let sleep = format!("{SLEEP}{}{}", u8::from(throwaway), expected);
            let mut session = spc(&t, throwaway).args(sleep.split(' ')).spawn().unwrap();
            wait_for("the session's command", || processes().contains(&sleep));
            let out = Command::new("kill")
                .args([&format!("-{signal}"), &session.id().to_string()])
                .output()
                .unwrap();
            assert!(out.status.success());
            let status = wait_exit(&mut session).expect("the session outlived the signal");
            assert_eq!(
                status.code(),
                Some(expected),
                "{signal}, throwaway: {throwaway}"
            );
        }
    }
    assert_eq!(running(&name), Some(false));

    // A throwaway whose toolbox is killed outright is removed by the next one. On a
    // daemon of its own: on the shared one, a creation by a test running beside this one
    // may remove it first.
    let daemon = OwnDaemon::vfs();
    daemon.load(BUSYBOX_IMAGE);
    let on_own = |throwaway| {
        let mut command = spc(&t, throwaway);
        command.env("DOCKER_HOST", &daemon.host);
        command
    };
    let mut killed = on_own(true).args(SLEEP.split(' ')).spawn().unwrap();
    wait_for("the throwaway's command", || {
        processes().iter().any(|p| p == SLEEP)
    });
    killed.kill().unwrap();
    killed.wait().unwrap();
    let filter = format!("label=toolbox.pid={}", killed.id());
    let left = || daemon.docker(&["ps", "-a", "-q", "--filter", &filter]);
    assert_ne!(
        left().trim(),
        "",
        "the killed throwaway's container is gone already"
    );
    let next = on_own(true).arg("true").output().unwrap();
    assert_eq!(status(&next), 0, "{}", describe(&next));
    assert_eq!(left().trim(), "");

    let left = processes();
    assert!(
        !left.iter().any(|p| p == "yes" || p.starts_with(SLEEP)),
        "left running: {left:?}"
    );
}

/// A command line no other test runs.
const SLEEP: &str = "sleep 4321";

/// The command lines of the host's processes.
fn processes() -> Vec<String> {
    let out = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    stdout(&out).lines().map(|l| l.trim().to_string()).collect()
}
