//! engine::docker: the [`Engine`] of a Docker Engine API daemon, Docker's own or Podman's
//! compatible service, through bollard. Every bollard type stays in this file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ChangeType, ContainerCreateBody, ContainerSummary, DriverData, ExecConfig, FilesystemChange,
    HostConfig, HostConfigLogConfig, ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
    SystemInfo,
};
use bollard::query_parameters::{
    AttachContainerOptions, ContainerArchiveInfoOptions, CreateContainerOptions,
    CreateImageOptions, DownloadFromContainerOptions, KillContainerOptions, ListContainersOptions,
    RemoveContainerOptions, RemoveImageOptions, ResizeContainerTTYOptions, ResizeExecOptions,
    StartContainerOptions, StopContainerOptions, TagImageOptions, WaitContainerOptions,
};
use bollard::{API_DEFAULT_VERSION, ClientVersion};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::engine::{
    ANCHOR_PREFIX, Access, Attached, CommandFailed, CommandFailure, ContainerInfo, ContainerSpec,
    Endpoint, Engine, ExecState, Failure, IDLE_PATH, LABEL_PIN, Output, PIN_REPOSITORY, Process,
    Provisioning, SinkClosed, SpcRuntime, short_id,
};
use crate::host::ui;
use crate::model::image::{Image, ImageRef, Layers};
use crate::sys::{Entry, Kind};

/// A Docker Engine API daemon (Docker, or Podman's compatible service).
pub struct Docker {
    client: bollard::Docker,
    /// Where the engine is and which it is.
    pub endpoint: Endpoint,
    /// How long an export or a pull may wait for the next bytes (see [`Access::stall`]).
    stall: std::time::Duration,
    /// What [`Docker::info`] got.
    info: tokio::sync::OnceCell<Option<SystemInfo>>,
}

impl Docker {
    /// `docker info`, asked once per connection (`None` when the engine did not answer
    /// within the stall timeout).
    async fn info(&self) -> Option<&SystemInfo> {
        self.info
            .get_or_init(|| async {
                tokio::time::timeout(self.stall, self.client.info())
                    .await
                    .ok()?
                    .ok()
            })
            .await
            .as_ref()
    }

    /// The snapshotter of Docker's containerd image store, when the daemon uses it (see
    /// [`store_driver`]): API 1.52 and later leave `GraphDriver` out of inspects there.
    async fn snapshotter(&self) -> Option<DriverData> {
        store_driver(self.info().await?)
    }

    /// Where the running container `id` has its root filesystem on this host: the
    /// `MergedDir` overlay2 and Podman's overlay report; with Docker's containerd image
    /// store (a snapshotter's name and no data), the directory the daemon mounts it on,
    /// `DockerRootDir/rootfs/SNAPSHOTTER/ID`, when it is a mount there.
    async fn container_root(&self, id: &str, driver: Option<DriverData>) -> Option<String> {
        let DriverData { name, data } = driver?;
        if let Some(merged) = data.get("MergedDir") {
            return Some(merged.clone());
        }
        let snapshotter = !self.endpoint.podman && data.is_empty() && !name.is_empty();
        if !snapshotter || id.is_empty() || id.contains('/') || name.contains('/') {
            return None;
        }
        let root = Path::new(self.info().await?.docker_root_dir.as_deref()?)
            .join("rootfs")
            .join(name)
            .join(id);
        is_mount_point(&root).then(|| root.display().to_string())
    }

    /// The next item of `stream`, or an error when the engine sends nothing for the stall
    /// timeout while `doing` it.
    async fn next_or_stall<S: futures_util::Stream + Unpin>(
        &self,
        stream: &mut S,
        doing: &str,
    ) -> Result<Option<S::Item>> {
        tokio::time::timeout(self.stall, stream.next())
            .await
            .map_err(|_| self.stalled(doing))
    }

