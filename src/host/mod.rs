//! host: what toolbox reads about the host it runs on, gathered in one place so tests can
//! replace it. Every environment variable toolbox reads is listed here; the host file
//! locations it consults are fields of [`HostPaths`]. This module only reads.
//!
//! Environment variables read by toolbox:
//! - `TOOLBOX_*`: settings, one per entry of `config::KEYS`.
//! - `TOOLBOX_SYSTEM_CONFIG`: the system-wide settings file in place of
//!   `/etc/default/toolbox` (for hosts whose `/etc` is managed elsewhere, and test suites).
//! - `HOME`, `XDG_CONFIG_HOME`: where the user's configuration files are.
//! - `USER`, `SUDO_USER`, `SUDO_UID`: who invoked toolbox, for the toolbox name and
//!   whose configuration files to trust. `USER`, `LOGNAME` and `HOME` in settings files
//!   are the invoker's.
//! - `http_proxy`, `https_proxy`, `no_proxy` and their upper-case forms: passed through
//!   sudo and into toolboxes.
//! - `PATH`: where `systemd-nspawn` is looked up.
//! - `DOCKER_HOST`: the Docker daemon to talk to.
//! - `CONTAINER_HOST`: the Podman service to talk to (Podman's own variable).
//! - `XDG_RUNTIME_DIR`: where a user's Podman socket is (`podman/podman.sock` in it).
//! - `HOST`: inside a toolbox, where the host's `/` is mounted (for `host-exec`).
//! - `TOOLBOX_HOST_MOUNT`: set in toolbox's own image; toolbox runs in a container with
//!   the host's `/` at this path, and moves into the host (see [`container`]).
//! - `NO_COLOR`: set and not empty, no colour on stderr (read by `ui`).
//! - `TERM`: passed to a super privileged container's session on a terminal.

pub mod container;
pub mod files;
pub mod kernel;
pub mod ui;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

pub const HOME: &str = "HOME";
pub const XDG_CONFIG_HOME: &str = "XDG_CONFIG_HOME";
pub const USER: &str = "USER";
pub const LOGNAME: &str = "LOGNAME";
pub const SUDO_USER: &str = "SUDO_USER";
pub const PATH: &str = "PATH";
pub const DOCKER_HOST: &str = "DOCKER_HOST";
pub const CONTAINER_HOST: &str = "CONTAINER_HOST";
pub const XDG_RUNTIME_DIR: &str = "XDG_RUNTIME_DIR";
pub const SUDO_UID: &str = "SUDO_UID";
pub const HOST_ROOT: &str = "HOST";
pub const NO_COLOR: &str = "NO_COLOR";
pub const SYSTEM_CONFIG: &str = "TOOLBOX_SYSTEM_CONFIG";

/// A process in the host's namespaces, as `proc_root` (`/proc`) shows them: PID 1, or
/// where its namespaces cannot be read (its capabilities exceed ours, as under some VM
/// init systems) the nearest ancestor of this process that `inside` does not claim (the
/// first outside this toolbox, or this container). `None` when there is none.
pub fn host_process(proc_root: &std::path::Path, inside: impl Fn(u32) -> bool) -> Option<u32> {
    if rustix::fs::stat(proc_root.join("1/ns/mnt")).is_ok() {
        return Some(1);
    }
    let mut pid = std::process::id();
    // A bound on the walk: a process table read while it changes could loop.
    for _ in 0..64 {
        let parent = crate::sys::proc_stat(proc_root, pid)?.parent;
        if parent <= 1 {
            return None;
        }
        if !inside(parent) {
            return Some(parent);
        }
        pid = parent;
    }
    None
}

/// Proxy variables passed into toolboxes and through sudo (coreos/bugs#1869: sudo
/// dropped them and package managers inside the toolbox could not reach anything).
pub const PROXY_VARIABLES: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];

/// The proxy variables set in `env`, to pass into a toolbox.
pub fn proxies(env: &Env) -> Vec<(String, String)> {
    PROXY_VARIABLES
        .iter()
        .filter_map(|name| Some((name.to_string(), env.get(name)?.to_string())))
        .collect()
}

