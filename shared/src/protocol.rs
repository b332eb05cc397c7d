//! The control protocol between `ironctl` (or any client) and `ironcaged`.
//!
//! Every connection starts with [`Request::Hello`] carrying [`PROTOCOL_VERSION`];
//! the daemon answers [`Response::Hello`] or, on a version mismatch, an
//! [`ErrorResponse`] with [`ErrorCode::VersionMismatch`] and closes. After that
//! each request gets exactly one response, except `AgentLogs { follow: true }`,
//! which streams `LogLines` until the client hangs up.
//!
//! Wire rules (postcard encodes an enum variant by its index):
//! - variants are only ever **appended**, never reordered or removed;
//! - `Hello` stays variant 0 of both enums and its payload layout never changes,
//!   so any two versions can at least tell each other they disagree.

use crate::AgentName;
use crate::money::Micros;
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change of the message set.
pub const PROTOCOL_VERSION: u32 = 1;

/// A client's request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Must be first on every connection. Frozen layout.
    Hello(HelloRequest),
    Ping,
    DaemonStatus,
    /// Re-read the configuration file; answered once the new config is applied
    /// or rejected (synchronous, for `ExecReload=`).
    Reload,
    ListAgents,
    AgentStatus(AgentRef),
    StartAgent(AgentRef),
    StopAgent(AgentRef),
    RestartAgent(AgentRef),
    KillAgent(KillRequest),
    AgentLogs(LogsRequest),
    BudgetShow(BudgetShowRequest),
    BudgetSet(BudgetSetRequest),
    /// Zero the agent's spend for the current period (history stays for
    /// `Costs`) and clear its fired alerts.
    BudgetReset(AgentRef),
    Costs(CostsRequest),
    /// Every circuit breaker (one per provider and model seen).
    CircuitsList,
    /// Close one circuit now, whatever its state (admin).
    CircuitReset(CircuitRef),
    /// The original behind a reversible PII token (admin; every reveal is
    /// recorded).
    PiiReveal(PiiRevealRequest),
    // --- Secrets and the audit trail (issue 7). ---
    /// Metadata and masked values (viewer and admin).
    SecretsList(SecretsListRequest),
    /// The plaintext of one secret (admin; audited with an HMAC of the value).
    SecretGet(SecretRef),
    /// Store a new version (admin).
    SecretSet(SecretSetRequest),
    /// Remove a secret and all its versions (admin).
    SecretRm(SecretRef),
    /// Version history, metadata only (viewer and admin).
    SecretVersions(SecretRef),
    /// Make an older kept version current again (admin).
    SecretRollback(SecretRollbackRequest),
    /// Re-read provider keys and agents' granted secrets from the store
    /// (admin; what SIGUSR1 does).
    SecretsReload,
    /// Re-wrap every data key under a new master key (admin).
    SecretsRekey(SecretsRekeyRequest),
    /// Every current secret as a Vault KV v2 or flat JSON document (admin).
    SecretsExport(SecretsExportRequest),
    /// Set secrets from a document in either export format (admin).
    SecretsImport(SecretsImportRequest),
    /// Audit entries (viewer and admin).
    AuditTail(AuditTailRequest),
    /// Recompute the audit hash chain and checkpoints (viewer and admin).
    AuditVerify,
    // --- Audit anchors (issue 7). ---
    /// `AuditVerify`, and fail unless the anchored checkpoint is still on the
    /// verified chain with exactly that MAC (viewer and admin).
    AuditVerifyAnchored(AuditAnchor),
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Hello`. Frozen layout.
    Hello(HelloResponse),
    Error(ErrorResponse),
    /// A mutation succeeded; the text says what happened.
    Ok(OkResponse),
    Pong,
    DaemonStatus(DaemonStatus),
    Agents(Vec<AgentInfo>),
    Agent(AgentInfo),
    LogLines(Vec<LogLine>),
    Budgets(Vec<BudgetInfo>),
    Costs(CostsReport),
    Circuits(Vec<CircuitInfo>),
    /// Answer to `PiiReveal`.
    PiiRevealed(PiiRevealed),
    // --- Secrets and the audit trail (issue 7). ---
    Secrets(Vec<SecretInfo>),
    SecretValue(SecretValueResponse),
    SecretVersions(Vec<SecretVersionInfo>),
    /// An exported document (JSON text).
    SecretsDocument(SecretValue),
    AuditEntries(Vec<AuditEntry>),
    AuditVerify(AuditVerifyReport),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloRequest {
    pub protocol_version: u32,
    /// Free text identifying the client, e.g. "ironctl 0.1.0".
    pub client: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResponse {
    pub protocol_version: u32,
    pub daemon_version: String,
    /// The role this connection was granted.
    pub role: Role,
}

/// What a connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read state only.
    Viewer,
    /// Everything.
    Admin,
    /// An agent's own channel: its own budget, its grants; nothing else.
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    VersionMismatch,
    /// The peer's role does not allow the request.
    PermissionDenied,
    NotFound,
    /// The request is well-formed but cannot be applied (bad config, bad state).
    Invalid,
    /// The frame could not be decoded.
    Malformed,
    Internal,
    /// The request must be preceded by `Hello`.
    HelloRequired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OkResponse {
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRef {
    pub name: AgentName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillRequest {
    pub name: AgentName,
    /// Signal number (e.g. 9, 15).
    pub signal: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    pub name: AgentName,
    /// How many of the most recent lines to send first.
    pub lines: u32,
    /// Keep the connection open and stream new lines.
    pub follow: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub daemon_version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config_path: String,
    pub socket_path: String,
    pub state_dir: String,
    /// Loopback address of the LLM gateway, if it is running.
    pub gateway_addr: Option<String>,
    pub agents_total: u32,
    pub agents_running: u32,
    /// Unix seconds of the last successful config (re)load.
    pub config_loaded_at: u64,
}

/// Lifecycle state of a supervised agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Being spawned.
    Starting,
    Running,
    /// SIGTERM sent to its group; SIGKILL follows after the grace period.
    Stopping,
    /// Stopped on request (operator, reload, shutdown, budget); not restarted.
    Stopped,
    /// Exited on its own and the restart policy does not restart it.
    Exited,
    /// Waiting out the restart backoff.
    Backoff,
    /// Crash loop: more restarts than allowed within the window. Not restarted
    /// until an operator starts it.
    Failed,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Starting => "starting",
            AgentState::Running => "running",
            AgentState::Stopping => "stopping",
            AgentState::Stopped => "stopped",
            AgentState::Exited => "exited",
            AgentState::Backoff => "backoff",
            AgentState::Failed => "failed",
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// Unix seconds.
    pub at: u64,
}

/// Why an agent was stopped, when it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Operator,
    KilledByOperator,
    Reload,
    Shutdown,
    BudgetExhausted,
    Watchdog,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub name: AgentName,
    pub state: AgentState,
    pub pid: Option<u32>,
    /// Restarts since the daemon started supervising it.
    pub restarts: u32,
    /// Seconds the current process has been running.
    pub uptime_secs: Option<u64>,
    pub last_exit: Option<ExitInfo>,
    pub stop_reason: Option<StopReason>,
    /// `always`, `on-failure` or `never`.
    pub restart_policy: String,
    pub command: Vec<String>,
    /// Milliseconds until the next restart attempt, in `backoff`.
    pub next_restart_in_ms: Option<u64>,
    /// The user it runs as when the config sets one (`nobody (uid 65534,
    /// gid 65534)`); `None`: the daemon's own user.
    pub user: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub stream: Stream,
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetShowRequest {
    /// One agent, or all when `None`.
    pub name: Option<AgentName>,
}

/// Budget period; spend resets at UTC boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Day,
    Week,
    Month,
    Total,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Week => "week",
            BudgetPeriod::Month => "month",
            BudgetPeriod::Total => "total",
        }
    }
}

