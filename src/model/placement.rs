//! placement: where a mount point lands, resolved the way the program that mounts it
//! resolves it, for every runtime. systemd-nspawn resolves a mount's destination with
//! `chase_symlinks` in the tree (systemd 252 `mount_bind`, `mount_tmpfs`, ...), runc with
//! `securejoin` in the container's root filesystem: both follow symlinks component by
//! component, an absolute target starting again at the container's root and `..` never
//! climbing above it, with the mounts made before already in place. A path that enters a
//! bind of the host is looked up in the host's directory, through the host's own
//! symlinks: `/media/root/bin/../..` is `/` of the host (its `/bin` is `usr/bin`), not
//! `/media`. So a destination is resolved here against the container as it will be: its
//! tree and the mounts over it, the [`Layer`]s, never as text.
//!
//! Pure: what is at a path comes from a [`Lookup`] (the tree on disk, an image through its
//! engine, the host's files). Each runtime decides what to do with where its mount points
//! land ([`Landing`]): make them in the tree, mend a symlink of its own tree, or refuse a
//! mount point the mounting program would create on the host.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use crate::model::options;
pub use crate::sys::{Entry, Kind};

/// How many symlinks one path may pass through (`MAXSYMLINKS`, as `chase_symlinks` and
/// the kernel allow).
const MAX_SYMLINKS: usize = 40;

/// What a mount shows at its destination and beneath it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// The tree's own files: the toolbox's tree, or the image's.
    Tree,
    /// A directory or file of the host (a bind's source): what is made beneath it is made
    /// on the host.
    Host(PathBuf),
    /// A filesystem made empty for the session (a tmpfs): what is made in it stays there.
    Fresh,
    /// A kernel filesystem mounted anew for the session (procfs, sysfs), showing the
    /// host's kernel objects as the host's own mount of it at this path does: nothing is
    /// ever created there.
    Kernel(PathBuf),
}

/// A mount of the container: its destination (absolute, normalized) and what it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub destination: String,
    pub backing: Backing,
    /// A bind of a file (not a directory) of the host.
    pub file: bool,
}

impl Layer {
    pub fn new(destination: &str, backing: Backing) -> Layer {
        Layer {
            destination: destination.to_string(),
            backing,
            file: false,
        }
    }
}

/// What is at a path of the container, as each kind of layer finds it.
pub trait Lookup {
    /// What is at `path` in the tree's own files (relative, `/`-separated, without `.`
    /// or `..`; every directory on the way already found to be one).
    fn tree(&mut self, path: &str) -> io::Result<Entry>;
    /// What is at `path` on the host.
    fn host(&mut self, path: &Path) -> io::Result<Entry>;
    /// What is at `rest` beneath the kernel filesystem mounted at `root` on the host, as
    /// a new mount of it shows it (see [`crate::sys::kernel_entry`]).
    fn kernel(&mut self, root: &Path, rest: &str) -> io::Result<Entry>;
}

/// A symlink of the tree that a destination passes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeLink {
    /// Its path in the container.
    pub path: String,
    pub target: String,
}

/// Where a destination lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landing {
    /// The destination resolved: absolute, no symlink on the way, no `.` or `..`; beyond
    /// the first missing component, the rest as the mounting program would create it.
    pub path: String,
    /// The layer it lands in, by index.
    pub layer: usize,
    /// What is there now (`Missing`: it would be created, with any missing directories
    /// above it).
    pub found: Entry,
    /// The last symlink of the tree the resolution followed, if any.
    pub through: Option<TreeLink>,
    /// Whether the resolution passed through a layer other than the tree after following
    /// a symlink of the tree: the tree's link led out of its own files.
    pub left_tree: bool,
}

/// Why a destination cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// More than [`MAX_SYMLINKS`] links: a loop. The last symlink of the tree followed,
    /// if one was.
    Loop(Option<TreeLink>),
    /// A component that is not a directory has more path after it.
    NotDirectory { path: String, kind: Kind },
    /// A lookup failed.
    Io(String),
}

/// The layer of `layers` that shows `path` (normalized), and `path` beneath its
/// destination: the last of the longest destinations that contain it, those at or beneath
/// `skipped` left out.
pub fn enclosing<'a>(
    layers: &'a [Layer],
    path: &str,
    skipped: Option<&str>,
) -> (usize, &'a Layer, String) {
    let mut best: Option<usize> = None;
    for (i, layer) in layers.iter().enumerate() {
        let left_out = layer.destination != "/"
            && skipped.is_some_and(|skipped| options::is_within(&layer.destination, skipped));
        if !left_out
            && options::is_within(path, &layer.destination)
            && best.is_none_or(|b| layers[b].destination.len() <= layer.destination.len())
        {
            best = Some(i);
        }
    }
    let index = best.expect("the layers start with the root");
    let layer = &layers[index];
    let rest = path[layer.destination.len()..].trim_start_matches('/');
    (index, layer, rest.to_string())
}

