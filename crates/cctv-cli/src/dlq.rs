//! `cctvctl dlq`: read dead letters from `CCTV_DLQ` without consuming them,
//! through the stream's message-get API (no direct get needed).

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

#[cfg(test)]
mod tests {
    use super::*;

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
