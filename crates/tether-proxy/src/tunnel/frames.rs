//! Where the WebSocket frames of the backend→client stream begin and end, so the proxy can
//! put its own close frame between two of them (RFC 6455 §5.4 lets a control frame sit
//! between the fragments of a message, never inside a frame).
//!
//! **Why it runs from the upgrade, not from the close request.** A frame's end is known only
//! from its header, and a header is found only at the end of the previous frame: a reader
//! that starts in the middle of a stream cannot find the next boundary at all (a payload
//! may contain anything, including bytes that look like a header). So the tracker follows
//! the stream from the first byte after `101`, and what it keeps is the least that works:
//! how many payload bytes of the current frame are still to come, plus the few bytes of a
//! header that a read split in two. Per read it skips the payload arithmetically and parses
//! one 2–14 byte header per frame that *starts* in the read; it never copies or looks at
//! payload bytes. A read that stays inside a payload costs one comparison; a whole header
//! with a 7-bit length (the usual small message) takes a short path, the rest (extended
//! lengths, split headers) is out of line. Counted with callgrind on the plain round trip
//! (64-byte messages) it is about 45 instructions per frame of ~2 400 per round trip; the
//! figures are in `docs/proxy.md` ("Closing tunnels on purpose").
//!
//! Only the backend→client direction is tracked: the proxy never writes into the
//! client→backend stream (it closes the backend's socket instead, see `tunnel::goodbye`).

/// The longest header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// Follows frame boundaries in one direction of a WebSocket.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameTracker {
    /// Payload bytes of the current frame not yet seen; a header comes after them.
    remaining: u64,
    /// The start of a header that a read cut short.
    head: [u8; MAX_HEADER],
    /// How many bytes of `head` are filled (0: not inside a header).
    have: u8,
    /// The stream carried a close frame (the peer said goodbye itself).
    saw_close: bool,
}

/// The length of a header given its first bytes (at least 2 to know it; 2 is a lower bound).
fn header_len(start: &[u8]) -> usize {
    if start.len() < 2 {
        return 2;
    }
    let ext = match start[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if start[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// The payload length a complete header announces.
fn payload_len(header: &[u8]) -> u64 {
    match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[2..10]);
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    }
}

impl FrameTracker {
    /// Accounts for `data`, the next bytes of the stream.
    #[inline]
    pub(crate) fn advance(&mut self, data: &[u8]) {
        let len = data.len() as u64;
        if self.remaining >= len {
            // Inside a payload that this read does not go past: nothing to parse.
            self.remaining -= len;
            return;
        }
        let skip = self.remaining as usize;
        self.remaining = 0;
        self.headers(&data[skip..]);
    }

    /// `data` starts at a header, or inside one a read split. Kept small (the rest is in
    /// [`FrameTracker::other_header`]) so the common case saves few registers.
    fn headers(&mut self, mut data: &[u8]) {
        loop {
            if self.remaining > 0 {
                let skip = self.remaining.min(data.len() as u64);
                self.remaining -= skip;
                data = &data[skip as usize..];
            }
            if data.is_empty() {
                return;
            }
            if self.have == 0 {
                if let [b0, b1, ..] = *data {
                    // The common case: a whole header with a 7-bit length.
                    let head = if b1 & 0x80 != 0 { 6 } else { 2 };
                    if b1 & 0x7f < 126 && data.len() >= head {
                        self.saw_close |= b0 & 0x0f == 0x8;
                        self.remaining = u64::from(b1 & 0x7f);
                        data = &data[head..];
                        continue;
                    }
                }
            }
            data = self.other_header(data);
        }
    }

    /// A header with an extended length, or one split across reads: takes what it can of
    /// it and returns the bytes after.
    #[inline(never)]
    fn other_header<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        if self.have == 0 {
            let len = header_len(data);
            if data.len() >= len {
                self.start_frame_at(&data[..len]);
                return &data[len..];
            }
        }
        let have = usize::from(self.have);
        let need = header_len(&self.head[..have]);
        let take = (need - have).min(data.len());
        self.head[have..have + take].copy_from_slice(&data[..take]);
        self.have += take as u8;
        let have = usize::from(self.have);
        if have == header_len(&self.head[..have]) {
            let head = self.head;
            self.start_frame_at(&head[..have]);
            self.have = 0;
        }
        &data[take..]
    }

    fn start_frame_at(&mut self, header: &[u8]) {
        if header[0] & 0x0f == 0x8 {
            self.saw_close = true;
        }
        self.remaining = payload_len(header);
    }

    /// How many more bytes to read to reach the next frame boundary, or at least to learn
    /// where it is (the rest of a split header). 0: the stream is at a boundary now.
    pub(crate) fn until_boundary(&self) -> u64 {
        if self.have == 0 {
            self.remaining
        } else {
            let have = usize::from(self.have);
            (header_len(&self.head[..have]) - have) as u64
        }
    }

    /// The stream already carried a close frame: the peer said goodbye itself.
    pub(crate) fn saw_close(&self) -> bool {
        self.saw_close
    }
}

