//! runtime::nspawn::enter: a session in a toolbox tree. Creates the toolbox if needed
//! (`provision`), checks its image's freshness on a warm start without holding it up,
//! makes the tree safe for systemd-nspawn ([`super::mountpoints`]), records the session,
//! checks the command can run, then becomes systemd-nspawn (copy storage) or stays its
//! parent to unmount after the last session (overlay storage).

use std::io::IsTerminal;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::engine::Access;
use crate::exit::CommandError;
use crate::host::kernel::Kernel;
use crate::host::{self, Env, HostPaths, ui};
use crate::model::options;
use crate::model::plan::{self, Payload, Plan, UpdateMode};
use crate::model::tracing as model_tracing;
use crate::provision::{self, Target};
use crate::runtime::guard;
use crate::runtime::nspawn::command::{self as nspawn, Invocation, Launch, Nspawn};
use crate::runtime::nspawn::{mountpoints, tracing};
use crate::runtime::target::Found;
use crate::runtime::{host_exec, lookup};
use crate::store::toolboxes::{self, Metadata};
use crate::store::{overlay, session as records};
use crate::sys;

/// How long a warm start waits for the daemon when checking whether the image changed.
const FRESHNESS_TIMEOUT: Duration = Duration::from_millis(300);

/// What a session needs from the run that starts it.
pub struct Session<'a> {
    pub access: &'a Access,
    pub paths: &'a HostPaths,
    /// The host's `/etc/passwd`.
    pub passwd: &'a str,
    /// `TOOLBOX_UPDATE` and `TOOLBOX_UPDATE_INTERVAL`.
    pub update: UpdateMode,
    pub update_interval: Duration,
    /// -1 quiet, 0 normal, 1 and 2 verbose.
    pub verbosity: i8,
    pub show_secrets: bool,
}

impl Session<'_> {
    fn quiet(&self) -> bool {
        self.verbosity < 0
    }

    fn verbose(&self) -> bool {
        self.verbosity > 0
    }

    fn shown(&self, command: &impl std::fmt::Display) -> String {
        ui::shown(command, self.show_secrets)
    }
}

/// What entering decides before anything is written: the plan (with the storage an
/// existing toolbox was built with), the systemd-nspawn found, this launch's facts.
pub struct Entry {
    plan: Plan,
    nspawn: Nspawn,
    launch: Launch,
    metadata: Option<Metadata>,
    /// The running kernel, when sessions may trace it (`TOOLBOX_TRACING`).
    kernel: Option<Kernel>,
    /// The container or process the session debugs (`--target`).
    target: Option<Found>,
}

/// Reads what entering needs, with the `target` found for it, if any; writes only
/// systemd-nspawn's version cache, when `may_write`.
pub fn prepare(
    mut plan: Plan,
    env: &Env,
    paths: &HostPaths,
    may_write: bool,
    target: Option<Found>,
) -> Result<Entry> {
    let nspawn_cache = plan.directory.join(".nspawn-version");
    if may_write {
        // Before anything is written there.
        toolboxes::check_ownership(&plan.directory)?;
    }
    let nspawn = Nspawn::find(env, &nspawn_cache, may_write)?;
    let mut launch = Launch {
        systemd_booted: paths.systemd_booted.exists(),
        terminal: std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
        session: std::process::id(),
        marker: plan.directory.join(".toolboxenv"),
        host_exec: toolboxes::own_binary(&plan.directory, may_write).ok(),
        proxies: host::proxies(env),
        tracing: Vec::new(),
        target: Vec::new(),
        namespaces: Vec::new(),
        placement: mountpoints::Placement::default(),
    };
    if let Some(found) = &target {
        let staged = toolboxes::target_stage(&plan.directory, &plan.name, launch.session);
        launch.target = found.target.nspawn_options(&staged);
        launch.namespaces = found
            .target
            .namespace_paths()
            .into_iter()
            .map(|(ns, path)| (ns.name(), path))
            .collect();
    }
    // An existing toolbox keeps the storage it was built with. A normal user cannot see
    // into the toolbox directory: the run through sudo finds out.
    let metadata = match toolboxes::complete_metadata(&plan.path()) {
        Err(_) if !sys::is_root() => None,
        found => found?,
    };
    if let Some(metadata) = &metadata {
        let built = metadata.storage();
        if plan.storage_demanded && plan.storage != built {
            ui::warn(format_args!(
                "`{}` holds its image with {} storage, which --storage {} does not change; \
                 `toolbox update --storage {}` rebuilds it so",
                plan.name,
                built.name(),
                plan.storage.name(),
                plan.storage.name()
            ));
        }
        plan.storage = built;
    }
    let kernel = plan.tracing.then(|| Kernel::read(&paths.proc));
    Ok(Entry {
        plan,
        nspawn,
        launch,
        metadata,
        kernel,
        target,
    })
}

