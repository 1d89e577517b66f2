//! engine: the few container-engine calls toolbox makes, in terms every engine shares and
//! split by role: [`Engine`] (images and containers, what every caller needs),
//! [`Provisioning`] (a container's export and the anchor of an overlay toolbox, for
//! creating toolboxes) and [`SpcRuntime`] (the calls that run a super privileged
//! container: create from a [`ContainerSpec`], start, attach, exec, resize, signal, wait,
//! stop). [`docker`] speaks
//! the Docker Engine API (Docker, or Podman's compatible service) through bollard, the only
//! module that does; [`containerd`] speaks containerd's gRPC API (toolboxes only: no super
//! privileged container); `fake` is an engine in memory for unit tests. Which engine and
//! how to reach it ([`Access`]) is decided here too, in [`connect`]. Only creating, updating and removing an nspawn
//! toolbox talk to an engine; entering one never does.

pub mod containerd;
pub mod docker;
#[cfg(test)]
pub mod fake;

pub use containerd::Containerd;
pub use docker::Docker;

/// The engine toolbox talks to: Docker's API, which Docker (overlay2 or its containerd
/// image store) and Podman's service both serve ([`Endpoint`] tells them apart), or
/// containerd's own.
pub enum Connected {
    /// Boxed: a Docker connection carries bollard's client, many times containerd's.
    Docker(Box<Docker>),
    Containerd(Containerd),
}

/// Connects to the engine `access` chooses: the one way every caller reaches an engine.
pub async fn connect(access: &Access) -> Result<Connected> {
    let found = access
        .found()
        .map_err(|e| Failure::Unreachable.error(format!("{e:#}")))?;
    match found {
        Found::Api(endpoint) => Ok(Connected::Docker(Box::new(
            Docker::connect(access, endpoint).await?,
        ))),
        Found::Containerd => Ok(Connected::Containerd(Containerd::connect(access).await?)),
    }
}

impl Connected {
    /// Which engine this is and where, for `-v`.
    pub fn describe(&self) -> String {
        match self {
            Connected::Docker(docker) => docker.describe(),
            Connected::Containerd(containerd) => containerd.describe(),
        }
    }

    /// The engine as the super privileged container runtime needs it; containerd runs none
    /// for toolbox.
    pub fn spc_runtime(&self) -> Result<&Docker> {
        match self {
            Connected::Docker(docker) => Ok(docker),
            Connected::Containerd(_) => Err(anyhow!(
                "the spc runtime needs Docker or Podman; with containerd toolbox runs \
                 toolboxes with systemd-nspawn only (--runtime nspawn)"
            )),
        }
    }
}

/// `$engine.$call`, whichever engine is connected.
macro_rules! each {
    ($connected:expr, $engine:ident => $call:expr) => {
        match $connected {
            Connected::Docker($engine) => $call,
            Connected::Containerd($engine) => $call,
        }
    };
}

impl Engine for Connected {
    fn name(&self) -> &str {
        each!(self, e => e.name())
    }
    fn address(&self) -> &str {
        each!(self, e => e.address())
    }
    fn client(&self) -> &str {
        each!(self, e => e.client())
    }
    fn is_local(&self) -> bool {
        each!(self, e => e.is_local())
    }
    async fn image(&self, reference: &str) -> Result<Option<Image>> {
        each!(self, e => e.image(reference).await)
    }
    async fn pull(&self, image: &ImageRef, quiet: bool) -> Result<()> {
        each!(self, e => e.pull(image, quiet).await)
    }
    async fn container(&self, name: &str) -> Result<Option<ContainerInfo>> {
        each!(self, e => e.container(name).await)
    }
    async fn labelled_containers(
        &self,
        label: &str,
        value: Option<&str>,
    ) -> Result<Vec<(String, HashMap<String, String>)>> {
        each!(self, e => e.labelled_containers(label, value).await)
    }
    async fn remove_container(&self, container: &str) -> Result<()> {
        each!(self, e => e.remove_container(container).await)
    }
    async fn create_container(
        &self,
        image_id: &str,
        labels: HashMap<String, String>,
    ) -> Result<String> {
        each!(self, e => e.create_container(image_id, labels).await)
    }
    async fn path_entry(&self, container: &str, path: &str) -> Result<crate::sys::Entry> {
        each!(self, e => e.path_entry(container, path).await)
    }
    async fn pod_containers(&self, pod: &Pod) -> Result<Vec<(String, String)>> {
        each!(self, e => e.pod_containers(pod).await)
    }
}

