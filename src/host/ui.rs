//! ui: how toolbox speaks on stderr. Every message starts `toolbox: `, warnings say
//! `warning:`; colour marks errors and warnings only when stderr is a terminal and
//! `NO_COLOR` is unset or empty (no-color.org). Long work (pulling, unpacking) shows
//! progress: indicatif bars redrawn in place on a terminal and cleared when done, a plain
//! line now and then otherwise, nothing with `-q`. Progress always ends before
//! systemd-nspawn starts, so it never mixes with the command's own output. stdout is never
//! written here: it belongs to the command and to `list`'s table.

use std::ffi::OsStr;
use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::host::NO_COLOR;

/// How often the plain-line form of progress speaks.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Whether stderr gets colour: a terminal, and `NO_COLOR` unset or empty.
pub fn colour() -> bool {
    static COLOUR: OnceLock<bool> = OnceLock::new();
    *COLOUR.get_or_init(|| {
        std::io::stderr().is_terminal()
            && std::env::var_os(NO_COLOR).is_none_or(|value| value.is_empty())
    })
}

/// What is being done: `toolbox: MESSAGE`. Every message goes through [`escaped`]: a
/// path or name from an image, an archive or a daemon in it cannot drive the terminal.
pub fn say(message: impl Display) {
    let message = escaped(&message.to_string());
    line(format_args!("toolbox: {message}"));
}

