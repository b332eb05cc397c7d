//! The per-agent channel: what an agent's `iron_cage` module and the daemon say
//! over the socketpair created at spawn (the agent's end is `IRONCAGE_FD`).
//!
//! Framed exactly like the control socket ([`crate::framing`]: u32-BE length,
//! hard maximum, postcard), but with its **own** enums, so the Agent role is a
//! matter of construction: [`AgentRequest`] simply has no control operation. The
//! daemon knows which agent owns each socket (it created it), so no request
//! names an agent.
//!
//! Every frame from the agent is a [`Envelope`]: a request id, then the
//! request. The daemon answers each one, in order, with
//! [`AgentMessage::Reply`] carrying the same id; [`AgentMessage::Push`] is a
//! message the daemon sends on its own ([`AgentPush::SecretsRotated`] after a
//! secrets reload), which may come before any reply: the module keeps it and
//! reads on until its reply. The first request is
//! [`AgentRequest::Hello`] with [`AGENT_CHANNEL_VERSION`]; a mismatch is a clear
//! error on both sides.
//!
//! Enum variants are only ever appended. A request the daemon cannot decode (an
//! unknown variant from a newer module, a control-protocol frame) gets an
//! [`AgentError::BadRequest`] reply naming the problem; a frame that breaks the
//! framing closes that channel only.

use crate::AgentName;
use crate::money::Micros;
use crate::protocol::BudgetPeriod;
use serde::{Deserialize, Serialize};

/// Version of the agent channel protocol; bumped on incompatible changes.
pub const AGENT_CHANNEL_VERSION: u32 = 1;

/// Environment variable holding the agent's end of the channel (a file descriptor number).
pub const ENV_FD: &str = "IRONCAGE_FD";
/// Environment variable: milliseconds between the module's heartbeats (set
/// only when the agent has a watchdog).
pub const ENV_HEARTBEAT_MS: &str = "IRONCAGE_HEARTBEAT_MS";

/// Longest accepted `report_cost` label or secret name, in bytes.
pub const MAX_LABEL_LEN: usize = 128;

/// One request from the agent, with the id its reply will carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: u64,
    pub request: AgentRequest,
}

/// What an agent may ask. Variants are only appended; `Hello` is variant 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentRequest {
    Hello(AgentHello),
    /// "I am alive" (the watchdog's input). Answered with [`AgentResponse::Ok`].
    Heartbeat,
    /// This agent's budget.
    Budget,
    /// A cost outside the gateway (a paid search API, a tool), booked in the ledger.
    ReportCost(ReportCost),
    /// The current value of a secret granted to this agent.
    Secret(SecretRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    pub version: u32,
    /// The module's process id (the daemon logs a mismatch with the agent's pid).
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportCost {
    pub cost: Micros,
    /// What it paid for (`"web-search"`): shown as model `tool/<label>` in `ironctl costs --by model`.
    pub label: String,
    /// The `iron_cage.tag(...)` in effect, if any.
    pub tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRequest {
    pub name: String,
}

/// What the daemon sends. Variants are only appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    Reply { id: u64, response: AgentResponse },
    Push(AgentPush),
}

/// The answer to one request. Variants are only appended.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentResponse {
    Hello(AgentWelcome),
    Ok,
    Budget(AgentBudget),
    /// The cost was booked; the agent's budget afterwards.
    CostBooked(AgentBudget),
    /// A secret's value. Never logged; `Debug` prints `[REDACTED]`.
    Secret(String),
    Error(AgentError),
}

impl std::fmt::Debug for AgentResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentResponse::Hello(w) => f.debug_tuple("Hello").field(w).finish(),
            AgentResponse::Ok => f.write_str("Ok"),
            AgentResponse::Budget(b) => f.debug_tuple("Budget").field(b).finish(),
            AgentResponse::CostBooked(b) => f.debug_tuple("CostBooked").field(b).finish(),
            AgentResponse::Secret(_) => f.write_str("Secret([REDACTED])"),
            AgentResponse::Error(e) => f.debug_tuple("Error").field(e).finish(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentWelcome {
    pub version: u32,
    /// The agent this channel belongs to.
    pub agent: AgentName,
}

/// An agent's budget, as `iron_cage.budget()` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentBudget {
    /// `None`: no budget configured (metered, unlimited).
    pub limit: Option<Micros>,
    /// Durable spend this period.
    pub spent: Micros,
    /// Held by calls in flight (and settles not yet durable).
    pub reserved: Micros,
    /// `limit - spent - reserved`, floored at zero; `None` when unlimited.
    pub remaining: Option<Micros>,
    pub period: BudgetPeriod,
    /// Unix seconds the period started / ends (`None` for `total`).
    pub period_start: u64,
    pub period_end: Option<u64>,
}

/// Messages the daemon sends unasked. Variants are only appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentPush {
    /// Secrets granted to this agent changed in a secrets reload (names only,
    /// never values); `iron_cage.secrets_rotated()` reports them.
    SecretsRotated { names: Vec<String> },
}

