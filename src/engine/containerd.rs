//! engine::containerd: the [`Engine`] of containerd itself, the engine of Kubernetes nodes
//! and Flatcar, through its gRPC API (containerd-client). Every gRPC type stays in this
//! file. containerd has no anchor container: what keeps an overlay toolbox's layers is a
//! lease without expiry (the garbage collector, `ctr images rm`, the kubelet's image
//! garbage collection and restarts all spare what a lease holds) that holds a read-only
//! view of the image's top snapshot, whose mounts name the layers' directories. A copy
//! toolbox's export is the same view, held only while it is read. toolbox never starts a
//! container or a task in containerd.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::transfer_client::TransferClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    ApplyRequest, CreateRequest, DeleteRequest, GetContainerRequest, GetImageRequest, GetRequest,
    Info as ContentInfo, ListContainersRequest, ListNamespacesRequest, ListRequest,
    ReadContentRequest, TransferOptions, TransferRequest, UpdateRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use containerd_client::types::transfer::{
    ImageStore, OciRegistry, RegistryResolver, UnpackConfiguration,
};
use containerd_client::types::{Mount, Platform};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::engine::{
    Access, ContainerInfo, Engine, Failure, LABEL_ANCHOR, LABEL_TOOLBOX, Provisioning, SinkClosed,
    pod_members,
};
use crate::model::image::{Image, ImageRef, Layers, architecture, digest};
use crate::model::target::Pod;

/// The snapshotter whose snapshots overlayfs can stack (containerd's default).
const SNAPSHOTTER: &str = "overlayfs";
/// Where the kubelet keeps images, then where `ctr` does: the namespaces looked in when
/// none is set.
pub const NAMESPACES: [&str; 2] = ["k8s.io", "default"];
/// The largest manifest, index or image configuration read from the content store.
const MAX_DOCUMENT: usize = 4 << 20;
/// What toolbox's exports of an image are called (`toolbox-export-NAME-...`): they hold a
/// lease and a view, like anchors, with [`LABEL_TOOLBOX`].
const EXPORT_PREFIX: &str = "toolbox-export-";
/// Where Docker's containerd image store keeps its containers, unless told otherwise.
const DOCKER_NAMESPACE: &str = "moby";
/// Where the kubelet's container runtime (CRI) keeps its containers.
const CRI_NAMESPACE: &str = "k8s.io";

/// containerd, on its Unix socket.
pub struct Containerd {
    channel: Channel,
    socket: PathBuf,
    /// The namespaces images are looked up in, in order.
    namespaces: Vec<String>,
    version: String,
    stall: Duration,
    /// What [`Engine::image`] found, by image ID, for the calls that name the image by ID.
    found: Mutex<HashMap<String, Found>>,
}

/// Where an image is in containerd: its namespace and its top snapshot.
#[derive(Debug, Clone)]
struct Found {
    namespace: String,
    /// The chain ID of its top layer: the snapshot that holds the image's files.
    chain: String,
    name: String,
}

impl Containerd {
    /// Connects to containerd at the socket `access` names and asks its version.
    pub async fn connect(access: &Access) -> Result<Containerd> {
        let socket = access.sockets.containerd.clone();
        let unreachable = |why: String| {
            Failure::Unreachable.error(format!(
                "cannot reach containerd at `{}`: {why}; is containerd running? \
                 (TOOLBOX_CONTAINERD_ADDRESS names its socket)",
                socket.display()
            ))
        };
        crate::engine::check_server("containerd", &socket)?;
        let channel = tokio::time::timeout(access.stall, containerd_client::connect(&socket))
            .await
            .map_err(|_| unreachable("it did not answer".to_string()))?
            .map_err(|e| unreachable(format!("{e}")))?;
        let version = tokio::time::timeout(
            access.stall,
            VersionClient::new(channel.clone()).version(()),
        )
        .await
        .map_err(|_| unreachable("it did not answer".to_string()))?
        .map_err(|e| unreachable(e.message().to_string()))?
        .into_inner()
        .version;
        let namespaces = match &access.containerd_namespace {
            Some(namespace) => vec![namespace.clone()],
            None => NAMESPACES.iter().map(|n| n.to_string()).collect(),
        };
        Ok(Containerd {
            channel,
            socket,
            namespaces,
            version,
            stall: access.stall,
            found: Mutex::new(HashMap::new()),
        })
    }

    /// Which engine this is, where, and its version, for `-v`.
    pub fn describe(&self) -> String {
        format!(
            "containerd {} at {} (images looked up in namespace {})",
            self.version,
            self.socket.display(),
            self.namespaces.join(", then ")
        )
    }

    /// `message` for containerd in namespace `namespace`.
    fn request<T>(namespace: &str, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(value) = namespace.parse() {
            request.metadata_mut().insert("containerd-namespace", value);
        }
        request
    }

    /// `message` for containerd in namespace `namespace`, what it makes held by `lease`.
    fn leased<T>(namespace: &str, lease: &str, message: T) -> Request<T> {
        let mut request = Self::request(namespace, message);
        if let Ok(lease) = lease.parse() {
            request.metadata_mut().insert("containerd-lease", lease);
        }
        request
    }

    /// Every namespace containerd has, for what toolbox made in any of them.
    async fn all_namespaces(&self) -> Result<Vec<String>> {
        namespaces(&self.channel).await
    }

