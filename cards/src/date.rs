//! Calendar dates for the holder registry: birth dates and card expiry dates.
//!
//! [`Date`] is a proleptic Gregorian date between 0001-01-01 and 9999-12-31, written and read
//! only as ISO 8601 `YYYY-MM-DD`. It is `Copy`, ordered chronologically, and serialized as that
//! string. [`Date::today_utc`] reads the system clock and converts days since the Unix epoch
//! with Howard Hinnant's `civil_from_days` algorithm, so no date crate is needed.
//!
//! What it does not do: times of day, time zones (today is today in UTC), other notations.
//!
//! # Security
//! A birth date is personal data. [`DateError`] holds no part of the input, so a message built
//! from it cannot echo the date it refused.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a text is not a date. Holds no part of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DateError {
    /// Not ten characters `YYYY-MM-DD` of ASCII digits and two hyphens.
    #[error("not a date in the form YYYY-MM-DD")]
    Format,
    /// Year 0000.
    #[error("year is not 0001 to 9999")]
    Year,
    /// Month outside 01–12.
    #[error("month is not 01 to 12")]
    Month,
    /// Day 00, or past the end of its month (including 29 February outside leap years).
    #[error("day does not exist in that month")]
    Day,
}

/// A calendar date, 0001-01-01 to 9999-12-31.
///
/// Invariant: the fields always form a real date in that range; every constructor checks it.
/// The derived order (year, month, day) is the chronological order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    year: u16,
    month: u8,
    day: u8,
}

/// Days from 1970-01-01 to 0001-01-01.
const MIN_DAYS: i64 = -719_162;
/// Days from 1970-01-01 to 9999-12-31.
const MAX_DAYS: i64 = 2_932_896;
const SECONDS_PER_DAY: u64 = 86_400;

/// Whether `year` is a Gregorian leap year.
pub const fn is_leap_year(year: u16) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// The number of days of `month` (1–12) in `year`; 0 for a month outside 1–12.
pub const fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

impl Date {
    /// The earliest date: 0001-01-01.
    pub const MIN: Date = Date {
        year: 1,
        month: 1,
        day: 1,
    };

    /// The latest date: 9999-12-31.
    pub const MAX: Date = Date {
        year: 9999,
        month: 12,
        day: 31,
    };

    /// The Unix epoch, 1970-01-01.
    pub const EPOCH: Date = Date {
        year: 1970,
        month: 1,
        day: 1,
    };

    /// A date from its parts.
    ///
    /// # Errors
    /// [`DateError::Year`] for a year outside 1–9999, [`DateError::Month`] for a month outside
    /// 1–12, [`DateError::Day`] for a day that the month does not have.
    pub const fn new(year: u16, month: u8, day: u8) -> Result<Date, DateError> {
        if year < 1 || year > 9999 {
            return Err(DateError::Year);
        }
        if month < 1 || month > 12 {
            return Err(DateError::Month);
        }
        if day == 0 || day > days_in_month(year, month) {
            return Err(DateError::Day);
        }
        Ok(Date { year, month, day })
    }

    /// Parses exactly `YYYY-MM-DD`: four-digit year, two-digit month and day, ASCII digits,
    /// nothing before or after (the caller trims if it wants to).
    ///
    /// # Errors
    /// [`DateError::Format`] for any other shape, else as [`Date::new`].
    pub fn parse(text: &str) -> Result<Date, DateError> {
        let b = text.as_bytes();
        let shape = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
        if !shape {
            return Err(DateError::Format);
        }
        let num = |range: std::ops::Range<usize>| {
            b[range]
                .iter()
                .fold(0u16, |n, c| n * 10 + u16::from(c - b'0'))
        };
        // Two ASCII digits are at most 99, so they fit a u8.
        let month = u8::try_from(num(5..7)).map_err(|_| DateError::Month)?;
        let day = u8::try_from(num(8..10)).map_err(|_| DateError::Day)?;
        Date::new(num(0..4), month, day)
    }

    /// The year, 1–9999.
    pub fn year(self) -> u16 {
        self.year
    }

    /// The month, 1–12.
    pub fn month(self) -> u8 {
        self.month
    }

    /// The day of the month, 1–31.
    pub fn day(self) -> u8 {
        self.day
    }

    /// Today's date in UTC, from the system clock.
    ///
    /// A clock set before 0001 or after 9999 gives [`Date::MIN`] or [`Date::MAX`].
    pub fn today_utc() -> Date {
        Date::from_system_time(SystemTime::now())
    }

    /// Today's date in UTC by `clock` (saturating as [`Date::today_utc`]).
    pub fn today(clock: &dyn vault::Clock) -> Date {
        Date::from_system_time(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(clock.now_ms()),
        )
    }

