//! Dependency order between the services of one node (`depends_on` in `svc.toml`): which
//! services start before which, which stop first, and the cycles and missing names that make
//! an order impossible. Pure functions of a name graph (no clock, no I/O, no recursion), so
//! every rule is unit- and property-tested; the hosting layer resolves names to service ids
//! and performs the starts and stops.

use std::collections::{BTreeMap, BTreeSet};

/// Most names one manifest may list in `depends_on`.
pub const MAX_DEPENDS_ON: usize = 16;

/// Each service's name → the names it depends on. A name several staged services share (an
/// upgrade's old and new image) has the union of their dependencies.
pub type DepGraph = BTreeMap<String, BTreeSet<String>>;

/// Why no order exists; the message names the services involved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// A service depends on a name no staged service has.
    #[error(
        "service `{service}` depends on `{dependency}`, which is not staged on this node; \
         stage an image whose manifest is named `{dependency}` first"
    )]
    Missing {
        /// The service whose `depends_on` names it.
        service: String,
        /// The name nothing staged has.
        dependency: String,
    },
    /// The services depend on each other in a cycle (first and last name are the same).
    #[error(
        "services depend on each other in a cycle: {}; remove one of these names from a \
         `depends_on`",
        .cycle.join(" -> ")
    )]
    Cycle {
        /// The cycle, e.g. `["a", "b", "a"]`.
        cycle: Vec<String>,
    },
}

/// Whether a service is being visited (on the current path) or done.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    OnPath,
    Done,
}

/// The dependencies of `name`, last-first (popped in ascending order: deterministic output).
fn deps_of<'a>(graph: &'a DepGraph, name: &str) -> Vec<&'a str> {
    graph
        .get(name)
        .map(|d| d.iter().rev().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Depth-first walk from `roots` (iterative: the graph comes from manifests), post-order.
fn walk<'a>(
    graph: &'a DepGraph,
    roots: impl IntoIterator<Item = &'a str>,
    missing_ok: bool,
) -> Result<Vec<&'a str>, OrderError> {
    let mut mark: BTreeMap<&'a str, Mark> = BTreeMap::new();
    let mut order = Vec::new();
    for root in roots {
        if mark.contains_key(root) {
            continue;
        }
        mark.insert(root, Mark::OnPath);
        let mut stack: Vec<(&'a str, Vec<&'a str>)> = vec![(root, deps_of(graph, root))];
        while let Some((name, pending)) = stack.last_mut() {
            let name = *name;
            let Some(dep) = pending.pop() else {
                mark.insert(name, Mark::Done);
                order.push(name);
                stack.pop();
                continue;
            };
            let Some((dep, _)) = graph.get_key_value(dep) else {
                if missing_ok {
                    continue;
                }
                return Err(OrderError::Missing {
                    service: name.to_string(),
                    dependency: dep.to_string(),
                });
            };
            match mark.get(dep.as_str()) {
                Some(Mark::Done) => {}
                Some(Mark::OnPath) => {
                    let from = stack
                        .iter()
                        .position(|(n, _)| *n == dep.as_str())
                        .unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[from..].iter().map(|(n, _)| n.to_string()).collect();
                    cycle.push(dep.clone());
                    return Err(OrderError::Cycle { cycle });
                }
                None => {
                    mark.insert(dep.as_str(), Mark::OnPath);
                    stack.push((dep.as_str(), deps_of(graph, dep)));
                }
            }
        }
    }
    Ok(order)
}

/// The order to start `roots` in: every service they need (transitively), each after all it
/// depends on, then the roots themselves. A root that is not in the graph has no
/// dependencies. A dependency nobody has is [`OrderError::Missing`]; a cycle
/// [`OrderError::Cycle`].
pub fn start_order(graph: &DepGraph, roots: &[&str]) -> Result<Vec<String>, OrderError> {
    Ok(walk(graph, roots.iter().copied(), false)?
        .into_iter()
        .map(str::to_string)
        .collect())
}

/// Checks the whole graph has no cycle. Dependencies nobody has yet are allowed (they may be
/// staged later; starting is what refuses them).
pub fn check_acyclic(graph: &DepGraph) -> Result<(), OrderError> {
    walk(graph, graph.keys().map(String::as_str), true).map(|_| ())
}

