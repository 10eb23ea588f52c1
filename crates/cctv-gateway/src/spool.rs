//! The on-disk spool: an append-only log of accepted messages that NATS has
//! not acknowledged yet, in segment files `<first sequence>.seg` in one
//! directory, framed and checksummed by `record.rs`.
//!
//! Fsync policy: a message is accepted (HTTP 2xx, MQTT PUBACK) only after
//! its frame was written and `fdatasync`ed; the directory is fsynced when a
//! segment file is created. Appends arriving together share one write and
//! one fsync (group commit, on a dedicated writer thread). A `kill -9` or a
//! power cut can only tear the last frame of the last segment, which no
//! device was told is stored: it is cut off at the next start.
//!
//! What NATS acknowledged is recorded in the file `acked` (the first
//! sequence not yet acknowledged), replaced by rename and not fsynced: after
//! a power cut the spool may send again messages NATS already holds, which
//! the pipeline drops as repeats (the same ids). A segment is deleted once
//! every record in it is acknowledged and a newer segment exists.
//!
//! Bounds: at most `max_bytes` of frames not yet acknowledged (beyond it
//! [`Spool::append`] refuses with [`GatewayError::SpoolFull`]); disk use is
//! that plus the acknowledged part of the oldest segment.
//!
//! Sequences are implicit: a segment's name is its first record's sequence,
//! the following records count up. A frame damaged after it was written (the
//! disk, not a crash) ends its segment's readable part; that is logged and
//! counted, and the records after it in that segment are lost.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot, Notify};

use crate::metrics as names;
use crate::record::{self, Frame, Message, FRAME_HEADER_BYTES, MAX_PAYLOAD_BYTES};
use crate::GatewayError;

/// Append requests queued for the writer thread.
const APPEND_QUEUE_CAPACITY: usize = 1_024;
/// Most bytes the writer gathers into one write and fsync.
const GROUP_MAX_BYTES: usize = 8 << 20;
/// Bytes the reader reads at once: at least one frame of the largest size.
const READ_CHUNK_BYTES: usize = MAX_PAYLOAD_BYTES + FRAME_HEADER_BYTES;
/// Suffix of segment files.
const SEGMENT_SUFFIX: &str = ".seg";
/// The file holding the first sequence not yet acknowledged.
const ACKED_FILE: &str = "acked";

/// One segment file.
#[derive(Debug, Clone)]
struct Segment {
    /// Sequence of its first record.
    first_seq: u64,
    path: PathBuf,
    /// Bytes written and fsynced (the readable part).
    durable_len: u64,
    /// Whether a newer segment exists (nothing more is written here).
    sealed: bool,
}

#[derive(Debug)]
struct State {
    segments: VecDeque<Segment>,
    /// Sequence the next appended record gets.
    next_seq: u64,
    /// Every sequence below this is acknowledged by NATS.
    acked_end: u64,
    /// Frame bytes durable and not yet acknowledged.
    pending_bytes: u64,
    /// Records durable and not yet acknowledged.
    pending_records: u64,
    /// Frame bytes accepted for writing, not yet durable (counted against
    /// the bound, so that concurrent pushes cannot overshoot it).
    reserved_bytes: u64,
}

struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Signalled when records became durable.
    appended: Notify,
    /// Signalled when acknowledged records freed space.
    freed: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A batch of frames for the writer thread.
struct AppendRequest {
    frames: Vec<u8>,
    records: u64,
    reply: oneshot::Sender<Result<(), GatewayError>>,
}

/// The spool's handle: append, wait, acknowledge. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Spool {
    shared: Arc<Shared>,
    writer: mpsc::Sender<AppendRequest>,
}

