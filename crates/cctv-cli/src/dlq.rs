//! `cctvctl dlq`: read dead letters from `CCTV_DLQ` without consuming them,
//! through the stream's message-get API (no direct get needed), and replay
//! them to the raw subjects they came from.
//!
//! A replay publishes each dead letter as the message it was: to its source
//! subject (a gateway batch's item to the single-message subject of its own
//! format and gateway), with its original message id (an item's CloudEvents
//! `id`) in `Cctv-Original-Msg-Id`, its camera and receipt time. The ingest
//! takes that id as the message's identity, and every event id derives from
//! it, so a replayed offence that was counted meanwhile, or replayed twice,
//! meets its partition owner's seen-set and counts nothing more; one still
//! unusable is dead-lettered again. The replay's own `Nats-Msg-Id` names the
//! dead letter (`replay:<stream>:<sequence>`): the raw stream's duplicate
//! window would swallow the original's id if the original arrived minutes
//! ago, and drops a replay repeated within it.

use std::collections::BTreeMap;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream::RawMessageErrorKind};
use cctv_bus::headers;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::CliConfig;

/// Characters of the error text shown per line of `dlq list`.
const MAX_ERROR_CHARS: usize = 80;
/// Bytes of payload shown by `dlq show`.
const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// `cctvctl dlq` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List(DlqListArgs),
    /// Show one dead letter: every header and the payload.
    Show {
        /// Stream sequence of the dead letter.
        sequence: u64,
    },
    /// Publish dead letters of one reason again to the subjects they came
    /// from, as they were (e.g. after adding an alias to the taxonomy and
    /// restarting the ingest); each is then counted, ignored or dead-lettered
    /// again exactly once.
    Replay(DlqReplayArgs),
}

/// Flags of `cctvctl dlq replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqReplayArgs {
    /// Reason code of the dead letters to replay (`Cctv-Error-Reason`, e.g.
    /// `unknown_offence`).
    #[arg(long)]
    pub reason: String,
    /// Only dead letters stored at or after this time: RFC 3339
    /// (`2026-12-01T00:00:00Z`) or an age (`24h`, `7days`).
    #[arg(long)]
    pub since: Option<String>,
    /// Print what would be replayed; publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// How a dead letter is published again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Replay {
    subject: String,
    /// Headers of the original message: `Nats-Msg-Id`, camera, receipt time.
    headers: Vec<(&'static str, String)>,
    /// The original body (a broken batch item: wrapped in a batch of one).
    payload: Vec<u8>,
}

/// Why a dead letter cannot be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotReplayable {
    /// No `Cctv-Source-Subject`, or not a raw subject.
    NoSourceSubject,
}

/// The message a dead letter was, from its headers and payload (pure); its
/// `Nats-Msg-Id` is added when it is published (it names the dead letter).
fn replay_of(headers: &HeaderList, payload: &[u8]) -> Result<Replay, NotReplayable> {
    let source = first_header(headers, headers::SOURCE_SUBJECT);
    let raw = cctv_bus::subjects::parse_raw(source).ok_or(NotReplayable::NoSourceSubject)?;
    let mut replay_headers = Vec::new();
    for (name, target) in [
        (headers::SOURCE_MSG_ID, headers::ORIGINAL_MSG_ID),
        (headers::CAMERA_ID, headers::CAMERA_ID),
        (headers::RECEIVED_AT, headers::RECEIVED_AT),
    ] {
        let value = first_header(headers, name);
        if !value.is_empty() {
            replay_headers.push((target, value.to_string()));
        }
    }
    let item_format = first_header(headers, headers::SOURCE_FORMAT);
    let is_item = !first_header(headers, headers::BATCH_ITEM).is_empty();
    let batch = raw.format == cctv_bus::subjects::BATCH_FORMAT;
    let (subject, payload) = match (batch, is_item) {
        // A usable item of a gateway batch: alone, on its own format's subject.
        (true, true)
            if !item_format.is_empty() && item_format != cctv_bus::subjects::BATCH_FORMAT =>
        {
            (
                cctv_bus::subjects::raw(item_format, raw.gateway_id),
                payload.to_vec(),
            )
        }
        // An item too broken to name its format: a batch of that one item.
        (true, true) => {
            let mut wrapped = Vec::with_capacity(payload.len() + 2);
            wrapped.push(b'[');
            wrapped.extend_from_slice(payload);
            wrapped.push(b']');
            (source.to_string(), wrapped)
        }
        // A single message, or a batch refused whole: as it was.
        _ => (source.to_string(), payload.to_vec()),
    };
    Ok(Replay {
        subject,
        headers: replay_headers,
        payload,
    })
}

