//! sudo: become root when run by a normal user, as the CoreOS script did by calling sudo
//! for each step. toolbox re-executes itself through `TOOLBOX_SUDO` (default `sudo`),
//! keeping the variables that shape the result: sudo records the invoking user in
//! `SUDO_USER`/`SUDO_UID`, so the toolbox is named after them and their files are read.

use std::convert::Infallible;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::host::PROXY_VARIABLES;
use crate::host::{CONTAINER_HOST, DOCKER_HOST, Env, SYSTEM_CONFIG, XDG_CONFIG_HOME};
use crate::model::config::KEYS;

/// The command that re-runs toolbox as root: `sudo_words` (the `TOOLBOX_SUDO` words),
/// sudo's `--preserve-env=` for the variables set here, then this binary and `args`.
pub fn command(sudo_words: &[String], exe: &Path, args: &[OsString], env: &Env) -> Result<Command> {
    let Some((program, options)) = sudo_words.split_first() else {
        bail!("TOOLBOX_SUDO is empty; run toolbox as root");
    };
    let mut command = Command::new(program);
    command.args(options);
    // --preserve-env=LIST is sudo's (1.8.21+); other tools get the command alone.
    if Path::new(program).file_name().is_some_and(|n| n == "sudo") {
        let kept: Vec<&str> = KEYS
            .iter()
            .map(|k| k.name)
            .chain([DOCKER_HOST, CONTAINER_HOST, XDG_CONFIG_HOME, SYSTEM_CONFIG])
            .chain(PROXY_VARIABLES.iter().copied())
            .filter(|name| env.get(name).is_some())
            .collect();
        if !kept.is_empty() {
            command.arg(format!("--preserve-env={}", kept.join(",")));
        }
        command.arg("--");
    }
    command.arg(exe).args(args);
    Ok(command)
}

/// Replaces this process with toolbox run through sudo.
pub fn reexec(sudo_words: &[String], args: &[OsString], env: &Env) -> Result<Infallible> {
    let exe =
        std::env::current_exe().context("cannot find toolbox's own binary to re-run it as root")?;
    let mut command = command(sudo_words, &exe, args, env)?;
    let error = command.exec();
    Err(error).with_context(|| format!("cannot run `{}` to become root", sudo_words[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_keeps_the_variables_that_matter() {
        let env = Env::from_pairs([
            ("TOOLBOX_DOCKER_IMAGE", "debian"),
            ("https_proxy", "http://proxy:3128"),
            ("DOCKER_HOST", "unix:///run/docker.sock"),
            ("SECRET", "x"),
        ]);
        let words = vec!["sudo".to_string()];
        let command = command(
            &words,
            Path::new("/usr/bin/toolbox"),
            &["list".into()],
            &env,
        )
        .unwrap();
        let args: Vec<_> = command.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(command.get_program(), "sudo");
        assert_eq!(
            args,
            [
                "--preserve-env=TOOLBOX_DOCKER_IMAGE,DOCKER_HOST,https_proxy",
                "--",
                "/usr/bin/toolbox",
                "list"
            ]
        );
    }

    #[test]
    fn other_tools_get_the_command_alone() {
        let words = vec!["doas".to_string(), "-n".to_string()];
        let env = Env::from_pairs([("TOOLBOX_DOCKER_IMAGE", "debian")]);
        let command = command(&words, Path::new("/usr/bin/toolbox"), &[], &env).unwrap();
        let args: Vec<_> = command.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args, ["-n", "/usr/bin/toolbox"]);
        assert!(super::command(&[], Path::new("/x"), &[], &env).is_err());
    }
}
