//! `toolbox update`: rebuilds a toolbox, or replaces a super privileged container, when
//! its image changed.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{Result, bail};

use crate::app::context::RunContext;
use crate::app::names::{self, Named};
use crate::engine::{Access, short_id};
use crate::host::ui;
use crate::model::image::ImageRef;
use crate::model::plan::{self, Payload};
use crate::provision::{self, Target};
use crate::runtime::spc;
use crate::store::toolboxes;

/// `toolbox update [--force] [--rollback] [NAME]`.
pub fn run(ctx: &RunContext, name: Option<String>, force: bool, rollback: bool) -> Result<u8> {
    ctx.become_root()?;
    let plan = ctx.plan(Payload::Shell)?;
    let named = match (name, ctx.runtime) {
        (None, plan::Runtime::Nspawn) => None,
        (None, plan::Runtime::Spc) => Some(Named::Spc(plan.name.clone())),
        (Some(name), runtime) => Some(names::find(
            &plan.directory,
            &ctx.invoker.name,
            &name,
            runtime,
            &ctx.access,
        )?),
    };
    let target = match named {
        None => Target::of(&plan),
        Some(Named::Spc(name)) => {
            if rollback {
                bail!(
                    "toolbox `{name}` (spc): a super privileged container keeps no previous \
                     one to go back to"
                );
            }
            update_spc(
                &plan.directory,
                &ctx.access,
                &name,
                force,
                ctx.quiet(),
                &mut std::io::stdout(),
            )?;
            return Ok(0);
        }
        Some(Named::Tree(name)) => {
            let path = plan.directory.join(&name);
            let image = match toolboxes::complete_metadata(&path)? {
                Some(metadata) => ImageRef::parse(&metadata.image, "latest")?,
                None => plan.image.clone(),
            };
            Target {
                name,
                image,
                ..Target::of(&plan)
            }
        }
    };
    let report = &mut std::io::stdout();
    if rollback {
        provision::rollback(&target, &ctx.paths.proc, force, ctx.quiet(), report)?;
        return Ok(0);
    }
    provision::update(
        &target,
        &ctx.paths.proc,
        &ctx.access,
        force,
        &|would| confirm(&format!("{would}; discard it?")),
        (ctx.quiet(), ctx.verbose(), false),
        report,
    )?;
    Ok(0)
}

/// Asks `question` on the terminal, when there is one to answer it: whether the user
/// answered yes. Without a terminal, the answer is no (and `--force` says yes).
fn confirm(question: &str) -> bool {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() || !std::io::stderr().is_terminal() {
        return false;
    }
    eprint!("toolbox: {} [y/N] ", ui::escaped(question));
    let mut answer = String::new();
    stdin.read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y" | "yes")
}

/// `toolbox update` of a super privileged container: see [`spc::session::update`].
pub fn update_spc(
    directory: &Path,
    access: &Access,
    name: &str,
    force: bool,
    quiet: bool,
    report: &mut dyn Write,
) -> Result<()> {
    let updated = spc::session::update(access, directory, name, force, &confirm, quiet)?;
    if !quiet {
        match updated {
            spc::session::SpcUpdate::UpToDate { image, image_id } => writeln!(
                report,
                "toolbox `{name}` (spc) is up to date ({image} {})",
                short_id(&image_id)
            )?,
            spc::session::SpcUpdate::Replaced {
                image,
                old_id,
                new_id,
            } => writeln!(
                report,
                "toolbox `{name}` (spc) removed for {image} ({} -> {}); its next session creates it anew",
                short_id(&old_id),
                short_id(&new_id)
            )?,
        }
    }
    Ok(())
}
