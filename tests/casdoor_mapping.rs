#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The field mapping as a new user meets it and as Casdoor reads it, on every available engine:
//! the documented default (job number as name, userid when empty), `--name-from`, rows that keep
//! Casdoor's UI mapping, the `table_columns` Casdoor's UI accepts, refused fields and
//! organizations, `sync.lowercase_names`, and hashes Casdoor's own syncer agrees with.

mod common;

use std::process::{Command, Output};

use common::directory::{self, unionid, user_mut, userid};
use common::pipeline::{
    ORG, SYNCER, add_syncer_named_from, apply, assert_status, context, run, sync_settings,
    user_row, users,
};
use common::{TestDb, on_every_engine};
use md5::{Digest, Md5};
use syncerd::config::SyncSettings;
use syncerd::db::{self, Db, NameFrom, NewSyncer, RunStatus, SyncerRow};
use syncerd::dingtalk::types::Directory;
use syncerd::pipeline::RunReport;
use syncerd::secret::Secret;

/// Casdoor's syncer hash, computed here from its definition: lowercase hex MD5 of the hashed
/// values joined by `|`.
fn casdoor_hash(values: &[&str]) -> String {
    format!("{:x}", Md5::digest(values.join("|").as_bytes()))
}

async fn set_syncer(t: &TestDb, db: &Db, assignments: &str) -> SyncerRow {
    t.execute(
        db,
        &format!("UPDATE syncer SET {assignments} WHERE name = '{SYNCER}'"),
    )
    .await;
    db::get_syncer(db, SYNCER).await.unwrap().unwrap()
}

async fn run_with(db: &Db, syncer: &SyncerRow, dir: &Directory, sync: SyncSettings) -> RunReport {
    run(&context(db, sync), syncer, dir, apply()).await
}

async fn names(db: &Db) -> Vec<(String, String)> {
    let mut names: Vec<(String, String)> = users(db)
        .await
        .into_iter()
        .map(|u| (u.id.unwrap_or_default(), u.name))
        .collect();
    names.sort();
    names
}

fn new_syncer(name: &str, organization: &str) -> NewSyncer {
    NewSyncer {
        name: name.to_owned(),
        organization: organization.to_owned(),
        app_key: "dingappkey-test".to_owned(),
        app_secret: Secret::new("AppSecret-mapping-test"),
        sync_interval: 600,
        enabled: true,
    }
}

/// A directory of `n` users whose job numbers are `A0000i`, except: user 1's is empty, user 2
/// has none, user 3's is blank.
fn directory_with_missing_job_numbers(n: usize) -> Directory {
    let mut dir = directory::directory(n, 3);
    user_mut(&mut dir, 1).job_number = Some(String::new());
    user_mut(&mut dir, 2).job_number = None;
    user_mut(&mut dir, 3).job_number = Some("  ".into());
    dir
}

#[tokio::test]
async fn syncer_add_writes_the_documented_mapping_and_names_users_by_job_number_or_userid() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        db::add_syncer(&db, new_syncer(SYNCER, ORG)).await.unwrap();
        let syncer = db::get_syncer(&db, SYNCER).await.unwrap().unwrap();
        assert_eq!(syncer.table_columns, db::DEFAULT_TABLE_COLUMNS);
        let entries: serde_json::Value = serde_json::from_str(&syncer.table_columns).unwrap();
        let pairs: Vec<(&str, &str)> = entries
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap(),
                    e["casdoorName"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                ("userid", "Id"),
                ("job_number", "Name"),
                ("name", "DisplayName"),
                ("email", "Email"),
                ("mobile", "Phone"),
                ("avatar", "Avatar"),
                ("title", "Title"),
                ("active", "IsForbidden"),
            ]
        );

        let dir = directory_with_missing_job_numbers(8);
        let report = run_with(&db, &syncer, &dir, sync_settings(3)).await;
        assert_status(t, &report, RunStatus::Succeeded);
        let expected: Vec<(String, String)> = (0..8)
            .map(|i| {
                let name = if (1..=3).contains(&i) {
                    userid(i)
                } else {
                    format!("A{i:05}")
                };
                (userid(i), name)
            })
            .collect();
        assert_eq!(names(&db).await, expected, "{}", t.label());

        // The hash is Casdoor's, of what DingTalk gave (the empty job number, not the userid).
        let p = &dir.users[1].profile;
        let row = user_row(&db, &userid(1)).await.unwrap();
        let hash = casdoor_hash(&[
            &p.userid,
            "",
            p.name.as_deref().unwrap(),
            p.email.as_deref().unwrap(),
            p.mobile.as_deref().unwrap(),
            p.avatar.as_deref().unwrap(),
            p.title.as_deref().unwrap(),
            "0",
        ]);
        assert_eq!(row.hash.as_deref(), Some(hash.as_str()), "{}", t.label());
        assert_eq!(row.pre_hash, row.hash);

        let again = run_with(&db, &syncer, &dir, sync_settings(3)).await;
        assert_status(t, &again, RunStatus::Succeeded);
        assert_eq!(
            (
                again.counts.unchanged,
                again.counts.updated,
                again.counts.created
            ),
            (8, 0, 0),
            "{}",
            t.label()
        );
    })
    .await;
}

