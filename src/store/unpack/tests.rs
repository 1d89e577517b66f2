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
        header.set_device_major(0).unwrap();
        header.set_device_minor(0).unwrap();
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

/// The hostile-archive corpus: archives built to escape, confuse or exhaust the unpacker,
/// each with the outcome it must have. Every case runs the way a creation does, through
/// [`crate::store::toolboxes::build_partial`] in a toolbox directory with a sentinel tree beside
/// it, and must leave everything outside its partial tree as it was; a refused archive
/// must leave no partial tree behind.
mod corpus {
    use super::*;

    enum Expect {
        /// Refused, with an error containing this text.
        Refused(&'static str),
        /// Unpacked; the check sees the finished tree and the scratch directory.
        Contained(fn(&Path, &Path)),
    }

    struct Case {
        name: &'static str,
        archive: Vec<u8>,
        expect: Expect,
        needs_root: bool,
    }

    /// A scratch directory: `outside/secret` (the sentinel) and `toolboxes/` (where the
    /// partial tree is made). Absolute names in the archives point into it.
    fn scratch() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/secret"), "untouched").unwrap();
        fs::create_dir(dir.path().join("toolboxes")).unwrap();
        dir
    }

    /// Every path under `dir` except beneath `skip`: type, size, mode, owner, links,
    /// modification time, symlink target and content of small files.
    fn snapshot(dir: &Path, skip: Option<&Path>) -> Vec<String> {
        fn walk(dir: &Path, skip: Option<&Path>, out: &mut Vec<String>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if Some(path.as_path()) == skip {
                    continue;
                }
                let meta = fs::symlink_metadata(&path).unwrap();
                let detail = if meta.is_file() {
                    format!("{:?}", fs::read(&path).unwrap())
                } else if meta.file_type().is_symlink() {
                    fs::read_link(&path).unwrap().display().to_string()
                } else {
                    String::new()
                };
                // A directory's link count and time change as the partial tree comes and
                // goes in `toolboxes`; its entries are listed instead.
                let (links, time) = match meta.is_dir() {
                    true => (0, 0),
                    false => (meta.nlink(), meta.mtime()),
                };
                out.push(format!(
                    "{} {:o} {} {}:{} {links} {time} {detail}",
                    path.display(),
                    meta.mode(),
                    meta.len(),
                    meta.uid(),
                    meta.gid(),
                ));
                if meta.is_dir() {
                    walk(&path, skip, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, skip, &mut out);
        out.sort();
        out
    }

    /// An absolute path inside the scratch directory, as a name an archive can carry.
    fn at(scratch: &Path, rest: &str) -> String {
        format!("{}/{rest}", scratch.display())
    }

    /// A GNU long-name ('L') or long-link ('K') record for the next entry.
    fn gnu_long(tar: &mut Tar, kind: EntryType, value: &[u8]) {
        let mut body = value.to_vec();
        body.push(0);
        tar.raw(b"././@LongLink", kind, 0o644, b"", &body, (0, 0));
    }

    /// A header declaring `size` bytes followed by only `present` of them.
    fn lying_header(tar: &mut Tar, name: &[u8], size: u64, present: usize) {
        let mut header = Header::new_ustar();
        header.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(size);
        header.set_cksum();
        tar.data.extend_from_slice(header.as_bytes());
        tar.data.extend(std::iter::repeat_n(b'x', present));
    }

    fn file_is(tree: &Path, path: &str, body: &[u8]) {
        assert_eq!(fs::read(tree.join(path)).unwrap(), body, "{path}");
    }

    /// The corpus, built for the scratch directory at `s` (absolute names point into it).
    fn cases(s: &Path) -> Vec<Case> {
        let outside = at(s, "outside");
        let secret = at(s, "outside/secret");
        let mut cases = Vec::new();
        let mut case = |name, archive: Vec<u8>, expect, needs_root| {
            cases.push(Case {
                name,
                archive,
                expect,
                needs_root,
            })
        };
        let tar = || Tar::default();

        case(
            "dot-dot file",
            tar().file("../escape", b"x").bytes(),
            Expect::Refused("`..`"),
            false,
        );
        case(
            "dot-dot deep inside",
            tar().file("a/b/../../../escape", b"x").bytes(),
            Expect::Refused("`..`"),
            false,
        );
        case(
            "dot-dot directory",
            tar().dir("../newdir/", 0o755).bytes(),
            Expect::Refused("`..`"),
            false,
        );
        case(
            "dot-dot hard link target",
            tar().hardlink("x", "../outside/secret").bytes(),
            Expect::Refused("`..`"),
            false,
        );
        case(
            "dot-dot symlink followed by a write",
            tar()
                .dir("outside/", 0o755)
                .symlink("up", "../../outside")
                .file("up/secret", b"owned")
                .bytes(),
            Expect::Contained(|tree, _| file_is(tree, "outside/secret", b"owned")),
            false,
        );
        case(
            "absolute file name",
            tar().file(&at(s, "outside/abs"), b"x").bytes(),
            Expect::Contained(|tree, s| {
                let inside = tree.join(s.strip_prefix("/").unwrap()).join("outside/abs");
                assert!(inside.is_file());
            }),
            false,
        );
        case(
            "absolute symlink to a directory outside, written through",
            tar()
                .dir(&format!("{outside}/"), 0o755)
                .symlink("abs", &outside)
                .file("abs/secret", b"owned")
                .bytes(),
            Expect::Contained(|tree, s| {
                let inside = tree
                    .join(s.strip_prefix("/").unwrap())
                    .join("outside/secret");
                assert_eq!(fs::read(inside).unwrap(), b"owned");
            }),
            false,
        );
        case(
            "symlink to / followed by entries beneath it",
            tar()
                .dir("etc/", 0o755)
                .symlink("root", "/")
                .file("root/etc/owned", b"owned")
                .bytes(),
            Expect::Contained(|tree, _| {
                file_is(tree, "etc/owned", b"owned");
                assert!(!Path::new("/etc/owned").exists());
            }),
            false,
        );
        case(
            "symlink to /etc followed by a replaced passwd",
            tar()
                .dir("etc/", 0o755)
                .symlink("e", "/etc")
                .file("e/passwd", b"root::0:0::/:/bin/sh\n")
                .bytes(),
            Expect::Contained(|tree, _| {
                file_is(tree, "etc/passwd", b"root::0:0::/:/bin/sh\n");
                assert_ne!(fs::read("/etc/passwd").unwrap(), b"root::0:0::/:/bin/sh\n");
            }),
            false,
        );
        case(
            "symlink to a missing directory outside, written through",
            tar()
                .symlink("gone", &at(s, "outside/newdir"))
                .file("gone/file", b"x")
                .bytes(),
            Expect::Refused("symlink to a missing directory"),
            false,
        );
        case(
            "symlink replaced by a directory",
            tar()
                .symlink("x", &outside)
                .dir("x/", 0o755)
                .file("x/f", b"inside")
                .bytes(),
            Expect::Contained(|tree, _| {
                assert!(fs::symlink_metadata(tree.join("x")).unwrap().is_dir());
                file_is(tree, "x/f", b"inside");
            }),
            false,
        );
        case(
            "empty directory replaced by a symlink, written through",
            tar()
                .dir("outside/", 0o755)
                .dir("y/", 0o755)
                .symlink("y", "/outside")
                .file("y/f", b"through")
                .bytes(),
            Expect::Contained(|tree, _| {
                assert!(
                    fs::symlink_metadata(tree.join("y"))
                        .unwrap()
                        .file_type()
                        .is_symlink()
                );
                file_is(tree, "outside/f", b"through");
            }),
            false,
        );
        case(
            "last component symlink to the sentinel, overwritten",
            tar()
                .symlink("victim", &secret)
                .file("victim", b"replaced")
                .bytes(),
            Expect::Contained(|tree, _| file_is(tree, "victim", b"replaced")),
            false,
        );
        case(
            "hard link to an absolute path outside",
            tar().hardlink("h", &secret).bytes(),
            Expect::Refused("hard link"),
            false,
        );
        case(
            "hard link through a symlink pointing outside",
            tar()
                .symlink("out", &outside)
                .hardlink("h", "out/secret")
                .bytes(),
            Expect::Refused("hard link"),
            false,
        );
        case(
            "hard link to a symlink pointing outside",
            tar().symlink("s", &secret).hardlink("h", "s").bytes(),
            Expect::Contained(|tree, _| {
                let h = fs::symlink_metadata(tree.join("h")).unwrap();
                assert!(h.file_type().is_symlink());
                assert_eq!(h.ino(), fs::symlink_metadata(tree.join("s")).unwrap().ino());
            }),
            false,
        );
        case(
            "symlink loop written through",
            tar()
                .symlink("a", "b")
                .symlink("b", "a")
                .file("a/f", b"x")
                .bytes(),
            Expect::Refused("a/f"),
            false,
        );
        case(
            "duplicate entries",
            tar()
                .file("d", b"first")
                .file("d", b"second")
                .dir("e/", 0o755)
                .file("e", b"file")
                .bytes(),
            Expect::Contained(|tree, _| {
                file_is(tree, "d", b"second");
                file_is(tree, "e", b"file");
            }),
            false,
        );
        case(
            "file replacing a directory with contents",
            tar().file("full/keep", b"x").file("full", b"no").bytes(),
            Expect::Refused("not empty"),
            false,
        );
        case(
            "restrictive directory entry after its files",
            tar()
                .file("locked/inside", b"data")
                .dir("locked/", 0o000)
                .bytes(),
            Expect::Contained(|tree, _| {
                file_is(tree, "locked/inside", b"data");
                let mode = fs::metadata(tree.join("locked")).unwrap().mode() & 0o7777;
                assert_eq!(mode, 0o000);
            }),
            false,
        );
        let mut gnu = tar();
        gnu_long(
            &mut gnu,
            EntryType::GNULongName,
            format!("{}/../../../escape", "d".repeat(120)).as_bytes(),
        );
        gnu.file("short", b"x");
        case(
            "GNU long name that traverses",
            gnu.bytes(),
            Expect::Refused("`..`"),
            false,
        );
        let mut gnu_link = tar();
        gnu_long(
            &mut gnu_link,
            EntryType::GNULongLink,
            format!("{}/../../../outside/secret", "d".repeat(120)).as_bytes(),
        );
        gnu_link.hardlink("h", "short");
        case(
            "GNU long link target that traverses",
            gnu_link.bytes(),
            Expect::Refused("`..`"),
            false,
        );
        case(
            "PAX path that traverses",
            tar()
                .pax(&[("path", b"../../outside/pax")])
                .file("innocent", b"x")
                .bytes(),
            Expect::Refused("`..`"),
            false,
        );
        case(
            "PAX link path that traverses",
            tar()
                .file("t", b"x")
                .pax(&[("linkpath", b"../../outside/secret")])
                .hardlink("h", "t")
                .bytes(),
            Expect::Refused("`..`"),
            false,
        );
        case(
            "PAX size larger than the data",
            tar()
                .pax(&[("size", b"1073741824")])
                .file("big", b"small")
                .bytes(),
            Expect::Refused("big"),
            false,
        );
        case(
            "PAX size smaller than the data",
            tar()
                .pax(&[("size", b"3")])
                .file("short", &[b'y'; 700])
                .bytes(),
            Expect::Refused("archive"),
            false,
        );
        let mut truncated = tar().file("whole", b"x").file("cut", &[7; 5000]).bytes();
        truncated.truncate(512 + 512 + 512 + 1000);
        case(
            "truncated archive",
            truncated,
            Expect::Refused("cut"),
            false,
        );
        let mut huge = tar();
        lying_header(&mut huge, b"huge", 8 << 30, 4096);
        case(
            "huge declared size",
            huge.data.clone(),
            Expect::Refused("huge"),
            false,
        );
        let deep: String = "d/".repeat(4096);
        case(
            "4096-deep nesting",
            tar()
                .pax(&[("path", format!("{deep}f").as_bytes())])
                .file("deep", b"x")
                .bytes(),
            Expect::Refused("too long"),
            false,
        );
        case(
            "names with newlines, control characters and invalid UTF-8",
            tar()
                .raw(b"new\nline", EntryType::Regular, 0o644, b"", b"1", (0, 0))
                .raw(
                    b"bell\x07esc\x1b[31m",
                    EntryType::Regular,
                    0o644,
                    b"",
                    b"2",
                    (0, 0),
                )
                .raw(
                    b"latin\xe9\xff",
                    EntryType::Regular,
                    0o644,
                    b"",
                    b"3",
                    (0, 0),
                )
                .bytes(),
            Expect::Contained(|tree, _| {
                assert_eq!(
                    fs::read(tree.join(OsStr::from_bytes(b"new\nline"))).unwrap(),
                    b"1"
                );
                assert_eq!(
                    fs::read(tree.join(OsStr::from_bytes(b"bell\x07esc\x1b[31m"))).unwrap(),
                    b"2"
                );
                assert_eq!(
                    fs::read(tree.join(OsStr::from_bytes(b"latin\xe9\xff"))).unwrap(),
                    b"3"
                );
            }),
            false,
        );
        case(
            "refused entry named with control characters",
            tar()
                .raw(
                    b"../\x1b[2Jgone\n",
                    EntryType::Regular,
                    0o644,
                    b"",
                    b"",
                    (0, 0),
                )
                .bytes(),
            Expect::Refused("\\u{1b}[2Jgone\\n"),
            false,
        );
        case(
            "setuid and setgid files owned by other users",
            tar()
                .raw(b"su", EntryType::Regular, 0o4755, b"", b"#!", (4321, 8765))
                .raw(b"sg", EntryType::Regular, 0o2711, b"", b"#!", (0, 42))
                .bytes(),
            Expect::Contained(|tree, _| {
                let su = fs::metadata(tree.join("su")).unwrap();
                assert_eq!(
                    (su.uid(), su.gid(), su.mode() & 0o7777),
                    (4321, 8765, 0o4755)
                );
                let sg = fs::metadata(tree.join("sg")).unwrap();
                assert_eq!((sg.gid(), sg.mode() & 0o7777), (42, 0o2711));
            }),
            true,
        );
        case(
            "device nodes and FIFOs",
            tar()
                .raw(b"disk", EntryType::Block, 0o660, b"", b"", (0, 6))
                .raw(b"fifo", EntryType::Fifo, 0o600, b"", b"", (0, 0))
                .bytes(),
            Expect::Contained(|tree, _| {
                assert!(
                    fs::symlink_metadata(tree.join("disk"))
                        .unwrap()
                        .file_type()
                        .is_block_device()
                );
                assert!(
                    fs::symlink_metadata(tree.join("fifo"))
                        .unwrap()
                        .file_type()
                        .is_fifo()
                );
            }),
            true,
        );
        case(
            "device node over the sentinel's path, through a symlink",
            tar()
                .symlink("out", &outside)
                .raw(b"out/secret", EntryType::Char, 0o666, b"", b"", (0, 0))
                .bytes(),
            Expect::Refused("symlink to a missing directory"),
            true,
        );
        case(
            "archive root that is not a directory",
            tar().file("./", b"x").bytes(),
            Expect::Refused("archive root"),
            false,
        );
        case(
            "hard link to the archive root",
            tar().hardlink("h", "/").bytes(),
            Expect::Refused("archive root"),
            false,
        );
        case(
            "unsupported entry type",
            tar()
                .raw(b"label", EntryType::new(b'V'), 0o644, b"", b"", (0, 0))
                .bytes(),
            Expect::Refused("unsupported entry type"),
            false,
        );
        cases
    }

    #[test]
    fn every_hostile_archive_is_refused_or_contained() {
        let root = sys::is_root();
        let probe = scratch();
        let total = cases(probe.path()).len();
        assert!(total >= 25, "the corpus has only {total} cases");
        let (mut refused, mut contained, mut skipped) = (0, 0, 0);
        let mut failures = Vec::new();
        for index in 0..total {
            let dir = scratch();
            let s = dir.path();
            let case = cases(s).swap_remove(index);
            if case.needs_root && !root {
                assert!(have_root(), "{}", case.name);
                skipped += 1;
                continue;
            }
            let toolboxes = s.join("toolboxes");
            let before = snapshot(s, None);
            let options = Options {
                preserve_owners: root,
                workers: 2,
            };
            let built = crate::store::toolboxes::build_partial(&toolboxes, "hostile", |partial| {
                unpack(&case.archive[..], partial, options)?;
                Ok(())
            });
            match (built, &case.expect) {
                (Err(e), Expect::Refused(text)) => {
                    let message = format!("{e:#}");
                    assert!(
                        message.contains(text),
                        "{}: `{message}` lacks `{text}`",
                        case.name
                    );
                    assert!(
                        !message.contains('\n'),
                        "{}: not one line: {message}",
                        case.name
                    );
                    assert!(
                        message.len() < 600,
                        "{}: {} bytes: {message}",
                        case.name,
                        message.len()
                    );
                    assert_eq!(
                        snapshot(s, None),
                        before,
                        "{}: something changed",
                        case.name
                    );
                    assert_eq!(
                        fs::read_dir(&toolboxes).unwrap().count(),
                        0,
                        "{}: partial tree left",
                        case.name
                    );
                    refused += 1;
                }
                (Ok(partial), Expect::Contained(check)) => {
                    assert_eq!(
                        snapshot(s, Some(&partial)),
                        before,
                        "{}: something outside changed",
                        case.name
                    );
                    check(&partial, s);
                    contained += 1;
                }
                (outcome, _) => failures.push(format!(
                    "{}: unexpected outcome {:?}",
                    case.name,
                    outcome.map(|_| ()).map_err(|e| format!("{e:#}"))
                )),
            }
        }
        // Read by scripts/reliability for docs/RELIABILITY.md, failures and all.
        println!(
            "figure hostile-archives cases={total} passed={} failed={} refused={refused} contained={contained} skipped={skipped}",
            refused + contained,
            failures.len()
        );
        assert!(failures.is_empty(), "{failures:#?}");
    }
}

/// Regression: a small file's data was read into memory by the header's size, which a PAX
/// `size` record overrides, so one entry could make the unpacker hold any amount.
#[test]
fn a_pax_size_cannot_make_a_small_file_large_in_memory() {
    // Measured in a process of its own: this one's peak holds every other test's.
    const CHILD: &str = "TOOLBOX_TEST_PAX_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let name = "store::unpack::tests::a_pax_size_cannot_make_a_small_file_large_in_memory";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{printed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let peaks: Vec<i64> = printed
            .lines()
            // libtest may print the test's name on the same line first.
            .find_map(|l| l.split("unpack peaks KiB: ").nth(1))
            .expect("the child ran the unpack")
            .split_whitespace()
            .map(|kib| kib.parse().unwrap())
            .collect();
        let (before, after) = (peaks[0], peaks[1]);
        println!("figure pax-memory streamed-mib=300 before-kib={before} after-kib={after}");
        let grown_kib = after - before;
        assert!(grown_kib < 64 << 10, "the unpacker grew by {grown_kib} KiB");
        return;
    }
    const SIZE: u64 = 300 << 20;
    let mut tar = Tar::default();
    tar.pax(&[("size", SIZE.to_string().as_bytes())])
        .file("big", b"tiny-head");
    // The archive as the header promised it, then the PAX size's worth of data, lazily.
    let head = tar.data[..tar.data.len() - 512].to_vec();
    let data = io::repeat(0).take(SIZE);
    let archive = (&head[..]).chain(data).chain(&[0u8; 1024][..]);
    let scene = Scene::new();
    let peak = crate::sys::peak_rss_kib;
    let before = peak();
    let options = Options {
        preserve_owners: false,
        workers: 2,
    };
    unpack(archive, &scene.target, options).unwrap();
    assert_eq!(fs::metadata(scene.target.join("big")).unwrap().len(), SIZE);
    println!("unpack peaks KiB: {before} {}", peak());
}

/// Layers over layers: whiteouts, opaque directories and replacements act on the layers
/// below as engines apply them, and stay inside the tree.
#[test]
fn layers_apply_whiteouts_opaque_directories_and_replacements() {
    let scene = Scene::new();
    let options = Options {
        preserve_owners: sys::is_root(),
        workers: 2,
    };
    let apply = |tar: &Tar| apply_layer(&tar.bytes()[..], &scene.target, options);
    let outside = scene.parent.join("outside");
    let mut lower = Tar::default();
    lower
        .dir("etc/", 0o755)
        .file("etc/gone", b"x")
        .dir("opt/", 0o755)
        .dir("opt/tree/", 0o755)
        .file("opt/tree/deep", b"x")
        .dir("opaque/", 0o755)
        .file("opaque/old", b"x")
        .dir("opaque/olddir/", 0o755)
        .file("opaque/olddir/f", b"x")
        .dir("becomes-file/", 0o755)
        .file("becomes-file/inner", b"x")
        .file("becomes-dir", b"x")
        .symlink("out", outside.to_str().unwrap());
    apply(&lower).unwrap();
    let before = scene.outside();

    let mut upper = Tar::default();
    upper
        .file("etc/.wh.gone", b"")
        .file("opt/.wh.tree", b"")
        .dir("opaque/", 0o750)
        .file("opaque/new", b"kept")
        .file("opaque/.wh..wh..opq", b"")
        .file("becomes-file", b"now a file")
        .dir("becomes-dir/", 0o755)
        .file("becomes-dir/f", b"inside")
        .file("out/.wh.secret", b"")
        .file(".wh..wh.plnk", b"")
        .file("etc/.wh.never-there", b"");
    apply(&upper).unwrap();
    assert_eq!(scene.outside(), before, "a whiteout reached outside");
    let t = &scene.target;
    assert!(!t.join("etc/gone").exists() && t.join("etc").is_dir());
    assert!(!t.join("opt/tree").exists() && t.join("opt").is_dir());
    let mut opaque: Vec<_> = fs::read_dir(t.join("opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    opaque.sort();
    assert_eq!(opaque, ["new"]);
    assert_eq!(fs::read(t.join("opaque/new")).unwrap(), b"kept");
    assert_eq!(fs::read(t.join("becomes-file")).unwrap(), b"now a file");
    assert_eq!(fs::read(t.join("becomes-dir/f")).unwrap(), b"inside");
    assert!(!t.join(".wh..wh.plnk").exists() && !t.join("etc/.wh.gone").exists());

    for (name, expected) in [("a/.wh...", "whiteout"), ("../.wh.x", "`..`")] {
        let mut bad = Tar::default();
        bad.file(name, b"");
        let err = apply(&bad).unwrap_err().to_string();
        assert!(err.contains(expected), "{name}: {err}");
    }
    assert_eq!(scene.outside(), before);
}
