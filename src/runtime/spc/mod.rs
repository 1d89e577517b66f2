//! spc: the super privileged container runtime (`TOOLBOX_RUNTIME=spc`). Instead of
//! unpacking the image and entering it with systemd-nspawn, toolbox runs a container of
//! the image through the engine's API with the isolation dropped: privileged, the host's
//! network, PID, IPC and UTS namespaces, the host's `/` at `/host`, `/dev` and `/run`
//! bound in (as `atomic run --spc` did). It shows up in `docker ps` like any container.
//!
//! This module decides what to run, as data: the container and the session
//! ([`Spc`]), printable as the `docker` commands that would do the same (`--dry-run`), and
//! an image's `RUN` label applied to it. [`session`] runs it. Nothing here talks to an
//! engine or touches the host.

pub mod manage;
pub mod mounts;
pub mod session;

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Result, bail};

use crate::engine::{ContainerSpec, Process};
use crate::host::kernel::Kernel;
use crate::host::ui;
use crate::host::{Env, HOST_ROOT};
use crate::model::config::{self, Settings};
use crate::model::plan::{Payload, Plan};
use crate::model::target::{Namespace, Target};
use crate::model::tracing;

/// Label on every SPC toolbox creates: its runtime.
pub const LABEL_RUNTIME: &str = "toolbox.runtime";
/// Label on a persistent SPC, with the toolbox's name as value.
pub const LABEL_SPC: &str = "toolbox.spc";
/// Label with the image reference the SPC was created for.
pub const LABEL_IMAGE: &str = "toolbox.image";
/// Label with the toolbox directory a persistent SPC belongs to (its lock is there; `list`
/// and `rm` in that directory cover it).
pub const LABEL_DIRECTORY: &str = "toolbox.directory";
/// Label on an SPC created with its image's `RUN` label applied, with the label as value.
pub const LABEL_RUN_LABEL: &str = "toolbox.run-label";
pub use crate::engine::{IDLE_NAME, IDLE_PATH};

/// The highest capability number every Docker and Podman version knows by name
/// (`CAP_AUDIT_READ`, Linux 3.16). Docker 20.10 refuses `CAP_PERFMON` and later names.
const LAST_NAMED_CAPABILITY: u32 = 37;

/// Capability names by number, as `--cap-add` takes them.
const CAPABILITIES: [&str; LAST_NAMED_CAPABILITY as usize + 1] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
];

/// How the container gets its privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Privilege {
    /// `--privileged`.
    Full,
    /// Where toolbox itself runs without some capabilities (inside another container,
    /// or a sandbox that drops some), `--privileged` fails ("unable to apply caps") because
    /// it asks for every capability. The same container is then made from its parts: these
    /// capabilities (the ones toolbox has), no seccomp, AppArmor or SELinux confinement,
    /// `/proc` unmasked, every device allowed. `/sys` stays read-only.
    Bounded { capabilities: Vec<&'static str> },
}

impl Privilege {
    /// The privilege for a process whose capability bounding set is `bounding` on a
    /// kernel whose last capability is `last_capability`.
    pub fn for_bounding_set(bounding: u64, last_capability: u32) -> Privilege {
        let all = match last_capability {
            63.. => u64::MAX,
            n => (1u64 << (n + 1)) - 1,
        };
        if bounding & all == all {
            return Privilege::Full;
        }
        let capabilities = CAPABILITIES
            .iter()
            .enumerate()
            .filter(|(bit, _)| bounding & (1 << bit) != 0)
            .map(|(_, name)| *name)
            .collect();
        Privilege::Bounded { capabilities }
    }
}

/// The container an SPC session runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// `None` for a throwaway container (`--rm`): the engine names it.
    pub name: Option<String>,
    /// The image reference as configured.
    pub image: String,
    pub privilege: Privilege,
    /// Namespace modes: `host` unless a `RUN` label says otherwise.
    pub network: String,
    pub pid: String,
    pub ipc: String,
    pub uts: String,
    /// `SOURCE:DESTINATION[:OPTIONS]`, as `docker run -v` takes them.
    pub binds: Vec<String>,
    /// Binds for tracing, likewise: left out, saying so, when the image would have the
    /// engine make them on the host (see [`mounts`]).
    pub tracing_binds: Vec<String>,
    /// `NAME=VALUE`.
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Added by a `RUN` label.
    pub cap_add: Vec<String>,
    pub security_opt: Vec<String>,
    pub workdir: Option<String>,
    /// The locked-memory limit in bytes, -1 for none; `None` leaves the engine's.
    pub memlock: Option<i64>,
    /// The main process: toolbox idling for a persistent SPC, the user's command for a
    /// throwaway one.
    pub command: Vec<String>,
}

