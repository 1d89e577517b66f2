//! spc::mounts: a super privileged container's mount points placed in its image before
//! the engine is asked for the container. The engine resolves every bind's destination in
//! the image's files with the mounts made before it in place (runc's `securejoin`; Docker
//! mounts by depth): an image with `usr/local/bin -> /host/tmp/x` would have it create
//! `/tmp/x/host-exec` on the host, through the bind of the host's `/` at `/host`. So each
//! destination is resolved here as the engine will resolve it (see
//! [`crate::model::placement`]), reading the image's files through a container of it that
//! is never started, and:
//! - a destination an image's symlink leads out of the image (into a bind of the host, a
//!   kernel filesystem, or in a loop), or one that would be made inside a bind of the host,
//!   is refused with one line, or for the optional tracing binds, left out saying so;
//! - every other destination is given to the engine resolved, with no symlink left in it.
//!
//! The files the engine reads from the image when it starts a process in it (`/etc/passwd`
//! and `/etc/group`, even for a numeric user) must be regular files: a FIFO there hangs
//! the engine itself.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use super::{Container, LABEL_RUNTIME};
use crate::engine::{Engine, LABEL_PID, short_id};
use crate::host::ui;
use crate::model::placement::{self, Backing, Entry, Kind, Layer, Lookup, Unresolved};
use crate::sys;

/// The files the engine itself bind-mounts into every container, in the image's `/etc`.
const ENGINE_FILES: [&str; 3] = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];
/// The files the engine reads to find a process's user and groups.
const ACCOUNT_FILES: [&str; 2] = ["/etc/passwd", "/etc/group"];
/// Where the engine mounts filesystems of the kernel's, and fresh ones, before the binds.
const KERNEL: [&str; 2] = ["/proc", "/sys"];
const FRESH: [&str; 1] = ["/dev"];

/// A bind, `SOURCE:DESTINATION[:OPTIONS]`, taken apart.
struct Bind<'a> {
    source: &'a str,
    destination: &'a str,
    options: Option<&'a str>,
    /// A tracing bind, left out rather than refused.
    optional: bool,
    /// As written, for messages.
    word: &'a str,
}

impl<'a> Bind<'a> {
    fn parse(word: &'a str, optional: bool) -> Bind<'a> {
        let mut parts = word.splitn(3, ':');
        Bind {
            source: parts.next().unwrap_or_default(),
            destination: parts.next().unwrap_or_default(),
            options: parts.next(),
            optional,
            word,
        }
    }

    fn with_destination(&self, destination: &str) -> String {
        match self.options {
            Some(options) => format!("{}:{destination}:{options}", self.source),
            None => format!("{}:{destination}", self.source),
        }
    }

    fn is_file(&self) -> bool {
        !Path::new(self.source).is_dir()
    }
}

/// The image's files as a container of it shows them, read from the engine when a path is
/// first asked for.
struct ImageFiles {
    known: HashMap<String, Entry>,
    /// A path asked for and not known yet.
    wanted: Option<String>,
}

impl Lookup for ImageFiles {
    fn tree(&mut self, path: &str) -> io::Result<Entry> {
        match self.known.get(path) {
            Some(entry) => Ok(entry.clone()),
            None => {
                self.wanted = Some(path.to_string());
                Err(io::Error::other("not read yet"))
            }
        }
    }

    fn host(&mut self, path: &Path) -> io::Result<Entry> {
        sys::entry(path)
    }

    fn kernel(&mut self, root: &Path, rest: &str) -> io::Result<Entry> {
        sys::kernel_entry(root, rest)
    }
}

/// The image's files read through `container`, a container of the image that is never
/// started.
struct Reader<'a, E: Engine> {
    engine: &'a E,
    image_id: &'a str,
    /// The container read through, made when a path is first not known.
    container: Option<String>,
    files: ImageFiles,
}

