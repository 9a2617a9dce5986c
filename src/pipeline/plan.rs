//! The diff between the directory and the database: what one run would write.
//!
//! Pure and deterministic: every list of a [`Plan`] is sorted, so the same input always gives the
//! same plan, and applying a plan then planning again gives a plan without writes. Safety rules
//! live here, not in apply: an existing user's `name` is never rewritten, absent DingTalk fields
//! never clear a value, users the syncer does not own are never touched unless adoption is on,
//! and leavers are only acted on after a complete, non-empty fetch and within the removal limits.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use unicode_normalization::UnicodeNormalization as _;

use crate::config::{LeaverPolicy, SyncSettings};
use crate::dingtalk::types::Department;

use super::columns::{Columns, FieldRef, zero_of};
use super::groups::{
    CasbinGrouping, ExistingGroup, GroupCreate, GroupInput, GroupUpdate, MembershipProblem,
    encode_groups, plan_groups, plan_membership,
};
use super::hash::ContentHash;
use super::map::{FieldValue, MappedUser, NameSource, RecordError};

/// What an ownership link points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkKind {
    User,
    Group,
}

/// Whether the linked DingTalk object was in the last complete directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkState {
    Present,
    Left,
}

/// What the syncer did to a user when it left; stored in the link and undone on return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LeftAction {
    /// Set `is_forbidden`.
    Forbid,
    /// Left the row as it was.
    Keep,
    /// Casdoor soft delete: `is_deleted`, `deleted_time`.
    Delete,
}

impl LeftAction {
    /// The stored form: `forbid`, `keep`, `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forbid => "forbid",
            Self::Keep => "keep",
            Self::Delete => "delete",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "forbid" => Some(Self::Forbid),
            "keep" => Some(Self::Keep),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// One row of this syncer's ownership links: DingTalk object → Casdoor row it owns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnershipLink {
    pub kind: LinkKind,
    /// The DingTalk userid, or the department id in decimal.
    pub external_id: String,
    /// `user.name` or `group.name` within the organization.
    pub casdoor_name: String,
    /// The content hash last written (users; `''` for groups).
    pub content_hash: ContentHash,
    pub state: LinkState,
    /// What this syncer did to the user when it left (`None` while present). Undone when the
    /// user re-appears.
    pub left_action: Option<LeftAction>,
    /// Which user row the link was made for (`None` for groups, and for links written before
    /// it was recorded: filled from the row on the next run). A row of the same name but another
    /// identity is a different person's: the link never writes to it.
    pub row: Option<RowIdentity>,
    /// The user row was adopted, not created: its e-mail and phone, the channels Casdoor's
    /// password recovery uses, stay as they were found.
    pub adopted: bool,
}

/// What tells one user row from a later row of the same name: Casdoor's `id` and
/// `created_time`, neither of which syncerd rewrites on an existing row.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowIdentity {
    pub id: String,
    pub created_time: String,
}

impl RowIdentity {
    pub fn of(row: &ExistingUser) -> Self {
        Self {
            id: row.id.clone(),
            created_time: row.created_time.clone(),
        }
    }
}

impl OwnershipLink {
    /// Whether `row` is the row this link was made for (unknown identities match).
    fn holds(&self, row: &ExistingUser) -> bool {
        self.row
            .as_ref()
            .is_none_or(|r| r.id == row.id && r.created_time == row.created_time)
    }
}

/// A Casdoor row owned by another syncer (from the other syncers' links of this organization).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForeignClaim {
    pub kind: LinkKind,
    pub casdoor_name: String,
    pub syncer: String,
}

/// A user row of the organization, with only the columns planning reads. NULLs are read as zero
/// values (`''`, false, 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExistingUser {
    pub owner: String,
    pub name: String,
    /// Value of the mapping's key column (`Mapping::key_column`, `id` by default).
    pub key_value: String,
    /// Current values of the mapped columns (`Mapping::target_columns`). A missing entry reads as
    /// the column's zero value. `is_forbidden` is read from the field below.
    pub values: Columns,
    pub hash: ContentHash,
    pub pre_hash: ContentHash,
    pub is_forbidden: bool,
    pub is_deleted: bool,
    pub deleted_time: String,
    /// `user.groups` as stored (JSON text), `None` for NULL.
    pub groups: Option<String>,
    pub dingtalk: String,
    /// Casdoor's `id` and `created_time`: the row's identity for ownership links.
    pub id: String,
    pub created_time: String,
    /// `is_admin` (or `is_global_admin`, where that column exists) is set.
    pub is_admin: bool,
    /// `password` is not empty. Only this is read, never the password (hash) itself.
    pub has_password: bool,
}

impl ExistingUser {
    /// The current value of a column, zero when not read.
    pub fn current(&self, column: &str) -> FieldValue {
        self.current_ref(column).to_value()
    }

    /// [`ExistingUser::current`], borrowed.
    pub fn current_ref(&self, column: &str) -> FieldRef<'_> {
        match column {
            "is_forbidden" => FieldRef::Bool(self.is_forbidden),
            "is_deleted" => FieldRef::Bool(self.is_deleted),
            "deleted_time" => FieldRef::Text(&self.deleted_time),
            _ => self.values.value(column).unwrap_or_else(|| zero_of(column)),
        }
    }
}

/// Run options that shape the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    pub leaver_policy: LeaverPolicy,
    /// Leaver actions above this count are held.
    pub max_removals: u64,
    /// ... or above this percentage of the users the syncer owns.
    pub max_removal_percent: f64,
    /// One-shot override of the removal limits (`syncerd sync NAME --allow-removals`).
    pub allow_removals: bool,
    /// Whether unowned users and groups matching a DingTalk object may be taken over.
    pub adopt_existing: bool,
    /// User names that may be adopted although they are admins, have a password or carry
    /// another DingTalk identity (`sync.adopt_only`).
    pub adopt_only: BTreeSet<String>,
    /// Up to this many removals never trip `max_removal_percent` (`sync.min_removals_allowed`),
    /// so one leaver of a small team is acted on.
    pub min_removals_allowed: u64,
}

impl PlanOptions {
    pub fn from_settings(sync: &SyncSettings, allow_removals: bool, adopt_existing: bool) -> Self {
        Self {
            leaver_policy: sync.leaver_policy,
            max_removals: sync.max_removals,
            max_removal_percent: sync.max_removal_percent,
            allow_removals,
            adopt_existing,
            adopt_only: sync.adopt_only.iter().cloned().collect(),
            min_removals_allowed: sync.min_removals_allowed,
        }
    }
}

