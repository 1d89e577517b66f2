//! sys: the few system calls toolbox rests on, with the reasons they are used, and the
//! only place `unsafe` is allowed (each with a SAFETY line). Most go through rustix's safe
//! wrappers; signal handling, which needs libc, is [`signals`].
//!
//! Containment inside a toolbox tree is the kernel's job, not string checks that a later
//! archive entry could invalidate: paths are resolved with `openat2(RESOLVE_IN_ROOT)`
//! (Linux 5.6), which treats the tree's root as `/` for `..` and for symlinks, absolute or
//! relative, the way the container will see them.

pub mod signals;

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};
use rustix::mount::{MountFlags, UnmountFlags};

pub use rustix::io::Errno;

/// Opens `path` as a directory to resolve other paths against.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens `path` (relative, `/`-separated bytes) inside `root` with the container's view of
/// symlinks: nothing outside `root` can be reached. `flags` adds to `O_CLOEXEC`; pass
/// `O_NOFOLLOW` to refuse a symlink as the last component. `mode` applies to a file
/// created by `O_CREAT`.
pub fn open_in_root(root: impl AsFd, path: &[u8], flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
    let path = if path.is_empty() { &b"."[..] } else { path };
    // RESOLVE_NO_MAGICLINKS: /proc/self/root-style links would jump out of the tree.
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    loop {
        match rfs::openat2(
            root.as_fd(),
            path,
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
            resolve,
        ) {
            // openat2 with RESOLVE_IN_ROOT returns EAGAIN when a concurrent rename raced
            // the lookup; retrying is the documented answer (openat2(2)).
            Err(Errno::AGAIN) => continue,
            Err(Errno::NOSYS) => {
                return Err(io::Error::other(
                    "the kernel lacks openat2 (Linux 5.6 or newer is required)",
                ));
            }
            result => return Ok(result?),
        }
    }
}

/// A file that is not a regular file where one is read or written: a FIFO would hang the
/// reader, a device feed it without end or take the writes.
#[derive(Debug)]
pub struct NotRegular(pub Kind);

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, not a regular file", self.0.describe())
    }
}

impl std::error::Error for NotRegular {}

impl NotRegular {
    /// A file type for messages: `a FIFO`.
    pub fn describe_type(file_type: rfs::FileType) -> &'static str {
        Kind::of(file_type).describe()
    }
}

/// Opens the regular file at `path` inside `root` (resolved as [`open_in_root`] does) with
/// `flags` (`O_RDONLY`, `O_WRONLY | O_APPEND`, ...), after checking what is there without
/// opening it for reading or writing: `None` when nothing is, an error wrapping
/// [`NotRegular`] when it is not a regular file. The file opened is the one checked.
pub fn open_regular_in_root(
    root: impl AsFd,
    path: &[u8],
    flags: OFlags,
) -> io::Result<Option<std::fs::File>> {
    let found = match open_in_root(root, path, OFlags::PATH, 0) {
        Ok(found) => found,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    reopen_regular(found, flags).map(Some)
}

/// Opens the regular file at `path` with `flags`, checked as [`open_regular_in_root`]
/// checks it (`None` when there is none), following symlinks as `open` does unless
/// `flags` has `O_NOFOLLOW`.
pub fn open_regular(path: &Path, flags: OFlags) -> io::Result<Option<std::fs::File>> {
    let follow = flags & OFlags::NOFOLLOW;
    let found = match rfs::open(path, OFlags::PATH | follow | OFlags::CLOEXEC, Mode::empty()) {
        Ok(found) => found,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    reopen_regular(found, flags).map(Some)
}

/// `found` (an `O_PATH` descriptor) opened again with `flags` if it is a regular file.
fn reopen_regular(found: OwnedFd, flags: OFlags) -> io::Result<std::fs::File> {
    let kind = Kind::of(rfs::FileType::from_raw_mode(rfs::fstat(&found)?.st_mode));
    if kind != Kind::Regular {
        return Err(io::Error::other(NotRegular(kind)));
    }
    // Through the descriptor's own magic link: the inode checked, whatever its path
    // names now.
    let fd = rfs::open(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&found)),
        (flags - OFlags::NOFOLLOW) | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(std::fs::File::from(fd))
}

/// Reads `file` whole if it holds at most `limit` bytes; `None` when it holds more.
pub fn read_bounded(file: impl io::Read, limit: u64) -> io::Result<Option<Vec<u8>>> {
    use io::Read;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// The kind of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    Regular,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

impl Kind {
    fn of(file_type: rfs::FileType) -> Kind {
        use rfs::FileType as T;
        match file_type {
            T::Directory => Kind::Directory,
            T::Fifo => Kind::Fifo,
            T::CharacterDevice => Kind::CharDevice,
            T::BlockDevice => Kind::BlockDevice,
            T::Socket => Kind::Socket,
            T::Symlink => Kind::Symlink,
            _ => Kind::Regular,
        }
    }

    /// The kind for messages: `a FIFO`.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Directory => "a directory",
            Kind::Regular => "a file",
            Kind::Symlink => "a symlink",
            Kind::Fifo => "a FIFO",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
            Kind::Socket => "a socket",
        }
    }
}

