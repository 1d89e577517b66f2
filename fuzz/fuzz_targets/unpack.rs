//! The unpacker on arbitrary archives, into a fresh directory inside a scratch parent
//! holding a sentinel file: it must succeed or fail cleanly, never panic, and never touch
//! anything outside its target.

#![no_main]

#[path = "scratch.rs"]
mod scratch;

use libfuzzer_sys::fuzz_target;
use toolbox::store::unpack::{self, Options};

fuzz_target!(|data: &[u8]| {
    let scratch = scratch::Scratch::new();
    let options = Options {
        preserve_owners: false,
        workers: 2,
    };
    let _ = unpack::unpack(data, &scratch.target, options);
    scratch.check(&[]);
});
