//! mountpoints: make a toolbox tree safe to hand to systemd-nspawn, on every entry, and
//! place every mount of the session where systemd-nspawn will put it.
//!
//! systemd-nspawn writes through plain paths (systemd 252): `/run/host/...`, `/dev/...`,
//! `/sys/fs/cgroup`, `/etc/resolv.conf` are joined to the tree's path and handed to the
//! kernel, which follows a symlink in the tree out of it (`run -> /tmp/victim` made it
//! create `/tmp/victim/host/container-uuid` on the host). So the directories it mounts its
//! own filesystems on or writes in must be real directories of the tree: a symlink there
//! is replaced by an empty directory (saying so), anything else in the way refused. The
//! files it reads through plain paths (`/etc/machine-id`) must be regular files, and the
//! files the session reads (`/etc/passwd`, `/etc/group`) too: a FIFO hangs the reader, a
//! device feeds it without end.
//!
//! Every mount's destination is placed with [`crate::model::placement`], the way
//! systemd-nspawn's `chase_symlinks` resolves it, through the tree's links and those of the
//! host inside every bind: a symlink of the tree is followed while it stays in the tree's
//! own files, and replaced by an empty directory when it leads out (into the host's `/`,
//! `/sys`, a tmpfs) or around (a loop), or would put the mount over the root or over a
//! directory systemd-nspawn needs. A mount point in the tree is made here, under the
//! toolbox's mount lock, so concurrent sessions never race to make it; one inside a bind
//! of the host (or in `/proc` or `/sys`) must exist there already, or systemd-nspawn would
//! create it on the host: refused. systemd-nspawn is then given the placed destinations,
//! with no symlink left in them to resolve differently.
//!
//! The check reads a few entries and writes nothing when the tree is as it should be; it
//! never writes outside the tree. A process left running inside a toolbox can still change
//! the tree between this check and systemd-nspawn's mounts: it is root on the host
//! (`/media/root`), and nothing here defends against it.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

use crate::model::options::{self, Mount, MountKind};
use crate::model::placement::{self, Backing, Entry, Kind, Landing, Layer, TreeLink, Unresolved};
use crate::sys::{self, Errno};

/// Directories systemd-nspawn mounts its own filesystems on and writes beneath through
/// plain paths: created when missing, as systemd-nspawn would.
const API_DIRECTORIES: [&str; 5] = ["/dev", "/proc", "/sys", "/run", "/tmp"];
/// Directories systemd-nspawn writes in when they exist (`/etc/resolv.conf`,
/// `/etc/localtime`, the journal under `/var`).
const WRITTEN_DIRECTORIES: [&str; 2] = ["/etc", "/var"];
/// The file systemd-nspawn copies the host's resolver configuration into.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The file systemd-nspawn reads the machine ID from, through the plain path (systemd
/// 252 `setup_machine_id`).
const MACHINE_ID: &str = "/etc/machine-id";
/// The files a session's first process reads to become its user.
const ACCOUNT_FILES: [&str; 2] = ["/etc/passwd", "/etc/group"];
/// How many symlinks of the tree one mount point may make toolbox replace.
const MAX_REPAIRS: usize = 40;

/// What must be at a path in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// A directory, created if missing.
    Directory,
    /// A directory if present (a symlink is replaced by one); not created.
    PresentDirectory,
    /// A non-directory to mount a file on, created empty if missing.
    File,
    /// Its directories real; itself, if present, a regular file or a symlink, which
    /// systemd-nspawn opens with `O_NOFOLLOW`: never a device it would write to.
    Written,
    /// Its directories real; itself, if present, a regular file, which systemd-nspawn
    /// reads through the plain path (a symlink would be followed on the host).
    Read,
}

impl Need {
    fn what(self) -> &'static str {
        match self {
            Need::Directory | Need::PresentDirectory => "a directory",
            Need::File => "a file",
            Need::Written | Need::Read => "a regular file",
        }
    }
}

/// A path systemd-nspawn writes at or reads, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Point {
    destination: String,
    need: Need,
    /// The configuration words it comes from, for messages.
    word: String,
}

/// What entering changed, or would change, in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A mount point made.
    Created(String),
    /// A symlink replaced by an empty directory, or file (`directory` false).
    Replaced {
        path: String,
        target: PathBuf,
        directory: bool,
    },
}

/// Whether [`secure`] only looks or also changes the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Look,
    Repair,
}

