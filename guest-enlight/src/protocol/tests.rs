use super::*;
use std::time::Duration;

fn layout() -> RamLayout {
    RamLayout::new(vec![
        PfnRange {
            start: 1,
            count: 158,
        },
        PfnRange {
            start: 256,
            count: 1000,
        },
        PfnRange {
            start: 1 << 20,
            count: 4096,
        },
    ])
    .unwrap()
}

fn info(window_ms: u32) -> MapInfo {
    MapInfo::now(
        MapSourceKind::PortableApprox,
        Duration::from_micros(12345),
        window_ms,
    )
}

/// Deterministic randomness for property-style tests.
use torpor_testsupport::pattern::Xorshift as Rng;

fn roundtrip_req(r: Request) {
    let bytes = encode_frame(&r.to_frame(77));
    let (f, used) = decode_frame(&bytes, DEFAULT_MAX_PAYLOAD).unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(f.request_id, 77);
    assert_eq!(Request::decode(&f).unwrap(), r);
}

fn roundtrip_resp(r: Response) -> Response {
    let bytes = encode_frame(&r.to_frame(9));
    let f = read_frame(&mut &bytes[..], DEFAULT_MAX_PAYLOAD).unwrap();
    let d = Response::decode(&f).unwrap();
    assert_eq!(d, r);
    d
}

#[test]
fn requests_roundtrip() {
    roundtrip_req(Request::Hello {
        min_version: 1,
        max_version: 3,
        client: "torpord".into(),
    });
    roundtrip_req(Request::Ping {
        nonce: 0xdead_beef_cafe,
    });
    roundtrip_req(Request::GetLayout);
    roundtrip_req(Request::GetFreeBitmap);
    roundtrip_req(Request::GetPriorityMap { window_ms: 16000 });
}

#[test]
fn responses_roundtrip() {
    roundtrip_resp(Response::Hello {
        version: 1,
        agent: "torpor-guest 0.1".into(),
        page_size: 4096,
        source: MapSourceKind::PortableApprox,
    });
    roundtrip_resp(Response::Pong { nonce: 5 });
    roundtrip_resp(Response::Layout {
        page_size: 4096,
        layout: layout(),
    });
    roundtrip_resp(Response::Error {
        code: ErrorCode::VersionMismatch,
        message: "nope".into(),
    });

    let l = layout();
    let mut b = FreeBitmap::new(l.clone(), info(0));
    b.set_range(3, 100);
    b.set_range(2000, 1024);
    let wm = WireMap::from_free_bitmap(&b);
    assert_eq!(wm.runs.runs.len(), 5);
    let Response::FreeBitmap(d) = roundtrip_resp(Response::FreeBitmap(wm)) else {
        unreachable!()
    };
    let b2 = d.to_free_bitmap(1 << 30).unwrap();
    assert_eq!(b2, b);
    assert!(b2.info.approximate);
    assert_eq!(b2.info.build_us, 12345);

    let mut p = PriorityMap::new(l, info(16000));
    for i in 0..p.bytes.len() {
        p.bytes[i] = ((i / 37) % 9) as u8;
    }
    let Response::PriorityMap(d) =
        roundtrip_resp(Response::PriorityMap(WireMap::from_priority_map(&p)))
    else {
        unreachable!()
    };
    assert_eq!(d.info.window_ms, 16000);
    assert_eq!(d.to_priority_map(1 << 30).unwrap(), p);
    assert!(
        d.to_priority_map(10).is_none(),
        "expansion above the limit is refused"
    );
}

