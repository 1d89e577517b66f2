//! spc::session: runs an [`Spc`] through the engine and streams the session between the
//! user and the container: a pseudo-terminal in raw mode with window sizes forwarded, or
//! without one, standard output and error kept apart and standard input passed through.
//!
//! A persistent SPC is started by the session that finds it stopped, and stopped by the
//! session that ends last; both happen under the SPC's lock in the toolbox directory, so
//! a session starting while the last one ends either sees the container stopped (and
//! starts it) or has its own exec running before the last one looks. Every session is an
//! exec beside the container's idle main process. A throwaway SPC's main process is the
//! session; it is removed on every way out.

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{LABEL_DIRECTORY, LABEL_RUN_LABEL, LABEL_RUNTIME, LABEL_SPC, Spc, mounts};
use crate::engine::{
    self, Access, Attached, CommandFailed, CommandFailure, ContainerInfo, Engine, ExecState,
    LABEL_PID, Output, SpcRuntime, short_id,
};
use crate::exit::CommandError;
use crate::host::ui;
use crate::model::image::ImageRef;
use crate::model::plan::UpdateMode;
use crate::provision;
use crate::runtime::{guard, with_spc_engine};
use crate::store::toolboxes;
use crate::sys;
use crate::sys::signals::{self, Caught, STOPPING, Signal};

/// How long the processes of a stopping SPC get before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long an exec session whose output ended may take to be recorded as ended.
const EXEC_END: Duration = Duration::from_secs(2);
/// How long a session's output may still arrive after its container stopped.
const DRAIN: Duration = Duration::from_millis(500);

/// Finds `image` (pulling it if absent), resolves the SPC with the image's `RUN` label,
/// runs its session and returns its exit status. `directory` holds the SPC's lock.
pub fn enter(
    image: &ImageRef,
    resolve: impl FnOnce(Option<String>) -> Result<Spc>,
    access: &Access,
    directory: &Path,
    options: Options,
) -> Result<u8> {
    let Options { quiet, verbose, .. } = options;
    let runtime = engine::async_runtime()?;
    let status = runtime.block_on(async {
        // Caught before anything starts, so that none sent while the container or the
        // session starts is lost: those come to the command once it runs.
        let mut signals = Caught::catch(&[STOPPING.as_slice(), &[Signal::WINCH]].concat())
            .context("cannot catch signals")?;
        let connected = engine::connect(access).await?;
        if verbose {
            ui::say(connected.describe());
        }
        let engine = connected.spc_runtime()?;
        let image = tokio::select! {
            found = provision::find_image(engine, image, false, quiet) => found?,
            signal = signals.stopping() => return Err(crate::exit::Interrupted(signal.as_raw()).into()),
        };
        let spc = resolve(image.run_label.clone())?;
        match &spc.container.name {
            None => throwaway(engine, &spc, &image.id, directory, quiet, signals).await,
            Some(name) => {
                persistent(engine, &spc, name, &image.id, directory, options, signals).await
            }
        }
    });
    // A thread may still be blocked reading standard input; it must not hold up the exit.
    runtime.shutdown_background();
    status
}

/// A throwaway SPC: created, attached, started, waited for, and removed.
async fn throwaway(
    engine: &impl SpcRuntime,
    spc: &Spc,
    image_id: &str,
    directory: &Path,
    quiet: bool,
    signals: Caught,
) -> Result<u8> {
    remove_abandoned(engine).await;
    // Marked with this process, so that the next throwaway removes it if this process is
    // killed before it can.
    let mut container = mounts::place(engine, image_id, &spc.container, directory, quiet).await?;
    container
        .labels
        .insert(LABEL_PID.to_string(), std::process::id().to_string());
    // Run from its image, toolbox can be killed with its container at any moment; the
    // command, the container's main process, must not run on: its guard (see `guard`)
    // watches before the container starts.
    let guard = match sys::own_binary() {
        Some(_) => None,
        None => guard::SpcGuard::start(directory, None)
            .inspect_err(|e| ui::warn(format_args!("{e:#}")))
            .ok(),
    };
    let session = with_variable(&spc.session, guard.as_ref());
    let id = engine
        .create_spc(&container.spec(image_id, Some(&session)))
        .await?;
    let ran = async {
        let command = session.command.first().map_or("", String::as_str);
        let toolbox = spc.container.image.as_str();
        let attached = engine
            .attach(&id)
            .await
            .map_err(|e| command_error(e, command, toolbox))?;
        engine
            .start(&id)
            .await
            .map_err(|e| command_error(e, command, toolbox))?;
        if let Some(guard) = &guard
            && let Ok(Some(started)) = engine.container(&id).await
            && started.pid != 0
        {
            guard.tell_pid(started.pid);
        }
        let target = Recipient {
            engine,
            container: &id,
            exec: None,
        };
        stream(attached, session.tty, &target, signals).await?;
        engine.wait(&id).await
    }
    .await;
    let removed = engine.remove_container(&id).await;
    // A container left behind is the guard's to end once toolbox does.
    if let Some(guard) = guard
        && removed.is_ok()
    {
        guard.ended();
    }
    let status = ran?;
    removed?;
    Ok(exit_status(status))
}

