//! Python agents and the per-agent channel (the daemon's side of `iron_cage`).
//!
//! - [`module`]: where the `iron_cage` package is found (the daemon never links
//!   libpython: it only puts that directory on a Python agent's `PYTHONPATH`)
//!   and the `-c` bootstrap a Python agent is started with.
//! - [`channel`]: one task per running agent serving its end of the socketpair
//!   created at spawn: Hello, heartbeats (the watchdog's input), budget,
//!   reported costs, secrets, and rotation pushes after a secrets reload. The
//!   agent is known by construction and has the Agent role only: the request
//!   enum has no control operation.

pub mod channel;
pub mod module;

pub use channel::{CageServices, Liveness};