#[tokio::test]
async fn an_empty_table_columns_is_the_documented_mapping() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add_syncer_named_from(&db, SYNCER, ORG, NameFrom::Unionid).await;
        for empty in ["''", "NULL", "'[]'", "'null'"] {
            let syncer = set_syncer(t, &db, &format!("table_columns = {empty}")).await;
            let dir = directory_with_missing_job_numbers(5);
            let report = run_with(&db, &syncer, &dir, sync_settings(10)).await;
            assert_status(t, &report, RunStatus::Succeeded);
            let want: Vec<(String, String)> = (0..5)
                .map(|i| {
                    let name = if (1..=3).contains(&i) {
                        userid(i)
                    } else {
                        format!("A{i:05}")
                    };
                    (userid(i), name)
                })
                .collect();
            assert_eq!(names(&db).await, want, "{} {empty}", t.label());
        }
    })
    .await;
}

#[tokio::test]
async fn name_from_unionid_or_userid_names_the_users_of_a_new_syncer() {
    on_every_engine(async |t: &TestDb| {
        for (name_from, expected) in [
            (NameFrom::Unionid, unionid as fn(usize) -> String),
            (NameFrom::Userid, userid),
            (NameFrom::JobNumber, |i| format!("A{i:05}")),
        ] {
            let fresh = t.another().await;
            let db = fresh.migrated().await;
            let syncer = add_syncer_named_from(&db, SYNCER, ORG, name_from).await;
            assert_eq!(syncer.table_columns, name_from.table_columns());
            let dir = directory::directory(5, 2);
            let report = run_with(&db, &syncer, &dir, sync_settings(10)).await;
            assert_status(&fresh, &report, RunStatus::Succeeded);
            let want: Vec<(String, String)> = (0..5).map(|i| (userid(i), expected(i))).collect();
            assert_eq!(names(&db).await, want, "{} {name_from:?}", t.label());
            fresh.cleanup().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_row_with_casdoors_ui_mapping_keeps_it_and_nobody_is_renamed() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        // A row as Casdoor's UI (or an earlier syncerd) wrote it: names from the unionid.
        let syncer = add_syncer_named_from(&db, SYNCER, ORG, NameFrom::Unionid).await;
        let mut dir = directory::directory(6, 2);
        let first = run_with(&db, &syncer, &dir, sync_settings(4)).await;
        assert_status(t, &first, RunStatus::Succeeded);
        let before = names(&db).await;
        assert_eq!(
            before,
            (0..6).map(|i| (userid(i), unionid(i))).collect::<Vec<_>>()
        );

        // Later runs keep the row's mapping and every name.
        let second = run_with(&db, &syncer, &dir, sync_settings(4)).await;
        assert_status(t, &second, RunStatus::Succeeded);
        assert_eq!(second.counts.unchanged, 6, "{}", t.label());
        let row = db::get_syncer(&db, SYNCER).await.unwrap().unwrap();
        assert_eq!(row.table_columns, db::CASDOOR_UI_TABLE_COLUMNS);
        assert_eq!(names(&db).await, before);

        // Even switched to the job-number mapping, existing users keep their names; a new hire
        // is named by job number.
        let syncer = set_syncer(
            t,
            &db,
            &format!("table_columns = '{}'", db::DEFAULT_TABLE_COLUMNS),
        )
        .await;
        dir.users.push(directory::user(6, &[1]));
        let third = run_with(&db, &syncer, &dir, sync_settings(4)).await;
        assert_eq!(third.counts.created, 1, "{}", third.render_text());
        assert_ne!(third.status, RunStatus::Failed, "{}", third.render_text());
        let mut want = before.clone();
        want.push((userid(6), "A00006".to_owned()));
        assert_eq!(names(&db).await, want, "{}", t.label());
    })
    .await;
}

#[tokio::test]
async fn fields_casdoor_ignores_are_left_out_with_one_notice_per_run() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add_syncer_named_from(&db, SYNCER, ORG, NameFrom::JobNumber).await;
        let columns = db::DEFAULT_TABLE_COLUMNS.trim_end_matches(']').to_owned()
            + r#",{"name":"title","casdoorName":"Groups","isHashed":true},{"name":"email","casdoorName":"Owner"},{"name":"mobile","casdoorName":"Currency"},{"name":"name","casdoorName":"BalanceCurrency"},{"name":"avatar","casdoorName":"Groups"}]"#;
        let syncer = set_syncer(t, &db, &format!("table_columns = '{columns}'")).await;
        let dir = directory::directory(4, 2);
        for round in 0..2 {
            let report = run_with(&db, &syncer, &dir, sync_settings(10)).await;
            assert_status(t, &report, RunStatus::Succeeded);
            let ignored: Vec<&String> = report
                .notices
                .iter()
                .filter(|n| n.contains("ignores"))
                .collect();
            assert_eq!(ignored.len(), 1, "{}: {:?}", t.label(), report.notices);
            assert!(
                ignored[0].contains("Groups, Owner, Currency, BalanceCurrency"),
                "{}",
                ignored[0]
            );
            if round == 1 {
                assert_eq!(report.counts.unchanged, 4, "{}", report.render_text());
            }
        }
        for u in users(&db).await {
            assert_eq!(u.owner, ORG);
            let groups = u.groups.unwrap_or_default();
            assert!(groups.contains(&format!("\"{ORG}/")), "{groups}");
            assert_eq!(u.currency.unwrap_or_default(), "");
            assert_eq!(u.balance_currency.unwrap_or_default(), "");
        }
    })
    .await;
}

