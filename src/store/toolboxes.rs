//! machine: the toolbox on disk. Owns the layout of a toolbox directory (the tree, or for
//! overlay storage the directory `overlay` fills, its metadata file, the locks and partial
//! trees beside it), how a finished tree is put in place atomically, and how existing
//! trees (including CoreOS ones) are recognised.
//! It never writes outside `TOOLBOX_DIRECTORY`, and never through a path an image's
//! contents could redirect.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::model::plan::Storage;
use crate::sys::{self, Errno};

/// Metadata file at the root of a complete toolbox tree, written before the tree is
/// renamed into place: its presence means the tree is complete.
pub const METADATA: &str = ".toolbox.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The image reference the toolbox was created from, as configured.
    pub image: String,
    /// The engine's image ID at creation.
    pub image_id: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// Present for overlay storage: the toolbox directory then holds the overlay's
    /// directories instead of the tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<Overlay>,
    /// Present for a toolbox made by `toolbox import`: the archive it came from. No
    /// engine has its image, so it is not updated from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
}

impl Metadata {
    /// What toolbox knows of an adopted CoreOS tree: nothing but its storage.
    pub fn adopted() -> Metadata {
        Metadata {
            image: String::new(),
            image_id: String::new(),
            created: String::new(),
            overlay: None,
            imported_from: None,
        }
    }

    pub fn storage(&self) -> Storage {
        match self.overlay {
            Some(_) => Storage::Overlay,
            None => Storage::Copy,
        }
    }
}

/// What an overlay toolbox is mounted from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    /// The image's layer directories on the daemon's host, top first.
    pub layers: Vec<PathBuf>,
    /// The running container (the anchor) that keeps the daemon from deleting those
    /// layers; one made by an older toolbox was never started.
    pub anchor: String,
}

/// What is at a toolbox's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Missing,
    /// Created by toolbox: the metadata file is there.
    Complete,
    /// A tree without metadata but with `etc/os-release`, as the CoreOS script left it.
    Adopted,
    /// An empty directory, which creating a toolbox may replace.
    Empty,
    /// Something else, which toolbox leaves alone.
    Foreign,
}

/// Classifies `path` with a few `lstat`s; reads no file contents.
pub fn state(path: &Path) -> Result<State> {
    let exists = |p: &Path| match fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    };
    let describe = || format!("cannot inspect toolbox directory {}", path.display());
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::Missing),
        Err(e) => return Err(e).with_context(describe),
        Ok(meta) if !meta.is_dir() => return Ok(State::Foreign),
        Ok(_) => {}
    }
    if exists(&path.join(METADATA)).with_context(describe)? {
        return Ok(State::Complete);
    }
    if exists(&path.join("etc/os-release")).with_context(describe)? {
        return Ok(State::Adopted);
    }
    let empty = fs::read_dir(path).with_context(describe)?.next().is_none();
    Ok(if empty { State::Empty } else { State::Foreign })
}

/// The metadata of the toolbox at `path` if it is complete; `None` for an adopted CoreOS
/// tree, an empty or missing directory, or anything else.
pub fn complete_metadata(path: &Path) -> Result<Option<Metadata>> {
    match state(path)? {
        State::Complete => Ok(Some(read_metadata(path)?)),
        _ => Ok(None),
    }
}

/// Reads a complete toolbox's metadata.
pub fn read_metadata(path: &Path) -> Result<Metadata> {
    let file = path.join(METADATA);
    let cannot_read = || format!("cannot read {}", file.display());
    // In a copy toolbox it lies in the tree, which sessions write in: never followed out
    // of it, and never a FIFO or device.
    let opened = sys::open_regular(&file, OFlags::RDONLY | OFlags::NOFOLLOW)
        .with_context(cannot_read)?
        .ok_or_else(|| anyhow::anyhow!("{}: it is gone", cannot_read()))?;
    let text = sys::read_bounded(opened, crate::host::files::MAX_FILE)
        .with_context(cannot_read)?
        .ok_or_else(|| anyhow::anyhow!("{}: it is too large", cannot_read()))?;
    serde_json::from_slice(&text)
        .with_context(|| format!("{}: malformed toolbox metadata", file.display()))
}

/// The directory a toolbox is built in before it is renamed into place.
fn partial_prefix(name: &str) -> String {
    format!(".{name}.partial-")
}

/// An exclusive lock, held until dropped.
pub struct Lock {
    _file: File,
}

/// Creates `directory` if needed and takes the creation lock for toolbox `name`, waiting
/// while another toolbox process holds it. Creating, updating and removing a toolbox
/// hold it.
pub fn lock_for_create(directory: &Path, name: &str) -> Result<Lock> {
    lock(directory, &format!(".{name}.lock"))
}

/// What [`try_lock_for_create`] found.
pub enum Attempt {
    /// The lock, held until dropped.
    Taken(Lock),
    /// No lock file: a toolbox never created, or removed, is being created by no one.
    NoLockFile,
    /// Another process holds the lock.
    Busy,
}

/// Takes the creation lock of toolbox `name` if no other process holds it, without
/// waiting and without making the directory or the lock file.
pub fn try_lock_for_create(directory: &Path, name: &str) -> Result<Attempt> {
    take(&directory.join(format!(".{name}.lock")), false)
}

/// Takes the mount lock of overlay toolbox `name`: mounting, registering a session and
/// unmounting after the last one happen under it. Taken after the creation lock when
/// both are needed, never the other way round, and never held while waiting for a
/// session to end.
pub fn lock_for_mount(directory: &Path, name: &str) -> Result<Lock> {
    lock(directory, &format!(".{name}.mount.lock"))
}