impl Entry {
    /// The systemd-nspawn command this entry would run, for `--dry-run`: the mounts
    /// placed in the tree as it is now, as they would be once it is mended (a tree not
    /// made yet is taken as empty).
    pub fn command(&self, quiet: bool) -> Invocation {
        let mut launch = self.launch.clone();
        // An overlay toolbox no session has mounted is looked at through a view of its
        // layers that only this process holds: its links decide where mounts land.
        let layers = self.metadata.as_ref().and_then(|m| m.overlay.as_ref());
        let path = self.plan.path();
        let view = match layers {
            Some(overlay) if sys::is_root() && !overlay::is_mounted(&path).unwrap_or(true) => {
                overlay::view(&path, &overlay.layers)
                    .inspect_err(|e| {
                        ui::warn(format_args!(
                            "{e:#}: the mounts are shown as written, not where the tree's \
                             links take them"
                        ))
                    })
                    .ok()
            }
            _ => None,
        };
        let tree = Tree {
            plan: &self.plan,
            nspawn: &self.nspawn,
            kernel: self.kernel.as_ref(),
            root: match &view {
                Some(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
                None => self.plan.root(),
            },
        };
        // Nothing is written, and a tree not made yet, or one that cannot be looked at,
        // keeps the destinations as written: entering says what is wrong with it.
        let placement = tree.place(&launch, mountpoints::Act::Look);
        tree.apply(&mut launch, placement.unwrap_or_default());
        nspawn::invocation(&self.plan, &self.nspawn, &launch, quiet)
    }
}

/// Enters the toolbox, creating it first if needed. Run as root; returns only for an
/// overlay session or a failure (a copy toolbox's session becomes systemd-nspawn).
pub fn enter(entry: Entry, session: &Session) -> Result<u8> {
    let Entry {
        mut plan,
        nspawn,
        mut launch,
        mut metadata,
        kernel,
        target: debugged,
    } = entry;
    toolboxes::tighten_directory(&plan.directory)?;
    let target = Target::of(&plan);
    // A toolbox with metadata is complete: nothing to create, nothing to ask a daemon.
    let created = metadata.is_none()
        && provision::ensure(&target, session.access, session.quiet(), session.verbose())?;
    let rebuilt = !created && check_freshness(session, &target, metadata.as_ref())?;
    // Also when another toolbox process created it while this one waited for the lock:
    // its storage decides what is entered.
    if metadata.is_none() || rebuilt {
        metadata = toolboxes::complete_metadata(&plan.path())?;
    }
    plan.storage = metadata
        .as_ref()
        .map_or(plan::Storage::Copy, toolboxes::Metadata::storage);
    let overlay = metadata.and_then(|m| m.overlay);
    if session.verbose() {
        ui::say(format_args!(
            "systemd-nspawn {} at {} ({}); {} storage",
            nspawn.version,
            nspawn.program.display(),
            nspawn.variant(launch.systemd_booted),
            plan.storage.name()
        ));
    }
    if created && plan.payload == Payload::Shell && !session.quiet() {
        let host = match plan.host_root() {
            Some(root) => format!("the host's / is at {root}"),
            None => "the host's / is not bound inside (see TOOLBOX_BIND)".to_string(),
        };
        ui::say(format_args!(
            "entering `{}`: {host}; `exit` or Ctrl-D leaves",
            plan.name
        ));
    }
    let tree = Tree {
        plan: &plan,
        nspawn: &nspawn,
        kernel: kernel.as_ref(),
        root: plan.root(),
    };
    // Run from its image, toolbox can be killed with its container at any moment; what it
    // mounts beside the container's processes must not outlive it (see `guard`).
    if sys::own_binary().is_none() && (overlay.is_some() || debugged.is_some()) {
        guard::start(&plan.directory, &plan.name)?;
    }
    // The target's files, staged for this session until it ends.
    let _staged = match &debugged {
        Some(found) => {
            toolboxes::remove_stale_stages(&plan.directory, &plan.name)?;
            let at = toolboxes::target_stage(&plan.directory, &plan.name, launch.session);
            found.stage(&at, session.quiet())?
        }
        None => None,
    };
    match overlay {
        None => {
            tree.secure(&mut launch, false)?;
            start_session(session, &plan, &launch)?;
            let invocation = nspawn::invocation(&plan, &nspawn, &launch, session.quiet());
            if session.verbosity >= 2 {
                ui::say(session.shown(&invocation));
            }
            match debugged {
                None => match invocation.exec()? {},
                // toolbox stays to say when the target exits.
                Some(found) => {
                    follow(&found, session)?;
                    let status = invocation.run();
                    remove_session_dirs(session, &plan, &launch);
                    status
                }
            }
        }
        Some(overlay) => enter_overlay(session, &tree, launch, &overlay, debugged),
    }
}

/// Joins the target's namespaces for the session about to start, and watches it.
fn follow(found: &Found, session: &Session) -> Result<()> {
    found.join()?;
    found.watch(session.quiet());
    Ok(())
}

/// A toolbox's tree as a session enters it.
struct Tree<'a> {
    plan: &'a Plan,
    nspawn: &'a Nspawn,
    kernel: Option<&'a Kernel>,
    /// Where the tree is seen: the plan's root, or a view of it.
    root: PathBuf,
}

