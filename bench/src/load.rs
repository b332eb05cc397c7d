//! The open-loop load: a scheduler fixes every request's send time in advance, a
//! pool of keep-alive connections sends them, and latency runs from the
//! *scheduled* time, so a slow server cannot hide its stalls by slowing the client
//! down (no coordinated omission).
//!
//! The scheduler is a task waiting on a `timerfd` ([`crate::pacer`]) because tokio's
//! timer wheel has a 1 ms resolution, which would add up to a millisecond of fake
//! latency to every request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::pacer::Pacer;
use crate::payload::Api;
use crate::stats::Samples;

/// Where one phase sends its requests.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port` to connect to, also the `Host` header.
    pub authority: String,
    /// Origin-form request target, e.g. `/v1/chat/completions`.
    pub path: Uri,
    /// Headers sent with every request (auth, content type, `--header`s).
    pub headers: HeaderMap,
}

impl Endpoint {
    /// `base` is `http://host:port` with an optional path prefix; `path` is joined
    /// to it, without doubling a `/v1` the base already ends with.
    pub fn new(
        base: &str,
        path: &str,
        api: Api,
        api_key: &str,
        extra: &[(HeaderName, HeaderValue)],
    ) -> anyhow::Result<Self> {
        let uri: Uri = base
            .parse()
            .with_context(|| format!("{base:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("{base}: only http:// URLs are supported (the gateway listens on loopback)");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("{base}: no host"))?
            .to_string();
        let full_path = join_path(uri.path(), path);
        let path: Uri = full_path
            .parse()
            .with_context(|| format!("{full_path:?} is not a valid path"))?;

        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_str(&authority)?);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if !api_key.is_empty() {
            match api {
                Api::AnthropicMessages => {
                    headers.insert("x-api-key", HeaderValue::from_str(api_key)?);
                    headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
                }
                _ => {
                    let bearer = format!("Bearer {api_key}");
                    headers.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&bearer)?);
                }
            }
        }
        for (name, value) in extra {
            headers.append(name.clone(), value.clone());
        }
        Ok(Self {
            authority,
            path,
            headers,
        })
    }

    /// The URL requests go to, for reports.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

/// `"/v1" + "/v1/chat/completions"` → `"/v1/chat/completions"`;
/// `"/openai" + "/v1/x"` → `"/openai/v1/x"`.
pub fn join_path(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    match path.strip_prefix("/v1/") {
        Some(rest) if base.ends_with("/v1") => format!("{base}/{rest}"),
        _ => format!("{base}{path}"),
    }
}

/// The shape of the load, the same for every phase.
#[derive(Debug, Clone)]
pub struct Load {
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
    pub connections: usize,
    /// Per request, headers and whole body.
    pub timeout: Duration,
    /// How long after the last scheduled send queued requests may still go out.
    pub drain: Duration,
    pub bodies: Arc<Vec<Bytes>>,
}

#[derive(Debug, Clone, Copy)]
struct Scheduled {
    due: Instant,
    seq: u64,
    measured: bool,
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(authority: &str) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the server closes or the sender is dropped.
        let _ = connection.await;
    });
    Ok(sender)
}

/// Hands out every request at its scheduled time.
async fn schedule(
    tx: UnboundedSender<Scheduled>,
    start: Instant,
    rate: f64,
    warmup: u64,
    total: u64,
) -> anyhow::Result<()> {
    let pacer = Pacer::new().context("creating the timerfd")?;
    let interval_ns = 1e9 / rate;
    for seq in 0..total {
        let due = start + Duration::from_nanos((seq as f64 * interval_ns) as u64);
        pacer
            .sleep_until(due)
            .await
            .context("waiting on the timerfd")?;
        let item = Scheduled {
            due,
            seq,
            measured: seq >= warmup,
        };
        if tx.send(item).is_err() {
            break;
        }
    }
    Ok(())
}

struct Shared {
    endpoint: Endpoint,
    load: Load,
    give_up_at: Instant,
    queue: Mutex<UnboundedReceiver<Scheduled>>,
}

