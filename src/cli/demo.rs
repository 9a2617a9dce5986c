//! `syncerd demo`: the whole product on one machine with nothing configured.
//!
//! A simulated DingTalk organization on a loopback port, a fresh SQLite file, one enabled
//! syncer, and the real daemon syncing it for a few cycles while the organization changes
//! between them (a hire, a leaver, a title change, a department move). Prints the run history
//! and a sample of the synced users and groups.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use syncerd::config::{DatabaseUrl, Settings};
use syncerd::daemon::{self, Control, ControlSource, DaemonOptions};
use syncerd::db::{self, Db, NewSyncer, RunFilter, RunStatus, RunTrigger};
use syncerd::dingtalk::User;
use syncerd::launch::{InstanceKind, instance_id};
use syncerd::simulator::{SimUser, Simulator, SimulatorConfig, SimulatorHandle, UserPatch};
use tokio::sync::mpsc;

use super::output::{one_line, table};

const SYNCER: &str = "demo-dingtalk";
const ORGANIZATION: &str = "demo";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Users in the simulated organization.
    #[arg(long, default_value_t = 300)]
    pub users: usize,
    /// Departments below the root.
    #[arg(long, default_value_t = 12)]
    pub departments: usize,
    /// Scheduled runs to watch (the organization changes before each run after the first).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub cycles: u32,
    /// Seconds between scheduled runs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub interval: u32,
    /// The SQLite file to create (must not exist yet); default: a new file under the system's
    /// temporary directory, kept afterwards so you can look at it.
    #[arg(long, value_name = "FILE")]
    pub database: Option<PathBuf>,
}

fn fresh_database(args: &DemoArgs) -> anyhow::Result<PathBuf> {
    let path = match &args.database {
        Some(path) => path.clone(),
        None => {
            let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
            let dir =
                std::env::temp_dir().join(format!("syncerd-demo-{stamp}-{}", std::process::id()));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.join("syncerd-demo.db")
        }
    };
    if path.exists() {
        bail!(
            "{} already exists; the demo wants a fresh file (remove it or pick another --database)",
            path.display()
        );
    }
    Ok(path)
}

