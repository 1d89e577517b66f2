//! runtime: how a session starts. [`nspawn`] enters a toolbox tree with systemd-nspawn;
//! [`spc`] runs the image as a super privileged container through the engine. Both check
//! the command first ([`lookup`]) and bind toolbox itself in as [`host_exec`].

pub mod host_exec;
pub mod lookup;
pub mod nspawn;
pub mod spc;
