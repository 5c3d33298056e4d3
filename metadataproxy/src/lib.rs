//! metadataproxy: per-container AWS IAM roles for Docker hosts.
//!
//! Containers call the EC2 instance metadata service as usual; the agent answers the credential
//! routes with STS credentials for the role named in the calling container's `IAM_ROLE`, and
//! forwards everything else to the real service.
//!
//! Data flows one way: connection ([`server`]) → identity ([`identity`]) → role and
//! credentials ([`roles`]) → response ([`server::handlers`]).

pub mod admin;
pub mod app;
pub mod audit;
pub mod builtin;
pub mod clock;
pub mod config;
pub mod ebpf;
pub mod identity;
pub mod imdsv2;
pub mod leftovers;
pub mod limits;
pub mod metrics;
pub mod netfilter;
pub mod notify;
pub mod path;
pub mod policy;
pub mod roles;
pub mod server;
pub mod telemetry;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod upstream;