/// Takes the lock of super privileged container `name`: starting it for a session and
/// stopping it after the last one happen under it.
pub fn lock_for_spc(directory: &Path, name: &str) -> Result<Lock> {
    lock(directory, &format!(".{name}.spc.lock"))
}

fn lock(directory: &Path, file_name: &str) -> Result<Lock> {
    make_directory(directory)?;
    let path = directory.join(file_name);
    match take(&path, true)? {
        Attempt::Taken(lock) => Ok(lock),
        // The file is made when missing and the lock waited for: neither comes back.
        Attempt::NoLockFile | Attempt::Busy => bail!("cannot lock {}", path.display()),
    }
}

/// Takes the lock of the lock file at `path`: `waiting` for it, and making the file
/// when it is missing; otherwise neither.
fn take(path: &Path, waiting: bool) -> Result<Attempt> {
    use std::os::unix::fs::MetadataExt;
    let mut options = OpenOptions::new();
    options
        .write(true)
        .custom_flags(OFlags::NOFOLLOW.bits() as i32);
    if waiting {
        options.create(true).truncate(false).mode(0o600);
    }
    loop {
        let file = match options.open(path) {
            Ok(file) => file,
            Err(e) if !waiting && e.kind() == io::ErrorKind::NotFound => {
                return Ok(Attempt::NoLockFile);
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot open lock file {}", path.display()));
            }
        };
        let taken = match waiting {
            true => sys::lock_exclusive(&file).map(|()| true),
            false => sys::try_lock_exclusive(&file),
        };
        if !taken.with_context(|| format!("cannot lock {}", path.display()))? {
            return Ok(Attempt::Busy);
        }
        // `rm` removes a toolbox's lock files while holding them: a lock taken on a file
        // no longer at its path guards nothing, and is taken again on the path's file.
        let held = file.metadata()?.ino();
        if fs::symlink_metadata(path).is_ok_and(|m| m.ino() == held) {
            return Ok(Attempt::Taken(Lock { _file: file }));
        }
    }
}

