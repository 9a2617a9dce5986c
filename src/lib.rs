//! syncerd: keeps a Casdoor identity database in step with a DingTalk directory.
//!
//! Data flows `dingtalk` (fetch) → `pipeline::map` → `pipeline::plan` → `pipeline::apply` → `db`.
//! The daemon parts only decide *when* a run happens. The binary (`main.rs`, `cli`) is a thin
//! shell over this library so integration tests can reach every behaviour.

pub mod checkup;
pub mod config;
pub mod daemon;
pub mod db;
pub mod dingtalk;
pub mod launch;
pub mod pipeline;
#[cfg(test)]
mod proptest_support;
pub mod secret;
pub mod simulator;
pub mod stream;
pub mod syncer;
pub mod telemetry;
