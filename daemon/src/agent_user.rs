//! Running an agent under its own uid (`[[agent]] user =`, `group =`, or the
//! daemon-wide `[daemon] agent_user`).
//!
//! Resolution happens when the config is validated (an unknown user or group
//! is an error with its line); so does the check that the daemon may switch
//! users at all ([`missing_privileges`]). At spawn, the child drops to the
//! agent's identity as the first thing after `fork` (see
//! `actors::agent::build_command`): supplementary groups (the user's own, as
//! `initgroups(3)` would set them: what `su` and systemd's `User=` do), then
//! the gid, then the uid. Std's `CommandExt::uid` is not used: it runs
//! `setgroups(0)` and ignores an `EPERM` from it, and it runs before
//! `pre_exec` closures, after which `setgroups` is no longer allowed.
//! After the switch the child checks, as that user, that the working
//! directory, the Python module directory and the credentials directory are
//! usable, and reports which one is not through a pipe ([`Probe`]), so a
//! spawn fails with a message naming the path and the user, not a mystery
//! exit.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// An identity an agent runs as, resolved from the passwd and group databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's own groups, including `gid`); only
    /// `gid` when the uid has no passwd entry.
    pub groups: Vec<u32>,
    /// The passwd name, when the uid has one.
    pub name: Option<String>,
    /// The passwd home directory, when the uid has one.
    pub home: Option<PathBuf>,
}

impl AgentUser {
    /// `nobody (uid 65534)` for messages.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }

    /// `nobody (uid 65534, gid 65534)` for `ironctl agents status`.
    pub fn describe_with_group(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} (uid {}, gid {})", self.uid, self.gid),
            None => format!("uid {}, gid {}", self.uid, self.gid),
        }
    }
}

/// `user = "name"` or `user = 1000` as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdRef {
    Id(u32),
    Name(String),
}

impl<'de> serde::Deserialize<'de> for IdRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<IdRef, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IdRef;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a name such as \"nobody\" or a numeric id such as 65534")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IdRef, E> {
                if v.is_empty() {
                    return Err(E::custom("the name is empty; give a name or a numeric id"));
                }
                Ok(IdRef::Name(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IdRef, E> {
                u32::try_from(v)
                    .ok()
                    .filter(|n| *n != u32::MAX)
                    .map(IdRef::Id)
                    .ok_or_else(|| E::custom(format!("{v} is not a valid id (0 to 4294967294)")))
            }
        }
        d.deserialize_any(V)
    }
}

impl std::fmt::Display for IdRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdRef::Id(n) => write!(f, "{n}"),
            IdRef::Name(s) => write!(f, "{s:?}"),
        }
    }
}

/// Which of `user` and `group` a resolution error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    User,
    Group,
}