    /// The blob `digest` from the content store of `namespace`, at most [`MAX_DOCUMENT`].
    async fn read_content(&self, namespace: &str, digest: &str) -> Result<Vec<u8>> {
        let request = ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        };
        let mut stream = ContentClient::new(self.channel.clone())
            .read(Self::request(namespace, request))
            .await
            .map_err(|e| failed(&format!("cannot read {digest} from containerd"), &e))?
            .into_inner();
        let mut content = Vec::new();
        loop {
            let next = tokio::time::timeout(self.stall, stream.message())
                .await
                .map_err(|_| anyhow!("containerd sent nothing while reading {digest}"))?
                .map_err(|e| failed(&format!("cannot read {digest} from containerd"), &e))?;
            let Some(chunk) = next else { break };
            content.extend_from_slice(&chunk.data);
            if content.len() > MAX_DOCUMENT {
                bail!("{digest} in containerd is larger than an image's manifest can be");
            }
        }
        Ok(content)
    }

    /// The image named `name` in `namespace`: its configuration's digest (its ID, as
    /// Docker and crictl show it), its diff IDs, and its `RUN` label.
    async fn resolve(&self, namespace: &str, name: &str) -> Result<Option<Resolved>> {
        let got = ImagesClient::new(self.channel.clone())
            .get(Self::request(
                namespace,
                GetImageRequest {
                    name: name.to_string(),
                },
            ))
            .await;
        let image = match got {
            Ok(got) => got.into_inner().image,
            Err(e) if e.code() == Code::NotFound => return Ok(None),
            Err(e) => return Err(failed(&format!("cannot look up image `{name}`"), &e)),
        };
        let Some(mut descriptor) = image.and_then(|image| image.target) else {
            return Ok(None);
        };
        // An index names one manifest per platform: this host's is the one unpacked.
        for _ in 0..2 {
            let document = self.read_content(namespace, &descriptor.digest).await?;
            match manifest_step(&descriptor.media_type, &document, name)? {
                Step::Index(next) => descriptor = next,
                Step::Config(config, layers) => {
                    let document = self.read_content(namespace, &config.digest).await?;
                    let config: ImageConfig = serde_json::from_slice(&document).map_err(|e| {
                        anyhow!("image `{name}` in containerd has a configuration toolbox cannot read: {e}")
                    })?;
                    let id = digest(&document);
                    if layers.len() != config.rootfs.diff_ids.len() {
                        bail!(
                            "image `{name}` in containerd has {} layers and {} diff IDs",
                            layers.len(),
                            config.rootfs.diff_ids.len()
                        );
                    }
                    return Ok(Some(Resolved {
                        id,
                        diff_ids: config.rootfs.diff_ids,
                        layers,
                        run_label: config.config.and_then(|c| c.labels?.remove("RUN")),
                    }));
                }
            }
        }
        bail!("image `{name}` in containerd nests indexes deeper than toolbox follows")
    }

    /// Unpacks image `name` of `namespace` for the snapshotter, as containerd's own
    /// unpacker does: each layer missing applied on a snapshot of the ones below and
    /// committed under its chain ID, all under a lease that expires (what a killed
    /// toolbox leaves goes by itself), and the image's configuration labelled with its
    /// top snapshot, which keeps the snapshots as long as the image is there.
    async fn unpack(&self, namespace: &str, name: &str, image: &Resolved) -> Result<()> {
        let lease = unique("toolbox-unpack-");
        let expire = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + Duration::from_secs(3600),
        );
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire.to_string())]);
        LeasesClient::new(self.channel.clone())
            .create(Self::request(
                namespace,
                CreateRequest {
                    id: lease.clone(),
                    labels,
                },
            ))
            .await
            .map_err(|e| failed(&format!("cannot unpack `{name}`: a lease"), &e))?;
        let unpacked = self.unpack_under(namespace, name, image, &lease).await;
        let _ = self.release(namespace, &lease).await;
        unpacked
    }

    async fn unpack_under(
        &self,
        namespace: &str,
        name: &str,
        image: &Resolved,
        lease: &str,
    ) -> Result<()> {
        let cannot =
            |what: String, e: &Status| failed(&format!("cannot unpack `{name}`: {what}"), e);
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let mut parent = String::new();
        for (index, layer) in image.layers.iter().enumerate() {
            let chain = chain_id(&image.diff_ids[..=index]).unwrap_or_default();
            let stat = StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: chain.clone(),
            };
            if snapshots.stat(Self::request(namespace, stat)).await.is_ok() {
                parent = chain;
                continue;
            }
            let key = format!("{lease}-{index}");
            let prepared = snapshots
                .prepare(Self::leased(
                    namespace,
                    lease,
                    PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.to_string(),
                        key: key.clone(),
                        parent: parent.clone(),
                        labels: HashMap::new(),
                    },
                ))
                .await
                .map_err(|e| cannot(format!("layer {}", index + 1), &e))?
                .into_inner();
            let applied = DiffClient::new(self.channel.clone())
                .apply(Self::leased(
                    namespace,
                    lease,
                    ApplyRequest {
                        diff: Some(layer.clone()),
                        mounts: prepared.mounts,
                        payloads: HashMap::new(),
                        sync_fs: true,
                    },
                ))
                .await
                .map_err(|e| cannot(format!("layer {} ({})", index + 1, layer.digest), &e))?
                .into_inner();
            let diff_id = applied.applied.map(|d| d.digest).unwrap_or_default();
            if diff_id != image.diff_ids[index] {
                bail!(
                    "cannot unpack `{name}`: layer {} unpacks to {diff_id}, not {} as its \
                     configuration says",
                    index + 1,
                    image.diff_ids[index]
                );
            }
            snapshots
                .commit(Self::leased(
                    namespace,
                    lease,
                    CommitSnapshotRequest {
                        snapshotter: SNAPSHOTTER.to_string(),
                        name: chain.clone(),
                        key,
                        labels: HashMap::new(),
                    },
                ))
                .await
                .map_err(|e| cannot(format!("layer {}", index + 1), &e))?;
            parent = chain;
        }
        let label = format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}");
        let info = ContentInfo {
            digest: image.id.clone(),
            labels: HashMap::from([(label.clone(), parent)]),
            ..Default::default()
        };
        ContentClient::new(self.channel.clone())
            .update(Self::request(
                namespace,
                UpdateRequest {
                    info: Some(info),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![format!("labels.{label}")],
                    }),
                },
            ))
            .await
            .map_err(|e| cannot("its configuration's label".to_string(), &e))?;
        Ok(())
    }

    /// Where image `image_id`, found by [`Engine::image`] in this process, is.
    fn found(&self, image_id: &str) -> Result<Found> {
        self.found
            .lock()
            .map_err(|_| anyhow!("an earlier engine call failed midway"))?
            .get(image_id)
            .cloned()
            .ok_or_else(|| anyhow!("image {image_id} was not looked up in containerd"))
    }

    /// A lease without expiry named `id` with `labels`, holding a read-only view (also
    /// `id`) of the image's top snapshot: what the garbage collector spares, with every
    /// snapshot below it. Returns the view's mounts.
    async fn hold(
        &self,
        found: &Found,
        id: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let namespace = &found.namespace;
        LeasesClient::new(self.channel.clone())
            .create(Self::request(
                namespace,
                CreateRequest {
                    id: id.to_string(),
                    labels,
                },
            ))
            .await
            .map_err(|e| failed(&format!("cannot create the lease `{id}` in containerd"), &e))?;
        // Made under the lease: it is the lease's, and goes with it.
        let request = Self::leased(
            namespace,
            id,
            ViewSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: id.to_string(),
                parent: found.chain.clone(),
                labels: HashMap::new(),
            },
        );
        let viewed = SnapshotsClient::new(self.channel.clone())
            .view(request)
            .await;
        match viewed {
            Ok(view) => Ok(view.into_inner().mounts),
            Err(e) => {
                let _ = self.release(namespace, id).await;
                Err(failed(
                    &format!("cannot view the layers of `{}` in containerd", found.name),
                    &e,
                ))
            }
        }
    }

    /// Removes what [`Containerd::hold`] made under `id` in `namespace`: the view, then
    /// the lease. Either may be gone already.
    async fn release(&self, namespace: &str, id: &str) -> Result<()> {
        let removed = SnapshotsClient::new(self.channel.clone())
            .remove(Self::request(
                namespace,
                RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.to_string(),
                    key: id.to_string(),
                },
            ))
            .await;
        match removed {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => {}
            Err(e) => return Err(failed(&format!("cannot remove the view `{id}`"), &e)),
        }
        let deleted = LeasesClient::new(self.channel.clone())
            .delete(Self::request(
                namespace,
                DeleteRequest {
                    id: id.to_string(),
                    sync: false,
                },
            ))
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Code::NotFound => Ok(()),
            Err(e) => Err(failed(&format!("cannot delete the lease `{id}`"), &e)),
        }
    }

    /// The leases toolbox made, in every namespace: namespace, ID and labels.
    async fn leases(&self) -> Result<Vec<(String, String, HashMap<String, String>)>> {
        let mut leases = Vec::new();
        for namespace in self.all_namespaces().await? {
            let listed = LeasesClient::new(self.channel.clone())
                .list(Self::request(&namespace, ListRequest::default()))
                .await
                .map_err(|e| failed("cannot list containerd's leases", &e))?;
            for lease in listed.into_inner().leases {
                if lease.labels.contains_key(LABEL_ANCHOR)
                    || lease.labels.contains_key(LABEL_TOOLBOX)
                {
                    leases.push((namespace.clone(), lease.id, lease.labels));
                }
            }
        }
        Ok(leases)
    }

    /// The namespace of toolbox's lease `id`.
    async fn lease_namespace(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .leases()
            .await?
            .into_iter()
            .find(|(_, lease, _)| lease == id)
            .map(|(namespace, _, _)| namespace))
    }

    /// The mounts of toolbox's view `id`.
    async fn view_mounts(&self, id: &str) -> Result<Vec<Mount>> {
        let namespace = self
            .lease_namespace(id)
            .await?
            .ok_or_else(|| anyhow!("containerd has no lease `{id}`"))?;
        snapshot_mounts(&self.channel, &namespace, SNAPSHOTTER, id)
            .await
            .map_err(|e| failed(&format!("cannot read the mounts of `{id}`"), &e))
    }
}

