use std::collections::BTreeSet;

use futures_util::StreamExt;

use super::*;

fn reg(service: &str, id: &str, port: u16, owner: &str) -> Registration {
    let mut r = Registration::new(service, id, SocketAddr::from(([127, 0, 0, 1], port)), owner);
    r.ttl = Duration::from_secs(10);
    r
}

use std::net::SocketAddr;

async fn ids(registry: &EmbeddedRegistry, service: &str) -> Vec<String> {
    let listing = registry.list(service).await.unwrap();
    listing.instances.into_iter().map(|i| i.id).collect()
}

#[tokio::test(start_paused = true)]
async fn leases_expire_unless_renewed() {
    let registry = EmbeddedRegistry::open(None).unwrap();
    let a = registry
        .register(reg("users", "a", 9001, "host-a"))
        .await
        .unwrap();
    let b = registry
        .register(reg("users", "b", 9002, "host-b"))
        .await
        .unwrap();
    assert_eq!((a.revision, b.revision), (1, 2));
    assert_eq!(a.ttl, Duration::from_secs(10));
    let mut watch = registry.watch("users", Some(2)).await.unwrap();

    // Renew a (only) every 6s: b's lease runs out at 10s, a's never does.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(6)).await;
        let renewed = registry.renew(a.id).await.unwrap();
        assert_eq!(renewed.id, a.id);
        tracing::info!(ids = ?ids(&registry, "users").await, "after a renewal");
    }
    assert_eq!(ids(&registry, "users").await, ["a"]);

    // The sweeper deleted b: watchers saw it, at the next revision.
    let event = watch.next().await.unwrap().unwrap();
    assert_eq!(
        event,
        WatchEvent {
            revision: 3,
            kind: WatchEventKind::Delete {
                instance_id: "b".into()
            }
        }
    );
    assert_eq!(
        registry.renew(b.id).await.unwrap_err(),
        RegistryError::NotFound(format!(
            "lease {} is unknown or expired; register the instance again",
            b.id
        ))
    );

    // Stop renewing a: gone one ttl after its last renewal, even before the
    // sweeper runs (the lazy check), and then deleted by the sweeper.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(ids(&registry, "users").await.is_empty());
    assert!(registry.list_services().await.unwrap().is_empty());
    let event = watch.next().await.unwrap().unwrap();
    assert_eq!(event.revision, 4);
    assert_eq!(registry.revision(), 4);
}