/// What an SPC launch does: make sure the container runs, then run the session in it: as
/// an `exec` into a persistent SPC (one with a name), as the main process of a throwaway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spc {
    pub container: Container,
    pub session: Process,
    /// The image's `RUN` label, if the image was inspected and has one.
    pub run_label: Option<String>,
}

/// What [`Spc::resolve`] needs beyond the settings and the plan.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub env: &'a Env,
    /// The host's `/etc/passwd`, to run as `TOOLBOX_USER` by number.
    pub passwd: &'a str,
    /// toolbox's own binary, bound in as `toolbox-idle` and `host-exec`.
    pub exe: &'a str,
    pub privilege: Privilege,
    pub tty: bool,
    /// `--rm`: a throwaway container.
    pub throwaway: bool,
    /// The image's `RUN` label, when it was read.
    pub run_label: Option<String>,
    /// `--use-run-label`: apply it.
    pub use_run_label: bool,
    /// The running kernel, when sessions may trace it (`TOOLBOX_TRACING`).
    pub kernel: Option<&'a Kernel>,
    /// The container the session debugs (`--target`): it runs in a throwaway container
    /// that joins the target's network namespace, the one thing fixed at creation.
    pub target: Option<&'a Target>,
    /// Where the target's files are staged for the session (see `runtime::target`);
    /// `None` when the engine cannot see a stage (it runs in another mount namespace).
    pub target_stage: Option<&'a std::path::Path>,
}

/// The command a session runs when none is given: a login shell, bash if there is one.
fn login_shell() -> Vec<String> {
    [
        "/bin/sh",
        "-c",
        "[ -x /bin/bash ] && exec /bin/bash -l; exec /bin/sh -l",
    ]
    .map(String::from)
    .to_vec()
}

impl Spc {
    pub fn resolve(settings: &Settings, plan: &Plan, mut inputs: Inputs) -> Result<Spc> {
        let binds = binds(settings)?;
        inputs.throwaway |= inputs.target.is_some();
        let image = plan.image.reference();
        let mut env = Vec::new();
        // `HOST` says where the host's `/` is, as `atomic run` set it.
        if let Some(root) = binds
            .iter()
            .find_map(|b| b.strip_prefix("/:")?.split(':').next())
        {
            env.push(format!("{HOST_ROOT}={root}"));
        }
        env.push(format!("IMAGE={image}"));
        env.push(format!("NAME={}", plan.name));
        env.push("container=docker".to_string());
        for name in crate::host::PROXY_VARIABLES {
            if let Some(value) = inputs.env.get(name) {
                env.push(format!("{name}={value}"));
            }
        }
        let mut labels = BTreeMap::from([
            (LABEL_RUNTIME.to_string(), "spc".to_string()),
            (LABEL_IMAGE.to_string(), image.clone()),
        ]);
        if !inputs.throwaway {
            labels.insert(LABEL_SPC.to_string(), plan.name.clone());
            labels.insert(
                LABEL_DIRECTORY.to_string(),
                plan.directory.display().to_string(),
            );
        }
        let mut container = Container {
            name: (!inputs.throwaway).then(|| plan.name.clone()),
            image,
            privilege: inputs.privilege,
            network: "host".into(),
            pid: "host".into(),
            ipc: "host".into(),
            uts: "host".into(),
            binds,
            tracing_binds: Vec::new(),
            env,
            labels,
            cap_add: Vec::new(),
            security_opt: Vec::new(),
            workdir: None,
            memlock: None,
            command: Vec::new(),
        };
        // Tracing the host: the same filesystems and kernel directories as an nspawn
        // session; the system calls need no more than the privilege (no seccomp filter).
        if let Some(kernel) = inputs.kernel {
            container.tracing_binds = tracing::spc_binds(kernel);
            container.memlock = tracing::spc_memlock(kernel);
        }
        if let Some(target) = inputs.target {
            join_target(&mut container, target, inputs.target_stage)?;
        }
        container.binds.push(format!(
            "{}:{}:ro",
            inputs.exe,
            crate::runtime::host_exec::PATH_IN_TOOLBOX
        ));
        let mut label_command = None;
        if inputs.use_run_label {
            let Some(label) = &inputs.run_label else {
                bail!(
                    "image {} has no RUN label (--use-run-label)",
                    container.image
                );
            };
            label_command = apply_run_label(&mut container, label, &plan.name, inputs.env)?;
            container
                .labels
                .insert(LABEL_RUN_LABEL.to_string(), label.clone());
        }
        let command = match &plan.payload {
            Payload::Command(words) => words
                .iter()
                .map(|w| w.to_string_lossy().into_owned())
                .collect(),
            Payload::Shell => label_command.unwrap_or_else(login_shell),
        };
        let mut session_env = Vec::new();
        if inputs.tty {
            let term = inputs.env.get("TERM").unwrap_or("xterm");
            session_env.push(format!("TERM={term}"));
        }
        let session = Process {
            command,
            tty: inputs.tty,
            user: user_of(&plan.user, inputs.passwd),
            env: session_env,
        };
        if inputs.throwaway {
            container.command = session.command.clone();
        } else {
            container
                .binds
                .push(format!("{}:{IDLE_PATH}:ro", inputs.exe));
            container.command = vec![IDLE_PATH.to_string()];
        }
        Ok(Spc {
            container,
            session,
            run_label: inputs.run_label,
        })
    }
}

