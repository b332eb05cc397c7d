//! `ironcaged`: the Iron Cage daemon as a library, so tests can start it in
//! process with [`run`] on a temporary state directory and socket.
//!
//! Threads: actix actors (supervisor, agents) live on the thread that calls
//! [`run`]; a two-worker tokio runtime underneath serves the control socket and
//! the gateway. Actors are reached only through handle types.

pub mod actors;
pub mod agent_user;
pub mod audit;
pub mod cage;
pub mod config;
pub mod control;
pub mod daemon;
pub mod gateway;
pub mod logs;
pub mod notify;
pub mod pii_vault;
pub mod registry;
pub mod secret;
pub mod secrets;
pub mod store;
pub mod util;

pub(crate) mod lifecycle;

pub use lifecycle::{RunOptions, Shutdown, run};