impl<E: Engine> Reader<'_, E> {
    /// Resolves `path` as the engine will (a mount's destination when `own` names that
    /// mount), reading what it needs of the image.
    async fn resolve(
        &mut self,
        layers: &[Layer],
        path: &str,
        own: Option<&str>,
    ) -> Result<Result<placement::Landing, Unresolved>> {
        loop {
            self.files.wanted = None;
            let resolved = match own {
                Some(own) => placement::resolve_destination(layers, &mut self.files, path, own),
                None => placement::resolve(layers, &mut self.files, path),
            };
            match (resolved, self.files.wanted.take()) {
                (Err(Unresolved::Io(_)), Some(wanted)) => {
                    let container = match &self.container {
                        Some(container) => container.clone(),
                        None => {
                            let labels = HashMap::from([
                                (LABEL_RUNTIME.to_string(), "spc".to_string()),
                                (LABEL_PID.to_string(), std::process::id().to_string()),
                            ]);
                            let made = self.engine.create_container(self.image_id, labels).await?;
                            self.container.insert(made).clone()
                        }
                    };
                    let entry = self
                        .engine
                        .path_entry(&container, &format!("/{wanted}"))
                        .await?;
                    self.files.known.insert(wanted, entry);
                }
                (resolved, _) => return Ok(resolved),
            }
        }
    }
}

