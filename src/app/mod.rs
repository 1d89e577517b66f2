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
use std::time::Duration;

use anyhow::Result;

use crate::app::cli::Action;
use crate::app::context::RunContext;
use crate::host;
use crate::runtime::{host_exec, spc};
use crate::sys;

/// How long `list`, `rm --all` and name lookups wait for the engine to list super
/// privileged containers.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(2);

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
    if invoked_as.as_deref() == Some(host_exec::NAME.as_ref()) {
        let host_root = std::env::var_os(host::HOST_ROOT).map(PathBuf::from);
        return host_exec::run(args[1..].to_vec(), Path::new("/proc"), host_root.as_deref());
    }
    let cli = match cli::parse(args.iter().cloned()) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            print!("{e}");
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
    // A normal user's run that will be re-run through sudo reads the settings twice; the
    // root run is the one that reports on them.
    let reruns_as_root = !sys::is_root()
        && !matches!(
            cli.action,
            Some(Action::List { .. }) | Some(Action::Config { .. })
        )
        && !cli.options.dry_run;
    let ctx = RunContext::load(&cli.options, &args[1..], !reruns_as_root)?;
    match cli.action {
        Some(Action::List { json, names }) => list::run(&ctx, json, names),
        Some(Action::Rm { names, all, force }) => rm::run(&ctx, &names, all, force),
        Some(Action::Update { name, force }) => update::run(&ctx, name, force),
        Some(Action::Import { archive }) => import::run(&ctx, &archive),
        Some(Action::Config { path }) => config::run(&ctx, path),
        action => enter::run(&ctx, enter::payload(cli.shell_command, action)),
    }
}

/// clap's multi-line usage error, as one line.
fn usage_error(error: &clap::Error) -> anyhow::Error {
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    anyhow::anyhow!("{first}; see `toolbox --help`")
}