impl Provisioning for Connected {
    async fn export(&self, container: &str, sink: &mpsc::Sender<Bytes>) -> Result<()> {
        each!(self, e => e.export(container, sink).await)
    }
    async fn create_anchor(
        &self,
        image_id: &str,
        name: &str,
        labels: HashMap<String, String>,
        idle: &Path,
    ) -> Result<String> {
        each!(self, e => e.create_anchor(image_id, name, labels, idle).await)
    }
    async fn start_anchor(&self, anchor: &str) -> Result<()> {
        each!(self, e => e.start_anchor(anchor).await)
    }
    async fn remove_anchor(&self, anchor: &str) -> Result<()> {
        each!(self, e => e.remove_anchor(anchor).await)
    }
    async fn anchor_layers(&self, anchor: &str, count: usize) -> Result<Vec<PathBuf>> {
        each!(self, e => e.anchor_layers(anchor, count).await)
    }
    async fn anchor_holds(&self, anchor: &str) -> Result<bool> {
        each!(self, e => e.anchor_holds(anchor).await)
    }
}

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::host::{CONTAINER_HOST, DOCKER_HOST, Env, XDG_RUNTIME_DIR};
use crate::model::image::{Image, ImageRef};
use crate::model::target::{self, Pod};

/// Label put on every container toolbox creates, with the toolbox's name as value.
pub const LABEL_TOOLBOX: &str = "toolbox.name";
/// Label with the ID of the toolbox process that created the container.
pub const LABEL_PID: &str = "toolbox.pid";
/// Label on the running container that pins an overlay toolbox's image, with the
/// toolbox's full path as value (names repeat across toolbox directories; paths do not).
pub const LABEL_ANCHOR: &str = "toolbox.anchor";

/// What every anchor's name starts with (`toolbox-anchor-NAME-XXXXXXXX`).
pub const ANCHOR_PREFIX: &str = "toolbox-anchor-";

/// Label on an anchor with the image name it made for itself (`localhost/toolbox-anchor:TAG`)
/// where the engine removes the containers of an image whose last name is removed by force
/// (Podman's `rmi -f`): another name makes that an untag.
pub const LABEL_PIN: &str = "toolbox.pin";
/// The repository of those names.
pub const PIN_REPOSITORY: &str = "localhost/toolbox-anchor";

/// The name toolbox answers to as a container's main process that only waits to be
/// stopped: a persistent SPC's (sessions are `exec`s beside it) and an overlay toolbox's
/// anchor's.
pub const IDLE_NAME: &str = "toolbox-idle";
/// Where toolbox's binary is bound in such a container under that name.
pub const IDLE_PATH: &str = "/usr/local/bin/toolbox-idle";

/// An image ID as `docker images` shows it: 12 hex digits, without `sha256:`.
pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// The receiver of an export went away before the stream ended.
#[derive(Debug)]
pub struct SinkClosed;

impl std::fmt::Display for SinkClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the export's receiver stopped reading")
    }
}

impl std::error::Error for SinkClosed {}

