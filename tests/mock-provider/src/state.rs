//! What the server remembers between requests: counters, per-model faults and,
//! with `--record`, the last requests.
//!
//! The mock is the baseline of a gateway-overhead benchmark, so the hot path takes
//! no shared lock: counters are atomics or per-thread shards, faults are behind a
//! flag that is checked before their map is ever locked, and the recorder only
//! exists when recording was asked for.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Options;

/// How many requests `--record` keeps.
pub const RECORD_CAPACITY: usize = 1000;

/// Everything a connection task needs, shared behind one `Arc`.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) opts: Options,
    pub(crate) total: AtomicU64,
    pub(crate) by_model: ShardedCounter,
    pub(crate) by_path: ShardedCounter,
    pub(crate) faults: Faults,
    pub(crate) recorder: Option<Recorder>,
    next_id: AtomicU64,
}

impl State {
    pub(crate) fn new(opts: Options) -> Self {
        let recorder = opts.record.then(Recorder::default);
        Self {
            opts,
            total: AtomicU64::new(0),
            by_model: ShardedCounter::new(),
            by_path: ShardedCounter::new(),
            faults: Faults::default(),
            recorder,
            next_id: AtomicU64::new(1),
        }
    }

    /// A process-unique number for response ids.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            total: self.total.load(Ordering::Relaxed),
            by_model: self.by_model.snapshot(),
            by_path: self.by_path.snapshot(),
        }
    }

    /// Zeroes the counters and forgets recorded requests. Faults stay.
    pub(crate) fn reset(&self) {
        self.total.store(0, Ordering::Relaxed);
        self.by_model.clear();
        self.by_path.clear();
        if let Some(recorder) = &self.recorder {
            recorder.clear();
        }
    }
}

/// Request counters as served by `GET /_mock/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every request to a non-control path, failed ones included.
    pub total: u64,
    /// Requests by the `model` field of their JSON body (requests without one are
    /// not counted here).
    pub by_model: BTreeMap<String, u64>,
    /// Requests by URL path.
    pub by_path: BTreeMap<String, u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated
    // in a way that matters to a test mock; keep serving.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

const SHARDS: usize = 16;

/// A shard on its own cache lines so two threads never share one.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<HashMap<Box<str>, u64>>);

/// Counts by string key. Each thread increments its own shard, so the lock it takes
/// is uncontended (one atomic swap); readers merge all shards.
#[derive(Debug)]
pub(crate) struct ShardedCounter {
    shards: Box<[Shard]>,
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

fn shard_index() -> usize {
    SHARD_INDEX.with(|cell| match cell.get() {
        Some(index) => index,
        None => {
            let index = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
            cell.set(Some(index));
            index
        }
    })
}

impl ShardedCounter {
    fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    pub(crate) fn incr(&self, key: &str) {
        let mut map = lock(&self.shards[shard_index()].0);
        match map.get_mut(key) {
            Some(count) => *count += 1,
            None => {
                map.insert(key.into(), 1);
            }
        }
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut merged = BTreeMap::new();
        for shard in self.shards.iter() {
            for (key, count) in lock(&shard.0).iter() {
                *merged.entry(key.to_string()).or_insert(0) += count;
            }
        }
        merged
    }

    fn clear(&self) {
        for shard in self.shards.iter() {
            lock(&shard.0).clear();
        }
    }
}

/// A fault set at run time for one model (`POST /_mock/faults`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpec {
    /// The model it applies to, exactly as in the request body; `"*"` matches every
    /// request, with or without a model.
    pub model: String,
    /// The HTTP status to answer with (ignored when `drop` is true).
    #[serde(default = "default_fault_status")]
    pub status: u16,
    /// Only the next `count` matching requests fail; absent: until cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Seconds to put in a `Retry-After` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Close the connection without any response instead of answering.
    #[serde(default)]
    pub drop: bool,
    /// Answer normally (200) but abort after this many stream events, as
    /// `x-mock-drop-after` does; 0 aborts right after the response headers,
    /// before the first event. Plain JSON answers are cut in half. Ignored when
    /// `drop` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_after: Option<usize>,
}

fn default_fault_status() -> u16 {
    500
}

impl FaultSpec {
    /// A fault answering `status` for `model` until cleared.
    pub fn new(model: impl Into<String>, status: u16) -> Self {
        Self {
            model: model.into(),
            status,
            count: None,
            retry_after: None,
            drop: false,
            drop_after: None,
        }
    }
}

/// What a matching fault tells the request to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultAction {
    Respond {
        status: u16,
        retry_after: Option<u64>,
    },
    Drop,
    /// The normal answer, aborted after this many events.
    Cut(usize),
}

/// The per-model faults. `active` lets the hot path skip the lock when none is set.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    active: AtomicBool,
    map: Mutex<HashMap<String, FaultSpec>>,
}

