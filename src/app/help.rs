//! help: what toolbox says about itself beyond `--help`: shell completion scripts and the
//! manual pages toolbox(1) and toolbox.conf(5). All are generated from the clap
//! definitions and the settings table, so they cannot drift from what toolbox accepts.
//! Writes only where it is asked to.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::app::cli::{self, Shell};
use crate::model::config::{self, KEYS};

/// Subcommands that take toolbox names.
const NAME_TAKERS: [&str; 2] = ["rm", "update"];

/// `toolbox completions SHELL`: the script on standard output.
pub fn completions_command(shell: Shell) -> Result<u8> {
    completions(shell, &mut std::io::stdout().lock())?;
    Ok(0)
}

/// `toolbox manpages [DIR]`: the pages written, one path a line.
pub fn manpages_command(directory: &Path) -> Result<u8> {
    for page in write_man_pages(directory)? {
        println!("{}", page.display());
    }
    Ok(0)
}

/// Writes the completion script for `shell`: clap_complete's, completing toolbox names
/// where a name is expected, from `toolbox list --names` at the moment of completion.
pub fn completions(shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let mut command = cli::command();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut command, "toolbox", &mut script);
    let script = String::from_utf8_lossy(&script);
    let script = match shell {
        Shell::Bash => format!("{script}{}", bash_names(&cli::value_options())),
        Shell::Zsh => zsh_names(&script),
        Shell::Fish => format!(
            "{script}complete -c toolbox -n \"__fish_seen_subcommand_from {}\" -f \
             -a \"(toolbox list --names 2>/dev/null)\"\n",
            NAME_TAKERS.join(" ")
        ),
    };
    out.write_all(script.as_bytes())
}

/// A bash completion function in front of clap's `_toolbox`: after `rm` or `update` it
/// offers toolbox names, otherwise it hands over.
fn bash_names(value_options: &[String]) -> String {
    format!(
        r#"
# Toolbox names after `rm` and `update`, from `toolbox list --names`.
_toolbox_names() {{
    local i word
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        case $word in
            {values}) ((i++)) ;;
            -*) ;;
            {takers})
                if [[ ${{COMP_WORDS[COMP_CWORD]}} != -* ]]; then
                    COMPREPLY=($(compgen -W "$(toolbox list --names 2>/dev/null)" -- "${{COMP_WORDS[COMP_CWORD]}}"))
                    return 0
                fi
                break ;;
            *) break ;;
        esac
    done
    _toolbox "$@"
}}
complete -F _toolbox_names -o bashdefault -o default toolbox
"#,
        values = value_options.join("|"),
        takers = NAME_TAKERS.join("|"),
    )
}