/// Every namespace containerd on `channel` has.
async fn namespaces(channel: &Channel) -> Result<Vec<String>> {
    let listed = NamespacesClient::new(channel.clone())
        .list(ListNamespacesRequest::default())
        .await
        .map_err(|e| failed("cannot list containerd's namespaces", &e))?;
    Ok(listed
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect())
}

/// What containerd on `channel` mounts for snapshot `key` of `snapshotter` in `namespace`.
async fn snapshot_mounts(
    channel: &Channel,
    namespace: &str,
    snapshotter: &str,
    key: &str,
) -> Result<Vec<Mount>, Status> {
    let request = MountsRequest {
        snapshotter: snapshotter.to_string(),
        key: key.to_string(),
    };
    let mounts = SnapshotsClient::new(channel.clone())
        .mounts(Containerd::request(namespace, request))
        .await?;
    Ok(mounts.into_inner().mounts)
}

/// An image's identity as its configuration gives it.
struct Resolved {
    id: String,
    diff_ids: Vec<String>,
    /// The layers' blobs, bottom first, to unpack from.
    layers: Vec<containerd_client::types::Descriptor>,
    run_label: Option<String>,
}

/// What a document read from the content store leads to.
#[derive(Debug, PartialEq)]
enum Step {
    /// This platform's manifest, from an index.
    Index(containerd_client::types::Descriptor),
    /// The image's configuration and its layers (bottom first), from a manifest.
    Config(
        containerd_client::types::Descriptor,
        Vec<containerd_client::types::Descriptor>,
    ),
}

#[derive(Deserialize)]
struct DescriptorJson {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    platform: Option<PlatformJson>,
}

