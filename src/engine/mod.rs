//! engine: the few container-engine calls toolbox makes, behind the [`Engine`] trait, and
//! their Docker Engine API implementation (bollard), plus the calls that run a super
//! privileged container (`spc`): create, start, attach, exec, resize, signal, wait, stop.
//! Only creating, updating and removing an nspawn toolbox talk to an engine; entering one
//! never does. No other module uses bollard.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, ContainerSummary, ExecConfig, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, KillContainerOptions,
    ListContainersOptions, RemoveContainerOptions, ResizeContainerTTYOptions, ResizeExecOptions,
    StartContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::host::ui;
use crate::host::{CONTAINER_HOST, DOCKER_HOST, Env, XDG_RUNTIME_DIR};
use crate::model::image::{Image, ImageRef};

/// Label put on every container toolbox creates, with the toolbox's name as value.
pub const LABEL_TOOLBOX: &str = "toolbox.name";
/// Label with the ID of the toolbox process that created the container.
pub const LABEL_PID: &str = "toolbox.pid";
/// Label on the never-started container that pins an overlay toolbox's image, with the
/// toolbox's full path as value (names repeat across toolbox directories; paths do not).
pub const LABEL_ANCHOR: &str = "toolbox.anchor";

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

/// What creating a toolbox needs from a container engine.
#[allow(async_fn_in_trait)]
pub trait Engine {
    /// The engine's ID for an image and where its layers are, or `None` when it does not
    /// have the image.
    async fn image(&self, reference: &str) -> Result<Option<Image>>;
    /// Pulls an image, reporting progress on stderr unless `quiet`.
    async fn pull(&self, image: &ImageRef, quiet: bool) -> Result<()>;
    /// Creates (never starts) a container of image `image_id` and returns its ID.
    async fn create_container(
        &self,
        image_id: &str,
        labels: HashMap<String, String>,
    ) -> Result<String>;
    /// Streams the container's filesystem as a tar archive, chunk by chunk, into `sink`.
    /// Fails with [`SinkClosed`] when the receiving side goes away.
    async fn export(&self, container: &str, sink: &mpsc::Sender<Bytes>) -> Result<()>;
    async fn remove_container(&self, container: &str) -> Result<()>;
    /// Containers, running or not, carrying `label` with `value`: their IDs and labels.
    async fn labelled_containers(
        &self,
        label: &str,
        value: &str,
    ) -> Result<Vec<(String, HashMap<String, String>)>>;
    /// Whether the daemon runs on this host, so its storage paths are this host's.
    fn is_local(&self) -> bool;
}

/// Which engine toolbox talks to (`TOOLBOX_ENGINE`, `--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Docker,
    Podman,
    /// `DOCKER_HOST` if set, else the Docker socket if it answers, else Podman's.
    Auto,
}

impl Choice {
    pub fn parse(text: &str) -> Option<Choice> {
        match text {
            "docker" => Some(Choice::Docker),
            "podman" => Some(Choice::Podman),
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
}

/// The local sockets engines listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sockets {
    /// Docker's: `/var/run/docker.sock`.
    pub docker: PathBuf,
    /// Podman's, in order: the user's `$XDG_RUNTIME_DIR/podman/podman.sock`, then the
    /// system's `/run/podman/podman.sock` (where bollard and the podman client look).
    pub podman: Vec<PathBuf>,
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
        }
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
            sockets.join(", ")
        };
        match self.choice {
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
                        "no container engine answers (tried {}); start dockerd or Podman's service, or set DOCKER_HOST",
                        tried()
                    )
                }),
        }
    }
}

/// A Docker Engine API daemon (Docker, or Podman's compatible service).
pub struct Docker {
    client: bollard::Docker,
    /// Where the engine is and which it is.
    pub endpoint: Endpoint,
}

impl Docker {
    /// Connects to the engine `access` chooses and agrees on an API version: bollard 0.21
    /// otherwise assumes a newer API than Docker 20.10 (API 1.41) speaks.
    pub async fn connect(access: &Access) -> Result<Docker> {
        let endpoint = access.endpoint()?;
        let address = endpoint.address.clone();
        let unreachable = || {
            let hint = match endpoint.podman {
                true => "is its service running?",
                false => "is dockerd running?",
            };
            format!("cannot reach {} at `{address}`; {hint}", endpoint.name())
        };
        let client = bollard::Docker::connect_with_host(&address).with_context(unreachable)?;
        let client = client.negotiate_version().await.with_context(unreachable)?;
        Ok(Docker { client, endpoint })
    }

