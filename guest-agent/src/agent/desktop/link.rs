//! The wire between the system agent and a session's `vireo-agent session`: the agent
//! protocol's frames and envelopes (a frame over [`MAX_FRAME_PAYLOAD`] is an error as soon
//! as its header is in), restricted to the few messages each side may send. Anything else
//! is a [`LinkError`] and ends the connection: unlike the host, a session client is our own
//! program, so a message it should not send means it is broken or hostile.
//!
//! Session → agent: `Hello` (request, first), `ClipboardGrab` / `ClipboardRelease` (events:
//! a program in the session copied, or the clipboard went empty), and the answers to the
//! agent's requests (`ClipboardData`, `Pong`, `Error`).
//! Agent → session: the `Hello` answer, `ClipboardRequest` (the data of the session's
//! grab), `ClipboardData` (put this on the session clipboard: answered with `Pong`),
//! `ClipboardRelease` (clear it: `Pong`), and `Error { code: BUSY }` with id 0: a newer
//! session took over, stand down.

use std::io::{self, Read, Write};

use crate::protocol::{
    decode_payload, encode_message, ClipboardGrab, ClipboardRelease, DecodeError, ErrorReply,
    FrameDecoder, FrameError, Hello, Message, NO_REPLY,
};

/// Room offered to each socket read.
const READ_ROOM: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("connection I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("bad message: {0}")]
    Decode(#[from] DecodeError),
    #[error("message kind {kind:#06x} (id {id}) is not one the session link carries here")]
    Unexpected { id: u32, kind: u16 },
}

/// What a session client may send to the system agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromSession {
    Hello(u32, Hello),
    Grab(ClipboardGrab),
    Release(ClipboardRelease),
    /// The answer (data, pong or error) to the agent's request `id`.
    Reply(u32, Message),
}

/// Checks one envelope from a session client against what it may send.
pub fn from_session(payload: &[u8]) -> Result<FromSession, LinkError> {
    let env = decode_payload(payload)?;
    match (env.id, env.message) {
        (id @ 1.., Message::Hello(hello)) => Ok(FromSession::Hello(id, hello)),
        (NO_REPLY, Message::ClipboardGrab(grab)) => Ok(FromSession::Grab(grab)),
        (NO_REPLY, Message::ClipboardRelease(release)) => Ok(FromSession::Release(release)),
        (id @ 1.., m @ (Message::ClipboardData(_) | Message::Pong(_) | Message::Error(_))) => {
            Ok(FromSession::Reply(id, m))
        }
        (id, m) => Err(LinkError::Unexpected { id, kind: m.kind() }),
    }
}

/// What the system agent may send to a session client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromAgent {
    /// The answer to our hello (a hello, or an error: refused).
    HelloReply(Message),
    /// A request to answer with the same id: `ClipboardRequest`, `ClipboardData`,
    /// `ClipboardRelease`.
    Request(u32, Message),
    /// A newer session took over, or the agent refuses us: the text says why.
    StandDown(ErrorReply),
}

/// Checks one envelope from the system agent (`hello_id`: our hello's id).
pub fn from_agent(payload: &[u8], hello_id: u32) -> Result<FromAgent, LinkError> {
    let env = decode_payload(payload)?;
    match (env.id, env.message) {
        (id, m @ (Message::Hello(_) | Message::Error(_))) if id == hello_id => {
            Ok(FromAgent::HelloReply(m))
        }
        (NO_REPLY, Message::Error(e)) => Ok(FromAgent::StandDown(e)),
        (
            id @ 1..,
            m @ (Message::ClipboardRequest(_)
            | Message::ClipboardData(_)
            | Message::ClipboardRelease(_)),
        ) => Ok(FromAgent::Request(id, m)),
        (id, m) => Err(LinkError::Unexpected { id, kind: m.kind() }),
    }
}

/// Reads whole frames off a stream, through the protocol's capped decoder.
pub struct FrameReader<R> {
    stream: R,
    decoder: FrameDecoder,
}

impl<R: Read> FrameReader<R> {
    pub fn new(stream: R) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(),
        }
    }

    /// The next frame's payload; [`LinkError::Closed`] at the end of the stream.
    pub fn next_payload(&mut self) -> Result<Vec<u8>, LinkError> {
        loop {
            if let Some(payload) = self.decoder.next_frame()? {
                return Ok(payload);
            }
            let stream = &mut self.stream;
            match self.decoder.fill_with(READ_ROOM, |room| stream.read(room)) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Writes one message as a frame.
pub fn send(stream: &mut impl Write, id: u32, message: &Message) -> Result<(), LinkError> {
    let frame = encode_message(id, message)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    stream.write_all(&frame)?;
    Ok(())
}

/// Feeds `bytes` to the agent's side of the link as a session client's stream would
/// arrive, until it ends or fails: the fuzz target's entry point. Returns how many
/// messages were accepted.
pub fn decode_session_stream(bytes: &[u8]) -> usize {
    let mut reader = FrameReader::new(bytes);
    let mut accepted = 0;
    while let Ok(payload) = reader.next_payload() {
        match from_session(&payload) {
            Ok(_) => accepted += 1,
            Err(_) => break,
        }
    }
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode_frame, ClipboardData, ClipboardFormat, ClipboardRequest};

    fn frame(id: u32, m: &Message) -> Vec<u8> {
        encode_message(id, m).unwrap()
    }

    #[test]
    fn session_may_send_only_its_messages() {
        let grab = Message::ClipboardGrab(ClipboardGrab {
            serial: 1,
            formats: vec![ClipboardFormat::Text],
        });
        let mut stream = frame(0, &grab);
        stream.extend(frame(4, &Message::Pong(Vec::new())));
        assert_eq!(decode_session_stream(&stream), 2);
        // A request of the host's kind, or a grab sent as a request, is refused.
        let power = frame(3, &Message::InfoRequest);
        assert!(matches!(
            from_session(&power[4..]),
            Err(LinkError::Unexpected { id: 3, .. })
        ));
        assert!(from_session(&frame(7, &grab)[4..]).is_err());
    }

    #[test]
    fn agent_requests_and_stand_down_are_told_apart() {
        let req = Message::ClipboardRequest(ClipboardRequest {
            serial: 2,
            format: ClipboardFormat::Png,
        });
        assert!(matches!(
            from_agent(&frame(9, &req)[4..], 1),
            Ok(FromAgent::Request(9, _))
        ));
        let data = Message::ClipboardData(ClipboardData {
            serial: 0,
            format: ClipboardFormat::Text,
            data: b"x".to_vec(),
        });
        assert!(matches!(
            from_agent(&frame(0, &data)[4..], 1),
            Err(LinkError::Unexpected { .. })
        ));
    }

    #[test]
    fn garbage_and_oversized_frames_are_errors() {
        assert_eq!(decode_session_stream(&[0xff; 64]), 0);
        let mut reader = FrameReader::new(&[0xff, 0xff, 0xff, 0x7f, 0, 0][..]);
        assert!(matches!(reader.next_payload(), Err(LinkError::Frame(_))));
        let junk = encode_frame(&[1, 2, 3]).unwrap();
        let mut reader = FrameReader::new(&junk[..]);
        let payload = reader.next_payload().unwrap();
        assert!(from_session(&payload).is_err());
    }
}