impl Tree<'_> {
    /// Every mount of the session: configuration's, toolbox's own, the target's, and
    /// what tracing asks for.
    fn mounts(&self, launch: &Launch) -> Result<Vec<options::Mount>> {
        let mut mounts = self.plan.mounts.clone();
        let tracing = self.kernel.map(model_tracing::requests).unwrap_or_default();
        for own in [&launch.own_binds(), &tracing, &launch.target] {
            mounts.extend(
                options::mounts(own).map_err(|e| anyhow::anyhow!("toolbox's own option {e}"))?,
            );
        }
        Ok(mounts)
    }

    /// Checks the tree (and with [`mountpoints::Act::Repair`], mends it) and places the
    /// session's mounts in it (see [`mountpoints`]).
    fn place(&self, launch: &Launch, act: mountpoints::Act) -> Result<mountpoints::Placement> {
        let plan = self.plan;
        let host_root = plan.host_root();
        let mounts = self.mounts(launch)?;
        mountpoints::secure(&self.root, &plan.name, &mounts, host_root.as_deref(), act)
    }

    /// Gives `launch` the mounts as placed, and the tracing options that follow from
    /// where the host's kernel directories land.
    fn apply(&self, launch: &mut Launch, placement: mountpoints::Placement) {
        if let Some(kernel) = self.kernel {
            let root = self.plan.root();
            launch.tracing =
                tracing::options((&self.root, &root), kernel, &placement, self.nspawn.version);
        }
        launch.placement = placement;
    }

    /// Makes the tree safe to hand to systemd-nspawn and places the session's mounts: a
    /// look first, and only when something is to change, a repair under the toolbox's
    /// mount lock, which the caller may hold already (`locked`).
    fn secure(&self, launch: &mut Launch, locked: bool) -> Result<()> {
        let plan = self.plan;
        let mut placement = self.place(launch, mountpoints::Act::Look)?;
        if !placement.changes.is_empty() {
            let _lock = match locked {
                true => None,
                false => Some(toolboxes::lock_for_mount(&plan.directory, &plan.name)?),
            };
            placement = self.place(launch, mountpoints::Act::Repair)?;
            for change in &placement.changes {
                if let mountpoints::Change::Replaced {
                    path,
                    target,
                    directory,
                } = change
                {
                    ui::say(format_args!(
                        "replaced the symlink `{path}` -> `{}` in `{}` with an empty {}: \
                         systemd-nspawn mounts on it and would follow the link",
                        target.display(),
                        plan.name,
                        if *directory { "directory" } else { "file" }
                    ));
                }
            }
        }
        self.apply(launch, placement);
        nspawn::check_supported(plan, self.nspawn, launch)
    }
}