/// What is at a path, a symlink there not followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Missing,
    Found(Kind),
    /// A symlink, with its target as written.
    Link(String),
}

impl Entry {
    fn from_stat(
        stat: io::Result<rfs::Stat>,
        read_link: impl FnOnce() -> io::Result<std::ffi::CString>,
    ) -> io::Result<Entry> {
        let stat = match stat {
            Ok(stat) => stat,
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                return Ok(Entry::Missing);
            }
            Err(e) => return Err(e),
        };
        match rfs::FileType::from_raw_mode(stat.st_mode) {
            rfs::FileType::Symlink => Ok(Entry::Link(read_link()?.to_string_lossy().into_owned())),
            other => Ok(Entry::Found(Kind::of(other))),
        }
    }
}

/// What is at `path` (relative, `/`-separated) beneath the directory `dir`, its last
/// component not followed. Every directory on the way must be a real directory beneath
/// `dir`: a symlink among them (one swapped in meanwhile) is an error, not followed.
pub fn entry_beneath(dir: impl AsFd, path: &str) -> io::Result<Entry> {
    let (parent, leaf) = match path.trim_matches('/').rsplit_once('/') {
        Some((parent, leaf)) => (parent, leaf),
        None => ("", path.trim_matches('/')),
    };
    if leaf.is_empty() {
        return Ok(Entry::Found(Kind::Directory));
    }
    let parent = match rfs::openat2(
        dir.as_fd(),
        if parent.is_empty() { "." } else { parent },
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(parent) => parent,
        Err(Errno::NOENT) => return Ok(Entry::Missing),
        Err(e) => return Err(e.into()),
    };
    let stat = rfs::statat(&parent, leaf, rfs::AtFlags::SYMLINK_NOFOLLOW).map_err(Into::into);
    Entry::from_stat(stat, || Ok(rfs::readlinkat(&parent, leaf, Vec::new())?))
}

/// What is at `path` on this host, its last component not followed.
pub fn entry(path: &Path) -> io::Result<Entry> {
    let stat = rfs::lstat(path).map_err(Into::into);
    Entry::from_stat(stat, || Ok(rfs::readlink(path, Vec::new())?))
}

/// What is at `rest` beneath `root`, the mount point of a kernel filesystem on this host,
/// as a new mount of that filesystem shows it (the one systemd-nspawn or the engine makes
/// for a container): the host's own mounts beneath `root` (tracefs in sysfs, cgroupfs)
/// are empty directories there. The directories above `rest` are taken to be `root`'s
/// own (as a resolution, component by component, has found them).
pub fn kernel_entry(root: &Path, rest: &str) -> io::Result<Entry> {
    let rest = rest.trim_matches('/');
    let path = root.join(rest);
    if let Some((parent, _)) = rest.rsplit_once('/') {
        // Another filesystem mounted there on the host: empty in a new mount.
        if rfs::lstat(root.join(parent))?.st_dev != rfs::stat(root)?.st_dev {
            return Ok(Entry::Missing);
        }
    }
    entry(&path)
}

/// Flushes the filesystem holding `fd` to disk: one call for a whole tree, instead of an
/// fsync per file.
pub fn sync_filesystem(fd: impl AsFd) -> io::Result<()> {
    Ok(rfs::syncfs(fd)?)
}

/// Takes an exclusive `flock` on `fd`, waiting for it.
pub fn lock_exclusive(fd: impl AsFd) -> io::Result<()> {
    Ok(rfs::flock(fd, rfs::FlockOperation::LockExclusive)?)
}

