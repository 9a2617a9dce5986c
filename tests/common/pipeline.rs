//! Helpers for the pipeline suites: a syncer row with a distinctive App Secret, run contexts
//! and options, and small queries.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, Statement};
use syncerd::config::{LeaverPolicy, SyncSettings};
use syncerd::db::entities::{casbin_user_rule, group, syncer_link, user};
use syncerd::db::{self, Db, NewSyncer, RunMode, RunStatus, RunTrigger, SyncerRow};
use syncerd::dingtalk::types::Directory;
use syncerd::pipeline::{RunContext, RunOptions, RunReport, run_with_directory};
use syncerd::secret::Secret;

use super::TestDb;

/// The App Secret of every test syncer: distinctive, so a leak is found by a plain search.
pub const SECRET: &str = "AppSecret-Zq9x-秘密-7f3e2a";
pub const ORG: &str = "acme";
pub const SYNCER: &str = "dingtalk_acme";

/// Every table a run may touch.
pub const ALL_TABLES: [&str; 9] = [
    "syncer",
    "user",
    "group",
    "casbin_user_rule",
    "syncer_run",
    "syncer_link",
    "syncer_lease",
    "syncer_event",
    "syncer_change",
];

/// Logs to stderr when `TEST_LOG` is set (its value is the filter, e.g. `debug`).
pub fn init_test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if let Ok(filter) = std::env::var("TEST_LOG") {
        ONCE.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        });
    }
}

/// Adds the DingTalk syncer `SYNCER` for `ORG` with Casdoor's UI mapping (names from the
/// unionid, as these suites were written against) and returns its row.
pub async fn add_syncer(db: &Db) -> SyncerRow {
    add_named_syncer(db, SYNCER, ORG).await
}

/// A syncer with Casdoor's UI mapping (names from the unionid).
pub async fn add_named_syncer(db: &Db, name: &str, organization: &str) -> SyncerRow {
    add_syncer_named_from(db, name, organization, db::NameFrom::Unionid).await
}

/// A syncer whose users are named from `name_from`.
pub async fn add_syncer_named_from(
    db: &Db,
    name: &str,
    organization: &str,
    name_from: db::NameFrom,
) -> SyncerRow {
    init_test_log();
    db::add_syncer_named_from(
        db,
        NewSyncer {
            name: name.to_owned(),
            organization: organization.to_owned(),
            app_key: "dingappkey-test".to_owned(),
            app_secret: Secret::new(SECRET),
            sync_interval: 600,
            enabled: true,
        },
        name_from,
    )
    .await
    .expect("add syncer");
    db::get_syncer(db, name)
        .await
        .expect("read syncer")
        .expect("syncer exists")
}

/// Sync settings with `batch_size` and generous removal limits.
pub fn sync_settings(batch_size: usize) -> SyncSettings {
    SyncSettings {
        batch_size,
        leaver_policy: LeaverPolicy::Forbid,
        max_removals: 100,
        max_removal_percent: 50.0,
        adopt_existing: false,
        adopt_only: Vec::new(),
        // Existing tests judge holds on the percentage alone.
        min_removals_allowed: 0,
        ..SyncSettings::default()
    }
}

pub fn context(db: &Db, sync: SyncSettings) -> RunContext {
    RunContext {
        db: db.clone(),
        sync,
        instance: "test-host:4242".to_owned(),
    }
}

pub fn apply() -> RunOptions {
    RunOptions::new(RunTrigger::Cli, RunMode::Apply)
}

pub fn dry_run() -> RunOptions {
    RunOptions::new(RunTrigger::Cli, RunMode::DryRun)
}

/// Runs `syncer` on an already fetched directory.
pub async fn run(
    ctx: &RunContext,
    syncer: &SyncerRow,
    directory: &Directory,
    opts: RunOptions,
) -> RunReport {
    run_with_directory(ctx, syncer, Ok::<_, String>(directory.clone()), opts).await
}