/// The earliest store time `--since` allows.
fn parse_since(since: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(since) {
        return Ok(time.to_utc());
    }
    let age = humantime::parse_duration(since)
        .with_context(|| format!("--since {since:?} is neither RFC 3339 nor an age like 24h"))?;
    let age = chrono::Duration::from_std(age).context("--since is too long ago")?;
    Ok(now - age)
}

/// Output format of `dlq list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    /// One aligned line per dead letter.
    Table,
    /// A JSON array.
    Json,
}

/// Flags of `cctvctl dlq list`.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqListArgs {
    /// Most dead letters to print.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Only dead letters with this reason code (`Cctv-Error-Reason`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ListFormat,
}

/// The summary of one dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct DlqEntry {
    sequence: u64,
    time: String,
    subject: String,
    reason: String,
    source_subject: String,
    error: String,
    payload_bytes: usize,
}

/// Headers as sorted name -> values.
type HeaderList = BTreeMap<String, Vec<String>>;

fn header_list(map: &async_nats::HeaderMap) -> HeaderList {
    map.iter()
        .map(|(name, values)| {
            (
                name.to_string(),
                values.iter().map(|v| v.as_str().to_string()).collect(),
            )
        })
        .collect()
}

fn first_header<'a>(list: &'a HeaderList, name: &str) -> &'a str {
    list.get(name)
        .and_then(|values| values.first())
        .map_or("", String::as_str)
}

impl DlqEntry {
    fn new(
        sequence: u64,
        time: DateTime<Utc>,
        subject: &str,
        headers: &HeaderList,
        payload_bytes: usize,
    ) -> Self {
        Self {
            sequence,
            time: time.to_rfc3339_opts(SecondsFormat::Secs, true),
            subject: subject.to_string(),
            reason: first_header(headers, headers::ERROR_REASON).to_string(),
            source_subject: first_header(headers, headers::SOURCE_SUBJECT).to_string(),
            error: first_header(headers, headers::ERROR).to_string(),
            payload_bytes,
        }
    }
}

