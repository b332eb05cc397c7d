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
use crate::config::{SecretGrant, SecretRef};
use crate::secrets::vault::Heads;
use crate::secrets::{Secrets, SecretsError};
use ironcage_shared::AgentName;
use ironcage_shared::agent_channel::{
    AGENT_CHANNEL_VERSION, AgentBudget, AgentError, AgentErrorKind, AgentMessage, AgentPush,
    AgentRequest, AgentResponse, AgentWelcome, MAX_LABEL_LEN, ReportCost, decode_request,
};
use ironcage_shared::framing;
use ironcage_shared::protocol::SecretEnv;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::broadcast;

/// The secrets one reload changed (a new current version, a rollback, a
/// removal), as `name@environment`.
pub type Rotated = Arc<BTreeSet<SecretRef>>;

/// What channels need from the rest of the daemon, set once it is running.
#[derive(Debug)]
pub struct CageServices {
    budget: OnceLock<BudgetHandle>,
    secrets: OnceLock<Secrets>,
    /// Every channel subscribes; each pushes the names its agent is granted.
    rotations: broadcast::Sender<Rotated>,
    /// The store's heads at start or at the last reload (`None`: unknown,
    /// so the next reload counts every secret as rotated).
    seen: Mutex<Option<Heads>>,
}

impl Default for CageServices {
    fn default() -> Self {
        CageServices {
            budget: OnceLock::new(),
            secrets: OnceLock::new(),
            rotations: broadcast::channel(16).0,
            seen: Mutex::new(None),
        }
    }
}

impl CageServices {
    /// Called once at start-up, after the ledger started (before any agent).
    pub fn set_budget(&self, budget: BudgetHandle) {
        let _ = self.budget.set(budget);
    }

    /// Called once at start-up, before any agent: `iron_cage.secret()` reads
    /// through it, and the store's current versions become the baseline the
    /// next reload is compared with. Blocks briefly (one read transaction).
    pub fn set_secrets(&self, secrets: Secrets) {
        if let Ok(vault) = secrets.vault() {
            match vault.heads() {
                Ok(h) => *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(h),
                Err(e) => tracing::warn!(
                    "cannot read the secrets' versions ({e}); the first reload will tell agents every granted secret rotated"
                ),
            }
        }
        let _ = self.secrets.set(secrets);
    }

    /// After a successful secrets reload, with the store's heads read by it:
    /// tells every running agent granted one of the secrets that changed
    /// since the previous reload (or start). Returns how many changed.
    pub fn secrets_reloaded(&self, heads: Heads) -> usize {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let changed: BTreeSet<SecretRef> = match seen.as_ref() {
            None => heads.keys().map(secret_ref).collect(),
            Some(old) => heads
                .iter()
                .filter(|(k, v)| old.get(*k) != Some(*v))
                .map(|(k, _)| secret_ref(k))
                .chain(
                    old.keys()
                        .filter(|k| !heads.contains_key(*k))
                        .map(secret_ref),
                )
                .collect(),
        };
        *seen = Some(heads);
        let n = changed.len();
        if n > 0 {
            // No receiver (no agent running) is not an error.
            let _ = self.rotations.send(Arc::new(changed));
        }
        n
    }
}

fn secret_ref((name, env): &(String, SecretEnv)) -> SecretRef {
    SecretRef {
        name: name.clone(),
        env: *env,
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
///
/// `grants` are the agent's secrets (`AgentSpec::secrets`): what
/// `iron_cage.secret()` may read, and which rotations are pushed to it. Pushes
/// are written by a task of their own through the write half the replies use,
/// under one lock, so frames never interleave. A value read through the
/// channel is masked out of the agent's captured output (`logs`).
pub async fn serve(
    stream: UnixStream,
    agent: AgentName,
    grants: Vec<SecretGrant>,
    services: Arc<CageServices>,
    live: Arc<Liveness>,
    logs: Option<Arc<crate::logs::AgentLogs>>,
) {
    let (mut rd, wr) = stream.into_split();
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let grants = Arc::new(grants);
    let pusher = (!grants.is_empty()).then(|| {
        tokio::spawn(push_rotations(
            services.rotations.subscribe(),
            grants.clone(),
            wr.clone(),
            agent.clone(),
        ))
    });
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
            Ok(r) => (
                handle(r, &agent, &grants, &services, logs.as_deref()).await,
                false,
            ),
        };
        let msg = AgentMessage::Reply { id, response };
        if let Err(e) = framing::write_message(&mut *wr.lock().await, &msg).await {
            tracing::debug!(agent = %agent, "agent channel write failed: {e}");
            break;
        }
        if close {
            break;
        }
    }
    if let Some(p) = pusher {
        p.abort();
    }
}

