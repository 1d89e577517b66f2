//! overlay: the overlay storage mode. An overlay toolbox's directory holds the metadata
//! file, `upper/` (every change made inside the toolbox), `work/` (overlayfs's scratch
//! space) and `root/`, the mount point systemd-nspawn enters; the image's files stay in the
//! engine's own layer directories (Docker's overlay2, its containerd store's snapshots,
//! Podman's overlay), mounted read-only beneath `upper/`, as the engine mounts them for a
//! container. This module decides whether that can work here,
//! builds the mount options, and mounts and unmounts. Callers hold the toolbox's mount
//! lock, so one `upper/` is never mounted twice. It never writes to a layer directory.

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::model::image::{Image, Layers};
use crate::sys;

/// The mount point inside an overlay toolbox's directory.
pub const ROOT: &str = crate::model::plan::OVERLAY_ROOT;
const UPPER: &str = "upper";
const WORK: &str = "work";

/// The mount options must fit in one page (the kernel copies at most that much).
const MAX_OPTIONS: usize = 4095;

/// Why overlay storage cannot be used for a toolbox here; creation then falls back to
/// copying the image, unless overlay was demanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable(pub String);

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unusable {}

/// The image layers an overlay toolbox was built on are gone from the engine.
#[derive(Debug)]
pub struct LayersGone {
    pub name: String,
    pub image: String,
    pub missing: PathBuf,
}

impl fmt::Display for LayersGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the image layers of toolbox `{}` are gone from its engine ({} is missing; \
             was {} removed?); run `toolbox update` to rebuild it on the current image",
            self.name,
            self.missing.display(),
            self.image
        )
    }
}

impl std::error::Error for LayersGone {}

/// The upper directory of the overlay toolbox at `toolbox`: its own files, what changed.
pub fn upper(toolbox: &Path) -> PathBuf {
    toolbox.join(UPPER)
}

/// The mount point of the toolbox at `toolbox`, which systemd-nspawn enters.
pub fn root(toolbox: &Path) -> PathBuf {
    toolbox.join(ROOT)
}

/// The engine an image comes from, as overlay storage needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// What it is called in messages (`the Docker daemon`, `Podman`).
    pub engine: &'a str,
    /// Where it is (`unix:///var/run/docker.sock`).
    pub address: &'a str,
    /// Whether it runs on this host, so its layer directories are this host's.
    pub local: bool,
}

/// The layers an overlay toolbox would stack, as far as the engine's inspect of the
/// image tells them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stack<'a> {
    /// These directories, top first, checked.
    Layers(&'a [PathBuf]),
    /// The layers of an image of `count` layers lie beneath its anchor's own layer in the
    /// anchor's root mount (see [`Layers::Snapshots`], [`image_layers`]): they are known
    /// once the anchor runs, and checked then with [`check_layers`].
    BelowAnchor(usize),
}

/// Checks that an overlay toolbox can be built at `toolbox` from `image`, as the engine
/// `source` reports it: the layers to stack, or the reason when it cannot.
pub fn check<'a>(image: &'a Image, source: Source, toolbox: &Path) -> Result<Stack<'a>, Unusable> {
    let Source {
        engine, address, ..
    } = source;
    if !source.local {
        return Err(Unusable(format!(
            "{engine} at `{address}` is not on this host"
        )));
    }
    match &image.layers {
        Layers::Directories(layers) => {
            check_layers(layers, source, toolbox)?;
            Ok(Stack::Layers(layers))
        }
        Layers::Snapshots(count) => Ok(Stack::BelowAnchor(*count)),
        Layers::Unavailable(why) => Err(Unusable(why.clone())),
    }
}

/// Checks that `layers` (top first), which the engine `source` reported, can be stacked
/// at `toolbox` here.
pub fn check_layers(layers: &[PathBuf], source: Source, toolbox: &Path) -> Result<(), Unusable> {
    if layers.is_empty() {
        return Err(Unusable(format!(
            "{} reported no layer directories for the image",
            source.engine
        )));
    }
    if let Some(missing) = missing_layer(layers) {
        return Err(Unusable(format!(
            "layer directory {} is not on this host",
            missing.display()
        )));
    }
    options(layers, toolbox)?;
    Ok(())
}

