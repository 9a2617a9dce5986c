#![allow(clippy::unwrap_used, clippy::expect_used)]
//! plan(apply(plan)) writes nothing against a real SQLite database: generated directories (hostile
//! values, missing fields, duplicate userids, departments moved and users gone) run through the
//! real pipeline one after another, and after each run the state loaded back from the database
//! plans no write. The pure version of this property, over far more inputs, is in
//! `src/pipeline/plan/tests.rs`.

mod common;

use common::TestDb;
use common::directory;
use common::pipeline::{ORG, add_syncer, apply, context, run, sync_settings};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use syncerd::db::{Db, RunStatus, SyncerRow, get_syncer};
use syncerd::dingtalk::types::{Directory, User};
use syncerd::pipeline::plan::plan;
use syncerd::pipeline::{Plan, PlanInput, PlanOptions, load_state, map_directory};

/// Cases per property; `PROPTEST_CASES` overrides (each case migrates a fresh SQLite file).
const CASES: u32 = 24;

/// A mapping keyed on e-mail, a column the plan rewrites (the stock mapping's key `id` is not).
const KEYED_ON_EMAIL: &str = r#"[{"name":"userid","casdoorName":"Id","isHashed":true},
    {"name":"email","casdoorName":"Email","isKey":true,"isHashed":true},
    {"name":"job_number","casdoorName":"Name","isHashed":true},
    {"name":"name","casdoorName":"DisplayName","isHashed":true},
    {"name":"active","casdoorName":"IsForbidden","isHashed":true}]"#;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(CASES);
    Config {
        cases,
        ..Config::default()
    }
}

/// A DingTalk field a generated edit changes.
#[derive(Debug, Clone, Copy)]
enum Field {
    Name,
    JobNumber,
    Email,
    Mobile,
    Title,
    Active,
    Departments,
}

/// What the field becomes: absent, a hostile value, another user's value of the same field
/// (duplicate names, e-mail addresses, job numbers), or a new value while the old one is handed
/// on to another user (an address given to a new hire).
#[derive(Debug, Clone)]
enum NewValue {
    Absent,
    Text(&'static str),
    Long(usize),
    CopyOf(Index),
    HandOnTo(Index),
}

#[derive(Debug, Clone)]
struct Edit {
    user: Index,
    field: Field,
    value: NewValue,
}

#[derive(Debug, Clone)]
struct Scenario {
    users: usize,
    departments: usize,
    keyed_on_email: bool,
    /// The directory of the first run: the generated one with these edits and repeated records.
    first: Vec<Edit>,
    repeated: Vec<Index>,
    /// The second run's directory: the first with users who joined, these edits, without these
    /// users, maybe incomplete.
    joined: usize,
    second: Vec<Edit>,
    gone: Vec<Index>,
    second_complete: bool,
}

fn edit() -> impl Strategy<Value = Edit> {
    let field = prop::sample::select(vec![
        Field::Name,
        Field::JobNumber,
        Field::Email,
        Field::Mobile,
        Field::Title,
        Field::Active,
        Field::Departments,
    ]);
    let value = prop_oneof![
        1 => Just(NewValue::Absent),
        2 => prop::sample::select(vec![
            "",
            "  padded  ",
            "👩‍💻🚀",
            "مرحبا بالعالم",
            "a\0b",
            "a/b",
            "Bob",
            "bob",
        ])
        .prop_map(NewValue::Text),
        1 => prop::sample::select(vec![99, 100, 101, 255, 256, 600]).prop_map(NewValue::Long),
        2 => any::<Index>().prop_map(NewValue::CopyOf),
        2 => any::<Index>().prop_map(NewValue::HandOnTo),
    ];
    (any::<Index>(), field, value).prop_map(|(user, field, value)| Edit { user, field, value })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        1..10_usize,
        0..5_usize,
        any::<bool>(),
        prop::collection::vec(edit(), 0..6),
        prop::collection::vec(any::<Index>(), 0..2),
        0..3_usize,
        prop::collection::vec(edit(), 0..6),
        prop::collection::vec(any::<Index>(), 0..3),
        prop::bool::weighted(0.8),
    )
        .prop_map(
            |(
                users,
                departments,
                keyed_on_email,
                first,
                repeated,
                joined,
                second,
                gone,
                complete,
            )| {
                Scenario {
                    users,
                    departments,
                    keyed_on_email,
                    first,
                    repeated,
                    joined,
                    second,
                    gone,
                    second_complete: complete,
                }
            },
        )
}

fn text_field(user: &mut User, field: Field) -> Option<&mut Option<String>> {
    match field {
        Field::Name => Some(&mut user.name),
        Field::JobNumber => Some(&mut user.job_number),
        Field::Email => Some(&mut user.email),
        Field::Mobile => Some(&mut user.mobile),
        Field::Title => Some(&mut user.title),
        Field::Active | Field::Departments => None,
    }
}

