//! `iron_cage._native`: the Rust half of the `iron_cage` Python package.
//!
//! Built as an abi3 (CPython 3.9+) extension module, so one build loads into
//! any agent's own interpreter. The pure-Python half (`cage/python/iron_cage/`)
//! adds `tag()` (contextvars + httpx) and re-exports everything here.
//!
//! Everything that talks to the daemon goes through [`channel::Channel`], opened
//! once at import from `IRONCAGE_FD`; sync calls release the GIL around the
//! round trip, async ones (`abudget`, ...) are asyncio awaitables backed by
//! pyo3-async-runtimes' tokio runtime. Outside ironcaged every call raises
//! `NotUnderCage` ("not running under ironcaged").

mod channel;

use channel::{Channel, ChannelError};
use ironcage_shared::agent_channel::{
    AgentBudget, AgentErrorKind, AgentRequest, AgentResponse, MAX_LABEL_LEN, ReportCost,
    SecretRequest,
};
use ironcage_shared::money::Micros;
use ironcage_shared::pii::{RedactStyle, Scanner, redact as pii_redact};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use std::sync::{Arc, OnceLock};

create_exception!(
    iron_cage,
    IronCageError,
    PyException,
    "An error from ironcaged or the agent channel; the message says what to fix."
);
create_exception!(
    iron_cage,
    NotUnderCage,
    IronCageError,
    "Raised by every iron_cage call when the process was not started by ironcaged."
);
create_exception!(
    iron_cage,
    SecretsUnavailable,
    IronCageError,
    "The secret cannot be read: the daemon runs without a secrets store (no master key), the secret is not granted to this agent, or it is not in the store; the message says which."
);

/// The channel, opened at import: `Ok(None)` outside ironcaged, `Err` when
/// `IRONCAGE_FD` was set but unusable (the message is kept for every call).
static CHANNEL: OnceLock<Result<Option<Arc<Channel>>, String>> = OnceLock::new();

fn open_channel() -> &'static Result<Option<Arc<Channel>>, String> {
    CHANNEL.get_or_init(|| {
        Channel::from_env()
            .map(|c| c.map(Arc::new))
            .map_err(|e| e.to_string())
    })
}

const NOT_UNDER_CAGE: &str = "not running under ironcaged: iron_cage works only in an agent that ironcaged started (IRONCAGE_FD is not set); add the agent to ironcaged.toml as [[agent]] python = ..., script = ...";

fn channel(what: &str) -> PyResult<Arc<Channel>> {
    match open_channel() {
        Ok(Some(c)) => Ok(c.clone()),
        Ok(None) => Err(NotUnderCage::new_err(format!(
            "{NOT_UNDER_CAGE} (calling {what})"
        ))),
        Err(e) => Err(IronCageError::new_err(format!(
            "iron_cage cannot reach ironcaged: {e}"
        ))),
    }
}

fn to_py(e: ChannelError) -> PyErr {
    match e {
        ChannelError::Daemon(d) if d.kind == AgentErrorKind::Invalid => {
            PyValueError::new_err(d.message)
        }
        ChannelError::Daemon(d) => IronCageError::new_err(d.message),
        other => IronCageError::new_err(other.to_string()),
    }
}

/// For `secret()`: the store being absent, or the secret not granted, is
/// `SecretsUnavailable`.
fn secret_err(e: ChannelError) -> PyErr {
    match e {
        ChannelError::Daemon(d)
            if matches!(
                d.kind,
                AgentErrorKind::Unavailable | AgentErrorKind::NotFound
            ) =>
        {
            SecretsUnavailable::new_err(d.message)
        }
        other => to_py(other),
    }
}

fn usd(m: Micros) -> f64 {
    m.as_usd_f64()
}

/// An agent's budget for the current period. Amounts in USD (`float`, for
/// display) and exact integer micro-dollars (`*_micros`).
#[pyclass(frozen, module = "iron_cage")]
#[derive(Debug, Clone)]
struct Budget {
    inner: AgentBudget,
}

