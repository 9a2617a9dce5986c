//! The fetch stage: a DingTalk client that walks a whole directory at the API's speed limit,
//! and a simulator that speaks the same API for the demo, tests and benchmarks.

pub mod types;

pub use types::{Credentials, Department, Directory, DirectoryUser, User};