#[derive(Deserialize)]
struct PlatformJson {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
    #[serde(default)]
    config: Option<ConfigSection>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigSection {
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

fn descriptor(json: DescriptorJson) -> containerd_client::types::Descriptor {
    containerd_client::types::Descriptor {
        media_type: json.media_type,
        digest: json.digest,
        size: json.size,
        annotations: HashMap::new(),
    }
}

/// Where the document `document` of media type `media_type` (image `name`) leads: an
/// index to this platform's manifest, a manifest to the configuration.
fn manifest_step(media_type: &str, document: &[u8], name: &str) -> Result<Step> {
    #[derive(Deserialize)]
    struct Document {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        #[serde(default)]
        manifests: Vec<DescriptorJson>,
        #[serde(default)]
        config: Option<DescriptorJson>,
        #[serde(default)]
        layers: Vec<DescriptorJson>,
    }
    let unreadable = |e: &dyn std::fmt::Display| {
        anyhow!("image `{name}` in containerd has a manifest toolbox cannot read: {e}")
    };
    let parsed: Document = serde_json::from_slice(document).map_err(|e| unreadable(&e))?;
    let media_type = if media_type.is_empty() {
        parsed.media_type.as_str()
    } else {
        media_type
    };
    match media_type {
        "application/vnd.oci.image.index.v1+json"
        | "application/vnd.docker.distribution.manifest.list.v2+json" => {
            let arch = architecture();
            let chosen = parsed
                .manifests
                .into_iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == arch)
                })
                .ok_or_else(|| {
                    anyhow!("image `{name}` in containerd has no linux/{arch} manifest")
                })?;
            Ok(Step::Index(descriptor(chosen)))
        }
        "application/vnd.oci.image.manifest.v1+json"
        | "application/vnd.docker.distribution.manifest.v2+json" => {
            let config = parsed
                .config
                .ok_or_else(|| unreadable(&"its manifest names no configuration"))?;
            let layers = parsed.layers.into_iter().map(descriptor).collect();
            Ok(Step::Config(descriptor(config), layers))
        }
        other => Err(unreadable(&format_args!("media type `{other}`"))),
    }
}

/// The chain ID of the top layer of an image with `diff_ids` (bottom first), the name of
/// the snapshot holding its files (OCI image spec, config.md "Layer ChainID").
fn chain_id(diff_ids: &[String]) -> Option<String> {
    let (first, rest) = diff_ids.split_first()?;
    Some(rest.iter().fold(first.clone(), |chain, diff| {
        digest(format!("{chain} {diff}").as_bytes())
    }))
}

/// The name containerd gives the image `reference` (`docker.io/library/debian:12` for
/// `debian:12`), as `ctr` and the kubelet store it.
pub fn normalized(reference: &str) -> String {
    let (name, rest) = match reference.split_once('@') {
        Some((name, digest)) => (name, format!("@{digest}")),
        None => (reference, String::new()),
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let name = match (has_registry, name.contains('/')) {
        (true, _) => name.to_string(),
        (false, true) => format!("docker.io/{name}"),
        (false, false) => format!("docker.io/library/{name}"),
    };
    let last = name.rsplit('/').next().unwrap_or_default();
    let tagged = last.contains(':') || !rest.is_empty();
    match tagged {
        true => format!("{name}{rest}"),
        false => format!("{name}:latest"),
    }
}

/// The directories overlayfs stacks for a view's `mounts`, top first: a bind of the one
/// layer, or an overlay's `lowerdir`s.
fn mount_layers(mounts: &[Mount]) -> Result<Vec<PathBuf>, String> {
    let [mount] = mounts else {
        return Err(format!(
            "containerd gave {} mounts for one view",
            mounts.len()
        ));
    };
    let layers: Vec<PathBuf> = match mount.r#type.as_str() {
        "bind" => vec![PathBuf::from(&mount.source)],
        "overlay" => {
            let lower = mount
                .options
                .iter()
                .find_map(|option| option.strip_prefix("lowerdir="))
                .ok_or_else(|| "containerd's overlay names no lowerdir".to_string())?;
            lower.split(':').map(PathBuf::from).collect()
        }
        other => {
            return Err(format!(
                "containerd's snapshotter mounts the image as `{other}`, which overlay storage cannot stack"
            ));
        }
    };
    // A name relative to a directory containerd changes to (it does, where the absolute
    // names do not fit in a page) would be looked up in toolbox's own.
    match layers.iter().find(|layer| !layer.is_absolute()) {
        Some(relative) => Err(format!(
            "containerd names layer `{}`, which is not an absolute path",
            relative.display()
        )),
        None => Ok(layers),
    }
}

/// The directories, top first, of the snapshot `key` of `snapshotter`, as containerd at
/// `socket` mounts it: how a container Docker's containerd image store created shows its
/// layers before it starts (its snapshot is named by its ID). It is looked for in
/// `namespace`, or where that is not known (`docker info` before API 1.46) in `moby`, then
/// every namespace (a daemon with `--containerd-namespace`, or remapped users).
pub async fn snapshot_layers(
    socket: &Path,
    namespace: Option<&str>,
    snapshotter: &str,
    key: &str,
    stall: Duration,
) -> Result<Vec<PathBuf>> {
    crate::engine::check_server("containerd", socket)?;
    let asked = async {
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|e| anyhow!("cannot connect: {e}"))?;
        let namespaces = match namespace {
            Some(namespace) => vec![namespace.to_string()],
            None => {
                let mut names = namespaces(&channel).await?;
                names.sort_by_key(|name| name != DOCKER_NAMESPACE);
                names
            }
        };
        for namespace in &namespaces {
            match snapshot_mounts(&channel, namespace, snapshotter, key).await {
                Ok(mounts) => return Ok(mounts),
                Err(status) if status.code() == Code::NotFound => continue,
                Err(status) => {
                    return Err(failed(
                        &format!("cannot read snapshot `{key}` in namespace {namespace}"),
                        &status,
                    ));
                }
            }
        }
        bail!(
            "no snapshot `{key}` of {snapshotter} in namespace {}",
            namespaces.join(", ")
        )
    };
    let mounts = tokio::time::timeout(stall, asked)
        .await
        .map_err(|_| anyhow!("it did not answer"))??;
    mount_layers(&mounts).map_err(|why| anyhow!("{why}"))
}