impl std::str::FromStr for BudgetPeriod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "day" => Ok(BudgetPeriod::Day),
            "week" => Ok(BudgetPeriod::Week),
            "month" => Ok(BudgetPeriod::Month),
            "total" => Ok(BudgetPeriod::Total),
            other => Err(format!(
                "unknown budget period {other:?}; use day, week, month or total"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSetRequest {
    pub name: AgentName,
    pub limit: Micros,
    /// Keep the current period when `None`.
    pub period: Option<BudgetPeriod>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetInfo {
    pub name: AgentName,
    /// `None`: no budget configured (unlimited).
    pub limit: Option<Micros>,
    pub period: BudgetPeriod,
    /// Unix seconds when the current period started / ends (`None` for `total`).
    pub period_start: u64,
    pub period_end: Option<u64>,
    /// Settled, durably recorded spend this period.
    pub spent: Micros,
    /// Held by calls in flight (and settles not yet durable).
    pub reserved: Micros,
    /// `limit - spent - reserved`, floored at zero; `None` when unlimited.
    pub remaining: Option<Micros>,
    pub calls: u64,
    /// Whether `ironctl budget set` overrides the config.
    pub overridden: bool,
    /// Alert thresholds (percent) already fired this period.
    pub alerts_fired: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CostsBy {
    Agent,
    Model,
    Provider,
    Tag,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostsRequest {
    pub by: CostsBy,
    /// Unix seconds; all history when `None`.
    pub since: Option<u64>,
    pub agent: Option<AgentName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostsReport {
    pub by: CostsBy,
    pub since: Option<u64>,
    pub rows: Vec<CostRow>,
    pub total: Micros,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostRow {
    /// The agent name, `provider/model`, provider, or tag (`-` for untagged).
    pub key: String,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost: Micros,
    /// Calls whose usage was counted locally, not reported by the provider.
    pub estimated_calls: u64,
}

/// `provider/model`: names one circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CircuitRef {
    pub provider: String,
    pub model: String,
}

impl std::fmt::Display for CircuitRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

impl std::str::FromStr for CircuitRef {
    type Err = String;
    /// Splits at the first `/`: provider names never contain one, model names
    /// may (`openrouter/meta-llama/llama-3`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((p, m)) if !p.is_empty() && !m.is_empty() => Ok(CircuitRef {
                provider: p.to_owned(),
                model: m.to_owned(),
            }),
            _ => Err(format!("{s:?} is not PROVIDER/MODEL (e.g. openai/gpt-4o)")),
        }
    }
}

/// State of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are refused (the gateway falls back) until `next_probe_ms`.
    Open,
    /// One probe call is in flight; others are refused until it answers.
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        }
    }
}

