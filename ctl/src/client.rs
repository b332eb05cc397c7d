//! The connection to `ironcaged`: connect, handshake, one request, its reply.
//!
//! Blocking `std` I/O on purpose: ironctl sends one request and prints one answer,
//! so an async runtime would only add start-up time (the budget for
//! `ironctl --json agents list` with 1,000 agents is 50 ms wall, round trip
//! included). `agents logs -f` simply keeps reading frames; Ctrl-C ends the process
//! and the daemon sees the connection close.
//!
//! Every failure is a [`ClientError`] whose message tells the operator what to do
//! next: where ironctl looked for the daemon, which group may use the socket, or
//! that the two programs come from different releases.

use ironcage_shared::framing::{self, FrameError};
use ironcage_shared::protocol::{
    ErrorCode, ErrorResponse, HelloRequest, HelloResponse, PROTOCOL_VERSION, Request, Response,
};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// ironctl's own version, sent in `Hello` and quoted in mismatch errors.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How to get a daemon running, appended to every "no daemon" error.
const START_HINT: &str = "start it with 'systemctl start ironcaged' or 'ironcaged --config FILE', \
     or point --socket/IRONCAGE_SOCKET at its socket";

/// The group the packaged socket is shared with (design: mode 0660, group `ironcage`).
const DEFAULT_GROUP: &str = "ironcage";

/// Why talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no daemon at {} (no such socket file); {START_HINT}", .path.display())]
    NoSocket { path: PathBuf },

    #[error(
        "no daemon at {} (connection refused: nothing is listening, the socket is stale); {START_HINT}",
        .path.display()
    )]
    Refused { path: PathBuf },

    #[error(
        "permission denied connecting to {} as uid {uid}: the socket is open to root and group '{group}'; \
         run as root or add this user to '{group}' (usermod -aG {group} USER, then log in again)",
        .path.display()
    )]
    AccessDenied {
        path: PathBuf,
        uid: u32,
        group: String,
    },

    #[error("cannot connect to the daemon at {}: {err}", .path.display())]
    Connect { path: PathBuf, err: io::Error },

    #[error("the daemon at {} closed the connection {during}", .path.display())]
    Closed { path: PathBuf, during: &'static str },

    #[error(
        "the daemon at {} did not answer within {secs} s (try a larger --timeout, or check 'systemctl status ironcaged')",
        .path.display()
    )]
    Timeout { path: PathBuf, secs: u64 },

    #[error("lost the connection to the daemon at {}: {err}", .path.display())]
    Io { path: PathBuf, err: FrameError },

    #[error(
        "cannot decode the reply of the daemon at {} ({err}); this ironctl {VERSION} (protocol {PROTOCOL_VERSION}) \
         may not be from the same release as ironcaged",
        .path.display()
    )]
    Malformed { path: PathBuf, err: FrameError },

    /// The daemon refused our protocol version; its message says which it speaks.
    #[error("{message}")]
    VersionMismatch { message: String },

    /// The daemon accepted the handshake but announced another protocol version.
    #[error(
        "ironcaged {daemon_version} speaks control protocol {theirs} but this ironctl {VERSION} speaks \
         {PROTOCOL_VERSION}; use the ironctl that ships with the daemon"
    )]
    ProtocolMismatch { theirs: u32, daemon_version: String },

    /// The daemon answered with an error; its message is shown verbatim.
    #[error("{message}")]
    Daemon { code: ErrorCode, message: String },

    #[error(
        "the daemon answered '{request}' with an unexpected {got} reply; this ironctl {VERSION} \
         may not be from the same release as ironcaged"
    )]
    Unexpected {
        request: &'static str,
        got: &'static str,
    },
}

impl ClientError {
    /// The error for a reply of the wrong kind to `request`.
    pub fn unexpected(request: &Request, got: &Response) -> Self {
        ClientError::Unexpected {
            request: request.name(),
            got: response_name(got),
        }
    }
}

/// Short name of a response variant, for error messages.
fn response_name(r: &Response) -> &'static str {
    #[allow(unreachable_patterns)] // variants are appended over time
    match r {
        Response::Hello(_) => "hello",
        Response::Error(_) => "error",
        Response::Ok(_) => "ok",
        Response::Pong => "pong",
        Response::DaemonStatus(_) => "daemon status",
        Response::Agents(_) => "agent list",
        Response::Agent(_) => "agent",
        Response::LogLines(_) => "log lines",
        Response::Budgets(_) => "budgets",
        Response::Costs(_) => "costs",
        Response::Secrets(_) => "secrets",
        Response::SecretValue(_) => "secret value",
        Response::SecretVersions(_) => "secret versions",
        Response::SecretsDocument(_) => "secrets document",
        Response::AuditEntries(_) => "audit entries",
        Response::AuditVerify(_) => "audit verify",
        _ => "unknown",
    }
}

/// An open, handshaken connection to the daemon.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
    timeout: Option<Duration>,
    hello: HelloResponse,
}

