//! hearth-agent: the guest protocol, the async host client, and the parts of
//! the in-guest agent binary.

pub mod agent;
pub mod archive;
pub mod client;
mod outbox;
pub mod proto;
mod transfer_credit;
pub mod transport;
mod unix_socket;
