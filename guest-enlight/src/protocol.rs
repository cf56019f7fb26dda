//! Wire protocol v1 (see `PROTOCOL.md`): framed, CRC-checked request/response messages.
//!
//! Frame = 20-byte header + payload + CRC32(payload):
//! `magic "TPGA" | version u8 | type u8 | flags u16 LE | request_id u32 LE |
//!  payload_len u32 LE | header_crc32 u32 LE (over bytes 0..16)`.
//! The header CRC is checked *before* the payload length is trusted, and lengths above
//! the reader's limit are refused without allocating.

use crate::layout::{PfnRange, RamLayout};
use crate::maps::{FreeBitmap, MapInfo, MapSourceKind, PriorityMap};
use crate::rle::{get_varint, put_varint, RleError, Runs};
use crate::Category;
use std::io::{self, Read, Write};

pub const MAGIC: [u8; 4] = *b"TPGA";
pub const VERSION: u8 = 1;
/// Oldest and newest protocol versions this implementation speaks.
pub const MIN_VERSION: u8 = 1;
pub const MAX_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 20;
pub const TRAILER_LEN: usize = 4;
/// Default payload limit: 256 MiB (a 1 TiB guest's worst-case priority map is 512 MiB
/// of RLE, a realistic one is well under 1 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 256 << 20;
/// At most this many RAM ranges in a layout.
pub const MAX_RANGES: u64 = 4096;

pub mod msg {
    pub const HELLO: u8 = 0x01;
    pub const PING: u8 = 0x02;
    pub const GET_LAYOUT: u8 = 0x03;
    pub const GET_FREE_BITMAP: u8 = 0x04;
    pub const GET_PRIORITY_MAP: u8 = 0x05;
    /// Responses are the request type | 0x80.
    pub const RESPONSE: u8 = 0x80;
    pub const ERROR: u8 = 0xFF;
}

/// Error codes carried by an ERROR response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    VersionMismatch = 1,
    BadFrame = 2,
    UnknownType = 3,
    BadPayload = 4,
    Unavailable = 5,
    Internal = 6,
}

impl ErrorCode {
    fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::VersionMismatch,
            2 => ErrorCode::BadFrame,
            3 => ErrorCode::UnknownType,
            4 => ErrorCode::BadPayload,
            5 => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("unsupported protocol version {got} (this side speaks {MIN_VERSION}..={MAX_VERSION})")]
    UnsupportedVersion { got: u8, request_id: u32 },
    #[error("header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("payload CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    PayloadCrc {
        stored: u32,
        computed: u32,
        request_id: u32,
    },
    #[error("payload length {len} above the limit {max}")]
    TooLarge { len: u32, max: u32, request_id: u32 },
    #[error("truncated frame: need {needed} more bytes")]
    Truncated { needed: usize },
    #[error("nonzero flags {0:#06x} in a v1 frame")]
    BadFlags(u16),
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    #[error("bad payload: {0}")]
    Payload(String),
    #[error("bad map encoding: {0}")]
    Rle(#[from] RleError),
    #[error("peer error {code:?}: {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("response id {got} does not match request id {want}")]
    IdMismatch { got: u32, want: u32 },
    #[error("unexpected response type {0:#04x}")]
    UnexpectedResponse(u8),
    #[error("connection closed")]
    Closed,
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

impl ProtoError {
    /// The request id of the offending frame, when the header was readable.
    pub fn request_id(&self) -> Option<u32> {
        match self {
            ProtoError::UnsupportedVersion { request_id, .. }
            | ProtoError::PayloadCrc { request_id, .. }
            | ProtoError::TooLarge { request_id, .. } => Some(*request_id),
            _ => None,
        }
    }
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub msg_type: u8,
    pub request_id: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(msg_type: u8, request_id: u32, payload: Vec<u8>) -> Frame {
        Frame {
            msg_type,
            request_id,
            payload,
        }
    }
}

pub fn encode_frame(f: &Frame) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + f.payload.len() + TRAILER_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(f.msg_type);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&f.request_id.to_le_bytes());
    out.extend_from_slice(&(f.payload.len() as u32).to_le_bytes());
    let hcrc = crc32fast::hash(&out[..16]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(&f.payload);
    out.extend_from_slice(&crc32fast::hash(&f.payload).to_le_bytes());
    out
}

