//! engine: the few container-engine calls toolbox makes, behind the [`Engine`] trait, and
//! their Docker Engine API implementation (bollard). Only creating, updating and removing
//! a toolbox talk to an engine; entering one never does.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use bollard::errors::Error as BollardError;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::host::{DOCKER_HOST, Env};
use crate::plan::ImageRef;
use crate::ui;

/// Label put on every container toolbox creates, with the toolbox's name as value.
pub const LABEL_TOOLBOX: &str = "toolbox.name";
/// Label with the ID of the toolbox process that created the container.
pub const LABEL_PID: &str = "toolbox.pid";
/// Label on the never-started container that pins an overlay toolbox's image, with the
/// toolbox's full path as value (names repeat across toolbox directories; paths do not).
pub const LABEL_ANCHOR: &str = "toolbox.anchor";

/// An image as the engine has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The engine's ID (`sha256:...`).
    pub id: String,
    /// The storage driver holding its layers (`overlay2`, `vfs`, ...), if reported.
    pub driver: Option<String>,
    /// With `overlay2`: the layers' directories on the daemon's host, top layer first.
    pub layers: Vec<PathBuf>,
}

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

/// A Docker Engine API daemon (Docker, or Podman's compatible service).
pub struct Docker {
    client: bollard::Docker,
    /// Where the daemon is, for messages.
    pub address: String,
}

impl Docker {
    /// Connects as the `docker` client would (`DOCKER_HOST`, else the local socket) and
    /// agrees on an API version: bollard 0.21 otherwise assumes a newer API than Docker
    /// 20.10 (API 1.41) speaks.
    pub async fn connect(env: &Env) -> Result<Docker> {
        let address = env
            .non_empty(DOCKER_HOST)
            .unwrap_or("unix:///var/run/docker.sock")
            .to_string();
        let unreachable =
            || format!("cannot reach the Docker daemon at `{address}`; is dockerd running?");
        let client = bollard::Docker::connect_with_defaults().with_context(unreachable)?;
        let client = client.negotiate_version().await.with_context(unreachable)?;
        Ok(Docker { client, address })
    }

    pub fn api_version(&self) -> String {
        self.client.client_version().to_string()
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
        let filters = HashMap::from([("label".to_string(), vec![format!("{label}={value}")])]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let containers = self
            .client
            .list_containers(Some(options))
            .await
            .map_err(|e| anyhow!("cannot list containers: {}", daemon_message(&e)))?;
        Ok(containers
            .into_iter()
            .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
            .collect())
    }

    fn is_local(&self) -> bool {
        self.address.starts_with("unix://") || self.address.starts_with('/')
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
