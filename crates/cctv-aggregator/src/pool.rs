//! Row buffers reused from batch to batch.
//!
//! A partition batch is a buffer of a megabyte or more. Allocated afresh for
//! every batch and freed after its insert, such buffers fragment the heap
//! (glibc serves them from its arenas once its adaptive mmap threshold has
//! risen past their size), and the process keeps the pages: in `make bench`
//! that was 40-50 MiB of peak RSS on top of the rows themselves. So a
//! written batch's buffer goes back to a small pool, and readers take their
//! next buffer from it.

use std::sync::Mutex;

use cctv_store::EncodedRows;

/// Free row buffers of one instance.
#[derive(Debug)]
pub(crate) struct RowBuffers {
    free: Mutex<Vec<EncodedRows>>,
    /// Buffers kept at most; more are freed.
    max_free: usize,
}

impl RowBuffers {
    /// A pool keeping at most `max_free` buffers.
    pub(crate) fn new(max_free: usize) -> Self {
        Self {
            free: Mutex::new(Vec::with_capacity(max_free)),
            max_free,
        }
    }

    /// An empty buffer: a pooled one, else one sized like `previous`.
    pub(crate) fn take(&self, previous: &EncodedRows) -> EncodedRows {
        let pooled = self.free.lock().ok().and_then(|mut free| free.pop());
        pooled.unwrap_or_else(|| EncodedRows::with_capacity_like(previous))
    }

    /// Returns a written batch's buffer, emptied, to the pool.
    pub(crate) fn give_back(&self, mut rows: EncodedRows) {
        rows.clear();
        if let Ok(mut free) = self.free.lock() {
            if free.len() < self.max_free {
                free.push(rows);
            }
        }
    }

    /// Buffers in the pool.
    #[cfg(test)]
    fn free_buffers(&self) -> usize {
        self.free.lock().map_or(0, |free| free.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(count: u64) -> EncodedRows {
        let event = cctv_event::OffenceEvent::example();
        let mut rows = EncodedRows::with_capacity(0);
        for sequence in 0..count {
            rows.push(&event.view(), "CCTV_EVENTS@1", "p0", sequence);
        }
        rows
    }

    #[test]
    fn a_buffer_given_back_is_taken_again_empty_with_its_room() {
        let pool = RowBuffers::new(2);
        let written = rows(100);
        let room = written.heap_bytes();
        pool.give_back(written);
        let taken = pool.take(&EncodedRows::with_capacity(0));
        assert!(taken.is_empty());
        assert!(taken.as_bytes().is_empty());
        assert_eq!(taken.heap_bytes(), room);
        // Empty pool: a new buffer sized like the previous batch.
        let fresh = pool.take(&rows(10));
        assert!(fresh.is_empty());
        assert!(fresh.heap_bytes() >= rows(10).as_bytes().len());
    }

    #[test]
    fn the_pool_keeps_at_most_its_limit() {
        let pool = RowBuffers::new(2);
        for _ in 0..5 {
            pool.give_back(rows(3));
        }
        assert_eq!(pool.free_buffers(), 2);
    }
}