/// clap's zsh script with toolbox names as the action of the `rm` and `update` name
/// arguments, and the function that lists them.
fn zsh_names(script: &str) -> String {
    let function = r#"(( $+functions[_toolbox_names] )) ||
_toolbox_names() {
    local -a names
    names=(${(f)"$(toolbox list --names 2>/dev/null)"})
    _describe -t toolboxes 'toolbox' names
}

"#;
    let mut out = String::new();
    for line in script.lines() {
        // clap writes a positional as `'*::names -- HELP:_default'`.
        let names_spec = line.contains("::names -- ") || line.contains("::name -- ");
        if names_spec && line.contains(":_default'") {
            out.push_str(&line.replacen(":_default'", ":_toolbox_names'", 1));
        } else {
            if line.starts_with("if [ \"$funcstack[1]\" = \"_toolbox\" ]") {
                out.push_str(function);
            }
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Writes toolbox(1) to `DIR/man1/toolbox.1` and toolbox.conf(5) to
/// `DIR/man5/toolbox.conf.5`; returns the paths written.
pub fn write_man_pages(directory: &Path) -> Result<Vec<PathBuf>> {
    let mut toolbox = Vec::new();
    clap_mangen::Man::new(cli::command())
        .section("1")
        .manual("toolbox")
        .render(&mut toolbox)?;
    let pages = [
        (directory.join("man1").join("toolbox.1"), toolbox),
        (
            directory.join("man5").join("toolbox.conf.5"),
            conf_page().into_bytes(),
        ),
    ];
    let mut written = Vec::new();
    for (path, text) in pages {
        let parent = path.parent().expect("pages are inside a directory");
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// toolbox.conf(5), in roff, from the settings table.
pub fn conf_page() -> String {
    let mut page = format!(
        ".TH TOOLBOX.CONF 5 \"\" \"toolbox {}\" \"File Formats Manual\"\n",
        env!("CARGO_PKG_VERSION")
    );
    page.push_str(
        ".SH NAME\ntoolbox.conf \\- settings of toolbox(1)\n\
         .SH SYNOPSIS\n/etc/default/toolbox, ~/.toolboxrc, \
         ${XDG_CONFIG_HOME:\\-~/.config}/toolbox/toolbox.conf\n\
         .SH DESCRIPTION\n",
    );
    page.push_str(&roff(
        "toolbox reads these files in this order, later ones winning; `TOOLBOX_*` \
         environment variables override them all, and command-line options override those. \
         Under sudo, `~` is the invoking user's home, and a file that anyone but that user \
         and root could change is refused. A missing file is not an error.",
    ));
    page.push_str("\n.PP\n");
    page.push_str(&roff(
        "The files use the shell-assignment syntax of the CoreOS toolbox script's files and \
         are parsed, never executed: `KEY=value`, `export KEY=value`, single and double \
         quotes, backslashes, comments, and `$VAR`, `${VAR}` and `${VAR:-word}` expanding \
         earlier assignments and the environment. Command substitution, pipes and control \
         flow are errors naming the file and line. Unknown keys are warned about unless \
         a later value uses them.",
    ));
    page.push_str("\n.SH SETTINGS\n");
    for key in KEYS {
        page.push_str(&format!(".TP\n.B {}\n{}\n", key.name, roff(key.doc)));
        if key.words {
            page.push_str(".br\nSplit into words like a shell command line.\n");
        }
        let default = match key.default {
            "" => "empty".to_string(),
            value => format!("\\fB{}\\fR", roff(value)),
        };
        page.push_str(&format!(".br\nDefault: {default}\n"));
    }
    page.push_str(".SH EXAMPLE\n.nf\n");
    for line in [
        format!("{}=debian", config::IMAGE),
        format!("{}=bookworm", config::TAG),
        format!(
            "{}=\"$TOOLBOX_BIND '--bind=/srv/my data:/data'\"",
            config::BIND
        ),
        format!("{}=overlay", config::STORAGE),
    ] {
        page.push_str(&roff(&line));
        page.push('\n');
    }
    page.push_str(".fi\n.SH SEE ALSO\ntoolbox(1), systemd\\-nspawn(1)\n");
    page
}

/// Text as roff: backslashes and hyphens escaped, a leading dot or quote neutralised, and
/// `code` in bold.
fn roff(text: &str) -> String {
    let mut out = String::new();
    let mut bold = false;
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            '`' => {
                out.push_str(if bold { "\\fR" } else { "\\fB" });
                bold = !bold;
            }
            c => out.push(c),
        }
    }
    if out.starts_with(['.', '\'']) {
        out.insert_str(0, "\\&");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(shell: Shell) -> String {
        let mut out = Vec::new();
        completions(shell, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn completion_scripts_complete_names() {
        let bash = script(Shell::Bash);
        assert!(bash.contains("complete -F _toolbox_names"));
        assert!(bash.contains("--image|"), "value options are skipped");
        let zsh = script(Shell::Zsh);
        assert!(zsh.contains(":_toolbox_names'"), "{zsh}");
        assert!(zsh.contains("_toolbox_names() {"));
        let fish = script(Shell::Fish);
        assert!(fish.contains("__fish_seen_subcommand_from rm update"));
    }

    #[test]
    fn the_conf_page_documents_every_key() {
        let page = conf_page();
        for key in KEYS {
            assert!(page.contains(&format!(".B {}\n", key.name)), "{}", key.name);
        }
        assert!(page.contains("\\fB\\-\\-bind=/:/media/root"));
        assert_eq!(roff(".x `a-b` \\"), "\\&.x \\fBa\\-b\\fR \\e");
    }
}
