//! The system agent's reading of a session client (`vireo-agent session`, or anything a
//! local user connects to the session socket): a raw byte stream through the capped frame
//! decoder and the link's message rules, then well-framed envelopes of the clipboard and
//! control kinds with arbitrary ids and bodies (so the body decoders and every rule are
//! reached). The session's reading of the agent gets the same payloads. Nothing may panic.
//!
//! `cargo +nightly fuzz run session_link --features std`

#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_guest_agent::agent::desktop::link::{decode_session_stream, from_agent, from_session};
use vireo_guest_agent::protocol::{encode_frame, encode_raw_payload, kind};

const KINDS: [u16; 9] = [
    kind::HELLO,
    kind::ERROR,
    kind::PONG,
    kind::CLIPBOARD_GRAB,
    kind::CLIPBOARD_REQUEST,
    kind::CLIPBOARD_DATA,
    kind::CLIPBOARD_RELEASE,
    kind::CLIPBOARD_STATUS,
    kind::INFO_REQUEST,
];

fuzz_target!(|data: &[u8]| {
    // As it comes off the socket.
    decode_session_stream(data);
    // As envelopes: [kind selector, id byte, body length, body...]*.
    let mut stream = Vec::new();
    let mut rest = data;
    while let [k, id, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(len);
        let kind = KINDS[usize::from(*k) % KINDS.len()];
        let payload = encode_raw_payload(kind, u32::from(*id % 4), body);
        let _ = from_session(&payload);
        let _ = from_agent(&payload, 1);
        if let Ok(frame) = encode_frame(&payload) {
            stream.extend_from_slice(&frame);
        }
        rest = next;
    }
    decode_session_stream(&stream);
});