/// Everything one plan is computed from. Apply fills it from the database and the fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInput {
    pub organization: String,
    /// Display name of the root department's group (listsub does not name the root): the
    /// organization's display name, or its name.
    pub root_group_display_name: String,
    pub syncer: String,
    /// The user column matched on (`Mapping::key_column`), for messages.
    pub key_column: String,
    pub users: Vec<MappedUser>,
    pub record_errors: Vec<RecordError>,
    pub departments: Vec<Department>,
    pub directory_complete: bool,
    pub existing_users: Vec<ExistingUser>,
    /// This syncer's links.
    pub links: Vec<OwnershipLink>,
    /// Rows of this organization that other syncers own.
    pub foreign_claims: Vec<ForeignClaim>,
    pub existing_groups: Vec<ExistingGroup>,
    /// Group names used by other organizations; fill only while Casdoor's global unique index
    /// `UQE_group_name` exists (empty otherwise).
    pub group_names_in_other_orgs: BTreeSet<String>,
    /// Names of Casdoor's organizations: Casdoor refuses a group named like one.
    pub organization_names: BTreeSet<String>,
    /// Casbin `g` rows whose `v0` is a user of the organization.
    pub casbin_groupings: Vec<CasbinGrouping>,
    pub options: PlanOptions,
    /// The run's time, RFC 3339 (for `created_time`, `deleted_time`).
    pub now: String,
}

/// One column changing from `old` to `new`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldChange {
    pub column: String,
    pub old: FieldValue,
    pub new: FieldValue,
}

/// A user to insert. Apply writes these columns plus Casdoor's insert defaults (spec §2.3:
/// `owner` = organization, `type = 'normal-user'`, `register_type = 'Add Users'`,
/// `updated_time = created_time`, `properties = '{}'`, `address = '[]'`, every other column at
/// its zero value), `hash = pre_hash = hash`, and what is the same for every user of the run
/// (`register_source = <org>/<syncer>`, `created_time` = the run's time), so 100,000 new users
/// do not carry 100,000 copies of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NewUser {
    pub name: String,
    pub userid: String,
    /// Every mapped column except `name`; absent DingTalk values as the column's zero value.
    pub values: Columns,
    pub hash: ContentHash,
    pub dingtalk: String,
    /// `user.groups` JSON.
    pub groups: String,
}

/// Writes to one existing user row. Only what is `Some`/listed is written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UserUpdate {
    pub name: String,
    pub userid: String,
    /// Mapped columns that differ, plus `is_forbidden`/`is_deleted`/`deleted_time` when a
    /// re-appeared user's leaver action is undone.
    pub changes: Vec<FieldChange>,
    /// New value for both `hash` and `pre_hash`.
    pub hash: Option<String>,
    /// `user.dingtalk`, written only when it was empty (an OAuth link may have put the openId
    /// there; rewriting it would break that sign-in).
    pub dingtalk: Option<String>,
    /// New `user.groups` JSON.
    pub groups: Option<String>,
}

/// An unowned user taken over (its writes are in `updates` when it differs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Adoption {
    pub name: String,
    pub userid: String,
}

/// An owned user that is back in the directory after it left.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reappearance {
    pub name: String,
    pub userid: String,
    /// The leaver action undone (its writes are in `updates`).
    pub undone: Option<LeftAction>,
}

/// What happens to one owned user missing from a complete directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeaverAction {
    pub name: String,
    pub userid: String,
    /// What is recorded in the link's `left_action`: the policy when it changed the row, `Keep`
    /// when the row needed nothing (already forbidden/deleted, or claimed by a present user).
    pub action: LeftAction,
    /// Writes to the user row (empty for `Keep`).
    pub changes: Vec<FieldChange>,
}

/// Leaver actions held back because they exceed the removal limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub syncer: String,
    /// The actions that were not applied.
    pub leavers: Vec<LeaverAction>,
    /// How many of them would forbid or delete a user.
    pub removals: usize,
    /// Users the syncer owns once this run's creations and adoptions are done.
    pub owned: usize,
    pub max_removals: u64,
    pub max_removal_percent: f64,
    pub min_removals_allowed: u64,
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "held {} leaver removals of {} owned users (limits: sync.max_removals = {}, sync.max_removal_percent = {}% \
             beyond sync.min_removals_allowed = {}); everything else was applied. If these people really left, raise \
             sync.max_removals / sync.max_removal_percent or run once with `syncerd sync {} --allow-removals`",
            self.removals,
            self.owned,
            self.max_removals,
            self.max_removal_percent,
            self.min_removals_allowed,
            self.syncer
        )
    }
}

/// Something the run will not do, and why; the operator decides.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Conflict {
    /// A new user's name is taken by an existing user with another key.
    NameTaken {
        userid: String,
        name: String,
    },
    /// Several new DingTalk users would get the same name.
    SameNameInDirectory {
        userid: String,
        name: String,
    },
    /// Several existing users share the DingTalk user's key value.
    AmbiguousKey {
        userid: String,
        column: String,
        names: Vec<String>,
    },
    /// Several DingTalk users have the same key value.
    DuplicateKeyInDirectory {
        userid: String,
        column: String,
    },
    /// The matching user is not owned by this syncer and adoption is off.
    NotOwned {
        userid: String,
        name: String,
    },
    OwnedByAnotherSyncer {
        userid: String,
        name: String,
        syncer: String,
    },
    /// The matching user belongs to this syncer under another DingTalk userid.
    OwnedForAnotherUserid {
        userid: String,
        name: String,
        other_userid: String,
    },
    /// Several DingTalk users lead to the same Casdoor user.
    UserClaimedTwice {
        userid: String,
        name: String,
    },
    /// The user's memberships are left alone: `user.groups` is not a JSON list.
    GroupsNotAList {
        userid: String,
        name: String,
    },
    /// The user's memberships are left alone: a casbin value would exceed 100 characters.
    MembershipTooLong {
        userid: String,
        name: String,
    },
    GroupNotDepartment {
        dept_id: i64,
        group: String,
        found_type: String,
    },
    GroupNotOwned {
        dept_id: i64,
        group: String,
    },
    GroupOwnedByAnotherSyncer {
        dept_id: i64,
        group: String,
        syncer: String,
    },
    GroupNameUsedByAnotherOrg {
        dept_id: i64,
        group: String,
    },
    /// The group name equals an organization's name, which Casdoor refuses for a group.
    GroupNameIsOrganization {
        dept_id: i64,
        group: String,
    },
    /// The department name is over 100 characters or holds a NUL byte.
    GroupDisplayNameUnusable {
        dept_id: i64,
    },
    /// The unowned matching user is not adopted: taking it over would hand a privileged or
    /// password-protected account to whoever controls the DingTalk entry.
    AdoptionRefused {
        userid: String,
        name: String,
        reason: AdoptionRisk,
    },
    /// The user this syncer kept for the DingTalk user was replaced by another row of the same
    /// name (other `id` or `created_time`): nothing is written to it and it is never a leaver.
    LinkedRowReplaced {
        userid: String,
        name: String,
    },
}