/// Puts `container` in the target's namespaces and shows it the target's files. The
/// engine joins another container's network and IPC namespaces only; its PID namespace
/// stays the host's.
fn join_target(
    container: &mut Container,
    target: &Target,
    staged: Option<&std::path::Path>,
) -> Result<()> {
    let given = &target.request.given;
    let Some(id) = &target.container else {
        bail!(
            "--target {given}: the spc runtime joins containers only; debug a process with \
             the nspawn runtime"
        );
    };
    for namespace in &target.request.namespaces {
        match namespace {
            Namespace::Net => container.network = format!("container:{id}"),
            Namespace::Ipc => container.ipc = format!("container:{id}"),
            Namespace::Uts => bail!(
                "--target-ns uts: the engine cannot share a container's UTS namespace; \
                 use the nspawn runtime"
            ),
        }
    }
    container.binds.extend(target.spc_binds(staged));
    container
        .env
        .extend(target.environment().map(|(k, v)| format!("{k}={v}")));
    Ok(())
}

/// `TOOLBOX_SPC_BINDS`, each checked to be `SOURCE:DESTINATION[:OPTIONS]` with absolute
/// paths.
fn binds(settings: &Settings) -> Result<Vec<String>> {
    let binds = settings.words(config::SPC_BINDS)?;
    for bind in &binds {
        let mut parts = bind.split(':');
        let source = parts.next().unwrap_or_default();
        let destination = parts.next().unwrap_or_default();
        if !source.starts_with('/') || !destination.starts_with('/') || parts.count() > 1 {
            bail!(
                "{}: {}: `{bind}` is not SOURCE:DESTINATION[:OPTIONS] with absolute paths",
                settings.setting(config::SPC_BINDS).origin,
                config::SPC_BINDS
            );
        }
    }
    Ok(binds)
}

/// `TOOLBOX_USER` for the engine: root is the image's default; a host user is run by
/// number (the image need not know the name); any other name is left to the image.
fn user_of(user: &str, passwd: &str) -> Option<String> {
    if user == "root" {
        return None;
    }
    let by_number = crate::host::passwd_line(passwd, user).and_then(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        Some(format!("{}:{}", fields.get(2)?, fields.get(3)?))
    });
    Some(by_number.unwrap_or_else(|| user.to_string()))
}

