//! runtime::nspawn::tracing: the tracing options of a session (see `model::tracing`),
//! with the host's kernel directories placed in this toolbox's tree: at the path the
//! tree's own symlinks lead to (`/lib/modules` is `/usr/lib/modules` in a merged-`/usr`
//! image), and merged under the image's files when the tree has some there.

use std::collections::VecDeque;
use std::path::Path;

use crate::host::kernel::Kernel;
use crate::model::tracing::{self, Placed};

/// How many symlinks one path may pass through, as the kernel allows (`MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// The systemd-nspawn options that let a session of the tree at `root` trace the host. A
/// tree not there yet (`--dry-run` before the first start) is taken as empty.
pub fn options(root: &Path, kernel: &Kernel, nspawn_version: u32) -> Vec<String> {
    let placed: Vec<Placed> = tracing::kernel_directories(kernel)
        .into_iter()
        .map(|dir| {
            let destination = resolve(root, &dir.wanted);
            let own = root.join(destination.trim_start_matches('/'));
            let tree_has = has_files(&own).then_some(own);
            Placed {
                host: dir.host,
                destination,
                tree_has,
            }
        })
        .collect();
    tracing::nspawn_options(kernel, &placed, nspawn_version)
}

/// `path` as seen inside the toolbox whose tree is at `root`: each symlink in the tree on
/// the way followed as the container would (an absolute target starts again at the
/// tree's root, `..` never leaves it), up to the first component that does not exist,
/// after which the rest is kept as it is.
pub fn resolve(root: &Path, path: &str) -> String {
    let mut resolved: Vec<String> = Vec::new();
    let mut pending: VecDeque<String> = parts(path).collect();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        match part.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let here = root.join(resolved.join("/")).join(&part);
        match std::fs::symlink_metadata(&here) {
            Ok(meta) if meta.file_type().is_symlink() && links < MAX_SYMLINKS => {
                links += 1;
                let target = std::fs::read_link(&here).unwrap_or_default();
                let target = target.to_string_lossy();
                if target.starts_with('/') {
                    resolved.clear();
                }
                for (i, part) in parts(&target).enumerate() {
                    pending.insert(i, part);
                }
            }
            Ok(_) => resolved.push(part),
            Err(_) => {
                resolved.push(part);
                resolved.extend(pending.drain(..).filter(|p| p != "."));
            }
        }
    }
    format!("/{}", resolved.join("/"))
}

fn parts(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

/// Whether `dir` is a directory (not a symlink) with anything in it.
fn has_files(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir())
        && std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::host::kernel::Memlock;

    #[test]
    fn paths_resolve_through_the_trees_own_symlinks_only() {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        std::fs::create_dir_all(root.join("usr/lib/modules")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("/etc", root.join("escape")).unwrap();
        symlink("../../../..", root.join("usr/up")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(resolve(root, "/lib/modules/6.1"), "/usr/lib/modules/6.1");
        assert_eq!(resolve(root, "/escape/x"), "/etc/x");
        assert_eq!(resolve(root, "/usr/up/lib/modules"), "/usr/lib/modules");
        assert_eq!(resolve(root, "/usr/src/linux-6.1"), "/usr/src/linux-6.1");
        assert_eq!(resolve(root, "/loop/x"), "/loop/x");
        assert_eq!(resolve(root, "/usr/./lib/../lib"), "/usr/lib");
    }

    #[test]
    fn the_images_own_kernel_files_are_kept_under_the_hosts() {
        let host = tempfile::tempdir().unwrap();
        let modules = host.path().join("modules/6.1");
        std::fs::create_dir_all(&modules).unwrap();
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        std::fs::create_dir_all(root.join("usr/lib/modules/6.1/build")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        std::fs::create_dir_all(root.join("usr/src/linux-headers-6.1")).unwrap();
        let kernel = Kernel {
            release: "6.1".into(),
            mounted: vec!["/sys/fs/bpf"],
            modules: Some(modules.clone()),
            headers: vec!["/usr/src/linux-headers-6.1".into()],
            memlock: Some(Memlock::Unlimited),
        };
        let options = options(root, &kernel, 252);
        let own = root.join("usr/lib/modules/6.1");
        assert!(
            options.contains(&format!(
                "--overlay-ro={}:{}:/usr/lib/modules/6.1",
                modules.display(),
                own.display()
            )),
            "{options:?}"
        );
        // An empty directory (a mount point of an earlier session) has nothing to keep.
        assert!(options.contains(
            &"--bind-ro=/usr/src/linux-headers-6.1:/usr/src/linux-headers-6.1".to_string()
        ));
        let destinations: Vec<String> = crate::model::options::mounts(&options)
            .unwrap()
            .into_iter()
            .map(|m| m.destination)
            .collect();
        assert_eq!(
            destinations,
            [
                "/sys/fs/bpf",
                "/usr/lib/modules/6.1",
                "/usr/src/linux-headers-6.1"
            ]
        );
    }
}
