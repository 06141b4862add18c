//! HAProxy-style durations: a number with an optional unit (`us`, `ms`, `s`,
//! `m`, `h`, `d`; no unit means milliseconds, as in HAProxy's own timeouts).
//! Used both to validate timeouts written into the config verbatim and to
//! parse the supervisor's own durations.

use std::time::Duration;

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration (expected a number with an optional unit us, ms, s, m, h or d, e.g. 100ms, 3s)")]
pub struct BadDuration(pub String);

/// Parses `s` as an HAProxy time value.
pub fn parse(s: &str) -> Result<Duration, BadDuration> {
    let bad = || BadDuration(s.to_string());
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    // Nine digits keep every unit below u64 overflow and HAProxy's own limits.
    if num.is_empty() || num.len() > 9 {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let micros = match unit {
        "us" => n,
        "" | "ms" => n * 1_000,
        "s" => n * 1_000_000,
        "m" => n * 60_000_000,
        "h" => n * 3_600_000_000,
        "d" => n * 86_400_000_000,
        _ => return Err(bad()),
    };
    Ok(Duration::from_micros(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("15000"), Ok(Duration::from_millis(15000)));
        assert_eq!(parse("5us"), Ok(Duration::from_micros(5)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86400)));
    }

    #[test]
    fn rejects() {
        for s in [
            "",
            "s",
            "1.5s",
            "-1s",
            "1 s",
            "1sec",
            "1s\n",
            "9999999999s",
            "1S",
        ] {
            assert!(parse(s).is_err(), "{s:?} accepted");
        }
    }
}
