//! cli: the command line, as clap definitions. Parsing only; `run` acts on the result.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Examples:
  toolbox                                  enter the toolbox with a shell
  toolbox strace -p 1234                   run a command inside it
  toolbox -c 'dnf install -y tcpdump && tcpdump -i eth0'
  toolbox bpftrace -e 'tracepoint:syscalls:sys_enter_openat { @[comm] = count(); }'
  toolbox perf top                         bpftrace, perf and bcc work on the host
  toolbox --image debian --tag bookworm    use another image
  toolbox list                             list toolboxes and their sessions
  toolbox update                           rebuild the toolbox if its image changed
  toolbox --storage copy                   a new toolbox unpacked, not over the image's layers
  toolbox --engine podman                  create it through Podman's service
  docker save debian | toolbox import -    a toolbox from an image archive, no engine
  toolbox --runtime spc                    a super privileged container instead
  toolbox --target web ss -ltnp            debug container `web`: its network, its
                                           files at /media/target, gdb -p $TOOLBOX_TARGET_PID
  toolbox --target pid:1234 tcpdump -i any any process's network namespace
  toolbox run rm -rf /tmp/x                run a command named like a subcommand
  toolbox -- rm -rf /tmp/x                 the same

The host's / is mounted at /media/root inside the toolbox. Sessions may trace the
host: bpf() and perf_event_open() are allowed and the host's tracefs, debugfs, bpf
filesystem, kernel modules and headers are bound in (TOOLBOX_TRACING=0 turns this off).

Settings come from /etc/default/toolbox, ~/.toolboxrc, ~/.config/toolbox/toolbox.conf
and TOOLBOX_* environment variables; options override them all.

Exit status: the command's own; 125 when toolbox itself fails, 126 when the command
cannot be executed, 127 when it is not found in the toolbox.";

/// A debugging userland from a container image, with the host's namespaces shared.
#[derive(Debug, Parser)]
#[command(
    name = "toolbox",
    version,
    after_help = AFTER_HELP,
    allow_external_subcommands = true,
    disable_help_subcommand = true,
    args_conflicts_with_subcommands = false
)]
pub struct Cli {
    #[command(flatten)]
    pub options: Options,

    /// Run `/bin/sh -c CMD` inside the toolbox (lets toolbox serve as a login shell)
    #[arg(short = 'c', value_name = "CMD")]
    pub shell_command: Option<OsString>,

    #[command(subcommand)]
    pub action: Option<Action>,
}

/// Options every form of toolbox takes; they go before the command.
#[derive(Debug, Default, Args)]
pub struct Options {
    /// Image to build the toolbox from [TOOLBOX_DOCKER_IMAGE; default: fedora]
    #[arg(long, global = true, value_name = "IMAGE")]
    pub image: Option<String>,

    /// Image tag [TOOLBOX_DOCKER_TAG; default: latest]
    #[arg(long, global = true, value_name = "TAG")]
    pub tag: Option<String>,

    /// Toolbox name, instead of IMAGE-TAG [TOOLBOX_NAME]
    #[arg(long, global = true, value_name = "NAME")]
    pub name: Option<String>,

    /// User to run as inside the toolbox [TOOLBOX_USER; default: root]
    #[arg(long, global = true, value_name = "USER")]
    pub user: Option<String>,

    /// Where toolboxes live [TOOLBOX_DIRECTORY; default: /var/lib/toolbox]
    #[arg(long, global = true, value_name = "DIR")]
    pub directory: Option<PathBuf>,

    /// How a new toolbox stores the image: `overlay` (mounted over the engine's layers),
    /// `copy` (unpacked) or `auto` (overlay where it works) [TOOLBOX_STORAGE; default: auto]
    #[arg(long, global = true, value_name = "MODE")]
    pub storage: Option<String>,

    /// Container engine to create toolboxes with: docker, podman, containerd or auto
    /// [TOOLBOX_ENGINE; default: auto]
    #[arg(long, global = true, value_name = "ENGINE")]
    pub engine: Option<String>,

    /// How the toolbox runs: `nspawn` (unpacked, entered with systemd-nspawn) or `spc` (a
    /// super privileged container, visible in `docker ps`) [TOOLBOX_RUNTIME; default: nspawn]
    #[arg(long, global = true, value_name = "RUNTIME")]
    pub runtime: Option<String>,

    /// Debug a running container (name or ID) or host process (`pid:N`): join its
    /// network namespace, see its files at /media/target [TOOLBOX_TARGET]
    #[arg(long, global = true, value_name = "CONTAINER")]
    pub target: Option<String>,

