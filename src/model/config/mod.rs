//! config: read and merge toolbox settings, remembering where each value came from.
//!
//! Sources, later wins: built-in defaults (the CoreOS script's), `/etc/default/toolbox`,
//! `~/.toolboxrc`, `${XDG_CONFIG_HOME:-~/.config}/toolbox/toolbox.conf`, `TOOLBOX_*`
//! environment variables, command-line options. Files are parsed as shell assignments
//! (see [`shell`]) and never executed. This module reads the files it is pointed at and
//! nothing else; turning settings into a launch is `plan`'s job.

pub mod shell;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::host::{Env, HostPaths, Invoker, XDG_CONFIG_HOME};

/// A setting toolbox understands.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    pub default: &'static str,
    /// Whether the value is a list of words split like a shell command line.
    pub words: bool,
    /// What it means, one paragraph (for toolbox.conf(5)).
    pub doc: &'static str,
}

pub const IMAGE: &str = "TOOLBOX_DOCKER_IMAGE";
pub const TAG: &str = "TOOLBOX_DOCKER_TAG";
pub const USER: &str = "TOOLBOX_USER";
pub const DIRECTORY: &str = "TOOLBOX_DIRECTORY";
pub const BIND: &str = "TOOLBOX_BIND";
pub const ENV: &str = "TOOLBOX_ENV";
pub const NAME: &str = "TOOLBOX_NAME";
pub const FLAGS: &str = "TOOLBOX_FLAGS";
pub const UPDATE: &str = "TOOLBOX_UPDATE";
pub const UPDATE_INTERVAL: &str = "TOOLBOX_UPDATE_INTERVAL";
pub const SUDO: &str = "TOOLBOX_SUDO";
pub const STORAGE: &str = "TOOLBOX_STORAGE";
pub const ENGINE: &str = "TOOLBOX_ENGINE";
pub const RUNTIME: &str = "TOOLBOX_RUNTIME";
pub const SPC_BINDS: &str = "TOOLBOX_SPC_BINDS";
pub const TRACING: &str = "TOOLBOX_TRACING";
pub const TARGET: &str = "TOOLBOX_TARGET";
pub const STALL_TIMEOUT: &str = "TOOLBOX_STALL_TIMEOUT";
pub const TARGET_NS: &str = "TOOLBOX_TARGET_NS";
pub const CONTAINERD_ADDRESS: &str = "TOOLBOX_CONTAINERD_ADDRESS";
pub const CONTAINERD_NAMESPACE: &str = "TOOLBOX_CONTAINERD_NAMESPACE";

