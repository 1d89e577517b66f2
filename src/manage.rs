//! manage: the management subcommands, `list`, `rm`, `update` and `config`. Each works on
//! the toolbox directory through `machine`, `session` and `provision`; this module decides
//! what to show and when to refuse.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use crate::config::Settings;
use crate::engine::{Access, short_id};
use crate::machine::{self, State};
use crate::overlay;
use crate::plan::{ImageRef, Runtime, Storage};
use crate::provision::{self, Target, Updated};
use crate::session;
use crate::spc;
use crate::ui;

/// How long `list` waits for the daemon before showing freshness as unknown.
const LIST_DAEMON_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `rm --force` and `update --force` give sessions to end before killing them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One row of `toolbox list`.
#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    /// The image reference the toolbox was created from; `null` for an adopted tree.
    pub image: Option<String>,
    pub image_id: Option<String>,
    pub created: Option<String>,
    /// Disk used by its tree; `null` for a super privileged container (the engine's).
    pub size_bytes: Option<u64>,
    pub sessions: usize,
    /// Whether the engine's image ID differs now; `null` when unknown (daemon down,
    /// image gone, or an adopted tree).
    pub image_changed: Option<bool>,
    /// A tree left by the CoreOS script, without toolbox's metadata.
    pub adopted: bool,
    /// `copy` or `overlay`; `null` for a super privileged container.
    pub storage: Option<&'static str>,
    /// `nspawn` or `spc`.
    pub runtime: Runtime,
}

/// The rows for every toolbox in `directory`.
pub fn rows(directory: &Path, proc_root: &Path, access: &Access) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, state) in machine::toolboxes(directory)? {
        let path = directory.join(&name);
        let metadata = match state {
            State::Complete => Some(machine::read_metadata(&path)?),
            _ => None,
        };
        let image_changed = metadata.as_ref().and_then(|m| {
            let image = ImageRef::parse(&m.image, "latest").ok()?;
            provision::image_changed(&image, &m.image_id, access, LIST_DAEMON_TIMEOUT)
        });
        let storage = metadata.as_ref().map_or(Storage::Copy, |m| m.storage());
        rows.push(Row {
            sessions: session::live(directory, proc_root, &name)?.len(),
            size_bytes: Some(match storage {
                Storage::Copy => machine::disk_usage(&path),
                Storage::Overlay => overlay::disk_usage(&path),
            }),
            storage: Some(storage.name()),
            runtime: Runtime::Nspawn,
            image: metadata.as_ref().map(|m| m.image.clone()),
            image_id: metadata.as_ref().map(|m| m.image_id.clone()),
            created: metadata.map(|m| m.created),
            image_changed,
            adopted: state == State::Adopted,
            name,
        });
    }
    Ok(rows)
}

/// The rows for the super privileged containers of `directory`.
pub fn spc_rows(directory: &Path, access: &Access) -> Result<Vec<Row>> {
    let listed = spc::session::list(access, directory, LIST_DAEMON_TIMEOUT)?;
    Ok(listed
        .into_iter()
        .map(|spc| Row {
            image: Some(spc.image),
            image_id: Some(spc.image_id),
            // The engine's time to the second, as toolbox records its own.
            created: Some(match spc.created.get(..19) {
                Some(seconds) => format!("{seconds}Z"),
                None => spc.created,
            }),
            size_bytes: None,
            sessions: spc.sessions,
            image_changed: spc.image_changed,
            adopted: false,
            storage: None,
            runtime: Runtime::Spc,
            name: spc.name,
        })
        .collect())
}

