//! Streamed transactions, staged until they commit.
//!
//! With `streaming` on (protocol 2 and later), Postgres sends a large
//! transaction's changes while it is still running, in blocks, possibly
//! interleaved with other transactions' blocks and with whole committed
//! transactions. Sluice appends a transaction only at its commit, in
//! commit order, exactly as when the server sends it whole, so each
//! streamed transaction's messages are kept here, in arrival order, until
//! its `Stream Commit` (then replayed through the same path as a whole
//! transaction) or its `Stream Abort` (then dropped: the whole
//! transaction, or the aborted subtransaction's part).
//!
//! Invariant: bounded memory. All staged transactions together keep at
//! most `memory_budget` bytes in memory; past it, the transaction being
//! added to moves to an unlinked temporary file (in `spill_dir`), written
//! in 1 MiB pieces. A spill file is nothing to recover: a transaction that
//! was open when Sluice stopped is sent again, from its start, by the
//! server after a restart (the slot's restart point stays behind every
//! running transaction), so the files are anonymous and vanish with the
//! process.
//!
//! Subtransaction aborts are cut by position: a subtransaction's changes
//! run from its first message to its abort, and whatever came in between
//! belongs to it or to its own subtransactions (a rolled back savepoint
//! cannot be interleaved with a sibling's changes), so an abort truncates
//! the staged messages back to where that subxid first appeared, as
//! Postgres' own apply worker does.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use bytes::Bytes;

/// The piece written to a spill file at a time.
const SPILL_CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("staging a streamed transaction in {dir}: {error}")]
    Io { dir: String, error: std::io::Error },
    #[error("staged transaction is corrupt at byte {0}")]
    Corrupt(u64),
}

/// All streamed transactions open now.
pub struct Staging {
    txs: HashMap<u32, Staged>,
    memory_budget: usize,
    in_memory: usize,
    spill_dir: PathBuf,
    /// Transactions moved to disk so far (for the metrics).
    pub spilled: u64,
}

/// One streamed transaction's messages.
pub struct Staged {
    /// Messages not (yet) in the file: frames of a u32 length and the
    /// bytes.
    mem: Vec<u8>,
    file: Option<File>,
    /// Bytes in the file.
    file_len: u64,
    /// Each subtransaction seen and where its first message begins.
    subxacts: Vec<(u32, u64)>,
    /// Messages staged.
    pub messages: u64,
}

impl Staged {
    fn len(&self) -> u64 {
        self.file_len + self.mem.len() as u64
    }
}

impl Staging {
    pub fn new(memory_budget: usize, spill_dir: PathBuf) -> Staging {
        Staging {
            txs: HashMap::new(),
            memory_budget,
            in_memory: 0,
            spill_dir,
            spilled: 0,
        }
    }

    /// Number of streamed transactions open.
    pub fn open(&self) -> usize {
        self.txs.len()
    }

    /// A new block of `xid` begins; the first block of a transaction
    /// starts it afresh (one left from a stream that broke off is
    /// discarded).
    pub fn start(&mut self, xid: u32, first_segment: bool) {
        if first_segment {
            self.drop_tx(xid);
        }
        self.txs.entry(xid).or_insert_with(|| Staged {
            mem: Vec::new(),
            file: None,
            file_len: 0,
            subxacts: Vec::new(),
            messages: 0,
        });
    }

    /// Stages one message of `xid` (the top-level transaction) that the
    /// (sub)transaction `subxid` wrote.
    pub fn add(&mut self, xid: u32, subxid: u32, message: &[u8]) -> Result<(), StagingError> {
        let over_budget = self.in_memory + message.len() + 4 > self.memory_budget;
        let Some(tx) = self.txs.get_mut(&xid) else {
            // A block that did not start (a server would not do this):
            // start it now rather than lose the message.
            self.start(xid, false);
            return self.add(xid, subxid, message);
        };
        if subxid != xid && !tx.subxacts.iter().any(|(s, _)| *s == subxid) {
            tx.subxacts.push((subxid, tx.len()));
        }
        let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
        tx.mem.extend_from_slice(&len.to_be_bytes());
        tx.mem.extend_from_slice(message);
        tx.messages += 1;
        self.in_memory += message.len() + 4;
        if tx.file.is_none() && over_budget {
            let file = anonymous_file(&self.spill_dir).map_err(|error| StagingError::Io {
                dir: self.spill_dir.display().to_string(),
                error,
            })?;
            tx.file = Some(file);
            self.spilled += 1;
        }
        if tx.file.is_some() && tx.mem.len() >= SPILL_CHUNK {
            let n = tx.mem.len();
            flush(tx).map_err(|error| StagingError::Io {
                dir: self.spill_dir.display().to_string(),
                error,
            })?;
            self.in_memory -= n;
        }
        Ok(())
    }

