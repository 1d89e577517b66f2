//! A scratch directory for one fuzz input: an empty `target` to fill and a `sentinel` file
//! beside it. [`Scratch::check`] fails if the sentinel changed or anything but the names
//! the target may use appeared beside the target.

use std::fs;
use std::path::PathBuf;

pub struct Scratch {
    dir: tempfile::TempDir,
    pub target: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        fs::write(dir.path().join("sentinel"), b"untouched").unwrap();
        Scratch { dir, target }
    }

    /// A path beside the target, for the target's own use (an input file, a copy).
    pub fn beside(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Asserts that only `target`, `sentinel` and the names in `allowed` are beside the
    /// target and that the sentinel is untouched; then leaves the tree removable
    /// (archives may make directories read-only).
    pub fn check(&self, allowed: &[&str]) {
        assert_eq!(fs::read(self.beside("sentinel")).unwrap(), b"untouched");
        for entry in fs::read_dir(self.dir.path()).unwrap() {
            let name = entry.unwrap().file_name();
            let name = name.to_str().unwrap();
            assert!(
                ["target", "sentinel"].contains(&name) || allowed.contains(&name),
                "{name} appeared beside the target"
            );
        }
        make_writable(&self.target);
    }
}

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
