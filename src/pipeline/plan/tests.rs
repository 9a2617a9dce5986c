use super::*;
use crate::config::SyncSettings;
use crate::dingtalk::types::{Department, DirectoryUser, User};
use crate::pipeline::columns::FieldRef;
use crate::pipeline::groups::DEPARTMENT_GROUP_TYPE;
use crate::pipeline::hash::ContentHash;
use crate::pipeline::map::{Mapping, map_directory, map_user};
use crate::pipeline::model::{ExistingGroup, ForeignClaim, PlanOptions};
use crate::pipeline::table_columns::{ColumnKind, WRITABLE_USER_COLUMNS, column_spec};
use crate::proptest_support::config;
use proptest::prelude::*;
use proptest::sample::Index;

const ORG: &str = "acme";
const NOW: &str = "2026-11-25T10:00:00+08:00";

fn profile(userid: &str) -> User {
    User {
        userid: userid.into(),
        unionid: Some(format!("union-{userid}")),
        name: Some(format!("Name {userid}")),
        email: Some(format!("{userid}@example.com")),
        mobile: Some("13800000000".into()),
        title: Some("Engineer".into()),
        job_number: Some(format!("J{userid}")),
        active: Some(true),
        dept_id_list: Some(vec![7]),
        ..User::default()
    }
}

fn mapped_with(p: User, mapping: &Mapping) -> MappedUser {
    map_user(
        &DirectoryUser {
            profile: p,
            seen_in: vec![],
        },
        mapping,
    )
    .unwrap()
}

fn mapped(p: User) -> MappedUser {
    mapped_with(p, &Mapping::default_mapping("").unwrap())
}

fn options() -> PlanOptions {
    PlanOptions {
        leaver_policy: LeaverPolicy::Forbid,
        max_removals: 100,
        max_removal_percent: 100.0,
        allow_removals: false,
        adopt_existing: false,
        adopt_only: BTreeSet::new(),
        min_removals_allowed: 0,
        earlier_removals: 0,
    }
}

fn dept(id: i64, name: Option<&str>, parent: Option<i64>) -> Department {
    Department {
        dept_id: id,
        name: name.map(str::to_owned),
        parent_id: parent,
    }
}

fn input(users: Vec<MappedUser>) -> PlanInput {
    PlanInput {
        organization: ORG.into(),
        root_group_display_name: "Acme".into(),
        syncer: "syncer_dt".into(),
        key_column: "id".into(),
        users,
        record_errors: vec![],
        departments: vec![dept(1, None, None), dept(7, Some("R&D"), Some(1))],
        directory_complete: true,
        existing_users: vec![],
        links: vec![],
        foreign_claims: vec![],
        existing_groups: vec![],
        group_names_in_other_orgs: BTreeSet::new(),
        organization_names: BTreeSet::new(),
        casbin_groupings: vec![],
        options: options(),
        now: NOW.into(),
        scope: None,
    }
}

fn row_mut<'a>(state: &'a mut PlanInput, name: &str) -> &'a mut ExistingUser {
    let org = state.organization.clone();
    state
        .existing_users
        .iter_mut()
        .find(|u| u.owner == org && u.name == name)
        .unwrap_or_else(|| panic!("no row {name:?}"))
}

fn row<'a>(state: &'a PlanInput, name: &str) -> &'a ExistingUser {
    state
        .existing_users
        .iter()
        .find(|u| u.owner == state.organization && u.name == name)
        .unwrap()
}

fn apply_change(row: &mut ExistingUser, key_column: &str, change: &FieldChange) {
    match (change.column.as_str(), &change.new) {
        ("is_forbidden", FieldValue::Bool(b)) => row.is_forbidden = *b,
        ("is_deleted", FieldValue::Bool(b)) => row.is_deleted = *b,
        ("deleted_time", FieldValue::Text(t)) => row.deleted_time = t.clone(),
        ("groups", FieldValue::Text(t)) => row.groups = Some(t.clone()),
        (column, value) => {
            if column == key_column {
                row.key_value = value.canonical();
            }
            let column = column_spec(column).map_or("unknown", |s| s.column);
            row.values.set(column, Some(value.clone()));
        }
    }
}

/// What apply does to the database, on the plan's input state.
fn apply_to_state(state: &PlanInput, plan: &Plan) -> PlanInput {
    let mut next = state.clone();
    let key_column = state.key_column.clone();
    for c in &plan.creates {
        let key_value = if key_column == "name" {
            c.name.clone()
        } else {
            c.values
                .value(key_column.as_str())
                .map(|v| v.to_value().canonical())
                .unwrap_or_default()
        };
        next.existing_users.push(ExistingUser {
            owner: state.organization.clone(),
            name: c.name.clone(),
            key_value,
            values: c.values.clone(),
            hash: c.hash.clone(),
            pre_hash: c.hash.clone(),
            is_forbidden: c.values.value("is_forbidden") == Some(FieldRef::Bool(true)),
            is_deleted: false,
            deleted_time: String::new(),
            groups: Some(c.groups.clone()),
            dingtalk: c.dingtalk.clone(),
            id: c
                .values
                .value("id")
                .map(|v| v.to_value().canonical())
                .unwrap_or_default(),
            created_time: state.now.clone(),
            is_admin: false,
            has_password: false,
        });
    }
    for u in &plan.updates {
        let row = row_mut(&mut next, &u.name);
        for change in &u.changes {
            apply_change(row, &key_column, change);
        }
        if let Some(hash) = &u.hash {
            row.hash = hash.as_str().into();
            row.pre_hash = hash.as_str().into();
        }
        if let Some(d) = &u.dingtalk {
            row.dingtalk = d.clone();
        }
        if let Some(g) = &u.groups {
            row.groups = Some(g.clone());
        }
    }
    for l in plan.leavers.iter().filter(|l| !l.changes.is_empty()) {
        let row = row_mut(&mut next, &l.name);
        for change in &l.changes {
            apply_change(row, &key_column, change);
        }
    }
    for g in &plan.group_creates {
        next.existing_groups.push(ExistingGroup {
            owner: state.organization.clone(),
            name: g.name.clone(),
            display_name: g.display_name.clone(),
            parent_id: g.parent_id.clone(),
            is_top_group: g.is_top_group,
            group_type: DEPARTMENT_GROUP_TYPE.into(),
        });
    }
    for g in &plan.group_updates {
        let org = state.organization.clone();
        let group = next
            .existing_groups
            .iter_mut()
            .find(|e| e.owner == org && e.name == g.name)
            .unwrap();
        for change in &g.changes {
            match (change.column.as_str(), &change.new) {
                ("display_name", FieldValue::Text(t)) => group.display_name = t.clone(),
                ("parent_id", FieldValue::Text(t)) => group.parent_id = t.clone(),
                ("is_top_group", FieldValue::Bool(b)) => group.is_top_group = *b,
                other => panic!("unexpected group change {other:?}"),
            }
        }
    }
    next.casbin_groupings
        .retain(|r| !plan.casbin_remove.contains(r));
    next.casbin_groupings
        .extend(plan.casbin_add.iter().cloned());
    next.links.retain(|l| {
        !plan
            .link_deletes
            .iter()
            .any(|d| d.kind == l.kind && d.external_id == l.external_id)
    });
    for w in &plan.link_writes {
        match next
            .links
            .iter_mut()
            .find(|l| l.kind == w.kind && l.external_id == w.external_id)
        {
            Some(l) => *l = w.clone(),
            None => next.links.push(w.clone()),
        }
    }
    next
}

/// The state after one run applied.
fn settle(state: &PlanInput) -> PlanInput {
    apply_to_state(state, &plan(state.clone()))
}

fn link_of<'a>(state: &'a PlanInput, userid: &str) -> &'a OwnershipLink {
    state
        .links
        .iter()
        .find(|l| l.kind == LinkKind::User && l.external_id == userid)
        .unwrap()
}

fn change(column: &str, old: FieldValue, new: FieldValue) -> FieldChange {
    FieldChange {
        column: column.into(),
        old,
        new,
    }
}

fn text(s: &str) -> FieldValue {
    FieldValue::Text(s.into())
}