/// What every engine connection answers, whichever runtime asks: what the engine is and
/// where, its images, and containers found, created (never started), read, and removed.
/// Split by role from what only provisioning ([`Provisioning`]) or only the super
/// privileged container runtime ([`SpcRuntime`]) needs, so an engine can serve one role
/// without the other.
#[allow(async_fn_in_trait)]
pub trait Engine {
    /// What the engine is called in messages (`the Docker daemon`, `Podman`).
    fn name(&self) -> &str;
    /// Where the engine is, for messages (`unix:///var/run/docker.sock`).
    fn address(&self) -> &str;
    /// The command users run against it (`docker`, `podman`), for messages that say
    /// what to run.
    fn client(&self) -> &str;
    /// Whether the daemon runs on this host, so its storage paths are this host's.
    fn is_local(&self) -> bool;
    /// The engine's ID for an image and where its layers are, or `None` when it does not
    /// have the image.
    async fn image(&self, reference: &str) -> Result<Option<Image>>;
    /// Pulls an image, reporting progress on stderr unless `quiet`.
    async fn pull(&self, image: &ImageRef, quiet: bool) -> Result<()>;
    /// The container named or with ID `name`, if there is one.
    async fn container(&self, name: &str) -> Result<Option<ContainerInfo>>;
    /// Containers, running or not, carrying `label` with `value` (any value: `None`):
    /// their IDs and labels.
    async fn labelled_containers(
        &self,
        label: &str,
        value: Option<&str>,
    ) -> Result<Vec<(String, HashMap<String, String>)>>;
    async fn remove_container(&self, container: &str) -> Result<()>;
    /// Creates (never starts) a container of image `image_id` and returns its ID.
    async fn create_container(
        &self,
        image_id: &str,
        labels: HashMap<String, String>,
    ) -> Result<String>;
    /// What is at `path` (absolute) in the files of container `container` (created, never
    /// started), a symlink there not followed: its target as written.
    async fn path_entry(&self, container: &str, path: &str) -> Result<crate::sys::Entry>;
    /// The containers of Kubernetes pod `pod` (its sandbox left out), by the labels the
    /// kubelet's container runtime puts on them: their IDs and container names.
    async fn pod_containers(&self, pod: &Pod) -> Result<Vec<(String, String)>> {
        let found = self
            .labelled_containers(target::LABEL_POD_NAME, Some(&pod.name))
            .await?;
        Ok(pod_members(pod, found))
    }
}

/// Of containers and their labels, the containers of `pod`, not its sandbox: IDs and
/// container names.
pub fn pod_members(
    pod: &Pod,
    containers: Vec<(String, HashMap<String, String>)>,
) -> Vec<(String, String)> {
    containers
        .into_iter()
        .filter(|(_, labels)| pod.holds(labels))
        // The sandbox (the pause container) as cri-dockerd and containerd label it.
        .filter(|(_, labels)| {
            let kind = |key: &str| labels.get(key).map(String::as_str);
            kind("io.kubernetes.docker.type") != Some("podsandbox")
                && kind("io.cri-containerd.kind") != Some("sandbox")
        })
        .filter_map(|(id, mut labels)| Some((id, labels.remove(target::LABEL_POD_CONTAINER)?)))
        .collect()
}

/// What creating an nspawn toolbox needs besides: a container's files as an archive (copy
/// storage), and the anchor that keeps an overlay toolbox's layers.
#[allow(async_fn_in_trait)]
pub trait Provisioning: Engine {
    /// Streams the container's filesystem as a tar archive, chunk by chunk, into `sink`.
    /// Fails with [`SinkClosed`] when the receiving side goes away.
    async fn export(&self, container: &str, sink: &mpsc::Sender<Bytes>) -> Result<()>;
    /// Creates the anchor that pins an overlay toolbox's image, started by
    /// [`Provisioning::start_anchor`]: a container of image `image_id` whose only process
    /// is `idle` (toolbox's binary, bound read-only as [`IDLE_PATH`]) waiting to be
    /// stopped; no network, no capabilities, a read-only root, no logs, and the `always`
    /// restart policy. Running, it is what every prune spares, with its image; the daemon
    /// starts it again after its own restart. `name` is what `docker ps` shows.
    async fn create_anchor(
        &self,
        image_id: &str,
        name: &str,
        labels: HashMap<String, String>,
        idle: &Path,
    ) -> Result<String>;
    /// Removes an anchor made by [`Provisioning::create_anchor`], and the image name it
    /// made.
    async fn remove_anchor(&self, anchor: &str) -> Result<()> {
        self.remove_container(anchor).await
    }
    /// Starts the anchor [`Provisioning::create_anchor`] made. Starting a container opens
    /// files of its image (Docker reads `/etc/passwd` and `/etc/group` for its user), so
    /// an anchor whose layers toolbox reads first starts after they were checked.
    async fn start_anchor(&self, _anchor: &str) -> Result<()> {
        Ok(())
    }
    /// The directories of the layers of the image of `count` layers that the created
    /// `anchor` holds, top first, where the engine keeps them beneath containers only
    /// ([`crate::model::image::Layers::Snapshots`]: containerd's view of the image, the snapshot Docker's
    /// containerd image store prepared for the container); read before it starts.
    async fn anchor_layers(&self, _anchor: &str, _count: usize) -> Result<Vec<PathBuf>> {
        bail!("{} shows no layers of a container", self.name())
    }
    /// Whether `anchor` still holds its image: a container, while it runs.
    async fn anchor_holds(&self, anchor: &str) -> Result<bool> {
        Ok(self.container(anchor).await?.is_some_and(|a| a.running))
    }
}

