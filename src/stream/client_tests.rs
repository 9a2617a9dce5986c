use super::*;

#[test]
fn backoff_doubles_with_bounded_jitter_caps_and_resets() {
    let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    b.rng = SplitMix64::new(7);
    let delays: Vec<Duration> = (0..9).map(|_| b.next_delay()).collect();
    let mut base = Duration::from_secs(1);
    for d in &delays {
        assert!(*d >= base.min(Duration::from_secs(60)), "{d:?} < {base:?}");
        assert!(
            *d <= base.mul_f64(1.2).min(Duration::from_secs(60)),
            "{d:?}"
        );
        base = base.saturating_mul(2).min(Duration::from_secs(60));
    }
    assert_eq!(delays[8], Duration::from_secs(60));
    b.reset();
    assert!(b.next_delay() < Duration::from_millis(1201));
}

#[test]
fn scrub_removes_secret_values_and_ticket_query_values() {
    let secret = Secret::new("s3cr3t-value");
    let ticket = Secret::new("tkt-123");
    let text = "failed for ws://h/connect?ticket=tkt-123 with s3cr3t-value";
    let out = scrub(text, [Some(&secret), Some(&ticket)]);
    assert!(
        !out.contains("s3cr3t-value") && !out.contains("tkt-123"),
        "{out}"
    );
    let out = scrub("ws://h/connect?ticket=other", [None]);
    assert!(!out.contains("other"), "{out}");
}

#[test]
fn invalid_settings_are_refused_with_the_key() {
    let config = StreamConfig {
        backoff_min: Duration::ZERO,
        ..StreamConfig::default()
    };
    let e = config
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("stream.backoff_min"), "{e}");
    assert!(StreamConfig::default().validate().is_ok());
}
