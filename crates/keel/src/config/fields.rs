//! Typed reads of spanned TOML values that record, rather than return, what is wrong.
//!
//! Each reader takes the value and its dotted key, and on a bad value records a [`Problem`] at
//! the value's line and returns `None`, so one pass over the file finds every problem.

use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

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

    fn wrong_type(&mut self, v: &Value<'_>, key: &str, expected: &str, got: &DeValue<'_>) {
        self.report(
            &v.span(),
            key,
            format!("must be {expected} (got {})", type_name(got)),
        );
    }
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
    fn near_misses_are_suggested() {
        let known = ["command", "workers", "queue_length"];
        assert_eq!(closest("wokers", &known), Some("workers"));
        assert_eq!(closest("queue_lenght", &known), Some("queue_length"));
        assert_eq!(closest("colour", &known), None);
        assert_eq!(closest("root", &["path", "pool"]), None);
    }
}
