//! The fetch stage: a DingTalk client that walks a whole directory at the API's speed limit,
//! and a simulator that speaks the same API for the demo, tests and benchmarks.

pub mod endpoint;
pub mod error;
pub mod limiter;
pub mod rng;
pub mod types;

pub use endpoint::{Call, Endpoint, Permission};
pub use error::DingTalkError;
pub use types::{Credentials, Department, Directory, DirectoryUser, User};