/// A gRPC error from containerd as toolbox says it, its kind kept for callers.
fn failed(what: &str, status: &Status) -> anyhow::Error {
    let message = format!("{what}: {}", status.message());
    match status.code() {
        Code::NotFound => Failure::NotFound.error(message),
        Code::AlreadyExists | Code::FailedPrecondition => Failure::Conflict.error(message),
        Code::Unavailable => Failure::Unreachable.error(message),
        _ => anyhow!(message),
    }
}

/// `prefix` and what makes a name of this process unique: its PID and the time.
fn unique(prefix: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{prefix}{}-{}", std::process::id(), now.as_nanos())
}

impl Engine for Containerd {
    fn name(&self) -> &str {
        "containerd"
    }

    fn address(&self) -> &str {
        self.socket.to_str().unwrap_or("containerd's socket")
    }

    fn client(&self) -> &str {
        "ctr"
    }

    fn is_local(&self) -> bool {
        true
    }

    async fn image(&self, reference: &str) -> Result<Option<Image>> {
        let name = normalized(reference);
        for namespace in &self.namespaces {
            let Some(resolved) = self.resolve(namespace, &name).await? else {
                continue;
            };
            let count = resolved.diff_ids.len();
            let chain = chain_id(&resolved.diff_ids)
                .ok_or_else(|| anyhow!("image `{name}` in containerd has no layers"))?;
            let unpacked = SnapshotsClient::new(self.channel.clone())
                .stat(Self::request(
                    namespace,
                    StatSnapshotRequest {
                        snapshotter: SNAPSHOTTER.to_string(),
                        key: chain.clone(),
                    },
                ))
                .await;
            match unpacked {
                Ok(_) => {}
                Err(e) if e.code() == Code::NotFound => {
                    self.unpack(namespace, &name, &resolved).await?;
                }
                Err(e) => return Err(failed(&format!("cannot look at image `{name}`"), &e)),
            }
            let layers = Layers::Snapshots(count);
            if let Ok(mut found) = self.found.lock() {
                found.insert(
                    resolved.id.clone(),
                    Found {
                        namespace: namespace.clone(),
                        chain,
                        name: name.clone(),
                    },
                );
            }
            return Ok(Some(Image {
                id: resolved.id,
                layers,
                run_label: resolved.run_label,
                found_in: Some(format!("`{name}` in containerd namespace {namespace}")),
            }));
        }
        Ok(None)
    }

    async fn pull(&self, image: &ImageRef, quiet: bool) -> Result<()> {
        let name = normalized(&image.reference());
        let namespace = &self.namespaces[0];
        let platform = Platform {
            os: "linux".to_string(),
            architecture: architecture().to_string(),
            ..Default::default()
        };
        // Loopback registries speak plain HTTP, as Docker assumes of 127.0.0.0/8.
        let host = name.split('/').next().unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(host, _)| host);
        let loopback = host == "localhost" || host.starts_with("127.") || host == "[::1]";
        let source = OciRegistry {
            reference: name.clone(),
            resolver: Some(RegistryResolver {
                default_scheme: if loopback { "http" } else { "" }.to_string(),
                ..Default::default()
            }),
        };
        let destination = ImageStore {
            name: name.clone(),
            platforms: vec![platform.clone()],
            unpacks: vec![UnpackConfiguration {
                platform: Some(platform),
                snapshotter: SNAPSHOTTER.to_string(),
            }],
            ..Default::default()
        };
        let request = TransferRequest {
            source: Some(containerd_client::to_any(&source)),
            destination: Some(containerd_client::to_any(&destination)),
            options: Some(TransferOptions::default()),
        };
        if !quiet {
            crate::host::ui::say(format_args!(
                "pulling {name} into containerd namespace {namespace}"
            ));
        }
        let pulled = TransferClient::new(self.channel.clone())
            .transfer(Self::request(namespace, request))
            .await;
        match pulled {
            Ok(_) => Ok(()),
            // containerd before 1.7 has no transfer service.
            Err(e) if e.code() == Code::Unimplemented => bail!(
                "containerd {} has no transfer service to pull `{name}` with (1.7 and later \
                 have one); pull it with `ctr -n {namespace} images pull {name}`",
                self.version
            ),
            Err(e) => bail!(
                "cannot pull image `{name}` into containerd namespace {namespace}: {}",
                crate::host::ui::escaped(e.message())
            ),
        }
    }

    async fn container(&self, name: &str) -> Result<Option<ContainerInfo>> {
        // The kubelet's containers are in `k8s.io`, whatever namespace images come from.
        let mut namespaces = self.namespaces.clone();
        if !namespaces.iter().any(|n| n == CRI_NAMESPACE) {
            namespaces.push(CRI_NAMESPACE.to_string());
        }
        for namespace in &namespaces {
            let got = ContainersClient::new(self.channel.clone())
                .get(Self::request(
                    namespace,
                    GetContainerRequest {
                        id: name.to_string(),
                    },
                ))
                .await;
            let container = match got {
                Ok(got) => got.into_inner().container,
                Err(e) if e.code() == Code::NotFound => continue,
                Err(e) => return Err(failed(&format!("cannot look up container `{name}`"), &e)),
            };
            let Some(container) = container else { continue };
            let task = TasksClient::new(self.channel.clone())
                .get(Self::request(
                    namespace,
                    GetRequest {
                        container_id: name.to_string(),
                        exec_id: String::new(),
                    },
                ))
                .await;
            // Status 2 is RUNNING (containerd.v1.types.Status).
            let pid = match task {
                Ok(task) => task
                    .into_inner()
                    .process
                    .filter(|p| p.status == 2)
                    .map_or(0, |p| p.pid),
                Err(e) if e.code() == Code::NotFound => 0,
                Err(e) => return Err(failed(&format!("cannot look up the task of `{name}`"), &e)),
            };
            let root = (pid != 0)
                .then(|| task_root(Path::new("/proc"), pid, &container.id))
                .flatten();
            let mounts = container
                .spec
                .as_ref()
                .map(|spec| spec_binds(&spec.value))
                .unwrap_or_default();
            return Ok(Some(ContainerInfo {
                id: container.id.clone(),
                name: container.id,
                running: pid != 0,
                pid,
                root: root.map(|root| root.display().to_string()),
                mounts,
                image_id: container.image,
                created: String::new(),
                labels: container.labels,
                exec_ids: Vec::new(),
            }));
        }
        Ok(None)
    }

    async fn labelled_containers(
        &self,
        label: &str,
        value: Option<&str>,
    ) -> Result<Vec<(String, HashMap<String, String>)>> {
        Ok(self
            .leases()
            .await?
            .into_iter()
            .filter(|(_, _, labels)| match value {
                Some(value) => labels.get(label).map(String::as_str) == Some(value),
                None => labels.contains_key(label),
            })
            .map(|(_, id, labels)| (id, labels))
            .collect())
    }

    async fn remove_container(&self, container: &str) -> Result<()> {
        match self.lease_namespace(container).await? {
            Some(namespace) => self.release(&namespace, container).await,
            None => Ok(()),
        }
    }

    async fn create_container(
        &self,
        image_id: &str,
        labels: HashMap<String, String>,
    ) -> Result<String> {
        let found = self.found(image_id)?;
        let name = labels.get(LABEL_TOOLBOX).cloned().unwrap_or_default();
        let id = unique(&format!("{EXPORT_PREFIX}{name}-"));
        self.hold(&found, &id, labels).await?;
        Ok(id)
    }

    async fn path_entry(&self, _container: &str, _path: &str) -> Result<crate::sys::Entry> {
        Err(anyhow!(
            "the spc runtime is not served with containerd; use Docker or Podman for it"
        ))
    }

    async fn pod_containers(&self, pod: &Pod) -> Result<Vec<(String, String)>> {
        let listed = ContainersClient::new(self.channel.clone())
            .list(Self::request(
                CRI_NAMESPACE,
                ListContainersRequest::default(),
            ))
            .await
            .map_err(|e| failed("cannot list the kubelet's containers", &e))?;
        let containers = listed
            .into_inner()
            .containers
            .into_iter()
            .map(|c| (c.id, c.labels))
            .collect();
        Ok(pod_members(pod, containers))
    }
}