#[pymethods]
impl Budget {
    /// The limit in USD, or `None` when the agent has no budget (metered, unlimited).
    #[getter]
    fn limit(&self) -> Option<f64> {
        self.inner.limit.map(usd)
    }
    /// Durable spend this period, in USD.
    #[getter]
    fn spent(&self) -> f64 {
        usd(self.inner.spent)
    }
    /// Held by calls in flight, in USD.
    #[getter]
    fn reserved(&self) -> f64 {
        usd(self.inner.reserved)
    }
    /// `limit - spent - reserved` (never below 0), or `None` when unlimited.
    #[getter]
    fn remaining(&self) -> Option<f64> {
        self.inner.remaining.map(usd)
    }
    #[getter]
    fn limit_micros(&self) -> Option<i64> {
        self.inner.limit.map(|m| m.0)
    }
    #[getter]
    fn spent_micros(&self) -> i64 {
        self.inner.spent.0
    }
    #[getter]
    fn reserved_micros(&self) -> i64 {
        self.inner.reserved.0
    }
    #[getter]
    fn remaining_micros(&self) -> Option<i64> {
        self.inner.remaining.map(|m| m.0)
    }
    /// `"day"`, `"week"`, `"month"` or `"total"` (UTC periods).
    #[getter]
    fn period(&self) -> &'static str {
        self.inner.period.as_str()
    }
    /// Unix seconds when the period started.
    #[getter]
    fn period_start(&self) -> u64 {
        self.inner.period_start
    }
    /// Unix seconds when the period ends (`None` for `"total"`).
    #[getter]
    fn period_end(&self) -> Option<u64> {
        self.inner.period_end
    }
    fn __repr__(&self) -> String {
        let b = &self.inner;
        let opt = |m: Option<Micros>| m.map_or("None".to_owned(), |m| format!("{:.6}", usd(m)));
        format!(
            "Budget(limit={}, spent={:.6}, reserved={:.6}, remaining={}, period={:?})",
            opt(b.limit),
            usd(b.spent),
            usd(b.reserved),
            opt(b.remaining),
            b.period.as_str()
        )
    }
}

/// One piece of PII or one credential found by `scan()`. `start`/`end` index the
/// scanned `str` (so `text[f.start:f.end]` is the value); the finding itself
/// never holds the value.
#[pyclass(frozen, get_all, module = "iron_cage")]
#[derive(Debug, Clone)]
struct Finding {
    /// `"email"`, `"phone"`, `"card"`, `"api_key"`, ...
    kind: String,
    start: usize,
    end: usize,
    /// `"low"`, `"medium"` or `"high"`.
    confidence: &'static str,
}

#[pymethods]
impl Finding {
    fn __repr__(&self) -> String {
        format!(
            "Finding(kind={:?}, start={}, end={}, confidence={:?})",
            self.kind, self.start, self.end, self.confidence
        )
    }
}

fn scanner() -> &'static Scanner {
    static S: OnceLock<Scanner> = OnceLock::new();
    S.get_or_init(Scanner::default)
}

fn expect_budget(r: AgentResponse) -> PyResult<Budget> {
    match r {
        AgentResponse::Budget(b) | AgentResponse::CostBooked(b) => Ok(Budget { inner: b }),
        other => Err(IronCageError::new_err(format!(
            "unexpected answer from ironcaged: {other:?}"
        ))),
    }
}

fn expect_secret(r: AgentResponse) -> PyResult<String> {
    match r {
        AgentResponse::Secret(s) => Ok(s),
        other => Err(IronCageError::new_err(format!(
            "unexpected answer from ironcaged: {other:?}"
        ))),
    }
}

/// Runs one request on the channel with the GIL released.
fn call(py: Python<'_>, ch: &Channel, req: AgentRequest) -> PyResult<AgentResponse> {
    let err = if matches!(req, AgentRequest::Secret(_)) {
        secret_err
    } else {
        to_py
    };
    py.detach(|| ch.call(req)).map_err(err)
}

/// Runs one request on tokio's blocking pool; the awaitable resolves with `map(reply)`.
fn call_async<'py, T, F>(
    py: Python<'py>,
    ch: Arc<Channel>,
    req: AgentRequest,
    map: F,
) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
    F: FnOnce(AgentResponse) -> PyResult<T> + Send + 'static,
{
    let err = if matches!(req, AgentRequest::Secret(_)) {
        secret_err
    } else {
        to_py
    };
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let r = tokio::task::spawn_blocking(move || ch.call(req))
            .await
            .map_err(|e| IronCageError::new_err(format!("iron_cage request task failed: {e}")))?
            .map_err(err)?;
        map(r)
    })
}

