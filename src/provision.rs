//! provision: create and update toolboxes from images. Inspect (pull only when absent,
//! or always for an update); then, for copy storage, create a labelled container that is
//! never started, stream its export straight into the unpacker (overlapping the two; the
//! archive is never held in memory or on disk) and remove the container on every path
//! (success, error, Ctrl-C, SIGTERM, SIGHUP); for overlay storage, check that the daemon's
//! layers can be mounted here (else fall back to copying, saying why) and create the
//! anchor container that pins them. Either way the partial toolbox is completed and
//! renamed into place, or swapped with the old one for an update. An interrupted or failed
//! creation leaves neither a partial tree nor a container behind; one killed outright is
//! cleaned up by the next.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

use crate::engine::{
    self, ANCHOR_PREFIX, Access, Connected, Engine, LABEL_ANCHOR, LABEL_PID, LABEL_TOOLBOX,
    Provisioning, SinkClosed, short_id,
};
use crate::exit::Interrupted;
use crate::host::ui;
use crate::model::image::{Image, ImageRef, Layers};
use crate::model::plan::{Plan, Storage};
use crate::store::overlay::{self, Unusable};
use crate::store::quiesce;
use crate::store::toolboxes::{self, Metadata, State};
use crate::store::unpack;
use crate::sys;
use crate::sys::signals::{Caught, STOPPING};

/// Chunks of the export stream in flight between the daemon and the unpacker: bounded,
/// so memory stays flat whatever the image size.
const CHANNEL_CHUNKS: usize = 32;
/// How often unpacking progress is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Which toolbox, from which image.
#[derive(Debug, Clone)]
pub struct Target {
    pub directory: PathBuf,
    pub name: String,
    pub image: ImageRef,
    /// How a new tree stores the image.
    pub storage: Storage,
    /// No falling back from overlay to copy storage.
    pub storage_demanded: bool,
    /// The storage was chosen automatically: falling back to copy is said only when
    /// verbose.
    pub storage_auto: bool,
}

impl Target {
    pub fn of(plan: &Plan) -> Target {
        Target {
            directory: plan.directory.clone(),
            name: plan.name.clone(),
            image: plan.image.clone(),
            storage: plan.storage,
            storage_demanded: plan.storage_demanded,
            storage_auto: plan.storage_auto,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.directory.join(&self.name)
    }
}

/// Makes sure the toolbox exists, creating it if needed; returns whether it was created.
/// A toolbox that is already there (or a CoreOS tree to adopt) is left as it is, without
/// contacting any daemon.
pub fn ensure(target: &Target, access: &Access, quiet: bool, verbose: bool) -> Result<bool> {
    if ready(&target.path())? {
        return Ok(false);
    }
    // The daemon is reached and the image found before anything is written, so an
    // unreachable daemon or a failed pull leaves the toolbox directory as it was.
    create_with(Provisioner::connect(access, quiet, verbose)?, target)
}

/// [`ensure`] for a toolbox not there a moment ago, with `provisioner`'s engine.
fn create_with<E: Provisioning>(mut provisioner: Provisioner<E>, target: &Target) -> Result<bool> {
    let path = target.path();
    let image = provisioner.image(&target.image, false)?;
    let _lock = toolboxes::lock_for_create(&target.directory, &target.name)?;
    // Another toolbox process may have created it while this one waited for the lock.
    if ready(&path)? {
        return Ok(false);
    }
    let partial = provisioner.build(target, &image)?;
    if let Err(e) = toolboxes::install(&partial, &path) {
        // Best effort: the error matters more than a failed cleanup, and the next
        // creation removes any leftover partial tree and anchor anyway.
        provisioner.forget_new_anchor(&partial);
        let _ = fs::remove_dir_all(&partial);
        return Err(e);
    }
    // A signal that came while the tree was being completed: the toolbox is kept (it is
    // whole), but the user asked to stop, so it is not entered.
    provisioner.check_signals()?;
    Ok(true)
}

/// What `update` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Updated {
    /// The image ID is the one the toolbox was built from.
    UpToDate { image_id: String },
    Rebuilt {
        old_id: Option<String>,
        new_id: String,
        /// Files changed in the replaced tree, which is kept as the previous one.
        kept_changes: u64,
    },
    /// The toolbox was rolled back from the image's ID, which an update at entry leaves
    /// alone (see [`toolboxes::hold`]).
    Held { image_id: String },
}

/// What an update would lose: the previous toolbox kept by the last update, with the
/// files changed in it. Refused unless forced or confirmed.
#[derive(Debug)]
pub struct WouldDiscard {
    pub name: String,
    pub files: u64,
}

impl std::fmt::Display for WouldDiscard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "updating `{}` would discard its previous tree, kept by the last update, with {} \
             file(s) changed in it; `toolbox update --rollback` goes back to it, `toolbox \
             update --force` discards it",
            self.name, self.files
        )
    }
}

impl std::error::Error for WouldDiscard {}

/// Whether an update may discard what [`WouldDiscard`] says: `--force`, or a question
/// the user answered.
pub enum Discard<'a> {
    Allowed,
    Ask(&'a dyn Fn(&WouldDiscard) -> bool),
}

