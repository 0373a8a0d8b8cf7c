//! Frame layout of the PSI protocol, and defensive parsing of the peer's frames.
//!
//! ```text
//! Hello  : kind=0x01 | magic "TPSI" | version u16 | role u8 | mode u8 | set_size u64 | batch u32
//! Points : kind=0x02 | count u32 | count × 32-byte compressed ristretto255 point
//! Values : kind=0x03 | count u32 | count × 16-byte AES-128_k(truncated doubly-blinded value)
//! Done   : kind=0x04
//! Release: kind=0x05 | 16-byte release key k
//! Abort  : kind=0x7F | reason u8
//! ```
//! All integers are little-endian. A frame must have exactly the length its header implies.

use bytes::{BufMut, Bytes, BytesMut};

use crate::crypto::{DOUBLE_BLINDED_BYTES, POINT_BYTES, RELEASE_KEY_BYTES};
use crate::{AbortReason, Mode, Protocol, PsiError, Role};

/// Version of the frame layout and message flow; both parties must agree. Version 2 encrypts
/// the `Values` under the sender's release key and ends the sender's frames with `Release`;
/// version 4 adds the resume offer to a bucketed run's `Buckets` frame ([`crate::bucket`]);
/// version 5 its share flag and the `Common` frames of an intersection shared with the sender.
pub const PROTOCOL_VERSION: u16 = 6;

const MAGIC: [u8; 4] = *b"TPSI";
const KIND_HELLO: u8 = 0x01;
const KIND_POINTS: u8 = 0x02;
/// Values (ECDH: doubly-blinded; rr22: OPRF outputs), 16 bytes each.
pub(crate) const KIND_VALUES: u8 = 0x03;
const KIND_DONE: u8 = 0x04;
const KIND_RELEASE: u8 = 0x05;
/// rr22: the receiver's OKVS seed and masked encoding, 16-byte blocks.
pub(crate) const KIND_OKVS: u8 = 0x06;
/// rr22 with payload: the width of the sender's sealed payloads (one `u32` item).
pub(crate) const KIND_PAYLOAD_WIDTH: u8 = 0x07;
/// rr22 with payload: the sender's sealed payloads, in the order of its values.
pub(crate) const KIND_PAYLOAD: u8 = 0x08;
const KIND_ABORT: u8 = tessera_ot::wire::KIND_ABORT;
/// Length of a `Hello` frame.
const HELLO_BYTES: usize = 1 + 4 + 2 + 1 + 1 + 1 + 8 + 4;
/// Length of a batch header (kind + count).
pub(crate) const BATCH_HEADER_BYTES: usize = 1 + 4;

/// The first frame each party sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) version: u16,
    pub(crate) protocol: Protocol,
    pub(crate) role: Role,
    pub(crate) mode: Mode,
    pub(crate) set_size: u64,
    pub(crate) batch_items_max: u32,
}

impl Hello {
    pub(crate) fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HELLO_BYTES);
        b.put_u8(KIND_HELLO);
        b.put_slice(&MAGIC);
        b.put_u16_le(self.version);
        b.put_u8(self.protocol.code());
        b.put_u8(match self.role {
            Role::Sender => 0,
            Role::Receiver => 1,
        });
        b.put_u8(match self.mode {
            Mode::Intersection => 0,
            Mode::SizeOnly => 1,
        });
        b.put_u64_le(self.set_size);
        b.put_u32_le(self.batch_items_max);
        b.freeze()
    }

    fn decode(frame: &[u8]) -> Result<Self, PsiError> {
        let bad = |what: &str| PsiError::Protocol(format!("hello: {what}"));
        // A peer of another version may lay out the rest differently: read only the version
        // (after the kind and magic, in every version) and let the caller report the mismatch.
        if let (Some(magic), Some(&[v0, v1])) = (frame.get(1..5), frame.get(5..7)) {
            let version = u16::from_le_bytes([v0, v1]);
            if magic == MAGIC && version != PROTOCOL_VERSION {
                return Ok(Hello {
                    version,
                    protocol: Protocol::Ecdh,
                    role: Role::Sender,
                    mode: Mode::Intersection,
                    set_size: 0,
                    batch_items_max: 0,
                });
            }
        }
        let f: &[u8; HELLO_BYTES] = frame
            .try_into()
            .map_err(|_| bad(&format!("length {} (expected {HELLO_BYTES})", frame.len())))?;
        let [
            _kind,
            m0,
            m1,
            m2,
            m3,
            v0,
            v1,
            protocol,
            role,
            mode,
            s0,
            s1,
            s2,
            s3,
            s4,
            s5,
            s6,
            s7,
            b0,
            b1,
            b2,
            b3,
        ] = *f;
        if [m0, m1, m2, m3] != MAGIC {
            return Err(bad("bad magic"));
        }
        let version = u16::from_le_bytes([v0, v1]);
        let protocol = Protocol::from_code(protocol)
            .ok_or_else(|| bad(&format!("unknown protocol code {protocol}")))?;
        let role = match role {
            0 => Role::Sender,
            1 => Role::Receiver,
            r => return Err(bad(&format!("unknown role code {r}"))),
        };
        let mode = match mode {
            0 => Mode::Intersection,
            1 => Mode::SizeOnly,
            m => return Err(bad(&format!("unknown mode code {m}"))),
        };
        Ok(Hello {
            version,
            protocol,
            role,
            mode,
            set_size: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            batch_items_max: u32::from_le_bytes([b0, b1, b2, b3]),
        })
    }
}

