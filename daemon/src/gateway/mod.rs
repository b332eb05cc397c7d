//! The LLM gateway: the enforcement point every agent's LLM call goes through.
//!
//! Agents are started with `OPENAI_BASE_URL` / `ANTHROPIC_BASE_URL` pointing
//! here and a per-agent virtual key as their API key. For each call the gateway
//! identifies the agent by that key, reserves the call's worst-case cost in the
//! budget ledger, swaps in the provider's real key, forwards (streaming chunk by
//! chunk), reads the provider's usage, and settles the real cost. An agent never
//! holds a real key, so it cannot spend around its budget.
//!
//! - [`proxy`]: the per-request path.
//! - [`routes`]: API classification and upstream URLs.
//! - [`upstream`]: the pooled HTTP(S) client and header hygiene.
//! - [`errors`]: provider-shaped error bodies.
//! - [`usage`], [`sse`], [`tokens`]: reading usage, parsing streams, counting.

pub mod balance;
pub mod errors;
pub mod pii;
pub mod proxy;
pub mod routes;
pub mod sse;
pub mod tokens;
pub mod upstream;
pub mod usage;

use crate::actors::breaker::BreakerHandle;
use crate::actors::budget::BudgetHandle;
use crate::config::{BreakerSettings, BudgetSpec, Config, ModelRef, ProviderKind};
use crate::registry::AgentKeys;
use crate::secret::SecretString;
use bytes::Bytes;
use http_body::Frame;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ironcage_shared::AgentName;
use ironcage_shared::pricing::PriceTable;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Response body type of the gateway.
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A provider with its real key resolved.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub key: Option<SecretString>,
    /// Retries and backoff (the breaker actor holds the thresholds).
    pub breaker: BreakerSettings,
}

/// What the gateway needs to know about one agent.
#[derive(Debug, Clone)]
pub struct AgentPolicy {
    pub budget: Option<BudgetSpec>,
    /// Allowed providers by name; empty = all.
    pub providers: Vec<String>,
    /// Models to fall back to, in order (see [`proxy`]).
    pub fallback: Vec<ModelRef>,
    /// PII scanner and policies (see [`pii`]).
    pub pii: Arc<pii::AgentPii>,
}

/// An immutable view of the configuration, swapped whole on reload so a call
/// in flight keeps the providers and keys it started with.
#[derive(Debug)]
pub struct Snapshot {
    pub providers: Vec<Arc<Provider>>,
    pub prices: PriceTable,
    pub agents: HashMap<AgentName, AgentPolicy>,
    pub allow_unmetered: bool,
    pub default_max_tokens: u64,
    pub upstream_timeout: Duration,
    /// The daemon-wide `[pii]` settings, for a key whose agent left the config.
    pub default_pii: Arc<pii::AgentPii>,
}

impl Snapshot {
    /// The PII settings of `agent`.
    pub fn pii_for(&self, agent: &AgentName) -> Arc<pii::AgentPii> {
        self.agents
            .get(agent)
            .map_or_else(|| self.default_pii.clone(), |a| a.pii.clone())
    }

    /// Builds a snapshot from `config`, reading provider keys from the daemon's
    /// environment and the price file, if any. Errors say what to fix.
    pub fn build(config: &Config) -> Result<Snapshot, String> {
        Snapshot::build_with(config, None, false)
    }

