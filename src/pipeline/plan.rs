//! The diff between the directory and the database: what one run would write.
//!
//! Pure and deterministic: every list of a [`Plan`] is sorted, so the same input always gives the
//! same plan, and applying a plan then planning again gives a plan without writes. Safety rules
//! live here, not in apply: an existing user's `name` is never rewritten, absent DingTalk fields
//! never clear a value, users the syncer does not own are never touched unless adoption is on,
//! and leavers are only acted on after a complete, non-empty fetch and within the removal limits.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use unicode_normalization::UnicodeNormalization as _;

use crate::config::LeaverPolicy;

use super::columns::{Columns, FieldValue};
use super::groups::{GroupInput, MembershipProblem, encode_groups, plan_groups, plan_membership};
use super::map::{MappedUser, NameSource, RecordError};
use super::model::{
    Adoption, AdoptionRisk, CasbinGrouping, Conflict, ExistingUser, FieldChange, ForeignClaim,
    Hold, LeaverAction, LeftAction, LinkKind, LinkState, NewUser, Notice, OwnershipLink, Plan,
    PlanInput, PlanOptions, Reappearance, RowIdentity, UserUpdate,
};

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

/// A DingTalk user and what it resolved to.
type Resolved<'a> = (&'a MappedUser, Target<'a>);

/// Computes the plan of one run. Takes the input by value: the mapped columns of new users move
/// into the plan instead of being copied, so a first import holds them once.
///
/// The passes, in order: matching (with adoption), collisions, groups, user writes (with
/// memberships), leavers (with the removal limits), stale links. What a pass builds is dropped
/// when it returns: a 100,000-user run would otherwise hold every index at once at the end.
pub fn plan(input: PlanInput) -> Plan {
    let mut out = Plan {
        record_errors: input.record_errors.clone(),
        ..Plan::default()
    };
    let existing = Existing::new(&input);
    let users = directory_users(&input, &mut out);
    let present: BTreeSet<&str> = users
        .iter()
        .map(|(_, u)| u.userid.as_str())
        .chain(input.record_errors.iter().filter_map(RecordError::userid))
        .collect();
    let mut resolved = resolve_users(&input, &existing, &users, &mut out);
    drop(users);
    drop_collisions(&existing.rows, &mut resolved, &mut out);

    let groups = plan_groups(&GroupInput {
        organization: &input.organization,
        root_display_name: &input.root_group_display_name,
        departments: &input.departments,
        directory_complete: input.directory_complete,
        existing_groups: &input.existing_groups,
        links: &input.links,
        foreign_claims: &input.foreign_claims,
        group_names_in_other_orgs: &input.group_names_in_other_orgs,
        organization_names: &input.organization_names,
        adopt_existing: input.options.adopt_existing,
        now: &input.now,
        scope: input.scope.as_ref(),
    });
    let memberships = Memberships::new(&input, &groups.managed);
    let (claimed_rows, new_user_columns) =
        plan_user_writes(&input.now, &existing, &resolved, &memberships, &mut out);
    let left = Leaving {
        input: &input,
        existing: &existing,
        present: &present,
        claimed_rows: &claimed_rows,
        memberships: &memberships,
    };
    plan_leavers(&input, &left, owned_after(&existing, &resolved), &mut out);
    leave_groups_of_deleted(&left, &mut out);
    drop((memberships, present, claimed_rows));
    out.link_deletes = stale_links(&input, &existing, &resolved);
    drop((resolved, existing));

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
    sort_plan(&mut out);
    out
}

/// The organization's user rows and this syncer's user links, indexed the ways planning looks
/// them up.
struct Existing<'a> {
    rows: Vec<&'a ExistingUser>,
    by_name: BTreeMap<&'a str, &'a ExistingUser>,
    /// This syncer's user links, sorted.
    user_links: Vec<&'a OwnershipLink>,
    /// The first of `user_links` per DingTalk userid.
    link_by_userid: BTreeMap<&'a str, &'a OwnershipLink>,
    /// The first of `user_links` per user name.
    owner_of_row: BTreeMap<&'a str, &'a OwnershipLink>,
}