/// What recovery found at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Records waiting for NATS.
    pub(crate) records: u64,
    /// Their frame bytes.
    pub(crate) bytes: u64,
    /// Bytes cut off the end of the last segment (a write torn by a crash).
    pub(crate) torn_bytes: u64,
    /// Bytes lost to damaged frames before the end.
    pub(crate) corrupt_bytes: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovers what a crash left,
    /// and starts the writer thread. Blocking: call before serving, or in
    /// `spawn_blocking`.
    pub(crate) fn open(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<(Spool, SpoolReader, Recovered), GatewayError> {
        std::fs::create_dir_all(dir).map_err(|e| GatewayError::spool_io("create", dir, e))?;
        let acked_end = read_acked(dir);
        let mut segments = list_segments(dir)?;
        let mut recovered = Recovered {
            records: 0,
            bytes: 0,
            torn_bytes: 0,
            corrupt_bytes: 0,
        };
        let mut next_seq = acked_end;
        // Where the first record not yet acknowledged is: (segment, offset).
        let mut read_start: Option<(u64, u64, u64)> = None;
        let count = segments.len();
        for (index, segment) in segments.iter_mut().enumerate() {
            let is_last = index + 1 == count;
            let bytes = std::fs::read(&segment.path)
                .map_err(|e| GatewayError::spool_io("read", &segment.path, e))?;
            let scan = scan_frames(&bytes);
            let lost = bytes.len() as u64 - scan.valid_len;
            if lost > 0 {
                if is_last && !scan.corrupt {
                    recovered.torn_bytes += lost;
                    tracing::warn!(segment = %segment.path.display(), bytes = lost, "cut a torn write off the spool's last segment");
                } else {
                    recovered.corrupt_bytes += lost;
                    metrics::counter!(names::SPOOL_CORRUPT_BYTES).increment(lost);
                    tracing::error!(segment = %segment.path.display(), bytes = lost, "damaged spool frames; the rest of the segment is lost");
                }
                if is_last {
                    truncate(&segment.path, scan.valid_len)?;
                }
            }
            segment.durable_len = scan.valid_len;
            segment.sealed = !is_last;
            for (position, (offset, frame_len)) in scan.frames.iter().enumerate() {
                let seq = segment.first_seq + position as u64;
                if seq < acked_end {
                    continue;
                }
                if read_start.is_none() {
                    read_start = Some((segment.first_seq, *offset, seq));
                }
                recovered.records += 1;
                recovered.bytes += *frame_len;
            }
            next_seq = next_seq.max(segment.first_seq + scan.frames.len() as u64);
        }
        let mut segments: VecDeque<Segment> = segments.into();
        // Segments whose every record is acknowledged (a newer one exists).
        while segments.len() > 1
            && segments
                .get(1)
                .is_some_and(|next| next.first_seq <= acked_end)
        {
            if let Some(done) = segments.pop_front() {
                remove_segment(&done.path);
            }
        }
        let active = match segments.back() {
            Some(last) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&last.path)
                    .map_err(|e| GatewayError::spool_io("open", &last.path, e))?;
                file
            }
            None => {
                let segment = create_segment(dir, next_seq)?;
                let file = OpenOptions::new()
                    .append(true)
                    .open(&segment.path)
                    .map_err(|e| GatewayError::spool_io("open", &segment.path, e))?;
                segments.push_back(segment);
                file
            }
        };
        let (first_seq, offset, seq) = read_start.unwrap_or_else(|| {
            let last = segments
                .back()
                .map_or(next_seq, |segment| segment.first_seq);
            let end = segments.back().map_or(0, |segment| segment.durable_len);
            (last, end, next_seq)
        });
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(State {
                segments,
                next_seq,
                acked_end,
                pending_bytes: recovered.bytes,
                pending_records: recovered.records,
                reserved_bytes: 0,
            }),
            appended: Notify::new(),
            freed: Notify::new(),
        });
        publish_gauges(&shared.lock(), max_bytes);
        let (writer, requests) = mpsc::channel(APPEND_QUEUE_CAPACITY);
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || write_loop(&writer_shared, active, segment_bytes, requests))
            .map_err(|e| GatewayError::spool_io("start the writer of", dir, e))?;
        let reader = SpoolReader {
            shared: shared.clone(),
            segment_first_seq: first_seq,
            offset,
            next_seq: seq,
            file: None,
        };
        Ok((Spool { shared, writer }, reader, recovered))
    }

    /// Writes `messages` durably, in order: when this returns `Ok`, they
    /// survive a crash. Refuses with [`GatewayError::SpoolFull`] when they
    /// do not fit (nothing is written then).
    pub(crate) async fn append(&self, messages: &[Message]) -> Result<(), GatewayError> {
        let mut frames = Vec::with_capacity(messages.iter().map(record::frame_len).sum());
        for message in messages {
            record::encode_frame(message, &mut frames);
        }
        let bytes = frames.len() as u64;
        {
            let mut state = self.shared.lock();
            let used = state.pending_bytes + state.reserved_bytes;
            if used + bytes > self.shared.max_bytes {
                return Err(GatewayError::SpoolFull {
                    pending_bytes: used,
                    max_bytes: self.shared.max_bytes,
                });
            }
            state.reserved_bytes += bytes;
        }
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            frames,
            records: messages.len() as u64,
            reply,
        };
        let result = match self.writer.send(request).await {
            Ok(()) => answer.await.unwrap_or(Err(GatewayError::SpoolClosed)),
            Err(_) => Err(GatewayError::SpoolClosed),
        };
        if result.is_err() {
            // The writer releases the reservation of what it wrote; a
            // request it never saw is released here.
            if matches!(result, Err(GatewayError::SpoolClosed)) {
                let mut state = self.shared.lock();
                state.reserved_bytes = state.reserved_bytes.saturating_sub(bytes);
            }
        }
        result
    }

    /// Records every sequence below `acked_end` as acknowledged by NATS,
    /// `records` of them and `bytes` of frames since the last call; deletes
    /// segments that hold nothing else. Blocking (file system): call it in
    /// `spawn_blocking`.
    pub(crate) fn acknowledge(&self, acked_end: u64, records: u64, bytes: u64) {
        let removable: (u64, Vec<PathBuf>) = {
            let mut state = self.shared.lock();
            state.acked_end = state.acked_end.max(acked_end);
            state.pending_bytes = state.pending_bytes.saturating_sub(bytes);
            state.pending_records = state.pending_records.saturating_sub(records);
            let mut removable = Vec::new();
            while state.segments.len() > 1
                && state
                    .segments
                    .get(1)
                    .is_some_and(|next| next.first_seq <= state.acked_end)
            {
                if let Some(done) = state.segments.pop_front() {
                    removable.push(done.path);
                }
            }
            publish_gauges(&state, self.shared.max_bytes);
            (state.acked_end, removable)
        };
        let (acked_end, removable) = removable;
        // Written before the segments go: a crash in between leaves records
        // that are sent again, never a position past what is kept.
        write_acked(&self.shared.dir, acked_end);
        for path in removable {
            remove_segment(&path);
        }
        self.shared.freed.notify_waiters();
    }

    /// Waits until some acknowledged records freed space.
    pub(crate) async fn space_freed(&self) {
        self.shared.freed.notified().await;
    }

    /// Records durable and not yet acknowledged, and their bytes.
    pub(crate) fn pending(&self) -> (u64, u64) {
        let state = self.shared.lock();
        (state.pending_records, state.pending_bytes)
    }

    /// Whether the spool is at its bound (within one small message).
    pub(crate) fn is_full(&self) -> bool {
        let state = self.shared.lock();
        state.pending_bytes + state.reserved_bytes + 4096 > self.shared.max_bytes
    }
}