/// The order to stop every service of `graph` in (a node shutting down): dependents before
/// what they depend on. Names nobody has are ignored; a cycle (which staging refuses) falls
/// back to name order.
pub fn shutdown_order(graph: &DepGraph) -> Vec<String> {
    match walk(graph, graph.keys().map(String::as_str), true) {
        Ok(order) => order.into_iter().rev().map(str::to_string).collect(),
        Err(_) => graph.keys().cloned().collect(),
    }
}

/// The order to stop `target` in when `graph` holds the services that run: every running
/// service that depends on it (transitively) first, dependents before what they depend on,
/// `target` last.
pub fn stop_order(graph: &DepGraph, target: &str) -> Result<Vec<String>, OrderError> {
    // Who depends on each name, among the running services.
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, deps) in graph {
        for dep in deps {
            dependents
                .entry(dep.as_str())
                .or_default()
                .push(name.as_str());
        }
    }
    let mut affected: BTreeSet<&str> = BTreeSet::new();
    let mut queue = vec![target];
    while let Some(name) = queue.pop() {
        for d in dependents.get(name).into_iter().flatten() {
            if affected.insert(*d) {
                queue.push(*d);
            }
        }
    }
    if affected.contains(target) {
        // The target depends on itself through its dependents.
        return Err(walk(graph, [target], true)
            .err()
            .unwrap_or_else(|| OrderError::Cycle {
                cycle: vec![target.to_string(), target.to_string()],
            }));
    }
    // Start order of the affected services among themselves, reversed: dependents first.
    let sub: DepGraph = affected
        .iter()
        .map(|n| {
            let deps = graph.get(*n).map_or_else(BTreeSet::new, |d| {
                d.iter()
                    .filter(|d| affected.contains(d.as_str()))
                    .cloned()
                    .collect()
            });
            (n.to_string(), deps)
        })
        .collect();
    let mut order = walk(&sub, sub.keys().map(String::as_str), false)?;
    order.reverse();
    let mut order: Vec<String> = order.into_iter().map(str::to_string).collect();
    order.push(target.to_string());
    Ok(order)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn graph(edges: &[(&str, &[&str])]) -> DepGraph {
        edges
            .iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn dependencies_start_first_in_a_fixed_order() {
        let g = graph(&[
            ("web", &["cache", "db"]),
            ("cache", &["db"]),
            ("db", &[]),
            ("other", &[]),
        ]);
        assert_eq!(start_order(&g, &["web"]).unwrap(), ["db", "cache", "web"]);
        assert_eq!(start_order(&g, &["cache"]).unwrap(), ["db", "cache"]);
        assert_eq!(start_order(&g, &["db"]).unwrap(), ["db"]);
        assert_eq!(
            start_order(&g, &["other", "web"]).unwrap(),
            ["other", "db", "cache", "web"]
        );
        // A root nobody staged has no dependencies.
        assert_eq!(start_order(&g, &["new"]).unwrap(), ["new"]);
    }

    #[test]
    fn a_missing_dependency_names_both_services() {
        let g = graph(&[("web", &["db"]), ("db", &["disk"])]);
        let err = start_order(&g, &["web"]).unwrap_err();
        assert_eq!(
            err,
            OrderError::Missing {
                service: "db".into(),
                dependency: "disk".into()
            }
        );
        assert!(err.to_string().contains("`db` depends on `disk`"), "{err}");
        check_acyclic(&g).unwrap();
    }

    #[test]
    fn a_cycle_names_its_services() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]);
        let err = start_order(&g, &["d"]).unwrap_err();
        assert_eq!(
            err,
            OrderError::Cycle {
                cycle: vec!["a".into(), "b".into(), "c".into(), "a".into()]
            }
        );
        assert!(err.to_string().contains("a -> b -> c -> a"), "{err}");
        assert!(matches!(check_acyclic(&g), Err(OrderError::Cycle { .. })));
        let self_loop = graph(&[("a", &["a"])]);
        assert_eq!(
            check_acyclic(&self_loop).unwrap_err(),
            OrderError::Cycle {
                cycle: vec!["a".into(), "a".into()]
            }
        );
    }

    #[test]
    fn dependents_stop_first() {
        let g = graph(&[
            ("web", &["cache", "db"]),
            ("cache", &["db"]),
            ("db", &[]),
            ("other", &[]),
        ]);
        assert_eq!(stop_order(&g, "db").unwrap(), ["web", "cache", "db"]);
        assert_eq!(stop_order(&g, "cache").unwrap(), ["web", "cache"]);
        assert_eq!(stop_order(&g, "web").unwrap(), ["web"]);
        assert_eq!(shutdown_order(&g), ["web", "other", "cache", "db"]);
        // Not running (not in the graph): stops just itself.
        assert_eq!(stop_order(&g, "gone").unwrap(), ["gone"]);
        let looped = graph(&[("a", &["b"]), ("b", &["a"])]);
        assert!(matches!(
            stop_order(&looped, "a"),
            Err(OrderError::Cycle { .. })
        ));
    }

    /// Random acyclic graphs: service i may depend only on services j < i.
    fn dag() -> impl Strategy<Value = DepGraph> {
        (1usize..24).prop_flat_map(|n| {
            proptest::collection::vec(proptest::collection::btree_set(0usize..64, 0..5), n)
                .prop_map(move |sets| {
                    sets.into_iter()
                        .enumerate()
                        .map(|(i, deps)| {
                            let deps = deps
                                .into_iter()
                                .filter(|_| i > 0)
                                .map(|d| format!("s{}", d % i.max(1)))
                                .collect();
                            (format!("s{i}"), deps)
                        })
                        .collect()
                })
        })
    }

    proptest! {
        #[test]
        fn every_service_starts_after_all_it_depends_on(g in dag(), pick in 0usize..24) {
            let names: Vec<&str> = g.keys().map(String::as_str).collect();
            let root = names[pick % names.len()];
            let order = start_order(&g, &[root]).unwrap();
            let at: BTreeMap<&str, usize> =
                order.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
            prop_assert_eq!(at.len(), order.len(), "each service once");
            prop_assert_eq!(order.last().map(String::as_str), Some(root));
            for name in &order {
                for dep in &g[name] {
                    prop_assert!(at[dep.as_str()] < at[name.as_str()], "{} before {}", dep, name);
                }
            }
            // Exactly what the root needs: everything in the order is reachable from it.
            let all = start_order(&g, &names).unwrap();
            prop_assert_eq!(all.len(), g.len());
            prop_assert!(check_acyclic(&g).is_ok());
        }

        #[test]
        fn every_dependent_stops_before_what_it_depends_on(g in dag(), pick in 0usize..24) {
            let names: Vec<&str> = g.keys().map(String::as_str).collect();
            let target = names[pick % names.len()];
            let order = stop_order(&g, target).unwrap();
            let at: BTreeMap<&str, usize> =
                order.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
            prop_assert_eq!(order.last().map(String::as_str), Some(target));
            for name in &order {
                for dep in &g[name] {
                    if let Some(d) = at.get(dep.as_str()) {
                        prop_assert!(at[name.as_str()] < *d, "{} stops before {}", name, dep);
                    }
                }
            }
            // Every running service that needs the target (transitively) is stopped.
            for name in g.keys() {
                let needs = start_order(&g, &[name]).unwrap();
                prop_assert_eq!(
                    needs.iter().any(|n| n == target),
                    at.contains_key(name.as_str()),
                    "{} needs {}: {:?}", name, target, needs
                );
            }
        }

        #[test]
        fn a_back_edge_is_always_a_cycle_naming_its_services(g in dag(), pick in 0usize..24) {
            // Add an edge from the first dependency of some service back to it.
            let mut g = g;
            let edges: Vec<(String, String)> = g
                .iter()
                .filter_map(|(n, d)| d.iter().next().map(|d| (n.clone(), d.clone())))
                .collect();
            if edges.is_empty() {
                return Ok(());
            }
            let (name, dep) = edges[pick % edges.len()].clone();
            g.get_mut(&dep).unwrap().insert(name.clone());
            let Err(OrderError::Cycle { cycle }) = check_acyclic(&g) else {
                return Err(TestCaseError::fail("no cycle reported"));
            };
            prop_assert_eq!(cycle.first(), cycle.last());
            for pair in cycle.windows(2) {
                prop_assert!(g[&pair[0]].contains(&pair[1]), "{:?} is an edge", pair);
            }
        }
    }
}