/// What every session needs before systemd-nspawn starts: the user, a payload that can
/// run, the marker file, and the session's record.
fn start_session(session: &Session, plan: &Plan, launch: &Launch) -> Result<()> {
    remove_stale_session_dirs(session, plan);
    add_user(session, plan)?;
    check_payload(plan)?;
    if !launch.marker.exists() {
        std::fs::write(&launch.marker, "")
            .with_context(|| format!("cannot create {}", launch.marker.display()))?;
    }
    let registered = records::register(
        &plan.directory,
        &session.paths.proc,
        &plan.name,
        &plan.session_machine_name(launch.session),
        plan.target.as_ref().map(|t| t.given.as_str()),
    );
    match registered {
        // A full disk is when the toolbox is needed most: enter it anyway.
        Err(e) if crate::store::is_no_space(&e) => {
            ui::warn(format_args!(
                "{e:#}; `toolbox list` and `rm` will not see this session"
            ));
            Ok(())
        }
        result => result,
    }
}

/// Removes what systemd-nspawn left on the host of this toolbox's sessions that ended:
/// the directory it keeps per machine in `propagate` (where `/run` is not a tmpfs,
/// nothing else does), and the tmpfs it mounts per machine in `unix-export`, which stays
/// mounted when it is killed outright and now and then when not (systemd/systemd#36455).
fn remove_stale_session_dirs(session: &Session, plan: &Plan) {
    for dir in [
        &session.paths.nspawn_propagate,
        &session.paths.nspawn_unix_export,
    ] {
        for path in ended_sessions(dir, plan, |pid| sys::process_exists(pid as i32)) {
            remove_session_dir(&path);
        }
    }
}

/// After a session toolbox waited for: what its systemd-nspawn left in those directories.
fn remove_session_dirs(session: &Session, plan: &Plan, launch: &Launch) {
    let machine = plan.session_machine_name(launch.session);
    for dir in [
        &session.paths.nspawn_propagate,
        &session.paths.nspawn_unix_export,
    ] {
        remove_session_dir(&dir.join(&machine));
    }
}

/// The entries of `dir` named for a session of this toolbox whose process is not
/// `running`.
fn ended_sessions(dir: &Path, plan: &Plan, running: impl Fn(u32) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.rsplit_once('-')
                .and_then(|(_, pid)| pid.parse::<u32>().ok())
                .is_some_and(|pid| plan.session_machine_name(pid) == name && !running(pid))
        })
        .map(|entry| entry.path())
        .collect()
}

/// Unmounts what is mounted on a session's directory (never through a symlink there),
/// then removes it if it is empty: one with anything in it stays.
fn remove_session_dir(path: &Path) {
    // Each detach takes the topmost of the mounts stacked there.
    for _ in 0..8 {
        if sys::detach_mount_nofollow(path).is_err() {
            break;
        }
    }
    let _ = std::fs::remove_dir(path);
}