/// Why an unowned user is not adopted without `sync.adopt_only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AdoptionRisk {
    Admin,
    Password,
    /// `user.dingtalk` holds another DingTalk identity than the userid.
    OtherDingtalk,
}

impl AdoptionRisk {
    /// What makes `row` unsafe to adopt for DingTalk user `userid`, if anything.
    fn of(row: &ExistingUser, userid: &str) -> Option<Self> {
        if row.is_admin {
            Some(Self::Admin)
        } else if row.has_password {
            Some(Self::Password)
        } else if !row.dingtalk.is_empty() && row.dingtalk != userid {
            Some(Self::OtherDingtalk)
        } else {
            None
        }
    }
}

impl fmt::Display for AdoptionRisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Admin => "is an administrator",
            Self::Password => "has a password",
            Self::OtherDingtalk => "is bound to another DingTalk account",
        })
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NameTaken { userid, name } => write!(
                f,
                "DingTalk user {userid:?} would be created as {name:?}, but a user of that name with another key exists; \
                 it is left alone (rename one of them, or map another Name column)"
            ),
            Self::SameNameInDirectory { userid, name } => write!(
                f,
                "DingTalk user {userid:?} and another DingTalk user would both be named {name:?}; neither is created \
                 (fix the duplicate value in DingTalk or map another Name column)"
            ),
            Self::AmbiguousKey {
                userid,
                column,
                names,
            } => write!(
                f,
                "DingTalk user {userid:?} matches several users on `{column}` ({}); none is touched until only one remains",
                names.join(", ")
            ),
            Self::DuplicateKeyInDirectory { userid, column } => write!(
                f,
                "DingTalk user {userid:?} shares its `{column}` key value with another DingTalk user; both are skipped \
                 (choose a unique key column)"
            ),
            Self::NotOwned { userid, name } => write!(
                f,
                "DingTalk user {userid:?} matches the existing user {name:?}, which this syncer does not own; \
                 it is left alone (enable adopting existing users to take it over)"
            ),
            Self::OwnedByAnotherSyncer {
                userid,
                name,
                syncer,
            } => write!(
                f,
                "DingTalk user {userid:?} matches the user {name:?}, owned by syncer {syncer:?}; it is left alone"
            ),
            Self::OwnedForAnotherUserid {
                userid,
                name,
                other_userid,
            } => write!(
                f,
                "DingTalk user {userid:?} matches the user {name:?}, which this syncer keeps for DingTalk user \
                 {other_userid:?}; it is left alone"
            ),
            Self::UserClaimedTwice { userid, name } => write!(
                f,
                "DingTalk user {userid:?} and another DingTalk user both lead to the user {name:?}; it is left alone"
            ),
            Self::GroupsNotAList { userid, name } => write!(
                f,
                "the groups column of user {name:?} (DingTalk {userid:?}) is not a JSON list; its memberships are left alone"
            ),
            Self::MembershipTooLong { userid, name } => write!(
                f,
                "the casbin rule of user {name:?} (DingTalk {userid:?}) would exceed 100 characters; its memberships are left alone"
            ),
            Self::GroupNotDepartment {
                dept_id,
                group,
                found_type,
            } => write!(
                f,
                "department {dept_id} needs group {group:?}, but a group of type {found_type:?} has that name; it is left alone"
            ),
            Self::GroupNotOwned { dept_id, group } => write!(
                f,
                "department {dept_id} matches the existing department group {group:?}, which this syncer does not own; \
                 it is left alone (enable adopting existing objects to take it over)"
            ),
            Self::GroupOwnedByAnotherSyncer {
                dept_id,
                group,
                syncer,
            } => write!(
                f,
                "department {dept_id} matches group {group:?}, owned by syncer {syncer:?}; it is left alone"
            ),
            Self::GroupNameUsedByAnotherOrg { dept_id, group } => write!(
                f,
                "department {dept_id} needs group {group:?}, but another organization has a group of that name and \
                 Casdoor's unique index UQE_group_name forbids a second one; it is not created"
            ),
            Self::GroupNameIsOrganization { dept_id, group } => write!(
                f,
                "department {dept_id} needs group {group:?}, but an organization has that name and Casdoor \
                 refuses a group named like an organization; it is not created (rename the organization)"
            ),
            Self::GroupDisplayNameUnusable { dept_id } => write!(
                f,
                "the name of department {dept_id} is longer than 100 characters or holds a NUL byte; its group is not written"
            ),
            Self::AdoptionRefused {
                userid,
                name,
                reason,
            } => write!(
                f,
                "DingTalk user {userid:?} matches the existing user {name:?}, which {reason}; it is not adopted, \
                 so that the DingTalk entry cannot take the account over (list {name:?} in sync.adopt_only to adopt it on purpose)"
            ),
            Self::LinkedRowReplaced { userid, name } => write!(
                f,
                "the user {name:?} kept for DingTalk user {userid:?} was deleted and a different user now has that name; \
                 it is left alone (rename or remove one of them in Casdoor)"
            ),
        }
    }
}

/// Information for the run report; nothing to fix necessarily.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Notice {
    /// The mapped Name changed; the user's name (primary key) is never rewritten.
    NameNotRewritten {
        userid: String,
        name: String,
        mapped_name: String,
    },
    /// The fetch was incomplete: no leaver is acted on and no membership is removed.
    DirectoryIncomplete,
    /// The directory has no user at all: no leaver is acted on.
    DirectoryEmpty,
    /// A department this syncer made a group for is gone; the group is kept.
    DepartmentGone {
        dept_id: String,
        group: String,
    },
    DepartmentUnnamed {
        dept_id: i64,
    },
    /// The user this syncer kept for a DingTalk user no longer exists; it is matched anew.
    LinkedUserMissing {
        userid: String,
        name: String,
    },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NameNotRewritten {
                userid,
                name,
                mapped_name,
            } => write!(
                f,
                "DingTalk user {userid:?} now maps to the name {mapped_name:?}; the user keeps its name {name:?} \
                 (names are never rewritten)"
            ),
            Self::DirectoryIncomplete => write!(
                f,
                "the DingTalk fetch was incomplete: no leaver was acted on and no membership was removed"
            ),
            Self::DirectoryEmpty => write!(
                f,
                "DingTalk returned no user at all: no leaver was acted on (check the app's contact permissions)"
            ),
            Self::DepartmentGone { dept_id, group } => write!(
                f,
                "department {dept_id} is gone from DingTalk; its group {group:?} is kept"
            ),
            Self::DepartmentUnnamed { dept_id } => write!(
                f,
                "department {dept_id} has no name in DingTalk; its group is named by its id"
            ),
            Self::LinkedUserMissing { userid, name } => write!(
                f,
                "the user {name:?} kept for DingTalk user {userid:?} no longer exists; it is matched anew"
            ),
        }
    }
}

