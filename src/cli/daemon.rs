//! `syncerd run` (the daemon) and `syncerd healthcheck` (Docker's HEALTHCHECK).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use syncerd::config::{LoadedConfig, Settings};
use syncerd::daemon::{self, ControlSource, DaemonExit, DaemonOptions, RunFn};
use syncerd::dingtalk::Client;
use syncerd::launch::{InstanceKind, instance_id};

use super::{GlobalOpts, runtime};

/// Exit code after a second SIGTERM/SIGINT cut the graceful stop short (128 + SIGINT).
const FORCED_EXIT: u8 = 130;

/// The work of one run: the DingTalk fetch and the pipeline, with one client (token cache, rate
/// limiters) shared by every syncer and by the streams' catch-ups.
fn run_fn(settings: &Settings) -> anyhow::Result<(RunFn, Client)> {
    let client = Client::new((&settings.dingtalk).into())?;
    Ok((
        daemon::pipeline_run_fn(settings.sync.clone(), client.clone()),
        client,
    ))
}

/// `syncerd run`: schedules every enabled DingTalk syncer until SIGTERM/SIGINT.
pub fn run(global: &GlobalOpts, loaded: LoadedConfig) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    let sources = global.sources();
    let loader: daemon::ConfigLoader = Box::new(move || {
        let reloaded = Settings::load(&sources)?;
        for warning in &reloaded.warnings {
            tracing::warn!("{warning}");
        }
        Ok(reloaded.settings)
    });
    let settings = loaded.settings;
    let exit = runtime.block_on(async {
        let control = ControlSource::os_signals().context("cannot install signal handlers")?;
        let (run_fn, client) = run_fn(&settings)?;
        let daemon = daemon::bind(DaemonOptions {
            run_fn,
            dingtalk: Some(client),
            settings,
            config_loader: Some(loader),
            instance: instance_id(InstanceKind::Daemon),
        })
        .await?;
        anyhow::Ok(daemon.run(control).await)
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(match exit {
        DaemonExit::Graceful => ExitCode::SUCCESS,
        DaemonExit::Forced => ExitCode::from(FORCED_EXIT),
    })
}

/// The URL of `/readyz` for a listen address: a wildcard address is asked on loopback.
fn readyz_url(listen: &str) -> String {
    let host_port = match listen.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        Ok(SocketAddr::V6(a)) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        Ok(a) => a.to_string(),
        Err(_) => listen.to_owned(),
    };
    format!("http://{host_port}/readyz")
}

/// `syncerd healthcheck`: exit 0 when the local daemon's `/readyz` answers 200, else 1 with
/// one line saying why.
pub fn healthcheck(settings: &Settings) -> anyhow::Result<ExitCode> {
    let url = readyz_url(&settings.http.listen);
    let runtime = runtime()?;
    let (ok, line) = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .context("cannot build the HTTP client")?;
        let answer = match client.get(&url).send().await {
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                let body = body.lines().next().unwrap_or_default().trim().to_owned();
                if status.is_success() {
                    (true, body)
                } else {
                    (false, format!("{url} answered {status}: {body}"))
                }
            }
            Err(e) if e.is_timeout() => (false, format!("no answer from {url} within 3 s")),
            Err(e) => (
                false,
                format!("nothing answers at {url} (is `syncerd run` running with this http.listen?): {e}"),
            ),
        };
        anyhow::Ok(answer)
    })?;
    if ok {
        println!("{line}");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("not ready: {line}");
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_checked_on_loopback() {
        assert_eq!(readyz_url("0.0.0.0:9464"), "http://127.0.0.1:9464/readyz");
        assert_eq!(readyz_url("[::]:9464"), "http://[::1]:9464/readyz");
        assert_eq!(readyz_url("127.0.0.1:1234"), "http://127.0.0.1:1234/readyz");
        assert_eq!(readyz_url("localhost:80"), "http://localhost:80/readyz");
    }
}
