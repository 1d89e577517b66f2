//! On a host where systemd is PID 1, as on most hosts toolbox serves (the testbed guest of
//! `scripts/testbed` is one; this test machine is not): toolbox run from a unit and from
//! `systemd-run --pty`, where a session's processes and output go (a scope of their own
//! in machine.slice), what systemd-machined knows of them and what `-v` says of it, `/run`
//! a tmpfs that sessions leave as they found it, and the host's `/` shared (the other
//! modules' host snapshots then run on it too). Where systemd is not PID 1 these fail
//! when `TOOLBOX_E2E=required`; `scripts/test` leaves them out there, and CI runs them in
//! the testbed's guests.

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// A test environment on a systemd host, or `None` (after saying why) when this host's
/// PID 1 is not systemd and that is not required.
fn systemd_env(name: &str, image: &str) -> Option<TestEnv> {
    if !systemd_booted() {
        let reason =
            "systemd is not PID 1 here (scripts/testbed runs these tests on a host where it is)";
        unavailable(name, reason);
        return None;
    }
    TestEnv::new(name, image)
}

/// `systemd-run OPTIONS... toolbox ARGS...` with the test's toolbox environment passed as
/// the unit's (`--setenv`): the unit starts from the manager's environment, not the test's.
fn systemd_run(t: &TestEnv, options: &[&str], args: &[&str]) -> Command {
    let toolbox = t.command();
    let mut command = Command::new("systemd-run");
    command.args(["--quiet", "--collect"]).args(options);
    for (name, value) in toolbox.get_envs() {
        if let Some(value) = value {
            let mut setting = name.to_os_string();
            setting.push("=");
            setting.push(value);
            command.arg("--setenv").arg(setting);
        }
    }
    command.arg(toolbox.get_program()).args(args);
    command
}

/// A unit name of this test run's own.
fn unit(test: &str) -> String {
    format!("toolbox-e2e-{test}-{}", std::process::id())
}

/// Stops `unit` when dropped: what a failed test left running.
struct Unit(String);

impl Drop for Unit {
    fn drop(&mut self) {
        let _ = Command::new("systemctl").args(["stop", &self.0]).output();
    }
}

/// The cgroup of process `pid` (cgroup v2: the one line's path).
fn cgroup(pid: u32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_string()
}

/// What `/run/systemd/nspawn` holds of the sessions of the test's toolboxes (their
/// machine names start with the toolbox's name): the directories systemd-nspawn keeps per
/// session.
fn nspawn_run_entries(t: &TestEnv) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for dir in [
        "/run/systemd/nspawn/propagate",
        "/run/systemd/nspawn/unix-export",
    ] {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&t.toolbox_name()) {
                found.insert(format!("{dir}/{name}"));
            }
        }
    }
    found
}

/// Fails when a session left a directory in `/run/systemd/nspawn`, saying what is
/// mounted there and which processes still have a mount namespace that holds it.
fn assert_nothing_left_in_run(t: &TestEnv, storage: &str) {
    let left = nspawn_run_entries(t);
    if left.is_empty() {
        return;
    }
    let mut seen = String::new();
    let mut namespaces = BTreeSet::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        let namespace = fs::read_link(format!("/proc/{pid}/ns/mnt"));
        if !pid.bytes().all(|b| b.is_ascii_digit())
            || !namespace.is_ok_and(|ns| namespaces.insert(ns))
        {
            continue;
        }
        let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        for line in mounts.lines() {
            if left
                .iter()
                .any(|path| line.contains(&path[path.rfind('/').unwrap()..]))
            {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                seen.push_str(&format!("PID {pid} ({}): {line}\n", comm.trim()));
            }
        }
    }
    panic!("{storage}: left in /run: {left:?}\n{seen}");
}

/// The host's mounts that are the test's: of its directory, or of its toolboxes' trees.
fn own_mounts(t: &TestEnv) -> Vec<String> {
    let root = t.root.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|at| at.starts_with(&root)))
        .map(String::from)
        .collect()
}

fn machines() -> String {
    let out = Command::new("machinectl")
        .args(["list", "--no-legend", "--no-pager"])
        .output()
        .unwrap();
    succeeded(&out)
}

