//! Outgrowing one machine on real engines: a 3-node NATS cluster with every
//! stream replicated three times, and ClickHouse as 2 shards x 2 replicas
//! (ReplicatedMergeTree on ZooKeeper, `Distributed` tables), each with two
//! instances of each service and a node killed with SIGKILL during load.
//! Every test ends, like the fault suite whose stack it uses, with exact
//! totals per region x offence type (the contract's query through the
//! cluster agreeing) and a clean `cctvctl audit`.

use std::time::Duration;

use crate::faults::{drain_stop_and_check, load, ClickHouseSide, FaultStack, Fleet, Nats};
use crate::scaling::paced_publisher;

/// Events per test.
const LOAD_EVENTS: usize = 20_000;
/// Longest wait for progress between faults (a deadline on a shared
/// machine, not a promise: the clean-clone CI of 2026-12-06 saw a NATS
/// failover stall the load for more than 90 s).
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(180);

/// Waits until `progress` reaches `at_least`; the fleet's logs say why not.
async fn wait_for<F, Fut>(what: &str, fleet: &Fleet, at_least: u64, progress: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    wait_for_with(what, fleet, at_least, progress, String::new).await;
}

/// [`wait_for`], with `servers()` (servers' log tails) in the failure.
async fn wait_for_with<F, Fut>(
    what: &str,
    fleet: &Fleet,
    at_least: u64,
    progress: F,
    servers: impl Fn() -> String,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let (progress, servers) = (&progress, &servers);
    cctv_testkit::poll(
        what,
        PROGRESS_TIMEOUT,
        Duration::from_millis(200),
        || async move {
            let now = progress().await;
            if now >= at_least {
                Ok(())
            } else {
                Err(format!(
                    "{now} of {at_least}\n{}\n{}",
                    fleet.logs(),
                    servers()
                ))
            }
        },
    )
    .await;
}

