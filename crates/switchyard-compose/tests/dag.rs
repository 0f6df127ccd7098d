//! Property: for random DAGs of calls with random latencies, every call runs
//! exactly once, none starts before its dependencies end, none waits longer
//! than its critical path, and the route takes exactly the longest path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::BTreeMap, time::Duration};

use proptest::prelude::*;
use serde_json::json;
use support::{Behaviour, Fake, Seen};
use switchyard_compose::{CallConfig, ComposeConfig, ComposePlan, ComposeRequest, ResponseConfig};

/// A DAG: per call, its latency and its dependencies (on earlier calls only)
/// with whether each one is a data reference or an `after`.
fn dags() -> impl Strategy<Value = Vec<(u64, Vec<(usize, bool)>)>> {
    (1usize..9).prop_flat_map(|n| {
        (0..n)
            .map(|i| {
                let deps = proptest::collection::vec((0..i.max(1), any::<bool>()), 0..=i.min(3));
                (0u64..50, deps).prop_map(move |(ms, deps)| {
                    let deps = if i == 0 { Vec::new() } else { deps };
                    (ms, deps)
                })
            })
            .collect::<Vec<_>>()
    })
}

fn name(i: usize) -> String {
    format!("c{i}")
}

proptest! {
    #[test]
    fn random_dags_run_each_call_once_in_dependency_order(dag in dags()) {
        let mut calls = BTreeMap::new();
        for (i, (_, deps)) in dag.iter().enumerate() {
            let mut call = CallConfig { service: name(i), ..CallConfig::default() };
            let mut refs = Vec::new();
            for (d, data) in deps {
                if *data {
                    refs.push(format!("{{{}.body.n}}", name(*d)));
                } else {
                    call.after.push(name(*d));
                }
            }
            call.path = format!("/{}", refs.join("/"));
            calls.insert(name(i), call);
        }
        let config = ComposeConfig {
            calls,
            response: ResponseConfig::default(),
            timeout: Duration::from_secs(60),
        };
        let plan = ComposePlan::compile(&config, &|_: &str| true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let fake = Fake::new(
                dag.iter()
                    .enumerate()
                    .map(|(i, (ms, _))| (name(i), Behaviour::ok(*ms, json!({ "n": i })))),
            );
            let res = plan.execute(ComposeRequest::default(), &fake).await.unwrap();
            assert!(res.degraded.is_empty());

            // Expected start and end of each call from the critical paths.
            let mut end = vec![Duration::ZERO; dag.len()];
            let mut start = vec![Duration::ZERO; dag.len()];
            for (i, (ms, deps)) in dag.iter().enumerate() {
                start[i] = deps.iter().map(|(d, _)| end[*d]).max().unwrap_or_default();
                end[i] = start[i] + Duration::from_millis(*ms);
            }
            for (i, (_, deps)) in dag.iter().enumerate() {
                assert_eq!(fake.calls_to(&name(i)), 1, "c{i} runs once");
                let Some(Seen::Start { at, uri, .. }) = fake.start_of(&name(i)) else { unreachable!() };
                assert_eq!(at, start[i], "c{i} starts when its last dependency ends");
                let data: Vec<String> = deps.iter().filter(|(_, x)| *x).map(|(d, _)| d.to_string()).collect();
                assert_eq!(uri, format!("/{}", data.join("/")), "c{i} reads its dependencies' bodies");
            }
            assert!(fake.cancelled().is_empty());
            let body: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
            assert_eq!(body.as_object().unwrap().len(), dag.len());
        });
    }
}