/// A close frame from the server role (unmasked), with a status code and a short reason.
pub(crate) fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    // A control frame's payload is at most 125 bytes: 2 for the code, the rest for text.
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.push(0x88);
    frame.push((2 + reason.len()) as u8);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, len: usize, masked: bool) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        let mask = if masked { 0x80 } else { 0 };
        if len < 126 {
            out.push(mask | len as u8);
        } else if len <= 0xffff {
            out.push(mask | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend(std::iter::repeat_n(0x81u8, len));
        out
    }

    /// A stream of frames of every length encoding, fed in pieces of every size from 1 to
    /// 20 bytes: the tracker says "at a boundary" only at frame ends, and from any position,
    /// reading only what it asks for stops exactly at the end of the frame under way.
    #[test]
    fn boundaries_are_found_whatever_the_read_sizes() {
        let lens = [0usize, 1, 125, 126, 127, 65535, 65536, 70000, 3];
        let mut stream = Vec::new();
        let mut ends = vec![0];
        for (i, len) in lens.iter().enumerate() {
            stream.extend(frame(0x2, *len, i % 2 == 1));
            ends.push(stream.len());
        }
        for piece in 1..=20usize {
            let mut t = FrameTracker::default();
            let mut at = 0;
            while at < stream.len() {
                let end = (at + piece).min(stream.len());
                t.advance(&stream[at..end]);
                at = end;
                if t.until_boundary() == 0 {
                    assert!(
                        ends.contains(&at),
                        "piece {piece}: boundary claimed at {at}"
                    );
                }
            }
            assert_eq!(t.until_boundary(), 0);
        }
        // A close requested at any position (every 7th byte) finds the next frame end.
        for start in (0..stream.len()).step_by(7) {
            let mut t = FrameTracker::default();
            t.advance(&stream[..start]);
            let mut at = start;
            while t.until_boundary() > 0 {
                let want = (t.until_boundary() as usize).min(4096);
                t.advance(&stream[at..at + want]);
                at += want;
            }
            let next = *ends.iter().find(|e| **e >= start).unwrap();
            assert_eq!(at, next, "close requested at {start}");
        }
    }

    #[test]
    fn a_close_frame_from_the_peer_is_noticed() {
        let mut t = FrameTracker::default();
        t.advance(&frame(0x1, 5, false));
        assert!(!t.saw_close());
        t.advance(&close_frame(1000, "bye"));
        assert!(t.saw_close());
        assert_eq!(t.until_boundary(), 0);
    }

    #[test]
    fn close_frame_carries_code_and_bounded_reason() {
        assert_eq!(close_frame(1012, "x"), vec![0x88, 3, 0x03, 0xf4, b'x']);
        let long = "r".repeat(300);
        let f = close_frame(1001, &long);
        assert_eq!(f.len(), 2 + 125);
        assert_eq!(f[1], 125);
    }
}