/// Everything one run will write, and what it will not and why. Every list is sorted.
///
/// Apply contract: insert `creates` (with Casdoor's insert defaults, `hash = pre_hash`); for each
/// of `updates` write exactly the listed columns (`hash` sets `hash` and `pre_hash`); write the
/// `changes` of `leavers` (none for `Keep`); insert `group_creates`, update `group_updates`;
/// delete `casbin_remove` rows and insert `casbin_add` rows after the users exist (Casdoor writes
/// them first and leaves orphans on failure); upsert `link_writes` and delete `link_deletes` by
/// (kind, external_id). `held`, `conflicts`, `notices` and `record_errors` are only reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub creates: Vec<NewUser>,
    pub updates: Vec<UserUpdate>,
    /// Matched users that need no user-row write (a count: 100,000 names are not worth
    /// holding for it).
    pub unchanged: usize,
    pub adopted: Vec<Adoption>,
    pub reappeared: Vec<Reappearance>,
    /// Leaver actions to apply (empty when held).
    pub leavers: Vec<LeaverAction>,
    pub held: Option<Hold>,
    pub group_creates: Vec<GroupCreate>,
    pub group_updates: Vec<GroupUpdate>,
    pub casbin_add: Vec<CasbinGrouping>,
    pub casbin_remove: Vec<CasbinGrouping>,
    /// Links to insert or overwrite, keyed by (kind, external_id).
    pub link_writes: Vec<OwnershipLink>,
    /// User links to delete (by kind and external_id): their user row no longer exists.
    pub link_deletes: Vec<OwnershipLink>,
    pub conflicts: Vec<Conflict>,
    pub notices: Vec<Notice>,
    pub record_errors: Vec<RecordError>,
}

/// Counts of a plan, for logs and run history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanSummary {
    pub created: usize,
    /// Updates that change at least one column.
    pub updated: usize,
    /// Updates that only rewrite `hash`/`pre_hash` (and maybe `dingtalk`).
    pub hash_only: usize,
    pub unchanged: usize,
    pub adopted: usize,
    pub reappeared: usize,
    pub leavers: usize,
    pub held_leavers: usize,
    pub memberships_changed: usize,
    pub casbin_added: usize,
    pub casbin_removed: usize,
    pub groups_created: usize,
    pub groups_updated: usize,
    pub conflicts: usize,
    pub notices: usize,
    pub record_errors: usize,
}

impl fmt::Display for PlanSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "users: {} created, {} updated, {} hash-only, {} unchanged, {} adopted, {} re-appeared, {} leavers ({} held); \
             memberships: {} users changed, +{}/-{} casbin rows; groups: {} created, {} updated; \
             {} conflicts, {} record errors, {} notices",
            self.created,
            self.updated,
            self.hash_only,
            self.unchanged,
            self.adopted,
            self.reappeared,
            self.leavers,
            self.held_leavers,
            self.memberships_changed,
            self.casbin_added,
            self.casbin_removed,
            self.groups_created,
            self.groups_updated,
            self.conflicts,
            self.record_errors,
            self.notices
        )
    }
}

impl Plan {
    pub fn summary(&self) -> PlanSummary {
        let updated = self
            .updates
            .iter()
            .filter(|u| !u.changes.is_empty())
            .count();
        let hash_only = self
            .updates
            .iter()
            .filter(|u| u.changes.is_empty() && u.groups.is_none() && u.hash.is_some())
            .count();
        PlanSummary {
            created: self.creates.len(),
            updated,
            hash_only,
            unchanged: self.unchanged,
            adopted: self.adopted.len(),
            reappeared: self.reappeared.len(),
            leavers: self.leavers.len(),
            held_leavers: self.held.as_ref().map_or(0, |h| h.leavers.len()),
            memberships_changed: self.creates.iter().filter(|c| c.groups != "[]").count()
                + self.updates.iter().filter(|u| u.groups.is_some()).count(),
            casbin_added: self.casbin_add.len(),
            casbin_removed: self.casbin_remove.len(),
            groups_created: self.group_creates.len(),
            groups_updated: self.group_updates.len(),
            conflicts: self.conflicts.len(),
            notices: self.notices.len(),
            record_errors: self.record_errors.len(),
        }
    }

    /// Whether applying the plan writes anything (users, groups, casbin rows or links). Held
    /// leavers, conflicts and notices are not writes.
    pub fn has_writes(&self) -> bool {
        !(self.creates.is_empty()
            && self.updates.is_empty()
            && self.leavers.is_empty()
            && self.group_creates.is_empty()
            && self.group_updates.is_empty()
            && self.casbin_add.is_empty()
            && self.casbin_remove.is_empty()
            && self.link_writes.is_empty()
            && self.link_deletes.is_empty())
    }
}

/// How a DingTalk user resolved against the existing rows.
enum Target<'a> {
    /// A user to create; `index` is its position in [`PlanInput::users`].
    New { index: usize },
    Existing {
        row: &'a ExistingUser,
        adopt: bool,
        /// The link followed to the row, if any.
        link: Option<&'a OwnershipLink>,
    },
}

