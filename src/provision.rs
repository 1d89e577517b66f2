//! provision: create a toolbox from an image. Inspect (pull only when absent), create a
//! labelled container that is never started, stream its export straight into the
//! unpacker (overlapping the two; the archive is never held in memory or on disk), remove
//! the container on every path (success, error, Ctrl-C, SIGTERM, SIGHUP), then complete
//! the partial tree and rename it into place. An interrupted or failed creation leaves
//! neither a partial tree nor a container behind.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, anyhow};
use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::engine::{Docker, Engine, LABEL_PID, LABEL_TOOLBOX, SinkClosed};
use crate::host::Env;
use crate::machine::{self, Metadata, State};
use crate::plan::Plan;
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

/// Makes sure the toolbox of `plan` exists, creating it if needed. A toolbox that is
/// already there (or a CoreOS tree to adopt) is left as it is, without contacting any
/// daemon.
pub fn ensure(plan: &Plan, env: &Env, quiet: bool, verbose: bool) -> Result<()> {
    let path = plan.path();
    if ready(&path)? {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The daemon is reached before anything is written, so an unreachable one leaves
    // the toolbox directory as it was.
    let engine = runtime.block_on(Docker::connect(env))?;
    if verbose {
        eprintln!(
            "toolbox: Docker daemon at {} (API {})",
            engine.address,
            engine.api_version()
        );
    }
    let mut signals = runtime.block_on(async { Signals::catch() })?;
    let image_id = runtime.block_on(async {
        tokio::select! {
            id = image_id(&engine, plan, quiet) => id,
            interrupted = signals.recv() => Err(interrupted.into()),
        }
    })?;
    let _lock = machine::lock_for_create(&plan.directory, &plan.name)?;
    // Another toolbox process may have created it while this one waited for the lock.
    if ready(&path)? {
        return Ok(());
    }
    machine::remove_partials(&plan.directory, &plan.name)?;
    let partial = machine::make_partial(&plan.directory, &plan.name)?;
    let created = runtime.block_on(create(
        &engine,
        plan,
        &image_id,
        &partial,
        &mut signals,
        quiet,
    ));
    let installed = created.and_then(|()| machine::install(&partial, &path));
    if installed.is_err() {
        // Best effort: the error being reported matters more than a failed cleanup,
        // and the next creation removes any leftover partial tree anyway.
        let _ = fs::remove_dir_all(&partial);
    }
    installed?;
    // A signal that came while the tree was being completed: the toolbox is kept (it is
    // whole), but the user asked to stop, so it is not entered.
    match runtime.block_on(async { signals.recv().now_or_never() }) {
        Some(interrupted) => Err(interrupted.into()),
        None => Ok(()),
    }
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

/// Fills `partial` with the filesystem of image `image_id` and completes it.
async fn create<E: Engine>(
    engine: &E,
    plan: &Plan,
    image_id: &str,
    partial: &Path,
    signals: &mut Signals,
    quiet: bool,
) -> Result<()> {
    let reference = plan.image.reference();
    if !quiet {
        eprintln!(
            "toolbox: creating `{}` from {reference} ({})",
            plan.name,
            short_id(image_id)
        );
    }
    let labels = HashMap::from([
        (LABEL_TOOLBOX.to_string(), plan.name.clone()),
        (LABEL_PID.to_string(), std::process::id().to_string()),
    ]);
    // Not raced against signals: a signal arriving now waits in `signals` until the
    // export below, so the container, once created, is always removed.
    let container = engine.create_container(&reference, labels).await?;
    let started = Instant::now();
    let copied = export_into(engine, &container, partial, signals).await;
    let removed = engine.remove_container(&container).await;
    let stats = copied?;
    removed?;
    if !quiet {
        eprintln!(
            "toolbox: unpacked {} entries, {} MB in {:.1} s",
            stats.entries,
            stats.bytes / 1_000_000,
            started.elapsed().as_secs_f64()
        );
    }
    let metadata = Metadata {
        image: reference,
        image_id: image_id.to_string(),
        created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    machine::complete(partial, &metadata)
}

async fn image_id<E: Engine>(engine: &E, plan: &Plan, quiet: bool) -> Result<String> {
    let reference = plan.image.reference();
    if let Some(id) = engine.image_id(&reference).await? {
        return Ok(id);
    }
    if !quiet {
        eprintln!("toolbox: image {reference} is not here; pulling it");
    }
    engine.pull(&plan.image, quiet).await?;
    engine
        .image_id(&reference)
        .await?
        .ok_or_else(|| anyhow!("image `{reference}` is still missing after the pull"))
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
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
    let options = unpack::Options {
        preserve_owners: sys::is_root(),
    };
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
