//! A receiver's run stopped at the sender's release, to be finished later: one bucket of a
//! bucketed run ([`crate::bucket`]), whose key arrives masked and is unmasked only once the
//! whole run's delivery is recorded. What the receiver holds until then, written to and read
//! back from its own file, and the match once the key is known.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use tessera_ot::Block;
use zeroize::Zeroize;

use crate::common::{Encrypted, intersect};
use crate::crypto::{RELEASE_KEY_BYTES, ReleaseKey};
use crate::rr22::PayloadMatch;
use crate::{
    Mode, PAYLOAD_BYTES_MAX, PAYLOAD_TOTAL_BYTES_MAX, PsiError, ReceiverOutput, SET_ITEMS_MAX,
};

/// What a receiver's run gave: its output, or (deferred) what it holds at the release.
pub(crate) enum Received {
    Done(ReceiverOutput),
    Pending(Pending),
}

impl Received {
    /// The output of a run that was not deferred.
    pub(crate) fn done(self) -> Result<ReceiverOutput, PsiError> {
        match self {
            Received::Done(out) => Ok(out),
            Received::Pending(_) => Err(PsiError::Internal(
                "a run that was not deferred stopped at its release".into(),
            )),
        }
    }
}

/// A receiver's values at the release, and the release key as it arrived (masked).
pub(crate) struct Pending {
    pub(crate) masked_key: [u8; RELEASE_KEY_BYTES],
    pub(crate) peer_size: usize,
    pub(crate) state: PendingState,
}

pub(crate) enum PendingState {
    /// rr22 or ECDH without payload.
    Plain {
        ours: Vec<u128>,
        theirs: Vec<u128>,
        encrypted: Encrypted,
        distinct: Vec<usize>,
        mode: Mode,
    },
    /// rr22 with payload.
    Payload(PayloadMatch),
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.masked_key.zeroize();
    }
}

const MAGIC: &[u8; 5] = b"TPND2";
/// Bytes of the BLAKE3 digest that ends a pending file (of everything before it).
const DIGEST_BYTES: u64 = 32;

/// A writer that hashes what it writes.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Checks a pending file against the digest that ends it: a file cut short or changed since it
/// was written is [`PsiError::Storage`].
pub(crate) fn verify(path: &Path) -> Result<(), PsiError> {
    let mut f = File::open(path).map_err(|e| storage(path, e))?;
    let len = f.metadata().map_err(|e| storage(path, e))?.len();
    let body = len
        .checked_sub(DIGEST_BYTES)
        .ok_or_else(|| storage(path, "cut short"))?;
    let mut hasher = blake3::Hasher::new();
    let copied =
        std::io::copy(&mut (&mut f).take(body), &mut hasher).map_err(|e| storage(path, e))?;
    let mut digest = [0u8; DIGEST_BYTES as usize];
    f.read_exact(&mut digest).map_err(|e| storage(path, e))?;
    if copied != body || hasher.finalize().as_bytes() != &digest {
        return Err(storage(path, "damaged (its digest does not match)"));
    }
    Ok(())
}

fn storage(path: &Path, e: impl std::fmt::Display) -> PsiError {
    PsiError::Storage(format!("{}: {e}", path.display()))
}

fn put_u64(w: &mut impl Write, v: u64) -> std::io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn put_values(w: &mut impl Write, v: &[u128]) -> std::io::Result<()> {
    put_u64(w, v.len() as u64)?;
    for x in v {
        w.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}

fn put_indices(w: &mut impl Write, v: &[usize]) -> std::io::Result<()> {
    put_u64(w, v.len() as u64)?;
    for &x in v {
        put_u64(w, x as u64)?;
    }
    Ok(())
}

/// Reads our own file back; any damage is [`PsiError::Storage`], never a panic.
struct Reader<'a, R> {
    r: R,
    path: &'a Path,
}

impl<R: Read> Reader<'_, R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], PsiError> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| storage(self.path, e))?;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, PsiError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn count(&mut self, max: usize) -> Result<usize, PsiError> {
        let n = self.u64()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| {
                storage(
                    self.path,
                    format!("a count of {n} (at most {max}): damaged"),
                )
            })
    }

    fn values(&mut self) -> Result<Vec<u128>, PsiError> {
        let n = self.count(SET_ITEMS_MAX)?;
        (0..n)
            .map(|_| Ok(u128::from_le_bytes(self.bytes()?)))
            .collect()
    }

    fn indices(&mut self) -> Result<Vec<usize>, PsiError> {
        let n = self.count(SET_ITEMS_MAX)?;
        (0..n)
            .map(|_| {
                let i = self.u64()?;
                usize::try_from(i).map_err(|_| storage(self.path, "an index past usize"))
            })
            .collect()
    }
}

impl Pending {
    /// Stops a receiver's run at the release: takes the sender's (masked) key, answers
    /// `Done`, and keeps `state` for later.
    pub(crate) async fn at_release(
        link: &dyn tessera_core::Link,
        peer_size: usize,
        state: PendingState,
    ) -> Result<Received, PsiError> {
        Ok(Received::Pending(Pending {
            masked_key: crate::common::recv_release(link).await?,
            peer_size,
            state,
        }))
    }