    /// Which engine this is, where, and the API version agreed on, for `-v`.
    pub fn describe(&self) -> String {
        format!(
            "{} at {} (API {})",
            self.endpoint.name(),
            self.endpoint.address,
            self.client.client_version()
        )
    }

    /// Containers, running or not, matching a `label` filter (`KEY` or `KEY=VALUE`).
    async fn containers_labelled(&self, filter: String) -> Result<Vec<ContainerSummary>> {
        let filters = HashMap::from([("label".to_string(), vec![filter])]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        self.client
            .list_containers(Some(options))
            .await
            .map_err(|e| anyhow!("cannot list containers: {}", daemon_message(&e)))
    }
}

/// The single-threaded async runtime the engine calls run on.
pub fn async_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn is_not_found(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The daemon's own message, without bollard's wrapping.
fn daemon_message(error: &BollardError) -> String {
    match error {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        BollardError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

impl Engine for Docker {
    async fn image(&self, reference: &str) -> Result<Option<Image>> {
        match self.client.inspect_image(reference).await {
            Ok(image) => {
                let run_label = image.config.and_then(|config| config.labels?.remove("RUN"));
                let driver = image.graph_driver.unwrap_or_default();
                let mut layers = Vec::new();
                // overlay2 reports the top layer as `UpperDir` and the ones below it,
                // top first, as `LowerDir` (absent for a one-layer image).
                if driver.name == "overlay2" {
                    let data = driver.data;
                    let upper = data.get("UpperDir").into_iter();
                    let lower = data.get("LowerDir").into_iter().flat_map(|l| l.split(':'));
                    layers = upper
                        .map(String::as_str)
                        .chain(lower)
                        .filter(|dir| !dir.is_empty())
                        .map(PathBuf::from)
                        .collect();
                }
                Ok(Some(Image {
                    id: image.id.unwrap_or_default(),
                    driver: (!driver.name.is_empty()).then_some(driver.name),
                    layers,
                    run_label,
                }))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(anyhow!(
                "cannot inspect image `{reference}`: {}",
                daemon_message(&e)
            )),
        }
    }

    async fn pull(&self, image: &ImageRef, quiet: bool) -> Result<()> {
        let reference = image.reference();
        let options = CreateImageOptions {
            from_image: Some(image.repository.clone()),
            tag: Some(image.tag.clone()),
            ..Default::default()
        };
        let mut progress = ui::PullProgress::new(ui::Progress::new(quiet));
        let mut stream = self.client.create_image(Some(options), None, None);
        // A failed pull arrives either as an HTTP error before the stream starts or as
        // an error message inside the stream; both end up here.
        let pulled = async {
            while let Some(item) = stream.next().await {
                let info = item.map_err(|e| {
                    anyhow!("cannot pull image `{reference}`: {}", daemon_message(&e))
                })?;
                if let Some(detail) = info.error_detail {
                    let message = detail.message.unwrap_or_else(|| "unknown error".into());
                    bail!("cannot pull image `{reference}`: {message}");
                }
                let (current, total) = info
                    .progress_detail
                    .map_or((None, None), |d| (d.current, d.total));
                progress.update(info.id.as_deref(), info.status.as_deref(), current, total);
            }
            Ok(())
        }
        .await;
        progress.finish();
        pulled
    }

    async fn create_container(
        &self,
        image_id: &str,
        labels: HashMap<String, String>,
    ) -> Result<String> {
        let body = ContainerCreateBody {
            image: Some(image_id.to_string()),
            // Never started; an imported image has no command of its own and the API wants one.
            cmd: Some(vec!["/bin/true".to_string()]),
            labels: Some(labels),
            ..Default::default()
        };
        let created = self
            .client
            .create_container(None::<CreateContainerOptions>, body)
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot create a container of image {}: {}",
                    short_id(image_id),
                    daemon_message(&e)
                )
            })?;
        Ok(created.id)
    }

    async fn export(&self, container: &str, sink: &mpsc::Sender<Bytes>) -> Result<()> {
        let mut stream = self.client.export_container(container);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                anyhow!(
                    "the export stopped (is the Docker daemon still running?): {}",
                    daemon_message(&e)
                )
            })?;
            sink.send(chunk).await.map_err(|_| SinkClosed)?;
        }
        Ok(())
    }

    async fn labelled_containers(
        &self,
        label: &str,
        value: &str,
    ) -> Result<Vec<(String, HashMap<String, String>)>> {
        let containers = self.containers_labelled(format!("{label}={value}")).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
            .collect())
    }

    fn is_local(&self) -> bool {
        let address = &self.endpoint.address;
        address.starts_with("unix://") || address.starts_with('/')
    }

    async fn remove_container(&self, container: &str) -> Result<()> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.client.remove_container(container, Some(options)).await {
            Err(e) if !is_not_found(&e) => Err(anyhow!(
                "cannot remove container `{container}`: {}",
                daemon_message(&e)
            )),
            _ => Ok(()),
        }
    }
}

