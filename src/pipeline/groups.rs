//! DingTalk departments → Casdoor groups, and department memberships of users.
//!
//! Groups follow Casdoor's tree semantics: name = department id, the root's parent is
//! the organization and only it is a top group. Memberships live in two places that must agree:
//! `user.groups` (a JSON list of `"<org>/<group>"`) and casbin `g` rows. Only groups this syncer
//! owns are managed; every other membership is left exactly as it is.

use std::collections::{BTreeMap, BTreeSet};

use crate::dingtalk::Targets;
use crate::dingtalk::types::Department;

use super::columns::FieldValue;
use super::hash::ContentHash;
use super::model::{
    CasbinGrouping, Conflict, ExistingGroup, FieldChange, ForeignClaim, GroupCreate, GroupUpdate,
    LinkKind, LinkState, Notice, OwnershipLink,
};

/// `group.type` of the groups syncerd makes from departments.
pub const DEPARTMENT_GROUP_TYPE: &str = "department";

/// Casbin's VARCHAR(100) limit on `v0`/`v1`.
const CASBIN_VALUE_MAX_CHARS: usize = 100;
/// `group.display_name` is VARCHAR(100).
const GROUP_DISPLAY_NAME_MAX_CHARS: usize = 100;

/// A department group as it should be.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DesiredGroup {
    pub dept_id: i64,
    pub name: String,
    pub display_name: String,
    pub parent_id: String,
    pub is_top_group: bool,
}

/// The group part of a plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupPlan {
    pub creates: Vec<GroupCreate>,
    pub updates: Vec<GroupUpdate>,
    pub conflicts: Vec<Conflict>,
    pub notices: Vec<Notice>,
    pub link_writes: Vec<OwnershipLink>,
    /// Group names whose memberships this syncer keeps: owned, created or adopted in this plan.
    pub managed: BTreeSet<String>,
}

/// What the group stage needs from the plan input.
pub struct GroupInput<'a> {
    pub organization: &'a str,
    pub root_display_name: &'a str,
    pub departments: &'a [Department],
    pub directory_complete: bool,
    pub existing_groups: &'a [ExistingGroup],
    pub links: &'a [OwnershipLink],
    pub foreign_claims: &'a [ForeignClaim],
    pub group_names_in_other_orgs: &'a BTreeSet<String>,
    /// Casdoor's organization names: no group may be named like one.
    pub organization_names: &'a BTreeSet<String>,
    pub adopt_existing: bool,
    pub now: &'a str,
    /// A targeted run's targets (`None` in a full run): `departments` holds only the targets
    /// found, and only a target can be reported gone.
    pub scope: Option<&'a Targets>,
}

/// The tree of groups the departments describe, sorted by department id. A department whose
/// parent is not in the directory becomes a top group (so the Casdoor tree view shows it).
pub fn desired_groups(
    organization: &str,
    root_display_name: &str,
    departments: &[Department],
) -> (Vec<DesiredGroup>, Vec<Notice>) {
    desired_groups_beside(
        organization,
        root_display_name,
        departments,
        &BTreeSet::new(),
    )
}

/// [`desired_groups`] when `departments` is not the whole tree (a targeted run): a parent among
/// `known_parents` (departments that have a group already) exists as well, so its child keeps
/// its place under it instead of becoming a top group.
fn desired_groups_beside(
    organization: &str,
    root_display_name: &str,
    departments: &[Department],
    known_parents: &BTreeSet<i64>,
) -> (Vec<DesiredGroup>, Vec<Notice>) {
    let mut by_id: BTreeMap<i64, &Department> = BTreeMap::new();
    for d in departments {
        by_id.entry(d.dept_id).or_insert(d);
    }
    let mut notices = Vec::new();
    let groups = by_id
        .values()
        .map(|d| {
            let parent = d.parent_id.filter(|p| {
                (by_id.contains_key(p) || known_parents.contains(p)) && *p != d.dept_id
            });
            let display_name = match (d.parent_id, d.name.as_deref().map(str::trim)) {
                // The root is named as in DingTalk (as Casdoor names it), else after the org.
                (None, Some(name)) if !name.is_empty() => name.to_owned(),
                (None, _) => root_display_name.to_owned(),
                (Some(_), Some(name)) if !name.is_empty() => name.to_owned(),
                (Some(_), _) => {
                    notices.push(Notice::DepartmentUnnamed { dept_id: d.dept_id });
                    d.dept_id.to_string()
                }
            };
            DesiredGroup {
                dept_id: d.dept_id,
                name: d.dept_id.to_string(),
                display_name,
                parent_id: parent.map_or_else(|| organization.to_owned(), |p| p.to_string()),
                is_top_group: parent.is_none(),
            }
        })
        .collect();
    (groups, notices)
}