/// Resolves `user` (and `group`, default: the user's primary group). The
/// error says which key is wrong and what to do.
pub fn resolve(user: &IdRef, group: Option<&IdRef>) -> Result<AgentUser, (Which, String)> {
    use nix::unistd::{Gid, Group, Uid, User};
    let entry = match user {
        IdRef::Name(n) => match User::from_name(n) {
            Ok(Some(u)) => Some(u),
            Ok(None) => {
                return Err((
                    Which::User,
                    format!(
                        "user {n:?} does not exist on this host; create it (useradd --system {n}) or name an existing user or uid"
                    ),
                ));
            }
            Err(e) => return Err((Which::User, format!("cannot look up user {n:?}: {e}"))),
        },
        IdRef::Id(id) => User::from_uid(Uid::from_raw(*id)).ok().flatten(),
    };
    let uid = match (&entry, user) {
        (Some(u), _) => u.uid.as_raw(),
        (None, IdRef::Id(id)) => *id,
        (None, IdRef::Name(_)) => unreachable!("a name resolves or errors above"),
    };
    let gid = match group {
        Some(IdRef::Name(n)) => match Group::from_name(n) {
            Ok(Some(g)) => g.gid.as_raw(),
            Ok(None) => {
                return Err((
                    Which::Group,
                    format!(
                        "group {n:?} does not exist on this host; create it (groupadd --system {n}), name an existing group or gid, or remove `group` to use the user's primary group"
                    ),
                ));
            }
            Err(e) => return Err((Which::Group, format!("cannot look up group {n:?}: {e}"))),
        },
        // A gid need not have a group entry (containers); it is still a gid.
        Some(IdRef::Id(g)) => *g,
        None => match &entry {
            Some(u) => u.gid.as_raw(),
            None => {
                return Err((
                    Which::User,
                    format!(
                        "uid {uid} has no passwd entry, so it has no primary group; add group = \"NAME\" or a gid"
                    ),
                ));
            }
        },
    };
    let mut groups = match &entry {
        Some(u) => match CString::new(u.name.as_bytes()) {
            Ok(c) => nix::unistd::getgrouplist(&c, Gid::from_raw(gid))
                .map(|g| g.into_iter().map(Gid::as_raw).collect())
                .map_err(|e| {
                    (
                        Which::User,
                        format!("cannot list the groups of user {:?}: {e}", u.name),
                    )
                })?,
            Err(_) => vec![gid],
        },
        None => vec![gid],
    };
    if !groups.contains(&gid) {
        groups.push(gid);
    }
    groups.sort_unstable();
    groups.dedup();
    Ok(AgentUser {
        uid,
        gid,
        groups,
        name: entry.as_ref().map(|u| u.name.clone()),
        home: entry.map(|u| u.dir),
    })
}

/// A capability the daemon needs to run agents under other users, with why.
pub const NEEDED_CAPS: &[(u32, &str, &str)] = &[
    (7, "CAP_SETUID", "switch to the agent's uid"),
    (6, "CAP_SETGID", "set the agent's gid and groups"),
    (
        0,
        "CAP_CHOWN",
        "give the agent its credentials directory and files",
    ),
    (
        1,
        "CAP_DAC_OVERRIDE",
        "replace and remove files in the agent's credentials directory",
    ),
    (5, "CAP_KILL", "signal the agent's processes"),
];

/// The daemon's effective capability set, from `/proc/self/status` (`CapEff`).
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The capabilities of [`NEEDED_CAPS`] missing from `cap_eff`; empty when the
/// daemon may run agents under other users.
pub fn missing_privileges(cap_eff: u64) -> Vec<&'static str> {
    NEEDED_CAPS
        .iter()
        .filter(|(bit, _, _)| cap_eff & (1u64 << bit) == 0)
        .map(|(_, name, _)| *name)
        .collect()
}

/// The message for a daemon that lacks `missing`.
pub fn privilege_message(missing: &[&str]) -> String {
    let why: Vec<String> = NEEDED_CAPS
        .iter()
        .filter(|(_, n, _)| missing.contains(n))
        .map(|(_, n, w)| format!("{n} to {w}"))
        .collect();
    format!(
        "running an agent as another user needs privileges this daemon (uid {}) does not have: {}; \
         run the daemon as root, or give it these capabilities (systemd: AmbientCapabilities={} in a drop-in, \
         see systemd/ironcaged.service), or remove `user`/`agent_user` so agents run as the daemon's user",
        nix::unistd::geteuid(),
        why.join(", "),
        missing.join(" ")
    )
}

/// What the child checks after switching, in order; its code travels back
/// through the probe pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Groups = 1,
    Gid = 2,
    Uid = 3,
    WorkingDir = 4,
    ModuleDir = 5,
    Credentials = 6,
}

impl Step {
    fn from_u8(b: u8) -> Option<Step> {
        Some(match b {
            1 => Step::Groups,
            2 => Step::Gid,
            3 => Step::Uid,
            4 => Step::WorkingDir,
            5 => Step::ModuleDir,
            6 => Step::Credentials,
            _ => return None,
        })
    }
}

