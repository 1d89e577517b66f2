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
//! Creating inodes is what an unpack spends its time on (the kernel's work, per file), so
//! entries are created by several worker threads while one thread reads the stream. The
//! result is the sequential one: entries of one directory go to one worker, in archive
//! order; anything whose outcome depends on earlier entries elsewhere (hard links, paths
//! through symlinks the archive made, large files) waits until every worker is idle and
//! is then done in order. The archive is read once, as a stream; memory stays bounded
//! (small files travel to workers whole, at most a few per worker).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Condvar, Mutex};

use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use tar::EntryType;

use crate::sys::{self, Errno};

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Give entries the owners the archive names. Needs root; off, everything belongs to
    /// the caller.
    pub preserve_owners: bool,
    /// Threads creating entries besides the reading one; 0 creates everything on it.
    pub workers: usize,
}

impl Options {
    /// Owners kept when running as root, one worker per CPU (at least two: creating files
    /// waits on the kernel).
    pub fn for_this_host() -> Options {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Options {
            preserve_owners: sys::is_root(),
            workers: cpus.max(2),
        }
    }
}

/// What was unpacked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
}

/// Counters another thread may read while an archive is being unpacked: entries read and
/// bytes of file data so far.
#[derive(Debug, Default)]
pub struct Progress {
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
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

impl Error {
    /// What went wrong, without the entry.
    pub fn io(&self) -> &io::Error {
        &self.source
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Read-buffer size, and the largest file sent to a worker whole; larger files are
/// streamed by the reading thread.
const BLOCK: usize = 256 * 1024;
/// Jobs queued per worker.
const QUEUE: usize = 4;

/// Unpacks `archive` into the existing, empty directory `target`.
pub fn unpack(archive: impl Read, target: &Path, options: Options) -> Result<Stats, Error> {
    unpack_watched(archive, target, options, &Progress::default())
}

/// [`unpack`], keeping `progress` up to date as it goes.
pub fn unpack_watched(
    archive: impl Read,
    target: &Path,
    options: Options,
    progress: &Progress,
) -> Result<Stats, Error> {
    run(archive, target, options, progress, false)
}

/// Applies an image layer (a tar of changes) over the tree at `target`, as container
/// engines do: `.wh.NAME` removes `NAME` from the layers below, `.wh..wh..opq` empties its
/// directory of what the layers below put there, and an entry replaces whatever is at its
/// path, a directory and its contents included. The same containment rules hold.
pub fn apply_layer(archive: impl Read, target: &Path, options: Options) -> Result<Stats, Error> {
    run(archive, target, options, &Progress::default(), true)
}

fn run(
    archive: impl Read,
    target: &Path,
    options: Options,
    progress: &Progress,
    layer: bool,
) -> Result<Stats, Error> {
    let stream_error = |source| Error {
        entry: None,
        source,
    };
    let root = sys::open_dir(target).map_err(stream_error)?;
    let creator = Creator { root, options };
    let pending = Pending::default();
    std::thread::scope(|scope| {
        let mut queues = Vec::new();
        for _ in 0..options.workers {
            let (sender, receiver) = sync_channel::<Job>(QUEUE);
            queues.push(sender);
            let (creator, pending) = (&creator, &pending);
            scope.spawn(move || work(creator, pending, receiver));
        }
        let mut reader = Reader {
            creator: &creator,
            pending: &pending,
            queues,
            symlinks: HashSet::new(),
            parents: HashSet::new(),
            directories: Vec::new(),
            stats: Stats::default(),
            progress,
            buffer: vec![0; BLOCK],
            layer,
            entered: HashSet::new(),
        };
        let read = reader.read_all(archive);
        // Closing the queues ends the workers; wait for them before looking at errors.
        reader.queues.clear();
        pending.wait_idle();
        if let Some(error) = pending.error.lock().unwrap().take() {
            return Err(error);
        }
        read?;
        reader.finish_directories()?;
        Ok(reader.stats)
    })
}

/// Work handed to a worker: one entry whose parent directory is resolved when it runs.
struct Job {
    name: Vec<u8>,
    path: Vec<u8>,
    kind: JobKind,
    meta: Meta,
}

enum JobKind {
    Directory,
    File(Vec<u8>),
    Symlink(Vec<u8>),
    Node(FileType, rfs::Dev),
}

/// Jobs queued or running, and the first error any worker hit.
#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    idle: Condvar,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
}

impl Pending {
    fn add(&self) {
        *self.count.lock().unwrap() += 1;
    }

