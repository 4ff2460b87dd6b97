//! Where session serials come from: this process's counter, or blocks
//! reserved from a backend shared by several nodes.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;

/// Where session serials come from: this process's counter (the only writer
/// of its database), or blocks reserved from a backend shared by several nodes.
pub(super) enum Serials {
    Local(AtomicU64),
    Blocks {
        blocks: parking_lot::Mutex<Blocks>,
        /// Reserves this many serials; returns the first.
        reserve: Box<dyn Fn(u64) -> Result<u64, Error> + Send + Sync>,
    },
}

/// The serial blocks a node holds: the current one and, once half of it is
/// used, the next (reserved by one caller outside the lock, so the others
/// never wait for that round trip).
#[derive(Default)]
pub(super) struct Blocks {
    /// The next serial of the current block, and the block's end (exclusive).
    current: (u64, u64),
    /// The next block, reserved ahead.
    spare: Option<u64>,
    /// A caller is reserving the spare.
    reserving: bool,
}

/// Serials a node reserves from a shared backend at a time (one round trip per block).
pub(super) const SERIAL_BLOCK: u64 = 1024;

impl Serials {
    pub(super) fn take(&self) -> Result<u64, Error> {
        match self {
            Serials::Local(n) => Ok(n.fetch_add(1, Ordering::Relaxed)),
            Serials::Blocks { blocks, reserve } => {
                let mut b = blocks.lock();
                if b.current.0 >= b.current.1 {
                    let first = match b.spare.take() {
                        Some(first) => first,
                        // None ahead (the first take, or a reservation still
                        // on its way or failed): reserve one now, under the lock.
                        None => reserve(SERIAL_BLOCK)?,
                    };
                    b.current = (first, first + SERIAL_BLOCK);
                }
                let serial = b.current.0;
                b.current.0 += 1;
                let low = b.current.1 - b.current.0 < SERIAL_BLOCK / 2;
                if low && b.spare.is_none() && !b.reserving {
                    b.reserving = true;
                    drop(b);
                    // A failed reservation is retried by a later take (under
                    // the lock if the current block runs out first).
                    let next = reserve(SERIAL_BLOCK);
                    let mut b = blocks.lock();
                    b.reserving = false;
                    if let Ok(first) = next {
                        b.spare = Some(first);
                    }
                }
                Ok(serial)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// Serials from blocks: every take is unique, a block is reserved ahead
    /// once half of the current one is used, and a failed reservation only
    /// delays the next block.
    #[test]
    pub(super) fn serial_blocks_are_unique_and_reserved_ahead() {
        let calls = Arc::new(AtomicU64::new(0));
        let fail_next = Arc::new(AtomicBool::new(false));
        let (c, f) = (Arc::clone(&calls), Arc::clone(&fail_next));
        let next = parking_lot::Mutex::new(1u64);
        let serials = Serials::Blocks {
            blocks: parking_lot::Mutex::default(),
            reserve: Box::new(move |n| {
                c.fetch_add(1, Ordering::SeqCst);
                if f.swap(false, Ordering::SeqCst) {
                    return Err(Error::Busy);
                }
                let mut x = next.lock();
                let first = *x;
                *x += n;
                Ok(first)
            }),
        };
        let half = SERIAL_BLOCK / 2;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..=half {
            assert!(seen.insert(serials.take().unwrap()));
        }
        // One reservation for the first block, one ahead at the half.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        for _ in half + 1..SERIAL_BLOCK {
            assert!(seen.insert(serials.take().unwrap()));
        }
        // The next block was reserved ahead: switching to it costs no call.
        assert!(seen.insert(serials.take().unwrap()));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The reservation ahead fails: the block after is reserved when needed.
        fail_next.store(true, Ordering::SeqCst);
        for _ in 0..2 * SERIAL_BLOCK {
            assert!(seen.insert(serials.take().unwrap()));
        }
        assert_eq!(seen.len() as u64, 3 * SERIAL_BLOCK + 1);
        // From 8 threads at once: still unique.
        let all = parking_lot::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let mine: Vec<u64> = (0..3000).map(|_| serials.take().unwrap()).collect();
                    all.lock().extend(mine);
                });
            }
        });
        let all = all.into_inner();
        let unique: std::collections::HashSet<u64> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len());
        assert!(unique.is_disjoint(&seen));
    }
}
