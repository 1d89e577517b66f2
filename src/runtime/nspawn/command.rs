//! nspawn: build the systemd-nspawn command that enters a toolbox, as a value that can be
//! printed (`--dry-run`) and tested, and the one function that executes it.

use std::convert::Infallible;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow};

use crate::host::Env;
use crate::host::ui;
use crate::model::options;
use crate::model::plan::{Payload, Plan, SESSION_WRITTEN_FILES};
use crate::runtime::nspawn::mountpoints::Placement;
use crate::runtime::nspawn::session;

/// systemd 232 replaced `--share-system` by the `SYSTEMD_NSPAWN_SHARE_SYSTEM` variable
/// (the flag is still parsed, but only warns).
const SHARE_SYSTEM_ENV_SINCE: u32 = 232;

/// systemd 248 added `--console=autopipe`: a terminal when stdin and stdout are one,
/// plain pipes otherwise, so scripted output is not mangled by a pseudo-terminal (CRLF).
const AUTOPIPE_SINCE: u32 = 248;
/// systemd 242 added `--console=pipe`.
const PIPE_SINCE: u32 = 242;

/// systemd 239 added `--resolv-conf=` and `--timezone=`.
const RESOLV_CONF_SINCE: u32 = 239;

/// systemd 250 takes `--setenv=NAME` alone to pass its own variable `NAME` on: a value
/// given that way is in no command line, which any local user can read in
/// `/proc/PID/cmdline`.
const SETENV_BY_NAME_SINCE: u32 = 250;

/// Files systemd-nspawn writes in the tree on every start (systemd 252
/// `setup_resolv_conf` copies the host's file with `O_TRUNC`, `setup_timezone` replaces
/// the link), and the option that stops it. A mount from the host on the file or a
/// directory above it would make that write land on the host's own file: copying the
/// host's `/etc/resolv.conf` onto itself empties it. Such a mount is what the user asked
/// to see, so systemd-nspawn is told to leave the file alone.
const WRITTEN_FILES: [(&str, &str); 2] = [
    (SESSION_WRITTEN_FILES[0], "--resolv-conf=off"),
    (SESSION_WRITTEN_FILES[1], "--timezone=off"),
];

/// The oldest systemd-nspawn toolbox drives: systemd 219 (CentOS 7, the oldest host the
/// CoreOS-era toolbox ran on), which has every option toolbox passes.
pub const OLDEST_SUPPORTED: u32 = 219;

/// Where the marker file is bound inside a toolbox.
pub const MARKER_IN_TOOLBOX: &str = "/run/.toolboxenv";

/// The `PATH` systemd-nspawn gives the payload (systemd 252; unchanged for years).
pub const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The systemd-nspawn found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nspawn {
    pub program: PathBuf,
    pub version: u32,
}

