//! `AckedPublisher` against a real nats-server: every publish of a batch gets
//! its own answer (stored, duplicate, refused), concurrent batches do not mix
//! their acks, and a server that does not answer ends in `None`, not a hang.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::HeaderMap;
use cctv_bus::{AckedPublisher, PublishOutcome, StreamsConfig};
use cctv_testkit::NatsServer;

fn with_id(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    headers
}

/// A fresh server with the streams, a JetStream context and a publisher.
async fn setup() -> (NatsServer, async_nats::jetstream::Context, AckedPublisher) {
    let server = NatsServer::start().expect("nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    cctv_bus::ensure_streams(&js, &StreamsConfig::default())
        .await
        .unwrap();
    let publisher = AckedPublisher::new(client).await.unwrap();
    (server, js, publisher)
}

#[tokio::test]
async fn each_publish_of_a_batch_gets_its_own_outcome() {
    let (_server, js, publisher) = setup().await;

    let mut batch = publisher.batch();
    for index in 0..500 {
        let at = batch
            .publish(
                format!("cctv.raw.canonical.gw{}", index % 3),
                with_id(&format!("m-{index}")),
                format!("payload {index}").into(),
            )
            .await
            .unwrap();
        assert_eq!(at, index);
    }
    // A repeated id, and a subject no stream captures.
    batch
        .publish("cctv.raw.canonical.gw0", with_id("m-7"), "again".into())
        .await
        .unwrap();
    batch
        .publish("nowhere.at.all", with_id("x"), "lost".into())
        .await
        .unwrap();
    let acks = batch.acks(Duration::from_secs(10)).await;
    assert_eq!(acks.len(), 502);
    let mut sequences: Vec<u64> = acks[..500]
        .iter()
        .map(|ack| match ack {
            Some(PublishOutcome::Stored(sequence)) => *sequence,
            other => panic!("expected a stored ack, got {other:?}"),
        })
        .collect();
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=500).collect::<Vec<u64>>());
    assert_eq!(acks[500], Some(PublishOutcome::Duplicate(8)));
    assert!(
        matches!(&acks[501], Some(PublishOutcome::Refused(reason)) if reason.contains("503")),
        "{:?}",
        acks[501]
    );
    assert!(!acks[501].as_ref().unwrap().is_stored());

    // Stream state agrees: 500 messages, none of the repeat.
    let raw = StreamsConfig::default().raw.name;
    let mut stream = js.get_stream(&raw).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 500);
}

#[tokio::test]
async fn concurrent_batches_keep_their_own_acks() {
    let (_server, _js, publisher) = setup().await;
    let mut tasks = Vec::new();
    for task in 0..4u64 {
        let publisher = publisher.clone();
        tasks.push(tokio::spawn(async move {
            let mut batch = publisher.batch();
            for index in 0..300u64 {
                // Every fourth message of batch 1 repeats one of batch 0.
                let id = if task == 1 && index % 4 == 0 {
                    format!("t0-{index}")
                } else {
                    format!("t{task}-{index}")
                };
                batch
                    .publish("cctv.raw.canonical.gw", with_id(&id), id.clone().into())
                    .await
                    .unwrap();
            }
            (task, batch.acks(Duration::from_secs(10)).await)
        }));
    }
    let mut stored = 0;
    let mut duplicates = 0;
    for task in tasks {
        let (task, acks) = task.await.unwrap();
        assert_eq!(acks.len(), 300, "batch {task}");
        for ack in acks {
            match ack {
                Some(PublishOutcome::Stored(_)) => stored += 1,
                Some(PublishOutcome::Duplicate(_)) => duplicates += 1,
                other => panic!("batch {task}: {other:?}"),
            }
        }
    }
    // Batches 0 and 1 race for the 75 shared ids: each is stored once.
    assert_eq!(stored, 1200 - 75);
    assert_eq!(duplicates, 75);
}

#[tokio::test]
async fn a_server_that_stops_answering_ends_in_none_not_a_hang() {
    let (mut server, _js, publisher) = setup().await;
    server.kill();
    let mut batch = publisher.batch();
    // The client buffers while it reconnects; no ack can come.
    let _ = batch
        .publish("cctv.raw.canonical.gw", with_id("late"), "x".into())
        .await;
    let started = std::time::Instant::now();
    let acks = batch.acks(Duration::from_millis(500)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(acks.iter().all(Option::is_none), "{acks:?}");
}