/// A validated header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub msg_type: u8,
    pub request_id: u32,
    pub payload_len: u32,
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Validate a 20-byte header (magic, CRC, then version, flags, length limit).
pub fn parse_header(h: &[u8; HEADER_LEN], max_payload: u32) -> Result<Header, ProtoError> {
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != MAGIC {
        return Err(ProtoError::BadMagic(magic));
    }
    let stored = le32(&h[16..20]);
    let computed = crc32fast::hash(&h[..16]);
    if stored != computed {
        return Err(ProtoError::HeaderCrc { stored, computed });
    }
    let request_id = le32(&h[8..12]);
    let version = h[4];
    if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
        return Err(ProtoError::UnsupportedVersion {
            got: version,
            request_id,
        });
    }
    let flags = u16::from_le_bytes([h[6], h[7]]);
    if flags != 0 {
        return Err(ProtoError::BadFlags(flags));
    }
    let payload_len = le32(&h[12..16]);
    if payload_len > max_payload {
        return Err(ProtoError::TooLarge {
            len: payload_len,
            max: max_payload,
            request_id,
        });
    }
    Ok(Header {
        msg_type: h[5],
        request_id,
        payload_len,
    })
}

/// Decode one frame from the start of `buf`; returns it and the bytes consumed.
pub fn decode_frame(buf: &[u8], max_payload: u32) -> Result<(Frame, usize), ProtoError> {
    if buf.len() < HEADER_LEN {
        return Err(ProtoError::Truncated {
            needed: HEADER_LEN - buf.len(),
        });
    }
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&buf[..HEADER_LEN]);
    let hdr = parse_header(&h, max_payload)?;
    let total = HEADER_LEN + hdr.payload_len as usize + TRAILER_LEN;
    if buf.len() < total {
        return Err(ProtoError::Truncated {
            needed: total - buf.len(),
        });
    }
    let payload = &buf[HEADER_LEN..HEADER_LEN + hdr.payload_len as usize];
    let stored = le32(&buf[total - TRAILER_LEN..total]);
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(ProtoError::PayloadCrc {
            stored,
            computed,
            request_id: hdr.request_id,
        });
    }
    Ok((
        Frame {
            msg_type: hdr.msg_type,
            request_id: hdr.request_id,
            payload: payload.to_vec(),
        },
        total,
    ))
}

/// Read exactly one frame from a stream (no resynchronisation: for clients).
pub fn read_frame<R: Read>(r: &mut R, max_payload: u32) -> Result<Frame, ProtoError> {
    let mut h = [0u8; HEADER_LEN];
    read_exact_or_closed(r, &mut h)?;
    let hdr = parse_header(&h, max_payload)?;
    // Allocation bounded by max_payload, checked above after the header CRC.
    let mut payload = vec![0u8; hdr.payload_len as usize];
    read_exact_or_closed(r, &mut payload)?;
    let mut t = [0u8; TRAILER_LEN];
    read_exact_or_closed(r, &mut t)?;
    let stored = u32::from_le_bytes(t);
    let computed = crc32fast::hash(&payload);
    if stored != computed {
        return Err(ProtoError::PayloadCrc {
            stored,
            computed,
            request_id: hdr.request_id,
        });
    }
    Ok(Frame {
        msg_type: hdr.msg_type,
        request_id: hdr.request_id,
        payload,
    })
}

fn read_exact_or_closed<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), ProtoError> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ProtoError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// What a resynchronising reader produced.
#[derive(Debug)]
pub enum ReadEvent {
    Frame(Frame),
    /// A bad frame was skipped; `error.request_id()` tells whom to answer, if anyone.
    Skipped {
        error: ProtoError,
        garbage_bytes: usize,
    },
    /// End of stream (no partial frame pending, or the rest dropped as garbage).
    Eof {
        garbage_bytes: usize,
    },
}

