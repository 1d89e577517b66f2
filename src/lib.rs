//! toolbox: a debugging userland from a container image, entered with systemd-nspawn with
//! the host's PID, IPC and UTS namespaces and network shared and the host's `/` at
//! `/media/root`, or, with the spc runtime, run as a super privileged container through
//! the engine (see [`spc`]). [`run`] is the whole program; `main.rs` only maps its result
//! to an exit status.

pub mod cli;
pub mod config;
pub mod engine;
pub mod help;
pub mod host;
pub mod host_exec;
pub mod import;
pub mod lookup;
pub mod machine;
pub mod manage;
pub mod mountpoints;
pub mod nspawn;
pub mod options;
pub mod overlay;
pub mod plan;
pub mod provision;
pub mod session;
pub mod spc;
pub mod sudo;
pub mod sys;
pub mod ui;
pub mod unpack;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::cli::{Action, Options};
use crate::config::Settings;
use crate::engine::Access;
use crate::host::{Env, HostPaths, Invoker};
use crate::lookup::CommandError;
use crate::machine::State;
use crate::nspawn::{Launch, Nspawn, PROXY_VARIABLES};
use crate::plan::{Payload, Plan};
use crate::provision::{Interrupted, Target, UpdateMode};

/// Exit status for every failure of toolbox itself, as container tools use.
pub const EXIT_TOOLBOX_FAILED: u8 = 125;

/// How long a warm start waits for the daemon when checking whether the image changed.
const FRESHNESS_TIMEOUT: Duration = Duration::from_millis(300);