/// One line on stderr. A stderr nobody reads any more (`2>&1 | head`, with SIGPIPE
/// ignored during a container session) is no reason to fail.
fn line(text: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Something wrong that does not stop toolbox: `toolbox: warning: MESSAGE`, secrets
/// hidden ([`redact`]).
pub fn warn(message: impl Display) {
    let message = escaped(&redact(&message.to_string()));
    if colour() {
        line(format_args!("toolbox: \x1b[1;33mwarning:\x1b[0m {message}"));
    } else {
        line(format_args!("toolbox: warning: {message}"));
    }
}

/// Why toolbox stopped, on one line: `toolbox: MESSAGE`, secrets hidden ([`redact`]).
pub fn error(message: impl Display) {
    let message = escaped(&redact(&message.to_string()));
    if colour() {
        line(format_args!("\x1b[1;31mtoolbox:\x1b[0m {message}"));
    } else {
        line(format_args!("toolbox: {message}"));
    }
}

/// PIDs for a message: `12, 345`.
pub fn pid_list(pids: &[i32]) -> String {
    pids.iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Quiet,
    /// Bars redrawn in place.
    Terminal,
    /// A plain line now and then (stderr is a file or a pipe).
    Lines,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        if quiet {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            Progress::Terminal
        } else {
            Progress::Lines
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("the progress templates are valid")
}

/// A pull: on a terminal a bar per layer (bytes done and total) under a line with the
/// total; otherwise a line per layer each time its state changes.
pub struct PullProgress {
    mode: Progress,
    bars: MultiProgress,
    total: Option<ProgressBar>,
    /// Per layer: ID, last status, bytes done and total, and its bar.
    layers: Vec<Layer>,
}

struct Layer {
    id: String,
    status: String,
    done: u64,
    size: u64,
    bar: Option<ProgressBar>,
}

impl PullProgress {
    pub fn new(mode: Progress) -> PullProgress {
        let bars = MultiProgress::new();
        let total = (mode == Progress::Terminal).then(|| {
            let bar = bars.add(ProgressBar::new(0));
            bar.set_style(style(
                "pulling {msg}: {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {elapsed})",
            ));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        PullProgress {
            mode,
            bars,
            total,
            layers: Vec::new(),
        }
    }

    /// One message of the daemon's pull stream.
    pub fn update(
        &mut self,
        id: Option<&str>,
        status: Option<&str>,
        done: Option<i64>,
        size: Option<i64>,
    ) {
        if self.mode == Progress::Quiet {
            return;
        }
        let status = status.unwrap_or_default();
        let Some(id) = id else {
            // Overall messages ("Pulling from library/debian", "Digest: ...").
            if self.mode == Progress::Lines {
                say(status);
            }
            return;
        };
        let index = match self.layers.iter().position(|l| l.id == id) {
            Some(index) => index,
            None => {
                let bar = (self.mode == Progress::Terminal).then(|| {
                    let bar = self.bars.add(ProgressBar::new(0));
                    bar.set_style(style(
                        "  {prefix} {msg:<18} {binary_bytes:>10}/{binary_total_bytes}",
                    ));
                    bar.set_prefix(id.to_string());
                    bar
                });
                self.layers.push(Layer {
                    id: id.to_string(),
                    status: String::new(),
                    done: 0,
                    size: 0,
                    bar,
                });
                self.layers.len() - 1
            }
        };
        let layer = &mut self.layers[index];
        let changed = layer.status != status;
        layer.status = status.to_string();
        layer.done = done.map_or(layer.done, |d| d.max(0) as u64);
        layer.size = size.map_or(layer.size, |s| s.max(0) as u64);
        if status.contains("complete") || status == "Already exists" {
            layer.done = layer.size;
        }
        match self.mode {
            Progress::Terminal => {
                if let Some(bar) = &layer.bar {
                    bar.set_message(status.to_string());
                    bar.set_length(layer.size);
                    bar.set_position(layer.done);
                }
                if let Some(total) = &self.total {
                    let complete = self
                        .layers
                        .iter()
                        .filter(|l| l.status.contains("complete") || l.status == "Already exists")
                        .count();
                    total.set_message(format!("{complete}/{} layers", self.layers.len()));
                    total.set_length(self.layers.iter().map(|l| l.size).sum());
                    total.set_position(self.layers.iter().map(|l| l.done).sum());
                }
            }
            Progress::Lines if changed => say(format!("pulling {id}: {status}")),
            _ => {}
        }
    }

    /// Clears the bars.
    pub fn finish(self) {
        for layer in &self.layers {
            if let Some(bar) = &layer.bar {
                bar.finish_and_clear();
            }
        }
        if let Some(total) = &self.total {
            total.finish_and_clear();
        }
        let _ = self.bars.clear();
    }
}

/// An export being unpacked: bytes, entries, rate and time so far.
pub struct UnpackProgress {
    mode: Progress,
    bar: Option<ProgressBar>,
    started: Instant,
    spoke: Instant,
}

impl UnpackProgress {
    pub fn new(mode: Progress) -> UnpackProgress {
        let bar = (mode == Progress::Terminal).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(style(
                "{spinner} unpacking {binary_bytes} ({binary_bytes_per_sec}), {msg} entries, {elapsed}",
            ));
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        let now = Instant::now();
        UnpackProgress {
            mode,
            bar,
            started: now,
            spoke: now,
        }
    }

    pub fn update(&mut self, bytes: u64, entries: u64) {
        match self.mode {
            Progress::Terminal => {
                if let Some(bar) = &self.bar {
                    bar.set_position(bytes);
                    bar.set_message(entries.to_string());
                }
            }
            Progress::Lines if self.spoke.elapsed() >= LINE_EVERY => {
                self.spoke = Instant::now();
                let seconds = self.started.elapsed().as_secs_f64();
                say(format!(
                    "unpacking: {} MB, {entries} entries, {:.0} MB/s, {seconds:.0} s",
                    bytes / 1_000_000,
                    bytes as f64 / 1e6 / seconds.max(0.001)
                ));
            }
            _ => {}
        }
    }

    /// Clears the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Stands for a hidden secret in what toolbox prints.
pub const HIDDEN: &str = "***";

/// Parts of a variable's name that mark its value as a secret.
const SECRET_NAMES: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "TOKEN",
    "CREDENTIAL",
    "API_KEY",
    "APIKEY",
    "ACCESS_KEY",
    "PRIVATE_KEY",
];

/// Text as toolbox shows it: control characters (newlines, terminal escape sequences)
/// escaped as Rust writes them (`\n`, `\u{1b}`), so it can neither break a line nor drive
/// the terminal; the rest as it is. Everything toolbox prints goes through it: messages
/// ([`say`], [`warn`], [`error`]), printed commands ([`shown`]), tables.
pub fn escaped(text: &str) -> String {
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_debug().collect(),
            false => c.to_string(),
        })
        .collect()
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn quote(word: &OsStr) -> String {
    let bytes = word.as_bytes();
    let plain = |b: &u8| b.is_ascii_alphanumeric() || b"_-./:=@%+,".contains(b);
    if !bytes.is_empty() && bytes.iter().all(plain) {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    format!(
        "'{}'",
        String::from_utf8_lossy(bytes).replace('\'', r"'\''")
    )
}

/// A command as printed: secrets hidden (see [`redact`]) unless `show_secrets`.
pub fn shown(command: &impl Display, show_secrets: bool) -> String {
    let lines = match show_secrets {
        true => command.to_string(),
        false => redact(&command.to_string()),
    };
    // A command of several lines stays so; each line is shown escaped.
    lines.lines().map(escaped).collect::<Vec<_>>().join("\n")
}

/// `text` with secrets hidden, for messages and printed commands: the password (or lone
/// token) in a URL's `user:password@` part (proxy settings, `DOCKER_HOST`), and the value
/// in `NAME=value` when the name looks like a secret's (`--setenv=API_TOKEN=...`).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let (before, after) = rest.split_at(scheme_end + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| c == '/' || c == '\'' || c.is_whitespace())
            .unwrap_or(after.len());
        match after[..authority_end].rfind('@') {
            Some(at) => {
                let userinfo = &after[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:{HIDDEN}")),
                    None => out.push_str(HIDDEN),
                }
                rest = &after[at..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    hide_secret_values(&out)
}

/// `NAME=value` words whose name looks like a secret's, with the value hidden. Words are
/// split at spaces outside single quotes, as printed commands quote them: a quote opens
/// at the start of a word and closes before a space or the end (so the apostrophe in
/// "host's" opens nothing).
fn hide_secret_values(text: &str) -> String {
    let mut words = Vec::new();
    let (mut start, mut quoted) = (0, false);
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        match c {
            '\'' if !quoted && i == start => quoted = true,
            '\'' if quoted && matches!(bytes.get(i + 1), None | Some(b' ')) => quoted = false,
            ' ' if !quoted => {
                words.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    words.push(&text[start..]);
    let hidden: Vec<String> = words.into_iter().map(hide_if_secret).collect();
    hidden.join(" ")
}

/// Whether the value of variable `name` may be a secret: its name looks like a secret's
/// (`API_TOKEN`), or it holds a URL with a password or token in it (a proxy's
/// `http://user:password@host`).
pub fn may_be_secret(name: &str, value: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_NAMES.iter().any(|part| upper.contains(part)) || redact(value) != value
}

fn hide_if_secret(word: &str) -> String {
    let quoted = word.len() > 1 && word.starts_with('\'') && word.ends_with('\'');
    let inner = if quoted {
        &word[1..word.len() - 1]
    } else {
        word
    };
    let assignment = inner.strip_prefix("--setenv=").unwrap_or(inner);
    let Some((name, _)) = assignment.split_once('=') else {
        return word.to_string();
    };
    let upper = name.to_ascii_uppercase();
    if !SECRET_NAMES.iter().any(|part| upper.contains(part)) {
        return word.to_string();
    }
    let kept = &inner[..inner.len() - assignment.len() + name.len() + 1];
    match quoted {
        true => format!("'{kept}{HIDDEN}'"),
        false => format!("{kept}{HIDDEN}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote(OsStr::new("--bind=/a:/b")), "--bind=/a:/b");
        assert_eq!(quote(OsStr::new("")), "''");
        assert_eq!(quote(OsStr::new("a b")), "'a b'");
        assert_eq!(quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(quote(OsStr::new("$HOME")), "'$HOME'");
    }

    #[test]
    fn secrets_are_hidden() {
        for (text, shown) in [
            (
                "--setenv=https_proxy=http://alice:s3cret@proxy:3128/",
                "--setenv=https_proxy=http://alice:***@proxy:3128/",
            ),
            (
                "cannot reach tcp://tok3n@docker.example:2376 now",
                "cannot reach tcp://***@docker.example:2376 now",
            ),
            (
                "'--setenv=GITHUB_TOKEN=ghp abc' --setenv=DB_PASSWORD=x --setenv=PATH=/bin",
                "'--setenv=GITHUB_TOKEN=***' --setenv=DB_PASSWORD=*** --setenv=PATH=/bin",
            ),
            (
                "http://proxy:3128 and https://user@host/x: plain",
                "http://proxy:3128 and https://***@host/x: plain",
            ),
            ("no secrets here = fine", "no secrets here = fine"),
            (
                "the host's `/` and API_TOKEN=abc kept apart",
                "the host's `/` and API_TOKEN=*** kept apart",
            ),
        ] {
            assert_eq!(redact(text), shown, "{text}");
        }
    }
}