/// Waits until the syncer has `count` finished runs, then returns the newest one's status.
async fn wait_for_runs(db: &Db, count: usize, limit: Duration) -> anyhow::Result<RunStatus> {
    let deadline = Instant::now() + limit;
    loop {
        let finished: Vec<_> = finished_runs(db)
            .await?
            .into_iter()
            .filter(|r| r.trigger != RunTrigger::Event)
            .collect();
        if finished.len() >= count {
            return Ok(finished[0].status);
        }
        if Instant::now() > deadline {
            bail!("run {count} did not finish within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The finished runs of the demo's syncer, newest first.
async fn finished_runs(db: &Db) -> anyhow::Result<Vec<db::RunRow>> {
    let runs = db::list_runs(
        db,
        &RunFilter {
            syncer: Some(SYNCER.to_owned()),
            limit: 100,
            ..Default::default()
        },
    )
    .await?;
    Ok(runs
        .into_iter()
        .filter(|r| r.status != RunStatus::Running)
        .collect())
}

/// The finished event runs of the demo's syncer, newest first.
async fn event_runs(db: &Db) -> anyhow::Result<Vec<db::RunRow>> {
    let mut runs = finished_runs(db).await?;
    runs.retain(|r| r.trigger == RunTrigger::Event);
    Ok(runs)
}

/// Waits a few seconds for an event run after a change and says how soon it landed; `None`
/// when none came (the interval run took the change first, or the change sent no event).
async fn wait_for_event_run(
    db: &Db,
    before: usize,
    changed_at: Instant,
) -> anyhow::Result<Option<String>> {
    let deadline = changed_at + Duration::from_secs(3);
    while Instant::now() < deadline {
        let runs = event_runs(db).await?;
        if runs.len() > before
            && let Some(run) = runs.first()
        {
            return Ok(Some(format!(
                "event run {}: {} {} ms after the change (DingTalk Stream; no wait for the interval)",
                run.id,
                run.status,
                changed_at.elapsed().as_millis()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

/// Changes the simulated organization before run `cycle` (1-based) and says what changed.
fn change_organization(sim: &SimulatorHandle, cycle: u32) -> anyhow::Result<String> {
    let org = sim.org();
    let pick = |i: usize| {
        org.users
            .get(i % org.users.len().max(1))
            .map(|u| u.profile.userid.clone())
    };
    Ok(match cycle % 4 {
        1 => {
            let dept = org.departments.last().map(|d| d.dept_id).unwrap_or(1);
            let userid = sim.add_user(SimUser {
                profile: User {
                    name: Some("新同事 Demo Hire".to_owned()),
                    title: Some("实习生".to_owned()),
                    email: Some("new.hire@demo.example".to_owned()),
                    job_number: Some(format!("H{cycle:04}")),
                    active: Some(true),
                    dept_id_list: Some(vec![dept]),
                    ..Default::default()
                },
                leader_in: Default::default(),
            })?;
            format!("DingTalk: hired {userid} into department {dept}")
        }
        2 => {
            let userid = pick(1).context("the simulated organization has no user")?;
            sim.remove_user(&userid)?;
            format!("DingTalk: {userid} left the company")
        }
        3 => {
            let userid = pick(2).context("the simulated organization has no user")?;
            sim.update_user(
                &userid,
                UserPatch {
                    title: Some("首席演示官 (Chief Demo Officer)".to_owned()),
                    ..Default::default()
                },
            )?;
            format!("DingTalk: {userid} got a new title")
        }
        _ => {
            let moved = org
                .departments
                .iter()
                .rev()
                .find(|d| d.parent_id.is_some_and(|p| p != 1));
            match moved {
                Some(d) => {
                    sim.move_department(d.dept_id, 1)?;
                    format!(
                        "DingTalk: department {} moved directly under the root",
                        d.dept_id
                    )
                }
                None => "DingTalk: no change this time".to_owned(),
            }
        }
    })
}

pub async fn run(base: &Settings, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let path = fresh_database(&args)?;
    let sim = Simulator::start(
        SimulatorConfig {
            users: args.users,
            departments: args.departments,
            ..Default::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let credentials = sim.credentials();

    let mut settings = base.clone();
    settings.database.url = DatabaseUrl::new(format!("sqlite://{}?mode=rwc", path.display()));
    // A fresh database of its own: no Casdoor table prefix to follow.
    settings.database.table_prefix = String::new();
    settings.dingtalk.api_base = sim.base_url();
    // The simulator speaks Stream mode too: changes land through event runs within a second.
    settings.dingtalk.open_api_base = sim.base_url();
    settings.stream.enabled = true;
    settings.stream.coalesce_window = Duration::from_millis(100);
    settings.scheduler.reload_interval = Duration::from_secs(1);
    settings.scheduler.min_interval = Duration::from_secs(1);
    settings.http.listen = "127.0.0.1:0".to_owned();

    println!("syncerd demo");
    println!(
        "  simulated DingTalk: {} ({} users, {} departments)",
        sim.base_url(),
        args.users,
        args.departments + 1
    );
    println!("  database:           {}", path.display());
    let db = db::connect(&settings.database).await?;
    db::migrate(&db).await?;
    db::add_syncer(
        &db,
        NewSyncer {
            name: SYNCER.to_owned(),
            organization: ORGANIZATION.to_owned(),
            app_key: credentials.app_key.clone(),
            app_secret: credentials.app_secret.clone(),
            sync_interval: i32::try_from(args.interval).unwrap_or(2),
            enabled: true,
        },
    )
    .await?;
    println!(
        "  syncer:             {SYNCER} -> organization {ORGANIZATION}, every {}s",
        args.interval
    );
    println!(
        "  field mapping:      users are named by their DingTalk job number (the userid when it is empty)\n"
    );

    let client = syncerd::dingtalk::Client::new((&settings.dingtalk).into())?;
    let daemon = daemon::bind(DaemonOptions {
        run_fn: daemon::pipeline_run_fn(settings.sync.clone(), client.clone()),
        dingtalk: Some(client),
        settings: settings.clone(),
        config_loader: None,
        instance: instance_id(InstanceKind::Daemon),
    })
    .await?;
    if let Some(addr) = daemon.local_addr() {
        println!("daemon running; metrics at http://{addr}/metrics\n");
    }
    let (control, rx) = mpsc::channel(4);
    let running = tokio::spawn(daemon.run(ControlSource::Channel(rx)));

    // The first run imports everything; each later one sees one change.
    let per_run = Duration::from_secs(u64::from(args.interval) + 60);
    let mut all_ok = true;
    for cycle in 1..=args.cycles {
        let status = wait_for_runs(&db, cycle as usize, per_run).await?;
        println!("run {cycle}: {status}");
        all_ok &= status == RunStatus::Succeeded;
        if cycle < args.cycles {
            let events_before = event_runs(&db).await?.len();
            let changed_at = Instant::now();
            println!("  {}", change_organization(&sim, cycle)?);
            if let Some(line) = wait_for_event_run(&db, events_before, changed_at).await? {
                println!("  {line}");
            }
        }
    }
    let _ = control.send(Control::Shutdown("demo finished")).await;
    running.await.context("the daemon task failed")?;
    sim.shutdown().await?;

    print_results(&db).await?;
    db.close().await?;
    println!(
        "\nThe database is kept at {}. Look around with:",
        path.display()
    );
    println!(
        "  syncerd --database-url 'sqlite://{}?mode=rwc' runs",
        path.display()
    );
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn print_results(db: &Db) -> anyhow::Result<()> {
    use sea_orm::sea_query::{Expr, ExprTrait};
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
    use syncerd::db::entities::{group, user};

    let runs = db::list_runs(
        db,
        &RunFilter {
            syncer: Some(SYNCER.to_owned()),
            limit: 20,
            ..Default::default()
        },
    )
    .await?;
    let rows: Vec<Vec<String>> = runs
        .iter()
        .rev()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.trigger.to_string(),
                r.status.to_string(),
                r.counts.fetched.to_string(),
                r.counts.created.to_string(),
                r.counts.updated.to_string(),
                r.counts.unchanged.to_string(),
                r.counts.forbidden.to_string(),
                r.counts.groups_updated.to_string(),
                r.api_calls.to_string(),
                r.duration
                    .map(|d| format!("{:.2}s", d.as_secs_f64()))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    println!("\nrun history (syncerd runs):");
    print!(
        "{}",
        table(
            &[
                "RUN",
                "TRIGGER",
                "STATUS",
                "FETCHED",
                "CREATED",
                "UPDATED",
                "UNCHANGED",
                "FORBIDDEN",
                "GROUPS UPD",
                "API CALLS",
                "TOOK"
            ],
            &rows
        )
    );

    let users = user::Entity::find()
        .filter(user::Column::Owner.eq(ORGANIZATION))
        .order_by_desc(user::Column::UpdatedTime)
        .limit(6)
        .all(db.conn())
        .await
        .context("reading users")?;
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.id.clone().unwrap_or_default(),
                one_line(u.display_name.as_deref().unwrap_or_default(), 24),
                one_line(u.title.as_deref().unwrap_or_default(), 32),
                if u.is_forbidden.unwrap_or_default() {
                    "yes"
                } else {
                    "no"
                }
                .to_owned(),
                one_line(u.groups.as_deref().unwrap_or_default(), 40),
            ]
        })
        .collect();
    println!("\nrecently changed users (table user, owner {ORGANIZATION}):");
    print!(
        "{}",
        table(
            &["NAME", "ID", "DISPLAY NAME", "TITLE", "FORBIDDEN", "GROUPS"],
            &rows
        )
    );
    let named_by_userid = user::Entity::find()
        .filter(user::Column::Owner.eq(ORGANIZATION))
        .filter(Expr::col(user::Column::Name).equals(user::Column::Id))
        .count(db.conn())
        .await
        .context("counting users named by userid")?;
    println!(
        "NAME is the DingTalk job number; {named_by_userid} users without one are named by their userid (ID)."
    );

    let groups = group::Entity::find()
        .filter(group::Column::Owner.eq(ORGANIZATION))
        .order_by_desc(group::Column::IsTopGroup)
        .order_by_asc(group::Column::ParentId)
        .limit(8)
        .all(db.conn())
        .await
        .context("reading groups")?;
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                one_line(g.display_name.as_deref().unwrap_or_default(), 24),
                g.parent_id.clone().unwrap_or_default(),
                if g.is_top_group.unwrap_or_default() {
                    "yes"
                } else {
                    "no"
                }
                .to_owned(),
            ]
        })
        .collect();
    println!("\ndepartment groups (table group):");
    print!(
        "{}",
        table(&["NAME", "DISPLAY NAME", "PARENT", "TOP"], &rows)
    );
    Ok(())
}
