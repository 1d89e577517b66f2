//! import: toolboxes from image archives, with no engine contacted. Reads `docker save`
//! archives (the legacy layout with `manifest.json` and per-layer `layer.tar`, and the OCI
//! layout newer Docker writes, blobs under `blobs/sha256/`), OCI image layouts (a
//! directory or a tar with `oci-layout` and `index.json`), and plain root filesystem
//! tarballs (`docker export`, `debootstrap | tar`); any of them gzip-compressed. The kind
//! is told from the content, never the file name.
//!
//! Image layers are applied in manifest order by [`unpack::apply_layer`] (whiteouts and
//! opaque directories as the engines apply them, the unpacker's containment rules for
//! every entry), each streamed from the archive while its digests are checked: the blob's
//! own (content-addressed names), and its uncompressed digest against the image config's
//! `diff_ids`. A mismatch fails the import, and the partial tree goes with it. Nothing is
//! held in memory but the small JSON documents; an archive that must be read twice
//! (standard input, or compressed) is first copied, decompressed, into the toolbox
//! directory and removed afterwards. This module never writes outside that directory.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use std::time::SystemTime;

use crate::exit::Interrupted;
use crate::model::image::{architecture, digest, hex};
use crate::store::toolboxes::{self, Metadata, State};
use crate::store::unpack;
use crate::sys::signals::{Interruptible, Interruption};

/// The largest JSON document (manifest, index, config) read from an archive.
const MAX_JSON: u64 = 16 << 20;
/// Read-buffer size for archives and layers.
const BLOCK: usize = 256 * 1024;
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
/// How much of an archive's start is looked at to tell its kind: a few headers, in case
/// the first ones are only the archive's root directory.
const HEAD: usize = 4 * 512;
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// An image found in an archive: its name if it carries one, its ID (the config digest),
/// and its layers, bottom first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub reference: Option<String>,
    pub id: String,
    layers: Vec<Layer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Layer {
    /// Where the blob is: a name inside the archive (or layout directory).
    path: String,
    /// The blob's own digest, when its name or descriptor gives one.
    digest: Option<String>,
    /// The digest of the uncompressed layer, from the config's `diff_ids`.
    diff_id: Option<String>,
}

/// What an archive turned out to be.
pub enum Archive {
    /// An image: layers to apply from `source`.
    Image(ImageInfo, Source),
    /// A root filesystem tarball, to unpack as it is.
    RootFs(Box<dyn Read>),
}

/// A readable image archive: a tar file with an index of its members, or an OCI layout
/// directory.
pub enum Source {
    Tar {
        file: File,
        members: HashMap<String, (u64, u64)>,
    },
    Directory(PathBuf),
}

/// How messages name `input`.
fn label(input: &Path) -> String {
    match input == Path::new("-") {
        true => "standard input".to_string(),
        false => input.display().to_string(),
    }
}

