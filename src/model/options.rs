//! options: the systemd-nspawn options toolbox accepts from configuration
//! (`TOOLBOX_FLAGS`, `TOOLBOX_BIND`, `TOOLBOX_ENV`). The CoreOS script expanded those
//! words into the command line unchecked, so a `--directory=` among them made
//! systemd-nspawn set up another root, a plain word became the command, and a mount could
//! land on a path systemd-nspawn then writes through. Here every word is parsed as
//! systemd-nspawn 252 parses it (GNU getopt: long options by unique prefix, clustered
//! short options, values attached or in the next word), options toolbox decides itself are
//! refused, and mount destinations are normalized for the checks that follow. Pure: no I/O.

use std::fmt;

/// What toolbox does with an option found in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// Passed on as it is.
    Allowed,
    /// Decided by toolbox; refused, with what to use instead.
    Owned(&'static str),
    /// A mount; its destination is checked.
    Mount(MountKind),
}

/// Whether an option takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    No,
    /// `--opt=VALUE`, `--opt VALUE`, `-oVALUE` or `-o VALUE`.
    Required,
    /// Only attached: `--opt=VALUE`.
    Optional,
}

struct Spec {
    long: &'static str,
    short: Option<char>,
    value: Value,
    policy: Policy,
}

const ROOT: Policy = Policy::Owned("toolbox enters its own tree; choose the toolbox with --name");
const COMMAND: Policy = Policy::Owned("toolbox runs the command given on its command line");
const NAME: Policy = Policy::Owned("toolbox names each session's machine itself");
const USER: Policy = Policy::Owned("set TOOLBOX_USER or use --user instead");
const NAMESPACES: Policy = Policy::Owned("a toolbox shares the host's user namespace");
const REGISTRATION: Policy =
    Policy::Owned("a session shares the host's PID namespace: no machine is registered");
const JOURNAL: Policy =
    Policy::Owned("linking journals would write in the host's /var/log/journal");

const fn spec(long: &'static str, short: Option<char>, value: Value, policy: Policy) -> Spec {
    Spec {
        long,
        short,
        value,
        policy,
    }
}

