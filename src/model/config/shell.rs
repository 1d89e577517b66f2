//! The shell-assignment subset that `/etc/default/toolbox` and `~/.toolboxrc` are written in.
//!
//! The CoreOS script *sourced* these files; toolbox parses them instead and never runs
//! anything. Supported: `KEY=value`, `export KEY=value`, several assignments on one line,
//! single and double quotes, backslash escapes and line continuations, `# comments`, blank
//! lines, `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`, and `~` at the start of a value.
//! Everything else a shell would do (command substitution, pipes, control flow, functions,
//! positional parameters) is an error naming its line.

use std::collections::HashSet;
use std::fmt;

/// One `KEY=value` assignment, with the line it started on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// What a file assigned, in order, and the names its expansions referred to.
#[derive(Debug, Default)]
pub struct Parsed {
    pub assignments: Vec<Assignment>,
    pub referenced: HashSet<String>,
}

/// A syntax error at a line (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for SyntaxError {}

/// Parses `text` as a list of shell assignments. `lookup` answers `$NAME` for names the
/// text has not assigned itself (earlier sources, then the environment); an unset name
/// expands to the empty string, as in the shell.
pub fn parse(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Parsed, SyntaxError> {
    // A byte-order mark, as some editors write at the start of a UTF-8 file.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lexer = Lexer::new(text, Some(lookup));
    let mut parsed = Parsed::default();
    loop {
        lexer.skip_blanks();
        match lexer.peek() {
            None => break,
            Some('\n') => lexer.bump(),
            Some('#') => lexer.skip_comment(),
            Some(_) => lexer.statement(&mut parsed)?,
        }
    }
    parsed.referenced = lexer.referenced;
    Ok(parsed)
}

/// Splits a word-valued setting (`TOOLBOX_BIND`, `TOOLBOX_ENV`, `TOOLBOX_FLAGS`) into words
/// the way the shell splits a command line: blanks separate words, quotes and backslashes
/// group them. Nothing is expanded.
pub fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut lexer = Lexer::new(text, None);
    let mut words = Vec::new();
    loop {
        lexer.skip_blanks();
        match lexer.peek() {
            None => return Ok(words),
            Some('\n') => lexer.bump(),
            Some(_) => words.push(lexer.word(Stop::Blank).map_err(|e| e.message)?),
        }
    }
}

/// The most text `$NAME` expansions may produce in one file. Values refer to earlier ones,
/// so `A=$A$A` repeated doubles a value per line: this bounds the memory a file can ask for.
pub const MAX_EXPANDED: usize = 1 << 20;

/// Answers `$NAME` for names a text has not assigned itself.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// An unquoted blank or newline ends the word (a top-level value).
    Blank,
    /// An unquoted `}` ends the word (the default in `${VAR:-word}`).
    Brace,
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    /// `None` while splitting words: `$` and shell operators are then plain characters.
    lookup: Option<Lookup<'a>>,
    /// Assignments made so far by this text, latest value per name.
    local: Vec<(String, String)>,
    referenced: HashSet<String>,
    /// Bytes produced by expansions so far, against [`MAX_EXPANDED`].
    expanded: usize,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t' || c == '\r'
}

impl<'a> Lexer<'a> {
    fn new(text: &str, lookup: Option<Lookup<'a>>) -> Self {
        Lexer {
            chars: text.chars().collect(),
            pos: 0,
            line: 1,
            lookup,
            local: Vec::new(),
            referenced: HashSet::new(),
            expanded: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn bump(&mut self) {
        if self.peek() == Some('\n') {
            self.line += 1;
        }
        self.pos += 1;
    }

    fn error<T>(&self, line: usize, message: impl Into<String>) -> Result<T, SyntaxError> {
        Err(SyntaxError {
            line,
            message: message.into(),
        })
    }

    fn skip_blanks(&mut self) {
        while let Some(c) = self.peek() {
            if is_blank(c) {
                self.bump();
            } else if c == '\\' && self.peek_at(1) == Some('\n') {
                self.bump();
                self.bump();
            } else {
                break;
            }
        }
    }

    fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' {
                break;
            }
            self.bump();
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek().filter(|&c| is_name_char(c)) {
            name.push(c);
            self.bump();
        }
        name
    }