    /// [`Snapshot::build`] taking `api_key_secret` keys from the secrets
    /// store. `strict`: a provider key missing from the store is an error
    /// (rotation, config reload); otherwise (start-up, so the operator can
    /// still set it) a warning, and that provider has no key until a reload.
    pub fn build_with(
        config: &Config,
        secrets: Option<&crate::secrets::Secrets>,
        strict: bool,
    ) -> Result<Snapshot, String> {
        let mut providers = Vec::new();
        for p in &config.providers {
            let key = match (&p.api_key_env, &p.api_key_secret) {
                (None, Some(r)) => {
                    let read = secrets
                        .ok_or(crate::secrets::SecretsError::Disabled)
                        .and_then(|s| s.vault().cloned())
                        .and_then(|v| {
                            let key = v.read_current(&r.name, r.env)?;
                            let mac = v
                                .audit()
                                .log()
                                .value_mac(key.expose().as_bytes())
                                .unwrap_or_default();
                            v.audit().record(
                                crate::audit::Draft::new(
                                    crate::audit::Actor::daemon(),
                                    "provider key loaded",
                                    r.to_string(),
                                    ironcage_shared::protocol::AuditOutcome::Ok,
                                )
                                .detail(format!("provider {} {mac}", p.name)),
                            );
                            Ok(key)
                        });
                    match read {
                        Ok(k) => Some(k),
                        Err(e) => {
                            let msg = format!(
                                "provider {:?}: its api_key_secret {r} cannot be read: {e}",
                                p.name
                            );
                            if strict {
                                return Err(msg);
                            }
                            tracing::warn!(
                                "{msg}; it has no key until `ironctl secrets set {} --env {}` and `ironctl secrets reload`",
                                r.name,
                                r.env
                            );
                            None
                        }
                    }
                }
                (None, None) => None,
                (Some(var), _) => match std::env::var(var) {
                    Ok(v) if !v.is_empty() => Some(SecretString::new(v)),
                    _ => {
                        return Err(format!(
                            "provider {:?}: environment variable {var} (its api_key_env) is not set in the daemon's environment; set it (e.g. in the systemd unit's EnvironmentFile) or remove api_key_env",
                            p.name
                        ));
                    }
                },
            };
            providers.push(Arc::new(Provider {
                name: p.name.clone(),
                kind: p.kind,
                base_url: p.base_url.clone(),
                key,
                breaker: p.breaker,
            }));
        }
        let mut prices = match &config.gateway.price_file {
            None => PriceTable::builtin(),
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read price file {}: {e}", f.display()))?;
                PriceTable::from_json_str(&text)
                    .map_err(|e| format!("price file {}: {e}", f.display()))?
            }
        };
        if let Some(over) = &config.gateway.price_overrides {
            let t = PriceTable::from_json_str(over)
                .map_err(|e| format!("{}: [gateway.prices]: {e}", config.path.display()))?;
            prices.merge_overrides(t);
        }
        // Scanners are built once per distinct (scoped) config and shared.
        let mut scanners = pii::ScannerCache::default();
        let mut agent_pii =
            |spec: &crate::config::PiiSpec, who: &str| -> Result<Arc<pii::AgentPii>, String> {
                pii::AgentPii::build(spec, &mut scanners)
                    .map(Arc::new)
                    .map_err(|e| format!("{who}: PII scanner: {e}"))
            };
        let default_pii = agent_pii(&config.pii, "[pii]")?;
        let mut agents = HashMap::new();
        for a in &config.agents {
            agents.insert(
                a.name.clone(),
                AgentPolicy {
                    budget: a.budget,
                    providers: a.providers.clone(),
                    fallback: a.fallback.clone(),
                    pii: agent_pii(&a.pii, &format!("agent {}", a.name))?,
                },
            );
        }
        Ok(Snapshot {
            providers,
            prices,
            agents,
            allow_unmetered: config.gateway.allow_unmetered_paths,
            default_max_tokens: config.gateway.default_max_tokens,
            upstream_timeout: config.gateway.upstream_timeout,
            default_pii,
        })
    }

    /// Picks the provider for a call: `provider/model` names one explicitly;
    /// otherwise the first provider of the API's family the agent may use.
    /// Returns the provider and the model name to send upstream.
    pub fn route<'a>(
        &self,
        agent: &AgentName,
        family: ProviderKind,
        model: &'a str,
    ) -> Result<(Arc<Provider>, &'a str), String> {
        let allowed = |p: &Provider| {
            self.agents
                .get(agent)
                .is_none_or(|a| a.providers.is_empty() || a.providers.contains(&p.name))
        };
        if let Some((prefix, rest)) = model.split_once('/')
            && let Some(p) = self.providers.iter().find(|p| p.name == prefix)
        {
            if p.kind != family {
                return Err(format!(
                    "provider {prefix:?} speaks the {} API, not this one",
                    p.kind.as_str()
                ));
            }
            if !allowed(p) {
                return Err(format!(
                    "agent {agent} may not use provider {prefix:?} (see its `providers` list)"
                ));
            }
            return Ok((p.clone(), rest));
        }
        self.providers
            .iter()
            .find(|p| p.kind == family && allowed(p))
            .map(|p| (p.clone(), model))
            .ok_or_else(|| {
                format!(
                    "no {} provider is configured for agent {agent}; add a [[provider]] with kind = \"{}\"",
                    family.as_str(),
                    family.as_str()
                )
            })
    }
}