/// Computes the plan of one run. Takes the input by value: the mapped columns of new users move
/// into the plan instead of being copied, so a first import holds them once.
pub fn plan(input: PlanInput) -> Plan {
    let org = input.organization.as_str();
    let opts = &input.options;
    let mut out = Plan {
        record_errors: input.record_errors.clone(),
        ..Plan::default()
    };

    let rows: Vec<&ExistingUser> = input
        .existing_users
        .iter()
        .filter(|u| u.owner == org)
        .collect();
    let by_name: BTreeMap<&str, &ExistingUser> =
        rows.iter().map(|u| (u.name.as_str(), *u)).collect();

    let mut user_links: Vec<&OwnershipLink> = input
        .links
        .iter()
        .filter(|l| l.kind == LinkKind::User)
        .collect();
    user_links.sort();
    let mut link_by_userid: BTreeMap<&str, &OwnershipLink> = BTreeMap::new();
    let mut owner_of_row: BTreeMap<&str, &OwnershipLink> = BTreeMap::new();
    for link in &user_links {
        link_by_userid
            .entry(link.external_id.as_str())
            .or_insert(link);
        owner_of_row
            .entry(link.casdoor_name.as_str())
            .or_insert(link);
    }
    let mut foreign_users: BTreeMap<&str, &str> = BTreeMap::new();
    for claim in input
        .foreign_claims
        .iter()
        .filter(|c| c.kind == LinkKind::User)
    {
        let syncer = foreign_users
            .entry(claim.casdoor_name.as_str())
            .or_insert(&claim.syncer);
        *syncer = (*syncer).min(claim.syncer.as_str());
    }

    // Directory users, once per userid.
    let mut users: Vec<(usize, &MappedUser)> = Vec::with_capacity(input.users.len());
    let mut seen_userids = BTreeSet::new();
    for (index, u) in input.users.iter().enumerate() {
        if seen_userids.insert(u.userid.as_str()) {
            users.push((index, u));
        } else {
            out.record_errors.push(RecordError::DuplicateUserid {
                userid: u.userid.clone(),
            });
        }
    }
    // What planning builds per user is dropped as soon as it is done with: a 100,000-user run
    // would otherwise hold every index at once at the end.
    drop(seen_userids);
    let present: BTreeSet<&str> = users
        .iter()
        .map(|(_, u)| u.userid.as_str())
        .chain(input.record_errors.iter().filter_map(RecordError::userid))
        .collect();
    let mut key_count: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, u) in &users {
        *key_count.entry(u.key.as_str()).or_default() += 1;
    }
    let key_column = input.key_column.as_str();

    // Rows are matched on the key they hold after this run: a row reached through a link whose
    // key column this run rewrites gives up its old key value (an e-mail address handed on to
    // another person), which is then free for another DingTalk user now, as in the next run.
    // The one DingTalk user whose link reaches each row (`None`: several do).
    let mut link_claims: BTreeMap<&str, Option<&MappedUser>> = BTreeMap::new();
    for &(_, u) in &users {
        if key_count.get(u.key.as_str()).copied().unwrap_or(0) > 1 {
            continue;
        }
        if let Some(link) = link_by_userid.get(u.userid.as_str())
            && by_name
                .get(link.casdoor_name.as_str())
                .is_some_and(|row| link.holds(row))
        {
            link_claims
                .entry(link.casdoor_name.as_str())
                .and_modify(|claim| *claim = None)
                .or_insert(Some(u));
        }
    }
    // Rows by the key they hold after this run, sorted: the rows of one key are a range. Most
    // keys are borrowed from the rows; 100,000 users are not worth 100,000 copies.
    let mut by_key: Vec<(Cow<'_, str>, &ExistingUser)> = Vec::with_capacity(rows.len());
    for row in &rows {
        let rewritten = match link_claims.get(row.name.as_str()) {
            Some(Some(u)) => rewritten_key(row, u, key_column),
            _ => None,
        };
        let key = rewritten.map_or(Cow::Borrowed(row.key_value.as_str()), Cow::Owned);
        if !key.is_empty() {
            by_key.push((key, row));
        }
    }
    drop(link_claims);
    by_key.sort_by(|a, b| a.0.cmp(&b.0));
    let rows_with_key = |key: &str| -> &[(Cow<'_, str>, &ExistingUser)] {
        let start = by_key.partition_point(|(k, _)| k.as_ref() < key);
        let from_start = by_key.get(start..).unwrap_or_default();
        let len = from_start.partition_point(|(k, _)| k.as_ref() == key);
        from_start.get(..len).unwrap_or_default()
    };

    // Resolve every DingTalk user to a row, a creation, or a conflict.
    let mut resolved: Vec<(&MappedUser, Target<'_>)> = Vec::with_capacity(users.len());
    for &(index, u) in &users {
        if key_count.get(u.key.as_str()).copied().unwrap_or(0) > 1 {
            out.conflicts.push(Conflict::DuplicateKeyInDirectory {
                userid: u.userid.clone(),
                column: key_column.to_owned(),
            });
            continue;
        }
        let link = link_by_userid.get(u.userid.as_str()).copied();
        if let Some(link) = link {
            if let Some(row) = by_name.get(link.casdoor_name.as_str()) {
                if !link.holds(row) {
                    out.conflicts.push(Conflict::LinkedRowReplaced {
                        userid: u.userid.clone(),
                        name: row.name.clone(),
                    });
                    continue;
                }
                resolved.push((
                    u,
                    Target::Existing {
                        row,
                        adopt: false,
                        link: Some(link),
                    },
                ));
                continue;
            }
            out.notices.push(Notice::LinkedUserMissing {
                userid: u.userid.clone(),
                name: link.casdoor_name.clone(),
            });
        }
        match rows_with_key(u.key.as_str()) {
            [] => resolved.push((u, Target::New { index })),
            [(_, row)] => {
                if let Some(own) = owner_of_row.get(row.name.as_str()) {
                    if own.external_id == u.userid && !own.holds(row) {
                        out.conflicts.push(Conflict::LinkedRowReplaced {
                            userid: u.userid.clone(),
                            name: row.name.clone(),
                        });
                    } else if own.external_id == u.userid {
                        resolved.push((
                            u,
                            Target::Existing {
                                row,
                                adopt: false,
                                link: Some(own),
                            },
                        ));
                    } else {
                        out.conflicts.push(Conflict::OwnedForAnotherUserid {
                            userid: u.userid.clone(),
                            name: row.name.clone(),
                            other_userid: own.external_id.clone(),
                        });
                    }
                } else if let Some(syncer) = foreign_users.get(row.name.as_str()) {
                    out.conflicts.push(Conflict::OwnedByAnotherSyncer {
                        userid: u.userid.clone(),
                        name: row.name.clone(),
                        syncer: (*syncer).to_owned(),
                    });
                } else if let Some(reason) = AdoptionRisk::of(row, &u.userid)
                    .filter(|_| opts.adopt_existing && !opts.adopt_only.contains(&row.name))
                {
                    out.conflicts.push(Conflict::AdoptionRefused {
                        userid: u.userid.clone(),
                        name: row.name.clone(),
                        reason,
                    });
                } else if opts.adopt_existing {
                    resolved.push((
                        u,
                        Target::Existing {
                            row,
                            adopt: true,
                            link: None,
                        },
                    ));
                } else {
                    out.conflicts.push(Conflict::NotOwned {
                        userid: u.userid.clone(),
                        name: row.name.clone(),
                    });
                }
            }
            several => {
                let mut names: Vec<String> = several.iter().map(|(_, r)| r.name.clone()).collect();
                names.sort();
                out.conflicts.push(Conflict::AmbiguousKey {
                    userid: u.userid.clone(),
                    column: key_column.to_owned(),
                    names,
                });
            }
        }
    }
    drop(by_key);
    drop(key_count);
    drop(foreign_users);

    // A row reached by two DingTalk users, or a new name wanted twice or already taken, is a
    // conflict for each of them.
    let mut row_claims: BTreeMap<&str, usize> = BTreeMap::new();
    let mut new_names: BTreeMap<String, usize> = BTreeMap::new();
    for (u, target) in &resolved {
        match target {
            Target::Existing { row, .. } => *row_claims.entry(row.name.as_str()).or_default() += 1,
            Target::New { .. } => *new_names.entry(fold(&u.name)).or_default() += 1,
        }
    }
    // MySQL's default collation compares names without case: fold to find collisions. Only
    // new users need it, so a run that creates nobody folds no name.
    let taken_names: BTreeSet<String> = if new_names.is_empty() {
        BTreeSet::new()
    } else {
        rows.iter().map(|u| fold(&u.name)).collect()
    };
    resolved.retain(|(u, target)| match target {
        Target::Existing { row, .. } => {
            let ok = row_claims.get(row.name.as_str()).copied().unwrap_or(0) == 1;
            if !ok {
                out.conflicts.push(Conflict::UserClaimedTwice {
                    userid: u.userid.clone(),
                    name: row.name.clone(),
                });
            }
            ok
        }
        Target::New { .. } => {
            let folded = fold(&u.name);
            if taken_names.contains(&folded) {
                out.conflicts.push(Conflict::NameTaken {
                    userid: u.userid.clone(),
                    name: u.name.clone(),
                });
                false
            } else if new_names.get(&folded).copied().unwrap_or(0) > 1 {
                out.conflicts.push(Conflict::SameNameInDirectory {
                    userid: u.userid.clone(),
                    name: u.name.clone(),
                });
                false
            } else {
                true
            }
        }
    });
    drop((row_claims, new_names, taken_names));

    let groups = plan_groups(&GroupInput {
        organization: org,
        root_display_name: &input.root_group_display_name,
        departments: &input.departments,
        directory_complete: input.directory_complete,
        existing_groups: &input.existing_groups,
        links: &input.links,
        foreign_claims: &input.foreign_claims,
        group_names_in_other_orgs: &input.group_names_in_other_orgs,
        organization_names: &input.organization_names,
        adopt_existing: opts.adopt_existing,
        now: &input.now,
    });
    // (subject, group) of every casbin row, sorted: a subject's rows are a range. A set per
    // subject cost a B-tree node per user.
    let mut rules_by_subject: Vec<(&str, &str)> = input
        .casbin_groupings
        .iter()
        .map(|rule| (rule.v0.as_str(), rule.v1.as_str()))
        .collect();
    rules_by_subject.sort_unstable();
    let remove_stale = input.directory_complete;
    let membership = |user_name: &str,
                      current: Option<&str>,
                      u: &MappedUser,
                      out: &mut Plan|
     -> Option<String> {
        let subject = format!("{org}/{user_name}");
        let start = rules_by_subject.partition_point(|(s, _)| *s < subject.as_str());
        let rules: BTreeSet<&str> = rules_by_subject
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|(s, _)| *s == subject.as_str())
            .map(|(_, group)| *group)
            .collect();
        match plan_membership(
            org,
            user_name,
            current,
            &rules,
            &u.departments,
            &groups.managed,
            remove_stale,
        ) {
            Ok(diff) => {
                out.casbin_add.extend(diff.casbin_add);
                out.casbin_remove.extend(diff.casbin_remove);
                diff.groups_json
            }
            Err(problem) => {
                let (userid, name) = (u.userid.clone(), user_name.to_owned());
                out.conflicts.push(match problem {
                    MembershipProblem::GroupsNotAList => Conflict::GroupsNotAList { userid, name },
                    MembershipProblem::TooLongForCasbin => {
                        Conflict::MembershipTooLong { userid, name }
                    }
                });
                None
            }
        }
    };

    let mut claimed_rows: BTreeSet<&str> = BTreeSet::new();
    // (position in `out.creates`, position in `input.users`): filled in at the end.
    let mut new_user_columns: Vec<(usize, usize)> = Vec::new();
    for (u, target) in &resolved {
        let desired_link = OwnershipLink {
            kind: LinkKind::User,
            external_id: u.userid.clone(),
            casdoor_name: String::new(),
            content_hash: u.hash.clone(),
            state: LinkState::Present,
            left_action: None,
            row: None,
            adopted: false,
        };
        let current_link = link_by_userid.get(u.userid.as_str()).copied();
        match target {
            Target::New { index } => {
                let groups_json =
                    membership(&u.name, None, u, &mut out).unwrap_or_else(|| encode_groups(&[]));
                new_user_columns.push((out.creates.len(), *index));
                // The identity apply gives the new row: the mapped `id` (never rewritten later)
                // and the run's time as `created_time`.
                let identity = RowIdentity {
                    id: u
                        .fields
                        .value("id")
                        .map(|v| v.to_value().canonical())
                        .unwrap_or_default(),
                    created_time: input.now.clone(),
                };
                out.creates.push(NewUser {
                    name: u.name.clone(),
                    userid: u.userid.clone(),
                    values: Columns::new(),
                    hash: u.hash.clone(),
                    dingtalk: u.userid.clone(),
                    groups: groups_json,
                });
                let link = OwnershipLink {
                    casdoor_name: u.name.clone(),
                    row: Some(identity),
                    ..desired_link
                };
                if current_link != Some(&link) {
                    out.link_writes.push(link);
                }
            }
            Target::Existing { row, adopt, link } => {
                claimed_rows.insert(row.name.as_str());
                // An adopted row keeps the e-mail and phone it was found with: they recover its
                // password, and the person who set them may not be the DingTalk entry's.
                let adopted = *adopt || link.is_some_and(|l| l.adopted);
                let mut changes: Vec<FieldChange> = u
                    .fields
                    .iter()
                    .filter(|(column, _)| *column != "id")
                    .filter(|(column, _)| !(adopted && matches!(*column, "email" | "phone")))
                    .filter_map(|(column, value)| {
                        let new = value?;
                        let old = row.current_ref(column);
                        (old != new).then(|| FieldChange {
                            column: column.to_owned(),
                            old: old.to_value(),
                            new: new.to_value(),
                        })
                    })
                    .collect();
                let left = link.filter(|l| l.state == LinkState::Left);
                if let Some(left) = left {
                    let undone = left.left_action;
                    let mapped_forbidden = matches!(u.fields.get("is_forbidden"), Some(Some(_)));
                    match undone {
                        Some(LeftAction::Forbid) if !mapped_forbidden && row.is_forbidden => {
                            changes.push(FieldChange {
                                column: "is_forbidden".to_owned(),
                                old: FieldValue::Bool(true),
                                new: FieldValue::Bool(false),
                            });
                        }
                        Some(LeftAction::Delete) if row.is_deleted => {
                            changes.push(FieldChange {
                                column: "is_deleted".to_owned(),
                                old: FieldValue::Bool(true),
                                new: FieldValue::Bool(false),
                            });
                            changes.push(FieldChange {
                                column: "deleted_time".to_owned(),
                                old: FieldValue::Text(row.deleted_time.clone()),
                                new: FieldValue::Text(String::new()),
                            });
                        }
                        _ => {}
                    }
                    out.reappeared.push(Reappearance {
                        name: row.name.clone(),
                        userid: u.userid.clone(),
                        undone,
                    });
                }
                changes.sort();
                if u.name_source == NameSource::Mapped && u.name != row.name {
                    out.notices.push(Notice::NameNotRewritten {
                        userid: u.userid.clone(),
                        name: row.name.clone(),
                        mapped_name: u.name.clone(),
                    });
                }
                let hash =
                    (row.hash != u.hash || row.pre_hash != u.hash).then(|| u.hash.to_string());
                let dingtalk = row.dingtalk.is_empty().then(|| u.userid.clone());
                let groups_json = membership(&row.name, row.groups.as_deref(), u, &mut out);
                if changes.is_empty()
                    && hash.is_none()
                    && dingtalk.is_none()
                    && groups_json.is_none()
                {
                    out.unchanged += 1;
                } else {
                    out.updates.push(UserUpdate {
                        name: row.name.clone(),
                        userid: u.userid.clone(),
                        changes,
                        hash,
                        dingtalk,
                        groups: groups_json,
                    });
                }
                if *adopt {
                    out.adopted.push(Adoption {
                        name: row.name.clone(),
                        userid: u.userid.clone(),
                    });
                }
                let link = OwnershipLink {
                    casdoor_name: row.name.clone(),
                    row: Some(RowIdentity::of(row)),
                    adopted,
                    ..desired_link
                };
                if current_link != Some(&link) {
                    out.link_writes.push(link);
                }
            }
        }
    }

    // The removal percentage is taken of the users the syncer owns once this run's creations,
    // adoptions and returns are done, so a held run and its re-run judge the same way.
    let mut owned_after: Vec<&str> = user_links
        .iter()
        .filter(|l| {
            l.state == LinkState::Present
                && by_name
                    .get(l.casdoor_name.as_str())
                    .is_some_and(|row| l.holds(row))
        })
        .map(|l| l.external_id.as_str())
        .chain(resolved.iter().map(|(u, _)| u.userid.as_str()))
        .collect();
    owned_after.sort_unstable();
    owned_after.dedup();
    plan_leavers(
        &input,
        &user_links,
        &present,
        &by_name,
        &claimed_rows,
        owned_after.len(),
        &LeaverMemberships {
            rules_by_subject: &rules_by_subject,
            managed: &groups.managed,
        },
        &mut out,
    );
    leave_groups_of_deleted(
        org,
        &user_links,
        &present,
        &by_name,
        &claimed_rows,
        &LeaverMemberships {
            rules_by_subject: &rules_by_subject,
            managed: &groups.managed,
        },
        &mut out,
    );
    drop((owned_after, present, claimed_rows, rules_by_subject));

    // A link whose user row is gone (deleted in Casdoor) holds nothing: drop it unless this plan
    // points it at a row again, so a stale link can never capture a row created later.
    let mut resolved_userids: Vec<&str> = resolved.iter().map(|(u, _)| u.userid.as_str()).collect();
    resolved_userids.sort_unstable();
    out.link_deletes = user_links
        .iter()
        .filter(|l| {
            !by_name.contains_key(l.casdoor_name.as_str())
                && resolved_userids
                    .binary_search(&l.external_id.as_str())
                    .is_err()
        })
        .map(|l| (*l).clone())
        .collect();

    // Every borrow of the mapped users has ended: move their columns into the new users.
    let mut mapped = input.users;
    for (create, index) in new_user_columns {
        if let (Some(new), Some(u)) = (out.creates.get_mut(create), mapped.get_mut(index)) {
            new.values = std::mem::take(&mut u.fields).with_zeros();
        }
    }
    drop(mapped);

    out.group_creates = groups.creates;
    out.group_updates = groups.updates;
    out.conflicts.extend(groups.conflicts);
    out.notices.extend(groups.notices);
    out.link_writes.extend(groups.link_writes);

    out.creates.sort();
    out.updates.sort();
    out.adopted.sort();
    out.reappeared.sort();
    out.leavers.sort();
    out.group_creates.sort();
    out.group_updates.sort();
    for rules in [&mut out.casbin_add, &mut out.casbin_remove] {
        rules.sort();
        rules.dedup();
    }
    out.link_writes.sort();
    out.link_writes
        .dedup_by(|a, b| a.kind == b.kind && a.external_id == b.external_id);
    out.link_deletes.sort();
    out.link_deletes
        .dedup_by(|a, b| a.kind == b.kind && a.external_id == b.external_id);
    out.conflicts.sort();
    out.notices.sort();
    out.notices.dedup();
    out.record_errors.sort();
    out
}

/// What a deleted leaver's memberships are planned from: the organization's casbin `g` rows as
/// sorted (subject, group) pairs, and the groups this syncer manages.
struct LeaverMemberships<'a> {
    rules_by_subject: &'a [(&'a str, &'a str)],
    managed: &'a BTreeSet<String>,
}