#[tokio::test]
async fn fields_casdoors_ui_offers_are_written_into_their_columns() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add_syncer_named_from(&db, SYNCER, ORG, NameFrom::JobNumber).await;
        let columns = r#"[{"name":"userid","casdoorName":"Id","isHashed":true},
            {"name":"unionid","casdoorName":"Name","isHashed":true},
            {"name":"title","casdoorName":"AvatarType","isHashed":true},
            {"name":"name","casdoorName":"SignupApplication","isHashed":true},
            {"name":"email","casdoorName":"CreatedIp","isHashed":true},
            {"name":"job_number","casdoorName":"UidNumber","isHashed":true},
            {"name":"active","casdoorName":"IsDefaultAvatar","isHashed":true},
            {"name":"mobile","casdoorName":"Ldap","isHashed":true},
            {"name":"email","casdoorName":"Invitation"},
            {"name":"unionid","casdoorName":"InvitationCode"},
            {"name":"title","casdoorName":"PreferredMfaType"}]"#
            .replace('\n', "");
        let syncer = set_syncer(t, &db, &format!("table_columns = '{columns}'")).await;
        let mut dir = directory::directory(3, 2);
        for i in 0..3 {
            user_mut(&mut dir, i).job_number = Some(format!("{}", 5000 + i));
        }
        user_mut(&mut dir, 2).active = Some(false);
        let report = run_with(&db, &syncer, &dir, sync_settings(10)).await;
        assert_status(t, &report, RunStatus::Succeeded);
        for i in 0..3 {
            let p = &dir.users[i].profile;
            let u = user_row(&db, &unionid(i)).await.unwrap();
            let label = t.label();
            assert_eq!(u.avatar_type, p.title, "{label}");
            assert_eq!(u.signup_application, p.name, "{label}");
            assert_eq!(u.created_ip, p.email, "{label}");
            assert_eq!(u.uid_number, Some(5000 + i as i32), "{label}");
            // `active` arrives inverted, as Casdoor's provider delivers it.
            assert_eq!(u.is_default_avatar, Some(i == 2), "{label}");
            assert_eq!(u.ldap, p.mobile, "{label}");
            assert_eq!(u.invitation, p.email, "{label}");
            assert_eq!(u.invitation_code, p.unionid, "{label}");
            assert_eq!(u.preferred_mfa_type, p.title, "{label}");
            // Casdoor's hash reads each hashed entry's DingTalk field through the last entry
            // naming it: `unionid` and `email` end at InvitationCode and Invitation, which its
            // renderer leaves out (''), `title` at PreferredMfaType (rendered). AvatarType,
            // UidNumber and Ldap are left out too; SignupApplication and IsDefaultAvatar are in.
            let hash = casdoor_hash(&[
                &p.userid,
                "",
                p.title.as_deref().unwrap(),
                p.name.as_deref().unwrap(),
                "",
                "",
                if i == 2 { "1" } else { "0" },
                "",
            ]);
            assert_eq!(u.hash.as_deref(), Some(hash.as_str()), "{label}");
        }
        let again = run_with(&db, &syncer, &dir, sync_settings(10)).await;
        assert_eq!(again.counts.unchanged, 3, "{}", again.render_text());
    })
    .await;
}