/// A session of an overlay toolbox: mounted by the first session, shared by the ones that
/// start while it runs, and unmounted when the last one ends. toolbox stays as the
/// parent of systemd-nspawn for that, which dies with it.
fn enter_overlay(
    session: &Session,
    tree: &Tree,
    mut launch: Launch,
    overlay: &toolboxes::Overlay,
    target: Option<Found>,
) -> Result<u8> {
    let plan = tree.plan;
    let launch = &mut launch;
    let path = plan.path();
    let mounted = (|| {
        let _lock = toolboxes::lock_for_mount(&plan.directory, &plan.name)?;
        // `rm` or `update` may have replaced it while this run waited for the lock.
        let image = match toolboxes::complete_metadata(&path)? {
            Some(current) if current.overlay.as_ref() == Some(overlay) => current.image,
            _ => bail!(
                "toolbox `{}` was removed or rebuilt while starting; run toolbox again",
                plan.name
            ),
        };
        if let Some(missing) = overlay::missing_layer(&overlay.layers) {
            return Err(overlay::LayersGone {
                name: plan.name.clone(),
                image,
                missing: missing.to_path_buf(),
            }
            .into());
        }
        overlay::mount(&path, &overlay.layers)?;
        tree.secure(launch, true)?;
        start_session(session, plan, launch)
    })();
    let status = mounted.and_then(|()| {
        if let Some(found) = &target {
            follow(found, session)?;
        }
        let invocation = nspawn::invocation(plan, tree.nspawn, launch, session.quiet());
        if session.verbosity >= 2 {
            ui::say(session.shown(&invocation));
        }
        let status = invocation.run();
        remove_session_dirs(session, plan, launch);
        status
    });
    if let Err(e) = end_overlay_session(session, plan)
        && !session.quiet()
    {
        ui::warn(format_args!("{e:#}"));
    }
    status
}

/// Ends this process's session of an overlay toolbox, unmounting it if it was the last.
fn end_overlay_session(session: &Session, plan: &Plan) -> Result<()> {
    let _lock = toolboxes::lock_for_mount(&plan.directory, &plan.name)?;
    records::end(&plan.directory, &plan.name)?;
    let lingering = unmount_unused(&plan.directory, &plan.name, &session.paths.proc)?;
    if !lingering.is_empty() && session.verbose() {
        ui::say(format_args!(
            "`{}` stays mounted: processes started in it still run (PID {})",
            plan.name,
            ui::pid_list(&lingering)
        ));
    }
    Ok(())
}

/// Unmounts overlay toolbox `name` of `directory` when no live session has it and no
/// process started in it still runs; returns those processes. The caller holds the
/// toolbox's mount lock.
pub fn unmount_unused(directory: &Path, name: &str, proc_root: &Path) -> Result<Vec<i32>> {
    if !records::live(directory, proc_root, name)?.is_empty() {
        return Ok(Vec::new());
    }
    let path = directory.join(name);
    let lingering = overlay::processes(&path, proc_root)?;
    if lingering.is_empty() {
        overlay::unmount(&path)?;
    }
    Ok(lingering)
}