/// Shortens `text` to `max_chars` characters, marking the cut with `…`, and
/// puts it on one line.
fn truncate_text(text: &str, max_chars: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max_chars {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max_chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn render_list(entries: &[DlqEntry]) -> String {
    if entries.is_empty() {
        return "no dead letters\n".to_string();
    }
    let reason_width = entries
        .iter()
        .map(|e| e.reason.len())
        .max()
        .unwrap_or(0)
        .max("reason".len());
    let source_width = entries
        .iter()
        .map(|e| e.source_subject.len())
        .max()
        .unwrap_or(0)
        .max("source".len());
    let mut out = format!(
        "{:>8}  {:<20}  {:<reason_width$}  {:<source_width$}  error\n",
        "seq", "time", "reason", "source"
    );
    for entry in entries {
        out.push_str(&format!(
            "{:>8}  {:<20}  {:<reason_width$}  {:<source_width$}  {}\n",
            entry.sequence,
            entry.time,
            entry.reason,
            entry.source_subject,
            truncate_text(&entry.error, MAX_ERROR_CHARS)
        ));
    }
    out
}

/// The payload as lossy UTF-8, cut at [`MAX_PAYLOAD_BYTES`] with a note.
fn render_payload(payload: &[u8]) -> String {
    let shown = payload.get(..MAX_PAYLOAD_BYTES).unwrap_or(payload);
    let mut text = String::from_utf8_lossy(shown).into_owned();
    if shown.len() < payload.len() {
        text.push_str(&format!(
            "\n[payload truncated: showing {} of {} bytes]",
            shown.len(),
            payload.len()
        ));
    }
    text
}

fn render_show(
    sequence: u64,
    time: DateTime<Utc>,
    subject: &str,
    headers: &HeaderList,
    payload: &[u8],
) -> String {
    let mut out = format!(
        "sequence: {sequence}\ntime: {}\nsubject: {subject}\nheaders:\n",
        time.to_rfc3339_opts(SecondsFormat::Millis, true)
    );
    for (name, values) in headers {
        for value in values {
            out.push_str(&format!("  {name}: {value}\n"));
        }
    }
    out.push_str(&format!("payload ({} bytes):\n", payload.len()));
    out.push_str(&render_payload(payload));
    out.push('\n');
    out
}

/// Runs a `dlq` subcommand.
pub async fn run_dlq(config: &CliConfig, command: &DlqCommand) -> anyhow::Result<()> {
    let client = cctv_bus::connect(&config.nats, "cctvctl-dlq")
        .await
        .context("failed to connect to NATS")?;
    let js = jetstream::new(client);
    let stream_name = &config.streams.dlq.name;
    let stream = js
        .get_stream(stream_name)
        .await
        .with_context(|| format!("failed to open stream {stream_name}"))?;
    match command {
        DlqCommand::Replay(args) => {
            return replay(&js, &stream, stream_name, args).await;
        }
        DlqCommand::Show { sequence } => {
            let message = stream
                .get_raw_message(*sequence)
                .await
                .with_context(|| format!("failed to read message {sequence} of {stream_name}"))?;
            print!(
                "{}",
                render_show(
                    message.sequence,
                    message.time,
                    message.subject.as_str(),
                    &header_list(&message.headers),
                    &message.payload
                )
            );
        }
        DlqCommand::List(args) => {
            let state = stream.cached_info().state.clone();
            let mut entries = Vec::new();
            for sequence in state.first_sequence.max(1)..=state.last_sequence {
                if entries.len() >= args.limit {
                    break;
                }
                let message = match stream.get_raw_message(sequence).await {
                    Ok(message) => message,
                    // Deleted or expired sequences leave gaps.
                    Err(error) if matches!(error.kind(), RawMessageErrorKind::NoMessageFound) => {
                        continue
                    }
                    Err(error) => {
                        return Err(error).with_context(|| {
                            format!("failed to read message {sequence} of {stream_name}")
                        })
                    }
                };
                let header_values = header_list(&message.headers);
                let entry = DlqEntry::new(
                    message.sequence,
                    message.time,
                    message.subject.as_str(),
                    &header_values,
                    message.payload.len(),
                );
                if args
                    .reason
                    .as_deref()
                    .is_some_and(|reason| reason != entry.reason)
                {
                    continue;
                }
                entries.push(entry);
            }
            match args.format {
                ListFormat::Table => {
                    print!("{}", render_list(&entries));
                    println!(
                        "{} of {} dead letters in {stream_name} (sequences {}..{})",
                        entries.len(),
                        state.messages,
                        state.first_sequence,
                        state.last_sequence
                    );
                }
                ListFormat::Json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&entries)
                            .context("failed to encode dead letters")?
                    );
                }
            }
        }
    }
    Ok(())
}

/// `dlq replay`: every dead letter of the reason (and age), oldest first,
/// published again with a JetStream ack; a progress bar on a terminal.
/// Replays published before the first of them must be acknowledged.
const REPLAYS_IN_FLIGHT: usize = 256;

/// Waits for the raw stream's acknowledgement of one replay.
async fn confirm(
    pending: Option<(u64, jetstream::context::PublishAckFuture)>,
) -> anyhow::Result<()> {
    if let Some((sequence, ack)) = pending {
        ack.await.with_context(|| {
            format!("dead letter {sequence}: the raw stream did not acknowledge the replay")
        })?;
    }
    Ok(())
}