    /// Whether the input at the cursor is `NAME=`.
    fn at_assignment(&self) -> bool {
        if !self.peek().is_some_and(is_name_start) {
            return false;
        }
        let mut i = self.pos;
        while self.chars.get(i).is_some_and(|&c| is_name_char(c)) {
            i += 1;
        }
        self.chars.get(i) == Some(&'=')
    }

    /// One line's worth: `[export] NAME=value [NAME=value ...] [# comment]`.
    fn statement(&mut self, parsed: &mut Parsed) -> Result<(), SyntaxError> {
        let line = self.line;
        let exported = self.keyword("export");
        if !exported && !self.at_assignment() {
            let word = self.peek_word();
            return self.error(
                line,
                format!("`{word}` is not an assignment; only KEY=value lines are allowed"),
            );
        }
        loop {
            self.skip_blanks();
            match self.peek() {
                None | Some('\n') => return Ok(()),
                Some('#') => {
                    self.skip_comment();
                    return Ok(());
                }
                Some(';') => {
                    // `A=1; B=2` is two statements, as in the shell.
                    self.bump();
                    return Ok(());
                }
                _ => {}
            }
            if !self.at_assignment() {
                if exported && self.peek() == Some('-') {
                    let word = self.peek_word();
                    return self.error(
                        line,
                        format!(
                            "`export {word}`: export's options are not supported; write NAME=value"
                        ),
                    );
                }
                if exported && self.peek().is_some_and(is_name_start) {
                    // `export NAME` marks a variable for export: nothing to record.
                    self.name();
                    continue;
                }
                let word = self.peek_word();
                return self.error(
                    line,
                    format!("`{word}` after an assignment would run a command; nothing is run"),
                );
            }
            let assignment_line = self.line;
            let name = self.name();
            self.bump(); // '='
            let value = self.value()?;
            self.local.push((name.clone(), value.clone()));
            parsed.assignments.push(Assignment {
                name,
                value,
                line: assignment_line,
            });
        }
    }

    /// Consumes `keyword` followed by a blank, if it is there.
    fn keyword(&mut self, keyword: &str) -> bool {
        let matches = keyword
            .chars()
            .enumerate()
            .all(|(i, c)| self.peek_at(i) == Some(c))
            && self.peek_at(keyword.len()).is_some_and(is_blank);
        if matches {
            for _ in 0..keyword.len() {
                self.bump();
            }
        }
        matches
    }

    /// The text up to the next blank, for error messages.
    fn peek_word(&self) -> String {
        self.chars[self.pos..]
            .iter()
            .take_while(|&&c| !is_blank(c) && c != '\n')
            .take(40)
            .collect()
    }

    /// An assignment's value: one word, with `~` expanded at its start.
    fn value(&mut self) -> Result<String, SyntaxError> {
        let mut value = String::new();
        if self.lookup.is_some()
            && self.peek() == Some('~')
            && matches!(
                self.peek_at(1),
                None | Some('/') | Some(' ' | '\t' | '\n' | '\r')
            )
        {
            self.bump();
            value.push_str(&self.variable("HOME")?);
        }
        value.push_str(&self.word(Stop::Blank)?);
        Ok(value)
    }

