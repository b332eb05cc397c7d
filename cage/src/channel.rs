//! The module's end of the agent channel: the socket ironcaged handed over in
//! `IRONCAGE_FD`, one request at a time.
//!
//! A round trip holds a mutex over the socket: write the request, read frames
//! until the reply with the same id arrives (stale replies of a request that
//! timed out are skipped). Pushes the daemon sent meanwhile ("secrets
//! rotated") are read in that same loop and kept ([`Channel::take_rotated`]),
//! so one arriving while a call waits for its reply is never lost. No reader
//! thread: a sync call costs exactly one write and the reads of its reply,
//! and the GIL is released around it by the caller.

use ironcage_shared::agent_channel::{
    AGENT_CHANNEL_VERSION, AgentError, AgentHello, AgentMessage, AgentPush, AgentRequest,
    AgentResponse, ENV_FD, Envelope,
};
use ironcage_shared::framing::{self, FrameError};
use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a request may wait for the daemon's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What can go wrong on the channel, phrased for the agent's developer.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(
        "{ENV_FD}={0:?} is not an open socket handed over by ironcaged ({1}); \
         was this process started by something other than ironcaged with {ENV_FD} set?"
    )]
    BadFd(String, String),
    #[error(
        "the iron_cage channel belongs to process {owner}, not to this one ({me}): a forked \
         child cannot use its parent's channel; call iron_cage from the agent's main process"
    )]
    Forked { owner: u32, me: u32 },
    #[error("the channel to ironcaged is closed (the agent's daemon stopped or closed it)")]
    Closed,
    #[error("ironcaged did not answer within {}s", REPLY_TIMEOUT.as_secs())]
    Timeout,
    #[error("the channel to ironcaged failed: {0}")]
    Frame(#[from] FrameError),
    #[error("ironcaged refused the handshake: {0}")]
    Handshake(String),
    #[error("{0}")]
    Daemon(AgentError),
}

/// An open, greeted channel.
#[derive(Debug)]
pub struct Channel {
    stream: Mutex<UnixStream>,
    next_id: AtomicU64,
    owner_pid: u32,
    agent: String,
    /// Names from `SecretsRotated` pushes not yet taken by `take_rotated`.
    rotated: Mutex<BTreeSet<String>>,
}

impl Channel {
    /// Opens the channel from `IRONCAGE_FD`; `Ok(None)` when it is not set (not
    /// under ironcaged). The descriptor is made close-on-exec, so programs the
    /// agent runs do not inherit it.
    pub fn from_env() -> Result<Option<Channel>, ChannelError> {
        let Ok(text) = std::env::var(ENV_FD) else {
            return Ok(None);
        };
        let fd: RawFd = text
            .trim()
            .parse()
            .ok()
            .filter(|fd| *fd >= 0)
            .ok_or_else(|| ChannelError::BadFd(text.clone(), "not a descriptor number".into()))?;
        check_socket(fd).map_err(|why| ChannelError::BadFd(text.clone(), why))?;
        // SAFETY: fd is an open stream socket (checked above) that ironcaged
        // handed to this process for the module alone; we take ownership.
        let stream = unsafe { UnixStream::from_raw_fd(fd) };
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| ChannelError::Frame(FrameError::Io(e)))?;
        let mut ch = Channel {
            stream: Mutex::new(stream),
            next_id: AtomicU64::new(1),
            owner_pid: std::process::id(),
            agent: String::new(),
            rotated: Mutex::new(BTreeSet::new()),
        };
        let hello = AgentRequest::Hello(AgentHello {
            version: AGENT_CHANNEL_VERSION,
            pid: std::process::id(),
        });
        match ch.call(hello) {
            Ok(AgentResponse::Hello(w)) if w.version == AGENT_CHANNEL_VERSION => {
                ch.agent = w.agent.as_str().to_owned();
                Ok(Some(ch))
            }
            Ok(AgentResponse::Hello(w)) => Err(ChannelError::Handshake(format!(
                "ironcaged speaks agent channel version {}, this iron_cage module {}; install the module that came with the daemon",
                w.version, AGENT_CHANNEL_VERSION
            ))),
            Ok(other) => Err(ChannelError::Handshake(format!(
                "unexpected answer {other:?}"
            ))),
            Err(ChannelError::Daemon(e)) => Err(ChannelError::Handshake(e.message)),
            Err(e) => Err(e),
        }
    }

    /// The agent this channel belongs to.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// The names of secrets the daemon said were rotated since the previous
    /// call (sorted; each reported once). Only pushes read so far count:
    /// make a round trip first to pick up what the daemon has sent.
    pub fn take_rotated(&self) -> Vec<String> {
        std::mem::take(&mut *self.rotated.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect()
    }

    /// One round trip. A daemon error reply is `Err(ChannelError::Daemon)`.
    pub fn call(&self, request: AgentRequest) -> Result<AgentResponse, ChannelError> {
        let me = std::process::id();
        if me != self.owner_pid {
            return Err(ChannelError::Forked {
                owner: self.owner_pid,
                me,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = framing::encode(&Envelope { id, request })?;
        let mut s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        s.write_all(&frame).map_err(io_err)?;
        loop {
            let payload = match framing::read_frame_sync(&mut *s) {
                Ok(Some(p)) => p,
                Ok(None) => return Err(ChannelError::Closed),
                Err(FrameError::Io(e)) => return Err(io_err(e)),
                Err(e) => return Err(e.into()),
            };
            match framing::decode::<AgentMessage>(&payload)? {
                AgentMessage::Reply { id: got, response } if got == id => {
                    return match response {
                        AgentResponse::Error(e) => Err(ChannelError::Daemon(e)),
                        r => Ok(r),
                    };
                }
                // A late reply to a request that timed out: skip it.
                AgentMessage::Reply { .. } => {}
                // Kept for `secrets_rotated()`; `secret()` always asks for
                // the current value anyway.
                AgentMessage::Push(AgentPush::SecretsRotated { names }) => {
                    self.rotated
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(names);
                }
            }
        }
    }
}

fn io_err(e: std::io::Error) -> ChannelError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ChannelError::Timeout,
        std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::UnexpectedEof => ChannelError::Closed,
        _ => ChannelError::Frame(FrameError::Io(e)),
    }
}

/// Is `fd` an open Unix stream socket? Also sets close-on-exec on it.
fn check_socket(fd: RawFd) -> Result<(), String> {
    // SAFETY: plain syscalls on an integer descriptor; no memory is shared
    // beyond the out-parameters, which live on this stack frame.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err("it is not a socket".into());
        }
        let mut ty: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        ) != 0
            || ty != libc::SOCK_STREAM
        {
            return Err("it is not a stream socket".into());
        }
        if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
    }
    Ok(())
}
