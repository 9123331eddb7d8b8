//! Makes gRPC C-core clients (py-spiffe, grpc-java, Envoy, grpcurl) work over cairn's Unix sockets.
//!
//! Those clients send the socket path, percent-encoded, as the HTTP/2 `:authority`
//! (`tmp%2Fagent.sock`). That is not a valid URI authority, and the h2 crate under tonic
//! resets every such stream with PROTOCOL_ERROR (hyperium/h2#487, grpc/grpc#38142). Go's
//! server accepts it, so SPIRE never noticed. This adapter sits between the socket and the
//! HTTP/2 server and rewrites an invalid `:authority` in client HEADERS blocks to `localhost`
//! (what grpc-go sends over Unix sockets); every other byte passes through unchanged.
//!
//! Header blocks are HPACK-compressed with a dynamic table shared across the connection, so
//! each block is decoded with a decoder that follows the client's table, and re-encoded as
//! literals without indexing, which keeps the server's decoder table empty and consistent.
//!
//! The connection's first header block decides: if its `:authority` is valid (grpc-go, tonic,
//! cairn's own CLI and agent), that block and every byte after it pass through untouched, so
//! the server's decoder follows the client's table itself and those clients pay nothing per
//! request (decoding each block cost about an eighth of a MintX509SVID's server CPU). gRPC
//! clients keep one authority per connection; one that changed to an invalid one later would
//! see the stream reset, as it would without this adapter.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The server's SETTINGS_MAX_FRAME_SIZE (HTTP/2's default; tonic does not raise it).
const MAX_FRAME: usize = 16_384;
/// Largest header block accepted from a client before the connection is dropped.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

struct Pending {
    stream_id: u32,
    flags: u8,
    block: Vec<u8>,
    /// The frames as received, for passing through unchanged.
    raw: Vec<u8>,
}

/// What the adapter does with the connection's header blocks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No header block seen yet.
    Undecided,
    /// The first block's authority was invalid: every block is decoded and rewritten.
    Rewrite,
    /// The first block's authority was valid: bytes pass through untouched.
    Passthrough,
}

/// A Unix stream whose client-to-server HTTP/2 header blocks get a valid `:authority`.
pub struct AuthorityFix<S> {
    inner: S,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    preface_done: bool,
    eof: bool,
    decoder: loona_hpack::Decoder<'static>,
    pending: Option<Pending>,
    mode: Mode,
}

