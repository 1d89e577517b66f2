//! store: the toolbox directory and everything in it: the toolboxes' layout, metadata and
//! locks ([`toolboxes`]), unpacking image archives into trees ([`unpack`]), toolboxes from
//! image archives ([`import`]), overlay mounts ([`overlay`]), session records ([`session`]) and what must stop before a
//! toolbox is replaced ([`quiesce`]). It never writes outside the toolbox directory and knows no engine.

pub mod import;
pub mod overlay;
pub mod quiesce;
pub mod session;
pub mod toolboxes;
pub mod unpack;

use std::io;

/// Whether `error` comes from a full filesystem (or an exhausted quota).
pub fn is_no_space(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let io = cause
            .downcast_ref::<io::Error>()
            .or_else(|| cause.downcast_ref::<unpack::Error>().map(|e| e.io()));
        io.is_some_and(|e| {
            [rustix::io::Errno::NOSPC, rustix::io::Errno::DQUOT]
                .iter()
                .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
        })
    })
}