/// `toolbox list`: a table, or JSON for scripts. Super privileged containers are listed
/// after the toolbox directory's trees, or, when no engine answers, left out with a
/// warning.
pub fn list(
    directory: &Path,
    proc_root: &Path,
    access: &Access,
    json: bool,
    quiet: bool,
) -> Result<()> {
    let mut rows = rows(directory, proc_root, access)?;
    match spc_rows(directory, access) {
        Ok(spcs) => rows.extend(spcs),
        Err(e) if !quiet => ui::warn(format_args!(
            "{e:#}; super privileged containers are not listed"
        )),
        Err(_) => {}
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<32} {:<7} {:<32} {:<12} {:<20} {:<7} {:>9} {:>8}  IMAGE",
        "NAME", "RUNTIME", "IMAGE", "ID", "CREATED", "STORAGE", "SIZE", "SESSIONS"
    )?;
    for row in &rows {
        let id = row.image_id.as_deref().map(short_id).unwrap_or("-");
        let freshness = match (row.adopted, row.image_changed) {
            (true, _) => "adopted",
            (_, Some(true)) => "changed",
            (_, Some(false)) => "current",
            (_, None) => "unknown",
        };
        writeln!(
            out,
            "{:<32} {:<7} {:<32} {:<12} {:<20} {:<7} {:>9} {:>8}  {freshness}",
            row.name,
            row.runtime.name(),
            row.image.as_deref().unwrap_or("-"),
            id,
            row.created.as_deref().unwrap_or("-"),
            row.storage.unwrap_or("-"),
            row.size_bytes.map_or("-".to_string(), human_size),
            row.sessions,
        )?;
    }
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Finds the toolbox a user named: the directory name `list` shows, or, failing that,
/// `USER-NAME` as `--name NAME` would have made it.
pub fn resolve_name(directory: &Path, user: &str, name: &str) -> Result<String> {
    for candidate in [name.to_string(), format!("{user}-{name}")] {
        let valid = !candidate.starts_with('.') && !candidate.contains('/');
        if valid
            && matches!(
                machine::state(&directory.join(&candidate))?,
                State::Complete | State::Adopted
            )
        {
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
/// containers if an engine answers (else they are left, with a warning unless `quiet`).
pub fn every_toolbox(directory: &Path, access: &Access, quiet: bool) -> Result<Vec<Named>> {
    let mut all: Vec<_> = machine::toolboxes(directory)?
        .into_iter()
        .map(|(name, _)| Named::Tree(name))
        .collect();
    match spc::session::names(access, directory, LIST_DAEMON_TIMEOUT) {
        Ok(spcs) => all.extend(spcs.into_iter().map(Named::Spc)),
        Err(e) if !quiet => ui::warn(format_args!(
            "{e:#}; super privileged containers are not removed"
        )),
        Err(_) => {}
    }
    Ok(all)
}

/// Finds the toolbox a user named, as [`resolve_name`] does, among the trees of
/// `directory` and its super privileged containers. When both runtimes have a toolbox of
/// that name, `runtime` (`TOOLBOX_RUNTIME`, `--runtime`) picks; the engine is asked only
/// when the tree alone does not settle it.
pub fn find(
    directory: &Path,
    user: &str,
    name: &str,
    runtime: Runtime,
    access: &Access,
) -> Result<Named> {
    let tree = resolve_name(directory, user, name).ok();
    if let (Some(tree), Runtime::Nspawn) = (&tree, runtime) {
        return Ok(Named::Tree(tree.clone()));
    }
    let spcs = match spc::session::names(access, directory, LIST_DAEMON_TIMEOUT) {
        Ok(spcs) => spcs,
        Err(_) if tree.is_some() => Vec::new(),
        Err(e) => {
            return Err(e.context(format!(
                "no toolbox `{name}` in {}, and its super privileged containers cannot be listed",
                directory.display()
            )));
        }
    };
    let spc = [name.to_string(), format!("{user}-{name}")]
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

/// Under the toolbox's lock: refuses when sessions run, or stops them with `force`.
fn settle_sessions(directory: &Path, proc_root: &Path, name: &str, force: bool) -> Result<()> {
    let sessions = session::live(directory, proc_root, name)?;
    if sessions.is_empty() {
        return Ok(());
    }
    if !force {
        bail!(
            "toolbox `{name}` has {} running session(s) (PID {}); use --force to stop them",
            sessions.len(),
            ui::pid_list(&sessions.iter().map(|s| s.pid).collect::<Vec<_>>())
        );
    }
    session::stop(directory, proc_root, name, STOP_GRACE)
}

/// Under the toolbox's creation lock, before its tree is removed or replaced: no session
/// may run (refused, or stopped with `force`) and the overlay, if any, is unmounted.
/// Returns the mount lock, which keeps new sessions out until it is dropped.
fn quiesce(directory: &Path, proc_root: &Path, name: &str, force: bool) -> Result<machine::Lock> {
    settle_sessions(directory, proc_root, name, force)?;
    // Ending sessions take the mount lock to unmount, so it is taken only now.
    let lock = machine::lock_for_mount(directory, name)?;
    if !session::live(directory, proc_root, name)?.is_empty() {
        bail!("a session of toolbox `{name}` started meanwhile; try again");
    }
    let path = directory.join(name);
    let lingering = lingering(&path, proc_root)?;
    if !lingering.is_empty() {
        if !force {
            bail!(
                "processes started in toolbox `{name}` still run (PID {}); stop them or use --force",
                ui::pid_list(&lingering)
            );
        }
        stop_processes(&path, proc_root)?;
    }
    overlay::unmount(&path)?;
    Ok(lock)
}

/// Processes started in the toolbox at `path` that outlived their session: those on its
/// mounted overlay, or those whose root is its tree.
fn lingering(path: &Path, proc_root: &Path) -> Result<Vec<i32>> {
    if overlay::is_mounted(path)? {
        overlay::processes(path, proc_root)
    } else {
        session::rooted_at(path, proc_root)
    }
}

/// Ends processes left running in a toolbox, as sessions are ended.
fn stop_processes(path: &Path, proc_root: &Path) -> Result<()> {
    let left = session::terminate(|| lingering(path, proc_root), STOP_GRACE)?;
    anyhow::ensure!(
        left.is_empty(),
        "processes {} in {} did not stop",
        ui::pid_list(&left),
        path.display()
    );
    Ok(())
}

/// `toolbox rm`: removes each toolbox, refusing ones with running sessions unless `force`,
/// and for overlay storage, its anchor container (so the daemon may delete the image's
/// layers). Every name is tried; the first failure is returned after the rest are done.
pub fn remove(
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
            let _lock = machine::lock_for_create(directory, name)?;
            let overlay = match machine::state(&path)? {
                State::Complete => machine::read_metadata(&path)?.overlay,
                _ => None,
            };
            let _mount = quiesce(directory, proc_root, name, force)?;
            machine::remove(directory, name)?;
            session::forget(directory, name)?;
            machine::remove_partials(directory, name)?;
            if let Some(overlay) = overlay
                && let Err(e) = provision::remove_anchors(&path, access)
            {
                // The toolbox is gone; what is left only keeps the image's layers.
                ui::warn(format_args!(
                    "{e:#}; the anchor container {} of `{name}` keeps its \
                     image; remove it with `docker rm {}`",
                    short_id(&overlay.anchor),
                    short_id(&overlay.anchor)
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

/// `toolbox update`: rebuilds `name` from its image when the image's ID changed (see
/// [`provision::update`]). The toolbox keeps its storage mode unless `--storage` says
/// otherwise.
pub fn update(
    target: &Target,
    proc_root: &Path,
    access: &Access,
    force: bool,
    quiet: bool,
    verbose: bool,
    report: &mut dyn Write,
) -> Result<Updated> {
    let path = target.path();
    let recorded = match machine::state(&path)? {
        State::Complete => Some(machine::read_metadata(&path)?),
        State::Adopted => None,
        _ => bail!(
            "no toolbox `{}` in {}",
            target.name,
            target.directory.display()
        ),
    };
    if let Some(from) = recorded.as_ref().and_then(|r| r.imported_from.as_ref()) {
        bail!(
            "`{}` was imported from {from}, which no engine updates; import it again \
             (`toolbox rm {}`, then `toolbox import`)",
            target.name,
            target.name
        );
    }
    let mut target = target.clone();
    if let Some(recorded) = &recorded
        && !target.storage_demanded
    {
        target.storage = recorded.storage();
    }
    let target = &target;
    let mut prepare = || quiesce(&target.directory, proc_root, &target.name, force);
    let updated = provision::update(
        target,
        recorded.as_ref(),
        access,
        quiet,
        verbose,
        &mut prepare,
    )?;
    if !quiet {
        match &updated {
            Updated::UpToDate { image_id } => writeln!(
                report,
                "toolbox `{}` is up to date ({} {})",
                target.name,
                target.image.reference(),
                short_id(image_id)
            )?,
            Updated::Rebuilt { old_id, new_id } => writeln!(
                report,
                "toolbox `{}` rebuilt from {} ({} -> {})",
                target.name,
                target.image.reference(),
                old_id.as_deref().map(short_id).unwrap_or("adopted"),
                short_id(new_id)
            )?,
        }
    }
    Ok(updated)
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
            spc::session::Updated::UpToDate { image, image_id } => writeln!(
                report,
                "toolbox `{name}` (spc) is up to date ({image} {})",
                short_id(&image_id)
            )?,
            spc::session::Updated::Replaced {
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

/// `toolbox config`: every setting with its value and where it came from, or with
/// `paths`, the files consulted and whether each exists.
pub fn show_config(settings: &Settings, files: &[std::path::PathBuf], paths: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if paths {
        for file in files {
            let state = if settings.files_read.contains(file) {
                "read"
            } else {
                "absent"
            };
            writeln!(out, "{}\t{state}", file.display())?;
        }
        return Ok(());
    }
    for (key, setting) in settings.iter() {
        writeln!(
            out,
            "{}={}\t# {}",
            key.name,
            crate::nspawn::quote(setting.value.as_ref()),
            setting.origin
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_du_h() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(380 * 1024 * 1024), "380.0 MiB");
    }

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
    }
}