/// Rows replica `replica` of shard `shard` holds in its own table.
async fn rows_on(stack: &FaultStack, shard: usize, replica: usize) -> u64 {
    let Some(node) = stack
        .clickhouse_cluster
        .as_ref()
        .and_then(|cluster| cluster.replica(shard, replica))
    else {
        return 0;
    };
    let database = stack.cli_config().clickhouse.database;
    node.query(&format!(
        "SELECT count() FROM {database}.offence_events_local"
    ))
    .ok()
    .and_then(|text| text.trim().parse().ok())
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_during_load_and_restarted_later_changes_no_count() {
    // The node that leads the events stream: its loss moves the leader.
    kill_a_leading_nats_node_during_load(Leading::EventsStream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_leading_the_raw_consumer_killed_during_load_changes_no_count() {
    // The ingests' pulls wait on this consumer's leader: when its node dies
    // they must find the new leader by themselves (a pull can wait without
    // delivering or reporting a missed heartbeat; the ingest re-pulls after
    // `IDLE_REPULL`).
    kill_a_leading_nats_node_during_load(Leading::RawConsumer).await;
}

/// What the killed node leads.
#[derive(Debug, Clone, Copy)]
enum Leading {
    EventsStream,
    RawConsumer,
}

/// Two of each service on a 3-node NATS cluster under load: the node that
/// leads `leading` is killed with SIGKILL a third of the way in, the rest
/// of the cluster carries on to two thirds, the node comes back, and the
/// totals are exact.
async fn kill_a_leading_nats_node_during_load(leading: Leading) {
    let mut stack = FaultStack::start_with(3, ClickHouseSide::Shared).await;
    let load = load(LOAD_EVENTS);
    let mut fleet = stack.start_fleet(&[], &[]);
    // Some 4,000 events/s, so that the faults strike while events arrive.
    let publisher = paced_publisher(&stack, &load);
    let third = load.count / 3;
    wait_for("a third of the rows", &fleet, third, || stack.rows()).await;
    let cluster_info = match leading {
        Leading::EventsStream => stack
            .js
            .get_stream(&stack.streams.events.name)
            .await
            .expect("events stream")
            .info()
            .await
            .expect("stream info")
            .cluster
            .clone(),
        Leading::RawConsumer => stack
            .js
            .get_stream(&stack.streams.raw.name)
            .await
            .expect("raw stream")
            .consumer_info("cctv-ingest")
            .await
            .expect("raw consumer info")
            .cluster
            .clone(),
    };
    let leader = cluster_info
        .and_then(|cluster| cluster.leader)
        .unwrap_or_else(|| panic!("the {leading:?} has a leader"));
    let index = leader
        .trim_start_matches('n')
        .parse::<usize>()
        .expect("nodes are named n1, n2, n3")
        - 1;
    let Nats::Cluster(cluster) = &mut stack.nats else {
        panic!("a NATS cluster");
    };
    let node = cluster.node_mut(index).expect("the leader's node");
    tokio::task::block_in_place(|| node.kill());
    assert!(!node.is_running());
    // Two nodes of three carry on: rows keep coming.
    let two_thirds = 2 * load.count / 3;
    let deadline = tokio::time::Instant::now() + PROGRESS_TIMEOUT;
    loop {
        let rows = stack.rows().await;
        if rows >= two_thirds {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {PROGRESS_TIMEOUT:?} waiting for two thirds of the rows with \
             the {leading:?} leader's node down: {rows} of {two_thirds}\n{}\n{}\n{}",
            stack.nats_state().await,
            fleet.logs(),
            stack.nats.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Nats::Cluster(cluster) = &mut stack.nats else {
        panic!("a NATS cluster");
    };
    tokio::task::block_in_place(|| cluster.node_mut(index).expect("node").restart())
        .expect("the node restarts");
    publisher.await.expect("publisher");
    for service in fleet.ingests.iter_mut() {
        assert!(service.exited().is_none(), "{}", service.log_tail());
    }
    drain_stop_and_check(&stack, &load, &mut fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_replicas_killed_during_load_a_dead_shard_stalls_and_catches_up() {
    let mut stack = FaultStack::start_with(
        1,
        ClickHouseSide::Cluster {
            shards: 2,
            replicas: 2,
        },
    )
    .await;
    let load = load(LOAD_EVENTS);
    let mut fleet = stack.start_fleet(&[], &[]);
    // Some 4,000 events/s, so that the faults strike while events arrive.
    let publisher = paced_publisher(&stack, &load);

    // 1. The replica shard 2's partitions write to (its first) dies: they
    //    move to the second and go on.
    let fifth = load.count / 5;
    wait_for("a fifth of the rows", &fleet, fifth, || stack.rows()).await;
    let cluster = stack.clickhouse_cluster.as_mut().expect("cluster");
    tokio::task::block_in_place(|| cluster.replica_mut(1, 0).expect("replica").kill());
    let before = rows_on(&stack, 1, 1).await;
    wait_for(
        "shard 2 writes on its second replica",
        &fleet,
        before + 1_000,
        || rows_on(&stack, 1, 1),
    )
    .await;

    // 2. Shard 1 loses its second replica, then its first, its only live
    //    one: its partitions stall, shard 2's go on.
    let cluster = stack.clickhouse_cluster.as_mut().expect("cluster");
    tokio::task::block_in_place(|| {
        cluster.replica_mut(0, 1).expect("replica").kill();
        cluster.replica_mut(0, 0).expect("replica").kill();
    });
    let before = rows_on(&stack, 1, 1).await;
    wait_for(
        "shard 2 writes while shard 1 is down",
        &fleet,
        before + 1_000,
        || rows_on(&stack, 1, 1),
    )
    .await;
    for (process, _) in &mut fleet.aggregators {
        assert!(process.exited().is_none(), "{}", process.log_tail());
    }

    // 3. Everything returns; shard 1 catches up, the replicas fill in.
    let cluster = stack.clickhouse_cluster.as_mut().expect("cluster");
    tokio::task::block_in_place(|| -> Result<(), cctv_testkit::TestkitError> {
        cluster.replica_mut(0, 0).expect("replica").restart()?;
        cluster.replica_mut(0, 1).expect("replica").restart()?;
        cluster.replica_mut(1, 0).expect("replica").restart()
    })
    .expect("replicas restart");
    publisher.await.expect("publisher");
    drain_stop_and_check(&stack, &load, &mut fleet).await;
    // Each replica of a shard holds the same rows (synced by the check); the
    // shards add up.
    let shard_rows = [rows_on(&stack, 0, 0).await, rows_on(&stack, 1, 0).await];
    assert_eq!(rows_on(&stack, 0, 1).await, shard_rows[0]);
    assert_eq!(rows_on(&stack, 1, 1).await, shard_rows[1]);
    assert_eq!(shard_rows[0] + shard_rows[1], load.count);
    assert!(shard_rows.iter().all(|rows| *rows > 0), "{shard_rows:?}");
    rolled_up_on_the_cluster(&stack, load.count).await;
}

/// Rows of past days on both shards, rolled up from the cluster's
/// `Distributed` table into the rollup every node holds: every node's
/// `offence_totals` and `camera_totals` count what the rows hold.
async fn rolled_up_on_the_cluster(stack: &FaultStack, pipeline_rows: u64) {
    let cluster = stack.clickhouse_cluster.as_ref().expect("cluster");
    let database = stack.cli_config().clickhouse.database;
    for shard in 0..2 {
        let node = cluster.replica(shard, 0).expect("replica");
        node.query(&format!(
            "INSERT INTO {database}.offence_events_local \
             (event_id, detected_at, offence_type, region, camera_id, inserted_at, writer) \
             SELECT generateUUIDv4(), now() - 86400 * (2 + number % 5) - 3600, \
             if(number % 2 = 0, 'traffic.speeding', 'traffic.red_light'), \
             if(number % 3 = 0, 'KZ-75', 'KZ-71'), concat('CAM-PAST-', toString(number % 4)), \
             now() - 86400 * (2 + number % 5), 'past' FROM numbers(500)"
        ))
        .expect("rows of past days");
    }
    stack.sync_replicas().await;
    let store = stack.store();
    let report = store
        .roll_up(&cctv_store::RollupPolicy::default(), |_, _| {})
        .await
        .expect("roll up on the cluster");
    assert!(report.rolled >= 5, "{report:?}");
    let audit = cctv_cli::audit_rollups(&store, false).await.expect("audit");
    assert!(audit.differences.is_empty(), "{audit:?}");
    for shard in 0..2 {
        for replica in 0..2 {
            let node = cluster.replica(shard, replica).expect("replica");
            for table in ["offence_day_rollup", "camera_day_rollup", "rolled_days"] {
                node.query(&format!("SYSTEM SYNC REPLICA {database}.{table}"))
                    .expect("the node fetches the rollups");
            }
            for view in ["offence_totals", "camera_totals"] {
                let total = node
                    .query(&format!("SELECT sum(events) FROM {database}.{view}"))
                    .expect("totals on a node");
                assert_eq!(
                    total.trim().parse::<u64>().ok(),
                    Some(pipeline_rows + 1_000),
                    "{view} on shard {shard} replica {replica}"
                );
            }
            let rolled = node
                .query(&format!(
                    "SELECT count() FROM {database}.offence_day_rollup"
                ))
                .expect("rollup rows on a node");
            assert!(
                rolled.trim().parse::<u64>().unwrap_or(0) > 0,
                "rollup replicated to every node"
            );
        }
    }
}