    fn done(&self) {
        let mut count = self.count.lock().unwrap();
        *count -= 1;
        if *count == 0 {
            self.idle.notify_all();
        }
    }

    fn wait_idle(&self) {
        let mut count = self.count.lock().unwrap();
        while *count > 0 {
            count = self.idle.wait(count).unwrap();
        }
    }

    fn fail(&self, error: Error) {
        self.failed.store(true, Ordering::SeqCst);
        self.error.lock().unwrap().get_or_insert(error);
    }
}

fn work(creator: &Creator, pending: &Pending, jobs: Receiver<Job>) {
    for job in jobs {
        // After a failure, queued jobs are drained without being done.
        if !pending.failed.load(Ordering::SeqCst) {
            let name = job.name.clone();
            if let Err(source) = creator.run(job) {
                pending.fail(Error {
                    entry: Some(printable(&name)),
                    source,
                });
            }
        }
        pending.done();
    }
}

/// Longest entry name quoted whole in a message; longer ones are cut in the middle.
const NAME_IN_MESSAGES: usize = 160;

/// A name for messages: invalid UTF-8 and control characters are escaped, and a very long
/// name (a hostile archive's 8,000-byte path) keeps only its start and end, so the error
/// stays one readable line.
/// The tar reader's complaint about a header, which quotes the header's bytes, as what
/// was expected and where; other errors (the reading itself) as they are.
pub fn not_a_header(error: io::Error, offset: u64) -> io::Error {
    match error.kind() {
        io::ErrorKind::Other | io::ErrorKind::InvalidData => io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the data at byte {offset} is not a tar header; expected a tar archive (a \
                 root filesystem, or an image from `docker save` or `podman save`), \
                 possibly gzip-compressed"
            ),
        ),
        _ => error,
    }
}

fn printable(name: &[u8]) -> String {
    let text: Vec<char> = crate::host::ui::escaped(&String::from_utf8_lossy(name))
        .chars()
        .collect();
    if text.len() <= NAME_IN_MESSAGES {
        return text.into_iter().collect();
    }
    let half = NAME_IN_MESSAGES / 2;
    let start: String = text[..half].iter().collect();
    let end: String = text[text.len() - half..].iter().collect();
    format!("{start}...({} characters)...{end}", text.len() - 2 * half)
}

/// The metadata an entry asks for.
#[derive(Clone)]
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

/// A path's parent and last component (the parent is empty at the top).
fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => (&path[..slash], &path[slash + 1..]),
        None => (b"", path),
    }
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

/// Reads the stream and decides, entry by entry, where each is created.
struct Reader<'a> {
    creator: &'a Creator,
    pending: &'a Pending,
    /// One queue per worker; empty when everything is done on this thread.
    queues: Vec<SyncSender<Job>>,
    /// Symlinks the archive created: a later path through one must see it in place.
    symlinks: HashSet<Vec<u8>>,
    /// Every directory an entry was put in so far: a later non-directory entry at one of
    /// these paths must see what is inside it already.
    parents: HashSet<Vec<u8>>,
    /// Directories whose mode, owner and time are applied once everything is written.
    directories: Vec<Directory>,
    stats: Stats,
    progress: &'a Progress,
    buffer: Vec<u8>,
    /// Applying an image layer over lower ones (see [`apply_layer`]).
    layer: bool,
    /// With `layer`: every path this layer's entries named, and their parents, which an
    /// opaque marker keeps.
    entered: HashSet<Vec<u8>>,
}

