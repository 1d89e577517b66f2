//! app: the command line and what each command does. [`run`] is the whole program:
//! argv to an exit status; it reads the command line, loads the [`context`] once, and
//! hands the action to its command, one file each.

pub mod cli;
pub mod config;
pub mod context;
pub mod enter;
pub mod help;
pub mod import;
pub mod list;
pub mod names;
pub mod rm;
pub mod sudo;
pub mod update;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::app::cli::Action;
use crate::app::context::RunContext;
use crate::host;
use crate::runtime::nspawn::session;
use crate::runtime::{guard, host_exec, spc};
use crate::sys;

pub use crate::runtime::DAEMON_TIMEOUT;

/// Runs toolbox with these arguments. On the normal path this never returns: the process
/// becomes systemd-nspawn. Otherwise it returns the status to exit with (after `--help`,
/// `--version`, `--dry-run` or a management command).
pub fn run(args: impl IntoIterator<Item = OsString>) -> Result<u8> {
    let args: Vec<OsString> = args.into_iter().collect();
    let invoked_as = args
        .first()
        .map(|a| Path::new(a).file_name().unwrap_or_default().to_owned());
    if invoked_as.as_deref() == Some(spc::IDLE_NAME.as_ref()) {
        return Ok(spc::session::idle());
    }
    if invoked_as.as_deref() == Some(session::NAME.as_ref()) {
        return session::run(args[1..].to_vec());
    }
    if invoked_as.as_deref() == Some(guard::NAME.as_ref()) {
        return guard::run(args[1..].to_vec());
    }
    if invoked_as.as_deref() == Some(host_exec::NAME.as_ref()) {
        let host_root = std::env::var_os(host::HOST_ROOT).map(PathBuf::from);
        return host_exec::run(args[1..].to_vec(), Path::new("/proc"), host_root.as_deref());
    }
    let cli = match cli::parse(args.iter().cloned()) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            print!("{}", cli::filter_help(&e.render().to_string(), &args));
            return Ok(0);
        }
        Err(e) => return Err(usage_error(&e)),
    };
    // These need no settings.
    match &cli.action {
        Some(Action::Completions { shell }) => return help::completions_command(*shell),
        Some(Action::Manpages { directory }) => return help::manpages_command(directory),
        _ => {}
    }
    let from_image = enter_host_from_image()?;
    // A normal user's run that will be re-run through sudo reads the settings twice; the
    // root run is the one that reports on them.
    let reruns_as_root = !sys::is_root()
        && !matches!(
            cli.action,
            Some(Action::List { .. }) | Some(Action::Config { .. })
        )
        && !cli.options.dry_run;
    let ctx = RunContext::load(&cli.options, &args[1..], !reruns_as_root, from_image)?;
    match cli.action {
        Some(Action::List { json, names }) => list::run(&ctx, json, names),
        Some(Action::Rm { names, all, force }) => rm::run(&ctx, &names, all, force),
        Some(Action::Update {
            name,
            force,
            rollback,
        }) => update::run(&ctx, name, force, rollback),
        Some(Action::Import { archive }) => import::run(&ctx, &archive),
        Some(Action::Config { path }) => config::run(&ctx, path),
        action => {
            let first = match &action {
                Some(Action::External(words)) => words.first().cloned(),
                _ => None,
            };
            enter::run(&ctx, enter::payload(cli.shell_command, action))
                .map_err(|e| with_suggestion(e, first))
        }
    }
}

/// For toolbox run from its image (`TOOLBOX_HOST_MOUNT` set, see `host::container`):
/// checks the container's shape and moves into the host's namespaces, before anything is
/// read, so that settings, toolboxes, engines and systemd-nspawn are the host's. Returns
/// where the container has the host's `/`. Runs while the process has one thread.
fn enter_host_from_image() -> Result<Option<PathBuf>> {
    let Some(mount) = std::env::var_os(host::container::HOST_MOUNT).filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    let mount = PathBuf::from(mount);
    let proc = Path::new("/proc");
    let host = host::container::check(proc, &mount)?;
    let not_host_root = || host::container::Missing::HostMount(mount.clone());
    let host_root = sys::open_dir(&mount).map_err(|_| not_host_root())?;
    sys::join_host(proc, host)
        .context("cannot move into the host's namespaces from the container")?;
    // Only now can what the container has there be compared with the host's `/`.
    if !sys::is_same_file(&host_root, Path::new("/")).unwrap_or(false) {
        return Err(not_host_root().into());
    }
    Ok(Some(mount))
}

/// A command not found in the toolbox that is a typo of a subcommand (`toolbox lsit`)
/// gets the subcommand suggested; it still ran as a command, as the CoreOS script did.
fn with_suggestion(mut error: anyhow::Error, typed: Option<OsString>) -> anyhow::Error {
    let typed = typed.and_then(|t| t.into_string().ok());
    if let (Some(typed), Some(crate::exit::CommandError::NotFound { command, hint, .. })) =
        (typed, error.downcast_mut::<crate::exit::CommandError>())
        && *command == typed
        && let Some(subcommand) = cli::subcommands().into_iter().find(|s| near(&typed, s))
    {
        *hint = Some(format!(
            "did you mean `toolbox {subcommand}`? (`toolbox run {typed}` runs it inside)"
        ));
    }
    error
}