    fn word(&mut self, stop: Stop) -> Result<String, SyntaxError> {
        let start_line = self.line;
        let mut word = String::new();
        loop {
            let Some(c) = self.peek() else {
                if stop == Stop::Brace {
                    return self.error(start_line, "unterminated `${`");
                }
                return Ok(word);
            };
            match c {
                c if stop == Stop::Blank && (is_blank(c) || c == '\n') => return Ok(word),
                '}' if stop == Stop::Brace => {
                    self.bump();
                    return Ok(word);
                }
                '\\' => {
                    let line = self.line;
                    self.bump();
                    match self.peek() {
                        None => return self.error(self.line, "backslash at end of file"),
                        Some('\n') => {
                            self.bump();
                            let rest = &self.chars[self.pos..];
                            let blank = rest
                                .iter()
                                .take_while(|c| **c != '\n')
                                .all(|c| is_blank(*c));
                            if blank {
                                return self.error(
                                    line,
                                    "`\\` at the end of the line continues the value onto \
                                     the next, which is empty",
                                );
                            }
                        }
                        Some(c) => {
                            word.push(c);
                            self.bump();
                        }
                    }
                }
                '\'' => word.push_str(&self.single_quoted()?),
                '"' => word.push_str(&self.double_quoted()?),
                '$' if self.lookup.is_some() => word.push_str(&self.expansion()?),
                '`' if self.lookup.is_some() => {
                    return self.error(self.line, "command substitution (`...`) is not supported");
                }
                ';' | '&' | '|' | '<' | '>' | '(' | ')' if self.lookup.is_some() => {
                    if c == ';' && stop == Stop::Blank {
                        return Ok(word);
                    }
                    return self.error(
                        self.line,
                        format!("`{c}` is shell syntax toolbox does not run; quote the value"),
                    );
                }
                _ => {
                    word.push(c);
                    self.bump();
                }
            }
        }
    }

