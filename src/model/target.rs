//! target: a session that debugs a running container or process (`--target`,
//! `TOOLBOX_TARGET`). Pure: what was asked for, checked, and, once the target is found,
//! the options that show it inside the toolbox.
//!
//! The session joins the target's network namespace (and its IPC and UTS namespaces when
//! asked), never its PID or mount namespace: the host's PIDs and the toolbox's own tools
//! must keep working. The target's root filesystem is bound at [`MOUNT_POINT`], with its
//! volumes at their places beneath it.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::model::config::{self, Settings};

/// Where the target's root filesystem is seen inside the toolbox.
pub const MOUNT_POINT: &str = "/media/target";
/// The variables a targeted session gets: the target as given, its main process.
pub const ENV_TARGET: &str = "TOOLBOX_TARGET";
pub const ENV_TARGET_PID: &str = "TOOLBOX_TARGET_PID";

/// What `--target` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// A container of the engine, by name or ID.
    Container(String),
    /// A container of a Kubernetes pod (`pod/NAMESPACE/POD[/CONTAINER]`).
    Pod(Pod),
    /// Any host process (`pid:N`).
    Process(u32),
}

/// The labels the kubelet's container runtime (CRI) puts on a pod's containers.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_CONTAINER: &str = "io.kubernetes.container.name";

/// A Kubernetes pod's container, as `--target pod/NAMESPACE/POD[/CONTAINER]` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// The container's name in the pod; `None`: the pod's only container.
    pub container: Option<String>,
}

impl Pod {
    /// Whether a container's CRI `labels` say it is this pod's (any of its containers
    /// when no container is named).
    pub fn holds(&self, labels: &std::collections::HashMap<String, String>) -> bool {
        let label = |key: &str| labels.get(key).map(String::as_str);
        label(LABEL_POD_NAMESPACE) == Some(self.namespace.as_str())
            && label(LABEL_POD_NAME) == Some(self.name.as_str())
    }

    /// Of the pod's containers `found` (ID and container name, sandboxes left out), the
    /// one meant: the one named, or the only one. The error says what there is.
    pub fn choose(&self, found: &[(String, String)]) -> Result<String> {
        let pod = format!("pod {}/{}", self.namespace, self.name);
        let names = || {
            let mut names: Vec<&str> = found.iter().map(|(_, name)| name.as_str()).collect();
            names.sort();
            names.join(", ")
        };
        match (&self.container, found) {
            (_, []) => bail!("no container of {pod} on this node"),
            (None, [(id, _)]) => Ok(id.clone()),
            (None, _) => bail!(
                "{pod} has {} containers ({}); name one: pod/{}/{}/CONTAINER",
                found.len(),
                names(),
                self.namespace,
                self.name
            ),
            (Some(wanted), _) => {
                let mut matching = found.iter().filter(|(_, name)| name == wanted);
                match (matching.next(), matching.next()) {
                    (Some((id, _)), None) => Ok(id.clone()),
                    (None, _) => bail!("{pod} has no container `{wanted}` (it has {})", names()),
                    // A restarted container leaves its predecessor until the kubelet
                    // removes it: the caller asks which one runs.
                    (Some(_), Some(_)) => bail!(
                        "{pod} has {} containers named `{wanted}`",
                        found.iter().filter(|(_, name)| name == wanted).count()
                    ),
                }
            }
        }
    }
}

/// A namespace a session may share with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    Net,
    Ipc,
    Uts,
}

impl Namespace {
    /// Its name in `/proc/PID/ns/` and in `--target-ns`.
    pub fn name(self) -> &'static str {
        match self {
            Namespace::Net => "net",
            Namespace::Ipc => "ipc",
            Namespace::Uts => "uts",
        }
    }
}

/// A target as asked for: what it names and which namespaces to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// As given, for messages and `TOOLBOX_TARGET`.
    pub given: String,
    pub wanted: Wanted,
    pub namespaces: Vec<Namespace>,
}

impl Request {
    /// `TOOLBOX_TARGET` and `TOOLBOX_TARGET_NS`, checked; `None` without a target.
    pub fn of(settings: &Settings) -> Result<Option<Request>> {
        let given = settings.get(config::TARGET);
        if given.is_empty() {
            return Ok(None);
        }
        let origin = &settings.setting(config::TARGET).origin;
        if given.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!(
                "{origin}: TOOLBOX_TARGET `{}` is not a container name, ID, pod/NAMESPACE/POD or pid:N",
                given.escape_debug()
            );
        }
        let wanted = if let Some(pid) = given.strip_prefix("pid:") {
            match pid.parse::<u32>() {
                Ok(pid) if pid > 0 => Wanted::Process(pid),
                _ => bail!("{origin}: TOOLBOX_TARGET `{given}`: pid:N needs a process ID"),
            }
        } else if let Some(pod) = given.strip_prefix("pod/") {
            let parts: Vec<&str> = pod.split('/').collect();
            match parts[..] {
                [namespace, name, ref container @ ..]
                    if container.len() <= 1 && !parts.contains(&"") =>
                {
                    Wanted::Pod(Pod {
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                        container: container.first().map(|c| c.to_string()),
                    })
                }
                _ => bail!(
                    "{origin}: TOOLBOX_TARGET `{given}`: a pod's container is \
                     pod/NAMESPACE/POD or pod/NAMESPACE/POD/CONTAINER"
                ),
            }
        } else {
            Wanted::Container(given.to_string())
        };
        let namespaces = namespaces(settings)?;
        Ok(Some(Request {
            given: given.to_string(),
            wanted,
            namespaces,
        }))
    }
}