/// One record read back for publishing.
#[derive(Debug, Clone)]
pub(crate) struct Spooled {
    /// Its sequence.
    pub(crate) seq: u64,
    /// Its frame's bytes (what acknowledging it frees).
    pub(crate) frame_bytes: u64,
    /// The message.
    pub(crate) message: Message,
}

/// Reads durable records in order, once each. Only the publisher holds it.
pub(crate) struct SpoolReader {
    shared: Arc<Shared>,
    segment_first_seq: u64,
    offset: u64,
    next_seq: u64,
    file: Option<File>,
}

impl SpoolReader {
    /// Waits until records may be available to read (returns at once when
    /// some already are; may return with none).
    pub(crate) async fn wait_appended(&self) {
        let notified = self.shared.appended.notified();
        tokio::pin!(notified);
        // Registered before the check, so an append in between is not missed.
        notified.as_mut().enable();
        if self.available() {
            return;
        }
        notified.await;
    }

    /// Whether durable records wait beyond the reader's position.
    pub(crate) fn available(&self) -> bool {
        let state = self.shared.lock();
        state.next_seq > self.next_seq
    }

    /// Reads up to `max_records` records and about `max_bytes` bytes of
    /// frames (at least one record when any is durable). Blocking (file
    /// reads): call it in `spawn_blocking`.
    pub(crate) fn read(&mut self, max_records: usize, max_bytes: u64) -> Vec<Spooled> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        while out.len() < max_records && bytes < max_bytes {
            let (durable_len, sealed, next_segment, path) = {
                let state = self.shared.lock();
                let mut found = None;
                for (index, segment) in state.segments.iter().enumerate() {
                    if segment.first_seq == self.segment_first_seq {
                        let next = state.segments.get(index + 1).map(|next| next.first_seq);
                        found = Some((
                            segment.durable_len,
                            segment.sealed,
                            next,
                            segment.path.clone(),
                        ));
                        break;
                    }
                }
                match found {
                    Some(found) => found,
                    // Our segment is gone (every record in it acknowledged
                    // before we read it: only after a restart's recovery):
                    // go on with the oldest one left.
                    None => {
                        let oldest = state.segments.front().map(|first| first.first_seq);
                        drop(state);
                        match oldest {
                            Some(first_seq) if first_seq != self.segment_first_seq => {
                                self.move_to(first_seq);
                                continue;
                            }
                            _ => break,
                        }
                    }
                }
            };
            if self.offset >= durable_len {
                match (sealed, next_segment) {
                    (true, Some(next)) => {
                        self.move_to(next);
                        continue;
                    }
                    _ => break,
                }
            }
            let want = (durable_len - self.offset).min(READ_CHUNK_BYTES as u64) as usize;
            let chunk = match self.read_chunk(&path, want) {
                Ok(chunk) => chunk,
                Err(error) => {
                    tracing::error!(%error, "cannot read the spool; retrying later");
                    break;
                }
            };
            let mut position = 0usize;
            let mut progressed = false;
            while out.len() < max_records && bytes < max_bytes {
                let Some(rest) = chunk.get(position..) else {
                    break;
                };
                match record::read_frame(rest) {
                    Frame::Complete { payload_len } => {
                        let frame_len = FRAME_HEADER_BYTES + payload_len;
                        let payload = &rest[FRAME_HEADER_BYTES..frame_len];
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        position += frame_len;
                        progressed = true;
                        bytes += frame_len as u64;
                        match record::decode_payload(payload) {
                            Some(message) => out.push(Spooled {
                                seq,
                                frame_bytes: frame_len as u64,
                                message,
                            }),
                            None => self.lose(frame_len as u64, "unreadable spool record"),
                        }
                    }
                    Frame::Incomplete => break,
                    Frame::Corrupt => {
                        let lost = durable_len - self.offset - position as u64;
                        self.lose(lost, "damaged spool frame; the rest of the segment is lost");
                        position = (durable_len - self.offset) as usize;
                        progressed = true;
                        break;
                    }
                }
            }
            self.offset += position as u64;
            if !progressed {
                break;
            }
        }
        out
    }

    fn move_to(&mut self, first_seq: u64) {
        self.segment_first_seq = first_seq;
        self.offset = 0;
        self.next_seq = self.next_seq.max(first_seq);
        self.file = None;
    }

    /// Counts bytes that cannot be published as freed (they never will be).
    fn lose(&self, bytes: u64, what: &'static str) {
        metrics::counter!(names::SPOOL_CORRUPT_BYTES).increment(bytes);
        tracing::error!(bytes, what);
        let mut state = self.shared.lock();
        state.pending_bytes = state.pending_bytes.saturating_sub(bytes);
    }

    fn read_chunk(&mut self, path: &Path, want: usize) -> std::io::Result<Vec<u8>> {
        if self.file.is_none() {
            self.file = Some(File::open(path)?);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(Vec::new());
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut chunk = vec![0; want];
        file.read_exact(&mut chunk)?;
        Ok(chunk)
    }
}

