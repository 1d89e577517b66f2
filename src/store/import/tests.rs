use std::io::Write;

use super::*;

/// A tar of `(name, contents)` files, built with the tar crate.
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(contents.len() as u64);
        header.set_mtime(1_600_000_000);
        header.set_cksum();
        builder.append_data(&mut header, name, *contents).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A legacy `docker save` archive of two layers: the second deletes `etc/gone` and makes
/// `opt` opaque. `corrupt` flips a byte of the second layer after its digest was taken.
fn docker_save(corrupt: bool) -> (Vec<u8>, String) {
    docker_save_tagged(corrupt, "example/layered:v1")
}

/// [`docker_save`] with the image named `tag`.
fn docker_save_tagged(corrupt: bool, tag: &str) -> (Vec<u8>, String) {
    let lower = tar_of(&[
        ("etc/gone", b"x"),
        ("etc/kept", b"kept"),
        ("opt/old", b"old"),
    ]);
    let mut upper = tar_of(&[
        ("etc/.wh.gone", b""),
        ("opt/.wh..wh..opq", b""),
        ("opt/new", b"new"),
    ]);
    let config = serde_json::to_vec(&serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": [digest(&lower), digest(&upper)]},
    }))
    .unwrap();
    let id = digest(&config);
    if corrupt {
        // The last `new` is the file's data, after its header.
        let at = upper.windows(3).rposition(|w| w == b"new").unwrap();
        upper[at] = b'N';
    }
    let hex = id.strip_prefix("sha256:").unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{hex}.json"),
        "RepoTags": [tag],
        "Layers": ["aaaa/layer.tar", "bbbb/layer.tar"],
    }]))
    .unwrap();
    let lower_dir = format!("{}/layer.tar", "a".repeat(64));
    let archive = tar_of(&[
        (&lower_dir, &lower),
        ("aaaa/layer.tar", &lower),
        ("bbbb/layer.tar", &upper),
        (&format!("{hex}.json"), &config),
        ("manifest.json", &manifest),
    ]);
    (archive, id)
}

fn import_file(bytes: &[u8]) -> (tempfile::TempDir, Result<(ImageInfo, PathBuf)>) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    fs::write(&input, bytes).unwrap();
    let target = dir.path().join("tree");
    fs::create_dir(&target).unwrap();
    let result = (|| {
        let Archive::Image(image, source) = open(&input, &dir.path().join("spool"))? else {
            bail!("not an image");
        };
        apply(
            &image,
            &source,
            &target,
            unpack::Options {
                preserve_owners: false,
                workers: 2,
            },
        )?;
        Ok((image, target.clone()))
    })();
    (dir, result)
}

#[test]
fn a_docker_save_archive_is_applied_layer_by_layer() {
    let (archive, id) = docker_save(false);
    for bytes in [archive.clone(), gzip(&archive)] {
        let (_dir, result) = import_file(&bytes);
        let (image, tree) = result.unwrap();
        assert_eq!(image.id, id);
        assert_eq!(image.reference.as_deref(), Some("example/layered:v1"));
        assert!(!tree.join("etc/gone").exists());
        assert_eq!(fs::read(tree.join("etc/kept")).unwrap(), b"kept");
        assert!(!tree.join("opt/old").exists());
        assert_eq!(fs::read(tree.join("opt/new")).unwrap(), b"new");
    }
}

#[test]
fn a_layer_that_does_not_match_its_digest_is_refused() {
    let (archive, _) = docker_save(true);
    let (_dir, result) = import_file(&archive);
    let error = format!("{:#}", result.unwrap_err());
    assert!(
        error.contains("layer 2 (`bbbb/layer.tar`), uncompressed, does not match its digest"),
        "{error}"
    );
}

