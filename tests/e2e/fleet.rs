//! toolbox from its own image (scripts/image-archive) in the shape `kubectl debug node
//! --profile=sysadmin` and a super privileged container give it (`docker run --privileged
//! --pid=host --net=host --ipc=host -v /:/host`), on the test daemon: the archive loads; a
//! toolbox it creates is the installed toolbox's (listed and entered by it) and the
//! reverse; strace and gdb from it reach a host process; each missing flag gives one line
//! and 125; and a container killed mid-session leaves no process, mount or container.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::*;

const TRACING_IMAGE: &str = "toolbox-tracing:bookworm";

/// toolbox's image archive built from the binary under test into `dir`: its path and the
/// image's name.
pub fn image_archive(dir: &Path) -> (PathBuf, String) {
    let archive = dir.join("toolbox-image.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image-archive");
    let out = Command::new(script)
        .arg(env!("CARGO_BIN_EXE_toolbox"))
        .arg(&archive)
        .output()
        .unwrap();
    let name = succeeded(&out).trim().to_string();
    (archive, name)
}

/// toolbox's image loaded into the test engine, once per run: its name.
fn fleet_image() -> &'static str {
    static LOADED: OnceLock<String> = OnceLock::new();
    LOADED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (archive, name) = image_archive(dir.path());
        docker(&["load", "--input", archive.to_str().unwrap()]);
        name
    })
}

/// The test's settings as the installed toolbox's command has them, but for `PATH`, the
/// engine's address and the storage: `NAME=VALUE` for a container's environment.
pub fn settings(t: &TestEnv) -> Vec<String> {
    let command = t.command();
    let mut settings = Vec::new();
    for (name, value) in command.get_envs() {
        if let (Some(name), Some(value)) = (name.to_str(), value.and_then(|v| v.to_str()))
            && !["PATH", "DOCKER_HOST", "TOOLBOX_STORAGE"].contains(&name)
        {
            settings.push(format!("{name}={value}"));
        }
    }
    settings
}

/// `--privileged`, or where this machine withholds some capability from its root (and
/// Docker then refuses `--privileged`), the same made from its parts, as toolbox's own
/// super privileged containers are.
pub fn privileged() -> Vec<String> {
    use toolbox::runtime::spc::{ALL_DEVICES, BOUNDED_SECURITY, Privilege};
    match toolbox::sys::capability_bounding_set(Path::new("/proc")) {
        Some((bounding, last)) => match Privilege::for_bounding_set(bounding, last) {
            Privilege::Full => vec!["--privileged".into()],
            Privilege::Bounded { capabilities } => {
                let mut flags: Vec<String> = capabilities
                    .iter()
                    .map(|c| format!("--cap-add={c}"))
                    .collect();
                flags.extend(
                    BOUNDED_SECURITY
                        .iter()
                        .map(|o| format!("--security-opt={o}")),
                );
                flags.push(format!("--device-cgroup-rule={ALL_DEVICES}"));
                flags
            }
        },
        None => vec!["--privileged".into()],
    }
}

/// The whole shape of `kubectl debug node --profile=sysadmin`.
fn sysadmin() -> Vec<String> {
    let mut flags = privileged();
    flags.extend(["--pid=host", "--net=host", "--ipc=host", "--volume=/:/host"].map(String::from));
    flags
}

/// `docker run --rm` of toolbox's image with `shape`, named `container`, the test's
/// settings passed as the installed toolbox's command has them (storage `storage`), and
/// `args`.
fn from_image(
    t: &TestEnv,
    container: &str,
    shape: &[String],
    storage: &str,
    args: &[&str],
) -> Command {
    let mut command = Command::new("docker");
    command
        .args(["run", "--rm", "--name", container])
        .args(shape)
        .args(["--label", &format!("toolbox.test={}", t.toolbox_name())]);
    // The container's own PATH stays; the host's is the image's too.
    for setting in settings(t) {
        command.arg(format!("--env={setting}"));
    }
    command.arg(format!("--env=TOOLBOX_STORAGE={storage}"));
    command.arg(fleet_image()).args(args).stdin(Stdio::null());
    command
}

fn container_name(t: &TestEnv, what: &str) -> String {
    format!("tbx-{what}-{}", t.name)
}

