//! provision: create and update toolboxes from images. Inspect (pull only when absent,
//! or always for an update), create a labelled container that is never started, stream
//! its export straight into the unpacker (overlapping the two; the archive is never held
//! in memory or on disk), remove the container on every path (success, error, Ctrl-C,
//! SIGTERM, SIGHUP), then complete the partial tree and rename it into place, or swap it
//! with the old tree for an update. An interrupted or failed creation leaves neither a
//! partial tree nor a container behind; one killed outright is cleaned up by the next.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow};
use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::engine::{Docker, Engine, LABEL_PID, LABEL_TOOLBOX, SinkClosed, short_id};
use crate::host::Env;
use crate::machine::{self, Metadata, State};
use crate::plan::{ImageRef, Plan};
use crate::sys;
use crate::unpack;

/// Chunks of the export stream in flight between the daemon and the unpacker: bounded,
/// so memory stays flat whatever the image size.
const CHANNEL_CHUNKS: usize = 32;

/// The creation was stopped by a signal; toolbox exits with 128 + the signal number.
#[derive(Debug)]
pub struct Interrupted(pub i32);

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupted by signal {}", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Which toolbox, from which image.
#[derive(Debug, Clone)]
pub struct Target {
    pub directory: PathBuf,
    pub name: String,
    pub image: ImageRef,
}

impl Target {
    pub fn of(plan: &Plan) -> Target {
        Target {
            directory: plan.directory.clone(),
            name: plan.name.clone(),
            image: plan.image.clone(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.directory.join(&self.name)
    }
}

/// Makes sure the toolbox exists, creating it if needed; returns whether it was created.
/// A toolbox that is already there (or a CoreOS tree to adopt) is left as it is, without
/// contacting any daemon.
pub fn ensure(target: &Target, env: &Env, quiet: bool, verbose: bool) -> Result<bool> {
    let path = target.path();
    if ready(&path)? {
        return Ok(false);
    }
    // The daemon is reached and the image found before anything is written, so an
    // unreachable daemon or a failed pull leaves the toolbox directory as it was.
    let mut provisioner = Provisioner::connect(env, quiet, verbose)?;
    let image_id = provisioner.image_id(&target.image, false)?;
    let _lock = machine::lock_for_create(&target.directory, &target.name)?;
    // Another toolbox process may have created it while this one waited for the lock.
    if ready(&path)? {
        return Ok(false);
    }
    let partial = provisioner.build(target, &image_id)?;
    if let Err(e) = machine::install(&partial, &path) {
        // Best effort: the error matters more than a failed cleanup, and the next
        // creation removes any leftover partial tree anyway.
        let _ = fs::remove_dir_all(&partial);
        return Err(e);
    }
    // A signal that came while the tree was being completed: the toolbox is kept (it is
    // whole), but the user asked to stop, so it is not entered.
    provisioner.check_signals()?;
    Ok(true)
}

/// What `update` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Updated {
    /// The image ID is the one the toolbox was built from.
    UpToDate { image_id: String },
    Rebuilt {
        old_id: Option<String>,
        new_id: String,
    },
}

/// Pulls the toolbox's image and, when its ID differs from `recorded_id`, builds a new
/// tree beside the old one and swaps them atomically; the old tree is removed only after
/// the swap. `prepare` runs under the toolbox's lock just before the swap (to deal with
/// running sessions). A pull that fails while the image is local updates from the local
/// image, with a warning.
pub fn update(
    target: &Target,
    recorded_id: Option<&str>,
    env: &Env,
    quiet: bool,
    verbose: bool,
    prepare: &mut dyn FnMut() -> Result<()>,
) -> Result<Updated> {
    let mut provisioner = Provisioner::connect(env, quiet, verbose)?;
    let image_id = provisioner.image_id(&target.image, true)?;
    if recorded_id == Some(image_id.as_str()) {
        return Ok(Updated::UpToDate { image_id });
    }
    let _lock = machine::lock_for_create(&target.directory, &target.name)?;
    let partial = provisioner.build(target, &image_id)?;
    let swapped = prepare().and_then(|()| machine::swap(&partial, &target.path()));
    // After the swap `partial` holds the old tree; before it, the unused new one.
    let removed = fs::remove_dir_all(&partial)
        .with_context(|| format!("cannot remove {}", partial.display()));
    swapped?;
    removed?;
    Ok(Updated::Rebuilt {
        old_id: recorded_id.map(str::to_string),
        new_id: image_id,
    })
}

/// Whether the engine's ID for `image` differs from `recorded_id`, asked within
/// `timeout`; `None` when the daemon is down, slow or does not have the image.
pub fn image_changed(
    image: &ImageRef,
    recorded_id: &str,
    env: &Env,
    timeout: Duration,
) -> Option<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let ask = async {
            let engine = Docker::connect(env).await.ok()?;
            engine.image_id(&image.reference()).await.ok()?
        };
        let id = tokio::time::timeout(timeout, ask).await.ok()??;
        Some(id != recorded_id)
    })
}