    /// Creates the container `body` describes, `what` of image `image_id`; returns its ID.
    async fn create(
        &self,
        body: ContainerCreateBody,
        name: Option<&str>,
        what: &str,
        image_id: &str,
    ) -> Result<String> {
        let options = CreateContainerOptions {
            name: name.map(String::from),
            ..Default::default()
        };
        let created = self
            .client
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                failed(
                    format!("cannot create {what} of image {}", short_id(image_id)),
                    &e,
                )
            })?;
        Ok(created.id)
    }

    /// Gives image `image_id` the name `localhost/toolbox-anchor:REST` for the anchor
    /// `toolbox-anchor-REST`, and returns it.
    async fn pin(&self, image_id: &str, anchor: &str) -> Result<String> {
        let tag = pin_tag(anchor);
        let options = TagImageOptions {
            repo: Some(PIN_REPOSITORY.to_string()),
            tag: Some(tag.clone()),
        };
        self.client
            .tag_image(image_id, Some(options))
            .await
            .map_err(|e| {
                failed(
                    format!(
                        "cannot name image {} {PIN_REPOSITORY}:{tag} for its anchor",
                        short_id(image_id)
                    ),
                    &e,
                )
            })?;
        Ok(format!("{PIN_REPOSITORY}:{tag}"))
    }

    /// Removes the name [`Docker::pin`] gave; the image goes with it when that was its
    /// last name and nothing uses it. Housekeeping: a failure leaves only a name.
    async fn unpin(&self, pin: Option<&str>) {
        let Some(pin) = pin else {
            return;
        };
        let options = RemoveImageOptions {
            noprune: true,
            ..Default::default()
        };
        let _ = self.client.remove_image(pin, Some(options), None).await;
    }

    fn stalled(&self, doing: &str) -> anyhow::Error {
        Failure::Stalled.error(format!(
            "{} at {} sent nothing for {} s while {doing}; stopped waiting \
                 (TOOLBOX_STALL_TIMEOUT sets how long)",
            self.endpoint.name(),
            self.endpoint.address,
            self.stall.as_secs()
        ))
    }

    /// Connects to the engine at `endpoint`, found by [`Access::found`], and agrees on an
    /// API version: bollard 0.21 otherwise assumes a newer API than Docker 20.10 (API
    /// 1.41) speaks. On a Unix socket
    /// the version is the one its `/_ping` names; elsewhere, or when it names none,
    /// bollard asks `/version`.
    pub async fn connect(access: &Access, endpoint: Endpoint) -> Result<Docker> {
        endpoint.check_server()?;
        let address = endpoint.address.clone();
        let cannot_reach = || {
            let hint = match endpoint.podman {
                true => "is its service running?",
                false => "is dockerd running?",
            };
            format!("cannot reach {} at `{address}`; {hint}", endpoint.name())
        };
        let pinged = match address.strip_prefix("unix://") {
            Some(path) => tokio::time::timeout(access.stall, pinged(Path::new(path)))
                .await
                .ok()
                .flatten(),
            None => None,
        };
        let unreachable = |e: BollardError| {
            Failure::Unreachable.error(format!("{}: {:#}", cannot_reach(), anyhow::Error::from(e)))
        };
        let client = match pinged {
            Some(Ping { version, .. }) => {
                bollard::Docker::connect_with_unix(&address, 120, &version).map_err(unreachable)?
            }
            None => bollard::Docker::connect_with_host(&address)
                .map_err(unreachable)?
                .negotiate_version()
                .await
                .map_err(unreachable)?,
        };
        let endpoint = Endpoint {
            podman: endpoint.podman || pinged.is_some_and(|ping| ping.podman),
            ..endpoint
        };
        Ok(Docker {
            client,
            endpoint,
            stall: access.stall,
            info: tokio::sync::OnceCell::new(),
        })
    }

    /// What is at `path` in `container` (not started), read from its root filesystem as
    /// Podman's own API mounts it: Podman's archive API follows symlinks (`/bin` of a `bin
    /// -> usr/bin` is the directory, and a link out of the image, `lib -> /sys/fs/bpf`, is
    /// "not found"), where the engine will make a mount point through them. Only where the
    /// service shares this host's mounts: elsewhere the image cannot be checked, and the
    /// container is not made.
    async fn podman_path_entry(&self, container: &str, path: &str) -> Result<Entry> {
        let cannot = |why: String| {
            anyhow!(
                "cannot look at {path} in container {} of {}: {why}",
                short_id(container),
                self.endpoint.name()
            )
        };
        let socket = match self.endpoint.address.strip_prefix("unix://") {
            Some(socket) if self.endpoint.shares_mounts(Path::new("/proc")) => socket,
            _ => {
                return Err(cannot(format!(
                    "its service at {} does not share this host's mounts, and its archive \
                     API follows an image's links",
                    self.endpoint.address
                )));
            }
        };
        let request = format!(
            "POST /v4.0.0/libpod/containers/{container}/mount HTTP/1.0\r\nHost: podman\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let answer = tokio::time::timeout(self.stall, raw_request(Path::new(socket), &request))
            .await
            .map_err(|_| cannot("the service sent nothing".to_string()))?
            .map_err(|e| cannot(e.to_string()))?;
        let root = mounted_root(&answer).ok_or_else(|| {
            cannot(format!(
                "its mount answered {}",
                String::from_utf8_lossy(&answer)
                    .lines()
                    .next()
                    .unwrap_or("nothing")
            ))
        })?;
        let read = || -> std::io::Result<Entry> {
            let root = crate::sys::open_dir(&root)?;
            crate::sys::entry_beneath(&root, path)
        };
        read().map_err(|e| cannot(e.to_string()))
    }

    /// The target of the symlink at `path` in `container`, as written: the API's own
    /// `linkTarget` is resolved in the container alone, without the mounts that will be
    /// there, so the link is read from the archive of that one path.
    async fn link_target(&self, container: &str, path: &str) -> Result<Entry> {
        /// An archive of one symlink is a few blocks.
        const MAX_ARCHIVE: usize = 1 << 20;
        let options = DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let mut stream = self
            .client
            .download_from_container(container, Some(options));
        let mut archive = Vec::new();
        while let Some(chunk) = self.next_or_stall(&mut stream, "reading a link").await? {
            let chunk = chunk.map_err(|e| failed(format!("cannot read {path}"), &e))?;
            archive.extend_from_slice(&chunk);
            if archive.len() > MAX_ARCHIVE {
                bail!("cannot read the link {path}: the engine sent more than a link");
            }
        }
        let mut archive = tar::Archive::new(archive.as_slice());
        let target = archive
            .entries()
            .ok()
            .and_then(|mut entries| entries.next()?.ok())
            .and_then(|entry| Some(entry.link_name().ok()??.to_string_lossy().into_owned()))
            .ok_or_else(|| anyhow!("cannot read the link {path} from the engine's archive"))?;
        Ok(Entry::Link(target))
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
            .map_err(|e| failed("cannot list containers".to_string(), &e))
    }
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

fn is_removal_in_progress(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError { status_code: 409, message }
            if message.contains("already in progress")
    )
}

/// The error of a call that failed (`what`, said first), with the daemon's message, of
/// its kind where the HTTP status tells it (see [`Failure`]).
fn failed(what: String, error: &BollardError) -> anyhow::Error {
    let message = format!("{what}: {}", daemon_message(error));
    let failure = match error {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => Failure::NotFound,
        BollardError::DockerResponseServerError {
            status_code: 409, ..
        } => Failure::Conflict,
        _ => return anyhow!(message),
    };
    failure.error(message)
}

/// A call that starts a command failed: [`CommandFailed`] when the runtime's words say
/// why, else as [`failed`] has it.
fn start_failed(what: String, error: &BollardError) -> anyhow::Error {
    let message = daemon_message(error);
    match command_failure(&message) {
        Some(_) => start_error(what, message),
        None => failed(what, error),
    }
}

/// The daemon's own message, without bollard's wrapping.
fn daemon_message(error: &BollardError) -> String {
    let message = match error {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        BollardError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    };
    ui::escaped(&message)
}

/// What the OCI runtime said of a command it could not start, in the engine's `message`:
/// runc's words (Docker's, and Podman's with runc): `exec: "CMD": executable file not
/// found in $PATH`, `stat CMD: no such file or directory`, `permission denied`; and
/// Podman's own categories for crun's (`OCI runtime attempted to invoke a command that
/// was not found`, `OCI permission denied`).
fn command_failure(message: &str) -> Option<CommandFailure> {
    if message.contains("OCI runtime attempted to invoke a command that was not found") {
        return Some(CommandFailure::NotFound);
    }
    if message.contains("OCI permission denied") {
        let reason = match message.contains("is a directory") {
            true => "is a directory",
            false => "permission denied",
        };
        return Some(CommandFailure::NotExecutable(reason.to_string()));
    }
    let (_, reason) = message.split_once("unable to start container process: exec: ")?;
    if reason.contains("executable file not found") || reason.contains("no such file or directory")
    {
        return Some(CommandFailure::NotFound);
    }
    ["permission denied", "is a directory", "exec format error"]
        .into_iter()
        .find(|known| reason.contains(known))
        .map(|reason| CommandFailure::NotExecutable(reason.to_string()))
}

