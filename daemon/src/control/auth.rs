//! Who is calling: roles from kernel peer credentials (SO_PEERCRED).
//!
//! The socket file's mode (0660) keeps strangers out; this decides what a
//! connected peer may do. Root and the daemon's own uid are always admins.
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
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            groups,
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
    if peer.uid == 0 || peer.uid == daemon_uid || access.admins.iter().any(|p| matches(p, peer)) {
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

    fn peer(uid: u32, groups: Vec<u32>) -> Peer {
        Peer {
            uid,
            gid: groups.first().copied().unwrap_or(uid),
            pid: None,
            groups,
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
        // nogroup is gid 65534 on Debian-like systems.
        if let Ok(Some(g)) = Group::from_name("nogroup") {
            assert_eq!(
                role_for(&peer(4000, vec![g.gid.as_raw()]), &access, 999),
                Some(Role::Viewer)
            );
        }
    }
}
