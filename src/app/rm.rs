//! `toolbox rm`: removes toolboxes, refusing those in use unless `--force`.

use std::path::Path;

use anyhow::Result;

use crate::app::context::RunContext;
use crate::app::names::{self, Named};
use crate::engine::{Access, short_id};
use crate::host::ui;
use crate::provision;
use crate::runtime::spc;
use crate::store::toolboxes;
use crate::store::{quiesce, session};

/// `toolbox rm [--force] NAME...` or `--all`.
pub fn run(ctx: &RunContext, given: &[String], all: bool, force: bool) -> Result<u8> {
    ctx.become_root()?;
    let directory = ctx.directory()?;
    let named = if all {
        names::every_toolbox(&directory, &ctx.access, ctx.quiet())?
    } else {
        given
            .iter()
            .map(|name| {
                names::find(
                    &directory,
                    &ctx.invoker.name,
                    name,
                    ctx.runtime,
                    &ctx.access,
                )
            })
            .collect::<Result<Vec<_>>>()?
    };
    remove(
        &directory,
        &ctx.paths.proc,
        &ctx.access,
        &named,
        force,
        ctx.quiet(),
    )?;
    Ok(0)
}

/// `toolbox rm`: removes each toolbox, refusing ones with running sessions unless `force`,
/// and for overlay storage, its anchor container (so the daemon may delete the image's
/// layers). Every name is tried; the first failure is returned after the rest are done.
fn remove(
    directory: &Path,
    proc_root: &Path,
    access: &Access,
    names: &[Named],
    force: bool,
    quiet: bool,
) -> Result<()> {
    let mut first_error = None;
    for named in names {
        let name = named.name();
        let removed = (|| -> Result<()> {
            if let Named::Spc(name) = named {
                return spc::session::remove(access, directory, name, force);
            }
            let path = directory.join(name);
            let _lock = toolboxes::lock_for_create(directory, name)?;
            let overlay = toolboxes::complete_metadata(&path)?.and_then(|m| m.overlay);
            let _mount = quiesce::quiesce(directory, proc_root, name, force)?;
            toolboxes::remove(directory, name)?;
            let previous = toolboxes::remove_previous(directory, name)?;
            session::forget(directory, name)?;
            toolboxes::remove_partials(directory, name)?;
            toolboxes::remove_stale_stages(directory, name)?;
            toolboxes::remove_companions(directory, name)?;
            let overlay = overlay.or(previous.and_then(|m| m.overlay));
            if let Some(overlay) = overlay
                && let Err(e) = provision::remove_anchors(&path, access)
            {
                // The toolbox is gone; what is left only keeps the image's layers, until
                // the next creation finds no toolbox recording it.
                let client = access.endpoint().map_or("docker", |e| e.client());
                let anchor = short_id(&overlay.anchor);
                ui::warn(format_args!(
                    "{e:#}; the anchor container {anchor} of `{name}` keeps its image until \
                     the next creation of a toolbox removes it, or `{client} rm -f {anchor}`"
                ));
            }
            Ok(())
        })();
        match removed {
            Ok(()) if !quiet => println!("removed {name}"),
            Ok(()) => {}
            Err(e) => {
                ui::error(format_args!("cannot remove `{name}`: {e:#}"));
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e.context("not every toolbox was removed")),
        None => Ok(()),
    }
}