impl LeaverMemberships<'_> {
    /// Takes a deleted user out of every managed group, as Casdoor's DeleteUser drops a user's
    /// memberships: the new `user.groups` (if it changes) and the `g` rows to delete. Manual
    /// memberships stay. A `user.groups` that is not a JSON list is left as it is (the user's
    /// memberships were reported while it was present); its managed `g` rows still go.
    fn leave(
        &self,
        organization: &str,
        row: &ExistingUser,
    ) -> (Option<String>, Vec<CasbinGrouping>) {
        let subject = format!("{organization}/{}", row.name);
        let start = self
            .rules_by_subject
            .partition_point(|(s, _)| *s < subject.as_str());
        let rules: BTreeSet<&str> = self
            .rules_by_subject
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|(s, _)| *s == subject.as_str())
            .map(|(_, group)| *group)
            .collect();
        let group_prefix = format!("group:{organization}/");
        let casbin_remove = rules
            .iter()
            .filter(|v1| {
                v1.strip_prefix(group_prefix.as_str())
                    .is_some_and(|g| self.managed.contains(g))
            })
            .map(|v1| CasbinGrouping {
                v0: subject.clone(),
                v1: (*v1).to_owned(),
            })
            .collect();
        let groups = plan_membership(
            organization,
            &row.name,
            row.groups.as_deref(),
            &rules,
            &[],
            self.managed,
            true,
        )
        .ok()
        .and_then(|diff| diff.groups_json);
        (groups, casbin_remove)
    }
}