    /// The UTC date of an instant; saturates at [`Date::MIN`] and [`Date::MAX`].
    pub fn from_system_time(t: SystemTime) -> Date {
        let days = match t.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_secs() / SECONDS_PER_DAY).unwrap_or(i64::MAX),
            Err(e) => {
                // Before the epoch: round towards the past, so 1 second before is 1969-12-31.
                let before = e.duration();
                let secs = before.as_secs() + u64::from(before.subsec_nanos() > 0);
                let days = secs.div_ceil(SECONDS_PER_DAY);
                i64::try_from(days).map_or(i64::MIN, |d| -d)
            }
        };
        Date::from_days_since_epoch(days)
    }

    /// The date `days` after 1970-01-01 (before it, for a negative count); saturates at
    /// [`Date::MIN`] and [`Date::MAX`].
    pub fn from_days_since_epoch(days: i64) -> Date {
        let (y, m, d) = civil_from_days(days.clamp(MIN_DAYS, MAX_DAYS));
        // In the clamped range the year is 1..=9999, the month 1..=12 and the day 1..=31, so
        // the conversions cannot fail; the fallbacks are never taken.
        Date {
            year: u16::try_from(y).unwrap_or(1),
            month: u8::try_from(m).unwrap_or(1),
            day: u8::try_from(d).unwrap_or(1),
        }
    }

    /// Days from 1970-01-01 to this date (negative before it).
    pub fn days_since_epoch(self) -> i64 {
        days_from_civil(
            i64::from(self.year),
            i64::from(self.month),
            i64::from(self.day),
        )
    }

    /// The date `days` later (earlier, for a negative count); saturates at [`Date::MIN`] and
    /// [`Date::MAX`].
    pub fn add_days(self, days: i64) -> Date {
        Date::from_days_since_epoch(self.days_since_epoch().saturating_add(days))
    }

    /// Days from this date to `later` (negative if `later` is earlier).
    pub fn days_until(self, later: Date) -> i64 {
        later.days_since_epoch() - self.days_since_epoch()
    }
}

/// Howard Hinnant's `days_from_civil`: days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date `z` days after 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl fmt::Debug for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Date({self})")
    }
}

impl FromStr for Date {
    type Err = DateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Date::parse(s)
    }
}

impl Serialize for Date {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DateVisitor;
        impl de::Visitor<'_> for DateVisitor {
            type Value = Date;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a date YYYY-MM-DD")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Date, E> {
                // The message is the DateError's, which never repeats the text.
                Date::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DateVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn d(s: &str) -> Date {
        Date::parse(s).unwrap()
    }

    #[test]
    fn parses_and_displays_round_trip() {
        for s in [
            "2024-02-29",
            "0001-01-01",
            "9999-12-31",
            "1985-12-10",
            "1970-01-01",
        ] {
            assert_eq!(d(s).to_string(), s);
            assert_eq!(s.parse::<Date>().unwrap(), d(s));
        }
        let x = d("1985-12-10");
        assert_eq!((x.year(), x.month(), x.day()), (1985, 12, 10));
        assert_eq!(format!("{x:?}"), "Date(1985-12-10)");
    }

    #[test]
    fn rejects_other_shapes() {
        for s in [
            "",
            "2024-1-01",
            "2024-01-1",
            "24-01-01",
            "2024/01/01",
            "20240101",
            " 2024-01-01",
            "2024-01-01 ",
            "2024-01-01x",
            "+024-01-01",
            "2024-0a-01",
            "２０２４-01-01",
            "10000-01-01",
            "2024-01-01T00:00",
        ] {
            assert_eq!(Date::parse(s), Err(DateError::Format), "{s:?}");
        }
    }

