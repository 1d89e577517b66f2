//! `toolbox list`: the toolboxes of the toolbox directory and its super privileged
//! containers, as a table or JSON, with image freshness and running sessions.

use std::io::Write;
use std::path::Path;

use anyhow::{Result, bail};

use crate::app::context::RunContext;
use crate::engine::short_id;
use crate::host::ui;
use crate::runtime::{Listed, Scope, nspawn, spc};
use crate::store::toolboxes;
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
    list(&ctx.scope(&directory), json)?;
    Ok(0)
}

/// Whether listing `directory` is refused to this process (a normal user's, for the
/// toolbox directory that only root may read).
fn unreadable(directory: &Path) -> bool {
    matches!(std::fs::read_dir(directory), Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied)
}

/// `toolbox list`: a table, or JSON for scripts. Super privileged containers are listed
/// after the toolbox directory's trees, or, when no engine answers, left out with a
/// warning.
fn list(scope: &Scope, json: bool) -> Result<()> {
    let mut rows = nspawn::manage::list(scope)?;
    match spc::manage::list(scope) {
        Ok(spcs) => rows.extend(spcs),
        Err(e) if !scope.quiet => ui::warn(format_args!(
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
        writeln!(out, "{}", table_line(row))?;
    }
    Ok(())
}

/// A row of the table.
fn table_line(row: &Listed) -> String {
    let id = row.image_id.as_deref().map(short_id).unwrap_or("-");
    let freshness = match (row.adopted, row.image_changed) {
        (true, _) => "adopted",
        (_, Some(true)) => "changed",
        (_, Some(false)) => "current",
        (_, None) => "unknown",
    };
    // What the engine reports (labels, names) is shown, never obeyed by the terminal.
    let shown = |text: Option<&str>| ui::escaped(text.unwrap_or("-"));
    format!(
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
    )
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
