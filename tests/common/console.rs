//! The web console's test set-up: the simulated DingTalk, a SQLite database with one syncer,
//! and the real daemon serving the console with a known admin token after its first run; plus
//! a small HTTP client that keeps the session cookie and sends the console's `Origin`.

use std::time::Duration;

use reqwest::header::{HeaderMap, ORIGIN};
use syncerd::db::{self, Db, NewSyncer, RunStatus};
use syncerd::secret::Secret;
use syncerd::simulator::{Simulator, SimulatorConfig, SimulatorHandle};

use super::pipeline::{ORG, SECRET};
use super::process::Syncerd;
use super::{TestDb, eventually, runs_of};

pub const SYNCER: &str = "acme-dingtalk";
pub const TOKEN: &str = "console-test-token-5f1c9e27d3a84b60";
pub const WITHIN: Duration = Duration::from_secs(60);

pub struct ConsoleSetup {
    pub test_db: TestDb,
    pub db: Db,
    pub sim: SimulatorHandle,
    pub daemon: Syncerd,
}

impl ConsoleSetup {
    /// The daemon with the console on (admin token [`TOKEN`] unless `token` is `None`), after
    /// its first run of [`SYNCER`] succeeded.
    pub async fn start(token: Option<&str>) -> ConsoleSetup {
        let sim = Simulator::start(
            SimulatorConfig {
                users: 12,
                departments: 3,
                seed: 11,
                app_key: "dingkey".into(),
                app_secret: Secret::new(SECRET),
                ..Default::default()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let test_db = TestDb::sqlite().await;
        let db = test_db.migrated().await;
        db::add_syncer(
            &db,
            NewSyncer {
                name: SYNCER.into(),
                organization: ORG.into(),
                app_key: "dingkey".into(),
                app_secret: Secret::new(SECRET),
                sync_interval: 3600,
                enabled: true,
            },
        )
        .await
        .unwrap();
        let base = sim.base_url();
        let mut env = vec![
            ("SYNCERD_DINGTALK__API_BASE", base.as_str()),
            ("SYNCERD_DINGTALK__OPEN_API_BASE", base.as_str()),
            ("SYNCERD_DINGTALK__QPS_PER_API", "200"),
        ];
        if let Some(token) = token {
            env.push(("SYNCERD_HTTP__ADMIN_TOKEN", token));
        }
        let daemon = Syncerd::fast_daemon(test_db.url(), &[], &env);
        eventually(WITHIN, "the first run to succeed", || async {
            runs_of(&db, SYNCER)
                .await
                .iter()
                .any(|r| r.status == RunStatus::Succeeded)
        })
        .await;
        ConsoleSetup {
            test_db,
            db,
            sim,
            daemon,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.daemon.port)
    }

    pub async fn finish(self) {
        drop(self.daemon);
        self.sim.shutdown().await.unwrap();
        self.test_db.cleanup().await;
    }
}

/// What the console answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn location(&self) -> Option<&str> {
        self.headers.get("location").and_then(|v| v.to_str().ok())
    }
}

/// A browser stand-in: no redirects followed, the session cookie kept by hand.
pub struct Browser {
    client: reqwest::Client,
    pub base: String,
    pub cookie: Option<String>,
}

impl Browser {
    pub fn new(base: &str) -> Browser {
        Browser {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(90))
                .build()
                .unwrap(),
            base: base.to_owned(),
            cookie: None,
        }
    }

    async fn answer(&self, request: reqwest::RequestBuilder) -> Answer {
        let request = match &self.cookie {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        };
        let response = request.send().await.unwrap();
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.answer(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    /// A form POST from `origin` (`None`: no `Origin` header).
    pub async fn post_from(
        &self,
        origin: Option<&str>,
        path: &str,
        form: &[(&str, &str)],
    ) -> Answer {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        self.answer(request).await
    }

    /// A form POST from the console's own pages.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        let origin = self.base.clone();
        self.post_from(Some(&origin), path, form).await
    }

    /// Signs in with `token`; keeps the session cookie on success.
    pub async fn sign_in(&mut self, token: &str) -> Answer {
        let answer = self.post("/login", &[("token", token)]).await;
        if let Some(cookie) = answer.headers.get("set-cookie") {
            let pair = cookie
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_owned();
            self.cookie = Some(pair);
        }
        answer
    }
}
