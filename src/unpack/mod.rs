//! unpack: turn a tar stream (what `docker export` sends) into a directory tree.
//!
//! Every entry is created relative to a directory file descriptor inside the target, with
//! parents resolved by the kernel under `RESOLVE_IN_ROOT` and the last component never
//! followed, so nothing is created, changed or followed outside the target whatever the
//! archive says: `..` components are refused, absolute names and symlinks (absolute or
//! relative) resolve inside the target, as they will inside the container.
//!
//! Kept as the image has them: file modes with setuid, setgid and sticky bits, owners,
//! modification times, extended attributes carried as `SCHILY.xattr.*` PAX records (file
//! capabilities among them), hard links (also to symlinks), symlinks verbatim, device
//! nodes and FIFOs as real nodes. Directory modes and times are applied last, so a
//! read-only directory can still be filled and its time is not disturbed by its children.
//!
//! The archive is read once, as a stream; nothing is buffered beyond one copy buffer.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use tar::EntryType;

use crate::sys::{self, Errno};

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Give entries the owners the archive names. Needs root; off, everything belongs to
    /// the caller.
    pub preserve_owners: bool,
}

/// What was unpacked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
}

/// Why an unpack failed. Always names the entry when one is at fault.
#[derive(Debug)]
pub struct Error {
    entry: Option<String>,
    source: io::Error,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entry {
            Some(entry) => write!(f, "archive entry `{entry}`: {}", self.source),
            None => write!(f, "reading the archive: {}", self.source),
        }
    }
}

impl std::error::Error for Error {}

/// Size of the file-content copy buffer.
const COPY_BUFFER: usize = 256 * 1024;

/// Copies an entry's content into `file`, filling the buffer before each write.
fn copy(mut from: impl Read, file: &mut File, buffer: &mut [u8]) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let mut filled = 0;
        while filled < buffer.len() {
            match from.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(total);
        }
        file.write_all(&buffer[..filled])?;
        total += filled as u64;
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Unpacks `archive` into the existing, empty directory `target`.
pub fn unpack(archive: impl Read, target: &Path, options: Options) -> Result<Stats, Error> {
    let stream_error = |source| Error {
        entry: None,
        source,
    };
    let root = sys::open_dir(target).map_err(stream_error)?;
    // Reading in large blocks keeps syscalls few when the source is a file or a pipe.
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(COPY_BUFFER, archive));
    let mut unpacker = Unpacker {
        root,
        options,
        directories: Vec::new(),
        stats: Stats::default(),
        buffer: vec![0; COPY_BUFFER],
    };
    for entry in archive.entries().map_err(stream_error)? {
        let mut entry = entry.map_err(stream_error)?;
        let name = entry.path_bytes().into_owned();
        unpacker.entry(&mut entry, &name).map_err(|source| Error {
            entry: Some(printable(&name)),
            source,
        })?;
    }
    unpacker.finish_directories()?;
    Ok(unpacker.stats)
}

/// A name for messages: invalid UTF-8 and control characters are escaped.
fn printable(name: &[u8]) -> String {
    String::from_utf8_lossy(name).escape_debug().to_string()
}

/// The metadata an entry asks for.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Directory {
    path: Vec<u8>,
    meta: Meta,
}

struct Unpacker {
    root: OwnedFd,
    options: Options,
    /// Directories whose mode, owner and time are applied once everything is written.
    directories: Vec<Directory>,
    stats: Stats,
    /// One copy buffer for every file: large writes mean few syscalls.
    buffer: Vec<u8>,
}

/// Splits an entry name into its components inside the target: leading `/`, empty and `.`
/// components are dropped; `..` is refused.
fn components(name: &[u8]) -> io::Result<Vec<&[u8]>> {
    let mut parts = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(invalid("refusing a path with a `..` component")),
            part => parts.push(part),
        }
    }
    Ok(parts)
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b'/')
}