/// Reads `input` (a file, an OCI layout directory, or `-` for standard input) and tells
/// what it holds. `spool` is where a copy may be made (inside the toolbox directory); the
/// caller removes it.
pub fn open(input: &Path, spool: &Path) -> Result<Archive> {
    let label = label(input);
    if input != Path::new("-") && input.is_dir() {
        let source = Source::Directory(input.to_path_buf());
        let image = read_oci_layout(&source)
            .with_context(|| format!("{label}: not an OCI image layout"))?;
        return Ok(Archive::Image(image, source));
    }
    let (raw, plain_file): (Box<dyn Read>, Option<File>) = if input == Path::new("-") {
        (Box::new(Interruptible(io::stdin())), None)
    } else {
        let file = File::open(input).with_context(|| format!("cannot open {label}"))?;
        (Box::new(Interruptible(file.try_clone()?)), Some(file))
    };
    let mut raw = BufReader::with_capacity(BLOCK, raw);
    let compressed = starts_with(&mut raw, GZIP_MAGIC)?;
    let mut stream: Box<dyn Read> = match compressed {
        true => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        false => Box::new(raw),
    };
    // The first headers tell an image archive from a root filesystem.
    let mut head = Vec::with_capacity(HEAD);
    (&mut stream)
        .take(HEAD as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("cannot read {label}"))?;
    if head.is_empty() {
        bail!(
            "{label} is empty; expected a tar archive (a root filesystem, or an image from \
             `docker save` or `podman save`)"
        );
    }
    let mut stream: Box<dyn Read> = Box::new(io::Cursor::new(head.clone()).chain(stream));
    if !is_image_archive(&head) {
        return Ok(Archive::RootFs(stream));
    }
    // An image archive is read twice (the manifest comes last): it must be a plain file.
    let file = match (plain_file, compressed) {
        (Some(file), false) => file,
        _ => {
            let mut copy = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(spool)
                .with_context(|| format!("cannot create {}", spool.display()))?;
            io::copy(&mut stream, &mut copy)
                .with_context(|| format!("cannot copy {label} to {}", spool.display()))?;
            copy
        }
    };
    let source = index_tar(file).with_context(|| format!("cannot read {label}"))?;
    let image = match &source {
        Source::Tar { members, .. } if members.contains_key("manifest.json") => {
            read_docker_save(&source)
        }
        _ => read_oci_layout(&source),
    }
    .with_context(|| format!("{label}: not a usable image archive"))?;
    Ok(Archive::Image(image, source))
}

fn starts_with(reader: &mut impl BufRead, magic: &[u8]) -> io::Result<bool> {
    Ok(reader.fill_buf()?.starts_with(magic))
}

/// Whether a tar stream is an image archive rather than a root filesystem, from its first
/// header: image archives start with members named by digests, `blobs/`, or their JSON
/// documents; root filesystems with `./` or a top directory.
fn is_image_archive(head: &[u8]) -> bool {
    let hex = |text: &str| text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
    // Past the archive's own root (`./`, as `tar -C dir -c .` writes first), each
    // header's first name component: `<hex>/` (Docker's layer directories), `<hex>.json`
    // (its config), `<hex>.tar` (Podman's layers), or the layouts' own files.
    for header in head.chunks_exact(512) {
        let first = header_name(header)
            .trim_start_matches("./")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        if first.is_empty() || first == "." {
            continue;
        }
        return hex(first.split('.').next().unwrap_or_default())
            || matches!(
                first.as_str(),
                "blobs" | "manifest.json" | "index.json" | "oci-layout" | "repositories"
            );
    }
    false
}

/// The name field of a tar header.
fn header_name(header: &[u8]) -> &str {
    let field = &header[..header.len().min(100)];
    let name = &field[..field.iter().position(|&b| b == 0).unwrap_or(field.len())];
    std::str::from_utf8(name).unwrap_or_default()
}

/// Indexes a tar file's regular members: name (without `./`) to data offset and size.
fn index_tar(mut file: File) -> Result<Source> {
    file.seek(SeekFrom::Start(0))?;
    let mut members = HashMap::new();
    let mut links = Vec::new();
    let mut archive = tar::Archive::new(file.try_clone()?);
    let mut next_header = 0;
    for entry in archive.entries_with_seek()? {
        let entry = entry.map_err(|e| unpack::not_a_header(e, next_header))?;
        next_header = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = name.trim_start_matches("./").to_string();
        let kind = entry.header().entry_type();
        if kind.is_file() {
            members.insert(name, (entry.raw_file_position(), entry.size()));
        } else if kind.is_symlink() || kind.is_hard_link() {
            // `docker save` links a layer it already wrote instead of writing it again.
            if let Some(target) = entry.link_name_bytes() {
                let target = String::from_utf8_lossy(&target).into_owned();
                links.push((name, kind.is_symlink(), target));
            }
        }
    }
    for (name, relative, target) in links {
        let mut parts: Vec<&str> = match relative {
            true => name.split('/').collect(),
            false => vec![""],
        };
        parts.pop();
        for part in target.trim_start_matches("./").split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                part => parts.push(part),
            }
        }
        if let Some(&member) = members.get(&parts.join("/")) {
            members.insert(name, member);
        }
    }
    Ok(Source::Tar { file, members })
}

