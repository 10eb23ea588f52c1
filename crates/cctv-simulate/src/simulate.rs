//! The simulator (`cctvctl simulate`, the benchmarks): a fleet of cameras publishing offences to
//! `cctv.raw.<format>.<gateway_id>` in canonical JSON, one vendor format, or
//! each camera in its own vendor's format (`--format mixed`), with the
//! lifecycle repeats, heartbeats, plate reads and broken messages real
//! devices send; and the totals (and per-message outcomes) the pipeline must
//! produce.
//!
//! The generator ([`Generator`]) is pure and seeded: it decides camera,
//! offence, time and payloads of every step and whether it is republished,
//! so a run is reproducible with `--seed`. The publisher keeps many JetStream
//! publishes in flight in batches, awaits their acks and retries failures.
//! With `--batch N` the messages go out packed into CloudEvents batches of up
//! to N items per gateway on `cctv.raw.batch.<gateway_id>` ([`BatchPacker`]);
//! what the pipeline must make of them does not change.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use cctv_bus::{headers, subjects, AckBatch, AckedPublisher, NatsConfig, PublishOutcome};
use cctv_event::{CameraRegistry, Regions, Taxonomy, UNKNOWN_REGION};
use cctv_normalize::{BatchBuilder, BATCH_CONTENT_TYPE, MAX_BATCH_BYTES, MAX_BATCH_ITEMS};
use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, TimeDelta, TimeZone as _, Utc};
use chrono_tz::Tz;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::day::{parse_day, yesterday, DAY_TIMEZONE};
use crate::expectation::RawOutcomes;
use crate::vendors::{self, vocabulary, Device, Expected, Format, OffenceSpec, VendorMessage};
use crate::Expectation;

/// Publishes per batch of acks.
const PUBLISH_BATCH: usize = 1000;
/// Batches whose acks may be outstanding at once (with the batch being
/// filled, at most 5,000 publishes unanswered).
const MAX_IN_FLIGHT_BATCHES: usize = 4;
/// How long a sealed batch waits for its acks before its unanswered
/// publishes are retried (same `Nats-Msg-Id`, so a late ack is harmless).
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Republished duplicates go out this many originals after their first copy,
/// well inside the raw stream's duplicate window at any sensible rate.
const DUPLICATE_DELAY_MESSAGES: u64 = 500;
/// Rounds of retrying failed publishes before giving up.
const MAX_RETRY_ROUNDS: u32 = 5;
/// Unregistered cameras per region that carry a payload region.
const UNREGISTERED_CAMERAS_PER_REGION: usize = 2;
/// Cameras that carry no region at all.
const REGIONLESS_CAMERAS: usize = 4;
/// Pacing tick of `--rate`.
const PACING_TICK: Duration = Duration::from_millis(10);
/// Largest batch `--batch` writes: the contract's limit less room for the
/// headers, which count against the server's `max_payload` (1 MiB by
/// default) as well.
const SIMULATED_BATCH_MAX_BYTES: usize = MAX_BATCH_BYTES - 4096;
/// `<format>` token of the batch subject `cctv.raw.batch.<gateway_id>`.
const BATCH_SUBJECT_TOKEN: &str = "batch";
/// Header naming a batch's content type.
const CONTENT_TYPE_HEADER: &str = "Content-Type";

/// Flags of `cctvctl simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Distinct events to publish.
    #[arg(long, default_value_t = 60_000)]
    pub count: u64,
    /// Events per second; 0 publishes as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Camera registry CSV (the one the ingest service uses).
    #[arg(long, required_unless_present = "cameras", conflicts_with = "cameras")]
    pub registry: Option<PathBuf>,
    /// Without a registry: synthesize this many unregistered cameras spread
    /// over all regions, each sending its region in the payload.
    #[arg(long)]
    pub cameras: Option<usize>,
    /// Share of events from unregistered cameras with a payload region; a
    /// further quarter of this share comes from cameras with no region.
    #[arg(long, default_value_t = 0.02)]
    pub unknown_share: f64,
    /// Gateways the cameras are spread over (`sim-<run_id>-<k>`).
    #[arg(long, default_value_t = 8)]
    pub gateways: usize,
    /// Run id; default 8 random hex characters.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Local day (Asia/Almaty) of the detections; default yesterday.
    #[arg(long, value_parser = parse_day)]
    pub day: Option<NaiveDate>,
    /// Random seed; default random.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the expected totals as JSON to this file.
    #[arg(long)]
    pub expect_out: Option<PathBuf>,
    /// Share of events published a second time, identically.
    #[arg(long, default_value_t = 0.01)]
    pub duplicates: f64,
    /// Payload format: `canonical`, one vendor (`hikvision`, `dahua`,
    /// `onvif`, `deepstream`, `frigate`: every registered camera speaks it),
    /// or `mixed` (each camera speaks the format of its registry identity,
    /// canonical when it has none). Unregistered cameras speak canonical.
    #[arg(long, default_value = "canonical", value_parser = parse_format)]
    pub format: FormatChoice,
    /// Share of extra valid messages that are not offences (heartbeats,
    /// plate reads, unmapped rules, false positives), per offence, in vendor
    /// formats.
    #[arg(long, default_value_t = 0.1)]
    pub noise: f64,
    /// Share of extra broken messages (dead-lettered), per offence.
    #[arg(long, default_value_t = 0.005)]
    pub malformed: f64,
    /// Print only the summary lines, not the expected totals table.
    #[arg(long)]
    pub quiet: bool,
    /// Pack the messages into CloudEvents batches of up to this many items
    /// per gateway (and under 1 MiB), published to
    /// `cctv.raw.batch.<gateway_id>`; 0 or 1 publishes each message alone.
    /// The expected outcomes are the same either way.
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
    /// Generate every message in memory first, packed into its batches with
    /// `--batch`, then publish: the publish then measures the pipeline, not
    /// the generator (benchmarks; the messages of a million offences take
    /// about a gigabyte, and twice that while they are packed).
    #[arg(long)]
    pub pregenerate: bool,
}

/// `--format`: one format for every camera, or each camera its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatChoice {
    /// Every registered camera speaks this format.
    One(&'static str),
    /// Each camera speaks the format of its registry identity.
    Mixed,
}

fn parse_format(text: &str) -> Result<FormatChoice, String> {
    if text == "mixed" {
        return Ok(FormatChoice::Mixed);
    }
    Format::parse(text)
        .map(|vendor| FormatChoice::One(vendor.as_str()))
        .ok_or_else(|| {
            format!("unknown format {text:?}: canonical, hikvision, dahua, onvif, deepstream, frigate or mixed")
        })
}

/// Relative frequency of an offence code in the simulation; codes not listed
/// get weight 1, so every code of the taxonomy occurs.
fn offence_weight(code: &str) -> u32 {
    match code {
        "traffic.speeding" => 40,
        "traffic.red_light" => 12,
        "traffic.illegal_parking" => 10,
        "traffic.no_seat_belt" => 8,
        "traffic.phone_use" => 6,
        "traffic.signs_markings" | "traffic.stop_line" => 5,
        "traffic.pedestrian_priority" | "traffic.bus_lane" => 4,
        "traffic.illegal_turn" | "public_order.littering" | "public_order.smoking" => 3,
        "traffic.wrong_way" | "traffic.no_helmet" | "public_order.public_drinking" => 2,
        _ => 1,
    }
}

/// The region an event must be counted under (contract section 4): the
/// registry's region, else a valid payload region, else `unknown`.
pub(crate) fn expected_region(
    registry_region: Option<&str>,
    payload_region: Option<&str>,
    regions: &Regions,
) -> String {
    if let Some(region) = registry_region {
        return region.to_string();
    }
    payload_region
        .and_then(|code| regions.resolve(code))
        .map_or_else(|| UNKNOWN_REGION.to_string(), |region| region.code.clone())
}