/// A root department whose name DingTalk did not give this run (its `department/get` failed)
/// keeps the display name its group already has, so one failed call never renames the root
/// group back and forth between runs. A new group still takes the organization's name.
fn keep_unfetched_root_names(
    desired: &mut [DesiredGroup],
    departments: &[Department],
    existing: &BTreeMap<&str, &ExistingGroup>,
) {
    let unnamed_roots: BTreeSet<i64> = departments
        .iter()
        .filter(|d| d.parent_id.is_none() && d.name.as_deref().is_none_or(|n| n.trim().is_empty()))
        .map(|d| d.dept_id)
        .collect();
    for group in desired
        .iter_mut()
        .filter(|g| unnamed_roots.contains(&g.dept_id))
    {
        if let Some(row) = existing.get(group.name.as_str()) {
            group.display_name.clone_from(&row.display_name);
        }
    }
}

/// Decides creates, updates, adoptions and conflicts for department groups.
pub fn plan_groups(input: &GroupInput<'_>) -> GroupPlan {
    let org = input.organization;
    let mut out = GroupPlan::default();
    let existing: BTreeMap<&str, &ExistingGroup> = input
        .existing_groups
        .iter()
        .filter(|g| g.owner == org)
        .map(|g| (g.name.as_str(), g))
        .collect();
    // A targeted run sees only some departments: the others it knows by their groups.
    let known_parents: BTreeSet<i64> = match input.scope {
        Some(_) => existing.keys().filter_map(|n| n.parse().ok()).collect(),
        None => BTreeSet::new(),
    };
    let (mut desired, notices) = desired_groups_beside(
        org,
        input.root_display_name,
        input.departments,
        &known_parents,
    );
    out.notices.extend(notices);

    keep_unfetched_root_names(&mut desired, input.departments, &existing);
    let (own_links, own_by_dept) = OwnershipLink::of_kind(input.links, LinkKind::Group);
    let owned_names: BTreeSet<&str> = own_links.iter().map(|l| l.casdoor_name.as_str()).collect();
    let foreign = ForeignClaim::owners(input.foreign_claims, LinkKind::Group);
    // Every group this syncer already owns keeps managed memberships, even when its department
    // is gone (members are then removed from it after a complete fetch).
    out.managed
        .extend(owned_names.iter().map(|n| (*n).to_owned()));

    for g in &desired {
        if g.display_name.chars().count() > GROUP_DISPLAY_NAME_MAX_CHARS
            || g.display_name.contains('\0')
        {
            out.conflicts
                .push(Conflict::GroupDisplayNameUnusable { dept_id: g.dept_id });
            continue;
        }
        let dept = g.name.as_str();
        let decision = match existing.get(dept) {
            None => new_group(g, input).map(|create| out.creates.push(create)),
            Some(current) => {
                let owned = owned_names.contains(dept);
                take_group(g, current, owned, &foreign, input.adopt_existing)
                    .map(|adopted| out.updates.extend(group_update(current, g, adopted)))
            }
        };
        if let Err(conflict) = decision {
            out.conflicts.push(conflict);
            continue;
        }
        out.managed.insert(g.name.clone());
        let link = OwnershipLink {
            kind: LinkKind::Group,
            external_id: dept.to_owned(),
            casdoor_name: g.name.clone(),
            content_hash: ContentHash::Empty,
            state: LinkState::Present,
            left_action: None,
            row: None,
            adopted: false,
        };
        if own_by_dept.get(dept).is_none_or(|l| **l != link) {
            out.link_writes.push(link);
        }
    }

    if input.directory_complete {
        let desired_depts: BTreeSet<String> =
            desired.iter().map(|g| g.dept_id.to_string()).collect();
        // A targeted run speaks only for its target departments (60003: gone). As in a full
        // run the group is kept and stays managed; its members leave it as their own records
        // are synced (their events, or the next full run).
        let in_scope = |dept: &str| input.scope.is_none_or(|s| s.has_department(dept));
        for link in own_by_dept.values() {
            if !desired_depts.contains(&link.external_id) && in_scope(&link.external_id) {
                out.notices.push(Notice::DepartmentGone {
                    dept_id: link.external_id.clone(),
                    group: link.casdoor_name.clone(),
                });
            }
        }
    }
    out
}