    /// Writes the pending state to `path` (a new file; the caller's own directory), ended by a
    /// BLAKE3 digest of everything before it ([`verify`]).
    ///
    /// # Errors
    /// [`PsiError::Storage`] if it cannot be written.
    pub(crate) fn write(&self, path: &Path) -> Result<(), PsiError> {
        let f = File::create(path).map_err(|e| storage(path, e))?;
        let mut w = Hashing {
            inner: BufWriter::new(f),
            hasher: blake3::Hasher::new(),
        };
        let io = (|| -> std::io::Result<()> {
            w.write_all(MAGIC)?;
            w.write_all(&self.masked_key)?;
            put_u64(&mut w, self.peer_size as u64)?;
            match &self.state {
                PendingState::Plain {
                    ours,
                    theirs,
                    encrypted,
                    distinct,
                    mode,
                } => {
                    w.write_all(&[0])?;
                    w.write_all(&[match encrypted {
                        Encrypted::Ours => 0,
                        Encrypted::Theirs => 1,
                    }])?;
                    w.write_all(&[match mode {
                        Mode::Intersection => 0,
                        Mode::SizeOnly => 1,
                    }])?;
                    put_values(&mut w, ours)?;
                    put_values(&mut w, theirs)?;
                    put_indices(&mut w, distinct)?;
                }
                PendingState::Payload(m) => {
                    w.write_all(&[1])?;
                    put_u64(&mut w, m.pre.len() as u64)?;
                    for b in &m.pre {
                        w.write_all(b.as_bytes())?;
                    }
                    put_values(&mut w, &m.ours)?;
                    put_values(&mut w, &m.theirs)?;
                    put_u64(&mut w, m.width as u64)?;
                    put_u64(&mut w, m.sealed.len() as u64)?;
                    w.write_all(&m.sealed)?;
                    put_indices(&mut w, &m.distinct)?;
                    put_u64(&mut w, m.peer_size as u64)?;
                }
            }
            let digest = w.hasher.finalize();
            w.inner.write_all(digest.as_bytes())?;
            w.inner.flush()
        })();
        io.map_err(|e| storage(path, e))
    }

    /// Reads a pending state [`Pending::write`] wrote.
    ///
    /// # Errors
    /// [`PsiError::Storage`] if the file cannot be read or is damaged.
    pub(crate) fn read(path: &Path) -> Result<Pending, PsiError> {
        verify(path)?;
        let f = File::open(path).map_err(|e| storage(path, e))?;
        let mut r = Reader {
            r: BufReader::new(f),
            path,
        };
        if &r.bytes::<5>()? != MAGIC {
            return Err(storage(path, "not a pending-state file"));
        }
        let masked_key = r.bytes::<RELEASE_KEY_BYTES>()?;
        let peer_size = r.count(SET_ITEMS_MAX)?;
        let state = match r.bytes::<1>()? {
            [0] => {
                let encrypted = match r.bytes::<1>()? {
                    [0] => Encrypted::Ours,
                    [1] => Encrypted::Theirs,
                    _ => return Err(storage(path, "damaged")),
                };
                let mode = match r.bytes::<1>()? {
                    [0] => Mode::Intersection,
                    [1] => Mode::SizeOnly,
                    _ => return Err(storage(path, "damaged")),
                };
                PendingState::Plain {
                    ours: r.values()?,
                    theirs: r.values()?,
                    encrypted,
                    mode,
                    distinct: r.indices()?,
                }
            }
            [1] => {
                let n = r.count(SET_ITEMS_MAX)?;
                let pre = (0..n)
                    .map(|_| Ok(Block::new(r.bytes::<16>()?)))
                    .collect::<Result<Vec<_>, PsiError>>()?;
                let ours = r.values()?;
                let theirs = r.values()?;
                let width = r.count(4 + PAYLOAD_BYTES_MAX)?;
                let len =
                    r.count(usize::try_from(PAYLOAD_TOTAL_BYTES_MAX).unwrap_or(usize::MAX))?;
                let mut sealed = vec![0u8; len];
                r.r.read_exact(&mut sealed).map_err(|e| storage(path, e))?;
                let distinct = r.indices()?;
                let peer_size = r.count(SET_ITEMS_MAX)?;
                PendingState::Payload(PayloadMatch {
                    pre,
                    ours,
                    theirs,
                    width,
                    sealed,
                    distinct,
                    peer_size,
                })
            }
            _ => return Err(storage(path, "damaged")),
        };
        Ok(Pending {
            masked_key,
            peer_size,
            state,
        })
    }

    /// The match, with the release key unmasked by `mask`.
    ///
    /// # Errors
    /// A protocol error for a sealed payload that does not open (rr22 with payload).
    pub(crate) fn finish(
        mut self,
        mask: &[u8; RELEASE_KEY_BYTES],
    ) -> Result<ReceiverOutput, PsiError> {
        let mut key = self.masked_key;
        for (k, m) in key.iter_mut().zip(mask) {
            *k ^= m;
        }
        let release = ReleaseKey::from_bytes(key);
        key.zeroize();
        let peer_size = self.peer_size;
        let state = std::mem::replace(
            &mut self.state,
            PendingState::Plain {
                ours: Vec::new(),
                theirs: Vec::new(),
                encrypted: Encrypted::Ours,
                distinct: Vec::new(),
                mode: Mode::Intersection,
            },
        );
        match state {
            PendingState::Plain {
                ours,
                theirs,
                encrypted,
                distinct,
                mode,
            } => {
                let (intersection_size, intersection) =
                    intersect(ours, theirs, encrypted, release, &distinct, mode);
                Ok(ReceiverOutput {
                    intersection_size,
                    sender_set_size: peer_size as u64,
                    intersection,
                    payloads: None,
                })
            }
            PendingState::Payload(m) => crate::rr22::open_payloads(m, &release),
        }
    }
}