impl Nspawn {
    /// systemd-nspawn on `PATH`, if it is there.
    pub fn program(env: &Env) -> Option<PathBuf> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        which::which_in("systemd-nspawn", env.path_var(), cwd).ok()
    }

    /// Finds systemd-nspawn on `PATH` and its version. Running `systemd-nspawn --version`
    /// costs about 9 ms, so the answer is remembered in `cache` keyed by the binary's
    /// path, inode, size and modification time; the file is written only when
    /// `may_write` and its directory already exists.
    pub fn find(env: &Env, cache: &Path, may_write: bool) -> Result<Nspawn> {
        let program = Nspawn::program(env).ok_or_else(|| {
            anyhow!("systemd-nspawn not found on PATH; install it (Debian: systemd-container)")
        })?;
        let meta = fs::metadata(&program)
            .with_context(|| format!("cannot inspect {}", program.display()))?;
        let identity = format!(
            "{} {} {} {} {}.{}",
            program.display(),
            meta.dev(),
            meta.ino(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        );
        if let Some(version) = cached_version(cache, &identity) {
            return supported(program, version);
        }
        let output = Command::new(&program)
            .arg("--version")
            .output()
            .with_context(|| format!("cannot run {}", program.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let version = parse_version(&text).ok_or_else(|| {
            anyhow!(
                "cannot read the version of {} from `{}`",
                program.display(),
                text.trim()
            )
        })?;
        if may_write && cache.parent().is_some_and(Path::is_dir) {
            // A cache that cannot be written only costs the next start a few milliseconds.
            let _ = write_cache(cache, &format!("{identity} {version}\n"));
        }
        supported(program, version)
    }
}

fn supported(program: PathBuf, version: u32) -> Result<Nspawn> {
    if version < OLDEST_SUPPORTED {
        return Err(anyhow!(
            "{} is from systemd {version}; toolbox needs systemd-nspawn from systemd {OLDEST_SUPPORTED} or newer",
            program.display()
        ));
    }
    Ok(Nspawn { program, version })
}

fn cached_version(cache: &Path, identity: &str) -> Option<u32> {
    let text = fs::read_to_string(cache).ok()?;
    let (key, version) = text.trim_end().rsplit_once(' ')?;
    (key == identity).then(|| version.parse().ok())?
}

/// Replaces `cache` atomically, never writing through a symlink.
fn write_cache(cache: &Path, text: &str) -> std::io::Result<()> {
    let partial = cache.with_extension(format!("partial-{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)?;
    file.write_all(text.as_bytes())?;
    drop(file);
    fs::rename(&partial, cache).inspect_err(|_| {
        let _ = fs::remove_file(&partial);
    })
}

impl Nspawn {
    /// How this systemd-nspawn is driven, for `-v`.
    pub fn variant(&self, systemd_booted: bool) -> String {
        let share = if self.version >= SHARE_SYSTEM_ENV_SINCE {
            "namespaces shared with SYSTEMD_NSPAWN_SHARE_SYSTEM=1"
        } else {
            "namespaces shared with --share-system"
        };
        let register = if systemd_booted {
            "no machine registered with systemd-machined (a session shares the host's PID \
             namespace), the session in a scope of its own in machine.slice"
        } else {
            "no machine registered (systemd is not PID 1), the session in the caller's cgroup"
        };
        let console = if self.version >= AUTOPIPE_SINCE {
            "--console=autopipe"
        } else if self.version >= PIPE_SINCE {
            "--console=pipe off a terminal"
        } else {
            "default console"
        };
        format!("{share}, {register}, {console}")
    }
}

/// The number in the first line of `systemd-nspawn --version`: `systemd 252 (252.39-1)`.
pub fn parse_version(output: &str) -> Option<u32> {
    let line = output.lines().next()?;
    let mut words = line.split_whitespace();
    (words.next()? == "systemd").then_some(())?;
    words.next()?.parse().ok()
}

/// Facts about the host and this entry that shape the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// systemd is PID 1 (`/run/systemd/system` exists).
    pub systemd_booted: bool,
    /// stdin and stdout are both terminals.
    pub terminal: bool,
    /// This session's number (the PID that becomes systemd-nspawn's), which makes its
    /// `--machine=` name unique among the toolbox's sessions.
    pub session: u32,
    /// An empty file bound at `/run/.toolboxenv`, the marker Toolbx also uses.
    pub marker: PathBuf,
    /// toolbox's own binary, bound read-only as `host-exec` inside.
    pub host_exec: Option<PathBuf>,
    /// Proxy variables to hand to the toolbox's package managers.
    pub proxies: Vec<(String, String)>,
    /// What lets the session trace the host (`TOOLBOX_TRACING`, see
    /// [`super::tracing`]); empty when it is off.
    pub tracing: Vec<String>,
    /// The target's options (`--target`, see `model::target`) and the namespaces of it
    /// the session joins, by name and file.
    pub target: Vec<String>,
    pub namespaces: Vec<(&'static str, PathBuf)>,
    /// Where the session's mounts were placed in the tree (see [`super::mountpoints`]).
    pub placement: Placement,
}

impl Launch {
    /// toolbox's own binds: the marker, and toolbox's binary as `host-exec` and as the
    /// session's first process.
    pub fn own_binds(&self) -> Vec<String> {
        let mut binds = vec![format!(
            "--bind-ro={}:{MARKER_IN_TOOLBOX}",
            self.marker.display()
        )];
        if let Some(exe) = &self.host_exec {
            for at in [
                crate::runtime::host_exec::PATH_IN_TOOLBOX,
                session::PATH_IN_TOOLBOX,
            ] {
                binds.push(format!("--bind-ro={}:{at}", exe.display()));
            }
        }
        binds
    }
}

/// Options as systemd-nspawn is given them: each mount at its destination as placed, and,
/// where systemd-nspawn can take them so, the variables whose values may be secrets by
/// name alone, their values added to `env`.
fn placed(
    words: &[String],
    placement: &Placement,
    by_name: bool,
    env: &mut Vec<(String, String)>,
) -> Vec<OsString> {
    // Every word here was parsed when the plan was made, or is toolbox's own.
    let Ok(parsed) = options::parse(words) else {
        return words.iter().map(OsString::from).collect();
    };
    let mut args = Vec::new();
    for option in parsed {
        let destination = option
            .mount
            .as_ref()
            .map(|m| placement.destination(&m.destination));
        let secret = option.setenv.as_deref().and_then(|assignment| {
            let (name, value) = assignment.split_once('=')?;
            (by_name && ui::may_be_secret(name, value))
                .then(|| (name.to_string(), value.to_string()))
        });
        args.extend(
            option
                .words(destination, secret.is_some())
                .into_iter()
                .map(OsString::from),
        );
        env.extend(secret);
    }
    args
}

/// A program, its arguments and the variables added to the inherited environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    /// Namespaces it runs in, joined by toolbox beforehand: shown as `nsenter`'s options.
    pub namespaces: Vec<(&'static str, PathBuf)>,
}

/// The systemd-nspawn command for `plan`.
pub fn invocation(plan: &Plan, nspawn: &Nspawn, launch: &Launch, quiet: bool) -> Invocation {
    let mut args: Vec<OsString> = Vec::new();
    let mut env = Vec::new();
    // A command's output is often read by a script: keep nspawn's banner out of it.
    if quiet || matches!(plan.payload, Payload::Command(_)) {
        args.push("--quiet".into());
    }
    let mut directory = OsString::from("--directory=");
    directory.push(plan.root());
    args.push(directory);
    args.push("--capability=all".into());
    // systemd-nspawn's journal linking creates directories and links in the tree's
    // /var/log/journal and the host's; a toolbox session has no journal of its own.
    args.push("--link-journal=no".into());
    if nspawn.version >= SHARE_SYSTEM_ENV_SINCE {
        env.push(("SYSTEMD_NSPAWN_SHARE_SYSTEM".to_string(), "1".to_string()));
    } else {
        args.push("--share-system".into());
    }
    // Any number of sessions share one tree: lift nspawn's directory lock ("Directory
    // tree ... is currently busy", flatcar/toolbox#4); each session has its own name.
    env.push(("SYSTEMD_NSPAWN_LOCK".to_string(), "0".to_string()));
    // systemd-nspawn registers no machine that shares the host's PID namespace; where
    // systemd runs it puts the session in a scope of its own (machine.slice/MACHINE.scope),
    // as for the CoreOS script. Without systemd as PID 1 there is no bus for either.
    // (`--keep-unit` where systemd runs would make cgroups in the caller's, which is not
    // delegated to it from a login session, and older versions refuse it there.)
    if !launch.systemd_booted {
        args.push("--register=no".into());
        args.push("--keep-unit".into());
    }
    if nspawn.version >= AUTOPIPE_SINCE {
        args.push("--console=autopipe".into());
    } else if nspawn.version >= PIPE_SINCE && !launch.terminal {
        args.push("--console=pipe".into());
    }
    args.push(format!("--machine={}", plan.session_machine_name(launch.session)).into());
    for (_, off) in covered_files(plan, &launch.placement) {
        args.push(off.into());
    }
    let by_name = nspawn.version >= SETENV_BY_NAME_SINCE;
    let placement = &launch.placement;
    // Before the configured words, which may add to them or override the limit.
    args.extend(placed(&launch.tracing, placement, by_name, &mut env));
    args.extend(placed(&plan.flags, placement, by_name, &mut env));
    args.extend(placed(&launch.own_binds(), placement, by_name, &mut env));
    args.extend(placed(&plan.binds, placement, by_name, &mut env));
    args.extend(placed(&launch.target, placement, by_name, &mut env));
    let mut variables = vec![format!("--setenv=TOOLBOX_NAME={}", plan.name)];
    if let Some(root) = plan.host_root() {
        variables.push(format!("--setenv={}={root}", crate::host::HOST_ROOT));
    }
    for (name, value) in &launch.proxies {
        variables.push(format!("--setenv={name}={value}"));
    }
    args.extend(placed(&variables, placement, by_name, &mut env));
    args.extend(placed(&plan.env, placement, by_name, &mut env));
    match &launch.host_exec {
        // toolbox's own first process becomes the user and runs the command (see
        // [`session`]): systemd-nspawn starts it as root, which needs nothing in the image.
        Some(_) => {
            args.push("--user=root".into());
            args.push("--".into());
            args.push(session::PATH_IN_TOOLBOX.into());
            let command = match &plan.payload {
                Payload::Command(command) => command.as_slice(),
                Payload::Shell => &[],
            };
            args.extend(session::arguments(&plan.user, command));
        }
        None => {
            args.push(format!("--user={}", plan.user).into());
            if let Payload::Command(command) = &plan.payload {
                args.push("--".into());
                args.extend(command.iter().cloned());
            }
        }
    }
    Invocation {
        program: nspawn.program.clone(),
        args,
        env,
        namespaces: launch.namespaces.clone(),
    }
}

/// The files of [`WRITTEN_FILES`] that a bind from the host covers where it is placed,
/// with the option that keeps systemd-nspawn from writing them.
fn covered_files<'a>(
    plan: &'a Plan,
    placement: &'a Placement,
) -> impl Iterator<Item = (&'static str, &'static str)> + 'a {
    WRITTEN_FILES.into_iter().filter(|(file, _)| {
        plan.mounts.iter().any(|m| {
            m.kind == options::MountKind::Bind
                && options::is_within(file, placement.destination(&m.destination))
        })
    })
}

/// Refuses a launch this systemd-nspawn cannot run without writing on the host.
pub fn check_supported(plan: &Plan, nspawn: &Nspawn, launch: &Launch) -> Result<()> {
    if nspawn.version < RESOLV_CONF_SINCE
        && let Some((file, _)) = covered_files(plan, &launch.placement).next()
    {
        return Err(anyhow!(
            "a bind covers {file}, which systemd-nspawn {} would overwrite with the host's \
             (systemd {RESOLV_CONF_SINCE} and newer can be told not to); bind it elsewhere",
            nspawn.version
        ));
    }
    Ok(())
}

/// The `PATH` the payload will search: the last `PATH` set among the extra words
/// (`--setenv=PATH=...`, `-E PATH=...`), else systemd-nspawn's default.
pub fn container_path(plan: &Plan) -> String {
    plan.setenv
        .iter()
        .filter_map(|assignment| assignment.strip_prefix("PATH="))
        .next_back()
        .unwrap_or(CONTAINER_PATH)
        .to_string()
}

impl Invocation {
    /// Replaces this process with the command, so the terminal, signals and exit status
    /// are the command's own. Returns only if the exec failed.
    pub fn exec(&self) -> Result<Infallible> {
        let error = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .exec();
        Err(error).with_context(|| format!("cannot run {}", self.program.display()))
    }

    /// Runs the command as a child and returns the status to exit with: its own, or
    /// 128 + N when signal N killed it. The child dies with this process (see
    /// [`crate::sys::run_child`]), so killing the session's PID ends it, as with `exec`.
    pub fn run(&self) -> Result<u8> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let status = crate::sys::signals::run_child(&mut command)
            .with_context(|| format!("cannot run {}", self.program.display()))?;
        Ok(crate::exit::of_command(status))
    }
}

/// The command as one shell line that runs it: `VAR=value program args...`.
impl fmt::Display for Invocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", ui::quote(OsStr::new(v))))
            .collect();
        if !self.namespaces.is_empty() {
            words.push("nsenter".into());
            for (name, path) in &self.namespaces {
                words.push(ui::quote(OsStr::new(&format!(
                    "--{name}={}",
                    path.display()
                ))));
            }
            words.push("--".into());
        }
        words.push(ui::quote(self.program.as_os_str()));
        words.extend(self.args.iter().map(|a| ui::quote(a)));
        write!(f, "{}", words.join(" "))
    }
}

