//! Typed reads of spanned TOML values that record, rather than return, what is wrong.
//!
//! Each reader takes the value and its dotted key, and on a bad value records a [`Problem`] at
//! the value's line and returns `None`, so one pass over the file finds every problem.

use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::TimeOfDay;
use super::error::Problem;

pub(super) type Value<'i> = Spanned<DeValue<'i>>;

pub(super) struct Checker<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

impl<'t> Checker<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        Checker {
            text,
            problems: Vec::new(),
        }
    }

    pub(super) fn into_problems(self) -> Vec<Problem> {
        self.problems
    }

    pub(super) fn line_of(&self, span: &Range<usize>) -> usize {
        line_of(self.text, span.start)
    }

    pub(super) fn report(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            line: Some(self.line_of(span)),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// Records every key of `table` not in `known`, suggesting the nearest known key.
    pub(super) fn unknown_keys(&mut self, table: &DeTable<'_>, path: &str, known: &[&str]) {
        for key in table.keys() {
            let name: &str = key.get_ref();
            if known.contains(&name) {
                continue;
            }
            let hint = match closest(name, known) {
                Some(near) => format!("did you mean `{near}`? valid keys: {}", known.join(", ")),
                None => format!("valid keys: {}", known.join(", ")),
            };
            self.report(
                &key.span(),
                &join(path, name),
                format!("unknown key ({hint})"),
            );
        }
    }

    pub(super) fn table<'v, 'i>(&mut self, v: &'v Value<'i>, key: &str) -> Option<&'v DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.wrong_type(v, key, "a table", other);
                None
            }
        }
    }

    pub(super) fn array<'v, 'i>(&mut self, v: &'v Value<'i>, key: &str) -> Option<&'v DeArray<'i>> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            other => {
                self.wrong_type(v, key, "an array", other);
                None
            }
        }
    }

    /// A string with no NUL byte (it may end up in argv, the environment or a path).
    pub(super) fn string<'v>(&mut self, v: &'v Value<'_>, key: &str) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) if s.contains('\0') => {
                self.report(&v.span(), key, "must not contain a NUL character");
                None
            }
            DeValue::String(s) => Some(s),
            other => {
                self.wrong_type(v, key, "a string", other);
                None
            }
        }
    }

    pub(super) fn integer(
        &mut self,
        v: &Value<'_>,
        key: &str,
        range: RangeInclusive<u32>,
    ) -> Option<u32> {
        let (min, max) = (*range.start(), *range.end());
        let DeValue::Integer(int) = v.get_ref() else {
            let expected = format!("an integer from {min} to {max}");
            self.wrong_type(v, key, &expected, v.get_ref());
            return None;
        };
        // Out of i64 range can only be far too large or far too small; the sign tells which.
        let n = i64::from_str_radix(int.as_str(), int.radix()).unwrap_or(
            if int.as_str().starts_with('-') {
                i64::MIN
            } else {
                i64::MAX
            },
        );
        if n < i64::from(min) {
            self.report(
                &v.span(),
                key,
                format!("must be at least {min} (got {int})"),
            );
            None
        } else if n > i64::from(max) {
            self.report(&v.span(), key, format!("must be at most {max} (got {int})"));
            None
        } else {
            u32::try_from(n).ok()
        }
    }

    /// A humane duration string such as "120s" or "1m 30s"; zero only when `allow_zero`.
    pub(super) fn duration(
        &mut self,
        v: &Value<'_>,
        key: &str,
        allow_zero: bool,
    ) -> Option<Duration> {
        const SYNTAX: &str = "a number and a unit, e.g. \"120s\", \"2m\", \"1h 30m\", \"500ms\"";
        let text = match v.get_ref() {
            DeValue::String(s) => s,
            DeValue::Integer(int) => {
                let message = format!(
                    "must be a duration string (got the integer {int}; for seconds write \"{int}s\")"
                );
                self.report(&v.span(), key, message);
                return None;
            }
            other => {
                let expected = format!("a duration string ({SYNTAX})");
                self.wrong_type(v, key, &expected, other);
                return None;
            }
        };
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.report(
                    &v.span(),
                    key,
                    format!("must be longer than zero (got {text:?})"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(humantime::DurationError::NumberOverflow) => {
                self.report(&v.span(), key, format!("{text:?} is too long a duration"));
                None
            }
            Err(_) => {
                self.report(
                    &v.span(),
                    key,
                    format!("{text:?} is not a duration (expected {SYNTAX})"),
                );
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, v: &Value<'_>, key: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.wrong_type(v, key, "true or false", other);
                None
            }
        }
    }

    /// A non-negative integer (TOML integers stop at 2^63 - 1).
    pub(super) fn count(&mut self, v: &Value<'_>, key: &str) -> Option<u64> {
        let DeValue::Integer(int) = v.get_ref() else {
            self.wrong_type(v, key, "an integer of 0 or more", v.get_ref());
            return None;
        };
        if int.as_str().starts_with('-') {
            self.report(&v.span(), key, format!("must be at least 0 (got {int})"));
            return None;
        }
        match u64::from_str_radix(int.as_str(), int.radix()) {
            Ok(n) => Some(n),
            Err(_) => {
                self.report(&v.span(), key, format!("{int} is too large"));
                None
            }
        }
    }

    /// A number above 0 and at most `max`, written as an integer or a float.
    pub(super) fn positive_number(&mut self, v: &Value<'_>, key: &str, max: f64) -> Option<f64> {
        let (n, shown) = match v.get_ref() {
            DeValue::Integer(int) => {
                // Out of i64 range: the sign says which way.
                let n = i64::from_str_radix(int.as_str(), int.radix()).map_or(
                    if int.as_str().starts_with('-') {
                        f64::NEG_INFINITY
                    } else {
                        f64::INFINITY
                    },
                    |n| n as f64,
                );
                (n, int.to_string())
            }
            DeValue::Float(f) => (f.as_str().parse::<f64>().unwrap_or(f64::NAN), f.to_string()),
            other => {
                let expected = format!("a number above 0 and at most {max}");
                self.wrong_type(v, key, &expected, other);
                return None;
            }
        };
        if n.is_nan() || n <= 0.0 {
            self.report(&v.span(), key, format!("must be above 0 (got {shown})"));
            None
        } else if n > max {
            self.report(
                &v.span(),
                key,
                format!("must be at most {max} (got {shown})"),
            );
            None
        } else {
            Some(n)
        }
    }

    /// A size in bytes: an integer, or a string such as "512 MiB", "1G", "300 KB"; zero only
    /// when `allow_zero`.
    pub(super) fn size(&mut self, v: &Value<'_>, key: &str, allow_zero: bool) -> Option<u64> {
        let bytes = match v.get_ref() {
            DeValue::Integer(_) => self.count(v, key)?,
            DeValue::String(text) => match parse_size(text) {
                Ok(bytes) => bytes,
                Err(why) => {
                    self.report(&v.span(), key, why);
                    return None;
                }
            },
            other => {
                let expected = format!("a size ({SIZE_SYNTAX})");
                self.wrong_type(v, key, &expected, other);
                return None;
            }
        };
        if bytes == 0 && !allow_zero {
            self.report(&v.span(), key, "must be more than 0 bytes");
            return None;
        }
        Some(bytes)
    }

    /// A local time "HH:MM", 00:00 to 23:59.
    pub(super) fn time_of_day(&mut self, v: &Value<'_>, key: &str) -> Option<TimeOfDay> {
        match v.get_ref() {
            DeValue::String(text) => match parse_time_of_day(text) {
                Some(t) => Some(t),
                None => {
                    self.report(
                        &v.span(),
                        key,
                        format!("{text:?} is not a time of day (expected \"HH:MM\" from \"00:00\" to \"23:59\")"),
                    );
                    None
                }
            },
            DeValue::Datetime(_) => {
                self.report(
                    &v.span(),
                    key,
                    "must be a string \"HH:MM\" (got a TOML time; put it in quotes, e.g. \"03:00\")",
                );
                None
            }
            other => {
                self.wrong_type(v, key, "a string \"HH:MM\"", other);
                None
            }
        }
    }

    fn wrong_type(&mut self, v: &Value<'_>, key: &str, expected: &str, got: &DeValue<'_>) {
        self.report(
            &v.span(),
            key,
            format!("must be {expected} (got {})", type_name(got)),
        );
    }
}