/// Users this syncer deleted as leavers before deleted users left their groups (older
/// syncerd versions) still hold managed memberships: they leave them now, once.
fn leave_groups_of_deleted(
    organization: &str,
    user_links: &[&OwnershipLink],
    present: &BTreeSet<&str>,
    by_name: &BTreeMap<&str, &ExistingUser>,
    claimed_rows: &BTreeSet<&str>,
    memberships: &LeaverMemberships<'_>,
    out: &mut Plan,
) {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for link in user_links {
        let name = link.casdoor_name.as_str();
        if link.state != LinkState::Left
            || link.left_action != Some(LeftAction::Delete)
            || present.contains(link.external_id.as_str())
            || claimed_rows.contains(name)
            || done.contains(name)
        {
            continue;
        }
        let Some(row) = by_name.get(name).filter(|r| r.is_deleted) else {
            continue;
        };
        let (groups, rules) = memberships.leave(organization, row);
        if groups.is_none() && rules.is_empty() {
            continue;
        }
        done.insert(name);
        out.casbin_remove.extend(rules);
        // A row is written once per run: a leaver action of this run on the same row carries
        // the change (a delete has it already).
        let leaver = out
            .leavers
            .iter_mut()
            .find(|l| l.name == row.name && !l.changes.is_empty());
        match (leaver, groups) {
            (Some(leaver), Some(new)) => {
                if !leaver.changes.iter().any(|c| c.column == "groups") {
                    leaver.changes.push(FieldChange {
                        column: "groups".to_owned(),
                        old: FieldValue::Text(row.groups.clone().unwrap_or_default()),
                        new: FieldValue::Text(new),
                    });
                    leaver.changes.sort();
                }
            }
            (Some(_), None) => {}
            (None, groups) => out.updates.push(UserUpdate {
                name: row.name.clone(),
                userid: link.external_id.clone(),
                changes: Vec::new(),
                hash: None,
                dingtalk: None,
                groups,
            }),
        }
    }
}

