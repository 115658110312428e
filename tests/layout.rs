//! Keeps the layout that src/lib.rs describes true: the top-level modules depend on each other
//! without cycles (a module that needs one above it shows a job in the wrong place), and no
//! function is too long to read at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Longest function accepted, in lines from its signature to its closing brace: short enough
/// to read at once.
const MAX_FUNCTION_LINES: usize = 60;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The file's code without its unit tests (they may reach anywhere).
fn without_tests(text: &str) -> &str {
    text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text)
}

/// The code without comment lines: a doc link to a module is not a dependency on it.
fn without_comments(code: &str) -> String {
    code.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file of src/ belongs to (`None` for lib.rs, main.rs and binaries).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_owned())
}

/// The top-level modules `code` names through `crate::`.
fn uses(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // use crate::{a, b::c, ...}
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for part in group.split(',') {
                let name = part.trim().split("::").next().unwrap_or("");
                found.insert(name.to_owned());
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            found.insert(rest[..end].to_owned());
        }
    }
    found.retain(|m| modules.contains(m));
    found
}

/// A cycle in `graph` reached from `node`, if any (depth-first, `path` the current branch).
fn cycle_from(
    node: &str,
    graph: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(start) = path.iter().position(|n| n == node) {
        let mut cycle = path[start..].to_vec();
        cycle.push(node.to_owned());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_owned());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(cycle) = cycle_from(next, graph, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

#[test]
fn top_level_modules_have_no_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = sources(&src);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let text = fs::read_to_string(file).unwrap();
        let mut used = uses(&without_comments(without_tests(&text)), &modules);
        used.remove(&module);
        graph.entry(module).or_default().extend(used);
    }
    assert!(graph.len() > 10, "found the modules: {graph:?}");
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        let cycle = cycle_from(module, &graph, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "an import cycle: {}",
            cycle.unwrap().join(" -> ")
        );
    }
}

/// The functions of `text` longer than the bound: (first line, name, lines). rustfmt's layout
/// is relied on: a body ends at the first line that closes it at the signature's indentation.
fn long_functions(text: &str) -> Vec<(usize, String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut long = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        let indent = &line[..line.len() - code.len()];
        let signature = code
            .trim_start_matches("pub ")
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("const ")
            .trim_start_matches("async ");
        let Some(name) = signature.strip_prefix("fn ") else {
            continue;
        };
        let closing = format!("{indent}}}");
        // A declaration without a body ends with `;` at its own indentation.
        let own_level = |l: &str| l.starts_with(indent) && !l[indent.len()..].starts_with(' ');
        let ends = |l: &&str| *l == closing || own_level(l) && l.ends_with(';');
        let Some(length) = (if code.ends_with('}') {
            Some(0)
        } else {
            lines[i..].iter().position(ends)
        }) else {
            continue;
        };
        if length + 1 > MAX_FUNCTION_LINES {
            let name = name.split(['(', '<']).next().unwrap_or(name).to_owned();
            long.push((i + 1, name, length + 1));
        }
    }
    long
}

#[test]
fn no_function_is_too_long_to_read_at_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = sources(&root.join("src"));
    files.extend(sources(&root.join("bench/floodgate-bench/src")));
    let mut long = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for (line, name, length) in long_functions(without_tests(&text)) {
            long.push(format!("{}:{line} {name} ({length} lines)", file.display()));
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines:\n{}",
        long.join("\n")
    );
}
