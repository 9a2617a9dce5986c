//! One run of one syncer: map → plan → apply.
//!
//! [`map`] and [`plan`] are pure (values in, values out, no clock, no I/O) so the whole decision
//! of a run can be unit-tested and shown as a dry run; apply only carries out a [`plan::Plan`].
//!
//! Flow for apply: [`Mapping::from_syncer`] (an error makes the syncer invalid) →
//! [`map_directory`] → fill a [`plan::PlanInput`] from the database → [`plan::plan`] → write.

pub mod groups;
pub mod hash;
pub mod map;
pub mod plan;
pub mod table_columns;

pub use groups::{CasbinGrouping, ExistingGroup, GroupCreate, GroupUpdate};
pub use map::{FieldValue, MappedUser, Mapping, NameSource, RecordError, map_directory, map_user};
pub use plan::{
    Conflict, ExistingUser, FieldChange, ForeignClaim, Hold, LeaverAction, LeftAction, LinkKind,
    LinkState, NewUser, Notice, OwnershipLink, Plan, PlanInput, PlanOptions, PlanSummary,
    UserUpdate,
};
pub use table_columns::MappingError;