impl Client {
    /// Connects to the socket at `path` and performs the `Hello` exchange.
    ///
    /// `timeout` bounds each wait for a reply (`None`: wait forever).
    pub fn connect(path: &Path, timeout: Option<Duration>) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|err| connect_error(path, err))?;
        let io_err = |err| ClientError::Connect {
            path: path.to_owned(),
            err,
        };
        stream.set_read_timeout(timeout).map_err(io_err)?;
        stream.set_write_timeout(timeout).map_err(io_err)?;
        let mut conn = Conn {
            stream: &stream,
            path,
            timeout,
        };
        conn.send(&Request::Hello(HelloRequest {
            protocol_version: PROTOCOL_VERSION,
            client: format!("ironctl {VERSION}"),
        }))?;
        let hello = match conn.recv()? {
            None => {
                return Err(ClientError::Closed {
                    path: path.to_owned(),
                    during: "during the handshake",
                });
            }
            Some(Response::Hello(h)) if h.protocol_version == PROTOCOL_VERSION => h,
            Some(Response::Hello(h)) => {
                return Err(ClientError::ProtocolMismatch {
                    theirs: h.protocol_version,
                    daemon_version: h.daemon_version,
                });
            }
            Some(Response::Error(e)) => return Err(daemon_error(e)),
            Some(other) => {
                return Err(ClientError::Unexpected {
                    request: "hello",
                    got: response_name(&other),
                });
            }
        };
        Ok(Self {
            stream,
            path: path.to_owned(),
            timeout,
            hello,
        })
    }

    /// What the daemon said about itself and our role.
    pub fn hello(&self) -> &HelloResponse {
        &self.hello
    }

    /// Sends `req` and returns its reply; a daemon error becomes [`ClientError::Daemon`].
    pub fn request(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.send(req)?;
        match self.recv()? {
            Some(resp) => Ok(resp),
            None => Err(ClientError::Closed {
                path: self.path.clone(),
                during: "without replying",
            }),
        }
    }

    /// Sends `req` without waiting for a reply (for streams, read with [`Client::recv`]).
    pub fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        self.conn().send(req)
    }

    /// The next reply; `Ok(None)` when the daemon closed the connection cleanly.
    /// An error reply becomes [`ClientError::Daemon`].
    pub fn recv(&mut self) -> Result<Option<Response>, ClientError> {
        match self.conn().recv()? {
            Some(Response::Error(e)) => Err(daemon_error(e)),
            other => Ok(other),
        }
    }

    /// Changes how long [`Client::recv`] waits (`None`: forever, for `logs -f`).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.timeout = timeout;
        self.stream
            .set_read_timeout(timeout)
            .map_err(|err| ClientError::Connect {
                path: self.path.clone(),
                err,
            })
    }

    fn conn(&self) -> Conn<'_> {
        Conn {
            stream: &self.stream,
            path: &self.path,
            timeout: self.timeout,
        }
    }
}

/// One socket plus what error messages need to know about it.
struct Conn<'a> {
    stream: &'a UnixStream,
    path: &'a Path,
    timeout: Option<Duration>,
}

impl Conn<'_> {
    fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut s = self.stream;
        framing::write_message_sync(&mut s, req).map_err(|e| self.frame_error(e))
    }

    fn recv(&mut self) -> Result<Option<Response>, ClientError> {
        let mut s = self.stream;
        let Some(payload) = framing::read_frame_sync(&mut s).map_err(|e| self.frame_error(e))?
        else {
            return Ok(None);
        };
        framing::decode(&payload)
            .map(Some)
            .map_err(|e| self.frame_error(e))
    }

    fn frame_error(&self, err: FrameError) -> ClientError {
        let path = self.path.to_owned();
        match err {
            FrameError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                ClientError::Timeout {
                    path,
                    secs: self.timeout.map_or(0, |t| t.as_secs()),
                }
            }
            err @ (FrameError::Decode(_) | FrameError::TooLarge { .. }) => {
                ClientError::Malformed { path, err }
            }
            err => ClientError::Io { path, err },
        }
    }
}

fn daemon_error(e: ErrorResponse) -> ClientError {
    match e.code {
        ErrorCode::VersionMismatch => ClientError::VersionMismatch { message: e.message },
        code => ClientError::Daemon {
            code,
            message: e.message,
        },
    }
}

/// Turns a failed `connect` into a message that says where we looked and what to do.
fn connect_error(path: &Path, err: io::Error) -> ClientError {
    let path = path.to_owned();
    match err.kind() {
        io::ErrorKind::NotFound => ClientError::NoSocket { path },
        io::ErrorKind::ConnectionRefused => ClientError::Refused { path },
        io::ErrorKind::PermissionDenied => {
            // The socket's group is who may connect; if even stat is denied (the
            // directory is closed to us), fall back to the packaged group.
            let group = std::fs::metadata(&path)
                .map(|m| group_name(m.gid()))
                .unwrap_or_else(|_| DEFAULT_GROUP.to_owned());
            ClientError::AccessDenied {
                path,
                uid: nix::unistd::getuid().as_raw(),
                group,
            }
        }
        _ => ClientError::Connect { path, err },
    }
}

/// The group's name, or its number when it has none.
fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}