/// Everything the child needs to switch and check, prepared before `fork`
/// (no allocation happens in the child).
#[derive(Debug)]
pub struct Switch {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    working_dir: CString,
    module_dir: Option<CString>,
    credentials: Option<CString>,
    report: OwnedFd,
}

/// The parent's end of a [`Switch`]: reads what failed, if anything.
#[derive(Debug)]
pub struct Probe {
    read: OwnedFd,
    user: String,
    working_dir: PathBuf,
    module_dir: Option<PathBuf>,
    credentials: Option<PathBuf>,
}

/// `p` as a C string, made absolute against the daemon's working directory
/// (the child checks it after entering the agent's own).
fn cstr(p: &Path) -> std::io::Result<CString> {
    let p = std::path::absolute(p)?;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} contains a NUL byte", p.display()),
        )
    })
}

/// Prepares the switch to `user` for one spawn, and its probe.
pub fn prepare(
    user: &AgentUser,
    working_dir: &Path,
    module_dir: Option<&Path>,
    credentials: Option<&Path>,
) -> std::io::Result<(Switch, Probe)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        &read,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((
        Switch {
            uid: user.uid,
            gid: user.gid,
            groups: user.groups.clone(),
            working_dir: cstr(working_dir)?,
            module_dir: module_dir.map(cstr).transpose()?,
            credentials: credentials.map(cstr).transpose()?,
            report: write,
        },
        Probe {
            read,
            user: user.describe(),
            working_dir: working_dir.to_owned(),
            module_dir: module_dir.map(Path::to_owned),
            credentials: credentials.map(Path::to_owned),
        },
    ))
}

impl Switch {
    /// Runs in the child between `fork` and `exec`: only async-signal-safe
    /// calls. Drops to the agent's groups, gid and uid, then checks (as that
    /// user, with `access(2)`, which uses the real ids and no capabilities)
    /// that each path is usable, and enters the working directory as that
    /// user. On failure writes the step and errno to the probe pipe.
    pub fn apply(&self) -> std::io::Result<()> {
        let fail = |step: Step| -> std::io::Error {
            let err = std::io::Error::last_os_error();
            let errno = err.raw_os_error().unwrap_or(0).to_le_bytes();
            let msg = [step as u8, errno[0], errno[1], errno[2], errno[3]];
            // SAFETY: write(2) on an fd we own, from a stack buffer.
            unsafe {
                libc::write(self.report.as_raw_fd(), msg.as_ptr().cast(), msg.len());
            }
            err
        };
        // SAFETY: plain syscalls on memory prepared before fork.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0 {
                return Err(fail(Step::Groups));
            }
            if libc::setgid(self.gid) != 0 {
                return Err(fail(Step::Gid));
            }
            if libc::setuid(self.uid) != 0 {
                return Err(fail(Step::Uid));
            }
            if libc::access(self.working_dir.as_ptr(), libc::X_OK) != 0
                || libc::chdir(self.working_dir.as_ptr()) != 0
            {
                return Err(fail(Step::WorkingDir));
            }
            if let Some(m) = &self.module_dir
                && libc::access(m.as_ptr(), libc::R_OK | libc::X_OK) != 0
            {
                return Err(fail(Step::ModuleDir));
            }
            if let Some(c) = &self.credentials
                && libc::access(c.as_ptr(), libc::R_OK | libc::X_OK) != 0
            {
                return Err(fail(Step::Credentials));
            }
        }
        Ok(())
    }
}

impl Probe {
    /// A failed spawn's message: what the child reported ([`Probe::explain`]),
    /// else `err` (from `exec`) with the user it ran as.
    pub fn describe_failure(&self, err: &std::io::Error) -> String {
        self.explain().unwrap_or_else(|| match err.kind() {
            std::io::ErrorKind::PermissionDenied => format!(
                "{err} (running as {}: the program, its interpreter and every directory above them must be executable by that user)",
                self.user
            ),
            _ => format!("{err} (running as {})", self.user),
        })
    }

