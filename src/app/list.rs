//! `toolbox list`: the toolboxes of the toolbox directory and its super privileged
//! containers, as a table or JSON, with image freshness and running sessions.

use std::io::Write;
use std::path::Path;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::app::DAEMON_TIMEOUT;
use crate::app::context::RunContext;
use crate::engine::{Access, short_id};
use crate::host::ui;
use crate::model::image::ImageRef;
use crate::model::plan::{Runtime, Storage};
use crate::provision;
use crate::runtime::spc;
use crate::store::toolboxes::{self, State};
use crate::store::{overlay, session};
use crate::sys;

/// `toolbox list [--json] [--names]`.
pub fn run(ctx: &RunContext, json: bool, names: bool) -> Result<u8> {
    let directory = ctx.directory()?;
    if !sys::is_root() && unreadable(&directory) {
        // The toolbox directory is root's alone: this re-runs toolbox through sudo.
        ctx.become_root()?;
        bail!("cannot list {}: permission denied", directory.display());
    }
    if names {
        // For scripts and completion: no daemon, no sizes.
        for (name, _) in toolboxes::list(&directory)? {
            println!("{name}");
        }
        return Ok(0);
    }
    list(&directory, &ctx.paths.proc, &ctx.access, json, ctx.quiet())?;
    Ok(0)
}

/// Whether listing `directory` is refused to this process (a normal user's, for the
/// toolbox directory that only root may read).
fn unreadable(directory: &Path) -> bool {
    matches!(std::fs::read_dir(directory), Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied)
}

/// One row of `toolbox list`.
#[derive(Debug, Serialize)]
pub struct Row {
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

/// The rows for every toolbox in `directory`.
pub fn rows(directory: &Path, proc_root: &Path, access: &Access) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, state) in toolboxes::list(directory)? {
        let path = directory.join(&name);
        let metadata = match state {
            State::Complete => Some(toolboxes::read_metadata(&path)?),
            _ => None,
        };
        let image_changed = metadata.as_ref().and_then(|m| {
            let image = ImageRef::parse(&m.image, "latest").ok()?;
            provision::image_changed(&image, &m.image_id, access, DAEMON_TIMEOUT)
        });
        let storage = metadata.as_ref().map_or(Storage::Copy, |m| m.storage());
        let sessions = session::live(directory, proc_root, &name)?;
        rows.push(Row {
            sessions: sessions.len(),
            targets: sessions.into_iter().filter_map(|s| s.target).collect(),
            size_bytes: Some(match storage {
                Storage::Copy => toolboxes::disk_usage(&path),
                Storage::Overlay => overlay::disk_usage(&path),
            }),
            storage: Some(storage.name()),
            files: Some(
                match storage {
                    Storage::Copy => path.clone(),
                    Storage::Overlay => overlay::upper(&path),
                }
                .display()
                .to_string(),
            ),
            runtime: Runtime::Nspawn,
            image: metadata.as_ref().map(|m| m.image.clone()),
            image_id: metadata.as_ref().map(|m| m.image_id.clone()),
            created: metadata.map(|m| m.created),
            image_changed,
            adopted: state == State::Adopted,
            name,
        });
    }
    Ok(rows)
}

/// The rows for the super privileged containers of `directory`.
pub fn spc_rows(directory: &Path, access: &Access) -> Result<Vec<Row>> {
    let listed = spc::session::list(access, directory, DAEMON_TIMEOUT)?;
    Ok(listed
        .into_iter()
        .map(|spc| Row {
            image: Some(spc.image),
            image_id: Some(spc.image_id),
            // The engine's time to the second, as toolbox records its own.
            created: Some(match spc.created.get(..19) {
                Some(seconds) => format!("{seconds}Z"),
                None => spc.created,
            }),
            size_bytes: None,
            sessions: spc.sessions,
            targets: Vec::new(),
            image_changed: spc.image_changed,
            adopted: false,
            storage: None,
            files: None,
            runtime: Runtime::Spc,
            name: spc.name,
        })
        .collect())
}

/// `toolbox list`: a table, or JSON for scripts. Super privileged containers are listed
/// after the toolbox directory's trees, or, when no engine answers, left out with a
/// warning.
fn list(
    directory: &Path,
    proc_root: &Path,
    access: &Access,
    json: bool,
    quiet: bool,
) -> Result<()> {
    let mut rows = rows(directory, proc_root, access)?;
    match spc_rows(directory, access) {
        Ok(spcs) => rows.extend(spcs),
        Err(e) if !quiet => ui::warn(format_args!(
            "{e:#}; super privileged containers are not listed"
        )),
        Err(_) => {}
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<32} {:<7} {:<32} {:<12} {:<20} {:<7} {:>9} {:>8}  {:<9} TARGETS",
        "NAME", "RUNTIME", "IMAGE", "ID", "CREATED", "STORAGE", "SIZE", "SESSIONS", "FRESHNESS"
    )?;
    for row in &rows {
        let id = row.image_id.as_deref().map(short_id).unwrap_or("-");
        let freshness = match (row.adopted, row.image_changed) {
            (true, _) => "adopted",
            (_, Some(true)) => "changed",
            (_, Some(false)) => "current",
            (_, None) => "unknown",
        };
        // What the engine reports (labels, names) is shown, never obeyed by the terminal.
        let shown = |text: Option<&str>| ui::escaped(text.unwrap_or("-"));
        writeln!(
            out,
            "{:<32} {:<7} {:<32} {:<12} {:<20} {:<7} {:>9} {:>8}  {freshness:<9} {}",
            ui::escaped(&row.name),
            row.runtime.name(),
            shown(row.image.as_deref()),
            shown(Some(id)),
            shown(row.created.as_deref()),
            row.storage.unwrap_or("-"),
            row.size_bytes.map_or("-".to_string(), human_size),
            row.sessions,
            match row.targets.is_empty() {
                true => "-".to_string(),
                false => ui::escaped(&row.targets.join(",")),
            },
        )?;
    }
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_du_h() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(380 * 1024 * 1024), "380.0 MiB");
    }
}
