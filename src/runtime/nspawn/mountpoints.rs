//! mountpoints: make a toolbox tree safe to hand to systemd-nspawn, on every entry.
//!
//! systemd-nspawn 252 resolves mount destinations inside the tree (`chase_symlinks` with
//! the tree as root), but then writes through plain paths: `/run/host/...`, `/dev/...`,
//! `/sys/fs/cgroup`, `/var/log/journal` are joined to the tree's path and handed to the
//! kernel, which follows a symlink in the tree out of it (`run -> /tmp/victim` made it
//! create `/tmp/victim/host/container-uuid` on the host). And a destination whose symlinks
//! resolve to the tree's root or to a directory it writes in (`media/root -> /`) puts the
//! host's files where it writes (it emptied the host's `/etc/resolv.conf` by copying it
//! onto itself). So before systemd-nspawn runs, every directory it mounts on or writes in,
//! and every mount point toolbox asks it for, must be a real directory (or file) inside the
//! tree: a symlink there is replaced by an empty directory (saying so), anything else in
//! the way is refused, and missing mount points are created here, under the toolbox's
//! mount lock, so concurrent sessions never race to create them. A mount point that lands
//! inside another bind (`/media/root/usr` inside the host's `/`) is the host's path: it
//! must exist there, or systemd-nspawn would create it on the host.
//!
//! The check reads a few entries with `fstatat` and writes nothing when the tree is as it
//! should be; it never writes outside the tree.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

use crate::model::options::{self, Mount, MountKind};
use crate::sys::Errno;

/// Directories systemd-nspawn mounts its own filesystems on and writes beneath through
/// plain paths: created when missing, as systemd-nspawn would.
const API_DIRECTORIES: [&str; 5] = ["/dev", "/proc", "/sys", "/run", "/tmp"];
/// Directories systemd-nspawn writes in when they exist (`/etc/resolv.conf`,
/// `/etc/localtime`, the journal under `/var`).
const WRITTEN_DIRECTORIES: [&str; 2] = ["/etc", "/var"];
/// The file systemd-nspawn copies the host's resolver configuration into.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What must be at a path in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// A directory, created if missing.
    Directory,
    /// A directory if present (a symlink is replaced by one); not created.
    PresentDirectory,
    /// A non-directory to mount a file on, created empty if missing.
    File,
    /// Its directories real, itself left as it is if present (systemd-nspawn checks it).
    Existing,
    /// Its directories real; itself, if present, a regular file or a symlink, which
    /// systemd-nspawn opens with `O_NOFOLLOW`: never a device it would write to.
    Written,
}

/// A path systemd-nspawn will mount on or write at, and where its mount point lies.
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

/// The toolbox's own mounts, beside those from configuration: toolbox's binary as
/// `host-exec` (a file), and the `/run/.toolboxenv` marker.
pub struct Own<'a> {
    pub host_exec: Option<&'a str>,
    pub marker: &'a str,
}

/// The points of a launch: systemd-nspawn's directories, the marker, `host-exec`, and
/// every mount from configuration. `source_is_dir` tells what a bind's source is.
fn points(mounts: &[Mount], own: &Own, source_is_dir: &dyn Fn(&str) -> bool) -> Vec<Point> {
    let mut points: Vec<Point> = API_DIRECTORIES
        .iter()
        .map(|d| (d, Need::Directory))
        .chain(
            WRITTEN_DIRECTORIES
                .iter()
                .map(|d| (d, Need::PresentDirectory)),
        )
        .map(|(d, need)| Point {
            destination: d.to_string(),
            need,
            word: "systemd-nspawn".into(),
        })
        .collect();
    points.push(Point {
        destination: RESOLV_CONF.into(),
        need: Need::Written,
        word: "systemd-nspawn".into(),
    });
    for (destination, word) in [
        (Some(own.marker), "the toolbox marker"),
        (own.host_exec, "host-exec"),
    ] {
        if let Some(destination) = destination {
            points.push(Point {
                destination: destination.into(),
                need: Need::File,
                word: word.into(),
            });
        }
    }
    for mount in mounts {
        let need = match (mount.kind, &mount.source) {
            (MountKind::Inaccessible, _) => Need::Existing,
            (MountKind::Bind, Some(source)) if !source_is_dir(source) => Need::File,
            _ => Need::Directory,
        };
        points.push(Point {
            destination: mount.destination.clone(),
            need,
            word: mount.word.clone(),
        });
    }
    points
}