/// What the super privileged container runtime needs besides: containers it runs sessions
/// in, and their processes.
#[allow(async_fn_in_trait)]
pub trait SpcRuntime: Engine {
    /// Containers carrying `label`, whatever its value: their names (without `/`).
    async fn containers_with_label(&self, label: &str) -> Result<Vec<String>>;

    /// Creates the container `spec` describes; returns its ID.
    async fn create_spc(&self, spec: &ContainerSpec) -> Result<String>;

    async fn start(&self, container: &str) -> Result<()>;

    /// Stops the container, killing it after `grace`.
    async fn stop(&self, container: &str, grace: std::time::Duration) -> Result<()>;

    /// Attaches to a created container's standard streams, before it starts.
    async fn attach(&self, container: &str) -> Result<Attached>;

    /// Waits for the container to stop; returns its main process's exit status.
    async fn wait(&self, container: &str) -> Result<i64>;

    /// Starts `session` in the running container and attaches to it; returns the exec's
    /// ID and the connection.
    async fn exec(&self, container: &str, session: &Process) -> Result<(String, Attached)>;

    async fn exec_state(&self, exec: &str) -> Result<ExecState>;

    /// Sets the size of an exec session's terminal, or of a container's when `exec` is
    /// `None`.
    async fn resize(&self, container: &str, exec: Option<&str>, size: (u16, u16)) -> Result<()>;

    /// Sends signal number `signal` to the container's main process.
    async fn kill(&self, container: &str, signal: i32) -> Result<()>;

    /// The paths changed in the container's files since it was created (added, changed or
    /// removed), with the directories above them.
    async fn changed_paths(&self, container: &str) -> Result<Vec<String>>;
}

/// Which engine toolbox talks to (`TOOLBOX_ENGINE`, `--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Docker,
    Podman,
    Containerd,
    /// `DOCKER_HOST` if set, else the Docker socket if it answers, else Podman's, else
    /// containerd's.
    Auto,
}

impl Choice {
    pub fn parse(text: &str) -> Option<Choice> {
        match text {
            "docker" => Some(Choice::Docker),
            "podman" => Some(Choice::Podman),
            "containerd" => Some(Choice::Containerd),
            "auto" => Some(Choice::Auto),
            _ => None,
        }
    }
}

/// How to reach the engine: the choice and the environment that locates it.
#[derive(Debug, Clone)]
pub struct Access {
    pub choice: Choice,
    pub env: Env,
    /// Where the engines' sockets are looked for.
    pub sockets: Sockets,
    /// How long an export or a pull may go without the engine sending anything before
    /// it is given up (`TOOLBOX_STALL_TIMEOUT`): a daemon that stops answering (stopped,
    /// a hung storage driver) must not hold a creation forever.
    pub stall: std::time::Duration,
    /// The containerd namespace images are looked up in (`TOOLBOX_CONTAINERD_NAMESPACE`);
    /// `None`: [`containerd::NAMESPACES`], in order.
    pub containerd_namespace: Option<String>,
}

/// `TOOLBOX_STALL_TIMEOUT`'s default.
pub const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The local sockets engines listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sockets {
    /// Docker's: `/var/run/docker.sock`.
    pub docker: PathBuf,
    /// Podman's, in order: the user's `$XDG_RUNTIME_DIR/podman/podman.sock`, then the
    /// system's `/run/podman/podman.sock` (where bollard and the podman client look).
    pub podman: Vec<PathBuf>,
    /// containerd's: `/run/containerd/containerd.sock`, or `TOOLBOX_CONTAINERD_ADDRESS`.
    pub containerd: PathBuf,
}

