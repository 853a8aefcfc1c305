//! Frames: a 4-byte little-endian payload length, then the payload.
//!
//! The length is checked against [`MAX_FRAME_PAYLOAD`] as soon as the header is in, so a
//! peer that announces 4 GiB gets an error, never an allocation: the decoder only ever
//! holds bytes that actually arrived. A bad length leaves the stream out of sync, so the
//! decoder stays failed and the connection must be closed.

use alloc::vec::Vec;

/// Size of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;

/// Largest payload a frame may carry: room for a 64 MiB clipboard image or file chunk
/// plus its envelope.
pub const MAX_FRAME_PAYLOAD: usize = 64 * 1024 * 1024 + 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

/// Prefixes `payload` with its length.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    if payload.len() > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max: MAX_FRAME_PAYLOAD,
        });
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    // The check above keeps the length within u32.
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Incremental decoder: [`push`](Self::push) bytes as they arrive (any split), or let a
/// reader write straight into the decoder with [`fill_with`](Self::fill_with), then take
/// complete payloads with [`next_frame`](Self::next_frame) until it returns `Ok(None)`.
#[derive(Debug)]
pub struct FrameDecoder {
    /// Initialised storage; the bytes not yet decoded are `buf[start..end]`. It is kept
    /// (not shrunk) between frames so that reads land in it without an extra copy.
    buf: Vec<u8>,
    /// Consumed bytes are dropped lazily so a burst of small frames costs one move, not
    /// one per frame.
    start: usize,
    end: usize,
    max_payload: usize,
    failed: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::with_max_payload(MAX_FRAME_PAYLOAD)
    }

    /// A decoder with a smaller limit (a constrained peer such as the probe guest).
    pub fn with_max_payload(max_payload: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_payload: max_payload.min(MAX_FRAME_PAYLOAD),
            failed: None,
        }
    }

    /// Makes `room` bytes writable after the data, moving the data to the front first
    /// when that frees enough.
    fn reserve(&mut self, room: usize) {
        if self.start > 0 && (self.start == self.end || self.buf.len() - self.end < room) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < room {
            self.buf.resize(self.end + room, 0);
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.reserve(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Lets `read` write up to `room` bytes straight into the decoder (a socket read);
    /// the bytes it says it wrote are decoded next. Returns what `read` returned.
    pub fn fill_with<E>(
        &mut self,
        room: usize,
        read: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        if self.failed.is_some() {
            // Out of sync: what arrives is dropped, as `push` drops it.
            let mut scratch = [0u8; 512];
            return read(&mut scratch);
        }
        self.reserve(room);
        let n = read(&mut self.buf[self.end..self.end + room])?;
        self.end += n.min(room);
        Ok(n)
    }

    /// Bytes held that do not form a complete frame yet.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        self.next_frame_with(<[u8]>::to_vec)
    }

    /// Like [`next_frame`](Self::next_frame), handing the payload to `use_payload` where
    /// it lies instead of copying it out (a megabyte file chunk is decoded in place).
    pub fn next_frame_with<R>(
        &mut self,
        use_payload: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, FrameError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let pending = &self.buf[self.start..self.end];
        let Some(header) = pending.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*header) as usize;
        if len > self.max_payload {
            let err = FrameError::TooLarge {
                len,
                max: self.max_payload,
            };
            self.failed = Some(err);
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
            return Err(err);
        }
        if pending.len() - FRAME_HEADER_LEN < len {
            return Ok(None);
        }
        let result = use_payload(&pending[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len]);
        self.start += FRAME_HEADER_LEN + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_at_every_byte_come_out_whole() {
        let mut stream = Vec::new();
        stream.extend(encode_frame(b"hello").unwrap());
        stream.extend(encode_frame(b"").unwrap());
        stream.extend(encode_frame(&[7u8; 300]).unwrap());
        for split in 0..stream.len() {
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                dec.push(chunk);
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, vec![b"hello".to_vec(), vec![], vec![7u8; 300]]);
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let stream = encode_frame(b"abc").unwrap();
        let mut dec = FrameDecoder::new();
        for (i, b) in stream.iter().enumerate() {
            dec.push(core::slice::from_ref(b));
            let f = dec.next_frame().unwrap();
            assert_eq!(f.is_some(), i == stream.len() - 1);
        }
    }

    #[test]
    fn oversized_length_fails_without_allocating_and_stays_failed() {
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_le_bytes());
        let err = dec.next_frame().unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: u32::MAX as usize,
                max: MAX_FRAME_PAYLOAD
            }
        );
        assert!(dec.buf.capacity() < 1024);
        dec.push(&encode_frame(b"late").unwrap());
        assert_eq!(dec.next_frame(), Err(err));
    }

    #[test]
    fn fill_with_lands_in_the_decoder() {
        let stream = [
            encode_frame(b"first").unwrap(),
            encode_frame(&[9; 700]).unwrap(),
        ]
        .concat();
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for piece in stream.chunks(333) {
            let n = dec
                .fill_with::<()>(400, |room| {
                    room[..piece.len()].copy_from_slice(piece);
                    Ok(piece.len())
                })
                .unwrap();
            assert_eq!(n, piece.len());
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![b"first".to_vec(), vec![9; 700]]);
        assert_eq!(dec.buffered(), 0);
        // Storage is reused, not grown per read.
        assert!(dec.buf.len() < 2048);
    }

    #[test]
    fn small_limit_applies() {
        let mut dec = FrameDecoder::with_max_payload(8);
        dec.push(&encode_frame(&[0; 8]).unwrap());
        assert_eq!(dec.next_frame().unwrap().unwrap().len(), 8);
        dec.push(&encode_frame(&[0; 9]).unwrap());
        assert!(dec.next_frame().is_err());
    }

    #[test]
    fn encoder_refuses_oversized_payload() {
        let big = vec![0u8; MAX_FRAME_PAYLOAD + 1];
        assert!(matches!(
            encode_frame(&big),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