fn read_meta<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Meta> {
    let header = entry.header();
    let mut meta = Meta {
        mode: header.mode()? & 0o7777,
        uid: header
            .uid()?
            .try_into()
            .map_err(|_| invalid("owner ID out of range"))?,
        gid: header
            .gid()?
            .try_into()
            .map_err(|_| invalid("group ID out of range"))?,
        mtime: header.mtime()?.try_into().unwrap_or(i64::MAX),
        xattrs: Vec::new(),
    };
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(meta);
    };
    let number = |value: &[u8]| -> io::Result<u64> {
        let text = std::str::from_utf8(value).map_err(|_| invalid("PAX number is not text"))?;
        // A PAX time may have a fraction: whole seconds are kept.
        let whole = text.split('.').next().unwrap_or_default();
        whole
            .parse()
            .map_err(|_| invalid(format!("bad PAX number `{text}`")))
    };
    for extension in extensions {
        let extension = extension?;
        let key = extension.key_bytes();
        let value = extension.value_bytes();
        match key {
            b"uid" => {
                meta.uid = number(value)?
                    .try_into()
                    .map_err(|_| invalid("PAX uid out of range"))?
            }
            b"gid" => {
                meta.gid = number(value)?
                    .try_into()
                    .map_err(|_| invalid("PAX gid out of range"))?
            }
            b"mtime" => meta.mtime = number(value)?.try_into().unwrap_or(i64::MAX),
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    meta.xattrs.push((name.to_vec(), value.to_vec()));
                }
            }
        }
    }
    Ok(meta)
}