/// One simulated camera.
#[derive(Debug, Clone)]
struct SimCamera {
    camera_id: String,
    /// Region sent in the payload (only by unregistered cameras).
    payload_region: Option<String>,
    /// Region the pipeline must count the camera's events under.
    expected_region: String,
    /// Index of the camera's gateway, from 1.
    gateway: usize,
    /// Format format the camera speaks and how it names itself.
    vendor: Format,
    /// Device fields of its payloads (vendor formats).
    device: Option<Device>,
    /// Whether its messages carry `Cctv-Camera-Id` (its device identity is
    /// not one the registry knows, or is bound to a gateway).
    camera_header: bool,
}

/// The cameras of a run, in three pools.
#[derive(Debug, Clone)]
struct Fleet {
    /// The bulk of the traffic: registered cameras, or synthesized ones.
    main: Vec<SimCamera>,
    /// Unregistered cameras that send a valid region.
    unregistered: Vec<SimCamera>,
    /// Unregistered cameras that send no region.
    regionless: Vec<SimCamera>,
}

impl Fleet {
    /// Builds the fleet from the registry, or synthesizes `cameras` cameras.
    fn new(
        registry: Option<&CameraRegistry>,
        cameras: usize,
        regions: &Regions,
        gateways: usize,
        format: FormatChoice,
    ) -> anyhow::Result<Self> {
        let gateways = gateways.max(1);
        let known = |camera_id: &str| {
            registry
                .and_then(|r| r.get(camera_id))
                .map(|c| c.region.clone())
        };
        let unregistered_camera =
            |camera_id: String, payload_region: Option<String>, index: usize| SimCamera {
                expected_region: expected_region(None, payload_region.as_deref(), regions),
                camera_id,
                payload_region,
                gateway: index % gateways + 1,
                vendor: Format::Canonical,
                device: None,
                camera_header: false,
            };
        let synthesize = |count: usize, serial_offset: usize| -> Vec<SimCamera> {
            let all = regions.all();
            (0..count)
                .filter_map(|index| {
                    let region = all.get(index % all.len())?;
                    let serial = index / all.len() + 1 + serial_offset;
                    let camera_id = format!("SIM-{}-{serial:04}", region.code.replace('-', ""));
                    Some(unregistered_camera(
                        camera_id,
                        Some(region.code.clone()),
                        index,
                    ))
                })
                .filter(|camera| known(&camera.camera_id).is_none())
                .collect()
        };

        let main: Vec<SimCamera> = match registry {
            Some(registry) => registry
                .cameras()
                .iter()
                .enumerate()
                .map(|(index, camera)| {
                    let identities: Vec<(Format, Device)> = camera
                        .identities
                        .iter()
                        .filter_map(|identity| Device::from_identity(identity))
                        .collect();
                    let (vendor, device, camera_header) =
                        camera_device(format, &identities, &camera.camera_id, index);
                    SimCamera {
                        camera_id: camera.camera_id.clone(),
                        payload_region: None,
                        expected_region: expected_region(Some(&camera.region), None, regions),
                        gateway: index % gateways + 1,
                        vendor,
                        device,
                        camera_header,
                    }
                })
                .collect(),
            None => synthesize(cameras, 0)
                .into_iter()
                .enumerate()
                .map(|(index, mut camera)| {
                    // Synthetic cameras are unregistered: vendor devices of
                    // theirs are named by the camera header, region unknown
                    // to the pipeline unless canonical carries it.
                    if let FormatChoice::One(token) = format {
                        let vendor = Format::parse(token).unwrap_or(Format::Canonical);
                        if vendor != Format::Canonical {
                            camera.vendor = vendor;
                            camera.device =
                                Some(Device::synthetic(vendor, &camera.camera_id, index));
                            camera.camera_header = true;
                            camera.expected_region = UNKNOWN_REGION.to_string();
                        }
                    }
                    camera
                })
                .collect(),
        };
        // Serials of the extra unregistered pool start after the main pool's.
        let serial_offset = cameras / regions.all().len().max(1) + 1;
        let unregistered = synthesize(
            UNREGISTERED_CAMERAS_PER_REGION * regions.all().len(),
            serial_offset,
        );
        let regionless = (1..=REGIONLESS_CAMERAS)
            .map(|serial| unregistered_camera(format!("SIM-NOREGION-{serial:04}"), None, serial))
            .filter(|camera| known(&camera.camera_id).is_none())
            .collect();
        if main.is_empty() {
            bail!("the simulated fleet has no cameras (empty registry or --cameras 0)");
        }
        Ok(Self {
            main,
            unregistered,
            regionless,
        })
    }
}

/// The vendor, device and header choice of a registered camera.
fn camera_device(
    format: FormatChoice,
    identities: &[(Format, Device)],
    camera_id: &str,
    index: usize,
) -> (Format, Option<Device>, bool) {
    let vendor = match format {
        FormatChoice::One(token) => Format::parse(token).unwrap_or(Format::Canonical),
        FormatChoice::Mixed => identities
            .first()
            .map_or(Format::Canonical, |(vendor, _)| *vendor),
    };
    if vendor == Format::Canonical {
        return (vendor, None, false);
    }
    match identities.iter().find(|(known, _)| *known == vendor) {
        // ONVIF and Frigate identities name the gateway, which a simulated
        // run does not use: those cameras are named by the header.
        Some((_, device)) => (
            vendor,
            Some(device.clone()),
            matches!(vendor, Format::Onvif | Format::Frigate),
        ),
        None => (
            vendor,
            Some(Device::synthetic(vendor, camera_id, index)),
            true,
        ),
    }
}

/// The canonical JSON body of one event (contract section 3).
#[derive(Debug, Serialize)]
struct CanonicalPayload<'a> {
    camera_id: &'a str,
    offence_type: &'a str,
    detected_at: String,
    source_event_id: &'a str,
    confidence: f64,
    plate: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed_kmh: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed_limit_kmh: Option<u32>,
}

/// One raw message of a step.
#[derive(Debug, Clone)]
struct SimMessage {
    /// `<format>` subject token.
    format: &'static str,
    /// `Nats-Msg-Id`: `<run_id>-<n>[-<k>]`.
    msg_id: String,
    /// `Cctv-Camera-Id`, when the camera is named by the header.
    camera_header: Option<String>,
    /// Body.
    payload: Vec<u8>,
    /// What the pipeline must make of it.
    expected: Expected,
}

/// One step of the simulation: one offence (its messages, the first counted)
/// plus any noise and broken messages drawn before it.
#[derive(Debug, Clone)]
struct SimStep {
    /// Gateway id of the camera.
    gateway_id: String,
    /// Messages in publishing order.
    messages: Vec<SimMessage>,
    /// Region the offence must be counted under.
    expected_region: String,
    /// Canonical offence code.
    offence_type: String,
    /// Whether the offence's first message goes out a second time.
    republish: bool,
}

/// The seeded, pure event generator.
struct Generator {
    fleet: Fleet,
    offence_codes: Vec<String>,
    offence_index: WeightedIndex<u32>,
    rng: StdRng,
    run_id: String,
    day_start: DateTime<Utc>,
    day_millis: i64,
    unknown_share: f64,
    duplicates: f64,
    noise: f64,
    malformed: f64,
}

impl Generator {
    #[allow(clippy::too_many_arguments)]
    fn new(
        fleet: Fleet,
        taxonomy: &Taxonomy,
        seed: u64,
        run_id: &str,
        day: NaiveDate,
        unknown_share: f64,
        duplicates: f64,
    ) -> anyhow::Result<Self> {
        let offence_codes: Vec<String> =
            taxonomy.offences().iter().map(|o| o.code.clone()).collect();
        let offence_index =
            WeightedIndex::new(offence_codes.iter().map(|code| offence_weight(code)))
                .context("failed to build the offence distribution")?;
        let (day_start, day_millis) = day_window(day, DAY_TIMEZONE)?;
        Ok(Self {
            fleet,
            offence_codes,
            offence_index,
            rng: StdRng::seed_from_u64(seed),
            run_id: run_id.to_string(),
            day_start,
            day_millis,
            unknown_share,
            duplicates,
            noise: 0.0,
            malformed: 0.0,
        })
    }