#[tokio::test]
async fn refused_fields_and_the_built_in_organization_fail_with_the_reason_and_write_nothing() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add_syncer_named_from(&db, SYNCER, ORG, NameFrom::JobNumber).await;
        let dir = directory::directory(3, 1);
        let with = |entry: &str| {
            db::DEFAULT_TABLE_COLUMNS.trim_end_matches(']').to_owned() + "," + entry + "]"
        };
        for (field, reason) in [
            ("Karma", "zeroes it on update"),
            ("IsAdmin", "must never grant administrator rights"),
            ("IsGlobalAdmin", "must never grant administrator rights"),
            ("Nickname", "DisplayName, FirstName"),
        ] {
            let columns = with(&format!(r#"{{"name":"active","casdoorName":"{field}"}}"#));
            let syncer = set_syncer(t, &db, &format!("table_columns = '{columns}'")).await;
            let report = run_with(&db, &syncer, &dir, sync_settings(10)).await;
            assert_status(t, &report, RunStatus::Failed);
            let message = report.message.clone().unwrap_or_default();
            assert!(
                message.contains(&format!("`{field}`")) && message.contains(reason),
                "{}: {message}",
                t.label()
            );
            assert!(users(&db).await.is_empty());
        }
        let unknown = db::get_syncer(&db, SYNCER).await.unwrap().unwrap();
        assert!(
            unknown.error_text.contains("UidNumber"),
            "{}",
            unknown.error_text
        );

        let syncer = set_syncer(
            t,
            &db,
            &format!(
                "table_columns = '{}', organization = 'built-in'",
                db::DEFAULT_TABLE_COLUMNS
            ),
        )
        .await;
        let report = run_with(&db, &syncer, &dir, sync_settings(10)).await;
        assert_status(t, &report, RunStatus::Failed);
        let message = report.message.clone().unwrap_or_default();
        assert!(
            message.contains("built-in") && message.contains("global administrator"),
            "{message}"
        );
        assert!(users(&db).await.is_empty());
        assert!(syncer.validate_for_schedule().is_err());

        let refused = db::add_syncer(&db, new_syncer("admins", "built-in"))
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("global administrator"),
            "{refused}"
        );
        assert!(db::get_syncer(&db, "admins").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn lowercase_names_lowers_the_names_of_new_users_and_renames_nobody() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        let syncer = add_syncer_named_from(&db, SYNCER, ORG, NameFrom::JobNumber).await;
        let mut dir = directory::directory(4, 2);
        for i in 0..4 {
            user_mut(&mut dir, i).job_number = Some(format!("Emp-{i}X"));
        }
        let first = run_with(&db, &syncer, &dir, sync_settings(10)).await;
        assert_status(t, &first, RunStatus::Succeeded);

        let lower = SyncSettings {
            lowercase_names: true,
            ..sync_settings(10)
        };
        dir.users.push(directory::user(4, &[1]));
        user_mut(&mut dir, 4).job_number = Some("Emp-4X".into());
        dir.users.push(directory::user(5, &[1]));
        user_mut(&mut dir, 5).job_number = None;
        user_mut(&mut dir, 5).userid = "U-Five".into();
        let second = run_with(&db, &syncer, &dir, lower.clone()).await;
        assert_eq!(second.counts.created, 2, "{}", second.render_text());
        assert_ne!(second.status, RunStatus::Failed, "{}", second.render_text());
        let got: Vec<String> = names(&db).await.into_iter().map(|(_, n)| n).collect();
        let mut want = vec![
            "Emp-0X".to_owned(),
            "Emp-1X".into(),
            "Emp-2X".into(),
            "Emp-3X".into(),
            "emp-4x".into(),
            "u-five".into(),
        ];
        want.sort();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        assert_eq!(got_sorted, want, "{}", t.label());

        // Nothing is rewritten afterwards, and the lowered names' hashes are DingTalk's values.
        let third = run_with(&db, &syncer, &dir, lower).await;
        assert_eq!(
            (third.counts.created, third.counts.updated),
            (0, 0),
            "{}",
            third.render_text()
        );
        let u = user_row(&db, "emp-4x").await.unwrap();
        let p = &dir.users[4].profile;
        let hash = casdoor_hash(&[
            &p.userid,
            "Emp-4X",
            p.name.as_deref().unwrap(),
            p.email.as_deref().unwrap(),
            p.mobile.as_deref().unwrap(),
            p.avatar.as_deref().unwrap(),
            p.title.as_deref().unwrap(),
            "0",
        ]);
        assert_eq!(u.hash.as_deref(), Some(hash.as_str()));
    })
    .await;
}

