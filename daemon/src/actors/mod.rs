//! The daemon's actors, each behind a small handle so the rest of the code never
//! names actix types.
//!
//! - [`supervisor`]: owns one [`agent`] actor per configured agent.
//! - [`agent`]: one supervised process: spawn, capture, restart, stop.

pub mod agent;
pub mod supervisor;

pub use supervisor::SupervisorHandle;
