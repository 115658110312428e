//! Validation and compilation of one domain file into the tree the matcher walks.

use std::collections::{HashMap, HashSet};

use super::error::Problem;
use super::model::{DescriptorNode, DomainFile, RateLimitSpec};
use super::rule::{Limit, Rule, Unit};

/// Index of a node in its domain's arena.
pub type NodeId = usize;

/// One configured domain: a tree of descriptor nodes under an implicit root.
#[derive(Debug)]
pub struct Domain {
    name: String,
    /// Arena of nodes; index 0 is the root, which has children but never a rule.
    nodes: Vec<Node>,
}

/// A node of the descriptor tree.
#[derive(Debug, Default)]
pub struct Node {
    /// Children grouped by entry key.
    pub children: HashMap<String, KeyBranch>,
    /// The rule for requests whose last entry lands here.
    pub rule: Option<Rule>,
    /// For a wildcard node with `share_threshold`: its pattern, which stands for the request's
    /// value in counter keys so that every matching value shares one counter.
    pub shared_value: Option<String>,
}

/// The children of a node that share one entry key, in matching precedence.
#[derive(Debug, Default)]
pub struct KeyBranch {
    /// key + exact value.
    pub exact: HashMap<String, NodeId>,
    /// key + value with `*`, in configuration order; the first match wins.
    pub wildcards: Vec<(String, NodeId)>,
    /// key without a value: any value.
    pub any: Option<NodeId>,
}

impl Domain {
    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root node (holds the top-level descriptors).
    pub fn root(&self) -> &Node {
        &self.nodes[0]
    }

    /// The node with id `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }
}

/// Parses, validates and compiles one domain file.
pub(crate) fn compile_file(text: &str) -> Result<Domain, Problem> {
    let file: DomainFile =
        serde_yaml::from_str(text).map_err(|e| Problem::Syntax(e.to_string()))?;
    let name = file
        .domain
        .filter(|d| !d.is_empty())
        .ok_or(Problem::MissingDomain)?;
    let mut builder = Builder {
        nodes: vec![Node::default()],
        names: HashSet::new(),
        replaces: Vec::new(),
    };
    builder.add_children(0, &file.descriptors, "descriptors", "")?;
    for (at, replaced) in &builder.replaces {
        if !builder.names.contains(replaced) {
            return Err(Problem::UnknownReplaces {
                at: at.clone(),
                name: replaced.clone(),
            });
        }
    }
    Ok(Domain {
        name,
        nodes: builder.nodes,
    })
}

struct Builder {
    nodes: Vec<Node>,
    /// Every limit name in the domain.
    names: HashSet<String>,
    /// (location, name) of every `replaces` entry, checked once all names are known.
    replaces: Vec<(String, String)>,
}

impl Builder {
    fn add_children(
        &mut self,
        parent: NodeId,
        specs: &[DescriptorNode],
        at: &str,
        metric_prefix: &str,
    ) -> Result<(), Problem> {
        for (i, spec) in specs.iter().enumerate() {
            let at = format!("{at}[{i}]");
            let key = spec
                .key
                .as_deref()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| Problem::MissingKey { at: at.clone() })?;
            let value = spec.value.as_deref().filter(|v| !v.is_empty());
            let metric_key = match (metric_prefix, value) {
                ("", None) => key.to_owned(),
                ("", Some(v)) => format!("{key}_{v}"),
                (p, None) => format!("{p}.{key}"),
                (p, Some(v)) => format!("{p}.{key}_{v}"),
            };
            let wildcard = value.is_some_and(|v| v.contains('*'));
            if spec.share_threshold && !wildcard {
                return Err(Problem::ShareThresholdWithoutWildcard { at });
            }
            let rule = self.rule(spec, &at, &metric_key)?;
            let id = self.nodes.len();
            self.nodes.push(Node {
                children: HashMap::new(),
                rule,
                shared_value: if spec.share_threshold {
                    value.map(str::to_owned)
                } else {
                    None
                },
            });
            let branch = self.nodes[parent]
                .children
                .entry(key.to_owned())
                .or_default();
            let duplicate = match value {
                None => branch.any.replace(id).is_some(),
                Some(v) if wildcard => {
                    let seen = branch.wildcards.iter().any(|(p, _)| p == v);
                    branch.wildcards.push((v.to_owned(), id));
                    seen
                }
                Some(v) => branch.exact.insert(v.to_owned(), id).is_some(),
            };
            if duplicate {
                return Err(Problem::DuplicateDescriptor {
                    at,
                    key: key.to_owned(),
                    value: value.map(str::to_owned),
                });
            }
            self.add_children(
                id,
                &spec.descriptors,
                &format!("{at}.descriptors"),
                &metric_key,
            )?;
        }
        Ok(())
    }

    fn rule(
        &mut self,
        spec: &DescriptorNode,
        at: &str,
        metric_key: &str,
    ) -> Result<Option<Rule>, Problem> {
        let Some(rate_limit) = &spec.rate_limit else {
            if !spec.replaces.is_empty() {
                return Err(Problem::ReplacesWithoutLimit { at: at.to_owned() });
            }
            return Ok(None);
        };
        let limit = limit(rate_limit, at)?;
        let name = rate_limit.name.clone().filter(|n| !n.is_empty());
        if let Some(name) = &name
            && !self.names.insert(name.clone())
        {
            return Err(Problem::DuplicateName {
                at: at.to_owned(),
                name: name.clone(),
            });
        }
        let mut replaces = Vec::with_capacity(spec.replaces.len());
        for entry in &spec.replaces {
            let replaced = entry
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| Problem::EmptyReplacesName { at: at.to_owned() })?;
            self.replaces.push((at.to_owned(), replaced.clone()));
            replaces.push(replaced);
        }
        Ok(Some(Rule {
            limit,
            name,
            shadow_mode: spec.shadow_mode,
            replaces,
            detailed_metric: spec.detailed_metric,
            value_to_metric: spec.value_to_metric,
            metric_key: metric_key.to_owned(),
        }))
    }
}

/// The limit of a `rate_limit` block; `None` for `unlimited: true`.
fn limit(spec: &RateLimitSpec, at: &str) -> Result<Option<Limit>, Problem> {
    let at = at.to_owned();
    if spec.unlimited {
        if spec.unit.is_some() || spec.requests_per_unit.is_some() {
            return Err(Problem::UnlimitedWithLimit { at });
        }
        return Ok(None);
    }
    let unit_name = spec
        .unit
        .as_deref()
        .ok_or_else(|| Problem::MissingUnit { at: at.clone() })?;
    let unit = Unit::parse(unit_name).ok_or_else(|| Problem::UnknownUnit {
        at: at.clone(),
        unit: unit_name.to_owned(),
    })?;
    let requests_per_unit = spec
        .requests_per_unit
        .ok_or(Problem::MissingRequestsPerUnit { at })?;
    Ok(Some(Limit {
        requests_per_unit,
        unit,
    }))
}