#[test]
fn new_users_get_every_mapped_column_the_hash_and_their_memberships() {
    let p = User {
        email: None,
        active: None,
        ..profile("u1")
    };
    let user = mapped(p);
    let plan = plan(input(vec![user.clone()]));
    assert_eq!(plan.creates.len(), 1);
    let c = &plan.creates[0];
    assert_eq!(c.name, "Ju1");
    assert_eq!(c.values.value("id").unwrap(), text("u1"));
    assert_eq!(c.values.value("display_name").unwrap(), text("Name u1"));
    // Absent in DingTalk: the column's zero value on insert.
    assert_eq!(c.values.value("email").unwrap(), text(""));
    assert_eq!(
        c.values.value("is_forbidden").unwrap(),
        FieldValue::Bool(false)
    );
    assert_eq!(c.values.get("name"), None);
    assert_eq!(c.hash, user.hash);
    assert_eq!(c.dingtalk, "u1");
    assert_eq!(c.groups, r#"["acme/7"]"#);
    assert_eq!(
        plan.casbin_add,
        [CasbinGrouping {
            v0: "acme/Ju1".into(),
            v1: "group:acme/7".into()
        }]
    );
    assert_eq!(
        plan.link_writes
            .iter()
            .filter(|l| l.kind == LinkKind::User)
            .collect::<Vec<_>>(),
        [&OwnershipLink {
            kind: LinkKind::User,
            external_id: "u1".into(),
            casdoor_name: "Ju1".into(),
            content_hash: user.hash.clone(),
            state: LinkState::Present,
            left_action: None,
            row: Some(RowIdentity {
                id: "u1".into(),
                created_time: NOW.into(),
            }),
            adopted: false,
        }]
    );
}

#[test]
fn unchanged_users_produce_no_write() {
    let state = settle(&input(vec![mapped(profile("u1")), mapped(profile("u2"))]));
    let again = plan(state.clone());
    assert!(!again.has_writes(), "{again:#?}");
    assert_eq!(again.unchanged, 2);
    assert_eq!(again.summary().unchanged, 2);
}

#[test]
fn only_differing_mapped_columns_are_written_with_the_new_hash() {
    let state = settle(&input(vec![mapped(profile("u1"))]));
    let moved = mapped(User {
        title: Some("Manager".into()),
        ..profile("u1")
    });
    let mut next = state.clone();
    next.users = vec![moved.clone()];
    let plan = plan(next.clone());
    assert_eq!(plan.updates.len(), 1);
    let u = &plan.updates[0];
    assert_eq!(
        u.changes,
        [change("title", text("Engineer"), text("Manager"))]
    );
    assert_eq!(u.hash, Some(moved.hash.to_string()));
    assert_eq!(u.groups, None);
    assert_eq!(u.dingtalk, None);
    assert_eq!(
        link_of(&apply_to_state(&next, &plan), "u1").content_hash,
        moved.hash
    );
}

#[test]
fn absent_fields_never_clear_existing_values() {
    let state = settle(&input(vec![mapped(profile("u1"))]));
    let mut next = state.clone();
    next.users = vec![mapped(User {
        email: None,
        mobile: None,
        active: None,
        ..profile("u1")
    })];
    let plan = plan(next.clone());
    let u = &plan.updates[0];
    assert!(u.changes.is_empty(), "{:?}", u.changes);
    // Only the hash moves (absent fields hash as '').
    assert!(u.hash.is_some());
    assert_eq!(plan.summary().hash_only, 1);
}

#[test]
fn an_empty_value_is_written_because_it_is_present() {
    let state = settle(&input(vec![mapped(profile("u1"))]));
    let mut next = state.clone();
    next.users = vec![mapped(User {
        email: Some(String::new()),
        ..profile("u1")
    })];
    let plan = plan(next.clone());
    assert_eq!(
        plan.updates[0].changes,
        [change("email", text("u1@example.com"), text(""))]
    );
}

#[test]
fn only_the_hashes_are_written_when_no_column_differs() {
    let mut state = settle(&input(vec![mapped(profile("u1"))]));
    // A local edit elsewhere reset Casdoor's hash, as Casdoor does.
    row_mut(&mut state, "Ju1").hash = ContentHash::Empty;
    let plan = plan(state.clone());
    assert_eq!(plan.updates.len(), 1);
    assert!(plan.updates[0].changes.is_empty());
    assert_eq!(plan.updates[0].hash, Some(state.users[0].hash.to_string()));
    let mut state = settle(&input(vec![mapped(profile("u1"))]));
    row_mut(&mut state, "Ju1").pre_hash = "stale".into();
    assert!(plan_has_only_hash_update(&state));
}

fn plan_has_only_hash_update(state: &PlanInput) -> bool {
    let p = plan(state.clone());
    p.updates.len() == 1 && p.updates[0].changes.is_empty() && p.updates[0].hash.is_some()
}

#[test]
fn locally_edited_mapped_columns_are_put_back_even_with_equal_hashes() {
    let mut state = settle(&input(vec![mapped(profile("u1"))]));
    row_mut(&mut state, "Ju1")
        .values
        .set("title", Some(text("Hacker")));
    let plan = plan(state.clone());
    assert_eq!(
        plan.updates[0].changes,
        [change("title", text("Hacker"), text("Engineer"))]
    );
    assert_eq!(plan.updates[0].hash, None);
}

#[test]
fn an_existing_users_name_is_never_rewritten() {
    let state = settle(&input(vec![mapped(profile("u1"))]));
    let mut next = state.clone();
    next.users = vec![mapped(User {
        job_number: Some("NEW-7".into()),
        ..profile("u1")
    })];
    let plan = plan(next.clone());
    assert!(plan.creates.is_empty());
    assert!(
        plan.updates
            .iter()
            .all(|u| u.name == "Ju1" && u.changes.iter().all(|c| c.column != "name"))
    );
    assert_eq!(
        plan.notices,
        [Notice::NameNotRewritten {
            userid: "u1".into(),
            name: "Ju1".into(),
            mapped_name: "NEW-7".into()
        }]
    );
}

#[test]
fn a_name_collision_with_another_id_is_a_conflict_never_an_overwrite() {
    let mut state = input(vec![mapped(profile("u1"))]);
    state.existing_users.push(ExistingUser {
        owner: ORG.into(),
        name: "Ju1".into(),
        key_value: "some-oauth-uuid".into(),
        ..ExistingUser::default()
    });
    let plan = plan(state.clone());
    assert!(plan.creates.is_empty() && plan.updates.is_empty());
    assert_eq!(
        plan.conflicts,
        [Conflict::NameTaken {
            userid: "u1".into(),
            name: "Ju1".into()
        }]
    );
    assert!(plan.link_writes.iter().all(|l| l.kind == LinkKind::Group));
}

#[test]
fn name_collisions_ignore_case_as_mysql_does() {
    let mut state = input(vec![mapped(profile("u1"))]);
    state.existing_users.push(ExistingUser {
        owner: ORG.into(),
        name: "JU1".into(),
        key_value: "other".into(),
        ..ExistingUser::default()
    });
    assert!(matches!(
        plan(state.clone()).conflicts[..],
        [Conflict::NameTaken { .. }]
    ));
}

#[test]
fn two_new_users_wanting_the_same_name_are_both_conflicts() {
    let a = mapped(User {
        job_number: Some("J1".into()),
        ..profile("u1")
    });
    let b = mapped(User {
        job_number: Some("j1".into()),
        ..profile("u2")
    });
    let plan = plan(input(vec![a, b]));
    assert!(plan.creates.is_empty());
    assert_eq!(plan.conflicts.len(), 2);
    assert!(
        plan.conflicts
            .iter()
            .all(|c| matches!(c, Conflict::SameNameInDirectory { .. }))
    );
}

fn unowned_row(name: &str, key: &str) -> ExistingUser {
    ExistingUser {
        owner: ORG.into(),
        name: name.into(),
        key_value: key.into(),
        values: [("title", text("Old"))].into(),
        ..ExistingUser::default()
    }
}

#[test]
fn unowned_matching_users_are_adopted_only_when_allowed() {
    let mut state = input(vec![mapped(profile("u1"))]);
    state.existing_users.push(unowned_row("legacy-u1", "u1"));
    let refused = plan(state.clone());
    assert_eq!(
        refused.conflicts,
        [Conflict::NotOwned {
            userid: "u1".into(),
            name: "legacy-u1".into()
        }]
    );
    assert!(refused.updates.is_empty() && refused.creates.is_empty());

    state.options.adopt_existing = true;
    let adopted = plan(state.clone());
    assert_eq!(
        adopted.adopted,
        [Adoption {
            name: "legacy-u1".into(),
            userid: "u1".into()
        }]
    );
    let u = &adopted.updates[0];
    assert_eq!(u.name, "legacy-u1");
    assert!(
        u.changes
            .contains(&change("title", text("Old"), text("Engineer")))
    );
    assert_eq!(u.dingtalk.as_deref(), Some("u1"));
    assert!(adopted.link_writes.iter().any(|l| l.external_id == "u1"
        && l.casdoor_name == "legacy-u1"
        && l.state == LinkState::Present));
    let next = apply_to_state(&state, &adopted);
    assert!(!plan(next.clone()).has_writes());
}

#[test]
fn users_owned_by_another_syncer_are_never_touched() {
    let mut state = input(vec![mapped(profile("u1"))]);
    state.options.adopt_existing = true;
    state.existing_users.push(unowned_row("legacy-u1", "u1"));
    state.foreign_claims.push(ForeignClaim {
        kind: LinkKind::User,
        casdoor_name: "legacy-u1".into(),
        syncer: "syncer_other".into(),
    });
    let plan = plan(state.clone());
    assert!(plan.updates.is_empty() && plan.creates.is_empty());
    assert!(matches!(
        &plan.conflicts[..],
        [Conflict::OwnedByAnotherSyncer { syncer, .. }] if syncer == "syncer_other"
    ));
}

#[test]
fn unmatched_unowned_users_are_never_touched() {
    let mut state = input(vec![mapped(profile("u1"))]);
    state.options.adopt_existing = true;
    state.existing_users.push(unowned_row("admin", "admin-id"));
    state.casbin_groupings.push(CasbinGrouping {
        v0: "acme/admin".into(),
        v1: "group:acme/7".into(),
    });
    let plan = plan(state.clone());
    assert!(plan.updates.iter().all(|u| u.name != "admin"));
    assert!(plan.leavers.is_empty());
    assert!(plan.casbin_remove.is_empty());
}

#[test]
fn several_rows_sharing_the_key_are_a_conflict() {
    let mut state = input(vec![mapped(profile("u1"))]);
    state.options.adopt_existing = true;
    state.existing_users.push(unowned_row("b", "u1"));
    state.existing_users.push(unowned_row("a", "u1"));
    assert_eq!(
        plan(state.clone()).conflicts,
        [Conflict::AmbiguousKey {
            userid: "u1".into(),
            column: "id".into(),
            names: vec!["a".into(), "b".into()]
        }]
    );
}

#[test]
fn dingtalk_column_is_filled_only_when_empty() {
    let mut state = settle(&input(vec![mapped(profile("u1"))]));
    row_mut(&mut state, "Ju1").dingtalk = "oauth-open-id".into();
    assert!(!plan(state.clone()).has_writes());
    row_mut(&mut state, "Ju1").dingtalk = String::new();
    let plan = plan(state.clone());
    assert_eq!(plan.updates[0].dingtalk.as_deref(), Some("u1"));
}

fn owned_population(n: usize) -> PlanInput {
    let users = (1..=n).map(|i| mapped(profile(&format!("u{i}")))).collect();
    settle(&input(users))
}

fn without(state: &PlanInput, gone: &[&str]) -> PlanInput {
    let mut next = state.clone();
    next.users.retain(|u| !gone.contains(&u.userid.as_str()));
    next
}

#[test]
fn leavers_are_forbidden_only_after_a_complete_fetch() {
    let state = owned_population(4);
    let mut incomplete = without(&state, &["u2"]);
    incomplete.directory_complete = false;
    let plan_incomplete = plan(incomplete.clone());
    assert!(plan_incomplete.leavers.is_empty() && plan_incomplete.held.is_none());
    assert!(
        plan_incomplete
            .notices
            .contains(&Notice::DirectoryIncomplete)
    );
    assert!(!plan_incomplete.has_writes());

    let complete = without(&state, &["u2"]);
    let p = plan(complete.clone());
    assert_eq!(
        p.leavers,
        [LeaverAction {
            name: "Ju2".into(),
            userid: "u2".into(),
            action: LeftAction::Forbid,
            changes: vec![change(
                "is_forbidden",
                FieldValue::Bool(false),
                FieldValue::Bool(true)
            )],
        }]
    );
    let after = apply_to_state(&complete, &p);
    assert_eq!(link_of(&after, "u2").state, LinkState::Left);
    assert_eq!(link_of(&after, "u2").left_action, Some(LeftAction::Forbid));
    assert!(row(&after, "Ju2").is_forbidden);
    assert!(!plan(after.clone()).has_writes());
}

#[test]
fn an_empty_directory_acts_on_no_leaver() {
    let state = owned_population(3);
    let empty = without(&state, &["u1", "u2", "u3"]);
    let p = plan(empty.clone());
    assert!(p.leavers.is_empty() && p.held.is_none());
    assert!(p.notices.contains(&Notice::DirectoryEmpty));
}

#[test]
fn users_whose_record_failed_are_not_leavers() {
    let state = owned_population(3);
    let mut next = without(&state, &["u2"]);
    next.record_errors.push(RecordError::NulByte {
        userid: "u2".into(),
        column: "title".into(),
    });
    let p = plan(next.clone());
    assert!(p.leavers.is_empty());
    assert_eq!(p.record_errors.len(), 1);
}

#[test]
fn leaver_policy_delete_soft_deletes_and_keep_only_marks_the_link() {
    let state = owned_population(3);
    let mut next = without(&state, &["u3"]);
    next.options.leaver_policy = LeaverPolicy::Delete;
    let p = plan(next.clone());
    assert_eq!(p.leavers[0].action, LeftAction::Delete);
    // The deleted user leaves its managed groups, as Casdoor's DeleteUser drops memberships.
    let groups_before = row(&state, "Ju3").groups.clone().unwrap_or_default();
    assert_eq!(
        p.leavers[0].changes,
        [
            change("deleted_time", text(""), text(NOW)),
            change("groups", text(&groups_before), text("[]")),
            change(
                "is_deleted",
                FieldValue::Bool(false),
                FieldValue::Bool(true)
            ),
        ]
    );
    assert!(
        !p.casbin_remove.is_empty() && p.casbin_remove.iter().all(|r| r.v0 == format!("{ORG}/Ju3")),
        "{:?}",
        p.casbin_remove
    );

    next.options.leaver_policy = LeaverPolicy::Keep;
    let p = plan(next.clone());
    assert_eq!(p.leavers[0].action, LeftAction::Keep);
    assert!(p.leavers[0].changes.is_empty());
    let after = apply_to_state(&next, &p);
    assert_eq!(link_of(&after, "u3").state, LinkState::Left);
    assert_eq!(row(&after, "Ju3"), row(&next, "Ju3"));
}

#[test]
fn users_deleted_before_deletion_dropped_memberships_leave_their_groups_once() {
    let state = owned_population(3);
    let mut next = without(&state, &["u3"]);
    next.options.leaver_policy = LeaverPolicy::Delete;
    let deleted = apply_to_state(&next, &plan(next.clone()));
    // What an older syncerd left behind: the deleted user still in its department groups.
    let mut old = deleted.clone();
    row_mut(&mut old, "Ju3").groups = row(&state, "Ju3").groups.clone();
    old.casbin_groupings = state.casbin_groupings.clone();
    assert_eq!(link_of(&old, "u3").left_action, Some(LeftAction::Delete));

    let p = plan(old.clone());
    assert!(p.leavers.is_empty(), "{:?}", p.leavers);
    assert_eq!(p.updates.len(), 1, "{:?}", p.updates);
    assert_eq!(p.updates[0].name, "Ju3");
    assert!(p.updates[0].changes.is_empty() && p.updates[0].hash.is_none());
    assert_eq!(p.updates[0].groups.as_deref(), Some("[]"));
    assert!(
        !p.casbin_remove.is_empty() && p.casbin_remove.iter().all(|r| r.v0 == format!("{ORG}/Ju3")),
        "{:?}",
        p.casbin_remove
    );
    let after = apply_to_state(&old, &p);
    assert_eq!(after.casbin_groupings, deleted.casbin_groupings);
    assert!(!plan(after).has_writes());
}

#[test]
fn a_leaver_already_forbidden_is_recorded_as_kept() {
    let mut state = owned_population(3);
    row_mut(&mut state, "Ju3").is_forbidden = true;
    let p = plan(without(&state, &["u3"]));
    assert_eq!(p.leavers[0].action, LeftAction::Keep);
    assert!(p.leavers[0].changes.is_empty());
}

#[test]
fn removal_limit_holds_leavers_but_applies_the_rest() {
    let mut state = owned_population(10);
    state.options.max_removals = 2;
    let mut next = without(&state, &["u1", "u2", "u3"]);
    next.users.push(mapped(profile("u99")));
    let p = plan(next.clone());
    assert!(p.leavers.is_empty());
    let held = p.held.as_ref().unwrap();
    assert_eq!(held.leavers.len(), 3);
    assert_eq!(held.removals, 3);
    let message = held.to_string();
    assert!(message.contains("sync.max_removals"), "{message}");
    assert!(message.contains("sync.max_removal_percent"), "{message}");
    assert!(
        message.contains("syncerd sync syncer_dt --allow-removals"),
        "{message}"
    );
    // Everything else still happens.
    assert_eq!(p.creates.len(), 1);
    assert!(p.link_writes.iter().all(|l| l.state == LinkState::Present));
    // And the same run again holds again without writing.
    let after = apply_to_state(&next, &p);
    let again = plan(after.clone());
    assert!(again.held.is_some());
    assert!(!again.has_writes(), "{again:#?}");
}

#[test]
fn removal_percent_limit_holds_leavers() {
    let mut state = owned_population(10);
    state.options.max_removal_percent = 10.0;
    let one = plan(without(&state, &["u1"]));
    assert!(one.held.is_none() && one.leavers.len() == 1);
    let two = plan(without(&state, &["u1", "u2"]));
    assert!(two.held.is_some() && two.leavers.is_empty());
    assert_eq!(two.held.as_ref().map(|h| h.owned), Some(10));
}

#[test]
fn allow_removals_lifts_the_hold() {
    let mut state = owned_population(4);
    state.options.max_removals = 0;
    let mut next = without(&state, &["u1", "u2"]);
    assert!(plan(next.clone()).held.is_some());
    next.options.allow_removals = true;
    let p = plan(next.clone());
    assert!(p.held.is_none());
    assert_eq!(p.leavers.len(), 2);
}

#[test]
fn reappeared_users_are_unforbidden_and_undeleted() {
    let state = owned_population(3);
    let gone = without(&state, &["u3"]);
    let forbidden = settle(&gone);
    assert!(row(&forbidden, "Ju3").is_forbidden);
    let mut back = forbidden.clone();
    back.users = state.users.clone();
    let p = plan(back.clone());
    assert_eq!(
        p.reappeared,
        [Reappearance {
            name: "Ju3".into(),
            userid: "u3".into(),
            undone: Some(LeftAction::Forbid)
        }]
    );
    assert_eq!(
        p.updates[0].changes,
        [change(
            "is_forbidden",
            FieldValue::Bool(true),
            FieldValue::Bool(false)
        )]
    );
    let after = apply_to_state(&back, &p);
    assert_eq!(link_of(&after, "u3").state, LinkState::Present);
    assert_eq!(link_of(&after, "u3").left_action, None);
    assert!(!plan(after.clone()).has_writes());

    let mut deleting = gone.clone();
    deleting.options.leaver_policy = LeaverPolicy::Delete;
    let deleted = settle(&deleting);
    let mut back = deleted.clone();
    back.users = state.users.clone();
    let p = plan(back.clone());
    assert_eq!(
        p.updates[0].changes,
        [
            change("deleted_time", text(NOW), text("")),
            change(
                "is_deleted",
                FieldValue::Bool(true),
                FieldValue::Bool(false)
            ),
        ]
    );
}

#[test]
fn a_reappeared_inactive_user_stays_forbidden_by_the_mapping() {
    let state = owned_population(3);
    let forbidden = settle(&without(&state, &["u3"]));
    let mut back = forbidden.clone();
    back.users = state.users.clone();
    back.users[2] = mapped(User {
        active: Some(false),
        ..profile("u3")
    });
    let p = plan(back.clone());
    assert!(
        p.updates[0]
            .changes
            .iter()
            .all(|c| c.column != "is_forbidden")
    );
    assert_eq!(p.reappeared.len(), 1);
}

#[test]
fn groups_are_created_as_the_department_tree() {
    let mut state = input(vec![]);
    state.departments.push(dept(9, Some("Backend"), Some(7)));
    let p = plan(state.clone());
    let view: Vec<_> = p
        .group_creates
        .iter()
        .map(|g| {
            (
                g.name.as_str(),
                g.display_name.as_str(),
                g.parent_id.as_str(),
                g.is_top_group,
            )
        })
        .collect();
    assert_eq!(
        view,
        [
            ("1", "Acme", "acme", true),
            ("7", "R&D", "1", false),
            ("9", "Backend", "7", false)
        ]
    );
    let group_links = p
        .link_writes
        .iter()
        .filter(|l| l.kind == LinkKind::Group)
        .count();
    assert_eq!(group_links, 3);
}

#[test]
fn renamed_and_moved_departments_update_their_groups() {
    let mut state = settle(&input(vec![]));
    state.departments = vec![
        dept(1, None, None),
        dept(3, Some("Ops"), Some(1)),
        dept(7, Some("Research"), Some(3)),
    ];
    let p = plan(state.clone());
    let update = p.group_updates.iter().find(|g| g.name == "7").unwrap();
    assert_eq!(
        update.changes,
        [
            change("display_name", text("R&D"), text("Research")),
            change("parent_id", text("1"), text("3")),
        ]
    );
    assert!(!update.adopted);
}

fn group(name: &str, group_type: &str) -> ExistingGroup {
    ExistingGroup {
        owner: ORG.into(),
        name: name.into(),
        display_name: "Old".into(),
        parent_id: String::new(),
        is_top_group: true,
        group_type: group_type.into(),
    }
}

#[test]
fn existing_department_groups_are_adopted_only_when_allowed() {
    let mut state = input(vec![]);
    state
        .existing_groups
        .push(group("7", DEPARTMENT_GROUP_TYPE));
    let p = plan(state.clone());
    assert!(p.conflicts.contains(&Conflict::GroupNotOwned {
        dept_id: 7,
        group: "7".into()
    }));
    assert!(p.group_updates.is_empty());
    state.options.adopt_existing = true;
    let p = plan(state.clone());
    let update = &p.group_updates[0];
    assert!(update.adopted);
    assert_eq!(
        update.changes,
        [
            change("display_name", text("Old"), text("R&D")),
            change(
                "is_top_group",
                FieldValue::Bool(true),
                FieldValue::Bool(false)
            ),
            change("parent_id", text(""), text("1")),
        ]
    );
}

#[test]
fn a_same_named_group_of_another_type_or_owner_is_a_conflict() {
    let mut state = input(vec![]);
    state.options.adopt_existing = true;
    state.existing_groups.push(group("7", "Virtual"));
    state
        .existing_groups
        .push(group("1", DEPARTMENT_GROUP_TYPE));
    state.foreign_claims.push(ForeignClaim {
        kind: LinkKind::Group,
        casdoor_name: "1".into(),
        syncer: "syncer_b".into(),
    });
    let p = plan(state.clone());
    assert!(p.group_creates.is_empty() && p.group_updates.is_empty());
    assert_eq!(
        p.conflicts,
        [
            Conflict::GroupNotDepartment {
                dept_id: 7,
                group: "7".into(),
                found_type: "Virtual".into()
            },
            Conflict::GroupOwnedByAnotherSyncer {
                dept_id: 1,
                group: "1".into(),
                syncer: "syncer_b".into()
            },
        ]
    );
    let mut other_org = input(vec![]);
    other_org.group_names_in_other_orgs.insert("7".into());
    let p = plan(other_org.clone());
    assert_eq!(p.group_creates.len(), 1);
    assert!(matches!(
        p.conflicts[..],
        [Conflict::GroupNameUsedByAnotherOrg { dept_id: 7, .. }]
    ));
}

#[test]
fn departments_gone_from_a_complete_directory_are_reported_not_deleted() {
    let mut state = settle(&input(vec![]));
    state.departments = vec![dept(1, None, None)];
    let p = plan(state.clone());
    assert!(!p.has_writes());
    assert!(p.notices.contains(&Notice::DepartmentGone {
        dept_id: "7".into(),
        group: "7".into()
    }));
}

#[test]
fn memberships_follow_department_moves_in_groups_and_casbin() {
    let mut state = input(vec![mapped(profile("u1"))]);
    state.departments.push(dept(9, Some("Backend"), Some(7)));
    let mut state = settle(&state);
    state.users = vec![mapped(User {
        dept_id_list: Some(vec![9]),
        ..profile("u1")
    })];
    let p = plan(state.clone());
    assert_eq!(p.updates[0].groups.as_deref(), Some(r#"["acme/9"]"#));
    // Departments are not in the hash: a move alone changes no column.
    assert!(p.updates[0].changes.is_empty() && p.updates[0].hash.is_none());
    assert_eq!(
        p.casbin_add,
        [CasbinGrouping {
            v0: "acme/Ju1".into(),
            v1: "group:acme/9".into()
        }]
    );
    assert_eq!(
        p.casbin_remove,
        [CasbinGrouping {
            v0: "acme/Ju1".into(),
            v1: "group:acme/7".into()
        }]
    );
}

#[test]
fn manual_group_memberships_are_kept() {
    let mut state = settle(&input(vec![mapped(profile("u1"))]));
    let r = row_mut(&mut state, "Ju1");
    r.groups = Some(r#"["acme/admins","acme/7"]"#.into());
    state.casbin_groupings.push(CasbinGrouping {
        v0: "acme/Ju1".into(),
        v1: "group:acme/admins".into(),
    });
    assert!(!plan(state.clone()).has_writes());
    state.users = vec![mapped(User {
        dept_id_list: Some(vec![1]),
        ..profile("u1")
    })];
    let p = plan(state.clone());
    assert_eq!(
        p.updates[0].groups.as_deref(),
        Some(r#"["acme/admins","acme/1"]"#)
    );
    assert!(p.casbin_remove.iter().all(|r| r.v1 != "group:acme/admins"));
}

#[test]
fn an_incomplete_directory_never_removes_memberships() {
    let mut state = settle(&input(vec![mapped(profile("u1"))]));
    state.directory_complete = false;
    state.users = vec![mapped(User {
        dept_id_list: Some(vec![1]),
        ..profile("u1")
    })];
    let p = plan(state.clone());
    assert_eq!(
        p.updates[0].groups.as_deref(),
        Some(r#"["acme/7","acme/1"]"#)
    );
    assert!(p.casbin_remove.is_empty());
}

#[test]
fn a_groups_column_that_is_not_a_list_leaves_memberships_alone() {
    let mut state = settle(&input(vec![mapped(profile("u1"))]));
    row_mut(&mut state, "Ju1").groups = Some("{broken".into());
    let p = plan(state.clone());
    assert!(p.updates.is_empty() && p.casbin_add.is_empty());
    assert_eq!(
        p.conflicts,
        [Conflict::GroupsNotAList {
            userid: "u1".into(),
            name: "Ju1".into()
        }]
    );
}

#[test]
fn a_custom_key_matches_on_its_column() {
    let tc = r#"[{"name":"userid","casdoorName":"Id","isHashed":true},
                 {"name":"unionid","casdoorName":"Name","isKey":true,"isHashed":true},
                 {"name":"title","casdoorName":"Title","isHashed":true}]"#;
    let mapping = Mapping::from_syncer(Some(tc), "").unwrap();
    let user = mapped_with(profile("u1"), &mapping);
    let mut state = input(vec![user]);
    state.key_column = mapping.key_column().into();
    state.options.adopt_existing = true;
    // Someone who signed in through DingTalk OAuth first: name = unionid, id = a UUID.
    state.existing_users.push(ExistingUser {
        owner: ORG.into(),
        name: "union-u1".into(),
        key_value: "union-u1".into(),
        values: [("id", text("7f9c-uuid"))].into(),
        ..ExistingUser::default()
    });
    let p = plan(state.clone());
    assert!(p.creates.is_empty());
    assert_eq!(p.adopted.len(), 1);
    // `id` is never rewritten on update, as in Casdoor.
    assert!(p.updates[0].changes.iter().all(|c| c.column != "id"));
    assert!(!plan(apply_to_state(&state, &p)).has_writes());
}

/// Found by `applying_a_plan_then_planning_again_writes_nothing`: the key value a linked user's
/// row gives up in this run is free for another DingTalk user in the same run, not a conflict
/// now and a creation in the next run.
#[test]
fn a_key_value_handed_on_to_another_user_resolves_in_one_run() {
    let tc = r#"[{"name":"userid","casdoorName":"Id","isHashed":true},
                 {"name":"email","casdoorName":"Email","isKey":true,"isHashed":true},
                 {"name":"job_number","casdoorName":"Name"}]"#;
    let mapping = Mapping::from_syncer(Some(tc), "").unwrap();
    let mut first_run = input(vec![mapped_with(profile("u1"), &mapping)]);
    first_run.key_column = mapping.key_column().into();
    let mut state = settle(&first_run);
    // u1 changes address, and a new hire is given u1's old one.
    state.users = vec![
        mapped_with(
            User {
                email: Some("u1-new@example.com".into()),
                ..profile("u1")
            },
            &mapping,
        ),
        mapped_with(
            User {
                email: Some("u1@example.com".into()),
                ..profile("u9")
            },
            &mapping,
        ),
    ];
    let p = plan(state.clone());
    assert!(p.conflicts.is_empty(), "{:#?}", p.conflicts);
    assert_eq!(
        p.creates
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["Ju9"]
    );
    assert_eq!(
        p.updates[0].changes,
        [change(
            "email",
            text("u1@example.com"),
            text("u1-new@example.com")
        )]
    );
    assert!(!plan(apply_to_state(&state, &p)).has_writes());
}

#[test]
fn a_link_to_a_deleted_user_is_dropped_or_pointed_at_the_recreated_user() {
    let state = owned_population(2);
    // An admin deleted both users in Casdoor; u1 is still in DingTalk, u2 is not.
    let mut next = without(&state, &["u2"]);
    next.existing_users.clear();
    let p = plan(next.clone());
    assert_eq!(
        p.creates
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["Ju1"]
    );
    assert!(p.leavers.is_empty() && p.held.is_none());
    assert_eq!(
        p.link_deletes
            .iter()
            .map(|l| l.external_id.as_str())
            .collect::<Vec<_>>(),
        ["u2"]
    );
    assert!(p.notices.contains(&Notice::LinkedUserMissing {
        userid: "u1".into(),
        name: "Ju1".into()
    }));
    let after = apply_to_state(&next, &p);
    assert!(after.links.iter().all(|l| l.external_id != "u2"));
    assert!(!plan(after.clone()).has_writes());
}

#[test]
fn plan_options_come_from_the_sync_settings() {
    let settings = SyncSettings::default();
    let o = PlanOptions::from_settings(&settings, true, false);
    assert_eq!(o.max_removals, settings.max_removals);
    assert_eq!(o.leaver_policy, settings.leaver_policy);
    assert!(o.allow_removals && !o.adopt_existing);
    assert_eq!(
        LeftAction::parse(LeftAction::Delete.as_str()),
        Some(LeftAction::Delete)
    );
}

#[test]
fn plans_do_not_depend_on_input_order() {
    let users: Vec<_> = (1..=5).map(|i| mapped(profile(&format!("u{i}")))).collect();
    let mut state = settle(&input(users));
    state.users.retain(|u| u.userid != "u2");
    state.users.push(mapped(profile("u9")));
    state.existing_users.push(unowned_row("Ju9", "x"));
    let mut reversed = state.clone();
    reversed.users.reverse();
    reversed.existing_users.reverse();
    reversed.links.reverse();
    reversed.existing_groups.reverse();
    reversed.casbin_groupings.reverse();
    reversed.departments.reverse();
    assert_eq!(plan(state.clone()), plan(reversed.clone()));
}

#[test]
fn summary_counts_every_part() {
    let state = owned_population(3);
    let mut next = without(&state, &["u3"]);
    next.users.push(mapped(profile("u4")));
    next.users[0] = mapped(User {
        title: Some("Boss".into()),
        ..profile("u1")
    });
    let s = plan(next.clone()).summary();
    assert_eq!(
        (s.created, s.updated, s.unchanged, s.leavers, s.held_leavers),
        (1, 1, 1, 1, 0)
    );
    assert_eq!((s.casbin_added, s.memberships_changed), (1, 1));
    let line = s.to_string();
    assert!(
        line.contains("1 created") && line.contains("1 leavers"),
        "{line}"
    );
}

#[test]
fn conflict_and_notice_messages_say_what_to_do() {
    let c = Conflict::NotOwned {
        userid: "u1".into(),
        name: "bob".into(),
    };
    assert!(c.to_string().contains("adopting"));
    let c = Conflict::GroupNameUsedByAnotherOrg {
        dept_id: 7,
        group: "7".into(),
    };
    assert!(c.to_string().contains("UQE_group_name"));
    assert!(
        Notice::DirectoryIncomplete
            .to_string()
            .contains("no leaver")
    );
}

// ---- generated inputs -------------------------------------------------------------------------

/// Field values drawn from this pool collide on purpose: names that differ only in case or
/// spaces, a job number equal to another user's userid, names Casdoor refuses.
const POOL: &[&str] = &[
    "",
    "A1",
    "a1",
    "A2",
    " A1 ",
    "u1",
    "u2",
    "bob",
    "Bob",
    "张三",
    "1",
    "0",
    "true",
    "-7",
    "Ju1",
    "ghost",
    "a/b",
    "x\0y",
    "x\ty",
    "<&>",
    "\u{85}",
    "👩‍💻",
    "مرحبا",
    "١٢٣",
];
const USERIDS: &[&str] = &[
    "u1", "u2", "u3", "u4", "u5", "u6", "0123", "", " ", "u/7", "Ju1",
];
const DEPT_IDS: &[i64] = &[1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 512_340_001, i64::MAX];
/// The DingTalk fields a mapping may read.
const SOURCE_FIELDS: &[&str] = &[
    "userid",
    "unionid",
    "name",
    "email",
    "mobile",
    "avatar",
    "title",
    "job_number",
    "active",
];
/// Group names: the departments' plus one that is no department.
fn group_names() -> Vec<String> {
    DEPT_IDS
        .iter()
        .map(i64::to_string)
        .chain(["manual".to_owned()])
        .collect()
}

const MAPPINGS: &[Option<&str>] = &[
    None,
    Some(
        r#"[{"name":"userid","casdoorName":"Id","isHashed":true},{"name":"unionid","casdoorName":"Name","isHashed":true},
            {"name":"name","casdoorName":"DisplayName","isHashed":true},{"name":"active","casdoorName":"IsForbidden","isHashed":true}]"#,
    ),
    Some(
        r#"[{"name":"userid","casdoorName":"Id"},{"name":"job_number","casdoorName":"Name","isKey":true,"isHashed":true},
            {"name":"title","casdoorName":"Tag","isHashed":true},{"name":"email","casdoorName":"Email"}]"#,
    ),
    Some(
        r#"[{"name":"userid","casdoorName":"Id","isHashed":true},{"name":"mobile","casdoorName":"Score"},
            {"name":"email","casdoorName":"EmailVerified","isHashed":true},{"name":"active","casdoorName":"IsVerified"}]"#,
    ),
];

/// A DingTalk text: mostly from the pool, else any Unicode, or longer than the columns hold.
fn dingtalk_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(POOL).prop_map(str::to_owned),
        2 => ".{0,6}",
        1 => prop::sample::select(vec![
            "n".repeat(101),
            "张".repeat(100),
            "张".repeat(101),
            "a".repeat(256),
            format!("{}\0", "x".repeat(99)),
        ]),
    ]
}

