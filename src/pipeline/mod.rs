//! One run of one syncer: map → plan → apply.
//!
//! [`map`] and [`plan`] are pure (values in, values out, no clock, no I/O) so the whole decision
//! of a run can be unit-tested and shown as a dry run; apply only carries out a [`model::Plan`],
//! through `db::casdoor`, which holds the SQL of Casdoor's tables.
//!
//! Flow of [`run_once`]: validate the syncer ([`Mapping::from_syncer`] among others) → record the
//! run → fetch → [`map_directory`] → [`load_state`] (in `db::casdoor`) fills a
//! [`model::PlanInput`] → [`plan::plan`] → [`apply::apply_plan`] → record the outcome in a
//! [`RunReport`].

pub mod apply;
pub mod columns;
pub mod groups;
pub mod hash;
pub mod map;
pub mod model;
pub mod plan;
pub mod report;
pub mod run;
pub mod table_columns;

pub use crate::db::casdoor::{
    DbState, OrganizationRow, SchemaFacts, find_organization, load_state,
};
pub use crate::dingtalk::Targets;
pub use apply::{ApplyError, ApplyOutcome, ApplySettings, RowError, Subject, apply_plan};
pub use columns::{Columns, FieldRef, FieldValue};
pub use map::{MappedUser, Mapping, NameSource, RecordError, map_directory, map_user};
pub use model::{
    CasbinGrouping, Conflict, ExistingGroup, ExistingUser, FieldChange, ForeignClaim, GroupCreate,
    GroupUpdate, Hold, LeaverAction, LeftAction, LinkKind, LinkState, NewUser, Notice,
    OwnershipLink, Plan, PlanInput, PlanOptions, PlanSummary, UserUpdate,
};
pub use report::{
    BatchStats, ChangeAction, ColumnChange, ErrorKind, ObjectKind, Phase, PlannedChange, Progress,
    ReportError, RunReport,
};
pub use run::{
    FetchFailure, RunContext, RunError, RunOptions, run_once, run_targets, run_valid,
    run_with_directory,
};
pub use table_columns::MappingError;
