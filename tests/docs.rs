//! The documentation keeps up with the code: every metric is documented.

#[test]
fn every_metric_is_in_docs_metrics_md() {
    let code = include_str!("../src/telemetry.rs");
    let docs = include_str!("../docs/metrics.md");
    let names: Vec<&str> = code
        .split('"')
        .filter(|s| s.starts_with("floodgate_") && !s.contains(' '))
        .collect();
    assert!(names.len() > 15, "found {names:?}");
    for name in names {
        assert!(docs.contains(name), "{name} is not in docs/metrics.md");
    }
}