impl Shared {
    fn request(&self, seq: u64) -> Request<Full<Bytes>> {
        let bodies = &self.load.bodies;
        let body = bodies[(seq as usize) % bodies.len()].clone();
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.endpoint.path.clone();
        *request.headers_mut() = self.endpoint.headers.clone();
        request
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Sends and reads one response to its end: the status and when headers came.
async fn exchange(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
) -> Result<(http::StatusCode, Instant), &'static str> {
    let response = sender.send_request(request).await.map_err(|_| "io")?;
    let headers_at = Instant::now();
    let status = response.status();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(|_| "body")?;
    }
    Ok((status, headers_at))
}

/// A sender ready for a request, reconnecting if the old one was closed.
async fn ready<'a>(shared: &Shared, slot: &'a mut Option<Sender>) -> Option<&'a mut Sender> {
    if let Some(sender) = slot.as_mut()
        && sender.ready().await.is_ok()
    {
        return slot.as_mut();
    }
    *slot = None;
    let mut sender = connect(&shared.endpoint.authority).await.ok()?;
    sender.ready().await.ok()?;
    Some(slot.insert(sender))
}

/// What one connection task saw.
struct WorkerResult {
    samples: Samples,
    first_due: Option<Instant>,
    last_done: Option<Instant>,
}

async fn worker(shared: Arc<Shared>, mut slot: Option<Sender>) -> WorkerResult {
    let mut samples = Samples::default();
    let mut first_due: Option<Instant> = None;
    let mut last_done: Option<Instant> = None;
    loop {
        let next = shared.queue.lock().await.recv().await;
        let Some(item) = next else { break };
        if item.measured {
            samples.scheduled += 1;
        }
        if Instant::now() > shared.give_up_at {
            if item.measured {
                samples.error("unfinished");
            }
            continue;
        }
        let Some(sender) = ready(&shared, &mut slot).await else {
            if item.measured {
                samples.error("connect");
            }
            continue;
        };
        let request = shared.request(item.seq);
        samples.sent_total += 1;
        let sent_at = Instant::now();
        let result = tokio::time::timeout(shared.load.timeout, exchange(sender, request)).await;
        let done = Instant::now();
        let outcome = match result {
            Err(_) => Err("timeout"),
            Ok(result) => result,
        };
        if outcome.is_err() {
            // The connection is in an unknown state; start afresh next time.
            slot = None;
        }
        if !item.measured {
            continue;
        }
        first_due = Some(first_due.map_or(item.due, |d| d.min(item.due)));
        last_done = Some(last_done.map_or(done, |d| d.max(done)));
        samples.send_lag.push(nanos(sent_at - item.due));
        match outcome {
            Ok((status, headers_at)) => {
                samples.responses += 1;
                if status.is_success() {
                    samples.latency.push(nanos(done - item.due));
                    samples.ttfb.push(nanos(headers_at - item.due));
                } else {
                    samples.error(status.as_str());
                }
            }
            Err(kind) => samples.error(kind),
        }
    }
    WorkerResult {
        samples,
        first_due,
        last_done,
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesized command name (which may contain spaces):
    // state is field 3, utime field 14, stime field 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("short /proc stat")?
            .parse::<u64>()
            .context("bad /proc stat number")
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_nanos(total * 1_000_000_000 / clock_ticks()))
}

/// Ticks per second of the `/proc` time counters.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(per_sec)
        .ok()
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Steal time so far, summed over CPUs (the 8th number of `/proc/stat`'s
/// `cpu` line): how long the hypervisor ran something else while this
/// machine's CPUs had work. `None` when the line is absent or short.
pub fn steal_so_far() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_steal(&stat, clock_ticks())
}

fn parse_steal(stat: &str, ticks_per_sec: u64) -> Option<Duration> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / ticks_per_sec))
}

