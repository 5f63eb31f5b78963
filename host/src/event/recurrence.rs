//! How a task repeats, from the several ways producers say it.
//!
//! Accepted, in order of precedence:
//! - `is_recurring: false` switches recurrence off whatever else is present;
//! - a `recurrence` object: `{pattern|frequency, interval, end_date|until,
//!   max_occurrences|count}` or `{rrule}`;
//! - a `recurrence`, `recurrence_rule` or `rrule` string: a simple pattern
//!   word (`daily`, `weekly`, `biweekly`, `monthly`, `yearly`) or an RFC 5545
//!   RRULE (`FREQ=WEEKLY;BYDAY=MO,WE`, optionally prefixed `RRULE:`);
//! - flat database columns: `recurrence_pattern`, `recurrence_interval`,
//!   `recurrence_end_date`, `max_occurrences`.

use jiff::tz::TimeZone;

use super::fields::{Found, Layers, Obj, describe, join, kind, lookup, names};
use super::json::Json;
use super::{DecodeError, time};
use crate::world::{Frequency, Recurrence, SimpleRecurrence};

/// RRULE parts we accept (RFC 5545 §3.3.10).
const RRULE_PARTS: &[&str] = &[
    "FREQ",
    "UNTIL",
    "COUNT",
    "INTERVAL",
    "BYSECOND",
    "BYMINUTE",
    "BYHOUR",
    "BYDAY",
    "BYMONTHDAY",
    "BYYEARDAY",
    "BYWEEKNO",
    "BYMONTH",
    "BYSETPOS",
    "WKST",
];
const RRULE_FREQS: &[&str] = &[
    "SECONDLY", "MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY",
];

/// Decodes the recurrence of a task, `None` if it does not repeat.
pub(crate) fn decode(
    layers: &Layers<'_, '_>,
    tz: &TimeZone,
) -> Result<Option<Recurrence>, DecodeError> {
    let flag = layers
        .get(names!["isrecurring", "recurring"])
        .map(|f| f.bool())
        .transpose()?;
    if flag == Some(false) {
        return Ok(None);
    }
    let decoded = if let Some(found) = layers.get(names!["recurrence"]) {
        match found.value {
            Json::Object(map) => Some(from_object(&Obj::new(&found.field(), map), tz)?),
            Json::String(_) => Some(from_string(&found, None, None)?),
            other => {
                return Err(found.error(format!(
                    "expected an object or a string, found {}",
                    kind(other)
                )));
            }
        }
    } else if let Some(found) = layers.get(names!["recurrencerule", "rrule"]) {
        Some(from_string(&found, None, None)?)
    } else if let Some(found) = layers.get(names!["recurrencepattern", "recurrencetype"]) {
        let interval = layers.get(names!["recurrenceinterval"]);
        let until = layers.get(names!["recurrenceenddate", "recurrenceuntil"]);
        let max = layers.get(names!["maxoccurrences", "recurrencecount"]);
        Some(from_string(&found, interval, max).and_then(|r| with_tz(r, until, tz))?)
    } else {
        None
    };
    match (decoded, flag) {
        (None, Some(true)) => Err(DecodeError::field(
            join(layers.primary_path(), "is_recurring"),
            "is true but no recurrence pattern or rule was given",
        )),
        (decoded, _) => Ok(decoded),
    }
}

fn from_object(obj: &Obj<'_>, tz: &TimeZone) -> Result<Recurrence, DecodeError> {
    if let Some(rule) = lookup(obj, names!["rrule", "rule"]) {
        return from_string(&rule, None, None);
    }
    let pattern = lookup(obj, names!["pattern", "frequency", "freq", "type"]).ok_or_else(|| {
        DecodeError::field(
            join(obj.path, "pattern"),
            "missing (expected daily, weekly, monthly, yearly or an rrule)",
        )
    })?;
    let interval = lookup(obj, names!["interval", "every"]);
    let until = lookup(obj, names!["enddate", "until", "end"]);
    let max = lookup(obj, names!["maxoccurrences", "count", "occurrences"]);
    from_string(&pattern, interval, max).and_then(|r| with_tz(r, until, tz))
}

/// A pattern word or an RRULE, with the simple pattern's optional modifiers.
fn from_string(
    found: &Found<'_>,
    interval: Option<Found<'_>>,
    max: Option<Found<'_>>,
) -> Result<Recurrence, DecodeError> {
    let text = found.string()?;
    let text = text.trim();
    let upper = text.to_ascii_uppercase();
    if upper.starts_with("RRULE:") || upper.contains("FREQ=") {
        let rule = text
            .get("RRULE:".len()..)
            .filter(|_| upper.starts_with("RRULE:"))
            .unwrap_or(text);
        validate_rrule(rule).map_err(|reason| found.error(reason))?;
        return Ok(Recurrence::Rrule(rule.to_owned()));
    }
    let (frequency, base_interval) = match text.to_ascii_lowercase().as_str() {
        "daily" | "day" | "days" => (Frequency::Daily, 1),
        "weekly" | "week" | "weeks" => (Frequency::Weekly, 1),
        "biweekly" | "fortnightly" => (Frequency::Weekly, 2),
        "monthly" | "month" | "months" => (Frequency::Monthly, 1),
        "yearly" | "annually" | "year" | "years" => (Frequency::Yearly, 1),
        _ => {
            return Err(found.error(format!(
                "{} is not a recurrence pattern (expected daily, weekly, biweekly, monthly, yearly or an RRULE such as FREQ=WEEKLY;BYDAY=MO)",
                describe(found.value)
            )));
        }
    };
    let interval = interval
        .map(|f| f.positive_u32())
        .transpose()?
        .unwrap_or(1)
        .saturating_mul(base_interval);
    let max_occurrences = max.map(|f| f.positive_u32()).transpose()?;
    // `until` needs the task's time zone; `with_tz` fills it in.
    Ok(Recurrence::Simple(SimpleRecurrence {
        frequency,
        interval,
        until: None,
        max_occurrences,
    }))
}