/// Server-side frame reader that survives garbage: bytes that do not start a valid
/// header are skipped up to the next occurrence of the magic.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    max_payload: u32,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R, max_payload: u32) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
            max_payload,
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Read more bytes; `Ok(false)` on EOF.
    fn fill(&mut self, want: usize) -> io::Result<bool> {
        while self.buf.len() < want {
            let mut tmp = [0u8; 64 * 1024];
            let n = loop {
                match self.inner.read(&mut tmp) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            if n == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
        Ok(true)
    }

    pub fn next_event(&mut self) -> io::Result<ReadEvent> {
        let mut garbage = 0usize;
        loop {
            // Find the magic in what we have; drop anything before it.
            match find_magic(&self.buf) {
                Some(0) => {}
                Some(i) => {
                    garbage += i;
                    self.buf.drain(..i);
                }
                None => {
                    // Keep a possible partial magic at the end.
                    let keep = self.buf.len().min(MAGIC.len() - 1);
                    let drop = self.buf.len() - keep;
                    garbage += drop;
                    self.buf.drain(..drop);
                    if !self.fill(self.buf.len() + 1)? {
                        return Ok(ReadEvent::Eof {
                            garbage_bytes: garbage + self.buf.len(),
                        });
                    }
                    continue;
                }
            }
            if !self.fill(HEADER_LEN)? {
                return Ok(ReadEvent::Eof {
                    garbage_bytes: garbage + self.buf.len(),
                });
            }
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&self.buf[..HEADER_LEN]);
            let hdr = match parse_header(&h, self.max_payload) {
                Ok(hdr) => hdr,
                Err(e @ (ProtoError::BadMagic(_) | ProtoError::HeaderCrc { .. })) => {
                    // Not a real header: skip this magic and look further.
                    let _ = e;
                    garbage += 1;
                    self.buf.drain(..1);
                    continue;
                }
                Err(e) => {
                    // A genuine header we refuse (version, flags, too large): drop the
                    // header, resynchronise on whatever follows, and report it.
                    self.buf.drain(..HEADER_LEN);
                    return Ok(ReadEvent::Skipped {
                        error: e,
                        garbage_bytes: garbage + HEADER_LEN,
                    });
                }
            };
            let total = HEADER_LEN + hdr.payload_len as usize + TRAILER_LEN;
            if !self.fill(total)? {
                return Ok(ReadEvent::Eof {
                    garbage_bytes: garbage + self.buf.len(),
                });
            }
            let res = decode_frame(&self.buf[..total], self.max_payload);
            self.buf.drain(..total);
            return Ok(match res {
                Ok((f, _)) => {
                    if garbage > 0 {
                        tracing::debug!(garbage, "skipped garbage before a frame");
                    }
                    ReadEvent::Frame(f)
                }
                Err(e) => ReadEvent::Skipped {
                    error: e,
                    garbage_bytes: garbage + total,
                },
            });
        }
    }
}

fn find_magic(buf: &[u8]) -> Option<usize> {
    buf.windows(MAGIC.len()).position(|w| w == MAGIC)
}

// ---------------------------------------------------------------- messages

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Hello {
        min_version: u8,
        max_version: u8,
        client: String,
    },
    Ping {
        nonce: u64,
    },
    GetLayout,
    GetFreeBitmap,
    /// `window_ms == 0`: the agent's default activity window.
    GetPriorityMap {
        window_ms: u32,
    },
}