impl<'a> Existing<'a> {
    fn new(input: &'a PlanInput) -> Self {
        let rows: Vec<&ExistingUser> = input
            .existing_users
            .iter()
            .filter(|u| u.owner == input.organization)
            .collect();
        let by_name = rows.iter().map(|u| (u.name.as_str(), *u)).collect();
        let (user_links, link_by_userid) = OwnershipLink::of_kind(&input.links, LinkKind::User);
        let mut owner_of_row = BTreeMap::new();
        for link in &user_links {
            owner_of_row
                .entry(link.casdoor_name.as_str())
                .or_insert(*link);
        }
        Self {
            rows,
            by_name,
            user_links,
            link_by_userid,
            owner_of_row,
        }
    }

    /// The row `link` was made for, while it exists under the link's name.
    fn held_row(&self, link: &OwnershipLink) -> Option<&'a ExistingUser> {
        self.by_name
            .get(link.casdoor_name.as_str())
            .copied()
            .filter(|row| link.holds(row))
    }
}

/// The directory's users, once per userid (a repeated userid is a record error).
fn directory_users<'a>(input: &'a PlanInput, out: &mut Plan) -> Vec<(usize, &'a MappedUser)> {
    let mut users = Vec::with_capacity(input.users.len());
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
    users
}

/// Rows by the key they hold after this run, sorted: the rows of one key are a range. Most keys
/// are borrowed from the rows; 100,000 users are not worth 100,000 copies.
struct RowsByKey<'a>(Vec<(Cow<'a, str>, &'a ExistingUser)>);

