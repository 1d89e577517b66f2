//! Debugging a running container or process (`--target`): a slim busybox container the
//! test starts on the daemon's bridge, serving HTTP on a port, with marker files written
//! at start in its root and in its volume; a host process in a network namespace of its own (`unshare -n`);
//! the session's namespaces compared with the target's; errors; the super privileged
//! container runtime doing the same through the engine.

use std::fs;
use std::process::{Child, Command, Output};

use crate::common::*;

/// The port the target listens on, as `/proc/net/tcp` writes it (8080).
const PORT_HEX: &str = ":1F90";

/// A running busybox container serving HTTP, with a volume and marker files.
fn start_serving(test: &str) -> Container {
    let container = Container::run(
        test,
        &[
            "--volume",
            "/data",
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            "echo marked > /marker && echo in-volume > /data/marker && \
             exec httpd -f -p 0.0.0.0:8080",
        ],
    );
    wait_for("the target to listen", || {
        container.pid() != 0
            && std::fs::read_to_string(format!("/proc/{}/net/tcp", container.pid()))
                .is_ok_and(|tcp| tcp.contains(&format!("{PORT_HEX} 00000000:0000 0A")))
    });
    container
}

/// A host process in a network namespace of its own, killed when dropped.
struct Unshared(Child);

impl Unshared {
    fn start() -> Unshared {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "1000"])
            .spawn()
            .unwrap();
        let unshared = Unshared(child);
        let pid = unshared.0.id();
        wait_for("the process to have its namespace", || {
            namespace(&format!("/proc/{pid}/ns/net")) != namespace("/proc/self/ns/net")
        });
        unshared
    }
}