/// Removes the files toolbox keeps beside toolbox `name` (its locks, held by the caller,
/// and its freshness stamp), once the toolbox is gone.
pub fn remove_companions(directory: &Path, name: &str) -> Result<()> {
    for file in [
        format!(".{name}.lock"),
        format!(".{name}.mount.lock"),
        format!(".{name}.checked"),
        format!(".{name}.held"),
    ] {
        match fs::remove_file(directory.join(&file)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {file}"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Creates the toolbox directory, readable by root alone: the trees in it hold the images'
/// setuid programs and device nodes, which any local user could otherwise run or open
/// through the tree's path (Docker keeps /var/lib/docker at 0710 for the same reason).
/// Missing parents are created as `mkdir -p` would.
pub fn make_directory(directory: &Path) -> Result<()> {
    check_ownership(directory)?;
    if let Some(parent) = directory.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create toolbox directory {}", directory.display()))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(directory) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e)
            .with_context(|| format!("cannot create toolbox directory {}", directory.display())),
        _ => tighten_directory(directory),
    }
}

/// Refuses, as root, a toolbox directory another user could change: it (or, not made
/// yet, the nearest directory above it that is there) and every directory above it must
/// belong to root, and those above be writable by root alone (or sticky, like /tmp),
/// checked on the directory actually opened, wherever symlinks led, as sshd checks the
/// paths of a user's keys. Another user's directory could have a tree swapped in whose
/// programs root would then run.
pub fn check_ownership(directory: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !sys::is_root() {
        return Ok(());
    }
    let refuse = |why: String| {
        anyhow::anyhow!(
            "refusing toolbox directory {}: {why}, who could replace what root runs from it; \
             make it root's, or choose another TOOLBOX_DIRECTORY",
            directory.display()
        )
    };
    let mut there = directory;
    let opened = loop {
        match rfs::open(
            there,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(opened) => break opened,
            Err(Errno::NOENT) => match there.parent() {
                Some(parent) => there = parent,
                None => return Ok(()),
            },
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("cannot open toolbox directory {}", there.display()));
            }
        }
    };
    let real = fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&opened)
    ))
    .with_context(|| format!("cannot resolve {}", there.display()))?;
    for (depth, dir) in real.ancestors().enumerate() {
        let meta = match depth {
            0 => File::from(opened.try_clone()?).metadata(),
            _ => fs::metadata(dir),
        }
        .with_context(|| format!("cannot inspect {}", dir.display()))?;
        if meta.uid() != 0 {
            return Err(refuse(format!(
                "{} belongs to user ID {}",
                dir.display(),
                meta.uid()
            )));
        }
        let sticky = meta.mode() & 0o1000 != 0;
        // The toolbox directory's own mode is mended by `tighten_directory`.
        if (depth > 0 || there != directory) && meta.mode() & 0o022 != 0 && !sticky {
            return Err(refuse(format!(
                "{} is writable by others (mode {:o})",
                dir.display(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

/// Takes away the access of others to an existing toolbox directory (one the CoreOS
/// script or an older toolbox made 0755), saying so; once done, a `stat` finds nothing to do.
pub fn tighten_directory(directory: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    check_ownership(directory)?;
    let mode = match fs::metadata(directory) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", directory.display())),
    };
    if mode & 0o077 == 0 {
        return Ok(());
    }
    fs::set_permissions(directory, fs::Permissions::from_mode(mode & 0o700))
        .with_context(|| format!("cannot restrict {} to root", directory.display()))?;
    crate::host::ui::say(format_args!(
        "made toolbox directory {} accessible to root only (mode {:o}, was {mode:o}): other \
         users could run the setuid programs of the images in it",
        directory.display(),
        mode & 0o700
    ));
    Ok(())
}

/// Removes partial trees left by interrupted creations of toolbox `name`. Call with the
/// creation lock held: no live process is building one then.
pub fn remove_partials(directory: &Path, name: &str) -> Result<()> {
    let prefix = partial_prefix(name);
    for entry in
        fs::read_dir(directory).with_context(|| format!("cannot list {}", directory.display()))?
    {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            // A creation killed while it had the overlay mounted to complete it.
            crate::store::overlay::unmount(&entry.path())?;
            fs::remove_dir_all(entry.path()).with_context(|| {
                format!(
                    "cannot remove stale partial toolbox {}",
                    entry.path().display()
                )
            })?;
        }
    }
    Ok(())
}

/// Where the session `session` of toolbox `name` stages its target's files (see
/// `runtime::target`): a directory beside the toolbox, the target mounted on it.
pub fn target_stage(directory: &Path, name: &str, session: u32) -> PathBuf {
    directory.join(format!(".{name}.target-{session}"))
}

/// Removes the target stages of toolbox `name` whose session is gone (killed outright):
/// unmounted, then removed.
pub fn remove_stale_stages(directory: &Path, name: &str) -> Result<()> {
    let prefix = format!(".{name}.target-");
    let Ok(entries) = fs::read_dir(directory) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        if pid.parse().is_ok_and(sys::process_exists) {
            continue;
        }
        let path = entry.path();
        // Nothing mounted there any more is as good.
        let _ = sys::detach_mount(&path);
        fs::remove_dir(&path)
            .with_context(|| format!("cannot remove stale target stage {}", path.display()))?;
    }
    Ok(())
}

/// Makes a fresh, empty partial tree for toolbox `name`.
pub fn make_partial(directory: &Path, name: &str) -> Result<PathBuf> {
    let path = directory.join(format!("{}{}", partial_prefix(name), std::process::id()));
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(path)
}

/// Makes a partial tree for toolbox `name` and has `fill` build it. If `fill` fails, the
/// partial tree is removed (unmounted first, if `fill` left it mounted) before the error is
/// returned: a failed creation leaves nothing in `directory`.
pub fn build_partial(
    directory: &Path,
    name: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let partial = make_partial(directory, name)?;
    if let Err(e) = fill(&partial) {
        // Best effort: the error matters more, and the next creation removes leftovers.
        let _ = crate::store::overlay::unmount(&partial);
        let _ = fs::remove_dir_all(&partial);
        return Err(e);
    }
    Ok(partial)
}

/// Completes a partial tree: [`prepare_tree`], then [`finish`].
pub fn complete(partial: &Path, metadata: &Metadata) -> Result<()> {
    prepare_tree(partial)?;
    finish(partial, metadata)
}

/// Gives a new tree what systemd-nspawn needs: an `etc/os-release` if the image has none
/// (as the CoreOS script did). Writes go through descriptors inside the tree, so symlinks
/// the image planted cannot redirect them.
pub fn prepare_tree(tree: &Path) -> Result<()> {
    let root = sys::open_dir(tree).with_context(|| format!("cannot open {}", tree.display()))?;
    let fail = |what: &str| format!("cannot write {what} in {}", tree.display());

    match rfs::mkdirat(&root, "etc", Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(io::Error::from(e)).with_context(|| fail("etc")),
    }
    // An existing os-release is left as it is; one that is not a regular file (a FIFO
    // would hang the open) is refused. A dangling link is left too.
    match sys::open_in_root(&root, b"etc/os-release", OFlags::PATH, 0) {
        Ok(found) => {
            let kind = rfs::FileType::from_raw_mode(rfs::fstat(&found)?.st_mode);
            if kind != rfs::FileType::RegularFile {
                bail!(
                    "`/etc/os-release` in the image is {}, where a regular file is needed",
                    sys::NotRegular::describe_type(kind)
                );
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match sys::open_in_root(
                &root,
                b"etc/os-release",
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                0o644,
            ) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| fail("etc/os-release")),
            }
        }
        Err(e) => return Err(e).with_context(|| fail("etc/os-release")),
    }
    Ok(())
}

/// Refuses a tree whose `/etc/passwd` or `/etc/group` (symlinks followed inside it) is
/// there but not a regular file: the engine reads both whenever it starts a container of
/// the image (even for a numeric user), and a FIFO there blocks it, holding the
/// container's lock, until something opens the FIFO.
pub fn check_account_files(tree: &Path) -> Result<()> {
    let root = sys::open_dir(tree).with_context(|| format!("cannot open {}", tree.display()))?;
    for file in ["etc/passwd", "etc/group"] {
        let found = match sys::open_in_root(&root, file.as_bytes(), OFlags::PATH, 0) {
            Ok(found) => found,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot look at /{file} in the image"));
            }
        };
        let kind = rfs::FileType::from_raw_mode(rfs::fstat(&found)?.st_mode);
        if kind != rfs::FileType::RegularFile {
            bail!(
                "`/{file}` in the image is {}, where the engine reads a regular file to start \
                 a container; remove it from the image",
                sys::NotRegular::describe_type(kind)
            );
        }
    }
    Ok(())
}

/// Writes the metadata file at the top of a new toolbox directory and flushes the
/// directory's filesystem to disk; the toolbox is complete once this returns.
pub fn finish(partial: &Path, metadata: &Metadata) -> Result<()> {
    let root =
        sys::open_dir(partial).with_context(|| format!("cannot open {}", partial.display()))?;
    let fail = |what: &str| format!("cannot write {what} in {}", partial.display());
    match rfs::unlinkat(&root, METADATA, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(io::Error::from(e)).with_context(|| fail(METADATA)),
    }
    let fd = rfs::openat(
        &root,
        METADATA,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(io::Error::from)
    .with_context(|| fail(METADATA))?;
    let mut file = File::from(fd);
    serde_json::to_writer_pretty(&mut file, metadata)?;
    file.write_all(b"\n").with_context(|| fail(METADATA))?;

    sys::sync_filesystem(root.as_fd())
        .with_context(|| format!("cannot flush {} to disk", partial.display()))?;
    Ok(())
}

/// Replaces the metadata of the complete toolbox at `path` atomically: a reader sees the
/// old file or the new one.
pub fn replace_metadata(path: &Path, metadata: &Metadata) -> Result<()> {
    let file = path.join(METADATA);
    let partial = path.join(format!("{METADATA}.partial-{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(OFlags::NOFOLLOW.bits() as i32)
            .mode(0o644)
            .open(&partial)?;
        serde_json::to_writer_pretty(&mut out, metadata)?;
        out.write_all(b"\n")?;
        out.sync_all()?;
        fs::rename(&partial, &file)
    };
    write()
        .inspect_err(|_| {
            let _ = fs::remove_file(&partial);
        })
        .with_context(|| format!("cannot replace {}", file.display()))?;
    sync_parent(&file)
}

/// Renames a completed partial tree to `path`, replacing an empty directory there. The
/// rename is atomic: `path` is either absent (or empty) or the whole new tree.
pub fn install(partial: &Path, path: &Path) -> Result<()> {
    if state(path)? == State::Empty {
        fs::remove_dir(path)
            .with_context(|| format!("cannot replace empty directory {}", path.display()))?;
    }
    match state(path)? {
        State::Missing => {}
        _ => bail!(
            "{} appeared while the toolbox was being created; left it alone",
            path.display()
        ),
    }
    fs::rename(partial, path)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), path.display()))?;
    sync_parent(path)
}