/// Takes an exclusive `flock` on `fd` if no one holds it: false when another does.
pub fn try_lock_exclusive(fd: impl AsFd) -> io::Result<bool> {
    match rfs::flock(fd, rfs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Has this process killed when its parent dies (`PR_SET_PDEATHSIG` with `SIGKILL`); fails
/// if the parent, `parent`, is gone already.
pub fn die_with_parent(parent: u32) -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    // The parent may have died before the death signal was armed.
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(parent) {
        return Err(io::Error::other(
            "the process that started this one is gone",
        ));
    }
    Ok(())
}

/// Whether a process with this ID exists (signal 0).
pub fn process_exists(pid: i32) -> bool {
    match rustix::process::Pid::from_raw(pid) {
        Some(pid) => !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH)),
        None => false,
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `statfs`'s `f_type` for overlayfs (linux/magic.h).
const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// Whether an overlay filesystem is mounted at `path`: an overlay, on another device than
/// the directory holding it (so an overlay toolbox directory that itself lies on overlayfs,
/// as inside a container, does not count).
pub fn is_overlay_mount(path: &Path) -> io::Result<bool> {
    let here = std::fs::symlink_metadata(path)?;
    let parent = std::fs::symlink_metadata(path.join(".."))?;
    Ok(here.dev() != parent.dev() && rfs::statfs(path)?.f_type as u64 == OVERLAYFS_SUPER_MAGIC)
}

/// Mounts an overlay filesystem at `target`; `options` as overlayfs(5) takes them.
pub fn mount_overlay(target: &Path, options: &CStr) -> io::Result<()> {
    Ok(rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        Some(options),
    )?)
}

/// A read-only overlay of the directories `layers` (top first), attached nowhere
/// (`fsopen`, `fsmount`): it is reached only through the returned descriptor (by this
/// process, or by root through `/proc/PID/fd`), and is gone once that is closed. Each
/// layer is added on its own (`lowerdir+`, Linux 6.8), as one `lowerdir` value may not
/// exceed 256 bytes; older kernels get them as that one value, in overlay's syntax (the
/// caller has checked the paths can be named in it).
pub fn detached_overlay(layers: &[&Path]) -> io::Result<OwnedFd> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, fsconfig_create, fsconfig_set_string, fsmount,
        fsopen,
    };
    let mut fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    if let Err(e) = layers
        .iter()
        .try_for_each(|layer| fsconfig_set_string(&fs, "lowerdir+", *layer))
    {
        let names: Option<Vec<&str>> = layers.iter().map(|layer| layer.to_str()).collect();
        let names = names.ok_or(io::Error::from(e))?;
        fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
        fsconfig_set_string(&fs, "lowerdir", names.join(":"))?;
    }
    fsconfig_create(&fs)?;
    Ok(fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY,
    )?)
}

/// Unmounts the filesystem at `target`; fails with `EBUSY` while a process uses it.
pub fn unmount(target: &Path) -> io::Result<()> {
    Ok(rustix::mount::unmount(target, UnmountFlags::empty())?)
}