/// A parsed frame from the peer. Batch payloads are sub-slices of the received buffer. `Debug`
/// shows the kind and counts only (no payload, no key).
pub(crate) enum Frame {
    Hello(Hello),
    /// `count` compressed points (`count * POINT_BYTES` bytes).
    Points {
        count: usize,
        payload: Bytes,
    },
    /// `count` doubly-blinded values (`count * DOUBLE_BLINDED_BYTES` bytes).
    Values {
        count: usize,
        payload: Bytes,
    },
    Done,
    /// The sender's release key.
    Release([u8; RELEASE_KEY_BYTES]),
    Abort(AbortReason),
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frame::Hello(h) => h.fmt(f),
            Frame::Points { count, .. } | Frame::Values { count, .. } => {
                write!(f, "{}({count})", self.name())
            }
            Frame::Abort(r) => write!(f, "abort({r})"),
            Frame::Done | Frame::Release(_) => f.write_str(self.name()),
        }
    }
}

impl Frame {
    /// A short name for error messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Points { .. } => "points",
            Frame::Values { .. } => "values",
            Frame::Done => "done",
            Frame::Release(_) => "release",
            Frame::Abort(_) => "abort",
        }
    }

    /// Parses one frame; never panics, whatever the bytes.
    pub(crate) fn parse(frame: Bytes) -> Result<Frame, PsiError> {
        let Some(&kind) = frame.first() else {
            return Err(PsiError::Protocol("empty frame".into()));
        };
        match kind {
            KIND_HELLO => Hello::decode(&frame).map(Frame::Hello),
            KIND_POINTS => parse_batch(frame, POINT_BYTES, "points")
                .map(|(count, payload)| Frame::Points { count, payload }),
            KIND_VALUES => parse_batch(frame, DOUBLE_BLINDED_BYTES, "values")
                .map(|(count, payload)| Frame::Values { count, payload }),
            KIND_DONE if frame.len() == 1 => Ok(Frame::Done),
            KIND_RELEASE => frame
                .get(1..)
                .and_then(|k| <[u8; RELEASE_KEY_BYTES]>::try_from(k).ok())
                .map(Frame::Release)
                .ok_or_else(|| {
                    PsiError::Protocol(format!(
                        "release frame of {} bytes (expected {})",
                        frame.len(),
                        1 + RELEASE_KEY_BYTES
                    ))
                }),
            KIND_ABORT if frame.len() == 2 => Ok(Frame::Abort(abort_reason(
                frame.get(1).copied().unwrap_or(0),
            ))),
            KIND_DONE | KIND_ABORT => Err(PsiError::Protocol(format!(
                "frame kind {kind:#04x} with bad length {}",
                frame.len()
            ))),
            other => Err(PsiError::Protocol(format!(
                "unknown frame kind {other:#04x}"
            ))),
        }
    }
}

fn parse_batch(frame: Bytes, width: usize, what: &str) -> Result<(usize, Bytes), PsiError> {
    let header: [u8; BATCH_HEADER_BYTES] = frame
        .get(..BATCH_HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| PsiError::Protocol(format!("{what} batch: truncated header")))?;
    let [_, c0, c1, c2, c3] = header;
    let count = u32::from_le_bytes([c0, c1, c2, c3]) as usize;
    if count == 0 {
        return Err(PsiError::Protocol(format!("{what} batch: empty")));
    }
    let expected = count
        .checked_mul(width)
        .and_then(|n| n.checked_add(BATCH_HEADER_BYTES));
    if expected != Some(frame.len()) {
        return Err(PsiError::Protocol(format!(
            "{what} batch: {count} items need {} bytes, frame has {}",
            expected.map_or_else(|| "too many".to_owned(), |n| n.to_string()),
            frame.len()
        )));
    }
    Ok((count, frame.slice(BATCH_HEADER_BYTES..)))
}

