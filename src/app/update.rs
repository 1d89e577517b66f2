//! `toolbox update`: rebuilds a toolbox, or replaces a super privileged container, when
//! its image changed.

use std::io::IsTerminal;

use anyhow::{Result, bail};

use crate::app::context::RunContext;
use crate::app::names::{self, Named};
use crate::host::ui;
use crate::model::image::ImageRef;
use crate::model::plan::{self, Payload};
use crate::provision::Target;
use crate::runtime::{Update, nspawn, spc};
use crate::store::toolboxes;

/// `toolbox update [--force] [--rollback] [NAME]`.
pub fn run(ctx: &RunContext, name: Option<String>, force: bool, rollback: bool) -> Result<u8> {
    ctx.become_root()?;
    let plan = ctx.plan(Payload::Shell)?;
    let scope = ctx.scope(&plan.directory);
    let named = match (name, ctx.runtime) {
        (None, plan::Runtime::Nspawn) => None,
        (None, plan::Runtime::Spc) => Some(Named::Spc(plan.name.clone())),
        (Some(name), runtime) => Some(names::find(&scope, &ctx.invoker.name, &name, runtime)?),
    };
    let how = Update {
        force,
        confirm: &confirm,
    };
    let report = &mut std::io::stdout();
    let target = match named {
        None => Target::of(&plan),
        Some(Named::Spc(name)) => {
            if rollback {
                bail!(
                    "toolbox `{name}` (spc): a super privileged container keeps no previous \
                     one to go back to"
                );
            }
            spc::manage::update(&scope, &name, &how, report)?;
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
    match rollback {
        true => nspawn::manage::rollback(&scope, &target, force, report)?,
        false => nspawn::manage::update(&scope, &target, &how, report)?,
    }
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