fn ready(path: &Path) -> Result<bool> {
    match machine::state(path)? {
        State::Complete | State::Adopted => Ok(true),
        State::Missing | State::Empty => Ok(false),
        State::Foreign => Err(anyhow!(
            "{} exists but is not a toolbox (no {} and no etc/os-release); move it away or choose another --name",
            path.display(),
            machine::METADATA
        )),
    }
}

/// An engine connection with signals caught, for creating and updating toolboxes.
struct Provisioner {
    runtime: tokio::runtime::Runtime,
    engine: Docker,
    signals: Signals,
    quiet: bool,
    verbose: bool,
}

impl Provisioner {
    fn connect(env: &Env, quiet: bool, verbose: bool) -> Result<Provisioner> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let engine = runtime.block_on(Docker::connect(env))?;
        if verbose {
            eprintln!(
                "toolbox: Docker daemon at {} (API {})",
                engine.address,
                engine.api_version()
            );
        }
        let signals = runtime.block_on(async { Signals::catch() })?;
        Ok(Provisioner {
            runtime,
            engine,
            signals,
            quiet,
            verbose,
        })
    }

    /// The image's ID, pulling it when absent, or always when `pull` (then falling back
    /// to a local copy if the pull fails).
    fn image_id(&mut self, image: &ImageRef, pull: bool) -> Result<String> {
        let Provisioner {
            runtime,
            engine,
            signals,
            quiet,
            ..
        } = self;
        runtime.block_on(async {
            tokio::select! {
                id = image_id(engine, image, pull, *quiet) => id,
                interrupted = signals.recv() => Err(interrupted.into()),
            }
        })
    }

    /// Builds a complete partial tree for `target` from `image_id` and returns its path.
    /// Call with the toolbox's lock held. On failure nothing is left behind.
    fn build(&mut self, target: &Target, image_id: &str) -> Result<PathBuf> {
        // What a killed toolbox process left: its partial tree and its container.
        machine::remove_partials(&target.directory, &target.name)?;
        let engine = &self.engine;
        self.runtime.block_on(async {
            for (container, pid) in engine.toolbox_containers(&target.name).await? {
                if !pid.is_some_and(sys::process_exists) {
                    engine.remove_container(&container).await?;
                }
            }
            anyhow::Ok(())
        })?;
        let partial = machine::make_partial(&target.directory, &target.name)?;
        let Provisioner {
            runtime,
            engine,
            signals,
            quiet,
            verbose,
        } = self;
        let reference = target.image.reference();
        let report = Report {
            quiet: *quiet,
            verbose: *verbose,
        };
        let created = runtime.block_on(create(
            engine,
            &reference,
            &target.name,
            image_id,
            &partial,
            signals,
            report,
        ));
        if let Err(e) = created {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
        Ok(partial)
    }

    fn check_signals(&mut self) -> Result<()> {
        let signals = &mut self.signals;
        match self
            .runtime
            .block_on(async { signals.recv().now_or_never() })
        {
            Some(interrupted) => Err(interrupted.into()),
            None => Ok(()),
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, caught while a creation runs so its container and partial
/// tree can be removed. `exec` later restores the default dispositions for nspawn.
struct Signals(Vec<(i32, Signal)>);

impl Signals {
    fn catch() -> Result<Signals> {
        let mut caught = Vec::new();
        for (number, kind) in [
            (2, SignalKind::interrupt()),
            (15, SignalKind::terminate()),
            (1, SignalKind::hangup()),
        ] {
            caught.push((
                number,
                signal(kind).context("cannot install signal handlers")?,
            ));
        }
        Ok(Signals(caught))
    }

    async fn recv(&mut self) -> Interrupted {
        let waits = self.0.iter_mut().map(|(number, signal)| {
            let number = *number;
            Box::pin(async move {
                signal.recv().await;
                number
            })
        });
        let (number, _, _) = futures_util::future::select_all(waits).await;
        Interrupted(number)
    }
}

/// What a creation says on stderr.
#[derive(Debug, Clone, Copy)]
struct Report {
    quiet: bool,
    /// Also where the time went.
    verbose: bool,
}

/// Fills `partial` with the filesystem of image `image_id` and completes it.
async fn create<E: Engine>(
    engine: &E,
    reference: &str,
    name: &str,
    image_id: &str,
    partial: &Path,
    signals: &mut Signals,
    report: Report,
) -> Result<()> {
    if !report.quiet {
        eprintln!(
            "toolbox: creating `{name}` from {reference} ({})",
            short_id(image_id)
        );
    }
    let labels = HashMap::from([
        (LABEL_TOOLBOX.to_string(), name.to_string()),
        (LABEL_PID.to_string(), std::process::id().to_string()),
    ]);
    // Not raced against signals: a signal arriving now waits in `signals` until the
    // export below, so the container, once created, is always removed.
    let container = engine.create_container(reference, labels).await?;
    let started = Instant::now();
    let copied = export_into(engine, &container, partial, signals).await;
    let removed = engine.remove_container(&container).await;
    let stats = copied?;
    removed?;
    if !report.quiet {
        eprintln!(
            "toolbox: unpacked {} entries, {} MB in {:.1} s",
            stats.entries,
            stats.bytes / 1_000_000,
            started.elapsed().as_secs_f64()
        );
    }
    let metadata = Metadata {
        image: reference.to_string(),
        image_id: image_id.to_string(),
        created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    let flushing = Instant::now();
    machine::complete(partial, &metadata)?;
    if report.verbose {
        eprintln!(
            "toolbox: completed and flushed to disk in {:.2} s",
            flushing.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn image_id<E: Engine>(
    engine: &E,
    image: &ImageRef,
    always_pull: bool,
    quiet: bool,
) -> Result<String> {
    let reference = image.reference();
    let local = engine.image_id(&reference).await?;
    match (&local, always_pull) {
        (Some(id), false) => return Ok(id.clone()),
        (None, _) if !quiet => eprintln!("toolbox: image {reference} is not here; pulling it"),
        _ => {}
    }
    if let Err(e) = engine.pull(image, quiet).await {
        match local {
            Some(id) => {
                if !quiet {
                    eprintln!("toolbox: warning: {e:#}; using the local image");
                }
                return Ok(id);
            }
            None => return Err(e),
        }
    }
    engine
        .image_id(&reference)
        .await?
        .ok_or_else(|| anyhow!("image `{reference}` is still missing after the pull"))
}

/// Streams the container's export into the unpacker running on a blocking thread. The
/// unpacker has always finished when this returns, even when a signal cut the export
/// short, so the partial tree can be removed safely.
async fn export_into<E: Engine>(
    engine: &E,
    container: &str,
    partial: &Path,
    signals: &mut Signals,
) -> Result<unpack::Stats> {
    let (sender, receiver) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let target: PathBuf = partial.to_path_buf();
    let options = unpack::Options::for_this_host();
    let unpacker = tokio::task::spawn_blocking(move || {
        unpack::unpack(
            ChannelReader {
                receiver,
                chunk: Bytes::new(),
            },
            &target,
            options,
        )
    });
    let exported = tokio::select! {
        exported = engine.export(container, &sender) => exported,
        interrupted = signals.recv() => Err(interrupted.into()),
    };
    // Dropping the sender ends the stream, and the unpacker with it.
    drop(sender);
    let unpacked = unpacker.await.context("the unpacker thread failed")?;
    // A truncated export makes the unpacker fail too, so the export's own error is the
    // one worth reporting; when the unpacker stopped first (a refused entry), its error
    // explains why.
    match exported {
        Err(e) if !e.is::<SinkClosed>() => Err(e),
        _ => Ok(unpacked
            .with_context(|| format!("cannot unpack the image into {}", partial.display()))?),
    }
}

/// The export stream as a `Read` for the unpacker thread.
struct ChannelReader {
    receiver: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}
