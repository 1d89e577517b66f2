//! Image archives as `toolbox import` reads them: arbitrary bytes as a file, told apart by
//! content, their documents parsed and their layers applied into a fresh directory beside
//! a sentinel file. It must succeed or fail cleanly, never panic, and never touch anything
//! outside its scratch directory.

#![no_main]

#[path = "scratch.rs"]
mod scratch;

use libfuzzer_sys::fuzz_target;
use toolbox::store::import::{self, Archive};
use toolbox::store::unpack::{self, Options};

fuzz_target!(|data: &[u8]| {
    let scratch = scratch::Scratch::new();
    let input = scratch.beside("input");
    std::fs::write(&input, data).unwrap();
    let options = Options {
        preserve_owners: false,
        workers: 2,
    };
    match import::open(&input, &scratch.beside("copy")) {
        Ok(Archive::Image(image, source)) => {
            let _ = import::apply(&image, &source, &scratch.target, options);
        }
        Ok(Archive::RootFs(reader)) => {
            let _ = unpack::unpack(reader, &scratch.target, options);
        }
        Err(_) => {}
    }
    scratch.check(&["input", "copy"]);
});
