//! toolbox driven as a person drives it: in a real pseudo-terminal (tmux), a first entry
//! into a new toolbox, a prompt, a command typed and its output read off the screen,
//! Ctrl-C interrupting a command but not the shell, `exit`, and the terminal left as it was;
//! the same in a super privileged container, with the window's size followed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// A tmux server on its own socket, killed when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn start(socket: &Path, script: &Path) -> Tmux {
        let tmux = Tmux {
            socket: socket.to_path_buf(),
        };
        let out = tmux
            .command()
            .args(["new-session", "-d", "-x", "160", "-y", "50", "sh"])
            .arg(script)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.arg("-S").arg(&self.socket);
        command
    }

    fn screen(&self) -> String {
        self.capture(&[])
    }

    /// The screen with its colours, as escape sequences.
    fn screen_in_colour(&self) -> String {
        self.capture(&["-e"])
    }

    fn capture(&self, extra: &[&str]) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-J", "-S", "-200"])
            .args(extra)
            .output()
            .unwrap();
        stdout(&out)
    }

    fn keys(&self, keys: &[&str]) {
        let out = self.command().arg("send-keys").args(keys).output().unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    }

    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let screen = self.screen();
            if done(&screen) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Tmux {
    /// At the shell's prompt: Ctrl-C ends a running command, and the shell goes on.
    fn assert_ctrl_c_interrupts_only_the_command(&self) {
        // A duration no other session runs, to see this `sleep` start before Ctrl-C.
        static SLEEPS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seconds = 60_000
            + std::process::id() % 10_000 * 10
            + SLEEPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.keys(&[&format!("sleep {seconds}; echo not-interrupted"), "Enter"]);
        crate::common::wait_for("the command to run", || {
            running(&format!("^sleep {seconds}$"))
        });
        self.keys(&["C-c"]);
        self.keys(&["echo after-ctrl-c", "Enter"]);
        self.wait_for("the shell to survive Ctrl-C", |s| {
            output_lines(s, "after-ctrl-c") == 1
        });
        assert!(!self.screen().contains("\nnot-interrupted"));
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}

/// The shell command that runs toolbox with `options` in this test's clean environment.
fn toolbox_line(t: &TestEnv, options: &str) -> String {
    format!(
        "env -i PATH=\"$PATH\" TERM=screen HOME={home} USER=tester TOOLBOX_DIRECTORY={dir} \
         TOOLBOX_DOCKER_IMAGE={image} TOOLBOX_NAME={name} {bin} {options}",
        home = t.home.display(),
        dir = t.toolboxes.display(),
        image = t.image,
        name = t.name,
        bin = env!("CARGO_BIN_EXE_toolbox"),
    )
}

/// Lines of the screen that are exactly `text` (output, not the echo of a typed command).
fn output_lines(screen: &str, text: &str) -> usize {
    screen
        .lines()
        .filter(|line| line.trim_end() == text)
        .count()
}

/// Whether tmux is here; when it is not, fails if the e2e tests are required, else says
/// that `test` is skipped.
fn have_tmux(test: &str) -> bool {
    if Command::new("tmux").arg("-V").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("TOOLBOX_E2E").as_deref() != Ok("required"),
        "TOOLBOX_E2E=required but tmux is missing (scripts/setup-host installs it)"
    );
    eprintln!("skipped {test}: tmux is missing");
    false
}