/// What [`secure`] found: the changes made (or to make), and where each mount's
/// destination is placed, by its destination as written (normalized).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub changes: Vec<Change>,
    pub destinations: BTreeMap<String, String>,
}

impl Placement {
    /// Where the mount at `destination` (normalized) goes.
    pub fn destination<'a>(&'a self, destination: &'a str) -> &'a str {
        self.destinations
            .get(destination)
            .map_or(destination, String::as_str)
    }
}

/// The paths systemd-nspawn writes through or reads as plain paths.
fn plain_points() -> Vec<Point> {
    let nspawn = |destination: &str, need| Point {
        destination: destination.to_string(),
        need,
        word: "systemd-nspawn".into(),
    };
    let mut points: Vec<Point> = API_DIRECTORIES
        .iter()
        .map(|d| nspawn(d, Need::Directory))
        .collect();
    points.extend(
        WRITTEN_DIRECTORIES
            .iter()
            .map(|d| nspawn(d, Need::PresentDirectory)),
    );
    points.push(nspawn(RESOLV_CONF, Need::Written));
    points.push(nspawn(MACHINE_ID, Need::Read));
    points
}

/// The container as systemd-nspawn builds it before its custom mounts: the tree, its own
/// filesystems, and `mounts` (their destinations as placed so far).
fn layers(mounts: &[Mount], files: &[bool], placed: &BTreeMap<String, String>) -> Vec<Layer> {
    let mut layers = vec![
        Layer::new("/", Backing::Tree),
        Layer::new("/proc", Backing::Kernel("/proc".into())),
        Layer::new("/sys", Backing::Kernel("/sys".into())),
        Layer::new("/dev", Backing::Fresh),
        Layer::new("/tmp", Backing::Fresh),
        Layer::new("/run", Backing::Fresh),
    ];
    for (mount, file) in mounts.iter().zip(files) {
        let destination = placed.get(&mount.destination).unwrap_or(&mount.destination);
        let (backing, file) = match (mount.kind, &mount.source) {
            (MountKind::Inaccessible, _) => continue,
            (MountKind::Tmpfs, _) | (_, None) => (Backing::Fresh, false),
            (MountKind::Bind | MountKind::Overlay, Some(source)) => {
                (Backing::Host(source.into()), *file)
            }
        };
        layers.push(Layer {
            destination: destination.clone(),
            backing,
            file,
        });
    }
    layers
}

/// What is where, for [`placement`]: the tree through its directory, the host's files;
/// each path looked at once per entry, however many mounts pass through it (one that
/// changes meanwhile is a process inside racing the check: see the module's comment).
struct Lookups<'a> {
    tree: &'a OwnedFd,
    seen: HashMap<(u8, PathBuf), Entry>,
}

impl Lookups<'_> {
    fn cached(
        &mut self,
        key: (u8, PathBuf),
        look: impl FnOnce() -> io::Result<Entry>,
    ) -> io::Result<Entry> {
        if let Some(entry) = self.seen.get(&key) {
            return Ok(entry.clone());
        }
        let entry = look()?;
        self.seen.insert(key, entry.clone());
        Ok(entry)
    }
}

impl placement::Lookup for Lookups<'_> {
    fn tree(&mut self, path: &str) -> io::Result<Entry> {
        let tree = self.tree;
        self.cached((0, path.into()), || sys::entry_beneath(tree, path))
    }

    fn host(&mut self, path: &Path) -> io::Result<Entry> {
        self.cached((1, path.into()), || sys::entry(path))
    }

    fn kernel(&mut self, root: &Path, rest: &str) -> io::Result<Entry> {
        self.cached((2, root.join(rest)), || sys::kernel_entry(root, rest))
    }
}

