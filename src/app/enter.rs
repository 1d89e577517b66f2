//! enter: the default action, a session in the toolbox (`toolbox`, `toolbox CMD`,
//! `toolbox run`, `-c`): what to run, then the runtime that runs it.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::app::cli::Action;
use crate::app::context::RunContext;
use crate::engine;
use crate::host::kernel::Kernel;
use crate::host::ui;
use crate::model::config;
use crate::model::plan::{Payload, Runtime, UpdateMode};
use crate::runtime::nspawn::enter::{self, Session};
use crate::runtime::{spc, target};
use crate::store::toolboxes;
use crate::sys;

/// How long `--dry-run` waits for the engine to read an SPC image's `RUN` label.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(2);

/// Enters the toolbox, creating it first if needed. On the normal path for a copy
/// toolbox this never returns: the process becomes systemd-nspawn.
pub fn run(ctx: &RunContext, payload: Payload) -> Result<u8> {
    if ctx.runtime == Runtime::Spc {
        if let config::Origin::Host(reason) = &ctx.settings.setting(config::RUNTIME).origin {
            // Chosen for a host without systemd-nspawn: only Docker and Podman run SPCs.
            if matches!(ctx.access.found(), Ok(engine::Found::Containerd)) {
                bail!(
                    "{reason} and its engine, containerd, runs no super privileged container \
                     for toolbox: install systemd-nspawn on the host (Debian: systemd-container)"
                );
            }
            if !ctx.quiet() {
                ui::say(format_args!(
                    "{reason}: the session runs in a super privileged container through the \
                     host's engine"
                ));
            }
        }
        return spc(ctx, payload);
    }
    let plan = ctx.plan(payload)?;
    if !ctx.dry_run {
        ctx.become_root()?;
    }
    let target = plan
        .target
        .as_ref()
        .map(|request| target::find(request, &ctx.access, &ctx.paths.proc, !ctx.dry_run))
        .transpose()?;
    if let Some(found) = &target
        && !ctx.quiet()
    {
        found.explain();
    }
    let entry = enter::prepare(
        plan,
        &ctx.env,
        &ctx.paths,
        !ctx.dry_run && sys::is_root(),
        target,
    )?;
    if ctx.dry_run {
        println!("{}", ctx.shown(&entry.command(ctx.quiet())));
        return Ok(0);
    }
    let session = Session {
        access: &ctx.access,
        paths: &ctx.paths,
        passwd: &ctx.passwd,
        update: UpdateMode::of(&ctx.settings)?,
        update_interval: UpdateMode::interval(&ctx.settings)?,
        verbosity: ctx.verbosity,
        show_secrets: ctx.show_secrets,
    };
    enter::enter(entry, &session)
}

/// Runs a session in the toolbox's super privileged container (see `spc`).
fn spc(ctx: &RunContext, payload: Payload) -> Result<u8> {
    let plan = ctx.plan(payload)?;
    let exe = toolboxes::own_binary(&plan.directory, !ctx.dry_run)?;
    let privilege = match sys::capability_bounding_set(&ctx.paths.proc) {
        Some((bounding, last)) => spc::Privilege::for_bounding_set(bounding, last),
        None => spc::Privilege::Full,
    };
    let kernel = plan.tracing.then(|| Kernel::read(&ctx.paths.proc));
    if !ctx.dry_run {
        ctx.become_root()?;
    }
    let target = plan
        .target
        .as_ref()
        .map(|request| target::find(request, &ctx.access, &ctx.paths.proc, !ctx.dry_run))
        .transpose()?;
    let target_stage = toolboxes::target_stage(&plan.directory, &plan.name, std::process::id());
    // The target's files are staged where the engine can see them; an engine in another
    // mount namespace binds the target's root alone, by its host path.
    let stage_seen = target.is_some()
        && ctx
            .access
            .endpoint()
            .is_ok_and(|engine| engine.shares_mounts(&ctx.paths.proc));
    let resolve = |run_label| {
        spc::Spc::resolve(
            &ctx.settings,
            &plan,
            spc::Inputs {
                env: &ctx.env,
                passwd: &ctx.passwd,
                exe: &exe.display().to_string(),
                privilege,
                tty: std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
                throwaway: ctx.throwaway,
                run_label,
                use_run_label: ctx.use_run_label,
                kernel: kernel.as_ref(),
                target: target.as_ref().map(|found| &found.target),
                target_stage: stage_seen.then_some(target_stage.as_path()),
            },
        )
    };
    if ctx.dry_run {
        let run_label = match spc::session::run_label(&plan.image, &ctx.access, ENGINE_TIMEOUT) {
            Ok(label) => label,
            Err(e) => {
                ui::warn(format_args!("{e:#}; its RUN label, if any, is not shown"));
                None
            }
        };
        println!("{}", ctx.shown(&resolve(run_label)?));
        return Ok(0);
    }
    // The target's files, staged for this session until it ends.
    let _staged = match &target {
        Some(found) => {
            found.explain();
            found.watch(ctx.quiet());
            toolboxes::make_directory(&plan.directory)?;
            toolboxes::remove_stale_stages(&plan.directory, &plan.name)?;
            match stage_seen {
                true => found.stage(&target_stage, ctx.quiet())?,
                false => {
                    found.volumes_unseen(ctx.quiet());
                    None
                }
            }
        }
        None => None,
    };
    let options = spc::session::Options {
        update: UpdateMode::of(&ctx.settings)?,
        quiet: ctx.quiet(),
        verbose: ctx.verbose(),
    };
    spc::session::enter(&plan.image, resolve, &ctx.access, &plan.directory, options)
}

/// What to run: a login shell, a command, or `-c SCRIPT` as `/bin/sh -c SCRIPT`.
pub fn payload(shell_command: Option<OsString>, action: Option<Action>) -> Payload {
    let command = match action {
        Some(Action::Run { command }) | Some(Action::External(command)) => command,
        _ => Vec::new(),
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