    fn single_quoted(&mut self) -> Result<String, SyntaxError> {
        let start_line = self.line;
        self.bump();
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return self.error(start_line, "unterminated single quote"),
                Some('\'') => {
                    self.bump();
                    return Ok(text);
                }
                Some(c) => {
                    text.push(c);
                    self.bump();
                }
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, SyntaxError> {
        let start_line = self.line;
        self.bump();
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return self.error(start_line, "unterminated double quote"),
                Some('"') => {
                    self.bump();
                    return Ok(text);
                }
                Some('\\') => {
                    self.bump();
                    match self.peek() {
                        None => return self.error(start_line, "unterminated double quote"),
                        Some('\n') => self.bump(),
                        Some(c @ ('$' | '`' | '"' | '\\')) => {
                            text.push(c);
                            self.bump();
                        }
                        Some(c) => {
                            text.push('\\');
                            text.push(c);
                            self.bump();
                        }
                    }
                }
                Some('$') if self.lookup.is_some() => text.push_str(&self.expansion()?),
                Some('`') if self.lookup.is_some() => {
                    return self.error(self.line, "command substitution (`...`) is not supported");
                }
                Some(c) => {
                    text.push(c);
                    self.bump();
                }
            }
        }
    }

    /// `$NAME`, `${NAME}`, `${NAME:-word}` or `${NAME-word}`, with the cursor on `$`.
    fn expansion(&mut self) -> Result<String, SyntaxError> {
        let line = self.line;
        self.bump();
        match self.peek() {
            Some('(') if self.peek_at(1) == Some('(') => {
                self.error(line, "arithmetic expansion ($((...))) is not supported")
            }
            Some('(') => self.error(line, "command substitution ($(...)) is not supported"),
            Some('{') => {
                self.bump();
                if !self.peek().is_some_and(is_name_start) {
                    return self.error(line, "`${` must be followed by a variable name");
                }
                let name = self.name();
                let value = self.variable(&name)?;
                match self.peek() {
                    None => self.error(line, "unterminated `${`"),
                    Some('}') => {
                        self.bump();
                        Ok(value)
                    }
                    Some(':') if self.peek_at(1) == Some('-') => {
                        self.bump();
                        self.bump();
                        let default = self.word(Stop::Brace)?;
                        Ok(if value.is_empty() { default } else { value })
                    }
                    Some('-') => {
                        self.bump();
                        let default = self.word(Stop::Brace)?;
                        let set = self.is_set(&name);
                        Ok(if set { value } else { default })
                    }
                    _ => self.error(
                        line,
                        format!("`${{{name}` uses an expansion toolbox does not support"),
                    ),
                }
            }
            Some(c) if is_name_start(c) => {
                let name = self.name();
                self.variable(&name)
            }
            Some(c) if c.is_ascii_digit() || "@*#?$!-".contains(c) => self.error(
                line,
                format!("`${c}` (a special shell parameter) is not supported"),
            ),
            // A `$` that starts no expansion stands for itself, as in the shell.
            _ => Ok("$".to_string()),
        }
    }

    fn local_value(&self, name: &str) -> Option<&String> {
        self.local
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    fn is_set(&self, name: &str) -> bool {
        self.local_value(name).is_some() || self.lookup.and_then(|lookup| lookup(name)).is_some()
    }

    fn variable(&mut self, name: &str) -> Result<String, SyntaxError> {
        self.referenced.insert(name.to_string());
        let value = match self.local_value(name) {
            Some(value) => value.clone(),
            None => self
                .lookup
                .and_then(|lookup| lookup(name))
                .unwrap_or_default(),
        };
        self.expanded += value.len();
        if self.expanded > MAX_EXPANDED {
            return self.error(
                self.line,
                format!(
                    "`${name}` makes this file's expansions exceed {} KiB; values that refer to themselves grow without end",
                    MAX_EXPANDED >> 10
                ),
            );
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/core".into()),
            "TOOLBOX_BIND" => Some("--bind=/:/media/root".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn assignments(text: &str) -> Vec<(String, String)> {
        parse(text, &env)
            .unwrap()
            .assignments
            .into_iter()
            .map(|a| (a.name, a.value))
            .collect()
    }

    fn one(text: &str) -> String {
        let all = assignments(text);
        assert_eq!(all.len(), 1, "{text:?} gave {all:?}");
        all[0].1.clone()
    }

    fn error(text: &str) -> SyntaxError {
        parse(text, &env).unwrap_err()
    }

    #[test]
    fn plain_and_exported_assignments() {
        assert_eq!(one("TOOLBOX_DOCKER_IMAGE=debian"), "debian");
        assert_eq!(one("export TOOLBOX_DOCKER_TAG=bookworm"), "bookworm");
        assert_eq!(one("  TOOLBOX_USER=root   # trailing comment"), "root");
        assert_eq!(one("EMPTY_VALUE="), "");
        assert_eq!(one("A=x#y"), "x#y");
    }

    #[test]
    fn comments_blank_lines_and_crlf() {
        let text = "# a comment\n\n   \t\nA=1\r\n# another\nB=2\n";
        assert_eq!(
            assignments(text),
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(one("A='single $HOME \"x\"'"), "single $HOME \"x\"");
        assert_eq!(
            one(r#"A="double $HOME 'x' \" \$ \\ \n""#),
            r#"double /home/core 'x' " $ \ \n"#
        );
        assert_eq!(one(r"A=back\ slash\$x"), "back slash$x");
        assert_eq!(one("A=con'cat'\"enated\""), "concatenated");
    }

    #[test]
    fn line_continuations_and_multiline_quotes() {
        let parsed = parse("A=one\\\ntwo\nB=\"x\ny\"\nC=3", &env).unwrap();
        let lines: Vec<_> = parsed
            .assignments
            .iter()
            .map(|a| (a.value.as_str(), a.line))
            .collect();
        assert_eq!(lines, vec![("onetwo", 1), ("x\ny", 3), ("3", 5)]);
    }

    #[test]
    fn expansions_see_earlier_lines_then_lookup() {
        assert_eq!(
            one("TOOLBOX_BIND=\"$TOOLBOX_BIND --bind=/srv:/srv\""),
            "--bind=/:/media/root --bind=/srv:/srv"
        );
        let all = assignments("X=1\nY=${X}2\nX=3\nZ=$X$UNSET.");
        assert_eq!(all[1].1, "12");
        assert_eq!(all[3].1, "3.");
        assert_eq!(one("A=${UNSET:-fallback $HOME}"), "fallback /home/core");
        assert_eq!(one("A=${EMPTY:-x}"), "x");
        assert_eq!(one("A=${EMPTY-x}"), "");
        assert_eq!(one("A=${UNSET-x}"), "x");
        assert_eq!(one("A=cost$"), "cost$");
    }

    #[test]
    fn tilde_at_value_start() {
        assert_eq!(one("TOOLBOX_DIRECTORY=~/toolboxes"), "/home/core/toolboxes");
        assert_eq!(one("A=~"), "/home/core");
        assert_eq!(one("A=x~"), "x~");
        assert_eq!(one("A='~'"), "~");
    }

    #[test]
    fn several_assignments_on_a_line() {
        assert_eq!(
            assignments("A=1 B=\"$A 2\"; export C=3 D"),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "1 2".into()),
                ("C".into(), "3".into())
            ]
        );
    }

    #[test]
    fn referenced_names_are_reported() {
        let parsed = parse("MY_BINDS=--bind=/a\nTOOLBOX_BIND=\"$MY_BINDS\"", &env).unwrap();
        assert!(parsed.referenced.contains("MY_BINDS"));
    }

    #[test]
    fn a_byte_order_mark_and_continued_lines_are_read_as_the_shell_reads_them() {
        let parsed = parse("\u{feff}A=1\nB=x\\\ny\n", &env).unwrap();
        let values: Vec<(&str, &str)> = parsed
            .assignments
            .iter()
            .map(|a| (a.name.as_str(), a.value.as_str()))
            .collect();
        assert_eq!(values, [("A", "1"), ("B", "xy")]);
        // Only at the start of the file.
        assert!(parse("A=1\n\u{feff}B=2", &env).is_err());
    }

    #[test]
    fn everything_else_is_an_error_naming_its_line() {
        let cases = [
            ("A=1\nB=$(id)", 2, "command substitution"),
            ("A=`id`", 1, "command substitution"),
            ("A=\"`id`\"", 1, "command substitution"),
            ("\n\nif true; then A=1; fi", 3, "`if` is not an assignment"),
            ("A=1\nf() { :; }", 2, "`f()` is not an assignment"),
            ("echo hi", 1, "`echo` is not an assignment"),
            ("A=1 ls", 1, "`ls` after an assignment"),
            ("A=1 | cat", 1, "`|`"),
            ("A=x>y", 1, "`>`"),
            ("A=x && B=1", 1, "after an assignment"),
            ("A='open\n\n", 1, "unterminated single quote"),
            ("A=1\nB=\"open", 2, "unterminated double quote"),
            ("A=${B", 1, "unterminated `${`"),
            ("A=${B#x}", 1, "expansion toolbox does not support"),
            ("A=${1}", 1, "variable name"),
            ("A=$1", 1, "special shell parameter"),
            ("A=x\\", 1, "backslash at end of file"),
            (
                "A=$((1+2))",
                1,
                "arithmetic expansion ($((...))) is not supported",
            ),
            (
                "export -n A",
                1,
                "`export -n`: export's options are not supported",
            ),
            (
                "A=1\nB=x\\\n",
                2,
                "continues the value onto the next, which is empty",
            ),
            (
                "A=1\nB=\\\n  \nC=1",
                2,
                "continues the value onto the next, which is empty",
            ),
            (". /etc/profile", 1, "`.` is not an assignment"),
        ];
        for (text, line, message) in cases {
            let err = error(text);
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.message.contains(message), "{text:?}: {err}");
        }
    }

    #[test]
    fn nothing_is_run() {
        // A file that would create this path if executed must only ever fail to parse.
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let text = format!(
            "A=$(touch {m})\nB=`touch {m}`\ntouch {m}",
            m = marker.display()
        );
        assert!(parse(&text, &env).is_err());
        assert!(!marker.exists());
    }

    #[test]
    fn words_split_like_the_shell() {
        assert_eq!(
            split_words("--bind=/:/media/root  \"--bind=/my dir:/x\" '--setenv=A=b c'").unwrap(),
            vec![
                "--bind=/:/media/root",
                "--bind=/my dir:/x",
                "--setenv=A=b c"
            ]
        );
        assert_eq!(split_words(" \n\t").unwrap(), Vec::<String>::new());
        assert_eq!(
            split_words(r"a\ b $HOME x;y").unwrap(),
            vec!["a b", "$HOME", "x;y"]
        );
        assert!(split_words("'open").unwrap_err().contains("unterminated"));
    }
}