#[tokio::test]
async fn hashes_match_casdoors_for_unrendered_fields_and_an_empty_avatar_with_a_base_url() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add_syncer_named_from(&db, SYNCER, ORG, NameFrom::JobNumber).await;
        let columns = r#"[{"name":"userid","casdoorName":"Id","isHashed":true},
            {"name":"job_number","casdoorName":"Name","isHashed":true},
            {"name":"name","casdoorName":"FirstName","isHashed":true},
            {"name":"title","casdoorName":"LastName","isHashed":true},
            {"name":"active","casdoorName":"EmailVerified","isHashed":true},
            {"name":"avatar","casdoorName":"Avatar","isHashed":true}]"#
            .replace('\n', "");
        let syncer = set_syncer(
            t,
            &db,
            &format!("table_columns = '{columns}', avatar_base_url = 'https://cdn.example.com/'"),
        )
        .await;
        let mut dir = directory::directory(3, 1);
        user_mut(&mut dir, 0).avatar = Some(String::new());
        user_mut(&mut dir, 1).avatar = Some("media/1.png".into());
        let report = run_with(&db, &syncer, &dir, sync_settings(10)).await;
        assert_status(t, &report, RunStatus::Succeeded);

        let expect = |i: usize, avatar: &str| {
            casdoor_hash(&[&userid(i), &format!("A{i:05}"), "", "", "", avatar])
        };
        let cases = [
            (0, "https://cdn.example.com/", ""),
            (
                1,
                "https://cdn.example.com/media/1.png",
                "https://cdn.example.com/media/1.png",
            ),
            (
                2,
                "https://static.example.com/avatar/2.png",
                "https://static.example.com/avatar/2.png",
            ),
        ];
        for (i, hashed_avatar, stored_avatar) in cases {
            let u = user_row(&db, &format!("A{i:05}")).await.unwrap();
            let hash = expect(i, hashed_avatar);
            assert_eq!(
                u.hash.as_deref(),
                Some(hash.as_str()),
                "{} user {i}",
                t.label()
            );
            assert_eq!(u.pre_hash, u.hash);
            assert_eq!(u.avatar.as_deref(), Some(stored_avatar));
            let p = &dir.users[i].profile;
            assert_eq!(u.first_name, p.name, "written, though hashed as ''");
            assert_eq!(u.last_name, p.title);
            assert_eq!(u.email_verified, Some(false));
        }
        let again = run_with(&db, &syncer, &dir, sync_settings(10)).await;
        assert_eq!(again.counts.unchanged, 3, "{}", again.render_text());
    })
    .await;
}