/// Applies an image's `RUN` label (`docker run OPTIONS IMAGE [COMMAND...]`, as `atomic
/// run` honoured it, with `IMAGE` and `NAME` substituted) to `container`; returns the
/// label's command, if it has one. toolbox keeps deciding the container's name, its
/// lifetime and its terminal, so `--name`, `--rm`, `-d`, `-i` and `-t` are accepted and
/// ignored; an option toolbox cannot honour is refused.
pub fn apply_run_label(
    container: &mut Container,
    label: &str,
    name: &str,
    env: &Env,
) -> Result<Option<Vec<String>>> {
    let refuse =
        |message: String| anyhow::anyhow!("image {}: RUN label: {message}", container.image);
    let words = config::shell::split_words(label).map_err(refuse)?;
    let image = container.image.clone();
    let substitute = |word: &str| {
        let mut word = word.to_string();
        for (variable, value) in [("IMAGE", image.as_str()), ("NAME", name)] {
            for form in [format!("${{{variable}}}"), format!("${variable}")] {
                word = word.replace(&form, value);
            }
            if word == variable {
                word = value.to_string();
            }
        }
        word
    };
    let mut words = words.iter().map(|w| substitute(w)).peekable();
    // The engine's command, if written: `docker run`, `podman run`, `/usr/bin/docker run`.
    if words.peek().is_some_and(|w| !w.starts_with('-')) {
        words.next();
        if words.peek().map(String::as_str) == Some("run") {
            words.next();
        }
    }
    while let Some(word) = words.next() {
        if !word.starts_with('-') {
            // The image: what follows is the command.
            let command: Vec<String> = words.collect();
            return Ok((!command.is_empty()).then_some(command));
        }
        let (option, inline) = match word.split_once('=') {
            Some((option, value)) if option.starts_with("--") => {
                (option.to_string(), Some(value.to_string()))
            }
            _ => (word.clone(), None),
        };
        let takes_value = matches!(
            option.as_str(),
            "--name"
                | "--net"
                | "--network"
                | "--pid"
                | "--ipc"
                | "--uts"
                | "-v"
                | "--volume"
                | "-e"
                | "--env"
                | "--cap-add"
                | "--security-opt"
                | "-l"
                | "--label"
                | "-w"
                | "--workdir"
        );
        let value = match (takes_value, inline) {
            (true, Some(value)) => value,
            (true, None) => words
                .next()
                .ok_or_else(|| refuse(format!("`{option}` needs a value")))?,
            (false, Some(_)) if option == "--privileged" => String::new(),
            (false, Some(_)) => return Err(refuse(format!("`{word}` is not supported"))),
            (false, None) => String::new(),
        };
        match option.as_str() {
            "--privileged" | "-t" | "-i" | "-it" | "-ti" | "--tty" | "--interactive" | "--rm"
            | "-d" | "--detach" | "--name" => {}
            "--net" | "--network" => container.network = value,
            "--pid" => container.pid = value,
            "--ipc" => container.ipc = value,
            "--uts" => container.uts = value,
            "-v" | "--volume" => container.binds.push(value),
            "-e" | "--env" => match value.split_once('=') {
                Some((variable, _)) => {
                    container
                        .env
                        .retain(|e| e.split('=').next() != Some(variable));
                    container.env.push(value);
                }
                // `-e NAME` passes toolbox's own value, as docker does; the ones toolbox
                // sets itself are already there.
                None => {
                    let set = container
                        .env
                        .iter()
                        .any(|e| e.split('=').next() == Some(&value));
                    if let (false, Some(current)) = (set, env.get(&value)) {
                        container.env.push(format!("{value}={current}"));
                    }
                }
            },
            "--cap-add" => container.cap_add.push(value),
            "--security-opt" => container.security_opt.push(value),
            "-l" | "--label" => {
                let (key, label_value) = value.split_once('=').unwrap_or((&value, ""));
                if !key.starts_with("toolbox.") {
                    container
                        .labels
                        .insert(key.to_string(), label_value.to_string());
                }
            }
            "-w" | "--workdir" => container.workdir = Some(value),
            _ => return Err(refuse(format!("`{option}` is not supported"))),
        }
    }
    bail!(refuse("no image named after the options".to_string()))
}

impl Container {
    /// Every bind, `SOURCE:DESTINATION[:OPTIONS]`.
    pub fn all_binds(&self) -> impl Iterator<Item = &String> {
        self.binds.iter().chain(&self.tracing_binds)
    }

