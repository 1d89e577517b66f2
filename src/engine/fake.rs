//! A container engine in memory, for unit tests of what drives an engine: images by
//! reference, containers with labels, and an export that streams a given archive, or fails
//! or stalls where a test says. It records what is left in it, so a test can check that
//! nothing was.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::engine::{
    Attached, ContainerInfo, ContainerSpec, Engine, ExecState, Process, Provisioning, SinkClosed,
    SpcRuntime,
};
use crate::model::image::{Image, ImageRef};
use crate::sys::{Entry, Kind};

/// How an export goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// The whole archive, in chunks.
    Whole,
    /// The first N bytes, then an error, as a daemon that died mid-export.
    FailAfter(usize),
    /// The first N bytes, then nothing ever again, as a stalled daemon.
    StallAfter(usize),
}

pub struct Fake {
    /// Images by reference.
    pub images: HashMap<String, Image>,
    /// What every container's export holds.
    pub archive: Vec<u8>,
    pub export: Export,
    /// Containers in it: ID and labels.
    pub containers: Mutex<BTreeMap<String, HashMap<String, String>>>,
    /// Set once an export has started (its thread's ID), for tests that act then.
    pub exporting: Mutex<Option<i32>>,
    /// The layers an anchor holds, where the engine names them (as containerd does).
    pub anchor_layers: Option<Vec<std::path::PathBuf>>,
    /// The anchors started, in order.
    pub started: Mutex<Vec<String>>,
    created: AtomicUsize,
}

impl Fake {
    /// An engine with `image` under `reference`, whose containers export `archive`.
    pub fn with_image(reference: &str, image: Image, archive: Vec<u8>) -> Fake {
        Fake {
            images: HashMap::from([(reference.to_string(), image)]),
            archive,
            export: Export::Whole,
            containers: Mutex::new(BTreeMap::new()),
            exporting: Mutex::new(None),
            anchor_layers: None,
            started: Mutex::new(Vec::new()),
            created: AtomicUsize::new(0),
        }
    }

    /// The IDs of the containers it holds.
    pub fn container_ids(&self) -> Vec<String> {
        self.containers.lock().unwrap().keys().cloned().collect()
    }
}

/// Chunks an export is sent in: small, so a test's archive spans several.
const CHUNK: usize = 512;

impl Engine for &Fake {
    fn name(&self) -> &str {
        "the Docker daemon"
    }

    fn client(&self) -> &str {
        "docker"
    }

    fn address(&self) -> &str {
        "fake://"
    }

    fn is_local(&self) -> bool {
        true
    }

    async fn image(&self, reference: &str) -> Result<Option<Image>> {
        Ok(self.images.get(reference).cloned())
    }

    async fn pull(&self, image: &ImageRef, _quiet: bool) -> Result<()> {
        bail!(
            "cannot pull image `{}`: no registry here",
            image.reference()
        )
    }

    // It runs nothing: super privileged containers are tested end to end.

    async fn container(&self, _name: &str) -> Result<Option<ContainerInfo>> {
        Ok(None)
    }

    async fn labelled_containers(
        &self,
        label: &str,
        value: Option<&str>,
    ) -> Result<Vec<(String, HashMap<String, String>)>> {
        Ok(self
            .containers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, labels)| {
                labels
                    .get(label)
                    .is_some_and(|found| value.is_none_or(|value| found == value))
            })
            .map(|(id, labels)| (id.clone(), labels.clone()))
            .collect())
    }

    async fn remove_container(&self, container: &str) -> Result<()> {
        self.containers.lock().unwrap().remove(container);
        Ok(())
    }

    async fn create_container(
        &self,
        image_id: &str,
        labels: HashMap<String, String>,
    ) -> Result<String> {
        if !self.images.values().any(|image| image.id == image_id) {
            bail!("no such image: {image_id}");
        }
        let id = format!("fake{}", self.created.fetch_add(1, Ordering::SeqCst));
        self.containers.lock().unwrap().insert(id.clone(), labels);
        Ok(id)
    }

    async fn path_entry(&self, container: &str, path: &str) -> Result<Entry> {
        if !self.containers.lock().unwrap().contains_key(container) {
            bail!("no such container: {container}");
        }
        let wanted = path.trim_matches('/');
        let mut archive = tar::Archive::new(self.archive.as_slice());
        for entry in archive.entries()? {
            let entry = entry?;
            let name = entry.path()?.to_string_lossy().into_owned();
            let name = name.trim_start_matches("./").trim_end_matches('/');
            if name == wanted {
                let header = entry.header();
                return Ok(match header.entry_type() {
                    tar::EntryType::Symlink => Entry::Link(
                        entry
                            .link_name()?
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned(),
                    ),
                    tar::EntryType::Directory => Entry::Found(Kind::Directory),
                    tar::EntryType::Fifo => Entry::Found(Kind::Fifo),
                    tar::EntryType::Char => Entry::Found(Kind::CharDevice),
                    tar::EntryType::Block => Entry::Found(Kind::BlockDevice),
                    _ => Entry::Found(Kind::Regular),
                });
            }
            if wanted.is_empty() || name.starts_with(&format!("{wanted}/")) {
                return Ok(Entry::Found(Kind::Directory));
            }
        }
        Ok(Entry::Missing)
    }
}