#[tokio::test(start_paused = true)]
async fn reregistering_renews_and_updates_only_on_change() {
    let registry = EmbeddedRegistry::open(None).unwrap();
    let first = registry
        .register(reg("users", "a", 9001, "me"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Same registration again: a renewal, no new revision.
    let again = registry
        .register(reg("users", "a", 9001, "me"))
        .await
        .unwrap();
    assert_eq!((again.id, again.revision), (first.id, 1));
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(ids(&registry, "users").await, ["a"]);
    // A new address is a change with the same lease.
    let moved = registry
        .register(reg("users", "a", 9009, "me"))
        .await
        .unwrap();
    assert_eq!((moved.id, moved.revision), (first.id, 2));
    let listing = registry.list("users").await.unwrap();
    assert_eq!(listing.instances[0].addr.port(), 9009);
}

#[tokio::test(start_paused = true)]
async fn other_owners_and_bad_input_change_nothing() {
    let registry = EmbeddedRegistry::open(None).unwrap();
    registry
        .register(reg("users", "a", 9001, "host-a"))
        .await
        .unwrap();
    let before = registry.list("users").await.unwrap();

    let err = registry
        .deregister("users", "a", "host-b")
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
    assert_eq!(err.status(), 409);
    let err = registry
        .register(reg("users", "a", 9005, "host-b"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");

    let mut absurd = reg("users", "a", 9001, "host-a");
    absurd.ttl = Duration::from_secs(365 * 24 * 3600);
    let err = registry.register(absurd).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::InvalidRegistration(_)),
        "{err}"
    );
    assert_eq!(err.status(), 400);
    let mut absurd = reg("users", "a", 9001, "host-a");
    absurd.ttl = Duration::ZERO;
    assert!(registry.register(absurd).await.is_err());

    assert_eq!(
        registry.deregister("users", "nobody", "host-a").await,
        Err(RegistryError::NotFound(
            "service \"users\" has no instance \"nobody\"".into()
        ))
    );
    assert_eq!(registry.list("users").await.unwrap(), before);

    // The right owner may; once the lease expired, anyone may take the id.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let taken = registry
        .register(reg("users", "a", 9005, "host-b"))
        .await
        .unwrap();
    assert_eq!(
        registry.list("users").await.unwrap().instances[0].owner,
        "host-b"
    );
    registry.deregister("users", "a", "host-b").await.unwrap();
    assert!(registry.renew(taken.id).await.is_err());
}

#[tokio::test]
async fn watch_resumes_without_gaps_and_resyncs_when_compacted() {
    let registry = EmbeddedRegistry::open(None).unwrap();
    for i in 0..5u16 {
        registry
            .register(reg("users", &format!("u{i}"), 9000 + i, "me"))
            .await
            .unwrap();
        registry
            .register(reg("other", &format!("o{i}"), 9100 + i, "me"))
            .await
            .unwrap();
    }
    // From revision 4: the users changes at 5, 7, 9 (others interleave).
    let mut watch = registry.watch("users", Some(4)).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(watch.next().await.unwrap().unwrap().revision);
    }
    assert_eq!(seen, [5, 7, 9]);
    registry.deregister("users", "u0", "me").await.unwrap();
    let ev = watch.next().await.unwrap().unwrap();
    assert_eq!(ev.revision, 11);

    // No revision: a snapshot first.
    let mut fresh = registry.watch("users", None).await.unwrap();
    match fresh.next().await.unwrap().unwrap() {
        WatchEvent {
            revision: 11,
            kind: WatchEventKind::Resync { instances },
        } => assert_eq!(instances.len(), 4),
        other => panic!("expected a resync, got {other:?}"),
    }

    // Push the early revisions out of the history: resuming from one of them
    // is a resync, not a silent gap.
    for i in 0..HISTORY as u16 / 2 + 1 {
        let id = format!("x{i}");
        registry
            .register(reg("bulk", &id, 1 + i, "me"))
            .await
            .unwrap();
        registry.deregister("bulk", &id, "me").await.unwrap();
    }
    let mut late = registry.watch("users", Some(4)).await.unwrap();
    let ev = late.next().await.unwrap().unwrap();
    assert!(matches!(ev.kind, WatchEventKind::Resync { ref instances } if instances.len() == 4));
    assert_eq!(ev.revision, registry.revision());
    // From the future (a registry that lost its state): a resync too.
    let mut ahead = registry.watch("users", Some(u64::MAX)).await.unwrap();
    assert!(matches!(
        ahead.next().await.unwrap().unwrap().kind,
        WatchEventKind::Resync { .. }
    ));
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    let (lease, revision) = {
        let registry = EmbeddedRegistry::open(Some(&path)).unwrap();
        let mut r = reg("users", "a", 9001, "host-a");
        r.metadata.insert("zone".into(), "eu-1".into());
        let lease = registry.register(r).await.unwrap();
        registry
            .register(reg("users", "b", 9002, "host-b"))
            .await
            .unwrap();
        registry
            .register(reg("orders", "c", 9003, "host-c"))
            .await
            .unwrap();
        registry.deregister("users", "b", "host-b").await.unwrap();
        (lease, registry.revision())
    };
    assert_eq!(revision, 4);

    let registry = EmbeddedRegistry::open(Some(&path)).unwrap();
    assert_eq!(registry.revision(), revision);
    assert_eq!(registry.list_services().await.unwrap(), ["orders", "users"]);
    let users = registry.list("users").await.unwrap();
    assert_eq!(users.revision, revision);
    assert_eq!(users.instances.len(), 1);
    assert_eq!(users.instances[0].metadata["zone"], "eu-1");
    // The lease id survives, so the instance's renewals keep working.
    assert_eq!(registry.renew(lease.id).await.unwrap().id, lease.id);
    // New leases don't reuse old ids; revisions continue.
    let next = registry
        .register(reg("users", "d", 9004, "host-d"))
        .await
        .unwrap();
    assert!(next.id > lease.id);
    assert_eq!(next.revision, revision + 1);
    // Watchers from before the restart resync (the history is gone).
    let mut watch = registry.watch("users", Some(2)).await.unwrap();
    assert!(matches!(
        watch.next().await.unwrap().unwrap().kind,
        WatchEventKind::Resync { .. }
    ));

    // A second open of the same file while it is held is refused, clearly.
    let err = EmbeddedRegistry::open(Some(&path)).unwrap_err();
    assert!(matches!(err, RegistryError::Unavailable(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn restarted_instances_get_one_ttl_to_renew() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    {
        let registry = EmbeddedRegistry::open(Some(&path)).unwrap();
        registry
            .register(reg("users", "a", 9001, "me"))
            .await
            .unwrap();
    }
    // However long the registry was down, the instance gets a fresh ttl.
    tokio::time::advance(Duration::from_secs(3600)).await;
    let registry = EmbeddedRegistry::open(Some(&path)).unwrap();
    assert_eq!(ids(&registry, "users").await, ["a"]);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(ids(&registry, "users").await.is_empty());
    // The sweeper committed the delete: it stays gone after another restart.
    while registry.revision() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(registry);
    let registry = EmbeddedRegistry::open(Some(&path)).unwrap();
    assert!(ids(&registry, "users").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_match_a_model() {
    let registry = Arc::new(EmbeddedRegistry::open(None).unwrap());
    let mut watch = registry.watch("svc", Some(0)).await.unwrap();
    // 8 owners, each registering 50 ids and deregistering the odd ones.
    let mut tasks = tokio::task::JoinSet::new();
    for owner in 0..8u16 {
        let registry = Arc::clone(&registry);
        tasks.spawn(async move {
            for i in 0..50u16 {
                let id = format!("o{owner}-{i}");
                registry
                    .register(reg(
                        "svc",
                        &id,
                        1000 + owner * 100 + i,
                        &format!("owner{owner}"),
                    ))
                    .await
                    .unwrap();
                // Every other owner's attempt to take it is refused.
                let stolen = registry
                    .register(reg("svc", &id, 1, &format!("owner{}", (owner + 1) % 8)))
                    .await;
                assert!(matches!(stolen, Err(RegistryError::Conflict(_))));
                if i % 2 == 1 {
                    registry
                        .deregister("svc", &id, &format!("owner{owner}"))
                        .await
                        .unwrap();
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let model: BTreeSet<String> = (0..8)
        .flat_map(|o| (0..50).step_by(2).map(move |i| format!("o{o}-{i}")))
        .collect();
    let listing = registry.list("svc").await.unwrap();
    let listed: BTreeSet<String> = listing.instances.iter().map(|i| i.id.clone()).collect();
    assert_eq!(listed, model);
    assert_eq!(listing.revision, 8 * 50 + 8 * 25);

    // Replaying the watch gives the same set, with every revision once, in order.
    let mut replayed = BTreeSet::new();
    let mut last = 0;
    while last < listing.revision {
        let ev = watch.next().await.unwrap().unwrap();
        assert_eq!(ev.revision, last + 1);
        last = ev.revision;
        match ev.kind {
            WatchEventKind::Put { instance } => assert!(replayed.insert(instance.id)),
            WatchEventKind::Delete { instance_id } => assert!(replayed.remove(&instance_id)),
            WatchEventKind::Resync { .. } => panic!("no resync expected"),
        }
    }
    assert_eq!(replayed, model);
}

mod prop {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Register { id: u8, owner: u8, port: u16 },
        Deregister { id: u8, owner: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..6u8, 0..3u8, 1..5u16).prop_map(|(id, owner, port)| Op::Register {
                id,
                owner,
                port
            }),
            (0..6u8, 0..3u8).prop_map(|(id, owner)| Op::Deregister { id, owner }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any sequence of operations leaves the registry equal to a model
        /// of owners and ids, and the revision counts the changes.
        #[test]
        fn registry_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let registry = EmbeddedRegistry::open(None).unwrap();
                let mut model: BTreeMap<String, (String, u16)> = BTreeMap::new();
                let mut changes = 0u64;
                for op in ops {
                    match op {
                        Op::Register { id, owner, port } => {
                            let (id, owner) = (format!("i{id}"), format!("o{owner}"));
                            let result = registry.register(reg("s", &id, port, &owner)).await;
                            match model.get(&id) {
                                Some((o, _)) if *o != owner => prop_assert!(matches!(result, Err(RegistryError::Conflict(_)))),
                                Some((_, p)) if *p == port => prop_assert!(result.is_ok()),
                                _ => {
                                    prop_assert!(result.is_ok());
                                    changes += 1;
                                    model.insert(id, (owner, port));
                                }
                            }
                        }
                        Op::Deregister { id, owner } => {
                            let (id, owner) = (format!("i{id}"), format!("o{owner}"));
                            let result = registry.deregister("s", &id, &owner).await;
                            match model.get(&id) {
                                None => prop_assert!(matches!(result, Err(RegistryError::NotFound(_)))),
                                Some((o, _)) if *o != owner => prop_assert!(matches!(result, Err(RegistryError::Conflict(_)))),
                                Some(_) => {
                                    prop_assert!(result.is_ok());
                                    changes += 1;
                                    model.remove(&id);
                                }
                            }
                        }
                    }
                }
                let listing = registry.list("s").await.unwrap();
                let listed: BTreeMap<String, (String, u16)> = listing
                    .instances
                    .into_iter()
                    .map(|i| (i.id, (i.owner, i.addr.port())))
                    .collect();
                prop_assert_eq!(listed, model);
                prop_assert_eq!(listing.revision, changes);
                Ok(())
            })?;
        }
    }
}