/// Why a request failed; `message` is for the agent's developer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    pub kind: AgentErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentErrorKind {
    /// The request could not be decoded or is not an agent request.
    BadRequest,
    /// `Hello` was missing, repeated, or of another version.
    Handshake,
    /// Bad argument (negative cost, empty label...).
    Invalid,
    /// The daemon cannot serve it right now (shutting down, store missing).
    Unavailable,
    /// Not found or not granted to this agent.
    NotFound,
}

impl AgentError {
    pub fn new(kind: AgentErrorKind, message: impl Into<String>) -> Self {
        AgentError {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Decodes one request payload strictly: the id, then the request, and nothing
/// after it. Returns the id (when it could be read) with the outcome, so the
/// daemon can answer an undecodable request by its id.
pub fn decode_request(payload: &[u8]) -> (u64, Result<AgentRequest, String>) {
    let (id, rest) = match postcard::take_from_bytes::<u64>(payload) {
        Ok(v) => v,
        Err(e) => return (0, Err(format!("cannot read the request id: {e}"))),
    };
    match postcard::take_from_bytes::<AgentRequest>(rest) {
        Ok((req, [])) => (id, Ok(req)),
        Ok((_, extra)) => (
            id,
            Err(format!(
                "{} unexpected bytes after the request (not an agent channel request)",
                extra.len()
            )),
        ),
        Err(e) => (
            id,
            Err(format!(
                "not an agent channel request ({e}); the channel accepts only Hello, Heartbeat, Budget, ReportCost and Secret"
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing;
    use crate::protocol;

    fn roundtrip_req(r: AgentRequest) {
        let env = Envelope {
            id: 77,
            request: r.clone(),
        };
        let frame = framing::encode(&env).unwrap();
        let payload = framing::read_frame_sync(&mut &frame[..]).unwrap().unwrap();
        assert_eq!(decode_request(&payload), (77, Ok(r)));
    }

    #[test]
    fn requests_roundtrip() {
        roundtrip_req(AgentRequest::Hello(AgentHello {
            version: AGENT_CHANNEL_VERSION,
            pid: 42,
        }));
        roundtrip_req(AgentRequest::Heartbeat);
        roundtrip_req(AgentRequest::Budget);
        roundtrip_req(AgentRequest::ReportCost(ReportCost {
            cost: Micros(1_234),
            label: "web-search".into(),
            tag: Some("research".into()),
        }));
        roundtrip_req(AgentRequest::Secret(SecretRequest {
            name: "DB_PASSWORD".into(),
        }));
    }

    #[test]
    fn hello_is_variant_zero_and_frozen() {
        let p = postcard::to_allocvec(&Envelope {
            id: 1,
            request: AgentRequest::Hello(AgentHello { version: 1, pid: 2 }),
        })
        .unwrap();
        assert_eq!(p, vec![1, 0, 1, 2]);
    }

    #[test]
    fn replies_and_pushes_roundtrip() {
        for m in [
            AgentMessage::Reply {
                id: 3,
                response: AgentResponse::Budget(AgentBudget {
                    limit: Some(Micros(5_000_000)),
                    spent: Micros(10),
                    reserved: Micros(2),
                    remaining: Some(Micros(4_999_988)),
                    period: BudgetPeriod::Day,
                    period_start: 1,
                    period_end: Some(86_401),
                }),
            },
            AgentMessage::Reply {
                id: 4,
                response: AgentResponse::Error(AgentError::new(
                    AgentErrorKind::Unavailable,
                    "no store",
                )),
            },
            AgentMessage::Push(AgentPush::SecretsRotated {
                names: vec!["A".into()],
            }),
        ] {
            let f = framing::encode(&m).unwrap();
            let back: AgentMessage = framing::decode(&f[framing::HEADER_LEN..]).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn unknown_variant_and_trailing_bytes_are_refused_with_the_id() {
        // A request variant from a newer module: id readable, request not.
        let (id, r) = decode_request(&[9, 200]);
        assert_eq!(id, 9);
        assert!(r.unwrap_err().contains("not an agent channel request"));
        // A valid request followed by junk.
        let mut p = postcard::to_allocvec(&Envelope {
            id: 5,
            request: AgentRequest::Budget,
        })
        .unwrap();
        p.push(0);
        let (id, r) = decode_request(&p);
        assert_eq!(id, 5);
        assert!(r.unwrap_err().contains("unexpected bytes"));
        assert!(decode_request(&[]).1.is_err());
    }

    #[test]
    fn control_requests_are_not_agent_requests() {
        // What `ironctl agents stop x` would send: never an agent request.
        let name: AgentName = "x".parse().unwrap();
        for req in [
            protocol::Request::StopAgent(protocol::AgentRef { name: name.clone() }),
            protocol::Request::KillAgent(protocol::KillRequest { name, signal: 9 }),
            protocol::Request::Reload,
            protocol::Request::ListAgents,
        ] {
            let p = postcard::to_allocvec(&req).unwrap();
            assert!(
                decode_request(&p).1.is_err(),
                "{req:?} decoded as an agent request"
            );
        }
    }

    #[test]
    fn secret_values_never_debug_print() {
        let r = AgentResponse::Secret("hunter2-very-secret".into());
        assert_eq!(format!("{r:?}"), "Secret([REDACTED])");
    }
}