/// Pulls the toolbox's image and rebuilds the toolbox when needed: when the image's ID
/// differs from the recorded one, when an overlay toolbox's layers moved or vanished, or
/// when `--storage` demands the other mode. The new tree is built beside the old one and
/// swapped in atomically; the old tree is then kept as the previous toolbox (see
/// [`toolboxes::previous`]), with its anchor, and the one kept before it is removed, if
/// `discard` allows losing the files changed in it. `prepare` runs under the toolbox's
/// lock just before the swap: it deals with running sessions, unmounts, and returns the
/// mount lock, held over the swap. A pull that fails while the image is local updates
/// from the local image, with a warning. `recorded` is `None` for an adopted CoreOS tree.
fn rebuild(
    target: &Target,
    recorded: Option<&Metadata>,
    access: &Access,
    (quiet, verbose, at_entry): (bool, bool, bool),
    discard: Discard,
    prepare: &mut dyn FnMut() -> Result<toolboxes::Lock>,
) -> Result<Updated> {
    let mut provisioner = Provisioner::connect(access, quiet, verbose)?;
    let image = provisioner.image(&target.image, true)?;
    let current = recorded.is_some_and(|recorded| {
        let layers_kept = match &recorded.overlay {
            Some(overlay) => {
                // A snapshot's directories are the image's as long as its ID is the same.
                let same = match &image.layers {
                    Layers::Directories(layers) => *layers == overlay.layers,
                    Layers::Snapshots(count) => *count == overlay.layers.len(),
                    Layers::Unavailable(_) => false,
                };
                same && overlay::missing_layer(&overlay.layers).is_none()
            }
            None => true,
        };
        let storage_kept = !target.storage_demanded || recorded.storage() == target.storage;
        recorded.image_id == image.id && layers_kept && storage_kept
    });
    if current {
        if let Some(recorded) = recorded {
            provisioner.pin_again(target, recorded)?;
        }
        return Ok(Updated::UpToDate { image_id: image.id });
    }
    if at_entry && toolboxes::held(&target.directory, &target.name).as_ref() == Some(&image.id) {
        return Ok(Updated::Held { image_id: image.id });
    }
    let _lock = toolboxes::lock_for_create(&target.directory, &target.name)?;
    let previous = toolboxes::previous(&target.directory, &target.name);
    let kept = match toolboxes::state(&previous)? {
        State::Complete => Some(toolboxes::read_metadata(&previous)?),
        // A CoreOS tree has no creation time: every file in it may be the user's.
        State::Adopted => Some(Metadata {
            created: humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH).to_string(),
            ..Metadata::adopted()
        }),
        _ => None,
    };
    if let Some(kept) = kept {
        let files = toolboxes::changed_files(&previous, &kept);
        let would = WouldDiscard {
            name: target.name.clone(),
            files,
        };
        let allowed = match discard {
            Discard::Allowed => true,
            Discard::Ask(ask) => files == 0 || ask(&would),
        };
        if !allowed {
            return Err(would.into());
        }
    }
    let partial = provisioner.build(target, &image)?;
    let path = target.path();
    let swapped = prepare().and_then(|_mount| toolboxes::swap(&partial, &path));
    if let Err(e) = swapped {
        provisioner.forget_new_anchor(&partial);
        let _ = fs::remove_dir_all(&partial);
        return Err(e);
    }
    // `partial` holds the old tree now: kept, with its anchor, as the previous one.
    let replaced = toolboxes::keep_previous(&target.directory, &target.name, &partial)?;
    toolboxes::release(&target.directory, &target.name)?;
    if let Some(anchor) = replaced.and_then(|r| r.overlay).map(|o| o.anchor) {
        provisioner.remove_anchor(&anchor)?;
    }
    let kept_changes = recorded.map_or(0, |r| toolboxes::changed_files(&previous, r));
    Ok(Updated::Rebuilt {
        old_id: recorded.map(|r| r.image_id.clone()),
        new_id: image.id,
        kept_changes,
    })
}

/// `toolbox update`: rebuilds `name` from its image when the image's ID changed (see
/// [`rebuild`]). The toolbox keeps its storage mode unless `--storage` says
/// otherwise. `force` stops sessions and processes left in the toolbox, and allows
/// discarding the previous tree whatever `ask` answers. An update `at_entry` leaves a
/// toolbox rolled back from the image as it is.
#[allow(clippy::too_many_arguments)]
pub fn update(
    target: &Target,
    proc_root: &Path,
    access: &Access,
    force: bool,
    ask: &dyn Fn(&WouldDiscard) -> bool,
    (quiet, verbose, at_entry): (bool, bool, bool),
    report: &mut dyn Write,
) -> Result<Updated> {
    let path = target.path();
    let recorded = match toolboxes::state(&path)? {
        State::Complete => Some(toolboxes::read_metadata(&path)?),
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
    let mut prepare = || quiesce::quiesce(&target.directory, proc_root, &target.name, force);
    let discard = match force {
        true => Discard::Allowed,
        false => Discard::Ask(ask),
    };
    let updated = rebuild(
        target,
        recorded.as_ref(),
        access,
        (quiet, verbose, at_entry),
        discard,
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
            Updated::Held { image_id } => writeln!(
                report,
                "toolbox `{}` was rolled back from {} ({}): left as it is; `toolbox update` \
                 applies it again",
                target.name,
                target.image.reference(),
                short_id(image_id)
            )?,
            Updated::Rebuilt {
                old_id,
                new_id,
                kept_changes,
            } => writeln!(
                report,
                "toolbox `{}` rebuilt from {} ({} -> {}); the tree it replaced is kept, with \
                 the {kept_changes} file(s) changed in it: `toolbox update --rollback` goes \
                 back to it",
                target.name,
                target.image.reference(),
                old_id.as_deref().map(short_id).unwrap_or("adopted"),
                short_id(new_id)
            )?,
        }
    }
    Ok(updated)
}

/// `toolbox update --rollback`: puts the previous toolbox kept by the last update back in
/// place of the current one, which is kept as the previous one in turn (a second rollback
/// goes forward again). Sessions are refused, or stopped with `force`.
pub fn rollback(
    target: &Target,
    proc_root: &Path,
    force: bool,
    quiet: bool,
    report: &mut dyn Write,
) -> Result<()> {
    let _lock = toolboxes::lock_for_create(&target.directory, &target.name)?;
    let previous = toolboxes::previous(&target.directory, &target.name);
    if !matches!(
        toolboxes::state(&previous)?,
        State::Complete | State::Adopted
    ) {
        bail!(
            "toolbox `{}` has no previous tree to go back to (`toolbox update` keeps the one \
             it replaces)",
            target.name
        );
    }
    let _mount = quiesce::quiesce(&target.directory, proc_root, &target.name, force)?;
    let replaced = toolboxes::complete_metadata(&target.path())?;
    toolboxes::swap(&previous, &target.path())?;
    // An update at entry would put straight back what was rolled back from.
    match replaced {
        Some(replaced) => toolboxes::hold(&target.directory, &target.name, &replaced.image_id)?,
        None => toolboxes::release(&target.directory, &target.name)?,
    }
    if !quiet {
        let image = toolboxes::complete_metadata(&target.path())?
            .map(|m| format!("{} ({})", m.image, short_id(&m.image_id)))
            .unwrap_or_else(|| "its adopted tree".to_string());
        writeln!(
            report,
            "toolbox `{}` is back on {image}; the tree it replaced is kept: `toolbox update \
             --rollback` goes forward again",
            target.name
        )?;
    }
    Ok(())
}

/// Removes the anchor containers of the toolbox at `path`, which is gone: the daemon may
/// then delete the image's layers.
pub fn remove_anchors(path: &Path, access: &Access) -> Result<()> {
    let runtime = engine::async_runtime()?;
    runtime.block_on(async {
        let engine = engine::connect(access).await?;
        let value = path.display().to_string();
        for (anchor, _) in engine
            .labelled_containers(LABEL_ANCHOR, Some(&value))
            .await?
        {
            engine.remove_anchor(&anchor).await?;
        }
        Ok(())
    })
}