/// Runs toolbox with these arguments. On the normal path this never returns: the process
/// becomes systemd-nspawn. Otherwise it returns the status to exit with (after `--help`,
/// `--version`, `--dry-run` or a management command).
pub fn run(args: impl IntoIterator<Item = OsString>) -> Result<u8> {
    let args: Vec<OsString> = args.into_iter().collect();
    let invoked_as = args
        .first()
        .map(|a| Path::new(a).file_name().unwrap_or_default().to_owned());
    if invoked_as.as_deref() == Some(spc::IDLE_NAME.as_ref()) {
        return Ok(spc::session::idle());
    }
    if invoked_as.as_deref() == Some(host_exec::NAME.as_ref()) {
        let host_root = std::env::var_os(host::HOST_ROOT).map(PathBuf::from);
        return host_exec::run(args[1..].to_vec(), Path::new("/proc"), host_root.as_deref());
    }
    let cli = match cli::parse(args.iter().cloned()) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            print!("{e}");
            return Ok(0);
        }
        Err(e) => return Err(usage_error(&e)),
    };
    match &cli.action {
        Some(Action::Completions { shell }) => {
            help::completions(*shell, &mut std::io::stdout().lock())?;
            return Ok(0);
        }
        Some(Action::Manpages { directory }) => {
            for page in help::write_man_pages(directory)? {
                println!("{}", page.display());
            }
            return Ok(0);
        }
        _ => {}
    }
    // A normal user's run that will be re-run through sudo reads the settings twice; the
    // root run is the one that reports on them.
    let reruns_as_root = !sys::is_root()
        && !matches!(
            cli.action,
            Some(Action::List { .. }) | Some(Action::Config { .. })
        )
        && !cli.options.dry_run;
    let ctx = Context::load(&cli.options, &args[1..], !reruns_as_root)?;
    match cli.action {
        Some(Action::List { .. }) if !sys::is_root() && unreadable(&ctx.directory()?) => {
            // The toolbox directory is root's alone: this re-runs toolbox through sudo.
            ctx.become_root()?;
            bail!(
                "cannot list {}: permission denied",
                ctx.directory()?.display()
            )
        }
        Some(Action::List { names: true, .. }) => {
            // For scripts and completion: no daemon, no sizes.
            for (name, _) in machine::toolboxes(&ctx.directory()?)? {
                println!("{name}");
            }
            Ok(0)
        }
        Some(Action::List { json, .. }) => {
            manage::list(
                &ctx.directory()?,
                &ctx.paths.proc,
                &ctx.access,
                json,
                ctx.quiet(),
            )?;
            Ok(0)
        }
        Some(Action::Rm { names, all, force }) => {
            ctx.become_root()?;
            let directory = ctx.directory()?;
            let names = if all {
                manage::every_toolbox(&directory, &ctx.access, ctx.quiet())?
            } else {
                names
                    .iter()
                    .map(|name| {
                        manage::find(
                            &directory,
                            &ctx.invoker.name,
                            name,
                            ctx.runtime,
                            &ctx.access,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?
            };
            manage::remove(
                &directory,
                &ctx.paths.proc,
                &ctx.access,
                &names,
                force,
                ctx.quiet(),
            )?;
            Ok(0)
        }
        Some(Action::Update { name, force }) => {
            ctx.become_root()?;
            let plan = ctx.plan(Payload::Shell)?;
            let named = match (name, ctx.runtime) {
                (None, plan::Runtime::Nspawn) => None,
                (None, plan::Runtime::Spc) => Some(manage::Named::Spc(plan.name.clone())),
                (Some(name), runtime) => Some(manage::find(
                    &plan.directory,
                    &ctx.invoker.name,
                    &name,
                    runtime,
                    &ctx.access,
                )?),
            };
            let target = match named {
                None => Target::of(&plan),
                Some(manage::Named::Spc(name)) => {
                    manage::update_spc(
                        &plan.directory,
                        &ctx.access,
                        &name,
                        force,
                        ctx.quiet(),
                        &mut std::io::stdout(),
                    )?;
                    return Ok(0);
                }
                Some(manage::Named::Tree(name)) => {
                    let path = plan.directory.join(&name);
                    let image = match machine::state(&path)? {
                        State::Complete => {
                            plan::ImageRef::parse(&machine::read_metadata(&path)?.image, "latest")?
                        }
                        _ => plan.image.clone(),
                    };
                    Target {
                        name,
                        image,
                        ..Target::of(&plan)
                    }
                }
            };
            let report = &mut std::io::stdout();
            manage::update(
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
        Some(Action::Import { archive }) => {
            ctx.become_root()?;
            let directory = ctx.directory()?;
            let given = ctx.settings.get(config::NAME).to_string();
            let imported = import::create(&archive, &directory, |reference| {
                let name = match (given.as_str(), reference) {
                    ("", Some(reference)) => {
                        let image = plan::ImageRef::parse(reference, "latest")?;
                        format!("{}-{}", image.repository, image.tag)
                    }
                    ("", None) => archive_stem(&archive).ok_or_else(|| {
                        anyhow::anyhow!("`{}` names no image; give --name", archive.display())
                    })?,
                    (given, _) => given.to_string(),
                };
                plan::toolbox_dir_name(&ctx.invoker.name, &name)
            })?;
            if !ctx.quiet() {
                let id = match imported.image_id.as_str() {
                    "" => String::new(),
                    id => format!(" ({})", engine::short_id(id)),
                };
                ui::say(format_args!(
                    "imported `{}` from {}{id}: {} entries, {} MB",
                    imported.name,
                    imported.image,
                    imported.stats.entries,
                    imported.stats.bytes / 1_000_000
                ));
            }
            Ok(0)
        }
        Some(Action::Config { path }) => {
            manage::show_config(&ctx.settings, &ctx.files, path)?;
            Ok(0)
        }
        action => enter(&ctx, payload(cli.shell_command, action)),
    }
}

/// Everything read once at start: environment, host files, the invoking user, settings.
struct Context {
    env: Env,
    paths: HostPaths,
    /// The host's `/etc/passwd`, read once.
    passwd: String,
    invoker: Invoker,
    files: Vec<PathBuf>,
    settings: Settings,
    dry_run: bool,
    show_secrets: bool,
    runtime: plan::Runtime,
    /// `--rm`: a throwaway SPC.
    throwaway: bool,
    use_run_label: bool,
    /// How to reach the container engine, when one is needed.
    access: Access,
    verbosity: i8,
    /// The arguments after the program name, to re-run them through sudo.
    args: Vec<OsString>,
}

impl Context {
    /// Reads everything; `report` prints the settings' warnings (and, verbose, the files
    /// read).
    fn load(options: &Options, args: &[OsString], report: bool) -> Result<Context> {
        let env = Env::from_process();
        let paths = HostPaths::default();
        let passwd = std::fs::read_to_string(&paths.passwd).unwrap_or_default();
        let invoker = Invoker::identify(&env, &passwd, sys::euid());
        let files = config::files(&paths, &env, &invoker);
        let mut settings = Settings::load(&files, &env, config::Trust::of(&invoker, sys::euid()))?;
        let overrides = [
            (config::IMAGE, "--image", options.image.clone()),
            (config::TAG, "--tag", options.tag.clone()),
            (config::NAME, "--name", options.name.clone()),
            (config::USER, "--user", options.user.clone()),
            (config::STORAGE, "--storage", options.storage.clone()),
            (config::ENGINE, "--engine", options.engine.clone()),
            (config::RUNTIME, "--runtime", options.runtime.clone()),
            (
                config::DIRECTORY,
                "--directory",
                options.directory.as_ref().map(|d| d.display().to_string()),
            ),
        ];
        for (key, flag, value) in overrides {
            if let Some(value) = value {
                settings.set_option(key, flag, value);
            }
        }
        let verbosity = if options.quiet {
            -1
        } else {
            options.verbose.min(2) as i8
        };
        let engine = settings.setting(config::ENGINE);
        let choice = engine::Choice::parse(&engine.value).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: TOOLBOX_ENGINE must be docker, podman or auto, not `{}`",
                engine.origin,
                engine.value
            )
        })?;
        let runtime = plan::Runtime::of(&settings)?;
        if runtime != plan::Runtime::Spc {
            for (given, flag) in [
                (options.throwaway, "--rm"),
                (options.use_run_label, "--use-run-label"),
            ] {
                if given {
                    bail!("{flag} needs the spc runtime (--runtime spc or TOOLBOX_RUNTIME=spc)");
                }
            }
        }
        let access = Access {
            choice,
            sockets: engine::Sockets::for_host(&env),
            env: env.clone(),
        };
        let ctx = Context {
            access,
            env,
            paths,
            passwd,
            invoker,
            files,
            settings,
            dry_run: options.dry_run,
            show_secrets: options.show_secrets,
            runtime,
            throwaway: options.throwaway,
            use_run_label: options.use_run_label,
            verbosity,
            args: args.to_vec(),
        };
        if report && !ctx.quiet() {
            for warning in &ctx.settings.warnings {
                ui::warn(warning);
            }
        }
        if report && ctx.verbose() {
            for file in &ctx.settings.files_read {
                ui::say(format_args!("read settings from {}", file.display()));
            }
        }
        Ok(ctx)
    }

    /// A command as printed: secrets hidden unless `--show-secrets`.
    fn shown(&self, command: &impl std::fmt::Display) -> String {
        match self.show_secrets {
            true => command.to_string(),
            false => ui::redact(&command.to_string()),
        }
    }

    fn quiet(&self) -> bool {
        self.verbosity < 0
    }

    fn verbose(&self) -> bool {
        self.verbosity > 0
    }

    fn plan(&self, payload: Payload) -> Result<Plan> {
        Plan::resolve(&self.settings, &self.invoker.name, payload)
    }

    fn directory(&self) -> Result<PathBuf> {
        Ok(self.plan(Payload::Shell)?.directory)
    }

    /// Run as a normal user, toolbox re-runs itself through `TOOLBOX_SUDO`.
    fn become_root(&self) -> Result<()> {
        if sys::is_root() {
            return Ok(());
        }
        let sudo = self.settings.words(config::SUDO)?;
        if self.verbose() {
            ui::say(format_args!(
                "not root; re-running through `{}`",
                sudo.join(" ")
            ));
        }
        match sudo::reexec(&sudo, &self.args, &self.env)? {}
    }
}

/// How long `--dry-run` waits for the engine to read an SPC image's `RUN` label.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(2);

/// Enters the toolbox, creating it first if needed: the default action.
fn enter(ctx: &Context, payload: Payload) -> Result<u8> {
    if ctx.runtime == plan::Runtime::Spc {
        return enter_spc(ctx, payload);
    }
    let mut plan = ctx.plan(payload)?;
    let nspawn_cache = plan.directory.join(".nspawn-version");
    let nspawn = Nspawn::find(&ctx.env, &nspawn_cache, !ctx.dry_run && sys::is_root())?;
    let launch = Launch {
        systemd_booted: ctx.paths.systemd_booted.exists(),
        terminal: std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
        session: std::process::id(),
        marker: plan.directory.join(".toolboxenv"),
        host_exec: std::env::current_exe().ok(),
        proxies: PROXY_VARIABLES
            .iter()
            .filter_map(|name| Some((name.to_string(), ctx.env.get(name)?.to_string())))
            .collect(),
    };
    // An existing toolbox keeps the storage it was built with. A normal user cannot see
    // into the toolbox directory: the run through sudo finds out.
    let mut metadata = match existing_metadata(&plan.path()) {
        Err(_) if !sys::is_root() => None,
        found => found?,
    };
    if let Some(metadata) = &metadata {
        plan.storage = metadata.storage();
    }
    if ctx.dry_run {
        let invocation = nspawn::invocation(&plan, &nspawn, &launch, ctx.quiet());
        println!("{}", ctx.shown(&invocation));
        return Ok(0);
    }
    ctx.become_root()?;
    machine::tighten_directory(&plan.directory)?;
    let target = Target::of(&plan);
    // A toolbox with metadata is complete: nothing to create, nothing to ask a daemon.
    let created =
        metadata.is_none() && provision::ensure(&target, &ctx.access, ctx.quiet(), ctx.verbose())?;
    let rebuilt = !created && check_freshness(ctx, &target, metadata.as_ref())?;
    // Also when another toolbox process created it while this one waited for the lock:
    // its storage decides what is entered.
    if metadata.is_none() || rebuilt {
        metadata = existing_metadata(&plan.path())?;
    }
    plan.storage = metadata
        .as_ref()
        .map_or(plan::Storage::Copy, machine::Metadata::storage);
    let overlay = metadata.and_then(|m| m.overlay);
    let invocation = nspawn::invocation(&plan, &nspawn, &launch, ctx.quiet());
    if ctx.verbose() {
        ui::say(format_args!(
            "systemd-nspawn {} at {} ({}); {} storage",
            nspawn.version,
            nspawn.program.display(),
            nspawn.variant(launch.systemd_booted),
            plan.storage.name()
        ));
    }
    if created && plan.payload == Payload::Shell && !ctx.quiet() {
        let host = match plan.host_root() {
            Some(root) => format!("the host's / is at {root}"),
            None => "the host's / is not bound inside (see TOOLBOX_BIND)".to_string(),
        };
        ui::say(format_args!(
            "entering `{}`: {host}; `exit` or Ctrl-D leaves",
            plan.name
        ));
    }
    nspawn::check_supported(&plan, &nspawn)?;
    match overlay {
        None => {
            secure_tree(&plan, &launch, false)?;
            start_session(ctx, &plan, &launch)?;
            if ctx.verbosity >= 2 {
                ui::say(ctx.shown(&invocation));
            }
            match invocation.exec()? {}
        }
        Some(overlay) => enter_overlay(ctx, &plan, &launch, &invocation, &overlay),
    }
}

/// Runs a session in the toolbox's super privileged container (see `spc`).
fn enter_spc(ctx: &Context, payload: Payload) -> Result<u8> {
    let plan = ctx.plan(payload)?;
    let exe = std::env::current_exe().context("cannot find toolbox's own binary")?;
    let privilege = match sys::capability_bounding_set(&ctx.paths.proc) {
        Some((bounding, last)) => spc::Privilege::for_bounding_set(bounding, last),
        None => spc::Privilege::Full,
    };
    let resolve = |run_label| {
        spc::Spc::resolve(
            &ctx.settings,
            &plan,
            spc::Inputs {
                env: &ctx.env,
                passwd: &ctx.passwd,
                exe: &exe.display().to_string(),
                privilege,
                tty: std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
                throwaway: ctx.throwaway,
                run_label,
                use_run_label: ctx.use_run_label,
            },
        )
    };
    if ctx.dry_run {
        let run_label = match spc::session::run_label(&plan.image, &ctx.access, ENGINE_TIMEOUT) {
            Ok(label) => label,
            Err(e) => {
                ui::warn(format_args!("{e:#}; its RUN label, if any, is not shown"));
                None
            }
        };
        println!("{}", ctx.shown(&resolve(run_label)?));
        return Ok(0);
    }
    ctx.become_root()?;
    let options = spc::session::Options {
        update: update_mode(&ctx.settings)?,
        quiet: ctx.quiet(),
        verbose: ctx.verbose(),
    };
    spc::session::enter(&plan.image, resolve, &ctx.access, &plan.directory, options)
}

/// Whether listing `directory` is refused to this process (a normal user's, for the
/// toolbox directory that only root may read).
fn unreadable(directory: &Path) -> bool {
    matches!(std::fs::read_dir(directory), Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied)
}

/// A toolbox name from an archive's file name: `debian.tar.gz` gives `debian`.
fn archive_stem(archive: &Path) -> Option<String> {
    let name = archive.file_name()?.to_str()?;
    let stem = [".tar.gz", ".tgz", ".tar", ".gz"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    (!stem.is_empty() && name != "-").then(|| stem.to_string())
}

/// The metadata of the complete toolbox at `path`, if there is one.
fn existing_metadata(path: &Path) -> Result<Option<machine::Metadata>> {
    match machine::state(path)? {
        State::Complete => Ok(Some(machine::read_metadata(path)?)),
        _ => Ok(None),
    }
}

/// Makes the tree safe to hand to systemd-nspawn (see [`mountpoints`]): a look first,
/// and only when something is to change, a repair under the toolbox's mount lock, which
/// the caller may hold already (`locked`).
fn secure_tree(plan: &Plan, launch: &Launch, locked: bool) -> Result<()> {
    let own = mountpoints::Own {
        host_exec: launch
            .host_exec
            .as_ref()
            .map(|_| host_exec::PATH_IN_TOOLBOX),
        marker: nspawn::MARKER_IN_TOOLBOX,
    };
    let root = plan.root();
    let secure = |act| mountpoints::secure(&root, &plan.name, &plan.mounts, &own, act);
    if secure(mountpoints::Act::Look)?.is_empty() {
        return Ok(());
    }
    let _lock = match locked {
        true => None,
        false => Some(machine::lock_for_mount(&plan.directory, &plan.name)?),
    };
    for change in secure(mountpoints::Act::Repair)? {
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
                if directory { "directory" } else { "file" }
            ));
        }
    }
    Ok(())
}