fn apply_edits(directory: &mut Directory, edits: &[Edit]) {
    let ids: Vec<i64> = directory.departments.iter().map(|d| d.dept_id).collect();
    for e in edits {
        if directory.users.is_empty() {
            return;
        }
        let len = directory.users.len();
        let i = e.user.index(len);
        let copied = match &e.value {
            NewValue::CopyOf(other) => {
                let other = &mut directory.users[other.index(len)].profile;
                text_field(other, e.field).and_then(|v| v.clone())
            }
            NewValue::HandOnTo(other) => {
                let old =
                    text_field(&mut directory.users[i].profile, e.field).and_then(|v| v.clone());
                if let Some(slot) =
                    text_field(&mut directory.users[other.index(len)].profile, e.field)
                {
                    *slot = old.clone();
                }
                old.map(|v| format!("{v}.new"))
            }
            _ => None,
        };
        let user = &mut directory.users[i];
        match e.field {
            Field::Active => user.profile.active = user.profile.active.map(|a| !a),
            Field::Departments => {
                // Moved to another department (and listed there).
                let to = ids[(i + ids.len() / 2 + 1) % ids.len()];
                user.profile.dept_id_list = Some(vec![to]);
                user.seen_in = vec![to];
            }
            field => {
                let new = match &e.value {
                    NewValue::Absent => None,
                    NewValue::Text(t) => Some((*t).to_owned()),
                    NewValue::Long(n) => Some("长".repeat(*n)),
                    NewValue::CopyOf(_) | NewValue::HandOnTo(_) => copied,
                };
                if let Some(slot) = text_field(&mut user.profile, field) {
                    *slot = new;
                }
            }
        }
    }
}

fn directories(s: &Scenario) -> [Directory; 2] {
    let mut first = directory::directory(s.users, s.departments);
    apply_edits(&mut first, &s.first);
    // The same record listed twice (a user in two departments, or across pages).
    for r in &s.repeated {
        let again = first.users[r.index(first.users.len())].clone();
        first.users.push(again);
    }
    let mut second = first.clone();
    let ids: Vec<i64> = second.departments.iter().map(|d| d.dept_id).collect();
    for k in 0..s.joined {
        second.users.push(directory::user(s.users + k, &ids));
    }
    apply_edits(&mut second, &s.second);
    for g in &s.gone {
        if !second.users.is_empty() {
            let i = g.index(second.users.len());
            second.users.remove(i);
        }
    }
    second.complete = s.second_complete;
    if !s.second_complete {
        second
            .incomplete_reasons
            .push("department 100: errcode 60003".to_owned());
    }
    [first, second]
}

/// What the next run would write, planned from the database as `run_once` plans it.
async fn plan_from_database(db: &Db, syncer: &SyncerRow, directory: &Directory) -> Plan {
    let mapping = syncer.validate().unwrap().mapping().clone();
    let (users, record_errors) = map_directory(directory.users.clone(), &mapping);
    let state = load_state(db, ORG, &syncer.name, &mapping).await.unwrap();
    plan(PlanInput {
        organization: ORG.to_owned(),
        root_group_display_name: state.root_group_display_name,
        syncer: syncer.name.clone(),
        key_column: mapping.key_column().to_owned(),
        users,
        record_errors,
        departments: directory.departments.clone(),
        directory_complete: directory.complete,
        existing_users: state.existing_users,
        links: state.links,
        foreign_claims: state.foreign_claims,
        existing_groups: state.existing_groups,
        group_names_in_other_orgs: state.group_names_in_other_orgs,
        organization_names: state.organization_names,
        casbin_groupings: state.casbin_groupings,
        options: PlanOptions::from_settings(&sync_settings(4), false, false),
        now: "2026-11-25T10:00:00+08:00".to_owned(),
        scope: None,
    })
}

async fn check_scenario(s: &Scenario) -> Result<(), TestCaseError> {
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    let mut syncer = add_syncer(&db).await;
    if s.keyed_on_email {
        t.execute(
            &db,
            &format!(
                "UPDATE syncer SET table_columns = '{KEYED_ON_EMAIL}' WHERE name = '{}'",
                syncer.name
            ),
        )
        .await;
        syncer = get_syncer(&db, &syncer.name).await.unwrap().unwrap();
    }
    // Small batches, so that several transactions make up one apply.
    let ctx = context(&db, sync_settings(4));
    for (n, directory) in directories(s).iter().enumerate() {
        let report = run(&ctx, &syncer, directory, apply()).await;
        prop_assert!(
            matches!(
                report.status,
                RunStatus::Succeeded | RunStatus::Partial | RunStatus::Held
            ),
            "run {}: {}",
            n + 1,
            report.render_text()
        );
        prop_assert_eq!(
            report.counts.rows_rejected,
            0,
            "run {}: the database rejected rows the plan wrote: {}",
            n + 1,
            report.render_text()
        );
        let again = plan_from_database(&db, &syncer, directory).await;
        prop_assert!(
            !again.has_writes(),
            "after run {} the same directory plans writes: {:#?}",
            n + 1,
            again
        );
    }
    t.cleanup().await;
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_run_leaves_the_database_where_the_next_plan_writes_nothing(s in scenario()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(check_scenario(&s))?;
    }
}