/// The departments a user is listed in or names: any of them, and one that does not exist.
fn dept_ids() -> impl Strategy<Value = Vec<i64>> {
    let mut ids = DEPT_IDS.to_vec();
    ids.push(404);
    prop::sample::subsequence(ids.clone(), 0..=ids.len())
}

/// One DingTalk record as the fetch delivers it: any optional field may be missing.
fn dingtalk_user() -> impl Strategy<Value = DirectoryUser> {
    let text = || prop::option::weighted(0.75, dingtalk_text());
    (
        (
            prop::sample::select(USERIDS),
            text(),
            text(),
            text(),
            text(),
            prop::option::weighted(
                0.75,
                prop::sample::select(vec!["http://a/x.png", "rel.png", ""]),
            ),
        ),
        (
            text(),
            text(),
            prop::option::of(any::<bool>()),
            prop::option::weighted(0.7, dept_ids()),
            dept_ids(),
        ),
    )
        .prop_map(
            |(
                (userid, unionid, name, email, mobile, avatar),
                (title, job_number, active, dept_id_list, seen_in),
            )| DirectoryUser {
                profile: User {
                    userid: userid.to_owned(),
                    unionid,
                    name,
                    email,
                    mobile,
                    avatar: avatar.map(str::to_owned),
                    title,
                    job_number,
                    active,
                    dept_id_list,
                    ..User::default()
                },
                seen_in,
            },
        )
}