/// What every session needs before systemd-nspawn starts: the user, a payload that can
/// run, the marker file, and the session's record.
fn start_session(ctx: &Context, plan: &Plan, launch: &Launch) -> Result<()> {
    add_user(ctx, plan)?;
    check_payload(plan)?;
    if !launch.marker.exists() {
        std::fs::write(&launch.marker, "")
            .with_context(|| format!("cannot create {}", launch.marker.display()))?;
    }
    let registered = session::register(
        &plan.directory,
        &ctx.paths.proc,
        &plan.name,
        &plan.session_machine_name(launch.session),
    );
    match registered {
        // A full disk is when the toolbox is needed most: enter it anyway.
        Err(e) if sys::is_no_space(&e) => {
            ui::warn(format_args!(
                "{e:#}; `toolbox list` and `rm` will not see this session"
            ));
            Ok(())
        }
        result => result,
    }
}

/// A session of an overlay toolbox: mounted by the first session, shared by the ones that
/// start while it runs, and unmounted when the last one ends. toolbox stays as the
/// parent of systemd-nspawn for that, which dies with it.
fn enter_overlay(
    ctx: &Context,
    plan: &Plan,
    launch: &Launch,
    invocation: &nspawn::Invocation,
    overlay: &machine::Overlay,
) -> Result<u8> {
    let path = plan.path();
    let mounted = (|| {
        let _lock = machine::lock_for_mount(&plan.directory, &plan.name)?;
        // `rm` or `update` may have replaced it while this run waited for the lock.
        let image = match existing_metadata(&path)? {
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
        secure_tree(plan, launch, true)?;
        start_session(ctx, plan, launch)
    })();
    let status = mounted.and_then(|()| {
        if ctx.verbosity >= 2 {
            ui::say(ctx.shown(invocation));
        }
        invocation.run()
    });
    if let Err(e) = end_overlay_session(ctx, plan)
        && !ctx.quiet()
    {
        ui::warn(format_args!("{e:#}"));
    }
    status
}

/// Ends this process's session of an overlay toolbox, unmounting it if it was the last.
fn end_overlay_session(ctx: &Context, plan: &Plan) -> Result<()> {
    let _lock = machine::lock_for_mount(&plan.directory, &plan.name)?;
    session::end(&plan.directory, &plan.name)?;
    if !session::live(&plan.directory, &ctx.paths.proc, &plan.name)?.is_empty() {
        return Ok(());
    }
    let path = plan.path();
    let lingering = overlay::processes(&path, &ctx.paths.proc)?;
    if lingering.is_empty() {
        overlay::unmount(&path)
    } else {
        if ctx.verbose() {
            ui::say(format_args!(
                "`{}` stays mounted: processes started in it still run (PID {})",
                plan.name,
                ui::pid_list(&lingering)
            ));
        }
        Ok(())
    }
}

/// `TOOLBOX_UPDATE`, checked.
fn update_mode(settings: &config::Settings) -> Result<UpdateMode> {
    match settings.get(config::UPDATE) {
        "never" => Ok(UpdateMode::Never),
        "notify" => Ok(UpdateMode::Notify),
        "auto" => Ok(UpdateMode::Auto),
        mode => {
            let origin = &settings.setting(config::UPDATE).origin;
            bail!("{origin}: TOOLBOX_UPDATE must be never, notify or auto, not `{mode}`")
        }
    }
}

/// On a warm start, `TOOLBOX_UPDATE=notify` (the default) says when the image changed
/// since the toolbox was built, and `auto` rebuilds it; `never` contacts no daemon. The
/// daemon is asked at most once per `TOOLBOX_UPDATE_INTERVAL` seconds per toolbox, with
/// a short timeout, so a slow or stopped daemon never holds up the start. Returns whether
/// the toolbox was rebuilt.
fn check_freshness(
    ctx: &Context,
    target: &Target,
    metadata: Option<&machine::Metadata>,
) -> Result<bool> {
    let mode = update_mode(&ctx.settings)?;
    if mode == UpdateMode::Never {
        return Ok(false);
    }
    let interval = ctx.settings.get(config::UPDATE_INTERVAL);
    let interval: u64 = interval.parse().map_err(|_| {
        let origin = &ctx.settings.setting(config::UPDATE_INTERVAL).origin;
        anyhow::anyhow!(
            "{origin}: TOOLBOX_UPDATE_INTERVAL must be a number of seconds, not `{interval}`"
        )
    })?;
    // An imported toolbox's image is in no engine.
    let Some(metadata) = metadata.filter(|m| m.imported_from.is_none()) else {
        return Ok(false);
    };
    let stamp = target.directory.join(format!(".{}.checked", target.name));
    let recent = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < Duration::from_secs(interval));
    if recent {
        return Ok(false);
    }
    let changed = provision::image_changed(
        &target.image,
        &metadata.image_id,
        &ctx.access,
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
        if !ctx.quiet() {
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
    let updated = manage::update(
        target,
        &ctx.paths.proc,
        &ctx.access,
        false,
        ctx.quiet(),
        ctx.verbose(),
        report,
    )?;
    Ok(matches!(updated, provision::Updated::Rebuilt { .. }))
}

/// A `TOOLBOX_USER` the toolbox lacks but the host has is added with the host's UID, GID,
/// home and shell, instead of systemd-nspawn failing to resolve it.
fn add_user(ctx: &Context, plan: &Plan) -> Result<()> {
    if plan.user == "root" {
        return Ok(());
    }
    let Some(line) = host::passwd_line(&ctx.passwd, &plan.user) else {
        return Ok(());
    };
    let gid = line.split(':').nth(3).and_then(|g| g.parse().ok());
    let groups = std::fs::read_to_string(&ctx.paths.group).unwrap_or_default();
    let group = gid.and_then(|gid| host::group_line(&groups, gid));
    if machine::add_user(&plan.root(), line, group)? && ctx.verbose() {
        ui::say(format_args!("added user {} to `{}`", plan.user, plan.name));
    }
    Ok(())
}

fn payload(shell_command: Option<OsString>, action: Option<Action>) -> Payload {
    let command = match action {
        Some(Action::Run { command }) | Some(Action::External(command)) => command,
        _ => Vec::new(),
    };
    match shell_command {
        Some(script) => {
            let mut words = vec![OsString::from("/bin/sh"), OsString::from("-c"), script];
            words.extend(command);
            Payload::Command(words)
        }
        None if command.is_empty() => Payload::Shell,
        None => Payload::Command(command),
    }
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

/// clap's multi-line usage error, as one line.
fn usage_error(error: &clap::Error) -> anyhow::Error {
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    anyhow::anyhow!("{first}; see `toolbox --help`")
}

/// The exit status for an error from [`run`]: 126 or 127 when the command cannot run,
/// 128 + N when signal N interrupted toolbox, 125 for everything else.
pub fn exit_status(error: &anyhow::Error) -> u8 {
    if let Some(e) = error.downcast_ref::<CommandError>() {
        return e.exit_status();
    }
    if let Some(Interrupted(signal)) = error.downcast_ref::<Interrupted>() {
        return 128 + *signal as u8;
    }
    EXIT_TOOLBOX_FAILED
}