/// Checks (and with [`Act::Repair`], repairs) the tree at `root` for a launch with
/// `mounts` (configuration's and toolbox's own); `name` is the toolbox's, `host_root`
/// where the host's `/` is bound, for messages and checks. Returns what was (or would
/// be) changed and where each mount goes; anything it cannot repair is an error naming
/// the path.
pub fn secure(
    root: &Path,
    name: &str,
    mounts: &[Mount],
    host_root: Option<&str>,
    act: Act,
) -> Result<Placement> {
    let tree = sys::open_dir(root).map_err(|e| anyhow!("cannot open {}: {e}", root.display()))?;
    // Each destination where it is written, to begin with: where they stay, one round
    // of placing them confirms it.
    let mut placement = Placement {
        changes: Vec::new(),
        destinations: mounts
            .iter()
            .filter(|m| m.kind != MountKind::Inaccessible)
            .map(|m| (m.destination.clone(), m.destination.clone()))
            .collect(),
    };
    for point in plain_points() {
        walk(&tree, name, &point, act, &mut placement.changes)?;
    }
    let mut lookups = Lookups {
        tree: &tree,
        seen: HashMap::new(),
    };
    // Which binds are of a file, asked once.
    let files: Vec<bool> = mounts
        .iter()
        .map(|m| {
            m.kind == MountKind::Bind && m.source.as_ref().is_some_and(|s| !Path::new(s).is_dir())
        })
        .collect();
    check_account_files(
        &layers(mounts, &files, &placement.destinations),
        &mut lookups,
        name,
    )?;
    // Each mount is placed in the container its own placement leaves: once every
    // destination stays where the last round put it, systemd-nspawn, mounting them in
    // order of those paths, finds every one where it was placed.
    for _ in 0..3 {
        let layers = layers(mounts, &files, &placement.destinations);
        let mut placed = BTreeMap::new();
        for (mount, file) in mounts.iter().zip(&files) {
            if mount.kind == MountKind::Inaccessible {
                continue;
            }
            let need = match file {
                true => Need::File,
                false => Need::Directory,
            };
            let point = Point {
                destination: mount.written.clone(),
                need,
                word: mount.word.clone(),
            };
            let own = placement.destination(&mount.destination).to_string();
            let covers = |path: &str| covers_what_nspawn_needs(path, mount, host_root);
            let at = place(
                &layers,
                &mut lookups,
                &tree,
                (name, &own),
                &point,
                &covers,
                act,
                &mut placement.changes,
            )?;
            placed.insert(mount.destination.clone(), at);
        }
        if act == Act::Look && !placement.changes.is_empty() {
            // What follows depends on the repairs: the caller repairs first.
            placement.destinations = placed;
            return Ok(placement);
        }
        if placed == placement.destinations {
            return Ok(placement);
        }
        placement.destinations = placed;
    }
    bail!(
        "the mount points of toolbox `{name}` move each time they are placed (symlinks in \
         the tree lead from one into another); remove them from the toolbox"
    )
}

/// Whether a mount at `path` would cover the root or a directory systemd-nspawn mounts
/// its own filesystems on or writes in: no symlink of the tree may lead a mount there
/// (the host's `/` at `/etc` would get the host's resolver configuration and time zone
/// written into its own `/`).
fn needed_by_nspawn(path: &str) -> bool {
    path == "/"
        || API_DIRECTORIES
            .iter()
            .chain(WRITTEN_DIRECTORIES.iter())
            .any(|dir| options::is_within(dir, path))
}

/// What `mount`, placed at `path`, would cover of what the session needs: the root,
/// `/run` and `/run/host`, where systemd-nspawn writes its own files, or the host's `/` at
/// `host_root` (unless it is that bind); as `Plan` checks destinations as written.
fn covers_what_nspawn_needs(path: &str, mount: &Mount, host_root: Option<&str>) -> Option<String> {
    if path == "/" || path == "/run" || options::is_within(path, "/run/host") {
        return Some(path.to_string());
    }
    let host_root = host_root?;
    let binds_host_root = mount.kind == MountKind::Bind
        && mount.source.as_deref().map(options::normalize).as_deref() == Some("/");
    (options::is_within(host_root, path) && !(path == host_root && binds_host_root))
        .then(|| host_root.to_string())
}

