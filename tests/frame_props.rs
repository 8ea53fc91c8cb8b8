//! Property tests of the frame codecs: round trips under any splitting of the
//! byte stream, bounded buffering and no panics on arbitrary input.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use ringgate::proto::frame::{FrameDecoder, FrameError, FrameFormat, encode_frame};

fn format() -> impl Strategy<Value = FrameFormat> {
    prop_oneof![
        Just(FrameFormat::U16Be),
        Just(FrameFormat::U32Be),
        Just(FrameFormat::Netstring),
        Just(FrameFormat::Raw),
    ]
}

fn framed() -> impl Strategy<Value = FrameFormat> {
    prop_oneof![
        Just(FrameFormat::U16Be),
        Just(FrameFormat::U32Be),
        Just(FrameFormat::Netstring),
    ]
}

/// Feeds `stream` to `decoder` in pieces cycling through `sizes`, draining
/// after each piece; checks the buffering bound whenever it waits for more.
/// Returns the frames, and the error that ended the stream, if any.
fn feed(
    decoder: &mut FrameDecoder,
    stream: &[u8],
    sizes: &[usize],
) -> Result<(Vec<Bytes>, Option<FrameError>), TestCaseError> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    for &n in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(n.clamp(1, rest.len()));
        rest = tail;
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    prop_assert!(frame.len() <= decoder.max_frame());
                    frames.push(frame);
                }
                Ok(None) => {
                    prop_assert!(
                        buf.len() <= decoder.max_buffered(),
                        "{} buffered, bound {}",
                        buf.len(),
                        decoder.max_buffered()
                    );
                    break;
                }
                Err(e) => return Ok((frames, Some(e))),
            }
        }
    }
    Ok((frames, None))
}

/// Mostly bytes a netstring parser finds interesting.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2000),
        prop::collection::vec(
            prop::sample::select(b"0123456789:,0\x00\xff".to_vec()),
            0..2000
        ),
    ]
}

proptest! {
    #[test]
    fn round_trip_under_any_split(
        format in framed(),
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..30),
        sizes in prop::collection::vec(1usize..700, 1..8),
    ) {
        let mut stream = BytesMut::new();
        for p in &payloads {
            encode_frame(format, p, &mut stream).unwrap();
        }
        let mut d = FrameDecoder::new(format, 300);
        let (frames, err) = feed(&mut d, &stream, &sizes)?;
        prop_assert_eq!(err, None);
        prop_assert_eq!(frames, payloads);
    }

    #[test]
    fn raw_passes_the_stream_through(
        data in prop::collection::vec(any::<u8>(), 0..3000),
        max in 1usize..500,
        sizes in prop::collection::vec(1usize..700, 1..8),
    ) {
        let mut stream = Vec::new();
        encode_frame(FrameFormat::Raw, &data, &mut stream).unwrap();
        let mut d = FrameDecoder::new(FrameFormat::Raw, max);
        let (frames, err) = feed(&mut d, &stream, &sizes)?;
        prop_assert_eq!(err, None);
        prop_assert_eq!(frames.concat(), data);
    }

    #[test]
    fn arbitrary_input_never_panics_or_overbuffers(
        format in format(),
        max in 0usize..1000,
        input in noise(),
        sizes in prop::collection::vec(1usize..300, 1..8),
    ) {
        let mut d = FrameDecoder::new(format, max);
        feed(&mut d, &input, &sizes)?;
    }

    #[test]
    fn frame_over_the_limit_is_refused_from_its_header(
        format in framed(),
        max in 0usize..300,
        extra in 1usize..300,
    ) {
        let payload = vec![7u8; max + extra];
        let mut stream = Vec::new();
        encode_frame(format, &payload, &mut stream).unwrap();
        let header = match format {
            FrameFormat::U16Be => 2,
            FrameFormat::U32Be => 4,
            _ => stream.iter().position(|&b| b == b':').unwrap() + 1,
        };
        // Only the header has arrived: already enough to refuse it.
        let mut d = FrameDecoder::new(format, max);
        let mut buf = BytesMut::from(&stream[..header]);
        match d.decode(&mut buf) {
            Err(FrameError::TooLarge { len, max: m }) => {
                prop_assert_eq!(m, max);
                prop_assert!(len > max && len <= payload.len());
                if format != FrameFormat::Netstring {
                    prop_assert_eq!(len, payload.len());
                }
            }
            other => prop_assert!(false, "expected TooLarge, got {:?}", other),
        }
    }
}

proptest! {
    #[test]
    fn a_flood_of_length_digits_is_refused_quickly(
        max in 0usize..1_000_000,
        digits in prop::collection::vec(0u8..10, 30),
    ) {
        let mut d = FrameDecoder::new(FrameFormat::Netstring, max);
        let mut buf = BytesMut::new();
        let bound = max.to_string().len() + 1;
        for (i, digit) in digits.iter().enumerate() {
            // No leading zero, so the length grows with every digit.
            buf.extend_from_slice(&[b'0' + if i == 0 { digit.max(&1) } else { digit }]);
            match d.decode(&mut buf) {
                Ok(None) => prop_assert!(i + 1 < bound, "{} digits still pending", i + 1),
                Err(FrameError::TooLarge { .. }) => return Ok(()),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert!(false, "never refused");
    }
}