impl Drop for Unshared {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn namespace(path: &str) -> String {
    read_link(path)
}

/// toolbox with overlay storage: a new toolbox in a fraction of a second.
fn run(t: &TestEnv, args: &[&str]) -> Output {
    overlay_command(t).args(args).output().unwrap()
}

/// A script printing what a session sees: its net and PID namespaces, the target's
/// variables, the markers in its root and its volume, how many ports listen, and
/// `host_file`, a file of the host's.
fn report(host_file: &str) -> String {
    format!(
        "for ns in net pid; do readlink /proc/self/ns/$ns; done; \
         echo \"$TOOLBOX_TARGET $TOOLBOX_TARGET_PID\"; \
         cat /media/target/marker /media/target/data/marker; \
         grep -c ' 0A ' /proc/net/tcp; \
         cat {host_file}"
    )
}

fn assert_report(out: &Output, container: &Container, host_file: &str) {
    let pid = container.pid();
    let report = succeeded(out);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(
        lines,
        [
            namespace(&format!("/proc/{pid}/ns/net")).as_str(),
            namespace("/proc/self/ns/pid").as_str(),
            &format!("{} {pid}", container.name),
            "marked",
            "in-volume",
            "1",
            host_file,
        ],
        "{}",
        describe(out)
    );
}

/// A file only the host has, named relative to `/`, with its content.
fn host_file() -> (tempfile::NamedTempFile, String, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    let content = format!("host {}", std::process::id());
    std::fs::write(file.path(), &content).unwrap();
    let relative = file.path().strip_prefix("/").unwrap().display().to_string();
    (file, relative, content)
}

#[test]
fn a_session_joins_a_containers_network_and_sees_its_files() {
    let Some(t) = TestEnv::new("target_container", DEBIAN_IMAGE) else {
        return;
    };
    let container = start_serving("target");
    let (_file, relative, content) = host_file();
    let script = report(&format!("/media/root/{relative}"));
    let out = run(&t, &["--target", &container.name, "-c", &script]);
    assert_report(&out, &container, &content);
    // The host's PID namespace: gdb attaches to the container's process.
    let pid = container.pid().to_string();
    let out = run(
        &t,
        &[
            "--target",
            &container.name,
            "gdb",
            "-p",
            &pid,
            "-batch",
            "-ex",
            "info inferiors",
        ],
    );
    assert!(
        succeeded(&out).contains(&format!("process {pid}")),
        "{}",
        describe(&out)
    );
    // The target through TOOLBOX_TARGET, and a plain start afterwards on the host's network.
    let out = overlay_command(&t)
        .env("TOOLBOX_TARGET", &container.name)
        .args(["readlink", "/proc/self/ns/net"])
        .output()
        .unwrap();
    assert_eq!(
        succeeded(&out).trim(),
        namespace(&format!("/proc/{pid}/ns/net"))
    );
    let out = run(&t, &["readlink", "/proc/self/ns/net"]);
    assert_eq!(succeeded(&out).trim(), namespace("/proc/self/ns/net"));
}

#[test]
fn a_host_process_is_a_target_and_the_namespaces_asked_for_are_joined() {
    let Some(t) = TestEnv::new("target_process", BUSYBOX_IMAGE) else {
        return;
    };
    let process = Unshared::start();
    let pid = process.0.id();
    let target = format!("pid:{pid}");
    let out = run(
        &t,
        &[
            "--target",
            &target,
            "--target-ns",
            "net,uts",
            "sh",
            "-c",
            "for ns in net uts ipc; do readlink /proc/self/ns/$ns; done; \
             echo $TOOLBOX_TARGET_PID",
        ],
    );
    assert_eq!(
        succeeded(&out),
        format!(
            "{}\n{}\n{}\n{pid}\n",
            namespace(&format!("/proc/{pid}/ns/net")),
            namespace(&format!("/proc/{pid}/ns/uts")),
            namespace("/proc/self/ns/ipc"),
        ),
        "{}",
        describe(&out)
    );
    let out = run(&t, &["--target", &target, "--target-ns", "pid", "true"]);
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert!(toolbox_lines(&out)[0].contains("never joins its target's `pid` namespace"));
}

/// A host process's root is the host's `/`: shown at /media/target as systemd-nspawn shows
/// the host at /media/root, with no copy of the host's mounts kept in the host's mount
/// namespace for the session, so a mount made before the session can be unmounted and
/// its directory removed while the session runs.
#[test]
fn a_host_processs_files_are_the_hosts_and_hold_none_of_its_mounts() {
    let Some(t) = TestEnv::new("target_host_root", BUSYBOX_IMAGE) else {
        return;
    };
    let process = Unshared::start();
    let target = format!("pid:{}", process.0.id());
    let (_file, relative, content) = host_file();
    let out = run(
        &t,
        &[
            "--target",
            &target,
            "cat",
            &format!("/media/target/{relative}"),
        ],
    );
    assert_eq!(succeeded(&out), content, "{}", describe(&out));

    let victim = t.root.join("victim-mount");
    fs::create_dir(&victim).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "victim", victim.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(mounted.success());
    let mut session = overlay_command(&t)
        .args(["--target", &target, "sleep", "1214"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the session's command", || {
        ToolboxRoot::at(&t.tree()).is_some_and(|root| root.find("sleep 1214").is_some())
    });
    let _reaper = Reaper(ToolboxRoot::at(&t.tree()).unwrap());
    let unmounted = Command::new("umount").arg(&victim).status().unwrap();
    let removed = fs::remove_dir(&victim);
    let _ = session.kill();
    let _ = session.wait();
    assert!(unmounted.success());
    assert!(
        removed.is_ok(),
        "a directory the host unmounted stays busy while a session targets a host process: {removed:?}"
    );
}

#[test]
fn unknown_stopped_and_gone_targets_are_one_line_and_125() {
    let Some(t) = TestEnv::new("target_errors", BUSYBOX_IMAGE) else {
        return;
    };
    let stopped = format!("toolbox-test-stopped-{}", std::process::id());
    docker(&["create", "--name", &stopped, BUSYBOX_IMAGE, "true"]);
    let _stopped = Container {
        name: stopped.clone(),
    };
    for (target, expected) in [
        (
            "toolbox-no-such-container".to_string(),
            "toolbox: no container `toolbox-no-such-container` in the engine at ".to_string(),
        ),
        (
            stopped.clone(),
            format!("toolbox: container `{stopped}` is not running; start it first"),
        ),
        (
            format!("pid:{}", i32::MAX),
            format!(
                "toolbox: target `pid:{}`: process {} is gone",
                i32::MAX,
                i32::MAX
            ),
        ),
    ] {
        let out = run(&t, &["--target", &target, "true"]);
        assert_eq!(status(&out), 125, "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{}", describe(&out));
        assert!(stderr.starts_with(&expected), "{}", describe(&out));
    }
    assert!(!t.tree().exists(), "an error left a toolbox behind");
}

#[test]
fn dry_run_shows_the_resolved_target_and_list_shows_a_targeted_session() {
    let Some(t) = TestEnv::new("target_list", BUSYBOX_IMAGE) else {
        return;
    };
    let container = start_serving("list");
    let pid = container.pid();
    let out = run(&t, &["--target", &container.name, "--dry-run"]);
    let command = succeeded(&out);
    for expected in [
        format!("nsenter --net=/proc/{pid}/ns/net -- "),
        format!("--setenv=TOOLBOX_TARGET_PID={pid}"),
        format!("--setenv=TOOLBOX_TARGET={}", container.name),
        ":/media/target".to_string(),
    ] {
        assert!(command.contains(&expected), "{expected} missing: {command}");
    }
    let mut session = overlay_command(&t)
        .args(["--target", &container.name, "sleep", "30"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let targets = || {
        let out = run(&t, &["list", "--json"]);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == t.toolbox_name())
            .map(|r| r["targets"].clone())
    };
    wait_for("the targeted session in list", || {
        targets() == Some(serde_json::json!([container.name]))
    });
    let table = succeeded(&run(&t, &["list"]));
    let row = table
        .lines()
        .find(|l| l.starts_with(&t.toolbox_name()))
        .unwrap();
    assert!(row.ends_with(&container.name), "{table}");
    let _ = session.kill();
    let _ = session.wait();
}

#[test]
fn a_target_that_exits_ends_only_the_sessions_view_of_it() {
    let Some(t) = TestEnv::new("target_exits", BUSYBOX_IMAGE) else {
        return;
    };
    let container = start_serving("exits");
    let marker = t.root.join("session-started");
    let session = overlay_command(&t)
        .args(["--target", &container.name, "sh", "-c"])
        .arg(format!(
            "touch /media/root{}; while [ -e /media/root{} ]; do sleep 0.1; done; echo still here",
            marker.display(),
            marker.display()
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the session to start", || marker.exists());
    docker(&["kill", &container.name]);
    // toolbox says so while the session runs; then the session is let go.
    let mut session = session;
    let stderr = session.stderr.take().unwrap();
    let (lines, said) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("exited; this session goes on") {
                let _ = lines.send(());
            }
            all.push(line);
        }
        all
    });
    said.recv_timeout(patient(std::time::Duration::from_secs(30)))
        .expect("no word of the target's exit");
    std::fs::remove_file(&marker).unwrap();
    let out = session.wait_with_output().unwrap();
    assert_eq!(succeeded(&out), "still here\n");
    let exited = format!("target `{}`", container.name);
    let lines: Vec<String> = reader
        .join()
        .unwrap()
        .into_iter()
        .filter(|l| l.starts_with("toolbox:") && l.contains(&exited))
        .collect();
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    assert!(
        lines[0].contains("exited; this session goes on"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_super_privileged_container_joins_the_target_through_the_engine() {
    let Some(t) = TestEnv::new("target_spc", BUSYBOX_IMAGE) else {
        return;
    };
    let container = start_serving("spc");
    let (_file, relative, content) = host_file();
    let spc = |args: &[&str]| {
        t.command()
            .env("TOOLBOX_RUNTIME", "spc")
            .args(args)
            .output()
            .unwrap()
    };
    let script = report(&format!("/host/{relative}"));
    let out = spc(&["--target", &container.name, "sh", "-c", &script]);
    if std::env::var("TOOLBOX_E2E_ROOT").as_deref() == Ok("shared") {
        // toolbox in a mount namespace of its own (`scripts/test` with the host's `/`
        // shared), the engine in the machine's: the engine cannot see toolbox's stage, so
        // the target's root is bound by its host path and its volume is shown where the
        // shared PID namespace has it, as toolbox says.
        let said = toolbox_lines(&out).join("\n");
        assert!(
            said.contains("its volumes are not shown"),
            "{}",
            describe(&out)
        );
        let pid = container.pid();
        let out = spc(&[
            "--target",
            &container.name,
            "cat",
            "/media/target/marker",
            &format!("/proc/{pid}/root/data/marker"),
        ]);
        assert_eq!(succeeded(&out), "marked\nin-volume\n", "{}", describe(&out));
    } else {
        assert_report(&out, &container, &content);
    }
    let unshared = Unshared::start();
    let out = spc(&["--target", &format!("pid:{}", unshared.0.id()), "true"]);
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert!(
        toolbox_lines(&out)[0].contains("the spc runtime joins containers only"),
        "{}",
        describe(&out)
    );
}