#[test]
fn an_oci_layout_with_gzip_layers_is_read() {
    let layer = tar_of(&[("usr/bin/tool", b"tool")]);
    let blob = gzip(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(&blob), "size": blob.len()}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "localhost/tool:1"},
        }],
    }))
    .unwrap();
    let path = |digest: String| blob_path(&digest).unwrap();
    let archive = tar_of(&[
        (&path(digest(&blob)), &blob),
        (&path(digest(&config)), &config),
        (&path(digest(&manifest)), &manifest),
        ("index.json", &index),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
    ]);
    let (_dir, result) = import_file(&archive);
    let (image, tree) = result.unwrap();
    assert_eq!(image.id, digest(&config));
    assert_eq!(image.reference.as_deref(), Some("localhost/tool:1"));
    assert_eq!(fs::read(tree.join("usr/bin/tool")).unwrap(), b"tool");

    // The same layout as a directory; a blob name that climbs out is refused.
    let dir = tempfile::tempdir().unwrap();
    tar::Archive::new(&archive[..]).unpack(dir.path()).unwrap();
    let Archive::Image(image, source) = open(dir.path(), &dir.path().join("spool")).unwrap() else {
        panic!("not an image");
    };
    assert_eq!(image.id, digest(&config));
    let err = source.open("blobs/../../etc/passwd").err().unwrap();
    assert_eq!(
        err.to_string(),
        "refusing the blob name `blobs/../../etc/passwd`"
    );
}

#[test]
fn root_filesystems_are_told_from_image_archives() {
    let rootfs = tar_of(&[("./etc/os-release", b"ID=x\n"), ("usr/bin/a", b"a")]);
    let (archive, _) = docker_save(false);
    assert!(!is_image_archive(&rootfs[..512]));
    assert!(is_image_archive(&archive[..512]));
    let podman = tar_of(&[(&format!("{}.tar", "0f".repeat(32)), b"layer")]);
    assert!(is_image_archive(&podman[..512]));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rootfs.tar.gz");
    fs::write(&input, gzip(&rootfs)).unwrap();
    let Archive::RootFs(reader) = open(&input, &dir.path().join("spool")).unwrap() else {
        panic!("a root filesystem taken for an image");
    };
    let target = dir.path().join("tree");
    fs::create_dir(&target).unwrap();
    let options = unpack::Options {
        preserve_owners: false,
        workers: 2,
    };
    unpack::unpack(reader, &target, options).unwrap();
    assert_eq!(fs::read(target.join("usr/bin/a")).unwrap(), b"a");
    assert!(
        !dir.path().join("spool").exists(),
        "a root filesystem needs no copy"
    );
}

#[test]
fn digests_and_names() {
    let hex = "ab".repeat(32);
    assert_eq!(
        named_digest(&format!("blobs/sha256/{hex}")),
        Some(format!("sha256:{hex}"))
    );
    assert_eq!(
        named_digest(&format!("{hex}.json")),
        Some(format!("sha256:{hex}"))
    );
    assert_eq!(named_digest("aaaa/layer.tar"), None);
    assert!(blob_path("sha512:00").is_err());
    assert!(blob_path("sha256:../../x").is_err());
}

/// Docker 25 and later save in the OCI layout, with a `manifest.json` naming blobs: their
/// names are their digests, and are checked.
#[test]
fn a_docker_save_in_the_oci_layout_checks_blob_names() {
    let layer = tar_of(&[("bin/tool", b"tool")]);
    let config = serde_json::to_vec(&serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
    }))
    .unwrap();
    let archive = |layer_bytes: &[u8]| {
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": blob_path(&digest(&config)).unwrap(),
            "RepoTags": ["example/oci:v2"],
            "Layers": [blob_path(&digest(&layer)).unwrap()],
        }]))
        .unwrap();
        tar_of(&[
            ("blobs/sha256/", b""),
            (&blob_path(&digest(&layer)).unwrap(), layer_bytes),
            (&blob_path(&digest(&config)).unwrap(), &config),
            ("manifest.json", &manifest),
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ])
    };
    let (_dir, result) = import_file(&archive(&layer));
    let (image, tree) = result.unwrap();
    assert_eq!(image.id, digest(&config));
    assert_eq!(fs::read(tree.join("bin/tool")).unwrap(), b"tool");

    let mut altered = layer.clone();
    let at = altered.windows(4).rposition(|w| w == b"tool").unwrap();
    altered[at] = b'T';
    let (_dir, result) = import_file(&archive(&altered));
    let error = format!("{:#}", result.unwrap_err());
    assert!(error.contains("does not match its digest"), "{error}");
}

