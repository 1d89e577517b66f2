//! names: which toolbox a user named on the command line, among the toolbox directory's
//! trees and its super privileged containers (`rm`, `update`).

use std::path::Path;

use anyhow::{Result, anyhow, bail};

use crate::engine::{self, Failure};
use crate::host::ui;
use crate::model::plan::{self, Runtime};
use crate::runtime::{Scope, spc};
use crate::store::toolboxes::{self, State};

/// The directory names a name given on the command line may mean: itself, as `list`
/// shows it, if it is one; else `USER-NAME` mapped as `--name NAME` maps it (the one
/// function, `plan::toolbox_dir_name`: `a b` is `USER-a_b`).
fn candidates(user: &str, name: &str) -> Vec<String> {
    let as_is = (!name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)))
    .then(|| name.to_string());
    let mapped = plan::toolbox_dir_name(user, name).ok();
    as_is.into_iter().chain(mapped).collect()
}

/// Finds the toolbox a user named: the directory name `list` shows, or, failing that,
/// `USER-NAME` as `--name NAME` would have made it.
pub fn resolve_name(directory: &Path, user: &str, name: &str) -> Result<String> {
    for candidate in candidates(user, name) {
        if matches!(
            toolboxes::state(&directory.join(&candidate))?,
            State::Complete | State::Adopted
        ) {
            return Ok(candidate);
        }
    }
    Err(anyhow!(
        "no toolbox `{name}` in {}; see `toolbox list`",
        directory.display()
    ))
}

/// A toolbox a user named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// A tree in the toolbox directory (the nspawn runtime).
    Tree(String),
    /// A persistent super privileged container of the toolbox directory.
    Spc(String),
}

impl Named {
    pub fn name(&self) -> &str {
        match self {
            Named::Tree(name) | Named::Spc(name) => name,
        }
    }
}

/// Every toolbox of `directory` (`rm --all`): its trees, and its super privileged
/// containers. Where no engine answers (or in time), there are none to remove: they are
/// left, with a warning unless `quiet`; any other failure to list them is an error.
pub fn every_toolbox(scope: &Scope) -> Result<Vec<Named>> {
    let mut all: Vec<_> = toolboxes::list(scope.directory)?
        .into_iter()
        .map(|(name, _)| Named::Tree(name))
        .collect();
    match spc::manage::names(scope) {
        Ok(spcs) => all.extend(spcs.into_iter().map(Named::Spc)),
        Err(e) if !engine_absent(&e) => {
            return Err(e.context("cannot list the super privileged containers to remove"));
        }
        Err(e) if !scope.quiet => ui::warn(format_args!(
            "{e:#}; super privileged containers are not removed"
        )),
        Err(_) => {}
    }
    Ok(all)
}

/// Whether `error` says no engine answers, or none in time.
fn engine_absent(error: &anyhow::Error) -> bool {
    matches!(
        engine::failure_of(error),
        Some(Failure::Unreachable | Failure::Stalled)
    )
}

/// Finds the toolbox a user named, as [`resolve_name`] does, among the trees of
/// `directory` and its super privileged containers. When both runtimes have a toolbox of
/// that name, `runtime` (`TOOLBOX_RUNTIME`, `--runtime`) picks; the engine is asked only
/// when the tree alone does not settle it.
pub fn find(scope: &Scope, user: &str, name: &str, runtime: Runtime) -> Result<Named> {
    let directory = scope.directory;
    let tree = resolve_name(directory, user, name).ok();
    if let (Some(tree), Runtime::Nspawn) = (&tree, runtime) {
        return Ok(Named::Tree(tree.clone()));
    }
    let spcs = match spc::manage::names(scope) {
        Ok(spcs) => spcs,
        Err(_) if tree.is_some() => Vec::new(),
        Err(e) => {
            return Err(e.context(format!(
                "no toolbox `{name}` in {}, and its super privileged containers cannot be listed",
                directory.display()
            )));
        }
    };
    let spc = candidates(user, name)
        .into_iter()
        .find(|candidate| spcs.contains(candidate));
    match (tree, spc) {
        (_, Some(spc)) => Ok(Named::Spc(spc)),
        (Some(tree), None) => Ok(Named::Tree(tree)),
        (None, None) => bail!(
            "no toolbox `{name}` in {}; see `toolbox list`",
            directory.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_with_or_without_the_user_prefix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("core-dbg/etc")).unwrap();
        std::fs::write(dir.path().join("core-dbg/etc/os-release"), "").unwrap();
        assert_eq!(
            resolve_name(dir.path(), "core", "core-dbg").unwrap(),
            "core-dbg"
        );
        assert_eq!(resolve_name(dir.path(), "core", "dbg").unwrap(), "core-dbg");
        assert!(resolve_name(dir.path(), "core", "nope").is_err());
        assert!(resolve_name(dir.path(), "core", "../etc").is_err());
        // Mapped as `--name` maps it.
        for made in ["core-a_b", "core-.._x"] {
            std::fs::create_dir_all(dir.path().join(made).join("etc")).unwrap();
            std::fs::write(dir.path().join(made).join("etc/os-release"), "").unwrap();
        }
        assert_eq!(resolve_name(dir.path(), "core", "a b").unwrap(), "core-a_b");
        assert_eq!(
            resolve_name(dir.path(), "core", "core-a_b").unwrap(),
            "core-a_b"
        );
        assert_eq!(
            resolve_name(dir.path(), "core", "../x").unwrap(),
            "core-.._x"
        );
        assert_eq!(candidates("core", ".."), ["core-.."]);
    }
}
