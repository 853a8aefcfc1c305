//! The host's configured Debian mirror, for debootstrap: the first `deb` source for a
//! suite in deb822 files (`/etc/apt/sources.list.d/*.sources`, Debian 12's default) or
//! one-line `/etc/apt/sources.list` entries.

use std::fs;
use std::path::Path;

/// Used when the host names no mirror for the suite (an Ubuntu host, say).
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// The mirror this host's apt uses for `suite`, else [`DEFAULT_MIRROR`].
pub fn host_mirror(suite: &str) -> String {
    mirror_in(Path::new("/etc/apt"), suite).unwrap_or_else(|| DEFAULT_MIRROR.to_owned())
}

/// The mirror for `suite` in the apt configuration under `etc_apt`.
pub fn mirror_in(etc_apt: &Path, suite: &str) -> Option<String> {
    let mut files: Vec<_> = fs::read_dir(etc_apt.join("sources.list.d"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for path in &files {
        let Ok(text) = fs::read_to_string(path) else {
            continue;
        };
        let found = match path.extension().and_then(|e| e.to_str()) {
            Some("sources") => from_deb822(&text, suite),
            Some("list") => from_one_line(&text, suite),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    fs::read_to_string(etc_apt.join("sources.list"))
        .ok()
        .and_then(|text| from_one_line(&text, suite))
}

/// deb822 stanzas: `Types: deb`, `Suites:` containing `suite`, the first of `URIs:`.
pub fn from_deb822(text: &str, suite: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (key, value) = l.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        let enabled = field("Enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no"));
        let deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let has_suite = field("Suites").is_some_and(|s| s.split_whitespace().any(|s| s == suite));
        if enabled && deb && has_suite {
            if let Some(uri) = field("URIs").and_then(|u| usable(u.split_whitespace().next()?)) {
                return Some(uri);
            }
        }
    }
    None
}

/// `deb [options] URI SUITE COMPONENTS...` lines.
pub fn from_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let rest = line.strip_prefix("deb ")?.trim_start();
        // Skip an `[arch=amd64 signed-by=...]` block.
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']')?.1.trim_start(),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let uri = words.next()?;
        (words.next()? == suite).then(|| usable(uri)).flatten()
    })
}

/// debootstrap fetches over http(s) or from a local directory (`file:`); cdrom and
/// other apt methods are of no use to it.
fn usable(uri: &str) -> Option<String> {
    let uri = uri.trim_end_matches('/');
    ["http://", "https://", "file:/"]
        .iter()
        .any(|p| uri.starts_with(p))
        .then(|| uri.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKWORM_DEFAULT: &str = "Types: deb\n\
        # http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
        URIs: http://deb.debian.org/debian\n\
        Suites: bookworm bookworm-updates\n\
        Components: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
        \n\
        Types: deb\n\
        URIs: http://deb.debian.org/debian-security\n\
        Suites: bookworm-security\n\
        Components: main\n";

    #[test]
    fn deb822_picks_the_stanza_of_the_suite() {
        assert_eq!(
            from_deb822(BOOKWORM_DEFAULT, "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(
            from_deb822(BOOKWORM_DEFAULT, "bookworm-security").as_deref(),
            Some("http://deb.debian.org/debian-security")
        );
        assert_eq!(from_deb822(BOOKWORM_DEFAULT, "trixie"), None);
        let disabled = "Types: deb\nEnabled: no\nURIs: http://x/debian\nSuites: bookworm\n";
        assert_eq!(from_deb822(disabled, "bookworm"), None);
        let src_only = "Types: deb-src\nURIs: http://x/debian\nSuites: bookworm\n";
        assert_eq!(from_deb822(src_only, "bookworm"), None);
    }

    #[test]
    fn one_line_entries_with_options_and_comments() {
        let text = "# deb http://old/debian bookworm main\n\
            deb-src http://src/debian bookworm main\n\
            deb cdrom:[Debian]/ bookworm main\n\
            deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main contrib\n";
        assert_eq!(
            from_one_line(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(from_one_line(text, "bullseye"), None);
    }

    #[test]
    fn this_hosts_configuration_parses() {
        // Whatever this host has, the answer is a URI debootstrap can use.
        let m = host_mirror("bookworm");
        assert!(m.starts_with("http") || m.starts_with("file:/"), "{m}");
    }
}
