//! Types and constants shared by the userspace agent and the kernel program.
//!
//! `#![no_std]` so the kernel program can use it; everything here is plain data.
#![no_std]

/// The address every EC2 instance reaches its metadata service at.
pub const METADATA_IPV4: [u8; 4] = [169, 254, 169, 254];
/// The port of the metadata service.
pub const METADATA_PORT: u16 = 80;