/// On a warm start, `TOOLBOX_UPDATE=notify` (the default) says when the image changed
/// since the toolbox was built, and `auto` rebuilds it; `never` contacts no daemon. The
/// daemon is asked at most once per `TOOLBOX_UPDATE_INTERVAL` seconds per toolbox, with
/// a short timeout, so a slow or stopped daemon never holds up the start. Returns whether
/// the toolbox was rebuilt.
fn check_freshness(
    session: &Session,
    target: &Target,
    metadata: Option<&toolboxes::Metadata>,
) -> Result<bool> {
    let mode = session.update;
    if mode == UpdateMode::Never {
        return Ok(false);
    }
    // An imported toolbox's image is in no engine.
    let Some(metadata) = metadata.filter(|m| m.imported_from.is_none()) else {
        return Ok(false);
    };
    let stamp = target.directory.join(format!(".{}.checked", target.name));
    let recent = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < session.update_interval);
    if recent {
        return Ok(false);
    }
    let changed = provision::image_changed(
        &target.image,
        &metadata.image_id,
        session.access,
        FRESHNESS_TIMEOUT,
    );
    if changed.is_some() {
        // Only an answer counts as a check: a down daemon is asked again next time.
        let _ = std::fs::write(&stamp, "");
    }
    if changed != Some(true) {
        return Ok(false);
    }
    if mode == UpdateMode::Notify {
        if !session.quiet() {
            ui::say(format_args!(
                "image {} has changed since `{}` was built; run `toolbox update` to rebuild it",
                target.image.reference(),
                target.name
            ));
        }
        return Ok(false);
    }
    // The command's output owns stdout: the report goes to stderr.
    let report = &mut std::io::stderr();
    // Nobody is asked on the way in: a previous tree with changes is never discarded here.
    let updated = provision::update(
        target,
        &session.paths.proc,
        session.access,
        false,
        &|_| false,
        (session.quiet(), session.verbose(), true),
        report,
    );
    match updated {
        Ok(updated) => Ok(matches!(updated, provision::Updated::Rebuilt { .. })),
        Err(e) if e.is::<provision::WouldDiscard>() => {
            if !session.quiet() {
                ui::warn(format_args!(
                    "image {} has changed, but {e}; entering it as it is",
                    target.image.reference()
                ));
            }
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// A `TOOLBOX_USER` the toolbox lacks but the host has is added with the host's UID, GID,
/// home and shell, instead of systemd-nspawn failing to resolve it.
fn add_user(session: &Session, plan: &Plan) -> Result<()> {
    if plan.user == "root" {
        return Ok(());
    }
    let Some(line) = host::passwd_line(session.passwd, &plan.user) else {
        return Ok(());
    };
    let gid = line.split(':').nth(3).and_then(|g| g.parse().ok());
    let groups = std::fs::read_to_string(&session.paths.group).unwrap_or_default();
    let group = gid.and_then(|gid| host::group_line(&groups, gid));
    if toolboxes::add_user(&plan.root(), line, group)? && session.verbose() {
        ui::say(format_args!("added user {} to `{}`", plan.user, plan.name));
    }
    Ok(())
}

/// Checks, before entering, that the payload can run inside the tree.
fn check_payload(plan: &Plan) -> Result<(), CommandError> {
    let root = plan.root();
    match &plan.payload {
        // Bound into every toolbox by toolbox itself, so not in the tree to be found.
        Payload::Command(command)
            if command[0] == host_exec::NAME || command[0] == host_exec::PATH_IN_TOOLBOX =>
        {
            Ok(())
        }
        Payload::Command(command) => lookup::check(
            &root,
            &plan.name,
            &command[0],
            &nspawn::container_path(plan),
        ),
        Payload::Shell => {
            let mut last = None;
            for shell in nspawn::login_shells() {
                match lookup::check(&root, &plan.name, shell.as_os_str(), "") {
                    Ok(()) => return Ok(()),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.expect("there is always a login shell to try"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Settings;

    #[test]
    fn only_this_toolboxs_ended_sessions_are_stale() {
        let plan = Plan::resolve(&Settings::from_environment(&[]), "core", Payload::Shell).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "core-fedora-latest-41",        // ended
            "core-fedora-latest-42",        // still running
            "core-fedora-latest-extra-43",  // another toolbox's session
            "other-fedora-latest-44",       // another toolbox's
            "core-fedora-latest-not-a-pid", // not a session's
            "core-fedora-latest-045",       // not how a PID is written
        ];
        for name in names {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let stale = ended_sessions(dir.path(), &plan, |pid| pid == 42);
        assert_eq!(stale, [dir.path().join("core-fedora-latest-41")]);
        assert!(ended_sessions(&dir.path().join("missing"), &plan, |_| false).is_empty());
    }

    #[test]
    fn a_session_dir_is_removed_only_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("core-1");
        let kept = dir.path().join("core-2");
        std::fs::create_dir(&empty).unwrap();
        std::fs::create_dir(&kept).unwrap();
        std::fs::write(kept.join("socket"), "").unwrap();
        remove_session_dir(&empty);
        remove_session_dir(&kept);
        assert!(!empty.exists());
        assert!(kept.join("socket").exists());
    }
}