/// Removes the test's containers, whatever a failure left.
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        let filter = format!("label=toolbox.test={}", self.0);
        for id in Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
            .map(|out| stdout(&out))
            .unwrap_or_default()
            .split_whitespace()
        {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

fn fleet_env(name: &str, image: &str) -> Option<(TestEnv, Containers)> {
    let t = TestEnv::new(name, image)?;
    let containers = Containers(t.toolbox_name());
    Some((t, containers))
}

#[test]
fn a_container_missing_a_flag_is_told_which_in_one_line() {
    let Some((t, _containers)) = fleet_env("fleet_flags", BUSYBOX_IMAGE) else {
        return;
    };
    let host = ["--pid=host".to_string(), "--volume=/:/host".to_string()];
    let cases: [(&str, Vec<String>, &str); 3] = [
        ("unprivileged", host.to_vec(), "--privileged"),
        (
            "own-pid",
            [privileged(), vec!["--volume=/:/host".into()]].concat(),
            "--pid=host",
        ),
        (
            "no-host",
            [privileged(), vec!["--pid=host".into()]].concat(),
            "-v /:/host",
        ),
    ];
    for (case, shape, flag) in cases {
        let out = from_image(&t, &container_name(&t, case), &shape, "copy", &["list"])
            .output()
            .unwrap();
        assert_eq!(status(&out), 125, "{case}: {}", describe(&out));
        let lines = toolbox_lines(&out);
        assert_eq!(lines.len(), 1, "{case}: {}", describe(&out));
        assert!(lines[0].contains(flag), "{case}: {}", describe(&out));
    }
    // Something else at /host is not the host's `/`.
    let mut shape = privileged();
    shape.extend(["--pid=host".into(), "--volume=/etc:/host".into()]);
    let out = from_image(&t, &container_name(&t, "etc"), &shape, "copy", &["list"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 125, "{}", describe(&out));
    assert!(
        toolbox_lines(&out)[0].contains("-v /:/host"),
        "{}",
        describe(&out)
    );
    assert!(
        !t.toolboxes.exists(),
        "a refused run wrote {}",
        t.toolboxes.display()
    );
}

#[test]
fn a_toolbox_made_from_the_image_is_the_installed_toolboxs_and_back() {
    let Some((t, _containers)) = fleet_env("fleet_shared", BUSYBOX_IMAGE) else {
        return;
    };
    // Made from the image, with the default storage, and a file written inside.
    let out = from_image(
        &t,
        &container_name(&t, "make"),
        &sysadmin(),
        "auto",
        &[
            "-v",
            "run",
            "sh",
            "-c",
            "echo from-image > /root/made; hostname",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let host_name = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        stdout(&out),
        host_name,
        "the host's UTS namespace: {}",
        describe(&out)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("runs from its image in a container"),
        "{said}"
    );
    // The installed toolbox lists it and enters it, the file there.
    let out = t.run(["list", "--names"]);
    assert_eq!(stdout(&out).trim(), t.toolbox_name(), "{}", describe(&out));
    let out = t.run(["run", "cat", "/root/made"]);
    assert_eq!(stdout(&out), "from-image\n", "{}", describe(&out));
    let out = t.run(["run", "sh", "-c", "echo installed >> /root/made"]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    // And the reverse: the image sees what the installed toolbox wrote.
    let out = from_image(
        &t,
        &container_name(&t, "enter"),
        &sysadmin(),
        "auto",
        &["run", "cat", "/root/made"],
    )
    .output()
    .unwrap();
    assert_eq!(
        stdout(&out),
        "from-image\ninstalled\n",
        "{}",
        describe(&out)
    );
    let out = from_image(
        &t,
        &container_name(&t, "list"),
        &sysadmin(),
        "auto",
        &["list", "--names"],
    )
    .output()
    .unwrap();
    assert_eq!(stdout(&out).trim(), t.toolbox_name(), "{}", describe(&out));
    // `toolbox config` says where it runs from.
    let out = from_image(
        &t,
        &container_name(&t, "config"),
        &sysadmin(),
        "auto",
        &["config"],
    )
    .output()
    .unwrap();
    assert!(
        stdout(&out)
            .starts_with("# toolbox runs from its image in a container (the host's / at /host)"),
        "{}",
        describe(&out)
    );
}

#[test]
fn strace_and_gdb_from_the_image_reach_a_host_process() {
    let Some((t, _containers)) = fleet_env("fleet_tracing", TRACING_IMAGE) else {
        return;
    };
    let tracee = Tracee::start();
    let run = |args: &[&str]| -> Output {
        let name = container_name(&t, args[0]);
        let args: Vec<&str> = ["run"].iter().chain(args).copied().collect();
        from_image(&t, &name, &sysadmin(), "auto", &args)
            .output()
            .unwrap()
    };
    assert_gdb_and_strace_attach(&run, &tracee.pid().to_string());
}

/// Once the session of toolbox `t` runs `payload`, `kill` kills the container toolbox
/// runs in: then the session's processes end, the guard ends, and nothing is mounted in
/// the toolbox directory.
pub fn assert_killed_session_leaves_nothing(t: &TestEnv, payload: &str, kill: impl FnOnce()) {
    let mut root = None;
    wait_for("the session's command", || {
        root = ToolboxRoot::at(&t.tree());
        root.is_some_and(|r| r.find(payload).is_some())
    });
    let root = root.unwrap();
    let _reaper = Reaper(root);
    kill();
    wait_for("the session's processes to end", || {
        root.processes().is_empty()
    });
    // The guard, found by this test's toolbox directory, ends too.
    let guard = format!(
        "{} {}",
        toolbox::runtime::guard::NAME,
        t.toolboxes.display()
    );
    wait_for("the guard to end", || !running(&guard));
    let prefix = format!("{}/", t.toolboxes.display());
    let mounted: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|at| at.starts_with(&prefix))
        .map(String::from)
        .collect();
    assert!(mounted.is_empty(), "left mounted: {mounted:?}");
}

#[test]
fn a_container_killed_mid_session_leaves_nothing_behind() {
    let Some((t, _containers)) = fleet_env("fleet_killed", BUSYBOX_IMAGE) else {
        return;
    };
    let victim = victim(&t);
    let before = host_snapshot(&victim);
    for storage in storages() {
        let name = container_name(&t, &format!("killed-{storage}"));
        let payload = "sleep 1217";
        let args: Vec<&str> = payload.split(' ').collect();
        let mut session = from_image(&t, &name, &sysadmin(), storage, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let killed = || {
            docker(&["kill", &name]);
            let _ = wait_exit(&mut session);
        };
        assert_killed_session_leaves_nothing(&t, payload, killed);
        wait_for("the container to be removed", || {
            docker(&["ps", "-aq", "--filter", &format!("name=^{name}$")])
                .trim()
                .is_empty()
        });
        // The toolbox itself stays, whole, and starts again.
        let out = t.run(["run", "true"]);
        assert_eq!(status(&out), 0, "{storage}: {}", describe(&out));
        let out = t.run(["rm", "--force", &t.toolbox_name()]);
        assert_eq!(status(&out), 0, "{storage}: {}", describe(&out));
    }
    // A session debugging a container (`--target`) has the target's files staged beside
    // the toolbox: unmounted and removed too.
    let target = Container::run("fleet-target", &[BUSYBOX_IMAGE, "sleep", "1200"]);
    let name = container_name(&t, "killed-target");
    let payload = "sleep 1225";
    let args = ["--target", target.name.as_str(), "sleep", "1225"];
    let mut session = from_image(&t, &name, &sysadmin(), "copy", &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_killed_session_leaves_nothing(&t, payload, || {
        docker(&["kill", &name]);
        let _ = wait_exit(&mut session);
    });
    let stages: Vec<_> = fs::read_dir(&t.toolboxes)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".target-"))
        .collect();
    assert!(stages.is_empty(), "stages left: {stages:?}");
    assert_host_untouched(&before, &victim, "a container killed mid-session");
}

#[test]
fn without_systemd_nspawn_on_the_host_sessions_run_in_an_spc_that_ends_with_the_container() {
    let Some((t, _containers)) = fleet_env("fleet_spc", BUSYBOX_IMAGE) else {
        return;
    };
    // A host without systemd-nspawn: none where toolbox looks for it.
    let mut shape = sysadmin();
    shape.push("--env=PATH=/usr/local/bin".into());
    let out = from_image(
        &t,
        &container_name(&t, "spc"),
        &shape,
        "auto",
        &["run", "sh", "-c", "echo $HOST"],
    )
    .output()
    .unwrap();
    assert_eq!(stdout(&out), "/host\n", "{}", describe(&out));
    assert_eq!(
        toolbox_lines(&out),
        [
            "toolbox: the host has no systemd-nspawn: the session runs in a super privileged container through the host's engine"
        ],
        "{}",
        describe(&out)
    );
    let out = from_image(
        &t,
        &container_name(&t, "spc-config"),
        &shape,
        "auto",
        &["config"],
    )
    .output()
    .unwrap();
    assert!(
        stdout(&out).contains("TOOLBOX_RUNTIME=spc\t# the host has no systemd-nspawn\n"),
        "{}",
        describe(&out)
    );

    let spc = t.toolbox_name();
    // Killed mid-session: the command ends, and the SPC stops (it stays, as the toolbox).
    // Killed by the command itself as soon as it starts: toolbox may or may not have told
    // its guard the command's PID by then.
    let name = container_name(&t, "spc-killed");
    killed_by_its_command(&t, &name, &shape, &[]);
    wait_for("the SPC to stop", || {
        docker(&["inspect", "--format", "{{.State.Running}}", &spc]).trim() == "false"
    });

    // The same for a throwaway SPC (`--rm`), whose main process is the command: it stops,
    // and the next throwaway session removes it (its toolbox is gone).
    // (Another test's throwaway session may remove it first: it is abandoned.)
    let name = container_name(&t, "spc-rm-killed");
    killed_by_its_command(&t, &name, &shape, &["--rm"]);
    let left = throwaways(&t);
    assert!(left.len() <= 1, "throwaway SPCs left: {left:?}");
    for id in &left {
        wait_for("the throwaway SPC to stop", || {
            let out = Command::new("docker")
                .args(["inspect", "--format", "{{.State.Running}}", id])
                .output()
                .unwrap();
            !out.status.success() || stdout(&out).trim() == "false"
        });
    }
    let next = container_name(&t, "spc-rm-next");
    let out = from_image(&t, &next, &shape, "auto", &["run", "--rm", "true"])
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let stays = throwaways(&t);
    for id in &stays {
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }
    assert!(
        stays.is_empty(),
        "the killed throwaway SPC stays: {stays:?}"
    );
}

/// The throwaway SPCs of `t`'s toolbox in the daemon, running or not (their command
/// carries the toolbox's name).
fn throwaways(t: &TestEnv) -> Vec<String> {
    let name = format!("NAME={}", t.toolbox_name());
    docker(&["ps", "-aq", "--no-trunc", "--filter", "label=toolbox.pid"])
        .split_whitespace()
        .filter(|id| {
            let out = Command::new("docker")
                .args(["inspect", "--format", "{{json .Config.Env}}", id])
                .output()
                .unwrap();
            stdout(&out).contains(&format!("\"{name}\""))
        })
        .map(String::from)
        .collect()
}

/// Runs toolbox from its image as container `name` with `shape`, its session's command
/// in an SPC (`spc_args` added) being `sh -c` that starts four sleeps in the background
/// (which the shell hands to another parent as soon as it is killed; two of them in the
/// host's root, through `chroot`, and one of those out of the command's tree already),
/// says their PIDs, and kills toolbox's process at once. Then the guard ends them, and
/// itself.
fn killed_by_its_command(t: &TestEnv, name: &str, shape: &[String], spc_args: &[&str]) {
    // toolbox's host PID is written once its container runs, and the sleeps' by the
    // command, in the host's PID namespace, through the host's root.
    let told = t.root.join(format!("{name}.toolbox"));
    let said = t.root.join(format!("{name}.sleeps"));
    let script = format!(
        "while [ ! -s \"$HOST{told}\" ]; do sleep 1; done; \
         sleep 1226 & b=$!; chroot \"$HOST\" sleep 1227 & c=$!; sleep 1221 & s=$!; \
         sh -c 'chroot \"$HOST\" sleep 1228 & echo $! >\"$1\"' sh \"$HOST{said}.escaped\"; \
         echo \"$b $c $s $(cat \"$HOST{said}.escaped\")\" >\"$HOST{said}.tmp\"; \
         mv \"$HOST{said}.tmp\" \"$HOST{said}\"; kill -KILL $(cat \"$HOST{told}\"); wait $s",
        told = told.display(),
        said = said.display(),
    );
    let mut args = vec!["run"];
    args.extend(spc_args);
    args.extend(["sh", "-c", &script]);
    let mut session = from_image(t, name, shape, "auto", &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Asked until the container is there.
    let pid = || {
        let out = Command::new("docker")
            .args(["inspect", "--format", "{{.State.Pid}}", name])
            .output()
            .unwrap();
        stdout(&out)
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&pid| pid != 0)
    };
    wait_for("toolbox's container to run", || pid().is_some());
    let unfinished = told.with_extension("tmp");
    fs::write(&unfinished, pid().unwrap().to_string()).unwrap();
    fs::rename(&unfinished, &told).unwrap();
    wait_for("the command to say its sleeps' PIDs", || said.exists());
    let sleeps: Vec<u32> = fs::read_to_string(&said)
        .unwrap()
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect();
    assert_eq!(sleeps.len(), 4, "{}", said.display());
    let _ = wait_exit(&mut session);
    // Ended: gone, or a zombie its new parent has yet to reap.
    let ended = |pid: u32| {
        fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit(") ").next().unwrap_or("").starts_with('Z')
        })
    };
    for pid in sleeps {
        wait_for(&format!("sleep {pid} to end"), || ended(pid));
    }
    let guard = format!(
        "{} {}",
        toolbox::runtime::guard::NAME,
        t.toolboxes.display()
    );
    wait_for("the guard to end", || !running(&guard));
}

/// The guard of a throwaway SPC session whose toolbox was killed before it could tell the
/// command's PID (here: told the token, then nothing) ends the command the engine starts
/// after that, found by the token wherever it runs, and no other process; then it ends
/// itself.
#[test]
fn a_guard_never_told_the_commands_pid_finds_it_by_its_token() {
    if !toolbox::sys::is_root() {
        return unavailable("fleet_guard", "the guard leaves its control group as root");
    }
    let dir = tempfile::tempdir().unwrap();
    let guard = dir.path().join(toolbox::runtime::guard::NAME);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_toolbox"), &guard).unwrap();
    let token = format!("{:032x}", random_bits());
    let told = dir.path().join("told");
    fs::write(&told, format!("{token}\n")).unwrap();
    let mut started = Started(Vec::new());
    let other = started.sleep("1232", "another");
    // toolbox's part: a process that starts the guard, its child, and is killed.
    let mut toolbox = Command::new("sh")
        .args(["-c", "\"$1\" \"$2\" $$ spc <\"$3\" & wait", "sh"])
        .arg(&guard)
        .arg(dir.path())
        .arg(&told)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = toolbox.stdout.take().unwrap();
    started.0.push(toolbox);
    let toolbox = started.0.len() - 1;
    let mut said = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut said).unwrap();
    assert_eq!(said, "guarding\n");
    let guard_running = || running(&format!("{} {}", guard.display(), dir.path().display()));
    assert!(guard_running(), "the guard is not running");
    started.0[toolbox].kill().unwrap();
    started.0[toolbox].wait().unwrap();
    // The engine starts the command a moment after toolbox was killed.
    std::thread::sleep(Duration::from_secs(2));
    let command = started.sleep("1231", &token);
    for _ in 0..100 {
        if !started.running(command) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !started.running(command),
        "the command started late runs on"
    );
    assert!(
        started.running(other),
        "a process with another token was killed"
    );
    wait_for("the guard to end", || !guard_running());
}

/// Processes a test started, killed when it ends however it ends.
struct Started(Vec<std::process::Child>);

impl Started {
    /// Starts `sleep SECONDS` carrying `token` as the session's, and says which it is.
    fn sleep(&mut self, seconds: &str, token: &str) -> usize {
        let child = Command::new("sleep")
            .arg(seconds)
            .env(toolbox::runtime::guard::SESSION_VARIABLE, token)
            .spawn()
            .unwrap();
        self.0.push(child);
        self.0.len() - 1
    }

    fn running(&mut self, which: usize) -> bool {
        self.0[which].try_wait().unwrap().is_none()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// 128 random bits.
fn random_bits() -> u128 {
    let mut bits = [0u8; 16];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom").unwrap(), &mut bits).unwrap();
    u128::from_ne_bytes(bits)
}
