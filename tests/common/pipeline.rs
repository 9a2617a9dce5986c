//! Helpers for the pipeline suites: a syncer row with a distinctive App Secret, run contexts
//! and options, and small queries.

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Statement};
use syncerd::config::{LeaverPolicy, SyncSettings};
use syncerd::db::entities::user;
use syncerd::db::{self, Db, NewSyncer, RunMode, RunTrigger, SyncerRow};
use syncerd::dingtalk::types::Directory;
use syncerd::pipeline::{RunContext, RunOptions, RunReport, run_with_directory};
use syncerd::secret::Secret;

use super::TestDb;

/// The App Secret of every test syncer: distinctive, so a leak is found by a plain search.
pub const SECRET: &str = "AppSecret-Zq9x-秘密-7f3e2a";
pub const ORG: &str = "acme";
pub const SYNCER: &str = "dingtalk_acme";

/// Every table a run may touch.
pub const ALL_TABLES: [&str; 7] = [
    "syncer",
    "user",
    "group",
    "casbin_user_rule",
    "syncer_run",
    "syncer_link",
    "syncer_lease",
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

/// Adds the stock DingTalk syncer `SYNCER` for `ORG` and returns its row.
pub async fn add_syncer(db: &Db) -> SyncerRow {
    add_named_syncer(db, SYNCER, ORG).await
}

pub async fn add_named_syncer(db: &Db, name: &str, organization: &str) -> SyncerRow {
    init_test_log();
    db::add_syncer(
        db,
        NewSyncer {
            name: name.to_owned(),
            organization: organization.to_owned(),
            app_key: "dingappkey-test".to_owned(),
            app_secret: Secret::new(SECRET),
            sync_interval: 600,
            enabled: true,
        },
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