impl Provisioning for &Fake {
    async fn export(&self, container: &str, sink: &mpsc::Sender<Bytes>) -> Result<()> {
        if !self.containers.lock().unwrap().contains_key(container) {
            bail!("no such container: {container}");
        }
        *self.exporting.lock().unwrap() = Some(rustix::thread::gettid().as_raw_nonzero().get());
        let limit = match self.export {
            Export::Whole => self.archive.len(),
            Export::FailAfter(n) | Export::StallAfter(n) => n.min(self.archive.len()),
        };
        for chunk in self.archive[..limit].chunks(CHUNK) {
            sink.send(Bytes::copy_from_slice(chunk))
                .await
                .map_err(|_| SinkClosed)?;
        }
        match self.export {
            Export::Whole => Ok(()),
            Export::FailAfter(_) => Err(anyhow!("the export stopped: the daemon went away")),
            Export::StallAfter(_) => std::future::pending().await,
        }
    }

    /// An anchor's ID is its name, for tests to see.
    async fn create_anchor(
        &self,
        image_id: &str,
        name: &str,
        labels: HashMap<String, String>,
        _idle: &std::path::Path,
    ) -> Result<String> {
        if !self.images.values().any(|image| image.id == image_id) {
            bail!("no such image: {image_id}");
        }
        let mut containers = self.containers.lock().unwrap();
        if containers.contains_key(name) {
            bail!("the container name `{name}` is already in use");
        }
        containers.insert(name.to_string(), labels);
        Ok(name.to_string())
    }

    async fn start_anchor(&self, anchor: &str) -> Result<()> {
        self.started.lock().unwrap().push(anchor.to_string());
        Ok(())
    }

    /// The layers set for every anchor; without them, an anchor shows none, as an engine
    /// that keeps no snapshots.
    async fn anchor_layers(&self, _anchor: &str, count: usize) -> Result<Vec<std::path::PathBuf>> {
        let Some(layers) = &self.anchor_layers else {
            bail!("{} shows no layers of a container", self.name());
        };
        if layers.len() != count {
            bail!(
                "{} names {} for an image of {count}",
                self.name(),
                layers.len()
            );
        }
        Ok(layers.clone())
    }
}

impl SpcRuntime for &Fake {
    async fn containers_with_label(&self, _label: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    async fn create_spc(&self, _spec: &ContainerSpec) -> Result<String> {
        bail!(RUNS_NOTHING)
    }

    async fn start(&self, _container: &str) -> Result<()> {
        bail!(RUNS_NOTHING)
    }

    async fn stop(&self, _container: &str, _grace: std::time::Duration) -> Result<()> {
        bail!(RUNS_NOTHING)
    }

    async fn attach(&self, _container: &str) -> Result<Attached> {
        bail!(RUNS_NOTHING)
    }

    async fn wait(&self, _container: &str) -> Result<i64> {
        bail!(RUNS_NOTHING)
    }

    async fn exec(&self, _container: &str, _session: &Process) -> Result<(String, Attached)> {
        bail!(RUNS_NOTHING)
    }

    async fn exec_state(&self, _exec: &str) -> Result<ExecState> {
        bail!(RUNS_NOTHING)
    }

    async fn resize(&self, _container: &str, _exec: Option<&str>, _size: (u16, u16)) -> Result<()> {
        bail!(RUNS_NOTHING)
    }

    async fn kill(&self, _container: &str, _signal: i32) -> Result<()> {
        bail!(RUNS_NOTHING)
    }

    async fn changed_paths(&self, _container: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

const RUNS_NOTHING: &str = "the fake engine runs no containers";