impl<'a> RowsByKey<'a> {
    /// Rows are matched on the key they hold after this run: a row reached through a link whose
    /// key column this run rewrites gives up its old key value (an e-mail address handed on to
    /// another person), which is then free for another DingTalk user now, as in the next run.
    fn new(
        existing: &Existing<'a>,
        users: &[(usize, &'a MappedUser)],
        unique_key: impl Fn(&MappedUser) -> bool,
        key_column: &str,
    ) -> Self {
        // The one DingTalk user whose link reaches each row (`None`: several do).
        let mut link_claims: BTreeMap<&str, Option<&MappedUser>> = BTreeMap::new();
        for &(_, u) in users.iter().filter(|(_, u)| unique_key(u)) {
            if let Some(link) = existing.link_by_userid.get(u.userid.as_str())
                && existing.held_row(link).is_some()
            {
                link_claims
                    .entry(link.casdoor_name.as_str())
                    .and_modify(|claim| *claim = None)
                    .or_insert(Some(u));
            }
        }
        let mut by_key = Vec::with_capacity(existing.rows.len());
        for row in &existing.rows {
            let rewritten = match link_claims.get(row.name.as_str()) {
                Some(Some(u)) => rewritten_key(row, u, key_column),
                _ => None,
            };
            let key = rewritten.map_or(Cow::Borrowed(row.key_value.as_str()), Cow::Owned);
            if !key.is_empty() {
                by_key.push((key, *row));
            }
        }
        drop(link_claims);
        by_key.sort_by(|a, b| a.0.cmp(&b.0));
        Self(by_key)
    }

    fn rows_with(&self, key: &str) -> &[(Cow<'a, str>, &'a ExistingUser)] {
        let start = self.0.partition_point(|(k, _)| k.as_ref() < key);
        let from_start = self.0.get(start..).unwrap_or_default();
        let len = from_start.partition_point(|(k, _)| k.as_ref() == key);
        from_start.get(..len).unwrap_or_default()
    }
}

/// Matching: resolves every DingTalk user to a row (through its link, else by its key), to a
/// creation, or to a conflict.
fn resolve_users<'a>(
    input: &PlanInput,
    existing: &Existing<'a>,
    users: &[(usize, &'a MappedUser)],
    out: &mut Plan,
) -> Vec<Resolved<'a>> {
    let mut key_count: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, u) in users {
        *key_count.entry(u.key.as_str()).or_default() += 1;
    }
    let unique_key = |u: &MappedUser| key_count.get(u.key.as_str()).copied().unwrap_or(0) <= 1;
    let key_column = input.key_column.as_str();
    let by_key = RowsByKey::new(existing, users, unique_key, key_column);
    let foreign_users = ForeignClaim::owners(&input.foreign_claims, LinkKind::User);
    let mut resolved = Vec::with_capacity(users.len());
    for &(index, u) in users {
        if !unique_key(u) {
            out.conflicts.push(Conflict::DuplicateKeyInDirectory {
                userid: u.userid.clone(),
                column: key_column.to_owned(),
            });
            continue;
        }
        if let Some(link) = existing.link_by_userid.get(u.userid.as_str()).copied() {
            if let Some(row) = existing.by_name.get(link.casdoor_name.as_str()).copied() {
                if link.holds(row) {
                    resolved.push((
                        u,
                        Target::Existing {
                            row,
                            adopt: false,
                            link: Some(link),
                        },
                    ));
                } else {
                    out.conflicts.push(Conflict::LinkedRowReplaced {
                        userid: u.userid.clone(),
                        name: row.name.clone(),
                    });
                }
                continue;
            }
            out.notices.push(Notice::LinkedUserMissing {
                userid: u.userid.clone(),
                name: link.casdoor_name.clone(),
            });
        }
        match by_key.rows_with(u.key.as_str()) {
            [] => resolved.push((u, Target::New { index })),
            [(_, row)] => match match_by_key(u, row, existing, &foreign_users, &input.options) {
                Ok(target) => resolved.push((u, target)),
                Err(conflict) => out.conflicts.push(conflict),
            },
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
    resolved
}

/// Adoption: whether the one row holding a DingTalk user's key is taken. This syncer's own row
/// for the same userid is; an unowned row is adopted when adoption is on and the row is safe to
/// hand over (or listed in `sync.adopt_only`); any other row is a conflict.
fn match_by_key<'a>(
    u: &MappedUser,
    row: &'a ExistingUser,
    existing: &Existing<'a>,
    foreign_users: &BTreeMap<&str, &str>,
    opts: &PlanOptions,
) -> Result<Target<'a>, Conflict> {
    let userid = || u.userid.clone();
    let name = || row.name.clone();
    if let Some(own) = existing.owner_of_row.get(row.name.as_str()).copied() {
        return if own.external_id != u.userid {
            Err(Conflict::OwnedForAnotherUserid {
                userid: userid(),
                name: name(),
                other_userid: own.external_id.clone(),
            })
        } else if own.holds(row) {
            Ok(Target::Existing {
                row,
                adopt: false,
                link: Some(own),
            })
        } else {
            Err(Conflict::LinkedRowReplaced {
                userid: userid(),
                name: name(),
            })
        };
    }
    if let Some(syncer) = foreign_users.get(row.name.as_str()) {
        return Err(Conflict::OwnedByAnotherSyncer {
            userid: userid(),
            name: name(),
            syncer: (*syncer).to_owned(),
        });
    }
    if !opts.adopt_existing {
        return Err(Conflict::NotOwned {
            userid: userid(),
            name: name(),
        });
    }
    if let Some(reason) = AdoptionRisk::of(row, &u.userid)
        && !opts.adopt_only.contains(&row.name)
    {
        return Err(Conflict::AdoptionRefused {
            userid: userid(),
            name: name(),
            reason,
        });
    }
    Ok(Target::Existing {
        row,
        adopt: true,
        link: None,
    })
}

/// Collisions: a row reached by two DingTalk users, or a new name wanted twice or already taken,
/// is a conflict for each of them. Names are compared folded ([`fold`]), as MySQL's default
/// collation compares them without case.
fn drop_collisions(rows: &[&ExistingUser], resolved: &mut Vec<Resolved<'_>>, out: &mut Plan) {
    let mut row_claims: BTreeMap<&str, usize> = BTreeMap::new();
    let mut new_names: BTreeMap<String, usize> = BTreeMap::new();
    for (u, target) in resolved.iter() {
        match target {
            Target::Existing { row, .. } => *row_claims.entry(row.name.as_str()).or_default() += 1,
            Target::New { .. } => *new_names.entry(fold(&u.name)).or_default() += 1,
        }
    }
    // Only new users need folding, so a run that creates nobody folds no name.
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
}

/// What memberships are planned from: the organization's casbin `g` rows as (subject, group)
/// pairs, sorted so that a subject's rows are a range (a set per subject cost a B-tree node per
/// user), and the groups this syncer manages.
struct Memberships<'a> {
    organization: &'a str,
    rules_by_subject: Vec<(&'a str, &'a str)>,
    managed: &'a BTreeSet<String>,
    /// Stale memberships are removed only after a complete fetch.
    remove_stale: bool,
}

