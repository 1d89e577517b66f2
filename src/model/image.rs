//! image: images by name, as configured (`IMAGE:TAG`, `IMAGE@DIGEST`), and as an engine
//! describes one it has (ID, storage driver, layer directories, `RUN` label).

use std::path::PathBuf;

use anyhow::{Result, bail};
use sha2::{Digest, Sha256};

/// The digest of a blob as images name it: `sha256:` and the hex of its SHA-256.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// `bytes` in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This machine's architecture as image platforms name it (`amd64`, `arm64`: Go's names).
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// An image reference split the way the CoreOS script combined it: `IMAGE:TAG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub repository: String,
    /// A tag, or a digest such as `sha256:...`.
    pub tag: String,
}

impl ImageRef {
    /// `image` may carry its own tag (`debian:bookworm`) or digest (`debian@sha256:...`),
    /// which then wins over `default_tag`. A registry port (`host:5000/img`) is not a tag.
    pub fn parse(image: &str, default_tag: &str) -> Result<ImageRef> {
        if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("invalid image name `{}`", crate::host::ui::escaped(image));
        }
        if let Some((repository, digest)) = image.split_once('@') {
            return Ok(ImageRef {
                repository: repository.into(),
                tag: digest.into(),
            });
        }
        let last_slash = image.rfind('/').map_or(0, |i| i + 1);
        if let Some(colon) = image[last_slash..].rfind(':') {
            let (repository, tag) = image.split_at(last_slash + colon);
            return Ok(ImageRef {
                repository: repository.into(),
                tag: tag[1..].into(),
            });
        }
        if default_tag.is_empty() {
            bail!("image `{image}` has no tag and TOOLBOX_DOCKER_TAG is empty");
        }
        Ok(ImageRef {
            repository: image.into(),
            tag: default_tag.into(),
        })
    }

    fn is_digest(&self) -> bool {
        self.tag.contains(':')
    }

    /// The reference to give the engine: `repo:tag` or `repo@digest`.
    pub fn reference(&self) -> String {
        let separator = if self.is_digest() { '@' } else { ':' };
        format!("{}{separator}{}", self.repository, self.tag)
    }
}

/// An image as the engine has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The engine's ID (`sha256:...`).
    pub id: String,
    /// Where the engine keeps its layers, as overlay storage would mount them.
    pub layers: Layers,
    /// Its `RUN` label: the `docker run` options it asks to be run with.
    pub run_label: Option<String>,
    /// Where the engine found it, where it looks in more than one place (containerd's
    /// namespaces), for `-v`.
    pub found_in: Option<String>,
}

/// Where an engine keeps an image's layers, in terms overlay storage can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layers {
    /// Directories on the engine's host that overlayfs can stack, top layer first.
    Directories(Vec<PathBuf>),
    /// Snapshots the engine mounts only beneath a container (Docker's containerd image
    /// store, snapshotter `overlayfs`): the image's layers (this many diffs, and maybe
    /// more snapshots) are the directories of a running container's root mount below the
    /// layer the engine adds for the container itself.
    Snapshots(usize),
    /// None that toolbox can mount: why, naming the engine (`the Docker daemon stores
    /// images with `vfs``).
    Unavailable(String),
}
