//! The duration type of Istio's config fields (`timeout: 5s`, `baseEjectionTime: 3m`,
//! `perTryTimeout: 250ms`): a `google.protobuf.Duration` as Istio's YAML writes it.
//!
//! Istio accepts both the protobuf JSON form (`1.5s`) and Go's `time.ParseDuration` form (`1m30s`,
//! `100ms`, `1h`). [`Duration`] parses either into a [`std::time::Duration`] and keeps the text the
//! author wrote, so a spec serialized again reads exactly as it was written.
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration plus the text it was written as.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Duration {
    text: String,
    value: std::time::Duration,
}

/// Why a text is not a duration. The message always shows the text and how to write one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` is not a duration; write e.g. 5s, 250ms, 1m")]
    Syntax(String),
    #[error("`{0}` is negative; durations must be >= 0 (write e.g. 5s, 250ms, 1m)")]
    Negative(String),
    #[error("`{0}` is too long a duration")]
    Overflow(String),
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Nanoseconds per unit, longest suffix first so `ms` wins over `m`.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("h", 3600 * NANOS_PER_SEC),
];

impl Duration {
    /// Parses `5s`, `1.5s`, `100ms`, `1h`, `1m30s`, `0s` or `0`.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let value = parse_nanos(text).and_then(|nanos| {
            let secs = u64::try_from(nanos / NANOS_PER_SEC)
                .map_err(|_| DurationError::Overflow(text.to_string()))?;
            // The remainder is < 1e9, so it always fits.
            let sub = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
            Ok(std::time::Duration::new(secs, sub))
        })?;
        Ok(Duration { text: text.to_string(), value })
    }

    /// A duration written in the protobuf JSON form (`5s`, `0.25s`).
    pub fn from_std(value: std::time::Duration) -> Self {
        let text = if value.subsec_nanos() == 0 {
            format!("{}s", value.as_secs())
        } else {
            let frac = format!("{:09}", value.subsec_nanos());
            format!("{}.{}s", value.as_secs(), frac.trim_end_matches('0'))
        };
        Duration { text, value }
    }

    pub fn as_std(&self) -> std::time::Duration {
        self.value
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_zero(&self) -> bool {
        self.value.is_zero()
    }
}

fn parse_nanos(text: &str) -> Result<u128, DurationError> {
    let syntax = || DurationError::Syntax(text.to_string());
    if let Some(rest) = text.strip_prefix('-')
        && !rest.is_empty()
        && parse_nanos(rest).is_ok()
    {
        return Err(DurationError::Negative(text.to_string()));
    }
    let s = text.strip_prefix('+').unwrap_or(text);
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(syntax());
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(syntax());
        }
        let (unit, per) = UNITS
            .iter()
            .filter(|(u, _)| after.starts_with(u))
            .max_by_key(|(u, _)| u.len())
            .ok_or_else(syntax)?;
        rest = &after[unit.len()..];
        let overflow = || DurationError::Overflow(text.to_string());
        let int: u128 = if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| overflow())? };
        let mut nanos = int.checked_mul(*per).ok_or_else(overflow)?;
        // Fractions finer than a nanosecond are dropped, as Go does.
        let mut scale = *per;
        for d in frac_part.bytes().take(30) {
            scale /= 10;
            if scale == 0 {
                break;
            }
            nanos = nanos.checked_add(u128::from(d - b'0') * scale).ok_or_else(overflow)?;
        }
        total = total.checked_add(nanos).ok_or_else(overflow)?;
    }
    Ok(total)
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Duration::parse(s)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<std::time::Duration> for Duration {
    fn from(value: std::time::Duration) -> Self {
        Duration::from_std(value)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as 5s, 250ms or 1m")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration as Std;

    use super::*;

    fn ok(text: &str) -> Std {
        Duration::parse(text).expect("a valid duration").as_std()
    }

    #[test]
    fn parses_istio_and_go_forms() {
        assert_eq!(ok("5s"), Std::from_secs(5));
        assert_eq!(ok("1.5s"), Std::from_millis(1500));
        assert_eq!(ok("100ms"), Std::from_millis(100));
        assert_eq!(ok("1h"), Std::from_secs(3600));
        assert_eq!(ok("3m"), Std::from_secs(180));
        assert_eq!(ok("1m30s"), Std::from_secs(90));
        assert_eq!(ok("0s"), Std::ZERO);
        assert_eq!(ok("0"), Std::ZERO);
        assert_eq!(ok("250us"), Std::from_micros(250));
        assert_eq!(ok("10ns"), Std::from_nanos(10));
        assert_eq!(ok(".5s"), Std::from_millis(500));
        assert_eq!(ok("0.001s"), Std::from_millis(1));
        assert_eq!(ok("1.5h"), Std::from_secs(5400));
    }

    #[test]
    fn rejects_other_text_with_a_hint() {
        for bad in ["5 sec", "", "s", "5", "5x", "1.s.", "five seconds", "5s ", "1d"] {
            let err = Duration::parse(bad).expect_err("must be rejected").to_string();
            assert_eq!(err, format!("`{bad}` is not a duration; write e.g. 5s, 250ms, 1m"));
        }
        assert!(Duration::parse("-5s").expect_err("must be rejected").to_string().contains("negative"));
        assert!(matches!(Duration::parse("99999999999999999999999h"), Err(DurationError::Overflow(_))));
    }

    #[test]
    fn serializes_back_to_the_original_text() {
        for text in ["5s", "1.5s", "100ms", "1h", "0s", "1m30s"] {
            let d: Duration = serde_json::from_value(serde_json::json!(text)).expect("a valid duration");
            assert_eq!(serde_json::to_value(&d).expect("serializes"), serde_json::json!(text));
            assert_eq!(d.to_string(), text);
        }
    }

    #[test]
    fn serde_errors_name_the_text_and_reject_numbers() {
        let err =
            serde_json::from_value::<Duration>(serde_json::json!("5 sec")).expect_err("must be rejected");
        assert!(err.to_string().contains("`5 sec` is not a duration; write e.g. 5s"), "{err}");
        let err = serde_json::from_value::<Duration>(serde_json::json!(5)).expect_err("must be rejected");
        assert!(err.to_string().contains("a duration string"), "{err}");
    }

    #[test]
    fn from_std_writes_protobuf_form() {
        assert_eq!(Duration::from_std(Std::from_secs(5)).as_str(), "5s");
        assert_eq!(Duration::from_std(Std::from_millis(250)).as_str(), "0.25s");
        assert_eq!(Duration::parse("0.25s").expect("a valid duration").as_std(), Std::from_millis(250));
    }
}