impl Sockets {
    pub fn for_host(env: &Env) -> Sockets {
        let mut podman = Vec::new();
        if let Some(runtime) = env.non_empty(XDG_RUNTIME_DIR) {
            podman.push(Path::new(runtime).join("podman/podman.sock"));
        }
        podman.push(PathBuf::from("/run/podman/podman.sock"));
        Sockets {
            docker: PathBuf::from("/var/run/docker.sock"),
            podman,
            containerd: PathBuf::from(CONTAINERD_SOCKET),
        }
    }
}

/// containerd's socket, where it listens by default.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// The engine [`Access::found`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// One serving Docker's API: Docker's daemon or Podman's service.
    Api(Endpoint),
    /// containerd, at [`Sockets::containerd`].
    Containerd,
}

/// Refuses, as root, an engine on the Unix socket `path` served by another user: its
/// images and containers are that user's to change (a rootless Podman, or one found
/// through a user's `XDG_RUNTIME_DIR` kept in root's environment by `su`), and a root
/// toolbox would run their programs as root.
pub fn check_server(name: &str, path: &Path) -> Result<()> {
    if !crate::sys::is_root() {
        return Ok(());
    }
    // A socket nothing serves is reported when the engine is reached.
    match crate::sys::socket_server(path) {
        Ok((uid, _)) if uid != 0 => Err(anyhow!(
            "refusing {name} at `{}`: it is served by user ID {uid}, and a root toolbox \
             runs only images of an engine root runs (use root's engine, or run toolbox \
             as that user)",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// An engine's address (as `DOCKER_HOST` writes it) and which engine it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: String,
    pub podman: bool,
}

impl Endpoint {
    /// What the engine is called in messages.
    pub fn name(&self) -> &'static str {
        match self.podman {
            true => "Podman",
            false => "the Docker daemon",
        }
    }

    /// The engine's own command-line client, for what a message asks the user to run.
    pub fn client(&self) -> &'static str {
        match self.podman {
            true => "podman",
            false => "docker",
        }
    }

    /// [`check_server`] for an engine on a Unix socket.
    pub fn check_server(&self) -> Result<()> {
        match self.address.strip_prefix("unix://") {
            Some(path) => check_server(self.name(), Path::new(path)),
            None => Ok(()),
        }
    }

    /// Whether the engine sees the mounts this process makes: it serves a local socket
    /// from this mount namespace. Not when toolbox runs in a mount namespace of its own (a
    /// container, a sandboxed service), nor for a remote engine.
    pub fn shares_mounts(&self, proc_root: &Path) -> bool {
        let Some(path) = self.address.strip_prefix("unix://") else {
            return false;
        };
        crate::sys::socket_server(Path::new(path))
            .and_then(|(_, pid)| crate::sys::shares_mount_namespace(proc_root, pid))
            .unwrap_or(false)
    }

    fn unix(socket: &Path, podman: bool) -> Endpoint {
        Endpoint {
            address: format!("unix://{}", socket.display()),
            podman,
        }
    }
}

/// Whether something accepts connections on the Unix socket at `path`.
fn answers(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

impl Access {
    /// Where the chosen engine is. `docker`: `DOCKER_HOST`, else Docker's socket.
    /// `podman`: `CONTAINER_HOST` (Podman's own variable), else the first Podman socket
    /// that answers, or that exists. `auto`: `DOCKER_HOST` if set, else Docker's socket if
    /// it answers, else `CONTAINER_HOST`, else a Podman socket that answers.
    pub fn endpoint(&self) -> Result<Endpoint> {
        let env = &self.env;
        let docker_host = env.non_empty(DOCKER_HOST).map(|host| Endpoint {
            address: host.to_string(),
            podman: false,
        });
        let container_host = env.non_empty(CONTAINER_HOST).map(|host| Endpoint {
            address: host.to_string(),
            podman: true,
        });
        let podman_answering = || {
            self.sockets
                .podman
                .iter()
                .find(|socket| answers(socket))
                .map(|socket| Endpoint::unix(socket, true))
        };
        let tried = || {
            let mut sockets = vec![self.sockets.docker.display().to_string()];
            sockets.extend(self.sockets.podman.iter().map(|s| s.display().to_string()));
            sockets.push(self.sockets.containerd.display().to_string());
            sockets.join(", ")
        };
        match self.choice {
            Choice::Containerd => Err(anyhow!(
                "containerd serves no Docker API (TOOLBOX_ENGINE=containerd)"
            )),
            Choice::Docker => {
                Ok(docker_host.unwrap_or_else(|| Endpoint::unix(&self.sockets.docker, false)))
            }
            Choice::Podman => container_host
                .or_else(podman_answering)
                .or_else(|| {
                    let socket = self.sockets.podman.iter().find(|s| s.exists())?;
                    Some(Endpoint::unix(socket, true))
                })
                .ok_or_else(|| {
                    anyhow!(
                        "no Podman socket at {}; start one (`systemctl start podman.socket`, or `podman system service --time=0`) or set CONTAINER_HOST",
                        self.sockets
                            .podman
                            .iter()
                            .map(|s| s.display().to_string())
                            .collect::<Vec<_>>()
                            .join(" or ")
                    )
                }),
            Choice::Auto => docker_host
                .or_else(|| {
                    answers(&self.sockets.docker)
                        .then(|| Endpoint::unix(&self.sockets.docker, false))
                })
                .or(container_host)
                .or_else(podman_answering)
                .ok_or_else(|| {
                    anyhow!(
                        "no container engine answers (tried {}); start dockerd, Podman's service or containerd, or set DOCKER_HOST",
                        tried()
                    )
                }),
        }
    }

    /// The engine the choice names: [`Access::endpoint`]'s, or containerd for
    /// `containerd`, and for `auto` when no engine serving Docker's API answers and
    /// containerd's socket does (a Kubernetes node, Flatcar without Docker).
    pub fn found(&self) -> Result<Found> {
        match self.choice {
            Choice::Containerd => Ok(Found::Containerd),
            Choice::Auto => match self.endpoint() {
                Ok(endpoint) => Ok(Found::Api(endpoint)),
                Err(_) if answers(&self.sockets.containerd) => Ok(Found::Containerd),
                Err(e) => Err(e),
            },
            Choice::Docker | Choice::Podman => self.endpoint().map(Found::Api),
        }
    }
}

/// The single-threaded async runtime the engine calls run on.
pub fn async_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A container as the SPC runtime needs to know it.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    /// Its name, without Docker's leading `/`.
    pub name: String,
    pub running: bool,
    /// Its main process's host PID; 0 when it is not running.
    pub pid: u32,
    /// Its root filesystem on the host while it runs (the storage driver's merged
    /// directory), when the engine says.
    pub root: Option<String>,
    /// Its volumes and binds: host source, destination inside, writable.
    pub mounts: Vec<(String, String, bool)>,
    /// The ID of the image it was created from.
    pub image_id: String,
    pub created: String,
    pub labels: HashMap<String, String>,
    /// Its exec sessions, running or finished (the engine forgets finished ones later).
    pub exec_ids: Vec<String>,
}

/// What a command running in a container writes, stream by stream.
#[derive(Debug)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// Why an engine could not start the command of a container or of an exec, as its
/// runtime (runc, crun) said; in an nspawn toolbox the same command exits 127 or 126.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandFailure {
    /// No such command: not in `$PATH`, or no such file.
    NotFound,
    /// There but not executable, and why (`permission denied`, `is a directory`,
    /// `exec format error`).
    NotExecutable(String),
}

