//! toolbox: a debugging userland from a container image, entered with systemd-nspawn with
//! the host's PID, IPC and UTS namespaces and network shared and the host's `/` at
//! `/media/root`, or, with the spc runtime, run as a super privileged container through
//! the engine. The crate is layered; each layer uses only those listed after it (see
//! docs/ARCHITECTURE.md):
//!
//! - [`app`]: the command line, dispatch, and one file per command;
//! - [`runtime`]: how a session starts, with systemd-nspawn or as a super privileged
//!   container;
//! - [`provision`]: an image made into a toolbox, and rebuilt;
//! - [`store`]: the toolbox directory (layout, metadata, locks, unpacking, import, overlay
//!   mounts, session records) and [`engine`] (Docker or Podman behind a trait), side by side;
//! - [`model`]: settings, image references, the plan; pure;
//! - [`host`]: facts read from the host (environment, users, proxies) and terminal output;
//! - [`sys`]: system calls and signals, the only place `unsafe` is allowed;
//! - [`exit`]: exit statuses and the error kinds that decide them.
//!
//! `main.rs` calls [`run`] and maps its result to an exit status.

#![deny(unsafe_code)]

pub mod app;
pub mod engine;
pub mod exit;
pub mod host;
pub mod model;
pub mod provision;
pub mod runtime;
pub mod store;
#[allow(unsafe_code)]
pub mod sys;

pub use app::run;
pub use exit::status_of as exit_status;