/// Leavers: owned users (link present) missing from a complete, non-empty directory.
#[allow(clippy::too_many_arguments)]
fn plan_leavers(
    input: &PlanInput,
    user_links: &[&OwnershipLink],
    present: &BTreeSet<&str>,
    by_name: &BTreeMap<&str, &ExistingUser>,
    claimed_rows: &BTreeSet<&str>,
    owned: usize,
    memberships: &LeaverMemberships<'_>,
    out: &mut Plan,
) {
    let opts = &input.options;
    if !input.directory_complete {
        out.notices.push(Notice::DirectoryIncomplete);
        return;
    }
    if input.users.is_empty() && input.record_errors.is_empty() {
        out.notices.push(Notice::DirectoryEmpty);
        return;
    }
    let mut acted_rows: BTreeSet<&str> = BTreeSet::new();
    let mut casbin_remove = Vec::new();
    let mut actions = Vec::new();
    let mut links = Vec::new();
    let mut seen_userids = BTreeSet::new();
    for link in user_links {
        if link.state != LinkState::Present
            || present.contains(link.external_id.as_str())
            || !by_name.contains_key(link.casdoor_name.as_str())
            || !seen_userids.insert(link.external_id.as_str())
        {
            continue;
        }
        let name = link.casdoor_name.as_str();
        if let Some(row) = by_name.get(name)
            && !link.holds(row)
        {
            out.conflicts.push(Conflict::LinkedRowReplaced {
                userid: link.external_id.clone(),
                name: name.to_owned(),
            });
            continue;
        }
        let row = by_name
            .get(name)
            .filter(|_| !claimed_rows.contains(name) && acted_rows.insert(name));
        let (action, changes) = match (row, opts.leaver_policy) {
            (Some(row), LeaverPolicy::Forbid) if !row.is_forbidden => (
                LeftAction::Forbid,
                vec![FieldChange {
                    column: "is_forbidden".to_owned(),
                    old: FieldValue::Bool(false),
                    new: FieldValue::Bool(true),
                }],
            ),
            (Some(row), LeaverPolicy::Delete) if !row.is_deleted => {
                let mut changes = vec![
                    FieldChange {
                        column: "deleted_time".to_owned(),
                        old: FieldValue::Text(row.deleted_time.clone()),
                        new: FieldValue::Text(input.now.clone()),
                    },
                    FieldChange {
                        column: "is_deleted".to_owned(),
                        old: FieldValue::Bool(false),
                        new: FieldValue::Bool(true),
                    },
                ];
                let (groups, rules) = memberships.leave(&input.organization, row);
                changes.extend(groups.map(|new| FieldChange {
                    column: "groups".to_owned(),
                    old: FieldValue::Text(row.groups.clone().unwrap_or_default()),
                    new: FieldValue::Text(new),
                }));
                casbin_remove.extend(rules);
                changes.sort();
                (LeftAction::Delete, changes)
            }
            _ => (LeftAction::Keep, Vec::new()),
        };
        links.push(OwnershipLink {
            state: LinkState::Left,
            left_action: Some(action),
            row: link
                .row
                .clone()
                .or_else(|| by_name.get(name).map(|r| RowIdentity::of(r))),
            ..(*link).clone()
        });
        actions.push(LeaverAction {
            name: link.casdoor_name.clone(),
            userid: link.external_id.clone(),
            action,
            changes,
        });
    }
    let removals = actions.iter().filter(|a| !a.changes.is_empty()).count();
    let over_count = u64::try_from(removals).unwrap_or(u64::MAX) > opts.max_removals;
    let over_percent = u64::try_from(removals).unwrap_or(u64::MAX) > opts.min_removals_allowed
        && owned > 0
        && (removals as f64) * 100.0 / (owned as f64) > opts.max_removal_percent;
    if removals > 0 && (over_count || over_percent) && !opts.allow_removals {
        actions.sort();
        out.held = Some(Hold {
            syncer: input.syncer.clone(),
            leavers: actions,
            removals,
            owned,
            max_removals: opts.max_removals,
            max_removal_percent: opts.max_removal_percent,
            min_removals_allowed: opts.min_removals_allowed,
        });
        return;
    }
    out.leavers.extend(actions);
    out.link_writes.extend(links);
    out.casbin_remove.extend(casbin_remove);
}

/// The key value `row` holds after `user`'s update, when that update rewrites the key column
/// (`id` and `name` are never rewritten).
fn rewritten_key(row: &ExistingUser, user: &MappedUser, key_column: &str) -> Option<String> {
    if key_column == "id" {
        return None;
    }
    let new = user.fields.value(key_column)?;
    (row.current_ref(key_column) != new).then(|| new.to_value().canonical())
}

/// The form two names are compared in for collisions: Unicode NFKC with case folded (and
/// normalized again, as folding can undo NFKC), so that `ａｄｍｉｎ`, `ADMIN` and `admin` are one
/// name, as a case-insensitive collation or a person reading the name would take them.
pub(crate) fn fold(name: &str) -> String {
    let compatible: String = name.nfkc().collect();
    compatible.to_lowercase().nfkc().collect()
}

#[cfg(test)]
mod tests;