/// CPU time (user + system) this process has used so far.
fn self_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the pointer we own.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return Duration::ZERO;
    }
    // SAFETY: getrusage succeeded, so it initialized the struct (and zeroed
    // memory is a valid `rusage` anyway).
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs one phase (warm-up, then the measured part) against `endpoint`.
/// With `server_pid`, also measures the CPU time that process used.
pub async fn run(
    endpoint: Endpoint,
    load: &Load,
    server_pid: Option<u32>,
) -> anyhow::Result<Samples> {
    let mut senders = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        senders.push(connect(&endpoint.authority).await?);
    }
    let warmup = (load.warmup.as_secs_f64() * load.rate).round() as u64;
    let total = warmup + (load.duration.as_secs_f64() * load.rate).round() as u64;
    // A little lead so the first requests are not late before they start.
    let start = Instant::now() + Duration::from_millis(5);
    let give_up_at = start + load.warmup + load.duration + load.drain;

    let server_cpu_before = server_pid.map(process_cpu).transpose()?;
    let client_cpu_before = self_cpu();
    let steal_before = steal_so_far();
    let wall_before = Instant::now();
    let (tx, rx) = unbounded_channel();
    let rate = load.rate;
    let scheduler = tokio::spawn(schedule(tx, start, rate, warmup, total));

    let shared = Arc::new(Shared {
        endpoint,
        load: load.clone(),
        give_up_at,
        queue: Mutex::new(rx),
    });
    let workers: Vec<_> = senders
        .into_iter()
        .map(|sender| tokio::spawn(worker(Arc::clone(&shared), Some(sender))))
        .collect();
    let mut samples = Samples::default();
    let mut first_due: Option<Instant> = None;
    let mut last_done: Option<Instant> = None;
    for handle in workers {
        let result = handle.await.context("a connection task panicked")?;
        samples.merge(result.samples);
        first_due = match (first_due, result.first_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last_done = last_done.max(result.last_done);
    }
    scheduler.await.context("the scheduler task panicked")??;
    samples.client_cpu = self_cpu().saturating_sub(client_cpu_before);
    samples.steal = steal_before
        .zip(steal_so_far())
        .map(|(before, after)| after.saturating_sub(before));
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    samples.cpu_wall = wall_before.elapsed() * u32::try_from(cpus).unwrap_or(1);
    if let (Some(pid), Some(before)) = (server_pid, server_cpu_before) {
        samples.server_cpu = Some(process_cpu(pid)?.saturating_sub(before));
    }
    let measured_span = match (first_due, last_done) {
        (Some(first), Some(last)) => last.saturating_duration_since(first),
        _ => Duration::ZERO,
    };
    samples.span = measured_span.max(load.duration);
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time() {
        let busy: u64 = (0..2_000_000u64).map(|i| i ^ (i >> 3)).sum();
        assert!(busy > 0);
        assert!(process_cpu(std::process::id()).is_ok());
        assert!(self_cpu() > Duration::ZERO);
        assert!(process_cpu(u32::MAX).is_err());
    }

    #[test]
    fn reads_steal_from_proc_stat() {
        let stat =
            "cpu  3469638 97231 392769 2893531 51031 0 34623 42423 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_steal(stat, 100), Some(Duration::from_millis(424_230)));
        assert_eq!(parse_steal("cpu  1 2 3\n", 100), None);
        assert_eq!(parse_steal("intr 5\n", 100), None);
    }

    #[test]
    fn joins_paths_without_doubling_v1() {
        assert_eq!(
            join_path("", "/v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(
            join_path("/", "/v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(
            join_path("/v1", "/v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(join_path("/v1/", "/v1/messages"), "/v1/messages");
        assert_eq!(
            join_path("/openai", "/v1/responses"),
            "/openai/v1/responses"
        );
        assert_eq!(join_path("/x", "chat"), "/x/chat");
    }

    #[test]
    fn endpoint_sets_auth_per_api() {
        let chat = Endpoint::new(
            "http://127.0.0.1:9/v1",
            "/v1/chat/completions",
            Api::ChatCompletions,
            "k",
            &[],
        )
        .expect("valid");
        assert_eq!(chat.url(), "http://127.0.0.1:9/v1/chat/completions");
        assert_eq!(
            chat.headers.get("authorization").map(|v| v.as_bytes()),
            Some(&b"Bearer k"[..])
        );
        let messages = Endpoint::new(
            "http://h:1",
            "/v1/messages",
            Api::AnthropicMessages,
            "k",
            &[(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("b"),
            )],
        )
        .expect("valid");
        assert_eq!(
            messages.headers.get("x-api-key").map(|v| v.as_bytes()),
            Some(&b"k"[..])
        );
        assert_eq!(
            messages.headers.get("x-a").map(|v| v.as_bytes()),
            Some(&b"b"[..])
        );
        assert!(Endpoint::new("https://h", "/v1/x", Api::ChatCompletions, "k", &[]).is_err());
    }
}