impl<'a> Memberships<'a> {
    fn new(input: &'a PlanInput, managed: &'a BTreeSet<String>) -> Self {
        let mut rules_by_subject: Vec<(&str, &str)> = input
            .casbin_groupings
            .iter()
            .map(|rule| (rule.v0.as_str(), rule.v1.as_str()))
            .collect();
        rules_by_subject.sort_unstable();
        Self {
            organization: &input.organization,
            rules_by_subject,
            managed,
            remove_stale: input.directory_complete,
        }
    }

    /// The `v1` values of the casbin rows of `subject`.
    fn rules_of(&self, subject: &str) -> BTreeSet<&'a str> {
        let start = self.rules_by_subject.partition_point(|(s, _)| *s < subject);
        self.rules_by_subject
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|(s, _)| *s == subject)
            .map(|(_, group)| *group)
            .collect()
    }

    /// Memberships: the new `user.groups` of a present user (when it changes), its casbin rows
    /// to add and remove into `out`, or a conflict when its memberships are left alone.
    fn of_user(
        &self,
        user_name: &str,
        current: Option<&str>,
        u: &MappedUser,
        out: &mut Plan,
    ) -> Option<String> {
        let org = self.organization;
        let rules = self.rules_of(&format!("{org}/{user_name}"));
        let diff = plan_membership(
            org,
            user_name,
            current,
            &rules,
            &u.departments,
            self.managed,
            self.remove_stale,
        );
        match diff {
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
    }

    /// Takes a deleted user out of every managed group, as Casdoor's DeleteUser drops a user's
    /// memberships: the new `user.groups` (if it changes) and the `g` rows to delete. Manual
    /// memberships stay. A `user.groups` that is not a JSON list is left as it is (the user's
    /// memberships were reported while it was present); its managed `g` rows still go.
    fn leave(&self, row: &ExistingUser) -> (Option<String>, Vec<CasbinGrouping>) {
        let organization = self.organization;
        let subject = format!("{organization}/{}", row.name);
        let rules = self.rules_of(&subject);
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

/// User writes: for every resolved DingTalk user a new row or the writes to its row, and the
/// link that records it. Returns the rows claimed and, per new user, (position in
/// `out.creates`, position in [`PlanInput::users`]), for its columns to be moved in at the end.
fn plan_user_writes<'a>(
    now: &str,
    existing: &Existing<'_>,
    resolved: &[Resolved<'a>],
    memberships: &Memberships<'_>,
    out: &mut Plan,
) -> (BTreeSet<&'a str>, Vec<(usize, usize)>) {
    let mut claimed_rows = BTreeSet::new();
    let mut new_user_columns = Vec::new();
    for (u, target) in resolved {
        let link = match *target {
            Target::New { index } => {
                new_user_columns.push((out.creates.len(), index));
                plan_new_user(u, now, memberships, out)
            }
            Target::Existing { row, adopt, link } => {
                claimed_rows.insert(row.name.as_str());
                plan_existing_user(u, row, adopt, link, memberships, out)
            }
        };
        if existing.link_by_userid.get(u.userid.as_str()).copied() != Some(&link) {
            out.link_writes.push(link);
        }
    }
    (claimed_rows, new_user_columns)
}

/// The link a DingTalk user's row is kept by, once `casdoor_name` and `row` are filled in.
fn present_link(u: &MappedUser) -> OwnershipLink {
    OwnershipLink {
        kind: LinkKind::User,
        external_id: u.userid.clone(),
        casdoor_name: String::new(),
        content_hash: u.hash.clone(),
        state: LinkState::Present,
        left_action: None,
        row: None,
        adopted: false,
    }
}

/// A user to create (its mapped columns are moved in at the end), and its link.
fn plan_new_user(
    u: &MappedUser,
    now: &str,
    memberships: &Memberships<'_>,
    out: &mut Plan,
) -> OwnershipLink {
    let groups = memberships
        .of_user(&u.name, None, u, out)
        .unwrap_or_else(|| encode_groups(&[]));
    out.creates.push(NewUser {
        name: u.name.clone(),
        userid: u.userid.clone(),
        values: Columns::new(),
        hash: u.hash.clone(),
        dingtalk: u.userid.clone(),
        groups,
    });
    // The identity apply gives the new row: the mapped `id` (never rewritten later) and the
    // run's time as `created_time`.
    let identity = RowIdentity {
        id: u
            .fields
            .value("id")
            .map(|v| v.to_value().canonical())
            .unwrap_or_default(),
        created_time: now.to_owned(),
    };
    OwnershipLink {
        casdoor_name: u.name.clone(),
        row: Some(identity),
        ..present_link(u)
    }
}

/// The writes to a matched user's row (or a count of it as unchanged), and its link.
fn plan_existing_user(
    u: &MappedUser,
    row: &ExistingUser,
    adopt: bool,
    link: Option<&OwnershipLink>,
    memberships: &Memberships<'_>,
    out: &mut Plan,
) -> OwnershipLink {
    // An adopted row keeps the e-mail and phone it was found with: they recover its password,
    // and the person who set them may not be the DingTalk entry's.
    let adopted = adopt || link.is_some_and(|l| l.adopted);
    let mut changes = column_changes(u, row, adopted);
    if let Some(left) = link.filter(|l| l.state == LinkState::Left) {
        changes.extend(undo_leaver_action(u, row, left.left_action));
        out.reappeared.push(Reappearance {
            name: row.name.clone(),
            userid: u.userid.clone(),
            undone: left.left_action,
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
    let hash = (row.hash != u.hash || row.pre_hash != u.hash).then(|| u.hash.to_string());
    let dingtalk = row.dingtalk.is_empty().then(|| u.userid.clone());
    let groups = memberships.of_user(&row.name, row.groups.as_deref(), u, out);
    if changes.is_empty() && hash.is_none() && dingtalk.is_none() && groups.is_none() {
        out.unchanged += 1;
    } else {
        out.updates.push(UserUpdate {
            name: row.name.clone(),
            userid: u.userid.clone(),
            changes,
            hash,
            dingtalk,
            groups,
        });
    }
    if adopt {
        out.adopted.push(Adoption {
            name: row.name.clone(),
            userid: u.userid.clone(),
        });
    }
    OwnershipLink {
        casdoor_name: row.name.clone(),
        row: Some(RowIdentity::of(row)),
        adopted,
        ..present_link(u)
    }
}

/// The mapped columns whose value differs from the row's (never `id`; not `email` and `phone`
/// of an adopted row). An absent DingTalk value changes nothing.
fn column_changes(u: &MappedUser, row: &ExistingUser, adopted: bool) -> Vec<FieldChange> {
    u.fields
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
        .collect()
}

/// The writes that undo what this syncer did to a user when it left, now that it is back (a
/// mapped `is_forbidden` decides that column itself).
fn undo_leaver_action(
    u: &MappedUser,
    row: &ExistingUser,
    undone: Option<LeftAction>,
) -> Vec<FieldChange> {
    let mapped_forbidden = matches!(u.fields.get("is_forbidden"), Some(Some(_)));
    match undone {
        Some(LeftAction::Forbid) if !mapped_forbidden && row.is_forbidden => {
            vec![flag_change("is_forbidden", false)]
        }
        Some(LeftAction::Delete) if row.is_deleted => vec![
            flag_change("is_deleted", false),
            FieldChange {
                column: "deleted_time".to_owned(),
                old: FieldValue::Text(row.deleted_time.clone()),
                new: FieldValue::Text(String::new()),
            },
        ],
        _ => Vec::new(),
    }
}

/// A bool column turning to `new` from its opposite.
fn flag_change(column: &str, new: bool) -> FieldChange {
    FieldChange {
        column: column.to_owned(),
        old: FieldValue::Bool(!new),
        new: FieldValue::Bool(new),
    }
}

/// The owned user count the removal percentage is taken of: the users the syncer owns once this
/// run's creations, adoptions and returns are done, so a held run and its re-run judge the same.
fn owned_after(existing: &Existing<'_>, resolved: &[Resolved<'_>]) -> usize {
    let mut owned: Vec<&str> = existing
        .user_links
        .iter()
        .filter(|l| l.state == LinkState::Present && existing.held_row(l).is_some())
        .map(|l| l.external_id.as_str())
        .chain(resolved.iter().map(|(u, _)| u.userid.as_str()))
        .collect();
    owned.sort_unstable();
    owned.dedup();
    owned.len()
}

/// Stale links: a link whose user row is gone (deleted in Casdoor) holds nothing. It is deleted
/// unless this plan points it at a row again, so a stale link can never capture a later row.
/// A targeted run only cleans up the links of its targets.
fn stale_links(
    input: &PlanInput,
    existing: &Existing<'_>,
    resolved: &[Resolved<'_>],
) -> Vec<OwnershipLink> {
    let mut resolved_userids: Vec<&str> = resolved.iter().map(|(u, _)| u.userid.as_str()).collect();
    resolved_userids.sort_unstable();
    existing
        .user_links
        .iter()
        .filter(|l| {
            input.covers_user(&l.external_id)
                && !existing.by_name.contains_key(l.casdoor_name.as_str())
                && resolved_userids
                    .binary_search(&l.external_id.as_str())
                    .is_err()
        })
        .map(|l| (*l).clone())
        .collect()
}

/// Sorts every list of the plan (and drops repeats where a write must happen once), so the same
/// input always gives the same plan.
fn sort_plan(out: &mut Plan) {
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
    for links in [&mut out.link_writes, &mut out.link_deletes] {
        links.sort();
        links.dedup_by(|a, b| a.kind == b.kind && a.external_id == b.external_id);
    }
    out.conflicts.sort();
    out.notices.sort();
    out.notices.dedup();
    out.record_errors.sort();
}

/// What the leaver passes read: the input, who is present, which rows present users claimed,
/// and the memberships.
struct Leaving<'a> {
    /// Its scope decides whose links the leaver passes look at: a targeted run never treats a
    /// user outside its targets as gone.
    input: &'a PlanInput,
    existing: &'a Existing<'a>,
    /// DingTalk userids in the directory (mapped or not).
    present: &'a BTreeSet<&'a str>,
    /// Rows resolved to a present user: a leaver's action never writes to them.
    claimed_rows: &'a BTreeSet<&'a str>,
    memberships: &'a Memberships<'a>,
}

/// Users this syncer deleted as leavers before deleted users left their groups (older
/// syncerd versions) still hold managed memberships: they leave them now, once.
fn leave_groups_of_deleted(left: &Leaving<'_>, out: &mut Plan) {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for link in &left.existing.user_links {
        let name = link.casdoor_name.as_str();
        if link.state != LinkState::Left
            || link.left_action != Some(LeftAction::Delete)
            || !left.input.covers_user(&link.external_id)
            || left.present.contains(link.external_id.as_str())
            || left.claimed_rows.contains(name)
            || done.contains(name)
        {
            continue;
        }
        let Some(row) = left.existing.by_name.get(name).filter(|r| r.is_deleted) else {
            continue;
        };
        let (groups, rules) = left.memberships.leave(row);
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
                    leaver.changes.push(groups_change(row, new));
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

/// `user.groups` of `row` changing to `new`.
fn groups_change(row: &ExistingUser, new: String) -> FieldChange {
    FieldChange {
        column: "groups".to_owned(),
        old: FieldValue::Text(row.groups.clone().unwrap_or_default()),
        new: FieldValue::Text(new),
    }
}

/// Leavers: owned users (link present) missing from a complete, non-empty directory get the
/// leaver policy's action, unless the removals exceed the limits ([`removal_hold`]). In a
/// targeted run the leavers are the targets DingTalk answered "not found" for (an empty answer
/// is then normal: one user who left); the limits still count against every user the syncer
/// owns, so a burst of leavers is held as a full run would hold it.
fn plan_leavers(input: &PlanInput, left: &Leaving<'_>, owned: usize, out: &mut Plan) {
    if !input.directory_complete {
        out.notices.push(Notice::DirectoryIncomplete);
        return;
    }
    if input.scope.is_none() && input.users.is_empty() && input.record_errors.is_empty() {
        out.notices.push(Notice::DirectoryEmpty);
        return;
    }
    let by_name = &left.existing.by_name;
    let mut acted_rows: BTreeSet<&str> = BTreeSet::new();
    let mut casbin_remove = Vec::new();
    let mut actions = Vec::new();
    let mut links = Vec::new();
    let mut seen_userids = BTreeSet::new();
    for link in &left.existing.user_links {
        let name = link.casdoor_name.as_str();
        let Some(found) = by_name.get(name).copied() else {
            continue;
        };
        if link.state != LinkState::Present
            || !input.covers_user(&link.external_id)
            || left.present.contains(link.external_id.as_str())
            || !seen_userids.insert(link.external_id.as_str())
        {
            continue;
        }
        if !link.holds(found) {
            out.conflicts.push(Conflict::LinkedRowReplaced {
                userid: link.external_id.clone(),
                name: name.to_owned(),
            });
            continue;
        }
        let row =
            Some(found).filter(|_| !left.claimed_rows.contains(name) && acted_rows.insert(name));
        let (action, changes) = match row {
            Some(row) => leaver_changes(row, input, left.memberships, &mut casbin_remove),
            None => (LeftAction::Keep, Vec::new()),
        };
        links.push(OwnershipLink {
            state: LinkState::Left,
            left_action: Some(action),
            row: link.row.clone().or_else(|| Some(RowIdentity::of(found))),
            ..(*link).clone()
        });
        actions.push(LeaverAction {
            name: link.casdoor_name.clone(),
            userid: link.external_id.clone(),
            action,
            changes,
        });
    }
    if let Some(hold) = removal_hold(input, &mut actions, owned) {
        out.held = Some(hold);
        return;
    }
    out.leavers.extend(actions);
    out.link_writes.extend(links);
    out.casbin_remove.extend(casbin_remove);
}

/// What the leaver policy does to a leaver's row: forbid it, or soft-delete it and take it out
/// of the managed groups (its casbin rows go to `casbin_remove`). `Keep` when the row already is
/// as the policy wants it.
fn leaver_changes(
    row: &ExistingUser,
    input: &PlanInput,
    memberships: &Memberships<'_>,
    casbin_remove: &mut Vec<CasbinGrouping>,
) -> (LeftAction, Vec<FieldChange>) {
    match input.options.leaver_policy {
        LeaverPolicy::Forbid if !row.is_forbidden => {
            (LeftAction::Forbid, vec![flag_change("is_forbidden", true)])
        }
        LeaverPolicy::Delete if !row.is_deleted => {
            let mut changes = vec![
                FieldChange {
                    column: "deleted_time".to_owned(),
                    old: FieldValue::Text(row.deleted_time.clone()),
                    new: FieldValue::Text(input.now.clone()),
                },
                flag_change("is_deleted", true),
            ];
            let (groups, rules) = memberships.leave(row);
            changes.extend(groups.map(|new| groups_change(row, new)));
            casbin_remove.extend(rules);
            changes.sort();
            (LeftAction::Delete, changes)
        }
        _ => (LeftAction::Keep, Vec::new()),
    }
}

/// Removal limits: the hold that replaces this run's leaver actions when the removals among them
/// exceed `sync.max_removals`, or `sync.max_removal_percent` of the `owned` users beyond
/// `sync.min_removals_allowed`, and `--allow-removals` was not given.
fn removal_hold(input: &PlanInput, actions: &mut Vec<LeaverAction>, owned: usize) -> Option<Hold> {
    let opts = &input.options;
    let removals = actions.iter().filter(|a| !a.changes.is_empty()).count();
    // A targeted run counts what the event runs since the last full run removed as well.
    let counted = u64::try_from(removals)
        .unwrap_or(u64::MAX)
        .saturating_add(opts.earlier_removals);
    let over_count = counted > opts.max_removals;
    let over_percent = counted > opts.min_removals_allowed
        && owned > 0
        && (counted as f64) * 100.0 / (owned as f64) > opts.max_removal_percent;
    if removals == 0 || !(over_count || over_percent) || opts.allow_removals {
        return None;
    }
    let mut leavers = std::mem::take(actions);
    leavers.sort();
    Some(Hold {
        syncer: input.syncer.clone(),
        leavers,
        removals,
        owned,
        max_removals: opts.max_removals,
        max_removal_percent: opts.max_removal_percent,
        min_removals_allowed: opts.min_removals_allowed,
        earlier_removals: opts.earlier_removals,
    })
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