    /// Sets the shares of noise and broken messages per offence.
    fn with_extras(mut self, noise: f64, malformed: f64) -> Self {
        self.noise = noise;
        self.malformed = malformed;
        self
    }

    /// Draws an offence code the camera's vendor reports.
    fn pick_offence(&mut self, vendor: Format) -> anyhow::Result<String> {
        let Some(vocabulary) = vocabulary(vendor) else {
            return self
                .offence_codes
                .get(self.offence_index.sample(&mut self.rng))
                .cloned()
                .context("offence index out of range");
        };
        let weights = WeightedIndex::new(vocabulary.iter().map(|(code, _)| offence_weight(code)))
            .context("failed to build a vendor's offence distribution")?;
        vocabulary
            .get(weights.sample(&mut self.rng))
            .map(|(code, _)| (*code).to_string())
            .context("vendor offence index out of range")
    }

    /// Picks the camera of the next event from the three pools.
    fn pick_camera(&mut self) -> Option<SimCamera> {
        let draw: f64 = self.rng.random();
        let pool = if draw < self.unknown_share && !self.fleet.unregistered.is_empty() {
            &self.fleet.unregistered
        } else if draw < self.unknown_share * 1.25 && !self.fleet.regionless.is_empty() {
            &self.fleet.regionless
        } else {
            &self.fleet.main
        };
        let index = self.rng.random_range(0..pool.len().max(1));
        pool.get(index).cloned()
    }

    /// Generates step number `n` (from 1): one offence and its messages.
    fn next_step(&mut self, n: u64) -> anyhow::Result<SimStep> {
        let camera = self
            .pick_camera()
            .context("the simulated fleet has no cameras")?;
        let offence_type = self.pick_offence(camera.vendor)?;
        let detected =
            self.day_start + TimeDelta::milliseconds(self.rng.random_range(0..self.day_millis));
        let msg_id = format!("{}-{n}", self.run_id);
        let speed = if offence_type == "traffic.speeding" {
            let limit = [40, 60, 80, 90, 100, 110][self.rng.random_range(0..6)];
            Some((limit + self.rng.random_range(11..60), limit))
        } else {
            None
        };
        let confidence = f64::from(self.rng.random_range(500..1000)) / 1000.0;
        let plate = random_plate(&mut self.rng);
        let camera_header = camera.camera_header.then(|| camera.camera_id.clone());
        let vendor_messages: Vec<VendorMessage> = match (&camera.device, camera.vendor) {
            (Some(device), vendor) if vendor != Format::Canonical => {
                let offence = OffenceSpec {
                    code: &offence_type,
                    detected,
                    plate: &plate,
                    speed,
                    confidence,
                };
                vendors::offence_messages(vendor, device, &offence, &mut self.rng)
            }
            _ => {
                let payload = CanonicalPayload {
                    camera_id: &camera.camera_id,
                    offence_type: &offence_type,
                    detected_at: detected
                        .with_timezone(&DAY_TIMEZONE)
                        .to_rfc3339_opts(SecondsFormat::Millis, false),
                    source_event_id: &msg_id,
                    confidence,
                    plate: plate.clone(),
                    region: camera.payload_region.as_deref(),
                    speed_kmh: speed.map(|(speed, _)| speed),
                    speed_limit_kmh: speed.map(|(_, limit)| limit),
                };
                vec![VendorMessage {
                    payload: serde_json::to_vec(&payload).context("failed to encode an event")?,
                    expected: Expected::Counted,
                }]
            }
        };
        if vendor_messages.is_empty() {
            bail!("{} cannot report {offence_type}", camera.vendor.as_str());
        }
        let mut extras = Vec::new();
        if camera.vendor != Format::Canonical && self.rng.random_bool(self.noise.clamp(0.0, 1.0)) {
            if let Some(device) = &camera.device {
                let other_time = self.day_start
                    + TimeDelta::milliseconds(self.rng.random_range(0..self.day_millis));
                let other_plate = random_plate(&mut self.rng);
                extras.extend(vendors::noise_message(
                    camera.vendor,
                    device,
                    other_time,
                    &other_plate,
                    &mut self.rng,
                ));
            }
        }
        if self.rng.random_bool(self.malformed.clamp(0.0, 1.0)) {
            if let Some(first) = vendor_messages.first() {
                extras.push(vendors::broken(first));
            }
        }
        let format = camera.vendor.as_str();
        let messages = extras
            .into_iter()
            .chain(vendor_messages)
            .enumerate()
            .map(|(k, message)| SimMessage {
                format,
                msg_id: if k == 0 {
                    msg_id.clone()
                } else {
                    format!("{msg_id}-{k}")
                },
                camera_header: camera_header.clone(),
                payload: message.payload,
                expected: message.expected,
            })
            .collect();
        let republish = self.rng.random_bool(self.duplicates.clamp(0.0, 1.0));
        Ok(SimStep {
            gateway_id: gateway_id(&self.run_id, camera.gateway),
            messages,
            expected_region: camera.expected_region,
            offence_type,
            republish,
        })
    }
}

/// `sim-<run_id>-<k>`.
fn gateway_id(run_id: &str, gateway: usize) -> String {
    format!("{}{gateway}", gateway_prefix(run_id))
}

/// `sim-<run_id>-`: every gateway id of the run starts with this.
fn gateway_prefix(run_id: &str) -> String {
    format!("sim-{run_id}-")
}

/// A Kazakh-style plate: three digits, three letters, a two-digit region.
fn random_plate(rng: &mut StdRng) -> String {
    let mut plate = format!("{:03}", rng.random_range(0..1000));
    for _ in 0..3 {
        plate.push(char::from(b'A' + rng.random_range(0..26u8)));
    }
    plate.push_str(&format!("{:02}", rng.random_range(1..21)));
    plate
}

/// Start (UTC) and length in milliseconds of local `day` in `timezone`.
fn day_window(day: NaiveDate, timezone: Tz) -> anyhow::Result<(DateTime<Utc>, i64)> {
    let local_midnight = |date: NaiveDate| {
        timezone
            .from_local_datetime(&date.and_time(NaiveTime::MIN))
            .earliest()
            .map(|time| time.with_timezone(&Utc))
            .with_context(|| format!("{date} has no local midnight in {timezone}"))
    };
    let start = local_midnight(day)?;
    let next_day = day.succ_opt().context("day out of range")?;
    let end = local_midnight(next_day)?;
    Ok((start, (end - start).num_milliseconds().max(1)))
}

/// Token bucket for `--rate`: refilled from elapsed time on each pacing tick,
/// holding at most a tenth of a second's worth (at least one token).
#[derive(Debug, Clone)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    capacity: f64,
}

impl TokenBucket {
    fn new(rate: f64) -> Self {
        Self {
            rate,
            tokens: 0.0,
            capacity: (rate * 0.1).max(1.0),
        }
    }

    /// Adds the tokens earned in `elapsed`.
    fn refill(&mut self, elapsed: Duration) {
        self.tokens = (self.tokens + self.rate * elapsed.as_secs_f64()).min(self.capacity);
    }