/// What an anchor is called (`docker ps` shows it): `toolbox-anchor-NAME-` and 8 hex
/// digits that differ from one anchor to the next, as one toolbox may have two (its
/// previous tree's) and names repeat across toolbox directories.
fn anchor_name(name: &str, path: &Path) -> String {
    use std::hash::{BuildHasher, Hasher};
    // Seeded afresh by each process; the path, the process and the time tell anchors of
    // one process apart.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(path.as_os_str().as_encoded_bytes());
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{ANCHOR_PREFIX}{name}-{:08x}", hasher.finish() as u32)
}

/// Removes the anchors no toolbox records: their toolbox's entry was removed by hand
/// (`rm -rf /var/lib/toolbox/NAME`, as CoreOS's documentation resets a toolbox), or an
/// update was killed between starting one and recording it. Left running, each would pin
/// its image for good. Housekeeping: what cannot be told or removed now is left for the
/// next creation.
async fn remove_abandoned_anchors<E: Provisioning>(engine: &E) {
    let Ok(anchors) = engine.labelled_containers(LABEL_ANCHOR, None).await else {
        return;
    };
    for (anchor, labels) in anchors {
        let creator = labels.get(LABEL_PID).and_then(|pid| pid.parse().ok());
        if creator.is_some_and(sys::process_exists) {
            continue;
        }
        let Some(path) = labels.get(LABEL_ANCHOR) else {
            continue;
        };
        if abandoned(Path::new(path), &anchor) {
            let _ = engine.remove_anchor(&anchor).await;
        }
    }
}

