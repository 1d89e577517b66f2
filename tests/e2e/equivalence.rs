//! The unpacker against GNU tar on a real export: the Debian test image's `docker export`
//! unpacked by `tar -x` (as root, with xattrs) and by toolbox's unpacker, one thread and
//! several, must give the same tree: paths, types, modes, owners, sizes, times, link
//! targets, hard-link groups, xattrs and content hashes.

use std::fs;
use std::process::Command;

use crate::common::*;

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
        let options = toolbox::store::unpack::Options {
            preserve_owners: true,
            workers,
        };
        toolbox::store::unpack::unpack(fs::File::open(&archive).unwrap(), &ours, options).unwrap();
        let actual = listing(&ours);
        let differences = differences(&expected, &actual, ("tar", "toolbox"));
        assert!(
            differences.is_empty(),
            "{workers} workers:\n{}",
            differences.join("\n")
        );
    }
}