#[test]
fn property_random_maps_roundtrip() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for iter in 0..300 {
        let nranges = 1 + rng.below(5);
        let mut ranges = Vec::new();
        let mut pfn = rng.below(1000);
        for _ in 0..nranges {
            let count = 1 + rng.below(if iter % 10 == 0 { 100_000 } else { 3000 });
            ranges.push(PfnRange { start: pfn, count });
            pfn += count + rng.below(1 << 20);
        }
        let l = RamLayout::new(ranges).unwrap();
        let n = l.total_pages();
        // Runs of random lengths (mean varying per iteration) and random values.
        let mean = 1 + rng.below(200);
        let mut bytes = Vec::with_capacity(n as usize);
        while (bytes.len() as u64) < n {
            let v = rng.below(9) as u8;
            let run = (1 + rng.below(2 * mean)).min(n - bytes.len() as u64);
            bytes.extend(std::iter::repeat_n(v, run as usize));
        }
        let p = PriorityMap {
            layout: l.clone(),
            info: info(rng.below(100_000) as u32),
            bytes,
        };
        let f = Response::PriorityMap(WireMap::from_priority_map(&p)).to_frame(iter);
        let enc = encode_frame(&f);
        let (f2, _) = decode_frame(&enc, DEFAULT_MAX_PAYLOAD).unwrap();
        let Response::PriorityMap(w) = Response::decode(&f2).unwrap() else {
            panic!()
        };
        assert_eq!(w.to_priority_map(u64::MAX).unwrap(), p);

        let mut b = FreeBitmap::new(l, info(0));
        let mut i = 0;
        while i < n {
            let run = 1 + rng.below(2 * mean);
            if rng.below(2) == 1 {
                b.set_range(i, run.min(n - i));
            }
            i += run;
        }
        let enc = encode_frame(&Response::FreeBitmap(WireMap::from_free_bitmap(&b)).to_frame(iter));
        let f3 = read_frame(&mut &enc[..], DEFAULT_MAX_PAYLOAD).unwrap();
        let Response::FreeBitmap(w) = Response::decode(&f3).unwrap() else {
            panic!()
        };
        assert_eq!(w.to_free_bitmap(u64::MAX).unwrap(), b);
    }
}

#[test]
fn truncated_frames_are_reported() {
    let bytes = encode_frame(&Request::Ping { nonce: 1 }.to_frame(1));
    for cut in 0..bytes.len() {
        match decode_frame(&bytes[..cut], DEFAULT_MAX_PAYLOAD) {
            Err(ProtoError::Truncated { needed }) => {
                // Before the header is complete only the header's missing bytes are known.
                let want = if cut < HEADER_LEN {
                    HEADER_LEN - cut
                } else {
                    bytes.len() - cut
                };
                assert_eq!(needed, want)
            }
            other => panic!("cut {cut}: {other:?}"),
        }
        match read_frame(&mut &bytes[..cut], DEFAULT_MAX_PAYLOAD) {
            Err(ProtoError::Closed) => {}
            other => panic!("cut {cut}: {other:?}"),
        }
    }
}

#[test]
fn corrupt_frames_are_reported() {
    let bytes = encode_frame(&Request::GetPriorityMap { window_ms: 5 }.to_frame(3));
    // Every single-bit flip is detected (magic, header CRC or payload CRC).
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            let r = decode_frame(&b, DEFAULT_MAX_PAYLOAD);
            assert!(
                matches!(
                    r,
                    Err(ProtoError::BadMagic(_)
                        | ProtoError::HeaderCrc { .. }
                        | ProtoError::PayloadCrc { .. })
                ),
                "byte {i} bit {bit}: {r:?}"
            );
        }
    }
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(decode_frame(&b, DEFAULT_MAX_PAYLOAD)
        .unwrap_err()
        .to_string()
        .contains("bad magic"));
}

/// Build a header with arbitrary fields and a valid header CRC.
fn raw_header(version: u8, msg_type: u8, flags: u16, id: u32, len: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&MAGIC);
    h.push(version);
    h.push(msg_type);
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&id.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    let c = crc32fast::hash(&h);
    h.extend_from_slice(&c.to_le_bytes());
    h
}