    /// The options `docker run` takes for this container; a throwaway's with its
    /// `session`'s.
    fn run_options(&self, session: &Process) -> Vec<String> {
        let mut words = Vec::new();
        match &self.name {
            Some(name) => words.extend(["--detach".to_string(), format!("--name={name}")]),
            None => {
                words.push("--rm".to_string());
                words.extend(session.options());
            }
        }
        match &self.privilege {
            Privilege::Full => words.push("--privileged".into()),
            Privilege::Bounded { capabilities } => {
                words.extend(capabilities.iter().map(|c| format!("--cap-add={c}")));
                words.extend(
                    BOUNDED_SECURITY
                        .iter()
                        .map(|o| format!("--security-opt={o}")),
                );
                words.push(format!("--device-cgroup-rule={ALL_DEVICES}"));
            }
        }
        words.extend(self.cap_add.iter().map(|c| format!("--cap-add={c}")));
        words.extend(
            self.security_opt
                .iter()
                .map(|o| format!("--security-opt={o}")),
        );
        for (option, mode) in [
            ("--network", &self.network),
            ("--pid", &self.pid),
            ("--ipc", &self.ipc),
            ("--uts", &self.uts),
        ] {
            words.push(format!("{option}={mode}"));
        }
        words.extend(self.all_binds().map(|b| format!("--volume={b}")));
        words.extend(self.env.iter().map(|e| format!("--env={e}")));
        words.extend(self.labels.iter().map(|(k, v)| format!("--label={k}={v}")));
        if let Some(workdir) = &self.workdir {
            words.push(format!("--workdir={workdir}"));
        }
        if let Some(limit) = self.memlock {
            words.push(format!("--ulimit=memlock={limit}:{limit}"));
        }
        words
    }
}

impl Container {
    /// The container to ask the engine for, made from image `image_id`, with `main` as its
    /// main process's terminal, user and streams for a throwaway (else its idle command).
    /// The privilege becomes what the API takes: `--privileged`, or the capabilities this
    /// host has with confinement turned off (`systempaths=unconfined` is, in the API, empty
    /// lists of masked and read-only paths).
    pub fn spec(&self, image_id: &str, main: Option<&Process>) -> ContainerSpec {
        let mut spec = ContainerSpec {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: image_id.to_string(),
            network: self.network.clone(),
            pid: self.pid.clone(),
            ipc: self.ipc.clone(),
            uts: self.uts.clone(),
            binds: self.all_binds().cloned().collect(),
            cap_add: self.cap_add.clone(),
            security_opt: self.security_opt.clone(),
            labels: self.labels.clone(),
            workdir: self.workdir.clone(),
            memlock: self.memlock,
            main: Process {
                command: self.command.clone(),
                tty: main.is_some_and(|m| m.tty),
                user: main.and_then(|m| m.user.clone()),
                env: self
                    .env
                    .iter()
                    .chain(main.iter().flat_map(|m| m.env.iter()))
                    .cloned()
                    .collect(),
            },
            attached: main.is_some(),
            ..Default::default()
        };
        match &self.privilege {
            Privilege::Full => spec.privileged = true,
            Privilege::Bounded { capabilities } => {
                spec.cap_add
                    .extend(capabilities.iter().map(|c| c.to_string()));
                for option in BOUNDED_SECURITY {
                    if option == "systempaths=unconfined" {
                        spec.unmask_system_paths = true;
                    } else {
                        spec.security_opt.push(option.to_string());
                    }
                }
                spec.device_cgroup_rules = vec![ALL_DEVICES.to_string()];
            }
        }
        spec
    }
}

/// What [`Privilege::Bounded`] turns off, as `--security-opt` values.
pub const BOUNDED_SECURITY: [&str; 4] = [
    "seccomp=unconfined",
    "apparmor=unconfined",
    "label=disable",
    "systempaths=unconfined",
];
/// A device cgroup rule allowing every device, as `--privileged` does.
pub const ALL_DEVICES: &str = "a *:* rwm";

impl Process {
    /// The options `docker run` or `docker exec` take for this process.
    fn options(&self) -> Vec<String> {
        let mut words = vec!["--interactive".to_string()];
        if self.tty {
            words.push("--tty".to_string());
        }
        if let Some(user) = &self.user {
            words.push(format!("--user={user}"));
        }
        words.extend(self.env.iter().map(|e| format!("--env={e}")));
        words
    }
}