/// Flushes the directory holding `path`, so a rename into it survives a crash.
fn sync_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("cannot flush {}", parent.display()))?;
    }
    Ok(())
}

/// Puts a completed partial tree in place of the existing toolbox at `path` in one atomic
/// exchange (`renameat2(RENAME_EXCHANGE)`): at every moment `path` is the whole old tree
/// or the whole new one. Afterwards the old tree is at `partial`, for the caller to remove.
pub fn swap(partial: &Path, path: &Path) -> Result<()> {
    rfs::renameat_with(
        rfs::CWD,
        partial,
        rfs::CWD,
        path,
        rfs::RenameFlags::EXCHANGE,
    )
    .map_err(io::Error::from)
    .with_context(|| format!("cannot swap {} into {}", partial.display(), path.display()))?;
    sync_parent(path)
}

/// Removes a toolbox tree: first renamed aside (atomic), so an interrupted removal of a
/// large tree never leaves a half-deleted toolbox under its real name; what is left aside
/// is cleaned up by the next creation or removal.
pub fn remove(directory: &Path, name: &str) -> Result<()> {
    let path = directory.join(name);
    let aside = directory.join(format!(
        "{}removing-{}",
        partial_prefix(name),
        std::process::id()
    ));
    fs::rename(&path, &aside).with_context(|| format!("cannot move {} aside", path.display()))?;
    fs::remove_dir_all(&aside).with_context(|| format!("cannot remove {}", aside.display()))
}

/// Where the toolbox `name` that the last update replaced is kept, whole, until the next
/// update replaces it or `rm` removes the toolbox: `toolbox update --rollback` puts it
/// back.
pub fn previous(directory: &Path, name: &str) -> PathBuf {
    directory.join(format!(".{name}.previous"))
}

/// Keeps `old` (a toolbox tree just swapped out by an update) as the previous one of
/// toolbox `name`, in place of the one kept before, which is removed; returns that one's
/// metadata (for its anchor), if there was one.
pub fn keep_previous(directory: &Path, name: &str, old: &Path) -> Result<Option<Metadata>> {
    let previous = previous(directory, name);
    let replaced = complete_metadata(&previous).unwrap_or(None);
    if fs::symlink_metadata(&previous).is_ok() {
        let aside = directory.join(format!(
            "{}removing-{}",
            partial_prefix(name),
            std::process::id()
        ));
        fs::rename(&previous, &aside)
            .with_context(|| format!("cannot move {} aside", previous.display()))?;
        fs::remove_dir_all(&aside).with_context(|| format!("cannot remove {}", aside.display()))?;
    }
    fs::rename(old, &previous)
        .with_context(|| format!("cannot keep {} as {}", old.display(), previous.display()))?;
    sync_parent(&previous)?;
    Ok(replaced)
}

