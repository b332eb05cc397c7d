//! The daemon's TOML configuration: parsing, validation, and errors that point at
//! the file, line and key to fix.
//!
//! Parsing happens in two steps. [`raw`] mirrors the file (serde, unknown keys
//! refused) and keeps spans for values that need checks serde cannot express;
//! [`Config::from_str`] validates and produces the plain, typed [`Config`] the rest
//! of the daemon uses. A config that fails validation is never partially applied.

use ironcage_shared::AgentName;
use ironcage_shared::money::Micros;
use ironcage_shared::protocol::BudgetPeriod;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod pii;
pub use pii::{PiiSpec, PiiStyle, default_policies};

pub const DEFAULT_SOCKET: &str = "/run/ironcage/ironcaged.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ironcage";
pub const DEFAULT_CONFIG: &str = "/etc/ironcage/ironcaged.toml";

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the error has a position.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted key path such as `agent[2].restart`, when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        if let Some(k) = &self.key {
            write!(f, ": key `{k}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// When to restart an agent whose process exited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

/// What happens when an agent's budget cannot pay for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExhausted {
    /// Refuse the call with HTTP 402; the agent keeps running.
    Refuse,
    /// Refuse the call and stop the agent.
    Stop,
}

/// One identity allowed on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Uid(u32),
    User(String),
    Group(String),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Uid(u) => write!(f, "uid:{u}"),
            Principal::User(u) => write!(f, "user:{u}"),
            Principal::Group(g) => write!(f, "group:{g}"),
        }
    }
}

impl std::str::FromStr for Principal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a principal; write uid:N, user:NAME or group:NAME");
        let (kind, val) = s.split_once(':').ok_or_else(bad)?;
        if val.is_empty() {
            return Err(bad());
        }
        match kind {
            "uid" => val.parse().map(Principal::Uid).map_err(|_| bad()),
            "user" => Ok(Principal::User(val.to_owned())),
            "group" => Ok(Principal::Group(val.to_owned())),
            _ => Err(bad()),
        }
    }
}

/// Who may use the control socket, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub admins: Vec<Principal>,
    pub viewers: Vec<Principal>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSection {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Group that owns the socket file (mode 0660), if set.
    pub socket_group: Option<String>,
    /// `python_path`: the directory holding the `iron_cage` package, if set
    /// (otherwise found next to the daemon's binary, see `cage::module`).
    pub python_path: Option<PathBuf>,
}

/// One supervised agent, fully validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    pub name: AgentName,
    /// argv; `command[0]` is looked up in the agent's `PATH`.
    pub command: Vec<String>,
    pub working_dir: PathBuf,
    /// Extra environment on top of the clean base environment.
    pub env: BTreeMap<String, String>,
    /// Names of daemon environment variables passed through unchanged.
    pub inherit_env: Vec<String>,
    pub restart: RestartPolicy,
    pub stop_grace: Duration,
    /// Crash-loop limit: more than `max_restarts` restarts within
    /// `restart_window` puts the agent in `failed`.
    pub max_restarts: u32,
    pub restart_window: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Start when the daemon starts (otherwise only on `ironctl agents start`).
    pub autostart: bool,
    pub budget: Option<BudgetSpec>,
    /// Providers this agent may use, by name; empty = all.
    pub providers: Vec<String>,
    /// Models to fall back to, in order, when the requested one's circuit is
    /// open or its call fails before any byte reached the agent (same API
    /// family only; see `gateway::proxy`).
    pub fallback: Vec<ModelRef>,
    /// PII policy: the daemon-wide `[pii]` with this agent's `[agent.pii]` applied.
    pub pii: PiiSpec,
    /// Set for `python = ..., script = ...` agents (then `command` is
    /// `[python, script, args...]`, what it looks like run by hand).
    pub python: Option<PythonAgent>,
    /// Restart the agent when its channel is silent this long (`watchdog_secs`).
    pub watchdog: Option<Duration>,
    /// Secrets this agent receives (files by default, env vars where asked).
    pub secrets: Vec<SecretGrant>,
    /// The identity it runs as (`user`/`group`, or `[daemon] agent_user`);
    /// `None`: the daemon's own uid.
    pub user: Option<crate::agent_user::AgentUser>,
}

/// A Python agent: its own interpreter runs `script` with the `iron_cage`
/// module loaded first (see `cage::module::BOOTSTRAP`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonAgent {
    /// The agent's interpreter (`/srv/agent/.venv/bin/python`); a bare name is
    /// looked up in the agent's `PATH`.
    pub interpreter: String,
    /// As written in the config (relative to `working_dir`, or absolute).
    pub script: String,
    pub args: Vec<String>,
    /// The directory put first on `PYTHONPATH` (holds `iron_cage/`).
    pub module_dir: PathBuf,
}

/// `provider/model`: one model of one configured provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    pub provider: String,
    pub model: String,
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

/// Circuit-breaker thresholds and retries, global (`[breaker]`) or for one
/// provider (`[provider.breaker]`, each key falling back to the global one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Failures within `window` that open a circuit.
    pub failures: u32,
    pub window: Duration,
    /// How long an open circuit refuses calls before one probe goes through.
    pub cooldown: Duration,
    /// Extra attempts on the same model, before falling back.
    pub retries: u32,
    /// Base backoff before a retry (jittered: 0.5x to 1.5x, doubled per retry).
    pub retry_backoff: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(60),
            retries: 1,
            retry_backoff: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSpec {
    pub limit: Micros,
    pub period: BudgetPeriod,
    pub on_exhausted: OnExhausted,
    /// Worst case reserved for a call that names no `max_tokens`.
    pub max_cost_per_call: Option<Micros>,
}

/// Which wire API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

/// An upstream LLM provider.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderSpec {
    pub name: String,
    pub kind: ProviderKind,
    /// What you would give the provider's own SDK: OpenAI-style bases include the
    /// version (`https://api.openai.com/v1`), Anthropic's is the bare host
    /// (`https://api.anthropic.com`). See `gateway::routes::upstream_url`.
    pub base_url: String,
    /// Daemon environment variable holding the real API key.
    pub api_key_env: Option<String>,
    /// `[breaker]` with this provider's overrides applied.
    pub breaker: BreakerSettings,
    /// The secret in the store holding the real API key (instead of
    /// `api_key_env`); the gateway reads it, agents never receive it.
    pub api_key_secret: Option<SecretRef>,
}

/// `NAME` or `NAME@environment` (production when not given): one secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef {
    pub name: String,
    pub env: ironcage_shared::protocol::SecretEnv,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.env)
    }
}

impl std::str::FromStr for SecretRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, env) = match s.split_once('@') {
            Some((n, e)) => (n, e.parse()?),
            None => (s, ironcage_shared::protocol::SecretEnv::Production),
        };
        ironcage_shared::protocol::check_secret_name(name)?;
        Ok(SecretRef {
            name: name.to_owned(),
            env,
        })
    }
}