/// The group to create for a department no group is named after, unless the name is refused:
/// it is an organization's, or (under Casdoor's global unique index) another organization's
/// group's.
fn new_group(g: &DesiredGroup, input: &GroupInput<'_>) -> Result<GroupCreate, Conflict> {
    let (dept_id, group) = (g.dept_id, g.name.clone());
    if input.organization_names.contains(&g.name) {
        return Err(Conflict::GroupNameIsOrganization { dept_id, group });
    }
    if input.group_names_in_other_orgs.contains(&g.name) {
        return Err(Conflict::GroupNameUsedByAnotherOrg { dept_id, group });
    }
    Ok(GroupCreate {
        dept_id,
        name: group,
        display_name: g.display_name.clone(),
        parent_id: g.parent_id.clone(),
        is_top_group: g.is_top_group,
        created_time: input.now.to_owned(),
    })
}

/// Whether the existing group named after a department is this syncer's to manage: owned
/// (`Ok(false)`), adopted (`Ok(true)`: an unowned department group while adoption is on), or a
/// conflict naming why not.
fn take_group(
    g: &DesiredGroup,
    current: &ExistingGroup,
    owned: bool,
    foreign: &BTreeMap<&str, &str>,
    adopt_existing: bool,
) -> Result<bool, Conflict> {
    let (dept_id, group) = (g.dept_id, g.name.clone());
    if owned {
        Ok(false)
    } else if let Some(syncer) = foreign.get(g.name.as_str()) {
        Err(Conflict::GroupOwnedByAnotherSyncer {
            dept_id,
            group,
            syncer: (*syncer).to_owned(),
        })
    } else if current.group_type != DEPARTMENT_GROUP_TYPE {
        Err(Conflict::GroupNotDepartment {
            dept_id,
            group,
            found_type: current.group_type.clone(),
        })
    } else if !adopt_existing {
        Err(Conflict::GroupNotOwned { dept_id, group })
    } else {
        Ok(true)
    }
}

/// The update of a managed group whose `display_name`, `parent_id` or `is_top_group` differ
/// from its department's; an adopted group gets one even without changes.
fn group_update(current: &ExistingGroup, g: &DesiredGroup, adopted: bool) -> Option<GroupUpdate> {
    let mut changes: Vec<FieldChange> = [
        (
            "display_name",
            FieldValue::Text(current.display_name.clone()),
            FieldValue::Text(g.display_name.clone()),
        ),
        (
            "parent_id",
            FieldValue::Text(current.parent_id.clone()),
            FieldValue::Text(g.parent_id.clone()),
        ),
        (
            "is_top_group",
            FieldValue::Bool(current.is_top_group),
            FieldValue::Bool(g.is_top_group),
        ),
    ]
    .into_iter()
    .filter(|(_, old, new)| old != new)
    .map(|(column, old, new)| FieldChange {
        column: column.to_owned(),
        old,
        new,
    })
    .collect();
    changes.sort();
    (!changes.is_empty() || adopted).then(|| GroupUpdate {
        dept_id: g.dept_id,
        name: g.name.clone(),
        changes,
        adopted,
    })
}

/// Why the memberships of one user are left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipProblem {
    /// `user.groups` holds something other than a JSON list of strings.
    GroupsNotAList,
    /// `"<org>/<user>"` or `"group:<org>/<group>"` exceeds casbin's 100 characters.
    TooLongForCasbin,
}

/// Membership writes for one user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipDiff {
    /// New `user.groups` JSON, when it changes.
    pub groups_json: Option<String>,
    pub casbin_add: Vec<CasbinGrouping>,
    pub casbin_remove: Vec<CasbinGrouping>,
}

/// `user.groups` as a list; NULL, `''` and `null` are the empty list.
pub fn parse_groups(text: Option<&str>) -> Option<Vec<String>> {
    match text.map(str::trim) {
        None | Some("") | Some("null") => Some(Vec::new()),
        Some(t) => serde_json::from_str::<Vec<String>>(t).ok(),
    }
}

/// JSON text of a string list the way Go's `encoding/json` writes it (HTML characters escaped),
/// so Casdoor reads back exactly what it would have written.
pub fn encode_groups(groups: &[String]) -> String {
    let mut out = String::from("[");
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for ch in g.chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                    out.push_str(&format!("\\u{:04x}", u32::from(ch)));
                }
                c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