/// A snapshot of the environment variables toolbox may read.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The process environment. Variables whose name or value is not UTF-8 are left out: no
    /// setting toolbox reads can hold such a value.
    pub fn from_process() -> Self {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// A variable's value when it is set and not empty.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    /// This environment as settings files see it when read for `invoker`: `USER`,
    /// `LOGNAME` and `HOME` are the invoker's (under sudo, the sudo user's, as when the
    /// CoreOS script ran as the user and used sudo per step), whatever sudo set them to.
    pub fn for_invoker(&self, invoker: &Invoker) -> Env {
        let mut env = self.clone();
        env.vars.insert(USER.to_string(), invoker.name.clone());
        env.vars.insert(LOGNAME.to_string(), invoker.name.clone());
        match &invoker.home {
            Some(home) => env
                .vars
                .insert(HOME.to_string(), home.display().to_string()),
            None => env.vars.remove(HOME),
        };
        env
    }

    pub fn path_var(&self) -> Option<OsString> {
        self.get(PATH).map(OsString::from)
    }
}

/// Host files toolbox consults, injectable for tests.
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// System-wide settings, `/etc/default/toolbox`.
    pub etc_default: PathBuf,
    /// The host's user database, `/etc/passwd`.
    pub passwd: PathBuf,
    /// The host's group database, `/etc/group`.
    pub group: PathBuf,
    /// The host's process filesystem, `/proc`.
    pub proc: PathBuf,
    /// Exists when systemd is the host's init: `/run/systemd/system`.
    pub systemd_booted: PathBuf,
    /// Where systemd-nspawn keeps a directory per running machine for machined to pass
    /// mounts through, and leaves it when killed: `/run/systemd/nspawn/propagate`.
    pub nspawn_propagate: PathBuf,
    /// Where systemd-nspawn 256 and later mount a small tmpfs per running machine for the
    /// container's exported sockets, and leave it mounted when killed and sometimes when
    /// not (systemd/systemd#36455): `/run/systemd/nspawn/unix-export`.
    pub nspawn_unix_export: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            etc_default: PathBuf::from("/etc/default/toolbox"),
            passwd: PathBuf::from("/etc/passwd"),
            group: PathBuf::from("/etc/group"),
            proc: PathBuf::from("/proc"),
            systemd_booted: PathBuf::from("/run/systemd/system"),
            nspawn_propagate: PathBuf::from("/run/systemd/nspawn/propagate"),
            nspawn_unix_export: PathBuf::from("/run/systemd/nspawn/unix-export"),
        }
    }
}

impl HostPaths {
    /// The host's files, with the system-wide settings file where `TOOLBOX_SYSTEM_CONFIG`
    /// says, when it is set.
    pub fn from_env(env: &Env) -> HostPaths {
        let mut paths = HostPaths::default();
        if let Some(path) = env.non_empty(SYSTEM_CONFIG) {
            paths.etc_default = PathBuf::from(path);
        }
        paths
    }
}

/// The person toolbox works for: under sudo, the user who ran sudo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoker {
    /// Never empty: a user name, or the numeric user ID when no name is known.
    pub name: String,
    pub home: Option<PathBuf>,
    /// The user's ID when toolbox runs as root on their behalf (under sudo).
    pub on_behalf_of: Option<u32>,
}

impl Invoker {
    /// Works out the invoker from the environment and the host's passwd text. Under sudo
    /// (effective UID 0 with `SUDO_USER` set) it is the sudo user, with the home directory
    /// from passwd, so their `~/.toolboxrc` applies as it did with the CoreOS script.
    pub fn identify(env: &Env, passwd: &str, euid: u32) -> Invoker {
        if let Some(sudo_user) = env.non_empty(SUDO_USER).filter(|_| euid == 0) {
            let entry = passwd_entry(passwd, |name, _| name == sudo_user);
            let uid = env
                .get(SUDO_UID)
                .and_then(|u| u.parse().ok())
                .or(entry.as_ref().map(|e| e.uid));
            return Invoker {
                name: sudo_user.to_string(),
                home: entry
                    .map(|e| e.home)
                    .or_else(|| env.non_empty(HOME).map(PathBuf::from)),
                on_behalf_of: uid,
            };
        }
        let by_uid = passwd_entry(passwd, |_, uid| uid == euid);
        let name = env
            .non_empty(USER)
            .map(str::to_string)
            .or_else(|| by_uid.as_ref().map(|e| e.name.clone()))
            .unwrap_or_else(|| euid.to_string());
        let home = env
            .non_empty(HOME)
            .map(PathBuf::from)
            .or_else(|| by_uid.map(|e| e.home));
        Invoker {
            name,
            home,
            on_behalf_of: None,
        }
    }
}

