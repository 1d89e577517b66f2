//! `toolbox import`: a toolbox from an image archive, with no engine.

use std::path::Path;

use anyhow::Result;

use crate::app::context::RunContext;
use crate::engine;
use crate::host::ui;
use crate::model::config;
use crate::model::plan;
use crate::store::import;

/// `toolbox import FILE|DIR|-`.
pub fn run(ctx: &RunContext, archive: &Path) -> Result<u8> {
    ctx.become_root()?;
    let directory = ctx.directory()?;
    let given = ctx.settings.get(config::NAME).to_string();
    let imported = import::create(archive, &directory, |reference| {
        let name = match (given.as_str(), reference) {
            ("", Some(reference)) => {
                let image = crate::model::image::ImageRef::parse(reference, "latest")?;
                format!("{}-{}", image.repository, image.tag)
            }
            ("", None) => archive_stem(archive).ok_or_else(|| {
                anyhow::anyhow!("`{}` names no image; give --name", archive.display())
            })?,
            (given, _) => given.to_string(),
        };
        plan::toolbox_dir_name(&ctx.invoker.name, &name)
    })?;
    if !ctx.quiet() {
        let id = match imported.image_id.as_str() {
            "" => String::new(),
            id => format!(" ({})", engine::short_id(id)),
        };
        ui::say(format_args!(
            "imported `{}` from {}{id}: {} entries, {} MB",
            imported.name,
            imported.image,
            imported.stats.entries,
            imported.stats.bytes / 1_000_000
        ));
    }
    Ok(0)
}

/// A toolbox name from an archive's file name: `debian.tar.gz` gives `debian`.
fn archive_stem(archive: &Path) -> Option<String> {
    let name = archive.file_name()?.to_str()?;
    let stem = [".tar.gz", ".tgz", ".tar", ".gz"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    (!stem.is_empty() && name != "-").then(|| stem.to_string())
}
