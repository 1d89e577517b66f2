//! `toolbox update`: rebuilds a toolbox, or replaces a super privileged container, when
//! its image changed.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use crate::app::context::RunContext;
use crate::app::names::{self, Named};
use crate::engine::{Access, short_id};
use crate::model::image::ImageRef;
use crate::model::plan::{self, Payload};
use crate::provision::{self, Target};
use crate::runtime::spc;
use crate::store::toolboxes;

/// `toolbox update [--force] [NAME]`.
pub fn run(ctx: &RunContext, name: Option<String>, force: bool) -> Result<u8> {
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
    provision::update(
        &target,
        &ctx.paths.proc,
        &ctx.access,
        force,
        ctx.quiet(),
        ctx.verbose(),
        report,
    )?;
    Ok(0)
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
    let updated = spc::session::update(access, directory, name, force, quiet)?;
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