/// The error of a call that starts a command (`what` failed): [`CommandFailed`] when
/// the runtime could not start it, else the engine's message.
fn start_error(what: String, message: String) -> anyhow::Error {
    let message = format!("{what}: {message}");
    match command_failure(&message) {
        Some(failure) => CommandFailed { failure, message }.into(),
        None => anyhow!(message),
    }
}

/// Where the containerd of the dockerd whose command line is `args` serves, as dockerd
/// chooses it: the socket `--containerd` (or `containerd` in its configuration file,
/// `config`) names; else the system's containerd, when it runs; else the one dockerd starts
/// beneath its `--exec-root`. For `docker info` before API 1.46, which does not say.
fn containerd_sockets(args: &[String], config: Option<&serde_json::Value>) -> Vec<PathBuf> {
    let setting = |key: &str| {
        flag(args, &format!("--{key}")).or_else(|| config?.get(key)?.as_str().map(String::from))
    };
    if let Some(socket) = setting("containerd").filter(|s| !s.is_empty()) {
        return vec![PathBuf::from(socket.trim_start_matches("unix://"))];
    }
    let exec_root = setting("exec-root").unwrap_or_else(|| "/var/run/docker".to_string());
    vec![
        PathBuf::from("/run/containerd/containerd.sock"),
        Path::new(&exec_root).join("containerd/containerd.sock"),
    ]
}

/// The image's layers among `lowers`, the lower directories (top first) of the snapshot
/// Docker's containerd image store prepared for a container, for an image of `count`
/// layers: all but the top one, the layer Docker adds for each container (`/.dockerenv`,
/// and the files it mounts over: `/etc/hosts`, `/etc/resolv.conf`...). More than `count`
/// remain for an image the classic builder made, whose chain keeps the layers it added
/// for each step's container.
fn image_layers(mut lowers: Vec<PathBuf>, count: usize) -> Result<Vec<PathBuf>> {
    let init = lowers
        .first()
        .is_some_and(|top| top.join(".dockerenv").is_file());
    if !init {
        bail!("the anchor's snapshot has no layer of Docker's own (`/.dockerenv`) on top");
    }
    lowers.remove(0);
    if lowers.len() < count.max(1) {
        bail!(
            "the anchor's snapshot stacks {} layers under its own where the image has {count}",
            lowers.len()
        );
    }
    Ok(lowers)
}

/// The value of the option `name` (`--name=VALUE` or `--name VALUE`) in `args`.
fn flag(args: &[String], name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    args.iter()
        .enumerate()
        .find_map(|(i, arg)| match arg.strip_prefix(&prefix) {
            Some(value) => Some(value.to_string()),
            None if arg == name => args.get(i + 1).cloned(),
            None => None,
        })
}

/// The command line of the process serving the Unix socket `address` names, and the
/// configuration file it reads (`--config-file`, else `/etc/docker/daemon.json`), if it
/// can be read. (A socket systemd made and passed, `-H fd://`, shows systemd's: the
/// defaults apply then.)
fn daemon_command_line(address: &str) -> (Vec<String>, Option<serde_json::Value>) {
    let Some(path) = address.strip_prefix("unix://") else {
        return (Vec::new(), None);
    };
    let Ok((_, pid)) = crate::sys::socket_server(Path::new(path)) else {
        return (Vec::new(), None);
    };
    let args: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    let file = flag(&args, "--config-file").unwrap_or_else(|| "/etc/docker/daemon.json".into());
    let config = std::fs::read(file)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    (args, config)
}

/// How Docker's answer to an exec whose command could not start begins, sent as the
/// exec's first output.
const EXEC_FAILED: &str = "OCI runtime exec failed";

/// What the `/_ping` of the engine serving the Unix socket `path` says.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ping {
    /// The API version it speaks, from the `Api-Version` header Docker and Podman both
    /// send: Podman answers `/version`, what bollard's negotiation asks, only once it has
    /// asked its OCI runtime and conmon for theirs (0.6 s and more).
    version: ClientVersion,
    /// Podman's service, whatever its address was named by (`DOCKER_HOST` often names
    /// Podman's socket): it sends `Libpod-Api-Version` too.
    podman: bool,
}

/// The [`Ping`] of the engine serving the Unix socket `path`; `None` when it does not
/// say its API version. Async, so that a caller's deadline (entering waits 300 ms) ends
/// it on a hung engine.
async fn pinged(path: &Path) -> Option<Ping> {
    let answer = raw_request(path, "GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .await
        .ok()?;
    ping(&answer)
}

/// Sends `request` (HTTP/1.0: the engine closes the connection after its answer) to the
/// engine serving the Unix socket `path`; its whole answer, up to 64 KiB.
async fn raw_request(path: &Path, request: &str) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(path).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut answer).await?;
    Ok(answer)
}

/// The directory of libpod's answer to a container's mount, on success: plain text
/// (Podman 5), or a JSON string.
fn mounted_root(answer: &[u8]) -> Option<PathBuf> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if head.split(' ').nth(1) != Some("200") {
        return None;
    }
    let body = body.trim();
    let root = serde_json::from_str::<String>(body).unwrap_or_else(|_| body.to_string());
    Path::new(&root).is_absolute().then(|| PathBuf::from(root))
}

/// The [`Ping`] of an HTTP answer, if it is a success naming its API version (capped at
/// the newest bollard speaks).
fn ping(answer: &[u8]) -> Option<Ping> {
    let text = String::from_utf8_lossy(answer);
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?;
    if status.split(' ').nth(1) != Some("200") {
        return None;
    }
    let headers: Vec<(&str, &str)> = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim(), value.trim()))
        })
        .collect();
    let header = |wanted: &str| {
        headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|&(_, value)| value)
    };
    let podman = header("libpod-api-version").is_some();
    let value = header("api-version")?;
    let (major, minor) = value.split_once('.')?;
    let named = ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    };
    let newest = *API_DEFAULT_VERSION;
    let key = |v: &ClientVersion| (v.major_version, v.minor_version);
    let version = match key(&named) > key(&newest) {
        true => newest,
        false => named,
    };
    Some(Ping { version, podman })
}