/// Places one mount point: follows the tree's links while they stay in it, replaces one
/// that leads out, makes the mount point in the tree, refuses one to be made on the host.
/// Returns the destination to give systemd-nspawn.
#[allow(clippy::too_many_arguments)]
fn place(
    layers: &[Layer],
    lookups: &mut Lookups,
    tree: &OwnedFd,
    (name, own): (&str, &str),
    point: &Point,
    covers: &dyn Fn(&str) -> Option<String>,
    act: Act,
    changes: &mut Vec<Change>,
) -> Result<String> {
    for _ in 0..MAX_REPAIRS {
        let resolved = placement::resolve_destination(layers, lookups, &point.destination, own);
        let landing = match resolved {
            Ok(landing) => landing,
            Err(Unresolved::Loop(Some(link))) => {
                replace(tree, name, &link, act, changes)?;
                lookups.seen.clear();
                if act == Act::Look {
                    return Ok(point.destination.clone());
                }
                continue;
            }
            Err(Unresolved::Loop(None)) => bail!(
                "`{}`: {} leads around in a loop of the host's symlinks; mount elsewhere",
                point.word,
                point.destination
            ),
            Err(Unresolved::NotDirectory { path, kind }) => bail!(
                "`{}`: {path} is {} inside toolbox `{name}`, where systemd-nspawn needs a \
                 directory to mount on; mount elsewhere",
                point.word,
                kind.describe()
            ),
            Err(Unresolved::Io(e)) => {
                bail!("`{}`: cannot place {}: {e}", point.word, point.destination)
            }
        };
        let covered = covers(&landing.path);
        let astray = landing.left_tree || covered.is_some() || needed_by_nspawn(&landing.path);
        match (&landing.through, astray) {
            (Some(link), true) => {
                replace(tree, name, link, act, changes)?;
                lookups.seen.clear();
                if act == Act::Look {
                    return Ok(point.destination.clone());
                }
                continue;
            }
            (None, true) if covered.is_some() => bail!(
                "`{}`: {} lands on {}, which would cover {}; mount elsewhere",
                point.word,
                point.destination,
                landing.path,
                covered.unwrap_or_default()
            ),
            _ => {}
        }
        let made = changes.len();
        let placed = land(layers, tree, name, point, &landing, act, changes);
        if changes.len() != made {
            // What was looked at before is not what is there now.
            lookups.seen.clear();
        }
        return placed;
    }
    bail!(
        "`{}`: {} passes through too many symlinks in toolbox `{name}`",
        point.word,
        point.destination
    )
}

/// Checks or makes the mount point where `landing` says it goes.
fn land(
    layers: &[Layer],
    tree: &OwnedFd,
    name: &str,
    point: &Point,
    landing: &Landing,
    act: Act,
    changes: &mut Vec<Change>,
) -> Result<String> {
    let layer = &layers[landing.layer];
    let host_path = |root: &Path| {
        let rest = landing.path[layer.destination.len()..].trim_start_matches('/');
        root.join(rest)
    };
    let fits = |kind: &Kind| (*kind == Kind::Directory) == (point.need == Need::Directory);
    match (&layer.backing, &landing.found) {
        // There already, as it must be: nothing to make.
        (Backing::Tree, Entry::Found(kind)) if fits(kind) => {}
        // Made, or refused with what is in the way.
        (Backing::Tree, _) => {
            let placed = Point {
                destination: landing.path.clone(),
                ..point.clone()
            };
            walk(tree, name, &placed, act, changes)?;
        }
        (Backing::Fresh, _) => {}
        (Backing::Host(source) | Backing::Kernel(source), Entry::Missing) => bail!(
            "`{}`: {} is not on the host, and systemd-nspawn would create it there to mount \
             on; create it, or mount elsewhere",
            point.word,
            host_path(source).display()
        ),
        (Backing::Host(source) | Backing::Kernel(source), Entry::Found(kind)) => {
            if !fits(kind) {
                bail!(
                    "`{}`: {} on the host is {}, where systemd-nspawn needs {}; mount elsewhere",
                    point.word,
                    host_path(source).display(),
                    kind.describe(),
                    point.need.what()
                );
            }
        }
        (_, Entry::Link(_)) => unreachable!("a landing is never a symlink"),
    }
    Ok(landing.path.clone())
}

/// The files a session reads to become its user, as the session sees them: regular files
/// or absent.
fn check_account_files(layers: &[Layer], lookups: &mut Lookups, name: &str) -> Result<()> {
    for file in ACCOUNT_FILES {
        let refused = |what: String| {
            anyhow!(
                "`{file}` in toolbox `{name}` is {what}, where a session reads a regular file; \
                 remove it from the toolbox"
            )
        };
        match placement::resolve(layers, lookups, file) {
            Ok(Landing {
                found: Entry::Found(kind),
                ..
            }) if kind != Kind::Regular => return Err(refused(kind.describe().into())),
            Err(Unresolved::Loop(_)) => return Err(refused("a loop of symlinks".into())),
            _ => {}
        }
    }
    Ok(())
}

