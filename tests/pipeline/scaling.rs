//! Scaling out and in, with real processes: aggregators started, killed,
//! paused and stopped while events flow, every partition owned by exactly
//! one live instance (a lease in the `CCTV_LEASES` bucket, fenced in
//! ClickHouse). Every test ends with exact totals per region x offence type
//! and a clean `cctvctl audit`, like the fault suite whose stack it uses.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::faults::{
    drain_stop_and_check, load, poll_until, publish_all, FaultStack, Fleet, Load, LEASE_TTL,
};
use crate::processes::{killed_by, scrape_metric, SIGKILL};

/// Events per test.
const LOAD_EVENTS: usize = 30_000;
/// Partitions of a default setup.
const PARTITIONS: usize = cctv_bus::subjects::DEFAULT_PARTITIONS as usize;
/// The takeover bound the issue sets for a dead owner's partitions: the lease
/// time to live (4 s here) plus a poll and the seen-set rebuild.
const TAKEOVER_BOUND: Duration = Duration::from_secs(15);
/// Longest wait for ownership to settle after a change of the fleet.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Publishes `load` in slices of 1,000 a quarter second apart (some 4,000
/// events/s), so that the fleet changes while events still arrive.
pub(crate) fn paced_publisher(stack: &FaultStack, load: &Load) -> tokio::task::JoinHandle<()> {
    let js = stack.js.clone();
    let slices: Vec<Vec<(String, Vec<u8>)>> =
        load.messages.chunks(1_000).map(<[_]>::to_vec).collect();
    tokio::spawn(async move {
        for slice in slices {
            publish_all(js.clone(), slice).await;
            // Pacing of the load, not a synchronisation.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// Owner instance of every partition lease, as the bucket holds them.
async fn lease_owners(stack: &FaultStack) -> BTreeMap<String, usize> {
    let bucket = cctv_bus::LeaseBucket::open(&stack.js, &stack.streams.leases)
        .await
        .expect("lease bucket");
    let mut owners = BTreeMap::new();
    for entry in bucket
        .entries(cctv_bus::LEASE_PREFIX)
        .await
        .expect("lease entries")
    {
        let owner = String::from_utf8_lossy(&entry.value).into_owned();
        *owners.entry(owner).or_insert(0) += 1;
    }
    owners
}

/// Partitions aggregator (on metrics `port`) says it owns.
fn owned(port: u16) -> usize {
    scrape_metric(port, "cctv_aggregator_partitions_owned").map_or(0, |value| value as usize)
}

/// Waits until the running aggregators of `fleet` own all partitions between
/// them, spread evenly (no two differ by more than one), with one lease per
/// partition in the bucket.
async fn wait_for_even_spread(stack: &FaultStack, fleet: &Fleet, timeout: Duration) {
    let ports: Vec<u16> = fleet
        .aggregators
        .iter()
        .filter(|(process, _)| process.pid().is_some())
        .map(|(_, port)| *port)
        .collect();
    let ports = &ports;
    cctv_testkit::poll(
        "an even spread of the partitions",
        timeout,
        Duration::from_millis(100),
        || async move {
            let counts: Vec<usize> = ports.iter().map(|port| owned(*port)).collect();
            let (least, most) = (
                counts.iter().copied().min().unwrap_or(0),
                counts.iter().copied().max().unwrap_or(0),
            );
            let owners = lease_owners(stack).await;
            if counts.iter().sum::<usize>() == PARTITIONS
                && most - least <= 1
                && owners.len() == ports.len()
                && owners.values().sum::<usize>() == PARTITIONS
            {
                Ok(())
            } else {
                Err(format!(
                    "{PARTITIONS} partitions over {} aggregators: they say they own \
                     {counts:?}, the bucket's leases are {owners:?}\n{}",
                    ports.len(),
                    fleet.logs()
                ))
            }
        },
    )
    .await;
}

/// The operator's mistake of the issue: a second ingest and a second
/// aggregator started with the same config during load. The partitions are
/// split between the two aggregators, and nothing is counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_aggregators_and_two_ingests_with_identical_configs_count_exactly() {
    let stack = FaultStack::start(false).await;
    let load = load(LOAD_EVENTS);
    let mut fleet = stack.start_fleet(&[], &[]);
    let publisher = paced_publisher(&stack, &load);
    wait_for_even_spread(&stack, &fleet, SETTLE_TIMEOUT).await;

    // `cctvctl status` shows the same: 16 partitions, two instances with 8
    // each, a consumer per partition.
    let status = cctv_cli::pipeline_status(&stack.cli_config(), "cctv-aggregator")
        .await
        .expect("status");
    let text = cctv_cli::render_status(&status);
    assert_eq!(status.partitions, Some(PARTITIONS as u16), "{text}");
    assert_eq!(status.unowned(), 0, "{text}");
    let owned: Vec<usize> = status.members.iter().map(|m| m.partitions_owned).collect();
    assert_eq!(owned, [PARTITIONS / 2, PARTITIONS / 2], "{text}");
    assert!(
        status.rows.iter().all(|row| row.consumer.is_some()
            && row
                .lease_age_seconds
                .is_some_and(|age| age < LEASE_TTL.as_secs_f64() * 2.0)),
        "{text}"
    );

    publisher.await.expect("publisher");
    drain_stop_and_check(&stack, &load, &mut fleet).await;
}

/// Kills the fleet's first aggregator with SIGKILL and waits until the one
/// on metrics port `survivor` owns every partition (within the takeover
/// bound).
async fn kill_the_first_and_wait_for_the_survivor(fleet: &mut Fleet, survivor: u16) {
    let status = fleet.aggregators[0].0.kill9();
    assert!(killed_by(status, SIGKILL), "{status:?}");
    let killed_at = tokio::time::Instant::now();
    poll_until(
        "the survivor owning every partition",
        TAKEOVER_BOUND,
        || async { owned(survivor) == PARTITIONS },
    )
    .await;
    let takeover = killed_at.elapsed();
    println!("takeover of a killed aggregator's partitions: {takeover:?}");
}

/// One of two aggregators killed with SIGKILL during load: the survivor
/// owns every partition within the takeover bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_aggregators_killed_the_survivor_takes_every_partition_over() {
    let stack = FaultStack::start(false).await;
    let load = load(LOAD_EVENTS);
    let mut fleet = stack.start_fleet(&[], &[]);
    let publisher = paced_publisher(&stack, &load);
    let ports: Vec<u16> = fleet.aggregators.iter().map(|(_, port)| *port).collect();
    wait_for_even_spread(&stack, &fleet, SETTLE_TIMEOUT).await;
    let quarter = load.count / 4;
    poll_until("a quarter of the rows", SETTLE_TIMEOUT, || async {
        stack.rows().await >= quarter
    })
    .await;

    kill_the_first_and_wait_for_the_survivor(&mut fleet, ports[1]).await;
    let owners = lease_owners(&stack).await;
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners.values().sum::<usize>(), PARTITIONS, "{owners:?}");

    publisher.await.expect("publisher");
    drain_stop_and_check(&stack, &load, &mut fleet).await;
}

/// One of two aggregators killed with SIGKILL while their shard is busy
/// (`busy_rows_per_second` low enough for this load, so the partition
/// batches are allowed to wait `batch_max_age_busy`, 1 s, instead of 200 ms):
/// the batches the killed one held are read again by the survivor, and
/// nothing is lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_aggregators_killed_while_their_shard_is_busy_counts_exactly() {
    let mut stack = FaultStack::start(false).await;
    stack.aggregator_settings =
        "busy_rows_per_second = 500\nbatch_max_age_busy = \"1s\"\n".to_string();
    // About 15 s of load at the paced publisher's 4,000 events/s.
    let load = load(2 * LOAD_EVENTS);
    let mut fleet = stack.start_fleet(&[], &[]);
    let publisher = paced_publisher(&stack, &load);
    let ports: Vec<u16> = fleet.aggregators.iter().map(|(_, port)| *port).collect();
    wait_for_even_spread(&stack, &fleet, SETTLE_TIMEOUT).await;
    let ports_ref = &ports;
    poll_until(
        "both aggregators finding the shard busy",
        SETTLE_TIMEOUT,
        || async move {
            ports_ref
                .iter()
                .all(|port| scrape_metric(*port, "cctv_aggregator_shard_busy") == Some(1.0))
        },
    )
    .await;
    assert!(
        stack.rows().await < load.count,
        "the load ended before the kill: {} rows of {}",
        stack.rows().await,
        load.count
    );

    kill_the_first_and_wait_for_the_survivor(&mut fleet, ports[1]).await;

    publisher.await.expect("publisher");
    drain_stop_and_check(&stack, &load, &mut fleet).await;
}