/// The tag of the image name pinning the image of anchor `anchor`: what follows
/// [`ANCHOR_PREFIX`], its last 128 characters (a tag's most).
fn pin_tag(anchor: &str) -> String {
    let rest = anchor.strip_prefix(ANCHOR_PREFIX).unwrap_or(anchor);
    let start = rest.len().saturating_sub(128);
    rest[start..].trim_start_matches(['.', '-']).to_string()
}

/// Where engine `name` (Podman's service when `podman`) keeps the `count` layers of an
/// image, from the `GraphDriver` of its inspect.
fn layers(name: &str, podman: bool, driver: Option<DriverData>, count: usize) -> Layers {
    let DriverData { name: driver, data } = driver.unwrap_or_default();
    // Docker's overlay2 and Podman's overlay (containers/storage) both report the top
    // layer's directory as `UpperDir` and those below it, top first, as `LowerDir`
    // (absent for a one-layer image).
    let stacked = match driver.as_str() {
        "overlay2" => !podman,
        "overlay" => podman,
        _ => false,
    };
    if stacked {
        let upper = data.get("UpperDir").into_iter();
        let lower = data.get("LowerDir").into_iter().flat_map(|l| l.split(':'));
        return Layers::Directories(
            upper
                .map(String::as_str)
                .chain(lower)
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from)
                .collect(),
        );
    }
    // What Docker's containerd image store reports with containerd's default
    // snapshotter, and no layer directories, in an inspect.
    if driver == "overlayfs" && !podman && data.is_empty() && count > 0 {
        return Layers::Snapshots(count);
    }
    Layers::Unavailable(match driver.as_str() {
        "" => format!("{name} does not say where the image's layers are"),
        "overlayfs" if !podman => format!(
            "{name} keeps images in containerd's image store and reports none of the \
             image's layers"
        ),
        _ => format!(
            "{name} stores images with `{driver}`; toolbox mounts the layers of Docker's \
             overlay2 and Podman's overlay only"
        ),
    })
}

/// The snapshotter of Docker's containerd image store, from `docker info` (`Driver`,
/// with `driver-type` `io.containerd.snapshotter.v1` in its `DriverStatus`), as the
/// `GraphDriver` an inspect reported before API 1.52 (its name, no data).
fn store_driver(info: &SystemInfo) -> Option<DriverData> {
    let snapshotter = info.driver_status.iter().flatten().any(|pair| {
        matches!(pair.as_slice(), [key, value]
            if key == "driver-type" && value == "io.containerd.snapshotter.v1")
    });
    snapshotter.then(|| DriverData {
        name: info.driver.clone().unwrap_or_default(),
        data: HashMap::new(),
    })
}

/// Whether `path` is a directory another filesystem is mounted on (its device is not
/// its parent's).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let device = |path: &Path| std::fs::symlink_metadata(path).map(|m| (m.is_dir(), m.dev()));
    match (device(path), path.parent().map(device)) {
        (Ok((true, own)), Some(Ok((_, parent)))) => own != parent,
        _ => false,
    }
}

impl Engine for Docker {
    fn name(&self) -> &str {
        self.endpoint.name()
    }

    fn client(&self) -> &str {
        self.endpoint.client()
    }

    fn address(&self) -> &str {
        &self.endpoint.address
    }

    fn is_local(&self) -> bool {
        let address = &self.endpoint.address;
        address.starts_with("unix://") || address.starts_with('/')
    }

    async fn image(&self, reference: &str) -> Result<Option<Image>> {
        match self.client.inspect_image(reference).await {
            Ok(image) => {
                let run_label = image.config.and_then(|config| config.labels?.remove("RUN"));
                let count = image
                    .root_fs
                    .and_then(|root| root.layers)
                    .map_or(0, |layers| layers.len());
                let driver = match image.graph_driver {
                    None if !self.endpoint.podman => self.snapshotter().await,
                    driver => driver,
                };
                Ok(Some(Image {
                    id: image.id.unwrap_or_default(),
                    layers: layers(self.name(), self.endpoint.podman, driver, count),
                    run_label,
                    found_in: None,
                }))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(failed(format!("cannot inspect image `{reference}`"), &e)),
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
            while let Some(item) = self.next_or_stall(&mut stream, "pulling").await? {
                let info =
                    item.map_err(|e| failed(format!("cannot pull image `{reference}`"), &e))?;
                if let Some(detail) = info.error_detail {
                    let message = detail.message.unwrap_or_else(|| "unknown error".into());
                    let message = ui::escaped(&message);
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

    async fn container(&self, name: &str) -> Result<Option<ContainerInfo>> {
        let inspected = match self.client.inspect_container(name, None).await {
            Ok(inspected) => inspected,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(failed(format!("cannot inspect container `{name}`"), &e)),
        };
        let id = inspected.id.as_deref().unwrap_or_default();
        let state = inspected.state.as_ref();
        let mounts = inspected
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| Some((m.source?, m.destination?, m.rw.unwrap_or(true))))
            .collect();
        Ok(Some(ContainerInfo {
            id: id.to_string(),
            name: inspected
                .name
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default(),
            running: state.and_then(|s| s.running).unwrap_or(false),
            pid: state
                .and_then(|s| s.pid)
                .and_then(|pid| u32::try_from(pid).ok())
                .unwrap_or(0),
            root: self.container_root(id, inspected.graph_driver).await,
            mounts,
            image_id: inspected.image.unwrap_or_default(),
            created: inspected.created.unwrap_or_default(),
            labels: inspected.config.and_then(|c| c.labels).unwrap_or_default(),
            exec_ids: inspected.exec_ids.unwrap_or_default(),
        }))
    }

    async fn labelled_containers(
        &self,
        label: &str,
        value: Option<&str>,
    ) -> Result<Vec<(String, HashMap<String, String>)>> {
        let filter = match value {
            Some(value) => format!("{label}={value}"),
            None => label.to_string(),
        };
        let containers = self.containers_labelled(filter).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
            .collect())
    }

    async fn remove_container(&self, container: &str) -> Result<()> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        // A daemon that stopped answering keeps the container; the next creation
        // removes it (its toolbox process is gone by then).
        let removing = async {
            loop {
                match self
                    .client
                    .remove_container(container, Some(options.clone()))
                    .await
                {
                    // Docker refuses a second removal while one runs (409 "removal of
                    // container ... is already in progress"): another toolbox process's
                    // clean-up, or the request of a toolbox killed mid-way, which the daemon
                    // carries on with. Asked again once it ended, it answers 404 (removed) or
                    // removes what the other attempt left.
                    Err(e) if is_removal_in_progress(&e) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await
                    }
                    removed => return removed,
                }
            }
        };
        let removed = tokio::time::timeout(self.stall, removing)
            .await
            .map_err(|_| self.stalled("removing a container"))?;
        match removed {
            Err(e) if !is_not_found(&e) => {
                Err(failed(format!("cannot remove container `{container}`"), &e))
            }
            _ => Ok(()),
        }
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
        self.create(body, None, "a container", image_id).await
    }

    async fn path_entry(&self, container: &str, path: &str) -> Result<Entry> {
        if self.endpoint.podman {
            return self.podman_path_entry(container, path).await;
        }
        // Go's `os.FileMode` bits, as the API reports a path's mode.
        const DIR: u32 = 1 << 31;
        const SYMLINK: u32 = 1 << 27;
        const DEVICE: u32 = 1 << 26;
        const FIFO: u32 = 1 << 25;
        const SOCKET: u32 = 1 << 24;
        const CHAR_DEVICE: u32 = 1 << 21;
        let cannot = |e: &BollardError| {
            anyhow!(
                "cannot look at {path} in container {}: {}",
                short_id(container),
                daemon_message(e)
            )
        };
        let options = ContainerArchiveInfoOptions {
            path: path.to_string(),
        };
        let mode = match self
            .client
            .get_container_archive_info(container, Some(options))
            .await
        {
            Ok(stat) => stat.file_mode,
            Err(e) if is_not_found(&e) => return Ok(Entry::Missing),
            Err(e) => return Err(cannot(&e)),
        };
        let kind = match mode {
            m if m & DIR != 0 => Kind::Directory,
            m if m & SYMLINK != 0 => return self.link_target(container, path).await,
            m if m & FIFO != 0 => Kind::Fifo,
            m if m & SOCKET != 0 => Kind::Socket,
            m if m & DEVICE != 0 && m & CHAR_DEVICE != 0 => Kind::CharDevice,
            m if m & DEVICE != 0 => Kind::BlockDevice,
            _ => Kind::Regular,
        };
        Ok(Entry::Found(kind))
    }
}

impl Provisioning for Docker {
    async fn export(&self, container: &str, sink: &mpsc::Sender<Bytes>) -> Result<()> {
        let mut stream = self.client.export_container(container);
        while let Some(chunk) = self.next_or_stall(&mut stream, "exporting").await? {
            let chunk = chunk.map_err(|e| {
                failed(
                    "the export stopped (is the Docker daemon still running?)".to_string(),
                    &e,
                )
            })?;
            sink.send(chunk).await.map_err(|_| SinkClosed)?;
        }
        Ok(())
    }