/// The gateway's shared state.
pub struct Gateway {
    pub keys: Arc<AgentKeys>,
    pub budget: BudgetHandle,
    pub breaker: BreakerHandle,
    /// One upstream client per worker thread (see [`spawn_workers`]).
    clients: Vec<upstream::HttpsClient>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Where reversible PII tokens are kept (`None`: token style fails closed).
    pub vault: Option<Arc<crate::pii_vault::PiiVault>>,
    /// Where `api_key_secret` provider keys come from.
    secrets: Option<crate::secrets::Secrets>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn new(
        config: &Config,
        keys: Arc<AgentKeys>,
        budget: BudgetHandle,
        breaker: BreakerHandle,
    ) -> Result<Self, String> {
        Gateway::with_secrets(config, keys, budget, breaker, None)
    }

    /// [`Gateway::new`] with provider keys from the secrets store.
    pub fn with_secrets(
        config: &Config,
        keys: Arc<AgentKeys>,
        budget: BudgetHandle,
        breaker: BreakerHandle,
        secrets: Option<crate::secrets::Secrets>,
    ) -> Result<Self, String> {
        let snapshot = Snapshot::build_with(config, secrets.as_ref(), false)?;
        let connector = upstream::connector().map_err(|e| {
            format!("cannot load the system's CA certificates for HTTPS to providers: {e}")
        })?;
        let clients = (0..worker_threads())
            .map(|_| upstream::client(connector.clone()))
            .collect();
        Ok(Gateway {
            keys,
            budget,
            breaker,
            clients,
            snapshot: RwLock::new(Arc::new(snapshot)),
            vault: None,
            secrets,
        })
    }

    /// The upstream client of the calling worker thread (the first one on
    /// any other thread).
    pub fn client(&self) -> &upstream::HttpsClient {
        let i = WORKER.with(std::cell::Cell::get);
        &self.clients[i % self.clients.len()]
    }

    /// The audit trail, when the daemon has one (not in unit tests).
    pub fn audit(&self) -> Option<&crate::audit::AuditHandle> {
        self.secrets.as_ref().map(crate::secrets::Secrets::audit)
    }

    /// The store for reversible PII tokens.
    pub fn with_vault(mut self, vault: Arc<crate::pii_vault::PiiVault>) -> Self {
        self.vault = Some(vault);
        self
    }

    /// Installs a snapshot built elsewhere (secrets rotation).
    pub fn swap_snapshot(&self, s: Snapshot) {
        *self.snapshot.write().expect("gateway snapshot lock") = Arc::new(s);
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("gateway snapshot lock").clone()
    }

    /// Swaps in a snapshot of a new config (calls in flight keep the old one).
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let s = Snapshot::build_with(config, self.secrets.as_ref(), true)?;
        *self.snapshot.write().expect("gateway snapshot lock") = Arc::new(s);
        Ok(())
    }
}

thread_local! {
    /// Index of the gateway worker running on this thread.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many worker threads serve the gateway: one per core, at most 8.
pub fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8))
}

/// Gateway worker threads, joined by [`Workers::join`].
#[derive(Debug)]
pub struct Workers(Vec<std::thread::JoinHandle<()>>);