/// `archive` re-packed as `tar -C dir -cf out.tar .` writes it: the root directory `./`
/// first, every name under `./`.
fn repacked(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut root = tar::Header::new_gnu();
    root.set_entry_type(tar::EntryType::Directory);
    root.set_mode(0o755);
    root.set_size(0);
    root.set_cksum();
    builder.append_data(&mut root, "./", io::empty()).unwrap();
    for (name, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(contents.len() as u64);
        // Set by bytes: the tar crate would drop the leading `./`.
        header.as_old_mut().name[..name.len() + 2].copy_from_slice(format!("./{name}").as_bytes());
        header.set_cksum();
        builder.append(&header, *contents).unwrap();
    }
    builder.into_inner().unwrap()
}

/// `archive`'s files, re-packed under `./`.
fn repack(archive: &[u8]) -> Vec<u8> {
    let mut files = Vec::new();
    for entry in tar::Archive::new(archive).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.push((name, data));
    }
    let borrowed: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
    repacked(&borrowed)
}

#[test]
fn archives_repacked_under_dot_slash_are_recognised_and_checked() {
    let (archive, id) = docker_save(false);
    let archive = repack(&archive);
    assert!(
        tar::Archive::new(&archive[..])
            .entries()
            .unwrap()
            .any(|e| e.unwrap().path_bytes().starts_with(b"./manifest.json"))
    );
    let (_dir, result) = import_file(&archive);
    let (image, tree) = result.unwrap();
    assert_eq!(image.id, id);
    assert_eq!(fs::read(tree.join("opt/new")).unwrap(), b"new");
    // Its digests are still checked.
    let (corrupt, _) = docker_save(true);
    let (_dir, result) = import_file(&repack(&corrupt));
    assert!(format!("{:#}", result.unwrap_err()).contains("does not match its digest"));
    // An OCI layout's files, likewise.
    for name in ["oci-layout", "index.json", "blobs/sha256/x"] {
        assert!(is_image_archive(&repacked(&[(name, b"{}")])), "{name}");
    }
    assert!(!is_image_archive(&repacked(&[("etc/os-release", b"")])));
}

#[test]
fn empty_input_and_bytes_that_are_no_archive_are_said_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    fs::write(&empty, b"").unwrap();
    let Err(error) = open(&empty, &dir.path().join("spool")) else {
        panic!("an empty file opened");
    };
    assert!(error.to_string().ends_with("is empty; expected a tar archive (a root filesystem, or an image from `docker save` or `podman save`)"), "{error}");
    let noise: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let target = dir.path().join("tree");
    fs::create_dir(&target).unwrap();
    let options = unpack::Options {
        preserve_owners: false,
        workers: 2,
    };
    let error = unpack::unpack(&noise[..], &target, options)
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "reading the archive: the data at byte 0 is not a tar header; expected a tar archive \
         (a root filesystem, or an image from `docker save` or `podman save`), possibly \
         gzip-compressed"
    );
    // After good entries, the offset is where the next header was due.
    let mut bad = tar_of(&[("a", b"12345")]);
    bad.truncate(1024);
    bad.extend_from_slice(&noise[..512]);
    let error = unpack::unpack(&bad[..], &target, options)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("the data at byte 1024 is not a tar header"),
        "{error}"
    );
}

#[test]
fn an_archive_without_entries_makes_no_toolbox() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("zeros.tar");
    fs::write(&input, [0u8; 1024]).unwrap();
    let toolboxes = dir.path().join("toolboxes");
    let error = create(&input, &toolboxes, |_| Ok("core-x".to_string())).unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("holds no files: an empty tar archive makes no toolbox"),
        "{error}"
    );
    let left: Vec<String> = fs::read_dir(&toolboxes)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_image_name_that_is_no_image_name_is_refused_escaped_even_with_a_name_given() {
    for tag in ["a/b:c\nd", "evil\u{1b}[2J:v1"] {
        let (archive, _) = docker_save_tagged(false, tag);
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("saved.tar");
        fs::write(&input, archive).unwrap();
        let error = create(&input, &dir.path().join("toolboxes"), |_| {
            Ok("core-given".to_string())
        })
        .unwrap_err()
        .to_string();
        assert!(
            error.ends_with(&format!(
                "the archive names its image `{}`, which is not an image name",
                tag.escape_debug()
            )),
            "{error}"
        );
        assert!(
            !error.contains('\n') && !error.contains('\u{1b}'),
            "{error:?}"
        );
        assert!(!dir.path().join("toolboxes/core-given").exists());
    }
}