/// A copy of the mount tree at `fd` (a directory or file opened with `O_PATH`), with its
/// submounts, attached nowhere yet (`open_tree(OPEN_TREE_CLONE)`, Linux 5.2): what was
/// opened is what gets mounted, whatever its path names meanwhile.
pub fn clone_mount(fd: impl AsFd) -> io::Result<OwnedFd> {
    use rustix::mount::{OpenTreeFlags, open_tree};
    Ok(open_tree(
        fd,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE
            | OpenTreeFlags::AT_EMPTY_PATH,
    )?)
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets the detached mount tree `mount` (from [`clone_mount`]) private, so that nothing
/// mounted in it reaches the mounts it was copied from (a volume staged in a container's
/// root would otherwise appear in the engine's own view of it), and read-only when
/// `read_only` (`mount_setattr`, Linux 5.12).
pub fn set_private(mount: impl AsFd, read_only: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    let attr = MountAttr {
        attr_set: if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: `attr` is a valid `struct mount_attr` of the size passed, the path a valid
    // empty C string; the kernel only reads both.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    match result {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Attaches the mount `mount` (from [`clone_mount`]) on `at`, an opened directory or file:
/// the very one opened, with no path looked up again.
pub fn attach_mount(mount: impl AsFd, at: impl AsFd) -> io::Result<()> {
    use rustix::mount::{MoveMountFlags, move_mount};
    Ok(move_mount(
        mount,
        "",
        at,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?)
}

/// Detaches the mount at `target` with everything mounted beneath it, at once for new
/// lookups and for good once nothing uses it (`MNT_DETACH`).
pub fn detach_mount(target: &Path) -> io::Result<()> {
    Ok(rustix::mount::unmount(target, UnmountFlags::DETACH)?)
}

/// Detaches the topmost mount at `target` as [`detach_mount`] does, failing where
/// `target` is a symlink instead of following it.
pub fn detach_mount_nofollow(target: &Path) -> io::Result<()> {
    Ok(rustix::mount::unmount(
        target,
        UnmountFlags::DETACH | UnmountFlags::NOFOLLOW,
    )?)
}

/// The user and process IDs of the process serving the Unix socket at `path`, as the
/// kernel recorded them when it started listening (`SO_PEERCRED`).
pub fn socket_server(path: &Path) -> io::Result<(u32, u32)> {
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    let cred = rustix::net::sockopt::socket_peercred(&stream)?;
    Ok((cred.uid.as_raw(), cred.pid.as_raw_nonzero().get() as u32))
}

/// Whether process `pid` is in this process's mount namespace (`proc_root` is `/proc`).
pub fn shares_mount_namespace(proc_root: &Path, pid: u32) -> io::Result<bool> {
    let namespace = |of: &str| -> io::Result<(u64, u64)> {
        let stat = rfs::stat(proc_root.join(of).join("ns/mnt"))?;
        Ok((stat.st_dev, stat.st_ino))
    };
    Ok(namespace(&pid.to_string())? == namespace("self")?)
}

/// What toolbox reads of `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `Z` (zombie), ...
    pub state: char,
    /// Field 4.
    pub parent: u32,
    /// Field 22, in clock ticks since boot: with the PID, it names one process.
    pub start_time: u64,
}

/// Reads `/proc/PID/stat` under `proc_root`; `None` when the process is gone.
pub fn proc_stat(proc_root: &std::path::Path, pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        parent: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Moves the calling thread into the namespace `fd` refers to (`/proc/PID/ns/NAME`,
/// opened earlier so the namespace cannot go away meanwhile): `net`, `ipc` or `uts`, the
/// kinds a process with other threads may join. A child started or a program executed
/// afterwards from this thread is in it too.
pub fn join_namespace(fd: impl AsFd, name: &str) -> io::Result<()> {
    use rustix::thread::LinkNameSpaceType as Kind;
    let kind = match name {
        "net" => Kind::Network,
        "ipc" => Kind::InterProcessCommunication,
        "uts" => Kind::HostNameAndNISDomainName,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot join a `{other}` namespace"),
            ));
        }
    };
    Ok(rustix::thread::move_into_link_name_space(
        fd.as_fd(),
        Some(kind),
    )?)
}

/// Whether `fd` and `path` are the same file (device and inode).
pub fn is_same_file(fd: impl AsFd, path: &Path) -> io::Result<bool> {
    let (a, b) = (rfs::fstat(fd)?, rfs::stat(path)?);
    Ok((a.st_dev, a.st_ino) == (b.st_dev, b.st_ino))
}

/// Moves this process into the root control group of every cgroup hierarchy mounted
/// (cgroup v2's one, or v1's per controller), as `proc_root`'s `self/mountinfo` lists
/// them: out of a container's group, whose processes die together when it is killed.
pub fn leave_cgroups(proc_root: &Path) -> io::Result<()> {
    let mountinfo = std::fs::read_to_string(proc_root.join("self/mountinfo"))?;
    let pid = std::process::id().to_string();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(separator) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let fs_type = fields.get(separator + 1).copied();
        // Field 4 is the mount's root within its hierarchy: only a hierarchy's root.
        if matches!(fs_type, Some("cgroup" | "cgroup2")) && fields.get(3) == Some(&"/") {
            let procs = Path::new(fields[4]).join("cgroup.procs");
            std::fs::write(&procs, &pid)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", procs.display())))?;
        }
    }
    Ok(())
}

/// Set once this process has moved into another mount namespace ([`join_host`]).
static LEFT_OWN_MOUNTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Moves this process into the namespaces of process `host` of `proc_root` (`/proc`)
/// that it is not in yet: cgroup, IPC, UTS, network, PID (for the children it starts), and
/// last the mount namespace, whose root and working directory it then takes (`/`).
/// Afterwards it sees the host's files, engines and systemd: for `host-exec` inside a
/// toolbox, and toolbox run from its image. Only while the process has a single thread:
/// the kernel refuses the mount namespace to a process whose threads share its
/// filesystem information (setns(2)).
pub fn join_host(proc_root: &Path, host: u32) -> io::Result<()> {
    use rustix::thread::LinkNameSpaceType as Kind;
    let kinds = [
        ("cgroup", Kind::ControlGroup),
        ("ipc", Kind::InterProcessCommunication),
        ("uts", Kind::HostNameAndNISDomainName),
        ("net", Kind::Network),
        ("pid", Kind::ProcessID),
        ("mnt", Kind::Mount),
    ];
    // All opened first: each is the host process's as it is now, whatever joining the others changes.
    let mut opened = Vec::new();
    for (name, kind) in kinds {
        let path = proc_root.join(host.to_string()).join("ns").join(name);
        let named = |e: Errno| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let ours = rfs::stat(proc_root.join("self/ns").join(name))?;
        let theirs = rfs::stat(&path).map_err(named)?;
        if (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino) {
            let fd = rfs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty());
            opened.push((name, kind, fd.map_err(named)?));
        }
    }
    for (name, kind, fd) in opened {
        rustix::thread::move_into_link_name_space(fd.as_fd(), Some(kind)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot join the host's {name} namespace: {e}"),
            )
        })?;
        if name == "mnt" {
            LEFT_OWN_MOUNTS.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    rustix::process::chdir("/")?;
    Ok(())
}