/// Replaces the tree's symlink `link` with an empty directory (saying so in `changes`).
fn replace(
    tree: &OwnedFd,
    name: &str,
    link: &TreeLink,
    act: Act,
    changes: &mut Vec<Change>,
) -> Result<()> {
    changes.push(Change::Replaced {
        path: link.path.clone(),
        target: link.target.clone().into(),
        directory: true,
    });
    if act == Act::Look {
        return Ok(());
    }
    let (parent, leaf) = link.path.rsplit_once('/').unwrap_or(("", &link.path));
    let parent = parent.trim_start_matches('/');
    let dir = rfs::openat2(
        tree,
        if parent.is_empty() { "." } else { parent },
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        rfs::ResolveFlags::BENEATH | rfs::ResolveFlags::NO_SYMLINKS,
    )
    .map_err(|e| {
        anyhow!(
            "cannot open the directory of `{}` in `{name}`: {e}",
            link.path
        )
    })?;
    let stat = rfs::statat(&dir, leaf, AtFlags::SYMLINK_NOFOLLOW);
    if stat.is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink) {
        rfs::unlinkat(&dir, leaf, AtFlags::empty())
            .map_err(|e| anyhow!("cannot remove the symlink `{}` in `{name}`: {e}", link.path))?;
    }
    create(&dir, leaf, Need::Directory, &link.path, name)
}

/// Walks `point` from the tree's root, component by component, never following a symlink:
/// a symlink on the way is replaced, a missing mount point made.
fn walk(
    tree: &OwnedFd,
    name: &str,
    point: &Point,
    act: Act,
    changes: &mut Vec<Change>,
) -> Result<()> {
    let parts: Vec<&str> = point
        .destination
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let mut dir = rfs::openat(
        tree,
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut path = String::new();
    for (i, part) in parts.iter().enumerate() {
        path.push('/');
        path.push_str(part);
        let last = i + 1 == parts.len();
        let need = match point.need {
            Need::PresentDirectory => Need::Directory,
            need if last => need,
            _ => Need::Directory,
        };
        let refuse = |what: &str| {
            anyhow!(
                "`{path}` in toolbox `{name}` is {what}, where systemd-nspawn needs {} \
                 (for {}); remove it from the toolbox",
                need.what(),
                point.word
            )
        };
        let found = match rfs::statat(&dir, *part, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Some(FileType::from_raw_mode(stat.st_mode)),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(io::Error::from(e).into()),
        };
        // Only mount points are made; a path systemd-nspawn merely writes at may be absent.
        let made = matches!(point.need, Need::Directory | Need::File);
        match (found, need) {
            (None, _) if !made => return Ok(()),
            (Some(FileType::Directory), Need::Directory) => {}
            (Some(FileType::Directory), _) if last => return Err(refuse("a directory")),
            (Some(FileType::Directory), _) => {}
            (Some(FileType::Symlink), Need::Written) if last => return Ok(()),
            (Some(FileType::Symlink), Need::Read) if last => return Err(refuse("a symlink")),
            (Some(FileType::Symlink), _) => {
                let target = rfs::readlinkat(&dir, *part, Vec::new())
                    .map(|t| PathBuf::from(t.to_string_lossy().into_owned()))
                    .unwrap_or_default();
                changes.push(Change::Replaced {
                    path: path.clone(),
                    target,
                    directory: need == Need::Directory,
                });
                if act == Act::Repair {
                    rfs::unlinkat(&dir, *part, AtFlags::empty()).map_err(|e| {
                        anyhow!("cannot remove the symlink `{path}` in `{name}`: {e}")
                    })?;
                    create(&dir, part, need, &path, name)?;
                }
            }
            (None, _) => {
                changes.push(Change::Created(path.clone()));
                if act == Act::Repair {
                    create(&dir, part, need, &path, name)?;
                }
            }
            (Some(FileType::RegularFile), Need::File | Need::Written | Need::Read) if last => {}
            // A file is mounted on any non-directory, as systemd-nspawn allows.
            (Some(_), Need::File) if last => {}
            (Some(kind), _) => return Err(refuse(kind_name(kind))),
        }
        if last {
            return Ok(());
        }
        if act == Act::Look && !matches!(found, Some(FileType::Directory)) {
            // What follows would be made with this directory: nothing more to look at.
            return Ok(());
        }
        dir = rfs::openat(
            &dir,
            *part,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| anyhow!("cannot open `{path}` in `{name}`: {e}"))?;
    }
    Ok(())
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Symlink => "a symlink",
        FileType::Unknown => "something unknown",
        FileType::Directory => Kind::Directory.describe(),
        FileType::RegularFile => Kind::Regular.describe(),
        FileType::Fifo => Kind::Fifo.describe(),
        FileType::Socket => Kind::Socket.describe(),
        FileType::CharacterDevice => Kind::CharDevice.describe(),
        FileType::BlockDevice => Kind::BlockDevice.describe(),
    }
}

