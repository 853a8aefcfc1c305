//! The agent's side of a connection fed what a hostile host could send: a hello, then
//! envelopes of every known kind (and an unknown one) with arbitrary bodies and ids, so
//! the body decoders, the clipboard rules, the display and time handlers all see them.
//! Nothing may panic, and every frame the agent answers with must decode.
//!
//! `cargo +nightly fuzz run agent_session --features std`

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vireo_guest_agent::agent::clipboard::{ClipboardMode, GuestClipboard};
use vireo_guest_agent::agent::clock::SimulatedClock;
use vireo_guest_agent::agent::display::DisplayProbe;
use vireo_guest_agent::agent::power::RecordingPower;
use vireo_guest_agent::agent::session::Session;
use vireo_guest_agent::agent::timesync::TimeSyncConfig;
use vireo_guest_agent::agent::AgentServices;
use vireo_guest_agent::protocol::{
    decode_payload, encode_message, encode_raw_payload, kind, Capabilities, FrameDecoder, Hello,
    Message, PROTOCOL_MAJOR, PROTOCOL_MINOR,
};

/// Every kind the protocol knows, and one it does not.
const KINDS: [u16; 26] = [
    kind::HELLO,
    kind::ERROR,
    kind::PING,
    kind::PONG,
    kind::INFO_REQUEST,
    kind::INFO_REPLY,
    kind::POWER_REQUEST,
    kind::POWER_ACCEPTED,
    kind::TIME_QUERY,
    kind::TIME_REPLY,
    kind::TIME_SYNC_NOW,
    kind::TIME_SYNC_REPORT,
    kind::CLIPBOARD_GRAB,
    kind::CLIPBOARD_REQUEST,
    kind::CLIPBOARD_DATA,
    kind::CLIPBOARD_RELEASE,
    kind::CLIPBOARD_STATUS,
    kind::FS_REQUEST,
    kind::FS_REPLY,
    kind::FS_SHARES,
    kind::FS_SHARES_REPLY,
    kind::FS_INVALIDATE,
    kind::DISPLAY_STATUS,
    kind::DISPLAY_STATUS_REQUEST,
    kind::DISPLAY_RESIZE,
    0x7f01,
];

fn services() -> &'static AgentServices {
    static SERVICES: OnceLock<AgentServices> = OnceLock::new();
    SERVICES.get_or_init(|| AgentServices {
        clock: Arc::new(SimulatedClock::default()),
        power: Arc::new(RecordingPower::default()),
        time_sync: TimeSyncConfig::default(),
        // No FUSE mounts: shared-folder messages take the not-offered paths.
        shares: None,
        // No X session: the agent's own clipboard; small, so the limit is reached.
        clipboard: Arc::new(GuestClipboard::start(ClipboardMode::Memory, 64).unwrap()),
        // No session to resize: xrandr is never run.
        display: DisplayProbe {
            x11: false,
            ..DisplayProbe::default()
        },
    })
}

fn payload_of(message: &Message) -> Vec<u8> {
    encode_message(1, message).unwrap()[4..].to_vec()
}

fuzz_target!(|data: &[u8]| {
    let services = services();
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut session = Session::new(services, flags & 1 == 1);
    let mut now = Instant::now();
    let hello = Message::Hello(Hello {
        major: PROTOCOL_MAJOR,
        minor: PROTOCOL_MINOR,
        capabilities: Capabilities(u32::from(flags >> 1)),
        software: "fuzz".into(),
    });
    session.on_payload(&payload_of(&hello), now);
    // Each message: kind index, id, body length, body.
    while let [k, id, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        let kind = KINDS[usize::from(*k) % KINDS.len()];
        session.on_payload(&encode_raw_payload(kind, u32::from(*id), body), now);
        now += Duration::from_millis(u64::from(*id));
        session.tick(now);
    }
    let mut decoder = FrameDecoder::new();
    for frame in session.take_outbox() {
        decoder.push(&frame);
    }
    while let Some(payload) = decoder.next_frame().expect("the agent's frames are whole") {
        decode_payload(&payload).expect("the agent's messages decode");
    }
});