impl Reader<'_> {
    fn read_all(&mut self, archive: impl Read) -> Result<(), Error> {
        let stream_error = |source| Error {
            entry: None,
            source,
        };
        // Reading in large blocks keeps syscalls few when the source is a file or a pipe.
        let mut archive = tar::Archive::new(io::BufReader::with_capacity(BLOCK, archive));
        // Where the next header is expected, to say where one was not.
        let mut next_header = 0;
        for entry in archive.entries().map_err(stream_error)? {
            if self.pending.failed.load(Ordering::SeqCst) {
                return Ok(());
            }
            let mut entry = entry.map_err(|e| stream_error(not_a_header(e, next_header)))?;
            next_header = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
            let name = entry.path_bytes().into_owned();
            self.entry(&mut entry, &name).map_err(|source| Error {
                entry: Some(printable(&name)),
                source,
            })?;
            let progress = self.progress;
            progress
                .entries
                .store(self.stats.entries, Ordering::Relaxed);
            progress.bytes.store(self.stats.bytes, Ordering::Relaxed);
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>, name: &[u8]) -> io::Result<()> {
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let path = join(&components(name)?);
        let meta = read_meta(entry)?;
        self.stats.entries += 1;
        if path.is_empty() {
            // The archive's own `./`: its metadata is the target's.
            if kind != EntryType::Directory {
                return Err(invalid("the archive root must be a directory"));
            }
            self.directories.push(Directory { path, meta });
            return Ok(());
        }
        if self.layer {
            let (parent, last) = split_last(&path);
            if let Some(hidden) = last.strip_prefix(WHITEOUT) {
                // Markers never appear in the tree; they act on what the layers below left.
                self.wait_for_workers()?;
                return match hidden {
                    OPAQUE => self.creator.make_opaque(parent, &self.entered),
                    // Other `.wh..wh.` names are aufs bookkeeping with no meaning here.
                    _ if hidden.starts_with(WHITEOUT) => Ok(()),
                    b"" | b"." | b".." => Err(invalid("a whiteout must name an entry")),
                    _ => self.creator.remove_all_at(parent, hidden),
                };
            }
            for (i, &b) in path.iter().enumerate() {
                if b == b'/' {
                    self.entered.insert(path[..i].to_vec());
                }
            }
            self.entered.insert(path.clone());
            if kind != EntryType::Directory && self.creator.is_directory(&path)? {
                // A lower layer's directory, contents and all, gives way to this entry.
                self.wait_for_workers()?;
                let (parent, last) = split_last(&path);
                self.creator.remove_all_at(parent, last)?;
            }
        }
        let job_kind = match kind {
            EntryType::Directory => {
                self.directories.push(Directory {
                    path: path.clone(),
                    meta: meta.clone(),
                });
                JobKind::Directory
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                // The size the data really has: a PAX `size` record overrides the header's,
                // so the header's cannot bound what is read into memory.
                let size = entry.size();
                if size > BLOCK as u64 || self.queues.is_empty() {
                    // Streamed here, in order with everything before it.
                    self.wait_for_workers()?;
                    let written =
                        self.creator
                            .stream_file(&path, entry, &meta, &mut self.buffer)?;
                    self.stats.bytes += written;
                    return whole(written, size);
                }
                let mut data = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut data)?;
                whole(data.len() as u64, size)?;
                self.stats.bytes += data.len() as u64;
                JobKind::File(data)
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid("symlink without a target"))?;
                self.symlinks.insert(path.clone());
                JobKind::Symlink(target.into_owned())
            }
            EntryType::Link => {
                // The target must be in place: created by an earlier entry, maybe on
                // another worker.
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid("hard link without a target"))?;
                self.wait_for_workers()?;
                return self.creator.hard_link(&path, &target);
            }
            EntryType::Char | EntryType::Block => {
                let file_type = if kind == EntryType::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                JobKind::Node(file_type, device_number(entry)?)
            }
            EntryType::Fifo => JobKind::Node(FileType::Fifo, 0),
            other => return Err(invalid(format!("unsupported entry type {other:?}"))),
        };
        let job = Job {
            name: name.to_vec(),
            path,
            kind: job_kind,
            meta,
        };
        self.dispatch(job)
    }

    /// Queues a job on the worker for its directory, or does it here, after every queued
    /// job, when its outcome depends on earlier entries in other directories: it goes
    /// through a symlink the archive made, or replaces a directory entries went into.
    fn dispatch(&mut self, job: Job) -> io::Result<()> {
        let (parent, _) = split_last(&job.path);
        let ancestors = || {
            parent
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b == b'/')
                .map(|(i, _)| &parent[..i])
                .chain([parent])
        };
        let through_symlink =
            !self.symlinks.is_empty() && ancestors().any(|a| self.symlinks.contains(a));
        let replaces_parent =
            !matches!(job.kind, JobKind::Directory) && self.parents.contains(&job.path);
        if !self.parents.contains(parent) {
            for ancestor in ancestors() {
                self.parents.insert(ancestor.to_vec());
            }
        }
        if through_symlink || replaces_parent || self.queues.is_empty() {
            self.wait_for_workers()?;
            return self.creator.run(job);
        }
        let mut hasher = DefaultHasher::new();
        parent.hash(&mut hasher);
        let queue = &self.queues[hasher.finish() as usize % self.queues.len()];
        self.pending.add();
        if queue.send(job).is_err() {
            self.pending.done();
            return Err(io::Error::other("an unpack worker stopped"));
        }
        Ok(())
    }

    /// Waits until every queued job is done; a worker's failure ends the unpack.
    fn wait_for_workers(&self) -> io::Result<()> {
        self.pending.wait_idle();
        if self.pending.failed.load(Ordering::SeqCst) {
            return Err(io::Error::other("stopped after another entry failed"));
        }
        Ok(())
    }

    /// Applies directory metadata, last-seen first, so a directory that forbids writing
    /// is only closed after its contents are in place.
    fn finish_directories(&mut self) -> Result<(), Error> {
        for directory in self.directories.iter().rev() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
            let fd = match sys::open_in_root(&self.creator.root, &directory.path, flags, 0) {
                Ok(fd) => fd,
                // A later entry replaced it with something else: nothing to apply.
                Err(e) if is_replaced(&e) => {
                    continue;
                }
                Err(source) => {
                    return Err(Error {
                        entry: Some(printable(&directory.path)),
                        source,
                    });
                }
            };
            self.creator
                .apply_fd(&fd, &directory.meta)
                .map_err(|source| Error {
                    entry: Some(printable(&directory.path)),
                    source,
                })?;
        }
        Ok(())
    }
}

