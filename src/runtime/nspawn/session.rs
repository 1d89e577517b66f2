//! runtime::nspawn::session: the first process of every session inside a toolbox:
//! toolbox's own binary, bound read-only at [`PATH_IN_TOOLBOX`], which systemd-nspawn
//! starts as root. It becomes the session's user, resolved from the tree's own
//! `/etc/passwd` and `/etc/group` (systemd-nspawn's `--user` needs `getent` in the image,
//! which busybox, Alpine and distroless bases lack), and runs the command, or a login
//! shell, as its child. Its exit status is the command's, or 128 + N when signal N killed
//! it, as shells and `docker run` report (systemd-nspawn alone exits 1 then).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::exit::CommandError;
use crate::model::account;
use crate::sys;

/// The name toolbox answers to as a session's first process.
pub const NAME: &str = "toolbox-session";
/// Where toolbox's binary is bound for that: systemd-nspawn's own `/run`, nothing in the
/// tree.
pub const PATH_IN_TOOLBOX: &str = "/run/toolbox-session";

/// The login shells a session without a command starts, in order, as systemd-nspawn did.
const SHELLS: [&str; 2] = ["/bin/bash", "/bin/sh"];

/// The arguments systemd-nspawn passes: `[--user NAME] -- [CMD ARGS...]`.
pub fn arguments(user: &str, command: &[OsString]) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    if user != "root" {
        args.extend(["--user".into(), user.into()]);
    }
    args.push("--".into());
    args.extend(command.iter().cloned());
    args
}

/// Runs inside the toolbox with `args` (after the program name); returns the status.
/// It dies with systemd-nspawn, its parent (the host's PID namespace is shared), and the
/// command with it: nothing of a session's command is left running when toolbox or
/// systemd-nspawn is killed outright (what the command detached itself, with `setsid`,
/// stays, as `rm` and `update` find).
pub fn run(args: Vec<OsString>) -> Result<u8> {
    sys::die_with_parent(std::os::unix::process::parent_id())
        .context("cannot start the session")?;
    let mut rest = args.as_slice();
    let mut user = None;
    if let [flag, name, tail @ ..] = rest
        && flag == "--user"
    {
        user = Some(name.to_string_lossy().into_owned());
        rest = tail;
    }
    let command = match rest {
        [separator, command @ ..] if separator == "--" => command,
        _ => bail!("usage: {NAME} [--user NAME] -- [CMD [ARGS...]]"),
    };
    let login = match &user {
        Some(user) => log_in(user)?,
        None => Vec::new(),
    };
    let toolbox = std::env::var("TOOLBOX_NAME").unwrap_or_default();
    let mut child = match command.split_first() {
        Some((program, args)) => {
            let mut child = Command::new(program);
            child.args(args);
            child
        }
        None => {
            let shell = SHELLS
                .iter()
                .find(|shell| Path::new(shell).exists())
                .copied()
                .unwrap_or(SHELLS[1]);
            let name = Path::new(shell).file_name().unwrap_or_default();
            let mut child = Command::new(shell);
            // `-bash`: a login shell, as login(1) and systemd-nspawn start one.
            child.arg0(format!("-{}", name.to_string_lossy()));
            child
        }
    };
    child.envs(login);
    let shown = || {
        command.first().map_or_else(
            || "the login shell".into(),
            |c| c.to_string_lossy().into_owned(),
        )
    };
    let status = match sys::signals::run_child(&mut child) {
        Ok(status) => status,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CommandError::NotFound {
                command: shown(),
                toolbox,
                hint: None,
            }
            .into());
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(CommandError::NotExecutable {
                command: shown(),
                reason: "not executable (permission denied)".into(),
            }
            .into());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot run {}", shown())),
    };
    Ok(crate::exit::of_command(status))
}

/// The text of the tree's account file `path`, empty when there is none: a regular file
/// of at most [`crate::model::account::MAX_FILE`] bytes, or refused (a FIFO would hang the session, a
/// device feed it without end).
fn account_file(path: &str) -> Result<String> {
    let refused = |why: String| anyhow::anyhow!("cannot read the toolbox's {path}: {why}");
    let file = sys::open_regular(Path::new(path), rustix::fs::OFlags::RDONLY)
        .map_err(|e| refused(e.to_string()))?;
    let Some(file) = file else {
        return Ok(String::new());
    };
    let bytes = sys::read_bounded(file, crate::model::account::MAX_FILE)
        .map_err(|e| refused(e.to_string()))?
        .ok_or_else(|| {
            refused(format!(
                "it is larger than {} MiB",
                crate::model::account::MAX_FILE >> 20
            ))
        })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Becomes `user` of the tree (its groups and IDs, its home as working directory) and
/// returns the variables a login gives it.
fn log_in(user: &str) -> Result<Vec<(&'static str, String)>> {
    let passwd = account_file("/etc/passwd")?;
    let group = account_file("/etc/group")?;
    let Some(account) = account::find(&passwd, &group, user) else {
        bail!(
            "user `{user}` is not in the toolbox's /etc/passwd; add it, or choose another --user"
        );
    };
    sys::become_user(account.uid, account.gid, &account.groups)
        .with_context(|| format!("cannot become user `{user}`"))?;
    if std::env::set_current_dir(&account.home).is_err() {
        let _ = std::env::set_current_dir("/");
    }
    Ok(vec![
        ("HOME", account.home.clone()),
        ("USER", account.name.clone()),
        ("LOGNAME", account.name.clone()),
        ("SHELL", account.shell),
    ])
}
