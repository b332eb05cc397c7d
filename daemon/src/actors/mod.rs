//! The daemon's actors, each behind a small handle so the rest of the code never
//! names actix types.
//!
//! - [`supervisor`]: owns one [`agent`] actor per configured agent.
//! - [`agent`]: one supervised process: spawn, capture, restart, stop.
//! - [`budget`]: the ledger: reserve, settle, release; periods, alerts, costs.
//! - [`breaker`]: circuit breakers per provider and model, shared by all agents.

pub mod agent;
pub mod breaker;
pub mod budget;
pub mod supervisor;

pub use supervisor::SupervisorHandle;