/// Removes the previous toolbox kept for `name`, if any; returns its metadata.
pub fn remove_previous(directory: &Path, name: &str) -> Result<Option<Metadata>> {
    let previous = previous(directory, name);
    let metadata = complete_metadata(&previous).unwrap_or(None);
    match fs::symlink_metadata(&previous) {
        Ok(_) => {
            crate::store::overlay::unmount(&previous)?;
            fs::remove_dir_all(&previous)
                .with_context(|| format!("cannot remove {}", previous.display()))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", previous.display())),
    }
    Ok(metadata)
}

/// How many files of the toolbox at `path` (complete, with `metadata`) were changed since
/// it was created: for overlay storage, what its upper directory holds (removals
/// included); for a copy, what was written after its creation. Empty files (the mount
/// points sessions need), directories and what systemd-nspawn writes on every start are
/// not counted.
pub fn changed_files(path: &Path, metadata: &Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    // A copy's files changed after its metadata file was written, the last of its
    // creation (a tree without one, adopted, counts whole).
    let (top, since) = match metadata.overlay {
        Some(_) => (crate::store::overlay::upper(path), None),
        None => {
            let created = fs::symlink_metadata(path.join(METADATA))
                .map_or((0, 0), |m| (m.ctime(), m.ctime_nsec()));
            (path.to_path_buf(), Some(created))
        }
    };
    let Ok(device) = fs::symlink_metadata(&top).map(|m| m.dev()) else {
        return 0;
    };
    let written: Vec<PathBuf> = crate::model::plan::SESSION_WRITTEN_FILES
        .iter()
        .map(|file| top.join(file.trim_start_matches('/')))
        .collect();
    let mut changed = 0;
    let mut pending = vec![top.clone()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let path = entry.path();
            if meta.dev() != device
                || entry.file_name() == METADATA
                || written.contains(&path)
                || is_base_link(&top, &path)
            {
                continue;
            }
            if meta.is_dir() {
                pending.push(path);
                continue;
            }
            let empty = meta.is_file() && meta.len() == 0;
            let recent = since.is_none_or(|created| (meta.ctime(), meta.ctime_nsec()) > created);
            if !empty && recent {
                changed += 1;
            }
        }
    }
    changed
}

/// Whether `path` is one of the links systemd-nspawn makes at the top of a tree that lacks
/// them (`bin -> usr/bin`, as systemd 252 `base_filesystem_create` does): its, not a user's.
fn is_base_link(top: &Path, path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    path.parent() == Some(top)
        && ["bin", "sbin", "lib", "lib64"].contains(&name)
        && fs::read_link(path).is_ok_and(|target| target == Path::new("usr").join(name))
}

/// Records that toolbox `name` was rolled back from image `image_id`: an update at entry
/// (`TOOLBOX_UPDATE=auto`) does not apply that image again; `toolbox update` does.
pub fn hold(directory: &Path, name: &str, image_id: &str) -> Result<()> {
    let path = directory.join(format!(".{name}.held"));
    fs::write(&path, image_id).with_context(|| format!("cannot write {}", path.display()))
}

/// The image toolbox `name` was rolled back from, if it was (see [`hold`]).
pub fn held(directory: &Path, name: &str) -> Option<String> {
    let file = sys::open_regular(
        &directory.join(format!(".{name}.held")),
        OFlags::RDONLY | OFlags::NOFOLLOW,
    )
    .ok()??;
    let bytes = sys::read_bounded(file, 1024).ok()??;
    Some(String::from_utf8_lossy(&bytes).trim().to_string())
}

/// Forgets a rollback's hold (see [`hold`]).
pub fn release(directory: &Path, name: &str) -> Result<()> {
    match fs::remove_file(directory.join(format!(".{name}.held"))) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot release the hold of `{name}`"))
        }
        _ => Ok(()),
    }
}

/// The file in the toolbox directory that overlay toolboxes' anchors run.
pub const IDLE_BINARY: &str = ".toolbox-idle";

/// toolbox's own binary `exe`, copied into `directory` as [`IDLE_BINARY`]: what overlay
/// toolboxes' anchors run (as `toolbox-idle`), at a path that stays when toolbox is
/// upgraded, moved or removed, since the engine binds it again at every restart. Linked
/// (or copied) when missing or when its contents differ from `exe`'s; replaced
/// atomically.
pub fn idle_binary(directory: &Path, exe: &Path) -> Result<PathBuf> {
    let idle = directory.join(IDLE_BINARY);
    if same_contents(exe, &idle) {
        return Ok(idle);
    }
    let partial_prefix = format!("{IDLE_BINARY}.partial-");
    remove_dead_partials(directory, &partial_prefix);
    let partial = directory.join(format!("{partial_prefix}{}", std::process::id()));
    // A partial an earlier process of this PID left may be a hard link to a binary
    // elsewhere (its link made, its rename not): never written through, it goes first.
    let _ = fs::remove_file(&partial);
    // A hard link costs no space; toolbox's binary replaced later keeps this one whole.
    let copied = fs::hard_link(exe, &partial)
        .or_else(|_| {
            let mut from = File::open(exe)?;
            let mut to = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o755)
                .open(&partial)?;
            io::copy(&mut from, &mut to).map(drop)
        })
        .and_then(|()| fs::rename(&partial, &idle));
    if let Err(e) = copied {
        let _ = fs::remove_file(&partial);
        return Err(e)
            .with_context(|| format!("cannot copy {} to {}", exe.display(), idle.display()));
    }
    Ok(idle)
}