/// The path toolbox's binary was executed from, or `None` when this process has moved
/// into another mount namespace ([`join_host`]), where that path names another file or
/// none: the binary is then read at `/proc/self/exe`.
pub fn own_binary() -> Option<std::path::PathBuf> {
    if LEFT_OWN_MOUNTS.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    std::env::current_exe().ok()
}

/// Drops this process's root privileges for good: supplementary groups, then group,
/// then user, as `su` does. Run before starting a command as a toolbox's user.
pub fn become_user(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: `groups` is a valid array of its length; setgroups only reads it.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: setgid and setuid have no memory-safety preconditions.
    if unsafe { libc::setgid(gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::setuid(uid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A handle on process `pid` that stays its own even after the PID is reused.
pub fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Blocks until the process of `pidfd` has exited.
pub fn wait_exited(pidfd: impl AsFd) -> io::Result<()> {
    poll_exit(pidfd, None).map(drop)
}

/// Waits up to `timeout` for the process of `pidfd` to exit, and says whether it has.
pub fn exited_within(pidfd: impl AsFd, timeout: std::time::Duration) -> io::Result<bool> {
    let timeout = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos().into(),
    };
    poll_exit(pidfd, Some(&timeout))
}

/// Polls `pidfd` until its process exited or `timeout` passed: whether it exited.
fn poll_exit(pidfd: impl AsFd, timeout: Option<&rustix::event::Timespec>) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    loop {
        match poll(&mut fds, timeout) {
            Err(Errno::INTR) => continue,
            result => return result.map(|ready| ready > 0).map_err(Into::into),
        }
    }
}

/// Standard input's terminal in raw mode (no echo, no line editing, no signals from keys,
/// no output processing), as a container's pseudo-terminal wants it; its settings are
/// restored when this is dropped, on every way out that unwinds.
pub struct RawTerminal {
    saved: rustix::termios::Termios,
}

impl RawTerminal {
    pub fn enter() -> io::Result<RawTerminal> {
        use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
        let stdin = io::stdin();
        let saved = tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use rustix::termios::{OptionalActions, tcsetattr};
        // Drain: output already written is shown with the settings it was written for.
        let _ = tcsetattr(io::stdin(), OptionalActions::Drain, &self.saved);
    }
}

/// Standard output's terminal size as (columns, rows), if it is a terminal.
pub fn window_size() -> Option<(u16, u16)> {
    let size = rustix::termios::tcgetwinsize(io::stdout()).ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// This process's capability bounding set and the kernel's highest capability number,
/// from `/proc/self/status` and `/proc/sys/kernel/cap_last_cap` under `proc_root`.
pub fn capability_bounding_set(proc_root: &Path) -> Option<(u64, u32)> {
    let status = std::fs::read_to_string(proc_root.join("self/status")).ok()?;
    let bounding = status
        .lines()
        .find_map(|line| line.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
    let last = std::fs::read_to_string(proc_root.join("sys/kernel/cap_last_cap")).ok()?;
    Some((bounding, last.trim().parse().ok()?))
}

/// This process's peak resident memory since it was executed, in KiB (`VmHWM` of
/// `/proc/self/status`), for tests that bound what a piece of work may grow to. Not
/// `getrusage`: its `ru_maxrss` survives `execve`, so a child started from a large test
/// process would report the parent's peak and hide any growth below it.
#[cfg(test)]
pub fn peak_rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_of_this_process() {
        let stat = proc_stat(std::path::Path::new("/proc"), std::process::id()).unwrap();
        assert_eq!(stat.parent, std::os::unix::process::parent_id());
        assert_ne!(stat.state, 'Z');
        assert!(proc_stat(std::path::Path::new("/proc"), u32::MAX).is_none());
    }
}