/// An aggregator paused with SIGSTOP past its lease: the other takes its
/// partitions over; resumed with SIGCONT, the stale one finds its leases
/// gone, logs it and writes nothing for them (the fence), then rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_paused_past_its_lease_loses_it_and_writes_nothing_stale() {
    let stack = FaultStack::start(false).await;
    let load = load(LOAD_EVENTS);
    let mut fleet = stack.start_fleet(&[], &[]);
    let publisher = paced_publisher(&stack, &load);
    let ports: Vec<u16> = fleet.aggregators.iter().map(|(_, port)| *port).collect();
    wait_for_even_spread(&stack, &fleet, SETTLE_TIMEOUT).await;
    let quarter = load.count / 4;
    poll_until("a quarter of the rows", SETTLE_TIMEOUT, || async {
        stack.rows().await >= quarter
    })
    .await;

    fleet.aggregators[0].0.pause();
    // The other instance sees the paused one's leases and member key stop
    // changing and takes every partition over.
    poll_until(
        "the running aggregator owning every partition",
        TAKEOVER_BOUND + LEASE_TTL,
        || async { owned(ports[1]) == PARTITIONS },
    )
    .await;
    let owners = lease_owners(&stack).await;
    assert_eq!(owners.len(), 1, "one owner of every lease: {owners:?}");
    fleet.aggregators[0].0.resume();
    poll_until(
        "the resumed aggregator logging its loss",
        SETTLE_TIMEOUT,
        || async { fleet.aggregators[0].0.log_contains("lost the lease") },
    )
    .await;
    // It rejoins: the partitions are spread over both again.
    wait_for_even_spread(&stack, &fleet, SETTLE_TIMEOUT).await;

    publisher.await.expect("publisher");
    drain_stop_and_check(&stack, &load, &mut fleet).await;
}