    /// The target's namespaces to join: net, ipc, uts, comma-separated
    /// [TOOLBOX_TARGET_NS; default: net]
    #[arg(long, global = true, value_name = "LIST")]
    pub target_ns: Option<String>,

    /// With --runtime spc: a throwaway container for this command, removed when it ends
    #[arg(long = "rm", global = true)]
    pub throwaway: bool,

    /// With --runtime spc: apply the image's `RUN` label (`docker run` options)
    #[arg(long, global = true)]
    pub use_run_label: bool,

    /// Print the systemd-nspawn command and environment (with --runtime spc, the `docker`
    /// commands and the image's `RUN` label); change nothing
    #[arg(long, global = true)]
    pub dry_run: bool,

    /// With --dry-run and -vv, print proxy passwords and secret-looking variables
    /// (`*TOKEN*`, `*PASSWORD*`, ...) as they are instead of `***`
    #[arg(long, global = true)]
    pub show_secrets: bool,

    /// Say what is being done (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Print only errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Run a command inside the toolbox
    #[command(after_help = "\
Examples:
  toolbox run strace -p 1234
  toolbox run -- rm -rf /tmp/x      a command named like a subcommand
  toolbox run sh -c 'ps -ef | grep sshd'")]
    Run {
        /// The command and its arguments
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<OsString>,
    },
    /// List the toolboxes in the toolbox directory and its super privileged containers
    #[command(after_help = "\
Examples:
  toolbox list
  toolbox list --json | jq -r '.[] | select(.sessions > 0) | .name'
  toolbox list --json | jq -r '.[] | select(.runtime == \"spc\") | .name'
  toolbox list --names              the trees only, without asking an engine")]
    List {
        /// Print JSON for scripts
        #[arg(long, conflicts_with = "names")]
        json: bool,
        /// Print only the names, one per line
        #[arg(long)]
        names: bool,
    },
    /// Remove toolboxes
    #[command(after_help = "\
A toolbox goes with every file changed in it, and with the tree its last update replaced;
nothing asks first. Copy out what you want to keep (its files are where `toolbox list
--json` says) before removing it.

Examples:
  toolbox rm core-fedora-latest
  toolbox rm fedora-latest          the same, without the user prefix
  toolbox --runtime spc rm fedora-latest   the super privileged container of that name
  toolbox rm --force --all          stop every session and remove every toolbox")]
    Rm {
        /// Toolbox names, as `toolbox list` shows them
        #[arg(
            value_name = "NAME",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        names: Vec<String>,
        /// Remove every toolbox in the toolbox directory
        #[arg(long)]
        all: bool,
        /// Stop running sessions first instead of refusing
        #[arg(short, long)]
        force: bool,
    },
    /// Create a toolbox from an image archive, with no container engine
    #[command(after_help = "\
Reads `docker save` archives (legacy and OCI layouts), OCI image layouts (a directory or a
tar), and root filesystem tarballs, each compressed with gzip or not; the kind is told from
the content. Layers are checked against their digests. The toolbox is named after the
image (repository-tag), or the file, unless --name is given.

Examples:
  docker save debian:bookworm | toolbox import -
  toolbox import debian.tar --name debian
  toolbox import rootfs.tar.gz --name mine   then `toolbox --name mine` enters it")]
    Import {
        /// The archive, an OCI layout directory, or `-` for standard input
        #[arg(value_name = "FILE")]
        archive: PathBuf,
    },
    /// Rebuild a toolbox when its image has changed
    #[command(after_help = "\
The tree an update replaces is kept, with every file changed in it, until the next update
replaces it or `rm` removes the toolbox: `toolbox update --rollback` puts it back (and a
second rollback goes forward again). An update that would discard a kept tree holding
changed files asks first on a terminal, and elsewhere needs --force.

Examples:
  toolbox update                    the configured toolbox
  toolbox update core-debian-bookworm --force
  toolbox update --rollback         back to the tree the last update replaced
  toolbox update --storage overlay  rebuild it over the engine's layers
  toolbox --runtime spc update      recreate the super privileged container if its image changed")]
    Update {
        /// Toolbox name, as `toolbox list` shows it [default: the configured toolbox]
        #[arg(value_name = "NAME")]
        name: Option<String>,
        /// Stop running sessions first instead of refusing, and discard changed files the
        /// update would lose without asking
        #[arg(short, long)]
        force: bool,
        /// Go back to the tree the last update replaced
        #[arg(long)]
        rollback: bool,
    },
    /// Show the effective settings and where each comes from
    #[command(after_help = "\
Examples:
  toolbox config
  toolbox config --path
  toolbox --image debian config     what --image changes")]
    Config {
        /// List the configuration files consulted instead
        #[arg(long)]
        path: bool,
    },
    /// Print a shell completion script (toolbox names are completed too)
    #[command(after_help = "\
Examples:
  toolbox completions bash > /etc/bash_completion.d/toolbox
  toolbox completions zsh > \"${fpath[1]}/_toolbox\"
  toolbox completions fish > ~/.config/fish/completions/toolbox.fish")]
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write the manual pages toolbox(1) and toolbox.conf(5)
    #[command(after_help = "\
Examples:
  toolbox manpages                  into /usr/local/share/man (then `man toolbox`)
  toolbox manpages ./man && man -l man/man5/toolbox.conf.5")]
    Manpages {
        /// Manual directory; the pages go to DIR/man1 and DIR/man5
        #[arg(value_name = "DIR", default_value = "/usr/local/share/man")]
        directory: PathBuf,
    },
    /// Any other word starts the command to run, as with the CoreOS script
    #[command(external_subcommand)]
    External(Vec<OsString>),
}