/// Creates entries inside the target; shared by the reading thread and the workers.
struct Creator {
    root: OwnedFd,
    options: Options,
}

impl Creator {
    fn run(&self, job: Job) -> io::Result<()> {
        let (parent_path, last) = split_last(&job.path);
        let parent = self.parent_dir(parent_path)?;
        let last = OsStr::from_bytes(last);
        match job.kind {
            JobKind::Directory => self.make_dir(&parent, last),
            JobKind::File(data) => {
                let mut file = create_file(&parent, last)?;
                file.write_all(&data)?;
                self.apply_fd(file.as_fd(), &job.meta)
            }
            JobKind::Symlink(target) => {
                create(&parent, last, |name| {
                    rfs::symlinkat(target.as_slice(), &parent, name)
                })?;
                self.apply_at(&parent, last, &job.meta, false)
            }
            JobKind::Node(file_type, device) => {
                create(&parent, last, |name| {
                    rfs::mknodat(&parent, name, file_type, Mode::from_raw_mode(0o600), device)
                })?;
                self.apply_at(&parent, last, &job.meta, true)
            }
        }
    }

    /// Creates a regular file from the entry's stream, filling `buffer` before each write.
    fn stream_file(
        &self,
        path: &[u8],
        mut from: impl Read,
        meta: &Meta,
        buffer: &mut [u8],
    ) -> io::Result<u64> {
        let (parent_path, last) = split_last(path);
        let parent = self.parent_dir(parent_path)?;
        let mut file = create_file(&parent, OsStr::from_bytes(last))?;
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
                break;
            }
            file.write_all(&buffer[..filled])?;
            total += filled as u64;
        }
        self.apply_fd(file.as_fd(), meta)?;
        Ok(total)
    }

    fn hard_link(&self, path: &[u8], target: &[u8]) -> io::Result<()> {
        let target_path = join(&components(target)?);
        if target_path.is_empty() {
            return Err(invalid("hard link to the archive root"));
        }
        let (parent_path, last) = split_last(path);
        let parent = self.parent_dir(parent_path)?;
        let (target_parent, target_last) = split_last(&target_path);
        let target_dir = sys::open_in_root(
            &self.root,
            target_parent,
            OFlags::PATH | OFlags::DIRECTORY,
            0,
        )
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("hard link target `{}`: {e}", printable(target)),
            )
        })?;
        // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never what it points
        // to: hard links to absolute symlinks stay inside the tree.
        create(&parent, OsStr::from_bytes(last), |name| {
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
                format!("hard link to `{}`: {e}", printable(target)),
            )
        })
    }

    /// The directory that will hold an entry, creating missing ones the archive skipped.
    fn parent_dir(&self, path: &[u8]) -> io::Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::DIRECTORY;
        let missing = |e: &io::Error| e.raw_os_error() == Some(Errno::NOENT.raw_os_error());
        match sys::open_in_root(&self.root, path, flags, 0) {
            Err(e) if missing(&e) => {}
            result => return result,
        }
        let parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        let mut dir = self.root.try_clone()?;
        for depth in 1..=parts.len() {
            let prefix = join(&parts[..depth]);
            match sys::open_in_root(&self.root, &prefix, flags, 0) {
                Ok(next) => dir = next,
                Err(e) if missing(&e) => {
                    match rfs::mkdirat(
                        &dir,
                        OsStr::from_bytes(parts[depth - 1]),
                        Mode::from_raw_mode(0o755),
                    ) {
                        // Another worker made it meanwhile, or a symlink to a missing place
                        // stands there: opening again tells which.
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    dir = sys::open_in_root(&self.root, &prefix, flags, 0).map_err(|e| {
                        if missing(&e) {
                            invalid(format!(
                                "`{}` is a symlink to a missing directory",
                                printable(&prefix)
                            ))
                        } else {
                            e
                        }
                    })?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(dir)
    }

    /// Whether `path` is a directory in the tree (not a symlink to one).
    fn is_directory(&self, path: &[u8]) -> io::Result<bool> {
        let (parent, last) = split_last(path);
        let parent =
            match sys::open_in_root(&self.root, parent, OFlags::PATH | OFlags::DIRECTORY, 0) {
                Ok(parent) => parent,
                Err(e) if is_replaced(&e) => return Ok(false),
                Err(e) => return Err(e),
            };
        match rfs::statat(&parent, OsStr::from_bytes(last), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(FileType::from_raw_mode(stat.st_mode) == FileType::Directory),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes `name` in directory `parent` (a path in the tree) with everything beneath
    /// it; nothing there is fine.
    fn remove_all_at(&self, parent: &[u8], name: &[u8]) -> io::Result<()> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY;
        match sys::open_in_root(&self.root, parent, flags, 0) {
            Ok(parent) => remove_all(&parent, OsStr::from_bytes(name)),
            Err(e) if is_replaced(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Empties directory `path` of what lower layers put there: every child that is not
    /// in `entered` (named by this layer's entries, or holding them).
    fn make_opaque(&self, path: &[u8], entered: &HashSet<Vec<u8>>) -> io::Result<()> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
        let dir = match sys::open_in_root(&self.root, path, flags, 0) {
            Ok(dir) => dir,
            Err(e) if is_replaced(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        for name in child_names(&dir)? {
            let child = join(&[path, &name]);
            let child = child.strip_prefix(b"/").unwrap_or(&child);
            if !entered.contains(child) {
                remove_all(&dir, OsStr::from_bytes(&name))?;
            }
        }
        Ok(())
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
}

/// The prefix of whiteout markers in image layers (the OCI image spec's, from aufs).
const WHITEOUT: &[u8] = b".wh.";
/// After [`WHITEOUT`]: the marker that makes its directory opaque.
const OPAQUE: &[u8] = b".wh..opq";

/// The names in an open directory, without `.` and `..`.
fn child_names(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Removes `name` in `parent` and, for a directory, everything beneath it, never following
/// a symlink.
fn remove_all(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match rfs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = rfs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for child in child_names(&dir)? {
        remove_all(&dir, OsStr::from_bytes(&child))?;
    }
    Ok(rfs::unlinkat(parent, name, AtFlags::REMOVEDIR)?)
}

/// An entry's data stops short at the end of the stream (a truncated archive, or a size
/// record larger than the data): tar's reader then just returns less.
fn whole(read: u64, size: u64) -> io::Result<()> {
    if read < size {
        return Err(invalid(format!(
            "the archive ends inside this file ({read} of {size} bytes)"
        )));
    }
    Ok(())
}

/// Whether opening a directory failed because a later entry replaced it.
fn is_replaced(error: &io::Error) -> bool {
    [Errno::LOOP, Errno::NOTDIR, Errno::NOENT]
        .iter()
        .any(|errno| error.raw_os_error() == Some(errno.raw_os_error()))
}

fn create_file(parent: &OwnedFd, name: &OsStr) -> io::Result<File> {
    let fd = create(parent, name, |name| {
        rfs::openat(
            parent,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
    })?;
    Ok(File::from(fd))
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