/// systemd-nspawn's options (252, and those of later releases toolbox knows of).
const SPECS: &[Spec] = &[
    spec("directory", Some('D'), Value::Required, ROOT),
    spec("image", Some('i'), Value::Required, ROOT),
    spec("template", None, Value::Required, ROOT),
    spec("ephemeral", Some('x'), Value::No, ROOT),
    spec("oci-bundle", None, Value::Required, ROOT),
    spec("pivot-root", None, Value::Required, ROOT),
    spec("root-hash", None, Value::Required, ROOT),
    spec("root-hash-sig", None, Value::Required, ROOT),
    spec("verity-data", None, Value::Required, ROOT),
    spec("image-policy", None, Value::Required, ROOT),
    spec("volatile", None, Value::Optional, ROOT),
    spec("settings", None, Value::Required, ROOT),
    spec("machine", Some('M'), Value::Required, NAME),
    spec("user", Some('u'), Value::Required, USER),
    spec("boot", Some('b'), Value::No, COMMAND),
    spec("help", Some('h'), Value::No, COMMAND),
    spec("version", None, Value::No, COMMAND),
    spec("register", None, Value::Required, REGISTRATION),
    spec("link-journal", None, Value::Required, JOURNAL),
    spec("private-users", Some('U'), Value::Optional, NAMESPACES),
    spec("private-users-chown", None, Value::Optional, NAMESPACES),
    spec("private-users-ownership", None, Value::Required, NAMESPACES),
    spec("bind-user", None, Value::Required, NAMESPACES),
    spec(
        "bind",
        None,
        Value::Required,
        Policy::Mount(MountKind::Bind),
    ),
    spec(
        "bind-ro",
        None,
        Value::Required,
        Policy::Mount(MountKind::Bind),
    ),
    spec(
        "tmpfs",
        None,
        Value::Required,
        Policy::Mount(MountKind::Tmpfs),
    ),
    spec(
        "overlay",
        None,
        Value::Required,
        Policy::Mount(MountKind::Overlay),
    ),
    spec(
        "overlay-ro",
        None,
        Value::Required,
        Policy::Mount(MountKind::Overlay),
    ),
    spec(
        "inaccessible",
        None,
        Value::Required,
        Policy::Mount(MountKind::Inaccessible),
    ),
    spec("setenv", Some('E'), Value::Required, Policy::Allowed),
    spec("system-call-filter", None, Value::Required, Policy::Allowed),
    spec("capability", None, Value::Required, Policy::Allowed),
    spec("drop-capability", None, Value::Required, Policy::Allowed),
    spec("ambient-capability", None, Value::Required, Policy::Allowed),
    spec("property", None, Value::Required, Policy::Allowed),
    spec("slice", Some('S'), Value::Required, Policy::Allowed),
    spec("keep-unit", None, Value::No, Policy::Allowed),
    spec("quiet", Some('q'), Value::No, Policy::Allowed),
    spec("chdir", None, Value::Required, Policy::Allowed),
    spec("as-pid2", Some('a'), Value::No, Policy::Allowed),
    spec("pipe", Some('P'), Value::No, Policy::Allowed),
    spec("console", None, Value::Required, Policy::Allowed),
    spec("read-only", None, Value::No, Policy::Allowed),
    spec("resolv-conf", None, Value::Required, Policy::Allowed),
    spec("timezone", None, Value::Required, Policy::Allowed),
    spec("hostname", None, Value::Required, Policy::Allowed),
    spec("uuid", None, Value::Required, Policy::Allowed),
    spec(
        "selinux-context",
        Some('Z'),
        Value::Required,
        Policy::Allowed,
    ),
    spec(
        "selinux-apifs-context",
        Some('L'),
        Value::Required,
        Policy::Allowed,
    ),
    spec("share-system", None, Value::No, Policy::Allowed),
    spec("private-network", None, Value::No, Policy::Allowed),
    spec("network-interface", None, Value::Required, Policy::Allowed),
    spec("network-macvlan", None, Value::Required, Policy::Allowed),
    spec("network-ipvlan", None, Value::Required, Policy::Allowed),
    spec("network-veth", Some('n'), Value::No, Policy::Allowed),
    spec("network-veth-extra", None, Value::Required, Policy::Allowed),
    spec("network-bridge", None, Value::Required, Policy::Allowed),
    spec("network-zone", None, Value::Required, Policy::Allowed),
    spec(
        "network-namespace-path",
        None,
        Value::Required,
        Policy::Allowed,
    ),
    spec("port", Some('p'), Value::Required, Policy::Allowed),
    spec("personality", None, Value::Required, Policy::Allowed),
    spec("kill-signal", None, Value::Required, Policy::Allowed),
    spec("notify-ready", None, Value::Required, Policy::Allowed),
    spec("rlimit", None, Value::Required, Policy::Allowed),
    spec("oom-score-adjust", None, Value::Required, Policy::Allowed),
    spec("cpu-affinity", None, Value::Required, Policy::Allowed),
    spec("no-new-privileges", None, Value::Required, Policy::Allowed),
    spec("load-credential", None, Value::Required, Policy::Allowed),
    spec("set-credential", None, Value::Required, Policy::Allowed),
    spec("suppress-sync", None, Value::Required, Policy::Allowed),
    spec("no-pager", None, Value::No, Policy::Allowed),
    spec("no-ask-password", None, Value::No, Policy::Allowed),
];

/// Which kind of mount an option makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// `--bind[-ro]=SRC[:DST[:OPTIONS]]`.
    Bind,
    /// `--tmpfs=DST[:OPTIONS]`.
    Tmpfs,
    /// `--overlay[-ro]=LOWER:...:UPPER:DST`.
    Overlay,
    /// `--inaccessible=DST`.
    Inaccessible,
}

/// A mount asked for in configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountKind,
    /// The host directory or file whose contents appear at the destination: a bind's
    /// source, an overlay's upper directory. `None` for tmpfs and inaccessible mounts.
    pub source: Option<String>,
    /// Inside the toolbox, normalized: absolute, no `.`, `..` or empty components.
    pub destination: String,
    /// Inside the toolbox, as written: `..` is resolved by the mounting program after the
    /// symlinks before it, not as text (see `model::placement`).
    pub written: String,
    /// The words as written, for messages.
    pub word: String,
    /// The option's value split at `:`, unescaped, and which field is the destination.
    fields: Vec<String>,
    destination_field: usize,
}