/// Writes a `SecretsRotated` push for every reload that changed one of the
/// agent's grants (names only, never a value).
async fn push_rotations(
    mut rx: broadcast::Receiver<Rotated>,
    grants: Arc<Vec<SecretGrant>>,
    wr: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    agent: AgentName,
) {
    loop {
        let names: BTreeSet<String> = match rx.recv().await {
            Ok(changed) => grants
                .iter()
                .filter(|g| changed.contains(&g.secret))
                .map(|g| g.secret.name.clone())
                .collect(),
            // Missed some reloads: say every grant may have rotated.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                grants.iter().map(|g| g.secret.name.clone()).collect()
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if names.is_empty() {
            continue;
        }
        tracing::info!(agent = %agent, secrets = ?names, "telling the agent its secrets rotated");
        let msg = AgentMessage::Push(AgentPush::SecretsRotated {
            names: names.into_iter().collect(),
        });
        if let Err(e) = framing::write_message(&mut *wr.lock().await, &msg).await {
            tracing::debug!(agent = %agent, "agent channel push failed: {e}");
            return;
        }
    }
}

fn error(kind: AgentErrorKind, msg: impl Into<String>) -> AgentResponse {
    AgentResponse::Error(AgentError::new(kind, msg))
}

async fn handle(
    req: AgentRequest,
    agent: &AgentName,
    grants: &Arc<Vec<SecretGrant>>,
    services: &CageServices,
    logs: Option<&crate::logs::AgentLogs>,
) -> AgentResponse {
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
        AgentRequest::Secret(s) => read_secret(services, agent, grants, s.name, logs).await,
    }
}

/// `iron_cage.secret(name)`: the vault enforces the grants and records the
/// read (or the refusal) durably before anything is answered.
async fn read_secret(
    services: &CageServices,
    agent: &AgentName,
    grants: &Arc<Vec<SecretGrant>>,
    name: String,
    logs: Option<&crate::logs::AgentLogs>,
) -> AgentResponse {
    let Some(secrets) = services.secrets.get() else {
        return error(
            AgentErrorKind::Unavailable,
            format!(
                "iron_cage.secret({name:?}): the secrets store is not running (the daemon is starting or shutting down)"
            ),
        );
    };
    let vault = match secrets.vault() {
        Ok(v) => v.clone(),
        Err(e) => return secret_refused(agent, &name, e),
    };
    let (who, g, n) = (agent.clone(), grants.clone(), name.clone());
    match tokio::task::spawn_blocking(move || vault.read_for_agent(who.as_str(), &g, &n)).await {
        Ok(Ok(value)) => {
            tracing::debug!(agent = %agent, secret = %name, "agent read a secret");
            let answer = AgentResponse::Secret(value.expose().to_owned());
            if let Some(logs) = logs {
                logs.mask_secrets([(name, value)]);
            }
            answer
        }
        Ok(Err(e)) => secret_refused(agent, &name, e),
        Err(e) => error(
            AgentErrorKind::Unavailable,
            format!("iron_cage.secret({name:?}): the read did not complete ({e})"),
        ),
    }
}