/// `TOOLBOX_TARGET_NS`: a comma-separated list of `net`, `ipc`, `uts`.
fn namespaces(settings: &Settings) -> Result<Vec<Namespace>> {
    let origin = &settings.setting(config::TARGET_NS).origin;
    let mut found = Vec::new();
    for name in settings.get(config::TARGET_NS).split(',') {
        let namespace = match name.trim() {
            "net" => Namespace::Net,
            "ipc" => Namespace::Ipc,
            "uts" => Namespace::Uts,
            "pid" | "mnt" => bail!(
                "{origin}: TOOLBOX_TARGET_NS: a session never joins its target's `{name}` \
                 namespace (the toolbox's tools and the host's processes would be gone); \
                 use net, ipc or uts"
            ),
            other => bail!(
                "{origin}: TOOLBOX_TARGET_NS: `{other}` is not a namespace; use net, ipc or uts"
            ),
        };
        if !found.contains(&namespace) {
            found.push(namespace);
        }
    }
    Ok(found)
}

/// A mount of the target's, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// On the host.
    pub source: PathBuf,
    /// Inside the target.
    pub destination: String,
    pub read_only: bool,
}

/// A target found running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub request: Request,
    /// Its main process on the host.
    pub pid: u32,
    /// The engine's container ID, for a container.
    pub container: Option<String>,
    /// Its root filesystem as the host sees it: the container's merged directory, or a
    /// process's root directory; `None` when it has a mount namespace of its own, whose
    /// view only `/proc/PID/root` gives.
    pub root: Option<PathBuf>,
    /// The container's volumes and binds, shown beneath the root.
    pub volumes: Vec<Volume>,
}

impl Target {
    /// The namespace files the session joins.
    pub fn namespace_paths(&self) -> Vec<(Namespace, PathBuf)> {
        self.request
            .namespaces
            .iter()
            .map(|ns| {
                (
                    *ns,
                    PathBuf::from(format!("/proc/{}/ns/{}", self.pid, ns.name())),
                )
            })
            .collect()
    }

    /// Whether the target's root is this mount namespace's own `/` (a host process's):
    /// nothing to stage, the files are the ones toolbox sees.
    pub fn root_is_ours(&self) -> bool {
        self.root.as_deref() == Some(Path::new("/"))
    }

    /// The systemd-nspawn options that show the target inside a session, its files
    /// staged at `staged` (its root with its volumes mounted beneath, see
    /// `runtime::target`), or `/` itself when that is its root: one bind, which
    /// systemd-nspawn makes with what is beneath it.
    pub fn nspawn_options(&self, staged: &Path) -> Vec<String> {
        let shown = match self.root_is_ours() {
            true => Path::new("/"),
            false => staged,
        };
        let mut options: Vec<String> = self
            .root
            .iter()
            .map(|_| format!("--bind={}:{MOUNT_POINT}", shown.display()))
            .collect();
        options.extend(self.environment().map(|(k, v)| format!("--setenv={k}={v}")));
        options
    }

    /// `TOOLBOX_TARGET` and `TOOLBOX_TARGET_PID`.
    pub fn environment(&self) -> impl Iterator<Item = (&'static str, String)> {
        [
            (ENV_TARGET, self.request.given.clone()),
            (ENV_TARGET_PID, self.pid.to_string()),
        ]
        .into_iter()
    }

    /// A super privileged container's bind for the target, `SOURCE:DESTINATION`: its
    /// files staged at `staged` (the engine binds what is beneath too), or, when the
    /// engine cannot see the stage (`None`), its root alone, by its path on the host.
    pub fn spc_binds(&self, staged: Option<&Path>) -> Vec<String> {
        self.root
            .iter()
            .map(|root| format!("{}:{MOUNT_POINT}", staged.unwrap_or(root).display()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&str, &str)]) -> Result<Option<Request>> {
        Request::of(&Settings::from_environment(pairs))
    }

