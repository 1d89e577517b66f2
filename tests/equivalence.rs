//! The unpacker against GNU tar on a real export: the Debian test image's `docker export`
//! unpacked by `tar -x` (as root, with xattrs) and by toolbox's unpacker, one thread and
//! several, must give the same tree: paths, types, modes, owners, sizes, times, link
//! targets, hard-link groups, xattrs and content hashes.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use common::*;

/// One line per path, describing everything that must match.
fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let kind = meta.file_type();
            let detail = if kind.is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if kind.is_dir() {
                pending.push(path.clone());
                "dir".to_string()
            } else if kind.is_file() {
                format!(
                    "file {} {:?}",
                    meta.len(),
                    Sha256::digest(fs::read(&path).unwrap()).as_slice()
                )
            } else if kind.is_char_device() || kind.is_block_device() {
                format!("dev {}", meta.rdev())
            } else if kind.is_fifo() {
                "fifo".to_string()
            } else {
                "other".to_string()
            };
            let mut xattrs = Vec::new();
            if !kind.is_symlink() {
                let mut names = [0u8; 4096];
                let n = rustix::fs::listxattr(&path, &mut names[..]).unwrap_or(0);
                for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
                    let name = std::str::from_utf8(name).unwrap();
                    let mut value = [0u8; 4096];
                    let len = rustix::fs::getxattr(&path, name, &mut value[..]).unwrap_or(0);
                    xattrs.push(format!("{name}={:?}", &value[..len]));
                }
            }
            // Hard links: every name of an inode points at the first one listed.
            let group = if meta.nlink() > 1 && !kind.is_dir() {
                let first = inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_insert_with(|| rel.clone());
                format!(" linked-to {first}")
            } else {
                String::new()
            };
            // Directory times change as entries are added inside: compared for the rest.
            let mtime = if kind.is_dir() {
                String::new()
            } else {
                format!(" mtime {}", meta.mtime())
            };
            out.insert(
                rel,
                format!(
                    "{detail} mode {:o} owner {}:{}{mtime} {}{group}",
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    xattrs.join(",")
                ),
            );
        }
    }
    out
}

#[test]
fn toolbox_unpacks_an_export_exactly_as_gnu_tar() {
    let Some(t) = TestEnv::new("equivalence", DEBIAN_IMAGE) else {
        return;
    };
    let archive = t.root.join("export.tar");
    let container = docker(&["create", DEBIAN_IMAGE, "/bin/true"]);
    docker(&["export", "-o", archive.to_str().unwrap(), &container]);
    docker(&["rm", &container]);

    let gnu = t.root.join("gnu");
    fs::create_dir(&gnu).unwrap();
    let tar = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-p",
            "-x",
            "-f",
        ])
        .arg(&archive)
        .arg("-C")
        .arg(&gnu)
        .status()
        .unwrap();
    assert!(tar.success());
    let expected = listing(&gnu);
    assert!(
        expected.len() > 5000,
        "the export looks too small: {} entries",
        expected.len()
    );
    assert!(
        expected["usr/bin/ping"].contains("security.capability="),
        "the comparison must see xattrs"
    );
    assert!(
        expected["usr/bin/su"].contains("mode 104755"),
        "the comparison must see setuid bits"
    );

    for workers in [0, 2] {
        let ours = t.root.join(format!("ours-{workers}"));
        fs::create_dir(&ours).unwrap();
        let options = toolbox::unpack::Options {
            preserve_owners: true,
            workers,
        };
        toolbox::unpack::unpack(fs::File::open(&archive).unwrap(), &ours, options).unwrap();
        let actual = listing(&ours);
        let differences: Vec<_> = expected
            .iter()
            .filter(|(path, line)| actual.get(*path) != Some(line))
            .map(|(path, line)| format!("{path}: tar {line:?}, toolbox {:?}", actual.get(path)))
            .chain(
                actual
                    .keys()
                    .filter(|p| !expected.contains_key(*p))
                    .map(|p| format!("{p}: only toolbox")),
            )
            .take(20)
            .collect();
        assert!(
            differences.is_empty(),
            "{workers} workers:\n{}",
            differences.join("\n")
        );
    }
}