/// What a layer shows at `rest` beneath its destination.
fn look(layer: &Layer, rest: &str, lookup: &mut dyn Lookup) -> io::Result<Entry> {
    if rest.is_empty() {
        return Ok(Entry::Found(if layer.file {
            Kind::Regular
        } else {
            Kind::Directory
        }));
    }
    match &layer.backing {
        Backing::Tree => lookup.tree(rest),
        Backing::Host(source) => lookup.host(&source.join(rest)),
        Backing::Kernel(root) => lookup.kernel(root, rest),
        // Empty when mounted: nothing of it is there to resolve through.
        Backing::Fresh => Ok(Entry::Missing),
    }
}

fn join(parts: &[String]) -> String {
    format!("/{}", parts.join("/"))
}

/// Resolves the destination of a mount in the container made of `layers` (the first is
/// the root, `/`; every destination normalized), as the mounting program does when it
/// gets to it: the mounts at or beneath that destination are not made yet, the others
/// are (given resolved destinations, the mounting programs mount parents first:
/// systemd-nspawn sorts its mounts by path, Docker by depth).
///
/// `destination` is as written (`..` resolved as the mounting program does); `own` is the
/// destination of the mount's own layer in `layers`, which with those beneath it is left
/// out.
pub fn resolve_destination(
    layers: &[Layer],
    lookup: &mut dyn Lookup,
    destination: &str,
    own: &str,
) -> Result<Landing, Unresolved> {
    resolve_without(layers, lookup, destination, Some(own))
}

/// Resolves `path` in the container made of `layers` (the first is the root, `/`; every
/// destination normalized), with every mount made, as `chase_symlinks` with
/// `CHASE_NONEXISTENT` and `securejoin` do.
pub fn resolve(
    layers: &[Layer],
    lookup: &mut dyn Lookup,
    path: &str,
) -> Result<Landing, Unresolved> {
    resolve_without(layers, lookup, path, None)
}

/// [`resolve`], the layers at or beneath `skipped` left out.
fn resolve_without(
    layers: &[Layer],
    lookup: &mut dyn Lookup,
    path: &str,
    skipped: Option<&str>,
) -> Result<Landing, Unresolved> {
    let enclosing = |path: &str| enclosing(layers, path, skipped);
    let mut done: Vec<String> = Vec::new();
    let mut todo: VecDeque<String> = components(path).collect();
    let mut links = 0;
    let mut through: Option<TreeLink> = None;
    let mut left_tree = false;
    while let Some(part) = todo.pop_front() {
        if part == ".." {
            done.pop();
            continue;
        }
        done.push(part);
        let here = join(&done);
        let (index, layer, rest) = enclosing(&here);
        if through.is_some() && layer.backing != Backing::Tree {
            left_tree = true;
        }
        let mut found = look(layer, &rest, lookup).map_err(|e| Unresolved::Io(e.to_string()))?;
        let beneath = |l: &Layer| {
            l.destination != here
                && options::is_within(&l.destination, &here)
                && !skipped.is_some_and(|skipped| options::is_within(&l.destination, skipped))
        };
        if found == Entry::Missing && layers.iter().any(beneath) {
            // Made as a mount's mount point, or a directory above one, before the mount.
            found = Entry::Found(Kind::Directory);
        }
        match found {
            Entry::Link(target) => {
                links += 1;
                if layer.backing == Backing::Tree {
                    through = Some(TreeLink {
                        path: here.clone(),
                        target: target.clone(),
                    });
                }
                if links > MAX_SYMLINKS {
                    return Err(Unresolved::Loop(through));
                }
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                for (i, part) in components(&target).enumerate() {
                    todo.insert(i, part);
                }
            }
            Entry::Missing => {
                let climbs = todo.iter().any(|p| p == "..");
                for part in todo.drain(..) {
                    match part.as_str() {
                        ".." => {
                            done.pop();
                        }
                        _ => done.push(part),
                    }
                }
                let path = join(&done);
                if climbs {
                    // What the mounting program is given is this path, without `..`
                    // (see the callers): it is resolved as such.
                    return resolve_without(layers, lookup, &path, skipped).map(|mut landing| {
                        landing.through = landing.through.or(through);
                        landing.left_tree |= left_tree;
                        landing
                    });
                }
                let (layer, _, _) = enclosing(&path);
                return Ok(Landing {
                    path,
                    layer,
                    found: Entry::Missing,
                    through,
                    left_tree,
                });
            }
            Entry::Found(kind) if kind != Kind::Directory && !todo.is_empty() => {
                return Err(Unresolved::NotDirectory { path: here, kind });
            }
            Entry::Found(kind) => {
                if todo.is_empty() {
                    return Ok(Landing {
                        path: here,
                        layer: index,
                        found: Entry::Found(kind),
                        through,
                        left_tree,
                    });
                }
            }
        }
    }
    // The root itself (or a path that climbed back to it).
    let (layer, _, _) = enclosing("/");
    Ok(Landing {
        path: "/".to_string(),
        layer,
        found: Entry::Found(Kind::Directory),
        through,
        left_tree,
    })
}

