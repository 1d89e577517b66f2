//! Image archives as `toolbox import` reads them: arbitrary bytes as a file, told apart by
//! content, their documents parsed and their layers applied into a fresh directory beside
//! a sentinel file. It must succeed or fail cleanly, never panic, and never touch anything
//! outside its scratch directory.

#![no_main]

use std::fs;

use libfuzzer_sys::fuzz_target;
use toolbox::import::{self, Archive};
use toolbox::unpack::{self, Options};

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().unwrap();
    let input = scratch.path().join("input");
    fs::write(&input, data).unwrap();
    let target = scratch.path().join("target");
    fs::create_dir(&target).unwrap();
    let sentinel = scratch.path().join("sentinel");
    fs::write(&sentinel, b"untouched").unwrap();
    let options = Options {
        preserve_owners: false,
        workers: 2,
    };
    match import::open(&input, &scratch.path().join("spool")) {
        Ok(Archive::Image(image, source)) => {
            let _ = import::apply(&image, &source, &target, options);
        }
        Ok(Archive::RootFs(reader)) => {
            let _ = unpack::unpack(reader, &target, options);
        }
        Err(_) => {}
    }
    assert_eq!(fs::read(&sentinel).unwrap(), b"untouched");
    for entry in fs::read_dir(scratch.path()).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            ["input", "target", "sentinel", "spool"].contains(&name.to_str().unwrap()),
            "{name:?} appeared beside the target"
        );
    }
});
