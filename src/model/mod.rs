//! model: what toolbox decides from its inputs, as data: settings with their origins and
//! their parser, image references, the systemd-nspawn options configuration may carry,
//! and the plan everything downstream takes. Pure: it reads nothing but what it is given.

pub mod account;
pub mod config;
pub mod image;
pub mod options;
pub mod placement;
pub mod plan;
pub mod target;
pub mod tracing;