    /// `Stream Abort`: the whole transaction, or one subtransaction's part.
    pub fn abort(&mut self, xid: u32, subxid: u32) -> Result<(), StagingError> {
        if xid == subxid {
            self.drop_tx(xid);
            return Ok(());
        }
        let Some(tx) = self.txs.get_mut(&xid) else {
            return Ok(());
        };
        let Some(i) = tx.subxacts.iter().position(|(s, _)| *s == subxid) else {
            // It staged nothing.
            return Ok(());
        };
        let at = tx.subxacts[i].1;
        tx.subxacts.truncate(i);
        let before = tx.mem.len();
        if at >= tx.file_len {
            tx.mem.truncate((at - tx.file_len) as usize);
        } else {
            tx.mem.clear();
            if let Some(f) = tx.file.as_mut() {
                f.set_len(at).map_err(|error| StagingError::Io {
                    dir: self.spill_dir.display().to_string(),
                    error,
                })?;
            }
            tx.file_len = at;
        }
        self.in_memory -= before - tx.mem.len();
        // The count is only informative; it is not exact after a cut.
        Ok(())
    }

    /// `Stream Commit`: takes the transaction out, to be replayed.
    pub fn take(&mut self, xid: u32) -> Option<Replay> {
        let tx = self.txs.remove(&xid)?;
        self.in_memory -= tx.mem.len();
        Some(Replay {
            messages: tx.messages,
            reader: tx.file.map(|mut f| {
                let _ = f.seek(SeekFrom::Start(0));
                BufReader::with_capacity(SPILL_CHUNK, f)
            }),
            file_left: tx.file_len,
            mem: Bytes::from(tx.mem),
            pos: 0,
            offset: 0,
        })
    }

    fn drop_tx(&mut self, xid: u32) {
        if let Some(tx) = self.txs.remove(&xid) {
            self.in_memory -= tx.mem.len();
        }
    }

    /// Everything staged is dropped (a new session receives it again).
    pub fn clear(&mut self) {
        self.txs.clear();
        self.in_memory = 0;
    }

    /// Bytes held in memory now.
    pub fn in_memory(&self) -> usize {
        self.in_memory
    }
}

fn flush(tx: &mut Staged) -> std::io::Result<()> {
    if let Some(f) = tx.file.as_mut() {
        f.seek(SeekFrom::Start(tx.file_len))?;
        f.write_all(&tx.mem)?;
        tx.file_len += tx.mem.len() as u64;
        tx.mem.clear();
        if tx.mem.capacity() > 2 * SPILL_CHUNK {
            tx.mem.shrink_to(SPILL_CHUNK);
        }
    }
    Ok(())
}