    #[test]
    fn targets_are_containers_or_processes() {
        assert_eq!(request(&[]).unwrap(), None);
        let web = request(&[("TOOLBOX_TARGET", "web")]).unwrap().unwrap();
        assert_eq!(web.wanted, Wanted::Container("web".into()));
        assert_eq!(web.namespaces, [Namespace::Net]);
        let process = request(&[
            ("TOOLBOX_TARGET", "pid:42"),
            ("TOOLBOX_TARGET_NS", "net,uts,net"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(process.wanted, Wanted::Process(42));
        assert_eq!(process.namespaces, [Namespace::Net, Namespace::Uts]);
        let pod = |given| request(&[("TOOLBOX_TARGET", given)]).map(|r| r.unwrap().wanted);
        assert_eq!(
            pod("pod/default/web").unwrap(),
            Wanted::Pod(Pod {
                namespace: "default".into(),
                name: "web".into(),
                container: None
            })
        );
        assert_eq!(
            pod("pod/kube-system/dns/coredns").unwrap(),
            Wanted::Pod(Pod {
                namespace: "kube-system".into(),
                name: "dns".into(),
                container: Some("coredns".into())
            })
        );
        for bad in [
            "pod/",
            "pod/default",
            "pod/default/",
            "pod//web",
            "pod/a/b/",
            "pod/a/b/c/d",
        ] {
            let err = pod(bad).unwrap_err().to_string();
            assert!(err.contains("pod/NAMESPACE/POD or"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_pods_container_is_the_one_named_or_its_only_one() {
        let pod = |container: Option<&str>| Pod {
            namespace: "default".into(),
            name: "web".into(),
            container: container.map(String::from),
        };
        let one = [("c1".to_string(), "server".to_string())];
        let two = [
            ("c1".to_string(), "server".to_string()),
            ("c2".to_string(), "sidecar".to_string()),
        ];
        assert_eq!(pod(None).choose(&one).unwrap(), "c1");
        assert_eq!(pod(Some("sidecar")).choose(&two).unwrap(), "c2");
        let err = pod(None).choose(&two).unwrap_err().to_string();
        assert_eq!(
            err,
            "pod default/web has 2 containers (server, sidecar); name one: pod/default/web/CONTAINER"
        );
        let err = pod(Some("db")).choose(&two).unwrap_err().to_string();
        assert_eq!(
            err,
            "pod default/web has no container `db` (it has server, sidecar)"
        );
        let err = pod(None).choose(&[]).unwrap_err().to_string();
        assert_eq!(err, "no container of pod default/web on this node");
        let labels = std::collections::HashMap::from([
            (LABEL_POD_NAMESPACE.to_string(), "default".to_string()),
            (LABEL_POD_NAME.to_string(), "web".to_string()),
        ]);
        assert!(pod(None).holds(&labels));
        assert!(
            !Pod {
                name: "db".into(),
                ..pod(None)
            }
            .holds(&labels)
        );
    }

    #[test]
    fn bad_targets_and_namespaces_are_refused_naming_the_setting() {
        for (pairs, expected) in [
            (
                vec![("TOOLBOX_TARGET", "pid:x")],
                "environment: TOOLBOX_TARGET `pid:x`: pid:N needs a process ID",
            ),
            (
                vec![("TOOLBOX_TARGET", "pid:0")],
                "environment: TOOLBOX_TARGET `pid:0`: pid:N needs a process ID",
            ),
            (
                vec![("TOOLBOX_TARGET", "a b")],
                "environment: TOOLBOX_TARGET `a b` is not a container name, ID, pod/NAMESPACE/POD or pid:N",
            ),
            (
                vec![("TOOLBOX_TARGET", "web"), ("TOOLBOX_TARGET_NS", "net,pid")],
                "environment: TOOLBOX_TARGET_NS: a session never joins its target's `pid` \
                 namespace (the toolbox's tools and the host's processes would be gone); \
                 use net, ipc or uts",
            ),
            (
                vec![("TOOLBOX_TARGET", "web"), ("TOOLBOX_TARGET_NS", "cgroup")],
                "environment: TOOLBOX_TARGET_NS: `cgroup` is not a namespace; use net, ipc or uts",
            ),
        ] {
            assert_eq!(request(&pairs).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn a_found_target_is_bound_as_staged_and_named_in_the_environment() {
        let target = Target {
            request: request(&[("TOOLBOX_TARGET", "web"), ("TOOLBOX_TARGET_NS", "net,ipc")])
                .unwrap()
                .unwrap(),
            pid: 4242,
            container: Some("abc".into()),
            root: Some("/var/lib/docker/overlay2/x/merged".into()),
            volumes: vec![Volume {
                source: "/var/lib/docker/volumes/data/_data".into(),
                destination: "/data".into(),
                read_only: true,
            }],
        };
        let staged = Path::new("/var/lib/toolbox/.core-x.target-1");
        assert_eq!(
            target.nspawn_options(staged),
            [
                "--bind=/var/lib/toolbox/.core-x.target-1:/media/target",
                "--setenv=TOOLBOX_TARGET=web",
                "--setenv=TOOLBOX_TARGET_PID=4242",
            ]
        );
        assert_eq!(
            target.namespace_paths(),
            [
                (Namespace::Net, PathBuf::from("/proc/4242/ns/net")),
                (Namespace::Ipc, PathBuf::from("/proc/4242/ns/ipc")),
            ]
        );
        assert_eq!(
            target.spc_binds(Some(staged)),
            ["/var/lib/toolbox/.core-x.target-1:/media/target"]
        );
        assert_eq!(
            target.spc_binds(None),
            ["/var/lib/docker/overlay2/x/merged:/media/target"]
        );
    }
}
