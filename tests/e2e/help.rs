//! What toolbox says about itself, as a person meets it: `--help` for every subcommand,
//! completions loaded into a real bash, and the manual pages rendered by `man -l`. These
//! need no daemon; they need bash and man-db, and fail without them when
//! `TOOLBOX_E2E=required`.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{describe, status, stdout};

fn toolbox() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_toolbox"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

/// Whether `program` can run; when it cannot, the test fails if required, else skips.
fn have(program: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        if std::env::var("TOOLBOX_E2E").as_deref() == Ok("required") {
            panic!(
                "TOOLBOX_E2E=required but {program} is missing (scripts/setup-host installs it)"
            );
        }
        eprintln!("skipped {test}: {program} is missing");
    }
    found
}

#[test]
fn every_subcommand_explains_itself_with_examples() {
    for sub in [
        "run",
        "list",
        "rm",
        "update",
        "config",
        "completions",
        "manpages",
    ] {
        let out = toolbox().args([sub, "--help"]).output().unwrap();
        assert_eq!(status(&out), 0, "{sub}: {}", describe(&out));
        let help = stdout(&out);
        let purpose = help.lines().next().unwrap_or_default();
        assert!(
            purpose.len() > 10 && !purpose.starts_with("Usage"),
            "{sub}: no one-line purpose: {help}"
        );
        assert!(help.contains("Examples:\n  toolbox "), "{sub}: {help}");
        assert!(help.contains("Options:"), "{sub}: {help}");
    }
    let out = toolbox().arg("--help").output().unwrap();
    for example in [
        "toolbox strace -p 1234",
        "toolbox -c 'dnf install -y tcpdump && tcpdump -i eth0'",
        "toolbox --image debian --tag bookworm",
        "toolbox list",
        "toolbox update",
    ] {
        assert!(stdout(&out).contains(example), "{example}");
    }
}

/// Runs the bash completion for the words of `line` (the last one being completed) and
/// returns the candidates.
fn complete(script: &Path, toolboxes: &Path, line: &str) -> Vec<String> {
    let program = format!(
        r#"source {script}
COMP_LINE={line:?}
COMP_POINT=${{#COMP_LINE}}
read -r -a COMP_WORDS <<<"$COMP_LINE"
[[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))
function=$(complete -p toolbox | grep -o -- '-F [^ ]*' | cut -d' ' -f2)
"$function" toolbox "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        script = script.display()
    );
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_toolbox")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out: Output = Command::new("bash")
        .args(["--norc", "-c", &program])
        .env_clear()
        .env("PATH", path)
        .env("TOOLBOX_DIRECTORY", toolboxes)
        .env("USER", "tester")
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    stdout(&out).lines().map(String::from).collect()
}

#[test]
fn bash_completes_subcommands_and_toolbox_names() {
    if !have("bash", "bash_completes_subcommands_and_toolbox_names") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Two toolboxes as the CoreOS script left them: `list --names` finds them without a
    // daemon.
    let toolboxes = dir.path().join("toolboxes");
    for name in ["tester-debug", "tester-fedora-latest"] {
        fs::create_dir_all(toolboxes.join(name).join("etc")).unwrap();
        fs::write(toolboxes.join(name).join("etc/os-release"), "").unwrap();
    }
    let out = toolbox().args(["completions", "bash"]).output().unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let script = dir.path().join("toolbox.bash");
    fs::write(&script, &out.stdout).unwrap();

    assert_eq!(complete(&script, &toolboxes, "toolbox li"), ["list"]);
    assert_eq!(complete(&script, &toolboxes, "toolbox upd"), ["update"]);
    assert_eq!(
        complete(&script, &toolboxes, "toolbox rm "),
        ["tester-debug", "tester-fedora-latest"]
    );
    assert_eq!(
        complete(&script, &toolboxes, "toolbox --image x rm --force tester-d"),
        ["tester-debug"]
    );
    assert_eq!(
        complete(&script, &toolboxes, "toolbox update tester-f"),
        ["tester-fedora-latest"]
    );
    assert!(complete(&script, &toolboxes, "toolbox rm --").contains(&"--force".to_string()));
}

#[test]
fn man_renders_the_generated_pages() {
    if !have("man", "man_renders_the_generated_pages") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = toolbox().arg("manpages").arg(dir.path()).output().unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let render = |page: &str| {
        let out = Command::new("man")
            .arg("-l")
            .arg(dir.path().join(page))
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        assert_eq!(status(&out), 0, "{page}: {}", describe(&out));
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("warning"),
            "{page}: {}",
            describe(&out)
        );
        stdout(&out)
    };
    let toolbox_page = render("man1/toolbox.1");
    for text in ["NAME", "SYNOPSIS", "--storage", "completions", "Examples:"] {
        assert!(toolbox_page.contains(text), "toolbox(1) lacks {text}");
    }
    let conf_page = render("man5/toolbox.conf.5");
    for key in toolbox::model::config::KEYS {
        assert!(
            conf_page.contains(key.name),
            "toolbox.conf(5) lacks {}",
            key.name
        );
    }
    assert!(conf_page.contains("--bind=/:/media/root"));
}