/// A file that exists only while it is open (unlinked at once).
fn anonymous_file(dir: &std::path::Path) -> std::io::Result<File> {
    std::fs::create_dir_all(dir)?;
    for _ in 0..16 {
        let path = dir.join(format!(
            "sluice-stream-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => {
                std::fs::remove_file(&path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no unused spill file name"))
}

/// A committed streamed transaction's messages, in order.
pub struct Replay {
    /// Messages staged (an upper bound after a subtransaction's cut).
    pub messages: u64,
    reader: Option<BufReader<File>>,
    file_left: u64,
    mem: Bytes,
    pos: usize,
    /// Bytes read so far (for error messages).
    offset: u64,
}

impl Replay {
    /// The next message, or None at the end.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, StagingError> {
        if self.file_left > 0 {
            let r = self
                .reader
                .as_mut()
                .ok_or(StagingError::Corrupt(self.offset))?;
            let mut len = [0u8; 4];
            r.read_exact(&mut len)
                .map_err(|_| StagingError::Corrupt(self.offset))?;
            let n = u32::from_be_bytes(len) as usize;
            if (n as u64) + 4 > self.file_left {
                return Err(StagingError::Corrupt(self.offset));
            }
            let mut buf = vec![0u8; n];
            r.read_exact(&mut buf)
                .map_err(|_| StagingError::Corrupt(self.offset))?;
            self.file_left -= n as u64 + 4;
            self.offset += n as u64 + 4;
            return Ok(Some(Bytes::from(buf)));
        }
        if self.pos >= self.mem.len() {
            return Ok(None);
        }
        let rest = &self.mem[self.pos..];
        if rest.len() < 4 {
            return Err(StagingError::Corrupt(self.offset));
        }
        let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + n {
            return Err(StagingError::Corrupt(self.offset));
        }
        let msg = self.mem.slice(self.pos + 4..self.pos + 4 + n);
        self.pos += 4 + n;
        self.offset += n as u64 + 4;
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mut r: Replay) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(m) = r.next_message().unwrap() {
            out.push(m.to_vec());
        }
        out
    }

    fn msg(i: u32) -> Vec<u8> {
        format!("message {i}").into_bytes()
    }

    #[test]
    fn a_committed_transaction_replays_in_order_in_memory_and_spilled() {
        for budget in [1 << 30, 64] {
            let mut s = Staging::new(budget, std::env::temp_dir());
            s.start(7, true);
            for i in 0..5000 {
                s.add(7, 7, &msg(i)).unwrap();
            }
            assert_eq!(s.spilled, u64::from(budget == 64));
            let got = all(s.take(7).unwrap());
            assert_eq!(got, (0..5000).map(msg).collect::<Vec<_>>());
            assert_eq!(s.in_memory(), 0);
        }
    }

    #[test]
    fn a_spilled_transaction_keeps_memory_bounded() {
        let mut s = Staging::new(1 << 16, std::env::temp_dir());
        s.start(1, true);
        let big = vec![7u8; 1000];
        for _ in 0..20_000 {
            s.add(1, 1, &big).unwrap();
            assert!(s.in_memory() <= SPILL_CHUNK + (1 << 16) + 2000);
        }
        let r = s.take(1).unwrap();
        assert_eq!(all(r).len(), 20_000);
    }

    #[test]
    fn aborted_transactions_and_subtransactions_leave_nothing() {
        for budget in [1 << 30, 16] {
            let mut s = Staging::new(budget, std::env::temp_dir());
            s.start(10, true);
            s.add(10, 10, b"top 1").unwrap();
            s.add(10, 11, b"sub 11 a").unwrap();
            s.add(10, 11, b"sub 11 b").unwrap();
            s.add(10, 12, b"sub 12 (child of 11)").unwrap();
            s.abort(10, 11).unwrap();
            s.add(10, 13, b"sub 13").unwrap();
            s.add(10, 10, b"top 2").unwrap();
            // A sub never staged: nothing to cut.
            s.abort(10, 99).unwrap();
            let got = all(s.take(10).unwrap());
            assert_eq!(
                got,
                vec![b"top 1".to_vec(), b"sub 13".to_vec(), b"top 2".to_vec()],
                "budget {budget}"
            );
            s.start(20, true);
            s.add(20, 20, b"x").unwrap();
            s.abort(20, 20).unwrap();
            assert!(s.take(20).is_none());
            assert_eq!(s.in_memory(), 0);
        }
    }

    #[test]
    fn a_subtransaction_cut_reaches_into_the_spill_file() {
        let mut s = Staging::new(1 << 10, std::env::temp_dir());
        s.start(1, true);
        for i in 0..100 {
            s.add(1, 1, &msg(i)).unwrap();
        }
        let big = vec![1u8; SPILL_CHUNK];
        s.add(1, 2, &big).unwrap(); // flushed to the file
        s.add(1, 2, &big).unwrap();
        s.abort(1, 2).unwrap();
        s.add(1, 1, b"after").unwrap();
        let got = all(s.take(1).unwrap());
        let mut want: Vec<Vec<u8>> = (0..100).map(msg).collect();
        want.push(b"after".to_vec());
        assert_eq!(got, want);
    }

    #[test]
    fn interleaved_transactions_stay_apart_and_a_restarted_one_starts_afresh() {
        let mut s = Staging::new(1 << 30, std::env::temp_dir());
        s.start(1, true);
        s.add(1, 1, b"a1").unwrap();
        s.start(2, true);
        s.add(2, 2, b"b1").unwrap();
        s.start(1, false);
        s.add(1, 1, b"a2").unwrap();
        assert_eq!(s.open(), 2);
        assert_eq!(
            all(s.take(1).unwrap()),
            vec![b"a1".to_vec(), b"a2".to_vec()]
        );
        s.start(2, true);
        s.add(2, 2, b"b1 again").unwrap();
        assert_eq!(all(s.take(2).unwrap()), vec![b"b1 again".to_vec()]);
    }
}
