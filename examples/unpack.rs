//! Unpacks a tar file with toolbox's unpacker, for measuring it apart from the daemon:
//! `cargo run --release --example unpack -- ARCHIVE EMPTY_DIR` (`UNPACK_WORKERS=N` sets
//! the number of worker threads; 0 unpacks on one thread).

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, archive, target] = &args[..] else {
        anyhow::bail!("usage: unpack ARCHIVE EMPTY_DIR");
    };
    let mut options = toolbox::store::unpack::Options::for_this_host();
    if let Ok(workers) = std::env::var("UNPACK_WORKERS") {
        options.workers = workers.parse()?;
    }
    let started = Instant::now();
    let file = std::fs::File::open(archive)?;
    let stats = toolbox::store::unpack::unpack(file, std::path::Path::new(target), options)?;
    eprintln!(
        "{} entries, {} bytes in {:.3} s with {} workers",
        stats.entries,
        stats.bytes,
        started.elapsed().as_secs_f64(),
        options.workers
    );
    Ok(())
}
