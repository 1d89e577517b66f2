//! context: everything a run reads once at its start (environment, host files, the invoking
//! user, settings with the command line's options applied) and the few decisions every
//! command shares: how verbose, whether secrets are shown, how to become root.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::app::cli::Options;
use crate::app::sudo;
use crate::engine::{self, Access};
use crate::host::files::{Trust, read_settings_file};
use crate::host::ui;
use crate::host::{Env, HostPaths, Invoker};
use crate::model::config::{self, Origin, Settings};
use crate::model::plan::{self, Payload, Plan};
use crate::runtime::Scope;
use crate::runtime::nspawn::command::Nspawn;
use crate::sys;

/// What `-v` and `toolbox config` say of toolbox run from its image, the container having
/// had the host's `/` at `mount`.
pub fn from_image_line(mount: &Path) -> String {
    format!(
        "toolbox runs from its image in a container (the host's / at {}) and has moved into \
         the host's namespaces",
        mount.display()
    )
}

/// Everything read once at start: environment, host files, the invoking user, settings.
pub struct RunContext {
    pub env: Env,
    pub paths: HostPaths,
    /// The host's `/etc/passwd`, read once.
    pub passwd: String,
    pub invoker: Invoker,
    pub files: Vec<PathBuf>,
    pub settings: Settings,
    pub dry_run: bool,
    pub show_secrets: bool,
    pub runtime: plan::Runtime,
    /// `--rm`: a throwaway SPC.
    pub throwaway: bool,
    pub use_run_label: bool,
    /// How to reach the container engine, when one is needed.
    pub access: Access,
    pub verbosity: i8,
    /// The arguments after the program name, to re-run them through sudo.
    pub args: Vec<OsString>,
    /// Run from toolbox's image: where the container had the host's `/` before toolbox
    /// moved into the host's namespaces.
    pub from_image: Option<PathBuf>,
}

impl RunContext {
    /// Reads everything; `report` prints the settings' warnings (and, verbose, the files
    /// read). `from_image`: toolbox runs from its image, moved into the host, which had
    /// its `/` at this path in the container.
    pub fn load(
        options: &Options,
        args: &[OsString],
        report: bool,
        from_image: Option<PathBuf>,
    ) -> Result<RunContext> {
        let env = Env::from_process();
        let paths = HostPaths::from_env(&env);
        let passwd = std::fs::read_to_string(&paths.passwd).unwrap_or_default();
        let invoker = Invoker::identify(&env, &passwd, sys::euid());
        let files = config::files(&paths, &env, &invoker);
        let trust = Trust::of(&invoker, sys::euid());
        let mut settings = Settings::load(&files, &env.for_invoker(&invoker), |path| {
            read_settings_file(path, trust)
        })?;
        // A system-wide file named on purpose and not there is worth a word; the default
        // one is optional.
        if env.non_empty(crate::host::SYSTEM_CONFIG).is_some() && !paths.etc_default.exists() {
            settings.warnings.push(format!(
                "{} names {}, which is not there; no system-wide settings are read",
                crate::host::SYSTEM_CONFIG,
                paths.etc_default.display()
            ));
        }
        let overrides = [
            (config::IMAGE, "--image", options.image.clone()),
            (config::TAG, "--tag", options.tag.clone()),
            (config::NAME, "--name", options.name.clone()),
            (config::USER, "--user", options.user.clone()),
            (config::STORAGE, "--storage", options.storage.clone()),
            (config::ENGINE, "--engine", options.engine.clone()),
            (config::RUNTIME, "--runtime", options.runtime.clone()),
            (config::TARGET, "--target", options.target.clone()),
            (config::TARGET_NS, "--target-ns", options.target_ns.clone()),
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
                "{}: TOOLBOX_ENGINE must be docker, podman, containerd or auto, not `{}`",
                engine.origin,
                engine.value
            )
        })?;
        // Kubernetes node images often lack systemd-nspawn; toolbox from its image then
        // runs its session through the host's engine, unless told which runtime to use.
        if from_image.is_some()
            && settings.setting(config::RUNTIME).origin == Origin::Default
            && Nspawn::program(&env).is_none()
        {
            settings.set_for_host(
                config::RUNTIME,
                plan::Runtime::Spc.name(),
                "the host has no systemd-nspawn",
            );
        }
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
        let stall = settings.get(config::STALL_TIMEOUT);
        let stall = match stall.parse::<u64>() {
            Ok(seconds) if seconds > 0 => std::time::Duration::from_secs(seconds),
            _ => bail!(
                "{}: TOOLBOX_STALL_TIMEOUT must be a number of seconds above 0, not `{stall}`",
                settings.setting(config::STALL_TIMEOUT).origin
            ),
        };
        let mut sockets = engine::Sockets::for_host(&env);
        let containerd = settings.setting(config::CONTAINERD_ADDRESS);
        let address = containerd
            .value
            .strip_prefix("unix://")
            .unwrap_or(&containerd.value);
        if !address.starts_with('/') {
            bail!(
                "{}: TOOLBOX_CONTAINERD_ADDRESS must be the absolute path of containerd's socket, not `{}`",
                containerd.origin,
                containerd.value
            );
        }
        sockets.containerd = address.into();
        let namespace = settings.get(config::CONTAINERD_NAMESPACE);
        let access = Access {
            choice,
            sockets,
            env: env.clone(),
            stall,
            containerd_namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
        };
        let ctx = RunContext {
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
            from_image,
        };
        if report && !ctx.quiet() {
            for warning in &ctx.settings.warnings {
                ui::warn(warning);
            }
        }
        if report && ctx.verbose() {
            if let Some(mount) = &ctx.from_image {
                ui::say(format_args!("{}", from_image_line(mount)));
            }
            for file in &ctx.settings.files_read {
                ui::say(format_args!("read settings from {}", file.display()));
            }
        }
        Ok(ctx)
    }

    /// A command as printed: secrets hidden unless `--show-secrets`.
    pub fn shown(&self, command: &impl std::fmt::Display) -> String {
        ui::shown(command, self.show_secrets)
    }

    pub fn quiet(&self) -> bool {
        self.verbosity < 0
    }

    pub fn verbose(&self) -> bool {
        self.verbosity > 0
    }

    pub fn plan(&self, payload: Payload) -> Result<Plan> {
        Plan::resolve(&self.settings, &self.invoker.name, payload)
    }

    pub fn directory(&self) -> Result<PathBuf> {
        Ok(self.plan(Payload::Shell)?.directory)
    }

    /// Where the management commands work: toolbox directory `directory`.
    pub fn scope<'a>(&'a self, directory: &'a Path) -> Scope<'a> {
        Scope {
            directory,
            proc_root: &self.paths.proc,
            access: &self.access,
            quiet: self.quiet(),
            verbose: self.verbose(),
        }
    }

    /// Run as a normal user, toolbox re-runs itself through `TOOLBOX_SUDO`.
    pub fn become_root(&self) -> Result<()> {
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
