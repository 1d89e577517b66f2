//! runtime::nspawn::manage: `list`, `rm` and `update` of the toolbox trees of a toolbox
//! directory, in the shape `runtime::spc::manage` has for super privileged containers.

use std::io::Write;

use anyhow::Result;

use crate::engine::{self, short_id};
use crate::host::ui;
use crate::model::image::ImageRef;
use crate::model::plan::{Runtime, Storage};
use crate::provision::{self, Target};
use crate::runtime::{DAEMON_TIMEOUT, Listed, Scope, Update};
use crate::store::toolboxes::{self, State};
use crate::store::{overlay, quiesce, session};

/// Every toolbox tree of the directory, with its sessions, size, and whether its image
/// changed since it was built (the engine asked once for all of them).
pub fn list(scope: &Scope) -> Result<Vec<Listed>> {
    let mut trees = Vec::new();
    for (name, state) in toolboxes::list(scope.directory)? {
        let metadata = match state {
            State::Complete => Some(toolboxes::read_metadata(&scope.directory.join(&name))?),
            _ => None,
        };
        trees.push((name, state, metadata));
    }
    let images: Vec<_> = trees
        .iter()
        .filter_map(|(_, _, metadata)| {
            let metadata = metadata.as_ref()?;
            Some((ImageRef::parse(&metadata.image, "latest").ok()?, metadata))
        })
        .collect();
    let asked: Vec<_> = images
        .iter()
        .map(|(image, metadata)| (image, metadata.image_id.as_str()))
        .collect();
    let mut changed = provision::images_changed(&asked, scope.access, DAEMON_TIMEOUT).into_iter();
    let mut listed = Vec::new();
    for (name, state, metadata) in trees {
        let path = scope.directory.join(&name);
        let image_changed = match &metadata {
            Some(m) if ImageRef::parse(&m.image, "latest").is_ok() => changed.next().flatten(),
            _ => None,
        };
        let storage = metadata.as_ref().map_or(Storage::Copy, |m| m.storage());
        let sessions = session::live(scope.directory, scope.proc_root, &name)?;
        listed.push(Listed {
            sessions: sessions.len(),
            targets: sessions.into_iter().filter_map(|s| s.target).collect(),
            size_bytes: Some(match storage {
                Storage::Copy => toolboxes::disk_usage(&path),
                Storage::Overlay => overlay::disk_usage(&path),
            }),
            storage: Some(storage.name()),
            files: Some(
                match storage {
                    Storage::Copy => path.clone(),
                    Storage::Overlay => overlay::upper(&path),
                }
                .display()
                .to_string(),
            ),
            runtime: Runtime::Nspawn,
            image: metadata.as_ref().map(|m| m.image.clone()),
            image_id: metadata.as_ref().map(|m| m.image_id.clone()),
            created: metadata.map(|m| m.created),
            image_changed,
            adopted: state == State::Adopted,
            name,
        });
    }
    Ok(listed)
}

/// Removes toolbox `name`, refused while sessions run in it unless `force`, with all it
/// keeps beside its tree; for overlay storage, its anchor container too (so the engine
/// may delete the image's layers), or, where that fails, says how to remove it.
pub fn remove(scope: &Scope, name: &str, force: bool) -> Result<()> {
    let directory = scope.directory;
    let path = directory.join(name);
    let _lock = toolboxes::lock_for_create(directory, name)?;
    let overlay = toolboxes::complete_metadata(&path)?.and_then(|m| m.overlay);
    let _mount = quiesce::quiesce(directory, scope.proc_root, name, force)?;
    toolboxes::remove(directory, name)?;
    let previous = toolboxes::remove_previous(directory, name)?;
    session::forget(directory, name)?;
    toolboxes::remove_partials(directory, name)?;
    toolboxes::remove_stale_stages(directory, name)?;
    toolboxes::remove_companions(directory, name)?;
    let overlay = overlay.or(previous.and_then(|m| m.overlay));
    if let Some(overlay) = overlay
        && let Err(e) = provision::remove_anchors(&path, scope.access)
    {
        // The toolbox is gone; what is left only keeps the image's layers, until the
        // next creation finds no toolbox recording it.
        if let Ok(engine::Found::Containerd) = scope.access.found() {
            let lease = &overlay.anchor;
            ui::warn(format_args!(
                "{e:#}; containerd's lease `{lease}` of `{name}` keeps its image until the \
                 next creation of a toolbox removes it, or `ctr -n NAMESPACE leases delete \
                 {lease}` and `ctr -n NAMESPACE snapshots rm {lease}`"
            ));
            return Ok(());
        }
        let client = scope.access.endpoint().map_or("docker", |e| e.client());
        let anchor = short_id(&overlay.anchor);
        ui::warn(format_args!(
            "{e:#}; the anchor container {anchor} of `{name}` keeps its image until the next \
             creation of a toolbox removes it, or `{client} rm -f {anchor}`"
        ));
    }
    Ok(())
}

/// Rebuilds toolbox `target` when its image changed (pulling it first), keeping the
/// previous tree for `rollback`; see [`provision::update`].
pub fn update(scope: &Scope, target: &Target, how: &Update, report: &mut dyn Write) -> Result<()> {
    provision::update(
        target,
        scope.proc_root,
        scope.access,
        how.force,
        &|would| (how.confirm)(&format!("{would}; discard it?")),
        (scope.quiet, scope.verbose, false),
        report,
    )?;
    Ok(())
}

/// Puts toolbox `target`'s previous tree back (`update --rollback`); see
/// [`provision::rollback`].
pub fn rollback(scope: &Scope, target: &Target, force: bool, report: &mut dyn Write) -> Result<()> {
    provision::rollback(target, scope.proc_root, force, scope.quiet, report)
}
