//! plan: decide what to launch from settled settings. Pure: no I/O, so every naming and
//! precedence rule is unit-tested here. Everything downstream takes a [`Plan`].

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::model::config::{self, Settings};
use crate::model::image::ImageRef;
use crate::model::options::{self, Mount, MountKind};
use crate::model::target::Request;

/// What to run inside the toolbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// An interactive login shell (systemd-nspawn's choice: bash, else sh).
    Shell,
    /// A command and its arguments, looked up on the toolbox's `PATH`.
    Command(Vec<OsString>),
}

/// The files systemd-nspawn writes in the tree on every start (systemd 252
/// `setup_resolv_conf` copies the host's resolver configuration, `setup_timezone` links
/// the time zone): never the user's changes.
pub const SESSION_WRITTEN_FILES: [&str; 2] = ["/etc/resolv.conf", "/etc/localtime"];

/// The mount point inside an overlay toolbox's directory, which systemd-nspawn enters.
pub const OVERLAY_ROOT: &str = "root";

/// How a toolbox holds its image's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Unpacked into the toolbox's own tree, as the CoreOS script did.
    Copy,
    /// The daemon's own layer directories, mounted read-only under an overlay whose
    /// upper directory belongs to the toolbox.
    Overlay,
}

impl Storage {
    pub fn name(self) -> &'static str {
        match self {
            Storage::Copy => "copy",
            Storage::Overlay => "overlay",
        }
    }
}

/// What entering an existing toolbox does about a changed image (`TOOLBOX_UPDATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateMode {
    /// Nothing; no engine is asked.
    Never,
    /// Say so.
    Notify,
    /// Rebuild it first.
    Auto,
}

impl UpdateMode {
    /// `TOOLBOX_UPDATE`, checked.
    pub fn of(settings: &Settings) -> Result<UpdateMode> {
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

    /// `TOOLBOX_UPDATE_INTERVAL`, checked: how long a check of a toolbox's image holds.
    pub fn interval(settings: &Settings) -> Result<std::time::Duration> {
        let interval = settings.get(config::UPDATE_INTERVAL);
        let seconds: u64 = interval.parse().map_err(|_| {
            let origin = &settings.setting(config::UPDATE_INTERVAL).origin;
            anyhow::anyhow!(
                "{origin}: TOOLBOX_UPDATE_INTERVAL must be a number of seconds, not `{interval}`"
            )
        })?;
        Ok(std::time::Duration::from_secs(seconds))
    }
}

/// How a toolbox runs (`TOOLBOX_RUNTIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Unpacked into the toolbox directory and entered with systemd-nspawn.
    Nspawn,
    /// A super privileged container run by the engine (see `spc`).
    Spc,
}

impl Runtime {
    pub fn of(settings: &Settings) -> Result<Runtime> {
        match settings.get(config::RUNTIME) {
            "nspawn" => Ok(Runtime::Nspawn),
            "spc" => Ok(Runtime::Spc),
            other => bail!(
                "{}: TOOLBOX_RUNTIME must be nspawn or spc, not `{other}`",
                settings.setting(config::RUNTIME).origin
            ),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Nspawn => "nspawn",
            Runtime::Spc => "spc",
        }
    }
}

/// Everything needed to find or create the toolbox and enter it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub image: ImageRef,
    /// The directory name under `directory`, as the CoreOS script chose it.
    pub name: String,
    /// `TOOLBOX_DIRECTORY`, where toolboxes live.
    pub directory: PathBuf,
    pub user: String,
    pub binds: Vec<String>,
    pub env: Vec<String>,
    pub flags: Vec<String>,
    /// The mounts among those words, destinations normalized, in command-line order.
    pub mounts: Vec<Mount>,
    /// The `NAME=VALUE` of their `--setenv=`/`-E` options, in command-line order.
    pub setenv: Vec<String>,
    pub payload: Payload,
    /// How a new toolbox stores its image; an existing one keeps its own.
    pub storage: Storage,
    /// `--storage` was given: no falling back to another mode.
    pub storage_demanded: bool,
    /// `auto`, the default: overlay where it works, else copy, saying why only when
    /// verbose.
    pub storage_auto: bool,
    /// `TOOLBOX_TRACING`: sessions can trace the host (see `model::tracing`).
    pub tracing: bool,
    /// `TOOLBOX_TARGET`: a container or process the session debugs (see `model::target`).
    pub target: Option<Request>,
}