fn with_tz(
    mut recurrence: Recurrence,
    until: Option<Found<'_>>,
    tz: &TimeZone,
) -> Result<Recurrence, DecodeError> {
    if let (Recurrence::Simple(simple), Some(until)) = (&mut recurrence, until) {
        simple.until = Some(time::instant(&until, tz)?);
    }
    Ok(recurrence)
}

/// Checks the syntax of an RRULE value: `KEY=VALUE` parts separated by `;`,
/// a known `FREQ`, numeric `INTERVAL`/`COUNT`. The plugin evaluates it.
fn validate_rrule(rule: &str) -> Result<(), String> {
    let mut freq = None;
    for part in rule.split(';').filter(|p| !p.trim().is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("RRULE part \"{part}\" is not KEY=VALUE"))?;
        let key = key.trim().to_ascii_uppercase();
        let value = value.trim();
        if !RRULE_PARTS.contains(&key.as_str()) {
            return Err(format!("RRULE part \"{key}\" is not an RFC 5545 rule part"));
        }
        match key.as_str() {
            "FREQ" => {
                let upper = value.to_ascii_uppercase();
                if !RRULE_FREQS.contains(&upper.as_str()) {
                    return Err(format!("RRULE FREQ \"{value}\" is not a known frequency"));
                }
                freq = Some(upper);
            }
            "INTERVAL" | "COUNT" if value.parse::<u32>().map_or(true, |n| n == 0) => {
                return Err(format!(
                    "RRULE {key} \"{value}\" is not a positive whole number"
                ));
            }
            _ => {}
        }
    }
    if freq.is_none() {
        return Err(format!("RRULE \"{rule}\" has no FREQ"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::json::tree;
    use serde_json::json;

    fn decode_json(value: &serde_json::Value) -> Result<Option<Recurrence>, DecodeError> {
        let Json::Object(map) = tree(value) else {
            panic!("not an object")
        };
        let obj = Obj::new("task_data", &map);
        decode(&Layers::new(&[&obj]), &TimeZone::UTC)
    }

    fn simple(frequency: Frequency, interval: u32) -> Recurrence {
        Recurrence::Simple(SimpleRecurrence {
            frequency,
            interval,
            until: None,
            max_occurrences: None,
        })
    }

    #[test]
    fn nested_object_with_nulls() {
        let r = decode_json(
            &json!({"recurrence": {"pattern": "weekly", "interval": 1, "end_date": null, "max_occurrences": null}}),
        );
        assert_eq!(r.unwrap(), Some(simple(Frequency::Weekly, 1)));
    }

    #[test]
    fn flat_database_columns() {
        let r = decode_json(&json!({
            "is_recurring": true, "recurrence_pattern": "monthly", "recurrence_interval": 3,
            "recurrence_end_date": "2026-12-31T00:00:00", "max_occurrences": 5
        }))
        .unwrap();
        assert_eq!(
            r,
            Some(Recurrence::Simple(SimpleRecurrence {
                frequency: Frequency::Monthly,
                interval: 3,
                until: Some(1_798_675_200_000),
                max_occurrences: Some(5),
            }))
        );
    }

    #[test]
    fn rule_strings() {
        assert_eq!(
            decode_json(&json!({"is_recurring": true, "recurrence_rule": "daily"})).unwrap(),
            Some(simple(Frequency::Daily, 1))
        );
        assert_eq!(
            decode_json(&json!({"rrule": "RRULE:FREQ=WEEKLY;BYDAY=MO,WE"})).unwrap(),
            Some(Recurrence::Rrule("FREQ=WEEKLY;BYDAY=MO,WE".into()))
        );
        assert_eq!(
            decode_json(&json!({"recurrence": "biweekly"})).unwrap(),
            Some(simple(Frequency::Weekly, 2))
        );
    }

    #[test]
    fn off_switch_wins() {
        assert_eq!(
            decode_json(&json!({"is_recurring": false, "recurrence_rule": "daily"})).unwrap(),
            None
        );
        assert_eq!(decode_json(&json!({"title": "x"})).unwrap(), None);
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            (
                json!({"recurrence_rule": "fortnightly-ish"}),
                "task_data.recurrence_rule: \"fortnightly-ish\" is not a recurrence pattern",
            ),
            (
                json!({"rrule": "FREQ=HOURLYISH"}),
                "task_data.rrule: RRULE FREQ \"HOURLYISH\" is not a known frequency",
            ),
            (
                json!({"rrule": "FREQ=DAILY;INTERVAL=0"}),
                "task_data.rrule: RRULE INTERVAL \"0\" is not a positive whole number",
            ),
            (
                json!({"rrule": "FREQ=DAILY;FOO=1"}),
                "task_data.rrule: RRULE part \"FOO\" is not an RFC 5545 rule part",
            ),
            (
                json!({"is_recurring": true}),
                "task_data.is_recurring: is true but no recurrence pattern or rule was given",
            ),
            (
                json!({"recurrence": {"pattern": "weekly", "interval": -2}}),
                "task_data.recurrence.interval: -2 is not a positive whole number",
            ),
        ];
        for (input, want) in cases {
            let err = decode_json(&input).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}\n  wanted: {want}");
        }
    }
}