/// A container as the SPC runtime needs to know it.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub running: bool,
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

fn attached(
    output: impl futures_util::Stream<Item = Result<LogOutput, BollardError>> + Send + 'static,
    input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
) -> Attached {
    let output = output.filter_map(|item| async move {
        match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                Some(Ok(Output::Stdout(message)))
            }
            Ok(LogOutput::StdErr { message }) => Some(Ok(Output::Stderr(message))),
            Ok(LogOutput::StdIn { .. }) => None,
            Err(e) => Some(Err(anyhow!(
                "the connection to the container broke: {}",
                daemon_message(&e)
            ))),
        }
    });
    Attached {
        output: Box::pin(output),
        input,
    }
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
    /// The main process.
    pub main: Process,
    /// Its standard streams are attached before it starts (a throwaway's session).
    pub attached: bool,
}

/// The super privileged container runtime's calls (see `runtime::spc`).
impl Docker {
    /// The container named or with ID `name`, if there is one.
    pub async fn container(&self, name: &str) -> Result<Option<ContainerInfo>> {
        let inspected = match self.client.inspect_container(name, None).await {
            Ok(inspected) => inspected,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => bail!("cannot inspect container `{name}`: {}", daemon_message(&e)),
        };
        Ok(Some(ContainerInfo {
            id: inspected.id.unwrap_or_default(),
            running: inspected.state.and_then(|s| s.running).unwrap_or(false),
            image_id: inspected.image.unwrap_or_default(),
            created: inspected.created.unwrap_or_default(),
            labels: inspected.config.and_then(|c| c.labels).unwrap_or_default(),
            exec_ids: inspected.exec_ids.unwrap_or_default(),
        }))
    }