fn cost_request(usd_amount: f64, label: &str, tag: Option<String>) -> PyResult<AgentRequest> {
    let cost = Micros::from_usd_f64(usd_amount).map_err(|e| {
        PyValueError::new_err(format!(
            "report_cost: usd must be a finite amount of at least 0 ({e})"
        ))
    })?;
    let label = label.trim();
    if label.is_empty() || label.len() > MAX_LABEL_LEN {
        return Err(PyValueError::new_err(format!(
            "report_cost: label must be 1-{MAX_LABEL_LEN} bytes, e.g. \"web-search\""
        )));
    }
    Ok(AgentRequest::ReportCost(ReportCost {
        cost,
        label: label.to_owned(),
        tag,
    }))
}

/// Raises `NotUnderCage` (or `IronCageError`) unless the channel is open;
/// `what` names the call in the message.
#[pyfunction]
fn _require(what: &str) -> PyResult<()> {
    channel(what).map(drop)
}

/// Whether this process runs under ironcaged with a working channel.
#[pyfunction]
fn running_under_cage() -> bool {
    matches!(open_channel(), Ok(Some(_)))
}

/// The name of this agent in ironcaged's config.
#[pyfunction]
fn agent_name() -> PyResult<String> {
    Ok(channel("agent_name()")?.agent().to_owned())
}

/// This agent's budget for the current period.
#[pyfunction]
fn budget(py: Python<'_>) -> PyResult<Budget> {
    let ch = channel("budget()")?;
    expect_budget(call(py, &ch, AgentRequest::Budget)?)
}

/// Awaitable form of `budget()`.
#[pyfunction]
fn abudget(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let ch = channel("abudget()")?;
    call_async(py, ch, AgentRequest::Budget, expect_budget)
}

/// Books a cost that did not go through the gateway (a paid API, a tool).
#[pyfunction]
#[pyo3(signature = (usd, label, tag=None))]
fn report_cost(py: Python<'_>, usd: f64, label: &str, tag: Option<String>) -> PyResult<Budget> {
    let ch = channel("report_cost()")?;
    let req = cost_request(usd, label, tag)?;
    expect_budget(call(py, &ch, req)?)
}

/// Awaitable form of `report_cost()`.
#[pyfunction]
#[pyo3(signature = (usd, label, tag=None))]
fn areport_cost<'py>(
    py: Python<'py>,
    usd: f64,
    label: &str,
    tag: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let ch = channel("areport_cost()")?;
    let req = cost_request(usd, label, tag)?;
    call_async(py, ch, req, expect_budget)
}

fn secret_request(name: &str) -> PyResult<AgentRequest> {
    if name.is_empty() || name.len() > MAX_LABEL_LEN {
        return Err(PyValueError::new_err(format!(
            "secret: name must be 1-{MAX_LABEL_LEN} bytes"
        )));
    }
    Ok(AgentRequest::Secret(SecretRequest {
        name: name.to_owned(),
    }))
}

/// The current value of a secret granted to this agent.
#[pyfunction]
fn secret(py: Python<'_>, name: &str) -> PyResult<String> {
    let ch = channel("secret()")?;
    expect_secret(call(py, &ch, secret_request(name)?)?)
}

/// Awaitable form of `secret()`.
#[pyfunction]
fn asecret<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let ch = channel("asecret()")?;
    call_async(py, ch, secret_request(name)?, expect_secret)
}

/// Names of this agent's secrets rotated since the previous call: one round
/// trip first (so pushes the daemon already sent are read), then the names.
#[pyfunction]
fn secrets_rotated(py: Python<'_>) -> PyResult<Vec<String>> {
    let ch = channel("secrets_rotated()")?;
    call(py, &ch, AgentRequest::Heartbeat)?;
    Ok(ch.take_rotated())
}