/// Removes throwaway SPCs whose toolbox process is gone (killed outright). Housekeeping:
/// it never fails the session (another toolbox may be removing the same one).
async fn remove_abandoned(engine: &impl SpcRuntime) {
    let Ok(throwaways) = engine.labelled_containers(LABEL_RUNTIME, Some("spc")).await else {
        return;
    };
    for (id, labels) in throwaways {
        let pid = labels.get(LABEL_PID).and_then(|pid| pid.parse().ok());
        if pid.is_some_and(|pid| !sys::process_exists(pid)) {
            let _ = engine.remove_container(&id).await;
        }
    }
}

/// A session in the persistent SPC: created or started if needed, an exec into it, and
/// the container stopped if this was its last session.
async fn persistent(
    engine: &impl SpcRuntime,
    spc: &Spc,
    name: &str,
    image_id: &str,
    directory: &Path,
    options: Options,
    signals: Caught,
) -> Result<u8> {
    let verbose = options.verbose;
    let session = &spc.session;
    let started = async {
        let _lock = toolboxes::lock_for_spc(directory, name)?;
        let mut found = engine.container(name).await?;
        if let Some(container) = &found {
            check_ownership(container, name, directory)?;
        }
        if let Some(container) = found.take_if(|c| c.image_id != image_id) {
            // Never at the cost of files changed in it.
            let changed = match options.update {
                UpdateMode::Auto if !container.running => changed_files(engine, &container).await?,
                _ => 0,
            };
            match options.update {
                UpdateMode::Auto if !container.running && changed == 0 => {
                    engine.remove_container(&container.id).await?;
                    if !options.quiet {
                        ui::say(format_args!(
                            "image {} has changed since `{name}` was created; recreating it",
                            spc.container.image
                        ));
                    }
                }
                UpdateMode::Never => found = Some(container),
                _ => {
                    if !options.quiet {
                        let kept = match changed {
                            0 => String::new(),
                            n => format!(" (losing the {n} file(s) changed in it)"),
                        };
                        ui::say(format_args!(
                            "image {} has changed since `{name}` was created; `toolbox --runtime spc update` recreates it{kept}",
                            spc.container.image
                        ));
                    }
                    found = Some(container);
                }
            }
        }
        let container = match found {
            Some(found) => found,
            None => {
                let container =
                    mounts::place(engine, image_id, &spc.container, directory, options.quiet).await?;
                let id = engine.create_spc(&container.spec(image_id, None)).await?;
                if verbose {
                    ui::say(format_args!("created container `{name}` ({})", short_id(&id)));
                }
                engine
                    .container(&id)
                    .await?
                    .ok_or_else(|| anyhow!("container `{name}` vanished after its creation"))?
            }
        };
        let wanted = spc.container.labels.contains_key(LABEL_RUN_LABEL);
        if container.labels.contains_key(LABEL_RUN_LABEL) != wanted && !options.quiet {
            ui::warn(format_args!(
                "`{name}` was created {} its image's RUN label; `toolbox --runtime spc rm {name}` and run again to change that",
                if wanted { "without" } else { "with" }
            ));
        }
        if !container.running {
            engine.start(name).await?;
            if verbose {
                ui::say(format_args!("started container `{name}`"));
            }
        }
        let guard = session_guard(engine, directory, name).await;
        let session = with_variable(session, guard.as_ref());
        let (exec, attached) = engine.exec(name, &session).await?;
        // The lock is held until the command runs: a killed session's guard stops the SPC
        // when no process is in it, and this session has none until the engine started it.
        if let Some(pid) = exec_pid(engine, &exec).await
            && let Some(guard) = &guard
        {
            guard.tell_pid(pid as u32);
        }
        Ok((exec, attached, guard))
    }
    .await;
    let (exec, attached, guard) = match started {
        Ok(started) => started,
        Err(e) => {
            // A container started for this session is not left running for nothing.
            let _ = stop_if_idle(engine, directory, name, None, verbose).await;
            return Err(e);
        }
    };
    let target = Recipient {
        engine,
        container: name,
        exec: Some(&exec),
    };
    let streamed = stream(attached, session.tty, &target, signals).await;
    let state = exec_end(engine, &exec).await;
    let stopped = stop_if_idle(engine, directory, name, Some(&exec), verbose).await;
    if let Err(e) = stopped {
        ui::warn(format_args!("{e:#}"));
    }
    // A command that runs on still is the guard's to end once toolbox does.
    if let Some(guard) = guard
        && state.as_ref().is_ok_and(|state| !state.running)
    {
        guard.ended();
    }
    let command = session.command.first().map_or("", String::as_str);
    streamed.map_err(|e| command_error(e, command, name))?;
    // A container stopped or removed under the session takes its exec's status with it.
    let status = state
        .ok()
        .and_then(|state| state.exit_code)
        .ok_or_else(|| anyhow!("the session in `{name}` ended without an exit status (was the container stopped or removed?)"))?;
    Ok(exit_status(status))
}