/// Where a point's mount point is made: in the tree, inside a directory of the host
/// (another bind's source), or inside a filesystem systemd-nspawn or a tmpfs mounts first.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    Tree,
    /// Inside the bind of host directory `.0`, at `.1` beneath it.
    Host(PathBuf, PathBuf),
    Fresh,
}

/// The mount, of `mounts` or systemd-nspawn's own, that `destination` lies inside.
fn place(destination: &str, mounts: &[Mount]) -> Place {
    let inside = |outer: &str| destination != outer && options::is_within(destination, outer);
    let enclosing = mounts
        .iter()
        .filter(|m| m.kind != MountKind::Inaccessible && inside(&m.destination))
        .max_by_key(|m| m.destination.len());
    let api = API_DIRECTORIES.iter().find(|d| inside(d));
    match (enclosing, api) {
        (_, Some(_)) => Place::Fresh,
        (None, None) => Place::Tree,
        (Some(outer), None) => match (&outer.kind, &outer.source) {
            (MountKind::Bind | MountKind::Overlay, Some(source)) => {
                let rest = &destination[outer.destination.len()..];
                Place::Host(source.into(), rest.trim_start_matches('/').into())
            }
            _ => Place::Fresh,
        },
    }
}

/// Checks (and with [`Act::Repair`], repairs) the tree at `root` for a launch with
/// `mounts` from configuration and toolbox's `own` mounts; `name` is the toolbox's, for
/// messages. Returns what was (or would be) changed; anything it cannot repair is an
/// error naming the path.
pub fn secure(
    root: &Path,
    name: &str,
    mounts: &[Mount],
    own: &Own,
    mode: Act,
) -> Result<Vec<Change>> {
    let source_is_dir = |source: &str| std::fs::metadata(source).is_ok_and(|m| m.is_dir());
    let tree = crate::sys::open_dir(root)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", root.display()))?;
    let mut changes = Vec::new();
    for point in points(mounts, own, &source_is_dir) {
        match place(&point.destination, mounts) {
            Place::Fresh => {}
            Place::Tree => walk(&tree, name, &point, mode, &mut changes)?,
            // Only a mount point is made there; a path systemd-nspawn writes at is left
            // alone under a bind (told not to, for resolv.conf and localtime).
            Place::Host(source, rest) if matches!(point.need, Need::Directory | Need::File) => {
                let path = source.join(&rest);
                match host_path(&source, &rest) {
                    HostPath::Real => {}
                    HostPath::Missing => bail!(
                        "`{}`: {} is not on the host, and systemd-nspawn would create it \
                         there to mount on; create it, or mount elsewhere",
                        point.word,
                        path.display()
                    ),
                    HostPath::Symlink(link) => bail!(
                        "`{}`: {} on the host is a symlink, which systemd-nspawn would \
                         follow inside the toolbox instead; mount at the path it points to",
                        point.word,
                        link.display()
                    ),
                }
            }
            Place::Host(..) => {}
        }
    }
    Ok(changes)
}

/// What a path on the host is, to mount on inside the bind that shows it.
enum HostPath {
    Real,
    Missing,
    /// A symlink on the way, which systemd-nspawn resolves inside the toolbox, somewhere
    /// else than the host's path.
    Symlink(PathBuf),
}

/// What is at `rest` beneath the host directory `source`: the bind has resolved `source`
/// itself, symlinks and all; systemd-nspawn resolves `rest` inside the toolbox.
fn host_path(source: &Path, rest: &Path) -> HostPath {
    let mut walked = source.to_path_buf();
    if !walked.is_dir() {
        return HostPath::Missing;
    }
    for part in rest.components() {
        walked.push(part);
        match std::fs::symlink_metadata(&walked) {
            Ok(meta) if meta.file_type().is_symlink() => return HostPath::Symlink(walked),
            Ok(_) => {}
            Err(_) => return HostPath::Missing,
        }
    }
    HostPath::Real
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "something unknown",
    }
}

