//! A scratch directory for one fuzz input: an empty `target` to fill and a `sentinel` file
//! beside it, and a victim directory elsewhere (`/tmp/toolbox-fuzz-victim`, a fixed path
//! so an input can name it in an absolute symlink). [`Scratch::check`] fails if the
//! sentinel changed, anything but the names the target may use appeared beside the
//! target, or anything in the victim directory changed or appeared.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Outside the scratch directory: a write through an absolute symlink lands here.
pub const VICTIM: &str = "/tmp/toolbox-fuzz-victim";

/// The victim directory's state: every name in it, with its type, size and content.
fn victim_state() -> Vec<(String, String)> {
    let mut state = Vec::new();
    let mut stack = vec![PathBuf::from(VICTIM)];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            state.push((dir.display().to_string(), "unreadable".into()));
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {:o}", meta_mode(&meta))
            } else if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else {
                let content = fs::read(&path).unwrap_or_default();
                format!("file {:o} {}", meta_mode(&meta), String::from_utf8_lossy(&content))
            };
            state.push((path.display().to_string(), what));
        }
    }
    state.sort();
    state
}

fn meta_mode(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode()
}

/// The victim directory as this process made it, once.
fn victim() -> &'static [(String, String)] {
    static STATE: OnceLock<Vec<(String, String)>> = OnceLock::new();
    STATE.get_or_init(|| {
        let victim = Path::new(VICTIM);
        let _ = fs::create_dir_all(victim.join("etc"));
        fs::write(victim.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(victim.join("secret"), b"untouched").unwrap();
        victim_state()
    })
}

pub struct Scratch {
    dir: tempfile::TempDir,
    pub target: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        victim();
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
    /// target, that the sentinel is untouched and the victim directory unchanged; then leaves the tree removable
    /// (archives may make directories read-only).
    pub fn check(&self, allowed: &[&str]) {
        assert_eq!(fs::read(self.beside("sentinel")).unwrap(), b"untouched");
        assert_eq!(victim_state(), victim(), "the victim directory {VICTIM} changed");
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
