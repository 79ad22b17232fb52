//! Calendar conversions for `*_us` Unix timestamps (UTC), shared by the producer (event times,
//! card expiry, input parsing) and the worker (expiry rule).
//!
//! Algorithms: H. Hinnant, "chrono-Compatible Low-Level Date Algorithms",
//! `civil_from_days` and `days_from_civil` (<https://howardhinnant.github.io/date_algorithms.html>),
//! exact for the proleptic Gregorian calendar over the whole `i64` day range used here.

/// Microseconds per day.
pub const US_PER_DAY: i64 = 86_400_000_000;

/// Civil date of a day count since 1970-01-01. Returns (year, month 1-12, day 1-31).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a civil date (year, month 1-12, day 1-31).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month 1-12) of a Unix time in microseconds, UTC.
pub fn year_month_of(unix_us: i64) -> (i64, u32) {
    let (y, m, _) = civil_from_days(unix_us.div_euclid(US_PER_DAY));
    (y, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip_through_day_counts() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        for z in [-1_000_000, -1, 0, 59, 10_957, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(year_month_of(1_767_225_599_999_999), (2025, 12));
        assert_eq!(year_month_of(951_782_400_000_000), (2000, 2));
        assert_eq!(year_month_of(-1), (1969, 12));
    }
}
