//! How the CLI prints an instant: `2026-12-07 04:05:06 UTC`, the same in every command.
//!
//! The API carries instants as milliseconds (or seconds) since the Unix epoch; a person reads
//! dates. Every command that prints a stored instant goes through [`utc`] or [`utc_secs`].

use cards::Date;

/// Milliseconds since the Unix epoch as `YYYY-MM-DD hh:mm:ss UTC`.
pub fn utc(ms: u64) -> String {
    utc_secs(ms / 1000)
}

/// Seconds since the Unix epoch as `YYYY-MM-DD hh:mm:ss UTC`.
pub fn utc_secs(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        Date::from_days_since_epoch(days as i64),
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc_secs(1_700_000_000), "2023-11-14 22:13:20 UTC");
        // 2024 is a leap year: the day after 28 February is the 29th.
        assert_eq!(utc_secs(1_709_164_800), "2024-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_612_773_781), "2026-12-07 03:06:13 UTC");
    }
}