struct PasswdEntry {
    name: String,
    uid: u32,
    home: PathBuf,
}

/// The `passwd` line of user `name`, as the host has it.
pub fn passwd_line<'a>(passwd: &'a str, name: &str) -> Option<&'a str> {
    passwd
        .lines()
        .find(|line| line.split(':').next() == Some(name))
}

/// The `group` line of group ID `gid`, as the host has it.
pub fn group_line(group: &str, gid: u32) -> Option<&str> {
    group
        .lines()
        .find(|line| line.split(':').nth(2).and_then(|g| g.parse().ok()) == Some(gid))
}

fn passwd_entry(passwd: &str, wanted: impl Fn(&str, u32) -> bool) -> Option<PasswdEntry> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, uid, _, _, home, ..] = fields[..] else {
            return None;
        };
        let uid = uid.parse().ok()?;
        (!name.is_empty() && wanted(name, uid)).then(|| PasswdEntry {
            name: name.to_string(),
            uid,
            home: PathBuf::from(home),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          core:x:500:500:CoreOS Admin:/home/core:/bin/bash\n\
                          broken line\n";

    #[test]
    fn passwd_and_group_lines() {
        assert_eq!(
            passwd_line(PASSWD, "core"),
            Some("core:x:500:500:CoreOS Admin:/home/core:/bin/bash")
        );
        assert_eq!(passwd_line(PASSWD, "cor"), None);
        let group = "root:x:0:\ncore:x:500:\n";
        assert_eq!(group_line(group, 500), Some("core:x:500:"));
        assert_eq!(group_line(group, 7), None);
    }

    #[test]
    fn plain_user() {
        let env = Env::from_pairs([("USER", "core"), ("HOME", "/home/core")]);
        let invoker = Invoker::identify(&env, PASSWD, 500);
        assert_eq!(invoker.name, "core");
        assert_eq!(invoker.home, Some(PathBuf::from("/home/core")));
    }

    #[test]
    fn sudo_user_wins_with_their_home() {
        let env = Env::from_pairs([("USER", "root"), ("HOME", "/root"), ("SUDO_USER", "core")]);
        let invoker = Invoker::identify(&env, PASSWD, 0);
        assert_eq!(invoker.name, "core");
        assert_eq!(invoker.home, Some(PathBuf::from("/home/core")));
        assert_eq!(invoker.on_behalf_of, Some(500));
        let env = Env::from_pairs([("SUDO_USER", "core"), ("SUDO_UID", "501")]);
        assert_eq!(Invoker::identify(&env, PASSWD, 0).on_behalf_of, Some(501));
    }

    #[test]
    fn sudo_user_is_ignored_without_root() {
        let env = Env::from_pairs([("USER", "core"), ("SUDO_USER", "mallory")]);
        assert_eq!(Invoker::identify(&env, PASSWD, 500).name, "core");
    }

    // Regression: under systemd units `$USER` is empty and the CoreOS script named the
    // toolbox `-fedora-latest`.
    #[test]
    fn empty_user_falls_back_to_passwd_then_uid() {
        let env = Env::from_pairs([("USER", "")]);
        let invoker = Invoker::identify(&env, PASSWD, 0);
        assert_eq!(invoker.name, "root");
        assert_eq!(invoker.home, Some(PathBuf::from("/root")));
        assert_eq!(Invoker::identify(&env, PASSWD, 4242).name, "4242");
    }

    #[test]
    fn the_system_settings_file_moves_only_when_named() {
        let moved = Env::from_pairs([("TOOLBOX_SYSTEM_CONFIG", "/usr/local/etc/toolbox")]);
        let etc = |env: &Env| HostPaths::from_env(env).etc_default;
        assert_eq!(etc(&moved), PathBuf::from("/usr/local/etc/toolbox"));
        let empty = Env::from_pairs([("TOOLBOX_SYSTEM_CONFIG", "")]);
        assert_eq!(etc(&empty), PathBuf::from("/etc/default/toolbox"));
        assert_eq!(etc(&Env::default()), PathBuf::from("/etc/default/toolbox"));
    }
}
