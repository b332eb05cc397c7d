//! The daemon's end of one agent's channel.
//!
//! Created at spawn as a socketpair; the agent's end is inherited (its number
//! in `IRONCAGE_FD`), this end is served by [`serve`] on tokio until the agent
//! closes it. Requests are answered one at a time, in order. Every frame
//! received counts as a sign of life for the watchdog ([`Liveness`]).
//!
//! The agent is the one this socket was created for: no request names an
//! agent, and [`AgentRequest`] has no control operation, so the Agent role is
//! all a channel can ever exercise. An undecodable request (a control-protocol
//! frame, a variant from a newer module) is answered with a `BadRequest` error
//! and the channel stays open; a frame that breaks the framing (a lying length,
//! a truncated frame) closes this channel only.

use crate::actors::budget::{BudgetHandle, CostRecord};
use ironcage_shared::AgentName;
use ironcage_shared::agent_channel::{
    AGENT_CHANNEL_VERSION, AgentBudget, AgentError, AgentErrorKind, AgentMessage, AgentRequest,
    AgentResponse, AgentWelcome, MAX_LABEL_LEN, ReportCost, decode_request,
};
use ironcage_shared::framing;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;

/// What channels need from the rest of the daemon, set once it is running.
#[derive(Debug, Default)]
pub struct CageServices {
    budget: OnceLock<BudgetHandle>,
}

impl CageServices {
    /// Called once at start-up, after the ledger started (before any agent).
    pub fn set_budget(&self, budget: BudgetHandle) {
        let _ = self.budget.set(budget);
    }
}

/// When an agent's channel last received a frame (the watchdog reads it).
#[derive(Debug)]
pub struct Liveness {
    base: Instant,
    /// Milliseconds after `base`.
    last_ms: AtomicU64,
}

