//! files: reading a settings file as a root process must: the file actually opened
//! checked the way sshd's StrictModes checks `authorized_keys`, and nothing of a refused
//! file shown.

use std::io;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::host::Invoker;

/// The largest configuration file toolbox reads: a few assignments need a few hundred
/// bytes, and a file of any length would be held in memory whole.
pub const MAX_FILE: u64 = 1 << 20;

/// Whose settings files a root toolbox trusts (sshd's StrictModes, for a root process
/// reading files a user may have written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trust {
    /// Besides root, the user who may own a settings file and the directories holding it;
    /// `None` when toolbox is not root: its settings are then the user's own business.
    pub owner: Option<u32>,
    /// Under sudo, the invoking user: a file they could not read themselves is refused
    /// unread, so `~/.toolboxrc -> /etc/shadow` shows nothing of the shadow file.
    pub reader: Option<u32>,
}

impl Trust {
    /// For a process with effective user `euid` working for `invoker`.
    pub fn of(invoker: &Invoker, euid: u32) -> Trust {
        match (euid, invoker.on_behalf_of) {
            (0, Some(uid)) => Trust {
                owner: Some(uid),
                reader: Some(uid),
            },
            (0, None) => Trust {
                owner: Some(0),
                reader: None,
            },
            _ => Trust::default(),
        }
    }
}

/// Reads the settings file at `path` (`None` when there is none) after checking the file
/// actually opened: a regular file of at most [`MAX_FILE`] bytes, and with `trust`, owned
/// by root or the trusted user, not writable by others, in directories that are likewise
/// (root's sticky ones, like /tmp, excepted), and readable by the invoking user. Symlinks
/// are followed only to a file that passes.
pub fn read_settings_file(path: &Path, trust: Trust) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let refuse = |why: String| {
        anyhow::anyhow!(
            "refusing {}: {why}, and its settings decide what is bound into a root container; \
             make it yours and `chmod go-w` it",
            path.display()
        )
    };
    let cannot_read = || format!("cannot read {}", path.display());
    // O_NONBLOCK: a FIFO planted there must not hang toolbox before it is refused.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(cannot_read),
    };
    let meta = file.metadata().with_context(cannot_read)?;
    if !meta.is_file() {
        bail!("{}: it is not a regular file", cannot_read());
    }
    if let Some(owner) = trust.owner {
        if meta.uid() != 0 && meta.uid() != owner {
            return Err(refuse(format!("it belongs to user ID {}", meta.uid())));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(refuse(format!(
                "it is writable by others (mode {:o})",
                meta.mode() & 0o777
            )));
        }
        // The directories of the file actually opened, wherever symlinks led.
        let opened = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&file)
        ))
        .with_context(cannot_read)?;
        for dir in opened.ancestors().skip(1) {
            let meta = std::fs::metadata(dir).with_context(cannot_read)?;
            let sticky_root = meta.uid() == 0 && meta.mode() & 0o1000 != 0;
            if meta.uid() != 0 && meta.uid() != owner {
                return Err(refuse(format!(
                    "{} belongs to user ID {}",
                    dir.display(),
                    meta.uid()
                )));
            }
            if meta.mode() & 0o022 != 0 && !sticky_root {
                return Err(refuse(format!(
                    "{} is writable by others (mode {:o})",
                    dir.display(),
                    meta.mode() & 0o777
                )));
            }
        }
    }
    if let Some(reader) = trust.reader {
        let readable =
            meta.mode() & 0o004 != 0 || (meta.uid() == reader && meta.mode() & 0o400 != 0);
        if !readable {
            bail!(
                "refusing {}: the invoking user (ID {reader}) cannot read it themselves",
                path.display()
            );
        }
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(cannot_read)?;
    if bytes.len() as u64 > MAX_FILE {
        bail!(
            "{}: it is larger than {} KiB, which no toolbox configuration needs",
            cannot_read(),
            MAX_FILE >> 10
        );
    }
    Ok(Some(bytes))
}
