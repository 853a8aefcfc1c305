//! Small std helpers shared by the agent and the host side.

use std::time::{SystemTime, UNIX_EPOCH};

/// This system's wall clock in nanoseconds since the Unix epoch (negative before 1970).
pub fn system_now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// An error and its sources on one line ("a: b: c"), as anyhow's `{:#}` prints it, for
/// logs and error texts in the library, where anyhow is not used.
pub fn error_chain(err: &dyn std::error::Error) -> impl std::fmt::Display + '_ {
    struct Chain<'e>(&'e dyn std::error::Error);
    impl std::fmt::Display for Chain<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0)?;
            let mut source = self.0.source();
            while let Some(s) = source {
                write!(f, ": {s}")?;
                source = s.source();
            }
            Ok(())
        }
    }
    Chain(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_2020() {
        assert!(system_now_ns() > 1_577_836_800_000_000_000);
    }

    #[test]
    fn chain_joins_sources() {
        let inner = std::io::Error::other("disk on fire");
        let outer = crate::agent::power::PowerError::Spawn {
            program: "poweroff".into(),
            source: inner,
        };
        assert_eq!(
            error_chain(&outer).to_string(),
            "cannot run poweroff: disk on fire"
        );
    }
}
