//! `toolbox rm`: removes toolboxes, refusing those in use unless `--force`.

use anyhow::Result;

use crate::app::context::RunContext;
use crate::app::names::{self, Named};
use crate::host::ui;
use crate::runtime::{Scope, nspawn, spc};

/// `toolbox rm [--force] NAME...` or `--all`.
pub fn run(ctx: &RunContext, given: &[String], all: bool, force: bool) -> Result<u8> {
    ctx.become_root()?;
    let directory = ctx.directory()?;
    let scope = ctx.scope(&directory);
    let named = if all {
        names::every_toolbox(&scope)?
    } else {
        given
            .iter()
            .map(|name| names::find(&scope, &ctx.invoker.name, name, ctx.runtime))
            .collect::<Result<Vec<_>>>()?
    };
    remove(&scope, &named, force)?;
    Ok(0)
}

/// Removes each toolbox through its runtime, refusing ones with running sessions unless
/// `force`. Every name is tried; the first failure is returned after the rest are done.
fn remove(scope: &Scope, names: &[Named], force: bool) -> Result<()> {
    let mut first_error = None;
    for named in names {
        let name = named.name();
        let removed = match named {
            Named::Tree(name) => nspawn::manage::remove(scope, name, force),
            Named::Spc(name) => spc::manage::remove(scope, name, force),
        };
        match removed {
            Ok(()) if !scope.quiet => println!("removed {name}"),
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
