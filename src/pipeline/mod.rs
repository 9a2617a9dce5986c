//! One run of one syncer: map → plan → apply.
//!
//! [`map`] and [`plan`] are pure (values in, values out, no clock, no I/O) so the whole decision
//! of a run can be unit-tested and shown as a dry run; apply only carries out a [`plan::Plan`].

pub mod groups;
pub mod hash;
pub mod map;
pub mod plan;
pub mod table_columns;

pub use map::{FieldValue, MappedUser, Mapping, NameSource, RecordError, map_directory, map_user};
pub use table_columns::MappingError;