/// One circuit breaker and its figures since the daemon started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitInfo {
    pub provider: String,
    pub model: String,
    pub state: CircuitState,
    /// Failures counted in the current window.
    pub failures_in_window: u32,
    /// Failures within `window_ms` that open the circuit.
    pub threshold: u32,
    pub window_ms: u64,
    /// Times it opened (a failed probe re-opening it counts).
    pub opens: u64,
    /// Unix milliseconds of the last state change; `None`: never changed.
    pub last_transition_ms: Option<u64>,
    /// Unix milliseconds from which an open circuit lets one probe through;
    /// `None` unless open.
    pub next_probe_ms: Option<u64>,
    /// Why it last opened (`HTTP 503`, `timeout`, `HTTP 429, Retry-After 2s`...).
    pub last_reason: Option<String>,
    /// Calls forwarded to the model.
    pub requests: u64,
    /// Of those, the ones that counted as failures.
    pub failures: u64,
    /// Calls turned away while the circuit was open or probing.
    pub rejected: u64,
    /// Latency of recent successful calls (to the first byte for streams), in
    /// microseconds; `None` before the first.
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
}

impl CostRow {
    /// A row with nothing counted yet.
    pub fn empty(key: impl Into<String>) -> Self {
        CostRow {
            key: key.into(),
            calls: 0,
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            cost: Micros::ZERO,
            estimated_calls: 0,
        }
    }
}

/// `ironctl pii reveal TOKEN`: `tok_…` or the whole `[KIND:tok_…]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PiiRevealRequest {
    pub token: String,
}

/// A revealed PII value. `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PiiRevealed {
    pub token: String,
    /// The kind it was found as (`email`, `card`, a custom pattern name...).
    pub kind: String,
    pub value: String,
}