/// How a granted secret reaches an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A 0400 file named after the secret in `$IRONCAGE_CREDENTIALS_DIRECTORY`.
    File,
    /// An environment variable of this name.
    Env(String),
}

/// One secret an agent may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretGrant {
    pub secret: SecretRef,
    pub delivery: Delivery,
}

/// `[secrets]`: where the master key comes from, and versioning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsSection {
    /// A file holding the master key (mode 0600 or stricter).
    pub master_key_file: Option<PathBuf>,
    /// systemd credential name looked up in `$CREDENTIALS_DIRECTORY`.
    pub credential: String,
    /// Versions kept per secret (at least 1).
    pub keep_versions: u32,
}

impl fmt::Debug for ProviderSpec {
    // Holds no secret itself (only the variable's name), but keep it explicit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key_env", &self.api_key_env)
            .field("api_key_secret", &self.api_key_secret)
            .field("breaker", &self.breaker)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySection {
    /// Loopback address; port 0 picks a free port at start.
    pub listen: SocketAddr,
    /// Proxy paths other than the metered APIs, unmetered.
    pub allow_unmetered_paths: bool,
    /// `max_tokens` assumed for the worst case when a request gives none and the
    /// agent has no per-call cap.
    pub default_max_tokens: u64,
    /// A LiteLLM-format price file replacing the built-in table.
    pub price_file: Option<PathBuf>,
    /// LiteLLM-format entries merged over the table (JSON text).
    pub price_overrides: Option<String>,
    /// Upstream timeout for the response headers.
    pub upstream_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSection {
    /// Percent thresholds that raise an alert, each once per period.
    pub alert_thresholds: Vec<u32>,
    /// argv run with the alert as JSON on stdin.
    pub alert_command: Option<Vec<String>>,
    /// Days of per-call cost history (`ironctl costs`) to keep; `None`
    /// keeps all. Budgets do not depend on it.
    pub keep_cost_history_days: Option<u32>,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub daemon: DaemonSection,
    pub access: Access,
    pub gateway: GatewaySection,
    pub budget: BudgetSection,
    /// `[breaker]`: the defaults every provider starts from.
    pub breaker: BreakerSettings,
    pub providers: Vec<ProviderSpec>,
    pub agents: Vec<AgentSpec>,
    /// `[pii]`: the daemon-wide PII settings every agent starts from.
    pub pii: PiiSpec,
    /// `[secrets]`.
    pub secrets: SecretsSection,
}

mod raw {
    use serde::Deserialize;
    use std::collections::BTreeMap;
    use toml::Spanned;

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        #[serde(default)]
        pub daemon: Daemon,
        #[serde(default)]
        pub access: Access,
        #[serde(default)]
        pub gateway: Gateway,
        #[serde(default)]
        pub budget: Budget,
        #[serde(default)]
        pub breaker: Breaker,
        #[serde(default)]
        pub provider: Vec<Provider>,
        #[serde(default)]
        pub agent: Vec<Agent>,
        pub pii: Option<super::pii::raw::Pii>,
        #[serde(default)]
        pub secrets: Secrets,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Secrets {
        pub master_key_file: Option<String>,
        pub credential: Option<String>,
        pub keep_versions: Option<Spanned<u32>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Daemon {
        pub socket: Option<String>,
        pub state_dir: Option<String>,
        pub socket_group: Option<String>,
        pub python_path: Option<Spanned<String>>,
        /// Default `user` of every agent that sets none.
        pub agent_user: Option<Spanned<crate::agent_user::IdRef>>,
        /// Default `group` going with `agent_user`.
        pub agent_group: Option<Spanned<crate::agent_user::IdRef>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Access {
        #[serde(default)]
        pub admins: Vec<Spanned<String>>,
        #[serde(default)]
        pub viewers: Vec<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Gateway {
        pub listen: Option<Spanned<String>>,
        pub allow_unmetered_paths: Option<bool>,
        pub default_max_tokens: Option<u64>,
        pub price_file: Option<String>,
        pub prices: Option<toml::Table>,
        pub upstream_timeout_secs: Option<u64>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Budget {
        pub alert_thresholds: Option<Spanned<Vec<u32>>>,
        pub alert_command: Option<Spanned<Vec<String>>>,
        pub keep_cost_history_days: Option<Spanned<u32>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Breaker {
        pub failures: Option<Spanned<u32>>,
        pub window_secs: Option<Spanned<f64>>,
        pub cooldown_secs: Option<Spanned<f64>>,
        pub retries: Option<Spanned<u32>>,
        pub retry_backoff_ms: Option<Spanned<u64>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Provider {
        pub name: Spanned<String>,
        pub kind: Kind,
        pub base_url: Spanned<String>,
        pub api_key_env: Option<String>,
        pub api_key_secret: Option<Spanned<String>>,
        pub breaker: Option<Breaker>,
    }

    #[derive(Deserialize, Clone, Copy)]
    #[serde(rename_all = "lowercase")]
    pub enum Kind {
        Openai,
        Anthropic,
    }

    #[derive(Deserialize, Clone, Copy)]
    #[serde(rename_all = "kebab-case")]
    pub enum Restart {
        Always,
        OnFailure,
        Never,
    }

    #[derive(Deserialize, Clone, Copy)]
    #[serde(rename_all = "lowercase")]
    pub enum OnExhausted {
        Refuse,
        Stop,
    }

    #[derive(Deserialize, Clone, Copy)]
    #[serde(rename_all = "lowercase")]
    pub enum Period {
        Day,
        Week,
        Month,
        Total,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Agent {
        pub name: Spanned<ironcage_shared::AgentName>,
        pub command: Option<Spanned<Vec<String>>>,
        pub python: Option<Spanned<String>>,
        pub script: Option<Spanned<String>>,
        pub args: Option<Spanned<Vec<String>>>,
        pub watchdog_secs: Option<Spanned<f64>>,
        pub working_dir: Option<Spanned<String>>,
        #[serde(default)]
        pub env: BTreeMap<String, String>,
        #[serde(default)]
        pub inherit_env: Vec<String>,
        pub restart: Option<Restart>,
        pub stop_grace_secs: Option<f64>,
        pub max_restarts: Option<u32>,
        pub restart_window_secs: Option<u64>,
        pub backoff_initial_ms: Option<u64>,
        pub backoff_max_secs: Option<u64>,
        pub autostart: Option<bool>,
        pub budget_usd: Option<Spanned<f64>>,
        pub budget_period: Option<Period>,
        pub on_exhausted: Option<OnExhausted>,
        pub max_cost_per_call_usd: Option<Spanned<f64>>,
        #[serde(default)]
        pub providers: Vec<String>,
        #[serde(default)]
        pub fallback: Vec<Spanned<String>>,
        pub pii: Option<super::pii::raw::Pii>,
        /// `["NAME", "NAME@staging"]`: delivered as files.
        #[serde(default)]
        pub secrets: Vec<Spanned<String>>,
        /// `{ VAR = "NAME[@env]" }`: delivered as environment variables.
        #[serde(default)]
        pub secret_env: BTreeMap<String, Spanned<String>>,
        /// Run as this user (name or uid).
        pub user: Option<Spanned<crate::agent_user::IdRef>>,
        /// With this group (name or gid); default: the user's primary group.
        pub group: Option<Spanned<crate::agent_user::IdRef>>,
    }
}

/// Turns a byte offset into 1-based (line, column).
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

/// The dotted key at `offset`: the enclosing `[table]`/`[[array]]` header (with an
/// index for arrays of tables) and the `key =` on that line.
fn key_at(src: &str, offset: usize) -> Option<String> {
    let mut table = String::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut line_start = 0;
    for line in src.split_inclusive('\n') {
        let end = line_start + line.len();
        let t = line.trim();
        if let Some(h) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let h = h.trim().to_owned();
            let n = counts.entry(h.clone()).or_insert(0);
            table = format!("{h}[{n}]");
            *n += 1;
        } else if let Some(h) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = h.trim().to_owned();
        }
        if offset < end {
            let key = t
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').to_owned());
            return match (table.is_empty(), key) {
                (_, None) if !table.is_empty() => Some(table),
                (true, k) => k,
                (false, Some(k)) => Some(format!("{table}.{k}")),
                (false, None) => None,
            };
        }
        line_start = end;
    }
    None
}

struct Ctx<'a> {
    file: &'a Path,
    src: &'a str,
}

impl Ctx<'_> {
    fn at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, col) = line_col(self.src, span.start);
        ConfigError {
            file: self.file.to_owned(),
            line: Some(line),
            column: Some(col),
            key: key_at(self.src, span.start),
            message: message.into(),
        }
    }
    fn plain(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: None,
            column: None,
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }
}

/// Longest circuit window or cooldown accepted (a day).
const MAX_BREAKER_SECS: f64 = 86_400.0;

/// `base` with the keys `raw` sets replaced, each checked.
fn breaker_settings(
    cx: &Ctx<'_>,
    raw: raw::Breaker,
    base: BreakerSettings,
) -> Result<BreakerSettings, ConfigError> {
    let mut s = base;
    if let Some(n) = raw.failures {
        if !(1..=10_000).contains(n.get_ref()) {
            return Err(cx.at(
                n.span(),
                format!("failures = {} must be between 1 and 10000", n.get_ref()),
            ));
        }
        s.failures = *n.get_ref();
    }
    let secs = |v: toml::Spanned<f64>, what: &str| -> Result<Duration, ConfigError> {
        let x = *v.get_ref();
        if !(x > 0.0 && x <= MAX_BREAKER_SECS) {
            return Err(cx.at(
                v.span(),
                format!("{what} = {x} must be more than 0 and at most {MAX_BREAKER_SECS} seconds"),
            ));
        }
        Ok(Duration::from_secs_f64(x))
    };
    if let Some(w) = raw.window_secs {
        s.window = secs(w, "window_secs")?;
    }
    if let Some(c) = raw.cooldown_secs {
        s.cooldown = secs(c, "cooldown_secs")?;
    }
    if let Some(r) = raw.retries {
        if *r.get_ref() > 10 {
            return Err(cx.at(
                r.span(),
                format!("retries = {} must be at most 10", r.get_ref()),
            ));
        }
        s.retries = *r.get_ref();
    }
    if let Some(b) = raw.retry_backoff_ms {
        if *b.get_ref() > 60_000 {
            return Err(cx.at(
                b.span(),
                format!("retry_backoff_ms = {} must be at most 60000", b.get_ref()),
            ));
        }
        s.retry_backoff = Duration::from_millis(*b.get_ref());
    }
    Ok(s)
}

/// The identity an agent runs as: its own `user` (with its `group`, or the
/// user's primary group), else the daemon's `agent_user` (with the agent's
/// `group`, else `agent_group`, else the primary group), else none.
fn agent_user(
    cx: &Ctx<'_>,
    user: Option<&toml::Spanned<crate::agent_user::IdRef>>,
    group: Option<&toml::Spanned<crate::agent_user::IdRef>>,
    default_user: Option<&toml::Spanned<crate::agent_user::IdRef>>,
    default_group: Option<&toml::Spanned<crate::agent_user::IdRef>>,
) -> Result<Option<crate::agent_user::AgentUser>, ConfigError> {
    use crate::agent_user::Which;
    let (u, g) = match (user, default_user) {
        (Some(u), _) => (u, group),
        (None, Some(d)) => (d, group.or(default_group)),
        (None, None) => {
            return match group {
                Some(g) => Err(cx.at(
                    g.span(),
                    "group goes with user; set user = \"NAME\" too (or [daemon] agent_user), or remove group",
                )),
                None => Ok(None),
            };
        }
    };
    crate::agent_user::resolve(u.get_ref(), g.map(toml::Spanned::get_ref))
        .map(Some)
        .map_err(|(which, m)| match (which, g) {
            (Which::Group, Some(g)) => cx.at(g.span(), m),
            _ => cx.at(u.span(), m),
        })
}

impl AgentSpec {
    /// Whether `other` runs the same process (command, directory, environment):
    /// if so, a reload applies the other settings without restarting it.
    pub fn same_process(&self, other: &AgentSpec) -> bool {
        self.command == other.command
            && self.working_dir == other.working_dir
            && self.env == other.env
            && self.inherit_env == other.inherit_env
            && self.python == other.python
            // The heartbeat interval is handed over at spawn.
            && self.watchdog == other.watchdog
            // Grants are delivered (files, env, the channel's list) at spawn: a
            // grant added or revoked takes effect by restarting the agent.
            && self.secrets == other.secrets
            // The uid is set at spawn.
            && self.user == other.user
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(path, &src)
    }

    /// Validates `src` as if read from `path` (used in errors and to resolve
    /// relative paths).
    pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigError> {
        let cx = Ctx { file: path, src };
        let raw: raw::File = toml::from_str(src).map_err(|e| {
            let (line, column, key) = match e.span() {
                Some(s) => {
                    let (l, c) = line_col(src, s.start);
                    (Some(l), Some(c), key_at(src, s.start))
                }
                None => (None, None, None),
            };
            ConfigError {
                file: path.to_owned(),
                line,
                column,
                key,
                message: e.message().trim().to_owned(),
            }
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();

        let daemon = DaemonSection {
            socket: raw
                .daemon
                .socket
                .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from),
            state_dir: raw
                .daemon
                .state_dir
                .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), PathBuf::from),
            socket_group: raw.daemon.socket_group,
            python_path: raw
                .daemon
                .python_path
                .as_ref()
                .map(|p| base_dir.join(p.get_ref())),
        };
        // Resolved once, when the first Python agent needs it.
        let mut python_module: Option<PathBuf> = None;

        let principals = |list: Vec<toml::Spanned<String>>| -> Result<Vec<Principal>, ConfigError> {
            list.into_iter()
                .map(|s| {
                    let span = s.span();
                    s.into_inner()
                        .parse::<Principal>()
                        .map_err(|m| cx.at(span, m))
                })
                .collect()
        };
        let access = Access {
            admins: principals(raw.access.admins)?,
            viewers: principals(raw.access.viewers)?,
        };

        let listen = match raw.gateway.listen {
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
            Some(s) => {
                let span = s.span();
                let addr: SocketAddr = s.get_ref().parse().map_err(|_| {
                    cx.at(
                        span.clone(),
                        format!("{:?} is not an address like 127.0.0.1:8080", s.get_ref()),
                    )
                })?;
                if !addr.ip().is_loopback() {
                    return Err(cx.at(
                        span,
                        format!(
                            "the gateway must listen on a loopback address (127.0.0.1 or ::1), not {}",
                            addr.ip()
                        ),
                    ));
                }
                addr
            }
        };
        let price_overrides = match raw.gateway.prices {
            None => None,
            Some(t) => Some(serde_json::to_string(&t).map_err(|e| {
                cx.plain(
                    "gateway.prices",
                    format!("cannot convert price overrides: {e}"),
                )
            })?),
        };
        let gateway = GatewaySection {
            listen,
            allow_unmetered_paths: raw.gateway.allow_unmetered_paths.unwrap_or(false),
            default_max_tokens: raw.gateway.default_max_tokens.unwrap_or(4096),
            price_file: raw.gateway.price_file.map(|p| base_dir.join(p)),
            price_overrides,
            upstream_timeout: Duration::from_secs(raw.gateway.upstream_timeout_secs.unwrap_or(600)),
        };

        let budget = BudgetSection {
            alert_thresholds: match raw.budget.alert_thresholds {
                None => vec![50, 80, 100],
                Some(t) => {
                    let span = t.span();
                    let mut v = t.into_inner();
                    if let Some(bad) = v.iter().find(|p| **p == 0 || **p > 100) {
                        return Err(cx.at(
                            span,
                            format!("threshold {bad} is not a percentage between 1 and 100"),
                        ));
                    }
                    v.sort_unstable();
                    v.dedup();
                    v
                }
            },
            alert_command: match raw.budget.alert_command {
                None => None,
                Some(c) if c.get_ref().is_empty() => {
                    return Err(cx.at(c.span(), "alert_command is empty; give an argv array such as [\"/usr/local/bin/notify\"]"));
                }
                Some(c) => Some(c.into_inner()),
            },
            keep_cost_history_days: match raw.budget.keep_cost_history_days {
                Some(d) if *d.get_ref() == 0 => {
                    return Err(cx.at(
                        d.span(),
                        "keep_cost_history_days is 0; give at least 1, or leave it out to keep all cost history",
                    ));
                }
                d => d.map(toml::Spanned::into_inner),
            },
        };

        let breaker = breaker_settings(&cx, raw.breaker, BreakerSettings::default())?;

        let mut providers: Vec<ProviderSpec> = Vec::new();
        for p in raw.provider {
            let span = p.name.span();
            let name = p.name.into_inner();
            if name.is_empty() || name.contains('/') {
                return Err(cx.at(
                    span,
                    format!("provider name {name:?} must be non-empty and contain no '/'"),
                ));
            }
            if providers.iter().any(|q| q.name == name) {
                return Err(cx.at(span, format!("provider {name:?} is defined twice")));
            }
            let url_span = p.base_url.span();
            let base_url = p.base_url.into_inner().trim_end_matches('/').to_owned();
            if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                return Err(cx.at(
                    url_span,
                    format!("base_url {base_url:?} must start with http:// or https://"),
                ));
            }
            let api_key_secret = match p.api_key_secret {
                None => None,
                Some(sp) => {
                    let span = sp.span();
                    Some(
                        sp.into_inner()
                            .parse::<SecretRef>()
                            .map_err(|m| cx.at(span, m))?,
                    )
                }
            };
            if api_key_secret.is_some() && p.api_key_env.is_some() {
                return Err(cx.at(
                    span,
                    format!("provider {name:?} sets both api_key_env and api_key_secret; keep exactly one"),
                ));
            }
            providers.push(ProviderSpec {
                api_key_secret,
                name,
                kind: match p.kind {
                    raw::Kind::Openai => ProviderKind::OpenAi,
                    raw::Kind::Anthropic => ProviderKind::Anthropic,
                },
                base_url,
                api_key_env: p.api_key_env,
                breaker: match p.breaker {
                    None => breaker,
                    Some(b) => breaker_settings(&cx, b, breaker)?,
                },
            });
        }

        let pii = pii::apply(&cx, "pii", raw.pii, &PiiSpec::default())?;

        let mut agents: Vec<AgentSpec> = Vec::new();
        // Where the first agent with another user got it (for the privilege error).
        let mut user_span: Option<std::ops::Range<usize>> = None;
        if let (Some(g), None) = (&raw.daemon.agent_group, &raw.daemon.agent_user) {
            return Err(cx.at(
                g.span(),
                "agent_group goes with agent_user; set agent_user too, or remove agent_group",
            ));
        }
        for a in raw.agent {
            let name_span = a.name.span();
            let name = a.name.into_inner();
            if agents.iter().any(|b| b.name == name) {
                return Err(cx.at(name_span, format!("agent {name} is defined twice")));
            }
            let working_dir = match a.working_dir {
                None => base_dir.clone(),
                Some(w) => {
                    let p = base_dir.join(w.get_ref());
                    if !p.is_dir() {
                        return Err(cx.at(
                            w.span(),
                            format!("working_dir {} is not a directory", p.display()),
                        ));
                    }
                    p
                }
            };
            let (command, python) = match (a.command, a.python) {
                (Some(c), None) => {
                    if let Some(s) = a
                        .script
                        .as_ref()
                        .map(|s| s.span())
                        .or(a.args.as_ref().map(|s| s.span()))
                    {
                        return Err(cx.at(s, "script and args go with python = \"...\", not with command; put them in the command array instead"));
                    }
                    let cmd_span = c.span();
                    let command = c.into_inner();
                    if command.is_empty() || command[0].is_empty() {
                        return Err(cx.at(
                            cmd_span,
                            "command is empty; give an argv array such as [\"python3\", \"agent.py\"]",
                        ));
                    }
                    (command, None)
                }
                (None, Some(py)) => {
                    let py_span = py.span();
                    let interpreter = py.into_inner();
                    if interpreter.is_empty() {
                        return Err(cx.at(py_span, "python is empty; give the agent's interpreter, e.g. \"/srv/agent/.venv/bin/python\""));
                    }
                    if interpreter.contains('/') {
                        let p = working_dir.join(&interpreter);
                        if !p.is_file() {
                            return Err(cx.at(
                                py_span,
                                format!("python interpreter {} does not exist", p.display()),
                            ));
                        }
                    }
                    let Some(script) = a.script else {
                        return Err(cx.at(
                            py_span,
                            "a python agent needs script = \"agent.py\" (relative to working_dir)",
                        ));
                    };
                    let script_span = script.span();
                    let script = script.into_inner();
                    if script.is_empty() || !working_dir.join(&script).is_file() {
                        return Err(cx.at(
                            script_span,
                            format!(
                                "script {} is not a file",
                                working_dir.join(&script).display()
                            ),
                        ));
                    }
                    let args = a.args.map(toml::Spanned::into_inner).unwrap_or_default();
                    let module_dir = match &python_module {
                        Some(d) => d.clone(),
                        None => {
                            let d = crate::cage::module::find(daemon.python_path.as_deref())
                                .map_err(|m| match &raw.daemon.python_path {
                                    Some(p) => cx.at(p.span(), m),
                                    None => cx.at(py_span.clone(), m),
                                })?;
                            python_module = Some(d.clone());
                            d
                        }
                    };
                    let mut command = vec![interpreter.clone(), script.clone()];
                    command.extend(args.iter().cloned());
                    (
                        command,
                        Some(PythonAgent {
                            interpreter,
                            script,
                            args,
                            module_dir,
                        }),
                    )
                }
                (Some(c), Some(_)) => {
                    return Err(cx.at(c.span(), "give either command = [...] or python = \"...\" with script = \"...\", not both"));
                }
                (None, None) => {
                    return Err(cx.at(name_span, format!("agent {name} needs command = [...] or python = \"...\" with script = \"...\"")));
                }
            };
            let watchdog = match a.watchdog_secs {
                None => None,
                Some(w) => {
                    let x = *w.get_ref();
                    if !(x > 0.0 && x <= 86_400.0) {
                        return Err(cx.at(
                            w.span(),
                            format!("watchdog_secs = {x} must be more than 0 and at most 86400"),
                        ));
                    }
                    Some(Duration::from_secs_f64(x))
                }
            };
            for k in a.env.keys().chain(a.inherit_env.iter()) {
                if crate::actors::agent::RESERVED_ENV.contains(&k.as_str()) {
                    return Err(cx.plain(
                        &format!("agent[{}].env", agents.len()),
                        format!("{k} is set by the daemon for every agent (the gateway and its virtual key); remove it"),
                    ));
                }
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(cx.plain(
                        &format!("agent[{}].env", agents.len()),
                        format!("{k:?} is not a valid environment variable name"),
                    ));
                }
            }
            let grace = a.stop_grace_secs.unwrap_or(10.0);
            if !(0.0..=3600.0).contains(&grace) {
                return Err(cx.plain(
                    &format!("agent[{}].stop_grace_secs", agents.len()),
                    "must be between 0 and 3600 seconds",
                ));
            }
            let money = |v: Option<toml::Spanned<f64>>| -> Result<Option<Micros>, ConfigError> {
                match v {
                    None => Ok(None),
                    Some(s) => Micros::from_usd_f64(*s.get_ref())
                        .map(Some)
                        .map_err(|e| cx.at(s.span(), e.to_string())),
                }
            };
            let limit = money(a.budget_usd)?;
            let cap = money(a.max_cost_per_call_usd)?;
            let budget = limit.map(|limit| BudgetSpec {
                limit,
                period: match a.budget_period.unwrap_or(raw::Period::Day) {
                    raw::Period::Day => BudgetPeriod::Day,
                    raw::Period::Week => BudgetPeriod::Week,
                    raw::Period::Month => BudgetPeriod::Month,
                    raw::Period::Total => BudgetPeriod::Total,
                },
                on_exhausted: match a.on_exhausted.unwrap_or(raw::OnExhausted::Refuse) {
                    raw::OnExhausted::Refuse => OnExhausted::Refuse,
                    raw::OnExhausted::Stop => OnExhausted::Stop,
                },
                max_cost_per_call: cap,
            });
            for p in &a.providers {
                if !providers.iter().any(|q| &q.name == p) {
                    return Err(cx.plain(
                        &format!("agent[{}].providers", agents.len()),
                        format!("unknown provider {p:?}; define it in a [[provider]] table"),
                    ));
                }
            }
            let mut fallback: Vec<ModelRef> = Vec::new();
            for f in a.fallback {
                let span = f.span();
                let text = f.into_inner();
                let Some((provider, model)) = text
                    .split_once('/')
                    .filter(|(p, m)| !p.is_empty() && !m.is_empty())
                else {
                    return Err(cx.at(span, format!("fallback entry {text:?} must be \"provider/model\", e.g. \"openai/gpt-4o-mini\"")));
                };
                if !providers.iter().any(|q| q.name == provider) {
                    return Err(cx.at(span, format!("fallback entry {text:?}: unknown provider {provider:?}; define it in a [[provider]] table")));
                }
                if !a.providers.is_empty() && !a.providers.iter().any(|p| p == provider) {
                    return Err(cx.at(span, format!("fallback entry {text:?}: provider {provider:?} is not in this agent's `providers` list")));
                }
                let m = ModelRef {
                    provider: provider.to_owned(),
                    model: model.to_owned(),
                };
                if fallback.contains(&m) {
                    return Err(cx.at(span, format!("fallback entry {text:?} is listed twice")));
                }
                fallback.push(m);
            }
            let mut grants: Vec<SecretGrant> = Vec::new();
            let idx = agents.len();
            let provider_key = |r: &SecretRef| {
                providers
                    .iter()
                    .any(|p| p.api_key_secret.as_ref() == Some(r))
            };
            for g in a.secrets {
                let span = g.span();
                let r: SecretRef = g.into_inner().parse().map_err(|m| cx.at(span.clone(), m))?;
                if provider_key(&r) {
                    return Err(cx.at(span, format!("{r} is a provider API key (api_key_secret); agents never receive provider keys, the gateway injects them")));
                }
                if grants
                    .iter()
                    .any(|x| x.delivery == Delivery::File && x.secret.name == r.name)
                {
                    return Err(cx.at(span, format!("{} is granted twice as a file", r.name)));
                }
                grants.push(SecretGrant {
                    secret: r,
                    delivery: Delivery::File,
                });
            }
            for (var, g) in a.secret_env {
                let span = g.span();
                let r: SecretRef = g.into_inner().parse().map_err(|m| cx.at(span.clone(), m))?;
                if provider_key(&r) {
                    return Err(cx.at(span, format!("{r} is a provider API key (api_key_secret); agents never receive provider keys, the gateway injects them")));
                }
                if var.is_empty()
                    || var.contains('=')
                    || var.contains('\0')
                    || crate::actors::agent::RESERVED_ENV.contains(&var.as_str())
                    || var == crate::secrets::delivery::CREDENTIALS_ENV
                {
                    return Err(cx.plain(
                        &format!("agent[{idx}].secret_env"),
                        format!("{var:?} cannot carry a secret (reserved or not a variable name)"),
                    ));
                }
                if a.env.contains_key(&var) || a.inherit_env.contains(&var) {
                    return Err(cx.plain(
                        &format!("agent[{idx}].secret_env"),
                        format!("{var} is also set by `env` or `inherit_env`; keep one"),
                    ));
                }
                grants.push(SecretGrant {
                    secret: r,
                    delivery: Delivery::Env(var),
                });
            }
            if a.inherit_env
                .iter()
                .any(|v| v == crate::secrets::master::ENV_VAR)
            {
                return Err(cx.plain(
                    &format!("agent[{idx}].inherit_env"),
                    format!(
                        "{} is the daemon's master key; it is never passed to an agent",
                        crate::secrets::master::ENV_VAR
                    ),
                ));
            }
            let backoff_initial = Duration::from_millis(a.backoff_initial_ms.unwrap_or(500).max(1));
            let backoff_max =
                Duration::from_secs(a.backoff_max_secs.unwrap_or(60)).max(backoff_initial);
            let agent_pii = pii::apply(&cx, &format!("agent[{}].pii", agents.len()), a.pii, &pii)?;
            let user = agent_user(
                &cx,
                a.user.as_ref(),
                a.group.as_ref(),
                raw.daemon.agent_user.as_ref(),
                raw.daemon.agent_group.as_ref(),
            )?;
            if let (Some(_), None) = (&user, &user_span) {
                user_span = a
                    .user
                    .as_ref()
                    .or(raw.daemon.agent_user.as_ref())
                    .map(toml::Spanned::span);
            }
            agents.push(AgentSpec {
                name,
                command,
                working_dir,
                env: a.env,
                inherit_env: a.inherit_env,
                restart: match a.restart.unwrap_or(raw::Restart::OnFailure) {
                    raw::Restart::Always => RestartPolicy::Always,
                    raw::Restart::OnFailure => RestartPolicy::OnFailure,
                    raw::Restart::Never => RestartPolicy::Never,
                },
                stop_grace: Duration::from_secs_f64(grace),
                max_restarts: a.max_restarts.unwrap_or(5),
                restart_window: Duration::from_secs(a.restart_window_secs.unwrap_or(60).max(1)),
                backoff_initial,
                backoff_max,
                autostart: a.autostart.unwrap_or(true),
                budget,
                providers: a.providers,
                fallback,
                pii: agent_pii,
                python,
                watchdog,
                secrets: grants,
                user,
            });
        }
        if let Some(span) = user_span {
            let missing =
                crate::agent_user::missing_privileges(crate::agent_user::effective_caps());
            if !missing.is_empty() {
                return Err(cx.at(span, crate::agent_user::privilege_message(&missing)));
            }
        }

        let secrets = SecretsSection {
            master_key_file: raw.secrets.master_key_file.map(|p| base_dir.join(p)),
            credential: raw
                .secrets
                .credential
                .unwrap_or_else(|| crate::secrets::master::DEFAULT_CREDENTIAL.to_owned()),
            keep_versions: match raw.secrets.keep_versions {
                None => crate::secrets::DEFAULT_KEEP_VERSIONS,
                Some(k) if *k.get_ref() == 0 || *k.get_ref() > 1000 => {
                    return Err(cx.at(k.span(), "keep_versions must be between 1 and 1000"));
                }
                Some(k) => k.into_inner(),
            },
        };

        Ok(Config {
            secrets,
            path: path.to_owned(),
            daemon,
            access,
            gateway,
            budget,
            breaker,
            providers,
            agents,
            pii,
        })
    }

