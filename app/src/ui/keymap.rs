//! egui keys to Linux evdev key codes, which the virtio keyboard sends. The VM window
//! uses the key's physical position (`Event::Key::physical_key`) when eframe knows it,
//! so the guest's own layout applies; codes from linux/input-event-codes.h.

use eframe::egui::Key;

/// The evdev code of the key at `key`'s place, if the virtio keyboard has one.
pub fn evdev_code(key: Key) -> Option<u16> {
    use Key::*;
    Some(match key {
        Escape => 1,
        Num1 => 2,
        Num2 => 3,
        Num3 => 4,
        Num4 => 5,
        Num5 => 6,
        Num6 => 7,
        Num7 => 8,
        Num8 => 9,
        Num9 => 10,
        Num0 => 11,
        Minus => 12,
        Equals | Plus => 13,
        Backspace => 14,
        Tab => 15,
        Q => 16,
        W => 17,
        E => 18,
        R => 19,
        T => 20,
        Y => 21,
        U => 22,
        I => 23,
        O => 24,
        P => 25,
        OpenBracket | OpenCurlyBracket => 26,
        CloseBracket | CloseCurlyBracket => 27,
        Enter => 28,
        ControlLeft => 29,
        A => 30,
        S => 31,
        D => 32,
        F => 33,
        G => 34,
        H => 35,
        J => 36,
        K => 37,
        L => 38,
        Semicolon | Colon => 39,
        Quote => 40,
        Backtick => 41,
        ShiftLeft => 42,
        Backslash | Pipe => 43,
        Z => 44,
        X => 45,
        C => 46,
        V => 47,
        B => 48,
        N => 49,
        M => 50,
        Comma => 51,
        Period => 52,
        Slash | Questionmark => 53,
        ShiftRight => 54,
        AltLeft => 56,
        Space => 57,
        CapsLock => 58,
        F1 => 59,
        F2 => 60,
        F3 => 61,
        F4 => 62,
        F5 => 63,
        F6 => 64,
        F7 => 65,
        F8 => 66,
        F9 => 67,
        F10 => 68,
        NumLock => 69,
        ScrollLock => 70,
        IntlBackslash => 86,
        F11 => 87,
        F12 => 88,
        ControlRight => 97,
        PrintScreen => 99,
        AltRight => 100,
        Home => 102,
        ArrowUp => 103,
        PageUp => 104,
        ArrowLeft => 105,
        ArrowRight => 106,
        End => 107,
        ArrowDown => 108,
        PageDown => 109,
        Insert => 110,
        Delete => 111,
        AudioVolumeMute => 113,
        AudioVolumeDown => 114,
        AudioVolumeUp => 115,
        Power => 116,
        Pause => 119,
        SuperLeft => 125,
        SuperRight => 126,
        Menu => 127,
        Copy => 133,
        Paste => 135,
        Cut => 137,
        Help => 138,
        Sleep => 142,
        LaunchMail => 155,
        BrowserFavorites => 156,
        BrowserBack => 158,
        BrowserForward => 159,
        MediaTrackNext => 163,
        MediaPlayPause => 164,
        MediaTrackPrevious => 165,
        MediaStop => 166,
        BrowserHome => 172,
        BrowserRefresh => 173,
        F13 => 183,
        F14 => 184,
        F15 => 185,
        F16 => 186,
        F17 => 187,
        F18 => 188,
        F19 => 189,
        F20 => 190,
        F21 => 191,
        F22 => 192,
        F23 => 193,
        F24 => 194,
        BrowserSearch => 217,
        BrowserStop => 128,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_and_modifiers_by_position() {
        assert_eq!(evdev_code(Key::A), Some(30));
        assert_eq!(evdev_code(Key::V), Some(47));
        assert_eq!(evdev_code(Key::Escape), Some(1));
        assert_eq!(evdev_code(Key::ControlRight), Some(97));
        assert_eq!(evdev_code(Key::F35), None);
        // No two keys share a code unless they are one key's two characters.
        let mut seen = std::collections::HashMap::new();
        for key in Key::ALL {
            if let Some(code) = evdev_code(*key) {
                if let Some(other) = seen.insert(code, *key) {
                    let pairs = [
                        (Key::Equals, Key::Plus),
                        (Key::OpenBracket, Key::OpenCurlyBracket),
                        (Key::CloseBracket, Key::CloseCurlyBracket),
                        (Key::Semicolon, Key::Colon),
                        (Key::Backslash, Key::Pipe),
                        (Key::Slash, Key::Questionmark),
                    ];
                    assert!(
                        pairs
                            .iter()
                            .any(|&(a, b)| (a, b) == (other, *key) || (b, a) == (other, *key)),
                        "{other:?} and {key:?} share {code}"
                    );
                }
            }
        }
    }
}