/// Where systemd-nspawn looks when the tree is entered without a command: bash, else sh.
pub fn login_shells() -> [&'static Path; 2] {
    [Path::new("/bin/bash"), Path::new("/bin/sh")]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{self, Settings};

    /// The plan of a copy toolbox (the tree is the toolbox directory) with `pairs` set.
    fn plan(payload: Payload, pairs: &[(&str, &str)]) -> Plan {
        let mut all = vec![("TOOLBOX_STORAGE", "copy")];
        all.extend_from_slice(pairs);
        Plan::resolve(&Settings::from_environment(&all), "core", payload).unwrap()
    }

    fn nspawn(version: u32) -> Nspawn {
        Nspawn {
            program: PathBuf::from("/usr/bin/systemd-nspawn"),
            version,
        }
    }

    #[test]
    fn the_version_is_cached_by_binary_identity() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let fake = bin.join("systemd-nspawn");
        fs::write(&fake, "#!/bin/sh\necho 'systemd 239 (239)'\n").unwrap();
        fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let env = Env::from_pairs([("PATH", bin.to_str().unwrap())]);
        let cache = dir.path().join(".nspawn-version");

        assert_eq!(Nspawn::find(&env, &cache, false).unwrap().version, 239);
        assert!(!cache.exists(), "written although told not to");
        assert_eq!(Nspawn::find(&env, &cache, true).unwrap().version, 239);
        assert!(fs::read_to_string(&cache).unwrap().ends_with(" 239\n"));
        // The cached answer is used without running the binary...
        let text = fs::read_to_string(&cache)
            .unwrap()
            .replace(" 239\n", " 240\n");
        fs::write(&cache, text).unwrap();
        assert_eq!(Nspawn::find(&env, &cache, true).unwrap().version, 240);
        // ...until the binary changes.
        fs::write(&fake, "#!/bin/sh\necho 'systemd 252 (252.39-1)'\n").unwrap();
        assert_eq!(Nspawn::find(&env, &cache, true).unwrap().version, 252);
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT"),
            Some(252)
        );
        assert_eq!(parse_version("systemd 219\n"), Some(219));
        assert_eq!(parse_version("something else"), None);
        assert_eq!(parse_version(""), None);
    }

    fn launch(systemd_booted: bool, terminal: bool) -> Launch {
        Launch {
            systemd_booted,
            terminal,
            session: 77,
            marker: PathBuf::from("/var/lib/toolbox/.toolboxenv"),
            host_exec: Some(PathBuf::from("/usr/bin/toolbox")),
            proxies: vec![("https_proxy".into(), "http://proxy:3128".into())],
            tracing: Vec::new(),
            target: Vec::new(),
            namespaces: Vec::new(),
            placement: Placement::default(),
        }
    }

    #[test]
    fn modern_systemd_on_a_systemd_host() {
        let command = Payload::Command(vec!["strace".into(), "-p".into(), "1".into()]);
        let inv = invocation(
            &plan(command, &[]),
            &nspawn(252),
            &launch(true, true),
            false,
        );
        assert_eq!(
            inv.to_string(),
            "SYSTEMD_NSPAWN_SHARE_SYSTEM=1 SYSTEMD_NSPAWN_LOCK=0 /usr/bin/systemd-nspawn --quiet \
             --directory=/var/lib/toolbox/core-fedora-latest --capability=all \
             --link-journal=no --console=autopipe --machine=core-fedora-latest-77 \
             --bind-ro=/var/lib/toolbox/.toolboxenv:/run/.toolboxenv \
             --bind-ro=/usr/bin/toolbox:/usr/local/bin/host-exec \
             --bind-ro=/usr/bin/toolbox:/run/toolbox-session \
             --bind=/:/media/root --bind=/usr:/media/root/usr --bind=/run:/media/root/run \
             --setenv=TOOLBOX_NAME=core-fedora-latest --setenv=HOST=/media/root \
             --setenv=https_proxy=http://proxy:3128 --user=root \
             -- /run/toolbox-session -- strace -p 1"
        );
    }

    #[test]
    fn the_session_starts_as_root_and_becomes_the_user_itself() {
        let plan = plan(Payload::Shell, &[("TOOLBOX_USER", "core")]);
        let words: Vec<String> = invocation(&plan, &nspawn(252), &launch(true, true), false)
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(!words.iter().any(|w| w == "--user=core"), "{words:?}");
        let tail = &words[words.len() - 6..];
        assert_eq!(
            tail,
            [
                "--user=root",
                "--",
                "/run/toolbox-session",
                "--user",
                "core",
                "--"
            ]
        );
    }

    #[test]
    fn old_systemd_without_systemd_as_init() {
        let mut launch = launch(false, false);
        launch.host_exec = None;
        launch.proxies.clear();
        let inv = invocation(
            &plan(Payload::Shell, &[(config::BIND, "")]),
            &nspawn(231),
            &launch,
            false,
        );
        assert_eq!(
            inv.env,
            [("SYSTEMD_NSPAWN_LOCK".to_string(), "0".to_string())]
        );
        let args: Vec<_> = inv.args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--directory=/var/lib/toolbox/core-fedora-latest",
                "--capability=all",
                "--link-journal=no",
                "--share-system",
                "--register=no",
                "--keep-unit",
                "--machine=core-fedora-latest-77",
                "--bind-ro=/var/lib/toolbox/.toolboxenv:/run/.toolboxenv",
                "--setenv=TOOLBOX_NAME=core-fedora-latest",
                "--user=root",
            ]
        );
    }

    #[test]
    fn extra_words_keep_the_coreos_order_and_quoting() {
        let pairs = [
            (config::FLAGS, "--system-call-filter=bpf"),
            (config::BIND, "--bind=/:/media/root '--bind=/my dir:/d'"),
            (config::ENV, "--setenv=A=1 \"--setenv=B=two words\""),
            (config::USER, "core"),
        ];
        let command = Payload::Command(vec!["sh".into(), "-c".into(), "echo 'hi'".into()]);
        let mut launch = launch(false, false);
        launch.host_exec = None;
        launch.proxies.clear();
        let inv = invocation(&plan(command, &pairs), &nspawn(252), &launch, true);
        let expected = "--machine=core-fedora-latest-77 --system-call-filter=bpf \
             --bind-ro=/var/lib/toolbox/.toolboxenv:/run/.toolboxenv --bind=/:/media/root \
             '--bind=/my dir:/d' --setenv=TOOLBOX_NAME=core-fedora-latest --setenv=HOST=/media/root \
             --setenv=A=1 '--setenv=B=two words' --user=core -- sh -c 'echo '\\''hi'\\'''";
        assert!(inv.to_string().ends_with(expected), "{inv}");
    }

    // Regression: a bind of the host's /etc/resolv.conf made systemd-nspawn copy the
    // host's file onto itself, emptying it.
    #[test]
    fn binds_over_files_nspawn_writes_turn_its_writing_off() {
        let args = |binds: &str| {
            let plan = plan(Payload::Shell, &[(config::BIND, binds)]);
            let inv = invocation(&plan, &nspawn(252), &launch(true, true), false);
            let off: Vec<String> = inv
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .filter(|a| a.ends_with("=off"))
                .collect();
            (
                off,
                check_supported(&plan, &nspawn(238), &launch(true, true)).is_ok(),
            )
        };
        assert_eq!(args("--bind=/:/media/root"), (vec![], true));
        assert_eq!(
            args("--bind-ro=/etc/resolv.conf"),
            (vec!["--resolv-conf=off".to_string()], false)
        );
        assert_eq!(
            args("--bind=/etc:/etc"),
            (
                vec![
                    "--resolv-conf=off".to_string(),
                    "--timezone=off".to_string()
                ],
                false
            )
        );
        assert_eq!(args("--tmpfs=/etc"), (vec![], true));
    }

    #[test]
    fn console_mode_by_version() {
        let console = |version, terminal| {
            let inv = invocation(
                &plan(Payload::Shell, &[]),
                &nspawn(version),
                &launch(true, terminal),
                false,
            );
            inv.args
                .iter()
                .find(|a| a.to_string_lossy().starts_with("--console="))
                .cloned()
        };
        assert_eq!(console(252, true), Some("--console=autopipe".into()));
        assert_eq!(console(245, false), Some("--console=pipe".into()));
        assert_eq!(console(245, true), None);
        assert_eq!(console(239, false), None);
    }

    #[test]
    fn quiet_only_for_commands_or_when_asked() {
        let shell = plan(Payload::Shell, &[]);
        let launch = launch(true, true);
        assert!(
            !invocation(&shell, &nspawn(252), &launch, false)
                .args
                .contains(&"--quiet".into())
        );
        assert!(
            invocation(&shell, &nspawn(252), &launch, true)
                .args
                .contains(&"--quiet".into())
        );
    }

    #[test]
    fn payload_path() {
        assert_eq!(container_path(&plan(Payload::Shell, &[])), CONTAINER_PATH);
        let p = plan(
            Payload::Shell,
            &[(config::ENV, "--setenv=PATH=/a --setenv=PATH=/opt/bin:/bin")],
        );
        assert_eq!(container_path(&p), "/opt/bin:/bin");
        // Regression: the short form was not seen, and the command was looked up in the
        // wrong directories.
        let p = plan(
            Payload::Shell,
            &[
                (config::FLAGS, "--setenv=PATH=/a"),
                (config::ENV, "-E PATH=/b"),
            ],
        );
        assert_eq!(container_path(&p), "/b");
    }
}