/// The error of an engine that could not start a command (see [`CommandFailure`]),
/// with the engine's own message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandFailed {
    pub failure: CommandFailure,
    pub message: String,
}

impl std::fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CommandFailed {}

/// What kind of failure an engine call met, where a caller acts on the kind; the message
/// of [`Failed`] says the rest. Each engine sorts its own answers into these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The image or container is not there, or no longer.
    NotFound,
    /// The object's state forbids it now: a name in use, a removal already under way.
    Conflict,
    /// The engine sent nothing for the stall timeout (`TOOLBOX_STALL_TIMEOUT`), or did
    /// not answer within the time a command gives it.
    Stalled,
    /// No engine answers where it was looked for.
    Unreachable,
}

/// An engine's error of a kind a caller may act on (see [`Failure`]), with the message
/// that says it all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub failure: Failure,
    pub message: String,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failed {}

impl Failure {
    /// The error of this kind that `message` says.
    pub fn error(self, message: impl Into<String>) -> anyhow::Error {
        Failed {
            failure: self,
            message: message.into(),
        }
        .into()
    }
}

/// The kind of `error`, when an engine said what kind it is, anywhere in its chain.
pub fn failure_of(error: &anyhow::Error) -> Option<Failure> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<Failed>())
        .map(|failed| failed.failure)
}