    /// After a failed spawn: what the child reported, as a message naming the
    /// path and the user; `None` when the failure came from elsewhere (exec).
    pub fn explain(&self) -> Option<String> {
        let mut buf = [0u8; 5];
        let n = nix::unistd::read(&self.read, &mut buf).ok()?;
        if n != buf.len() {
            return None;
        }
        let step = Step::from_u8(buf[0])?;
        let err =
            std::io::Error::from_raw_os_error(i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]));
        let user = &self.user;
        Some(match step {
            Step::Groups => format!("cannot set the supplementary groups of {user}: {err}"),
            Step::Gid => format!("cannot switch to the group of {user}: {err}"),
            Step::Uid => format!("cannot switch to {user}: {err}"),
            Step::WorkingDir => format!(
                "{user} cannot enter the working directory {}: {err}; give that user access to it and to every directory above it (e.g. chmod o+x, or setfacl -m u:NAME:rx), or change working_dir",
                self.working_dir.display()
            ),
            Step::ModuleDir => format!(
                "{user} cannot read the iron_cage module directory {}: {err}; make it readable by that user or set [daemon] python_path to a copy it can read",
                self.module_dir
                    .as_deref()
                    .unwrap_or(Path::new("?"))
                    .display()
            ),
            Step::Credentials => format!(
                "{user} cannot read its credentials directory {}: {err}; every directory above it must be searchable by that user (under systemd: RuntimeDirectoryMode=0751)",
                self.credentials
                    .as_deref()
                    .unwrap_or(Path::new("?"))
                    .display()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobody_resolves_with_its_primary_group() {
        let u = resolve(&IdRef::Name("nobody".into()), None).unwrap();
        assert_eq!(u.uid, 65534);
        assert_eq!(u.name.as_deref(), Some("nobody"));
        assert!(u.groups.contains(&u.gid), "{u:?}");
        let by_id = resolve(&IdRef::Id(65534), None).unwrap();
        assert_eq!(by_id, u);
    }

    #[test]
    fn unknown_names_and_a_bare_uid_without_group_are_refused() {
        let (w, m) = resolve(&IdRef::Name("no-such-user-xyz".into()), None).unwrap_err();
        assert_eq!(w, Which::User);
        assert!(
            m.contains("no-such-user-xyz") && m.contains("does not exist"),
            "{m}"
        );
        let (w, m) = resolve(
            &IdRef::Name("nobody".into()),
            Some(&IdRef::Name("no-such-group-xyz".into())),
        )
        .unwrap_err();
        assert_eq!(w, Which::Group);
        assert!(m.contains("no-such-group-xyz"), "{m}");
        // A uid with no passwd entry needs an explicit group.
        let (w, m) = resolve(&IdRef::Id(4_000_000_000), None).unwrap_err();
        assert_eq!(w, Which::User);
        assert!(m.contains("group"), "{m}");
        let u = resolve(&IdRef::Id(4_000_000_000), Some(&IdRef::Id(4_000_000_001))).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.groups.clone()),
            (4_000_000_000, 4_000_000_001, vec![4_000_000_001])
        );
        assert_eq!(u.describe(), "uid 4000000000");
    }

    #[test]
    fn privileges_name_each_missing_capability() {
        assert!(missing_privileges(u64::MAX).is_empty());
        let all = missing_privileges(0);
        assert_eq!(all.len(), NEEDED_CAPS.len());
        // CAP_SETUID and CAP_KILL only.
        let some = missing_privileges((1 << 7) | (1 << 5));
        assert_eq!(some, vec!["CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE"]);
        let m = privilege_message(&some);
        assert!(m.contains("run the daemon as root"), "{m}");
        assert!(
            m.contains("AmbientCapabilities=CAP_SETGID CAP_CHOWN CAP_DAC_OVERRIDE"),
            "{m}"
        );
        assert!(m.contains("remove `user`"), "{m}");
    }
}