    /// Takes one token if there is one.
    fn try_take(&mut self) -> bool {
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Paces publishes to `--rate` with a token bucket refilled by an interval.
struct Pacer {
    bucket: Option<(TokenBucket, tokio::time::Interval, tokio::time::Instant)>,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        if rate <= 0.0 {
            return Self { bucket: None };
        }
        let mut interval = tokio::time::interval(PACING_TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            bucket: Some((
                TokenBucket::new(rate),
                interval,
                tokio::time::Instant::now(),
            )),
        }
    }

    /// Waits until one more message may go out.
    async fn wait(&mut self) {
        let Some((bucket, interval, last_refill)) = &mut self.bucket else {
            return;
        };
        while !bucket.try_take() {
            interval.tick().await;
            let now = tokio::time::Instant::now();
            bucket.refill(now - *last_refill);
            *last_refill = now;
        }
    }
}

/// A message ready to publish (kept for retries and republishing).
#[derive(Debug, Clone)]
struct OutboundMessage {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

/// The task awaiting one sealed batch's acks.
type AcksTask = JoinHandle<Vec<Option<PublishOutcome>>>;

/// Pipelined JetStream publisher: publishes go out in batches whose acks
/// come back on one subscription (`cctv_bus::AckedPublisher`), at most
/// `MAX_IN_FLIGHT_BATCHES` batches unanswered at once; failures are retried.
struct Publisher {
    publisher: AckedPublisher,
    current: Option<(AckBatch, Vec<OutboundMessage>)>,
    in_flight: VecDeque<(Vec<OutboundMessage>, AcksTask)>,
    failed: Vec<OutboundMessage>,
    acked: u64,
    acked_as_duplicate: u64,
    failures: u64,
}

impl Publisher {
    fn new(publisher: AckedPublisher) -> Self {
        Self {
            publisher,
            current: None,
            in_flight: VecDeque::with_capacity(MAX_IN_FLIGHT_BATCHES),
            failed: Vec::new(),
            acked: 0,
            acked_as_duplicate: 0,
            failures: 0,
        }
    }

    async fn send(&mut self, message: OutboundMessage) {
        let (batch, messages) = self
            .current
            .get_or_insert_with(|| (self.publisher.batch(), Vec::with_capacity(PUBLISH_BATCH)));
        let sent = batch
            .publish(
                message.subject.clone(),
                message.headers.clone(),
                message.payload.clone(),
            )
            .await;
        match sent {
            Ok(_) => messages.push(message),
            Err(error) => {
                tracing::warn!(%error, subject = %message.subject, "publish failed, will retry");
                self.failures += 1;
                self.failed.push(message);
            }
        }
        if messages.len() >= PUBLISH_BATCH {
            self.seal().await;
        }
    }

    /// Hands the current batch to a task awaiting its acks, keeping at most
    /// `MAX_IN_FLIGHT_BATCHES` waiting.
    async fn seal(&mut self) {
        if let Some((batch, messages)) = self.current.take() {
            self.in_flight
                .push_back((messages, tokio::spawn(batch.acks(ACK_TIMEOUT))));
        }
        while self.in_flight.len() > MAX_IN_FLIGHT_BATCHES {
            self.await_oldest().await;
        }
    }

    async fn await_oldest(&mut self) {
        let Some((messages, acks)) = self.in_flight.pop_front() else {
            return;
        };
        let acks = acks.await.unwrap_or_default();
        for (index, message) in messages.into_iter().enumerate() {
            match acks.get(index).cloned().flatten() {
                Some(PublishOutcome::Stored(_)) => self.acked += 1,
                Some(PublishOutcome::Duplicate(_)) => {
                    self.acked += 1;
                    self.acked_as_duplicate += 1;
                }
                Some(PublishOutcome::Refused(reason)) => {
                    tracing::warn!(%reason, subject = %message.subject, "publish refused, will retry");
                    self.failures += 1;
                    self.failed.push(message);
                }
                None => {
                    tracing::warn!(subject = %message.subject, "publish not acknowledged, will retry");
                    self.failures += 1;
                    self.failed.push(message);
                }
            }
        }
    }

    async fn await_all(&mut self) {
        self.seal().await;
        while !self.in_flight.is_empty() {
            self.await_oldest().await;
        }
    }

    /// Awaits every ack and retries failed publishes a few rounds.
    async fn finish(&mut self) -> anyhow::Result<()> {
        for round in 1..=MAX_RETRY_ROUNDS {
            self.await_all().await;
            if self.failed.is_empty() {
                return Ok(());
            }
            tracing::warn!(
                round,
                messages = self.failed.len(),
                "retrying failed publishes"
            );
            tokio::time::sleep(Duration::from_secs(u64::from(round))).await;
            for message in std::mem::take(&mut self.failed) {
                self.send(message).await;
            }
        }
        self.await_all().await;
        if !self.failed.is_empty() {
            bail!(
                "{} messages could not be published after {MAX_RETRY_ROUNDS} retry rounds",
                self.failed.len()
            );
        }
        Ok(())
    }
}

/// Progress on stderr: a bar on a terminal, else a line every 10 %.
struct Progress {
    bar: Option<ProgressBar>,
    message: &'static str,
    total: u64,
    next_report_percent: u64,
}

impl Progress {
    fn new(total: u64, message: &'static str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self {
                bar: None,
                message,
                total,
                next_report_percent: 10,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style);
        }
        bar.set_message(message);
        Self {
            bar: Some(bar),
            message,
            total,
            next_report_percent: 10,
        }
    }