const SIZE_SYNTAX: &str =
    "a number and a unit such as \"512 MiB\", \"1 GiB\", \"300MB\", or an integer number of bytes";
const SIZE_UNITS: &str =
    "B; KB, MB, GB, TB (powers of 1000); KiB, MiB, GiB, TiB or K, M, G, T (powers of 1024)";

/// "512 MiB", "512MiB", "1G", "1.5 GB", "300 KB", "4096": bytes, rounded down. Units are
/// case-insensitive: KB = 1000, KiB = Ki = K = 1024 (systemd's reading of "K", "M", "G").
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number = number.replace('_', "");
    let unit = unit.trim_start();
    let (whole, fraction) = number.split_once('.').unwrap_or((&number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(format!("{text:?} is not a size (expected {SIZE_SYNTAX})"));
    }
    let multiplier: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000u128.pow(2),
        "gb" => 1000u128.pow(3),
        "tb" => 1000u128.pow(4),
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?} is not a size: unknown unit {unit:?} (expected {SIZE_UNITS})"
            ));
        }
    };
    let too_large = || format!("{text:?} is too large a size");
    if fraction.len() > 12 {
        return Err(format!("{text:?} has too many decimals"));
    }
    let digits: u128 = format!("{whole}{fraction}")
        .parse()
        .map_err(|_| too_large())?;
    let bytes =
        digits.checked_mul(multiplier).ok_or_else(too_large)? / 10u128.pow(fraction.len() as u32);
    u64::try_from(bytes).map_err(|_| too_large())
}

