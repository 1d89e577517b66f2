//! Unpacks a tar file with toolbox's unpacker, for measuring it apart from the daemon:
//! `cargo run --release --example unpack -- ARCHIVE EMPTY_DIR`.

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, archive, target] = &args[..] else {
        anyhow::bail!("usage: unpack ARCHIVE EMPTY_DIR");
    };
    let started = Instant::now();
    let file = std::fs::File::open(archive)?;
    let options = toolbox::unpack::Options {
        preserve_owners: toolbox::sys::is_root(),
    };
    let stats = toolbox::unpack::unpack(file, std::path::Path::new(target), options)?;
    eprintln!(
        "{} entries, {} bytes in {:.3} s",
        stats.entries,
        stats.bytes,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
