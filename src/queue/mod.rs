//! The Sourcegraph `/.executors/` queue: wire types, the HTTP client, the embedded server and its
//! SQLite store.

pub mod client;
pub mod embedded;
pub mod server;
pub mod store;
pub mod types;
pub mod version;
pub mod worker;