/// The membership writes that bring one user in line with its departments.
///
/// `current_rules` are the `v1` values of the user's casbin `g` rows. Only `managed` groups are
/// added or removed; other entries keep their place. A legacy bare entry (`"5823"`, written by
/// Casdoor before 2026-08-11) of a managed group is replaced by its full form. With
/// `remove_stale = false` (incomplete directory) nothing is removed.
pub fn plan_membership(
    organization: &str,
    user_name: &str,
    current_groups: Option<&str>,
    current_rules: &BTreeSet<&str>,
    departments: &[i64],
    managed: &BTreeSet<String>,
    remove_stale: bool,
) -> Result<MembershipDiff, MembershipProblem> {
    let desired: BTreeSet<String> = departments
        .iter()
        .map(i64::to_string)
        .filter(|g| managed.contains(g))
        .collect();
    let current = parse_groups(current_groups).ok_or(MembershipProblem::GroupsNotAList)?;
    let v0 = format!("{organization}/{user_name}");
    let rule = |g: &str| format!("group:{organization}/{g}");
    if !desired.is_empty()
        && (v0.chars().count() > CASBIN_VALUE_MAX_CHARS
            || desired
                .iter()
                .any(|g| rule(g).chars().count() > CASBIN_VALUE_MAX_CHARS))
    {
        return Err(MembershipProblem::TooLongForCasbin);
    }

    let prefix = format!("{organization}/");
    let managed_group_of = |entry: &str| -> Option<String> {
        let bare = entry.strip_prefix(&prefix).unwrap_or(entry);
        managed.contains(bare).then(|| bare.to_owned())
    };
    let mut kept = Vec::with_capacity(current.len());
    let mut present_full: BTreeSet<String> = BTreeSet::new();
    let mut changed = false;
    for entry in &current {
        match managed_group_of(entry) {
            None => kept.push(entry.clone()),
            Some(g) => {
                let is_full = entry.starts_with(&prefix);
                let wanted = desired.contains(&g);
                let keep = if is_full {
                    (wanted || !remove_stale) && present_full.insert(g.clone())
                } else {
                    !wanted && !remove_stale
                };
                if keep {
                    kept.push(entry.clone());
                } else {
                    // A removal, a duplicate, or a legacy entry replaced by its full form.
                    changed = true;
                }
            }
        }
    }
    for g in &desired {
        if !present_full.contains(g) {
            kept.push(format!("{prefix}{g}"));
            changed = true;
        }
    }

    let mut diff = MembershipDiff {
        groups_json: changed.then(|| encode_groups(&kept)),
        ..MembershipDiff::default()
    };
    for g in &desired {
        let v1 = rule(g);
        if !current_rules.contains(v1.as_str()) {
            diff.casbin_add.push(CasbinGrouping { v0: v0.clone(), v1 });
        }
    }
    if remove_stale {
        for v1 in current_rules {
            let group = v1
                .strip_prefix("group:")
                .and_then(|r| r.strip_prefix(&prefix));
            if let Some(g) = group
                && managed.contains(g)
                && !desired.contains(g)
            {
                diff.casbin_remove.push(CasbinGrouping {
                    v0: v0.clone(),
                    v1: (*v1).to_owned(),
                });
            }
        }
    }
    Ok(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dept(id: i64, name: Option<&str>, parent: Option<i64>) -> Department {
        Department {
            dept_id: id,
            name: name.map(str::to_owned),
            parent_id: parent,
        }
    }

    fn managed(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn departments_become_a_tree_rooted_at_the_organization() {
        let (groups, notices) = desired_groups(
            "acme",
            "Acme Inc",
            &[
                dept(1, None, None),
                dept(7, Some("研发"), Some(1)),
                dept(9, Some("Backend"), Some(7)),
                dept(12, Some("Orphan"), Some(404)),
            ],
        );
        assert!(notices.is_empty());
        let view: Vec<_> = groups
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
                ("1", "Acme Inc", "acme", true),
                ("7", "研发", "1", false),
                ("9", "Backend", "7", false),
                ("12", "Orphan", "acme", true),
            ]
        );
    }

    #[test]
    fn a_root_dingtalk_did_not_name_this_run_keeps_its_groups_display_name() {
        let departments = [dept(1, None, None), dept(7, Some("研发"), Some(1))];
        let (mut groups, _) = desired_groups("acme", "Acme Inc", &departments);
        let row = |name: &str, display: &str| ExistingGroup {
            owner: "acme".into(),
            name: name.into(),
            display_name: display.into(),
            parent_id: "acme".into(),
            is_top_group: true,
            group_type: "Virtual".into(),
        };
        let (root, dept7) = (row("1", "钉钉根部门"), row("7", "Old name"));
        let existing: BTreeMap<&str, &ExistingGroup> = [("1", &root), ("7", &dept7)].into();
        keep_unfetched_root_names(&mut groups, &departments, &existing);
        assert_eq!(groups[0].display_name, "钉钉根部门");
        // Named departments still follow DingTalk.
        assert_eq!(groups[1].display_name, "研发");
        // A root DingTalk named this run follows DingTalk.
        let named = [dept(1, Some("Acme 钉钉"), None)];
        let (mut groups, _) = desired_groups("acme", "Acme Inc", &named);
        keep_unfetched_root_names(&mut groups, &named, &existing);
        assert_eq!(groups[0].display_name, "Acme 钉钉");
        // No group yet: the organization's name.
        let (mut groups, _) = desired_groups("acme", "Acme Inc", &departments);
        keep_unfetched_root_names(&mut groups, &departments, &BTreeMap::new());
        assert_eq!(groups[0].display_name, "Acme Inc");
    }

    #[test]
    fn an_unnamed_department_is_named_by_its_id_with_a_notice() {
        let (groups, notices) = desired_groups(
            "acme",
            "Acme",
            &[dept(1, None, None), dept(5, None, Some(1))],
        );
        assert_eq!(groups[1].display_name, "5");
        assert_eq!(notices, [Notice::DepartmentUnnamed { dept_id: 5 }]);
    }

    #[test]
    fn groups_json_is_written_as_go_writes_it() {
        let groups = vec!["a&b/1".to_owned(), "x\"<y>".to_owned()];
        let text = encode_groups(&groups);
        assert_eq!(text, r#"["a\u0026b/1","x\"\u003cy\u003e"]"#);
        assert_eq!(parse_groups(Some(&text)), Some(groups));
        assert_eq!(encode_groups(&[]), "[]");
        for empty in [None, Some(""), Some("null"), Some(" [] ")] {
            assert_eq!(parse_groups(empty), Some(vec![]));
        }
        assert_eq!(parse_groups(Some("{}")), None);
        assert_eq!(parse_groups(Some("[1]")), None);
    }

    #[test]
    fn manual_group_memberships_are_kept() {
        let rules: BTreeSet<&str> = ["group:acme/admins", "group:acme/1"].into();
        let diff = plan_membership(
            "acme",
            "alice",
            Some(r#"["acme/admins","acme/1"]"#),
            &rules,
            &[7],
            &managed(&["1", "7"]),
            true,
        )
        .unwrap();
        assert_eq!(
            diff.groups_json.as_deref(),
            Some(r#"["acme/admins","acme/7"]"#)
        );
        assert_eq!(
            diff.casbin_add,
            [CasbinGrouping {
                v0: "acme/alice".into(),
                v1: "group:acme/7".into()
            }]
        );
        assert_eq!(
            diff.casbin_remove,
            [CasbinGrouping {
                v0: "acme/alice".into(),
                v1: "group:acme/1".into()
            }]
        );
    }

    #[test]
    fn memberships_in_line_produce_no_write() {
        let rules: BTreeSet<&str> = ["group:acme/7", "group:acme/1"].into();
        let diff = plan_membership(
            "acme",
            "alice",
            Some(r#"["acme/7","acme/x","acme/1"]"#),
            &rules,
            &[1, 7, 999],
            &managed(&["1", "7"]),
            true,
        )
        .unwrap();
        assert_eq!(diff, MembershipDiff::default());
    }

    #[test]
    fn an_incomplete_directory_only_adds_memberships() {
        let rules: BTreeSet<&str> = ["group:acme/1"].into();
        let diff = plan_membership(
            "acme",
            "alice",
            Some(r#"["acme/1"]"#),
            &rules,
            &[7],
            &managed(&["1", "7"]),
            false,
        )
        .unwrap();
        assert_eq!(diff.groups_json.as_deref(), Some(r#"["acme/1","acme/7"]"#));
        assert!(diff.casbin_remove.is_empty());
    }

    #[test]
    fn legacy_bare_department_ids_are_replaced_by_full_group_ids() {
        let diff = plan_membership(
            "acme",
            "alice",
            Some(r#"["1","5823","other"]"#),
            &BTreeSet::new(),
            &[1],
            &managed(&["1", "5823"]),
            true,
        )
        .unwrap();
        assert_eq!(diff.groups_json.as_deref(), Some(r#"["other","acme/1"]"#));
    }

    #[test]
    fn unusable_groups_columns_and_overlong_casbin_values_leave_memberships_alone() {
        let problem = plan_membership(
            "acme",
            "alice",
            Some("not json"),
            &BTreeSet::new(),
            &[1],
            &managed(&["1"]),
            true,
        );
        assert_eq!(problem, Err(MembershipProblem::GroupsNotAList));
        let long = "n".repeat(100);
        let problem = plan_membership(
            "acme",
            &long,
            None,
            &BTreeSet::new(),
            &[1],
            &managed(&["1"]),
            true,
        );
        assert_eq!(problem, Err(MembershipProblem::TooLongForCasbin));
    }
}
