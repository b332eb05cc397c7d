//! One file per subcommand group, as in pueue's client: `ironctl agents kill` lives
//! in [`agents`], `ironctl budget set` in [`budget`], and so on. Each file holds the
//! request it sends and how its reply is rendered, for humans and with `--json`.

pub mod agents;
pub mod audit;
pub mod budget;
pub mod circuits;
pub mod costs;
pub mod daemon;
pub mod pii;
pub mod secrets;

use crate::client::{Client, ClientError};
use crate::output;
use ironcage_shared::protocol::{Request, Response};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// What every command needs: where the daemon is and how to print.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub socket: PathBuf,
    pub json: bool,
    /// How long to wait for each reply (`None`: forever).
    pub timeout: Option<Duration>,
}

impl Ctx {
    pub fn connect(&self) -> Result<Client, ClientError> {
        Client::connect(&self.socket, self.timeout)
    }

    /// Connects, sends `req` and returns its (non-error) reply.
    pub fn call(&self, req: &Request) -> Result<Response, ClientError> {
        self.connect()?.request(req)
    }
}

/// `{"ok": true, "message": ...}`: what every mutation prints with `--json`.
#[derive(Debug, Serialize)]
pub struct OkJson<'a> {
    pub ok: bool,
    pub message: &'a str,
}

/// Sends a mutation and prints the daemon's confirmation.
pub fn mutate(ctx: &Ctx, req: Request) -> anyhow::Result<()> {
    let msg = match ctx.call(&req)? {
        Response::Ok(ok) => ok.message,
        other => return Err(ClientError::unexpected(&req, &other).into()),
    };
    let text = if ctx.json {
        output::json_pretty(&OkJson {
            ok: true,
            message: &msg,
        })?
    } else {
        format!("{msg}\n")
    };
    output::emit(&text)?;
    Ok(())
}