impl Source {
    /// A member's bytes, as a reader.
    fn open(&self, name: &str) -> Result<Box<dyn Read + '_>> {
        match self {
            Source::Tar { file, members } => {
                let &(offset, size) = members
                    .get(name)
                    .ok_or_else(|| anyhow!("the archive has no `{name}`"))?;
                let mut file = file.try_clone()?;
                file.seek(SeekFrom::Start(offset))?;
                Ok(Box::new(Interruptible(file.take(size))))
            }
            Source::Directory(dir) => {
                // Names come from the layout's own documents: only plain relative names
                // made of safe components are opened.
                let safe = name.split('/').all(|part| {
                    !part.is_empty()
                        && part != "."
                        && part != ".."
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                });
                if !safe {
                    bail!("refusing the blob name `{name}`");
                }
                let path = dir.join(name);
                let file =
                    File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
                Ok(Box::new(Interruptible(file)))
            }
        }
    }

    /// A small JSON document, parsed, refusing one larger than [`MAX_JSON`].
    fn json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<(T, Vec<u8>)> {
        let mut bytes = Vec::new();
        self.open(name)?
            .take(MAX_JSON + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_JSON {
            bail!("`{name}` is larger than {} MiB", MAX_JSON >> 20);
        }
        let value =
            serde_json::from_slice(&bytes).with_context(|| format!("`{name}` is not valid"))?;
        Ok((value, bytes))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// `sha256:<64 hex>` as a blob name inside an OCI layout, refusing anything else.
fn blob_path(digest: &str) -> Result<String> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| anyhow!("unsupported digest `{digest}` (only sha256 is)"))?;
    Ok(format!("blobs/sha256/{hex}"))
}

/// The digest a content-addressed member name states: `blobs/sha256/<hex>` or
/// `<hex>.json` / `<hex>/...` in a legacy archive.
fn named_digest(path: &str) -> Option<String> {
    let hex = path
        .strip_prefix("blobs/sha256/")
        .or_else(|| path.strip_suffix(".json"))?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256:{hex}"))
}

/// A `docker save` archive: the first image of `manifest.json`.
fn read_docker_save(source: &Source) -> Result<ImageInfo> {
    let (manifests, _) = source.json::<Vec<SaveManifest>>("manifest.json")?;
    let manifest = manifests
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("`manifest.json` lists no image"))?;
    let (config, bytes) = source.json::<Config>(&manifest.config)?;
    let id = digest(&bytes);
    if let Some(named) = named_digest(&manifest.config)
        && named != id
    {
        bail!(
            "the image config `{}` does not match its digest",
            manifest.config
        );
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        bail!(
            "the config lists {} layers, the manifest {}",
            config.rootfs.diff_ids.len(),
            manifest.layers.len()
        );
    }
    let layers = manifest
        .layers
        .iter()
        .zip(config.rootfs.diff_ids)
        .map(|(path, diff_id)| Layer {
            digest: path
                .starts_with("blobs/")
                .then(|| named_digest(path))
                .flatten(),
            path: path.clone(),
            diff_id: Some(diff_id),
        })
        .collect();
    Ok(ImageInfo {
        reference: manifest.repo_tags.and_then(|tags| tags.into_iter().next()),
        id,
        layers,
    })
}

