//! UTC timestamps as RFC 3339 text, both ways, without a calendar dependency (Howard
//! Hinnant's days-from-civil algorithms).

/// `1_700_000_000_123` -> `2023-11-14T22:13:20.123Z`.
pub fn format_ms(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let days = (seconds / 86_400) as i64;
    let second_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        unix_ms % 1000
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff][Z|+HH:MM|-HH:MM]` to Unix milliseconds, a finer fraction
/// truncated (the millisecond it falls in).
pub fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    parse_rfc3339_ms_rounding(text, false)
}

/// [`parse_rfc3339_ms`], but a fraction finer than a millisecond rounds up to the next one:
/// the bound of an exclusive target (records stamped before it are kept, and a record's stamp
/// is in milliseconds, so one stamped in the millisecond the time falls in lies before it).
/// Regression (review): `--to-time ...59.9995Z --exclusive` truncated to 59.999 and left out a
/// record stamped 59.999, before the target.
pub fn parse_rfc3339_ms_ceiling(text: &str) -> Result<u64, String> {
    parse_rfc3339_ms_rounding(text, true)
}

fn parse_rfc3339_ms_rounding(text: &str, round_up: bool) -> Result<u64, String> {
    let bad = || format!("{text:?} is not an RFC 3339 time like 2026-11-22T10:14:59Z");
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = text.get(range).ok_or_else(bad)?;
        if !part.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<i64>().map_err(|_| bad())
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    if bytes[13] != b':' || bytes[16] != b':' {
        return Err(bad());
    }
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    // Regression (review): any day up to 31 was taken, so February 31st restored to March 3rd.
    if !(1..=12).contains(&month) || !(1..=days_in_month(year, month)).contains(&day) {
        return Err(bad());
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let mut at = 19;
    let mut millis = 0i64;
    if bytes.get(at) == Some(&b'.') {
        let start = at + 1;
        let mut end = start;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
        if end == start {
            return Err(bad());
        }
        let digits = &text[start..end.min(start + 3)];
        millis = digits.parse::<i64>().map_err(|_| bad())? * 10i64.pow(3 - digits.len() as u32);
        if round_up && text[start..end].bytes().skip(3).any(|digit| digit != b'0') {
            millis += 1;
        }
        at = end;
    }
    let offset_minutes = match &text[at..] {
        "Z" | "z" => 0,
        // Bytes, not `&zone[3..4]`: that panicked on a multi-byte character (regression, review).
        zone if zone.len() == 6 && (zone.starts_with('+') || zone.starts_with('-')) && zone.as_bytes()[3] == b':' => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            sign * (number(at + 1..at + 3)? * 60 + number(at + 4..at + 6)?)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds * 1000 + millis).map_err(|_| bad())
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `500ms`, `90s`, `15m`, `2h`, `1d`, or plain seconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let (number, unit_ms) = if let Some(number) = text.strip_suffix("ms") {
        (number, 1)
    } else {
        match text.char_indices().last() {
            Some((at, 's')) => (&text[..at], 1_000),
            Some((at, 'm')) => (&text[..at], 60_000),
            Some((at, 'h')) => (&text[..at], 3_600_000),
            Some((at, 'd')) => (&text[..at], 86_400_000),
            _ => (text, 1_000),
        }
    };
    let number: u64 = number.parse().map_err(|_| format!("{text:?}: expected e.g. 500ms, 90s, 15m, 2h, 1d"))?;
    number.checked_mul(unit_ms).ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_known_values() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_rfc3339_ms("2023-11-14T22:13:20.123Z"), Ok(1_700_000_000_123));
        // Finer than a millisecond: truncated for an inclusive bound, rounded up for an
        // exclusive one (whole milliseconds are both).
        assert_eq!(parse_rfc3339_ms("2023-11-14T22:13:20.1235Z"), Ok(1_700_000_000_123));
        assert_eq!(parse_rfc3339_ms_ceiling("2023-11-14T22:13:20.1235Z"), Ok(1_700_000_000_124));
        assert_eq!(parse_rfc3339_ms_ceiling("2023-11-14T22:13:20.123000Z"), Ok(1_700_000_000_123));
        assert_eq!(parse_rfc3339_ms_ceiling("2023-11-14T22:13:20.999999Z"), Ok(1_700_000_001_000));
        assert_eq!(parse_rfc3339_ms_ceiling("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_rfc3339_ms("2023-11-14T23:13:20.123+01:00"), Ok(1_700_000_000_123));
        assert_eq!(parse_rfc3339_ms("2024-02-29T00:00:00Z").map(format_ms).unwrap(), "2024-02-29T00:00:00.000Z");
        for ms in [1u64, 951_782_400_000, 4_102_444_799_999, 1_795_000_000_000] {
            assert_eq!(parse_rfc3339_ms(&format_ms(ms)), Ok(ms));
        }
        for bad in ["", "2026-11-22", "2026-13-01T00:00:00Z", "2026-11-22T10:14:59", "2026-11-22T10:14:59+0100"] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad}");
        }
    }

    /// Regression (review): days past a month's end were taken (rolling into the next month),
    /// and a zone with a multi-byte character panicked the command.
    #[test]
    fn days_past_a_months_end_and_odd_zones_are_refused_without_a_panic() {
        for bad in [
            "2026-02-31T10:00:00Z",
            "2026-02-29T10:00:00Z",
            "2100-02-29T10:00:00Z",
            "2026-04-31T10:00:00Z",
            "2026-11-22T10:14:59+0\u{e9}00",
            "2026-11-22T10:14:59\u{e9}",
            "2026-11-22T10:14:59.\u{e9}",
        ] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad}");
        }
        for good in ["2024-02-29T10:00:00Z", "2000-02-29T10:00:00Z", "2026-04-30T10:00:00Z", "2026-12-31T23:59:59Z"] {
            assert!(parse_rfc3339_ms(good).is_ok(), "{good}");
        }
    }
}
