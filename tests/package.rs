//! The packages, built by `scripts/package` and installed as an administrator would: the
//! tarball unpacked and its binary run with nothing else beside it; the systemd-sysext
//! image merged for real in a mount namespace of its own (the host's `/usr` never
//! changes); the .deb installed into a scratch root and upgraded over an edited
//! configuration; the .rpm listed and installed into a scratch root; man pages rendered
//! and bash completion loaded from the installed paths; and a second build, from a copy
//! of the checkout elsewhere, giving the same bytes.
//!
//! They need root, dpkg, systemd-sysext and apt-get (for the script's tools): without
//! them each test fails when `TOOLBOX_E2E=required` and otherwise says why it skipped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The version every package carries.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// This machine's architecture as the tarball, Debian, RPM and systemd name it.
const ARCH: &str = std::env::consts::ARCH;

fn deb_arch() -> &'static str {
    match ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

fn sysext_arch() -> &'static str {
    match ARCH {
        "aarch64" => "arm64",
        _ => "x86-64",
    }
}

/// Why the packages cannot be built and installed here, if they cannot.
fn missing() -> Option<String> {
    if !toolbox::sys::is_root() {
        return Some("installing packages needs root".into());
    }
    for program in [
        "dpkg",
        "dpkg-deb",
        "apt-get",
        "systemd-sysext",
        "unshare",
        "man",
    ] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|out| out.status.success())
        {
            return Some(format!("`{program}` is not installed"));
        }
    }
    None
}

fn checkout() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The time of the checkout's last commit: the packages' timestamps.
fn source_date_epoch() -> String {
    let out = run(Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(checkout()));
    out.trim().to_owned()
}

/// `scripts/package OUT` run from `checkout` with its own cargo target directory.
fn package(checkout: &Path, out: &Path, target: &Path) {
    run(Command::new(checkout.join("scripts/package"))
        .arg(out)
        .env("CARGO_TARGET_DIR", target)
        .env("SOURCE_DATE_EPOCH", source_date_epoch()));
}

/// The packages, built once for every test; `None` when they cannot be (and that is not
/// required).
fn dist() -> Option<&'static Path> {
    static DIST: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIST.get_or_init(|| {
        if let Some(reason) = missing() {
            if std::env::var("TOOLBOX_E2E").as_deref() == Ok("required") {
                panic!("TOOLBOX_E2E=required but {reason}");
            }
            eprintln!("skipped the package tests: {reason}");
            return None;
        }
        let out = scratch("dist");
        package(checkout(), &out, &checkout().join("target/package"));
        Some(out)
    })
    .as_deref()
}

/// A fresh directory under the cargo target directory, kept for a look after a failure.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("package")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `command`; its stdout, or a panic with everything it printed.
fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `sh -c script` with `$1` set to `arg`.
fn sh(script: &str, arg: &Path) -> String {
    run(Command::new("sh").args(["-c", script, "sh"]).arg(arg))
}

/// Whether the ELF file has a program interpreter (a dynamic loader it needs).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "a 64-bit ELF file");
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == PT_INTERP
    })
}

/// Checks an installed tree (`root` holding `usr/...` or `bin/...` under `prefix`): the
/// binary runs, the man pages render and bash completion loads from where they are.
fn assert_installed(root: &Path, prefix: &str) {
    let base = root.join(prefix);
    let version = run(Command::new(base.join("bin/toolbox")).arg("--version"));
    assert_eq!(version.trim(), format!("toolbox {VERSION}"));
    for page in ["man1/toolbox.1", "man5/toolbox.conf.5"] {
        let man = base.join("share/man");
        let path = [man.join(page), man.join(format!("{page}.gz"))]
            .into_iter()
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {page} under {}", man.display()));
        let rendered = run(Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0"));
        assert!(rendered.contains("NAME"), "{page}: {rendered}");
        assert!(rendered.contains("toolbox"), "{page}: {rendered}");
    }
    let completion = base.join("share/bash-completion/completions/toolbox");
    let loaded = sh(
        r#"bash -c 'source "$0" && complete -p toolbox' "$1""#,
        &completion,
    );
    assert!(loaded.contains("toolbox"), "{loaded}");
    for other in [
        "share/zsh/site-functions/_toolbox",
        "share/fish/vendor_completions.d/toolbox.fish",
    ] {
        assert!(
            base.join(other).is_file(),
            "no {other} under {}",
            base.display()
        );
    }
}

#[test]
fn the_tarball_unpacks_and_its_static_binary_runs_alone() {
    let Some(dist) = dist() else { return };
    let unpacked = scratch("tarball");
    let tarball = dist.join(format!("toolbox-{VERSION}-{ARCH}-linux.tar.gz"));
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked));
    let top = unpacked.join(format!("toolbox-{VERSION}-{ARCH}-linux"));
    assert_installed(&top, ".");
    for doc in ["README.md", "LICENSE", "toolbox.conf.example"] {
        assert!(top.join(doc).is_file(), "no {doc} in the tarball");
    }

    let binary = top.join("bin/toolbox");
    assert!(!has_interpreter(&fs::read(&binary).unwrap()));
    // Static for real: it runs in a root that holds nothing else (no C library, no loader).
    let alone = scratch("alone");
    fs::copy(&binary, alone.join("toolbox")).unwrap();
    let version = run(Command::new("chroot")
        .arg(&alone)
        .args(["/toolbox", "--version"]));
    assert_eq!(version.trim(), format!("toolbox {VERSION}"));
}