/// An OCI image layout: the image of `index.json` for this host's platform (or its only
/// one), through one level of nested index.
fn read_oci_layout(source: &Source) -> Result<ImageInfo> {
    let (index, _) = source.json::<Index>("index.json")?;
    let mut descriptor = pick(index.manifests)?;
    let reference = descriptor
        .annotations
        .get("io.containerd.image.name")
        .or_else(|| {
            descriptor
                .annotations
                .get("org.opencontainers.image.ref.name")
        })
        .cloned();
    if descriptor.media_type.ends_with("image.index.v1+json")
        || descriptor.media_type.ends_with("manifest.list.v2+json")
    {
        let (nested, bytes) = source.json::<Index>(&blob_path(&descriptor.digest)?)?;
        check_digest(&descriptor.digest, &bytes, "the image index")?;
        descriptor = pick(nested.manifests)?;
    }
    let (manifest, bytes) = source.json::<OciManifest>(&blob_path(&descriptor.digest)?)?;
    check_digest(&descriptor.digest, &bytes, "the image manifest")?;
    let (config, bytes) = source.json::<Config>(&blob_path(&manifest.config.digest)?)?;
    check_digest(&manifest.config.digest, &bytes, "the image config")?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        bail!(
            "the config lists {} layers, the manifest {}",
            config.rootfs.diff_ids.len(),
            manifest.layers.len()
        );
    }
    let mut layers = Vec::new();
    for (layer, diff_id) in manifest.layers.iter().zip(config.rootfs.diff_ids) {
        if layer.media_type.contains("zstd") {
            bail!(
                "layer {} is zstd-compressed, which toolbox cannot read",
                layer.digest
            );
        }
        layers.push(Layer {
            path: blob_path(&layer.digest)?,
            digest: Some(layer.digest.clone()),
            diff_id: Some(diff_id),
        });
    }
    Ok(ImageInfo {
        reference,
        id: manifest.config.digest,
        layers,
    })
}

fn check_digest(expected: &str, bytes: &[u8], what: &str) -> Result<()> {
    if digest(bytes) != expected {
        bail!("{what} does not match its digest {expected}");
    }
    Ok(())
}

/// The manifest for this machine's platform (linux/amd64 on x86_64), else the only one.
fn pick(mut manifests: Vec<Descriptor>) -> Result<Descriptor> {
    let here = manifests.iter().position(|m| {
        m.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == architecture())
    });
    match (here, manifests.len()) {
        (Some(i), _) => Ok(manifests.swap_remove(i)),
        (None, 1) => Ok(manifests.remove(0)),
        (None, 0) => bail!("the index lists no image"),
        (None, n) => bail!("the index lists {n} images and none for this platform"),
    }
}

/// A reader that hashes what passes through it and, once drained, compares the digest.
struct Verified<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: Read> Verified<R> {
    fn new(inner: R) -> Self {
        Verified {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads what is left and checks the whole against `expected`, if there is one.
    fn finish(mut self, expected: Option<&str>, what: &str) -> Result<()> {
        io::copy(&mut self, &mut io::sink())?;
        let digest = format!("sha256:{}", hex(&self.hasher.finalize()));
        match expected {
            Some(expected) if expected != digest => {
                bail!("{what} does not match its digest: expected {expected}, read {digest}")
            }
            _ => Ok(()),
        }
    }
}

/// Applies the image's layers, bottom first, to the empty tree at `target`, checking each
/// blob's digest and its uncompressed digest as it streams.
pub fn apply(
    image: &ImageInfo,
    source: &Source,
    target: &Path,
    options: unpack::Options,
) -> Result<unpack::Stats> {
    let mut total = unpack::Stats::default();
    for (number, layer) in image.layers.iter().enumerate() {
        let what = format!("layer {} (`{}`)", number + 1, layer.path);
        let mut blob = Verified::new(BufReader::with_capacity(BLOCK, source.open(&layer.path)?));
        let compressed = starts_with(&mut blob.inner, GZIP_MAGIC)?;
        if starts_with(&mut blob.inner, ZSTD_MAGIC)? {
            bail!("{what} is zstd-compressed, which toolbox cannot read");
        }
        let stats = {
            let tar: Box<dyn Read> = match compressed {
                true => Box::new(flate2::read::MultiGzDecoder::new(&mut blob)),
                false => Box::new(&mut blob),
            };
            let mut diff = Verified::new(tar);
            let stats = unpack::apply_layer(&mut diff, target, options)
                .with_context(|| format!("cannot apply {what}"))?;
            diff.finish(layer.diff_id.as_deref(), &format!("{what}, uncompressed,"))?;
            stats
        };
        blob.finish(layer.digest.as_deref(), &what)?;
        total.entries += stats.entries;
        total.bytes += stats.bytes;
    }
    Ok(total)
}

/// What `toolbox import` made.
#[derive(Debug)]
pub struct Imported {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub stats: unpack::Stats,
}

/// Creates a toolbox in `directory` from the archive `input`. `name_for` turns the image's
/// name (`None` for a root filesystem tarball) into the toolbox's directory name. The
/// toolbox appears whole, or not at all; an existing one is left alone.
pub fn create(
    input: &Path,
    directory: &Path,
    name_for: impl FnOnce(Option<&str>) -> Result<String>,
) -> Result<Imported> {
    toolboxes::make_directory(directory)?;
    remove_stale_spools(directory)?;
    let spool = directory.join(format!("{SPOOL_PREFIX}{}", std::process::id()));
    // Ctrl-C, SIGTERM and SIGHUP stop the reading; the partial tree and the copy go, and
    // toolbox exits 128 + the signal.
    let caught = Interruption::catch();
    let imported = create_spooled(input, directory, &spool, name_for);
    match fs::remove_file(&spool) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", spool.display()))?
        }
        _ => {}
    }
    drop(caught);
    match crate::sys::signals::interrupted() {
        Some(signal) => Err(Interrupted(signal).into()),
        None => imported,
    }
}

