//! Types both sides of Iron Cage agree on.
//!
//! The daemon (`ironcaged`), the operator CLI (`ironctl`) and the Python module
//! (`iron_cage`) all link this crate, so a message, an agent name or an amount of
//! money means exactly the same thing on both ends of a socket.
//!
//! - [`protocol`]: the `Request`/`Response` enums of the control socket.
//! - [`framing`]: length-prefixed frames with a hard maximum, and their codec.
//! - [`ids`]: validated agent names.
//! - [`money`]: integer micro-dollars; money is never a float.
//! - [`pricing`]: the model price table and the exact cost of a call.
//! - [`pii`]: the PII and secrets engine (scan, redact, policies, streams).
//! - [`agent_channel`]: what an agent's `iron_cage` module and the daemon say
//!   over the agent's own socket (the Agent role, by construction).

pub mod agent_channel;
pub mod framing;
pub mod ids;
pub mod money;
pub mod pii;
pub mod pricing;
pub mod protocol;

pub use ids::AgentName;
pub use money::Micros;