/// The components of `path`, without empty ones and `.`.
fn components(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A tree and a host as maps from path to entry; directories implied.
    #[derive(Default)]
    struct Map {
        tree: HashMap<String, Entry>,
        host: HashMap<String, Entry>,
    }

    fn find(map: &HashMap<String, Entry>, path: &str) -> Entry {
        if let Some(entry) = map.get(path) {
            return entry.clone();
        }
        let prefix = format!("{path}/");
        if path.is_empty() || map.keys().any(|k| k.starts_with(&prefix)) {
            return Entry::Found(Kind::Directory);
        }
        Entry::Missing
    }

    impl Lookup for Map {
        fn tree(&mut self, path: &str) -> io::Result<Entry> {
            Ok(find(&self.tree, path))
        }
        fn host(&mut self, path: &Path) -> io::Result<Entry> {
            Ok(find(&self.host, path.to_str().unwrap()))
        }
        fn kernel(&mut self, root: &Path, rest: &str) -> io::Result<Entry> {
            self.host(&root.join(rest))
        }
    }

    fn link(target: &str) -> Entry {
        Entry::Link(target.to_string())
    }

    fn dir() -> Entry {
        Entry::Found(Kind::Directory)
    }

    /// A tree with merged `/usr`, a host with merged `/usr`, and the host's `/` at
    /// `/media/root`, `/run` fresh, `/sys` the kernel's.
    fn container() -> (Vec<Layer>, Map) {
        let layers = vec![
            Layer::new("/", Backing::Tree),
            Layer::new("/sys", Backing::Kernel("/sys".into())),
            Layer::new("/run", Backing::Fresh),
            Layer::new("/media/root", Backing::Host("/".into())),
            Layer::new("/sys/fs/bpf", Backing::Host("/sys/fs/bpf".into())),
        ];
        let mut map = Map::default();
        map.tree.insert("lib".into(), link("usr/lib"));
        map.tree.insert("usr/lib/modules".into(), dir());
        map.tree.insert("media/root".into(), dir());
        map.host.insert("/bin".into(), link("usr/bin"));
        map.host
            .insert("/usr/bin/ls".into(), Entry::Found(Kind::Regular));
        map.host.insert("/tmp/victim".into(), dir());
        map.host.insert("/sys/fs/bpf".into(), dir());
        (layers, map)
    }

    fn landing(layers: &[Layer], map: &mut Map, path: &str) -> (String, String, Entry, bool) {
        let landing = resolve(layers, map, path).unwrap();
        let layer = layers[landing.layer].destination.clone();
        (landing.path, layer, landing.found, landing.left_tree)
    }

    #[test]
    fn links_of_the_tree_are_followed_inside_it() {
        let (layers, mut map) = container();
        assert_eq!(
            landing(&layers, &mut map, "/lib/modules/6.1"),
            (
                "/usr/lib/modules/6.1".into(),
                "/".into(),
                Entry::Missing,
                false
            )
        );
        map.tree.insert("escape".into(), link("/../../etc"));
        assert_eq!(
            resolve(&layers, &mut map, "/escape/x").unwrap().path,
            "/etc/x"
        );
        assert_eq!(
            resolve(&layers, &mut map, "/usr/./lib/../lib/modules")
                .unwrap()
                .path,
            "/usr/lib/modules"
        );
    }

    // Regression: `lib -> /media/root/bin/../../tmp/victim/made` was normalized as text
    // (`/media/tmp/victim/made`), but systemd-nspawn follows the host's `/bin -> usr/bin`
    // and created the host's /tmp/victim/made/modules.
    #[test]
    fn dot_dot_after_a_host_link_climbs_the_hosts_tree() {
        let (layers, mut map) = container();
        map.tree
            .insert("lib".into(), link("/media/root/bin/../../tmp/victim/made"));
        let landing = resolve(&layers, &mut map, "/lib/modules/6.1").unwrap();
        assert_eq!(landing.path, "/media/root/tmp/victim/made/modules/6.1");
        assert_eq!(layers[landing.layer].backing, Backing::Host("/".into()));
        assert_eq!(landing.found, Entry::Missing);
        assert!(landing.left_tree);
        assert_eq!(
            landing.through,
            Some(TreeLink {
                path: "/lib".into(),
                target: "/media/root/bin/../../tmp/victim/made".into()
            })
        );
        // Written as a destination, without any link of the tree.
        let landing = resolve(&layers, &mut map, "/media/root/bin/../../tmp/victim/x").unwrap();
        assert_eq!(landing.path, "/media/root/tmp/victim/x");
        assert!(!landing.left_tree && landing.through.is_none());
    }

    // Regression: `usr/src -> /sys/kernel/tracing/instances` and `lib -> /sys/fs/bpf`
    // were taken as fresh paths inside /sys, where systemd-nspawn made ftrace instances
    // and /sys/fs/bpf/modules on the host.
    #[test]
    fn paths_into_binds_of_kernel_filesystems_are_the_hosts() {
        let (layers, mut map) = container();
        map.tree.insert("lib".into(), link("/sys/fs/bpf"));
        let landing = resolve(&layers, &mut map, "/lib/modules/6.1").unwrap();
        assert_eq!(landing.path, "/sys/fs/bpf/modules/6.1");
        assert_eq!(
            layers[landing.layer].backing,
            Backing::Host("/sys/fs/bpf".into())
        );
        assert!(landing.left_tree);
        map.tree
            .insert("usr/src".into(), link("/sys/kernel/tracing/instances"));
        let landing = resolve(&layers, &mut map, "/usr/src/linux-6.1").unwrap();
        assert_eq!(landing.path, "/sys/kernel/tracing/instances/linux-6.1");
        assert_eq!(layers[landing.layer].destination, "/sys");
    }

    #[test]
    fn fresh_filesystems_and_loops() {
        let (layers, mut map) = container();
        map.tree.insert("var/run".into(), link("/run"));
        let landing = resolve(&layers, &mut map, "/var/run/x").unwrap();
        assert_eq!(
            (
                landing.path.as_str(),
                layers[landing.layer].destination.as_str()
            ),
            ("/run/x", "/run")
        );
        assert!(landing.left_tree);
        map.tree.insert("tmp".into(), link("../../../tmp"));
        assert!(matches!(
            resolve(&layers, &mut map, "/tmp/x"),
            Err(Unresolved::Loop(Some(TreeLink { path, .. }))) if path == "/tmp"
        ));
        map.tree
            .insert("etc/passwd".into(), Entry::Found(Kind::Fifo));
        assert_eq!(
            resolve(&layers, &mut map, "/etc/passwd/x"),
            Err(Unresolved::NotDirectory {
                path: "/etc/passwd".into(),
                kind: Kind::Fifo
            })
        );
    }

    #[test]
    fn a_file_bind_is_a_file_and_the_deepest_layer_wins() {
        let (mut layers, mut map) = container();
        let mut file = Layer::new(
            "/usr/local/bin/host-exec",
            Backing::Host("/usr/bin/toolbox".into()),
        );
        file.file = true;
        layers.push(file);
        map.tree.insert(
            "usr/local/bin/host-exec".into(),
            Entry::Found(Kind::Regular),
        );
        map.tree
            .insert("usr/local/bin/tool".into(), Entry::Found(Kind::Regular));
        let landing = resolve(&layers, &mut map, "/usr/local/bin/host-exec").unwrap();
        assert_eq!(landing.found, Entry::Found(Kind::Regular));
        assert_eq!(
            layers[landing.layer].destination,
            "/usr/local/bin/host-exec"
        );
        assert_eq!(
            enclosing(&layers, "/sys/fs/bpf/x", None).1.destination,
            "/sys/fs/bpf"
        );
        assert_eq!(enclosing(&layers, "/sys/fs", None).2, "fs");
        assert_eq!(
            enclosing(&layers, "/sys/fs/bpf/x", Some("/sys/fs"))
                .1
                .destination,
            "/sys"
        );
    }

    // Regression: `media/root -> /` put the host's `/` over the container's root. A mount
    // is not there yet when its own destination is resolved.
    #[test]
    fn a_destination_is_resolved_before_its_own_mount() {
        let (layers, mut map) = container();
        map.tree.insert("media/root".into(), link("/"));
        let landing = resolve_destination(&layers, &mut map, "/media/root", "/media/root").unwrap();
        assert_eq!((landing.path.as_str(), landing.layer), ("/", 0));
        assert_eq!(landing.through.unwrap().path, "/media/root");
        // With every mount made, the link is hidden under the bind.
        assert_eq!(resolve(&layers, &mut map, "/media/root").unwrap().layer, 3);
    }
}