/// A map as carried on the wire: metadata, the layout it indexes, and its runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireMap {
    pub info: MapInfo,
    pub layout: RamLayout,
    pub runs: Runs,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Hello {
        version: u8,
        agent: String,
        page_size: u32,
        source: MapSourceKind,
    },
    Pong {
        nonce: u64,
    },
    Layout {
        page_size: u32,
        layout: RamLayout,
    },
    FreeBitmap(WireMap),
    PriorityMap(WireMap),
    Error {
        code: ErrorCode,
        message: String,
    },
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(4096)];
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Decode `f`'s payload with `body`, which must consume all of it.
fn decode_payload<T>(
    f: &Frame,
    body: impl FnOnce(&mut Cursor) -> Result<T, ProtoError>,
) -> Result<T, ProtoError> {
    let mut c = Cursor::new(&f.payload);
    let r = body(&mut c)?;
    c.end()?;
    Ok(r)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() - self.pos < n {
            return Err(ProtoError::Payload(format!("truncated {what}")));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, ProtoError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, ProtoError> {
        Ok(le32(self.take(4, what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, ProtoError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn varint(&mut self) -> Result<u64, ProtoError> {
        Ok(get_varint(self.buf, &mut self.pos)?)
    }
    fn string(&mut self, what: &str) -> Result<String, ProtoError> {
        let n = self.varint()?;
        if n > 4096 {
            return Err(ProtoError::Payload(format!(
                "{what} longer than 4096 bytes"
            )));
        }
        let b = self.take(n as usize, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| ProtoError::Payload(format!("{what} is not UTF-8")))
    }
    fn end(&self) -> Result<(), ProtoError> {
        if self.pos != self.buf.len() {
            return Err(ProtoError::Payload(format!(
                "{} trailing bytes",
                self.buf.len() - self.pos
            )));
        }
        Ok(())
    }
}

fn put_layout(out: &mut Vec<u8>, l: &RamLayout) {
    put_varint(out, l.ranges.len() as u64);
    for r in &l.ranges {
        put_varint(out, r.start);
        put_varint(out, r.count);
    }
}

fn get_layout(c: &mut Cursor) -> Result<RamLayout, ProtoError> {
    let n = c.varint()?;
    if n > MAX_RANGES {
        return Err(ProtoError::Payload(format!(
            "{n} ranges (max {MAX_RANGES})"
        )));
    }
    let mut ranges = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let start = c.varint()?;
        let count = c.varint()?;
        ranges.push(PfnRange { start, count });
    }
    RamLayout::new(ranges).map_err(|e| ProtoError::Payload(format!("layout: {e}")))
}

fn put_map(out: &mut Vec<u8>, m: &WireMap) {
    out.push(m.info.source as u8);
    out.push(u8::from(m.info.approximate));
    out.extend_from_slice(&m.info.generated_unix_ms.to_le_bytes());
    out.extend_from_slice(&m.info.build_us.to_le_bytes());
    out.extend_from_slice(&m.info.window_ms.to_le_bytes());
    put_layout(out, &m.layout);
    m.runs.encode(out);
}

fn get_map(c: &mut Cursor, max_value: u8) -> Result<WireMap, ProtoError> {
    let source = c.u8("source")?;
    let source = MapSourceKind::from_u8(source)
        .ok_or_else(|| ProtoError::Payload(format!("unknown source {source}")))?;
    let flags = c.u8("flags")?;
    if flags & !1 != 0 {
        return Err(ProtoError::Payload(format!(
            "unknown map flags {flags:#04x}"
        )));
    }
    let generated_unix_ms = c.u64("timestamp")?;
    let build_us = c.u64("build time")?;
    let window_ms = c.u32("window")?;
    let layout = get_layout(c)?;
    let runs = Runs::decode(c.buf, &mut c.pos, max_value, layout.total_pages())?;
    let info = MapInfo {
        source,
        approximate: flags & 1 == 1,
        generated_unix_ms,
        build_us,
        window_ms,
    };
    Ok(WireMap { info, layout, runs })
}

impl Request {
    pub fn msg_type(&self) -> u8 {
        match self {
            Request::Hello { .. } => msg::HELLO,
            Request::Ping { .. } => msg::PING,
            Request::GetLayout => msg::GET_LAYOUT,
            Request::GetFreeBitmap => msg::GET_FREE_BITMAP,
            Request::GetPriorityMap { .. } => msg::GET_PRIORITY_MAP,
        }
    }

    pub fn encode_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Request::Hello {
                min_version,
                max_version,
                client,
            } => {
                out.push(*min_version);
                out.push(*max_version);
                put_str(&mut out, client);
            }
            Request::Ping { nonce } => out.extend_from_slice(&nonce.to_le_bytes()),
            Request::GetLayout | Request::GetFreeBitmap => {}
            Request::GetPriorityMap { window_ms } => {
                out.extend_from_slice(&window_ms.to_le_bytes())
            }
        }
        out
    }

    pub fn decode(f: &Frame) -> Result<Request, ProtoError> {
        decode_payload(f, |c| {
            Ok(match f.msg_type {
                msg::HELLO => {
                    let min_version = c.u8("min version")?;
                    let max_version = c.u8("max version")?;
                    let client = c.string("client name")?;
                    Request::Hello {
                        min_version,
                        max_version,
                        client,
                    }
                }
                msg::PING => Request::Ping {
                    nonce: c.u64("nonce")?,
                },
                msg::GET_LAYOUT => Request::GetLayout,
                msg::GET_FREE_BITMAP => Request::GetFreeBitmap,
                msg::GET_PRIORITY_MAP => Request::GetPriorityMap {
                    window_ms: c.u32("window")?,
                },
                t => return Err(ProtoError::UnknownType(t)),
            })
        })
    }

    pub fn to_frame(&self, request_id: u32) -> Frame {
        Frame::new(self.msg_type(), request_id, self.encode_payload())
    }
}

impl Response {
    pub fn msg_type(&self) -> u8 {
        match self {
            Response::Hello { .. } => msg::HELLO | msg::RESPONSE,
            Response::Pong { .. } => msg::PING | msg::RESPONSE,
            Response::Layout { .. } => msg::GET_LAYOUT | msg::RESPONSE,
            Response::FreeBitmap(_) => msg::GET_FREE_BITMAP | msg::RESPONSE,
            Response::PriorityMap(_) => msg::GET_PRIORITY_MAP | msg::RESPONSE,
            Response::Error { .. } => msg::ERROR,
        }
    }

    pub fn encode_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Response::Hello {
                version,
                agent,
                page_size,
                source,
            } => {
                out.push(*version);
                out.extend_from_slice(&page_size.to_le_bytes());
                out.push(*source as u8);
                put_str(&mut out, agent);
            }
            Response::Pong { nonce } => out.extend_from_slice(&nonce.to_le_bytes()),
            Response::Layout { page_size, layout } => {
                out.extend_from_slice(&page_size.to_le_bytes());
                put_layout(&mut out, layout);
            }
            Response::FreeBitmap(m) | Response::PriorityMap(m) => put_map(&mut out, m),
            Response::Error { code, message } => {
                out.extend_from_slice(&(*code as u16).to_le_bytes());
                put_str(&mut out, message);
            }
        }
        out
    }

    pub fn decode(f: &Frame) -> Result<Response, ProtoError> {
        decode_payload(f, |c| {
            Ok(match f.msg_type {
                t if t == msg::HELLO | msg::RESPONSE => {
                    let version = c.u8("version")?;
                    let page_size = c.u32("page size")?;
                    let s = c.u8("source")?;
                    let source = MapSourceKind::from_u8(s)
                        .ok_or_else(|| ProtoError::Payload(format!("unknown source {s}")))?;
                    let agent = c.string("agent name")?;
                    Response::Hello {
                        version,
                        agent,
                        page_size,
                        source,
                    }
                }
                t if t == msg::PING | msg::RESPONSE => Response::Pong {
                    nonce: c.u64("nonce")?,
                },
                t if t == msg::GET_LAYOUT | msg::RESPONSE => {
                    let page_size = c.u32("page size")?;
                    Response::Layout {
                        page_size,
                        layout: get_layout(c)?,
                    }
                }
                t if t == msg::GET_FREE_BITMAP | msg::RESPONSE => {
                    Response::FreeBitmap(get_map(c, 1)?)
                }
                t if t == msg::GET_PRIORITY_MAP | msg::RESPONSE => {
                    Response::PriorityMap(get_map(c, Category::Other as u8)?)
                }
                msg::ERROR => {
                    let code =
                        ErrorCode::from_u16(u16::from_le_bytes([c.u8("code")?, c.u8("code")?]));
                    Response::Error {
                        code,
                        message: c.string("message")?,
                    }
                }
                t => return Err(ProtoError::UnknownType(t)),
            })
        })
    }

    pub fn to_frame(&self, request_id: u32) -> Frame {
        Frame::new(self.msg_type(), request_id, self.encode_payload())
    }
}