/// The writer thread: gathers queued appends, writes them with one write
/// and one fsync, answers each.
fn write_loop(
    shared: &Shared,
    mut active: File,
    segment_bytes: u64,
    mut requests: mpsc::Receiver<AppendRequest>,
) {
    while let Some(first) = requests.blocking_recv() {
        let mut group = vec![first];
        let mut group_bytes = group[0].frames.len();
        while group_bytes < GROUP_MAX_BYTES {
            let Ok(more) = requests.try_recv() else { break };
            group_bytes += more.frames.len();
            group.push(more);
        }
        let result = write_group(shared, &mut active, segment_bytes, &group);
        metrics::counter!(names::SPOOL_FSYNCS).increment(1);
        let records: u64 = group.iter().map(|request| request.records).sum();
        {
            let mut state = shared.lock();
            state.reserved_bytes = state.reserved_bytes.saturating_sub(group_bytes as u64);
            if result.is_ok() {
                state.next_seq += records;
                state.pending_bytes += group_bytes as u64;
                state.pending_records += records;
                if let Some(segment) = state.segments.back_mut() {
                    segment.durable_len += group_bytes as u64;
                }
            }
            publish_gauges(&state, shared.max_bytes);
        }
        if result.is_ok() {
            shared.appended.notify_waiters();
        }
        for request in group {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(GatewayError::SpoolIo {
                    operation: "write",
                    path: shared.dir.display().to_string(),
                    source: std::io::Error::new(error.kind(), error.to_string()),
                }),
            };
            let _ = request.reply.send(answer);
        }
    }
}