fn timestamps(mtime: i64) -> Timestamps {
    let time = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: time,
        last_modification: time,
    }
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>, name: &[u8]) -> io::Result<()> {
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let parts = components(name)?;
        let meta = read_meta(entry)?;
        self.stats.entries += 1;
        let Some((last, parent_parts)) = parts.split_last() else {
            // The archive's own `./`: its metadata is the target's.
            if kind != EntryType::Directory {
                return Err(invalid("the archive root must be a directory"));
            }
            self.directories.push(Directory {
                path: Vec::new(),
                meta,
            });
            return Ok(());
        };
        let parent = self.parent_dir(parent_parts)?;
        let last = OsStr::from_bytes(last);
        match kind {
            EntryType::Directory => {
                self.make_dir(&parent, last)?;
                self.directories.push(Directory {
                    path: join(&parts),
                    meta,
                });
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let file = create(&parent, last, |name| {
                    rfs::openat(
                        &parent,
                        name,
                        OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::WRONLY
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                })?;
                let mut file = File::from(file);
                self.stats.bytes += copy(entry, &mut file, &mut self.buffer)?;
                self.apply_fd(file.as_fd(), &meta)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid("symlink without a target"))?
                    .into_owned();
                create(&parent, last, |name| {
                    rfs::symlinkat(target.as_slice(), &parent, name)
                })?;
                self.apply_at(&parent, last, &meta, false)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid("hard link without a target"))?
                    .into_owned();
                let target_parts = components(&target)?;
                let Some((target_last, target_parent)) = target_parts.split_last() else {
                    return Err(invalid("hard link to the archive root"));
                };
                let target_dir = sys::open_in_root(
                    &self.root,
                    &join(target_parent),
                    OFlags::PATH | OFlags::DIRECTORY,
                    0,
                )
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("hard link target `{}`: {e}", printable(&target)),
                    )
                })?;
                // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never what it
                // points to: hard links to absolute symlinks stay inside the tree.
                create(&parent, last, |name| {
                    rfs::linkat(
                        &target_dir,
                        OsStr::from_bytes(target_last),
                        &parent,
                        name,
                        AtFlags::empty(),
                    )
                })
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("hard link to `{}`: {e}", printable(&target)),
                    )
                })?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (file_type, device) = match kind {
                    EntryType::Char => (FileType::CharacterDevice, device_number(entry)?),
                    EntryType::Block => (FileType::BlockDevice, device_number(entry)?),
                    _ => (FileType::Fifo, 0),
                };
                create(&parent, last, |name| {
                    rfs::mknodat(&parent, name, file_type, Mode::from_raw_mode(0o600), device)
                })?;
                self.apply_at(&parent, last, &meta, true)?;
            }
            other => return Err(invalid(format!("unsupported entry type {other:?}"))),
        }
        Ok(())
    }

    /// The directory that will hold an entry, creating missing ones the archive skipped.
    fn parent_dir(&self, parts: &[&[u8]]) -> io::Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::DIRECTORY;
        match sys::open_in_root(&self.root, &join(parts), flags, 0) {
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {}
            result => return result,
        }
        let mut dir = self.root.try_clone()?;
        for depth in 1..=parts.len() {
            match sys::open_in_root(&self.root, &join(&parts[..depth]), flags, 0) {
                Ok(next) => dir = next,
                Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                    let name = OsStr::from_bytes(parts[depth - 1]);
                    match rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                        // Only a symlink to a missing place exists yet cannot be opened.
                        Err(Errno::EXIST) => {
                            return Err(invalid(format!(
                                "`{}` is a symlink to a missing directory",
                                printable(&join(&parts[..depth]))
                            )));
                        }
                        result => result?,
                    }
                    dir = sys::open_in_root(&self.root, &join(&parts[..depth]), flags, 0)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(dir)
    }

    /// Makes a directory, keeping one that is already there and replacing anything else.
    fn make_dir(&self, parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
        match rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Err(Errno::EXIST) => {
                let stat = rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                    return Ok(());
                }
                remove(parent, name)?;
                Ok(rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700))?)
            }
            result => Ok(result?),
        }
    }

    /// Owner, then mode (chown clears setuid), then xattrs, then times, on an open file.
    fn apply_fd(&self, fd: impl AsFd, meta: &Meta) -> io::Result<()> {
        let fd = fd.as_fd();
        if self.options.preserve_owners {
            rfs::fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )?;
        }
        rfs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
        for (name, value) in &meta.xattrs {
            match rfs::fsetxattr(fd, OsStr::from_bytes(name), value, rfs::XattrFlags::empty()) {
                Ok(()) => {}
                // File capabilities make ping and friends work: losing them is an error.
                // Other attributes (SELinux labels, user.*) are kept where the filesystem
                // and the security module let us.
                Err(e) if name.as_slice() == b"security.capability" => {
                    return Err(io::Error::new(
                        io::Error::from(e).kind(),
                        format!("cannot set its file capabilities: {e}"),
                    ));
                }
                Err(_) => {}
            }
        }
        rfs::futimens(fd, &timestamps(meta.mtime))?;
        Ok(())
    }

    /// Owner, mode and time of an entry that cannot be opened: symlinks and nodes.
    fn apply_at(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        set_mode: bool,
    ) -> io::Result<()> {
        if self.options.preserve_owners {
            rfs::chownat(
                parent,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        if set_mode {
            // The entry was just made by us and is not a symlink, so following is safe.
            rfs::chmodat(
                parent,
                name,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )?;
        }
        rfs::utimensat(
            parent,
            name,
            &timestamps(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Applies directory metadata, deepest last-seen first, so a directory that forbids
    /// writing is only closed after its contents are in place.
    fn finish_directories(&mut self) -> Result<(), Error> {
        for directory in self.directories.iter().rev() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
            let fd = match sys::open_in_root(&self.root, &directory.path, flags, 0) {
                Ok(fd) => fd,
                // A later entry replaced it with something else: nothing to apply.
                Err(e) if matches!(e.raw_os_error(), Some(code) if code == Errno::LOOP.raw_os_error() || code == Errno::NOTDIR.raw_os_error() || code == Errno::NOENT.raw_os_error()) =>
                {
                    continue;
                }
                Err(source) => {
                    return Err(Error {
                        entry: Some(printable(&directory.path)),
                        source,
                    });
                }
            };
            self.apply_fd(&fd, &directory.meta)
                .map_err(|source| Error {
                    entry: Some(printable(&directory.path)),
                    source,
                })?;
        }
        Ok(())
    }
}

/// Creates an entry with `make`, replacing whatever is already at `name` (as tar does for
/// a later duplicate entry). A non-empty directory is never replaced.
fn create<T>(
    parent: &OwnedFd,
    name: &OsStr,
    make: impl Fn(&OsStr) -> rustix::io::Result<T>,
) -> io::Result<T> {
    match make(name) {
        Err(Errno::EXIST) => {
            remove(parent, name)?;
            Ok(make(name)?)
        }
        result => Ok(result?),
    }
}

fn remove(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match rfs::unlinkat(parent, name, AtFlags::empty()) {
        Err(Errno::ISDIR) => match rfs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
            Err(Errno::NOTEMPTY) => Err(invalid("would replace a directory that is not empty")),
            result => Ok(result?),
        },
        result => Ok(result?),
    }
}

fn device_number<R: Read>(entry: &tar::Entry<R>) -> io::Result<rfs::Dev> {
    let header = entry.header();
    let major = header
        .device_major()?
        .ok_or_else(|| invalid("device without a major number"))?;
    let minor = header
        .device_minor()?
        .ok_or_else(|| invalid("device without a minor number"))?;
    Ok(rfs::makedev(major, minor))
}

#[cfg(test)]
mod tests;