/// Walks `point` from the tree's root, component by component, never following a symlink.
fn walk(
    tree: &OwnedFd,
    name: &str,
    point: &Point,
    mode: Act,
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
            anyhow::anyhow!(
                "`{path}` in toolbox `{name}` is {what}, where systemd-nspawn needs {} \
                 (for {}); remove it from the toolbox",
                if need == Need::Directory {
                    "a directory"
                } else {
                    "a file"
                },
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
            (Some(FileType::Directory), Need::File) => return Err(refuse("a directory")),
            (Some(FileType::Directory), _) => {}
            (Some(FileType::Symlink), Need::Existing | Need::Written) if last => return Ok(()),
            (Some(FileType::Symlink), _) => {
                let target = rfs::readlinkat(&dir, *part, Vec::new())
                    .map(|t| PathBuf::from(t.to_string_lossy().into_owned()))
                    .unwrap_or_default();
                changes.push(Change::Replaced {
                    path: path.clone(),
                    target,
                    directory: need == Need::Directory,
                });
                if mode == Act::Repair {
                    rfs::unlinkat(&dir, *part, AtFlags::empty()).map_err(|e| {
                        anyhow::anyhow!("cannot remove the symlink `{path}` in `{name}`: {e}")
                    })?;
                    create(&dir, part, need, &path, name)?;
                }
            }
            (None, _) => {
                changes.push(Change::Created(path.clone()));
                if mode == Act::Repair {
                    create(&dir, part, need, &path, name)?;
                }
            }
            (Some(FileType::RegularFile), Need::File | Need::Existing | Need::Written) if last => {}
            (Some(_), Need::File | Need::Existing) if last => {}
            (Some(kind), _) => return Err(refuse(kind_name(kind))),
        }
        if last {
            return Ok(());
        }
        if mode == Act::Look && !matches!(found, Some(FileType::Directory)) {
            // What follows would be made with this directory: nothing more to look at.
            return Ok(());
        }
        dir = rfs::openat(
            &dir,
            *part,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| anyhow::anyhow!("cannot open `{path}` in `{name}`: {e}"))?;
    }
    Ok(())
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

    fn defaults() -> Vec<Mount> {
        [
            "--bind=/:/media/root",
            "--bind=/usr:/media/root/usr",
            "--bind=/run:/media/root/run",
        ]
        .map(mount)
        .to_vec()
    }

    const OWN: Own = Own {
        host_exec: Some("/usr/local/bin/host-exec"),
        marker: "/run/.toolboxenv",
    };

    #[test]
    fn places() {
        let mounts = defaults();
        assert_eq!(place("/media/root", &mounts), Place::Tree);
        assert_eq!(
            place("/media/root/usr", &mounts),
            Place::Host("/".into(), "usr".into())
        );
        assert_eq!(
            place("/media/root/a/b", &mounts),
            Place::Host("/".into(), "a/b".into())
        );
        assert_eq!(place("/run/.toolboxenv", &mounts), Place::Fresh);
        assert_eq!(place("/srv/x", &[mount("--tmpfs=/srv")]), Place::Fresh);
    }

    #[test]
    fn a_fresh_tree_gets_its_mount_points_once() {
        let dir = tempfile::tempdir().unwrap();
        let mounts = defaults();
        let changes = secure(dir.path(), "t", &mounts, &OWN, Act::Look).unwrap();
        assert!(
            changes.contains(&Change::Created("/media".into())),
            "{changes:?}"
        );
        assert!(
            fs::read_dir(dir.path()).unwrap().next().is_none(),
            "check wrote"
        );
        secure(dir.path(), "t", &mounts, &OWN, Act::Repair).unwrap();
        assert!(dir.path().join("media/root").is_dir());
        assert!(dir.path().join("usr/local/bin/host-exec").is_file());
        assert!(dir.path().join("run").is_dir() && !dir.path().join("run/.toolboxenv").exists());
        assert_eq!(
            secure(dir.path(), "t", &mounts, &OWN, Act::Look).unwrap(),
            []
        );
    }

    // Regression: `media/root -> /` made systemd-nspawn bind the host's `/` over the
    // container's root, and `run -> /tmp/victim` (absolute or relative) made it write in
    // the victim directory.
    #[test]
    fn symlinks_out_of_the_tree_are_replaced_by_directories() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::create_dir(&victim).unwrap();
        let dir = outside.path().join("tree");
        fs::create_dir_all(dir.join("media")).unwrap();
        symlink("/", dir.join("media/root")).unwrap();
        symlink(&victim, dir.join("run")).unwrap();
        symlink("../../../../../../tmp", dir.join("tmp")).unwrap();
        symlink(&victim, dir.join("etc")).unwrap();
        let changes = secure(&dir, "t", &defaults(), &OWN, Act::Repair).unwrap();
        for path in ["/media/root", "/run", "/tmp", "/etc"] {
            assert!(
                changes
                    .iter()
                    .any(|c| matches!(c, Change::Replaced { path: p, .. } if p == path)),
                "{path}: {changes:?}"
            );
            let meta = fs::symlink_metadata(dir.join(&path[1..])).unwrap();
            assert!(meta.is_dir(), "{path}");
        }
        assert!(fs::read_dir(&victim).unwrap().next().is_none());
    }

    #[test]
    fn etc_and_var_are_not_made_but_must_be_directories() {
        let outside = tempfile::tempdir().unwrap();
        let dir = outside.path().join("tree");
        fs::create_dir(&dir).unwrap();
        secure(&dir, "t", &[], &OWN, Act::Repair).unwrap();
        assert!(!dir.join("etc").exists() && !dir.join("var").exists());
        symlink(outside.path(), dir.join("var")).unwrap();
        secure(&dir, "t", &[], &OWN, Act::Repair).unwrap();
        assert!(fs::symlink_metadata(dir.join("var")).unwrap().is_dir());
    }

    #[test]
    fn what_cannot_be_repaired_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("media"), "").unwrap();
        let err = secure(dir.path(), "t", &defaults(), &OWN, Act::Look).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`/media` in toolbox `t` is a file, where systemd-nspawn needs a directory (for \
             --bind=/:/media/root); remove it from the toolbox"
        );
        fs::remove_file(dir.path().join("media")).unwrap();
        fs::create_dir_all(dir.path().join("usr/local/bin/host-exec")).unwrap();
        let err = secure(dir.path(), "t", &defaults(), &OWN, Act::Repair).unwrap_err();
        assert!(
            err.to_string()
                .contains("is a directory, where systemd-nspawn needs a file")
        );
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
        secure(dir.path(), "t", &[], &OWN, Act::Repair).unwrap();
        assert!(
            fs::symlink_metadata(dir.path().join("etc/resolv.conf"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        fs::remove_file(dir.path().join("etc/resolv.conf")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("etc/resolv.conf"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let err = secure(dir.path(), "t", &[], &OWN, Act::Look).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`/etc/resolv.conf` in toolbox `t` is a FIFO"),
            "{err}"
        );
    }

    #[test]
    fn mount_points_inside_a_bind_must_exist_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let mut mounts = defaults();
        mounts.push(mount("--bind=/srv:/media/root/no-such-dir-on-this-host"));
        let err = secure(dir.path(), "t", &mounts, &OWN, Act::Look).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`--bind=/srv:/media/root/no-such-dir-on-this-host`: /no-such-dir-on-this-host is \
             not on the host, and systemd-nspawn would create it there to mount on; create it, \
             or mount elsewhere"
        );
        // A file systemd-nspawn would write in a bound /etc is not checked on the host: it
        // is told to leave it alone, and the host's may be a link (systemd-resolved's).
        let outside = tempfile::tempdir().unwrap();
        let etc = outside.path().join("etc");
        fs::create_dir(&etc).unwrap();
        symlink("../run/resolv.conf", etc.join("resolv.conf")).unwrap();
        let bind = format!("--bind={}:/etc", etc.display());
        secure(dir.path(), "t", &[mount(&bind)], &OWN, Act::Look).unwrap();
        // A mount point behind a symlink on the host is refused, naming the link.
        let bind = format!("--bind={}:/etc", outside.path().display());
        let nested = "--bind=/srv:/etc/etc/resolv.conf/x";
        let err = secure(
            dir.path(),
            "t",
            &[mount(&bind), mount(nested)],
            &OWN,
            Act::Look,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("on the host is a symlink"),
            "{err}"
        );
    }
}
