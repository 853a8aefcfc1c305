//! The control protocol: one JSON object per line each way (as QEMU's QMP, simpler).
//! A client writes a `Request`; the engine answers each with exactly one `Response`, in
//! order. Unknown requests, unknown fields and malformed lines get an `error` response
//! naming what was wrong; the connection stays open.
//!
//! ```text
//! → {"request":"status"}
//! ← {"response":"status","state":"running","vcpus":2,"memory_mib":512}
//! → {"request":"balloon-set","target_mib":128}
//! ← {"response":"balloon","target_mib":128,"actual_mib":0}
//! ```

use serde::{Deserialize, Serialize};

/// Everything a client can ask. Later issues add to this closed set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The VM's state and size. (Variants without data are written `{}` so that
    /// `deny_unknown_fields` also rejects stray fields on them.)
    Status {},
    /// Sets the balloon's target: how much of the guest's RAM it should give back.
    BalloonSet { target_mib: u64 },
    /// The balloon's target and what the guest has given so far.
    BalloonGet {},
    /// The guest's memory statistics, as its balloon driver last reported them.
    BalloonStats {},
    /// Ends the VM at once, as pulling the plug (no guest shutdown).
    PowerOff {},
    /// A key goes down or up on the keyboard (`code`: a Linux evdev key code, e.g. 30
    /// for A). Needs a display.
    InputKey { code: u16, pressed: bool },
    /// The tablet's pointer moves to (`x`, `y`), pixels of the guest's screen.
    InputPointer { x: u32, y: u32 },
    /// A pointer button goes down or up.
    InputButton {
        button: PointerButton,
        pressed: bool,
    },
    /// The wheels turn: `dy` notches down (negative: up), `dx` right.
    InputScroll {
        #[serde(default)]
        dx: i32,
        #[serde(default)]
        dy: i32,
    },
}

/// The tablet's buttons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PointerButton {
    Left,
    Right,
    Middle,
    Side,
    Extra,
}

/// The engine's answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "kebab-case")]
pub enum Response {
    Status {
        state: String,
        vcpus: u8,
        memory_mib: u64,
    },
    Balloon {
        target_mib: u64,
        actual_mib: u64,
    },
    BalloonStats {
        stats: serde_json::Value,
    },
    Ok,
    Error {
        message: String,
    },
}

/// Parses one request line; a bad line becomes the error response to send back.
pub fn parse_request(line: &str) -> Result<Request, Response> {
    serde_json::from_str(line).map_err(|e| Response::Error {
        message: format!("bad request: {e}"),
    })
}

/// One response line, newline included.
pub fn encode_response(response: &Response) -> String {
    let mut line = serde_json::to_string(response).unwrap_or_else(|e| {
        format!(r#"{{"response":"error","message":"cannot encode the response: {e}"}}"#)
    });
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_mistakes_are_named() {
        assert_eq!(
            parse_request(r#"{"request":"status"}"#),
            Ok(Request::Status {})
        );
        assert_eq!(
            parse_request(r#"{"request":"balloon-set","target_mib":64}"#),
            Ok(Request::BalloonSet { target_mib: 64 })
        );
        let err = |line: &str| match parse_request(line) {
            Err(Response::Error { message }) => message,
            other => panic!("{other:?}"),
        };
        assert!(err(r#"{"request":"reboot-the-moon"}"#).contains("unknown variant"));
        assert!(err(r#"{"request":"balloon-set"}"#).contains("target_mib"));
        assert!(err(r#"{"request":"status","extra":1}"#).contains("unknown field"));
        assert!(err("not json").contains("bad request"));
        assert_eq!(
            parse_request(r#"{"request":"input-button","button":"left","pressed":true}"#),
            Ok(Request::InputButton {
                button: PointerButton::Left,
                pressed: true
            })
        );
        assert_eq!(
            parse_request(r#"{"request":"input-scroll","dy":-2}"#),
            Ok(Request::InputScroll { dx: 0, dy: -2 })
        );
        assert!(
            err(r#"{"request":"input-button","button":"thumb","pressed":true}"#)
                .contains("unknown variant")
        );
        // Internally tagged enums lose the field name in serde's range errors.
        assert!(err(r#"{"request":"input-key","code":70000,"pressed":true}"#).contains("70000"));
    }

    #[test]
    fn responses_are_one_line_each() {
        let line = encode_response(&Response::Balloon {
            target_mib: 1,
            actual_mib: 0,
        });
        assert_eq!(
            line,
            "{\"response\":\"balloon\",\"target_mib\":1,\"actual_mib\":0}\n"
        );
    }
}