/// The overlayfs mount options for `layers` (top first) under the toolbox directory
/// `toolbox`. Pure, so the syntax rules are unit-tested.
pub fn options(layers: &[PathBuf], toolbox: &Path) -> Result<CString, Unusable> {
    let upper = toolbox.join(UPPER);
    let work = toolbox.join(WORK);
    for path in layers.iter().chain([&upper, &work]) {
        let text = path.to_str().unwrap_or_default();
        // `,` separates options, `:` lower layers, and `\` escapes either.
        if text.is_empty() || text.contains([',', ':', '\\', '\0']) {
            return Err(Unusable(format!(
                "{} cannot be named in overlay mount options (it contains `,`, `:` or `\\`, \
                 or is not UTF-8)",
                path.display()
            )));
        }
    }
    let lower: Vec<&str> = layers.iter().filter_map(|l| l.to_str()).collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if options.len() > MAX_OPTIONS {
        return Err(Unusable(format!(
            "the image has {} layers, more than one overlay mount's options can name",
            layers.len()
        )));
    }
    Ok(CString::new(options).expect("checked for NUL above"))
}

/// The toolbox in `toolbox` over `layers` as a session would see it, read-only and
/// attached nowhere (see [`sys::detached_overlay`]): to look at while it is not mounted.
/// Needs root.
pub fn view(toolbox: &Path, layers: &[PathBuf]) -> Result<std::os::fd::OwnedFd> {
    // The paths were checked for overlay's option syntax when the toolbox was made
    // (`options`), which older kernels' one `lowerdir` value needs.
    options(layers, toolbox)?;
    let upper = upper(toolbox);
    let mut lower = vec![upper.as_path()];
    lower.extend(layers.iter().map(PathBuf::as_path));
    sys::detached_overlay(&lower)
        .with_context(|| format!("cannot mount a view of {}", toolbox.display()))
}

/// The first of `layers` that is not a directory here.
pub fn missing_layer(layers: &[PathBuf]) -> Option<&Path> {
    layers
        .iter()
        .find(|layer| !layer.is_dir())
        .map(PathBuf::as_path)
}

/// Makes `upper/`, `work/` and `root/` in a new overlay toolbox directory.
pub fn make_dirs(toolbox: &Path) -> Result<()> {
    for dir in [UPPER, WORK, ROOT] {
        let path = toolbox.join(dir);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    Ok(())
}

/// Whether the toolbox in `toolbox` is mounted.
pub fn is_mounted(toolbox: &Path) -> Result<bool> {
    let root = root(toolbox);
    match sys::is_overlay_mount(&root) {
        Ok(mounted) => Ok(mounted),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", root.display())),
    }
}

/// Mounts the toolbox in `toolbox` over `layers`, unless it is mounted already. A kernel
/// without overlayfs gives [`Unusable`]. Call with the toolbox's mount lock held.
pub fn mount(toolbox: &Path, layers: &[PathBuf]) -> Result<()> {
    if is_mounted(toolbox)? {
        return Ok(());
    }
    let options = options(layers, toolbox)?;
    let root = root(toolbox);
    match sys::mount_overlay(&root, &options) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
            Err(Unusable("the kernel has no overlay filesystem".into()).into())
        }
        Err(e) => Err(e).with_context(|| format!("cannot mount the overlay at {}", root.display())),
    }
}

/// Unmounts the toolbox in `toolbox` if it is mounted. Call with its mount lock held.
pub fn unmount(toolbox: &Path) -> Result<()> {
    if !is_mounted(toolbox)? {
        return Ok(());
    }
    let root = root(toolbox);
    sys::unmount(&root).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            anyhow::anyhow!(
                "cannot unmount {}: a process still uses it (`fuser -vm {}` shows which)",
                root.display(),
                root.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot unmount {}", root.display()))
        }
    })
}

/// Processes whose root directory is the mounted overlay of the toolbox in `toolbox`:
/// during a session its payload; after the last session, processes started inside that
/// still run (the host's PID namespace is shared, so nothing ends them with the session).
/// They hold the overlay's filesystem in their own mount namespace, so it must stay
/// mounted for the next session rather than be mounted a second time over the same
/// `upper/`. Empty when the toolbox is not mounted.
pub fn processes(toolbox: &Path, proc_root: &Path) -> Result<Vec<i32>> {
    if !is_mounted(toolbox)? {
        return Ok(Vec::new());
    }
    let root = root(toolbox);
    let device = fs::metadata(&root)
        .with_context(|| format!("cannot inspect {}", root.display()))?
        .dev();
    crate::store::session::processes_rooted(proc_root, |meta| meta.dev() == device)
}