/// Run from its image, toolbox can be killed with its container at any moment, and the
/// command it has the engine start must not run on: its guard (see `guard`) watches
/// before the command starts. `None` where toolbox runs on the host, or when the guard
/// cannot start (said).
async fn session_guard(
    engine: &impl SpcRuntime,
    directory: &Path,
    name: &str,
) -> Option<guard::SpcGuard> {
    if sys::own_binary().is_some() {
        return None;
    }
    let started = async {
        let main = engine.container(name).await?.map_or(0, |c| c.pid);
        if main == 0 {
            bail!("container `{name}` stopped as the session started");
        }
        guard::SpcGuard::start(directory, Some((name, main)))
    };
    started
        .await
        .inspect_err(|e| ui::warn(format_args!("{e:#}")))
        .ok()
}

/// `session` with the variable its guard finds it by, when it has one.
fn with_variable<'a>(
    session: &'a engine::Process,
    guard: Option<&guard::SpcGuard>,
) -> Cow<'a, engine::Process> {
    match guard {
        Some(guard) => {
            let mut session = session.clone();
            session.env.push(guard.variable());
            Cow::Owned(session)
        }
        None => Cow::Borrowed(session),
    }
}

/// Refuses a container named like the SPC that is not the SPC of `directory`.
pub(super) fn check_ownership(
    container: &ContainerInfo,
    name: &str,
    directory: &Path,
) -> Result<()> {
    let label = |key| container.labels.get(key).map(String::as_str);
    if label(LABEL_SPC) != Some(name) {
        bail!(
            "container `{name}` exists and is not toolbox's; remove or rename it, or choose another --name"
        );
    }
    let directory = directory.display().to_string();
    match label(LABEL_DIRECTORY) {
        Some(owner) if owner != directory => bail!(
            "container `{name}` is the toolbox of directory {owner}; use that directory or choose another --name"
        ),
        _ => Ok(()),
    }
}

/// The state of an exec session whose output has ended: the engine may take a moment to
/// record its exit, or its process a moment to die of the signal it was just passed.
async fn exec_end(engine: &impl SpcRuntime, exec: &str) -> Result<ExecState> {
    exec_settled(engine, exec, |state| !state.running).await
}

/// The process of a running exec session. Docker reports PID 0 for a moment after the
/// session starts, so it is asked again until it knows or the session ends.
async fn exec_pid(engine: &impl SpcRuntime, exec: &str) -> Option<i32> {
    let state = exec_settled(engine, exec, |state| state.pid.is_some() || !state.running);
    let state = state.await.ok()?;
    state.pid.filter(|_| state.running)
}