/// "HH:MM" (hour may be one digit), 00:00 to 23:59.
pub(super) fn parse_time_of_day(text: &str) -> Option<TimeOfDay> {
    let (hour, minute) = text.split_once(':')?;
    let digits = |s: &str, max_len: usize| {
        (!s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u8>().ok())
            .flatten()
    };
    let hour = digits(hour, 2)?;
    let minute = (minute.len() == 2).then(|| digits(minute, 2)).flatten()?;
    (hour < 24 && minute < 60).then_some(TimeOfDay { hour, minute })
}

/// 1-based line of byte `offset`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// `path.key`, quoting `key` TOML-style when it is not a bare key.
pub(super) fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The known key within edit distance 2 of `name`, for "did you mean".
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        // Two edits turn "root" into "pool"; short names get one.
        .filter(|(d, _)| *d <= 2 && *d * 3 <= name.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based() {
        let text = "a\nb\nc";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 2), 2);
        assert_eq!(line_of(text, 4), 3);
        assert_eq!(line_of(text, 99), 3);
    }

    #[test]
    fn keys_that_are_not_bare_are_quoted() {
        assert_eq!(join("", "pool"), "pool");
        assert_eq!(join("pool", "shop"), "pool.shop");
        assert_eq!(join("pool", "my shop"), "pool.\"my shop\"");
        assert_eq!(join("pool", "a.b"), "pool.\"a.b\"");
    }

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        let ok = [
            ("0", 0),
            ("4096", 4096),
            ("512 MiB", 512 << 20),
            ("512MiB", 512 << 20),
            ("1G", 1 << 30),
            ("1 gib", 1 << 30),
            ("2Gi", 2 << 30),
            ("1 GB", 1_000_000_000),
            ("300 KB", 300_000),
            ("300kb", 300_000),
            ("300 KiB", 300 * 1024),
            ("1.5 GiB", 3 << 29),
            ("1.5KB", 1500),
            ("10 B", 10),
            (" 7 M ", 7 << 20),
            ("1_000 MB", 1_000_000_000),
            ("16 TiB", 16 << 40),
        ];
        for (text, bytes) in ok {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "", "MiB", "-1 MiB", "1..5 MB", "1. MB", ".5 MB", "1.2.3 MB", "0x10",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("is not a size"), "{bad}: {err}");
        }
        assert!(
            parse_size("5 XB")
                .unwrap_err()
                .contains("unknown unit \"XB\"")
        );
        assert!(
            parse_size("99999999999 TiB")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            parse_size("99999999999999999999999999999999999999999")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn times_of_day_are_hh_mm() {
        assert_eq!(
            parse_time_of_day("03:00"),
            Some(TimeOfDay { hour: 3, minute: 0 })
        );
        assert_eq!(
            parse_time_of_day("3:05"),
            Some(TimeOfDay { hour: 3, minute: 5 })
        );
        assert_eq!(
            parse_time_of_day("00:00"),
            Some(TimeOfDay { hour: 0, minute: 0 })
        );
        assert_eq!(
            parse_time_of_day("23:59"),
            Some(TimeOfDay {
                hour: 23,
                minute: 59
            })
        );
        for bad in [
            "24:00", "12:60", "12:5", "12", "12:00:00", "ab:cd", "", ":", "-1:00", "012:00",
            "+1:00",
        ] {
            assert_eq!(parse_time_of_day(bad), None, "{bad}");
        }
    }

    #[test]
    fn near_misses_are_suggested() {
        let known = ["command", "workers", "queue_length"];
        assert_eq!(closest("wokers", &known), Some("workers"));
        assert_eq!(closest("queue_lenght", &known), Some("queue_length"));
        assert_eq!(closest("colour", &known), None);
        assert_eq!(closest("root", &["path", "pool"]), None);
    }
}
