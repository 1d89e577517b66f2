//! runtime: how a session starts. [`nspawn`] enters a toolbox tree with systemd-nspawn;
//! [`spc`] runs the image as a super privileged container through the engine. Both check
//! the command first ([`lookup`]), bind toolbox itself in as [`host_exec`], and find a
//! running container or process to debug ([`target`]).

pub mod host_exec;
pub mod lookup;
pub mod nspawn;
pub mod spc;
pub mod target;

use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::engine::{self, Access, Connected};

/// Runs `work` with a connection to the engine, on a runtime of its own; gives up after
/// `timeout` if one is given.
pub fn with_engine<T>(
    access: &Access,
    timeout: Option<Duration>,
    work: impl AsyncFnOnce(&Connected) -> Result<T>,
) -> Result<T> {
    let runtime = engine::async_runtime()?;
    runtime.block_on(async {
        let work = async {
            let engine = engine::connect(access).await?;
            work(&engine).await
        };
        match timeout {
            None => work.await,
            Some(timeout) => tokio::time::timeout(timeout, work)
                .await
                .map_err(|_| anyhow!("the engine did not answer within {} s", timeout.as_secs()))?,
        }
    })
}