/// Writes one group to the active segment (starting a new one first when
/// it is full) and fsyncs it. On failure the segment is cut back to its
/// durable length, so a failed group leaves no partial frame behind.
fn write_group(
    shared: &Shared,
    active: &mut File,
    segment_bytes: u64,
    group: &[AppendRequest],
) -> std::io::Result<()> {
    let (durable_len, next_seq) = {
        let state = shared.lock();
        let durable = state
            .segments
            .back()
            .map_or(0, |segment| segment.durable_len);
        (durable, state.next_seq)
    };
    if durable_len >= segment_bytes {
        let segment = create_segment(&shared.dir, next_seq).map_err(to_io)?;
        *active = OpenOptions::new().append(true).open(&segment.path)?;
        let mut state = shared.lock();
        if let Some(last) = state.segments.back_mut() {
            last.sealed = true;
        }
        state.segments.push_back(segment);
    }
    let mut buffer = Vec::with_capacity(group.iter().map(|r| r.frames.len()).sum());
    for request in group {
        buffer.extend_from_slice(&request.frames);
    }
    let written = active.write_all(&buffer).and_then(|()| active.sync_data());
    if let Err(error) = written {
        let durable_len = shared
            .lock()
            .segments
            .back()
            .map_or(0, |segment| segment.durable_len);
        let _ = active.set_len(durable_len);
        return Err(error);
    }
    Ok(())
}

fn to_io(error: GatewayError) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

/// What a scan of one segment's bytes found.
struct Scan {
    /// `(offset, frame length)` of every whole, intact frame, in order.
    frames: Vec<(u64, u64)>,
    /// Bytes up to the end of the last intact frame.
    valid_len: u64,
    /// Whether the scan stopped at a damaged frame (not at a torn end).
    corrupt: bool,
}