    fn set(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let percent = done.saturating_mul(100) / self.total.max(1);
        if percent >= self.next_report_percent {
            eprintln!("{} {done}/{} ({percent}%)", self.message, self.total);
            self.next_report_percent = (percent / 10 + 1) * 10;
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Checks the flags that clap cannot.
fn validate_args(args: &SimulateArgs, run_id: &str) -> anyhow::Result<()> {
    if !(0.0..=0.8).contains(&args.unknown_share) {
        bail!("--unknown-share must be within 0..0.8");
    }
    if !(0.0..=1.0).contains(&args.duplicates) {
        bail!("--duplicates must be within 0..1");
    }
    if !args.rate.is_finite() || args.rate < 0.0 {
        bail!("--rate must be 0 or positive");
    }
    if args.gateways == 0 {
        bail!("--gateways must be at least 1");
    }
    if args.batch > MAX_BATCH_ITEMS {
        bail!("--batch must be at most {MAX_BATCH_ITEMS}");
    }
    if !subjects::is_valid_gateway_id(&gateway_id(run_id, args.gateways)) {
        bail!("--run-id {run_id:?} must consist of letters, digits, '-' and '_'");
    }
    Ok(())
}

/// What a simulation published: the totals the pipeline must end up with,
/// and when it published, for callers that time what follows.
#[derive(Debug, Clone)]
pub struct SimulateRun {
    /// The expected totals and raw outcomes (also written to `--expect-out`).
    pub expectation: Expectation,
    /// The first publish (after generation, with `--pregenerate`).
    pub publish_started: Instant,
    /// From the first publish to the last ack.
    pub publish_seconds: f64,
}

/// Publishes a simulated fleet's messages (see [`SimulateArgs`]) through
/// `nats` to the raw stream named `raw_stream`, prints a summary and writes
/// the expectation to `--expect-out` if given.
///
/// # Errors
/// Bad arguments, reference data that does not load, NATS unreachable, the
/// raw stream missing or a publish that keeps failing.
pub async fn run_simulate(
    nats: &NatsConfig,
    raw_stream: &str,
    args: &SimulateArgs,
) -> anyhow::Result<SimulateRun> {
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{:08x}", rand::rng().random::<u32>()));
    validate_args(args, &run_id)?;
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let day = args.day.unwrap_or_else(yesterday);
    let regions = Regions::builtin().context("failed to load the builtin regions")?;
    let taxonomy = Taxonomy::builtin().context("failed to load the builtin taxonomy")?;
    let registry = match &args.registry {
        Some(path) => Some(
            CameraRegistry::load(path, &regions)
                .with_context(|| format!("failed to load camera registry {}", path.display()))?,
        ),
        None => None,
    };
    let fleet = Fleet::new(
        registry.as_ref(),
        args.cameras.unwrap_or(0),
        &regions,
        args.gateways,
        args.format,
    )?;
    let mut generator = Generator::new(
        fleet,
        &taxonomy,
        seed,
        &run_id,
        day,
        args.unknown_share,
        args.duplicates,
    )?
    .with_extras(args.noise, args.malformed);

    let client = cctv_bus::connect(nats, "cctvctl-simulate")
        .await
        .context("failed to connect to NATS")?;
    let js = jetstream::new(client.clone());
    js.get_stream(raw_stream)
        .await
        .with_context(|| format!("stream {raw_stream} not found; run `cctvctl setup` first"))?;
    tracing::info!(%run_id, seed, %day, count = args.count, "simulation starting");

    let mut publisher = Publisher::new(
        AckedPublisher::new(client.clone())
            .await
            .context("failed to subscribe to publish acks")?,
    );
    let mut pacer = Pacer::new(args.rate);
    let mut progress = Progress::new(
        args.count,
        if args.pregenerate {
            "generating"
        } else {
            "publishing"
        },
    );
    let mut outbox = Outbox::new(args.batch);
    // With --pregenerate: every message, in publishing order.
    let mut prepared: Option<Vec<QueuedMessage>> = args.pregenerate.then(Vec::new);
    // Publishes one message now, or keeps it for later.
    macro_rules! emit {
        ($message:expr) => {
            match prepared.as_mut() {
                Some(prepared) => prepared.push($message),
                None => {
                    pacer.wait().await;
                    outbox.send(&mut publisher, &$message).await;
                }
            }
        };
    }
    let mut pending_duplicates: VecDeque<(u64, QueuedMessage)> = VecDeque::new();
    let mut cells: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut outcomes = RawOutcomes::default();
    let mut by_format: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut republished = 0u64;
    let mut started = Instant::now();
    for n in 1..=args.count {
        let step = generator.next_step(n)?;
        *cells
            .entry((step.expected_region.clone(), step.offence_type.clone()))
            .or_insert(0) += 1;
        for message in &step.messages {
            outcomes.add(message.expected);
            *by_format.entry(message.format).or_insert(0) += 1;
            let queued = queued_message(&step.gateway_id, message);
            // The offence's counted message is the one republished.
            if step.republish && message.expected == Expected::Counted {
                pending_duplicates.push_back((n + DUPLICATE_DELAY_MESSAGES, queued.clone()));
            }
            emit!(queued);
        }
        while pending_duplicates.front().is_some_and(|(due, _)| *due <= n) {
            if let Some((_, duplicate)) = pending_duplicates.pop_front() {
                emit!(duplicate);
                republished += 1;
            }
        }
        progress.set(n);
    }
    for (_, duplicate) in pending_duplicates {
        emit!(duplicate);
        republished += 1;
    }
    if let Some(prepared) = prepared.take() {
        progress.finish();
        // Batches are packed now too: the publish then only publishes.
        let total = prepared.len() as u64;
        let ready = outbox.pack_all(prepared);
        println!(
            "generated {total} messages in {:.1}s; publishing",
            started.elapsed().as_secs_f64()
        );
        progress = Progress::new(total, "publishing");
        started = Instant::now();
        let mut paced = 0u64;
        for (through, outbound) in ready {
            // Paced per raw message, as without --pregenerate: a batch goes
            // once the last of its messages is due.
            while paced < through {
                pacer.wait().await;
                paced += 1;
                if paced.is_multiple_of(1024) {
                    progress.set(paced);
                }
            }
            publisher.send(outbound).await;
        }
    }
    outbox.flush(&mut publisher).await;
    publisher.finish().await?;
    client
        .flush()
        .await
        .context("failed to flush the NATS connection")?;
    progress.finish();
    let elapsed = started.elapsed();

    let mut expectation = Expectation::new(&run_id, &gateway_prefix(&run_id), &cells);
    expectation.raw = Some(outcomes);
    let messages = outcomes.published + republished;
    let formats: Vec<String> = by_format
        .iter()
        .map(|(format, count)| format!("{format} {count}"))
        .collect();
    println!(
        "run {run_id} (seed {seed}, day {day}): {} offences in {} raw messages ({}) + {republished} \
         republished copies to {}.<format>.{}{{1..{}}} in {:.1}s ({:.0} msg/s)",
        args.count,
        outcomes.published,
        formats.join(", "),
        subjects::RAW_PREFIX,
        expectation.gateway_prefix,
        args.gateways,
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64().max(1e-9),
    );
    if let Outbox::Batched(packer) = &outbox {
        println!(
            "packed into {} CloudEvents batches of up to {} items to {}.{BATCH_SUBJECT_TOKEN}.{}{{1..{}}}",
            packer.num_batches(),
            args.batch,
            subjects::RAW_PREFIX,
            expectation.gateway_prefix,
            args.gateways,
        );
    }
    println!(
        "expected raw outcomes: {} counted, {} duplicate, {} ignored, {} dead-lettered",
        outcomes.counted, outcomes.duplicate, outcomes.ignored, outcomes.dead_lettered
    );
    println!(
        "stream acks: {} stored, {} recognised as duplicates, {} publish failures retried",
        publisher.acked - publisher.acked_as_duplicate,
        publisher.acked_as_duplicate,
        publisher.failures
    );
    if let Some(path) = &args.expect_out {
        expectation.save(path)?;
        println!("expectation written to {}", path.display());
    }
    Ok(SimulateRun {
        expectation,
        publish_started: started,
        publish_seconds: elapsed.as_secs_f64(),
    })
}

/// One message as a gateway sends it: its subject tokens, the metadata of
/// its headers (or of its batch item) and its body. Kept for republishing.
#[derive(Debug, Clone)]
struct QueuedMessage {
    /// `<gateway_id>` subject token (and batch item `source`).
    gateway_id: String,
    /// `<format>` subject token (and batch item `type`).
    format: &'static str,
    /// `Nats-Msg-Id` (and batch item `id`).
    msg_id: String,
    /// `Cctv-Received-At` (and batch item `time`).
    received_at: String,
    /// `Cctv-Camera-Id`, if any (and batch item `subject`).
    camera_id: Option<String>,
    /// Body.
    payload: Bytes,
}

/// A message of `gateway_id`, received now.
fn queued_message(gateway_id: &str, message: &SimMessage) -> QueuedMessage {
    QueuedMessage {
        gateway_id: gateway_id.to_string(),
        format: message.format,
        msg_id: message.msg_id.clone(),
        received_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        camera_id: message.camera_header.clone(),
        payload: Bytes::from(message.payload.clone()),
    }
}

/// Subject, headers and body of one message published alone.
fn outbound_message(message: &QueuedMessage) -> OutboundMessage {
    let mut message_headers = HeaderMap::new();
    message_headers.insert(headers::NATS_MSG_ID, message.msg_id.as_str());
    message_headers.insert(headers::RECEIVED_AT, message.received_at.as_str());
    if let Some(camera_id) = &message.camera_id {
        message_headers.insert(headers::CAMERA_ID, camera_id.as_str());
    }
    OutboundMessage {
        subject: subjects::raw(message.format, &message.gateway_id),
        headers: message_headers,
        payload: message.payload.clone(),
    }
}

/// Where the simulated messages go: each alone, or packed into batches.
enum Outbox {
    /// Every message is its own NATS message.
    Single,
    /// Messages are packed into CloudEvents batches (`--batch` > 1).
    Batched(BatchPacker),
}

impl Outbox {
    fn new(batch: usize) -> Self {
        if batch <= 1 {
            return Self::Single;
        }
        Self::Batched(BatchPacker::new(batch, SIMULATED_BATCH_MAX_BYTES))
    }

    /// Publishes `message`, or packs it and publishes the batches it filled.
    async fn send(&mut self, publisher: &mut Publisher, message: &QueuedMessage) {
        match self {
            Outbox::Single => publisher.send(outbound_message(message)).await,
            Outbox::Batched(packer) => {
                for outbound in packer.push(message) {
                    publisher.send(outbound).await;
                }
            }
        }
    }

    /// Turns `messages` into what to publish, each with how many of
    /// `messages` are out once it is: every batch sealed, the open ones
    /// included (`flush` then has nothing left).
    fn pack_all(&mut self, messages: Vec<QueuedMessage>) -> Vec<(u64, OutboundMessage)> {
        let count = messages.len() as u64;
        let mut ready = Vec::new();
        for (through, message) in (1..).zip(messages) {
            match self {
                Outbox::Single => ready.push((through, outbound_message(&message))),
                Outbox::Batched(packer) => ready.extend(
                    packer
                        .push(&message)
                        .into_iter()
                        .map(|outbound| (through, outbound)),
                ),
            }
        }
        if let Outbox::Batched(packer) = self {
            ready.extend(
                packer
                    .finish()
                    .into_iter()
                    .map(|outbound| (count, outbound)),
            );
        }
        ready
    }

    /// Publishes the batches still open.
    async fn flush(&mut self, publisher: &mut Publisher) {
        if let Outbox::Batched(packer) = self {
            for outbound in packer.finish() {
                publisher.send(outbound).await;
            }
        }
    }
}

/// The batch a gateway is filling.
struct OpenBatch {
    builder: BatchBuilder,
    /// Id of its first item.
    first_id: String,
}

/// Packs messages into CloudEvents batches, one open batch per gateway, each
/// sealed at `max_items` items or before it would exceed `max_bytes`. Pure:
/// it turns messages into the NATS messages to publish, in order per
/// gateway.
struct BatchPacker {
    max_items: usize,
    max_bytes: usize,
    open: BTreeMap<String, OpenBatch>,
    /// `Nats-Msg-Id` of every batch sealed so far.
    issued_ids: HashSet<String>,
}

impl BatchPacker {
    fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            max_items: max_items.clamp(1, MAX_BATCH_ITEMS),
            max_bytes,
            open: BTreeMap::new(),
            issued_ids: HashSet::new(),
        }
    }

    /// Batches sealed so far.
    fn num_batches(&self) -> usize {
        self.issued_ids.len()
    }

    /// Adds `message` to its gateway's batch; returns what is ready to
    /// publish: the batch it did not fit in, the batch it filled, or the
    /// message alone when it is too large for any batch.
    fn push(&mut self, message: &QueuedMessage) -> Vec<OutboundMessage> {
        let mut ready = Vec::new();
        let gateway_id = message.gateway_id.as_str();
        let open = self
            .open
            .entry(message.gateway_id.clone())
            .or_insert_with(|| OpenBatch {
                builder: BatchBuilder::new(gateway_id),
                first_id: String::new(),
            });
        if !try_add(open, self.max_bytes, message) {
            if !open.builder.is_empty() {
                ready.push(seal(&mut self.issued_ids, gateway_id, open));
            }
            if !try_add(open, self.max_bytes, message) {
                // Too large for any batch: alone, as without `--batch`.
                ready.push(outbound_message(message));
                return ready;
            }
        }
        if open.builder.len() >= self.max_items {
            ready.push(seal(&mut self.issued_ids, gateway_id, open));
        }
        ready
    }

    /// Seals every open batch.
    fn finish(&mut self) -> Vec<OutboundMessage> {
        let mut ready = Vec::new();
        for (gateway_id, open) in &mut self.open {
            if !open.builder.is_empty() {
                ready.push(seal(&mut self.issued_ids, gateway_id, open));
            }
        }
        ready
    }
}

/// Adds `message` to `open` if the batch stays within `max_bytes`.
fn try_add(open: &mut OpenBatch, max_bytes: usize, message: &QueuedMessage) -> bool {
    let added = open.builder.try_push(
        max_bytes,
        message.format,
        &message.msg_id,
        Some(&message.received_at),
        message.camera_id.as_deref(),
        &message.payload,
    );
    if added && open.builder.len() == 1 {
        open.first_id.clone_from(&message.msg_id);
    }
    added
}

/// Turns `open` into the NATS message of a batch and empties it. The
/// `Nats-Msg-Id` is `batch:<first item id>:<item count>`, so a retried
/// publish is recognised by the stream.
fn seal(
    issued_ids: &mut HashSet<String>,
    gateway_id: &str,
    open: &mut OpenBatch,
) -> OutboundMessage {
    let num_items = open.builder.len();
    let builder = std::mem::replace(&mut open.builder, BatchBuilder::new(gateway_id));
    let mut msg_id = format!("batch:{}:{num_items}", open.first_id);
    // A batch opened by a republished copy can have the size of the batch its
    // original opened: the same id would make the stream drop it, and every
    // other item with it, as a duplicate. Such a batch gets a suffix.
    let mut attempt = 1u32;
    while !issued_ids.insert(msg_id.clone()) {
        attempt += 1;
        msg_id = format!("batch:{}:{num_items}:{attempt}", open.first_id);
    }
    let mut batch_headers = HeaderMap::new();
    batch_headers.insert(headers::NATS_MSG_ID, msg_id.as_str());
    batch_headers.insert(CONTENT_TYPE_HEADER, BATCH_CONTENT_TYPE);
    OutboundMessage {
        subject: subjects::raw(BATCH_SUBJECT_TOKEN, gateway_id),
        headers: batch_headers,
        payload: Bytes::from(builder.finish()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn registry(regions: &Regions) -> CameraRegistry {
        let csv = "camera_id,region,district,lat,lon,identities\n\
                   KZ75-0001,KZ-75,d,,,\nKZ71-0001,KZ-ALA,d,,,\nKZ10-0001,KZ-10,d,,,\n";
        CameraRegistry::from_csv(csv, regions).unwrap()
    }

    #[test]
    fn expected_region_prefers_registry_then_valid_payload_then_unknown() {
        let regions = Regions::builtin().unwrap();
        assert_eq!(
            expected_region(Some("KZ-75"), Some("KZ-10"), &regions),
            "KZ-75"
        );
        assert_eq!(expected_region(None, Some("KZ-10"), &regions), "KZ-10");
        assert_eq!(expected_region(None, Some("KZ-AST"), &regions), "KZ-71");
        assert_eq!(expected_region(None, Some("KZ-99"), &regions), "unknown");
        assert_eq!(expected_region(None, None, &regions), "unknown");
    }

    #[test]
    fn fleet_pools_have_the_right_expected_regions() {
        let regions = Regions::builtin().unwrap();
        let registry = registry(&regions);
        let fleet = Fleet::new(
            Some(&registry),
            0,
            &regions,
            3,
            FormatChoice::One("canonical"),
        )
        .unwrap();
        assert_eq!(fleet.main.len(), 3);
        assert!(fleet.main.iter().all(|c| c.payload_region.is_none()));
        let almaty_old_code = fleet
            .main
            .iter()
            .find(|c| c.camera_id == "KZ71-0001")
            .unwrap();
        assert_eq!(almaty_old_code.expected_region, "KZ-75");
        assert_eq!(fleet.unregistered.len(), 40);
        assert!(fleet
            .unregistered
            .iter()
            .all(|c| registry.get(&c.camera_id).is_none()
                && c.payload_region.as_deref() == Some(c.expected_region.as_str())));
        assert!(fleet
            .regionless
            .iter()
            .all(|c| c.expected_region == "unknown" && c.payload_region.is_none()));
        assert!(fleet
            .main
            .iter()
            .chain(&fleet.unregistered)
            .all(|c| (1..=3).contains(&c.gateway)));

        let synthetic = Fleet::new(None, 45, &regions, 8, FormatChoice::One("canonical")).unwrap();
        assert_eq!(synthetic.main.len(), 45);
        assert_eq!(synthetic.main[0].camera_id, "SIM-KZ10-0001");
        assert_eq!(synthetic.main[20].camera_id, "SIM-KZ10-0002");
        assert!(synthetic
            .unregistered
            .iter()
            .all(|c| !synthetic.main.iter().any(|m| m.camera_id == c.camera_id)));
        assert!(Fleet::new(None, 0, &regions, 8, FormatChoice::One("canonical")).is_err());
    }

    #[test]
    fn generated_events_cover_every_offence_and_the_configured_shares() {
        let regions = Regions::builtin().unwrap();
        let taxonomy = Taxonomy::builtin().unwrap();
        let registry = registry(&regions);
        let fleet = Fleet::new(
            Some(&registry),
            0,
            &regions,
            8,
            FormatChoice::One("canonical"),
        )
        .unwrap();
        let day = NaiveDate::from_ymd_opt(2025, 3, 14).unwrap();
        let mut generator =
            Generator::new(fleet, &taxonomy, 7, "ab12cd34", day, 0.04, 0.01).unwrap();
        let mut by_type: HashMap<String, u64> = HashMap::new();
        let (mut unregistered, mut unknown, mut republish) = (0u64, 0u64, 0u64);
        let total = 20_000u64;
        for n in 1..=total {
            let event = generator.next_step(n).unwrap();
            *by_type.entry(event.offence_type.clone()).or_default() += 1;
            assert_eq!(event.messages.len(), 1);
            let message = &event.messages[0];
            let payload: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            assert_eq!(payload["source_event_id"], message.msg_id.as_str());
            let detected =
                DateTime::parse_from_rfc3339(payload["detected_at"].as_str().unwrap()).unwrap();
            assert_eq!(detected.with_timezone(&DAY_TIMEZONE).date_naive(), day);
            assert!(payload["detected_at"].as_str().unwrap().ends_with("+05:00"));
            let confidence = payload["confidence"].as_f64().unwrap();
            assert!((0.5..1.0).contains(&confidence));
            assert_eq!(
                payload["speed_kmh"].is_u64(),
                event.offence_type == "traffic.speeding"
            );
            assert!(event.gateway_id.starts_with("sim-ab12cd34-"));
            if payload.get("region").is_some() {
                unregistered += 1;
            }
            if event.expected_region == "unknown" {
                unknown += 1;
            }
            if event.republish {
                republish += 1;
            }
        }
        assert_eq!(by_type.len(), 20, "{by_type:?}");
        let speeding = by_type["traffic.speeding"];
        assert!(by_type.values().all(|&n| n <= speeding));
        assert!((600..1000).contains(&unregistered), "{unregistered}");
        assert!((100..300).contains(&unknown), "{unknown}");
        assert!((120..300).contains(&republish), "{republish}");
        // The same seed generates the same events.
        let fleet = Fleet::new(
            Some(&registry),
            0,
            &regions,
            8,
            FormatChoice::One("canonical"),
        )
        .unwrap();
        let mut again = Generator::new(fleet, &taxonomy, 7, "ab12cd34", day, 0.04, 0.01).unwrap();
        let mut first = Generator::new(
            Fleet::new(
                Some(&registry),
                0,
                &regions,
                8,
                FormatChoice::One("canonical"),
            )
            .unwrap(),
            &taxonomy,
            7,
            "ab12cd34",
            day,
            0.04,
            0.01,
        )
        .unwrap();
        assert_eq!(
            again.next_step(1).unwrap().messages[0].payload,
            first.next_step(1).unwrap().messages[0].payload
        );
    }

    fn queued(gateway_id: &str, n: usize, payload: &[u8]) -> QueuedMessage {
        QueuedMessage {
            gateway_id: gateway_id.to_string(),
            format: "hikvision",
            msg_id: format!("run-{n}"),
            received_at: format!("2026-11-27T04:14:{:02}.000Z", n % 60),
            camera_id: n.is_multiple_of(2).then(|| format!("CAM-{n}")),
            payload: Bytes::from(payload.to_vec()),
        }
    }

    fn header<'a>(message: &'a OutboundMessage, name: &str) -> Option<&'a str> {
        message.headers.get(name).map(|value| value.as_str())
    }

    /// The items of a packed batch, checked against the messages they carry.
    fn unpack(
        batch: &OutboundMessage,
        gateway_id: &str,
        messages: &[QueuedMessage],
    ) -> Vec<String> {
        use cctv_normalize::{parse_batch, BatchEntry};
        assert_eq!(batch.subject, format!("cctv.raw.batch.{gateway_id}"));
        assert_eq!(header(batch, "Content-Type"), Some(BATCH_CONTENT_TYPE));
        let entries = parse_batch(&batch.payload, gateway_id).unwrap();
        let ids: Vec<String> = entries
            .iter()
            .map(|entry| {
                let BatchEntry::Item(item) = entry else {
                    panic!("broken item {entry:?}");
                };
                let message = messages.iter().find(|m| m.msg_id == item.id).unwrap();
                assert_eq!(item.format, message.format);
                assert_eq!(item.body, message.payload.as_ref());
                assert_eq!(item.time.as_deref(), Some(message.received_at.as_str()));
                assert_eq!(item.subject.as_deref(), message.camera_id.as_deref());
                item.id.to_string()
            })
            .collect();
        assert_eq!(
            header(batch, "Nats-Msg-Id"),
            Some(format!("batch:{}:{}", ids[0], ids.len()).as_str())
        );
        ids
    }

    #[test]
    fn the_packer_fills_batches_of_n_items_per_gateway_in_order() {
        let mut packer = BatchPacker::new(3, SIMULATED_BATCH_MAX_BYTES);
        let messages: Vec<QueuedMessage> = (0..9)
            .map(|n| queued(if n < 7 { "gw-1" } else { "gw-2" }, n, b"<xml/>"))
            .collect();
        let mut published: Vec<OutboundMessage> =
            messages.iter().flat_map(|m| packer.push(m)).collect();
        assert_eq!(published.len(), 2, "two full batches of gw-1");
        published.extend(packer.finish());
        assert!(packer.finish().is_empty());
        assert_eq!(packer.num_batches(), 4);
        let unpacked: Vec<(String, Vec<String>)> = published
            .iter()
            .map(|batch| {
                let gateway_id = batch.subject.rsplit('.').next().unwrap().to_string();
                let ids = unpack(batch, &gateway_id, &messages);
                (gateway_id, ids)
            })
            .collect();
        let ids = |range: std::ops::Range<usize>| -> Vec<String> {
            range.map(|n| format!("run-{n}")).collect()
        };
        assert_eq!(
            unpacked,
            vec![
                ("gw-1".to_string(), ids(0..3)),
                ("gw-1".to_string(), ids(3..6)),
                ("gw-1".to_string(), ids(6..7)),
                ("gw-2".to_string(), ids(7..9)),
            ]
        );
    }

    #[test]
    fn the_packer_keeps_batches_under_the_byte_limit_and_ids_unique() {
        let max_bytes = 2048;
        let mut packer = BatchPacker::new(1000, max_bytes);
        let body = vec![b'x'; 300];
        let messages: Vec<QueuedMessage> = (0..40).map(|n| queued("gw-1", n, &body)).collect();
        let mut published: Vec<OutboundMessage> =
            messages.iter().flat_map(|m| packer.push(m)).collect();
        published.extend(packer.finish());
        assert!(published.len() > 5, "{}", published.len());
        let mut all_ids = Vec::new();
        for batch in &published {
            assert!(batch.payload.len() <= max_bytes, "{}", batch.payload.len());
            all_ids.extend(unpack(batch, "gw-1", &messages));
        }
        let expected: Vec<String> = messages.iter().map(|m| m.msg_id.clone()).collect();
        assert_eq!(all_ids, expected);

        // A message too large for any batch goes out alone, as without --batch.
        let huge = queued("gw-1", 99, &vec![b'y'; max_bytes]);
        let mut alone = packer.push(&queued("gw-1", 98, b"small"));
        alone.extend(packer.push(&huge));
        assert_eq!(alone.len(), 2);
        unpack(&alone[0], "gw-1", &[queued("gw-1", 98, b"small")]);
        assert_eq!(alone[1].subject, "cctv.raw.hikvision.gw-1");
        assert_eq!(header(&alone[1], "Nats-Msg-Id"), Some("run-99"));
        assert_eq!(alone[1].payload.len(), max_bytes);

        // A republished copy opening a batch of its original's size gets an id
        // of its own, so the stream cannot drop it as a repeat.
        let mut packer = BatchPacker::new(2, SIMULATED_BATCH_MAX_BYTES);
        let first = packer.push(&queued("gw-1", 1, b"a"));
        assert!(first.is_empty());
        let first = packer.push(&queued("gw-1", 2, b"b")).remove(0);
        packer.push(&queued("gw-1", 1, b"a"));
        let again = packer.push(&queued("gw-1", 3, b"c")).remove(0);
        assert_eq!(header(&first, "Nats-Msg-Id"), Some("batch:run-1:2"));
        assert_eq!(header(&again, "Nats-Msg-Id"), Some("batch:run-1:2:2"));
    }

    /// The reference data of `deploy/` and a normaliser over it, as the
    /// ingest of the local stack runs it.
    fn deploy_normalizer() -> (
        Regions,
        Taxonomy,
        CameraRegistry,
        cctv_normalize::Normalizer,
    ) {
        use cctv_normalize::{Limits, Normalizer};
        use std::sync::Arc;

        let regions = Regions::builtin().unwrap();
        let taxonomy = Taxonomy::builtin().unwrap();
        let registry_path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/cameras.csv");
        let registry = CameraRegistry::load(&registry_path, &regions).unwrap();
        let normalizer = Normalizer::new(
            Arc::new(taxonomy.clone()),
            Arc::new(regions.clone()),
            Arc::new(registry.clone()),
            Limits::default(),
        );
        (regions, taxonomy, registry, normalizer)
    }

    /// Batched, every generated message normalises to what it gives alone
    /// (same id, camera and receipt time), so `--batch` changes no expectation.
    #[test]
    fn batched_messages_normalise_like_the_same_messages_alone() {
        use cctv_normalize::{parse_batch, BatchEntry, RawMessage};

        let (regions, taxonomy, registry, normalizer) = deploy_normalizer();
        let fleet = Fleet::new(Some(&registry), 0, &regions, 3, FormatChoice::Mixed).unwrap();
        let mut generator = Generator::new(fleet, &taxonomy, 5, "b1", yesterday(), 0.05, 0.0)
            .unwrap()
            .with_extras(0.3, 0.05);
        let mut packer = BatchPacker::new(7, SIMULATED_BATCH_MAX_BYTES);
        let mut messages = HashMap::new();
        let mut published = Vec::new();
        for n in 1..=500 {
            let step = generator.next_step(n).unwrap();
            for message in &step.messages {
                let queued = queued_message(&step.gateway_id, message);
                published.extend(packer.push(&queued));
                messages.insert(queued.msg_id.clone(), queued);
            }
        }
        published.extend(packer.finish());
        let now = Utc::now();
        let mut items = 0;
        for batch in &published {
            let gateway_id = batch.subject.rsplit('.').next().unwrap();
            for entry in parse_batch(&batch.payload, gateway_id).unwrap() {
                let BatchEntry::Item(item) = entry else {
                    panic!("broken item {entry:?}");
                };
                let message = &messages[item.id.as_ref()];
                let alone = RawMessage {
                    format: message.format,
                    gateway_id: &message.gateway_id,
                    payload: &message.payload,
                    msg_id: Some(&message.msg_id),
                    camera_id: message.camera_id.as_deref(),
                    received_at: Some(&message.received_at),
                    stored_at: None,
                };
                assert_eq!(
                    normalizer.normalize(&item.raw(gateway_id, None), now),
                    normalizer.normalize(&alone, now),
                    "{}",
                    item.id
                );
                items += 1;
            }
        }
        assert_eq!(items, messages.len());
        assert!(published.len() < items / 5, "{} batches", published.len());
    }

    #[test]
    fn without_batch_a_message_keeps_its_own_subject_and_headers() {
        let message = queued("gw-3", 4, b"{}");
        let outbound = outbound_message(&message);
        assert_eq!(outbound.subject, "cctv.raw.hikvision.gw-3");
        assert_eq!(header(&outbound, "Nats-Msg-Id"), Some("run-4"));
        assert_eq!(
            header(&outbound, "Cctv-Received-At"),
            Some("2026-11-27T04:14:04.000Z")
        );
        assert_eq!(header(&outbound, "Cctv-Camera-Id"), Some("CAM-4"));
        assert!(matches!(Outbox::new(0), Outbox::Single));
        assert!(matches!(Outbox::new(1), Outbox::Single));
        assert!(matches!(Outbox::new(2), Outbox::Batched(_)));
    }

    #[test]
    fn token_bucket_caps_bursts_and_refills_with_time() {
        let mut bucket = TokenBucket::new(1000.0);
        assert!(!bucket.try_take());
        bucket.refill(Duration::from_secs(5));
        let mut taken = 0;
        while bucket.try_take() {
            taken += 1;
        }
        assert_eq!(taken, 100);
        bucket.refill(Duration::from_millis(10));
        assert!(bucket.try_take());
        let mut slow = TokenBucket::new(0.5);
        slow.refill(Duration::from_secs(1));
        assert!(!slow.try_take());
        slow.refill(Duration::from_secs(1));
        assert!(slow.try_take());
    }

    #[test]
    fn day_window_is_a_local_day() {
        let (start, millis) =
            day_window(NaiveDate::from_ymd_opt(2025, 3, 14).unwrap(), DAY_TIMEZONE).unwrap();
        assert_eq!(start.to_rfc3339(), "2025-03-13T19:00:00+00:00");
        assert_eq!(millis, 86_400_000);
    }

    /// Every message the mixed simulation generates gets exactly the outcome
    /// it claims when run through the real normaliser (with an event-id set
    /// standing in for the partition owners' seen-sets), and the
    /// counted offences land in the expected region and type.
    #[test]
    fn vendor_messages_normalise_to_their_expected_outcomes() {
        use cctv_normalize::{Outcome, RawMessage};
        use std::collections::HashSet;

        let (regions, taxonomy, registry, normalizer) = deploy_normalizer();
        for format in [
            "mixed",
            "hikvision",
            "dahua",
            "onvif",
            "deepstream",
            "frigate",
        ] {
            let choice = parse_format(format).unwrap();
            let fleet = Fleet::new(Some(&registry), 0, &regions, 4, choice).unwrap();
            let day = yesterday();
            let mut generator = Generator::new(fleet, &taxonomy, 11, "t1", day, 0.05, 0.0)
                .unwrap()
                .with_extras(0.3, 0.05);
            let mut seen = HashSet::new();
            let mut outcomes = RawOutcomes::default();
            let mut formats_seen = HashSet::new();
            let now = Utc::now();
            for n in 1..=3000 {
                let step = generator.next_step(n).unwrap();
                let mut counted_cells = Vec::new();
                for message in &step.messages {
                    outcomes.add(message.expected);
                    formats_seen.insert(message.format);
                    let raw = RawMessage {
                        format: message.format,
                        gateway_id: &step.gateway_id,
                        payload: &message.payload,
                        msg_id: Some(&message.msg_id),
                        camera_id: message.camera_header.as_deref(),
                        received_at: None,
                        stored_at: None,
                    };
                    let outcome = normalizer.normalize(&raw, now);
                    let context = || {
                        format!(
                            "{format} step {n} {:?}: {}\n{outcome:?}",
                            message.expected,
                            String::from_utf8_lossy(&message.payload)
                        )
                    };
                    match (&outcome, message.expected) {
                        (Outcome::Offences(events), Expected::Counted) => {
                            assert!(
                                events.iter().all(|e| seen.insert(e.event_id)),
                                "{}",
                                context()
                            );
                            counted_cells.extend(
                                events
                                    .iter()
                                    .map(|e| (e.region.clone(), e.offence_type.clone())),
                            );
                        }
                        (Outcome::Offences(events), Expected::Duplicate) => {
                            assert!(
                                events.iter().all(|e| seen.contains(&e.event_id)),
                                "{}",
                                context()
                            );
                        }
                        (Outcome::Ignored(_), Expected::Ignored)
                        | (Outcome::Rejected(_), Expected::DeadLettered) => {}
                        _ => panic!("unexpected outcome: {}", context()),
                    }
                }
                assert_eq!(
                    counted_cells,
                    vec![(step.expected_region.clone(), step.offence_type.clone())],
                    "{format} step {n}"
                );
            }
            let expected_formats = if format == "mixed" { 6 } else { 2 };
            assert_eq!(
                formats_seen.len(),
                expected_formats,
                "{format}: {formats_seen:?}"
            );
            assert!(
                outcomes.duplicate > 0 || format == "onvif",
                "{format}: {outcomes:?}"
            );
            assert!(
                outcomes.ignored > 0 && outcomes.dead_lettered > 0,
                "{format}: {outcomes:?}"
            );
        }
    }
}