impl Plan {
    pub fn resolve(settings: &Settings, invoker_name: &str, payload: Payload) -> Result<Plan> {
        let image = ImageRef::parse(settings.get(config::IMAGE), settings.get(config::TAG))?;
        let toolbox_name = match settings.get(config::NAME) {
            "" => format!("{}-{}", image.repository, image.tag),
            name => name.to_string(),
        };
        let name = toolbox_dir_name(invoker_name, &toolbox_name)?;
        let directory = PathBuf::from(settings.get(config::DIRECTORY));
        if !directory.is_absolute() {
            let origin = &settings.setting(config::DIRECTORY).origin;
            bail!(
                "{origin}: TOOLBOX_DIRECTORY must be an absolute path, not `{}`",
                directory.display()
            );
        }
        let user = settings.get(config::USER);
        if user.is_empty() {
            bail!(
                "{}: TOOLBOX_USER is empty",
                settings.setting(config::USER).origin
            );
        }
        let (storage, storage_auto) = match settings.get(config::STORAGE) {
            "copy" => (Storage::Copy, false),
            "overlay" => (Storage::Overlay, false),
            "auto" => (Storage::Overlay, true),
            other => bail!(
                "{}: TOOLBOX_STORAGE must be auto, overlay or copy, not `{other}`",
                settings.setting(config::STORAGE).origin
            ),
        };
        let tracing = match settings.get(config::TRACING) {
            "1" | "yes" | "true" | "on" => true,
            "0" | "no" | "false" | "off" => false,
            other => bail!(
                "{}: TOOLBOX_TRACING must be 1 or 0, not `{other}`",
                settings.setting(config::TRACING).origin
            ),
        };
        let storage_demanded = !storage_auto
            && matches!(
                settings.setting(config::STORAGE).origin,
                config::Origin::Option(_)
            );
        let mut mounts = Vec::new();
        let mut setenv = Vec::new();
        let mut checked = |key: &'static str| -> Result<Vec<String>> {
            let words = settings.words(key)?;
            let parsed = options::parse(&words)
                .map_err(|e| anyhow::anyhow!("{}: {key}: {e}", settings.setting(key).origin))?;
            for option in parsed {
                mounts.extend(option.mount.map(|m| (key, m)));
                setenv.extend(option.setenv);
            }
            Ok(words)
        };
        // The order systemd-nspawn gets them in: flags, binds, environment.
        let flags = checked(config::FLAGS)?;
        let binds = checked(config::BIND)?;
        let env = checked(config::ENV)?;
        let plan = Plan {
            image,
            name,
            directory,
            user: user.to_string(),
            binds,
            env,
            flags,
            mounts: mounts.iter().map(|(_, m)| m.clone()).collect(),
            setenv,
            payload,
            storage,
            storage_demanded,
            storage_auto,
            tracing,
            target: Request::of(settings)?,
        };
        for (key, mount) in &mounts {
            plan.check_mount(mount).map_err(|why| {
                anyhow::anyhow!(
                    "{}: {key}: `{}` {why}",
                    settings.setting(key).origin,
                    mount.word
                )
            })?;
        }
        Ok(plan)
    }

    /// Refuses a mount that would cover the toolbox's root, the directories
    /// systemd-nspawn fills itself after the mounts are made (`/run`, and `/run/host`,
    /// where it writes files that would land in the mounted directory), or the host's `/`
    /// inside the toolbox: a mount on the directory it is bound at or on any directory above
    /// it (`--bind=/tmp/x:/media` hides `/media/root`).
    fn check_mount(&self, mount: &Mount) -> Result<(), String> {
        let destination = mount.destination.as_str();
        if destination == "/" {
            return Err("would cover the toolbox's root; mount it elsewhere".into());
        }
        if destination == "/run" || options::is_within(destination, "/run/host") {
            return Err(format!(
                "would cover {destination}, where systemd-nspawn writes its own files; mount it elsewhere"
            ));
        }
        if let Some(host_root) = self.host_root() {
            let binds_host_root = mount.kind == MountKind::Bind
                && mount.source.as_deref().map(options::normalize).as_deref() == Some("/");
            if options::is_within(&host_root, destination)
                && !(destination == host_root && binds_host_root)
            {
                return Err(format!(
                    "would cover {host_root}, where the host's `/` is bound; mount it elsewhere"
                ));
            }
        }
        Ok(())
    }

    /// The toolbox's directory: its tree (copy storage), or the directory holding the
    /// overlay's mount point and upper directory (overlay storage).
    pub fn path(&self) -> PathBuf {
        self.directory.join(&self.name)
    }

    /// The directory the toolbox's filesystem is seen at, which systemd-nspawn enters.
    pub fn root(&self) -> PathBuf {
        match self.storage {
            Storage::Copy => self.path(),
            Storage::Overlay => self.path().join(OVERLAY_ROOT),
        }
    }

    /// The `--machine=` name of session `session`: the toolbox's machine name with the
    /// session number, kept within systemd's 64 characters.
    pub fn session_machine_name(&self, session: u32) -> String {
        let suffix = format!("-{session}");
        let mut base = machine_name(&self.name);
        base.truncate(64 - suffix.len());
        format!("{}{suffix}", base.trim_end_matches(['-', '.']))
    }

    /// Where the host's `/` is bound inside the toolbox, from the bind options: the first
    /// bind of `/`, normalized.
    pub fn host_root(&self) -> Option<String> {
        self.mounts.iter().find_map(|mount| {
            let source = options::normalize(mount.source.as_deref()?);
            (mount.kind == MountKind::Bind && source == "/" && mount.destination != "/")
                .then(|| mount.destination.clone())
        })
    }
}