impl Workers {
    /// Waits for every worker to exit (after `stop` flipped).
    pub fn join(self) {
        for h in self.0 {
            if h.join().is_err() {
                tracing::error!("a gateway worker thread panicked");
            }
        }
    }
}

/// Serves the gateway on [`worker_threads`] threads, each running its own
/// single-threaded tokio runtime with its own upstream connection pool, all
/// accepting on (a duplicate of) `listener`. A call is handled start to
/// finish on the thread that accepted its connection: agent socket, upstream
/// socket, reservation, settle, with no hand-off to another thread (each
/// hand-off is a futex wake-up and a context switch, which on a small host
/// cost more than the call's own work).
///
/// Workers stop accepting and drop their remaining connections when `stop`
/// flips (the daemon flips it once every agent has stopped).
pub fn spawn_workers(
    listener: std::net::TcpListener,
    gw: Arc<Gateway>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<Workers> {
    let mut handles = Vec::new();
    let balance = balance::Balance::new(gw.clients.len());
    for i in 0..gw.clients.len() {
        let listener = listener.try_clone()?;
        let gw = gw.clone();
        let stop = stop.clone();
        let balance = balance.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let h = std::thread::Builder::new()
            .name(format!("ironcaged-gw{i}"))
            .spawn(move || {
                WORKER.with(|w| w.set(i));
                request_short_slice();
                rt.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => serve(l, gw, stop, &balance, i).await,
                        Err(e) => tracing::error!("gateway worker {i} cannot listen: {e}"),
                    }
                });
            })?;
        handles.push(h);
    }
    Ok(Workers(handles))
}

/// Serves HTTP/1.1 on `listener` as worker `worker` until `shutdown` flips,
/// accepting only while it holds no more connections than any other worker
/// ([`balance`]).
async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
    balance: &Arc<balance::Balance>,
    worker: usize,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            () = balance.turn(worker) => {}
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let held = balance.opened(worker);
                    let gw = gw.clone();
                    tokio::spawn(async move {
                        let _held = held;
                        let svc = service_fn(move |req| {
                            let gw = gw.clone();
                            async move { Ok::<_, std::convert::Infallible>(proxy::handle(gw, req).await) }
                        });
                        if let Err(e) = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc).await {
                            tracing::debug!("gateway connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("gateway accept failed: {e}");
                    tokio::task::yield_now().await;
                }
            },
        }
    }
}

/// A response body fed from a channel, for streams relayed event by event.
#[derive(Debug)]
pub struct ChannelBody(pub mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

/// The time slice a gateway worker asks the scheduler for.
///
/// Linux's EEVDF scheduler (6.12+) lets a thread ask for a shorter slice than
/// the default (0.75 ms × log2(cores), 1.4 ms here): its virtual deadline then
/// comes sooner, so when it wakes (a request arrived, an upstream answered)
/// it preempts a CPU-bound thread at once instead of waiting for that
/// thread's slice to end. Without it, every wakeup that lands on a busy core
/// can add up to a whole slice to the call. The gateway is on every LLM call's
/// path and its work per wakeup is a few tens of µs, so a short slice costs
/// nobody anything; agents and the daemon's other threads keep the default.
/// No privilege is needed; older kernels ignore the value.
const WORKER_SLICE_NS: u64 = 100_000;

/// Asks for [`WORKER_SLICE_NS`] on the calling thread, keeping its nice value.
fn request_short_slice() {
    // SAFETY: getpriority and sched_setattr act on the calling thread only;
    // `attr` is a fully initialised, correctly sized sched_attr that outlives
    // the call.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        if nice == -1 && *libc::__errno_location() != 0 {
            return;
        }
        let mut attr: libc::sched_attr = std::mem::zeroed();
        attr.size = std::mem::size_of::<libc::sched_attr>() as u32;
        attr.sched_policy = libc::SCHED_OTHER as u32;
        attr.sched_nice = nice;
        attr.sched_runtime = WORKER_SLICE_NS;
        if libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) != 0 {
            tracing::debug!(
                "gateway worker keeps the default time slice: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
