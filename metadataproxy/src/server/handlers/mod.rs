//! The route handlers: each turns what the services answer into a response, and nothing more.

pub mod container;
pub mod credentials;
pub mod passthrough;
pub mod token;