    async fn create_anchor(
        &self,
        image_id: &str,
        name: &str,
        mut labels: HashMap<String, String>,
        idle: &Path,
    ) -> Result<String> {
        // Podman's `rmi -f` of an image's last name removes its containers, running or
        // not, and then the image; of one name among several, it only untags. Docker
        // refuses to remove an image a running container uses.
        let pin = match self.endpoint.podman {
            true => Some(self.pin(image_id, name).await?),
            false => None,
        };
        if let Some(pin) = &pin {
            labels.insert(LABEL_PIN.to_string(), pin.clone());
        }
        let host = HostConfig {
            binds: Some(vec![format!("{}:{IDLE_PATH}:ro", idle.display())]),
            network_mode: Some("none".to_string()),
            cap_drop: Some(vec!["ALL".to_string()]),
            readonly_rootfs: Some(true),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::ALWAYS),
                maximum_retry_count: None,
            }),
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".to_string()),
                config: None,
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image_id.to_string()),
            // Whatever the image runs, the anchor runs only toolbox's idle process.
            entrypoint: Some(vec![IDLE_PATH.to_string()]),
            cmd: Some(Vec::new()),
            user: Some("65534:65534".to_string()),
            labels: Some(labels),
            host_config: Some(host),
            ..Default::default()
        };
        let what = format!("the anchor container `{name}`");
        let created = self.create(body, Some(name), &what, image_id).await;
        if created.is_err() {
            self.unpin(pin.as_deref()).await;
        }
        created
    }

    async fn start_anchor(&self, anchor: &str) -> Result<()> {
        self.start(anchor).await
    }

    /// With Docker's containerd image store, what the daemon's containerd mounts for the
    /// snapshot it prepared when it created `anchor` (named by the container's ID, in the
    /// daemon's namespace), below Docker's init layer: the image's layers, read before
    /// the daemon starts the container and opens the image's files.
    async fn anchor_layers(&self, anchor: &str, count: usize) -> Result<Vec<PathBuf>> {
        let Some(DriverData {
            name: snapshotter, ..
        }) = self.snapshotter().await
        else {
            bail!("{} keeps no layers in snapshots", self.name());
        };
        let containerd = self.info().await.and_then(|info| info.containerd.as_ref());
        let namespace = containerd.and_then(|c| c.namespaces.as_ref()?.containers.clone());
        let sockets = match containerd.and_then(|c| c.address.clone()) {
            Some(address) => vec![PathBuf::from(address)],
            None => {
                let (args, config) = daemon_command_line(&self.endpoint.address);
                containerd_sockets(&args, config.as_ref())
            }
        };
        let mut tried = Vec::new();
        for socket in &sockets {
            match super::containerd::snapshot_layers(
                socket,
                namespace.as_deref(),
                &snapshotter,
                anchor,
                self.stall,
            )
            .await
            {
                Ok(lowers) => return image_layers(lowers, count),
                Err(e) => tried.push(format!("at `{}`: {e:#}", socket.display())),
            }
        }
        bail!(
            "cannot read the snapshot of container {} from {}'s containerd ({})",
            short_id(anchor),
            self.name(),
            tried.join("; ")
        )
    }

    async fn remove_anchor(&self, anchor: &str) -> Result<()> {
        let pin = match self.client.inspect_container(anchor, None).await {
            Ok(inspected) => inspected
                .config
                .and_then(|c| c.labels?.remove(LABEL_PIN))
                // A label is anyone's to set: only a name toolbox makes is removed.
                .filter(|pin| pin.starts_with(&format!("{PIN_REPOSITORY}:"))),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(failed(format!("cannot inspect container `{anchor}`"), &e)),
        };
        self.remove_container(anchor).await?;
        self.unpin(pin.as_deref()).await;
        Ok(())
    }
}