/// What was read of image `image_id` before, from `cache`: a line of its ID, then a line
/// per path, `KIND\tPATH[\tTARGET]`. Anything else (another image's, a damaged file) is
/// no cache.
fn read_cache(cache: &Path, image_id: &str) -> HashMap<String, Entry> {
    let mut known = HashMap::new();
    let Ok(Some(file)) = sys::open_regular(
        cache,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW,
    ) else {
        return known;
    };
    let Ok(Some(bytes)) = sys::read_bounded(file, crate::host::files::MAX_FILE) else {
        return known;
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    if lines.next() != Some(image_id) {
        return known;
    }
    for line in lines {
        let mut fields = line.splitn(3, '\t');
        let (Some(kind), Some(path)) = (fields.next(), fields.next()) else {
            return HashMap::new();
        };
        let entry = match (kind, fields.next()) {
            ("-", None) => Entry::Missing,
            ("l", Some(target)) => Entry::Link(target.to_string()),
            ("d", None) => Entry::Found(Kind::Directory),
            ("f", None) => Entry::Found(Kind::Regular),
            ("p", None) => Entry::Found(Kind::Fifo),
            ("c", None) => Entry::Found(Kind::CharDevice),
            ("b", None) => Entry::Found(Kind::BlockDevice),
            ("s", None) => Entry::Found(Kind::Socket),
            _ => return HashMap::new(),
        };
        known.insert(path.to_string(), entry);
    }
    known
}

/// Keeps `known` (read of image `image_id`) in `cache`, replaced at once. Paths that
/// would not survive a line of it are left out, to be read again.
fn write_cache(cache: &Path, image_id: &str, known: &HashMap<String, Entry>) -> io::Result<()> {
    use std::io::Write;
    let plain = |text: &str| !text.contains(['\t', '\n', '\r']);
    let mut text = format!("{image_id}\n");
    for (path, entry) in known.iter().filter(|(path, _)| plain(path)) {
        let line = match entry {
            Entry::Missing => format!("-\t{path}"),
            Entry::Link(target) if plain(target) => format!("l\t{path}\t{target}"),
            Entry::Link(_) => continue,
            Entry::Found(kind) => {
                let letter = match kind {
                    Kind::Directory => "d",
                    Kind::Regular | Kind::Symlink => "f",
                    Kind::Fifo => "p",
                    Kind::CharDevice => "c",
                    Kind::BlockDevice => "b",
                    Kind::Socket => "s",
                };
                format!("{letter}\t{path}")
            }
        };
        text.push_str(&line);
        text.push('\n');
    }
    let partial = cache.with_extension(format!("partial-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)?;
    file.write_all(text.as_bytes())?;
    drop(file);
    std::fs::rename(&partial, cache).inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })
}

/// The container's mounts as the engine will make them: the image, the kernel's and
/// fresh filesystems, and its binds (`binds` at `destinations`, those left out `None`).
fn layers(binds: &[Bind], destinations: &[Option<String>]) -> Vec<Layer> {
    let mut layers = vec![Layer::new("/", Backing::Tree)];
    layers.extend(
        KERNEL
            .iter()
            .map(|at| Layer::new(at, Backing::Kernel(PathBuf::from(at)))),
    );
    layers.extend(FRESH.iter().map(|at| Layer::new(at, Backing::Fresh)));
    for (bind, destination) in binds.iter().zip(destinations) {
        if let Some(destination) = destination {
            layers.push(Layer {
                destination: destination.clone(),
                backing: Backing::Host(bind.source.into()),
                file: bind.is_file(),
            });
        }
    }
    layers
}

/// Checks `container`'s mount points against image `image_id` (see the module's
/// comment), reading the image's files through `engine`; returns the container with its
/// binds placed, the tracing binds that cannot be placed left out (said unless `quiet`).
///
/// What was read of the image is kept in `directory` (an image's files never change
/// under its ID): the next container of the image is placed without reading it again.
pub async fn place(
    engine: &impl Engine,
    image_id: &str,
    container: &Container,
    directory: &Path,
    quiet: bool,
) -> Result<Container> {
    crate::store::toolboxes::make_directory(directory)?;
    let cache = directory.join(format!(".spc-image-{}", short_id(image_id)));
    let mut reader = Reader {
        engine,
        image_id,
        container: None,
        files: ImageFiles {
            known: read_cache(&cache, image_id),
            wanted: None,
        },
    };
    let placed = place_with(&mut reader, container, quiet).await;
    let removed = match &reader.container {
        Some(read_through) => {
            // Best effort: it is only a cache.
            let _ = write_cache(&cache, image_id, &reader.files.known);
            engine.remove_container(read_through).await
        }
        None => Ok(()),
    };
    let placed = placed?;
    removed?;
    Ok(placed)
}

async fn place_with<E: Engine>(
    reader: &mut Reader<'_, E>,
    container: &Container,
    quiet: bool,
) -> Result<Container> {
    let image = &container.image;
    let binds: Vec<Bind> = container
        .binds
        .iter()
        .map(|b| Bind::parse(b, false))
        .chain(container.tracing_binds.iter().map(|b| Bind::parse(b, true)))
        .collect();
    // Each bind is placed in the container its own placement leaves: once every
    // destination stays where the last round put it, the engine, mounting them by depth,
    // finds each where it was placed.
    let mut destinations: Vec<Option<String>> = binds
        .iter()
        .map(|b| Some(crate::model::options::normalize(b.destination)))
        .collect();
    for _ in 0..3 {
        let layers = layers(&binds, &destinations);
        check_files(reader, &layers, image).await?;
        let mut placed = Vec::new();
        for (bind, current) in binds.iter().zip(&destinations) {
            let Some(own) = current else {
                placed.push(None);
                continue;
            };
            let landing = reader.resolve(&layers, bind.destination, Some(own)).await?;
            match (astray(&layers, &landing, bind.destination), landing) {
                (None, Ok(landing)) => placed.push(Some(landing.path)),
                (Some(why), _) if bind.optional => {
                    if !quiet {
                        ui::warn(format_args!(
                            "image {image}: {why}; {} is not shown in the container",
                            bind.destination
                        ));
                    }
                    placed.push(None);
                }
                (Some(why), _) => {
                    bail!("image {image}: {why} (`{}`); mount elsewhere", bind.word)
                }
                (None, Err(_)) => unreachable!("an unresolved destination is astray"),
            }
        }
        if placed == destinations {
            let mut container = container.clone();
            container.binds.clear();
            container.tracing_binds.clear();
            for (bind, destination) in binds.iter().zip(&placed) {
                let Some(destination) = destination else {
                    continue;
                };
                match bind.optional {
                    true => container
                        .tracing_binds
                        .push(bind.with_destination(destination)),
                    false => container.binds.push(bind.with_destination(destination)),
                }
            }
            return Ok(container);
        }
        destinations = placed;
    }
    Err(anyhow!(
        "image {image}: the container's mount points move each time they are placed \
         (symlinks in the image lead from one into another)"
    ))
}

/// Checks the files the engine reads or mounts on in every container of the image.
async fn check_files<E: Engine>(
    reader: &mut Reader<'_, E>,
    layers: &[Layer],
    image: &str,
) -> Result<()> {
    for file in ACCOUNT_FILES {
        match reader.resolve(layers, file, None).await? {
            Ok(placement::Landing {
                found: Entry::Found(kind),
                ..
            }) if kind != Kind::Regular => bail!(
                "image {image}: `{file}` is {}, where the engine reads a regular file to \
                 start a process; remove it from the image",
                kind.describe()
            ),
            Err(Unresolved::Loop(_)) => {
                bail!("image {image}: `{file}` is a loop of symlinks; remove it from the image")
            }
            _ => {}
        }
    }
    for file in ENGINE_FILES {
        let landing = reader.resolve(layers, file, Some(file)).await?;
        if let Some(why) = astray(layers, &landing, file) {
            bail!(
                "image {image}: {why}, where the engine mounts its own {file}; remove it \
                 from the image"
            );
        }
    }
    Ok(())
}

/// Why a mount at `destination`, landing as `landing` says, cannot be made; `None` when
/// it can.
fn astray(
    layers: &[Layer],
    landing: &Result<placement::Landing, Unresolved>,
    destination: &str,
) -> Option<String> {
    let landing = match landing {
        Ok(landing) => landing,
        Err(Unresolved::Loop(Some(link))) => {
            return Some(format!("`{}` is a loop of symlinks", link.path));
        }
        Err(Unresolved::Loop(None)) => {
            return Some(format!(
                "{destination} leads around a loop of the host's symlinks"
            ));
        }
        Err(Unresolved::NotDirectory { path, kind }) => {
            return Some(format!("`{path}` is {}, not a directory", kind.describe()));
        }
        Err(Unresolved::Io(e)) => return Some(format!("cannot resolve {destination}: {e}")),
    };
    let layer = &layers[landing.layer];
    let leaves_image = layer.backing != Backing::Tree && layer.backing != Backing::Fresh;
    if let Some(link) = &landing.through
        && (landing.left_tree || landing.path == "/")
    {
        return Some(format!(
            "`{}` is a symlink to `{}`, which leads {destination} out of the image, to {}",
            link.path,
            ui::escaped(&link.target),
            landing.path
        ));
    }
    match (&layer.backing, &landing.found) {
        (Backing::Host(source) | Backing::Kernel(source), Entry::Missing) if leaves_image => {
            let rest = landing.path[layer.destination.len()..].trim_start_matches('/');
            Some(format!(
                "{destination} lands at {}, which is not on the host, and the engine would \
                 create it there",
                source.join(rest).display()
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::Fake;
    use crate::model::image::{Image, Layers};

    /// An image of the files `entries` (path, symlink target or `None` for a file).
    fn image(entries: &[(&str, Option<&str>)]) -> Fake {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, target) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o755);
            header.set_size(0);
            match target {
                Some(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    tar.append_link(&mut header, path, target).unwrap();
                }
                None if path.ends_with('/') => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_cksum();
                    tar.append_data(&mut header, path, &[][..]).unwrap();
                }
                None => {
                    header.set_cksum();
                    tar.append_data(&mut header, path, &[][..]).unwrap();
                }
            }
        }
        let image = Image {
            id: "sha256:1".into(),
            layers: Layers::Unavailable("in memory".into()),
            run_label: None,
            found_in: None,
        };
        Fake::with_image("img:latest", image, tar.into_inner().unwrap())
    }

    fn container(binds: &[&str], tracing: &[&str]) -> Container {
        let settings = crate::model::config::Settings::from_environment(&[]);
        let plan = crate::model::plan::Plan::resolve(
            &settings,
            "core",
            crate::model::plan::Payload::Shell,
        )
        .unwrap();
        let env = crate::host::Env::default();
        let mut spc = super::super::Spc::resolve(
            &settings,
            &plan,
            super::super::Inputs {
                env: &env,
                passwd: "",
                exe: "/usr/bin/toolbox",
                privilege: super::super::Privilege::Full,
                tty: false,
                throwaway: true,
                run_label: None,
                use_run_label: false,
                kernel: None,
                target: None,
                target_stage: None,
            },
        )
        .unwrap()
        .container;
        spc.binds = binds.iter().map(|b| b.to_string()).collect();
        spc.tracing_binds = tracing.iter().map(|b| b.to_string()).collect();
        spc
    }

    fn place(fake: &Fake, container: &Container) -> Result<Container> {
        place_at(fake, container, tempfile::tempdir().unwrap().path())
    }

    /// [`place`], keeping what was read of the image in `directory`.
    fn place_at(fake: &Fake, container: &Container, directory: &Path) -> Result<Container> {
        let runtime = crate::engine::async_runtime().unwrap();
        runtime.block_on(super::place(&fake, "sha256:1", container, directory, true))
    }

    // Regression: `usr/local/bin -> /host/tmp/victim/ulb` had the engine create
    // /tmp/victim/ulb/host-exec on the host through the bind of its `/` at /host.
    #[test]
    fn a_link_out_of_the_image_is_refused_and_nothing_is_left() {
        let fake = image(&[
            ("usr/local/", None),
            ("usr/local/bin", Some("/host/tmp/victim/ulb")),
            ("etc/passwd", None),
        ]);
        let err = place(
            &fake,
            &container(
                &["/:/host", "/usr/bin/true:/usr/local/bin/host-exec:ro"],
                &[],
            ),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "image fedora:latest: `/usr/local/bin` is a symlink to `/host/tmp/victim/ulb`, \
             which leads /usr/local/bin/host-exec out of the image, to \
             /host/tmp/victim/ulb/host-exec (`/usr/bin/true:/usr/local/bin/host-exec:ro`); \
             mount elsewhere"
        );
        assert!(fake.container_ids().is_empty(), "the reader is removed");
    }

    #[test]
    fn links_inside_the_image_are_followed_and_tracing_binds_left_out() {
        let fake = image(&[
            ("usr/lib/", None),
            ("lib", Some("usr/lib")),
            ("usr/src", Some("/sys/kernel/tracing/instances")),
        ]);
        let placed = place(
            &fake,
            &container(
                &["/:/host"],
                &[
                    "/usr/lib:/lib/modules/6.1:ro",
                    "/usr/src:/usr/src/linux-6.1:ro",
                ],
            ),
        )
        .unwrap();
        assert_eq!(placed.binds, ["/:/host"]);
        assert_eq!(placed.tracing_binds, ["/usr/lib:/usr/lib/modules/6.1:ro"]);
    }

    // What was read of an image is kept: the next container of it asks the engine nothing.
    #[test]
    fn what_was_read_of_an_image_is_kept() {
        let mut fake = image(&[("usr/lib/", None), ("lib", Some("usr/lib"))]);
        let directory = tempfile::tempdir().unwrap();
        let binds = container(&["/:/host"], &["/usr/lib:/lib/modules/6.1:ro"]);
        let first = place_at(&fake, &binds, directory.path()).unwrap();
        // The image's files, if the engine were asked again, would say otherwise now.
        fake.archive = Vec::new();
        let second = place_at(&fake, &binds, directory.path()).unwrap();
        assert_eq!(first, second);
        assert!(fake.container_ids().is_empty());
        let cache = read_cache(&directory.path().join(".spc-image-1"), "sha256:1");
        assert_eq!(cache.get("lib"), Some(&Entry::Link("usr/lib".into())));
        assert!(read_cache(&directory.path().join(".spc-image-1"), "sha256:2").is_empty());
    }

    // Regression: a FIFO at /etc/passwd left a dockerd thread blocked in it.
    #[test]
    fn account_files_must_be_regular() {
        let mut fake = image(&[("etc/", None)]);
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Fifo);
        header.set_size(0);
        header.set_cksum();
        tar.append_data(&mut header, "etc/passwd", &[][..]).unwrap();
        fake.archive = tar.into_inner().unwrap();
        let err = place(&fake, &container(&[], &[])).unwrap_err();
        assert!(err.to_string().contains("`/etc/passwd` is a FIFO"), "{err}");
    }
}