#[test]
fn the_sysext_image_merges_over_usr_in_a_namespace_and_runs() {
    let Some(dist) = dist() else { return };
    let image = dist.join(format!("toolbox-{VERSION}-{}.raw", sysext_arch()));
    let usr_before = sh(
        "ls -la --time-style=+%s /usr /usr/bin | sha256sum",
        Path::new("/"),
    );
    // Merged under both names administrators use: as shipped, and as `toolbox.raw`.
    for name in [
        format!("toolbox-{VERSION}-{}.raw", sysext_arch()),
        "toolbox.raw".into(),
    ] {
        let script = format!(
            "set -e
             mount --make-rshared /
             mount -t tmpfs tmpfs /run
             mkdir /run/extensions
             cp \"$1\" /run/extensions/{name}
             systemd-sysext merge
             systemd-sysext status
             /usr/bin/toolbox --version
             man -l /usr/share/man/man1/toolbox.1 | grep -c NAME
             bash -c '. /usr/share/bash-completion/completions/toolbox && complete -p toolbox'
             cat /usr/lib/extension-release.d/extension-release.toolbox"
        );
        let merged = run(Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "slave",
                "sh",
                "-c",
                &script,
                "sh",
            ])
            .arg(&image));
        assert!(
            merged.contains(&format!("toolbox {VERSION}")),
            "{name}: {merged}"
        );
        assert!(
            merged.contains("complete -o bashdefault"),
            "{name}: {merged}"
        );
        let release = format!("ID=_any\nARCHITECTURE={}", sysext_arch());
        assert!(merged.contains(&release), "{name}: {merged}");
    }
    let usr_after = sh(
        "ls -la --time-style=+%s /usr /usr/bin | sha256sum",
        Path::new("/"),
    );
    assert_eq!(usr_before, usr_after, "the host's /usr changed");
    assert!(!Path::new("/usr/bin/toolbox").exists());
}

#[test]
fn the_deb_lists_installs_and_upgrades_keep_an_edited_configuration() {
    let Some(dist) = dist() else { return };
    let deb = dist.join(format!("toolbox_{VERSION}_{}.deb", deb_arch()));
    let listed = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/bin/toolbox",
        "./usr/share/man/man1/toolbox.1.gz",
        "./usr/share/man/man5/toolbox.conf.5.gz",
        "./usr/share/bash-completion/completions/toolbox",
        "./usr/share/zsh/site-functions/_toolbox",
        "./usr/share/fish/vendor_completions.d/toolbox.fish",
        "./etc/default/toolbox",
    ] {
        assert!(
            listed.contains(path),
            "{path} is not in the .deb:\n{listed}"
        );
    }
    let conffiles = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/default/toolbox");

    let root = scratch("deb-root");
    fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let install = |deb: &Path| {
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["--force-depends", "-i"])
            .arg(deb))
    };
    install(&deb);
    assert_installed(&root, "usr");

    // An administrator's edit survives an upgrade to a newer package.
    let config = root.join("etc/default/toolbox");
    let mut edited = fs::read_to_string(&config).unwrap();
    edited.push_str("TOOLBOX_DOCKER_IMAGE=registry.example/tools\n");
    fs::write(&config, &edited).unwrap();
    let newer = scratch("deb-newer");
    run(Command::new("dpkg-deb")
        .arg("-R")
        .arg(&deb)
        .arg(newer.join("tree")));
    let control = newer.join("tree/DEBIAN/control");
    let text = fs::read_to_string(&control).unwrap();
    fs::write(
        &control,
        text.replace(&format!("Version: {VERSION}"), "Version: 99.0.0"),
    )
    .unwrap();
    run(Command::new("dpkg-deb")
        .arg("--root-owner-group")
        .arg("-b")
        .arg(newer.join("tree"))
        .arg(newer.join("newer.deb")));
    install(&newer.join("newer.deb"));
    let status = fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Version: 99.0.0"), "{status}");
    assert_eq!(fs::read_to_string(&config).unwrap(), edited);
}

