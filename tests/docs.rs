//! The documentation keeps up with the code: every metric is documented, and every variable of
//! the reference's settings is in the migration guide's table.

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

#[test]
fn every_reference_variable_is_in_docs_migrating_md() {
    let docs = include_str!("../docs/migrating.md");
    for variable in floodgate::settings::reference::VARIABLES {
        let row = format!("| `{}` |", variable.name);
        assert!(
            docs.contains(&row),
            "{} has no row in docs/migrating.md",
            variable.name
        );
    }
}