/// The `docker` commands that would do what toolbox does, one per line, with the `RUN`
/// label shown above them when the image has one.
impl fmt::Display for Spc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |words: Vec<String>| {
            words
                .iter()
                .map(|w| ui::quote(std::ffi::OsStr::new(w)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        if let Some(label) = &self.run_label {
            writeln!(f, "# RUN label of {}: {label}", self.container.image)?;
        }
        let container = &self.container;
        let mut run = vec!["docker".to_string(), "run".to_string()];
        run.extend(container.run_options(&self.session));
        run.push(container.image.clone());
        run.extend(container.command.iter().cloned());
        write!(f, "{}", line(run))?;
        if let Some(name) = &container.name {
            let session = &self.session;
            let mut exec = vec!["docker".to_string(), "exec".to_string()];
            exec.extend(session.options());
            exec.push(name.clone());
            exec.extend(session.command.iter().cloned());
            write!(f, "\n{}", line(exec))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::plan::Payload;

    fn spc(
        pairs: &[(&str, &str)],
        payload: Payload,
        change: impl FnOnce(&mut Inputs),
    ) -> Result<Spc> {
        let settings = Settings::from_environment(pairs);
        let plan = Plan::resolve(&settings, "core", payload).unwrap();
        let env = Env::from_pairs([("TERM", "screen"), ("https_proxy", "http://p:3128")]);
        let mut inputs = Inputs {
            env: &env,
            passwd: "core:x:1000:1001::/home/core:/bin/bash\n",
            exe: "/usr/bin/toolbox",
            privilege: Privilege::Full,
            tty: true,
            throwaway: false,
            run_label: None,
            use_run_label: false,
            kernel: None,
            target: None,
            target_stage: Some(std::path::Path::new(
                "/var/lib/toolbox/.core-fedora-latest.target-1",
            )),
        };
        change(&mut inputs);
        Spc::resolve(&settings, &plan, inputs)
    }

    fn command(words: &[&str]) -> Payload {
        Payload::Command(words.iter().map(Into::into).collect())
    }

    #[test]
    fn a_persistent_spc_idles_and_sessions_exec_into_it() {
        let spc = spc(&[], Payload::Shell, |_| {}).unwrap();
        assert_eq!(
            spc.to_string(),
            "docker run --detach --name=core-fedora-latest --privileged --network=host \
             --pid=host --ipc=host --uts=host --volume=/:/host --volume=/dev:/dev \
             --volume=/run:/run --volume=/usr/bin/toolbox:/usr/local/bin/host-exec:ro \
             --volume=/usr/bin/toolbox:/usr/local/bin/toolbox-idle:ro --env=HOST=/host \
             --env=IMAGE=fedora:latest --env=NAME=core-fedora-latest --env=container=docker \
             --env=https_proxy=http://p:3128 --label=toolbox.directory=/var/lib/toolbox \
             --label=toolbox.image=fedora:latest \
             --label=toolbox.runtime=spc --label=toolbox.spc=core-fedora-latest \
             fedora:latest /usr/local/bin/toolbox-idle\n\
             docker exec --interactive --tty --env=TERM=screen core-fedora-latest /bin/sh -c \
             '[ -x /bin/bash ] && exec /bin/bash -l; exec /bin/sh -l'"
        );
    }

    #[test]
    fn a_throwaway_spc_runs_the_command_as_its_own() {
        let spc = spc(
            &[
                ("TOOLBOX_USER", "core"),
                ("TOOLBOX_SPC_BINDS", "/:/mnt/host:ro"),
            ],
            command(&["wc", "-c"]),
            |inputs| {
                inputs.throwaway = true;
                inputs.tty = false;
            },
        )
        .unwrap();
        assert_eq!(spc.container.name, None);
        assert_eq!(spc.container.command, ["wc", "-c"]);
        assert!(!spc.container.labels.contains_key(LABEL_SPC));
        let shown = spc.to_string();
        assert!(
            shown.starts_with("docker run --rm --interactive --user=1000:1001 --privileged "),
            "{shown}"
        );
        assert!(shown.contains(" --volume=/:/mnt/host:ro "), "{shown}");
        assert!(shown.contains(" --env=HOST=/mnt/host "), "{shown}");
        assert!(!shown.contains("/dev:/dev"), "{shown}");
        assert!(shown.ends_with(" fedora:latest wc -c"), "{shown}");
    }

    #[test]
    fn binds_must_be_absolute_pairs() {
        for bad in ["/dev", "dev:/dev", "/dev:dev", "/a:/b:ro:x"] {
            let err = spc(&[("TOOLBOX_SPC_BINDS", bad)], Payload::Shell, |_| {})
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!(
                    "environment: TOOLBOX_SPC_BINDS: `{bad}` is not SOURCE:DESTINATION[:OPTIONS] with absolute paths"
                )
            );
        }
    }

    #[test]
    fn a_host_that_withholds_capabilities_gets_the_privileged_parts() {
        assert_eq!(
            Privilege::for_bounding_set(0x1ff_ffff_ffff, 40),
            Privilege::Full
        );
        assert_eq!(Privilege::for_bounding_set(u64::MAX, 40), Privilege::Full);
        // This machine: CAP_SYS_RESOURCE (24) withheld, CAP_BPF and friends unnamed.
        let bounded = Privilege::for_bounding_set(0x1ff_feff_ffff, 40);
        let Privilege::Bounded { capabilities } = &bounded else {
            panic!("{bounded:?}");
        };
        assert_eq!(capabilities.len(), 37);
        assert!(!capabilities.contains(&"SYS_RESOURCE"));
        assert!(capabilities.contains(&"SYS_ADMIN") && capabilities.contains(&"AUDIT_READ"));
        let spc = spc(&[], command(&["true"]), |inputs| inputs.privilege = bounded).unwrap();
        let shown = spc.to_string();
        assert!(!shown.contains("--privileged"), "{shown}");
        assert!(shown.contains(" --cap-add=SYS_ADMIN "), "{shown}");
        assert!(
            shown.contains(
                " --security-opt=seccomp=unconfined --security-opt=apparmor=unconfined \
                 --security-opt=label=disable --security-opt=systempaths=unconfined \
                 '--device-cgroup-rule=a *:* rwm' "
            ),
            "{shown}"
        );
    }

    #[test]
    fn the_run_label_is_shown_and_applied_only_when_asked() {
        let label = "docker run -it --rm --privileged --name ${NAME} -v /var/log:/var/log:ro \
                     -e NAME=${NAME} -e IMAGE -e LANG=C --net=none --label app=x \
                     --label toolbox.spc=other IMAGE /usr/bin/run.sh --fast";
        let shown = spc(&[], Payload::Shell, |inputs| {
            inputs.run_label = Some(label.to_string());
        })
        .unwrap();
        assert!(
            shown
                .to_string()
                .starts_with(&format!("# RUN label of fedora:latest: {label}\n")),
            "{shown}"
        );
        assert!(
            !shown
                .container
                .binds
                .iter()
                .any(|b| b.starts_with("/var/log"))
        );

        let applied = spc(&[], Payload::Shell, |inputs| {
            inputs.run_label = Some(label.to_string());
            inputs.use_run_label = true;
        })
        .unwrap();
        let container = &applied.container;
        assert!(
            container
                .binds
                .contains(&"/var/log:/var/log:ro".to_string())
        );
        assert_eq!(container.network, "none");
        assert!(container.env.contains(&"LANG=C".to_string()));
        assert_eq!(
            container
                .env
                .iter()
                .filter(|e| e.starts_with("NAME="))
                .collect::<Vec<_>>(),
            ["NAME=core-fedora-latest"]
        );
        assert_eq!(container.labels["app"], "x");
        assert_eq!(container.labels[LABEL_SPC], "core-fedora-latest");
        assert_eq!(container.name.as_deref(), Some("core-fedora-latest"));
        assert_eq!(applied.session.command, ["/usr/bin/run.sh", "--fast"]);

        // The user's command wins over the label's.
        let given = spc(&[], command(&["id"]), |inputs| {
            inputs.run_label = Some(label.to_string());
            inputs.use_run_label = true;
        })
        .unwrap();
        assert_eq!(given.session.command, ["id"]);
    }

    #[test]
    fn run_labels_toolbox_cannot_honour_are_refused() {
        let cases = [
            (
                None,
                "image fedora:latest has no RUN label (--use-run-label)",
            ),
            (
                Some("docker run --memory 1g IMAGE"),
                "image fedora:latest: RUN label: `--memory` is not supported",
            ),
            (
                Some("docker run -v"),
                "image fedora:latest: RUN label: `-v` needs a value",
            ),
            (
                Some("docker run --privileged"),
                "image fedora:latest: RUN label: no image named after the options",
            ),
            (
                Some("docker run 'IMAGE"),
                "image fedora:latest: RUN label: unterminated single quote",
            ),
        ];
        for (label, expected) in cases {
            let err = spc(&[], Payload::Shell, |inputs| {
                inputs.run_label = label.map(String::from);
                inputs.use_run_label = true;
            })
            .unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
    }
}