/// The exec session's state once `settled` holds for it, or as it is after [`EXEC_END`].
async fn exec_settled(
    engine: &impl SpcRuntime,
    exec: &str,
    settled: impl Fn(&ExecState) -> bool,
) -> Result<ExecState> {
    let deadline = tokio::time::Instant::now() + EXEC_END;
    loop {
        let state = engine.exec_state(exec).await?;
        if settled(&state) || tokio::time::Instant::now() >= deadline {
            return Ok(state);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops the SPC when no exec session other than `ours` runs in it.
async fn stop_if_idle(
    engine: &impl SpcRuntime,
    directory: &Path,
    name: &str,
    ours: Option<&str>,
    verbose: bool,
) -> Result<()> {
    let _lock = toolboxes::lock_for_spc(directory, name)?;
    let Some(container) = engine.container(name).await? else {
        return Ok(());
    };
    if running_sessions(engine, &container.exec_ids, ours).await > 0 || !container.running {
        return Ok(());
    }
    engine.stop(name, STOP_GRACE).await?;
    if verbose {
        ui::say(format_args!(
            "stopped container `{name}`: its last session ended"
        ));
    }
    Ok(())
}

/// How many of `execs`, other than `ours`, still run.
pub(super) async fn running_sessions(
    engine: &impl SpcRuntime,
    execs: &[String],
    ours: Option<&str>,
) -> usize {
    let mut running = 0;
    for exec in execs.iter().filter(|e| Some(e.as_str()) != ours) {
        // One finished and forgotten meanwhile is not running.
        if engine
            .exec_state(exec)
            .await
            .is_ok_and(|state| state.running)
        {
            running += 1;
        }
    }
    running
}

/// A container's status as toolbox exits with it: 0-255 as they are; a status the engine
/// made up beyond that (it should not) is toolbox's failure.
fn exit_status(status: i64) -> u8 {
    u8::try_from(status).unwrap_or(crate::exit::TOOLBOX_FAILED)
}

/// What a session's signals and terminal sizes go to.
struct Recipient<'a, E: SpcRuntime> {
    engine: &'a E,
    container: &'a str,
    /// The exec session, or `None` for the container's main process.
    exec: Option<&'a str>,
}

impl<E: SpcRuntime> Recipient<'_, E> {
    async fn resize(&self) {
        if let Some(size) = sys::window_size() {
            // A size the engine refuses leaves the old one: not worth ending the session.
            let _ = self.engine.resize(self.container, self.exec, size).await;
        }
    }

    /// Passes a signal toolbox received on to the session's process.
    async fn signal(&self, signal: Signal) {
        match self.exec {
            // The host's PID namespace is shared: the exec's process is a host process.
            Some(exec) => {
                if let Some(pid) = exec_pid(self.engine, exec).await {
                    signals::send(pid, signal);
                }
            }
            None => {
                let _ = self.engine.kill(self.container, signal.as_raw()).await;
            }
        }
    }
}

/// Streams a session until its output ends: standard input to the command, its output to
/// toolbox's standard output and error, SIGWINCH as a resize, and SIGINT, SIGTERM and
/// SIGHUP passed on to it. With `tty`, the terminal is in raw mode meanwhile.
/// Returns the engine's message when the command never started (Docker writes it as the
/// session's only output).
async fn stream(
    attached: Attached,
    tty: bool,
    target: &Recipient<'_, impl SpcRuntime>,
    signals: Caught,
) -> Result<()> {
    let Attached { mut output, input } = attached;
    // A reader that goes away is passed on to the command below, not the end of toolbox.
    signals::ignore_sigpipe();
    let _raw = match tty {
        true => Some(sys::RawTerminal::enter().context("cannot put the terminal in raw mode")?),
        false => None,
    };
    let mut signals = signals;
    if tty {
        target.resize().await;
    }
    // Input goes in on a task of its own, never in turn with the output: an engine that
    // relays both through one thread (Podman's conmon) stops taking input while the
    // command waits for its output to be read, and toolbox would wait for it in turn.
    let _feeding = Aborting(tokio::spawn(feed(read_stdin(), input)));
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    // Docker keeps an exec's connection open when its container is stopped or removed
    // under it (`toolbox rm --force`, `docker rm -f`): the session ends when the container
    // does, after a moment for output still in flight.
    let container_stopped = target.engine.wait(target.container);
    tokio::pin!(container_stopped);
    let mut draining = false;
    let drained = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(drained);
    let mut reader_gone = false;
    let kill_after = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(kill_after);
    loop {
        tokio::select! {
            _ = &mut container_stopped, if !draining => {
                draining = true;
                drained.as_mut().reset(tokio::time::Instant::now() + DRAIN);
            }
            _ = &mut drained, if draining => break,
            // One that survives SIGPIPE would write into nothing for ever.
            _ = &mut kill_after, if reader_gone => {
                target.signal(Signal::KILL).await;
                break;
            }
            chunk = output.next() => match chunk {
                None => break,
                Some(chunk) => {
                    let chunk = chunk?;
                    if reader_gone {
                        continue;
                    }
                    let written = match chunk {
                        Output::Stdout(bytes) => stdout.write_all(&bytes).and_then(|()| stdout.flush()),
                        Output::Stderr(bytes) => stderr.write_all(&bytes).and_then(|()| stderr.flush()),
                    };
                    // Whoever read the output went away (`| head`): the command is told as
                    // a pipe would tell it, and its status still comes back. Its output is
                    // read on and dropped meanwhile: the engine reports a command's end only
                    // once its output has been taken.
                    if written.is_err() {
                        reader_gone = true;
                        target.signal(Signal::PIPE).await;
                        kill_after.as_mut().reset(tokio::time::Instant::now() + EXEC_END);
                    }
                }
            },
            signal = signals.next() => match signal {
                Signal::WINCH => if tty {
                    target.resize().await
                },
                stopping => target.signal(stopping).await,
            },
        }
    }
    Ok(())
}

/// A task that ends with the session, however the session ends.
struct Aborting(tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes standard input to the command until either ends; the end of input ends the
/// command's standard input too.
async fn feed(mut stdin: mpsc::Receiver<Bytes>, mut input: Pin<Box<dyn AsyncWrite + Send>>) {
    while let Some(bytes) = stdin.recv().await {
        if input
            .write_all(&bytes)
            .await
            .and(input.flush().await)
            .is_err()
        {
            return;
        }
    }
    let _ = input.shutdown().await;
}

/// The error of a command the engine could not start (see [`CommandFailed`]) as the
/// same command's in an nspawn toolbox (exit status 127 or 126); other errors as they are.
fn command_error(error: anyhow::Error, command: &str, toolbox: &str) -> anyhow::Error {
    let Some(failed) = error.downcast_ref::<CommandFailed>() else {
        return error;
    };
    let command = command.to_string();
    match &failed.failure {
        CommandFailure::NotFound => CommandError::NotFound {
            command,
            toolbox: toolbox.to_string(),
            hint: None,
        },
        CommandFailure::NotExecutable(reason) => CommandError::NotExecutable {
            command,
            reason: reason.clone(),
        },
    }
    .into()
}

/// Standard input, read on a thread of its own (a blocking read cannot be abandoned, and
/// the session may end before its input does); the channel closes at end of input.
fn read_stdin() -> mpsc::Receiver<Bytes> {
    let (sender, receiver) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match std::io::Read::read(&mut stdin, &mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    if sender
                        .blocking_send(Bytes::copy_from_slice(&buffer[..n]))
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    receiver
}

/// The `RUN` label of `image` if the engine has the image, asked within `timeout` (for
/// `--dry-run`, which pulls nothing).
pub fn run_label(image: &ImageRef, access: &Access, timeout: Duration) -> Result<Option<String>> {
    with_spc_engine(access, Some(timeout), async |engine| {
        let found = engine.image(&image.reference()).await?;
        let found = found.ok_or_else(|| anyhow!("image {} is not here", image.reference()))?;
        Ok(found.run_label)
    })
}

/// How a session reports, and what it does about a changed image.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `TOOLBOX_UPDATE`: when the container's image is no longer the image's current ID,
    /// say so (`notify`), or, when no session runs in it, replace it first (`auto`).
    pub update: UpdateMode,
    pub quiet: bool,
    pub verbose: bool,
}

/// The files changed in `container` since it was created: the changed paths with nothing
/// changed beneath them, less its mount points.
pub(super) async fn changed_files(
    engine: &impl SpcRuntime,
    container: &ContainerInfo,
) -> Result<usize> {
    let paths = engine.changed_paths(&container.id).await?;
    let mounts: Vec<&str> = container
        .mounts
        .iter()
        .map(|(_, d, _)| d.as_str())
        .collect();
    let changed = paths.iter().filter(|path| {
        let beneath = format!("{path}/");
        !mounts.contains(&path.as_str()) && !paths.iter().any(|p| p.starts_with(&beneath))
    });
    Ok(changed.count())
}

/// `toolbox-idle`, a persistent SPC's main process: waits to be stopped and exits 0.
pub fn idle() -> u8 {
    signals::wait_for_stop_signal();
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_that_cannot_start_exit_as_in_an_nspawn_toolbox() {
        let failed = |failure| {
            anyhow::Error::new(CommandFailed {
                failure,
                message: "the engine's words".into(),
            })
        };
        let status = |e: anyhow::Error| {
            e.downcast_ref::<CommandError>()
                .map(CommandError::exit_status)
        };
        let not_found = command_error(failed(CommandFailure::NotFound), "x", "core-f");
        assert_eq!(
            not_found.to_string(),
            "`x`: command not found in toolbox `core-f`"
        );
        assert_eq!(status(not_found), Some(127));
        let denied = CommandFailure::NotExecutable("permission denied".into());
        assert_eq!(
            status(command_error(failed(denied), "x", "core-f")),
            Some(126)
        );
        // Any other error stays as it was.
        let other = command_error(anyhow!("cannot attach"), "x", "core-f");
        assert_eq!(other.to_string(), "cannot attach");
        assert_eq!(status(other), None);
    }
}