    #[test]
    fn calendar_rules_and_leap_years() {
        assert!(Date::parse("2024-02-29").is_ok());
        assert!(Date::parse("2000-02-29").is_ok(), "divisible by 400");
        assert_eq!(Date::parse("2023-02-29"), Err(DateError::Day));
        assert_eq!(Date::parse("1900-02-29"), Err(DateError::Day), "century");
        assert_eq!(Date::parse("2024-02-30"), Err(DateError::Day));
        assert_eq!(Date::parse("2024-04-31"), Err(DateError::Day));
        assert_eq!(Date::parse("2024-01-32"), Err(DateError::Day));
        assert_eq!(Date::parse("2024-01-00"), Err(DateError::Day));
        assert_eq!(Date::parse("2024-00-10"), Err(DateError::Month));
        assert_eq!(Date::parse("2024-13-10"), Err(DateError::Month));
        assert_eq!(Date::parse("0000-01-01"), Err(DateError::Year));
        assert!(Date::parse("2024-12-31").is_ok());
        assert_eq!(Date::new(2024, 2, 29), Ok(d("2024-02-29")));
        assert_eq!(Date::new(10_000, 1, 1), Err(DateError::Year));
        let lengths: Vec<u8> = (1..=12).map(|m| days_in_month(2023, m)).collect();
        assert_eq!(lengths, [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]);
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2024, 13), 0);
    }

    #[test]
    fn days_since_epoch_known_answers() {
        assert_eq!(Date::EPOCH.days_since_epoch(), 0);
        assert_eq!(d("2000-03-01").days_since_epoch(), 11_017);
        assert_eq!(d("1969-12-31").days_since_epoch(), -1);
        assert_eq!(d("2024-02-29").days_since_epoch(), 19_782);
        assert_eq!(Date::MIN.days_since_epoch(), MIN_DAYS);
        assert_eq!(Date::MAX.days_since_epoch(), MAX_DAYS);
        assert_eq!(Date::from_days_since_epoch(19_782), d("2024-02-29"));
    }

    #[test]
    fn every_day_round_trips_and_follows_the_previous() {
        // Every day from 1599-12-31 to 2401-01-01 (400-year cycles and the centuries between),
        // checked against a plain day-by-day walk of the calendar.
        let mut expect = d("1599-12-31");
        let start = expect.days_since_epoch();
        for n in start..=start + 292_561 {
            let got = Date::from_days_since_epoch(n);
            assert_eq!(got, expect, "day {n}");
            assert_eq!(got.days_since_epoch(), n);
            expect = if expect.day < days_in_month(expect.year, expect.month) {
                Date {
                    day: expect.day + 1,
                    ..expect
                }
            } else if expect.month < 12 {
                Date {
                    month: expect.month + 1,
                    day: 1,
                    ..expect
                }
            } else {
                Date {
                    year: expect.year + 1,
                    month: 1,
                    day: 1,
                }
            };
        }
    }

    #[test]
    fn add_days_orders_and_saturates() {
        assert_eq!(d("2024-02-28").add_days(1), d("2024-02-29"));
        assert_eq!(d("2024-02-28").add_days(2), d("2024-03-01"));
        assert_eq!(d("2023-12-31").add_days(1), d("2024-01-01"));
        assert_eq!(d("2024-01-01").add_days(-1), d("2023-12-31"));
        assert_eq!(d("2024-01-01").add_days(366), d("2025-01-01"));
        assert_eq!(d("2024-01-01").add_days(0), d("2024-01-01"));
        assert_eq!(Date::MAX.add_days(1), Date::MAX);
        assert_eq!(Date::MIN.add_days(-1), Date::MIN);
        assert_eq!(d("2024-01-01").add_days(i64::MAX), Date::MAX);
        assert_eq!(d("2024-01-01").add_days(i64::MIN), Date::MIN);
        assert_eq!(d("2024-01-01").days_until(d("2025-01-01")), 366);
        assert_eq!(d("2025-01-01").days_until(d("2024-01-01")), -366);
        assert!(d("2024-12-31") < d("2025-01-01"));
        assert!(d("2024-02-01") > d("2024-01-31"));
        let mut v = vec![d("2025-01-01"), d("1999-12-31"), d("2024-06-15")];
        v.sort();
        assert_eq!(v, [d("1999-12-31"), d("2024-06-15"), d("2025-01-01")]);
    }

    #[test]
    fn from_system_time_in_utc() {
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(Date::from_system_time(UNIX_EPOCH), Date::EPOCH);
        assert_eq!(Date::from_system_time(at(86_399)), Date::EPOCH);
        assert_eq!(Date::from_system_time(at(86_400)), d("1970-01-02"));
        // 2024-02-29T23:59:59Z and the second after.
        assert_eq!(Date::from_system_time(at(1_709_251_199)), d("2024-02-29"));
        assert_eq!(Date::from_system_time(at(1_709_251_200)), d("2024-03-01"));
        let before = |dur: Duration| UNIX_EPOCH.checked_sub(dur).unwrap();
        assert_eq!(
            Date::from_system_time(before(Duration::from_nanos(1))),
            d("1969-12-31")
        );
        assert_eq!(
            Date::from_system_time(before(Duration::from_secs(86_400))),
            d("1969-12-31")
        );
        assert_eq!(
            Date::from_system_time(before(Duration::from_secs(86_401))),
            d("1969-12-30")
        );
        let today = Date::today_utc();
        assert!(
            today >= d("2024-01-01") && today < d("2200-01-01"),
            "{today}"
        );
    }

    #[test]
    fn serde_as_the_string() {
        let x = d("1985-12-10");
        assert_eq!(serde_json::to_string(&x).unwrap(), r#""1985-12-10""#);
        assert_eq!(serde_json::from_str::<Date>(r#""1985-12-10""#).unwrap(), x);
        let err = serde_json::from_str::<Date>(r#""1985-02-30""#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("day does not exist"), "{err}");
        assert!(!err.contains("1985"), "{err}");
        assert!(serde_json::from_str::<Date>("19851210").is_err());
    }

    #[test]
    fn errors_never_contain_the_input() {
        for s in [
            "1985-13-17",
            "1985-02-30",
            "0000-07-14",
            "1985/11/17",
            "x1985-11-17",
        ] {
            let msg = Date::parse(s).unwrap_err().to_string();
            for part in ["1985", "0000", "11", "13", "17", "30", "14", "/"] {
                assert!(!msg.contains(part), "{msg}");
            }
        }
    }
}
