//! Where an HTTP/1.1 message body ends (RFC 9112 §6.3), so the proxy relays exactly one
//! request and one response on a connection that was not upgraded, and nothing after them.
//!
//! The body itself is never kept or rewritten: a [`Body`] only counts the bytes that belong to
//! the message as they pass, so a second request hidden after the first (in the same packet,
//! or after a backend's non-`101` answer) is never forwarded unparsed.

use std::num::NonZeroU64;

/// How the end of a message body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a request without `Content-Length`, `Content-Length: 0`, an answer to `HEAD`,
    /// `1xx`, `204`, `304`).
    Empty,
    /// Exactly this many bytes.
    Length(NonZeroU64),
    /// `Transfer-Encoding: chunked`, ended by the last chunk and the trailer section.
    Chunked,
    /// A response without a length: the body ends when the backend closes.
    UntilClose,
}

/// A chunked body that does not follow RFC 9112 §7.1; the exchange is abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct BadChunk(&'static str);

/// The longest chunk-size line or trailer line accepted (extensions included).
const MAX_LINE: u32 = 4096;

/// Where a chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In the chunk-size hex digits; `digits` read so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: an extension, up to the CR.
    Extension {
        size: u64,
    },
    /// The CR of a chunk-size line was read, its LF is next.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data: this many bytes left.
    Data(NonZeroU64),
    /// After chunk data: CR, then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// The CR of a trailer line was read, its LF is next.
    TrailerLf,
    /// The CR of the final empty line was read.
    EndLf,
}

/// Counts the bytes of one body as they pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Body {
    state: BodyState,
    /// Bytes on the current chunk-size or trailer line, against [`MAX_LINE`].
    line: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Done,
    Remaining(NonZeroU64),
    Chunked(Chunk),
    UntilClose,
}

impl Body {
    pub fn new(framing: Framing) -> Body {
        let state = match framing {
            Framing::Empty => BodyState::Done,
            Framing::Length(n) => BodyState::Remaining(n),
            Framing::Chunked => BodyState::Chunked(Chunk::Size { size: 0, digits: 0 }),
            Framing::UntilClose => BodyState::UntilClose,
        };
        Body { state, line: 0 }
    }

    /// True once every byte of the body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == BodyState::Done
    }

    /// True when only the peer closing ends the body.
    pub fn until_close(&self) -> bool {
        self.state == BodyState::UntilClose
    }

    /// Takes the body's bytes from the front of `data`: returns how many belong to it (the
    /// rest is past its end).
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, BadChunk> {
        match self.state {
            BodyState::Done => Ok(0),
            BodyState::UntilClose => Ok(data.len()),
            BodyState::Remaining(left) => {
                let take = left.get().min(data.len() as u64);
                self.state = NonZeroU64::new(left.get() - take)
                    .map_or(BodyState::Done, BodyState::Remaining);
                Ok(take as usize)
            }
            BodyState::Chunked(_) => self.feed_chunked(data),
        }
    }

    fn feed_chunked(&mut self, data: &[u8]) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            let BodyState::Chunked(chunk) = self.state else {
                break;
            };
            if let Chunk::Data(left) = chunk {
                let take = left.get().min((data.len() - i) as u64);
                i += take as usize;
                self.state = BodyState::Chunked(
                    NonZeroU64::new(left.get() - take).map_or(Chunk::DataCr, Chunk::Data),
                );
                continue;
            }
            let b = data[i];
            i += 1;
            self.line += 1;
            if self.line > MAX_LINE {
                return Err(BadChunk("line too long"));
            }
            let next = match (chunk, b) {
                (Chunk::Size { size, digits }, _) if b.is_ascii_hexdigit() => {
                    if digits >= 16 {
                        return Err(BadChunk("chunk size too large"));
                    }
                    let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                    Chunk::Size {
                        size: size << 4 | digit,
                        digits: digits + 1,
                    }
                }
                (Chunk::Size { digits: 0, .. }, _) => return Err(BadChunk("missing chunk size")),
                (Chunk::Size { size, .. }, b';' | b' ' | b'\t') => Chunk::Extension { size },
                (Chunk::Size { size, .. } | Chunk::Extension { size }, b'\r') => {
                    Chunk::SizeLf { size }
                }
                (Chunk::Size { .. }, _) => return Err(BadChunk("invalid chunk size")),
                (Chunk::Extension { .. }, b'\n') => return Err(BadChunk("bare LF")),
                (Chunk::Extension { .. }, _) => chunk,
                (Chunk::SizeLf { size }, b'\n') => {
                    self.line = 0;
                    NonZeroU64::new(size).map_or(Chunk::TrailerStart, Chunk::Data)
                }
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => {
                    self.line = 0;
                    Chunk::Size { size: 0, digits: 0 }
                }
                (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
                (Chunk::TrailerStart | Chunk::Trailer, b'\n') => return Err(BadChunk("bare LF")),
                (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerStart | Chunk::Trailer, _) => Chunk::Trailer,
                (Chunk::TrailerLf, b'\n') => {
                    self.line = 0;
                    Chunk::TrailerStart
                }
                (Chunk::EndLf, b'\n') => {
                    self.state = BodyState::Done;
                    return Ok(i);
                }
                _ => return Err(BadChunk("expected CRLF")),
            };
            self.state = BodyState::Chunked(next);
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked() -> Body {
        Body::new(Framing::Chunked)
    }

    #[test]
    fn a_length_body_takes_exactly_its_bytes() {
        let mut body = Body::new(Framing::Length(NonZeroU64::new(5).unwrap()));
        assert_eq!(body.feed(b"abc"), Ok(3));
        assert_eq!(body.feed(b"deGET / HTTP/1.1"), Ok(2));
        assert!(body.is_done());
        assert_eq!(body.feed(b"more"), Ok(0));
    }

    #[test]
    fn a_chunked_body_ends_after_the_last_chunk_and_trailers() {
        let msg = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        let end = msg.len() - b"GET /next".len();
        let mut body = chunked();
        assert_eq!(body.feed(msg), Ok(end));
        assert!(body.is_done());
        // Fed one byte at a time, the end is the same.
        let mut body = chunked();
        let mut taken = 0;
        for b in msg.iter() {
            taken += body.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(taken, end);
        assert!(body.is_done());
    }

    #[test]
    fn a_chunked_body_without_trailers_ends_at_the_empty_line() {
        let mut body = chunked();
        assert_eq!(body.feed(b"0\r\n\r\nrest"), Ok(5));
        assert!(body.is_done());
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello",
            b"5\r\nhelloXX",
            b"0\r\nX: 1\n\r\n",
            b"11111111111111111\r\n",
        ] {
            assert!(
                chunked().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("5;{}\r\n", "e".repeat(5000));
        assert!(chunked().feed(long.as_bytes()).is_err());
    }

    #[test]
    fn random_bytes_never_panic_and_never_take_more_than_given() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"0123456789abcdefABCDEF;= \t\r\nxZ";
        for _ in 0..5_000 {
            let mut body = chunked();
            for _ in 0..1 + next() % 6 {
                let len = (next() % 40) as usize;
                let data: Vec<u8> = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                match body.feed(&data) {
                    Ok(n) => assert!(n <= data.len()),
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn an_until_close_body_takes_everything() {
        let mut body = Body::new(Framing::UntilClose);
        assert_eq!(body.feed(b"anything at all"), Ok(15));
        assert!(!body.is_done());
        assert!(body.until_close());
    }
}