impl Faults {
    pub(crate) fn set(&self, spec: FaultSpec) {
        let mut map = lock(&self.map);
        map.insert(spec.model.clone(), spec);
        self.active.store(true, Ordering::Release);
    }

    pub(crate) fn clear(&self) {
        let mut map = lock(&self.map);
        map.clear();
        self.active.store(false, Ordering::Release);
    }

    pub(crate) fn list(&self) -> Vec<FaultSpec> {
        let mut faults: Vec<FaultSpec> = lock(&self.map).values().cloned().collect();
        faults.sort_by(|a, b| a.model.cmp(&b.model));
        faults
    }

    /// The fault for this request, if any, using up one of its `count`.
    pub(crate) fn take(&self, model: Option<&str>) -> Option<FaultAction> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let mut map = lock(&self.map);
        let key = match model {
            Some(model) if map.contains_key(model) => model.to_owned(),
            _ if map.contains_key("*") => "*".to_owned(),
            _ => return None,
        };
        let spec = map.get_mut(&key)?;
        let action = if spec.drop {
            FaultAction::Drop
        } else if let Some(n) = spec.drop_after {
            FaultAction::Cut(n)
        } else {
            FaultAction::Respond {
                status: spec.status,
                retry_after: spec.retry_after,
            }
        };
        if let Some(count) = spec.count.as_mut() {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&key);
                if map.is_empty() {
                    self.active.store(false, Ordering::Release);
                }
            }
        }
        Some(action)
    }
}

/// One request as kept by `--record` and served by `GET /_mock/requests`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The `model` field of the JSON body, if any.
    pub model: Option<String>,
    /// Header names lowercased; repeated headers joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON; a non-JSON body as a string; no body as `null`.
    pub body: Value,
}

/// The last [`RECORD_CAPACITY`] requests, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    requests: Mutex<VecDeque<RecordedRequest>>,
}

impl Recorder {
    pub(crate) fn push(&self, request: RecordedRequest) {
        let mut requests = lock(&self.requests);
        if requests.len() == RECORD_CAPACITY {
            requests.pop_front();
        }
        requests.push_back(request);
    }

    pub(crate) fn list(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).iter().cloned().collect()
    }

    fn clear(&self) {
        lock(&self.requests).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_counter_merges_shards() {
        let counter = ShardedCounter::new();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        counter.incr("a");
                    }
                    counter.incr("b");
                });
            }
        });
        let snapshot = counter.snapshot();
        assert_eq!(snapshot.get("a"), Some(&400));
        assert_eq!(snapshot.get("b"), Some(&4));
        counter.clear();
        assert!(counter.snapshot().is_empty());
    }

    #[test]
    fn counted_fault_expires() {
        let faults = Faults::default();
        assert_eq!(faults.take(Some("m")), None);
        faults.set(FaultSpec {
            count: Some(2),
            ..FaultSpec::new("m", 503)
        });
        let expected = Some(FaultAction::Respond {
            status: 503,
            retry_after: None,
        });
        assert_eq!(faults.take(Some("other")), None);
        assert_eq!(faults.take(Some("m")), expected);
        assert_eq!(faults.take(Some("m")), expected);
        assert_eq!(faults.take(Some("m")), None);
        assert!(faults.list().is_empty());
    }

    #[test]
    fn drop_after_fault_cuts_the_answer() {
        let faults = Faults::default();
        faults.set(FaultSpec {
            drop_after: Some(0),
            count: Some(1),
            ..FaultSpec::new("m", 500)
        });
        assert_eq!(faults.take(Some("m")), Some(FaultAction::Cut(0)));
        assert_eq!(faults.take(Some("m")), None);
        let spec: FaultSpec = serde_json::from_str(r#"{"model": "m", "drop_after": 3}"#).unwrap();
        assert_eq!(spec.drop_after, Some(3));
    }

    #[test]
    fn wildcard_fault_matches_anything() {
        let faults = Faults::default();
        faults.set(FaultSpec {
            drop: true,
            ..FaultSpec::new("*", 500)
        });
        assert_eq!(faults.take(None), Some(FaultAction::Drop));
        assert_eq!(faults.take(Some("x")), Some(FaultAction::Drop));
        faults.clear();
        assert_eq!(faults.take(Some("x")), None);
    }

    #[test]
    fn recorder_keeps_the_last_requests() {
        let recorder = Recorder::default();
        for i in 0..(RECORD_CAPACITY + 5) {
            recorder.push(RecordedRequest {
                method: "POST".into(),
                path: format!("/{i}"),
                model: None,
                headers: BTreeMap::new(),
                body: Value::Null,
            });
        }
        let list = recorder.list();
        assert_eq!(list.len(), RECORD_CAPACITY);
        assert_eq!(list[0].path, "/5");
    }
}
