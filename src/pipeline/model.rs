//! The values planning speaks in: what a plan is computed from ([`PlanInput`]), what it decides
//! ([`Plan`]) and what it reports ([`Conflict`], [`Notice`], [`Hold`]).
//!
//! Plain data, shared by [`super::plan`] and [`super::groups`] (which compute it) and by the
//! stages that fill a [`PlanInput`] from the database and carry a [`Plan`] out. No I/O here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::config::{LeaverPolicy, SyncSettings};
use crate::dingtalk::Targets;
use crate::dingtalk::types::Department;

use super::columns::{Columns, FieldRef, FieldValue, zero_of};
use super::hash::ContentHash;
use super::map::{MappedUser, RecordError};

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
    pub(crate) fn holds(&self, row: &ExistingUser) -> bool {
        self.row
            .as_ref()
            .is_none_or(|r| r.id == row.id && r.created_time == row.created_time)
    }

    /// The links of one kind, sorted, and the first of them per DingTalk id: what planning
    /// follows from a DingTalk object to its row.
    pub(crate) fn of_kind(links: &[Self], kind: LinkKind) -> (Vec<&Self>, BTreeMap<&str, &Self>) {
        let mut of_kind: Vec<&Self> = links.iter().filter(|l| l.kind == kind).collect();
        of_kind.sort();
        let mut by_external_id = BTreeMap::new();
        for link in &of_kind {
            by_external_id
                .entry(link.external_id.as_str())
                .or_insert(*link);
        }
        (of_kind, by_external_id)
    }
}

/// A Casdoor row owned by another syncer (from the other syncers' links of this organization).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForeignClaim {
    pub kind: LinkKind,
    pub casdoor_name: String,
    pub syncer: String,
}

impl ForeignClaim {
    /// The other syncer owning each row name of one kind (the first by name when several claim
    /// it, so conflicts name the same one every run).
    pub(crate) fn owners(claims: &[Self], kind: LinkKind) -> BTreeMap<&str, &str> {
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        for claim in claims.iter().filter(|c| c.kind == kind) {
            let syncer = owners
                .entry(claim.casdoor_name.as_str())
                .or_insert(&claim.syncer);
            *syncer = (*syncer).min(claim.syncer.as_str());
        }
        owners
    }
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
    /// Removals that event runs made since the syncer's last full run: a targeted run counts
    /// them with its own, so a mass leave that arrives as many small bursts is held as the one
    /// full run that saw it whole would be. 0 in a full run.
    pub earlier_removals: u64,
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
            earlier_removals: 0,
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
    /// `None`: `users` and `departments` are the whole directory. `Some`: a targeted run (an
    /// event's hint) looked only these up; `users` and `departments` hold those found, a target
    /// not found is gone, and every user or department outside the scope is left alone.
    pub scope: Option<Targets>,
}

impl PlanInput {
    /// Whether this run speaks for the DingTalk user `userid`: every user in a full run, only
    /// the targets in a targeted one.
    pub(crate) fn covers_user(&self, userid: &str) -> bool {
        self.scope.as_ref().is_none_or(|s| s.has_user(userid))
    }
}

/// One column changing from `old` to `new`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldChange {
    pub column: String,
    pub old: FieldValue,
    pub new: FieldValue,
}

/// A user to insert. Apply writes these columns plus Casdoor's insert defaults (`owner` =
/// organization, `type = 'normal-user'`, `register_type = 'Add Users'`, `updated_time =
/// created_time`, `properties = '{}'`, `address = '[]'`, every other column at its zero
/// value), `hash = pre_hash = hash`, and what is the same for every user of the run
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
    /// Removals event runs made since the last full run, counted with these.
    pub earlier_removals: u64,
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let earlier = if self.earlier_removals > 0 {
            format!(
                ", counted with {} made by event runs since the last full run",
                self.earlier_removals
            )
        } else {
            String::new()
        };
        write!(
            f,
            "held {} leaver removals of {} owned users{earlier} (limits: sync.max_removals = {}, sync.max_removal_percent = {}% \
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
    pub(crate) fn of(row: &ExistingUser, userid: &str) -> Option<Self> {
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

/// A group of the organization as stored (NULL read as `''`/false).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExistingGroup {
    pub owner: String,
    pub name: String,
    pub display_name: String,
    pub parent_id: String,
    pub is_top_group: bool,
    pub group_type: String,
}

/// A casbin `g` row: `v0 = "<org>/<user>"`, `v1 = "group:<org>/<group>"` (`ptype = 'g'`,
/// `v2..v5 = ''`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CasbinGrouping {
    pub v0: String,
    pub v1: String,
}

/// A group to insert with `type = 'department'`, `is_enabled = 1`, `created_time = updated_time`
/// and every other column at its zero value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupCreate {
    pub dept_id: i64,
    pub name: String,
    pub display_name: String,
    pub parent_id: String,
    pub is_top_group: bool,
    pub created_time: String,
}

/// Columns of an owned (or just adopted) group to change: `display_name`, `parent_id`,
/// `is_top_group`. `changes` is empty for an adoption that needs no change.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupUpdate {
    pub dept_id: i64,
    pub name: String,
    pub changes: Vec<FieldChange>,
    pub adopted: bool,
}
