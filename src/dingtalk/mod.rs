//! The fetch stage: a DingTalk client that walks a whole directory at the API's speed limit.
//! The stand-in organization that speaks the same API lives in [`crate::simulator`].

pub mod check;
pub mod client;
pub mod endpoint;
pub mod error;
pub mod fetch;
pub mod leave;
pub mod limiter;
pub mod lookup;
pub mod rng;
pub mod types;

pub use check::{CheckReport, CheckStep, FieldSample, StepOutcome};
pub use client::{CallCounter, Client, ClientConfig};
pub use endpoint::{Call, Endpoint, Permission};
pub use error::DingTalkError;
pub use fetch::{FetchError, FetchProgress};
pub use leave::{LeaveRecord, LeaveRecords};
pub use lookup::{LookupError, Targets};
pub use types::{Credentials, Department, Directory, DirectoryUser, User};