/// The shells `completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The clap definition, for parsing, completions and the manual page.
pub fn command() -> clap::Command {
    Cli::command()
}

/// A subcommand's `--help` as clap renders it, without the options that do not apply to
/// it (clap lists every global option under every subcommand).
pub fn filter_help(rendered: &str, args: &[OsString]) -> String {
    let command = command();
    let names = subcommand_names(&command);
    let Some(sub) = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .find(|a| names.iter().any(|n| n == a))
    else {
        return rendered.to_string();
    };
    let refused: Vec<String> = command
        .get_arguments()
        .filter(|arg| arg.is_global_set() && !applies(&sub, arg.get_id().as_str()))
        .filter_map(|arg| arg.get_long().map(|long| format!("--{long}")))
        .collect();
    let mut out = String::new();
    let mut skipping: Option<usize> = None;
    for line in rendered.lines() {
        let indent = line.len() - line.trim_start().len();
        let option = line
            .trim_start()
            .split([' ', ','])
            .find(|word| word.starts_with("--"))
            .filter(|_| line.trim_start().starts_with('-'));
        if let Some(depth) = skipping {
            // A wrapped description continues, indented past the option.
            if indent > depth && option.is_none() {
                continue;
            }
            skipping = None;
        }
        if option.is_some_and(|o| {
            refused
                .iter()
                .any(|r| r == o.split('=').next().unwrap_or(o))
        }) {
            skipping = Some(indent);
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn subcommand_names(command: &clap::Command) -> Vec<String> {
    command
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect()
}

/// Whether option `id` (its clap ID: the field name) applies to subcommand `sub`. Running
/// a command (`run`, or none) takes every option; the management commands only those that
/// say which toolboxes and engine they act on, and how verbosely; `config` every option
/// that sets a setting, since it shows them.
fn applies(sub: &str, id: &str) -> bool {
    const SAYING: [&str; 2] = ["verbose", "quiet"];
    const SETTINGS: [&str; 10] = [
        "image",
        "tag",
        "name",
        "user",
        "directory",
        "storage",
        "engine",
        "runtime",
        "target",
        "target_ns",
    ];
    let own: &[&str] = match sub {
        "run" => return true,
        "list" => &["directory", "engine", "runtime"],
        "rm" => &["directory", "engine", "runtime"],
        "update" => &[
            "image",
            "tag",
            "name",
            "directory",
            "storage",
            "engine",
            "runtime",
        ],
        "import" => &["name", "directory"],
        "config" => &SETTINGS,
        _ => &[],
    };
    own.contains(&id) || (SAYING.contains(&id) && !matches!(sub, "completions" | "manpages"))
}

/// Refuses an option given with a subcommand it does not apply to, and `-c` with any
/// subcommand but `run`.
fn check_options(
    command: &mut clap::Command,
    matches: &clap::ArgMatches,
) -> Result<(), clap::Error> {
    let Some((sub, sub_matches)) = matches.subcommand() else {
        return Ok(());
    };
    let Some(subcommand) = command.find_subcommand(sub) else {
        return Ok(()); // a command to run: every option applies
    };
    // The subcommand's own arguments, which may share an ID with an option (`manpages
    // DIR` and `--directory`).
    let own: Vec<String> = subcommand
        .get_arguments()
        .filter(|arg| !arg.is_global_set())
        .map(|arg| arg.get_id().to_string())
        .collect();
    let given = |m: &clap::ArgMatches, id: &str| {
        m.try_contains_id(id).unwrap_or(false)
            && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    };
    let mut refused: Vec<String> = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let applicable = match arg.is_global_set() {
            true => applies(sub, id),
            false => sub == "run",
        };
        // Values of a subcommand's own argument also show under a global option of the
        // same ID: such an option cannot be told apart, and is left alone.
        if own.iter().any(|o| o == id) {
            continue;
        }
        if !applicable && (given(matches, id) || given(sub_matches, id)) {
            refused.push(match (arg.get_long(), arg.get_short()) {
                (Some(long), _) => format!("--{long}"),
                (None, Some(short)) => format!("-{short}"),
                (None, None) => id.to_string(),
            });
        }
    }
    match refused.first() {
        None => Ok(()),
        Some(option) => {
            let sub_command = command.find_subcommand_mut(sub).expect("found above");
            Err(sub_command.error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("`{option}` does not apply to `toolbox {sub}`"),
            ))
        }
    }
}

/// The subcommands' names.
pub fn subcommands() -> Vec<String> {
    command()
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect()
}

/// Parses the command line. `toolbox -- CMD ...` is `toolbox run CMD ...`, so a command
/// named like a subcommand can still be run that way.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, clap::Error> {
    let args: Vec<OsString> = args.into_iter().collect();
    let separator = args.iter().skip(1).position(|a| a == "--").map(|i| i + 1);
    let first_positional = args
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-') || a == "--")
        .map(|i| i + 1);
    match separator {
        Some(at) if first_positional == Some(at) && !value_expected(&args[at - 1]) => {
            let mut rewritten = args[..at].to_vec();
            rewritten.push("run".into());
            rewritten.extend_from_slice(&args[at..]);
            parse_with_clap(rewritten)
        }
        _ => parse_with_clap(args),
    }
}