/// From one aggregator to three and back to one during load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_from_one_aggregator_to_three_and_back_counts_exactly() {
    let stack = FaultStack::start(false).await;
    let load = load(LOAD_EVENTS);
    let port = cctv_testkit::free_port().expect("free port");
    let mut fleet = Fleet {
        ingests: vec![stack.start_ingest("-a", &[]), stack.start_ingest("-b", &[])],
        aggregators: vec![(stack.start_aggregator("-a", port, &[]), port)],
    };
    let publisher = paced_publisher(&stack, &load);
    wait_for_even_spread(&stack, &fleet, SETTLE_TIMEOUT).await;
    poll_until("a sixth of the rows", SETTLE_TIMEOUT, || async {
        stack.rows().await >= load.count / 6
    })
    .await;

    for label in ["-b", "-c"] {
        let port = cctv_testkit::free_port().expect("free port");
        fleet
            .aggregators
            .push((stack.start_aggregator(label, port, &[]), port));
    }
    wait_for_even_spread(&stack, &fleet, SETTLE_TIMEOUT).await;
    poll_until("half of the rows", SETTLE_TIMEOUT * 2, || async {
        stack.rows().await >= load.count / 2
    })
    .await;

    // Back to one: the two newer ones stop with SIGTERM, handing over.
    for (process, _) in fleet.aggregators.iter_mut().skip(1) {
        process.terminate();
    }
    for (process, _) in fleet.aggregators.iter_mut().skip(1) {
        let status = process.wait_exit(Duration::from_secs(40)).await;
        assert!(status.success(), "exit {status:?}\n{}", process.log_tail());
        assert!(
            process.log_contains("lease released"),
            "{}",
            process.log_tail()
        );
    }
    wait_for_even_spread(&stack, &fleet, SETTLE_TIMEOUT).await;

    publisher.await.expect("publisher");
    drain_stop_and_check(&stack, &load, &mut fleet).await;
}