impl WireMap {
    pub fn from_free_bitmap(b: &FreeBitmap) -> WireMap {
        WireMap {
            info: b.info,
            layout: b.layout.clone(),
            runs: Runs::from_values((0..b.len()).map(|i| u8::from(b.get(i)))),
        }
    }

    pub fn from_priority_map(p: &PriorityMap) -> WireMap {
        WireMap {
            info: p.info,
            layout: p.layout.clone(),
            runs: Runs::from_bytes(&p.bytes),
        }
    }

    /// Expand into a bitmap; `None` above `max_pages`.
    pub fn to_free_bitmap(&self, max_pages: u64) -> Option<FreeBitmap> {
        if self.runs.total() > max_pages {
            return None;
        }
        let mut b = FreeBitmap::new(self.layout.clone(), self.info);
        let mut i = 0;
        for &(v, n) in &self.runs.runs {
            if v == 1 {
                b.set_range(i, n);
            }
            i += n;
        }
        Some(b)
    }

    pub fn to_priority_map(&self, max_pages: u64) -> Option<PriorityMap> {
        let bytes = self.runs.expand(max_pages)?;
        Some(PriorityMap {
            layout: self.layout.clone(),
            info: self.info,
            bytes,
        })
    }
}

/// Negotiate: the highest version both sides speak, if any.
pub fn negotiate(peer_min: u8, peer_max: u8) -> Option<u8> {
    let hi = peer_max.min(MAX_VERSION);
    let lo = peer_min.max(MIN_VERSION);
    (hi >= lo).then_some(hi)
}