/// Not granted / not in the store are `NotFound`, everything else that keeps
/// the value from the agent `Unavailable` (the module raises
/// `SecretsUnavailable` for both). The messages hold names, never values.
fn secret_refused(agent: &AgentName, name: &str, e: SecretsError) -> AgentResponse {
    let kind = match &e {
        SecretsError::NotGranted { .. } | SecretsError::NotFound { .. } => AgentErrorKind::NotFound,
        SecretsError::Invalid(_) => AgentErrorKind::Invalid,
        _ => AgentErrorKind::Unavailable,
    };
    tracing::warn!(agent = %agent, secret = %name, "iron_cage.secret() refused: {e}");
    error(kind, format!("iron_cage.secret({name:?}): {e}"))
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
        start_with(Vec::new(), Arc::new(CageServices::default()))
    }

    fn start_with(
        grants: Vec<SecretGrant>,
        services: Arc<CageServices>,
    ) -> (UnixStream, Arc<Liveness>, tokio::task::JoinHandle<()>) {
        start_logged(grants, services, None)
    }

    fn start_logged(
        grants: Vec<SecretGrant>,
        services: Arc<CageServices>,
        logs: Option<Arc<crate::logs::AgentLogs>>,
    ) -> (UnixStream, Arc<Liveness>, tokio::task::JoinHandle<()>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let live = Liveness::new();
        let task = tokio::spawn(serve(
            ours,
            "agent-a".parse().unwrap(),
            grants,
            services,
            live.clone(),
            logs,
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
                assert!(e.message.contains("secrets store is not running"), "{e}");
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

    fn grant(name: &str) -> SecretGrant {
        SecretGrant {
            secret: SecretRef {
                name: name.into(),
                env: SecretEnv::Production,
            },
            delivery: crate::config::Delivery::File,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secrets_are_read_through_the_grants_and_rotations_are_pushed() {
        use crate::audit::Actor;
        use ironcage_shared::protocol::AuditOutcome;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
        let key =
            crate::secrets::master::MasterKey::new(b"channel test key".to_vec(), "test").unwrap();
        let secrets =
            tokio::task::spawn_blocking(move || Secrets::open(store, Some(&key), 3).unwrap())
                .await
                .unwrap();
        let vault = secrets.vault().unwrap().clone();
        let admin = Actor::daemon();
        vault
            .set(&admin, "DB", SecretEnv::Production, "db-one")
            .unwrap();
        vault
            .set(&admin, "OTHER", SecretEnv::Production, "not-yours")
            .unwrap();
        vault
            .set(&admin, "UNRELATED", SecretEnv::Production, "u1")
            .unwrap();
        let services = Arc::new(CageServices::default());
        services.set_secrets(secrets.clone());
        let logs = crate::logs::AgentLogs::new("agent-a".parse().unwrap(), dir.path());
        let (mut s, _, task) =
            start_logged(vec![grant("DB")], services.clone(), Some(logs.clone()));
        round_trip(&mut s, 1, hello(AGENT_CHANNEL_VERSION))
            .await
            .unwrap();
        let ask = |name: &str| AgentRequest::Secret(SecretRequest { name: name.into() });
        assert_eq!(
            round_trip(&mut s, 2, ask("DB")).await,
            Some(AgentResponse::Secret("db-one".into()))
        );
        // What it read is masked out of what it prints.
        logs.clone()
            .capture(
                &b"connected with db-one\n"[..],
                ironcage_shared::protocol::Stream::Stdout,
            )
            .await;
        assert_eq!(logs.tail(1).0[0].line, "connected with [secret DB]");
        match round_trip(&mut s, 3, ask("OTHER")).await {
            Some(AgentResponse::Error(e)) => {
                assert_eq!(e.kind, AgentErrorKind::NotFound);
                assert!(e.message.contains("not granted"), "{e}");
                assert!(!e.message.contains("not-yours"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let entries = secrets.audit().log().entries(None, 100).unwrap();
        let reads: Vec<_> = entries
            .iter()
            .filter(|e| e.action == "secret read")
            .map(|e| (e.target.clone(), e.outcome))
            .collect();
        assert_eq!(
            reads,
            vec![
                ("DB@production".to_owned(), AuditOutcome::Ok),
                ("OTHER".to_owned(), AuditOutcome::Denied)
            ]
        );

        // A reload that changed nothing the agent holds pushes nothing; one
        // that rotated its secret pushes the name, before the next reply.
        vault
            .set(&admin, "UNRELATED", SecretEnv::Production, "u2")
            .unwrap();
        assert_eq!(services.secrets_reloaded(vault.heads().unwrap()), 1);
        assert_eq!(services.secrets_reloaded(vault.heads().unwrap()), 0);
        vault
            .set(&admin, "DB", SecretEnv::Production, "db-two")
            .unwrap();
        assert_eq!(services.secrets_reloaded(vault.heads().unwrap()), 1);
        match framing::read_message::<_, AgentMessage>(&mut s)
            .await
            .unwrap()
        {
            Some(AgentMessage::Push(AgentPush::SecretsRotated { names })) => {
                assert_eq!(names, vec!["DB".to_owned()])
            }
            other => panic!("expected the rotation push, got {other:?}"),
        }
        assert_eq!(
            round_trip(&mut s, 4, ask("DB")).await,
            Some(AgentResponse::Secret("db-two".into()))
        );
        drop(s);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_disabled_store_is_unavailable_with_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
        let services = Arc::new(CageServices::default());
        services.set_secrets(Secrets::open(store, None, 3).unwrap());
        let (mut s, _, task) = start_with(vec![grant("DB")], services);
        round_trip(&mut s, 1, hello(AGENT_CHANNEL_VERSION))
            .await
            .unwrap();
        let secret = AgentRequest::Secret(SecretRequest { name: "DB".into() });
        match round_trip(&mut s, 2, secret).await {
            Some(AgentResponse::Error(e)) => {
                assert_eq!(e.kind, AgentErrorKind::Unavailable);
                assert!(e.message.contains("secrets are disabled"), "{e}");
                assert!(e.message.contains("IRON_SECRETS_MASTER_KEY"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        drop(s);
        task.await.unwrap();
    }
}