/// Whether `copy` is a regular file with `original`'s bytes: the same file, or one of the
/// same size whose contents compare equal (two builds may have one size).
fn same_contents(original: &Path, copy: &Path) -> bool {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let (Ok(a), Ok(b)) = (fs::metadata(original), fs::symlink_metadata(copy)) else {
        return false;
    };
    if !b.is_file() || a.len() != b.len() {
        return false;
    }
    if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
        return true;
    }
    let (Ok(a), Ok(b)) = (File::open(original), File::open(copy)) else {
        return false;
    };
    let (mut a, mut b) = (io::BufReader::new(a), io::BufReader::new(b));
    let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = match a.read(&mut x) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return b.read(&mut y[..1]).is_ok_and(|m| m == 0);
        }
        if b.read_exact(&mut y[..n]).is_err() || x[..n] != y[..n] {
            return false;
        }
    }
}

/// Removes the files named `PREFIX<PID>` in `directory` whose process is gone.
fn remove_dead_partials(directory: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(prefix)
            && pid.parse().is_ok_and(|pid| !sys::process_exists(pid))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// toolbox's binary at a path systemd-nspawn and the engine can open on the host: the
/// one executed; or, for toolbox run from its image and moved into the host's mount
/// namespace, where the image's files are out of reach, its copy in `directory`
/// ([`IDLE_BINARY`], made when `may_write`; otherwise the path it will have).
pub fn own_binary(directory: &Path, may_write: bool) -> Result<PathBuf> {
    match sys::own_binary() {
        Some(path) => Ok(path),
        None if may_write => {
            make_directory(directory)?;
            idle_binary(directory, Path::new("/proc/self/exe"))
        }
        None => Ok(directory.join(IDLE_BINARY)),
    }
}

/// The names of the toolboxes in `directory`: complete and adopted trees, in order.
pub fn list(directory: &Path) -> Result<Vec<(String, State)>> {
    check_ownership(directory)?;
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", directory.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let state = state(&directory.join(&name))?;
        if matches!(state, State::Complete | State::Adopted) {
            found.push((name, state));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Disk space used by a tree, in bytes: allocated blocks, hard-linked files counted once,
/// symlinks not followed, other filesystems (a mounted overlay) not entered.
pub fn disk_usage(path: &Path) -> u64 {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            if meta.dev() != top.dev() {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

/// Adds a user to a toolbox tree as the host has it: its `passwd` line, its primary
/// group's `group` line when the tree lacks that group, and its home directory. Writes go
/// through descriptors inside the tree. Returns whether the user was added.
pub fn add_user(root: &Path, passwd_line: &str, group_line: Option<&str>) -> Result<bool> {
    let fields: Vec<&str> = passwd_line.split(':').collect();
    let [name, _, uid, gid, _, home, ..] = fields[..] else {
        bail!("malformed passwd line `{passwd_line}`");
    };
    let (uid, gid): (u32, u32) = (uid.parse()?, gid.parse()?);
    let tree = sys::open_dir(root).with_context(|| format!("cannot open {}", root.display()))?;
    let cannot = |path: &[u8]| {
        format!(
            "cannot use {} in {}",
            String::from_utf8_lossy(path),
            root.display()
        )
    };
    // Regular files only, bounded: a FIFO would hang this, a device feed it without end.
    let read = |path: &[u8]| -> Result<String> {
        let Some(file) =
            sys::open_regular_in_root(&tree, path, OFlags::RDONLY).with_context(|| cannot(path))?
        else {
            return Ok(String::new());
        };
        let bytes = sys::read_bounded(file, crate::model::account::MAX_FILE)
            .with_context(|| cannot(path))?
            .ok_or_else(|| anyhow::anyhow!("{}: it is too large", cannot(path)))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    if read(b"etc/passwd")?
        .lines()
        .any(|l| l.split(':').next() == Some(name))
    {
        return Ok(false);
    }
    let append = |path: &[u8], line: &str| -> Result<()> {
        let file = sys::open_regular_in_root(&tree, path, OFlags::WRONLY | OFlags::APPEND)
            .with_context(|| cannot(path))?;
        let mut file = match file {
            Some(file) => file,
            None => File::from(
                sys::open_in_root(
                    &tree,
                    path,
                    OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::EXCL,
                    0o644,
                )
                .with_context(|| cannot(path))?,
            ),
        };
        writeln!(file, "{line}")?;
        Ok(())
    };
    append(b"etc/passwd", passwd_line)?;
    let has_group = read(b"etc/group")?
        .lines()
        .any(|l| l.split(':').nth(2).and_then(|g| g.parse().ok()) == Some(gid));
    if let (false, Some(group_line)) = (has_group, group_line) {
        append(b"etc/group", group_line)?;
    }
    let home = home.trim_start_matches('/');
    if !home.is_empty() {
        let (parent, leaf) = home.rsplit_once('/').unwrap_or(("", home));
        let parent_fd = sys::open_in_root(
            &tree,
            parent.as_bytes(),
            OFlags::PATH | OFlags::DIRECTORY,
            0,
        );
        // A home whose parent is missing is left out: the user still resolves.
        if let Ok(parent_fd) = parent_fd
            && rfs::mkdirat(&parent_fd, leaf, Mode::from_raw_mode(0o700)).is_ok()
        {
            rfs::chownat(
                &parent_fd,
                leaf,
                Some(rfs::Uid::from_raw(uid)),
                Some(rfs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io::Error::from)
            .with_context(|| format!("cannot give /{home} to {name}"))?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn metadata() -> Metadata {
        Metadata {
            image: "debian:bookworm".into(),
            image_id: "sha256:1".into(),
            created: "2026-01-01T00:00:00Z".into(),
            overlay: None,
            imported_from: None,
        }
    }

    // Regression: a partial an earlier process of the same PID left, a hard link to a
    // binary outside the toolbox directory, was truncated and written through; and a
    // binary of the same size as the copy was taken for it.
    #[test]
    fn the_idle_binary_is_never_written_through_a_stale_partial_and_is_compared_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (toolboxes, elsewhere) = (dir.path().join("toolboxes"), dir.path().join("bin"));
        fs::create_dir_all(&toolboxes).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        let outside = elsewhere.join("installed");
        fs::write(&outside, "installed toolbox").unwrap();
        let exe = elsewhere.join("exe");
        fs::write(&exe, "image's toolbox!!").unwrap();
        assert_eq!(
            fs::metadata(&outside).unwrap().len(),
            fs::metadata(&exe).unwrap().len()
        );
        let ours = toolboxes.join(format!("{IDLE_BINARY}.partial-{}", std::process::id()));
        fs::hard_link(&outside, &ours).unwrap();
        // One of a process that is gone (PID 0 is no process's).
        let dead = toolboxes.join(format!("{IDLE_BINARY}.partial-0"));
        fs::write(&dead, "left by a killed run").unwrap();
        // The installed binary's copy is there, of the same size as the one wanted.
        fs::hard_link(&outside, toolboxes.join(IDLE_BINARY)).unwrap();

        let idle = idle_binary(&toolboxes, &exe).unwrap();
        assert_eq!(fs::read_to_string(&idle).unwrap(), "image's toolbox!!");
        assert_eq!(fs::read_to_string(&outside).unwrap(), "installed toolbox");
        assert!(!ours.exists() && !dead.exists());
        // The same contents again: kept as it is.
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&idle);
        let copy = elsewhere.join("copy");
        fs::copy(&exe, &copy).unwrap();
        assert_eq!(inode(&idle_binary(&toolboxes, &copy).unwrap()), before);
    }

    // Metadata written before overlay storage existed reads as copy storage.
    #[test]
    fn older_metadata_reads_as_copy_storage() {
        let text = r#"{"image": "debian:bookworm", "image_id": "sha256:1", "created": "2026-01-01T00:00:00Z"}"#;
        let read: Metadata = serde_json::from_str(text).unwrap();
        assert_eq!(read, metadata());
        assert_eq!(read.storage(), Storage::Copy);
        let overlay = Metadata {
            overlay: Some(Overlay {
                layers: vec!["/var/lib/docker/overlay2/a/diff".into()],
                anchor: "c0ffee".into(),
            }),
            ..metadata()
        };
        let text = serde_json::to_string(&overlay).unwrap();
        assert_eq!(serde_json::from_str::<Metadata>(&text).unwrap(), overlay);
        assert_eq!(overlay.storage(), Storage::Overlay);
    }

    #[test]
    fn states() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core-fedora-latest");
        assert_eq!(state(&path).unwrap(), State::Missing);
        fs::create_dir(&path).unwrap();
        assert_eq!(state(&path).unwrap(), State::Empty);
        fs::write(path.join("junk"), "").unwrap();
        assert_eq!(state(&path).unwrap(), State::Foreign);
        fs::create_dir(path.join("etc")).unwrap();
        // A relative symlink, as Fedora ships it, even dangling, marks a CoreOS tree.
        std::os::unix::fs::symlink("../usr/lib/os-release", path.join("etc/os-release")).unwrap();
        assert_eq!(state(&path).unwrap(), State::Adopted);
        fs::write(path.join(METADATA), "{}").unwrap();
        assert_eq!(state(&path).unwrap(), State::Complete);
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        assert_eq!(state(&file).unwrap(), State::Foreign);
    }

    #[test]
    fn complete_and_install() {
        let dir = tempfile::tempdir().unwrap();
        let _lock = lock_for_create(dir.path(), "core-x").unwrap();
        let partial = make_partial(dir.path(), "core-x").unwrap();
        complete(&partial, &metadata()).unwrap();
        assert!(partial.join("etc/os-release").is_file());
        let path = dir.path().join("core-x");
        fs::create_dir(&path).unwrap();
        install(&partial, &path).unwrap();
        assert_eq!(state(&path).unwrap(), State::Complete);
        assert_eq!(read_metadata(&path).unwrap(), metadata());
        assert!(!partial.exists());
    }

    #[test]
    fn install_never_replaces_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let partial = make_partial(dir.path(), "core-x").unwrap();
        let path = dir.path().join("core-x");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("precious"), "keep").unwrap();
        assert!(install(&partial, &path).is_err());
        assert_eq!(fs::read(path.join("precious")).unwrap(), b"keep");
    }

    // An image can ship `etc` or the metadata file's name as symlinks pointing at the
    // host; completing the tree must never write through them.
    #[test]
    fn completing_writes_only_inside_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();

        let partial = make_partial(dir.path(), "core-x").unwrap();
        std::os::unix::fs::symlink(&outside, partial.join("etc")).unwrap();
        let _ = complete(&partial, &metadata());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        fs::remove_dir_all(&partial).unwrap();

        let partial = make_partial(dir.path(), "core-x").unwrap();
        std::os::unix::fs::symlink(outside.join("meta"), partial.join(METADATA)).unwrap();
        complete(&partial, &metadata()).unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert!(
            fs::symlink_metadata(partial.join(METADATA))
                .unwrap()
                .is_file()
        );
    }

    #[test]
    fn swap_exchanges_trees() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core-x");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("old"), "").unwrap();
        let partial = make_partial(dir.path(), "core-x").unwrap();
        fs::write(partial.join("new"), "").unwrap();
        swap(&partial, &path).unwrap();
        assert!(path.join("new").exists() && partial.join("old").exists());
    }

    #[test]
    fn remove_and_list() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b", "a"] {
            fs::create_dir_all(dir.path().join(name).join("etc")).unwrap();
            fs::write(dir.path().join(name).join("etc/os-release"), "").unwrap();
        }
        fs::create_dir(dir.path().join(".a.partial-1")).unwrap();
        fs::create_dir(dir.path().join("junk")).unwrap();
        fs::write(dir.path().join("junk/x"), "").unwrap();
        let names: Vec<_> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["a", "b"]);
        remove(dir.path(), "a").unwrap();
        let names: Vec<_> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["b"]);
        assert!(disk_usage(&dir.path().join("b")) > 0);
        assert!(list(&dir.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn users_are_added_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::create_dir_all(dir.path().join("home")).unwrap();
        fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(dir.path().join("etc/group"), "root:x:0:\n").unwrap();
        let me = rustix::process::geteuid().as_raw();
        let line = format!("bob:x:{me}:{me}:Bob:/home/bob:/bin/bash");
        let group = format!("bob:x:{me}:");
        assert!(add_user(dir.path(), &line, Some(&group)).unwrap());
        assert!(!add_user(dir.path(), &line, Some(&group)).unwrap());
        let passwd = fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
        assert_eq!(passwd, format!("root:x:0:0::/root:/bin/sh\n{line}\n"));
        let groups = fs::read_to_string(dir.path().join("etc/group")).unwrap();
        assert_eq!(groups.lines().count(), if me == 0 { 1 } else { 2 });
        assert!(dir.path().join("home/bob").is_dir());
    }

    #[test]
    fn changed_files_are_what_sessions_wrote_less_mount_points_and_nspawns_own() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("core-x");
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::create_dir_all(tree.join("usr/bin")).unwrap();
        fs::write(tree.join("etc/unpacked"), "from the image").unwrap();
        // Created: its metadata written last. (Change times move with the kernel's tick.)
        fs::write(tree.join(METADATA), "{}").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::create_dir_all(tree.join("root/deep")).unwrap();
        fs::write(tree.join("root/keep"), "precious").unwrap();
        fs::write(tree.join("root/deep/also"), "x").unwrap();
        fs::write(tree.join("etc/resolv.conf"), "nameserver 192.0.2.1").unwrap();
        fs::write(tree.join("mount-point"), "").unwrap();
        std::os::unix::fs::symlink("usr/bin", tree.join("bin")).unwrap();
        let copy = metadata();
        assert_eq!(changed_files(&tree, &copy), 2);
        // An adopted tree, with no metadata file: every file may be the user's.
        fs::remove_file(tree.join(METADATA)).unwrap();
        assert_eq!(changed_files(&tree, &copy), 3);
        let later = metadata();
        // Overlay storage: whatever the upper directory holds.
        let overlay = Metadata {
            overlay: Some(Overlay {
                layers: Vec::new(),
                anchor: "a".into(),
            }),
            ..later
        };
        fs::create_dir_all(tree.join("upper/etc")).unwrap();
        fs::write(tree.join("upper/mine"), "x").unwrap();
        fs::write(tree.join("upper/etc/localtime"), "UTC").unwrap();
        assert_eq!(changed_files(&tree, &overlay), 1);
    }

    #[test]
    fn an_update_keeps_one_previous_tree() {
        let dir = tempfile::tempdir().unwrap();
        for (tree, file) in [("old", "first"), ("older", "second")] {
            let path = dir.path().join(tree);
            fs::create_dir(&path).unwrap();
            fs::write(path.join(file), "").unwrap();
            keep_previous(dir.path(), "core-x", &path).unwrap();
            assert!(!path.exists());
        }
        let previous = previous(dir.path(), "core-x");
        assert!(previous.join("second").exists() && !previous.join("first").exists());
        remove_previous(dir.path(), "core-x").unwrap();
        assert!(!previous.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    // Regression: a toolbox directory made first by another user stayed hers after
    // toolbox tightened its mode, and she could swap in a tree root then ran.
    #[test]
    fn a_toolbox_directory_another_user_owns_is_refused() {
        if !sys::is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let hers = dir.path().join("hers");
        fs::create_dir(&hers).unwrap();
        std::os::unix::fs::chown(&hers, Some(65534), Some(65534)).unwrap();
        let err = check_ownership(&hers).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{} belongs to user ID 65534", hers.display())),
            "{err}"
        );
        // Not made yet, beneath hers: the same.
        assert!(check_ownership(&hers.join("toolboxes")).is_err());
        assert!(make_directory(&hers.join("toolboxes")).is_err());
        assert!(!hers.join("toolboxes").exists());
        // A directory others may write in, above a root-owned one.
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_ownership(&open.join("toolboxes"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is writable by others (mode 777)"), "{err}");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        check_ownership(&open.join("toolboxes")).unwrap();
    }

    #[test]
    fn stale_partials_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".core-x.partial-999999");
        fs::create_dir_all(stale.join("usr/bin")).unwrap();
        let other = dir.path().join(".core-y.partial-1");
        fs::create_dir(&other).unwrap();
        remove_partials(dir.path(), "core-x").unwrap();
        assert!(!stale.exists());
        assert!(other.exists());
    }
}