    /// Containers carrying `label`, whatever its value: their names (without `/`).
    pub async fn containers_with_label(&self, label: &str) -> Result<Vec<String>> {
        let containers = self.containers_labelled(label.to_string()).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| c.names?.first()?.strip_prefix('/').map(String::from))
            .collect())
    }

    /// Creates the container `spec` describes; returns its ID.
    pub async fn create_spc(&self, spec: &ContainerSpec) -> Result<String> {
        let mut host = HostConfig {
            privileged: spec.privileged.then_some(true),
            network_mode: Some(spec.network.clone()),
            pid_mode: Some(spec.pid.clone()),
            ipc_mode: Some(spec.ipc.clone()),
            uts_mode: Some(spec.uts.clone()),
            binds: Some(spec.binds.clone()),
            cap_add: Some(spec.cap_add.clone()),
            security_opt: Some(spec.security_opt.clone()),
            ..Default::default()
        };
        if spec.unmask_system_paths {
            host.masked_paths = Some(Vec::new());
            host.readonly_paths = Some(Vec::new());
        }
        if !spec.device_cgroup_rules.is_empty() {
            host.device_cgroup_rules = Some(spec.device_cgroup_rules.clone());
        }
        let main = &spec.main;
        let attached = spec.attached;
        let body = ContainerCreateBody {
            image: Some(spec.image_id.clone()),
            cmd: Some(main.command.clone()),
            env: Some(main.env.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            user: main.user.clone(),
            working_dir: spec.workdir.clone(),
            tty: Some(main.tty),
            open_stdin: Some(attached),
            stdin_once: Some(attached),
            attach_stdin: Some(attached),
            attach_stdout: Some(attached),
            attach_stderr: Some(attached),
            host_config: Some(host),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: spec.name.clone(),
            ..Default::default()
        };
        let what = match &spec.name {
            Some(name) => format!("container `{name}`"),
            None => "a container".to_string(),
        };
        let created = self
            .client
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot create {what} of image {}: {}",
                    spec.image,
                    daemon_message(&e)
                )
            })?;
        Ok(created.id)
    }

    pub async fn start(&self, container: &str) -> Result<()> {
        self.client
            .start_container(container, None::<StartContainerOptions>)
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot start container `{container}`: {}",
                    daemon_message(&e)
                )
            })
    }

    /// Stops the container, killing it after `grace`.
    pub async fn stop(&self, container: &str, grace: std::time::Duration) -> Result<()> {
        let options = StopContainerOptions {
            t: Some(grace.as_secs() as i32),
            ..Default::default()
        };
        match self.client.stop_container(container, Some(options)).await {
            Err(e) if !is_not_found(&e) => bail!(
                "cannot stop container `{container}`: {}",
                daemon_message(&e)
            ),
            _ => Ok(()),
        }
    }

    /// Attaches to a created container's standard streams, before it starts.
    pub async fn attach(&self, container: &str) -> Result<Attached> {
        let options = AttachContainerOptions {
            stream: true,
            stdin: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let attach = self
            .client
            .attach_container(container, Some(options))
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot attach to container `{container}`: {}",
                    daemon_message(&e)
                )
            })?;
        Ok(attached(attach.output, attach.input))
    }

    /// Waits for the container to stop; returns its main process's exit status.
    pub async fn wait(&self, container: &str) -> Result<i64> {
        let mut waited = self
            .client
            .wait_container(container, None::<WaitContainerOptions>);
        match waited.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports a non-zero status as an error.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => bail!(
                "cannot wait for container `{container}`: {}",
                daemon_message(&e)
            ),
            None => bail!("cannot wait for container `{container}`: no answer"),
        }
    }

    /// Starts `session` in the running container and attaches to it; returns the exec's
    /// ID and the connection.
    pub async fn exec(&self, container: &str, session: &Process) -> Result<(String, Attached)> {
        let config = ExecConfig {
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(session.tty),
            env: Some(session.env.clone()),
            cmd: Some(session.command.clone()),
            user: session.user.clone(),
            ..Default::default()
        };
        let failed = |e: BollardError| {
            anyhow!(
                "cannot run a session in container `{container}`: {}",
                daemon_message(&e)
            )
        };
        let exec = self
            .client
            .create_exec(container, config)
            .await
            .map_err(failed)?;
        let options = StartExecOptions {
            tty: session.tty,
            ..Default::default()
        };
        match self
            .client
            .start_exec(&exec.id, Some(options))
            .await
            .map_err(failed)?
        {
            StartExecResults::Attached { output, input } => Ok((exec.id, attached(output, input))),
            StartExecResults::Detached => {
                bail!("the engine started the session in `{container}` detached")
            }
        }
    }

    pub async fn exec_state(&self, exec: &str) -> Result<ExecState> {
        let inspected = self.client.inspect_exec(exec).await.map_err(|e| {
            anyhow!(
                "cannot inspect exec session {}: {}",
                short_id(exec),
                daemon_message(&e)
            )
        })?;
        Ok(ExecState {
            running: inspected.running.unwrap_or(false),
            exit_code: inspected.exit_code,
            pid: inspected
                .pid
                .and_then(|pid| i32::try_from(pid).ok())
                .filter(|pid| *pid > 0),
        })
    }

    /// Sets the size of an exec session's terminal, or of a container's when `exec` is
    /// `None`.
    pub async fn resize(
        &self,
        container: &str,
        exec: Option<&str>,
        (w, h): (u16, u16),
    ) -> Result<()> {
        let (w, h) = (i32::from(w), i32::from(h));
        let resized = match exec {
            Some(exec) => {
                self.client
                    .resize_exec(exec, ResizeExecOptions { w, h })
                    .await
            }
            None => {
                self.client
                    .resize_container_tty(container, ResizeContainerTTYOptions { w, h })
                    .await
            }
        };
        resized.map_err(|e| {
            anyhow!(
                "cannot resize the terminal in `{container}`: {}",
                daemon_message(&e)
            )
        })
    }

    /// Sends signal number `signal` to the container's main process.
    pub async fn kill(&self, container: &str, signal: i32) -> Result<()> {
        let options = KillContainerOptions {
            signal: signal.to_string(),
        };
        self.client
            .kill_container(container, Some(options))
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot signal container `{container}`: {}",
                    daemon_message(&e)
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    /// Sockets in a scratch directory: Docker's, the user's Podman and the system's Podman.
    fn sockets(dir: &Path) -> Sockets {
        Sockets {
            docker: dir.join("docker.sock"),
            podman: vec![dir.join("user-podman.sock"), dir.join("podman.sock")],
        }
    }

    fn endpoint(choice: Choice, env: &[(&str, &str)], dir: &Path) -> Result<Endpoint> {
        Access {
            choice,
            env: Env::from_pairs(env.iter().copied()),
            sockets: sockets(dir),
        }
        .endpoint()
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
