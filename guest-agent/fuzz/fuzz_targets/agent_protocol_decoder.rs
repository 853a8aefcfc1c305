//! Arbitrary bytes from a peer, split at arbitrary points, through the frame decoder and
//! the envelope/message parser. Nothing may panic, the decoder may hold no more than the
//! bytes it was given, and every message that decodes must re-encode to a frame that
//! decodes to the same message. The agent's in-place reading of shared-folder data
//! answers must agree with the full decoder on every payload.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_guest_agent::protocol::fs::{data_reply_payload, FsReply};
use vireo_guest_agent::protocol::{decode_payload, encode_message, FrameDecoder, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    // The control byte picks the read size (1..=64 bytes, as a non-blocking reader would
    // see them) and, on odd values, a small payload limit to reach the size check.
    let chunk = usize::from(control >> 2) + 1;
    let mut decoder = if control & 1 == 1 {
        FrameDecoder::with_max_payload(usize::from(control) * 4)
    } else {
        FrameDecoder::new()
    };
    let mut fed = 0usize;
    for piece in stream.chunks(chunk) {
        decoder.push(piece);
        fed += piece.len();
        loop {
            match decoder.next_frame() {
                Ok(Some(payload)) => check_payload(&payload),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(decoder.buffered() <= fed);
    }
});

fn check_payload(payload: &[u8]) {
    let decoded = decode_payload(payload);
    let in_place = data_reply_payload(payload);
    match &decoded {
        Ok(env) => match &env.message {
            Message::FsReply(FsReply::Data(data)) => {
                assert_eq!(in_place, Some((env.id, &data[..])))
            }
            _ => assert_eq!(in_place, None),
        },
        Err(_) => assert_eq!(in_place, None),
    }
    let Ok(envelope) = decoded else {
        return;
    };
    let frame = encode_message(envelope.id, &envelope.message).expect("re-encode");
    let mut decoder = FrameDecoder::new();
    decoder.push(&frame);
    let again = decoder.next_frame().expect("frame").expect("whole frame");
    assert_eq!(decode_payload(&again).expect("decodes again"), envelope);
}
