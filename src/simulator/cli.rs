//! `syncerd simulate`: run the simulator in the foreground.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use super::{Simulator, SimulatorConfig, SimulatorError};
use crate::secret::Secret;

/// Serve a simulated DingTalk organization on a local port, for demos, tests and benchmarks.
///
/// Point `dingtalk.api_base` at the printed address and use the App Key / App Secret below.
/// The organization is generated from the seed, so the same flags always give the same users.
/// A control API under /_sim/ (JSON) changes the organization and reads call counters; it has
/// no authentication, so keep the simulator on a loopback address.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Users in the generated organization (each in 1–3 departments).
    #[arg(long, default_value_t = 200)]
    pub users: usize,

    /// Departments below the root department (id 1, always present).
    #[arg(long, default_value_t = 20)]
    pub departments: usize,

    /// Levels of departments below the root, at most.
    #[arg(long, default_value_t = 3)]
    pub max_depth: usize,

    /// Seed of the generated organization and of the fault sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9465")]
    pub listen: SocketAddr,

    /// App Key the simulator accepts (others get errcode 40089).
    #[arg(long, default_value = super::DEFAULT_APP_KEY)]
    pub app_key: String,

    /// App Secret the simulator accepts (others get errcode 40089). The default is a made-up,
    /// public value for demos, not a secret.
    #[arg(long, default_value = super::DEFAULT_APP_SECRET)]
    pub app_secret: String,

    /// Delay added to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,

    /// Calls per second per API per App Key before answering errcode 88 / sub_code 90018, as
    /// DingTalk does at 20 on the standard edition. Unlimited when not given.
    #[arg(long)]
    pub qps: Option<u32>,

    /// Lifetime of an access token in seconds (expires_in).
    #[arg(long, default_value_t = 7200)]
    pub token_ttl: u64,

    /// Share of calls (0–1) answered errcode -1 "系统繁忙".
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub busy_rate: f64,

    /// Share of calls (0–1) answered HTTP 502 with an HTML page.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub bad_gateway_rate: f64,

    /// Share of calls (0–1) answered with truncated JSON.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub malformed_rate: f64,

    /// Share of calls (0–1) answered errcode 88 / sub_code 90018 (throttled).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub throttle_rate: f64,

    /// Revoke the access token every N authenticated calls (answers 88 / sub_code 40014).
    #[arg(long)]
    pub invalidate_token_every: Option<u64>,

    /// Answer every Nth call that gets past the earlier faults with errcode -1 (deterministic,
    /// unlike --busy-rate: a run of N calls or more always meets it).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub busy_every: Option<u64>,

    /// Answer every Nth call that gets past an IP ban with HTTP 502.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub bad_gateway_every: Option<u64>,

    /// Answer every Nth call that gets past the 502 pages with truncated JSON.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub malformed_every: Option<u64>,

    /// Answer every Nth call that gets past the busy answers with 88 / sub_code 90018.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub throttle_every: Option<u64>,

    /// Also list the family-school directory (department -1) under the root.
    #[arg(long)]
    pub family_school: bool,
    /// Stream mode: how long a ticket from connections/open stays valid (DingTalk: 90s).
    #[arg(long, default_value = "90s", value_parser = crate::config::parse_duration)]
    pub stream_ticket_ttl: Duration,
    /// Stream mode: an event not acknowledged is delivered again after this long.
    #[arg(long, default_value = "30s", value_parser = crate::config::parse_duration)]
    pub stream_redelivery: Duration,
    /// Stream mode: an event answered LATER is delivered again after this long (0s: at once).
    #[arg(long, default_value = "5s", value_parser = crate::config::parse_duration)]
    pub stream_later_delay: Duration,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not between 0 and 1"))
    }
}