impl Mount {
    /// The option's value with the destination replaced by `destination`, escaped as
    /// systemd-nspawn reads it.
    fn value_at(&self, destination: &str) -> String {
        let mut fields = self.fields.clone();
        if self.destination_field == fields.len() {
            fields.push(String::new());
        }
        fields[self.destination_field] = destination.to_string();
        fields
            .iter()
            .map(|f| f.replace('\\', "\\\\").replace(':', "\\:"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// One option from configuration, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub mount: Option<Mount>,
    /// `--setenv=NAME=VALUE` / `-E NAME=VALUE`: the assignment.
    pub setenv: Option<String>,
    /// The options the words stand for (several for clustered short options), by long
    /// name, with their values.
    found: Vec<(&'static str, Option<String>)>,
}

impl Parsed {
    /// The words systemd-nspawn is given for this option, each as `--NAME[=VALUE]`: a
    /// mount at `destination` (where it was placed), a variable by name alone when
    /// `by_name` (systemd-nspawn 250 and later then take its value from their own
    /// environment, where no other user can read it).
    pub fn words(&self, destination: Option<&str>, by_name: bool) -> Vec<String> {
        self.found
            .iter()
            .map(|(long, value)| match (&self.mount, destination, value) {
                (Some(mount), Some(destination), Some(_)) if MOUNT_OPTIONS.contains(long) => {
                    format!("--{long}={}", mount.value_at(destination))
                }
                (_, _, Some(assignment)) if *long == "setenv" && by_name => {
                    let name = assignment
                        .split_once('=')
                        .map_or(assignment.as_str(), |(n, _)| n);
                    format!("--setenv={name}")
                }
                (_, _, Some(value)) => format!("--{long}={value}"),
                (_, _, None) => format!("--{long}"),
            })
            .collect()
    }
}

/// The options that make mounts.
const MOUNT_OPTIONS: [&str; 6] = [
    "bind",
    "bind-ro",
    "tmpfs",
    "overlay",
    "overlay-ro",
    "inaccessible",
];

/// Why configuration words were refused: the word and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub word: String,
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.word, self.reason)
    }
}

fn refused(word: &str, reason: impl Into<String>) -> Refused {
    Refused {
        word: word.to_string(),
        reason: reason.into(),
    }
}

/// The long option `name` stands for: an exact name, or as getopt_long takes it, a prefix
/// of exactly one.
fn long_spec(name: &str) -> Result<&'static Spec, String> {
    if let Some(spec) = SPECS.iter().find(|s| s.long == name) {
        return Ok(spec);
    }
    let candidates: Vec<&Spec> = SPECS.iter().filter(|s| s.long.starts_with(name)).collect();
    match candidates[..] {
        [spec] => Ok(spec),
        [] => Err("not a systemd-nspawn option toolbox knows".to_string()),
        _ => Err(format!(
            "ambiguous: it abbreviates {}",
            candidates
                .iter()
                .map(|s| format!("--{}", s.long))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The mounts among options toolbox made itself, for the tree's mount points to be made
/// safely; held to the rules of configuration words.
pub fn mounts(words: &[String]) -> Result<Vec<Mount>, Refused> {
    Ok(parse(words)?.into_iter().filter_map(|p| p.mount).collect())
}

/// Parses configuration words into options, refusing those toolbox decides, words that
/// are not options, options toolbox does not know, and mounts it cannot check (sources
/// inside the tree, relative paths). Where the mounts land is `plan`'s to check.
pub fn parse(words: &[String]) -> Result<Vec<Parsed>, Refused> {
    let mut parsed = Vec::new();
    let mut rest = words.iter();
    while let Some(word) = rest.next() {
        if word == "--" || !word.starts_with('-') || word == "-" {
            return Err(refused(
                word,
                "not an option; systemd-nspawn would take it and the words after it as the \
                 command (give the command on toolbox's command line, and settings as \
                 --setenv=NAME=VALUE)",
            ));
        }
        let mut taken = vec![word.clone()];
        // (spec, value) pairs this word stands for: several for clustered short options.
        let mut found: Vec<(&Spec, Option<String>)> = Vec::new();
        if let Some(long) = word.strip_prefix("--") {
            let (name, attached) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (long, None),
            };
            let spec = long_spec(name).map_err(|why| refused(word, why))?;
            let value = match (spec.value, attached) {
                (Value::No, Some(_)) => {
                    return Err(refused(word, format!("--{} takes no value", spec.long)));
                }
                (Value::Required, None) => {
                    let next = rest
                        .next()
                        .ok_or_else(|| refused(word, format!("--{} needs a value", spec.long)))?;
                    taken.push(next.clone());
                    Some(next.clone())
                }
                (_, attached) => attached,
            };
            found.push((spec, value));
        } else {
            for (at, c) in word[1..].char_indices() {
                let spec = SPECS
                    .iter()
                    .find(|s| s.short == Some(c))
                    .ok_or_else(|| refused(word, format!("-{c} is not a systemd-nspawn option")))?;
                if spec.value == Value::Required {
                    let attached = &word[1 + at + c.len_utf8()..];
                    let value = if attached.is_empty() {
                        let next = rest
                            .next()
                            .ok_or_else(|| refused(word, format!("-{c} needs a value")))?;
                        taken.push(next.clone());
                        next.clone()
                    } else {
                        attached.to_string()
                    };
                    found.push((spec, Some(value)));
                    break;
                }
                found.push((spec, None));
            }
        }
        let shown = taken.join(" ");
        let mut option = Parsed {
            mount: None,
            setenv: None,
            found: found
                .iter()
                .map(|(spec, v)| (spec.long, v.clone()))
                .collect(),
        };
        for (spec, value) in found {
            match spec.policy {
                Policy::Owned(why) => {
                    return Err(refused(
                        &shown,
                        format!("--{} is toolbox's: {why}", spec.long),
                    ));
                }
                Policy::Mount(kind) => {
                    let value = value.unwrap_or_default();
                    option.mount = Some(mount(kind, &value, &shown)?);
                }
                Policy::Allowed if spec.long == "setenv" => option.setenv = value,
                Policy::Allowed => {}
            }
        }
        parsed.push(option);
    }
    Ok(parsed)
}

/// Splits a mount specification at unescaped `:` (systemd-nspawn takes `\:` as a colon).
fn fields(spec: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

fn mount(kind: MountKind, spec: &str, word: &str) -> Result<Mount, Refused> {
    let fields = fields(spec);
    let (source, destination, destination_field) = match kind {
        MountKind::Bind => {
            let source = fields[0].clone();
            if source.starts_with('+') {
                return Err(refused(
                    word,
                    "a source inside the toolbox (`+PATH`) could be redirected by the tree's \
                     own symlinks; bind a host path",
                ));
            }
            if !source.starts_with('/') {
                return Err(refused(word, "the source must be an absolute host path"));
            }
            let destination = match fields.get(1) {
                Some(d) if !d.is_empty() => d.clone(),
                _ => source.clone(),
            };
            (Some(source), destination, 1)
        }
        MountKind::Tmpfs | MountKind::Inaccessible => (None, fields[0].clone(), 0),
        MountKind::Overlay => {
            if fields.len() < 2 {
                return Err(refused(
                    word,
                    "an overlay needs its layers and a destination",
                ));
            }
            let upper = fields[fields.len() - 2].clone();
            if upper.starts_with('+') {
                return Err(refused(
                    word,
                    "a directory inside the toolbox (`+PATH`) could be redirected by the tree's \
                     own symlinks; use host paths",
                ));
            }
            (
                Some(upper),
                fields[fields.len() - 1].clone(),
                fields.len() - 1,
            )
        }
    };
    if !destination.starts_with('/') {
        return Err(refused(word, "the destination must be an absolute path"));
    }
    Ok(Mount {
        kind,
        source,
        destination: normalize(&destination),
        written: destination,
        word: word.to_string(),
        fields,
        destination_field,
    })
}

/// `path` with `.`, `..` and repeated or trailing `/` resolved as systemd-nspawn resolves
/// a destination inside the container: `..` at the root stays at the root.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Whether `path` is `ancestor` or lies beneath it (both normalized).
pub fn is_within(path: &str, ancestor: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    fn refusal(text: &str) -> String {
        parse(&words(text)).unwrap_err().to_string()
    }

    #[test]
    fn real_configurations_parse() {
        for text in [
            // The CoreOS defaults, Flatcar's flags and binds, COS's binds and filters.
            "--bind=/:/media/root --bind=/usr:/media/root/usr --bind=/run:/media/root/run",
            "--system-call-filter=bpf --bind=/sys/fs/bpf:/sys/fs/bpf",
            "--bind=/:/media/root/ --bind=/mnt/disks/:/mnt/disks/ --bind=/var/:/var/ \
             --bind=/home:/home --bind-ro=/etc/resolv.conf",
            "--system-call-filter=@debug --system-call-filter=perf_event_open",
            "--setenv=A=1 -E B=2 --capability=CAP_SYS_ADMIN --property=MemoryMax=1G",
            "-q --console=pipe --tmpfs=/scratch --overlay=/a:/b:/srv/o",
        ] {
            parse(&words(text)).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        let parsed = parse(&words("-E B=2 --setenv=A=1")).unwrap();
        assert_eq!(parsed[0].setenv.as_deref(), Some("B=2"));
        assert_eq!(parsed[1].setenv.as_deref(), Some("A=1"));
    }

    #[test]
    fn options_toolbox_owns_are_refused_in_every_spelling() {
        for text in [
            "--directory=/tmp/..",
            "--directory /tmp/..",
            "-D /tmp/..",
            "-D/tmp/..",
            "-qD /tmp/..",
            "--dir=/tmp/..",
            "--image=/srv/disk.raw",
            "--template=/",
            "--ephemeral",
            "-x",
            "--machine=other",
            "-M other",
            "--user=bob",
            "-u bob",
            "--boot",
            "--register=yes",
            "--link-journal=host",
            "-U",
            "--private-users=pick",
            "--pivot-root=/x",
            "--settings=trusted",
            "--volatile=yes",
        ] {
            let message = refusal(text);
            assert!(message.contains("is toolbox's: "), "{text}: {message}");
        }
        assert_eq!(
            refusal("--setenv=A=1 -D /tmp/.."),
            "`-D /tmp/..`: --directory is toolbox's: toolbox enters its own tree; choose the \
             toolbox with --name"
        );
    }

    #[test]
    fn words_that_are_not_options_are_refused() {
        for text in ["EDITOR=vi", "--", "-", "sh -c true", "--setenv=A=1 bash"] {
            let message = refusal(text);
            assert!(message.contains("not an option"), "{text}: {message}");
        }
        assert_eq!(
            refusal("--frobnicate"),
            "`--frobnicate`: not a systemd-nspawn option toolbox knows"
        );
        assert!(refusal("--p=1").contains("ambiguous"));
        assert_eq!(refusal("-K"), "`-K`: -K is not a systemd-nspawn option");
        assert_eq!(refusal("--quiet=1"), "`--quiet=1`: --quiet takes no value");
        assert_eq!(refusal("--bind"), "`--bind`: --bind needs a value");
    }

    #[test]
    fn mounts_are_normalized() {
        let parsed = parse(&words(
            "--bind=/tmp:/media/root/.. --bind-ro=/srv --tmpfs=//x/./y/:mode=0755 \
             --overlay=/l:/u:/a/../o --bind=/a\\:b:/c\\:d:rbind --inaccessible=/etc/x",
        ))
        .unwrap();
        let mounts: Vec<(Option<&str>, &str)> = parsed
            .iter()
            .map(|p| p.mount.as_ref().unwrap())
            .map(|m| (m.source.as_deref(), m.destination.as_str()))
            .collect();
        assert_eq!(
            mounts,
            [
                (Some("/tmp"), "/media"),
                (Some("/srv"), "/srv"),
                (None, "/x/y"),
                (Some("/u"), "/o"),
                (Some("/a:b"), "/c:d"),
                (None, "/etc/x"),
            ]
        );
        assert_eq!(normalize("/../../a/./b//"), "/a/b");
        assert_eq!(normalize("/.."), "/");
        assert!(refusal("--bind=+/etc:/x").contains("inside the toolbox"));
        assert!(refusal("--bind=relative:/x").contains("absolute host path"));
        assert!(refusal("--bind=/x:relative").contains("absolute path"));
    }

    #[test]
    fn options_are_given_canonically_with_their_destination_as_placed() {
        let parsed = parse(&words(
            "-qE A=1 --bind /a\\:b:/c:norbind --bind-ro=/s --tmpfs=/t:mode=0755 \
             --setenv=TOKEN=x --overlay=/l:/u:/o",
        ))
        .unwrap();
        let placed: Vec<Vec<String>> = parsed
            .iter()
            .map(|p| p.words(Some("/placed"), false))
            .collect();
        assert_eq!(
            placed,
            [
                vec!["--quiet".to_string(), "--setenv=A=1".to_string()],
                vec!["--bind=/a\\:b:/placed:norbind".to_string()],
                vec!["--bind-ro=/s:/placed".to_string()],
                vec!["--tmpfs=/placed:mode=0755".to_string()],
                vec!["--setenv=TOKEN=x".to_string()],
                vec!["--overlay=/l:/u:/placed".to_string()],
            ]
        );
        assert_eq!(parsed[4].words(None, true), ["--setenv=TOKEN"]);
        assert_eq!(parsed[1].words(None, false), ["--bind=/a\\:b:/c:norbind"]);
    }

    #[test]
    fn within() {
        assert!(is_within("/media/root", "/media"));
        assert!(is_within("/media", "/media"));
        assert!(!is_within("/mediax", "/media"));
        assert!(is_within("/anything", "/"));
    }
}
