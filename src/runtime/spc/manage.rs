//! runtime::spc::manage: `list`, `rm` and `update` of the persistent super privileged
//! containers of a toolbox directory, in the shape `runtime::nspawn::manage` has for
//! toolbox trees.

use std::io::Write;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use futures_util::future::join_all;

use super::session::{changed_files, check_ownership, running_sessions};
use super::{LABEL_DIRECTORY, LABEL_IMAGE, LABEL_SPC};
use crate::engine::{ContainerInfo, Engine, SpcRuntime, short_id};
use crate::model::image::ImageRef;
use crate::model::plan::Runtime;
use crate::provision;
use crate::runtime::{DAEMON_TIMEOUT, Listed, Scope, Update, with_engine, with_spc_engine};
use crate::store::toolboxes;

/// The persistent SPCs of the directory, by name, each asked of the engine at once; none
/// with an engine that runs none (containerd).
pub fn list(scope: &Scope) -> Result<Vec<Listed>> {
    with_engine(scope.access, Some(DAEMON_TIMEOUT), async |connected| {
        let Ok(engine) = connected.spc_runtime() else {
            return Ok(Vec::new());
        };
        let rows = owned(engine, scope.directory)
            .await?
            .into_iter()
            .map(|container| {
                async move {
                    let image = container
                        .labels
                        .get(LABEL_IMAGE)
                        .cloned()
                        .unwrap_or_default();
                    let (current, sessions) = futures_util::join!(
                        engine.image(&image),
                        running_sessions(engine, &container.exec_ids, None)
                    );
                    let current = current.ok().flatten();
                    Listed {
                        image_changed: current.map(|found| found.id != container.image_id),
                        image: Some(image),
                        image_id: Some(container.image_id),
                        // The engine's time to the second, as toolbox records its own.
                        created: Some(match container.created.get(..19) {
                            Some(seconds) => format!("{seconds}Z"),
                            None => container.created,
                        }),
                        size_bytes: None,
                        sessions,
                        targets: Vec::new(),
                        adopted: false,
                        storage: None,
                        files: None,
                        runtime: Runtime::Spc,
                        name: container.name,
                    }
                }
            });
        let mut listed = join_all(rows).await;
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listed)
    })
}

/// The names of the persistent SPCs of `directory`, for `rm` and `update` to find; none
/// with an engine that runs none (containerd).
pub fn names(scope: &Scope) -> Result<Vec<String>> {
    with_engine(scope.access, Some(DAEMON_TIMEOUT), async |connected| {
        let Ok(engine) = connected.spc_runtime() else {
            return Ok(Vec::new());
        };
        let owned = owned(engine, scope.directory).await?;
        Ok(owned.into_iter().map(|container| container.name).collect())
    })
}

/// The persistent SPCs of `directory`: the containers labelled with it whose SPC label
/// is their own name, inspected at once.
async fn owned(engine: &impl SpcRuntime, directory: &Path) -> Result<Vec<ContainerInfo>> {
    let label = format!("{LABEL_DIRECTORY}={}", directory.display());
    let names = engine.containers_with_label(&label).await?;
    let inspected = join_all(names.iter().map(|name| engine.container(name))).await;
    let mut owned = Vec::new();
    for (name, container) in names.iter().zip(inspected) {
        if let Some(container) = container?
            && container.labels.get(LABEL_SPC) == Some(name)
        {
            owned.push(ContainerInfo {
                name: name.clone(),
                ..container
            });
        }
    }
    Ok(owned)
}

/// Removes persistent SPC `name`; one with running sessions is refused, or with `force`,
/// removed with them.
pub fn remove(scope: &Scope, name: &str, force: bool) -> Result<()> {
    let directory = scope.directory;
    let _lock = toolboxes::lock_for_spc(directory, name)?;
    with_spc_engine(scope.access, None, async |engine| {
        let Some(container) = engine.container(name).await? else {
            return Ok(());
        };
        check_ownership(&container, name, directory)?;
        let sessions = running_sessions(engine, &container.exec_ids, None).await;
        if sessions > 0 && !force {
            bail!("toolbox `{name}` has {sessions} running session(s); use --force to stop them");
        }
        engine.remove_container(&container.id).await
    })
}

/// Pulls the image of persistent SPC `name` and, when its ID changed, removes the
/// container (refused while sessions run, unless `force`) so that its next session
/// creates it from the new image with the current settings, and says which it did.
/// Files changed in the container go with it: unless `force`, only when `confirm` says
/// so.
pub fn update(scope: &Scope, name: &str, how: &Update, report: &mut dyn Write) -> Result<()> {
    let directory = scope.directory;
    let quiet = scope.quiet;
    let _lock = toolboxes::lock_for_spc(directory, name)?;
    with_spc_engine(scope.access, None, async |engine| {
        let container = engine.container(name).await?.ok_or_else(|| {
            anyhow!("toolbox `{name}` (spc) has no container; its next session creates one")
        })?;
        check_ownership(&container, name, directory)?;
        let image = container
            .labels
            .get(LABEL_IMAGE)
            .cloned()
            .unwrap_or_default();
        let reference = ImageRef::parse(&image, "latest")?;
        let found = provision::find_image(engine, &reference, true, quiet).await?;
        if found.id == container.image_id {
            if !quiet {
                writeln!(
                    report,
                    "toolbox `{name}` (spc) is up to date ({image} {})",
                    short_id(&found.id)
                )?;
            }
            return Ok(());
        }
        let sessions = running_sessions(engine, &container.exec_ids, None).await;
        if sessions > 0 && !how.force {
            bail!("toolbox `{name}` has {sessions} running session(s); use --force to stop them");
        }
        let changed = changed_files(engine, &container).await?;
        if changed > 0 && !how.force {
            let lost = format!(
                "updating `{name}` (spc) would lose its container, with {changed} file(s) \
                 changed in it"
            );
            if !(how.confirm)(&format!("{lost}; go on?")) {
                bail!(
                    "{lost}; copy them out (`{} cp`), or `toolbox --runtime spc update --force`",
                    engine.client()
                );
            }
        }
        engine.remove_container(&container.id).await?;
        if !quiet {
            writeln!(
                report,
                "toolbox `{name}` (spc) removed for {image} ({} -> {}); its next session creates it anew",
                short_id(&container.image_id),
                short_id(&found.id)
            )?;
        }
        Ok(())
    })
}