/// Whether no toolbox records `anchor`, made for the toolbox at `path`: neither that
/// toolbox nor its previous tree names it, and no creation, update or removal of it is
/// under way. False whenever that cannot be told: a toolbox directory that is not there
/// (not mounted, or in another mount namespace), a record that cannot be read.
fn abandoned(path: &Path, anchor: &str) -> bool {
    let (Some(directory), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
    else {
        return false;
    };
    if !path.is_absolute() || !directory.is_dir() {
        return false;
    }
    let _lock = match toolboxes::try_lock_for_create(directory, name) {
        Ok(toolboxes::Attempt::Taken(lock)) => Some(lock),
        Ok(toolboxes::Attempt::NoLockFile) => None,
        Ok(toolboxes::Attempt::Busy) | Err(_) => return false,
    };
    let records = |tree: &Path| {
        let metadata = toolboxes::complete_metadata(tree).ok()?;
        Some(
            metadata
                .and_then(|m| m.overlay)
                .is_some_and(|o| o.anchor == anchor),
        )
    };
    let previous = toolboxes::previous(directory, name);
    records(path) == Some(false) && records(&previous) == Some(false)
}

/// Whether the engine's ID for `image` differs from `recorded_id` now; `None` when that
/// is unknown (no engine, no answer within `timeout`, no such image).
pub fn image_changed(
    image: &ImageRef,
    recorded_id: &str,
    access: &Access,
    timeout: Duration,
) -> Option<bool> {
    images_changed(&[(image, recorded_id)], access, timeout)[0]
}

/// [`image_changed`] for each image and its recorded ID, over one connection, the
/// images asked at once and all answers awaited within `timeout`: `list` of many
/// toolboxes takes one engine's round trip, not one per toolbox.
pub fn images_changed(
    wanted: &[(&ImageRef, &str)],
    access: &Access,
    timeout: Duration,
) -> Vec<Option<bool>> {
    let unknown = || vec![None; wanted.len()];
    if wanted.is_empty() {
        return Vec::new();
    }
    let Ok(runtime) = engine::async_runtime() else {
        return unknown();
    };
    runtime.block_on(async {
        let ask = async {
            let engine = engine::connect(access).await.ok()?;
            let answers = wanted.iter().map(|(image, recorded_id)| {
                let engine = &engine;
                async move {
                    let found = engine.image(&image.reference()).await.ok()??;
                    Some(found.id != *recorded_id)
                }
            });
            Some(futures_util::future::join_all(answers).await)
        };
        tokio::time::timeout(timeout, ask)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(unknown)
    })
}

fn ready(path: &Path) -> Result<bool> {
    match toolboxes::state(path)? {
        State::Complete | State::Adopted => Ok(true),
        State::Missing | State::Empty => Ok(false),
        State::Foreign => Err(anyhow!(
            "{} exists but is not a toolbox (no {} and no etc/os-release); move it away or choose another --name",
            path.display(),
            toolboxes::METADATA
        )),
    }
}

/// An engine connection with signals caught, for creating and updating toolboxes.
struct Provisioner<E: Provisioning> {
    runtime: tokio::runtime::Runtime,
    engine: E,
    signals: Caught,
    quiet: bool,
    verbose: bool,
}

impl Provisioner<Connected> {
    fn connect(access: &Access, quiet: bool, verbose: bool) -> Result<Provisioner<Connected>> {
        let runtime = engine::async_runtime()?;
        let engine = runtime.block_on(engine::connect(access))?;
        if verbose {
            ui::say(engine.describe());
        }
        Provisioner::with(runtime, engine, quiet, verbose)
    }
}

impl<E: Provisioning> Provisioner<E> {
    fn with(
        runtime: tokio::runtime::Runtime,
        engine: E,
        quiet: bool,
        verbose: bool,
    ) -> Result<Provisioner<E>> {
        let signals = runtime
            .block_on(async { Caught::catch(&STOPPING) })
            .context("cannot install signal handlers")?;
        Ok(Provisioner {
            runtime,
            engine,
            signals,
            quiet,
            verbose,
        })
    }

    /// The image, pulling it when absent, or always when `pull` (then falling back to a
    /// local copy if the pull fails).
    fn image(&mut self, image: &ImageRef, pull: bool) -> Result<Image> {
        let Provisioner {
            runtime,
            engine,
            signals,
            quiet,
            ..
        } = self;
        let found = runtime.block_on(async {
            tokio::select! {
                found = find_image(engine, image, pull, *quiet) => found,
                signal = signals.stopping() => Err(Interrupted(signal.as_raw()).into()),
            }
        })?;
        if self.verbose
            && let Some(place) = &found.found_in
        {
            ui::say(format_args!("image {place}"));
        }
        Ok(found)
    }

    /// Builds a complete partial toolbox for `target` from `image` and returns its path.
    /// Call with the toolbox's lock held. On failure nothing is left behind.
    fn build(&mut self, target: &Target, image: &Image) -> Result<PathBuf> {
        self.clean_up(target)?;
        self.build_in_chosen_storage(target, image).map_err(|e| {
            if crate::store::is_no_space(&e) {
                let directory = target.directory.display();
                e.context(format!(
                    "not enough space in {directory} for `{}`",
                    target.name
                ))
            } else {
                e
            }
        })
    }

    /// [`Provisioner::build`] after the cleanup: overlay storage if asked for and
    /// usable, else a copy.
    fn build_in_chosen_storage(&mut self, target: &Target, image: &Image) -> Result<PathBuf> {
        if target.storage == Storage::Overlay {
            match self.build_overlay(target, image) {
                Err(e) if e.is::<Unusable>() && !target.storage_demanded => {
                    let said = if target.storage_auto {
                        self.verbose
                    } else {
                        !self.quiet
                    };
                    if said {
                        ui::say(format_args!(
                            "{e}; copying the image instead of mounting it"
                        ));
                    }
                }
                Err(e) if e.is::<Unusable>() => {
                    return Err(e.context("cannot use overlay storage (--storage overlay)"));
                }
                built => return built,
            }
        }
        self.build_copy(target, &image.id)
    }

    /// Removes what a killed toolbox process left: its partial trees, the export
    /// containers of any toolbox whose creating process is gone (a daemon on this host
    /// only: a PID means nothing elsewhere), and anchors no complete toolbox records.
    fn clean_up(&mut self, target: &Target) -> Result<()> {
        toolboxes::remove_partials(&target.directory, &target.name)?;
        let path = target.path();
        let previous = toolboxes::previous(&target.directory, &target.name);
        // The current toolbox's anchor, and the previous one's, which pins its layers.
        let mut kept = Vec::new();
        for toolbox in [&path, &previous] {
            if let Some(overlay) = toolboxes::complete_metadata(toolbox)?.and_then(|m| m.overlay) {
                kept.push(overlay.anchor);
            }
        }
        let engine = &self.engine;
        self.runtime.block_on(async {
            let exports = match engine.is_local() {
                true => engine.labelled_containers(LABEL_TOOLBOX, None).await?,
                false => {
                    engine
                        .labelled_containers(LABEL_TOOLBOX, Some(&target.name))
                        .await?
                }
            };
            for (container, labels) in exports {
                let pid = labels.get(LABEL_PID).and_then(|pid| pid.parse().ok());
                if pid.is_some_and(sys::process_exists) {
                    continue;
                }
                let removed = engine.remove_container(&container).await;
                // Another toolbox's leftover is housekeeping: a creation of that toolbox
                // may be removing it at this very moment.
                if labels.get(LABEL_TOOLBOX) == Some(&target.name) {
                    removed?;
                }
            }
            let anchors = engine
                .labelled_containers(LABEL_ANCHOR, Some(&path.display().to_string()))
                .await?;
            for (anchor, _) in anchors {
                if !kept.contains(&anchor) {
                    engine.remove_anchor(&anchor).await?;
                }
            }
            if engine.is_local() {
                remove_abandoned_anchors(engine).await;
            }
            anyhow::Ok(())
        })
    }

    /// An overlay toolbox: its directories, a trial mount to complete the tree (which
    /// also proves the mount works here), and the anchor. Fails with [`Unusable`] when
    /// overlay storage cannot work here, before anything is left in the daemon.
    fn build_overlay(&mut self, target: &Target, image: &Image) -> Result<PathBuf> {
        let path = target.path();
        let source = overlay::Source {
            engine: self.engine.name(),
            address: self.engine.address(),
            local: self.engine.is_local(),
        };
        // The anchor this creation started: removed again if the toolbox is not built.
        let mut anchor = None;
        let built = (|| {
            let layers = match overlay::check(image, source, &path)? {
                overlay::Stack::Layers(layers) => layers.to_vec(),
                // Where the engine keeps the image's layers beneath containers only, the
                // anchor is made first and shows them; it starts once they are checked.
                overlay::Stack::BelowAnchor(count) => {
                    let created = anchor.insert(self.created_anchor(target, &image.id)?);
                    let layers = self.layers_below(created, count)?;
                    overlay::check_layers(&layers, source, &path)?;
                    layers
                }
            };
            toolboxes::build_partial(&target.directory, &target.name, |partial| {
                overlay::make_dirs(partial)?;
                // A mount that fails now (a kernel without overlayfs, a toolbox directory on
                // a filesystem overlayfs cannot write to) means overlay storage does not work
                // here.
                overlay::mount(partial, &layers).map_err(|e| match e.downcast::<Unusable>() {
                    Ok(unusable) => unusable,
                    Err(e) => Unusable(format!("{e:#}")),
                })?;
                let tree = overlay::root(partial);
                let prepared = toolboxes::prepare_tree(&tree)
                    .and_then(|()| toolboxes::check_account_files(&tree));
                let unmounted = overlay::unmount(partial);
                prepared?;
                unmounted?;
                let pinned = match &anchor {
                    Some(created) => {
                        self.runtime
                            .block_on(self.engine.start_anchor(created))
                            .map_err(|e| self.cannot_pin(e))?;
                        created.clone()
                    }
                    None => anchor
                        .insert(self.pinning_anchor(target, &image.id)?)
                        .clone(),
                };
                let reference = target.image.reference();
                if !self.quiet {
                    ui::say(format_args!(
                        "creating `{}` over the layers of {reference} ({})",
                        target.name,
                        short_id(&image.id)
                    ));
                }
                let metadata = Metadata {
                    image: reference,
                    image_id: image.id.clone(),
                    created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                    overlay: Some(toolboxes::Overlay {
                        layers,
                        anchor: pinned,
                    }),
                    imported_from: None,
                };
                toolboxes::finish(partial, &metadata)
            })
        })();
        if built.is_err()
            && let Some(anchor) = &anchor
        {
            let _ = self.remove_anchor(anchor);
        }
        built
    }

    /// Starts the anchor of a new overlay toolbox (see [`Self::start_anchor`]). It names
    /// the image by ID: the tag may move, the layers may not. An engine that cannot run
    /// it cannot pin the layers: [`Unusable`], to copy instead.
    fn pinning_anchor(&self, target: &Target, image_id: &str) -> Result<String, Unusable> {
        self.start_anchor(target, image_id)
            .map_err(|e| self.cannot_pin(e))
    }

    /// Creates the anchor of a new overlay toolbox, not started (see
    /// [`Self::pinning_anchor`]).
    fn created_anchor(&self, target: &Target, image_id: &str) -> Result<String, Unusable> {
        self.create_anchor(target, image_id)
            .map_err(|e| self.cannot_pin(e))
    }

    /// Why overlay storage is [`Unusable`] when the anchor cannot be made or started.
    fn cannot_pin(&self, e: anyhow::Error) -> Unusable {
        Unusable(format!(
            "{} cannot run the anchor container that would pin the image's layers ({e:#})",
            self.engine.name()
        ))
    }

    /// The layers of an image of `count` layers beneath the root of the created anchor
    /// `anchor`, as the engine names them (see [`Provisioning::anchor_layers`]).
    fn layers_below(&self, anchor: &str, count: usize) -> Result<Vec<PathBuf>, Unusable> {
        self.runtime
            .block_on(self.engine.anchor_layers(anchor, count))
            .map_err(|e| Unusable(format!("cannot read the anchor's layers: {e:#}")))
    }

    /// Gives the overlay toolbox `recorded` describes a running anchor if its own is not
    /// running (made before anchors ran, or stopped): a new one is recorded, the old one
    /// removed; the toolbox's files stay as they are.
    fn pin_again(&mut self, target: &Target, recorded: &Metadata) -> Result<()> {
        let Some(overlay) = &recorded.overlay else {
            return Ok(());
        };
        if self
            .runtime
            .block_on(self.engine.anchor_holds(&overlay.anchor))?
        {
            return Ok(());
        }
        let _lock = toolboxes::lock_for_create(&target.directory, &target.name)?;
        let anchor = self.start_anchor(target, &recorded.image_id)?;
        let mut metadata = recorded.clone();
        if let Some(overlay) = &mut metadata.overlay {
            overlay.anchor = anchor.clone();
        }
        if let Err(e) = toolboxes::replace_metadata(&target.path(), &metadata) {
            let _ = self.remove_anchor(&anchor);
            return Err(e);
        }
        self.remove_anchor(&overlay.anchor)?;
        if !self.quiet {
            ui::say(format_args!(
                "`{}` is pinned by a running anchor ({}) now; its old one was not running",
                target.name,
                short_id(&anchor)
            ));
        }
        Ok(())
    }

    /// Creates and starts the anchor that pins image `image_id` for the toolbox `target`
    /// (see [`Self::create_anchor`]).
    fn start_anchor(&self, target: &Target, image_id: &str) -> Result<String> {
        let created = self.create_anchor(target, image_id)?;
        if let Err(e) = self.runtime.block_on(self.engine.start_anchor(&created)) {
            let _ = self.remove_anchor(&created);
            return Err(e);
        }
        Ok(created)
    }

    /// Creates the anchor that pins image `image_id` for the toolbox `target`, running
    /// toolbox's binary from the toolbox directory. Labelled with this process too: until
    /// the toolbox records it, another creation's [`remove_abandoned_anchors`] leaves it.
    fn create_anchor(&self, target: &Target, image_id: &str) -> Result<String> {
        let path = target.path();
        let labels = HashMap::from([
            (LABEL_ANCHOR.to_string(), path.display().to_string()),
            (LABEL_PID.to_string(), std::process::id().to_string()),
        ]);
        let exe = toolboxes::own_binary(&target.directory, true)?;
        let idle = toolboxes::idle_binary(&target.directory, &exe)?;
        let name = anchor_name(&target.name, &path);
        self.runtime
            .block_on(self.engine.create_anchor(image_id, &name, labels, &idle))
    }

    /// Removes an anchor, once its toolbox is gone.
    fn remove_anchor(&self, anchor: &str) -> Result<()> {
        self.runtime.block_on(self.engine.remove_anchor(anchor))
    }

    /// Removes the anchor of a new overlay toolbox that will not be put in place.
    fn forget_new_anchor(&self, partial: &Path) {
        if let Ok(metadata) = toolboxes::read_metadata(partial)
            && let Some(overlay) = metadata.overlay
        {
            let _ = self.remove_anchor(&overlay.anchor);
        }
    }

    /// A copy toolbox: the image's export unpacked into a partial tree.
    fn build_copy(&mut self, target: &Target, image_id: &str) -> Result<PathBuf> {
        let Provisioner {
            runtime,
            engine,
            signals,
            quiet,
            verbose,
        } = self;
        let reference = target.image.reference();
        let report = Report {
            quiet: *quiet,
            verbose: *verbose,
        };
        toolboxes::build_partial(&target.directory, &target.name, |partial| {
            runtime.block_on(create(
                engine,
                &reference,
                &target.name,
                image_id,
                partial,
                signals,
                report,
            ))
        })
    }

    fn check_signals(&mut self) -> Result<()> {
        let signals = &mut self.signals;
        match self.runtime.block_on(async { signals.pending() }) {
            Some(signal) => Err(Interrupted(signal.as_raw()).into()),
            None => Ok(()),
        }
    }
}

/// What a creation says on stderr.
#[derive(Debug, Clone, Copy)]
struct Report {
    quiet: bool,
    /// Also where the time went.
    verbose: bool,
}

/// Fills `partial` with the filesystem of image `image_id` and completes it.
async fn create<E: Provisioning>(
    engine: &E,
    reference: &str,
    name: &str,
    image_id: &str,
    partial: &Path,
    signals: &mut Caught,
    report: Report,
) -> Result<()> {
    if !report.quiet {
        ui::say(format_args!(
            "creating `{name}` from {reference} ({})",
            short_id(image_id)
        ));
    }
    let labels = HashMap::from([
        (LABEL_TOOLBOX.to_string(), name.to_string()),
        (LABEL_PID.to_string(), std::process::id().to_string()),
    ]);
    // Not raced against signals: a signal arriving now waits in `signals` until the
    // export below, so the container, once created, is always removed.
    // By ID, as recorded: the tag may have moved since it was inspected.
    let container = engine
        .create_container(image_id, labels)
        .await
        .with_context(|| format!("creating `{name}` from {reference}"))?;
    let started = Instant::now();
    let copied = export_into(engine, &container, partial, signals, report.quiet).await;
    let removed = engine.remove_container(&container).await;
    let stats = copied?;
    removed?;
    if !report.quiet {
        ui::say(format_args!(
            "unpacked {} entries, {} MB in {:.1} s",
            stats.entries,
            stats.bytes / 1_000_000,
            started.elapsed().as_secs_f64()
        ));
    }
    let metadata = Metadata {
        image: reference.to_string(),
        image_id: image_id.to_string(),
        created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        overlay: None,
        imported_from: None,
    };
    let flushing = Instant::now();
    toolboxes::complete(partial, &metadata)?;
    if report.verbose {
        ui::say(format_args!(
            "completed and flushed to disk in {:.2} s",
            flushing.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

pub(crate) async fn find_image<E: Provisioning>(
    engine: &E,
    image: &ImageRef,
    always_pull: bool,
    quiet: bool,
) -> Result<Image> {
    let reference = image.reference();
    let local = engine.image(&reference).await?;
    match (&local, always_pull) {
        (Some(found), false) => return Ok(found.clone()),
        (None, _) if !quiet => ui::say(format_args!("image {reference} is not here; pulling it")),
        _ => {}
    }
    if let Err(e) = engine.pull(image, quiet).await {
        match local {
            Some(found) => {
                if !quiet {
                    ui::warn(format_args!("{e:#}; using the local image"));
                }
                return Ok(found);
            }
            None => return Err(e),
        }
    }
    engine
        .image(&reference)
        .await?
        .ok_or_else(|| anyhow!("image `{reference}` is still missing after the pull"))
}

/// Streams the container's export into the unpacker running on a blocking thread,
/// showing progress unless `quiet`. The unpacker has always finished when this returns,
/// even when a signal cut the export short, so the partial tree can be removed safely.
async fn export_into<E: Provisioning>(
    engine: &E,
    container: &str,
    partial: &Path,
    signals: &mut Caught,
    quiet: bool,
) -> Result<unpack::Stats> {
    let (sender, receiver) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let target: PathBuf = partial.to_path_buf();
    let options = unpack::Options::for_this_host();
    let counters = Arc::new(unpack::Progress::default());
    let unpacker = tokio::task::spawn_blocking({
        let counters = Arc::clone(&counters);
        move || {
            let reader = ChannelReader {
                receiver,
                chunk: Bytes::new(),
            };
            unpack::unpack_watched(reader, &target, options, &counters)
        }
    });
    let mut progress = ui::UnpackProgress::new(ui::Progress::new(quiet));
    let show = async {
        let mut every = tokio::time::interval(PROGRESS_EVERY);
        loop {
            every.tick().await;
            progress.update(
                counters.bytes.load(Ordering::Relaxed),
                counters.entries.load(Ordering::Relaxed),
            );
        }
    };
    let exported = tokio::select! {
        exported = engine.export(container, &sender) => exported,
        signal = signals.stopping() => Err(Interrupted(signal.as_raw()).into()),
        never = show => match never {},
    };
    // Dropping the sender ends the stream, and the unpacker with it.
    drop(sender);
    let unpacked = unpacker.await;
    progress.finish();
    let unpacked = unpacked.context("the unpacker thread failed")?;
    // A truncated export makes the unpacker fail too, so the export's own error is the
    // one worth reporting; when the unpacker stopped first (a refused entry), its error
    // explains why.
    match exported {
        Err(e) if !e.is::<SinkClosed>() => Err(e),
        _ => Ok(unpacked
            .with_context(|| format!("cannot unpack the image into {}", partial.display()))?),
    }
}

/// The export stream as a `Read` for the unpacker thread.
struct ChannelReader {
    receiver: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::{Export, Fake};
    use crate::sys::signals::{self, Signal};
    use std::sync::Mutex;

    /// Tests that catch signals run one at a time: a signal reaches every catcher.
    static CATCHING: Mutex<()> = Mutex::new(());

    const REFERENCE: &str = "fake:latest";

    /// A small root filesystem, a few export chunks long.
    fn archive() -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o755);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_cksum();
            tar.append_data(&mut header, path, data).unwrap();
        };
        add("etc/os-release", b"ID=fake\n");
        add("usr/bin/tool", &[7u8; 8192]);
        add("usr/bin/other", &[9u8; 8192]);
        tar.into_inner().unwrap()
    }

    fn engine(archive: Vec<u8>, export: Export) -> Fake {
        let image = Image {
            id: "sha256:f00d".into(),
            layers: Layers::Unavailable("in memory".into()),
            run_label: None,
            found_in: None,
        };
        let mut fake = Fake::with_image(REFERENCE, image, archive);
        fake.export = export;
        fake
    }

    /// The toolbox `core-fake` in the toolbox directory `toolboxes` under `dir`.
    fn target(dir: &Path) -> Target {
        Target {
            directory: dir.join("toolboxes"),
            name: "core-fake".into(),
            image: ImageRef::parse(REFERENCE, "latest").unwrap(),
            storage: Storage::Copy,
            storage_demanded: false,
            storage_auto: false,
        }
    }

    fn create(engine: &Fake, target: &Target) -> Result<bool> {
        let runtime = engine::async_runtime().unwrap();
        create_with(Provisioner::with(runtime, engine, true, false)?, target)
    }

    /// What a creation left in the toolbox directory under `dir`, besides lock files.
    fn left(dir: &Path) -> Vec<String> {
        let Ok(entries) = fs::read_dir(dir.join("toolboxes")) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.ends_with(".lock"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_creation_leaves_a_complete_toolbox_and_no_container() {
        let _one = CATCHING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let fake = engine(archive(), Export::Whole);
        let target = target(dir.path());
        assert!(create(&fake, &target).unwrap());
        assert_eq!(left(dir.path()), ["core-fake"]);
        let metadata = toolboxes::complete_metadata(&target.path())
            .unwrap()
            .unwrap();
        assert_eq!(metadata.image_id, "sha256:f00d");
        assert_eq!(
            fs::read(target.path().join("usr/bin/tool")).unwrap().len(),
            8192
        );
        assert!(
            fake.container_ids().is_empty(),
            "the export container is removed"
        );
        // Complete now: another creation finds it and asks nothing.
        assert!(!create(&fake, &target).unwrap());
    }

    #[test]
    fn any_creation_removes_the_export_containers_of_dead_toolbox_processes() {
        let _one = CATCHING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let fake = engine(archive(), Export::Whole);
        let left_by = |name: &str, pid: &str| {
            let labels = HashMap::from([
                (LABEL_TOOLBOX.to_string(), name.to_string()),
                (LABEL_PID.to_string(), pid.to_string()),
            ]);
            fake.containers
                .lock()
                .unwrap()
                .insert(format!("{name}-{pid}"), labels);
        };
        // A toolbox process killed mid-export, of another toolbox; and one still running.
        left_by("core-other", &i32::MAX.to_string());
        left_by("core-busy", &std::process::id().to_string());
        assert!(create(&fake, &target(dir.path())).unwrap());
        assert_eq!(
            fake.container_ids(),
            [format!("core-busy-{}", std::process::id())]
        );
    }

    // The promise of the module comment: a failed creation leaves no tree, no partial
    // tree, no container.
    #[test]
    fn a_failed_or_corrupt_export_leaves_nothing() {
        let _one = CATCHING.lock().unwrap_or_else(|e| e.into_inner());
        let whole = archive();
        let mut truncated = whole[..whole.len() / 2].to_vec();
        truncated.extend([0u8; 100]);
        for (case, fake) in [
            (
                "daemon died",
                engine(whole.clone(), Export::FailAfter(4096)),
            ),
            ("corrupt archive", engine(truncated, Export::Whole)),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let err = create(&fake, &target(dir.path())).unwrap_err();
            assert!(
                left(dir.path()).is_empty(),
                "{case}: {:?}",
                left(dir.path())
            );
            assert!(fake.container_ids().is_empty(), "{case}: {err:#}");
            assert_eq!(crate::exit::status_of(&err), 125, "{case}: {err:#}");
        }
    }

    #[test]
    fn a_missing_image_leaves_the_directory_untouched() {
        let _one = CATCHING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let mut fake = engine(archive(), Export::Whole);
        fake.images.clear();
        let target = target(dir.path());
        let err = create(&fake, &target).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "cannot pull image `fake:latest`: no registry here"
        );
        assert!(!target.directory.exists());
    }

    // Ctrl-C while the export streams: exit 130, and the container and partial tree go.
    #[test]
    fn an_interrupted_creation_leaves_nothing() {
        let _one = CATCHING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let fake = engine(archive(), Export::StallAfter(4096));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                let thread = loop {
                    if let Some(thread) = *fake.exporting.lock().unwrap() {
                        break thread;
                    }
                    assert!(std::time::Instant::now() < deadline, "no export started");
                    std::thread::sleep(Duration::from_millis(5));
                };
                signals::send_to_thread(thread, Signal::INT);
            });
            let err = create(&fake, &target(dir.path())).unwrap_err();
            assert_eq!(crate::exit::status_of(&err), 130, "{err:#}");
        });
        assert!(left(dir.path()).is_empty(), "{:?}", left(dir.path()));
        assert!(fake.container_ids().is_empty());
    }

    // `rm -rf DIR/NAME` leaves the toolbox's anchor running, pinning its image: the next
    // creation of any toolbox removes it, and only the anchors no toolbox records.
    #[test]
    fn a_creation_removes_the_anchors_no_toolbox_records() {
        let _one = CATCHING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let fake = engine(archive(), Export::Whole);
        let directory = dir.path().join("toolboxes");
        fs::create_dir_all(&directory).unwrap();
        let recording = |tree: &Path, anchor: &str| {
            fs::create_dir(tree).unwrap();
            let metadata = Metadata {
                overlay: Some(toolboxes::Overlay {
                    layers: Vec::new(),
                    anchor: anchor.into(),
                }),
                ..Metadata::adopted()
            };
            toolboxes::finish(tree, &metadata).unwrap();
        };
        let dead = i32::MAX.to_string();
        let anchor = |id: &str, path: &Path, pid: &str| {
            let labels = HashMap::from([
                (LABEL_ANCHOR.to_string(), path.display().to_string()),
                (LABEL_PID.to_string(), pid.to_string()),
            ]);
            fake.containers.lock().unwrap().insert(id.into(), labels);
        };
        recording(&directory.join("core-kept"), "anchor-kept");
        anchor("anchor-kept", &directory.join("core-kept"), &dead);
        recording(
            &toolboxes::previous(&directory, "core-updated"),
            "anchor-previous",
        );
        anchor("anchor-previous", &directory.join("core-updated"), &dead);
        // Removed by hand; and one its toolbox no longer records (an update killed).
        anchor("anchor-gone", &directory.join("core-gone"), &dead);
        anchor("anchor-replaced", &directory.join("core-kept"), &dead);
        // A toolbox directory not there (not mounted): nothing can be told.
        anchor(
            "anchor-unseen",
            Path::new("/nonexistent-toolboxes/core-x"),
            &dead,
        );
        // A creation under way: its process lives, or it holds the toolbox's lock.
        let own = std::process::id().to_string();
        anchor("anchor-creating", &directory.join("core-new"), &own);
        let _held = toolboxes::lock_for_create(&directory, "core-locked").unwrap();
        anchor("anchor-locked", &directory.join("core-locked"), &dead);
        assert!(create(&fake, &target(dir.path())).unwrap());
        assert_eq!(
            fake.container_ids(),
            [
                "anchor-creating",
                "anchor-kept",
                "anchor-locked",
                "anchor-previous",
                "anchor-unseen"
            ]
        );
    }

    #[test]
    fn anchors_are_named_for_their_toolbox_and_never_alike() {
        let path = Path::new("/var/lib/toolbox/core-fedora-toolbox-41");
        let first = anchor_name("core-fedora-toolbox-41", path);
        let second = anchor_name("core-fedora-toolbox-41", path);
        assert_ne!(first, second);
        for name in [first, second] {
            let suffix = name
                .strip_prefix("toolbox-anchor-core-fedora-toolbox-41-")
                .unwrap();
            assert_eq!(suffix.len(), 8, "{name}");
            assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
        }
    }

    /// Creates an overlay toolbox through `fake` where overlay cannot work, once wanted
    /// (it must be a copy) and once demanded: the refusal, and what that left in its
    /// toolbox directory. No container is left either time.
    fn copied_then_refused(fake: &Fake) -> (String, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let mut wanted = target(dir.path());
        wanted.storage = Storage::Overlay;
        assert!(create(fake, &wanted).unwrap());
        let metadata = toolboxes::complete_metadata(&wanted.path())
            .unwrap()
            .unwrap();
        assert_eq!(metadata.storage(), Storage::Copy);
        assert!(fake.container_ids().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let mut demanded = target(dir.path());
        demanded.storage = Storage::Overlay;
        demanded.storage_demanded = true;
        let err = format!("{:#}", create(fake, &demanded).unwrap_err());
        assert!(fake.container_ids().is_empty());
        (err, left(dir.path()))
    }

    // Overlay storage needs layers it can mount: without them the image is copied.
    #[test]
    fn overlay_storage_falls_back_to_a_copy_where_it_cannot_work() {
        let _one = CATCHING.lock().unwrap_or_else(|e| e.into_inner());
        let (err, left) = copied_then_refused(&engine(archive(), Export::Whole));
        assert_eq!(
            err,
            "cannot use overlay storage (--storage overlay): in memory"
        );
        assert!(left.is_empty(), "{left:?}");
    }

    // Snapshots the engine keeps beneath containers only: the anchor is made first, and
    // goes again, never started, when its layers cannot be read, before the image is
    // copied or the demand refused.
    #[test]
    fn the_anchor_that_shows_snapshots_goes_when_they_cannot_be_read() {
        let _one = CATCHING.lock().unwrap_or_else(|e| e.into_inner());
        let mut fake = engine(archive(), Export::Whole);
        for image in fake.images.values_mut() {
            image.layers = Layers::Snapshots(1);
        }
        let (err, left) = copied_then_refused(&fake);
        assert_eq!(
            err,
            "cannot use overlay storage (--storage overlay): cannot read the anchor's layers: \
             the Docker daemon shows no layers of a container"
        );
        // The anchors' shared binary stays for the next; no toolbox, partial or not.
        assert_eq!(left, [".toolbox-idle"]);
        assert!(fake.started.lock().unwrap().is_empty());
    }

    /// Two layer directories in `dir`, top first: the top one's `etc/os-release`, the
    /// bottom one's `usr/bin/tool`.
    fn two_layers(dir: &Path) -> (PathBuf, PathBuf) {
        let (top, bottom) = (dir.join("top"), dir.join("bottom"));
        fs::create_dir_all(top.join("etc")).unwrap();
        fs::create_dir_all(bottom.join("usr/bin")).unwrap();
        fs::write(top.join("etc/os-release"), "ID=fake\n").unwrap();
        fs::write(bottom.join("usr/bin/tool"), "bottom").unwrap();
        (top, bottom)
    }

    /// An engine whose image's layers are snapshots, which it names `layers` for every
    /// anchor.
    fn named_snapshots(layers: &[&Path]) -> Fake {
        let mut fake = engine(archive(), Export::Whole);
        for image in fake.images.values_mut() {
            image.layers = Layers::Snapshots(layers.len());
        }
        fake.anchor_layers = Some(layers.iter().map(|layer| layer.to_path_buf()).collect());
        fake
    }

    /// Snapshots whose directories the engine names for the anchor (containerd's view of
    /// the image): mounted as named, the anchor kept; a count that is not the image's is
    /// not mounted.
    #[test]
    fn layers_the_engine_names_for_its_anchor_are_mounted() {
        let _one = CATCHING.lock().unwrap_or_else(|e| e.into_inner());
        if !crate::sys::is_root() {
            eprintln!("skipped: mounting an overlay takes root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (top, bottom) = two_layers(dir.path());
        let mut fake = named_snapshots(&[&top, &bottom]);
        let mut wanted = target(dir.path());
        wanted.storage = Storage::Overlay;
        assert!(create(&fake, &wanted).unwrap());
        let metadata = toolboxes::complete_metadata(&wanted.path())
            .unwrap()
            .unwrap();
        let overlay = metadata.overlay.expect("overlay storage");
        assert_eq!(overlay.layers, [top.clone(), bottom.clone()]);
        assert_eq!(fake.container_ids(), std::slice::from_ref(&overlay.anchor));
        assert_eq!(
            *fake.started.lock().unwrap(),
            std::slice::from_ref(&overlay.anchor)
        );

        fake.anchor_layers = Some(vec![top.clone()]);
        fake.containers.lock().unwrap().clear();
        let (err, left) = copied_then_refused(&fake);
        assert_eq!(
            err,
            "cannot use overlay storage (--storage overlay): cannot read the anchor's layers: \
             the Docker daemon names 1 for an image of 2"
        );
        assert_eq!(left, [".toolbox-idle"]);
    }

    // Bug: with Docker's containerd image store the anchor started before its layers
    // were read, and starting it opens the image's /etc/passwd: a FIFO there hung the
    // daemon's start. The anchor is made, its layers checked, and it never starts.
    #[test]
    fn an_anchor_starts_only_once_its_layers_were_checked() {
        let _one = CATCHING.lock().unwrap_or_else(|e| e.into_inner());
        if !crate::sys::is_root() {
            eprintln!("skipped: mounting an overlay takes root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (top, bottom) = two_layers(dir.path());
        rustix::fs::mknodat(
            rustix::fs::CWD,
            top.join("etc/passwd"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let fake = named_snapshots(&[&top, &bottom]);
        let mut wanted = target(dir.path());
        wanted.storage = Storage::Overlay;
        wanted.storage_demanded = true;
        let err = format!("{:#}", create(&fake, &wanted).unwrap_err());
        assert!(
            err.contains("`/etc/passwd` in the image is a FIFO"),
            "{err}"
        );
        assert!(fake.started.lock().unwrap().is_empty());
        assert!(fake.container_ids().is_empty());
        assert_eq!(left(dir.path()), [".toolbox-idle"]);
    }

    /// Layers as directories (Docker's overlay2 and Podman's `overlay` answer this): the
    /// toolbox mounts them under its own upper directory, with an anchor in the engine.
    #[test]
    fn layer_directories_are_mounted_beneath_the_toolboxs_own() {
        let _one = CATCHING.lock().unwrap_or_else(|e| e.into_inner());
        if !crate::sys::is_root() {
            eprintln!("skipped: mounting an overlay takes root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (top, bottom) = two_layers(dir.path());
        let mut fake = engine(archive(), Export::Whole);
        for image in fake.images.values_mut() {
            image.layers = Layers::Directories(vec![top.clone(), bottom.clone()]);
        }
        let mut wanted = target(dir.path());
        wanted.storage = Storage::Overlay;
        assert!(create(&fake, &wanted).unwrap());
        let path = wanted.path();
        let metadata = toolboxes::complete_metadata(&path).unwrap().unwrap();
        let overlay = metadata.overlay.clone().expect("overlay storage");
        assert_eq!(overlay.layers, [top.clone(), bottom.clone()]);
        // The anchor is the one container left: it keeps the layers.
        assert_eq!(fake.container_ids(), std::slice::from_ref(&overlay.anchor));
        let mounted = crate::store::overlay::mount(&path, &overlay.layers);
        let tool = fs::read_to_string(path.join("root/usr/bin/tool"));
        crate::store::overlay::unmount(&path).unwrap();
        mounted.unwrap();
        assert_eq!(tool.unwrap(), "bottom");
    }

    /// Layer directories that are gone by the time they are checked: copied, or the
    /// demand refused naming the one missing.
    #[test]
    fn missing_layer_directories_are_copied_instead() {
        let _one = CATCHING.lock().unwrap_or_else(|e| e.into_inner());
        let mut fake = engine(archive(), Export::Whole);
        for image in fake.images.values_mut() {
            image.layers = Layers::Directories(vec![PathBuf::from("/nonexistent/layer/diff")]);
        }
        let (err, left) = copied_then_refused(&fake);
        assert!(
            err.starts_with("cannot use overlay storage (--storage overlay): ")
                && err.contains("/nonexistent/layer/diff"),
            "{err}"
        );
        assert!(
            !left.iter().any(|name| name.starts_with("core-fake")),
            "{left:?}"
        );
    }
}