    pub fn agent(&self, name: &AgentName) -> Option<&AgentSpec> {
        self.agents.iter().find(|a| &a.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/ironcage/test.toml"), src)
    }

    #[test]
    fn cost_history_is_kept_whole_unless_a_number_of_days_is_given() {
        let agent = "[[agent]]\nname = \"a\"\ncommand = [\"true\"]\n";
        assert_eq!(parse(agent).unwrap().budget.keep_cost_history_days, None);
        let c = parse(&format!(
            "[budget]\nkeep_cost_history_days = 400\n\n{agent}"
        ))
        .unwrap();
        assert_eq!(c.budget.keep_cost_history_days, Some(400));
        let e = parse(&format!("[budget]\nkeep_cost_history_days = 0\n\n{agent}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("keep_cost_history_days is 0") && e.contains("test.toml:2:"),
            "{e}"
        );
        assert!(parse(&format!("[budget]\nkeep_cost_history_days = -1\n\n{agent}")).is_err());
    }

    #[test]
    fn minimal_and_defaults() {
        let c = parse("[[agent]]\nname = \"a\"\ncommand = [\"sleep\", \"1\"]\n").unwrap();
        assert_eq!(c.daemon.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.agents[0].restart, RestartPolicy::OnFailure);
        assert_eq!(c.agents[0].stop_grace, Duration::from_secs(10));
        assert_eq!(c.budget.alert_thresholds, vec![50, 80, 100]);
        assert!(c.gateway.listen.ip().is_loopback());
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = parse("[daemon]\nsocket = \"/x\"\n\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nrestrat = \"always\"\n")
            .unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");
        assert_eq!(e.key.as_deref(), Some("agent[0].restrat"), "{e}");
        assert!(
            e.to_string().starts_with("/etc/ironcage/test.toml:7:"),
            "{e}"
        );
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_enum_and_type() {
        let e = parse("[[agent]]\nname = \"a\"\ncommand = [\"x\"]\n[[agent]]\nname = \"b\"\ncommand = [\"x\"]\nrestart = \"sometimes\"\n")
            .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(7), Some("agent[1].restart")),
            "{e}"
        );
        let e = parse("[[agent]]\nname = \"a\"\ncommand = \"x\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("agent[0].command")),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_are_located() {
        let e = parse("[[agent]]\nname = \"a\"\ncommand = []\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("command is empty"), "{e}");
        let e = parse("[[agent]]\nname = \"a\"\ncommand = [\"x\"]\n[[agent]]\nname = \"a\"\ncommand = [\"y\"]\n").unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("defined twice"), "{e}");
        let e = parse("[[agent]]\nname = \"../etc\"\ncommand = [\"x\"]\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = parse("[access]\nadmins = [\"uid:0\", \"wheel\"]\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("access.admins")),
            "{e}"
        );
        let e = parse("[gateway]\nlisten = \"0.0.0.0:80\"\n").unwrap_err();
        assert!(e.message.contains("loopback"), "{e}");
        let e =
            parse("[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nbudget_usd = -3.0\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn gateway_variables_are_reserved() {
        let e = parse(
            "[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nenv = { OPENAI_API_KEY = \"sk-real\" }\n",
        )
        .unwrap_err();
        assert!(e.message.contains("set by the daemon"), "{e}");
        assert!(!e.to_string().contains("sk-real"), "{e}");
    }

    #[test]
    fn principals() {
        assert_eq!("uid:5".parse::<Principal>(), Ok(Principal::Uid(5)));
        assert_eq!(
            "group:ops".parse::<Principal>(),
            Ok(Principal::Group("ops".into()))
        );
        assert!("uid:x".parse::<Principal>().is_err());
        assert!("user:".parse::<Principal>().is_err());
    }

    #[test]
    fn breaker_defaults_global_and_per_provider() {
        let c = parse(
            "[[provider]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://x/v1\"\n",
        )
        .unwrap();
        assert_eq!(c.breaker, BreakerSettings::default());
        assert_eq!(c.providers[0].breaker, BreakerSettings::default());
        assert_eq!(
            (c.breaker.failures, c.breaker.window, c.breaker.cooldown),
            (5, Duration::from_secs(60), Duration::from_secs(60))
        );
        assert_eq!(c.breaker.retries, 1);
        let c = parse(
            "[breaker]\nfailures = 3\ncooldown_secs = 0.5\nretries = 0\n\n\
             [[provider]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"http://x/v1\"\n\
             [provider.breaker]\nfailures = 10\nwindow_secs = 30\nretry_backoff_ms = 5\n\n\
             [[provider]]\nname = \"b\"\nkind = \"anthropic\"\nbase_url = \"http://y\"\n",
        )
        .unwrap();
        assert_eq!(c.breaker.failures, 3);
        assert_eq!(c.breaker.cooldown, Duration::from_millis(500));
        let a = c.providers[0].breaker;
        assert_eq!(
            (a.failures, a.window, a.cooldown, a.retries, a.retry_backoff),
            (
                10,
                Duration::from_secs(30),
                Duration::from_millis(500),
                0,
                Duration::from_millis(5)
            )
        );
        assert_eq!(c.providers[1].breaker, c.breaker);
    }

    #[test]
    fn breaker_errors_are_located() {
        let e = parse("[breaker]\nfailures = 0\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("breaker.failures")),
            "{e}"
        );
        let e = parse("[breaker]\ncooldown_secs = -1\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = parse("[breaker]\nfailurs = 3\n").unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse("[[provider]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"http://x/v1\"\n[provider.breaker]\nretries = 99\n").unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
    }

    #[test]
    fn fallback_chains() {
        let head = "[[provider]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://x/v1\"\n\
                    [[provider]]\nname = \"backup\"\nkind = \"openai\"\nbase_url = \"http://y/v1\"\n\
                    [[agent]]\nname = \"a\"\ncommand = [\"x\"]\n";
        let c = parse(&format!(
            "{head}fallback = [\"openai/gpt-4o\", \"backup/org/model-x\"]\n"
        ))
        .unwrap();
        let f = &c.agents[0].fallback;
        assert_eq!(
            f[0],
            ModelRef {
                provider: "openai".into(),
                model: "gpt-4o".into()
            }
        );
        assert_eq!(
            (f[1].provider.as_str(), f[1].model.as_str()),
            ("backup", "org/model-x")
        );
        assert_eq!(f[1].to_string(), "backup/org/model-x");
        for (bad, why) in [
            ("[\"gpt-4o\"]", "provider/model"),
            ("[\"nope/gpt-4o\"]", "unknown provider"),
            ("[\"openai/\"]", "provider/model"),
            ("[\"openai/m\", \"openai/m\"]", "twice"),
        ] {
            let e = parse(&format!("{head}fallback = {bad}\n")).unwrap_err();
            assert_eq!(
                (e.line, e.key.as_deref()),
                (Some(12), Some("agent[0].fallback")),
                "{e}"
            );
            assert!(e.message.contains(why), "{e}");
        }
        let e = parse(&format!(
            "{head}providers = [\"openai\"]\nfallback = [\"backup/m\"]\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("`providers` list"), "{e}");
    }

    /// A config directory with an agent script and a complete `iron_cage` package in `py/`.
    fn python_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("agent.py"), "print('hi')\n").unwrap();
        std::fs::create_dir_all(d.path().join("py/iron_cage")).unwrap();
        for f in ["__init__.py", "_run.py", "_native.abi3.so"] {
            std::fs::write(d.path().join("py/iron_cage").join(f), "").unwrap();
        }
        d
    }

    #[test]
    fn python_agents() {
        let d = python_dir();
        let path = d.path().join("c.toml");
        let c = Config::parse(
            &path,
            "[daemon]\npython_path = \"py\"\n[[agent]]\nname = \"a\"\npython = \"python3\"\nscript = \"agent.py\"\nargs = [\"--n\", \"2\"]\nwatchdog_secs = 1.5\n",
        )
        .unwrap();
        let a = &c.agents[0];
        assert_eq!(a.command, ["python3", "agent.py", "--n", "2"]);
        let py = a.python.as_ref().unwrap();
        assert_eq!(
            (py.interpreter.as_str(), py.script.as_str()),
            ("python3", "agent.py")
        );
        assert_eq!(py.args, ["--n", "2"]);
        assert_eq!(py.module_dir, d.path().join("py").canonicalize().unwrap());
        assert_eq!(a.watchdog, Some(Duration::from_millis(1500)));
        // A plain command agent has neither.
        let c = Config::parse(&path, "[[agent]]\nname = \"b\"\ncommand = [\"x\"]\n").unwrap();
        assert_eq!(
            (c.agents[0].python.as_ref(), c.agents[0].watchdog),
            (None, None)
        );
    }

    #[test]
    fn python_agent_errors_are_located() {
        let d = python_dir();
        let path = d.path().join("c.toml");
        let head = "[daemon]\npython_path = \"py\"\n[[agent]]\nname = \"a\"\n";
        for (body, line, key, why) in [
            (
                "python = \"python3\"\nscript = \"agent.py\"\ncommand = [\"x\"]\n",
                7,
                "agent[0].command",
                "not both",
            ),
            ("restart = \"never\"\n", 4, "agent[0].name", "needs command"),
            (
                "python = \"python3\"\n",
                5,
                "agent[0].python",
                "needs script",
            ),
            (
                "python = \"python3\"\nscript = \"nope.py\"\n",
                6,
                "agent[0].script",
                "is not a file",
            ),
            (
                "python = \"./nope/python\"\nscript = \"agent.py\"\n",
                5,
                "agent[0].python",
                "does not exist",
            ),
            (
                "command = [\"x\"]\nscript = \"agent.py\"\n",
                6,
                "agent[0].script",
                "go with python",
            ),
            (
                "command = [\"x\"]\nwatchdog_secs = 0\n",
                6,
                "agent[0].watchdog_secs",
                "more than 0",
            ),
        ] {
            let e = Config::parse(&path, &format!("{head}{body}")).unwrap_err();
            assert_eq!((e.line, e.key.as_deref()), (Some(line), Some(key)), "{e}");
            assert!(e.message.contains(why), "{e}");
        }
    }

    #[test]
    fn a_missing_module_names_where_it_looked() {
        let d = python_dir();
        std::fs::remove_file(d.path().join("py/iron_cage/_native.abi3.so")).unwrap();
        let e = Config::parse(
            &d.path().join("c.toml"),
            "[daemon]\npython_path = \"py\"\n[[agent]]\nname = \"a\"\npython = \"python3\"\nscript = \"agent.py\"\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("daemon.python_path")),
            "{e}"
        );
        assert!(e.message.contains("iron_cage module"), "{e}");
        assert!(
            e.message
                .contains(&d.path().join("py").display().to_string()),
            "{e}"
        );
        // Without python_path, the places next to the daemon's binary are named.
        let e = Config::parse(
            &d.path().join("c.toml"),
            "[[agent]]\nname = \"a\"\npython = \"python3\"\nscript = \"agent.py\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("agent[0].python"), "{e}");
        assert!(e.message.contains("lib/ironcage/python"), "{e}");
    }

    #[test]
    fn budget_is_exact() {
        let c = parse("[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nbudget_usd = 0.1\nbudget_period = \"week\"\non_exhausted = \"stop\"\n").unwrap();
        let b = c.agents[0].budget.unwrap();
        assert_eq!(b.limit, Micros(100_000));
        assert_eq!(b.period, BudgetPeriod::Week);
        assert_eq!(b.on_exhausted, OnExhausted::Stop);
    }

    #[test]
    fn secrets_section_grants_and_provider_keys() {
        let c = parse(
            "[secrets]\nkeep_versions = 4\nmaster_key_file = \"key\"\n\n[[provider]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\napi_key_secret = \"OPENAI_KEY\"\n\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nsecrets = [\"DB\", \"TOKEN@staging\"]\nsecret_env = { STRIPE = \"STRIPE_KEY@dev\" }\n",
        )
        .unwrap();
        assert_eq!(c.secrets.keep_versions, 4);
        assert_eq!(
            c.secrets.master_key_file,
            Some(PathBuf::from("/etc/ironcage/key"))
        );
        assert_eq!(
            c.providers[0].api_key_secret.as_ref().unwrap().to_string(),
            "OPENAI_KEY@production"
        );
        let g = &c.agents[0].secrets;
        assert_eq!(g.len(), 3);
        assert_eq!(g[1].secret.to_string(), "TOKEN@staging");
        assert_eq!(g[2].delivery, Delivery::Env("STRIPE".into()));
        // A revoked grant is a different process: the reload restarts the
        // agent, so its files, env and channel lose the secret.
        let revoked =
            parse("[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nsecrets = [\"DB\"]\n").unwrap();
        assert!(!c.agents[0].same_process(&revoked.agents[0]));
        assert!(revoked.agents[0].same_process(&revoked.agents[0].clone()));
        let base = "[[provider]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"https://x/v1\"\napi_key_secret = \"OPENAI_KEY\"\n";
        for (extra, want) in [
            (
                "[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nsecrets = [\"OPENAI_KEY\"]\n",
                "agents never receive provider keys",
            ),
            (
                "[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nsecrets = [\"../etc\"]\n",
                "may hold only",
            ),
            (
                "[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nsecrets = [\"A@qa\"]\n",
                "unknown environment",
            ),
            (
                "[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nsecret_env = { OPENAI_API_KEY = \"A\" }\n",
                "cannot carry a secret",
            ),
            (
                "[[agent]]\nname = \"a\"\ncommand = [\"x\"]\ninherit_env = [\"IRON_SECRETS_MASTER_KEY\"]\n",
                "never passed to an agent",
            ),
            ("[secrets]\nkeep_versions = 0\n", "between 1 and 1000"),
        ] {
            let e = parse(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
        let both = "[[provider]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"https://x/v1\"\napi_key_env = \"K\"\napi_key_secret = \"K\"\n";
        assert!(
            parse(both)
                .unwrap_err()
                .to_string()
                .contains("keep exactly one")
        );
    }

    #[test]
    fn agent_users_resolve_and_errors_name_the_line() {
        // These tests run as root (or with the capabilities), like CI.
        if !crate::agent_user::missing_privileges(crate::agent_user::effective_caps()).is_empty() {
            eprintln!("skipped: the test process cannot switch users (not root)");
            return;
        }
        let c = parse(
            "[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nuser = \"nobody\"\n\
             [[agent]]\nname = \"b\"\ncommand = [\"x\"]\nuser = 65534\ngroup = 0\n\
             [[agent]]\nname = \"c\"\ncommand = [\"x\"]\n",
        )
        .unwrap();
        let a = c.agents[0].user.clone().unwrap();
        assert_eq!((a.uid, a.name.as_deref()), (65534, Some("nobody")));
        let b = c.agents[1].user.clone().unwrap();
        assert_eq!((b.uid, b.gid), (65534, 0));
        assert_eq!(c.agents[2].user, None);
        assert!(!c.agents[0].same_process(&c.agents[1]));
        // The daemon-wide default, and an agent's own user over it.
        let c = parse(
            "[daemon]\nagent_user = \"nobody\"\n\
             [[agent]]\nname = \"a\"\ncommand = [\"x\"]\n\
             [[agent]]\nname = \"b\"\ncommand = [\"x\"]\nuser = \"root\"\n",
        )
        .unwrap();
        assert_eq!(c.agents[0].user.as_ref().map(|u| u.uid), Some(65534));
        assert_eq!(
            c.agents[1].user.as_ref().map(|u| (u.uid, u.gid)),
            Some((0, 0))
        );
        for (src, line, key, want) in [
            (
                "[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nuser = \"no-such-user-xyz\"\n",
                4,
                "agent[0].user",
                "does not exist",
            ),
            (
                "[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nuser = \"nobody\"\ngroup = \"no-such-group-xyz\"\n",
                5,
                "agent[0].group",
                "does not exist",
            ),
            (
                "[[agent]]\nname = \"a\"\ncommand = [\"x\"]\ngroup = \"root\"\n",
                4,
                "agent[0].group",
                "group goes with user",
            ),
            (
                "[daemon]\nagent_user = \"no-such-user-xyz\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\n",
                2,
                "daemon.agent_user",
                "does not exist",
            ),
            (
                "[daemon]\nagent_group = \"root\"\n",
                2,
                "daemon.agent_group",
                "goes with agent_user",
            ),
            (
                "[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nuser = 4000000000\n",
                4,
                "agent[0].user",
                "no passwd entry",
            ),
            (
                "[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nuser = true\n",
                4,
                "agent[0].user",
                "a name such as \"nobody\" or a numeric id",
            ),
            (
                "[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nuser = -1\n",
                4,
                "agent[0].user",
                "not a valid id",
            ),
        ] {
            let e = parse(src).unwrap_err();
            assert_eq!((e.line, e.key.as_deref()), (Some(line), Some(key)), "{e}");
            assert!(e.message.contains(want), "{e}");
        }
    }
}