/// Disk space an overlay toolbox uses: its own directories, not the image's layers.
pub fn disk_usage(toolbox: &Path) -> u64 {
    [UPPER, WORK]
        .iter()
        .map(|dir| crate::store::toolboxes::disk_usage(&toolbox.join(dir)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: Source = Source {
        engine: "the Docker daemon",
        address: "unix:///s",
        local: true,
    };

    fn image(layers: &[&Path]) -> Image {
        Image {
            id: "sha256:1".into(),
            layers: Layers::Directories(layers.iter().map(|l| l.to_path_buf()).collect()),
            run_label: None,
            found_in: None,
        }
    }

    #[test]
    fn options_name_layers_top_first() {
        let layers = [
            PathBuf::from("/var/lib/docker/overlay2/b/diff"),
            PathBuf::from("/var/lib/docker/overlay2/a/diff"),
        ];
        let options = options(&layers, Path::new("/var/lib/toolbox/core-x")).unwrap();
        assert_eq!(
            options.to_str().unwrap(),
            "lowerdir=/var/lib/docker/overlay2/b/diff:/var/lib/docker/overlay2/a/diff,\
             upperdir=/var/lib/toolbox/core-x/upper,workdir=/var/lib/toolbox/core-x/work"
        );
    }

    #[test]
    fn options_refuse_what_they_cannot_say() {
        let layer = [PathBuf::from("/l")];
        for toolbox in ["/srv/a,b/x", "/srv/a:b/x", "/srv/a\\b/x"] {
            let err = options(&layer, Path::new(toolbox)).unwrap_err();
            assert!(err.0.contains("cannot be named"), "{toolbox}: {err}");
        }
        let many: Vec<PathBuf> = (0..60)
            .map(|i| PathBuf::from(format!("/var/lib/docker/overlay2/{i:064}/diff")))
            .collect();
        let err = options(&many, Path::new("/t")).unwrap_err();
        assert_eq!(
            err.0,
            "the image has 60 layers, more than one overlay mount's options can name"
        );
    }

    #[test]
    fn fallback_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let toolbox = dir.path().join("core-x");
        let layer = dir.path().join("layer");
        fs::create_dir(&layer).unwrap();
        let usable = image(&[&layer]);
        assert_eq!(
            check(&usable, DOCKER, &toolbox),
            Ok(Stack::Layers(&[layer.clone()][..]))
        );
        let snapshots = Image {
            layers: Layers::Snapshots(2),
            ..usable.clone()
        };
        assert_eq!(
            check(&snapshots, DOCKER, &toolbox),
            Ok(Stack::BelowAnchor(2))
        );
        let remote = Source {
            address: "tcp://h:2375",
            local: false,
            ..DOCKER
        };
        let err = check(&usable, remote, &toolbox).unwrap_err();
        assert_eq!(
            err.0,
            "the Docker daemon at `tcp://h:2375` is not on this host"
        );
        let unavailable = Image {
            layers: Layers::Unavailable("the Docker daemon stores images with `vfs`".into()),
            ..usable.clone()
        };
        let err = check(&unavailable, DOCKER, &toolbox).unwrap_err();
        assert_eq!(err.0, "the Docker daemon stores images with `vfs`");
        let err = check(&image(&[]), DOCKER, &toolbox).unwrap_err();
        assert_eq!(
            err.0,
            "the Docker daemon reported no layer directories for the image"
        );
        let gone = dir.path().join("gone");
        let err = check(&image(&[&layer, &gone]), DOCKER, &toolbox).unwrap_err();
        assert_eq!(
            err.0,
            format!("layer directory {} is not on this host", gone.display())
        );
    }

    #[test]
    fn an_unmounted_toolbox_is_not_mounted() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mounted(dir.path()).unwrap());
        make_dirs(dir.path()).unwrap();
        assert!(!is_mounted(dir.path()).unwrap());
        unmount(dir.path()).unwrap();
        fs::write(dir.path().join("upper/file"), "x").unwrap();
        assert!(disk_usage(dir.path()) > 0);
    }
}
