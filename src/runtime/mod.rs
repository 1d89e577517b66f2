//! runtime: how a session starts, and the toolboxes each runtime keeps. [`nspawn`] enters
//! a toolbox tree with systemd-nspawn; [`spc`] runs the image as a super privileged
//! container through the engine. Both check the command first ([`lookup`]), bind toolbox
//! itself in as [`host_exec`], and find a running container or process to debug
//! ([`target`]). Each has its verbs in the same shape, `nspawn::manage` and `spc::manage`:
//! `list` (into [`Listed`] rows), `remove` and `update`, for a [`Scope`].

pub mod guard;
pub mod host_exec;
pub mod lookup;
pub mod nspawn;
pub mod spc;
pub mod target;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::engine::{self, Access, Connected};
use crate::model::plan::Runtime;

/// How long `list`, `rm --all` and name lookups wait for the engine.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a management command (`list`, `rm`, `update`) works, and how it reports:
/// the same for both runtimes' verbs.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The toolbox directory.
    pub directory: &'a Path,
    /// The host's `/proc`, where sessions are found.
    pub proc_root: &'a Path,
    pub access: &'a Access,
    pub quiet: bool,
    pub verbose: bool,
}

/// How `update` goes, for both runtimes.
pub struct Update<'a> {
    /// Rebuild or replace even with sessions running, or files that would be lost.
    pub force: bool,
    /// Asks whether to go on when files would be lost (no terminal: no).
    pub confirm: &'a dyn Fn(&str) -> bool,
}

/// One toolbox as `toolbox list` shows it, whichever runtime keeps it.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub name: String,
    /// The image reference the toolbox was created from; `null` for an adopted tree.
    pub image: Option<String>,
    pub image_id: Option<String>,
    pub created: Option<String>,
    /// Disk used by its tree; `null` for a super privileged container (the engine's).
    pub size_bytes: Option<u64>,
    pub sessions: usize,
    /// What its sessions debug (`--target`), one entry per such session.
    pub targets: Vec<String>,
    /// Whether the engine's image ID differs now; `null` when unknown (daemon down,
    /// image gone, or an adopted tree).
    pub image_changed: Option<bool>,
    /// A tree left by the CoreOS script, without toolbox's metadata.
    pub adopted: bool,
    /// `copy` or `overlay`; `null` for a super privileged container.
    pub storage: Option<&'static str>,
    /// Where the toolbox's own files are on the host: its tree (copy storage) or its
    /// overlay's upper directory, which holds what changed; `null` for a super
    /// privileged container.
    pub files: Option<String>,
    /// `nspawn` or `spc`.
    pub runtime: Runtime,
}

/// [`with_engine`] for the super privileged container runtime: refused, in one line,
/// where the engine runs none (containerd).
pub fn with_spc_engine<T>(
    access: &Access,
    timeout: Option<Duration>,
    work: impl AsyncFnOnce(&engine::Docker) -> Result<T>,
) -> Result<T> {
    with_engine(access, timeout, async |engine| {
        work(engine.spc_runtime()?).await
    })
}

/// Runs `work` with a connection to the engine, on a runtime of its own; gives up after
/// `timeout` if one is given.
pub fn with_engine<T>(
    access: &Access,
    timeout: Option<Duration>,
    work: impl AsyncFnOnce(&Connected) -> Result<T>,
) -> Result<T> {
    let runtime = engine::async_runtime()?;
    runtime.block_on(async {
        let work = async {
            let engine = engine::connect(access).await?;
            work(&engine).await
        };
        match timeout {
            None => work.await,
            Some(timeout) => tokio::time::timeout(timeout, work).await.map_err(|_| {
                engine::Failure::Stalled.error(format!(
                    "the engine did not answer within {} s",
                    timeout.as_secs()
                ))
            })?,
        }
    })
}
