//! A topology that heals: every stream and bucket deleted at runtime is noticed by the
//! services that need it, `/readyz` says so, and it is recreated without a restart.

use std::time::Duration;

use kore_sim::KoreSimConfig;
use serde_json::Value;
use shared::topology::{buckets, Resource};
use testkit::wait;

use crate::helpers::jetstream;
use crate::stack::{Stack, WAIT};

const CHECK: (&str, &str) = ("TOPOLOGY_CHECK_INTERVAL", "300ms");

/// `/readyz` as (status, body).
async fn readyz(base: &str) -> Option<(u16, Value)> {
    let response = reqwest::get(format!("{base}/readyz")).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

/// Deletes `resource` and waits until the service at `base` reports it missing (503), then
/// ready again (200).
async fn delete_and_watch(stack: &Stack, resource: Resource, base: &str) {
    let js = jetstream(&stack.nats).await;
    js.delete_stream(resource.stream_name())
        .await
        .unwrap_or_else(|e| panic!("delete {}: {e}", resource.name()));
    wait::until(
        WAIT,
        &format!("/readyz at {base} to report {} missing", resource.name()),
        || async {
            let (status, body) = readyz(base).await?;
            (status == 503 && body["resources"][resource.name()] == false).then_some(())
        },
    )
    .await;
    wait::until(
        WAIT,
        &format!("{} recreated and /readyz at {base} 200", resource.name()),
        || async {
            let (status, body) = readyz(base).await?;
            (status == 200 && body["resources"][resource.name()] == true).then_some(())
        },
    )
    .await;
    js.get_stream(resource.stream_name())
        .await
        .unwrap_or_else(|e| panic!("{} exists again: {e}", resource.name()));
}

/// Each stream and bucket is deleted in turn; the service that needs it reports 503 and
/// recreates it; events are accepted again within seconds and still answered afterwards.
#[tokio::test]
async fn every_deleted_stream_or_bucket_is_recreated_and_readiness_tells() {
    let stack = Stack::start(&[CHECK], &[CHECK], KoreSimConfig::default()).await;
    let test_scheduler = stack
        .scheduler(&[
            ("METRICS_INTERVAL", "0s"),
            ("SCHEDULER_ID", "topology"),
            CHECK,
        ])
        .await;
    let scheduler = test_scheduler.base.clone();
    let ingress = stack.ingress.ops.clone();
    let worker = stack.workers[0].base.clone();
    wait::until(WAIT, "every service ready", || async {
        for base in [&ingress, &worker, &scheduler] {
            (readyz(base).await?.0 == 200).then_some(())?;
        }
        Some(())
    })
    .await;
    let (_, body) = readyz(&ingress).await.unwrap();
    assert_eq!(
        body["resources"].as_object().unwrap().len(),
        2,
        "the ingress covers the two streams it writes: {body}"
    );

    // The events stream: a publish finds no stream, the ingress answers 503 and recreates it.
    let js = jetstream(&stack.nats).await;
    js.delete_stream(Resource::Events.stream_name())
        .await
        .unwrap();
    let event = crate::helpers::message_event("user-heal", "still there?");
    let started = std::time::Instant::now();
    let statuses = std::cell::RefCell::new(Vec::new());
    wait::until(
        Duration::from_secs(5),
        "an event accepted again after the events stream was deleted",
        || async {
            let (status, _) = stack.ingress.send(&event, Some("heal-1")).await;
            statuses.borrow_mut().push(status);
            (status == 202).then_some(())
        },
    )
    .await;
    let statuses = statuses.into_inner();
    eprintln!(
        "TOPOLOGY events stream deleted: accepted again after {:?}, statuses {statuses:?}",
        started.elapsed()
    );
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 503),
        "only 202 or 503 meanwhile: {statuses:?}"
    );

    for (resource, base) in [
        (Resource::KoreReplies, &ingress),
        (Resource::Events, &worker),
        (Resource::DeadLetters, &worker),
        (Resource::Bucket(buckets::CONVERSATIONS), &worker),
        (Resource::Bucket(buckets::PROCESSED), &worker),
        (Resource::Bucket(buckets::LEASES), &scheduler),
    ] {
        delete_and_watch(&stack, resource, base).await;
    }

    // The worker's consumers were rebuilt on the new events stream: a customer is answered.
    stack
        .khoros
        .send_text("user-healed", "hello again")
        .expect("inject");
    assert_eq!(
        stack.replies("user-healed", 1).await,
        ["You said: hello again"]
    );

    // Last, as it takes the token with it (re-seeding a lost token is the scheduler's job).
    delete_and_watch(&stack, Resource::Bucket(buckets::TOKENS), &worker).await;
    test_scheduler.shutdown.cancel();
}