#[test]
fn version_mismatch_and_flags() {
    let h = raw_header(2, msg::PING, 0, 42, 0);
    match decode_frame(&h, DEFAULT_MAX_PAYLOAD) {
        Err(
            e @ ProtoError::UnsupportedVersion {
                got: 2,
                request_id: 42,
            },
        ) => assert_eq!(e.request_id(), Some(42)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decode_frame(&raw_header(1, msg::PING, 4, 1, 0), DEFAULT_MAX_PAYLOAD),
        Err(ProtoError::BadFlags(4))
    ));
    assert_eq!(negotiate(1, 5), Some(1));
    assert_eq!(negotiate(0, 1), Some(1));
    assert_eq!(negotiate(2, 5), None);
}

#[test]
fn huge_lengths_refused_without_allocating() {
    // A 4 GiB claimed payload on a 20-byte stream: refused from the header alone.
    let h = raw_header(1, msg::GET_LAYOUT | msg::RESPONSE, 0, 1, u32::MAX);
    match read_frame(&mut &h[..], DEFAULT_MAX_PAYLOAD) {
        Err(ProtoError::TooLarge { len, max, .. }) => {
            assert_eq!((len, max), (u32::MAX, DEFAULT_MAX_PAYLOAD))
        }
        other => panic!("{other:?}"),
    }
    // A small limit applies too.
    let f = encode_frame(
        &Request::Hello {
            min_version: 1,
            max_version: 1,
            client: "x".repeat(100),
        }
        .to_frame(1),
    );
    assert!(matches!(
        decode_frame(&f, 16),
        Err(ProtoError::TooLarge { .. })
    ));
    // A map claiming 2^60 pages in one run decodes to runs, and expansion is refused.
    let l = RamLayout::new(vec![PfnRange {
        start: 0,
        count: 1 << 60,
    }])
    .unwrap();
    let w = WireMap {
        info: info(0),
        layout: l,
        runs: Runs {
            runs: vec![(8, 1 << 60)],
        },
    };
    let enc = encode_frame(&Response::PriorityMap(w).to_frame(1));
    assert!(enc.len() < 100);
    let (f, _) = decode_frame(&enc, DEFAULT_MAX_PAYLOAD).unwrap();
    let Response::PriorityMap(w) = Response::decode(&f).unwrap() else {
        panic!()
    };
    assert!(w.to_priority_map(1 << 32).is_none());
    assert!(w.to_free_bitmap(1 << 32).is_none());
    // Layout with a huge range count is refused before allocating.
    let mut p = 4096u32.to_le_bytes().to_vec();
    put_varint(&mut p, u64::MAX);
    let f = Frame {
        msg_type: msg::GET_LAYOUT | msg::RESPONSE,
        request_id: 1,
        payload: p,
    };
    assert!(Response::decode(&f)
        .unwrap_err()
        .to_string()
        .contains("ranges"));
}

#[test]
fn bad_payloads_are_reported() {
    // Unknown type.
    let f = Frame {
        msg_type: 0x42,
        request_id: 1,
        payload: vec![],
    };
    assert!(matches!(
        Request::decode(&f),
        Err(ProtoError::UnknownType(0x42))
    ));
    // Trailing bytes.
    let f = Frame {
        msg_type: msg::GET_LAYOUT,
        request_id: 1,
        payload: vec![0],
    };
    assert!(Request::decode(&f)
        .unwrap_err()
        .to_string()
        .contains("trailing"));
    // Truncated ping.
    let f = Frame {
        msg_type: msg::PING,
        request_id: 1,
        payload: vec![1, 2],
    };
    assert!(Request::decode(&f)
        .unwrap_err()
        .to_string()
        .contains("truncated nonce"));
    // A priority value of 9 is invalid; a bitmap value of 2 is invalid.
    let l = RamLayout::new(vec![PfnRange { start: 0, count: 2 }]).unwrap();
    let w = WireMap {
        info: info(0),
        layout: l,
        runs: Runs { runs: vec![(9, 2)] },
    };
    let f = Response::PriorityMap(w.clone()).to_frame(1);
    assert!(matches!(
        Response::decode(&f),
        Err(ProtoError::Rle(RleError::BadValue { value: 9, .. }))
    ));
    let w2 = WireMap {
        runs: Runs { runs: vec![(2, 2)] },
        ..w.clone()
    };
    assert!(Response::decode(&Response::FreeBitmap(w2).to_frame(1)).is_err());
    // Runs not covering the layout.
    let w3 = WireMap {
        runs: Runs { runs: vec![(1, 1)] },
        ..w
    };
    assert!(matches!(
        Response::decode(&Response::FreeBitmap(w3).to_frame(1)),
        Err(ProtoError::Rle(RleError::LengthMismatch { .. }))
    ));
}