/// A blocking client (host side, tests). One request at a time.
pub struct Client<S> {
    stream: S,
    next_id: u32,
    pub max_payload: u32,
}

impl<S: Read + Write> Client<S> {
    pub fn new(stream: S) -> Self {
        Client {
            stream,
            next_id: 1,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }

    pub fn call(&mut self, req: &Request) -> Result<Response, ProtoError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.stream.write_all(&encode_frame(&req.to_frame(id)))?;
        self.stream.flush()?;
        let f = read_frame(&mut self.stream, self.max_payload)?;
        if f.request_id != id {
            return Err(ProtoError::IdMismatch {
                got: f.request_id,
                want: id,
            });
        }
        match Response::decode(&f)? {
            Response::Error { code, message } => Err(ProtoError::Remote { code, message }),
            r => Ok(r),
        }
    }

    pub fn hello(&mut self, client: &str) -> Result<Response, ProtoError> {
        self.call(&Request::Hello {
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            client: client.into(),
        })
    }

    pub fn ping(&mut self, nonce: u64) -> Result<u64, ProtoError> {
        match self.call(&Request::Ping { nonce })? {
            Response::Pong { nonce } => Ok(nonce),
            r => Err(ProtoError::UnexpectedResponse(r.msg_type())),
        }
    }

    pub fn layout(&mut self) -> Result<(u32, RamLayout), ProtoError> {
        match self.call(&Request::GetLayout)? {
            Response::Layout { page_size, layout } => Ok((page_size, layout)),
            r => Err(ProtoError::UnexpectedResponse(r.msg_type())),
        }
    }

    pub fn free_bitmap(&mut self) -> Result<WireMap, ProtoError> {
        match self.call(&Request::GetFreeBitmap)? {
            Response::FreeBitmap(m) => Ok(m),
            r => Err(ProtoError::UnexpectedResponse(r.msg_type())),
        }
    }

    pub fn priority_map(&mut self, window_ms: u32) -> Result<WireMap, ProtoError> {
        match self.call(&Request::GetPriorityMap { window_ms })? {
            Response::PriorityMap(m) => Ok(m),
            r => Err(ProtoError::UnexpectedResponse(r.msg_type())),
        }
    }

    pub fn into_inner(self) -> S {
        self.stream
    }
}

#[cfg(test)]
mod tests;