/// A connection to a running command: its output and its standard input. Shutting the
/// input down ends the command's standard input.
pub struct Attached {
    pub output: std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Output>> + Send>>,
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

/// An exec session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecState {
    pub running: bool,
    pub exit_code: Option<i64>,
    /// Its process, in the engine host's PID namespace.
    pub pid: Option<i32>,
}

/// A process to run in a container: its command, terminal, user and environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Process {
    pub command: Vec<String>,
    /// A pseudo-terminal, when toolbox's stdin and stdout are terminals.
    pub tty: bool,
    /// `UID:GID` or a name; `None` for the image's default user.
    pub user: Option<String>,
    /// `NAME=VALUE`.
    pub env: Vec<String>,
}

/// A container to create, in the terms every engine's API shares (Docker's and Podman's
/// compatible one): the super privileged container runtime says what it wants in these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// `None`: the engine names it.
    pub name: Option<String>,
    /// The image as configured, for messages.
    pub image: String,
    /// The image's ID, which the container is made from.
    pub image_id: String,
    /// Every capability, device and path, as `--privileged` gives.
    pub privileged: bool,
    /// Namespace modes (`host`, `container:ID`, ...).
    pub network: String,
    pub pid: String,
    pub ipc: String,
    pub uts: String,
    /// `SOURCE:DESTINATION[:OPTIONS]`.
    pub binds: Vec<String>,
    pub cap_add: Vec<String>,
    pub security_opt: Vec<String>,
    /// No masked or read-only paths under /proc and /sys (`systempaths=unconfined`).
    pub unmask_system_paths: bool,
    pub device_cgroup_rules: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub workdir: Option<String>,
    /// The locked-memory limit in bytes, -1 for none; `None` leaves the engine's.
    pub memlock: Option<i64>,
    /// The main process.
    pub main: Process,
    /// Its standard streams are attached before it starts (a throwaway's session).
    pub attached: bool,
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    /// Sockets in a scratch directory: Docker's, the user's Podman, the system's Podman
    /// and containerd's.
    fn sockets(dir: &Path) -> Sockets {
        Sockets {
            docker: dir.join("docker.sock"),
            podman: vec![dir.join("user-podman.sock"), dir.join("podman.sock")],
            containerd: dir.join("containerd.sock"),
        }
    }

    fn access(choice: Choice, env: &[(&str, &str)], dir: &Path) -> Access {
        Access {
            choice,
            env: Env::from_pairs(env.iter().copied()),
            sockets: sockets(dir),
            stall: STALL_TIMEOUT,
            containerd_namespace: None,
        }
    }

    fn endpoint(choice: Choice, env: &[(&str, &str)], dir: &Path) -> Result<Endpoint> {
        access(choice, env, dir).endpoint()
    }

    #[test]
    fn containerd_is_chosen_by_name_or_when_it_alone_answers() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let found = |choice, env: &[(&str, &str)]| access(choice, env, dir).found();
        // Named, it is chosen whether it answers or not (connecting says why not).
        assert_eq!(found(Choice::Containerd, &[]).unwrap(), Found::Containerd);
        let err = found(Choice::Auto, &[]).unwrap_err().to_string();
        assert!(err.contains("containerd.sock"), "{err}");
        let _containerd = UnixListener::bind(dir.join("containerd.sock")).unwrap();
        assert_eq!(found(Choice::Auto, &[]).unwrap(), Found::Containerd);
        // Docker and Podman come first, whether they answer or are named.
        let docker_host = [("DOCKER_HOST", "tcp://10.0.0.1:2375")];
        assert!(matches!(
            found(Choice::Auto, &docker_host),
            Ok(Found::Api(_))
        ));
        let _podman = UnixListener::bind(dir.join("podman.sock")).unwrap();
        assert_eq!(
            found(Choice::Auto, &[]).unwrap(),
            Found::Api(unix(dir, "podman.sock", true))
        );
        let err = endpoint(Choice::Containerd, &[], dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no Docker API"), "{err}");
    }

    fn unix(dir: &Path, name: &str, podman: bool) -> Endpoint {
        Endpoint::unix(&dir.join(name), podman)
    }

    #[test]
    fn engines_are_found_as_each_choice_says() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let docker_host = [("DOCKER_HOST", "tcp://10.0.0.1:2375")];
        let tcp = Endpoint {
            address: "tcp://10.0.0.1:2375".into(),
            podman: false,
        };

        // Nothing listens anywhere.
        assert_eq!(
            endpoint(Choice::Docker, &[], dir).unwrap(),
            unix(dir, "docker.sock", false)
        );
        assert_eq!(endpoint(Choice::Docker, &docker_host, dir).unwrap(), tcp);
        let err = endpoint(Choice::Podman, &[], dir).unwrap_err().to_string();
        assert!(err.starts_with("no Podman socket at "), "{err}");
        let err = endpoint(Choice::Auto, &[], dir).unwrap_err().to_string();
        assert!(
            err.starts_with("no container engine answers (tried "),
            "{err}"
        );
        assert_eq!(endpoint(Choice::Auto, &docker_host, dir).unwrap(), tcp);

        // Only the system's Podman socket answers; Docker's is stale (a stopped daemon).
        drop(UnixListener::bind(dir.join("docker.sock")).unwrap());
        let _podman = UnixListener::bind(dir.join("podman.sock")).unwrap();
        let podman = unix(dir, "podman.sock", true);
        assert_eq!(endpoint(Choice::Auto, &[], dir).unwrap(), podman);
        assert_eq!(endpoint(Choice::Podman, &[], dir).unwrap(), podman);
        assert_eq!(
            endpoint(Choice::Docker, &[], dir).unwrap(),
            unix(dir, "docker.sock", false)
        );
        let container_host = [("CONTAINER_HOST", "unix:///elsewhere/podman.sock")];
        let elsewhere = Endpoint {
            address: "unix:///elsewhere/podman.sock".into(),
            podman: true,
        };
        assert_eq!(
            endpoint(Choice::Podman, &container_host, dir).unwrap(),
            elsewhere
        );
        assert_eq!(
            endpoint(Choice::Auto, &container_host, dir).unwrap(),
            elsewhere
        );

        // The user's Podman socket comes first; a live Docker socket wins in auto.
        let _user = UnixListener::bind(dir.join("user-podman.sock")).unwrap();
        assert_eq!(
            endpoint(Choice::Podman, &[], dir).unwrap(),
            unix(dir, "user-podman.sock", true)
        );
        std::fs::remove_file(dir.join("docker.sock")).unwrap();
        let _docker = UnixListener::bind(dir.join("docker.sock")).unwrap();
        assert_eq!(
            endpoint(Choice::Auto, &container_host, dir).unwrap(),
            unix(dir, "docker.sock", false)
        );
    }

    #[test]
    fn podman_sockets_follow_the_runtime_directory() {
        let env = Env::from_pairs([("XDG_RUNTIME_DIR", "/run/user/1000")]);
        assert_eq!(
            Sockets::for_host(&env).podman,
            [
                PathBuf::from("/run/user/1000/podman/podman.sock"),
                PathBuf::from("/run/podman/podman.sock")
            ]
        );
        assert_eq!(
            Sockets::for_host(&Env::default()).podman,
            [PathBuf::from("/run/podman/podman.sock")]
        );
    }
}
