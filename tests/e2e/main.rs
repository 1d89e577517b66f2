//! The end-to-end tests: the real toolbox binary against the real Docker daemon (and
//! Podman's service), systemd-nspawn and this host, one module per area, sharing the
//! harness in [`common`]. They need root, Docker, systemd-nspawn and the test images
//! (`scripts/test` provides them); without them each test fails when
//! `TOOLBOX_E2E=required` and otherwise says why it skipped.

mod common;

mod attacks;
mod basics;
mod containerd;
mod engines;
mod equivalence;
mod faults;
pub mod fleet;
mod help;
mod host;
mod import;
mod manage;
mod overlay;
mod podman;
mod pull;
mod spc;
mod systemd;
mod target;
mod terminal;
mod tracing;