#[test]
fn frame_reader_resyncs_over_garbage() {
    let good1 = encode_frame(&Request::Ping { nonce: 1 }.to_frame(1));
    let good2 = encode_frame(&Request::GetLayout.to_frame(2));
    let mut corrupt = encode_frame(&Request::Ping { nonce: 3 }.to_frame(3));
    let n = corrupt.len();
    corrupt[n - 6] ^= 0xff; // payload corrupted: skipped, reported with its id
    let vers = raw_header(9, msg::PING, 0, 4, 0);
    let huge = raw_header(1, msg::PING, 0, 5, u32::MAX);
    let mut stream = Vec::new();
    stream.extend_from_slice(b"garbage TPG TPGA\x01\x02junk");
    stream.extend_from_slice(&good1);
    stream.extend_from_slice(&corrupt);
    stream.extend_from_slice(&vers);
    stream.extend_from_slice(&huge);
    stream.extend_from_slice(&[0u8; 7]);
    stream.extend_from_slice(&good2);
    stream.extend_from_slice(b"TPG");
    let mut r = FrameReader::new(&stream[..], DEFAULT_MAX_PAYLOAD);
    let ReadEvent::Frame(f) = r.next_event().unwrap() else {
        panic!()
    };
    assert_eq!(Request::decode(&f).unwrap(), Request::Ping { nonce: 1 });
    let ReadEvent::Skipped { error, .. } = r.next_event().unwrap() else {
        panic!()
    };
    assert_eq!(error.request_id(), Some(3));
    let ReadEvent::Skipped { error, .. } = r.next_event().unwrap() else {
        panic!()
    };
    assert!(matches!(
        error,
        ProtoError::UnsupportedVersion {
            got: 9,
            request_id: 4
        }
    ));
    let ReadEvent::Skipped { error, .. } = r.next_event().unwrap() else {
        panic!()
    };
    assert!(matches!(error, ProtoError::TooLarge { request_id: 5, .. }));
    let ReadEvent::Frame(f) = r.next_event().unwrap() else {
        panic!()
    };
    assert_eq!(f.request_id, 2);
    assert!(matches!(
        r.next_event().unwrap(),
        ReadEvent::Eof { garbage_bytes: 3 }
    ));
}

#[test]
fn frame_reader_survives_random_garbage() {
    let mut rng = Rng(99);
    for _ in 0..200 {
        let len = rng.below(300) as usize;
        let mut junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.below(2) == 0 && len > 8 {
            let at = rng.below(len as u64 - 4) as usize;
            junk[at..at + 4].copy_from_slice(&MAGIC);
        }
        junk.extend_from_slice(&encode_frame(&Request::Ping { nonce: 7 }.to_frame(11)));
        let mut r = FrameReader::new(&junk[..], 1 << 16);
        let mut got = false;
        for _ in 0..50 {
            match r.next_event().unwrap() {
                ReadEvent::Frame(f) if f.request_id == 11 => {
                    got = true;
                    break;
                }
                ReadEvent::Eof { .. } => break,
                _ => {}
            }
        }
        // Random junk may contain a header that swallows the real frame only if it
        // passes a CRC32 check (negligible); otherwise the ping is always found.
        assert!(got);
    }
}