/// Runs the binary with a clean environment apart from the database URL.
fn syncerd(db_url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncerd"));
    cmd.args(args)
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    if let Some(url) = db_url {
        cmd.env("SYNCERD_DATABASE__URL", url);
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn syncer_add_takes_name_from_and_refuses_the_built_in_organization() {
    let help = syncerd(None, &["syncer", "add", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--name-from",
        "job_number",
        "unionid",
        "userid",
        "DingTalk login",
        "never rewrites",
    ] {
        assert!(help.contains(needle), "{needle:?} missing in:\n{help}");
    }
    on_every_engine(async |t: &TestDb| {
        let url = t.url().to_owned();
        let out = tokio::task::spawn_blocking(move || {
            let add = |name: &str, org: &str, extra: &[&str]| {
                let mut args = vec![
                    "syncer",
                    "add",
                    "--name",
                    name,
                    "--organization",
                    org,
                    "--app-key",
                    "key",
                    "--app-secret",
                    "Cli-S3cret-mapping",
                ];
                args.extend_from_slice(extra);
                syncerd(Some(&url), &args)
            };
            assert!(syncerd(Some(&url), &["migrate"]).status.success());
            (
                add("plain", "acme", &[]),
                add("by-unionid", "acme", &["--name-from", "unionid"]),
                add("admins", "built-in", &[]),
            )
        })
        .await
        .unwrap();
        let (plain, by_unionid, admins) = out;
        assert!(plain.status.success(), "{:?}", plain);
        assert!(by_unionid.status.success(), "{:?}", by_unionid);
        assert!(!admins.status.success());
        let stderr = String::from_utf8_lossy(&admins.stderr);
        assert!(stderr.contains("global administrator"), "{stderr}");
        let db = t.connect().await;
        let plain = db::get_syncer(&db, "plain").await.unwrap().unwrap();
        assert_eq!(plain.table_columns, db::DEFAULT_TABLE_COLUMNS);
        let by_unionid = db::get_syncer(&db, "by-unionid").await.unwrap().unwrap();
        assert_eq!(by_unionid.table_columns, db::CASDOOR_UI_TABLE_COLUMNS);
        assert!(db::get_syncer(&db, "admins").await.unwrap().is_none());
        db.close().await.unwrap();
    })
    .await;
}

#[test]
fn the_demo_names_users_by_job_number_and_by_userid_when_it_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let db_file = dir.path().join("demo.db");
    let out = syncerd(
        None,
        &[
            "demo",
            "--users",
            "60",
            "--departments",
            "3",
            "--cycles",
            "2",
            "--interval",
            "1",
            "--database",
            db_file.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("job number"), "{stdout}");

    let url = format!("sqlite://{}?mode=rwc", db_file.display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = db::connect(&syncerd::config::DatabaseSettings {
            url: syncerd::config::DatabaseUrl::new(url),
            ..Default::default()
        })
        .await
        .unwrap();
        let rows = {
            use sea_orm::EntityTrait;
            syncerd::db::entities::user::Entity::find()
                .all(db.conn())
                .await
                .unwrap()
        };
        assert_eq!(rows.len(), 61);
        let by_job_number = rows
            .iter()
            .filter(|u| {
                let n = u.name.as_str();
                (n.starts_with('A') || n.starts_with('H'))
                    && n[1..].chars().all(|c| c.is_ascii_digit())
            })
            .count();
        let by_userid = rows
            .iter()
            .filter(|u| u.id.as_deref() == Some(u.name.as_str()))
            .count();
        assert_eq!(
            by_job_number + by_userid,
            61,
            "every name is a job number or a userid"
        );
        assert!(
            by_userid >= 1 && by_job_number >= 50,
            "{by_userid} {by_job_number}"
        );
        db.close().await.unwrap();
    });
}