impl std::fmt::Debug for PiiRevealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiiRevealed")
            .field("token", &self.token)
            .field("kind", &self.kind)
            .field("value", &"[REDACTED]")
            .finish()
    }
}

impl From<PiiRevealRequest> for Request {
    fn from(r: PiiRevealRequest) -> Self {
        Request::PiiReveal(r)
    }
}

impl From<HelloRequest> for Request {
    fn from(v: HelloRequest) -> Self {
        Request::Hello(v)
    }
}
impl From<KillRequest> for Request {
    fn from(v: KillRequest) -> Self {
        Request::KillAgent(v)
    }
}
impl From<LogsRequest> for Request {
    fn from(v: LogsRequest) -> Self {
        Request::AgentLogs(v)
    }
}
impl From<BudgetSetRequest> for Request {
    fn from(v: BudgetSetRequest) -> Self {
        Request::BudgetSet(v)
    }
}
impl From<CostsRequest> for Request {
    fn from(v: CostsRequest) -> Self {
        Request::Costs(v)
    }
}
impl From<CircuitRef> for Request {
    fn from(v: CircuitRef) -> Self {
        Request::CircuitReset(v)
    }
}
impl From<ErrorResponse> for Response {
    fn from(v: ErrorResponse) -> Self {
        Response::Error(v)
    }
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error(ErrorResponse {
            code,
            message: message.into(),
        })
    }
    pub fn ok(message: impl Into<String>) -> Self {
        Response::Ok(OkResponse {
            message: message.into(),
        })
    }
}

impl Request {
    /// Whether the request changes state (and so needs the Admin role).
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Request::Reload
                | Request::StartAgent(_)
                | Request::StopAgent(_)
                | Request::RestartAgent(_)
                | Request::KillAgent(_)
                | Request::BudgetSet(_)
                | Request::BudgetReset(_)
                | Request::CircuitReset(_)
                // Not a mutation, but it discloses what policies hid: admin only.
                | Request::PiiReveal(_)
                | Request::SecretSet(_)
                | Request::SecretRm(_)
                | Request::SecretRollback(_)
                | Request::SecretsReload
                | Request::SecretsRekey(_)
                | Request::SecretsImport(_)
        )
    }

    /// Whether only an admin may make the request: every mutation, and the
    /// requests that reveal secret values.
    pub fn requires_admin(&self) -> bool {
        self.is_mutation() || matches!(self, Request::SecretGet(_) | Request::SecretsExport(_))
    }

    /// Short name for logs and denial messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello(_) => "hello",
            Request::Ping => "ping",
            Request::DaemonStatus => "daemon status",
            Request::Reload => "daemon reload",
            Request::ListAgents => "agents list",
            Request::AgentStatus(_) => "agents status",
            Request::StartAgent(_) => "agents start",
            Request::StopAgent(_) => "agents stop",
            Request::RestartAgent(_) => "agents restart",
            Request::KillAgent(_) => "agents kill",
            Request::AgentLogs(_) => "agents logs",
            Request::BudgetShow(_) => "budget show",
            Request::BudgetSet(_) => "budget set",
            Request::BudgetReset(_) => "budget reset",
            Request::Costs(_) => "costs",
            Request::CircuitsList => "circuits list",
            Request::CircuitReset(_) => "circuits reset",
            Request::PiiReveal(_) => "pii reveal",
            Request::SecretsList(_) => "secrets list",
            Request::SecretGet(_) => "secrets get",
            Request::SecretSet(_) => "secrets set",
            Request::SecretRm(_) => "secrets rm",
            Request::SecretVersions(_) => "secrets versions",
            Request::SecretRollback(_) => "secrets rollback",
            Request::SecretsReload => "secrets reload",
            Request::SecretsRekey(_) => "secrets rekey",
            Request::SecretsExport(_) => "secrets export",
            Request::SecretsImport(_) => "secrets import",
            Request::AuditTail(_) => "audit tail",
            Request::AuditVerify => "audit verify",
            Request::AuditVerifyAnchored(_) => "audit verify --anchor",
        }
    }
}

