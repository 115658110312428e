//! Rate limit configuration: envoyproxy/ratelimit's YAML domains, loaded from a file or a
//! directory, validated and compiled into an immutable [`Config`] that the matcher walks.
//!
//! Loading reads files; everything after that (validation, compilation) is pure.

mod compile;
mod error;
mod glob;
mod model;
mod rule;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

pub use compile::{Domain, KeyBranch, Node, NodeId};
pub use error::{ConfigError, Problem};
pub use glob::glob_match;
pub use rule::{Limit, Rule, Unit};

/// Every loaded domain, immutable once built; a reload builds a new one and swaps it in whole.
#[derive(Debug, Default)]
pub struct Config {
    domains: HashMap<String, Domain>,
}

impl Config {
    /// Loads `path`: a YAML file holding one domain, or a directory whose `*.yaml` / `*.yml`
    /// files each hold one domain (hidden entries, such as a Kubernetes ConfigMap's `..data`,
    /// are skipped).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let meta = fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let files = if meta.is_dir() {
            let files = domain_files(path)?;
            if files.is_empty() {
                return Err(ConfigError::NoFiles {
                    path: path.to_owned(),
                });
            }
            files
        } else {
            vec![path.to_owned()]
        };
        let mut sources = Vec::with_capacity(files.len());
        for file in files {
            let text = fs::read_to_string(&file).map_err(|source| ConfigError::Read {
                path: file.clone(),
                source,
            })?;
            sources.push((file, text));
        }
        Config::from_sources(sources.iter().map(|(p, t)| (p.as_path(), t.as_str())))
    }

    /// Builds a config from (file name, YAML text) pairs; the names only label errors.
    pub fn from_sources<'a>(
        sources: impl IntoIterator<Item = (&'a Path, &'a str)>,
    ) -> Result<Config, ConfigError> {
        let mut domains: HashMap<String, Domain> = HashMap::new();
        let mut origins: HashMap<String, PathBuf> = HashMap::new();
        for (path, text) in sources {
            let domain = compile::compile_file(text).map_err(|problem| ConfigError::Invalid {
                path: path.to_owned(),
                problem,
            })?;
            if let Some(first) = origins.get(domain.name()) {
                return Err(ConfigError::DuplicateDomain {
                    path: path.to_owned(),
                    domain: domain.name().to_owned(),
                    first: first.clone(),
                });
            }
            origins.insert(domain.name().to_owned(), path.to_owned());
            domains.insert(domain.name().to_owned(), domain);
        }
        Ok(Config { domains })
    }

    /// Parses one YAML text, for tests and tools.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Config::from_sources([(Path::new("<inline>"), text)])
    }

    /// The domain called `name`, if configured.
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    /// Names of the configured domains, sorted.
    pub fn domain_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.domains.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// The domain files of a directory, sorted by name so that errors are reproducible.
fn domain_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        // fs::metadata follows symlinks, as ConfigMap mounts need.
        if !name.starts_with('.') && is_yaml && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
