//! mimid's edges: MIMI wire codecs, the HTTP/3 server-to-server and client APIs, admin HTTP,
//! configuration, telemetry, and the client library. See ARCHITECTURE.md.

pub mod admin;
pub mod api;
pub mod backup;
pub mod certs;
pub mod cli;
pub mod client;
pub mod cluster_net;
pub mod cluster_ops;
pub mod config;
pub mod content;
pub mod demo;
pub mod federation;
pub mod franking;
pub mod group_info;
pub mod h3;
pub mod hub_key;
pub mod key_file;
pub mod metrics;
pub mod peering;
pub mod rate_limit;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod wire;
