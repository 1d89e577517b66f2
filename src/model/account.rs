//! account: a user of a toolbox's tree, from its own `/etc/passwd` and `/etc/group`, as
//! the C library would find it without NSS. Pure: the files' text goes in.

/// The largest `/etc/passwd` or `/etc/group` of a tree toolbox reads: far above any
/// real one, and a bound on what a device planted there can make toolbox hold.
pub const MAX_FILE: u64 = 16 << 20;

/// A user to run a session's command as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    /// Supplementary groups: those whose member list names the user, and the primary one.
    pub groups: Vec<u32>,
}

/// The user `wanted` (a name, or a numeric UID) in `passwd`, with its groups from `group`.
pub fn find(passwd: &str, group: &str, wanted: &str) -> Option<Account> {
    let numeric: Option<u32> = wanted.parse().ok();
    let account = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, uid, gid, _, home, shell, ..] = fields[..] else {
            return None;
        };
        let uid: u32 = uid.parse().ok()?;
        (name == wanted || numeric == Some(uid)).then(|| Account {
            name: name.to_string(),
            uid,
            gid: gid.parse().unwrap_or(uid),
            home: home.to_string(),
            shell: shell.to_string(),
            groups: Vec::new(),
        })
    });
    let mut account = account.or_else(|| {
        // A UID the tree does not list runs as itself, as `docker run --user 1234` does.
        numeric.map(|uid| Account {
            name: wanted.to_string(),
            uid,
            gid: uid,
            home: "/".to_string(),
            shell: "/bin/sh".to_string(),
            groups: Vec::new(),
        })
    })?;
    let mut groups = vec![account.gid];
    for line in group.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let [_, _, gid, members, ..] = fields[..] else {
            continue;
        };
        let Ok(gid) = gid.parse::<u32>() else {
            continue;
        };
        if members.split(',').any(|m| m == account.name) && !groups.contains(&gid) {
            groups.push(gid);
        }
    }
    account.groups = groups;
    Some(account)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                          core:x:1000:1000::/home/core:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:core,other\ndocker:x:998:core\ncore:x:1000:\n";

    #[test]
    fn users_are_found_by_name_or_uid_with_their_groups() {
        let core = find(PASSWD, GROUP, "core").unwrap();
        assert_eq!(
            (core.uid, core.gid, core.home.as_str(), core.shell.as_str()),
            (1000, 1000, "/home/core", "/bin/bash")
        );
        assert_eq!(core.groups, [1000, 10, 998]);
        assert_eq!(find(PASSWD, GROUP, "65534").unwrap().name, "nobody");
        assert_eq!(find(PASSWD, "", "nobody").unwrap().groups, [65534]);
        let unlisted = find(PASSWD, GROUP, "4242").unwrap();
        assert_eq!(
            (unlisted.uid, unlisted.gid, unlisted.home.as_str()),
            (4242, 4242, "/")
        );
        assert_eq!(find(PASSWD, GROUP, "nonexistent"), None);
    }
}
