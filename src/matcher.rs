//! Finds the configured rule for one request descriptor, the way envoyproxy/ratelimit does.
//!
//! The walk goes down the domain's tree one entry at a time. At each level the child for the
//! entry's key and exact value wins; failing that, the first wildcard value (in configuration
//! order) that matches; failing that, the key-only child. There is no backtracking to a sibling
//! after a miss deeper down, and the rule applies only if the walk ends exactly on the
//! descriptor's last entry.

use crate::config::{Domain, Node, NodeId, Rule, glob_match};
use crate::query::Entry;

/// The outcome of a successful walk.
#[derive(Debug, PartialEq, Eq)]
pub struct RuleMatch<'c> {
    /// The rule of the last node.
    pub rule: &'c Rule,
    /// (entry index, pattern) for each level matched by a `share_threshold` wildcard: the
    /// pattern replaces the request's value in the counter key.
    pub shared_values: Vec<(usize, &'c str)>,
}

/// Walks `domain` along `entries` and returns the rule where the walk ends, if any.
pub fn find_rule<'c>(domain: &'c Domain, entries: &[Entry]) -> Option<RuleMatch<'c>> {
    let mut node = domain.root();
    let mut shared_values = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let id = child(node, &entry.key, &entry.value)?;
        node = domain.node(id);
        if let Some(pattern) = &node.shared_value {
            shared_values.push((i, pattern.as_str()));
        }
    }
    let rule = node.rule.as_ref()?;
    Some(RuleMatch {
        rule,
        shared_values,
    })
}

/// The child of `node` that an entry leads to, by the precedence in the module doc.
fn child(node: &Node, key: &str, value: &str) -> Option<NodeId> {
    let branch = node.children.get(key)?;
    branch
        .exact
        .get(value)
        .copied()
        .or_else(|| {
            branch
                .wildcards
                .iter()
                .find(|(pattern, _)| glob_match(pattern, value))
                .map(|&(_, id)| id)
        })
        .or(branch.any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Unit};

    const CONFIG: &str = r#"
domain: test
descriptors:
  - key: key1
    value: value1
    rate_limit: { unit: second, requests_per_unit: 1, name: exact }
    descriptors:
      - key: subkey1
        rate_limit: { unit: minute, requests_per_unit: 2 }
  - key: key1
    value: val*
    rate_limit: { unit: second, requests_per_unit: 3, name: wild1 }
  - key: key1
    value: v*
    rate_limit: { unit: second, requests_per_unit: 4, name: wild2 }
  - key: key1
    rate_limit: { unit: hour, requests_per_unit: 5, name: any }
  - key: path
    value: /api/*/users
    share_threshold: true
    rate_limit: { unit: day, requests_per_unit: 6 }
  - key: branch
    value: b
    descriptors:
      - key: leaf
        value: x
        rate_limit: { unit: second, requests_per_unit: 7 }
  - key: branch
    descriptors:
      - key: leaf
        rate_limit: { unit: second, requests_per_unit: 8 }
  - key: nolimit
"#;

    fn entries(pairs: &[(&str, &str)]) -> Vec<Entry> {
        pairs
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect()
    }

    #[test]
    fn precedence_depth_and_no_backtracking() {
        let config = Config::from_yaml(CONFIG).unwrap();
        let domain = config.domain("test").unwrap();
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<u32>);
        let cases: &[Case<'_>] = &[
            // exact beats wildcard beats key-only
            (&[("key1", "value1")], Some(1)),
            (&[("key1", "valueX")], Some(3)),
            (&[("key1", "vz")], Some(4)),
            (&[("key1", "other")], Some(5)),
            // a nested rule applies only when the walk ends on it
            (&[("key1", "value1"), ("subkey1", "anything")], Some(2)),
            (&[("key1", "valueX"), ("subkey1", "anything")], None),
            // more entries than the tree is deep: no limit
            (
                &[("key1", "value1"), ("subkey1", "a"), ("deeper", "b")],
                None,
            ),
            // unknown key
            (&[("nope", "x")], None),
            // a node without rate_limit gives no limit
            (&[("nolimit", "x")], None),
            // the walk ends on a node without a rule
            (&[("branch", "b")], None),
            // exact branch taken, then a miss below: no backtracking to the key-only branch
            (&[("branch", "b"), ("leaf", "y")], None),
            (&[("branch", "b"), ("leaf", "x")], Some(7)),
            (&[("branch", "c"), ("leaf", "y")], Some(8)),
            // glob in the middle of a value
            (&[("path", "/api/v1/users")], Some(6)),
            (&[("path", "/api/v1/orders")], None),
            // empty descriptor
            (&[], None),
        ];
        for (request, want) in cases {
            let got = find_rule(domain, &entries(request))
                .and_then(|m| m.rule.limit)
                .map(|l| l.requests_per_unit);
            assert_eq!(got, *want, "request {request:?}");
        }
    }

    #[test]
    fn share_threshold_reports_the_pattern() {
        let config = Config::from_yaml(CONFIG).unwrap();
        let domain = config.domain("test").unwrap();
        let m = find_rule(domain, &entries(&[("path", "/api/v2/users")])).unwrap();
        assert_eq!(m.shared_values, vec![(0, "/api/*/users")]);
        assert_eq!(m.rule.limit.unwrap().unit, Unit::Day);
        let m = find_rule(domain, &entries(&[("key1", "valueX")])).unwrap();
        assert!(m.shared_values.is_empty());
    }
}