#[test]
fn a_shell_in_a_real_terminal() {
    let Some(t) = TestEnv::new("terminal", DEBIAN_IMAGE) else {
        return;
    };
    if !have_tmux("a_shell_in_a_real_terminal") {
        return;
    }
    let script = t.root.join("session.sh");
    fs::write(
        &script,
        format!(
            "cd /\n\
             {bin} --bogus-colour\n\
             NO_COLOR=1 {bin} --bogus-plain\n\
             {toolbox}\n\
             echo \"toolbox exited $?\"\n\
             stty -a | tr ' ;' '\\n\\n' | grep -x -e echo -e -echo -e icanon -e -icanon | \
             tr '\\n' ' ' | sed 's/^/terminal: /'\n\
             echo\n\
             sleep 600\n",
            bin = env!("CARGO_BIN_EXE_toolbox"),
            toolbox = toolbox_line(&t, ""),
        ),
    )
    .unwrap();
    let tmux = Tmux::start(&t.root.join("tmux.sock"), &script);

    // A first entry creates the toolbox, says where the host is and how to leave, and
    // leaves no progress bar behind on the screen.
    tmux.wait_for("the prompt", |s| {
        s.lines()
            .any(|l| l.starts_with("root@") && l.ends_with("# "))
            || s.lines()
                .any(|l| l.starts_with("root@") && l.ends_with('#'))
    });
    let screen = tmux.screen();
    assert!(
        screen.contains(&format!(
            "toolbox: entering `{}`: the host's / is at /media/root; `exit` or Ctrl-D leaves",
            t.toolbox_name()
        )),
        "{screen}"
    );
    assert!(
        !screen.contains("unpacking "),
        "progress left on screen:\n{screen}"
    );

    // Errors are red on a terminal, unless NO_COLOR is set.
    let coloured = tmux.screen_in_colour();
    let line = |flag: &str| {
        coloured
            .lines()
            .find(|l| l.contains(flag))
            .unwrap_or_else(|| panic!("no error about {flag}:\n{coloured}"))
            .to_string()
    };
    assert!(line("--bogus-colour").contains("31m"), "{coloured}");
    assert!(!line("--bogus-plain").contains('\x1b'), "{coloured}");

    tmux.keys(&["echo $((6 * 7))-ok", "Enter"]);
    tmux.wait_for("the command's output", |s| output_lines(s, "42-ok") == 1);

    tmux.assert_ctrl_c_interrupts_only_the_command();

    tmux.keys(&["exit", "Enter"]);
    tmux.wait_for("toolbox to exit", |s| s.contains("toolbox exited 0"));
    tmux.wait_for("the terminal's modes", |s| s.contains("terminal: "));
    let screen = tmux.screen();
    let modes = screen
        .lines()
        .find(|l| l.starts_with("terminal: "))
        .unwrap()
        .to_string();
    assert_eq!(modes.trim_end(), "terminal: icanon echo", "{screen}");
}

#[test]
fn an_spc_shell_in_a_real_terminal() {
    spc_shell_in_a_real_terminal("terminal_spc", "");
}

#[test]
fn a_throwaway_spc_shell_in_a_real_terminal() {
    spc_shell_in_a_real_terminal("terminal_spc_rm", "--rm");
}

/// A session in a super privileged container, persistent or (with `--rm`) throwaway, in
/// a real terminal.
fn spc_shell_in_a_real_terminal(test: &str, options: &str) {
    let Some(t) = TestEnv::new(test, BUSYBOX_IMAGE) else {
        return;
    };
    if !have_tmux(test) {
        return;
    }
    let before = t.root.join("stty.before");
    let after = t.root.join("stty.after");
    let script = t.root.join("session.sh");
    fs::write(
        &script,
        format!(
            "cd /\n\
             stty -g > {before}\n\
             {toolbox}\n\
             echo \"toolbox exited $?\"\n\
             stty -g > {after}\n\
             sleep 600\n",
            before = before.display(),
            after = after.display(),
            toolbox = toolbox_line(&t, &format!("--runtime spc {options}")),
        ),
    )
    .unwrap();
    let tmux = Tmux::start(&t.root.join("tmux.sock"), &script);
    tmux.wait_for("the prompt", |s| s.lines().any(|l| l.trim_end() == "/ #"));

    tmux.keys(&["echo $((6 * 7))-ok $TERM", "Enter"]);
    tmux.wait_for("the command's output", |s| {
        output_lines(s, "42-ok screen") == 1
    });

    // The container's terminal has the window's size, and follows it.
    tmux.keys(&["stty size", "Enter"]);
    tmux.wait_for("the first size", |s| output_lines(s, "50 160") == 1);
    let out = tmux
        .command()
        .args(["resize-window", "-x", "100", "-y", "30"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    // The new size reaches the container's terminal a moment later: ask until it shows.
    tmux.keys(&["stty size", "Enter"]);
    tmux.wait_for("the new size", |s| {
        let shown = output_lines(s, "30 100") >= 1;
        if !shown {
            tmux.keys(&["stty size", "Enter"]);
        }
        shown
    });

    // Ctrl-C reaches the command in the container, not toolbox.
    tmux.assert_ctrl_c_interrupts_only_the_command();

    tmux.keys(&["exit 3", "Enter"]);
    tmux.wait_for("toolbox to exit", |s| s.contains("toolbox exited 3"));
    // Written whole: `stty -g` prints one line.
    tmux.wait_for("the terminal's modes", |_| {
        fs::read_to_string(&after).is_ok_and(|modes| modes.ends_with('\n'))
    });
    assert_eq!(
        fs::read_to_string(&after).unwrap(),
        fs::read_to_string(&before).unwrap(),
        "the terminal was not restored"
    );
}
