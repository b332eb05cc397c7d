//! Who is calling: roles from kernel peer credentials (SO_PEERCRED).
//!
//! The socket file's mode (0660) keeps strangers out; this decides what a
//! connected peer may do. Root and the daemon's own uid are always admins,
//! except a caller running inside an agent: agents without `user =` share the
//! daemon's uid, and a prompt-injected tool call must not reach the control
//! socket (`ironctl secrets export`). A peer whose process descends from the daemon gets no role
//! at all; agents talk to the daemon over their own channel (`IRONCAGE_FD`).
//! (A process that double-forks away from its agent escapes this check; it
//! still holds the daemon's uid. Run agents you do not trust under their own
//! uid: `user =`, see `agent_user`.)
//! Group membership is read from the peer process's own credentials
//! (`/proc/PID/status`), so it reflects the groups the caller actually runs with.

use crate::config::{Access, Principal};
use ironcage_shared::protocol::Role;
use nix::unistd::{Group, Uid, User};

/// The peer as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// Primary and supplementary gids.
    pub groups: Vec<u32>,
    /// The peer process descends from this daemon: it runs inside an agent.
    pub in_agent: bool,
}

impl Peer {
    pub fn from_stream(stream: &tokio::net::UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid();
        let mut groups = vec![cred.gid()];
        if let Some(pid) = pid
            && let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(line) = status.lines().find(|l| l.starts_with("Groups:"))
        {
            groups.extend(
                line["Groups:".len()..]
                    .split_whitespace()
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        }
        groups.sort_unstable();
        groups.dedup();
        let me = std::process::id() as i32;
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            groups,
            in_agent: pid.is_some_and(|p| descends_from(p, me)),
        })
    }

    /// `uid 1000 (alice)` for messages.
    pub fn describe(&self) -> String {
        match User::from_uid(Uid::from_raw(self.uid)) {
            Ok(Some(u)) => format!("uid {} ({})", self.uid, u.name),
            _ => format!("uid {}", self.uid),
        }
    }
}

/// The parent pid of `pid`, from `/proc/PID/stat` (field 4, after the
/// parenthesised command name, which may itself hold spaces and parentheses).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` is a (transitive) child of `ancestor`.
pub fn descends_from(pid: i32, ancestor: i32) -> bool {
    let mut p = pid;
    // Bounded: a pid chain is short, and a racing exit ends it at 0 or 1.
    for _ in 0..4096 {
        match parent_of(p) {
            Some(pp) if pp == ancestor => return true,
            Some(pp) if pp > 1 => p = pp,
            _ => return false,
        }
    }
    false
}

fn matches(p: &Principal, peer: &Peer) -> bool {
    match p {
        Principal::Uid(u) => *u == peer.uid,
        Principal::User(name) => {
            matches!(User::from_name(name), Ok(Some(u)) if u.uid.as_raw() == peer.uid)
        }
        Principal::Group(name) => {
            matches!(Group::from_name(name), Ok(Some(g)) if peer.groups.contains(&g.gid.as_raw()))
        }
    }
}

/// The role `peer` gets, or `None` when it may not use the socket at all.
pub fn role_for(peer: &Peer, access: &Access, daemon_uid: u32) -> Option<Role> {
    if peer.in_agent {
        None
    } else if peer.uid == 0
        || peer.uid == daemon_uid
        || access.admins.iter().any(|p| matches(p, peer))
    {
        Some(Role::Admin)
    } else if access.viewers.iter().any(|p| matches(p, peer)) {
        Some(Role::Viewer)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestry_from_proc() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(descends_from(pid, me), "our child descends from us");
        assert!(!descends_from(me, pid), "we do not descend from our child");
        assert!(!descends_from(me, i32::MAX), "no such ancestor");
        let _ = child.kill();
        let _ = child.wait();
    }

    fn peer(uid: u32, groups: Vec<u32>) -> Peer {
        Peer {
            uid,
            gid: groups.first().copied().unwrap_or(uid),
            pid: None,
            groups,
            in_agent: false,
        }
    }

    #[test]
    fn roles() {
        let access = Access {
            admins: vec![Principal::Uid(1000)],
            viewers: vec![Principal::Group("nogroup".into()), Principal::Uid(2000)],
        };
        assert_eq!(role_for(&peer(0, vec![0]), &access, 999), Some(Role::Admin));
        assert_eq!(
            role_for(&peer(999, vec![999]), &access, 999),
            Some(Role::Admin)
        );
        assert_eq!(
            role_for(&peer(1000, vec![1000]), &access, 999),
            Some(Role::Admin)
        );
        assert_eq!(
            role_for(&peer(2000, vec![2000]), &access, 999),
            Some(Role::Viewer)
        );
        assert_eq!(role_for(&peer(3000, vec![3000]), &access, 999), None);
        // Inside an agent, even root and the daemon's uid get nothing.
        for uid in [0, 999, 1000] {
            let mut p = peer(uid, vec![uid]);
            p.in_agent = true;
            assert_eq!(role_for(&p, &access, 999), None);
        }
        // nogroup is gid 65534 on Debian-like systems.
        if let Ok(Some(g)) = Group::from_name("nogroup") {
            assert_eq!(
                role_for(&peer(4000, vec![g.gid.as_raw()]), &access, 999),
                Some(Role::Viewer)
            );
        }
    }
}