/// `SELECT COUNT(*) ...` as a number.
pub async fn count(t: &TestDb, db: &Db, sql: &str) -> i64 {
    let row = db
        .conn()
        .query_one_raw(Statement::from_string(t.backend(), sql.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{}: `{sql}`: {e}", t.label()))
        .expect("one row");
    row.try_get_by_index::<i64>(0)
        .unwrap_or_else(|e| panic!("{}: `{sql}`: {e}", t.label()))
}

/// Rows of a table.
pub async fn rows(t: &TestDb, db: &Db, table: &str) -> i64 {
    count(t, db, &format!("SELECT COUNT(*) FROM {}", t.quote(table))).await
}

/// The user `name` of `ORG`.
pub async fn user_row(db: &Db, name: &str) -> Option<user::Model> {
    user::Entity::find()
        .filter(user::Column::Owner.eq(ORG))
        .filter(user::Column::Name.eq(name))
        .one(db.conn())
        .await
        .expect("read user")
}

/// Every user of `ORG`, by name.
pub async fn users(db: &Db) -> Vec<user::Model> {
    let mut all = user::Entity::find()
        .filter(user::Column::Owner.eq(ORG))
        .all(db.conn())
        .await
        .expect("read users");
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// A constraint the plan cannot know about: unique e-mail addresses, with an unowned user
/// (`outsider`, id `x1`) already holding `email`, so the DingTalk user with that address is
/// rejected by the database.
pub async fn unique_email_taken_by_outsider(t: &TestDb, db: &Db, email: &str) {
    let table = t.quote("user");
    t.execute(
        db,
        &format!("CREATE UNIQUE INDEX ux_user_email ON {table} (email)"),
    )
    .await;
    t.execute(
        db,
        &format!("INSERT INTO {table} (owner, name, id, email) VALUES ('{ORG}', 'outsider', 'x1', '{email}')"),
    )
    .await;
}

/// What a first import into `ORG` left behind, checked unit by unit as apply writes them: every
/// user row came with its ownership link and exactly the casbin `g` rows its `groups` JSON
/// names, every group named exists with its link, and nothing else is there. With `batch`, the
/// units written (groups, then users) also fill whole batches. Returns (users, groups).
pub async fn assert_whole(t: &TestDb, db: &Db, batch: Option<u64>) -> (u64, u64) {
    let label = t.label();
    let users = users(db).await;
    let groups: BTreeSet<String> = group::Entity::find()
        .select_only()
        .column(group::Column::Name)
        .filter(group::Column::Owner.eq(ORG))
        .into_tuple()
        .all(db.conn())
        .await
        .expect("read groups")
        .into_iter()
        .collect();
    let links: Vec<(String, String)> = syncer_link::Entity::find()
        .select_only()
        .column(syncer_link::Column::Kind)
        .column(syncer_link::Column::CasdoorName)
        .filter(syncer_link::Column::Organization.eq(ORG))
        .into_tuple()
        .all(db.conn())
        .await
        .expect("read links");
    let linked = |kind: &str| -> BTreeSet<String> {
        links
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, name)| name.clone())
            .collect()
    };
    let rules: Vec<(String, String)> = casbin_user_rule::Entity::find()
        .select_only()
        .column(casbin_user_rule::Column::V0)
        .column(casbin_user_rule::Column::V1)
        .filter(casbin_user_rule::Column::Ptype.eq("g"))
        .into_tuple()
        .all(db.conn())
        .await
        .expect("read casbin rules");
    let mut rules_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (v0, v1) in rules {
        rules_of.entry(v0).or_default().insert(v1);
    }

    let names: BTreeSet<String> = users.iter().map(|u| u.name.clone()).collect();
    assert_eq!(names.len(), users.len(), "{label}: user names repeat");
    assert_eq!(
        linked("user"),
        names,
        "{label}: users without a link or links without a user"
    );
    assert_eq!(
        linked("group"),
        groups,
        "{label}: groups and their links differ"
    );
    assert_eq!(
        links.len(),
        users.len() + groups.len(),
        "{label}: links repeat"
    );
    for u in &users {
        let member_of: Vec<String> = serde_json::from_str(u.groups.as_deref().unwrap_or("[]"))
            .unwrap_or_else(|e| panic!("{label}: groups of {}: {e}", u.name));
        let expected: BTreeSet<String> = member_of.iter().map(|g| format!("group:{g}")).collect();
        let found = rules_of
            .remove(&format!("{ORG}/{}", u.name))
            .unwrap_or_default();
        assert_eq!(found, expected, "{label}: casbin rows of {}", u.name);
        for g in &member_of {
            let name = g.strip_prefix(&format!("{ORG}/")).unwrap_or(g);
            assert!(
                groups.contains(name),
                "{label}: {} is in a missing group {g}",
                u.name
            );
        }
    }
    assert!(
        rules_of.is_empty(),
        "{label}: casbin rows of no user: {rules_of:?}"
    );
    let (users, groups) = (users.len() as u64, groups.len() as u64);
    if let Some(batch) = batch {
        assert_eq!(
            (users + groups) % batch,
            0,
            "{label}: {groups} groups and {users} users are not whole batches of {batch}"
        );
    }
    (users, groups)
}

/// A migrated database holding the test syncer.
pub async fn setup(t: &TestDb) -> (Db, SyncerRow) {
    let db = t.migrated().await;
    let syncer = add_syncer(&db).await;
    (db, syncer)
}

/// Fails with the run's report when it did not end with `status`.
pub fn assert_status(t: &TestDb, report: &RunReport, status: RunStatus) {
    assert_eq!(
        report.status,
        status,
        "{}: {}",
        t.label(),
        report.render_text()
    );
}