/// Makes an empty directory or file at `part` in `dir`; one made meanwhile by another
/// process is as good.
fn create(dir: impl AsFd, part: &str, need: Need, path: &str, name: &str) -> Result<()> {
    let made = match need {
        Need::Directory => rfs::mkdirat(&dir, part, Mode::from_raw_mode(0o755)),
        _ => rfs::openat(
            &dir,
            part,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map(drop),
    };
    match made {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => bail!("cannot create `{path}` in toolbox `{name}`: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn mount(word: &str) -> Mount {
        options::parse(&[word.to_string()]).unwrap()[0]
            .mount
            .clone()
            .unwrap()
    }

    const ROOT: Option<&str> = None;

    /// The CoreOS binds and toolbox's own: the marker and `host-exec`.
    fn defaults() -> Vec<Mount> {
        [
            "--bind=/:/media/root",
            "--bind=/usr:/media/root/usr",
            "--bind=/run:/media/root/run",
            "--bind-ro=/etc/hostname:/run/.toolboxenv",
            "--bind-ro=/etc/hostname:/usr/local/bin/host-exec",
        ]
        .map(mount)
        .to_vec()
    }

    #[test]
    fn a_fresh_tree_gets_its_mount_points_once() {
        let dir = tempfile::tempdir().unwrap();
        let mounts = defaults();
        let placement = secure(dir.path(), "t", &mounts, ROOT, Act::Look).unwrap();
        assert!(
            placement
                .changes
                .contains(&Change::Created("/media".into())),
            "{placement:?}"
        );
        assert!(
            fs::read_dir(dir.path()).unwrap().next().is_none(),
            "check wrote"
        );
        secure(dir.path(), "t", &mounts, ROOT, Act::Repair).unwrap();
        assert!(dir.path().join("media/root").is_dir());
        assert!(dir.path().join("usr/local/bin/host-exec").is_file());
        assert!(dir.path().join("run").is_dir() && !dir.path().join("run/.toolboxenv").exists());
        let placement = secure(dir.path(), "t", &mounts, ROOT, Act::Look).unwrap();
        assert_eq!(placement.changes, []);
        assert_eq!(placement.destination("/media/root/usr"), "/media/root/usr");
    }

    // Regression: `media/root -> /` made systemd-nspawn bind the host's `/` over the
    // container's root, `run -> /tmp/victim` (absolute or relative) made it write in the
    // victim directory, and a link leading a bind onto `/etc` or `/var` (`media/root ->
    // /etc`) would have it write the resolver configuration into the bind's source.
    #[test]
    fn symlinks_out_of_the_tree_are_replaced_by_directories() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::create_dir(&victim).unwrap();
        let dir = outside.path().join("tree");
        fs::create_dir_all(dir.join("media")).unwrap();
        fs::create_dir_all(dir.join("usr/local")).unwrap();
        symlink("/", dir.join("media/root")).unwrap();
        symlink(&victim, dir.join("run")).unwrap();
        symlink("../../../../../../tmp", dir.join("tmp")).unwrap();
        symlink(&victim, dir.join("etc")).unwrap();
        symlink("/media/root/tmp", dir.join("usr/local/bin")).unwrap();
        fs::create_dir_all(dir.join("srv")).unwrap();
        symlink("/var", dir.join("srv/data")).unwrap();
        let mut mounts = defaults();
        mounts.push(mount("--bind=/srv:/srv/data"));
        let placement = secure(&dir, "t", &mounts, ROOT, Act::Repair).unwrap();
        for path in [
            "/media/root",
            "/run",
            "/tmp",
            "/etc",
            "/usr/local/bin",
            "/srv/data",
        ] {
            assert!(
                placement
                    .changes
                    .iter()
                    .any(|c| matches!(c, Change::Replaced { path: p, .. } if p == path)),
                "{path}: {placement:?}"
            );
            let meta = fs::symlink_metadata(dir.join(&path[1..])).unwrap();
            assert!(meta.is_dir(), "{path}");
        }
        assert!(fs::read_dir(&victim).unwrap().next().is_none());
    }

    // Links that stay in the tree are followed, as systemd-nspawn follows them: a
    // merged-/usr image keeps its `/lib -> usr/lib`.
    #[test]
    fn symlinks_inside_the_tree_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("usr/lib/modules")).unwrap();
        symlink("usr/lib", dir.path().join("lib")).unwrap();
        let mounts = [mount("--bind-ro=/usr:/lib/modules/6.1")];
        let placement = secure(dir.path(), "t", &mounts, ROOT, Act::Repair).unwrap();
        assert_eq!(
            placement.destination("/lib/modules/6.1"),
            "/usr/lib/modules/6.1"
        );
        assert!(
            fs::symlink_metadata(dir.path().join("lib"))
                .unwrap()
                .is_symlink()
        );
        assert!(dir.path().join("usr/lib/modules/6.1").is_dir());
    }

    // Regression: a link into a bind of the host's tracefs or bpffs (`usr/src ->
    // /sys/kernel/tracing/instances`, `lib -> /sys/fs/bpf`) made systemd-nspawn create
    // ftrace instances and /sys/fs/bpf/modules on the host.
    #[test]
    fn symlinks_into_binds_of_the_host_are_replaced() {
        let host = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("usr")).unwrap();
        symlink("/sys/fs/bpf", dir.path().join("usr/src")).unwrap();
        let mounts = [
            mount(&format!("--bind={}:/sys/fs/bpf", host.path().display())),
            mount("--bind-ro=/usr:/usr/src/linux-6.1"),
        ];
        let placement = secure(dir.path(), "t", &mounts, ROOT, Act::Repair).unwrap();
        assert!(
            placement
                .changes
                .iter()
                .any(|c| matches!(c, Change::Replaced { path, .. } if path == "/usr/src"))
        );
        assert!(dir.path().join("usr/src/linux-6.1").is_dir());
        assert!(fs::read_dir(host.path()).unwrap().next().is_none());
    }

    #[test]
    fn etc_and_var_are_not_made_but_must_be_directories() {
        let outside = tempfile::tempdir().unwrap();
        let dir = outside.path().join("tree");
        fs::create_dir(&dir).unwrap();
        secure(&dir, "t", &[], ROOT, Act::Repair).unwrap();
        assert!(!dir.join("etc").exists() && !dir.join("var").exists());
        symlink(outside.path(), dir.join("var")).unwrap();
        secure(&dir, "t", &[], ROOT, Act::Repair).unwrap();
        assert!(fs::symlink_metadata(dir.join("var")).unwrap().is_dir());
    }

    #[test]
    fn what_cannot_be_repaired_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("media"), "").unwrap();
        let err = secure(dir.path(), "t", &defaults(), ROOT, Act::Look).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`--bind=/:/media/root`: /media is a file inside toolbox `t`, where \
             systemd-nspawn needs a directory to mount on; mount elsewhere"
        );
        fs::remove_file(dir.path().join("media")).unwrap();
        fs::create_dir_all(dir.path().join("usr/local/bin/host-exec")).unwrap();
        let err = secure(dir.path(), "t", &defaults(), ROOT, Act::Repair).unwrap_err();
        assert!(
            err.to_string()
                .contains("is a directory, where systemd-nspawn needs a file"),
            "{err}"
        );
    }

    fn fifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }

    #[test]
    fn resolv_conf_may_be_a_file_or_a_link_but_no_device() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            dir.path().join("etc/resolv.conf"),
        )
        .unwrap();
        secure(dir.path(), "t", &[], ROOT, Act::Repair).unwrap();
        assert!(
            fs::symlink_metadata(dir.path().join("etc/resolv.conf"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        fs::remove_file(dir.path().join("etc/resolv.conf")).unwrap();
        fifo(&dir.path().join("etc/resolv.conf"));
        let err = secure(dir.path(), "t", &[], ROOT, Act::Look).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`/etc/resolv.conf` in toolbox `t` is a FIFO"),
            "{err}"
        );
    }

    // Regression: a FIFO at /etc/machine-id hung systemd-nspawn, a device there ended in
    // its own error; a FIFO or /dev/zero at /etc/passwd hung a session or grew it without
    // end.
    #[test]
    fn files_read_through_plain_paths_must_be_regular() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fifo(&dir.path().join("etc/machine-id"));
        let err = secure(dir.path(), "t", &[], ROOT, Act::Look).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`/etc/machine-id` in toolbox `t` is a FIFO, where systemd-nspawn needs a regular \
             file (for systemd-nspawn); remove it from the toolbox"
        );
        fs::remove_file(dir.path().join("etc/machine-id")).unwrap();
        symlink("/etc/machine-id", dir.path().join("etc/machine-id")).unwrap();
        let err = secure(dir.path(), "t", &[], ROOT, Act::Look).unwrap_err();
        assert!(err.to_string().contains("is a symlink"), "{err}");
        fs::remove_file(dir.path().join("etc/machine-id")).unwrap();
        fs::write(dir.path().join("etc/machine-id"), "").unwrap();
        fifo(&dir.path().join("etc/group"));
        symlink("group", dir.path().join("etc/passwd")).unwrap();
        let err = secure(dir.path(), "t", &[], ROOT, Act::Look).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`/etc/passwd` in toolbox `t` is a FIFO, where a session reads a regular file; \
             remove it from the toolbox"
        );
    }

    // Regression: the checks normalized `..` as text, but systemd-nspawn follows the
    // host's `/bin -> usr/bin` inside `/media/root` first, and created the host's
    // /tmp/victim/made.
    #[test]
    fn mount_points_inside_a_bind_are_resolved_through_the_hosts_links() {
        let host = tempfile::tempdir().unwrap();
        fs::create_dir_all(host.path().join("usr/bin")).unwrap();
        symlink("usr/bin", host.path().join("bin")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let host_root = format!("--bind={}:/media/root", host.path().display());
        let sneaky = "--bind=/srv:/media/root/bin/../../victim/made";
        let err = secure(
            dir.path(),
            "t",
            &[mount(&host_root), mount(sneaky)],
            ROOT,
            Act::Repair,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "`{sneaky}`: {}/victim/made is not on the host, and systemd-nspawn would \
                 create it there to mount on; create it, or mount elsewhere",
                host.path().display()
            )
        );
        // Through a link of the tree: the link is replaced, nothing made on the host.
        symlink("/media/root/bin/../../victim", dir.path().join("lib")).unwrap();
        let placement = secure(
            dir.path(),
            "t",
            &[mount(&host_root), mount("--bind-ro=/usr:/lib/modules")],
            ROOT,
            Act::Repair,
        )
        .unwrap();
        assert_eq!(placement.destination("/lib/modules"), "/lib/modules");
        assert!(dir.path().join("lib/modules").is_dir());
        assert!(!host.path().join("victim").exists());
        // A mount point that exists on the host is placed where the host's links lead.
        fs::create_dir_all(host.path().join("usr/share")).unwrap();
        let placement = secure(
            dir.path(),
            "t",
            &[
                mount(&host_root),
                mount("--bind=/srv:/media/root/bin/../share"),
            ],
            ROOT,
            Act::Repair,
        )
        .unwrap();
        assert_eq!(
            placement.destination("/media/root/share"),
            "/media/root/usr/share"
        );
    }

    #[test]
    fn a_mount_landing_on_what_systemd_nspawn_needs_is_refused() {
        let host = tempfile::tempdir().unwrap();
        symlink("/", host.path().join("up")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let host_root = format!("--bind={}:/media/root", host.path().display());
        let err = secure(
            dir.path(),
            "t",
            &[mount(&host_root), mount("--bind=/srv:/media/root/up")],
            ROOT,
            Act::Look,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("lands on /, which would cover /"),
            "{err}"
        );
        // Nothing may hide the host's `/` but its own bind.
        fs::create_dir(host.path().join("srv")).unwrap();
        symlink("/media", dir.path().join("srv")).unwrap();
        let placement = secure(
            dir.path(),
            "t",
            &[mount("--bind=/:/media/root"), mount("--bind=/tmp:/srv")],
            Some("/media/root"),
            Act::Repair,
        )
        .unwrap();
        assert_eq!(placement.destination("/srv"), "/srv");
        assert!(
            fs::symlink_metadata(dir.path().join("srv"))
                .unwrap()
                .is_dir()
        );
    }
}