fn scan_frames(bytes: &[u8]) -> Scan {
    let mut frames = Vec::new();
    let mut offset = 0usize;
    let mut corrupt = false;
    while offset < bytes.len() {
        match record::read_frame(&bytes[offset..]) {
            Frame::Complete { payload_len } => {
                let frame_len = FRAME_HEADER_BYTES + payload_len;
                frames.push((offset as u64, frame_len as u64));
                offset += frame_len;
            }
            Frame::Incomplete => break,
            Frame::Corrupt => {
                corrupt = true;
                break;
            }
        }
    }
    Scan {
        frames,
        valid_len: offset as u64,
        corrupt,
    }
}

/// The segments in `dir`, oldest first.
fn list_segments(dir: &Path) -> Result<Vec<Segment>, GatewayError> {
    let entries = std::fs::read_dir(dir).map_err(|e| GatewayError::spool_io("list", dir, e))?;
    let mut segments: Vec<Segment> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let first_seq = name.strip_suffix(SEGMENT_SUFFIX)?.parse().ok()?;
            Some(Segment {
                first_seq,
                path: entry.path(),
                durable_len: 0,
                sealed: true,
            })
        })
        .collect();
    segments.sort_by_key(|segment| segment.first_seq);
    Ok(segments)
}

/// Creates an empty segment starting at `first_seq` and makes its name durable.
fn create_segment(dir: &Path, first_seq: u64) -> Result<Segment, GatewayError> {
    let path = dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"));
    File::create(&path).map_err(|e| GatewayError::spool_io("create", &path, e))?;
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|e| GatewayError::spool_io("fsync", dir, e))?;
    Ok(Segment {
        first_seq,
        path,
        durable_len: 0,
        sealed: false,
    })
}

fn truncate(path: &Path, len: u64) -> Result<(), GatewayError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| file.set_len(len).and_then(|()| file.sync_all()))
        .map_err(|e| GatewayError::spool_io("truncate", path, e))
}

fn remove_segment(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(%error, segment = %path.display(), "cannot delete an acknowledged spool segment");
    }
}