impl SpcRuntime for Docker {
    async fn containers_with_label(&self, label: &str) -> Result<Vec<String>> {
        let containers = self.containers_labelled(label.to_string()).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| c.names?.first()?.strip_prefix('/').map(String::from))
            .collect())
    }

    async fn create_spc(&self, spec: &ContainerSpec) -> Result<String> {
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
        if let Some(limit) = spec.memlock {
            host.ulimits = Some(vec![ResourcesUlimits {
                name: Some("memlock".to_string()),
                soft: Some(limit),
                hard: Some(limit),
            }]);
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
            .map_err(|e| failed(format!("cannot create {what} of image {}", spec.image), &e))?;
        Ok(created.id)
    }

    async fn start(&self, container: &str) -> Result<()> {
        self.client
            .start_container(container, None::<StartContainerOptions>)
            .await
            .map_err(|e| start_failed(format!("cannot start container `{container}`"), &e))
    }

    async fn stop(&self, container: &str, grace: std::time::Duration) -> Result<()> {
        let options = StopContainerOptions {
            t: Some(grace.as_secs() as i32),
            ..Default::default()
        };
        match self.client.stop_container(container, Some(options)).await {
            Err(e) if !is_not_found(&e) => {
                Err(failed(format!("cannot stop container `{container}`"), &e))
            }
            _ => Ok(()),
        }
    }

    async fn attach(&self, container: &str) -> Result<Attached> {
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
                // Podman prepares the container, and its runtime the command, here.
                start_failed(format!("cannot attach to container `{container}`"), &e)
            })?;
        Ok(attached(attach.output, attach.input, false))
    }

    async fn wait(&self, container: &str) -> Result<i64> {
        let mut waited = self
            .client
            .wait_container(container, None::<WaitContainerOptions>);
        match waited.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports a non-zero status as an error.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(failed(
                format!("cannot wait for container `{container}`"),
                &e,
            )),
            None => bail!("cannot wait for container `{container}`: no answer"),
        }
    }

    async fn exec(&self, container: &str, session: &Process) -> Result<(String, Attached)> {
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
            start_failed(
                format!("cannot run a session in container `{container}`"),
                &e,
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
            StartExecResults::Attached { output, input } => {
                Ok((exec.id, attached(output, input, true)))
            }
            StartExecResults::Detached => {
                bail!("the engine started the session in `{container}` detached")
            }
        }
    }

    async fn exec_state(&self, exec: &str) -> Result<ExecState> {
        let inspected = self.client.inspect_exec(exec).await.map_err(|e| {
            failed(
                format!("cannot inspect exec session {}", short_id(exec)),
                &e,
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

    async fn resize(&self, container: &str, exec: Option<&str>, (w, h): (u16, u16)) -> Result<()> {
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
        resized.map_err(|e| failed(format!("cannot resize the terminal in `{container}`"), &e))
    }

    async fn kill(&self, container: &str, signal: i32) -> Result<()> {
        let options = KillContainerOptions {
            signal: signal.to_string(),
        };
        self.client
            .kill_container(container, Some(options))
            .await
            .map_err(|e| failed(format!("cannot signal container `{container}`"), &e))
    }

    async fn changed_paths(&self, container: &str) -> Result<Vec<String>> {
        let changes = self
            .client
            .container_changes(container)
            .await
            .map_err(|e| {
                failed(
                    format!(
                        "cannot list the changes in container {}",
                        short_id(container)
                    ),
                    &e,
                )
            })?;
        Ok(user_changes(
            changes.unwrap_or_default(),
            self.endpoint.podman,
        ))
    }
}

/// The directories Podman changes in every container it starts: it makes the mount
/// points of its own `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf` and
/// `/run/.containerenv` there, and its diff leaves those files out but not their directory.
const PODMAN_MOUNT_POINT_DIRECTORIES: [&str; 2] = ["/etc", "/run"];

/// The paths of `changes` made in the container, not by the engine starting it. A
/// directory listed as changed by itself never hides a file: each has an entry of its own.
fn user_changes(changes: Vec<FilesystemChange>, podman: bool) -> Vec<String> {
    changes
        .into_iter()
        .filter(|change| {
            !(podman
                && change.kind == ChangeType::_0
                && PODMAN_MOUNT_POINT_DIRECTORIES.contains(&change.path.as_str()))
        })
        .map(|change| change.path)
        .collect()
}

/// The output and input of an attach, or of an exec (`exec`), whose command Docker says
/// it could not start in the output's first chunk (see [`EXEC_FAILED`]): that chunk is
/// an error instead, [`CommandFailed`] when the runtime's words say why.
fn attached(
    output: impl futures_util::Stream<Item = Result<LogOutput, BollardError>> + Send + 'static,
    input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    exec: bool,
) -> Attached {
    let output = output
        .enumerate()
        .filter_map(move |(index, item)| async move {
            match item {
                Ok(LogOutput::StdOut { message })
                    if exec && index == 0 && message.starts_with(EXEC_FAILED.as_bytes()) =>
                {
                    let message = ui::escaped(String::from_utf8_lossy(&message).trim());
                    Some(Err(start_error(
                        "cannot run the session's command".into(),
                        message,
                    )))
                }
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    Some(Ok(Output::Stdout(message)))
                }
                Ok(LogOutput::StdErr { message }) => Some(Ok(Output::Stderr(message))),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(failed(
                    "the connection to the container broke".to_string(),
                    &e,
                ))),
            }
        });
    Attached {
        output: Box::pin(output),
        input,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(name: &str, data: &[(&str, &str)]) -> Option<DriverData> {
        Some(DriverData {
            name: name.into(),
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    #[test]
    fn layers_are_read_from_overlay2_and_podmans_overlay_top_first() {
        let data = [
            ("UpperDir", "/s/c/diff"),
            ("LowerDir", "/s/b/diff:/s/a/diff"),
            ("WorkDir", "/s/c/work"),
        ];
        let stacked = Layers::Directories(vec![
            PathBuf::from("/s/c/diff"),
            PathBuf::from("/s/b/diff"),
            PathBuf::from("/s/a/diff"),
        ]);
        let docker = "the Docker daemon";
        assert_eq!(layers(docker, false, driver("overlay2", &data), 3), stacked);
        assert_eq!(layers("Podman", true, driver("overlay", &data), 3), stacked);
        let one = [("UpperDir", "/s/a/diff")];
        assert_eq!(
            layers("Podman", true, driver("overlay", &one), 1),
            Layers::Directories(vec![PathBuf::from("/s/a/diff")])
        );
    }

    #[test]
    fn the_containerd_stores_snapshots_are_counted() {
        let docker = "the Docker daemon";
        assert_eq!(
            layers(docker, false, driver("overlayfs", &[]), 3),
            Layers::Snapshots(3)
        );
        // Podman has no snapshotter of that name; a driver that reports data is no store.
        assert!(matches!(
            layers("Podman", true, driver("overlayfs", &[]), 3),
            Layers::Unavailable(_)
        ));
        assert!(matches!(
            layers(docker, false, driver("overlayfs", &[("UpperDir", "/u")]), 3),
            Layers::Unavailable(_)
        ));
    }

    #[test]
    fn the_runtimes_words_tell_why_a_command_did_not_start() {
        let runc = |tail: &str| {
            format!(
                "OCI runtime exec failed: exec failed: unable to start container process: \
                 exec: {tail}: unknown"
            )
        };
        let denied = || Some(CommandFailure::NotExecutable("permission denied".into()));
        let cases = [
            (
                runc(r#""nosuch": executable file not found in $PATH"#),
                Some(CommandFailure::NotFound),
            ),
            (
                runc(r#""/no/such": stat /no/such: no such file or directory"#),
                Some(CommandFailure::NotFound),
            ),
            (runc(r#""/etc/passwd": permission denied"#), denied()),
            (
                runc(r#""/usr/bin": is a directory"#),
                Some(CommandFailure::NotExecutable("is a directory".into())),
            ),
            // Podman 5 with crun, as its API says it.
            (
                "preparing container C for attach: crun: executable file `nosuch` not found \
                 in $PATH: No such file or directory: OCI runtime attempted to invoke a \
                 command that was not found"
                    .into(),
                Some(CommandFailure::NotFound),
            ),
            (
                "preparing container C for attach: crun: the path `/etc/passwd` exists but \
                 it is not executable: Operation not permitted: OCI permission denied"
                    .into(),
                denied(),
            ),
            ("OCI runtime exec failed: something else".into(), None),
            ("no such container".into(), None),
        ];
        for (message, expected) in cases {
            assert_eq!(command_failure(&message), expected, "{message}");
        }
        let error = start_error(
            "cannot start container `c`".into(),
            runc("\"x\": permission denied"),
        );
        let failed = error.downcast_ref::<CommandFailed>().unwrap();
        assert!(
            failed
                .message
                .starts_with("cannot start container `c`: OCI"),
            "{failed}"
        );
    }

    #[test]
    fn the_api_version_and_the_engine_are_read_from_a_ping() {
        let version = |answer: &str| {
            ping(answer.as_bytes()).map(|p| (p.version.major_version, p.version.minor_version))
        };
        let is_podman = |answer: &str| ping(answer.as_bytes()).map(|p| p.podman);
        let docker = "HTTP/1.0 200 OK\r\nApi-Version: 1.41\r\nServer: Docker/20.10.24\r\n\r\nOK";
        assert_eq!(version(docker), Some((1, 41)));
        assert_eq!(is_podman(docker), Some(false));
        let podman = "HTTP/1.0 200 OK\r\nLibpod-Api-Version: 5.4.2\r\napi-version:1.41\r\n\r\nOK";
        assert_eq!(version(podman), Some((1, 41)));
        assert_eq!(is_podman(podman), Some(true));
        // Newer than bollard speaks: bollard's own.
        let newest = (
            API_DEFAULT_VERSION.major_version,
            API_DEFAULT_VERSION.minor_version,
        );
        assert_eq!(
            version("HTTP/1.1 200 OK\r\nApi-Version: 1.99\r\n\r\n"),
            Some(newest)
        );
        for answer in [
            "HTTP/1.0 404 Not Found\r\nApi-Version: 1.41\r\n\r\n",
            "HTTP/1.0 200 OK\r\nServer: x\r\n\r\nApi-Version: 1.41",
            "HTTP/1.0 200 OK\r\nApi-Version: one\r\n\r\n",
            "",
        ] {
            assert_eq!(version(answer), None, "{answer:?}");
        }
    }

    #[test]
    fn the_image_is_what_lies_below_the_containers_own_layer() {
        let dir = tempfile::tempdir().unwrap();
        let layer = |name: &str, dockerenv: bool| {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).unwrap();
            if dockerenv {
                std::fs::write(path.join(".dockerenv"), "").unwrap();
            }
            path
        };
        let own = layer("own", true);
        // A classic build's chain keeps each step's own layer: they are the image's.
        let (top, step, base) = (
            layer("top", false),
            layer("step", true),
            layer("base", false),
        );
        let lowers = vec![own.clone(), top.clone(), step.clone(), base.clone()];
        assert_eq!(
            image_layers(lowers.clone(), 2).unwrap(),
            [top.clone(), step, base.clone()]
        );
        let err = image_layers(lowers, 4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the anchor's snapshot stacks 3 layers under its own where the image has 4"
        );
        let err = image_layers(vec![top, base], 2).unwrap_err();
        assert!(
            err.to_string().contains("no layer of Docker's own"),
            "{err}"
        );
    }

    #[test]
    fn the_daemons_containerd_is_found_as_dockerd_chooses_it() {
        let args = |line: &str| -> Vec<String> { line.split(' ').map(String::from).collect() };
        let sockets = |line: &str, config: Option<serde_json::Value>| {
            containerd_sockets(&args(line), config.as_ref())
        };
        let found = |paths: &[&str]| paths.iter().map(PathBuf::from).collect::<Vec<_>>();
        // Debian's unit names the system's; either spelling of the option.
        let debian = "/usr/sbin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock";
        assert_eq!(
            sockets(debian, None),
            found(&["/run/containerd/containerd.sock"])
        );
        assert_eq!(
            sockets("dockerd --containerd unix:///srv/c.sock", None),
            found(&["/srv/c.sock"])
        );
        // Told nothing: the system's if it runs, else its own beneath its exec root.
        assert_eq!(
            sockets("dockerd", None),
            found(&[
                "/run/containerd/containerd.sock",
                "/var/run/docker/containerd/containerd.sock"
            ])
        );
        assert_eq!(
            sockets("dockerd --exec-root /tmp/d/exec", None),
            found(&[
                "/run/containerd/containerd.sock",
                "/tmp/d/exec/containerd/containerd.sock"
            ])
        );
        // Its configuration file, under the command line.
        let config = serde_json::json!({"exec-root": "/srv/exec", "containerd": ""});
        assert_eq!(
            sockets("dockerd", Some(config.clone())),
            found(&[
                "/run/containerd/containerd.sock",
                "/srv/exec/containerd/containerd.sock"
            ])
        );
        let config = serde_json::json!({"containerd": "/srv/c.sock"});
        assert_eq!(
            sockets("dockerd --containerd=/x.sock", Some(config.clone())),
            found(&["/x.sock"])
        );
        assert_eq!(sockets("dockerd", Some(config)), found(&["/srv/c.sock"]));
    }

    #[test]
    fn pins_are_named_for_their_anchor_within_a_tags_length() {
        assert_eq!(pin_tag("toolbox-anchor-core-x-3f2a91c0"), "core-x-3f2a91c0");
        let long = format!("toolbox-anchor-core-{}.y-3f2a91c0", "a".repeat(150));
        let tag = pin_tag(&long);
        assert_eq!(tag.len(), 128);
        assert!(tag.ends_with("aaa.y-3f2a91c0"), "{tag}");
        // Cut where a tag may not start.
        let dotted = format!(
            "toolbox-anchor-{}.....{}-3f2a91c0",
            "a".repeat(10),
            "b".repeat(118)
        );
        assert_eq!(pin_tag(&dotted), format!("{}-3f2a91c0", "b".repeat(118)));
    }

    #[test]
    fn other_stores_say_why_naming_the_engine() {
        let unavailable = |name, podman, found| match layers(name, podman, found, 2) {
            Layers::Unavailable(why) => why,
            other => panic!("{other:?}"),
        };
        let docker = "the Docker daemon";
        assert_eq!(
            unavailable(docker, false, driver("vfs", &[])),
            "the Docker daemon stores images with `vfs`; toolbox mounts the layers of \
             Docker's overlay2 and Podman's overlay only"
        );
        assert_eq!(
            layers(docker, false, driver("overlayfs", &[]), 0),
            Layers::Unavailable(
                "the Docker daemon keeps images in containerd's image store and reports \
                 none of the image's layers"
                    .into()
            )
        );
        // Docker's own `overlay` driver (gone since Docker 24) is not Podman's.
        assert_eq!(
            unavailable(docker, false, driver("overlay", &[("UpperDir", "/u")])),
            "the Docker daemon stores images with `overlay`; toolbox mounts the layers of \
             Docker's overlay2 and Podman's overlay only"
        );
        assert_eq!(
            unavailable("Podman", true, driver("vfs", &[])),
            "Podman stores images with `vfs`; toolbox mounts the layers of Docker's \
             overlay2 and Podman's overlay only"
        );
        assert_eq!(
            unavailable(docker, false, None),
            "the Docker daemon does not say where the image's layers are"
        );
    }

    #[test]
    fn libpods_mount_answer_is_a_directory_or_nothing() {
        let ok = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n\"/var/lib/containers/storage/overlay/abc/merged\"\n";
        let plain = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n/var/lib/containers/storage/overlay/abc/merged";
        for answer in [ok, plain] {
            assert_eq!(
                mounted_root(answer.as_bytes()),
                Some(PathBuf::from(
                    "/var/lib/containers/storage/overlay/abc/merged"
                )),
                "{answer:?}"
            );
        }
        for answer in [
            "HTTP/1.0 404 Not Found\r\n\r\n{\"cause\":\"no such container\"}",
            "HTTP/1.0 200 OK\r\n\r\n\"relative/merged\"",
            "HTTP/1.0 200 OK\r\n\r\n{}",
            "HTTP/1.0 200 OK\r\n\r\n",
            "",
        ] {
            assert_eq!(mounted_root(answer.as_bytes()), None, "{answer:?}");
        }
    }

    #[test]
    fn podmans_own_mount_points_are_not_changes_in_the_container() {
        let change = |path: &str, kind| FilesystemChange {
            path: path.into(),
            kind,
        };
        let changes = || {
            vec![
                change("/etc", ChangeType::_0),
                change("/run", ChangeType::_0),
                change("/srv", ChangeType::_0),
                change("/root", ChangeType::_0),
                change("/root/notes", ChangeType::_1),
            ]
        };
        assert_eq!(
            user_changes(changes(), true),
            ["/srv", "/root", "/root/notes"]
        );
        assert_eq!(
            user_changes(changes(), false),
            ["/etc", "/run", "/srv", "/root", "/root/notes"]
        );
        // Added or deleted, /etc is the user's doing on either engine.
        assert_eq!(
            user_changes(vec![change("/etc", ChangeType::_2)], true),
            ["/etc"]
        );
    }

    #[test]
    fn the_containerd_store_is_told_from_docker_info() {
        let info = |driver: &str, status: &[[&str; 2]]| SystemInfo {
            driver: Some(driver.into()),
            driver_status: Some(
                status
                    .iter()
                    .map(|pair| pair.iter().map(|s| s.to_string()).collect())
                    .collect(),
            ),
            ..Default::default()
        };
        let store = info(
            "overlayfs",
            &[["driver-type", "io.containerd.snapshotter.v1"]],
        );
        assert_eq!(store_driver(&store), driver("overlayfs", &[]));
        let overlay2 = info("overlay2", &[["Backing Filesystem", "extfs"]]);
        assert_eq!(store_driver(&overlay2), None);
    }

    #[test]
    fn the_daemons_answers_are_sorted_by_kind() {
        let answer = |status_code: u16, message: &str| BollardError::DockerResponseServerError {
            status_code,
            message: message.into(),
        };
        let cases = [
            (answer(404, "No such container: c"), Some(Failure::NotFound)),
            (
                answer(409, "removal of container c is already in progress"),
                Some(Failure::Conflict),
            ),
            (answer(500, "driver failed"), None),
        ];
        for (error, kind) in cases {
            let error = failed("cannot remove container `c`".into(), &error)
                .context("not every toolbox was removed");
            assert_eq!(crate::engine::failure_of(&error), kind, "{error:#}");
            assert!(
                format!("{error:#}").contains("cannot remove container `c`: "),
                "{error:#}"
            );
        }
        // A command that could not start is told apart from the container being gone.
        let started = start_failed(
            "cannot start container `c`".into(),
            &answer(
                400,
                "OCI runtime create failed: unable to start container process: exec: \"x\": \
                 executable file not found in $PATH: unknown",
            ),
        );
        assert!(started.downcast_ref::<CommandFailed>().is_some());
        let gone = start_failed("cannot start container `c`".into(), &answer(404, "no such"));
        assert_eq!(crate::engine::failure_of(&gone), Some(Failure::NotFound));
    }
}
