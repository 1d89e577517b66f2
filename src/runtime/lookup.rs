//! lookup: find the payload command inside a toolbox tree before entering it, the way the
//! container's `execvp` will (its `PATH`, symlinks resolved relative to the tree's root),
//! so a missing or unrunnable command gets the shell's 127 or 126 instead of the generic
//! status 1 systemd-nspawn reports for any failure. Only reads the tree.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, FileType, OFlags};

use crate::exit::CommandError;
use crate::sys;

/// Checks that `command` would run inside the tree at `root`, searching `path` (a
/// `PATH` value) when the command has no `/`, as `execvp` does.
pub fn check(root: &Path, toolbox: &str, command: &OsStr, path: &str) -> Result<(), CommandError> {
    let display = String::from_utf8_lossy(command.as_bytes()).into_owned();
    let not_found = || CommandError::NotFound {
        command: display.clone(),
        toolbox: toolbox.to_string(),
        hint: None,
    };
    let root = sys::open_dir(root).map_err(|e| CommandError::NotExecutable {
        command: display.clone(),
        reason: format!("cannot open the toolbox: {e}"),
    })?;
    let bytes = command.as_bytes();
    if bytes.is_empty() {
        return Err(not_found());
    }
    if bytes.contains(&b'/') {
        return match probe(&root, bytes) {
            Probe::Missing => Err(not_found()),
            Probe::Unrunnable(reason) => Err(CommandError::NotExecutable {
                command: display,
                reason,
            }),
            Probe::Runnable => Ok(()),
        };
    }
    // execvp remembers a found-but-unrunnable candidate and keeps searching; it reports
    // the permission problem only if nothing later on PATH runs.
    let mut unrunnable = None;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let mut candidate = dir.as_bytes().to_vec();
        candidate.push(b'/');
        candidate.extend_from_slice(bytes);
        match probe(&root, &candidate) {
            Probe::Runnable => return Ok(()),
            Probe::Unrunnable(reason) => {
                unrunnable.get_or_insert(reason);
            }
            Probe::Missing => {}
        }
    }
    match unrunnable {
        Some(reason) => Err(CommandError::NotExecutable {
            command: display,
            reason,
        }),
        None => Err(not_found()),
    }
}

enum Probe {
    Missing,
    Unrunnable(String),
    Runnable,
}

fn probe(root: &OwnedFd, path: &[u8]) -> Probe {
    let fd = match sys::open_in_root(root, path, OFlags::PATH, 0) {
        Ok(fd) => fd,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
        {
            return Probe::Missing;
        }
        Err(e) => return Probe::Unrunnable(e.to_string()),
    };
    let stat = match rfs::fstat(&fd) {
        Ok(stat) => stat,
        Err(e) => return Probe::Unrunnable(e.to_string()),
    };
    if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
        return Probe::Unrunnable("is a directory".into());
    }
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile || stat.st_mode & 0o111 == 0 {
        return Probe::Unrunnable("permission denied (not an executable file)".into());
    }
    match interpreter(root, path) {
        Some(interpreter) if matches!(probe_exists(root, &interpreter), Ok(false)) => {
            Probe::Unrunnable(format!(
                "bad interpreter: `{}` is not in the toolbox",
                String::from_utf8_lossy(&interpreter)
            ))
        }
        _ => Probe::Runnable,
    }
}

fn probe_exists(root: &OwnedFd, path: &[u8]) -> io::Result<bool> {
    match sys::open_in_root(root, path, OFlags::PATH, 0) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The interpreter named by a `#!` line, if the file starts with one.
fn interpreter(root: &OwnedFd, path: &[u8]) -> Option<Vec<u8>> {
    let fd = sys::open_in_root(root, path, OFlags::RDONLY, 0).ok()?;
    let mut head = [0u8; 256];
    let n = File::from(fd).read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let word = line
        .split(|&b| b == b' ' || b == b'\t')
        .find(|w| !w.is_empty())?;
    Some(word.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("usr/local/bin/adir")).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        let exe = |p: &str, body: &str, mode: u32| {
            fs::write(root.join(p), body).unwrap();
            fs::set_permissions(root.join(p), fs::Permissions::from_mode(mode)).unwrap();
        };
        exe("usr/bin/busybox", "\x7fELF", 0o755);
        exe("usr/bin/data", "text", 0o644);
        exe("usr/bin/script", "#!/bin/busybox sh\n", 0o755);
        exe("usr/bin/orphan", "#! /usr/bin/python3 -u\n", 0o755);
        exe("usr/local/bin/shadowed", "x", 0o644);
        exe("usr/bin/shadowed", "\x7fELF", 0o755);
        symlink("busybox", root.join("usr/bin/sh")).unwrap();
        // An absolute symlink resolves inside the tree, as the container sees it.
        symlink("/usr/bin/busybox", root.join("usr/bin/ls")).unwrap();
        symlink("/nonexistent", root.join("usr/bin/dangling")).unwrap();
        dir
    }

    fn status(root: &Path, command: &str) -> u8 {
        match check(
            root,
            "core-test",
            OsStr::new(command),
            crate::runtime::nspawn::command::CONTAINER_PATH,
        ) {
            Ok(()) => 0,
            Err(e) => e.exit_status(),
        }
    }

    #[test]
    fn found_commands() {
        let dir = tree();
        for command in [
            "busybox",
            "sh",
            "ls",
            "script",
            "/bin/sh",
            "/usr/bin/busybox",
            "shadowed",
        ] {
            assert_eq!(status(dir.path(), command), 0, "{command}");
        }
    }

    #[test]
    fn missing_commands_are_127() {
        let dir = tree();
        for command in ["nope", "/bin/nope", "dangling", "", "/usr/bin/busybox/x"] {
            assert_eq!(status(dir.path(), command), 127, "{command}");
        }
        let err = check(dir.path(), "core-test", OsStr::new("gdb"), "/usr/bin").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`gdb`: command not found in toolbox `core-test`"
        );
    }

    #[test]
    fn unrunnable_commands_are_126() {
        let dir = tree();
        for command in ["data", "/usr/bin/data", "/usr/bin", "adir", "orphan"] {
            assert_eq!(status(dir.path(), command), 126, "{command}");
        }
        let err = check(dir.path(), "core-test", OsStr::new("orphan"), "/bin").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`orphan`: bad interpreter: `/usr/bin/python3` is not in the toolbox"
        );
    }

    #[test]
    fn host_paths_are_not_consulted() {
        // /bin/sh exists on every host; a tree without it must still say 127.
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(status(dir.path(), "/bin/sh"), 127);
        assert_eq!(status(dir.path(), "sh"), 127);
    }
}
