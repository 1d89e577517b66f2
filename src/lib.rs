//! toolbox: a debugging userland from a container image, entered with systemd-nspawn with
//! the host's PID, IPC and UTS namespaces and network shared and the host's `/` at
//! `/media/root`. [`run`] is the whole program; `main.rs` only maps its result to an exit
//! status.

pub mod cli;
pub mod config;
pub mod engine;
pub mod host;
pub mod lookup;
pub mod machine;
pub mod nspawn;
pub mod plan;
pub mod provision;
pub mod sys;
pub mod unpack;

use std::ffi::OsString;
use std::io::IsTerminal;

use anyhow::Result;

use crate::cli::Action;
use crate::config::Settings;
use crate::host::{Env, HostPaths, Invoker};
use crate::lookup::CommandError;
use crate::nspawn::{HostInit, Nspawn};
use crate::plan::{Payload, Plan};
use crate::provision::Interrupted;

/// Exit status for every failure of toolbox itself, as container tools use.
pub const EXIT_TOOLBOX_FAILED: u8 = 125;

/// Runs toolbox with these arguments. On the normal path this never returns: the process
/// becomes systemd-nspawn. Otherwise it returns the status to exit with (after `--help`,
/// `--version` or `--dry-run`).
pub fn run(args: impl IntoIterator<Item = OsString>) -> Result<u8> {
    let cli = match cli::parse(args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            print!("{e}");
            return Ok(0);
        }
        Err(e) => return Err(usage_error(&e)),
    };
    let options = &cli.options;
    let quiet = options.quiet;
    let verbose = options.verbose > 0;
    let env = Env::from_process();
    let paths = HostPaths::default();
    let passwd = std::fs::read_to_string(&paths.passwd).unwrap_or_default();
    let invoker = Invoker::identify(&env, &passwd, sys::euid());

    let files = config::files(&paths, &env, &invoker);
    let mut settings = Settings::load(&files, &env)?;
    let overrides = [
        (config::IMAGE, "--image", options.image.clone()),
        (config::TAG, "--tag", options.tag.clone()),
        (config::NAME, "--name", options.name.clone()),
        (config::USER, "--user", options.user.clone()),
        (
            config::DIRECTORY,
            "--directory",
            options.directory.as_ref().map(|d| d.display().to_string()),
        ),
    ];
    for (key, flag, value) in overrides {
        if let Some(value) = value {
            settings.set_option(key, flag, value);
        }
    }
    if !quiet {
        for warning in &settings.warnings {
            eprintln!("toolbox: warning: {warning}");
        }
    }
    if verbose {
        for file in &settings.files_read {
            eprintln!("toolbox: read settings from {}", file.display());
        }
    }

    let plan = Plan::resolve(
        &settings,
        &invoker.name,
        payload(cli.shell_command, cli.action),
    )?;
    let nspawn_cache = plan.directory.join(".nspawn-version");
    let nspawn = Nspawn::find(&env, &nspawn_cache, !options.dry_run && sys::is_root())?;
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let host = HostInit {
        systemd_booted: paths.systemd_booted.exists(),
        terminal,
    };
    let invocation = nspawn::invocation(&plan, &nspawn, host, quiet);

    if options.dry_run {
        println!("{invocation}");
        return Ok(0);
    }
    if !sys::is_root() {
        anyhow::bail!("toolbox needs root to create and enter toolboxes; run it with sudo");
    }
    provision::ensure(&plan, &env, quiet, verbose)?;
    check_payload(&plan)?;
    if verbose {
        eprintln!(
            "toolbox: systemd {} at {}",
            nspawn.version,
            nspawn.program.display()
        );
        eprintln!("toolbox: {invocation}");
    }
    match invocation.exec()? {}
}

fn payload(shell_command: Option<OsString>, action: Option<Action>) -> Payload {
    let command = match action {
        Some(Action::Run { command }) | Some(Action::External(command)) => command,
        None => Vec::new(),
    };
    match shell_command {
        Some(script) => {
            let mut words = vec![OsString::from("/bin/sh"), OsString::from("-c"), script];
            words.extend(command);
            Payload::Command(words)
        }
        None if command.is_empty() => Payload::Shell,
        None => Payload::Command(command),
    }
}

/// Checks, before entering, that the payload can run inside the tree.
fn check_payload(plan: &Plan) -> Result<(), CommandError> {
    let root = plan.path();
    match &plan.payload {
        Payload::Command(command) => lookup::check(
            &root,
            &plan.name,
            &command[0],
            &nspawn::container_path(plan),
        ),
        Payload::Shell => {
            let shells = nspawn::login_shells();
            let mut last = None;
            for shell in shells {
                match lookup::check(&root, &plan.name, shell.as_os_str(), "") {
                    Ok(()) => return Ok(()),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.expect("there is always a login shell to try"))
        }
    }
}

/// clap's multi-line usage error, as one line.
fn usage_error(error: &clap::Error) -> anyhow::Error {
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    anyhow::anyhow!("{first}; see `toolbox --help`")
}

/// The exit status for an error from [`run`]: 126 or 127 when the command cannot run,
/// 128 + N when signal N interrupted toolbox, 125 for everything else.
pub fn exit_status(error: &anyhow::Error) -> u8 {
    if let Some(e) = error.downcast_ref::<CommandError>() {
        return e.exit_status();
    }
    if let Some(Interrupted(signal)) = error.downcast_ref::<Interrupted>() {
        return 128 + *signal as u8;
    }
    EXIT_TOOLBOX_FAILED
}
