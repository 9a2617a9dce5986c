//! The run chart of a syncer's page: duration and changes per run over its last runs, drawn
//! on the server as SVG (no script, nothing fetched). Each bar carries a `<title>` tooltip.

use maud::{Markup, html};

use crate::db::{RunRow, RunStatus};

const WIDTH: f64 = 640.0;
const PANEL: f64 = 70.0;
const GAP: f64 = 26.0;
const LEFT: f64 = 48.0;

/// Users created, updated, forbidden, unforbidden or deleted, and memberships changed.
pub(crate) fn changes_of(run: &RunRow) -> u64 {
    let c = &run.counts;
    c.created + c.updated + c.forbidden + c.unforbidden + c.deleted + c.memberships_changed
}

fn bar_class(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Succeeded => "bar ok",
        RunStatus::Running => "bar running",
        RunStatus::Partial | RunStatus::Held | RunStatus::Interrupted => "bar warn",
        RunStatus::Failed => "bar bad",
    }
}

/// One panel of bars, one per run (oldest on the left), scaled to the largest value.
fn panel(runs: &[&RunRow], top: f64, label: &str, value: &dyn Fn(&RunRow) -> f64) -> Markup {
    let max = runs.iter().map(|r| value(r)).fold(0.0_f64, f64::max);
    // At most 30 units a run, so a short history is not drawn as a few wide slabs.
    let slot = ((WIDTH - LEFT) / runs.len().max(1) as f64).min(30.0);
    let bar = (slot * 0.7).max(1.0);
    let scale = |v: f64| if max > 0.0 { v / max * PANEL } else { 0.0 };
    let max_label = if max >= 10.0 || max == 0.0 {
        format!("{max:.0}")
    } else {
        format!("{max:.1}")
    };
    html! {
        text.axis x="0" y=(top + 10.0) { (max_label) }
        text.axis x="0" y=(top + PANEL) { "0" }
        text.label x=(LEFT) y=(top - 4.0) { (label) }
        line.base x1=(LEFT) y1=(top + PANEL) x2=(WIDTH) y2=(top + PANEL) {}
        @for (i, run) in runs.iter().enumerate() {
            @let v = value(run);
            @let h = scale(v).max(if v > 0.0 { 1.0 } else { 0.0 });
            rect class=(bar_class(run.status)) x=(format!("{:.1}", LEFT + i as f64 * slot))
                y=(format!("{:.1}", top + PANEL - h)) width=(format!("{bar:.1}")) height=(format!("{h:.1}")) {
                title { "run " (run.id) " (" (run.status) "): " (label) " " (format!("{v:.1}")) }
            }
        }
    }
}

/// The chart of `runs` (newest first, as the history lists them).
pub(crate) fn runs_chart(runs: &[RunRow]) -> Markup {
    let oldest_first: Vec<&RunRow> = runs.iter().rev().collect();
    let height = 2.0 * PANEL + 2.0 * GAP + 10.0;
    let duration = |r: &RunRow| r.duration.map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let changes = |r: &RunRow| changes_of(r) as f64;
    html! {
        figure.chart {
            svg xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {height}"))
                role="img" aria-label="Duration and changes per run" data-testid="runs-chart" {
                (panel(&oldest_first, GAP - 6.0, "duration (s)", &duration))
                (panel(&oldest_first, GAP * 2.0 + PANEL, "changes", &changes))
            }
            figcaption { "Duration and changes of the last " (runs.len()) " runs, oldest on the left. Hover a bar for its run." }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;

    use super::*;
    use crate::db::{RunCounts, RunMode, RunTrigger};

    fn run(id: i64, secs: u64, created: u64, status: RunStatus) -> RunRow {
        RunRow {
            id,
            syncer_name: "acme".into(),
            organization: "acme".into(),
            trigger: RunTrigger::Schedule,
            mode: RunMode::Apply,
            status,
            started_at: Utc::now(),
            finished_at: None,
            duration: Some(Duration::from_secs(secs)),
            counts: RunCounts {
                created,
                ..RunCounts::default()
            },
            api_calls: 3,
            error_summary: None,
            details: None,
            instance: "test".into(),
        }
    }

    #[test]
    fn bars_are_scaled_to_the_largest_run_and_coloured_by_status() {
        let runs = vec![
            run(3, 4, 0, RunStatus::Failed),
            run(2, 2, 10, RunStatus::Succeeded),
        ];
        let svg = runs_chart(&runs).into_string();
        // Oldest on the left: run 2 first, its duration half the panel, its changes all of it.
        let first = svg.find("run 2 (succeeded)").unwrap();
        let second = svg.find("run 3 (failed)").unwrap();
        assert!(first < second);
        assert!(svg.contains("height=\"35.0\""), "{svg}");
        assert!(svg.contains("height=\"70.0\""), "{svg}");
        assert!(svg.contains("class=\"bar bad\""));
        assert!(svg.contains("</rect>"), "SVG shapes are closed: {svg}");
    }
}