/// `${USER}-${TOOLBOX_NAME}` with every character outside `[a-zA-Z0-9_.-]` turned into `_`,
/// exactly as the CoreOS script named its directories, so existing trees are found.
pub fn toolbox_dir_name(user: &str, toolbox_name: &str) -> Result<String> {
    let name: String = format!("{user}-{toolbox_name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.len() > 200 {
        bail!("toolbox name `{name}` is longer than 200 characters; choose a shorter --name");
    }
    Ok(name)
}

/// systemd accepts machine names that are valid hostnames (systemd's `hostname_is_valid`):
/// dot-separated labels of letters, digits and inner `-`, at most 64 characters. `_` is not
/// allowed, so `core-docker.io_library_fedora-latest` becomes
/// `core-docker.io-library-fedora-latest`.
pub fn machine_name(toolbox_name: &str) -> String {
    let mut labels = Vec::new();
    for label in toolbox_name.split('.') {
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let label = label.trim_matches('-');
        if !label.is_empty() {
            labels.push(label.to_string());
        }
    }
    let mut name = labels.join(".");
    name.truncate(64);
    let name = name.trim_end_matches(['-', '.']);
    if name.is_empty() {
        "toolbox".to_string()
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Env;

    #[test]
    fn names_match_the_coreos_script() {
        assert_eq!(
            toolbox_dir_name("core", "fedora-latest").unwrap(),
            "core-fedora-latest"
        );
        assert_eq!(
            toolbox_dir_name("core", "docker.io/library/fedora-latest").unwrap(),
            "core-docker.io_library_fedora-latest"
        );
        assert_eq!(
            toolbox_dir_name("jo smith", "a:b@c/d").unwrap(),
            "jo_smith-a_b_c_d"
        );
        assert_eq!(toolbox_dir_name("core", "é").unwrap(), "core-_");
        assert!(toolbox_dir_name("core", &"x".repeat(300)).is_err());
    }

    #[test]
    fn default_plan() {
        let plan = Plan::resolve(&Settings::from_environment(&[]), "core", Payload::Shell).unwrap();
        assert_eq!(plan.image.reference(), "fedora:latest");
        assert_eq!(
            plan.path(),
            PathBuf::from("/var/lib/toolbox/core-fedora-latest")
        );
        assert_eq!(plan.user, "root");
        assert_eq!(plan.binds.len(), 3);
    }

    #[test]
    fn image_forms() {
        let cases = [
            (
                "docker.io/library/fedora",
                "latest",
                "docker.io/library/fedora:latest",
                "core-docker.io_library_fedora-latest",
            ),
            (
                "debian:bookworm",
                "latest",
                "debian:bookworm",
                "core-debian-bookworm",
            ),
            (
                "registry:5000/tools",
                "1.2",
                "registry:5000/tools:1.2",
                "core-registry_5000_tools-1.2",
            ),
            (
                "registry:5000/tools:9",
                "1.2",
                "registry:5000/tools:9",
                "core-registry_5000_tools-9",
            ),
            (
                "img@sha256:abc",
                "latest",
                "img@sha256:abc",
                "core-img-sha256_abc",
            ),
        ];
        for (image, tag, reference, name) in cases {
            let plan = Plan::resolve(
                &Settings::from_environment(&[(config::IMAGE, image), (config::TAG, tag)]),
                "core",
                Payload::Shell,
            )
            .unwrap();
            assert_eq!(plan.image.reference(), reference, "{image}");
            assert_eq!(plan.name, name, "{image}");
        }
        assert!(ImageRef::parse("", "latest").is_err());
        assert!(ImageRef::parse("a b", "latest").is_err());
        assert!(ImageRef::parse("debian", "").is_err());
    }

    #[test]
    fn explicit_name_keeps_the_user_prefix() {
        let plan = Plan::resolve(
            &Settings::from_environment(&[(config::NAME, "debug box")]),
            "core",
            Payload::Shell,
        )
        .unwrap();
        assert_eq!(plan.name, "core-debug_box");
    }

    #[test]
    fn invalid_settings_name_their_origin() {
        let err = Plan::resolve(
            &Settings::from_environment(&[(config::DIRECTORY, "rel/dir")]),
            "core",
            Payload::Shell,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment: TOOLBOX_DIRECTORY must be an absolute path, not `rel/dir`"
        );
        let err = Plan::resolve(
            &Settings::from_environment(&[(config::USER, "")]),
            "core",
            Payload::Shell,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "environment: TOOLBOX_USER is empty");
        let err = Plan::resolve(
            &Settings::from_environment(&[(config::STORAGE, "zfs")]),
            "core",
            Payload::Shell,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment: TOOLBOX_STORAGE must be auto, overlay or copy, not `zfs`"
        );
    }

    #[test]
    fn the_runtime_is_nspawn_unless_spc_is_asked_for() {
        let runtime = |pairs: &[(&str, &str)]| Runtime::of(&Settings::from_environment(pairs));
        assert_eq!(runtime(&[]).unwrap(), Runtime::Nspawn);
        assert_eq!(runtime(&[(config::RUNTIME, "spc")]).unwrap(), Runtime::Spc);
        assert_eq!(
            runtime(&[(config::RUNTIME, "docker")])
                .unwrap_err()
                .to_string(),
            "environment: TOOLBOX_RUNTIME must be nspawn or spc, not `docker`"
        );
    }

    #[test]
    fn storage_is_auto_by_default_and_demanded_only_on_the_command_line() {
        let plan = Plan::resolve(&Settings::from_environment(&[]), "core", Payload::Shell).unwrap();
        assert_eq!(
            (plan.storage, plan.storage_demanded, plan.storage_auto),
            (Storage::Overlay, false, true)
        );
        let mut auto = Settings::from_environment(&[]);
        auto.set_option(config::STORAGE, "--storage", "auto".into());
        let plan = Plan::resolve(&auto, "core", Payload::Shell).unwrap();
        assert_eq!((plan.storage_demanded, plan.storage_auto), (false, true));
        let copy = Settings::from_environment(&[(config::STORAGE, "copy")]);
        let plan = Plan::resolve(&copy, "core", Payload::Shell).unwrap();
        assert_eq!(
            (plan.storage, plan.storage_demanded),
            (Storage::Copy, false)
        );
        assert_eq!(plan.root(), plan.path());
        let mut configured = Settings::from_environment(&[(config::STORAGE, "overlay")]);
        let plan = Plan::resolve(&configured, "core", Payload::Shell).unwrap();
        assert_eq!(
            (plan.storage, plan.storage_demanded),
            (Storage::Overlay, false)
        );
        assert_eq!(
            plan.root(),
            PathBuf::from("/var/lib/toolbox/core-fedora-latest/root")
        );
        configured.set_option(config::STORAGE, "--storage", "overlay".into());
        let plan = Plan::resolve(&configured, "core", Payload::Shell).unwrap();
        assert_eq!(
            (plan.storage, plan.storage_demanded),
            (Storage::Overlay, true)
        );
    }

    #[test]
    fn session_machine_names_fit() {
        let plan = Plan::resolve(&Settings::from_environment(&[]), "core", Payload::Shell).unwrap();
        assert_eq!(plan.session_machine_name(4242), "core-fedora-latest-4242");
        let long = Plan::resolve(
            &Settings::from_environment(&[(config::NAME, &"x".repeat(100))]),
            "core",
            Payload::Shell,
        )
        .unwrap();
        let name = long.session_machine_name(4_194_304);
        assert_eq!(name.len(), 64);
        assert!(name.ends_with("-4194304"));
    }

    #[test]
    fn mounts_covering_the_host_root_are_refused_with_their_origin() {
        fn env_setting(key: &str, value: &str) -> Settings {
            Settings::from_environment(&[(key, value)])
        }
        let mut refused = 0;
        for (key, value) in [
            (config::BIND, "--bind=/:/media/root --bind=/tmp/x:/media"),
            (
                config::BIND,
                "--bind=/tmp/x:/media/root --bind=/:/media/root",
            ),
            (config::ENV, "--tmpfs=/media"),
            (config::FLAGS, "--bind-ro=/srv:/media/"),
            (config::FLAGS, "--overlay=/a:/b:/media"),
            // Regression: `..` slipped past the check and hid the host's `/`.
            (
                config::BIND,
                "--bind=/:/media/root --bind=/tmp:/media/root/..",
            ),
            (config::BIND, "--bind=/:/media/root --bind=/tmp://media//./"),
        ] {
            let err = Plan::resolve(&env_setting(key, value), "core", Payload::Shell).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("environment: {key}: `"))
                    && err.to_string().ends_with(
                        "would cover /media/root, where the host's `/` is bound; mount it elsewhere"
                    ),
                "{value}: {err}"
            );
            refused += 1;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("toolboxrc");
        let mut s = Settings::default();
        s.apply_file(
            &file,
            "\nTOOLBOX_BIND=\"$TOOLBOX_BIND --bind=/tmp:/media\"\n",
            &Env::default(),
        )
        .unwrap();
        let err = Plan::resolve(&s, "core", Payload::Shell).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}:2: ", file.display())),
            "{err}"
        );
        refused += 1;
        // Beneath it, or elsewhere, is fine: the defaults bind /usr and /run beneath it.
        let mut allowed = 0;
        for value in [
            "--bind=/srv:/media/root/srv",
            "--bind=/mnt --tmpfs=/srv/media",
        ] {
            let bind = format!("{} {value}", Settings::default().get(config::BIND));
            Plan::resolve(&env_setting(config::BIND, &bind), "core", Payload::Shell).unwrap();
            allowed += 1;
        }
        // Read by scripts/reliability for docs/RELIABILITY.md.
        println!("figure host-root-mounts refused={refused} allowed={allowed}");
    }

    #[test]
    fn mounts_over_the_root_or_nspawns_own_files_are_refused() {
        for (value, why) in [
            (
                "--bind-ro=/srv:/",
                "would cover the toolbox's root; mount it elsewhere",
            ),
            (
                "--tmpfs=/x/..",
                "would cover the toolbox's root; mount it elsewhere",
            ),
            (
                "--bind=/run:/run",
                "would cover /run, where systemd-nspawn writes its own files; mount it elsewhere",
            ),
            (
                "--bind=/srv:/run/host/x",
                "would cover /run/host/x, where systemd-nspawn writes its own files; mount it elsewhere",
            ),
        ] {
            let err = Plan::resolve(
                &Settings::from_environment(&[(config::FLAGS, value)]),
                "core",
                Payload::Shell,
            )
            .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("environment: TOOLBOX_FLAGS: `{value}` {why}")
            );
        }
    }

    #[test]
    fn configuration_words_are_parsed_not_passed_blindly() {
        for (key, value, message) in [
            (
                config::ENV,
                "--directory=/tmp/..",
                "environment: TOOLBOX_ENV: `--directory=/tmp/..`: --directory is toolbox's: \
                 toolbox enters its own tree; choose the toolbox with --name",
            ),
            (
                config::FLAGS,
                "-D /tmp/..",
                "environment: TOOLBOX_FLAGS: `-D /tmp/..`: --directory is toolbox's: toolbox \
                 enters its own tree; choose the toolbox with --name",
            ),
            (
                config::ENV,
                "EDITOR=vi",
                "environment: TOOLBOX_ENV: `EDITOR=vi`: not an option; systemd-nspawn would \
                 take it and the words after it as the command (give the command on toolbox's \
                 command line, and settings as --setenv=NAME=VALUE)",
            ),
        ] {
            let err = Plan::resolve(
                &Settings::from_environment(&[(key, value)]),
                "core",
                Payload::Shell,
            )
            .unwrap_err();
            assert_eq!(err.to_string(), message);
        }
        // COS: a trailing slash on the host root's destination still names it.
        let plan = Plan::resolve(
            &Settings::from_environment(&[(
                config::BIND,
                "--bind=/:/media/root/ --bind=/var/:/var/ --bind-ro=/etc/resolv.conf",
            )]),
            "core",
            Payload::Shell,
        )
        .unwrap();
        assert_eq!(plan.host_root().as_deref(), Some("/media/root"));
    }

    #[test]
    fn host_root_from_binds() {
        let plan = Plan::resolve(&Settings::from_environment(&[]), "core", Payload::Shell).unwrap();
        assert_eq!(plan.host_root().as_deref(), Some("/media/root"));
        let plan = Plan::resolve(
            &Settings::from_environment(&[(
                config::BIND,
                "--bind=/usr:/u --bind-ro=/:/host:norbind",
            )]),
            "core",
            Payload::Shell,
        )
        .unwrap();
        assert_eq!(plan.host_root().as_deref(), Some("/host"));
        let plan = Plan::resolve(
            &Settings::from_environment(&[(config::BIND, "--bind=/srv")]),
            "core",
            Payload::Shell,
        )
        .unwrap();
        assert_eq!(plan.host_root(), None);
    }

    #[test]
    fn machine_names_are_valid_hostnames() {
        assert_eq!(machine_name("core-fedora-latest"), "core-fedora-latest");
        assert_eq!(
            machine_name("core-docker.io_library_fedora-latest"),
            "core-docker.io-library-fedora-latest"
        );
        assert_eq!(machine_name("..a..b."), "a.b");
        assert_eq!(machine_name("_a_.-b-"), "a.b");
        assert_eq!(machine_name("x.___"), "x");
        assert_eq!(machine_name("___"), "toolbox");
        assert_eq!(machine_name(""), "toolbox");
        let long = machine_name(&"a".repeat(100));
        assert_eq!(long.len(), 64);
    }
}