/// Whether `typed` is one slip away from `word`: one letter added, dropped or changed, or
/// two neighbours swapped.
fn near(typed: &str, word: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (typed.chars().collect(), word.chars().collect());
    if a == b {
        return false;
    }
    if a.len() == b.len() {
        let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        return differ.len() == 1
            || (differ.len() == 2
                && differ[1] == differ[0] + 1
                && a[differ[0]] == b[differ[1]]
                && a[differ[1]] == b[differ[0]]);
    }
    let (short, long) = if a.len() < b.len() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    if long.len() != short.len() + 1 {
        return false;
    }
    (0..long.len()).any(|skip| {
        long.iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, c)| c)
            .eq(short.iter())
    })
}

/// clap's multi-line usage error, whole, as one line: the error with what it lists (the
/// missing arguments, clap's suggestion), the usage line, and where help is.
fn usage_error(error: &clap::Error) -> anyhow::Error {
    anyhow::anyhow!("{}", usage_line(&error.render().to_string()))
}

fn usage_line(rendered: &str) -> String {
    let mut message = Vec::new();
    let mut usage = None;
    for line in rendered.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(text) = line.strip_prefix("Usage: ") {
            usage = Some(text.to_string());
        } else if !line.starts_with("For more information") {
            message.push(line.strip_prefix("error: ").unwrap_or(line).to_string());
        }
    }
    let mut text = message.join(" ");
    if let Some(usage) = &usage {
        text.push_str(&format!(" (usage: {usage})"));
    }
    // Help for the subcommand the usage line names, if any.
    let command = usage
        .as_deref()
        .and_then(|u| u.split_whitespace().nth(1))
        .filter(|word| !word.starts_with(['[', '<', '-']))
        .map_or(String::new(), |word| format!(" {word}"));
    format!("{text}; see `toolbox{command} --help`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(args: &[&str]) -> String {
        let args = std::iter::once("toolbox").chain(args.iter().copied());
        usage_error(&cli::parse(args.map(OsString::from)).unwrap_err()).to_string()
    }

    #[test]
    fn slips_are_one_edit_or_one_swap() {
        for (typed, word) in [
            ("lsit", "list"),
            ("lst", "list"),
            ("listt", "list"),
            ("updte", "update"),
            ("rn", "rm"),
        ] {
            assert!(near(typed, word), "{typed} {word}");
        }
        for (typed, word) in [
            ("list", "list"),
            ("ls", "list"),
            ("tsil", "list"),
            ("strace", "rm"),
        ] {
            assert!(!near(typed, word), "{typed} {word}");
        }
    }

    #[test]
    fn a_mistyped_subcommand_that_is_no_command_gets_a_suggestion() {
        let not_found = |command: &str| {
            anyhow::Error::from(crate::exit::CommandError::NotFound {
                command: command.into(),
                toolbox: "core-fedora-latest".into(),
                hint: None,
            })
        };
        assert_eq!(
            with_suggestion(not_found("lsit"), Some("lsit".into())).to_string(),
            "`lsit`: command not found in toolbox `core-fedora-latest`; did you mean \
             `toolbox list`? (`toolbox run lsit` runs it inside)"
        );
        assert_eq!(
            with_suggestion(not_found("gdbb"), Some("gdbb".into())).to_string(),
            "`gdbb`: command not found in toolbox `core-fedora-latest`"
        );
        // `toolbox run lsit` is taken at its word.
        assert!(
            !with_suggestion(not_found("lsit"), None)
                .to_string()
                .contains("did you mean")
        );
    }

    #[test]
    fn usage_errors_say_what_is_missing_and_how_to_use_it() {
        assert_eq!(
            error_of(&["rm"]),
            "the following required arguments were not provided: <NAME>... \
             (usage: toolbox rm <NAME>...); see `toolbox rm --help`"
        );
        for (args, wanted) in [
            (&["import"][..], "<FILE>"),
            (&["run"], "<CMD>..."),
            (&["completions"], "<SHELL>"),
        ] {
            let error = error_of(args);
            assert!(
                error.contains(&format!("were not provided: {wanted}"))
                    && error.contains(&format!("(usage: toolbox {}", args[0]))
                    && error.ends_with(&format!("see `toolbox {} --help`", args[0])),
                "{error}"
            );
        }
        let error = error_of(&["--imgae", "x"]);
        assert!(
            error.starts_with(
                "unexpected argument '--imgae' found tip: a similar argument exists: '--image'"
            ),
            "{error}"
        );
        assert!(error.ends_with("see `toolbox --help`"), "{error}");
    }
}