impl From<&SimulateArgs> for SimulatorConfig {
    fn from(a: &SimulateArgs) -> Self {
        SimulatorConfig {
            users: a.users,
            departments: a.departments,
            max_depth: a.max_depth,
            seed: a.seed,
            app_key: a.app_key.clone(),
            app_secret: Secret::new(a.app_secret.clone()),
            latency: Duration::from_millis(a.latency_ms),
            qps: a.qps,
            token_ttl: Duration::from_secs(a.token_ttl),
            busy_rate: a.busy_rate,
            bad_gateway_rate: a.bad_gateway_rate,
            malformed_rate: a.malformed_rate,
            throttle_rate: a.throttle_rate,
            invalidate_token_every: a.invalidate_token_every,
            busy_every: a.busy_every,
            bad_gateway_every: a.bad_gateway_every,
            malformed_every: a.malformed_every,
            throttle_every: a.throttle_every,
            family_school_department: a.family_school,
            stream_ticket_ttl: a.stream_ticket_ttl,
            stream_redelivery: a.stream_redelivery,
            stream_later_delay: a.stream_later_delay,
            ..SimulatorConfig::default()
        }
    }
}

/// Runs the simulator until `shutdown` resolves. Prints the address it listens on first, as
/// `simulator listening on http://127.0.0.1:PORT (app key sim-app-key)`.
pub async fn run_simulate(
    args: SimulateArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SimulatorError> {
    let config = SimulatorConfig::from(&args);
    let handle = Simulator::start(config, args.listen).await?;
    announce(&handle.base_url(), handle.app_key(), &args);
    shutdown.await;
    tracing::info!("DingTalk simulator stopping");
    handle.shutdown().await
}

fn announce(base_url: &str, app_key: &str, args: &SimulateArgs) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "simulator listening on {base_url} (app key {app_key})");
    let _ = writeln!(
        out,
        "{} users in {} departments below the root, seed {}; control API under {base_url}/_sim/",
        args.users, args.departments, args.seed,
    );
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    #[test]
    fn help_describes_every_flag() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--users",
            "--departments",
            "--max-depth",
            "--seed",
            "--listen",
            "--latency-ms",
            "--qps",
            "--token-ttl",
            "--busy-rate",
            "--bad-gateway-rate",
            "--malformed-rate",
            "--throttle-rate",
            "--invalidate-token-every",
            "--stream-ticket-ttl",
            "--stream-redelivery",
            "--stream-later-delay",
        ] {
            assert!(help.contains(flag), "{flag} missing from:\n{help}");
        }
        assert!(
            help.contains("sim-app-secret"),
            "demo users need the default secret"
        );
        if std::env::var_os("SHOW_HELP").is_some() {
            println!("{help}");
        }
    }

    #[test]
    fn flags_parse_and_rates_are_checked() {
        let cli = Cli::try_parse_from([
            "simulate",
            "--users",
            "10000",
            "--departments",
            "500",
            "--qps",
            "20",
            "--busy-rate",
            "0.05",
            "--listen",
            "127.0.0.1:0",
        ])
        .unwrap();
        assert_eq!(cli.args.users, 10_000);
        assert_eq!(cli.args.qps, Some(20));
        let config = SimulatorConfig::from(&cli.args);
        assert_eq!(config.busy_rate, 0.05);
        assert_eq!(config.app_key, "sim-app-key");
        assert_eq!(
            config.stream_ticket_ttl,
            Duration::from_secs(90),
            "DingTalk's default"
        );
        let stream = Cli::try_parse_from([
            "simulate",
            "--stream-ticket-ttl",
            "2s",
            "--stream-redelivery",
            "500ms",
            "--stream-later-delay",
            "0s",
        ])
        .unwrap();
        let config = SimulatorConfig::from(&stream.args);
        assert_eq!(config.stream_ticket_ttl, Duration::from_secs(2));
        assert_eq!(config.stream_redelivery, Duration::from_millis(500));
        assert_eq!(config.stream_later_delay, Duration::ZERO);
        assert!(Cli::try_parse_from(["simulate", "--stream-redelivery", "soon"]).is_err());
        assert!(Cli::try_parse_from(["simulate", "--busy-rate", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["simulate", "--throttle-rate", "x"]).is_err());
    }
}