// --- Secrets and the audit trail (issue 7). ---

/// Longest secret value accepted, in bytes (frames are at most 1 MiB).
pub const MAX_SECRET_LEN: usize = 64 * 1024;

/// A secret value on the wire: zeroized on drop, `[REDACTED]` when printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(zeroize::Zeroizing<String>);

impl SecretValue {
    pub fn new(s: String) -> Self {
        SecretValue(zeroize::Zeroizing::new(s))
    }
    /// The value itself; call sites print it only where the operator asked.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// A secret's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretEnv {
    Development,
    Staging,
    Production,
}

impl SecretEnv {
    pub const ALL: [SecretEnv; 3] = [
        SecretEnv::Development,
        SecretEnv::Staging,
        SecretEnv::Production,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            SecretEnv::Development => "development",
            SecretEnv::Staging => "staging",
            SecretEnv::Production => "production",
        }
    }
}

impl std::fmt::Display for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SecretEnv {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "development" | "dev" => Ok(SecretEnv::Development),
            "staging" => Ok(SecretEnv::Staging),
            "production" | "prod" => Ok(SecretEnv::Production),
            other => Err(format!(
                "unknown environment {other:?}; use development, staging or production"
            )),
        }
    }
}

/// Checks a secret name: 1 to 128 of `A-Z a-z 0-9 _ - .`, starting with a
/// letter or digit (it becomes a file name in an agent's credentials directory).
pub fn check_secret_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() || name.len() > 128 {
        return Err(format!("secret name {name:?} must be 1 to 128 characters"));
    }
    if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "secret name {name:?} may hold only letters, digits, '_', '-' and '.', and must start with a letter or digit"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretsListRequest {
    /// One environment, or all when `None`.
    pub env: Option<SecretEnv>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    pub name: String,
    pub env: SecretEnv,
    /// A kept version (`SecretGet` only); the current one when `None`.
    pub version: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretSetRequest {
    pub name: String,
    pub env: SecretEnv,
    pub value: SecretValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRollbackRequest {
    pub name: String,
    pub env: SecretEnv,
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretsRekeyRequest {
    pub new_master_key: SecretValue,
}

/// Export/import document shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretsFormat {
    /// A JSON array of `vault kv get -format=json` documents, one per secret.
    VaultKv2,
    /// `{"NAME": "value"}` for `vault kv put PATH @file` (one environment).
    Flat,
}

impl std::str::FromStr for SecretsFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vault-kv2" => Ok(SecretsFormat::VaultKv2),
            "flat" => Ok(SecretsFormat::Flat),
            other => Err(format!("unknown format {other:?}; use vault-kv2 or flat")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretsExportRequest {
    pub format: SecretsFormat,
    /// One environment (required for `flat`), or all.
    pub env: Option<SecretEnv>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretsImportRequest {
    /// Detected from the document when `None`.
    pub format: Option<SecretsFormat>,
    /// Environment for flat documents (Vault documents carry their own).
    pub env: SecretEnv,
    pub document: SecretValue,
}

/// One secret's metadata, with its current value masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    pub env: SecretEnv,
    pub version: u32,
    /// Versions kept (current included).
    pub versions: u32,
    /// `sk-proj-abc...xyz`, or `****` for short values.
    pub masked: String,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Who last set it (`uid 0 (root)`).
    pub updated_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersionInfo {
    pub version: u32,
    pub created_ms: u64,
    pub created_by: String,
    pub current: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretValueResponse {
    pub name: String,
    pub env: SecretEnv,
    pub version: u32,
    pub value: SecretValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTailRequest {
    /// Entries with a larger seq; `None`: the last `limit` entries.
    pub after: Option<u64>,
    pub limit: u32,
    /// When nothing newer exists yet, wait up to this long for it (`tail -f`).
    pub wait_ms: u32,
}

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Ok,
    /// Refused for lack of a role or grant.
    Denied,
    Failed,
    /// Recorded before an action whose result has its own entry.
    Requested,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Ok => "ok",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Failed => "failed",
            AuditOutcome::Requested => "requested",
        }
    }
}

/// One audit trail entry. `hash` = SHA-256(`prev_hash` || the entry encoded
/// with `hash` empty); the first entry's `prev_hash` is 64 zeros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// The caller's uid; `None` for the daemon itself.
    pub actor_uid: Option<u32>,
    /// `admin`, `viewer`, `agent`, `none` (no role), or `daemon`.
    pub actor_role: String,
    pub actor_agent: Option<String>,
    /// `secrets set`, `agent started`, `breaker opened`...
    pub action: String,
    /// What it acted on (`OPENAI_KEY@production`, an agent, `openai/gpt-4o`).
    pub target: String,
    pub outcome: AuditOutcome,
    /// Free text: an error, `hmac-sha256:...` of a value read. Never a value.
    pub detail: String,
    /// Hex.
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerifyReport {
    pub entries: u64,
    /// The first seq that fails, and why.
    pub first_bad: Option<u64>,
    pub reason: Option<String>,
    /// Checkpoints whose HMAC was checked; 0 without a master key.
    pub checkpoints: u64,
    pub last_checkpoint: Option<u64>,
    /// Whether checkpoints could be checked (a master key is configured).
    pub keyed: bool,
    // --- Added with chained checkpoints and anchors (issue 7). ---
    /// Hex HMAC of the last checkpoint: with `last_checkpoint`, the head an
    /// operator records outside the machine as an anchor (`SEQ:MAC`).
    pub head_mac: Option<String>,
    /// First seq of the tail written without a master key (not covered by a
    /// checkpoint yet), if there is one.
    pub uncovered_from: Option<u64>,
    /// With an anchor: why it does not hold (`None`: it holds, or none given).
    pub anchor_error: Option<String>,
}

/// An external anchor: the checkpoint at `seq` had HMAC `mac` (64 hex digits)
/// when the operator recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAnchor {
    pub seq: u64,
    pub mac: String,
}

impl AuditVerifyReport {
    /// `SEQ:MAC` of the head, the form `ironctl audit verify --anchor` takes.
    pub fn anchor(&self) -> Option<String> {
        Some(format!(
            "{}:{}",
            self.last_checkpoint?,
            self.head_mac.as_ref()?
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing;

    #[test]
    fn hello_is_variant_zero_and_frozen() {
        let hello = Request::Hello(HelloRequest {
            protocol_version: 7,
            client: "x".into(),
        });
        let bytes = postcard::to_stdvec(&hello).unwrap();
        // variant 0, varint 7, string len 1, 'x'
        assert_eq!(bytes, vec![0, 7, 1, b'x']);
        let resp = Response::Hello(HelloResponse {
            protocol_version: 1,
            daemon_version: "v".into(),
            role: Role::Viewer,
        });
        assert_eq!(postcard::to_stdvec(&resp).unwrap()[0], 0);
    }

    #[test]
    fn roundtrip_every_request() {
        let name = AgentName::new("a").unwrap();
        let reqs = vec![
            Request::Ping,
            Request::ListAgents,
            Request::KillAgent(KillRequest {
                name: name.clone(),
                signal: 9,
            }),
            Request::AgentLogs(LogsRequest {
                name: name.clone(),
                lines: 10,
                follow: true,
            }),
            Request::BudgetSet(BudgetSetRequest {
                name: name.clone(),
                limit: Micros(5),
                period: Some(BudgetPeriod::Day),
            }),
            Request::Costs(CostsRequest {
                by: CostsBy::Tag,
                since: None,
                agent: None,
            }),
            Request::CircuitsList,
            Request::CircuitReset("openai/org/m".parse().unwrap()),
        ];
        for r in reqs {
            let f = framing::encode(&r).unwrap();
            let back: Request = framing::decode(&f[framing::HEADER_LEN..]).unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn circuit_refs() {
        let r: CircuitRef = "openrouter/meta-llama/llama-3".parse().unwrap();
        assert_eq!(
            (r.provider.as_str(), r.model.as_str()),
            ("openrouter", "meta-llama/llama-3")
        );
        assert_eq!(r.to_string(), "openrouter/meta-llama/llama-3");
        for bad in ["gpt-4o", "/gpt-4o", "openai/", ""] {
            assert!(bad.parse::<CircuitRef>().is_err(), "{bad}");
        }
        assert!(Request::CircuitReset(r).is_mutation());
        assert!(!Request::CircuitsList.is_mutation());
    }

    #[test]
    fn pii_reveal_is_admin_only_and_never_debug_prints_the_value() {
        let r = Request::PiiReveal(PiiRevealRequest {
            token: "tok_0123456789abcdef01234567".into(),
        });
        assert!(r.is_mutation(), "admin only");
        assert_eq!(r.name(), "pii reveal");
        let v = Response::PiiRevealed(PiiRevealed {
            token: "tok_0123456789abcdef01234567".into(),
            kind: "email".into(),
            value: "jane@example.com".into(),
        });
        let printed = format!("{v:?}");
        assert!(
            !printed.contains("jane") && printed.contains("[REDACTED]"),
            "{printed}"
        );
        let bytes = postcard::to_stdvec(&v).unwrap();
        assert_eq!(postcard::from_bytes::<Response>(&bytes).unwrap(), v);
    }

    #[test]
    fn invalid_agent_name_on_the_wire_is_rejected() {
        // A hostile client bypassing AgentName::new still cannot smuggle a path.
        #[derive(Serialize)]
        enum Fake {
            _H(HelloRequest),
            _P,
            _D,
            _R,
            _L,
            AgentStatus(String),
        }
        let bytes = postcard::to_stdvec(&Fake::AgentStatus("../etc".into())).unwrap();
        assert!(postcard::from_bytes::<Request>(&bytes).is_err());
    }

    #[test]
    fn secrets_requests_roundtrip_never_print_values_and_need_the_right_role() {
        let v = SecretValue::new("sk-live-very-secret".into());
        let reqs = vec![
            Request::SecretsList(SecretsListRequest { env: None }),
            Request::SecretGet(SecretRef {
                name: "K".into(),
                env: SecretEnv::Staging,
                version: Some(2),
            }),
            Request::SecretSet(SecretSetRequest {
                name: "K".into(),
                env: SecretEnv::Production,
                value: v.clone(),
            }),
            Request::SecretsRekey(SecretsRekeyRequest {
                new_master_key: v.clone(),
            }),
            Request::SecretsImport(SecretsImportRequest {
                format: Some(SecretsFormat::Flat),
                env: SecretEnv::Development,
                document: v.clone(),
            }),
            Request::SecretsExport(SecretsExportRequest {
                format: SecretsFormat::VaultKv2,
                env: None,
            }),
            Request::AuditTail(AuditTailRequest {
                after: Some(3),
                limit: 10,
                wait_ms: 0,
            }),
            Request::AuditVerify,
            Request::AuditVerifyAnchored(AuditAnchor {
                seq: 12,
                mac: "ab".repeat(32),
            }),
        ];
        for r in &reqs {
            let f = framing::encode(r).unwrap();
            let back: Request = framing::decode(&f[framing::HEADER_LEN..]).unwrap();
            assert_eq!(&back, r);
            assert!(!format!("{r:?}").contains("very-secret"), "{r:?}");
        }
        let admin_only: Vec<bool> = reqs.iter().map(Request::requires_admin).collect();
        assert_eq!(
            admin_only,
            vec![false, true, true, true, true, true, false, false, false]
        );
        assert!(
            Request::SecretSet(SecretSetRequest {
                name: "K".into(),
                env: SecretEnv::Production,
                value: v
            })
            .is_mutation()
        );
        assert!(
            !Request::SecretGet(SecretRef {
                name: "K".into(),
                env: SecretEnv::Production,
                version: None
            })
            .is_mutation()
        );
        for ok in ["OPENAI_KEY", "db.password", "a-b_c", "9lives"] {
            assert!(check_secret_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", &"x".repeat(129)] {
            assert!(check_secret_name(bad).is_err(), "{bad}");
        }
        assert_eq!("prod".parse::<SecretEnv>(), Ok(SecretEnv::Production));
        assert!("qa".parse::<SecretEnv>().is_err());
    }
}