/// Where containerd's shim has mounted the root filesystem of the task whose main process
/// is `pid` (container `id`): `rootfs` in the task's bundle, beside the bundle the shim
/// runs in (a pod's containers share their sandbox's shim), when that is the very
/// directory the process has as its root.
fn task_root(proc_root: &Path, pid: u32, id: &str) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return None;
    }
    let shim = crate::sys::proc_stat(proc_root, pid)?.parent;
    let bundle = std::fs::read_link(proc_root.join(format!("{shim}/cwd"))).ok()?;
    let root = bundle.parent()?.join(id).join("rootfs");
    let identity = |path: &Path| std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    let same = identity(&root)? == identity(&proc_root.join(format!("{pid}/root")))?;
    same.then_some(root)
}

/// The binds of an OCI runtime spec (`config.json`, as containerd keeps it with a
/// container): host source, destination, writable.
fn spec_binds(spec: &[u8]) -> Vec<(String, String, bool)> {
    #[derive(Deserialize)]
    struct Spec {
        #[serde(default)]
        mounts: Vec<SpecMount>,
    }
    #[derive(Deserialize)]
    struct SpecMount {
        destination: String,
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        source: String,
        #[serde(default)]
        options: Vec<String>,
    }
    let Ok(spec) = serde_json::from_slice::<Spec>(spec) else {
        return Vec::new();
    };
    spec.mounts
        .into_iter()
        .filter(|m| m.kind == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind"))
        .map(|m| {
            let writable = !m.options.iter().any(|o| o == "ro");
            (m.source, m.destination, writable)
        })
        .collect()
}

impl Provisioning for Containerd {
    async fn export(&self, container: &str, sink: &mpsc::Sender<Bytes>) -> Result<()> {
        let mounts = self.view_mounts(container).await?;
        let layers = mount_layers(&mounts).map_err(|why| anyhow!("{why}"))?;
        let sink = sink.clone();
        // A thread of its own: the walk blocks, and its overlay is attached nowhere.
        let (done, finished) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = done.send(archive_layers(&layers, &sink));
        });
        finished
            .await
            .map_err(|_| anyhow!("the export of `{container}` ended without a word"))?
    }

    async fn create_anchor(
        &self,
        image_id: &str,
        name: &str,
        labels: HashMap<String, String>,
        _idle: &Path,
    ) -> Result<String> {
        let found = self.found(image_id)?;
        self.hold(&found, name, labels).await?;
        Ok(name.to_string())
    }

    async fn remove_anchor(&self, anchor: &str) -> Result<()> {
        self.remove_container(anchor).await
    }

    async fn anchor_layers(&self, anchor: &str, count: usize) -> Result<Vec<PathBuf>> {
        let mounts = self.view_mounts(anchor).await?;
        let layers = mount_layers(&mounts).map_err(|why| anyhow!("{why}"))?;
        if layers.len() != count {
            bail!("containerd names {} for an image of {count}", layers.len());
        }
        Ok(layers)
    }

    async fn anchor_holds(&self, anchor: &str) -> Result<bool> {
        Ok(self.lease_namespace(anchor).await?.is_some())
    }
}