/// A session run by a service unit runs where `-v` says, in every storage mode the
/// engine offers: no machine registered with systemd-machined, its processes in a scope
/// of their own in machine.slice named after the session's machine, its output in the
/// journal under that scope; `systemctl stop` of the unit ends it, leaving nothing running
/// or mounted.
#[test]
fn a_unit_runs_a_session_in_a_scope_of_its_own() {
    for storage in storages() {
        let Some(t) = systemd_env(&format!("systemd_unit_{storage}"), BUSYBOX_IMAGE) else {
            return;
        };
        let created = t
            .command()
            .env("TOOLBOX_STORAGE", storage)
            .args(["-v", "true"])
            .output()
            .unwrap();
        assert!(
            toolbox_lines(&created).iter().any(|l| l.contains(
                "no machine registered with systemd-machined (a session shares the host's PID \
                 namespace), the session in a scope of its own in machine.slice"
            )),
            "{storage}: {}",
            describe(&created)
        );
        let name = unit(&format!("unit-{storage}"));
        let _unit = Unit(name.clone());
        let marker = format!("session-of-{name}");
        let out = systemd_run(
            &t,
            &["--unit", &name],
            &["sh", "-c", &format!("echo {marker}; exec sleep 1000")],
        )
        .output()
        .unwrap();
        succeeded(&out);
        let mut session = None;
        wait_for("the unit's session to start", || {
            session = ToolboxRoot::at(&t.tree())
                .and_then(|root| root.find("sleep 1000").map(|pid| (root, pid)));
            session.is_some()
        });
        let (root, pid) = session.unwrap();
        let _reaper = Reaper(root);
        // `/machine.slice/MACHINE.scope/payload`, MACHINE the toolbox's name and a number.
        let scope = cgroup(pid)
            .strip_prefix("/machine.slice/")
            .and_then(|rest| rest.split('/').next())
            .map(String::from);
        assert!(
            scope
                .as_deref()
                .is_some_and(|s| s.starts_with(&t.toolbox_name()) && s.ends_with(".scope")),
            "{storage}: the session is in {}",
            cgroup(pid)
        );
        let scope = scope.unwrap();
        assert!(
            !machines().contains(&t.toolbox_name()),
            "{storage}: {}",
            machines()
        );
        wait_for("the session's output in its scope's journal", || {
            let out = Command::new("journalctl")
                .args(["--unit", &scope, "--output", "cat", "--no-pager"])
                .output()
                .unwrap();
            stdout(&out).lines().any(|l| l == marker)
        });
        let out = Command::new("systemctl")
            .args(["stop", &name])
            .output()
            .unwrap();
        succeeded(&out);
        assert!(ends_within(pid, Duration::from_secs(20)), "{storage}");
        assert_eq!(root.processes(), [], "{storage}: left running");
        assert_eq!(
            own_mounts(&t),
            Vec::<String>::new(),
            "{storage}: left mounted"
        );
        assert_nothing_left_in_run(&t, storage);
    }
}

/// `systemd-run --pty --wait`: the session gets the unit's terminal and its exit status
/// comes back through systemd-run; `--pipe` likewise without a terminal.
#[test]
fn systemd_run_pty_and_pipe_carry_the_terminal_and_the_status() {
    let Some(t) = systemd_env("systemd_pty", BUSYBOX_IMAGE) else {
        return;
    };
    succeeded(&t.run(["true"]));
    let out = systemd_run(
        &t,
        &["--pty", "--wait"],
        &[
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo on-a-terminal; exit 7",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(status(&out), 7, "{}", describe(&out));
    assert!(stdout(&out).contains("on-a-terminal"), "{}", describe(&out));
    let out = systemd_run(
        &t,
        &["--pipe", "--wait"],
        &["sh", "-c", "test -t 1 || echo piped; exit 5"],
    )
    .output()
    .unwrap();
    assert_eq!(status(&out), 5, "{}", describe(&out));
    assert_eq!(stdout(&out), "piped\n", "{}", describe(&out));
}

/// The host as systemd mounts it: `/run` a tmpfs and `/` shared. Sessions in every
/// storage mode see the host there and leave nothing of theirs mounted, on the host or
/// in `/run/systemd/nspawn`; the host snapshots of the other modules' tests then hold on
/// a shared `/` too.
#[test]
fn sessions_leave_a_systemd_hosts_mounts_as_they_were() {
    let Some(t) = systemd_env("systemd_mounts", BUSYBOX_IMAGE) else {
        return;
    };
    let findmnt = |path: &str, column: &str| {
        let out = Command::new("findmnt")
            .args(["--noheadings", "--output", column, path])
            .output()
            .unwrap();
        succeeded(&out).trim().to_string()
    };
    assert_eq!(findmnt("/run", "FSTYPE"), "tmpfs");
    assert_eq!(findmnt("/", "PROPAGATION"), "shared");
    for storage in storages() {
        let run = |args: &[&str]| {
            t.command()
                .env("TOOLBOX_STORAGE", storage)
                .env("TOOLBOX_NAME", format!("{}-{storage}", t.name))
                .args(args)
                .output()
                .unwrap()
        };
        assert_sees_the_host(&run, "/media/root");
        assert_eq!(
            own_mounts(&t),
            Vec::<String>::new(),
            "{storage}: left mounted"
        );
        assert_nothing_left_in_run(&t, storage);
    }
    // systemd-nspawn killed outright leaves its tmpfs mounted in `unix-export`; the
    // toolbox's next session removes it.
    let payload = "sleep 1213";
    let mut killed = t
        .command()
        .env("TOOLBOX_STORAGE", "copy")
        .args(payload.split(' '))
        .spawn()
        .unwrap();
    wait_for("the session's tree", || {
        t.tree().join(".toolbox.json").exists()
    });
    let root = ToolboxRoot::at(&t.tree()).unwrap();
    let _reaper = Reaper(root);
    wait_for("the session's command", || root.find(payload).is_some());
    killed.kill().unwrap();
    killed.wait().unwrap();
    let left = nspawn_run_entries(&t);
    assert!(
        left.iter().any(|path| path.contains("/unix-export/")),
        "a killed systemd-nspawn left nothing to remove: {left:?}"
    );
    succeeded(
        &t.command()
            .env("TOOLBOX_STORAGE", "copy")
            .arg("true")
            .output()
            .unwrap(),
    );
    assert_nothing_left_in_run(&t, "copy, after a killed session");
    assert_eq!(own_mounts(&t), Vec::<String>::new(), "left mounted");
}