/// A stock mapping, or any valid `table_columns` made of DingTalk fields and writable columns.
fn mapping() -> impl Strategy<Value = Mapping> {
    let sources = SOURCE_FIELDS.to_vec();
    let targets: Vec<&str> = WRITABLE_USER_COLUMNS
        .iter()
        .map(|c| c.casdoor_name)
        .collect();
    let column = (
        prop::sample::select(sources),
        prop::sample::select(targets),
        prop::bool::weighted(0.15),
        any::<bool>(),
    )
        .prop_map(|(name, casdoor_name, is_key, is_hashed)| {
            serde_json::json!({"name": name, "casdoorName": casdoor_name, "isKey": is_key,
                               "isHashed": is_hashed})
        });
    let custom = prop::collection::vec(column, 1..6).prop_filter_map(
        "table_columns without a usable key",
        |columns| {
            Mapping::from_syncer(
                Some(&serde_json::Value::from(columns).to_string()),
                "https://cdn/",
            )
            .ok()
        },
    );
    prop_oneof![
        1 => prop::sample::select(MAPPINGS)
            .prop_map(|tc| Mapping::from_syncer(tc, "https://cdn/").unwrap()),
        1 => custom,
    ]
}

/// How a column of an existing row was found: absent, a value of its kind, or one of the wrong
/// kind (a foreign schema).
#[derive(Debug, Clone)]
struct RawValue {
    text: Index,
    flag: bool,
    int: i64,
    wrong_kind: bool,
}