/// Awaitable form of `secrets_rotated()`.
#[pyfunction]
fn asecrets_rotated(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let ch = channel("asecrets_rotated()")?;
    let c = ch.clone();
    call_async(py, ch, AgentRequest::Heartbeat, move |_| {
        Ok(c.take_rotated())
    })
}

/// Tells the daemon's watchdog this agent is alive.
#[pyfunction]
fn heartbeat(py: Python<'_>) -> PyResult<()> {
    let ch = channel("heartbeat()")?;
    call(py, &ch, AgentRequest::Heartbeat)?;
    Ok(())
}

/// Byte offsets of `text` as `str` (code point) indices, for sorted findings.
fn char_indices(text: &str, findings: &[ironcage_shared::pii::Finding]) -> Vec<Finding> {
    let mut offsets: Vec<usize> = findings.iter().flat_map(|f| [f.start, f.end]).collect();
    offsets.sort_unstable();
    offsets.dedup();
    let mut map = std::collections::HashMap::with_capacity(offsets.len());
    let (mut chars, mut pos) = (0usize, 0usize);
    for off in offsets {
        chars += text[pos..off].chars().count();
        pos = off;
        map.insert(off, chars);
    }
    findings
        .iter()
        .map(|f| Finding {
            kind: f.kind.name().to_owned(),
            start: map[&f.start],
            end: map[&f.end],
            confidence: f.confidence.as_str(),
        })
        .collect()
}

/// Finds PII and credentials in `text` with the daemon's own engine, in process.
#[pyfunction]
fn scan(py: Python<'_>, text: &str) -> PyResult<Vec<Finding>> {
    channel("scan()")?;
    let text = text.to_owned();
    Ok(py.detach(move || {
        let f = scanner().scan(&text);
        char_indices(&text, &f)
    }))
}

/// `text` with every finding replaced: `style="label"` gives `[EMAIL]`,
/// `style="mask"` a partial mask (`j***@example.com`).
#[pyfunction]
#[pyo3(signature = (text, style="label"))]
fn redact(py: Python<'_>, text: &str, style: &str) -> PyResult<String> {
    channel("redact()")?;
    let label = match style {
        "label" => true,
        "mask" => false,
        other => {
            return Err(PyValueError::new_err(format!(
                "redact: style must be \"label\" or \"mask\", not {other:?}"
            )));
        }
    };
    let text = text.to_owned();
    py.detach(move || {
        let f = scanner().scan(&text);
        let style = if label {
            RedactStyle::Label
        } else {
            RedactStyle::Mask
        };
        pii_redact(&text, &f, style)
    })
    .map_err(|e| IronCageError::new_err(format!("redact failed: {e}")))
}

/// The Rust half of `iron_cage`; import `iron_cage`, not this.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // Greet the daemon now, so the agent's first call does not pay for it.
    open_channel();
    m.add("IronCageError", py.get_type::<IronCageError>())?;
    m.add("NotUnderCage", py.get_type::<NotUnderCage>())?;
    m.add("SecretsUnavailable", py.get_type::<SecretsUnavailable>())?;
    m.add("MAX_LABEL_LEN", MAX_LABEL_LEN)?;
    m.add_class::<Budget>()?;
    m.add_class::<Finding>()?;
    m.add_function(wrap_pyfunction!(_require, m)?)?;
    m.add_function(wrap_pyfunction!(running_under_cage, m)?)?;
    m.add_function(wrap_pyfunction!(agent_name, m)?)?;
    m.add_function(wrap_pyfunction!(budget, m)?)?;
    m.add_function(wrap_pyfunction!(abudget, m)?)?;
    m.add_function(wrap_pyfunction!(report_cost, m)?)?;
    m.add_function(wrap_pyfunction!(areport_cost, m)?)?;
    m.add_function(wrap_pyfunction!(secret, m)?)?;
    m.add_function(wrap_pyfunction!(asecret, m)?)?;
    m.add_function(wrap_pyfunction!(secrets_rotated, m)?)?;
    m.add_function(wrap_pyfunction!(asecrets_rotated, m)?)?;
    m.add_function(wrap_pyfunction!(heartbeat, m)?)?;
    m.add_function(wrap_pyfunction!(scan, m)?)?;
    m.add_function(wrap_pyfunction!(redact, m)?)?;
    Ok(())
}