/// Writes the files of the layers `layers` (top first), stacked read-only, as a tar
/// archive into `sink`, chunk by chunk.
fn archive_layers(layers: &[PathBuf], sink: &mpsc::Sender<Bytes>) -> Result<()> {
    let stacked;
    let root = match layers {
        [only] => only.clone(),
        _ => {
            let layers: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
            stacked = crate::sys::detached_overlay(&layers)
                .map_err(|e| anyhow!("cannot stack the image's layers: {e}"))?;
            use std::os::fd::AsRawFd;
            PathBuf::from(format!("/proc/self/fd/{}", stacked.as_raw_fd()))
        }
    };
    let writer = SinkWriter {
        sink,
        buffer: Vec::with_capacity(CHUNK),
    };
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    let mut archive = LayerArchive {
        builder,
        linked: HashMap::new(),
    };
    for (path, name) in children(&root)? {
        archive.append(&path, &name).map_err(|e| {
            match e.get_ref().is_some_and(|inner| inner.is::<SinkClosed>()) {
                true => anyhow::Error::new(SinkClosed),
                false => anyhow!("cannot archive the image's layers: {e}"),
            }
        })?;
    }
    let mut writer = archive
        .builder
        .into_inner()
        .map_err(|e| anyhow!("cannot finish the archive: {e}"))?;
    writer.flush_chunk().map_err(|_| SinkClosed)?;
    Ok(())
}

/// The entries of directory `dir`, by name: their paths and names.
fn children(dir: &Path) -> std::io::Result<Vec<(PathBuf, PathBuf)>> {
    let mut children = std::fs::read_dir(dir)
        .map_err(|e| at(dir, e))?
        .map(|entry| entry.map(|entry| (entry.path(), PathBuf::from(entry.file_name()))))
        .collect::<std::io::Result<Vec<_>>>()?;
    children.sort();
    Ok(children)
}

/// The archive of an image's layers being written: the builder, and the first name of
/// each file with more than one link, by device and inode, to write the others as links.
struct LayerArchive<'a> {
    builder: tar::Builder<SinkWriter<'a>>,
    linked: HashMap<(u64, u64), PathBuf>,
}

impl LayerArchive<'_> {
    /// Appends the file at `path` as `name`, then a directory's entries; links are not
    /// followed. As `docker export` writes an image: a file's capabilities as a PAX
    /// `SCHILY.xattr.security.capability` record before it (`ping` works), a FIFO or a
    /// device under `name` (tar's builder names those by `path`), a second name of a file
    /// as a hard link; an overlay whiteout (a 0:0 device, in a layer read alone) and a
    /// socket, which no archive holds, are left out.
    fn append(&mut self, path: &Path, name: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let stat = std::fs::symlink_metadata(path).map_err(|e| at(path, e))?;
        let kind = stat.file_type();
        let whiteout = kind.is_char_device() && stat.rdev() == 0;
        if kind.is_socket() || whiteout {
            return Ok(());
        }
        if !kind.is_dir() && stat.nlink() > 1 {
            match self.linked.get(&(stat.dev(), stat.ino())) {
                Some(first) => {
                    let mut header = tar::Header::new_gnu();
                    header.set_metadata_in_mode(&stat, tar::HeaderMode::Complete);
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    return self.builder.append_link(&mut header, name, first);
                }
                None => {
                    self.linked
                        .insert((stat.dev(), stat.ino()), name.to_path_buf());
                }
            }
        }
        if let Some(capability) = capability(path).map_err(|e| at(path, e))? {
            let record = [("SCHILY.xattr.security.capability", capability.as_slice())];
            self.builder.append_pax_extensions(record)?;
        }
        let special = [
            (kind.is_fifo(), tar::EntryType::Fifo),
            (kind.is_char_device(), tar::EntryType::Char),
            (kind.is_block_device(), tar::EntryType::Block),
        ];
        match special.into_iter().find(|(is, _)| *is) {
            Some((_, entry_type)) => {
                let mut header = tar::Header::new_gnu();
                header.set_metadata_in_mode(&stat, tar::HeaderMode::Complete);
                header.set_entry_type(entry_type);
                header.set_size(0);
                let device = rustix::fs::Dev::from(stat.rdev());
                header.set_device_major(rustix::fs::major(device))?;
                header.set_device_minor(rustix::fs::minor(device))?;
                self.builder
                    .append_data(&mut header, name, std::io::empty())?;
            }
            None => self.builder.append_path_with_name(path, name)?,
        }
        if kind.is_dir() {
            for (child, child_name) in children(path)? {
                self.append(&child, &name.join(child_name))?;
            }
        }
        Ok(())
    }
}

/// `e`, which happened to the file at `path`, naming it.
fn at(path: &Path, e: impl Into<std::io::Error>) -> std::io::Error {
    let e = e.into();
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The file capabilities of the file at `path` (not followed), if it has any.
fn capability(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    const NAME: &str = "security.capability";
    let size = match rustix::fs::lgetxattr_query(path, NAME) {
        Ok(size) => size,
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut value = vec![0u8; size];
    let size = rustix::fs::lgetxattr(path, NAME, &mut value)?;
    value.truncate(size);
    Ok(Some(value))
}

/// The size of the chunks an export sends.
const CHUNK: usize = 1 << 16;

/// A writer that sends what it is given to a channel in chunks.
struct SinkWriter<'a> {
    sink: &'a mpsc::Sender<Bytes>,
    buffer: Vec<u8>,
}

impl SinkWriter<'_> {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK),
        ));
        self.sink
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::other(SinkClosed))
    }
}

impl std::io::Write for SinkWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK {
            self.flush_chunk()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry of an archive: its name, type and `SCHILY.xattr.` records.
    type Archived = (String, tar::EntryType, Vec<(String, Vec<u8>)>);