#[derive(Debug, Clone)]
struct RawRow {
    name: Index,
    other_owner: bool,
    values: Vec<Option<RawValue>>,
    key_from_userids: bool,
    key: Index,
    hash: Index,
    pre_hash: Index,
    is_forbidden: bool,
    is_deleted: bool,
    deleted_time: bool,
    groups: Option<&'static str>,
    dingtalk: &'static str,
}

#[derive(Debug, Clone)]
struct RawLink {
    state: LinkState,
    left_action: Option<LeftAction>,
    name: Index,
    hash: Index,
}

#[derive(Debug, Clone)]
struct RawGroup {
    other_owner: bool,
    display_name: Index,
    parent_id: &'static str,
    is_top_group: bool,
    group_type: &'static str,
}

/// Everything but the directory, as choices resolved against the pools once the directory is
/// mapped (so shrinking keeps the state consistent with it).
#[derive(Debug, Clone)]
struct RawState {
    rows: Vec<RawRow>,
    user_links: Vec<Option<RawLink>>,
    group_links: Vec<bool>,
    foreign_claims: Vec<Option<(LinkKind, &'static str)>>,
    groups: Vec<Option<RawGroup>>,
    casbin: Vec<bool>,
    other_org_groups: Vec<bool>,
    long_root_name: bool,
    options: PlanOptions,
}

fn raw_row() -> impl Strategy<Value = RawRow> {
    let value = (
        any::<Index>(),
        any::<bool>(),
        0..3_i64,
        prop::bool::weighted(0.1),
    )
        .prop_map(|(text, flag, int, wrong_kind)| RawValue {
            text,
            flag,
            int,
            wrong_kind,
        });
    (
        (
            any::<Index>(),
            prop::bool::weighted(0.1),
            prop::collection::vec(prop::option::weighted(0.7, value), 8),
            prop::bool::weighted(0.6),
            any::<Index>(),
            any::<Index>(),
            any::<Index>(),
        ),
        (
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.1),
            any::<bool>(),
            prop::sample::select(vec![
                None,
                Some(""),
                Some("null"),
                Some("[]"),
                Some(r#"["acme/1"]"#),
                Some(r#"["7","acme/manual","acme/3","acme/3"]"#),
                Some("not json"),
                Some("[1]"),
            ]),
            prop::sample::select(vec!["", "u1", "openid"]),
        ),
    )
        .prop_map(
            |(
                (name, other_owner, values, key_from_userids, key, hash, pre_hash),
                (is_forbidden, is_deleted, deleted_time, groups, dingtalk),
            )| RawRow {
                name,
                other_owner,
                values,
                key_from_userids,
                key,
                hash,
                pre_hash,
                is_forbidden,
                is_deleted,
                deleted_time,
                groups,
                dingtalk,
            },
        )
}

fn raw_state() -> impl Strategy<Value = RawState> {
    let link = (
        prop::sample::select(vec![
            (LinkState::Present, None),
            (LinkState::Left, Some(LeftAction::Forbid)),
            (LinkState::Left, Some(LeftAction::Delete)),
            (LinkState::Left, Some(LeftAction::Keep)),
            (LinkState::Left, None),
        ]),
        any::<Index>(),
        any::<Index>(),
    )
        .prop_map(|((state, left_action), name, hash)| RawLink {
            state,
            left_action,
            name,
            hash,
        });
    let group = (
        prop::bool::weighted(0.1),
        any::<Index>(),
        prop::sample::select(vec!["", "acme", "1", "3"]),
        any::<bool>(),
        prop::sample::select(vec!["department", "Virtual", ""]),
    )
        .prop_map(
            |(other_owner, display_name, parent_id, is_top_group, group_type)| RawGroup {
                other_owner,
                display_name,
                parent_id,
                is_top_group,
                group_type,
            },
        );
    let options = (
        prop::sample::select(vec![
            LeaverPolicy::Forbid,
            LeaverPolicy::Keep,
            LeaverPolicy::Delete,
        ]),
        0..3_u64,
        prop::sample::select(vec![0.0, 34.0, 100.0]),
        prop::bool::weighted(0.3),
        any::<bool>(),
    )
        .prop_map(
            |(leaver_policy, max_removals, max_removal_percent, allow_removals, adopt_existing)| {
                PlanOptions {
                    leaver_policy,
                    max_removals,
                    max_removal_percent,
                    allow_removals,
                    adopt_existing,
                    adopt_only: BTreeSet::new(),
                    min_removals_allowed: 0,
                    earlier_removals: 0,
                }
            },
        );
    let groups = group_names().len();
    (
        prop::collection::vec(raw_row(), 0..8),
        prop::collection::vec(prop::option::weighted(0.4, link), USERIDS.len()),
        prop::collection::vec(prop::bool::weighted(0.25), groups),
        prop::collection::vec(
            prop::option::weighted(
                0.08,
                (
                    prop::sample::select(vec![LinkKind::User, LinkKind::Group]),
                    prop::sample::select(vec!["s1", "s2"]),
                ),
            ),
            9 + groups,
        ),
        prop::collection::vec(prop::option::weighted(0.35, group), groups),
        prop::collection::vec(prop::bool::weighted(0.1), 9 * groups),
        prop::collection::vec(prop::bool::weighted(0.05), groups),
        any::<bool>(),
        options,
    )
        .prop_map(
            |(
                rows,
                user_links,
                group_links,
                foreign_claims,
                groups,
                casbin,
                other_org_groups,
                long_root_name,
                options,
            )| RawState {
                rows,
                user_links,
                group_links,
                foreign_claims,
                groups,
                casbin,
                other_org_groups,
                long_root_name,
                options,
            },
        )
}

/// Departments of the directory: any subset of the ids, named or not, with parents that may be
/// missing, unknown or form a cycle.
fn departments() -> impl Strategy<Value = Vec<Department>> {
    let parents: Vec<Option<i64>> = DEPT_IDS
        .iter()
        .copied()
        .map(Some)
        .chain([Some(404), None])
        .collect();
    prop::collection::vec(
        prop::option::weighted(
            0.7,
            (
                prop::option::weighted(0.75, dingtalk_text()),
                prop::sample::select(parents),
            ),
        ),
        DEPT_IDS.len(),
    )
    .prop_map(|found| {
        DEPT_IDS
            .iter()
            .zip(found)
            .filter_map(|(&dept_id, found)| {
                let (name, parent_id) = found?;
                let parent_id = if dept_id == 1 { None } else { parent_id };
                Some(Department {
                    dept_id,
                    name,
                    parent_id,
                })
            })
            .collect()
    })
}

/// A whole plan input: a mapped directory and a database state that shares names, keys and
/// hashes with it.
fn plan_input() -> impl Strategy<Value = PlanInput> {
    (
        mapping(),
        prop::collection::vec(dingtalk_user(), 0..8),
        departments(),
        prop::bool::weighted(0.75),
        raw_state(),
    )
        .prop_map(|(mapping, dir_users, departments, complete, raw)| {
            build_input(&mapping, dir_users, departments, complete, &raw)
        })
}

fn build_input(
    mapping: &Mapping,
    dir_users: Vec<DirectoryUser>,
    departments: Vec<Department>,
    complete: bool,
    raw: &RawState,
) -> PlanInput {
    let (users, record_errors) = map_directory(dir_users, mapping);
    let key_column = mapping.key_column();
    let names: Vec<String> = POOL
        .iter()
        .map(|t| (*t).to_owned())
        .chain(users.iter().map(|u| u.name.clone()))
        .collect();
    let hashes: Vec<ContentHash> = users
        .iter()
        .map(|u| u.hash.clone())
        .chain(["".into(), "x".into()])
        .collect();

    let existing_users = existing_rows(mapping, raw, &names, &hashes);
    let row_names: Vec<String> = existing_users
        .iter()
        .map(|e| e.name.clone())
        .chain(["ghost".to_owned()])
        .collect();
    let link_names: Vec<String> = row_names
        .iter()
        .cloned()
        .chain(users.iter().map(|u| u.name.clone()))
        .collect();
    let group_names = group_names();
    let mut links = user_links(raw, &existing_users, &link_names, &hashes);
    for (g, _) in group_names
        .iter()
        .zip(&raw.group_links)
        .filter(|(_, l)| **l)
    {
        links.push(OwnershipLink {
            kind: LinkKind::Group,
            // The group "manual" is linked to a department whose own group is named otherwise.
            external_id: if g == "manual" { "5".into() } else { g.clone() },
            casdoor_name: g.clone(),
            content_hash: ContentHash::Empty,
            state: LinkState::Present,
            left_action: None,
            row: None,
            adopted: false,
        });
    }
    let foreign_claims = row_names
        .iter()
        .chain(&group_names)
        .zip(&raw.foreign_claims)
        .filter_map(|(name, claim)| {
            let (kind, syncer) = claim.as_ref()?;
            Some(ForeignClaim {
                kind: *kind,
                casdoor_name: name.clone(),
                syncer: (*syncer).to_owned(),
            })
        })
        .collect();
    let existing_groups = group_names
        .iter()
        .zip(&raw.groups)
        .filter_map(|(g, group)| {
            let group = group.as_ref()?;
            Some(ExistingGroup {
                owner: if group.other_owner { "other" } else { ORG }.to_owned(),
                name: g.clone(),
                display_name: (*group.display_name.get(POOL)).to_owned(),
                parent_id: group.parent_id.to_owned(),
                is_top_group: group.is_top_group,
                group_type: group.group_type.to_owned(),
            })
        })
        .collect();
    let casbin_groupings = row_names
        .iter()
        .flat_map(|name| group_names.iter().map(move |g| (name, g)))
        .zip(&raw.casbin)
        .filter(|(_, present)| **present)
        .map(|((name, g), _)| CasbinGrouping {
            v0: format!("{ORG}/{name}"),
            v1: format!("group:{ORG}/{g}"),
        })
        .collect();
    let group_names_in_other_orgs = group_names
        .iter()
        .zip(&raw.other_org_groups)
        .filter(|(_, taken)| **taken)
        .map(|(g, _)| g.clone())
        .collect();
    PlanInput {
        organization: ORG.into(),
        root_group_display_name: if raw.long_root_name {
            "a".repeat(101)
        } else {
            "Acme".to_owned()
        },
        syncer: "syncer_dt".into(),
        key_column: key_column.into(),
        users,
        record_errors,
        departments,
        directory_complete: complete,
        existing_users,
        links,
        foreign_claims,
        existing_groups,
        group_names_in_other_orgs,
        organization_names: BTreeSet::new(),
        casbin_groupings,
        options: raw.options.clone(),
        now: NOW.into(),
        scope: None,
    }
}

/// The drawn user rows, with their values of the mapping's columns. Names already taken are
/// skipped.
fn existing_rows(
    mapping: &Mapping,
    raw: &RawState,
    names: &[String],
    hashes: &[ContentHash],
) -> Vec<ExistingUser> {
    let key_column = mapping.key_column();
    let mut existing_users: Vec<ExistingUser> = Vec::new();
    for r in &raw.rows {
        let name = r.name.get(names).clone();
        if name.is_empty() || existing_users.iter().any(|e| e.name == name) {
            continue;
        }
        let columns = mapping
            .target_columns()
            .into_iter()
            .filter(|c| *c != "name" && *c != "is_forbidden");
        let mut values = BTreeMap::new();
        for (column, value) in columns.zip(&r.values) {
            let Some(v) = value else { continue };
            let kind = column_spec(column).map_or(ColumnKind::Text, |s| s.kind);
            let value = match (kind, v.wrong_kind) {
                (_, true) => text("wrong kind"),
                (ColumnKind::Text, _) => text(v.text.get::<&str>(POOL)),
                (ColumnKind::Bool, _) => FieldValue::Bool(v.flag),
                (ColumnKind::Int, _) => FieldValue::Int(v.int),
            };
            values.insert(column, value);
        }
        let key_value = if key_column == "name" {
            name.clone()
        } else {
            let k = if r.key_from_userids {
                *r.key.get(USERIDS)
            } else {
                *r.key.get(POOL)
            };
            values.insert(key_column, text(k));
            k.to_owned()
        };
        existing_users.push(ExistingUser {
            owner: if r.other_owner { "other" } else { ORG }.to_owned(),
            name,
            key_value,
            values: values.into_iter().collect(),
            hash: r.hash.get(hashes).clone(),
            pre_hash: r.pre_hash.get(hashes).clone(),
            is_forbidden: r.is_forbidden,
            is_deleted: r.is_deleted,
            deleted_time: if r.deleted_time { NOW } else { "" }.to_owned(),
            groups: r.groups.map(str::to_owned),
            dingtalk: r.dingtalk.to_owned(),
            // Drawn from choices already made, so that recorded failures stay reproducible.
            id: format!("id-{}", r.key.index(3)),
            created_time: if r.pre_hash.index(5) == 3 {
                "2020-01-01"
            } else {
                NOW
            }
            .to_owned(),
            is_admin: r.pre_hash.index(5) == 1,
            has_password: r.pre_hash.index(5) == 2,
        });
    }

    existing_users
}

/// The drawn links of this syncer to user rows: to a row, to `ghost` (no row), or to a new
/// user's name, recording an unknown, the row's own or another row's identity.
fn user_links(
    raw: &RawState,
    existing_users: &[ExistingUser],
    link_names: &[String],
    hashes: &[ContentHash],
) -> Vec<OwnershipLink> {
    USERIDS
        .iter()
        .zip(&raw.user_links)
        .filter_map(|(userid, link)| {
            let link = link.as_ref()?;
            let casdoor_name = link.name.get(link_names).clone();
            // Unknown, the linked row's own, or another row's identity.
            let row = match link.hash.index(4) {
                0 => None,
                1 => existing_users
                    .iter()
                    .find(|e| e.owner == ORG && e.name == casdoor_name)
                    .map(RowIdentity::of),
                2 => Some(RowIdentity {
                    id: "id-0".into(),
                    created_time: NOW.into(),
                }),
                _ => Some(RowIdentity::default()),
            };
            Some(OwnershipLink {
                kind: LinkKind::User,
                external_id: (*userid).to_owned(),
                casdoor_name,
                content_hash: link.hash.get(hashes).clone(),
                state: link.state,
                left_action: link.left_action,
                row,
                adopted: link.name.index(3) == 0,
            })
        })
        .collect()
}

/// The same input with every list in another order.
fn shuffled(input: PlanInput) -> impl Strategy<Value = (PlanInput, PlanInput)> {
    (
        Just(input.users.clone()).prop_shuffle(),
        Just(input.record_errors.clone()).prop_shuffle(),
        Just(input.departments.clone()).prop_shuffle(),
        Just(input.existing_users.clone()).prop_shuffle(),
        Just(input.links.clone()).prop_shuffle(),
        Just(input.foreign_claims.clone()).prop_shuffle(),
        Just(input.existing_groups.clone()).prop_shuffle(),
        Just(input.casbin_groupings.clone()).prop_shuffle(),
    )
        .prop_map(
            move |(
                users,
                record_errors,
                departments,
                existing_users,
                links,
                foreign_claims,
                existing_groups,
                casbin_groupings,
            )| {
                let other = PlanInput {
                    users,
                    record_errors,
                    departments,
                    existing_users,
                    links,
                    foreign_claims,
                    existing_groups,
                    casbin_groupings,
                    ..input.clone()
                };
                (input.clone(), other)
            },
        )
}

/// Inputs apply could never produce: odd key columns, repeated users, no organization, broken
/// removal limits.
fn inconsistent_input() -> impl Strategy<Value = PlanInput> {
    (
        plan_input(),
        prop::option::of(prop::sample::select(vec!["", "name", "nope"])),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![f64::NAN, -1.0, f64::INFINITY])),
    )
        .prop_map(|(mut state, key_column, repeat_users, no_org, percent)| {
            if let Some(key_column) = key_column {
                state.key_column = key_column.to_owned();
            }
            if repeat_users {
                let again = state.users.clone();
                state.users.extend(again);
            }
            if no_org {
                state.organization = String::new();
            }
            if let Some(percent) = percent {
                state.options.max_removal_percent = percent;
            }
            state
        })
}

