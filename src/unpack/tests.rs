use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::*;

/// Writes raw tar entries, hostile ones included: names go into the header as given.
#[derive(Default)]
struct Tar {
    data: Vec<u8>,
}

impl Tar {
    fn raw(
        &mut self,
        name: &[u8],
        kind: EntryType,
        mode: u32,
        link: &[u8],
        body: &[u8],
        owner: (u64, u64),
    ) -> &mut Self {
        let mut header = Header::new_ustar();
        let ustar = header.as_ustar_mut().unwrap();
        assert!(
            name.len() <= 100 && link.len() <= 100,
            "use pax() for long names"
        );
        ustar.name[..name.len()].copy_from_slice(name);
        ustar.linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(owner.0);
        header.set_gid(owner.1);
        header.set_mtime(1_600_000_000);
        header.set_size(body.len() as u64);
        header.set_cksum();
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(body);
        self.data.resize(self.data.len().next_multiple_of(512), 0);
        self
    }

    fn file(&mut self, name: &str, body: &[u8]) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Regular,
            0o644,
            b"",
            body,
            (0, 0),
        )
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Directory,
            mode,
            b"",
            b"",
            (0, 0),
        )
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Symlink,
            0o777,
            target.as_bytes(),
            b"",
            (0, 0),
        )
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Link,
            0o644,
            target.as_bytes(),
            b"",
            (0, 0),
        )
    }

    /// A PAX extended header applying to the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (key, value) in records {
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {key}=").as_bytes());
            body.extend_from_slice(value);
            body.push(b'\n');
        }
        self.raw(b"pax", EntryType::XHeader, 0o644, b"", &body, (0, 0))
    }

    fn bytes(&self) -> Vec<u8> {
        let mut data = self.data.clone();
        data.extend_from_slice(&[0; 1024]);
        data
    }
}