impl<S> AuthorityFix<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            preface_done: false,
            eof: false,
            decoder: loona_hpack::Decoder::new(),
            pending: None,
            mode: Mode::Undecided,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves whole frames from `inbuf` to `out`; `Ok(false)` when more input is needed.
    fn process(&mut self) -> io::Result<bool> {
        if self.mode == Mode::Passthrough {
            if self.inbuf.is_empty() {
                return Ok(false);
            }
            self.out.append(&mut self.inbuf);
            return Ok(true);
        }
        if !self.preface_done {
            if self.inbuf.len() < PREFACE.len() {
                return Ok(false);
            }
            self.out.extend(self.inbuf.drain(..PREFACE.len()));
            self.preface_done = true;
            return Ok(true);
        }
        let Some(header) = self.inbuf.get(..9) else { return Ok(false) };
        let len = (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let stream_id = u32::from_be_bytes([header[5] & 0x7f, header[6], header[7], header[8]]);
        if len > MAX_HEADER_BLOCK.max(1 << 20) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP/2 frame too large"));
        }
        if self.inbuf.len() < 9 + len {
            return Ok(false);
        }
        let frame: Vec<u8> = self.inbuf.drain(..9 + len).collect();
        let payload = frame.get(9..).unwrap_or_default();
        match kind {
            FRAME_HEADERS => {
                let mut start = 0usize;
                let mut pad = 0usize;
                if flags & FLAG_PADDED != 0 {
                    pad = usize::from(*payload.first().ok_or_else(|| bad("empty padded HEADERS"))?);
                    start = 1;
                }
                if flags & FLAG_PRIORITY != 0 {
                    start += 5;
                }
                let end = payload.len().checked_sub(pad).filter(|e| *e >= start).ok_or_else(|| bad("bad HEADERS padding"))?;
                let fragment = payload.get(start..end).unwrap_or_default().to_vec();
                if flags & FLAG_END_HEADERS != 0 {
                    self.emit(stream_id, flags, &fragment, &frame)?;
                } else {
                    self.pending = Some(Pending { stream_id, flags, block: fragment, raw: frame });
                }
            }
            FRAME_CONTINUATION => {
                let mut p = self.pending.take().ok_or_else(|| bad("CONTINUATION without HEADERS"))?;
                if p.stream_id != stream_id {
                    return Err(bad("CONTINUATION on another stream"));
                }
                p.block.extend_from_slice(payload);
                if p.block.len() > MAX_HEADER_BLOCK {
                    return Err(bad("header block too large"));
                }
                if self.mode == Mode::Undecided {
                    p.raw.extend_from_slice(&frame);
                }
                if flags & FLAG_END_HEADERS != 0 {
                    self.emit(p.stream_id, p.flags, &p.block, &p.raw)?;
                } else {
                    self.pending = Some(p);
                }
            }
            _ => {
                if self.pending.is_some() {
                    return Err(bad("frame interleaved in a header block"));
                }
                self.out.extend_from_slice(&frame);
            }
        }
        Ok(true)
    }

    /// Passes on a complete header block: `block` is its HPACK bytes, `raw` the frames it came
    /// in (only kept while the mode is undecided).
    fn emit(&mut self, stream_id: u32, flags: u8, block: &[u8], raw: &[u8]) -> io::Result<()> {
        let headers = self.decoder.decode(block).map_err(|e| bad(&format!("HPACK: {e:?}")))?;
        if self.mode == Mode::Undecided {
            let valid =
                headers.iter().all(|(name, value)| name != b":authority" || http::uri::Authority::try_from(value.as_slice()).is_ok());
            if valid {
                self.mode = Mode::Passthrough;
                self.out.extend_from_slice(raw);
                return Ok(());
            }
            self.mode = Mode::Rewrite;
        }
        let mut encoded = Vec::with_capacity(block.len() + 32);
        for (name, value) in headers {
            let value = if name == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err() {
                b"localhost".to_vec()
            } else {
                value
            };
            // Literal header field without indexing, new name (RFC 7541 §6.2.2), no Huffman.
            encoded.push(0x00);
            encode_string(&mut encoded, &name);
            encode_string(&mut encoded, &value);
        }
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut first = true;
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let kind = if first { FRAME_HEADERS } else { FRAME_CONTINUATION };
            let mut f = if first { flags & FLAG_END_STREAM } else { 0 };
            if last {
                f |= FLAG_END_HEADERS;
            }
            let len = chunk.len();
            self.out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, f]);
            self.out.extend_from_slice(&stream_id.to_be_bytes());
            self.out.extend_from_slice(chunk);
            first = false;
        }
        if encoded.is_empty() {
            self.out.extend_from_slice(&[0, 0, 0, FRAME_HEADERS, (flags & FLAG_END_STREAM) | FLAG_END_HEADERS]);
            self.out.extend_from_slice(&stream_id.to_be_bytes());
        }
        Ok(())
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// HPACK string literal: 7-bit prefix length (no Huffman), then the bytes.
fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128 + 128) as u8);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let avail = this.out.get(this.out_pos..).unwrap_or_default();
                let n = avail.len().min(buf.remaining());
                buf.put_slice(avail.get(..n).unwrap_or_default());
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Passthrough && this.inbuf.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.process()? {
                continue;
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.eof = true;
            } else {
                this.inbuf.extend_from_slice(rb.filled());
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn headers_frame(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
        let len = block.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, FRAME_HEADERS, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(block);
        f
    }

    #[tokio::test]
    async fn rewrites_a_path_authority_and_keeps_everything_else() {
        let mut enc = loona_hpack::Encoder::new();
        let hdrs: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", b"tmp%2Fagent.sock"),
            (b"workload.spiffe.io", b"true"),
        ];
        let block1 = enc.encode(hdrs.clone());
        // The second block reuses the client's dynamic table: the decoder must follow it.
        let block2 = enc.encode(hdrs.clone());
        let settings = [0u8, 0, 0, 0x4, 0, 0, 0, 0, 0];
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&settings);
        input.extend(headers_frame(1, FLAG_END_HEADERS, &block1));
        input.extend(headers_frame(3, FLAG_END_HEADERS | FLAG_END_STREAM, &block2));
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(&input).await.unwrap();
        drop(client);
        let mut fixed = AuthorityFix::new(server);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let rest = &out[PREFACE.len()..];
        assert_eq!(&rest[..9], &settings, "non-header frames pass unchanged");
        let mut dec = loona_hpack::Decoder::new();
        let mut pos = 9;
        for (stream, end_stream) in [(1u32, false), (3, true)] {
            let f = &rest[pos..];
            let len = (usize::from(f[0]) << 16) | (usize::from(f[1]) << 8) | usize::from(f[2]);
            assert_eq!(f[3], FRAME_HEADERS);
            assert_eq!(f[4] & FLAG_END_STREAM != 0, end_stream);
            assert_eq!(u32::from_be_bytes([f[5], f[6], f[7], f[8]]), stream);
            let got = dec.decode(&f[9..9 + len]).unwrap();
            let auth = got.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(auth.1, b"localhost");
            assert!(got.iter().any(|(n, v)| n == b"workload.spiffe.io" && v == b"true"));
            assert!(got.iter().any(|(n, v)| n == b":path" && v == b"/SpiffeWorkloadAPI/FetchX509SVID"));
            pos += 9 + len;
        }
    }

    /// A client whose first header block has a valid authority (grpc-go, tonic) gets its bytes
    /// through unchanged, that block included, even one split over CONTINUATION frames and
    /// whatever later blocks say.
    #[tokio::test]
    async fn a_valid_first_authority_passes_the_connection_through_unchanged() {
        let mut enc = loona_hpack::Encoder::new();
        let valid: Vec<(&[u8], &[u8])> =
            vec![(b":method", b"POST"), (b":path", b"/spire.api.server.svid.v1.SVID/MintX509SVID"), (b":authority", b"localhost")];
        let block1 = enc.encode(valid.clone());
        let later: Vec<(&[u8], &[u8])> = vec![(b":method", b"POST"), (b":authority", b"tmp%2Fagent.sock")];
        let block2 = enc.encode(later);
        let settings = [0u8, 0, 0, 0x4, 0, 0, 0, 0, 0];
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&settings);
        let (head, tail) = block1.split_at(block1.len() / 2);
        input.extend(headers_frame(1, 0, head));
        let mut cont = vec![0u8, 0, tail.len() as u8, FRAME_CONTINUATION, FLAG_END_HEADERS, 0, 0, 0, 1];
        cont.extend_from_slice(tail);
        input.extend(cont);
        input.extend([0u8, 0, 3, 0x0, FLAG_END_STREAM, 0, 0, 0, 1, 7, 8, 9]);
        input.extend(headers_frame(3, FLAG_END_HEADERS | FLAG_END_STREAM, &block2));
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(&input).await.unwrap();
        drop(client);
        let mut out = Vec::new();
        AuthorityFix::new(server).read_to_end(&mut out).await.unwrap();
        assert_eq!(out, input);
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS | FLAG_PADDED, &[200, 1, 2]));
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(&input).await.unwrap();
        drop(client);
        let mut fixed = AuthorityFix::new(server);
        let mut out = Vec::new();
        assert!(fixed.read_to_end(&mut out).await.is_err());
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(&input).await.unwrap();
        drop(client);
        let mut out = Vec::new();
        assert!(AuthorityFix::new(server).read_to_end(&mut out).await.is_err());
    }
}