/// The first sequence not yet acknowledged, 0 when unknown (everything the
/// segments hold is then sent again: repeats, never a loss).
fn read_acked(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(ACKED_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

fn write_acked(dir: &Path, acked_end: u64) {
    let temporary = dir.join(format!("{ACKED_FILE}.tmp"));
    let written = std::fs::write(&temporary, acked_end.to_string())
        .and_then(|()| std::fs::rename(&temporary, dir.join(ACKED_FILE)));
    if let Err(error) = written {
        tracing::warn!(%error, "cannot record the spool's acknowledged position");
    }
}

fn publish_gauges(state: &State, max_bytes: u64) {
    metrics::gauge!(names::SPOOL_BYTES).set(state.pending_bytes as f64);
    metrics::gauge!(names::SPOOL_RECORDS).set(state.pending_records as f64);
    metrics::gauge!(names::SPOOL_MAX_BYTES).set(max_bytes as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use cctv_normalize::Format;

    fn message(n: usize, body_bytes: usize) -> Message {
        Message {
            format: Format::Canonical,
            id: format!("gw1-{n:032}"),
            received_at_ms: 1_795_749_305_000 + n as i64,
            camera_id: None,
            attachments: None,
            body: vec![b'a' + (n % 26) as u8; body_bytes],
        }
    }

    fn read_all(reader: &mut SpoolReader) -> Vec<Spooled> {
        reader.read(usize::MAX, u64::MAX)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn appended_records_are_read_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime();
        let (spool, mut reader, recovered) = Spool::open(dir.path(), 1 << 20, 4096).unwrap();
        assert_eq!(recovered.records, 0);
        for n in 0..50 {
            runtime.block_on(spool.append(&[message(n, 300)])).unwrap();
        }
        assert!(list_segments(dir.path()).unwrap().len() > 2, "rolled over");
        let first = reader.read(20, u64::MAX);
        assert_eq!(first.len(), 20);
        assert!(first
            .iter()
            .enumerate()
            .all(|(n, r)| r.message == message(n, 300)));
        let bytes: u64 = first.iter().map(|r| r.frame_bytes).sum();
        spool.acknowledge(20, 20, bytes);
        assert_eq!(spool.pending().0, 30);
        drop((spool, reader));

        // A restart reads from the first record not acknowledged.
        let (spool, mut reader, recovered) = Spool::open(dir.path(), 1 << 20, 4096).unwrap();
        assert_eq!(recovered.records, 30);
        let rest = read_all(&mut reader);
        assert_eq!(rest.len(), 30);
        assert_eq!(rest[0].message, message(20, 300));
        assert_eq!(rest[0].seq, 20);
        let bytes: u64 = rest.iter().map(|r| r.frame_bytes).sum();
        spool.acknowledge(50, 30, bytes);
        assert_eq!(spool.pending(), (0, 0));
        assert_eq!(
            list_segments(dir.path()).unwrap().len(),
            1,
            "acked segments deleted"
        );
        runtime.block_on(spool.append(&[message(50, 10)])).unwrap();
        let next = read_all(&mut reader);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].seq, 50);
    }

    #[test]
    fn a_torn_last_frame_is_cut_off_and_nothing_before_it_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime();
        let (spool, reader, _) = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        for n in 0..3 {
            runtime.block_on(spool.append(&[message(n, 100)])).unwrap();
        }
        drop((spool, reader));
        // What a kill -9 in the middle of a write leaves: half a frame.
        let segment = &list_segments(dir.path()).unwrap()[0].path;
        let mut torn = Vec::new();
        record::encode_frame(&message(3, 100), &mut torn);
        let mut file = OpenOptions::new().append(true).open(segment).unwrap();
        file.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(file);

        let (spool, mut reader, recovered) = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(recovered.records, 3);
        assert_eq!(recovered.torn_bytes, (torn.len() / 2) as u64);
        runtime.block_on(spool.append(&[message(4, 100)])).unwrap();
        let all = read_all(&mut reader);
        let bodies: Vec<Message> = all.into_iter().map(|r| r.message).collect();
        assert_eq!(
            bodies,
            vec![
                message(0, 100),
                message(1, 100),
                message(2, 100),
                message(4, 100)
            ]
        );
    }

    #[test]
    fn a_full_spool_refuses_until_acknowledgements_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime();
        let (spool, mut reader, _) = Spool::open(dir.path(), 8192, 4096).unwrap();
        let mut accepted = 0;
        let refused = loop {
            match runtime.block_on(spool.append(&[message(accepted, 1000)])) {
                Ok(()) => accepted += 1,
                Err(error) => break error,
            }
        };
        assert!(
            matches!(refused, GatewayError::SpoolFull { .. }),
            "{refused}"
        );
        assert!(refused.is_transient());
        let frame_bytes = record::frame_len(&message(0, 1000));
        assert_eq!(accepted, 8192 / frame_bytes, "whole frames up to the bound");
        assert!(spool.is_full());
        let read = reader.read(2, u64::MAX);
        let bytes = read.iter().map(|r| r.frame_bytes).sum();
        spool.acknowledge(2, 2, bytes);
        runtime
            .block_on(spool.append(&[message(99, 1000)]))
            .unwrap();
        assert_eq!(read_all(&mut reader).len(), accepted - 2 + 1);
    }

    #[test]
    fn concurrent_appends_share_fsyncs_and_each_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (spool, mut reader, _) = Spool::open(dir.path(), 64 << 20, 1 << 20).unwrap();
        runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for n in 0..200 {
                let spool = spool.clone();
                tasks.spawn(async move { spool.append(&[message(n, 200)]).await });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap().unwrap();
            }
        });
        drop(spool);
        let (_, _, recovered) = Spool::open(dir.path(), 64 << 20, 1 << 20).unwrap();
        assert_eq!(recovered.records, 200);
        assert_eq!(read_all(&mut reader).len(), 200);
    }
}