/// A target directory with a sentinel tree beside it, to prove nothing outside changes.
struct Scene {
    _dir: tempfile::TempDir,
    parent: PathBuf,
    target: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().to_path_buf();
        let target = parent.join("target");
        fs::create_dir(&target).unwrap();
        fs::create_dir(parent.join("outside")).unwrap();
        fs::write(parent.join("outside/secret"), "untouched").unwrap();
        Scene {
            _dir: dir,
            parent,
            target,
        }
    }

    fn unpack(&self, tar: &Tar) -> Result<Stats, Error> {
        unpack(
            &tar.bytes()[..],
            &self.target,
            Options {
                preserve_owners: sys::is_root(),
                workers: 2,
            },
        )
    }

    /// Every path outside the target, with its size and mode.
    fn outside(&self) -> Vec<(PathBuf, u64, u32)> {
        fn walk(dir: &Path, skip: &Path, out: &mut Vec<(PathBuf, u64, u32)>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path == skip {
                    continue;
                }
                let meta = fs::symlink_metadata(&path).unwrap();
                out.push((path.clone(), meta.len(), meta.mode()));
                if meta.is_dir() {
                    walk(&path, skip, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.parent, &self.target, &mut out);
        out.sort();
        out
    }

    fn assert_contained(&self, tar: &Tar) -> Result<Stats, Error> {
        let before = self.outside();
        let result = self.unpack(tar);
        assert_eq!(
            self.outside(),
            before,
            "something outside the target changed"
        );
        result
    }
}

/// Tests that create device nodes, set owners or file capabilities need root. They fail
/// when the suite is told root is required (CI) and say why they skip otherwise.
fn have_root() -> bool {
    if sys::is_root() {
        return true;
    }
    assert_ne!(
        std::env::var("TOOLBOX_E2E").as_deref(),
        Ok("required"),
        "this test needs root"
    );
    eprintln!("skipped: needs root");
    false
}

#[test]
fn dot_dot_entries_are_refused() {
    for name in ["../escape", "a/../../escape", "..", "./../outside/secret"] {
        let scene = Scene::new();
        let err = scene
            .assert_contained(Tar::default().file(name, b"x"))
            .unwrap_err();
        assert!(err.to_string().contains("`..`"), "{name}: {err}");
    }
    let scene = Scene::new();
    let err = scene
        .assert_contained(Tar::default().dir("../newdir/", 0o755))
        .unwrap_err();
    assert!(err.to_string().contains("`..`"));
}

#[test]
fn absolute_names_land_inside() {
    let scene = Scene::new();
    let outside = scene.parent.join("outside/abs");
    scene
        .assert_contained(Tar::default().file(outside.to_str().unwrap(), b"x"))
        .unwrap();
    assert!(
        scene
            .target
            .join(outside.strip_prefix("/").unwrap())
            .is_file()
    );
}

#[test]
fn writes_through_symlinks_stay_inside() {
    let scene = Scene::new();
    let outside = scene.parent.join("outside");
    let inner_outside = scene.target.join(outside.strip_prefix("/").unwrap());
    let mut tar = Tar::default();
    tar.dir(&format!("{}/", outside.display()), 0o755)
        .dir("etc/", 0o755)
        .dir("outside/", 0o755)
        .symlink("abs", outside.to_str().unwrap())
        .symlink("rel", "../outside")
        .symlink("root", "/")
        .symlink("etc-link", "/etc")
        .file("abs/secret", b"owned")
        .file("rel/secret", b"owned")
        .file("root/etc/owned", b"owned")
        .file("etc-link/owned-too", b"owned")
        .dir("rel/newdir/", 0o755);
    scene.assert_contained(&tar).unwrap();
    assert_eq!(fs::read(inner_outside.join("secret")).unwrap(), b"owned");
    assert_eq!(
        fs::read(scene.target.join("outside/secret")).unwrap(),
        b"owned"
    );
    assert!(scene.target.join("outside/newdir").is_dir());
    assert_eq!(fs::read(scene.target.join("etc/owned")).unwrap(), b"owned");
    assert_eq!(
        fs::read(scene.target.join("etc/owned-too")).unwrap(),
        b"owned"
    );
    assert!(!Path::new("/etc/owned").exists() && !Path::new("/etc/owned-too").exists());
    assert_eq!(fs::read_link(scene.target.join("abs")).unwrap(), outside);
}

#[test]
fn dangling_symlink_parents_are_refused() {
    let scene = Scene::new();
    let mut tar = Tar::default();
    tar.symlink(
        "gone",
        scene.parent.join("outside/newdir").to_str().unwrap(),
    )
    .file("gone/file", b"x");
    let err = scene.assert_contained(&tar).unwrap_err();
    assert!(
        err.to_string().contains("symlink to a missing directory"),
        "{err}"
    );
}

#[test]
fn hard_links_cannot_reach_outside() {
    let scene = Scene::new();
    let secret = scene.parent.join("outside/secret");
    let err = scene
        .assert_contained(Tar::default().hardlink("x", "../outside/secret"))
        .unwrap_err();
    assert!(err.to_string().contains("`..`"), "{err}");
    // An absolute target is resolved inside the tree, where it does not exist.
    let err = scene
        .assert_contained(Tar::default().hardlink("y", secret.to_str().unwrap()))
        .unwrap_err();
    assert!(err.to_string().contains("hard link"), "{err}");
    // Through a symlink pointing out: still resolved inside.
    let mut tar = Tar::default();
    tar.symlink("out", scene.parent.join("outside").to_str().unwrap())
        .hardlink("z", "out/secret");
    scene.assert_contained(&tar).unwrap_err();
    assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
}

#[test]
fn last_component_symlinks_are_replaced_not_followed() {
    let scene = Scene::new();
    let mut tar = Tar::default();
    tar.symlink(
        "victim",
        scene.parent.join("outside/secret").to_str().unwrap(),
    )
    .file("victim", b"replaced");
    scene.assert_contained(&tar).unwrap();
    assert_eq!(fs::read(scene.target.join("victim")).unwrap(), b"replaced");
    assert_eq!(
        fs::read(scene.parent.join("outside/secret")).unwrap(),
        b"untouched"
    );
}

#[test]
fn hard_link_to_an_absolute_symlink() {
    let scene = Scene::new();
    let mut tar = Tar::default();
    tar.dir("usr/", 0o755)
        .symlink("usr/abs", "/bin/busybox")
        .hardlink("usr/abs2", "usr/abs");
    scene.assert_contained(&tar).unwrap();
    let a = fs::symlink_metadata(scene.target.join("usr/abs")).unwrap();
    let b = fs::symlink_metadata(scene.target.join("usr/abs2")).unwrap();
    assert!(b.file_type().is_symlink());
    assert_eq!(a.ino(), b.ino());
    assert_eq!(
        fs::read_link(scene.target.join("usr/abs2")).unwrap(),
        PathBuf::from("/bin/busybox")
    );
}

#[test]
fn modes_times_and_restrictive_directories() {
    let scene = Scene::new();
    let mut tar = Tar::default();
    tar.dir("locked/", 0o555)
        .file("locked/inside", b"data")
        .raw(b"sticky/", EntryType::Directory, 0o1777, b"", b"", (0, 0))
        .raw(
            b"locked/setgid",
            EntryType::Regular,
            0o2755,
            b"",
            b"",
            (0, 0),
        )
        .file("deep/missing/parents/file", b"x");
    let stats = scene.assert_contained(&tar).unwrap();
    assert_eq!(
        stats,
        Stats {
            entries: 5,
            bytes: 5
        }
    );
    let mode = |p: &str| {
        fs::symlink_metadata(scene.target.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("locked"), 0o555);
    assert_eq!(mode("sticky"), 0o1777);
    assert_eq!(mode("locked/setgid"), 0o2755);
    assert_eq!(mode("locked/inside"), 0o644);
    assert_eq!(
        fs::read(scene.target.join("locked/inside")).unwrap(),
        b"data"
    );
    assert_eq!(
        fs::metadata(scene.target.join("locked")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(
        fs::metadata(scene.target.join("locked/inside"))
            .unwrap()
            .mtime(),
        1_600_000_000
    );
    assert!(scene.target.join("deep/missing/parents/file").is_file());
}

#[test]
fn duplicates_replace_earlier_entries() {
    let scene = Scene::new();
    let mut tar = Tar::default();
    tar.file("a", b"first")
        .file("a", b"second")
        .dir("b/", 0o755)
        .file("b", b"file now")
        .file("c", b"x")
        .dir("c/", 0o700);
    scene.assert_contained(&tar).unwrap();
    assert_eq!(fs::read(scene.target.join("a")).unwrap(), b"second");
    assert!(scene.target.join("b").is_file());
    assert!(scene.target.join("c").is_dir());
    let mut tar = Tar::default();
    tar.file("d/keep", b"x").file("d", b"no");
    let err = scene.assert_contained(&tar).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}

#[test]
fn long_pax_names_and_odd_bytes() {
    let scene = Scene::new();
    let long = format!("{}/{}", "d".repeat(150), "f".repeat(150));
    let mut tar = Tar::default();
    tar.pax(&[("path", long.as_bytes())])
        .file("ignored", b"long")
        .raw(
            b"new\nline\x01\xff",
            EntryType::Regular,
            0o644,
            b"",
            b"odd",
            (0, 0),
        );
    scene.assert_contained(&tar).unwrap();
    assert_eq!(fs::read(scene.target.join(&long)).unwrap(), b"long");
    let odd = scene.target.join(OsStr::from_bytes(b"new\nline\x01\xff"));
    assert_eq!(fs::read(odd).unwrap(), b"odd");
    let mut tar = Tar::default();
    tar.pax(&[("path", b"../../outside/pax")])
        .file("innocent", b"x");
    let err = scene.assert_contained(&tar).unwrap_err();
    assert!(err.to_string().contains("`..`"));
}

#[test]
fn truncated_archives_fail() {
    let scene = Scene::new();
    let bytes = Tar::default().file("big", &[7; 5000]).bytes();
    let err = unpack(
        &bytes[..2048],
        &scene.target,
        Options {
            preserve_owners: false,
            workers: 2,
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("big") || err.to_string().contains("archive"),
        "{err}"
    );
}

#[test]
fn owners_setuid_capabilities_and_nodes() {
    if !have_root() {
        return;
    }
    let scene = Scene::new();
    // struct vfs_cap_data, revision 2, effective, permitted = CAP_NET_RAW (13).
    let capability: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut tar = Tar::default();
    tar.raw(
        b"su",
        EntryType::Regular,
        0o4755,
        b"",
        b"#!/bin/sh\n",
        (1234, 5678),
    )
    .pax(&[
        ("SCHILY.xattr.security.capability", capability),
        ("SCHILY.xattr.user.note", b"hi"),
    ])
    .raw(b"ping", EntryType::Regular, 0o755, b"", b"bin", (0, 0))
    .raw(b"null", EntryType::Char, 0o666, b"", b"", (0, 0))
    .raw(b"fifo", EntryType::Fifo, 0o640, b"", b"", (7, 8));
    // Device numbers live in the ustar header fields; patch the char device to 1:3.
    let mut bytes = tar.bytes();
    let null_at = bytes.windows(5).position(|w| w == b"null\0").unwrap();
    let mut header = Header::from_byte_slice(&bytes[null_at..null_at + 512]).clone();
    header.set_device_major(1).unwrap();
    header.set_device_minor(3).unwrap();
    header.set_cksum();
    bytes[null_at..null_at + 512].copy_from_slice(header.as_bytes());
    let before = scene.outside();
    unpack(
        &bytes[..],
        &scene.target,
        Options {
            preserve_owners: true,
            workers: 2,
        },
    )
    .unwrap();
    assert_eq!(scene.outside(), before);

    let su = fs::metadata(scene.target.join("su")).unwrap();
    assert_eq!(
        (su.uid(), su.gid(), su.mode() & 0o7777),
        (1234, 5678, 0o4755)
    );
    let mut value = [0; 64];
    let n = rfs::getxattr(
        scene.target.join("ping"),
        "security.capability",
        &mut value[..],
    )
    .unwrap();
    assert_eq!(&value[..n], capability);
    let null = fs::metadata(scene.target.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rfs::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    let fifo = fs::symlink_metadata(scene.target.join("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!((fifo.uid(), fifo.gid(), fifo.mode() & 0o777), (7, 8, 0o640));
}
