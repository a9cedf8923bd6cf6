//! The simulated clients of miclink: one library for the load tool (`miclink-load`) and the
//! end-to-end tests, so both drive the server exactly as a client application would.
//!
//! - [`client::Member`]: a member speaking `docs/protocol.md` over the WebSocket, answering the
//!   server's subscribe offers, publishing through [`peer::Publisher`];
//! - [`peer`]: WebRTC peer connections on the async `webrtc` crate, simulated audio and video;
//! - [`marker`] and [`recv`]: what every packet carries and how receivers account for it;
//! - [`shaper`]: a narrow, lossy downlink for one member (a proxy on loopback);
//! - [`run`], [`idle`], [`speakers`], [`whip`], [`hooks`]: the load tool's scenarios; `janus` the peer SFU they also target.

pub mod client;
pub mod encoder;
pub mod hooks;
pub mod idle;
mod janus;
pub mod marker;
pub mod peer;
pub mod recv;
pub mod run;
pub mod shaper;
pub mod speakers;
pub mod util;
pub mod whip;