fn parse_with_clap(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let mut command = command();
    let matches = command.try_get_matches_from_mut(args)?;
    check_options(&mut command, &matches)?;
    Cli::from_arg_matches(&matches)
}

/// Whether `arg` is an option that takes the next word as its value (`--image debian`).
fn value_expected(arg: &OsString) -> bool {
    value_options().iter().any(|option| arg == option.as_str())
}

/// The options that take a value, as they are written on the command line (`--image`, `-c`).
pub fn value_options() -> Vec<String> {
    let mut options = Vec::new();
    for arg in command().get_arguments() {
        if !arg.get_action().takes_values() {
            continue;
        }
        options.extend(arg.get_long().map(|long| format!("--{long}")));
        options.extend(arg.get_short().map(|short| format!("-{short}")));
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        parse(
            std::iter::once("toolbox")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
        .unwrap()
    }

    fn command(cli: &Cli) -> Vec<String> {
        match &cli.action {
            Some(Action::Run { command }) | Some(Action::External(command)) => command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            _ => Vec::new(),
        }
    }

    fn refused(args: &[&str]) -> String {
        let args = std::iter::once("toolbox").chain(args.iter().copied());
        parse(args.map(OsString::from)).unwrap_err().to_string()
    }

    #[test]
    fn options_apply_where_they_mean_something_and_are_refused_elsewhere() {
        for (args, option, sub) in [
            (&["config", "--dry-run"][..], "--dry-run", "config"),
            (&["list", "--storage", "copy"], "--storage", "list"),
            (&["--rm", "rm", "x"], "--rm", "rm"),
            (&["-c", "ls", "list"], "-c", "list"),
            (&["import", "-", "--target", "web"], "--target", "import"),
            (&["completions", "bash", "-v"], "--verbose", "completions"),
        ] {
            let error = refused(args);
            assert!(
                error.contains(&format!("`{option}` does not apply to `toolbox {sub}`")),
                "{args:?}: {error}"
            );
        }
        for args in [
            &["update", "--storage", "overlay"][..],
            &["--image", "debian", "config"],
            &["list", "--json", "-q"],
            &["import", "-", "--name", "x"],
            &["--dry-run", "--target", "web", "run", "ss"],
            &["--dry-run", "ss", "-ltnp"],
            &["manpages", "/tmp/man"],
            &["--name", "x", "update"],
        ] {
            let args = std::iter::once("toolbox").chain(args.iter().copied());
            assert!(parse(args.map(OsString::from)).is_ok());
        }
    }

    #[test]
    fn a_subcommands_help_lists_only_its_options() {
        let help = |sub: &str| {
            let args: Vec<OsString> = ["toolbox", sub, "--help"].map(OsString::from).to_vec();
            let rendered = match parse(args.clone()) {
                Err(e) => e.render().to_string(),
                Ok(_) => panic!("--help parsed"),
            };
            filter_help(&rendered, &args)
        };
        let update = help("update");
        assert!(
            update.contains("--storage <MODE>") && update.contains("--force"),
            "{update}"
        );
        assert!(
            !update.contains("--dry-run") && !update.contains("--rm "),
            "{update}"
        );
        let config = help("config");
        assert!(
            config.contains("--target <CONTAINER>") && !config.contains("--show-secrets"),
            "{config}"
        );
        let run = help("run");
        assert!(run.contains("--dry-run") && run.contains("--rm"), "{run}");
    }

    #[test]
    fn bare_toolbox_enters_a_shell() {
        let cli = cli(&[]);
        assert!(cli.action.is_none() && cli.shell_command.is_none());
    }

    #[test]
    fn commands_in_every_form() {
        assert_eq!(command(&cli(&["strace", "-p", "1"])), ["strace", "-p", "1"]);
        assert_eq!(
            command(&cli(&["run", "strace", "-p", "1"])),
            ["strace", "-p", "1"]
        );
        assert_eq!(command(&cli(&["run", "--", "ls", "-l"])), ["ls", "-l"]);
        assert_eq!(
            command(&cli(&["--", "rm", "-rf", "/tmp/x"])),
            ["rm", "-rf", "/tmp/x"]
        );
        assert_eq!(
            command(&cli(&["--image", "debian", "--", "run", "x"])),
            ["run", "x"]
        );
        assert_eq!(command(&cli(&["run", "run"])), ["run"]);
        assert_eq!(
            command(&cli(&["run", "rm", "-rf", "/tmp/x"])),
            ["rm", "-rf", "/tmp/x"]
        );
        assert_eq!(command(&cli(&["--", "list"])), ["list"]);
        assert_eq!(
            command(&cli(&["--storage", "overlay", "--", "update", "x"])),
            ["update", "x"]
        );
    }

    #[test]
    fn options_before_the_command_are_toolbox_ones() {
        let parsed = cli(&[
            "--image",
            "debian",
            "--tag=bookworm",
            "-q",
            "--dry-run",
            "gdb",
            "--image",
            "x",
        ]);
        assert_eq!(parsed.options.image.as_deref(), Some("debian"));
        assert_eq!(parsed.options.tag.as_deref(), Some("bookworm"));
        assert!(parsed.options.quiet && parsed.options.dry_run);
        assert_eq!(command(&parsed), ["gdb", "--image", "x"]);
        let parsed = cli(&["run", "--name", "dbg", "--", "true"]);
        assert_eq!(parsed.options.name.as_deref(), Some("dbg"));
        assert_eq!(command(&parsed), ["true"]);
    }

    #[test]
    fn shell_command_for_login_shell_use() {
        let cli = cli(&["-c", "ps -p 1; ls /media/root"]);
        assert_eq!(cli.shell_command.unwrap(), "ps -p 1; ls /media/root");
    }

    #[test]
    fn management_commands() {
        assert!(matches!(
            cli(&["list", "--json"]).action,
            Some(Action::List { json: true, .. })
        ));
        assert!(matches!(
            cli(&["completions", "bash"]).action,
            Some(Action::Completions { shell: Shell::Bash })
        ));
        assert!(matches!(
            cli(&["rm", "--all", "-f"]).action,
            Some(Action::Rm {
                all: true,
                force: true,
                ..
            })
        ));
        let Some(Action::Rm { names, .. }) = cli(&["rm", "a", "b"]).action else {
            panic!()
        };
        assert_eq!(names, ["a", "b"]);
        assert!(matches!(
            cli(&["update"]).action,
            Some(Action::Update { name: None, .. })
        ));
        assert!(matches!(
            cli(&["config", "--path"]).action,
            Some(Action::Config { path: true })
        ));
    }

    #[test]
    fn bad_usage_is_an_error() {
        let parse = |args: &[&str]| {
            parse(
                std::iter::once("toolbox")
                    .chain(args.iter().copied())
                    .map(OsString::from),
            )
        };
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["run"]).is_err());
        assert!(parse(&["-q", "-v"]).is_err());
        assert!(parse(&["rm"]).is_err());
        assert!(parse(&["rm", "--all", "x"]).is_err());
    }
}
