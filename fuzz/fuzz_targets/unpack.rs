//! The unpacker on arbitrary archives, into a fresh directory inside a scratch parent
//! holding a sentinel file: it must succeed or fail cleanly, never panic, and never touch
//! anything outside its target.

#![no_main]

use std::fs;

use libfuzzer_sys::fuzz_target;
use toolbox::unpack::{self, Options};

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("target");
    fs::create_dir(&target).unwrap();
    let sentinel = scratch.path().join("sentinel");
    fs::write(&sentinel, b"untouched").unwrap();
    let options = Options {
        preserve_owners: false,
        workers: 2,
    };
    let _ = unpack::unpack(data, &target, options);
    assert_eq!(fs::read(&sentinel).unwrap(), b"untouched");
    let beside: Vec<_> = fs::read_dir(scratch.path()).unwrap().collect();
    assert_eq!(beside.len(), 2, "something was created beside the target");
    // Leave the tree removable: restrictive directory modes from the archive.
    make_writable(&target);
});

fn make_writable(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&entry.path());
            }
        }
    }
}
