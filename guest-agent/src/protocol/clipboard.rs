//! What both sides keep of a clipboard: each offered format with its bytes, and the size
//! limit every clipboard message obeys.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::message::ClipboardFormat;

/// Largest clipboard content (per format) either side sends or accepts by default.
pub const DEFAULT_CLIPBOARD_LIMIT: usize = 64 * 1024 * 1024;

/// One clipboard's content: the formats its owner offers, in its order of preference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClipboardContent {
    pub entries: Vec<(ClipboardFormat, Vec<u8>)>,
}

impl ClipboardContent {
    pub fn text(text: impl Into<String>) -> Self {
        Self::one(ClipboardFormat::Text, text.into().into_bytes())
    }

    pub fn png(png: Vec<u8>) -> Self {
        Self::one(ClipboardFormat::Png, png)
    }

    pub fn one(format: ClipboardFormat, data: Vec<u8>) -> Self {
        Self {
            entries: alloc::vec![(format, data)],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn formats(&self) -> Vec<ClipboardFormat> {
        self.entries.iter().map(|(f, _)| *f).collect()
    }

    pub fn get(&self, format: ClipboardFormat) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(f, _)| *f == format)
            .map(|(_, d)| d.as_slice())
    }

    /// The first entry over `limit`, as the error text a peer shows its user.
    pub fn check_limit(&self, limit: usize) -> Result<(), String> {
        match self.entries.iter().find(|(_, d)| d.len() > limit) {
            Some((format, data)) => Err(too_large_text(*format, data.len(), limit)),
            None => Ok(()),
        }
    }
}

/// The one wording of the over-limit error, whichever side finds it.
pub fn too_large_text(format: ClipboardFormat, len: usize, limit: usize) -> String {
    format!(
        "clipboard {} of {len} bytes is over the limit of {limit} bytes ({} MiB)",
        format_name(format),
        limit / (1024 * 1024)
    )
}

pub fn format_name(format: ClipboardFormat) -> &'static str {
    match format {
        ClipboardFormat::Text => "text",
        ClipboardFormat::Png => "png",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_names_the_format_and_size() {
        let content = ClipboardContent::png(alloc::vec![0; 11]);
        assert!(content.check_limit(11).is_ok());
        let err = content.check_limit(10).unwrap_err();
        assert!(err.contains("png of 11 bytes"), "{err}");
        assert_eq!(content.get(ClipboardFormat::Text), None);
        assert_eq!(content.formats(), alloc::vec![ClipboardFormat::Png]);
    }
}
