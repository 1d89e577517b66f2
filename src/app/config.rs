//! `toolbox config`: the effective settings and where each comes from.

use std::io::Write;

use anyhow::Result;

use crate::app::context::RunContext;
use crate::host::ui::quote;

/// `toolbox config [--path]`: every setting with its value and where it came from, or
/// with `--path`, the files consulted and whether each exists.
pub fn run(ctx: &RunContext, paths: bool) -> Result<u8> {
    let mut out = std::io::stdout().lock();
    if paths {
        for file in &ctx.files {
            let state = if ctx.settings.files_read.contains(file) {
                "read"
            } else {
                "absent"
            };
            writeln!(out, "{}\t{state}", file.display())?;
        }
        return Ok(0);
    }
    if let Some(mount) = &ctx.from_image {
        writeln!(out, "# {}", crate::app::context::from_image_line(mount))?;
    }
    for (key, setting) in ctx.settings.iter() {
        writeln!(
            out,
            "{}={}\t# {}",
            key.name,
            quote(setting.value.as_ref()),
            setting.origin
        )?;
    }
    Ok(0)
}