/// `table_columns` as an administrator may have saved it: mostly well-formed entries naming
/// right or wrong fields, some of any shape, or not JSON at all.
fn table_columns_text() -> impl Strategy<Value = String> {
    use serde_json::{Value as Json, json};
    let sources = prop_oneof![
        8 => prop::sample::select(SOURCE_FIELDS),
        1 => prop::sample::select(vec!["id", "nope", "", " ", "Email"]),
    ];
    let writable: Vec<&str> = WRITABLE_USER_COLUMNS
        .iter()
        .map(|c| c.casdoor_name)
        .collect();
    let targets = prop_oneof![
        8 => prop::sample::select(writable),
        1 => prop::sample::select(vec!["Owner", "Password", "Groups", "DingTalk", "display_name"]),
    ];
    let scalar = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        ".{0,6}".prop_map(Json::from),
    ];
    let flag = prop_oneof![
        8 => prop::bool::weighted(0.2).prop_map(Json::from),
        1 => scalar.clone(),
    ];
    let well_formed =
        (sources, targets, flag.clone(), flag).prop_map(|(name, casdoor, key, hashed)| {
            json!({"name": name, "type": "string", "casdoorName": casdoor, "isKey": key,
                   "isHashed": hashed, "values": []})
        });
    let any_shape = prop::collection::vec(
        (
            prop::sample::select(vec!["name", "casdoorName", "isKey", "isHashed"]),
            scalar.clone(),
        ),
        0..5,
    )
    .prop_map(|fields| Json::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    let entries = prop::collection::vec(
        prop_oneof![12 => well_formed, 1 => any_shape, 1 => scalar],
        0..6,
    );
    prop_oneof![
        8 => entries.prop_map(|entries| Json::from(entries).to_string()),
        1 => ".{0,24}",
        1 => prop::sample::select(vec!["", "null", "[]", "{}", "[{}]", "\"x\""])
            .prop_map(str::to_owned),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn applying_a_plan_then_planning_again_writes_nothing(state in plan_input()) {
        let first = plan(state.clone());
        let after = apply_to_state(&state, &first);
        let second = plan(after.clone());
        prop_assert!(
            !second.has_writes(),
            "second plan writes\nfirst: {:#?}\nsecond: {:#?}",
            first,
            second
        );
        prop_assert_eq!(&second.conflicts, &first.conflicts, "conflicts changed between runs");
    }

    #[test]
    fn planning_does_not_depend_on_input_order(
        (state, reordered) in plan_input().prop_flat_map(shuffled),
    ) {
        prop_assert_eq!(plan(state.clone()), plan(reordered.clone()));
    }

    #[test]
    fn mapping_and_planning_never_panic_on_inconsistent_input(state in inconsistent_input()) {
        let _ = plan(state.clone()).summary();
    }

    #[test]
    fn any_table_columns_is_a_mapping_or_an_error_and_maps_any_directory(
        table_columns in table_columns_text(),
        dir_users in prop::collection::vec(dingtalk_user(), 0..6),
    ) {
        let Ok(mapping) = Mapping::from_syncer(Some(&table_columns), "https://cdn/") else {
            return Ok(());
        };
        let records = dir_users.len();
        let (users, record_errors) = map_directory(
            dir_users,
            &mapping,
        );
        // Every record is mapped or an error, and the mapped ones are keyed and named.
        prop_assert_eq!(users.len() + record_errors.len(), records);
        for user in &users {
            prop_assert!(!user.key.is_empty() && !user.name.is_empty(), "{:?}", user);
        }
        let state = PlanInput {
            key_column: mapping.key_column().into(),
            record_errors,
            ..input(users)
        };
        let _ = plan(state.clone()).summary();
    }
}

fn risky_row(name: &str, key: &str, risk: AdoptionRisk) -> ExistingUser {
    let mut row = ExistingUser {
        values: [
            ("title", text("Old")),
            ("email", text("boss@corp.example")),
            ("phone", text("13900000000")),
        ]
        .into(),
        ..unowned_row(name, key)
    };
    match risk {
        AdoptionRisk::Admin => row.is_admin = true,
        AdoptionRisk::Password => row.has_password = true,
        AdoptionRisk::OtherDingtalk => row.dingtalk = "openid-of-someone".into(),
    }
    row
}

#[test]
fn admins_password_holders_and_other_dingtalk_accounts_are_never_adopted() {
    for risk in [
        AdoptionRisk::Admin,
        AdoptionRisk::Password,
        AdoptionRisk::OtherDingtalk,
    ] {
        let mut state = input(vec![mapped(profile("u1"))]);
        state.options.adopt_existing = true;
        state
            .existing_users
            .push(risky_row("root-admin", "u1", risk));
        let p = plan(state.clone());
        assert_eq!(
            p.conflicts,
            [Conflict::AdoptionRefused {
                userid: "u1".into(),
                name: "root-admin".into(),
                reason: risk,
            }],
            "{risk:?}"
        );
        assert!(p.adopted.is_empty() && p.updates.is_empty() && p.creates.is_empty());
        assert!(p.link_writes.iter().all(|l| l.kind != LinkKind::User));
        let message = p.conflicts[0].to_string();
        assert!(
            message.contains("\"root-admin\"") && message.contains("sync.adopt_only"),
            "{message}"
        );
        assert!(!message.contains("boss@corp.example"), "{message}");
        assert!(!message.contains("openid-of-someone"), "{message}");

        // Without adoption the plain "not owned" conflict stays.
        state.options.adopt_existing = false;
        assert!(matches!(
            plan(state).conflicts[..],
            [Conflict::NotOwned { .. }]
        ));
    }
}

#[test]
fn a_row_bound_to_the_same_dingtalk_userid_is_adopted() {
    let mut state = input(vec![mapped(profile("u1"))]);
    state.options.adopt_existing = true;
    let mut row = unowned_row("legacy-u1", "u1");
    row.dingtalk = "u1".into();
    state.existing_users.push(row);
    let p = plan(state);
    assert!(p.conflicts.is_empty(), "{:?}", p.conflicts);
    assert_eq!(p.adopted.len(), 1);
}

#[test]
fn adopt_only_names_the_privileged_rows_that_may_be_adopted() {
    let mut state = input(vec![mapped(profile("u1")), mapped(profile("u2"))]);
    state.options.adopt_existing = true;
    state.options.adopt_only = ["ops-admin".to_owned()].into();
    state
        .existing_users
        .push(risky_row("ops-admin", "u1", AdoptionRisk::Admin));
    state
        .existing_users
        .push(risky_row("root-admin", "u2", AdoptionRisk::Password));
    let p = plan(state.clone());
    assert_eq!(
        p.adopted,
        [Adoption {
            name: "ops-admin".into(),
            userid: "u1".into()
        }]
    );
    assert_eq!(
        p.conflicts,
        [Conflict::AdoptionRefused {
            userid: "u2".into(),
            name: "root-admin".into(),
            reason: AdoptionRisk::Password,
        }]
    );
    // The allow-list alone adopts nothing.
    state.options.adopt_existing = false;
    assert!(plan(state).adopted.is_empty());
}

#[test]
fn adoption_never_rewrites_email_or_phone_then_or_later() {
    let mut state = input(vec![mapped(profile("u1"))]);
    state.options.adopt_existing = true;
    state.options.adopt_only = ["ops-admin".to_owned()].into();
    state
        .existing_users
        .push(risky_row("ops-admin", "u1", AdoptionRisk::Admin));
    let p = plan(state.clone());
    let update = &p.updates[0];
    assert!(
        update
            .changes
            .contains(&change("title", text("Old"), text("Engineer"))),
        "{:?}",
        update.changes
    );
    assert!(
        update
            .changes
            .iter()
            .all(|c| c.column != "email" && c.column != "phone"),
        "{:?}",
        update.changes
    );
    let link = p
        .link_writes
        .iter()
        .find(|l| l.external_id == "u1")
        .unwrap();
    assert!(link.adopted);

    // The next runs follow the link: still no e-mail or phone write, even when DingTalk's
    // values change.
    let mut next = apply_to_state(&state, &p);
    next.options.adopt_existing = false;
    assert!(!plan(next.clone()).has_writes());
    next.users = vec![mapped(User {
        email: Some("new@example.com".into()),
        mobile: Some("13700000000".into()),
        title: Some("Lead".into()),
        ..profile("u1")
    })];
    let later = plan(next.clone());
    assert_eq!(
        later.updates[0].changes,
        [change("title", text("Engineer"), text("Lead"))]
    );
    assert_eq!(
        row(&next, "ops-admin").current("email"),
        text("boss@corp.example")
    );

    // A user the syncer created is kept in step as before.
    let created = owned_population(1);
    let mut changed = created.clone();
    changed.users = vec![mapped(User {
        email: Some("new@example.com".into()),
        ..profile("u1")
    })];
    assert!(
        plan(changed).updates[0]
            .changes
            .iter()
            .any(|c| c.column == "email")
    );
}

/// The state after `owned_population`, with `name`'s row deleted in Casdoor and a different
/// person's row created under the same name.
fn replaced(state: &PlanInput, name: &str) -> PlanInput {
    let mut next = state.clone();
    let row = row_mut(&mut next, name);
    *row = ExistingUser {
        owner: ORG.into(),
        name: name.into(),
        key_value: "3f1b-uuid-of-a-new-person".into(),
        id: "3f1b-uuid-of-a-new-person".into(),
        created_time: "2026-12-01T09:00:00+08:00".into(),
        values: [
            ("email", text("newcomer@corp.example")),
            ("phone", text("13911112222")),
        ]
        .into(),
        ..ExistingUser::default()
    };
    next
}

#[test]
fn a_row_replaced_under_the_same_name_is_never_written_nor_forbidden() {
    let state = owned_population(3);
    assert_eq!(
        link_of(&state, "u2").row,
        Some(RowIdentity {
            id: "u2".into(),
            created_time: NOW.into()
        })
    );
    let next = replaced(&state, "Ju2");
    let p = plan(next.clone());
    assert_eq!(
        p.conflicts,
        [Conflict::LinkedRowReplaced {
            userid: "u2".into(),
            name: "Ju2".into()
        }]
    );
    assert!(p.updates.iter().all(|u| u.name != "Ju2"), "{:?}", p.updates);
    assert!(p.link_writes.iter().all(|l| l.external_id != "u2"));
    assert!(p.link_deletes.is_empty());

    // Gone from DingTalk as well: still no leaver action on the newcomer.
    let mut gone = without(&next, &["u2"]);
    gone.options.max_removal_percent = 100.0;
    let p = plan(gone);
    assert!(p.leavers.is_empty() && p.held.is_none(), "{:?}", p.leavers);
    assert_eq!(
        p.conflicts,
        [Conflict::LinkedRowReplaced {
            userid: "u2".into(),
            name: "Ju2".into()
        }]
    );

    // A changed created_time alone is another row too.
    let mut recreated = state.clone();
    row_mut(&mut recreated, "Ju3").created_time = "2026-12-02T00:00:00Z".into();
    assert!(matches!(
        plan(recreated).conflicts[..],
        [Conflict::LinkedRowReplaced { .. }]
    ));
}

#[test]
fn links_without_a_recorded_row_are_filled_once_from_the_row() {
    let state = owned_population(2);
    let mut old = state.clone();
    for l in &mut old.links {
        l.row = None;
    }
    for u in &mut old.existing_users {
        u.created_time = "2025-01-01T00:00:00Z".into();
    }
    let p = plan(old.clone());
    let user_links: Vec<&OwnershipLink> = p
        .link_writes
        .iter()
        .filter(|l| l.kind == LinkKind::User)
        .collect();
    assert_eq!(user_links.len(), 2);
    for l in user_links {
        assert_eq!(
            l.row,
            Some(RowIdentity {
                id: l.external_id.clone(),
                created_time: "2025-01-01T00:00:00Z".into()
            })
        );
    }
    assert!(p.updates.is_empty() && p.conflicts.is_empty());
    let next = apply_to_state(&old, &p);
    assert!(!plan(next.clone()).has_writes());
    // Once recorded, a replacement is seen.
    assert!(matches!(
        plan(replaced(&next, "Ju1")).conflicts[..],
        [Conflict::LinkedRowReplaced { .. }]
    ));
}

#[test]
fn a_few_removals_are_always_allowed_before_the_percentage_holds() {
    let mut state = owned_population(9);
    state.options.max_removal_percent = 10.0;
    state.options.min_removals_allowed = 0;
    assert!(plan(without(&state, &["u1"])).held.is_some());

    state.options.min_removals_allowed = 3;
    let one = plan(without(&state, &["u1"]));
    assert!(one.held.is_none());
    assert_eq!(one.leavers.len(), 1);
    assert_eq!(one.leavers[0].action, LeftAction::Forbid);
    let three = plan(without(&state, &["u1", "u2", "u3"]));
    assert!(three.held.is_none() && three.leavers.len() == 3);
    let four = plan(without(&state, &["u1", "u2", "u3", "u4"]));
    assert!(four.held.is_some() && four.leavers.is_empty());
    let message = four.held.map(|h| h.to_string()).unwrap_or_default();
    assert!(
        message.contains("sync.min_removals_allowed = 3"),
        "{message}"
    );

    // The absolute limit still holds.
    state.options.max_removals = 0;
    assert!(plan(without(&state, &["u1"])).held.is_some());
}

#[test]
fn sync_settings_default_to_three_removals_always_allowed() {
    let settings = SyncSettings::default();
    assert_eq!(settings.min_removals_allowed, 3);
    let o = PlanOptions::from_settings(
        &SyncSettings {
            adopt_only: vec!["a".into(), "b".into()],
            ..settings
        },
        false,
        false,
    );
    assert_eq!(o.min_removals_allowed, 3);
    assert_eq!(o.adopt_only, ["a".to_owned(), "b".to_owned()].into());
}

#[test]
fn names_fold_compatibility_forms_and_case() {
    for (a, b) in [
        ("ａｄｍｉｎ", "admin"),
        ("ＡＤＭＩＮ", "admin"),
        ("Admin", "aDMIN"),
        ("ﬁnance", "finance"),
        ("user²", "user2"),
        ("ſam", "SAM"),
        ("Ⅻ", "xii"),
        ("ｶﾀｶﾅ", "カタカナ"),
        ("café", "cafe\u{301}"),
    ] {
        assert_eq!(fold(a), fold(b), "{a} / {b}");
    }
    assert_ne!(fold("admin"), fold("admins"));
}

#[test]
fn full_width_and_compatibility_names_collide_with_existing_users() {
    for (existing, wanted) in [("admin", "ａｄｍｉｎ"), ("ﬁnance", "FINANCE")] {
        let user = mapped(User {
            job_number: Some(wanted.into()),
            ..profile("u1")
        });
        let mut state = input(vec![user]);
        state.existing_users.push(ExistingUser {
            owner: ORG.into(),
            name: existing.into(),
            key_value: "other".into(),
            ..ExistingUser::default()
        });
        let p = plan(state);
        assert!(p.creates.is_empty(), "{wanted}");
        assert_eq!(
            p.conflicts,
            [Conflict::NameTaken {
                userid: "u1".into(),
                name: wanted.into()
            }]
        );
    }
    // Two new users differing only in width are both conflicts.
    let a = mapped(User {
        job_number: Some("ｂｏｂ".into()),
        ..profile("u1")
    });
    let b = mapped(User {
        job_number: Some("Bob".into()),
        ..profile("u2")
    });
    let p = plan(input(vec![a, b]));
    assert!(p.creates.is_empty());
    assert!(
        p.conflicts
            .iter()
            .all(|c| matches!(c, Conflict::SameNameInDirectory { .. }))
    );
}

fn targets(users: &[&str], depts: &[i64]) -> crate::dingtalk::Targets {
    crate::dingtalk::Targets {
        user_ids: users.iter().map(|u| (*u).to_owned()).collect(),
        dept_ids: depts.iter().copied().collect(),
    }
}

/// A targeted run on `state`: `found` and `departments` are what the lookups returned.
fn targeted(
    state: &PlanInput,
    scope: crate::dingtalk::Targets,
    found: Vec<MappedUser>,
    departments: Vec<Department>,
) -> PlanInput {
    PlanInput {
        users: found,
        departments,
        scope: Some(scope),
        ..state.clone()
    }
}

#[test]
fn a_targeted_run_writes_for_its_targets_exactly_what_a_full_run_writes_for_them() {
    let state = owned_population(4);
    let changed = |id: &str| {
        mapped(User {
            title: Some("Lead".into()),
            dept_id_list: Some(vec![1]),
            ..profile(id)
        })
    };
    let mut full = state.clone();
    for u in full.users.iter_mut() {
        if u.userid == "u1" || u.userid == "u2" {
            *u = changed(&u.userid.clone());
        }
    }
    let full_plan = plan(full);
    let p = plan(targeted(
        &state,
        targets(&["u1"], &[]),
        vec![changed("u1")],
        vec![],
    ));
    let of_u1 = |v: &[UserUpdate]| -> Vec<UserUpdate> {
        v.iter().filter(|u| u.userid == "u1").cloned().collect()
    };
    assert_eq!(p.updates.len(), 1);
    assert_eq!(p.updates, of_u1(&full_plan.updates));
    let rules_of_u1 = |v: &[CasbinGrouping]| -> Vec<CasbinGrouping> {
        v.iter().filter(|r| r.v0 == "acme/Ju1").cloned().collect()
    };
    assert!(!p.casbin_add.is_empty());
    assert_eq!(p.casbin_add, rules_of_u1(&full_plan.casbin_add));
    assert_eq!(p.casbin_remove, rules_of_u1(&full_plan.casbin_remove));
    assert!(p.creates.is_empty() && p.leavers.is_empty() && p.held.is_none());
    assert!(p.link_deletes.is_empty() && p.group_creates.is_empty());
    assert!(p.group_updates.is_empty() && p.notices.is_empty());
}

#[test]
fn a_target_dingtalk_no_longer_has_is_a_leaver_and_nobody_else_is() {
    let state = owned_population(4);
    let p = plan(targeted(&state, targets(&["u2"], &[]), vec![], vec![]));
    let full = plan(without(&state, &["u2"]));
    assert_eq!(p.leavers.len(), 1);
    assert_eq!(p.leavers, full.leavers);
    assert_eq!(p.link_writes, full.link_writes);
    assert!(!p.notices.contains(&Notice::DirectoryEmpty));
    let after = apply_to_state(&state, &p);
    assert!(row(&after, "Ju2").is_forbidden);
    assert!(!row(&after, "Ju1").is_forbidden && !row(&after, "Ju3").is_forbidden);

    // A target this syncer never synced is nobody's business.
    let stranger = plan(targeted(&state, targets(&["u404"], &[]), vec![], vec![]));
    assert!(!stranger.has_writes(), "{stranger:#?}");
    // An answer that is not complete makes nobody a leaver.
    let mut incomplete = targeted(&state, targets(&["u2"], &[]), vec![], vec![]);
    incomplete.directory_complete = false;
    let p = plan(incomplete);
    assert!(p.leavers.is_empty() && p.held.is_none());
}

#[test]
fn targeted_leavers_are_held_against_the_whole_owned_population() {
    let mut state = owned_population(10);
    state.options.max_removal_percent = 10.0;
    let one = plan(targeted(&state, targets(&["u1"], &[]), vec![], vec![]));
    assert!(one.held.is_none() && one.leavers.len() == 1);
    let two = plan(targeted(
        &state,
        targets(&["u1", "u2"], &[]),
        vec![],
        vec![],
    ));
    assert!(two.leavers.is_empty());
    assert_eq!(
        two.held.as_ref().map(|h| (h.removals, h.owned)),
        Some((2, 10))
    );
    let full = plan(without(&state, &["u1", "u2"]));
    assert_eq!(two.held, full.held);
}

#[test]
fn a_target_department_keeps_its_place_and_only_targets_are_reported_gone() {
    let state = settle(&input(vec![]));
    let p = plan(targeted(
        &state,
        targets(&[], &[9]),
        vec![],
        vec![dept(9, Some("Backend"), Some(7))],
    ));
    let view: Vec<_> = p
        .group_creates
        .iter()
        .map(|g| (g.name.as_str(), g.parent_id.as_str(), g.is_top_group))
        .collect();
    assert_eq!(view, [("9", "7", false)]);
    assert!(p.group_updates.is_empty() && p.notices.is_empty(), "{p:#?}");

    let renamed = plan(targeted(
        &state,
        targets(&[], &[7]),
        vec![],
        vec![dept(7, Some("Research"), Some(1))],
    ));
    assert_eq!(renamed.group_updates.len(), 1);
    assert_eq!(
        renamed.group_updates[0].changes,
        [change("display_name", text("R&D"), text("Research"))]
    );

    let gone = plan(targeted(&state, targets(&[], &[7]), vec![], vec![]));
    assert_eq!(
        gone.notices,
        [Notice::DepartmentGone {
            dept_id: "7".into(),
            group: "7".into()
        }]
    );
    assert!(!gone.has_writes(), "{gone:#?}");
}