/// Every setting, with the CoreOS script's defaults.
pub const KEYS: &[Key] = &[
    Key {
        name: IMAGE,
        default: "fedora",
        words: false,
        doc: "Image the toolbox is built from; it may carry its own `:tag` or `@digest`.",
    },
    Key {
        name: TAG,
        default: "latest",
        words: false,
        doc: "Tag used when the image has none.",
    },
    Key {
        name: USER,
        default: "root",
        words: false,
        doc: "User inside the toolbox. A user the toolbox lacks but the host has is added with the host's UID, GID, home and shell.",
    },
    Key {
        name: DIRECTORY,
        default: "/var/lib/toolbox",
        words: false,
        doc: "Where toolboxes live; an absolute path.",
    },
    Key {
        name: BIND,
        default: "--bind=/:/media/root --bind=/usr:/media/root/usr --bind=/run:/media/root/run",
        words: true,
        doc: "systemd-nspawn mount options (`--bind=`, `--bind-ro=`, `--tmpfs=`, `--overlay=`), split into words like a shell command line (quotes respected). Destinations are normalized (`.`, `..`, `//`); a mount over the toolbox's root, over /run or /run/host, or over the host's `/` at /media/root is refused, and a mount point inside another bind must exist on the host.",
    },
    Key {
        name: ENV,
        default: "",
        words: true,
        doc: "systemd-nspawn `--setenv=` options; other systemd-nspawn options are accepted as in TOOLBOX_FLAGS.",
    },
    Key {
        name: NAME,
        default: "",
        words: false,
        doc: "Toolbox name instead of IMAGE-TAG; the toolbox directory is `${USER}-${TOOLBOX_NAME}`.",
    },
    Key {
        name: FLAGS,
        default: "",
        words: true,
        doc: "Other systemd-nspawn options, placed before the binds. Every word is parsed as systemd-nspawn parses it: options toolbox decides itself (`--directory`, `--image`, `--template`, `--ephemeral`, `--machine`, `--user`, `--boot`, `--register`, `--link-journal`, `--private-users`, in any spelling or abbreviation) and words that are not options are refused, naming the file and line.",
    },
    Key {
        name: UPDATE,
        default: "notify",
        words: false,
        doc: "On entering an existing toolbox: `notify` says when its image changed since it was built, `auto` rebuilds it first, `never` contacts no daemon. A super privileged container's image is checked at every session (the engine is asked anyway): `auto` replaces a stopped container whose image changed.",
    },
    Key {
        name: UPDATE_INTERVAL,
        default: "600",
        words: false,
        doc: "Seconds between two such checks of one toolbox.",
    },
    Key {
        name: SUDO,
        default: "sudo",
        words: true,
        doc: "How a normal user becomes root: toolbox re-runs itself through this command.",
    },
    Key {
        name: STORAGE,
        default: "auto",
        words: false,
        doc: "How a new toolbox holds its image: `overlay` mounts the engine's layers (Docker's overlay2 or its containerd image store's snapshots, Podman's overlay) under the toolbox's own upper directory (the toolbox's own files are in NAME/upper), pinned by a small running anchor container that every prune spares, and falls back to `copy`, saying why, where that cannot work; `copy` unpacks the image into the toolbox directory; `auto`, the default, is `overlay` that says why it copies only with `-v`.",
    },
    Key {
        name: ENGINE,
        default: "auto",
        words: false,
        doc: "Container engine toolboxes are created with: `docker` (`DOCKER_HOST`, else /var/run/docker.sock), `podman` (`CONTAINER_HOST`, else Podman's socket, `$XDG_RUNTIME_DIR/podman/podman.sock` or /run/podman/podman.sock), `containerd` (TOOLBOX_CONTAINERD_ADDRESS; toolboxes of the nspawn runtime only), or `auto`: `DOCKER_HOST` if set, else Docker's socket if it answers, else Podman's, else containerd's. Entering an existing toolbox needs no engine.",
    },
    Key {
        name: CONTAINERD_ADDRESS,
        default: "/run/containerd/containerd.sock",
        words: false,
        doc: "containerd's socket, for TOOLBOX_ENGINE=containerd (and `auto` where neither Docker nor Podman answers).",
    },
    Key {
        name: CONTAINERD_NAMESPACE,
        default: "",
        words: false,
        doc: "The containerd namespace images are looked up in; empty: `k8s.io` (where the kubelet keeps them), then `default` (where `ctr` does). `-v` says which was used.",
    },
    Key {
        name: RUNTIME,
        default: "nspawn",
        words: false,
        doc: "How a toolbox runs: `nspawn` unpacks the image into the toolbox directory and enters it with systemd-nspawn; `spc` runs a super privileged container of the image through the engine (privileged, the host's network, PID, IPC and UTS namespaces, TOOLBOX_SPC_BINDS bound in), kept as a named container per user and image, started for a session and stopped after the last one.",
    },
    Key {
        name: SPC_BINDS,
        default: "/:/host /dev:/dev /run:/run",
        words: true,
        doc: "Binds of a super privileged container, `SOURCE:DESTINATION[:OPTIONS]` with absolute paths, split into words; `HOST` is set to where `/` is bound.",
    },
    Key {
        name: TRACING,
        default: "1",
        words: false,
        doc: "`1`: sessions can trace the host with bpftrace, perf and bcc's tools: the `bpf` and `perf_event_open` system calls are allowed; the host's tracefs, debugfs and bpf filesystem are bound at /sys/kernel/tracing, /sys/kernel/debug and /sys/fs/bpf where the host has them mounted; the host's /lib/modules/$(uname -r) and kernel headers in /usr/src are shown read-only at those paths (under the image's own files there, if any); the locked-memory limit is raised as far as the host allows. `0`: none of this. `--dry-run` shows the options.",
    },
    Key {
        name: STALL_TIMEOUT,
        default: "30",
        words: false,
        doc: "Seconds an image pull or export may go without the engine sending anything, and finding a `--target` container may take, before toolbox gives up (125, nothing left): a daemon that stopped answering must not hold a creation or a session forever.",
    },
    Key {
        name: TARGET,
        default: "",
        words: false,
        doc: "A running container (name or ID, found through TOOLBOX_ENGINE) or host process (`pid:N`) to debug: the session joins its network namespace, sees its root filesystem and volumes at /media/target, and gets TOOLBOX_TARGET and TOOLBOX_TARGET_PID; the host's PID namespace and / at /media/root stay. Usually given per run as `--target`.",
    },
    Key {
        name: TARGET_NS,
        default: "net",
        words: false,
        doc: "The target's namespaces a session joins, comma-separated: `net`, `ipc`, `uts` (never `pid` or `mnt`).",
    },
];

fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File {
        path: PathBuf,
        line: usize,
    },
    Environment,
    Option(&'static str),
    /// Chosen by toolbox for the host it runs on, for this reason.
    Host(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Environment => write!(f, "environment"),
            Origin::Option(flag) => write!(f, "option {flag}"),
            Origin::Host(reason) => write!(f, "{reason}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    pub origin: Origin,
}

/// The configuration files toolbox consults, in order.
pub fn files(paths: &HostPaths, env: &Env, invoker: &Invoker) -> Vec<PathBuf> {
    let mut files = vec![paths.etc_default.clone()];
    if let Some(home) = &invoker.home {
        files.push(home.join(".toolboxrc"));
    }
    let config_home = env
        .non_empty(XDG_CONFIG_HOME)
        .map(PathBuf::from)
        .or_else(|| invoker.home.as_ref().map(|h| h.join(".config")));
    if let Some(config_home) = config_home {
        files.push(config_home.join("toolbox").join("toolbox.conf"));
    }
    files
}

/// Settings merged from every source, each with its origin.
#[derive(Debug, Clone)]
pub struct Settings {
    values: HashMap<&'static str, Setting>,
    /// Every variable the files assigned, known or not, for `$NAME` in later files (the
    /// CoreOS script sourced them all into one shell).
    vars: HashMap<String, String>,
    /// Files that existed and were read.
    pub files_read: Vec<PathBuf>,
    /// Problems worth a line on stderr that do not stop toolbox.
    pub warnings: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            values: KEYS
                .iter()
                .map(|k| {
                    let setting = Setting {
                        value: k.default.to_string(),
                        origin: Origin::Default,
                    };
                    (k.name, setting)
                })
                .collect(),
            vars: KEYS
                .iter()
                .map(|k| (k.name.to_string(), k.default.to_string()))
                .collect(),
            files_read: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

impl Settings {
    /// Defaults, then each file in `files` that `read` finds (its bytes, or `None` when
    /// there is none), then the environment. The reading, and what makes a file
    /// trustworthy, is the caller's: `host::files::read_settings_file`.
    pub fn load(
        files: &[PathBuf],
        env: &Env,
        read: impl Fn(&Path) -> Result<Option<Vec<u8>>>,
    ) -> Result<Settings> {
        let mut settings = Settings::default();
        for path in files {
            if let Some(bytes) = read(path)? {
                settings.apply_bytes(path, &bytes, env)?;
            }
        }
        settings.apply_environment(env);
        Ok(settings)
    }

    /// Merges one file's assignments from its raw bytes: text that is not UTF-8 or holds a
    /// NUL byte is refused, naming the line.
    pub fn apply_bytes(&mut self, path: &Path, bytes: &[u8], env: &Env) -> Result<()> {
        let line_at = |offset: usize| 1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count();
        let text = std::str::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: is not UTF-8 text",
                path.display(),
                line_at(e.valid_up_to())
            )
        })?;
        if let Some(nul) = bytes.iter().position(|&b| b == 0) {
            bail!("{}:{}: contains a NUL byte", path.display(), line_at(nul));
        }
        self.apply_file(path, text, env)
    }

    /// Merges one file's assignments. `$NAME` sees earlier assignments first, then the
    /// environment.
    pub fn apply_file(&mut self, path: &Path, text: &str, env: &Env) -> Result<()> {
        let lookup = |name: &str| {
            self.vars
                .get(name)
                .cloned()
                .or_else(|| env.get(name).map(str::to_string))
        };
        let parsed = shell::parse(text, &lookup)
            .map_err(|e| anyhow::anyhow!("{}:{}: {}", path.display(), e.line, e.message))?;
        for assignment in parsed.assignments {
            match key(&assignment.name) {
                Some(key) => {
                    let origin = Origin::File {
                        path: path.to_path_buf(),
                        line: assignment.line,
                    };
                    self.values.insert(
                        key.name,
                        Setting {
                            value: assignment.value.clone(),
                            origin,
                        },
                    );
                }
                None if parsed.referenced.contains(&assignment.name) => {}
                None => self.warnings.push(format!(
                    "{}:{}: unknown setting `{}` is ignored",
                    path.display(),
                    assignment.line,
                    assignment.name
                )),
            }
            self.vars.insert(assignment.name, assignment.value);
        }
        self.files_read.push(path.to_path_buf());
        Ok(())
    }

    /// `TOOLBOX_*` variables in the environment override the files.
    pub fn apply_environment(&mut self, env: &Env) {
        for key in KEYS {
            if let Some(value) = env.get(key.name) {
                let setting = Setting {
                    value: value.to_string(),
                    origin: Origin::Environment,
                };
                self.values.insert(key.name, setting);
            }
        }
    }

    /// A command-line option overrides everything else.
    pub fn set_option(&mut self, name: &'static str, flag: &'static str, value: String) {
        self.values.insert(
            name,
            Setting {
                value,
                origin: Origin::Option(flag),
            },
        );
    }

    /// Sets `name` for the host toolbox runs on, where the user set nothing.
    pub fn set_for_host(&mut self, name: &'static str, value: &str, reason: &'static str) {
        self.values.insert(
            name,
            Setting {
                value: value.to_string(),
                origin: Origin::Host(reason),
            },
        );
    }

    pub fn setting(&self, name: &str) -> &Setting {
        &self.values[name]
    }

    pub fn get(&self, name: &str) -> &str {
        &self.setting(name).value
    }

    /// A word-valued setting split into words; a quoting error names where the value came from.
    pub fn words(&self, name: &str) -> Result<Vec<String>> {
        let setting = self.setting(name);
        match shell::split_words(&setting.value) {
            Ok(words) => Ok(words),
            Err(message) => bail!("{}: {name}: {message}", setting.origin),
        }
    }

    /// The defaults with `pairs` applied as environment variables (for tests).
    #[cfg(test)]
    pub fn from_environment(pairs: &[(&str, &str)]) -> Settings {
        let mut settings = Settings::default();
        settings.apply_environment(&Env::from_pairs(pairs.iter().copied()));
        settings
    }

    /// Every setting in [`KEYS`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static Key, &Setting)> {
        KEYS.iter().map(|k| (k, &self.values[k.name]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::files::{MAX_FILE, Trust, read_settings_file};

    /// [`Settings::load`] reading as toolbox does, with `trust`.
    fn load(files: &[PathBuf], env: &Env, trust: Trust) -> Result<Settings> {
        Settings::load(files, env, |path| read_settings_file(path, trust))
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_are_the_coreos_ones() {
        let s = Settings::default();
        assert_eq!(s.get(IMAGE), "fedora");
        assert_eq!(s.get(TAG), "latest");
        assert_eq!(s.get(USER), "root");
        assert_eq!(s.get(DIRECTORY), "/var/lib/toolbox");
        assert_eq!(
            s.words(BIND).unwrap(),
            [
                "--bind=/:/media/root",
                "--bind=/usr:/media/root/usr",
                "--bind=/run:/media/root/run"
            ]
        );
        assert!(s.words(ENV).unwrap().is_empty());
        assert_eq!(s.setting(IMAGE).origin, Origin::Default);
    }

    #[test]
    fn later_sources_win_and_origins_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let etc = write(
            dir.path(),
            "etc/default/toolbox",
            "TOOLBOX_DOCKER_IMAGE=debian\nTOOLBOX_DOCKER_TAG=bookworm\nTOOLBOX_USER=core\n",
        );
        let rc = write(
            dir.path(),
            "home/.toolboxrc",
            "# mine\nTOOLBOX_DOCKER_TAG=trixie\n",
        );
        let conf = write(
            dir.path(),
            "home/.config/toolbox/toolbox.conf",
            "TOOLBOX_USER=admin\n",
        );
        let env = Env::from_pairs([("TOOLBOX_USER", "envuser")]);
        let mut s = load(
            &[etc.clone(), rc.clone(), conf.clone()],
            &env,
            Trust::default(),
        )
        .unwrap();
        assert_eq!(s.get(IMAGE), "debian");
        assert_eq!(s.setting(IMAGE).origin, Origin::File { path: etc, line: 1 });
        assert_eq!(s.get(TAG), "trixie");
        assert_eq!(
            s.setting(TAG).origin.to_string(),
            format!("{}:2", rc.display())
        );
        assert_eq!(s.get(USER), "envuser");
        assert_eq!(s.setting(USER).origin, Origin::Environment);
        s.set_option(USER, "--user", "flaguser".into());
        assert_eq!(s.get(USER), "flaguser");
        assert_eq!(s.setting(USER).origin.to_string(), "option --user");
        assert_eq!(
            s.files_read,
            vec![dir.path().join("etc/default/toolbox"), rc, conf]
        );
    }

    #[test]
    fn missing_files_are_fine() {
        let dir = tempfile::tempdir().unwrap();
        let files = [dir.path().join("nope"), dir.path().join("also/nope")];
        let s = load(&files, &Env::default(), Trust::default()).unwrap();
        assert!(s.files_read.is_empty());
        assert_eq!(s.get(IMAGE), "fedora");
    }

    #[test]
    fn unreadable_and_malformed_files_are_errors_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let bad = write(
            dir.path(),
            "rc",
            "TOOLBOX_DOCKER_IMAGE=debian\n\nTOOLBOX_BIND=$(evil)\n",
        );
        let err = load(
            std::slice::from_ref(&bad),
            &Env::default(),
            Trust::default(),
        )
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "{}:3: command substitution ($(...)) is not supported",
                bad.display()
            )
        );
        let as_dir = dir.path().join("conf.d");
        std::fs::create_dir(&as_dir).unwrap();
        let err = load(
            std::slice::from_ref(&as_dir),
            &Env::default(),
            Trust::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").starts_with(&format!("cannot read {}: ", as_dir.display())));
        let binary = dir.path().join("binary");
        std::fs::write(&binary, b"A=\xff\n").unwrap();
        let err = load(
            std::slice::from_ref(&binary),
            &Env::default(),
            Trust::default(),
        )
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!("{}:1: is not UTF-8 text", binary.display())
        );
    }

    /// Hostile files: each is an error naming file and line, or a documented result.
    #[test]
    fn hostile_files_fail_with_file_and_line_or_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let load = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let loaded = load(
                std::slice::from_ref(&path),
                &Env::default(),
                Trust::default(),
            );
            (path, loaded.map_err(|e| format!("{e:#}")))
        };
        let mut cases = 0;
        let mut refused = |name: &str, bytes: &[u8], expected: &str| {
            let (path, loaded) = load(name, bytes);
            let error = loaded.expect_err(name);
            assert_eq!(error, format!("{}{expected}", path.display()), "{name}");
            cases += 1;
        };
        refused(
            "invalid-utf8",
            b"A=1\nB=2\nTOOLBOX_USER=\xc3\x28\n",
            ":3: is not UTF-8 text",
        );
        refused(
            "nul",
            b"A=1\nTOOLBOX_USER=ro\0ot\n",
            ":2: contains a NUL byte",
        );
        // Each line doubles A: without a bound, 40 lines ask for a terabyte.
        let doubling = format!("A=x\n{}", "A=$A$A\n".repeat(40));
        refused(
            "doubling",
            doubling.as_bytes(),
            ":21: `$A` makes this file's expansions exceed 1024 KiB; values that refer to themselves grow without end",
        );
        let (path, loaded) = load("huge", &vec![b'#'; MAX_FILE as usize + 1]);
        assert_eq!(
            loaded.unwrap_err(),
            format!(
                "cannot read {}: it is larger than 1024 KiB, which no toolbox configuration needs",
                path.display()
            )
        );
        cases += 1;
        // A line just under the size bound is read whole.
        let long = format!(
            "TOOLBOX_ENV='--setenv=X={}'\n",
            "y".repeat(MAX_FILE as usize - 64)
        );
        let settings = load("long-line", long.as_bytes()).1.unwrap();
        assert_eq!(
            settings.get(ENV).len(),
            MAX_FILE as usize - 64 + "--setenv=X=".len()
        );
        cases += 1;
        // References are expanded once, when assigned, from earlier values: a value that
        // names itself or a later one does not recurse.
        let settings = load(
            "self",
            b"TOOLBOX_NAME=$TOOLBOX_NAME-x\nA=$B\nB=$A\nTOOLBOX_USER=u$A$B\n",
        )
        .1
        .unwrap();
        assert_eq!(settings.get(NAME), "-x");
        assert_eq!(settings.get(USER), "u");
        cases += 1;
        // One case per file read.
        println!("figure hostile-config files={cases}");
    }

    #[test]
    fn expansions_extend_defaults_and_earlier_files() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env::from_pairs([("HOME", "/home/core"), ("TOOLBOX_BIND", "--bind=/from/env")]);
        let mut s = Settings::default();
        s.apply_file(
            &dir.path().join("etc"),
            "SITE_BIND=--bind=/srv:/srv\n",
            &env,
        )
        .unwrap();
        let rc = "TOOLBOX_BIND=\"$TOOLBOX_BIND $SITE_BIND '--bind=/my dir:/d'\"\nTOOLBOX_DIRECTORY=$HOME/tb\n";
        s.apply_file(&dir.path().join("rc"), rc, &env).unwrap();
        // In a file, `$TOOLBOX_BIND` is the value so far, as when the script sourced it.
        assert_eq!(
            s.words(BIND).unwrap(),
            [
                "--bind=/:/media/root",
                "--bind=/usr:/media/root/usr",
                "--bind=/run:/media/root/run",
                "--bind=/srv:/srv",
                "--bind=/my dir:/d"
            ]
        );
        assert_eq!(s.get(DIRECTORY), "/home/core/tb");
        s.apply_environment(&env);
        assert_eq!(s.words(BIND).unwrap(), ["--bind=/from/env"]);
    }

    #[test]
    fn unknown_keys_warn_unless_used_as_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let rc = write(
            dir.path(),
            "rc",
            "TOOLBOX_DOCKER_IMGE=typo\nMINE=--bind=/a\nTOOLBOX_BIND=\"$MINE\"\n",
        );
        let s = load(std::slice::from_ref(&rc), &Env::default(), Trust::default()).unwrap();
        assert_eq!(
            s.warnings,
            vec![format!(
                "{}:1: unknown setting `TOOLBOX_DOCKER_IMGE` is ignored",
                rc.display()
            )]
        );
        assert_eq!(s.get(IMAGE), "fedora");
    }

    #[test]
    fn word_errors_name_the_origin() {
        let env = Env::from_pairs([("TOOLBOX_FLAGS", "'--open")]);
        let mut s = Settings::default();
        s.apply_environment(&env);
        let err = s.words(FLAGS).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment: TOOLBOX_FLAGS: unterminated single quote"
        );
    }

    #[test]
    fn the_example_file_documents_every_key_and_parses() {
        let example = include_str!("../../../toolbox.conf.example");
        for key in KEYS {
            assert!(
                example.contains(&format!("#{}=", key.name)),
                "{} is not in the example",
                key.name
            );
        }
        let uncommented = example.replace("#TOOLBOX_", "TOOLBOX_");
        let mut s = Settings::default();
        s.apply_file(
            Path::new("toolbox.conf.example"),
            &uncommented,
            &Env::default(),
        )
        .unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        for key in KEYS {
            s.words(key.name).unwrap();
        }
    }

    #[test]
    fn files_others_can_write_are_refused_when_root_reads_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let rc = write(dir.path(), "rc", "TOOLBOX_DOCKER_IMAGE=debian\n");
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o664)).unwrap();
        let me = rustix::process::geteuid().as_raw();
        let sudo = Trust {
            owner: Some(me),
            reader: Some(me),
        };
        let load = |trust| load(std::slice::from_ref(&rc), &Env::default(), trust);
        let err = load(sudo).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "refusing {}: it is writable by others (mode 664)",
                rc.display()
            )),
            "{err}"
        );
        // Run by the user without root, the same file is their own business.
        load(Trust::default()).unwrap();
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o644)).unwrap();
        load(sudo).unwrap();
        // A directory on the way that others may write is refused too.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = load(sudo).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "{} is writable by others (mode 777)",
                dir.path().display()
            )),
            "{err}"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        if me == 0 {
            std::os::unix::fs::chown(&rc, Some(4321), None).unwrap();
            let direct_root = Trust::of(
                &Invoker {
                    name: "root".into(),
                    home: None,
                    on_behalf_of: None,
                },
                0,
            );
            let err = load(direct_root).unwrap_err();
            assert!(
                err.to_string().contains("it belongs to user ID 4321"),
                "{err}"
            );
        }
    }

    // Regression: under sudo, `~/.toolboxrc -> /etc/shadow` passed the owner check and a
    // line of the shadow file was printed in the error.
    #[test]
    fn a_file_the_invoker_cannot_read_is_refused_unread() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secret = write(dir.path(), "secret", "root:$6$hash:19000:0:99999:7:::\n");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let rc = dir.path().join("toolboxrc");
        std::os::unix::fs::symlink(&secret, &rc).unwrap();
        let owner = rustix::process::geteuid().as_raw();
        // The invoker is someone else than the secret's owner.
        let trust = Trust {
            owner: Some(owner),
            reader: Some(owner + 1),
        };
        let err = load(std::slice::from_ref(&rc), &Env::default(), trust).unwrap_err();
        let message = format!("{err:#}");
        assert_eq!(
            message,
            format!(
                "refusing {}: the invoking user (ID {}) cannot read it themselves",
                rc.display(),
                owner + 1
            )
        );
        assert!(!message.contains("hash"));
        // A FIFO is refused without waiting for a writer.
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let err = load(std::slice::from_ref(&fifo), &Env::default(), trust).unwrap_err();
        assert!(
            err.to_string().ends_with("it is not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn config_file_locations() {
        let invoker = Invoker {
            name: "core".into(),
            home: Some("/home/core".into()),
            on_behalf_of: None,
        };
        let paths = HostPaths::default();
        assert_eq!(
            files(&paths, &Env::default(), &invoker),
            [
                PathBuf::from("/etc/default/toolbox"),
                PathBuf::from("/home/core/.toolboxrc"),
                PathBuf::from("/home/core/.config/toolbox/toolbox.conf")
            ]
        );
        let env = Env::from_pairs([("XDG_CONFIG_HOME", "/xdg")]);
        assert_eq!(
            files(&paths, &env, &invoker)[2],
            PathBuf::from("/xdg/toolbox/toolbox.conf")
        );
    }
}
