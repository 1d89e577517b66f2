pub mod config;
pub mod host;
pub mod plan;
pub mod sys;
pub mod unpack;
