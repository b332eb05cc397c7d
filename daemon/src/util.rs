//! Small helpers with no better home.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn unix_secs() -> u64 {
    unix_ms() / 1000
}

/// The umask the daemon was started with, which agents get back.
static AGENT_UMASK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0o022);

/// Everything the daemon creates (state dir, database, logs, key files) is
/// private to its user whatever the caller's umask was: sets umask 077 and
/// remembers the previous one for agents ([`agent_umask`]). Called once at
/// start.
pub fn restrict_umask() {
    use nix::sys::stat::{Mode, umask};
    let old = umask(Mode::from_bits_truncate(0o077));
    AGENT_UMASK.store(old.bits(), std::sync::atomic::Ordering::Relaxed);
}

/// The umask an agent runs with: the daemon's original one.
pub fn agent_umask() -> libc::mode_t {
    AGENT_UMASK.load(std::sync::atomic::Ordering::Relaxed) as libc::mode_t
}
