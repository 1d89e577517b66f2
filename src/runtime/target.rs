//! runtime::target: finding a session's target (see `model::target`): a container through
//! the engine, or any host process; holding on to its namespaces from the moment it is
//! found; joining them just before the session starts; and saying, once, when the target
//! exits while the session runs.

use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use crate::engine::{Access, Engine};
use crate::host::ui;
use crate::model::target::{self, Request, Target, Volume, Wanted};
use crate::runtime::with_engine;
use crate::sys;

/// A target found running, with its namespaces and process held open: the namespaces a
/// session joins are the ones found, even if the target exits or its PID is reused.
pub struct Found {
    pub target: Target,
    namespaces: Vec<(&'static str, OwnedFd)>,
    process: OwnedFd,
    /// The target's root directory, opened when it was found (when it has one to show).
    root: Option<OwnedFd>,
}

/// Finds the target `request` names: a container through the engine `access` reaches, or
/// the host process `pid:N` (`proc_root` is the host's `/proc`). Its namespaces are
/// opened only when `hold` (a session, not `--dry-run`, which a normal user may run).
pub fn find(request: &Request, access: &Access, proc_root: &Path, hold: bool) -> Result<Found> {
    let (pid, container, root, volumes) = match &request.wanted {
        Wanted::Process(pid) => (*pid, None, process_root(proc_root, *pid), Vec::new()),
        Wanted::Container(_) | Wanted::Pod(_) => {
            let name = &request.given;
            let (info, client) = with_engine(access, Some(access.stall), async |engine| {
                let address = engine.address().to_string();
                let info = match &request.wanted {
                    Wanted::Pod(pod) => {
                        let id = pod.choose(&engine.pod_containers(pod).await?)?;
                        engine.container(&id).await?
                    }
                    _ => engine.container(name).await?,
                };
                let info = info
                    .ok_or_else(|| anyhow!("no container `{name}` in the engine at {address}"))?;
                Ok((info, engine.client().to_string()))
            })?;
            if !info.running || info.pid == 0 {
                bail!(
                    "container `{name}` is not running; start it first (its files are in \
                     `{client} cp` and `{client} export` meanwhile)"
                );
            }
            let root = match info.root {
                Some(root) if Path::new(&root).is_dir() => Some(PathBuf::from(root)),
                _ => process_root(proc_root, info.pid),
            };
            let volumes = info
                .mounts
                .into_iter()
                .filter(|(source, destination, _)| {
                    source.starts_with('/') && destination.starts_with('/')
                })
                .map(|(source, destination, writable)| Volume {
                    source: source.into(),
                    destination,
                    read_only: !writable,
                })
                .collect();
            // Beneath the root only: where it is shown.
            let volumes = if root.is_some() { volumes } else { Vec::new() };
            (info.pid, Some(info.id), root, volumes)
        }
    };
    let gone = || anyhow!("target `{}`: process {pid} is gone", request.given);
    let started = sys::proc_stat(proc_root, pid)
        .filter(|stat| stat.state != 'Z')
        .ok_or_else(gone)?
        .start_time;
    let process = sys::pidfd(pid).map_err(|_| gone())?;
    // The root shown is the one found: a directory opened now, not a path looked up
    // again when the session starts.
    let root_fd = match (&root, hold) {
        (Some(path), true) => Some(open_root(path).map_err(|e| {
            anyhow!(
                "target `{}`: cannot open its files at {}: {e}",
                request.given,
                path.display()
            )
        })?),
        _ => None,
    };
    let mut namespaces = Vec::new();
    for namespace in request.namespaces.iter().filter(|_| hold) {
        let path = proc_root.join(format!("{pid}/ns/{}", namespace.name()));
        let fd = std::fs::File::open(&path).map_err(|e| {
            anyhow!(
                "target `{}`: cannot open {}: {e}",
                request.given,
                path.display()
            )
        })?;
        namespaces.push((namespace.name(), OwnedFd::from(fd)));
    }
    // The files opened are the process found only if it has not been replaced meanwhile.
    if sys::proc_stat(proc_root, pid).map(|stat| stat.start_time) != Some(started) {
        return Err(gone());
    }
    Ok(Found {
        target: Target {
            request: request.clone(),
            pid,
            container,
            root,
            volumes,
        },
        namespaces,
        process,
        root: root_fd,
    })
}

/// Opens a target's root directory to mount it from.
fn open_root(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// Mounts `volume` at its place inside the target's root `stage`.
fn stage_volume(stage: &OwnedFd, volume: &Volume) -> std::io::Result<()> {
    use rustix::fs::{FileType, OFlags, fstat};
    let source = rustix::fs::open(
        &volume.source,
        OFlags::PATH | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let destination = sys::open_in_root(
        stage,
        volume.destination.trim_start_matches('/').as_bytes(),
        OFlags::PATH,
        0,
    )?;
    let is_dir =
        |fd: &OwnedFd| fstat(fd).map(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory);
    if is_dir(&source)? != is_dir(&destination)? {
        return Err(std::io::Error::other(
            "its place in the target is not of its kind (a file for a directory, or the other way)",
        ));
    }
    let mount = sys::clone_mount(&source)?;
    sys::set_private(&mount, volume.read_only)?;
    sys::attach_mount(&mount, &destination)
}

/// The root directory of process `pid` as a path of this mount namespace, when the
/// process shares it (a systemd service, a chroot): `/` when it is this namespace's own
/// root, the host's files, which systemd-nspawn binds like the host's `/` itself (staged,
/// a copy of every mount of the host would stay attached in the host's namespace for the
/// session, and keep the directories they are mounted on from being removed); `None`
/// when it has mounts of its own, which no bind made here can show.
fn process_root(proc_root: &Path, pid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let identity = |path: PathBuf| std::fs::metadata(path).map(|m| (m.dev(), m.ino()));
    let namespace = |pid: &str| identity(proc_root.join(pid).join("ns/mnt"));
    let shared = namespace(&pid.to_string()).ok()? == namespace("self").ok()?;
    // Its own magic link: opened, it is the process's root itself.
    let root = proc_root.join(pid.to_string()).join("root");
    match identity(root.clone()).ok()? == identity(PathBuf::from("/")).ok()? {
        true => shared.then(|| PathBuf::from("/")),
        false => shared.then_some(root),
    }
}

/// The target's files staged for a session: its root mounted on a directory of the
/// toolbox directory, its volumes mounted beneath at their places, for one bind to show
/// them all at [`target::MOUNT_POINT`]. Unmounted and removed when dropped.
pub struct Staged {
    path: PathBuf,
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Best effort: the next session of the toolbox removes what is left.
        let _ = sys::detach_mount(&self.path);
        let _ = std::fs::remove_dir(&self.path);
    }
}

impl Found {
    /// Stages the target's files at `at` (see [`Staged`]); `None` when it has no root to
    /// show. The target's tree is live and hostile: each volume's place in it is resolved
    /// by the kernel inside the target's root (`openat2` with `RESOLVE_IN_ROOT`), so a
    /// symlink the target swaps in leads to another place of its own, never out of it, and
    /// the volume is mounted on the directory opened, not on a path looked up again.
    pub fn stage(&self, at: &Path, quiet: bool) -> Result<Option<Staged>> {
        let Some(root) = self.root.as_ref().filter(|_| !self.target.root_is_ours()) else {
            return Ok(None);
        };
        let given = &self.target.request.given;
        let fail = |what: &str, e: std::io::Error| {
            anyhow!(
                "target `{given}`: cannot stage its files at {}: {what}: {e}",
                at.display()
            )
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(at)
            .map_err(|e| fail("mkdir", e))?;
        let staged = Staged {
            path: at.to_path_buf(),
        };
        let mount = sys::clone_mount(root).map_err(|e| fail("its root", e))?;
        sys::set_private(&mount, false).map_err(|e| fail("its root", e))?;
        let stage = open_root(at).map_err(|e| fail("open", e))?;
        sys::attach_mount(&mount, &stage).map_err(|e| fail("its root", e))?;
        // Opened again: now the target's root, mounted.
        let stage = open_root(at).map_err(|e| fail("open", e))?;
        let mut volumes: Vec<&Volume> = self.target.volumes.iter().collect();
        volumes.sort_by_key(|v| v.destination.matches('/').count());
        for volume in volumes {
            if let Err(e) = stage_volume(&stage, volume)
                && !quiet
            {
                ui::warn(format_args!(
                    "target `{given}`: its volume at {} is not shown at {}{}: {e}",
                    ui::escaped(&volume.destination),
                    target::MOUNT_POINT,
                    ui::escaped(&volume.destination)
                ));
            }
        }
        Ok(Some(staged))
    }

    /// Says, when the target has volumes, that they are not shown at /media/target (the
    /// engine cannot see toolbox's stage), and where they are.
    pub fn volumes_unseen(&self, quiet: bool) {
        if self.target.volumes.is_empty() || quiet {
            return;
        }
        ui::warn(format_args!(
            "target `{}`: its volumes are not shown at {}: the engine runs in another mount \
             namespace than toolbox, which cannot mount them where the engine would see \
             them; the target's files, volumes included, are at /proc/{}/root",
            self.target.request.given,
            target::MOUNT_POINT,
            self.target.pid
        ));
    }

    /// Says where the target's files are when they cannot be at /media/target.
    pub fn explain(&self) {
        if self.target.root.is_none() {
            ui::say(format_args!(
                "target `{}` has mounts of its own: its files are at /proc/{}/root inside \
                 the toolbox, not at {}",
                self.target.request.given,
                self.target.pid,
                target::MOUNT_POINT
            ));
        }
    }

    /// Moves this thread, and so the session it starts next, into the target's namespaces.
    pub fn join(&self) -> Result<()> {
        for (name, fd) in &self.namespaces {
            sys::join_namespace(fd, name).map_err(|e| {
                anyhow!(
                    "cannot join the {name} namespace of target `{}`: {e}",
                    self.target.request.given
                )
            })?;
        }
        Ok(())
    }

    /// Says once, on stderr, when the target exits while the session runs; the session
    /// itself goes on.
    pub fn watch(&self, quiet: bool) {
        let Ok(process) = self.process.try_clone() else {
            return;
        };
        let target = self.target.clone();
        std::thread::spawn(move || {
            if sys::wait_exited(&process).is_ok() && !quiet {
                ui::warn(format_args!(
                    "target `{}` (PID {}) exited; this session goes on, but what it showed of \
                     the target (its network, {}) is gone with it",
                    target.request.given,
                    target.pid,
                    target::MOUNT_POINT
                ));
            }
        });
    }
}
