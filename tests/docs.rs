//! The documentation keeps up with the code: every metric is documented, every variable of
//! the reference's settings is in the migration guide's table, and every default in the README
//! is the one `serve` uses.

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

#[test]
fn every_default_in_the_readme_is_the_one_serve_uses() {
    use clap::CommandFactory;

    let readme = include_str!("../README.md");
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `--")).collect();
    let cli = floodgate::settings::Cli::command();
    let serve = cli.find_subcommand("serve").expect("a serve subcommand");
    let mut checked = 0;
    for arg in serve.get_arguments() {
        let (Some(long), [default]) = (arg.get_long(), arg.get_default_values()) else {
            continue;
        };
        let flag = format!("`--{long}");
        let row = rows
            .iter()
            .find(|row| {
                let flags = row.split('|').nth(1).unwrap_or_default();
                flags.contains(&format!("{flag}`")) || flags.contains(&format!("{flag} "))
            })
            .unwrap_or_else(|| panic!("--{long} has no row in README.md's table of flags"));
        let stated = row.split('|').nth(2).unwrap_or_default();
        let default = default.to_string_lossy();
        let expected = match default.as_ref() {
            "true" => "on".to_owned(),
            "false" => "off".to_owned(),
            text => format!("`{text}`"),
        };
        assert!(
            stated.contains(&expected),
            "README.md states {stated:?} as the default of --{long}, serve uses {default}"
        );
        checked += 1;
    }
    assert!(checked > 30, "only {checked} defaults found");
}
