//! runtime::nspawn::tracing: the tracing options of a session (see `model::tracing`),
//! with the host's kernel directories where the session's mounts were placed (see
//! [`super::mountpoints`]): at the path the tree's own symlinks lead to (`/lib/modules` is
//! `/usr/lib/modules` in a merged-`/usr` image), and merged under the image's files when
//! the tree has some there.

use std::path::Path;

use crate::host::kernel::Kernel;
use crate::model::tracing::{self, Placed};
use crate::runtime::nspawn::mountpoints::Placement;

/// The systemd-nspawn options that let a session of the tree at `root` trace the host,
/// its mounts placed by `placement` (for `--dry-run` before the first start, the tree is
/// taken as empty); the tree is looked at through `seen` (`root` itself, or a view of it).
pub fn options(
    (seen, root): (&Path, &Path),
    kernel: &Kernel,
    placement: &Placement,
    nspawn_version: u32,
) -> Vec<String> {
    let placed: Vec<Placed> = tracing::kernel_directories(kernel)
        .into_iter()
        .map(|dir| {
            let wanted = crate::model::options::normalize(&dir.wanted);
            let destination = placement.destination(&wanted).to_string();
            let inside = destination.trim_start_matches('/');
            let tree_has = has_files(&seen.join(inside)).then(|| root.join(inside));
            Placed {
                host: dir.host,
                destination,
                tree_has,
            }
        })
        .collect();
    tracing::nspawn_options(kernel, &placed, nspawn_version)
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
    use crate::runtime::nspawn::mountpoints::{self, Act};

    #[test]
    fn the_images_own_kernel_files_are_kept_under_the_hosts() {
        let host = tempfile::tempdir().unwrap();
        let modules = host.path().join("modules/6.1");
        std::fs::create_dir_all(&modules).unwrap();
        let headers = host.path().join("usr/src/linux-headers-6.1");
        std::fs::create_dir_all(&headers).unwrap();
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        std::fs::create_dir_all(root.join("usr/lib/modules/6.1/build")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        let kernel = Kernel {
            release: "6.1".into(),
            mounted: vec!["/sys/fs/bpf"],
            modules: Some(modules.clone()),
            headers: vec![headers.clone()],
            memlock: Some(Memlock::Unlimited),
        };
        let mounts = crate::model::options::mounts(&tracing::requests(&kernel)).unwrap();
        let placement = mountpoints::secure(root, "t", &mounts, None, Act::Repair).unwrap();
        let options = options((root, root), &kernel, &placement, 252);
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
        let headers = headers.display();
        assert!(
            options.contains(&format!("--bind-ro={headers}:{headers}")),
            "{options:?}"
        );
        let destinations: Vec<String> = crate::model::options::mounts(&options)
            .unwrap()
            .into_iter()
            .map(|m| m.destination)
            .collect();
        assert_eq!(
            destinations,
            [
                "/sys/fs/bpf".to_string(),
                "/usr/lib/modules/6.1".to_string(),
                headers.to_string()
            ]
        );
    }
}