/// A batch frame buffer of `count` items of `width` bytes, header filled in, payload zeroed.
pub(crate) fn new_batch(kind_points: bool, count: usize, width: usize) -> BytesMut {
    let mut b = BytesMut::zeroed(BATCH_HEADER_BYTES + count * width);
    if let Some(h) = b.get_mut(..BATCH_HEADER_BYTES) {
        h[0] = if kind_points {
            KIND_POINTS
        } else {
            KIND_VALUES
        };
        h[1..].copy_from_slice(&(count as u32).to_le_bytes());
    }
    b
}

pub(crate) fn done_frame() -> Bytes {
    Bytes::from_static(&[KIND_DONE])
}

pub(crate) fn release_frame(key: &[u8; RELEASE_KEY_BYTES]) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + RELEASE_KEY_BYTES);
    b.put_u8(KIND_RELEASE);
    b.put_slice(key);
    b.freeze()
}

/// The reason an abort frame's code stands for.
pub(crate) fn abort_reason(code: u8) -> AbortReason {
    match code {
        1 => AbortReason::Protocol,
        2 => AbortReason::VersionMismatch,
        3 => AbortReason::RoleMismatch,
        4 => AbortReason::ModeMismatch,
        5 => AbortReason::TooLarge,
        6 => AbortReason::InvalidConfig,
        7 => AbortReason::Internal,
        8 => AbortReason::ProtocolMismatch,
        other => AbortReason::Unknown(other),
    }
}

pub(crate) fn abort_frame(reason: AbortReason) -> Bytes {
    let code = match reason {
        AbortReason::Protocol => 1,
        AbortReason::VersionMismatch => 2,
        AbortReason::RoleMismatch => 3,
        AbortReason::ModeMismatch => 4,
        AbortReason::TooLarge => 5,
        AbortReason::InvalidConfig => 6,
        AbortReason::Internal => 7,
        AbortReason::ProtocolMismatch => 8,
        AbortReason::Unknown(c) => c,
    };
    Bytes::from(vec![KIND_ABORT, code])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        let h = Hello {
            version: PROTOCOL_VERSION,
            protocol: Protocol::Rr22,
            role: Role::Receiver,
            mode: Mode::SizeOnly,
            set_size: 123_456,
            batch_items_max: 4096,
        };
        match Frame::parse(h.encode()).expect("parse") {
            Frame::Hello(got) => assert_eq!(got, h),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn batches_are_checked() {
        let mut b = new_batch(true, 2, POINT_BYTES);
        b[BATCH_HEADER_BYTES] = 7;
        let (count, payload) = match Frame::parse(b.clone().freeze()).expect("parse") {
            Frame::Points { count, payload } => (count, payload),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(count, 2);
        assert_eq!(payload.len(), 64);
        assert_eq!(payload[0], 7);
        // Truncated, extended, empty, huge count, unknown kind, empty frame.
        let full = b.freeze();
        for bad in [
            full.slice(..full.len() - 1),
            Bytes::from([&full[..], &[0][..]].concat()),
            Bytes::from_static(&[KIND_POINTS, 0, 0, 0, 0]),
            Bytes::from_static(&[KIND_VALUES, 0xff, 0xff, 0xff, 0xff, 1, 2]),
            Bytes::from_static(&[KIND_POINTS, 1, 0]),
            Bytes::from_static(&[0x55, 1, 2, 3]),
            Bytes::from_static(&[KIND_DONE, 0]),
            Bytes::from_static(&[KIND_HELLO, b'T']),
            Bytes::new(),
        ] {
            assert!(
                matches!(Frame::parse(bad.clone()), Err(PsiError::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn abort_and_done_round_trip() {
        assert!(matches!(Frame::parse(done_frame()), Ok(Frame::Done)));
        let key = [7u8; RELEASE_KEY_BYTES];
        assert!(matches!(Frame::parse(release_frame(&key)), Ok(Frame::Release(k)) if k == key));
        for bad in [
            &[KIND_RELEASE][..],
            &[KIND_RELEASE; 18][..],
            &[KIND_RELEASE; 16][..],
        ] {
            assert!(matches!(
                Frame::parse(Bytes::copy_from_slice(bad)),
                Err(PsiError::Protocol(_))
            ));
        }
        for r in [
            AbortReason::Protocol,
            AbortReason::ModeMismatch,
            AbortReason::Unknown(99),
        ] {
            match Frame::parse(abort_frame(r)).expect("parse") {
                Frame::Abort(got) => assert_eq!(got, r),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