    /// The entries of the archive of `layers`.
    fn archived(layers: &[PathBuf]) -> Vec<Archived> {
        let (sink, mut chunks) = mpsc::channel(1024);
        archive_layers(layers, &sink).unwrap();
        drop(sink);
        let mut bytes = Vec::new();
        while let Ok(chunk) = chunks.try_recv() {
            bytes.extend_from_slice(&chunk);
        }
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut found = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let xattrs = match entry.pax_extensions().unwrap() {
                Some(records) => records
                    .map(|record| record.unwrap())
                    .filter_map(|record| {
                        let key = record.key().ok()?.strip_prefix("SCHILY.xattr.")?;
                        Some((key.to_string(), record.value_bytes().to_vec()))
                    })
                    .collect(),
                None => Vec::new(),
            };
            let name = entry.path().unwrap().display().to_string();
            found.push((name, entry.header().entry_type(), xattrs));
        }
        found
    }

    // Bug: a copy from containerd lost every file's capabilities, named a FIFO or a
    // device by the path it was read from, and copied each name of a file apart.
    #[test]
    fn a_layers_archive_keeps_xattrs_and_names_special_files_where_they_are() {
        if !crate::sys::is_root() {
            eprintln!("skipped: file capabilities and device nodes take root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("fs");
        std::fs::create_dir_all(layer.join("usr/bin")).unwrap();
        std::fs::write(layer.join("usr/bin/ping"), "ping").unwrap();
        let capability: &[u8] = &[
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        rustix::fs::setxattr(
            layer.join("usr/bin/ping"),
            "security.capability",
            capability,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::setxattr(
            layer.join("usr"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let node = |name: &str, kind, device| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                layer.join(name),
                kind,
                rustix::fs::Mode::from_raw_mode(0o640),
                device,
            )
            .unwrap()
        };
        node("pipe", rustix::fs::FileType::Fifo, 0);
        node(
            "null",
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::makedev(1, 3),
        );
        // A whiteout, as containerd leaves them in a layer applied alone.
        node("gone", rustix::fs::FileType::CharacterDevice, 0);
        std::fs::hard_link(layer.join("usr/bin/ping"), layer.join("usr/bin/ping6")).unwrap();
        let found = archived(std::slice::from_ref(&layer));
        let names: Vec<&str> = found.iter().map(|(name, ..)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "null",
                "pipe",
                "usr",
                "usr/bin",
                "usr/bin/ping",
                "usr/bin/ping6"
            ]
        );
        assert_eq!(found[5].1, tar::EntryType::Link);
        let (_, kind, xattrs) = &found[4];
        assert_eq!(*kind, tar::EntryType::Regular);
        assert_eq!(
            xattrs,
            &[("security.capability".to_string(), capability.to_vec())]
        );
        assert_eq!(found[0].1, tar::EntryType::Char);
        assert_eq!(found[1].1, tar::EntryType::Fifo);
        // overlayfs's own attributes say how a layer stacks: not the image's.
        assert!(found[2].2.is_empty(), "{:?}", found[2]);
    }

    #[test]
    fn references_are_named_as_containerd_stores_them() {
        for (given, stored) in [
            ("debian:12", "docker.io/library/debian:12"),
            ("busybox", "docker.io/library/busybox:latest"),
            ("user/tools:1", "docker.io/user/tools:1"),
            ("quay.io/fedora/fedora:40", "quay.io/fedora/fedora:40"),
            ("localhost/tools", "localhost/tools:latest"),
            ("registry:5000/tools", "registry:5000/tools:latest"),
            ("debian@sha256:0123", "docker.io/library/debian@sha256:0123"),
        ] {
            assert_eq!(normalized(given), stored, "{given}");
        }
    }

    // Values from `ctr snapshots ls` of an image with two layers.
    #[test]
    fn the_top_snapshot_is_named_by_the_chain_id() {
        let one = "sha256:aaaa".to_string();
        assert_eq!(chain_id(std::slice::from_ref(&one)), Some(one.clone()));
        let two = vec![one.clone(), "sha256:bbbb".to_string()];
        assert_eq!(chain_id(&two), Some(digest(b"sha256:aaaa sha256:bbbb")));
        assert_eq!(chain_id(&[]), None);
    }

    #[test]
    fn an_index_leads_to_this_platforms_manifest_and_a_manifest_to_its_config() {
        let arch = architecture();
        let index = format!(
            r#"{{"manifests":[
                {{"mediaType":"m","digest":"sha256:other","size":1,"platform":{{"architecture":"s390x","os":"linux"}}}},
                {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:mine","size":2,"platform":{{"architecture":"{arch}","os":"linux"}}}}]}}"#
        );
        let step = manifest_step(
            "application/vnd.oci.image.index.v1+json",
            index.as_bytes(),
            "x",
        )
        .unwrap();
        let Step::Index(chosen) = step else {
            panic!("{step:?}")
        };
        assert_eq!(chosen.digest, "sha256:mine");
        let manifest = br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"c","digest":"sha256:config","size":3},"layers":[]}"#;
        let step = manifest_step("", manifest, "x").unwrap();
        assert!(
            matches!(step, Step::Config(ref c, ref l) if c.digest == "sha256:config" && l.is_empty())
        );
        let error = manifest_step("text/plain", b"{}", "x").unwrap_err();
        assert!(format!("{error}").contains("`text/plain`"), "{error}");
    }

    #[test]
    fn a_views_mounts_name_its_layers_top_first() {
        let mount = |kind: &str, source: &str, options: &[&str]| Mount {
            r#type: kind.to_string(),
            source: source.to_string(),
            target: String::new(),
            options: options.iter().map(|o| o.to_string()).collect(),
        };
        assert_eq!(
            mount_layers(&[mount("bind", "/s/1/fs", &["ro", "rbind"])]),
            Ok(vec![PathBuf::from("/s/1/fs")])
        );
        assert_eq!(
            mount_layers(&[mount(
                "overlay",
                "overlay",
                &["index=off", "lowerdir=/s/2/fs:/s/1/fs"]
            )]),
            Ok(vec![PathBuf::from("/s/2/fs"), PathBuf::from("/s/1/fs")])
        );
        let relative = mount("overlay", "overlay", &["lowerdir=2/fs:1/fs"]);
        let err = mount_layers(&[relative]).unwrap_err();
        assert_eq!(
            err,
            "containerd names layer `2/fs`, which is not an absolute path"
        );
        assert!(mount_layers(&[]).is_err());
        assert!(mount_layers(&[mount("btrfs", "/dev/x", &[])]).is_err());
    }
}
