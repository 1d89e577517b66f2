//! runtime::nspawn: entering a toolbox tree with systemd-nspawn: the command as a value
//! ([`command`]), the tree made safe to hand to it ([`mountpoints`]), and the session's
//! course from creation to exit ([`enter`]).

pub mod command;
pub mod enter;
pub mod manage;
pub mod mountpoints;
pub mod session;
pub mod tracing;