/// Copies of archives being imported: `.import-PID` in the toolbox directory.
const SPOOL_PREFIX: &str = ".import-";

/// Removes the copies left by imports that were killed.
fn remove_stale_spools(directory: &Path) -> Result<()> {
    for entry in fs::read_dir(directory)? {
        let entry = entry?;
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(SPOOL_PREFIX))
            .and_then(|pid| pid.parse().ok());
        if pid.is_some_and(|pid| !crate::sys::process_exists(pid)) {
            fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn create_spooled(
    input: &Path,
    directory: &Path,
    spool: &Path,
    name_for: impl FnOnce(Option<&str>) -> Result<String>,
) -> Result<Imported> {
    let archive = open(input, spool)?;
    let (reference, image_id) = match &archive {
        Archive::Image(image, _) => (image.reference.clone(), image.id.clone()),
        Archive::RootFs(_) => (None, String::new()),
    };
    // Stored and printed whatever `--name` says: an image name it must be.
    if let Some(reference) = &reference {
        crate::model::image::ImageRef::parse(reference, "latest").map_err(|_| {
            anyhow!(
                "{}: the archive names its image `{}`, which is not an image name",
                label(input),
                crate::host::ui::escaped(reference)
            )
        })?;
    }
    let name = name_for(reference.as_deref())?;
    let _lock = toolboxes::lock_for_create(directory, &name)?;
    let path = directory.join(&name);
    if !matches!(toolboxes::state(&path)?, State::Missing | State::Empty) {
        bail!(
            "{} already exists; remove it first (`toolbox rm {name}`) or choose another --name",
            path.display()
        );
    }
    toolboxes::remove_partials(directory, &name)?;
    let source = match input == Path::new("-") {
        true => "standard input".to_string(),
        false => fs::canonicalize(input)
            .unwrap_or_else(|_| input.to_path_buf())
            .display()
            .to_string(),
    };
    let image = reference.unwrap_or_else(|| source.clone());
    let options = unpack::Options::for_this_host();
    let mut stats = unpack::Stats::default();
    let partial = toolboxes::build_partial(directory, &name, |partial| {
        stats = match archive {
            Archive::Image(image, source) => apply(&image, &source, partial, options)?,
            Archive::RootFs(reader) => unpack::unpack(reader, partial, options)
                .with_context(|| format!("cannot unpack {}", label(input)))?,
        };
        if stats.entries == 0 {
            bail!(
                "{} holds no files: an empty tar archive makes no toolbox",
                label(input)
            );
        }
        let metadata = Metadata {
            image: image.clone(),
            image_id: image_id.clone(),
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            overlay: None,
            imported_from: Some(source.clone()),
        };
        toolboxes::complete(partial, &metadata)
    })?;
    if let Err(e) = toolboxes::install(&partial, &path) {
        let _ = fs::remove_dir_all(&partial);
        return Err(e);
    }
    Ok(Imported {
        name,
        image,
        image_id,
        stats,
    })
}

#[cfg(test)]
mod tests;