async fn replay(
    js: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    stream_name: &str,
    args: &DlqReplayArgs,
) -> anyhow::Result<()> {
    let since = args
        .since
        .as_deref()
        .map(|since| parse_since(since, Utc::now()))
        .transpose()?;
    let state = stream.cached_info().state.clone();
    let first = state.first_sequence.max(1);
    let progress = indicatif::ProgressBar::new(state.last_sequence.saturating_sub(first) + 1);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} dead letters read, {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut replayed, mut skipped) = (0u64, 0u64);
    // Publishes are acknowledged in a window, not one round trip each.
    let mut in_flight = std::collections::VecDeque::new();
    for sequence in first..=state.last_sequence {
        progress.inc(1);
        let message = match stream.get_raw_message(sequence).await {
            Ok(message) => message,
            Err(error) if matches!(error.kind(), RawMessageErrorKind::NoMessageFound) => continue,
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("failed to read message {sequence} of {stream_name}"))
            }
        };
        let headers_of = header_list(&message.headers);
        if first_header(&headers_of, headers::ERROR_REASON) != args.reason
            || since.is_some_and(|since| message.time < since)
        {
            continue;
        }
        let Ok(plan) = replay_of(&headers_of, &message.payload) else {
            skipped += 1;
            progress.println(format!(
                "dead letter {sequence}: no raw source subject; not replayed"
            ));
            continue;
        };
        if args.dry_run {
            progress.println(format!(
                "would replay {sequence} to {} ({} bytes{})",
                plan.subject,
                plan.payload.len(),
                plan.headers
                    .iter()
                    .map(|(name, value)| format!(", {name}: {value}"))
                    .collect::<String>()
            ));
            replayed += 1;
            continue;
        }
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in &plan.headers {
            map.insert(*name, value.as_str());
        }
        map.insert(
            headers::NATS_MSG_ID,
            format!("replay:{stream_name}:{sequence}").as_str(),
        );
        let ack = js
            .publish_with_headers(plan.subject.clone(), map, plan.payload.into())
            .await
            .with_context(|| format!("failed to republish dead letter {sequence}"))?;
        in_flight.push_back((sequence, ack));
        if in_flight.len() >= REPLAYS_IN_FLIGHT {
            confirm(in_flight.pop_front()).await?;
        }
        replayed += 1;
        progress.set_message(format!("{replayed} replayed"));
    }
    while let Some(pending) = in_flight.pop_front() {
        confirm(Some(pending)).await?;
    }
    progress.finish_and_clear();
    let verb = if args.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{verb} {replayed} dead letters with reason {} from {stream_name}{}",
        args.reason,
        if skipped > 0 {
            format!(" ({skipped} without a raw source subject skipped)")
        } else {
            String::new()
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pairs: &[(&str, &str)]) -> HeaderList {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), vec![value.to_string()]))
            .collect()
    }

    #[test]
    fn a_single_message_is_replayed_as_it_was() {
        let headers = list(&[
            (headers::SOURCE_SUBJECT, "cctv.raw.canonical.gw1"),
            (headers::SOURCE_MSG_ID, "gw1-42"),
            (headers::CAMERA_ID, "AST-1"),
            (headers::ERROR_REASON, "unknown_offence"),
        ]);
        let replay = replay_of(&headers, b"{}").expect("replayable");
        assert_eq!(replay.subject, "cctv.raw.canonical.gw1");
        assert_eq!(
            replay.headers,
            vec![
                (headers::ORIGINAL_MSG_ID, "gw1-42".to_string()),
                (headers::CAMERA_ID, "AST-1".to_string())
            ]
        );
        assert_eq!(replay.payload, b"{}");
        // Without an original message id none is made up: the identity is
        // then the content, as it was.
        let bare = list(&[(headers::SOURCE_SUBJECT, "cctv.raw.hikvision.gw1")]);
        assert!(replay_of(&bare, b"<x/>")
            .expect("replayable")
            .headers
            .is_empty());
    }

    #[test]
    fn a_batch_item_is_replayed_alone_on_its_formats_subject() {
        let item = list(&[
            (headers::SOURCE_SUBJECT, "cctv.raw.batch.gw7"),
            (headers::BATCH_ITEM, "3"),
            (headers::SOURCE_FORMAT, "frigate"),
            (headers::SOURCE_MSG_ID, "item-3"),
            (headers::RECEIVED_AT, "2026-12-01T10:00:00Z"),
        ]);
        let replay = replay_of(&item, b"{\"type\":\"new\"}").expect("replayable");
        assert_eq!(replay.subject, "cctv.raw.frigate.gw7");
        assert_eq!(
            replay.headers[0],
            (headers::ORIGINAL_MSG_ID, "item-3".to_string())
        );
        // A broken item goes back as a batch of one; a whole batch as it was.
        let broken = list(&[
            (headers::SOURCE_SUBJECT, "cctv.raw.batch.gw7"),
            (headers::BATCH_ITEM, "4"),
            (headers::SOURCE_FORMAT, "batch"),
        ]);
        let replay = replay_of(&broken, b"{\"id\":1}").expect("replayable");
        assert_eq!(replay.subject, "cctv.raw.batch.gw7");
        assert_eq!(replay.payload, b"[{\"id\":1}]");
        let whole = list(&[(headers::SOURCE_SUBJECT, "cctv.raw.batch.gw7")]);
        assert_eq!(
            replay_of(&whole, b"[oops").expect("replayable").payload,
            b"[oops"
        );
        assert_eq!(
            replay_of(&list(&[]), b""),
            Err(NotReplayable::NoSourceSubject)
        );
    }

    #[test]
    fn since_takes_a_time_or_an_age() {
        let now = DateTime::parse_from_rfc3339("2026-12-05T12:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            parse_since("24h", now).unwrap(),
            DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z").unwrap()
        );
        assert_eq!(
            parse_since("2026-12-01T00:00:00+05:00", now).unwrap(),
            DateTime::parse_from_rfc3339("2026-11-30T19:00:00Z").unwrap()
        );
        assert!(parse_since("yesterday", now).is_err());
    }

    fn sample_headers() -> HeaderList {
        let mut list = HeaderList::new();
        list.insert(headers::ERROR_REASON.into(), vec!["invalid_json".into()]);
        list.insert(
            headers::ERROR.into(),
            vec!["expected value at line 1\ncolumn 1".into()],
        );
        list.insert(
            headers::SOURCE_SUBJECT.into(),
            vec!["cctv.raw.canonical.gw1".into()],
        );
        list
    }

    #[test]
    fn entries_take_their_fields_from_the_dead_letter_headers() {
        let time = DateTime::parse_from_rfc3339("2025-03-14T10:00:00Z")
            .unwrap()
            .to_utc();
        let entry = DlqEntry::new(
            7,
            time,
            "cctv.dlq.canonical.invalid_json",
            &sample_headers(),
            12,
        );
        assert_eq!(entry.reason, "invalid_json");
        assert_eq!(entry.source_subject, "cctv.raw.canonical.gw1");
        assert_eq!(entry.time, "2025-03-14T10:00:00Z");
        let text = render_list(&[entry]);
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .contains("expected value at line 1 column 1"),
            "{text}"
        );
        let show = render_show(7, time, "cctv.dlq.x", &sample_headers(), b"{oops");
        assert!(
            show.contains("  Cctv-Error-Reason: invalid_json\n"),
            "{show}"
        );
        assert!(show.ends_with("payload (5 bytes):\n{oops\n"), "{show}");
    }

    #[test]
    fn long_texts_and_payloads_are_cut_with_a_note() {
        assert_eq!(truncate_text("abcdef", 4), "abc…");
        assert_eq!(truncate_text("abc", 4), "abc");
        let payload = vec![b'x'; MAX_PAYLOAD_BYTES + 10];
        let text = render_payload(&payload);
        assert!(text.ends_with(&format!(
            "[payload truncated: showing 65536 of {} bytes]",
            MAX_PAYLOAD_BYTES + 10
        )));
        assert_eq!(render_payload(&[0xff, b'a']), "\u{fffd}a");
    }
}