#[test]
fn the_rpm_lists_marks_its_configuration_and_installs() {
    let Some(dist) = dist() else { return };
    let rpm = dist.join(format!("toolbox-{VERSION}-1.{ARCH}.rpm"));
    let listed = run(Command::new("rpm").arg("-qlp").arg(&rpm));
    for path in [
        "/usr/bin/toolbox",
        "/usr/share/man/man1/toolbox.1.gz",
        "/usr/share/man/man5/toolbox.conf.5.gz",
        "/usr/share/bash-completion/completions/toolbox",
        "/usr/share/zsh/site-functions/_toolbox",
        "/usr/share/fish/vendor_completions.d/toolbox.fish",
        "/etc/default/toolbox",
    ] {
        assert!(
            listed.lines().any(|l| l == path),
            "{path} is not in the .rpm:\n{listed}"
        );
    }
    // `c`onfiguration, `n`oreplace: an upgrade never overwrites an edited file.
    let flags = run(Command::new("rpm")
        .args(["-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\\n]"])
        .arg(&rpm));
    assert!(
        flags.lines().any(|l| l == "cn /etc/default/toolbox"),
        "{flags}"
    );
    let version = run(Command::new("rpm")
        .args(["-qp", "--qf", "%{VERSION}-%{RELEASE}"])
        .arg(&rpm));
    assert_eq!(version, format!("{VERSION}-1"));

    let root = scratch("rpm-root");
    run(Command::new("rpm").arg("--root").arg(&root).arg("--initdb"));
    run(Command::new("rpm")
        .arg("--root")
        .arg(&root)
        .args(["-i", "--nodeps"])
        .arg(&rpm));
    assert_installed(&root, "usr");
}

#[test]
fn the_image_archive_loads_into_docker_and_containerd_and_runs() {
    let Some(dist) = dist() else { return };
    let archive = dist.join(format!("toolbox-{VERSION}-image.tar"));
    let name = format!("localhost/toolbox:{VERSION}");
    let docker = |args: &[&str]| Command::new("docker").args(args).output();
    if !docker(&["version"]).is_ok_and(|out| out.status.success()) {
        if std::env::var("TOOLBOX_E2E").as_deref() == Ok("required") {
            panic!("TOOLBOX_E2E=required but Docker does not answer");
        }
        eprintln!("skipped the image archive test: Docker does not answer");
        return;
    }
    run(Command::new("docker")
        .arg("load")
        .arg("--input")
        .arg(&archive));
    let version = run(Command::new("docker").args(["run", "--rm", &name, "--version"]));
    assert_eq!(version.trim(), format!("toolbox {VERSION}"));
    // The image holds the binary and its man pages, nothing else.
    let member = |wanted: &str| -> Vec<u8> {
        let mut archive = tar::Archive::new(fs::File::open(&archive).unwrap());
        let mut entries = archive.entries().unwrap();
        let mut entry = entries
            .find(|e| e.as_ref().unwrap().path().unwrap() == Path::new(wanted))
            .unwrap_or_else(|| panic!("no {wanted} in the image archive"))
            .unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        bytes
    };
    let manifest: serde_json::Value = serde_json::from_slice(&member("./manifest.json")).unwrap();
    assert_eq!(manifest[0]["RepoTags"][0], name.as_str());
    let layer = member(&format!("./{}", manifest[0]["Layers"][0].as_str().unwrap()));
    let mut files = Vec::new();
    for entry in tar::Archive::new(layer.as_slice()).entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        if entry.header().entry_type().is_file() && !path.starts_with("usr/share/man/man") {
            files.push(path);
        }
    }
    assert_eq!(files, ["usr/bin/toolbox"]);
    // containerd's own import names it the same (Docker's containerd, its own namespace).
    let socket = "/run/docker/containerd/containerd.sock";
    if Path::new(socket).exists() {
        let ctr = |args: &[&str]| {
            run(Command::new("ctr")
                .args(["--address", socket, "--namespace", "toolbox-package"])
                .args(args))
        };
        ctr(&["images", "import", archive.to_str().unwrap()]);
        assert!(
            ctr(&["images", "list", "--quiet"])
                .lines()
                .any(|l| l == name)
        );
        ctr(&["images", "remove", &name]);
    }
}

#[test]
fn a_copy_of_the_checkout_elsewhere_packages_to_the_same_bytes() {
    let Some(dist) = dist() else { return };
    let copy = scratch("checkout-copy");
    // The checkout's files as they are (committed or not), at another path.
    let files = run(Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(checkout()));
    for file in files.split('\0').filter(|f| !f.is_empty()) {
        let from = checkout().join(file);
        if !from.exists() {
            continue;
        }
        let to = copy.join(file);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&from, &to).unwrap();
    }
    let again = scratch("dist-again");
    // The same target directory: the dependencies are reused, toolbox itself is built
    // again from the copy.
    package(&copy, &again, &checkout().join("target/package"));
    let sums = |dir: &Path| fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert_eq!(sums(dist), sums(&again));
    assert_eq!(sums(dist).lines().count(), 5, "{}", sums(dist));
}