impl Liveness {
    /// Starts counting now (a fresh spawn counts as a sign of life).
    pub fn new() -> Arc<Liveness> {
        Arc::new(Liveness {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    pub fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Time since the last frame (or since the spawn).
    pub fn silent_for(&self) -> Duration {
        let last = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Instant::now().saturating_duration_since(last)
    }
}

/// Serves one agent's channel until the agent closes it or breaks the framing.
pub async fn serve(
    stream: UnixStream,
    agent: AgentName,
    services: Arc<CageServices>,
    live: Arc<Liveness>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut greeted = false;
    loop {
        let payload = match framing::read_frame(&mut rd).await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(agent = %agent, "closing the agent's channel: {e}");
                break;
            }
        };
        live.touch();
        let (id, req) = decode_request(&payload);
        let (response, close) = match req {
            Err(why) => {
                tracing::warn!(agent = %agent, "refused a request on the agent's channel: {why}");
                (error(AgentErrorKind::BadRequest, why), !greeted)
            }
            Ok(AgentRequest::Hello(h)) if !greeted => {
                if h.version != AGENT_CHANNEL_VERSION {
                    let msg = format!(
                        "the iron_cage module speaks agent channel version {}, this ironcaged version {AGENT_CHANNEL_VERSION}; use the module installed with the daemon",
                        h.version
                    );
                    tracing::warn!(agent = %agent, "{msg}");
                    (error(AgentErrorKind::Handshake, msg), true)
                } else {
                    greeted = true;
                    tracing::debug!(agent = %agent, pid = h.pid, "agent channel open");
                    (
                        AgentResponse::Hello(AgentWelcome {
                            version: AGENT_CHANNEL_VERSION,
                            agent: agent.clone(),
                        }),
                        false,
                    )
                }
            }
            Ok(AgentRequest::Hello(_)) => (
                error(
                    AgentErrorKind::Handshake,
                    "Hello was already sent on this channel",
                ),
                false,
            ),
            Ok(_) if !greeted => (
                error(
                    AgentErrorKind::Handshake,
                    "the first request on the agent channel must be Hello",
                ),
                true,
            ),
            Ok(r) => (handle(r, &agent, &services).await, false),
        };
        let msg = AgentMessage::Reply { id, response };
        if let Err(e) = framing::write_message(&mut wr, &msg).await {
            tracing::debug!(agent = %agent, "agent channel write failed: {e}");
            break;
        }
        if close {
            break;
        }
    }
}

fn error(kind: AgentErrorKind, msg: impl Into<String>) -> AgentResponse {
    AgentResponse::Error(AgentError::new(kind, msg))
}

async fn handle(req: AgentRequest, agent: &AgentName, services: &CageServices) -> AgentResponse {
    match req {
        // Answered by `serve` before anything else reaches here.
        AgentRequest::Hello(_) => error(
            AgentErrorKind::Handshake,
            "Hello was already sent on this channel",
        ),
        AgentRequest::Heartbeat => AgentResponse::Ok,
        AgentRequest::Budget => match services.budget.get() {
            None => ledger_down(),
            Some(b) => match budget_of(b, agent).await {
                Ok(v) => AgentResponse::Budget(v),
                Err(e) => e,
            },
        },
        AgentRequest::ReportCost(r) => match services.budget.get() {
            None => ledger_down(),
            Some(b) => report_cost(b, agent, r).await,
        },
        AgentRequest::Secret(s) => {
            // The secrets store is another part of the daemon; until it is
            // wired here, say so (never a value, never a guess).
            let _ = s.name;
            error(
                AgentErrorKind::Unavailable,
                "the secrets store is not available in this build yet: iron_cage.secret() cannot return a secret",
            )
        }
    }
}

fn ledger_down() -> AgentResponse {
    error(
        AgentErrorKind::Unavailable,
        "the budget ledger is not running (the daemon is starting or shutting down)",
    )
}

async fn budget_of(b: &BudgetHandle, agent: &AgentName) -> Result<AgentBudget, AgentResponse> {
    let infos = b
        .show(Some(agent.clone()))
        .await
        .map_err(|e| error(AgentErrorKind::Unavailable, e.to_string()))?;
    let i = infos.into_iter().next().ok_or_else(|| {
        error(
            AgentErrorKind::NotFound,
            format!("the ledger has no agent {agent}"),
        )
    })?;
    Ok(AgentBudget {
        limit: i.limit,
        spent: i.spent,
        reserved: i.reserved,
        remaining: i.remaining,
        period: i.period,
        period_start: i.period_start,
        period_end: i.period_end,
    })
}

/// Same rule as the gateway's `X-Iron-Cage-Tag`.
fn valid_tag(t: &str) -> bool {
    !t.is_empty() && t.len() <= 128 && t.bytes().all(|b| (0x20..0x7f).contains(&b))
}

async fn report_cost(b: &BudgetHandle, agent: &AgentName, r: ReportCost) -> AgentResponse {
    let label = r.label.trim();
    if label.is_empty() || label.len() > MAX_LABEL_LEN || label.chars().any(char::is_control) {
        return error(
            AgentErrorKind::Invalid,
            format!(
                "report_cost: the label must be 1-{MAX_LABEL_LEN} bytes without control characters"
            ),
        );
    }
    if r.cost.0 < 0 {
        return error(
            AgentErrorKind::Invalid,
            "report_cost: the cost cannot be negative",
        );
    }
    if let Some(t) = &r.tag
        && !valid_tag(t)
    {
        return error(
            AgentErrorKind::Invalid,
            "report_cost: the tag must be 1-128 visible ASCII characters",
        );
    }
    let record = CostRecord {
        agent: agent.clone(),
        provider: "tool".to_owned(),
        model: label.to_owned(),
        tag: r.tag,
        usage: Default::default(),
        cost: r.cost,
        at_ms: crate::util::unix_ms(),
    };
    tracing::info!(agent = %agent, label, cost = %r.cost, "agent reported a cost");
    if let Err(e) = b.book(record).await {
        return error(
            AgentErrorKind::Unavailable,
            format!("the cost was not booked: {e}"),
        );
    }
    match budget_of(b, agent).await {
        Ok(v) => AgentResponse::CostBooked(v),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironcage_shared::agent_channel::{AgentHello, Envelope, SecretRequest};
    use tokio::io::AsyncWriteExt;

    async fn round_trip(
        s: &mut UnixStream,
        id: u64,
        request: AgentRequest,
    ) -> Option<AgentResponse> {
        framing::write_message(s, &Envelope { id, request })
            .await
            .unwrap();
        match framing::read_message::<_, AgentMessage>(s).await.unwrap()? {
            AgentMessage::Reply { id: got, response } => {
                assert_eq!(got, id);
                Some(response)
            }
            AgentMessage::Push(p) => panic!("unexpected push {p:?}"),
        }
    }

    fn hello(version: u32) -> AgentRequest {
        AgentRequest::Hello(AgentHello { version, pid: 1 })
    }

    fn start() -> (UnixStream, Arc<Liveness>, tokio::task::JoinHandle<()>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let live = Liveness::new();
        let task = tokio::spawn(serve(
            ours,
            "agent-a".parse().unwrap(),
            Arc::new(CageServices::default()),
            live.clone(),
        ));
        (theirs, live, task)
    }

    fn kind(r: Option<AgentResponse>) -> AgentErrorKind {
        match r {
            Some(AgentResponse::Error(e)) => e.kind,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn hello_first_then_requests_and_bad_ones_keep_the_channel() {
        let (mut s, _, task) = start();
        match round_trip(&mut s, 1, hello(AGENT_CHANNEL_VERSION)).await {
            Some(AgentResponse::Hello(w)) => assert_eq!(w.agent.as_str(), "agent-a"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            round_trip(&mut s, 2, AgentRequest::Heartbeat).await,
            Some(AgentResponse::Ok)
        );
        // An unknown variant (a control request's bytes) is answered by id.
        s.write_all(&[0, 0, 0, 3, 7, 6, b'x']).await.unwrap();
        match framing::read_message::<_, AgentMessage>(&mut s)
            .await
            .unwrap()
        {
            Some(AgentMessage::Reply {
                id: 7,
                response: AgentResponse::Error(e),
            }) => {
                assert_eq!(e.kind, AgentErrorKind::BadRequest);
                assert!(e.message.contains("not an agent channel request"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            kind(round_trip(&mut s, 8, hello(AGENT_CHANNEL_VERSION)).await),
            AgentErrorKind::Handshake
        );
        let secret = AgentRequest::Secret(SecretRequest { name: "DB".into() });
        match round_trip(&mut s, 9, secret).await {
            Some(AgentResponse::Error(e)) => {
                assert_eq!(e.kind, AgentErrorKind::Unavailable);
                assert!(e.message.contains("secrets store is not available"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // No ledger in this test: a clear error, not a hang.
        assert_eq!(
            kind(round_trip(&mut s, 10, AgentRequest::Budget).await),
            AgentErrorKind::Unavailable
        );
        // A lying length closes this channel.
        s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(framing::read_frame(&mut s).await.unwrap().is_none());
        task.await.unwrap();
    }

    #[tokio::test]
    async fn no_hello_or_another_version_closes_the_channel() {
        let (mut s, _, task) = start();
        assert_eq!(
            kind(round_trip(&mut s, 1, AgentRequest::Budget).await),
            AgentErrorKind::Handshake
        );
        assert!(framing::read_frame(&mut s).await.unwrap().is_none());
        task.await.unwrap();

        let (mut s, _, task) = start();
        assert_eq!(
            kind(round_trip(&mut s, 1, hello(AGENT_CHANNEL_VERSION + 1)).await),
            AgentErrorKind::Handshake
        );
        assert!(framing::read_frame(&mut s).await.unwrap().is_none());
        task.await.unwrap();
    }
}
