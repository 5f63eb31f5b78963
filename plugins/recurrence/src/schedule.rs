//! Next-occurrence arithmetic in the task's time zone.

use chrono::{DateTime, Datelike, Duration, LocalResult, Months, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use todo_plugin_sdk::{Frequency, Timestamp};

/// Parses an IANA zone name; absent means UTC.
pub fn time_zone(name: Option<&str>) -> Result<Tz, String> {
    match name {
        None => Ok(Tz::UTC),
        Some(name) => name
            .parse::<Tz>()
            .map_err(|_| format!("unknown time zone {name:?}")),
    }
}

fn local(ms: Timestamp, tz: Tz) -> Option<NaiveDateTime> {
    DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.with_timezone(&tz).naive_local())
}

/// A local time back to an instant; in a DST gap, the first valid instant
/// after it; in an overlap, the earlier one.
fn instant(naive: NaiveDateTime, tz: Tz) -> Option<Timestamp> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.timestamp_millis()),
        LocalResult::None => instant(naive + Duration::hours(1), tz),
    }
}

/// The due time of occurrence `occurrence + 1`, where occurrence 1 was due
/// at `start`: `start + occurrence × interval` units in local time.
/// Months and years clamp to the end of shorter months from the start's
/// day, so the series never drifts.
pub fn next_simple(
    start: Timestamp,
    frequency: Frequency,
    interval: u32,
    occurrence: u32,
    tz: Tz,
) -> Option<Timestamp> {
    let start_local = local(start, tz)?;
    let steps = interval.max(1).checked_mul(occurrence)?;
    let next = match frequency {
        Frequency::Daily => start_local.checked_add_signed(Duration::days(i64::from(steps)))?,
        Frequency::Weekly => start_local.checked_add_signed(Duration::weeks(i64::from(steps)))?,
        Frequency::Monthly => start_local.checked_add_months(Months::new(steps))?,
        Frequency::Yearly => start_local.checked_add_months(Months::new(steps.checked_mul(12)?))?,
    };
    instant(next, tz)
}

/// The occurrence of a simple pattern that follows occurrence
/// `occurrence`, done when it was due at `due`: the first of the series'
/// dates ([`next_simple`]) both after `due` and after occurrence
/// `occurrence`'s place, with its number. An occurrence whose due date was
/// moved later, past dates of the series, is followed by the first date
/// after it, not by a date already past (as calendars skip missed
/// meetings).
pub fn next_simple_after(
    start: Timestamp,
    frequency: Frequency,
    interval: u32,
    occurrence: u32,
    due: Timestamp,
    tz: Tz,
) -> Option<Next> {
    let (from, to) = (local(start, tz)?, local(due, tz)?);
    let interval = interval.max(1);
    // Whole periods from the start's date to the due date's: the date
    // before that many is before `due`, so the search starts there.
    let periods = match frequency {
        Frequency::Daily => (to.date() - from.date()).num_days() / i64::from(interval),
        Frequency::Weekly => (to.date() - from.date()).num_days() / (7 * i64::from(interval)),
        Frequency::Monthly => {
            let months = (i64::from(to.year()) - i64::from(from.year())) * 12
                + i64::from(to.month())
                - i64::from(from.month());
            months / i64::from(interval)
        }
        Frequency::Yearly => (i64::from(to.year()) - i64::from(from.year())) / i64::from(interval),
    };
    let before_due =
        u32::try_from(periods.saturating_sub(1)).unwrap_or(if periods > 0 { u32::MAX } else { 0 });
    let first = occurrence.max(before_due);
    // Two or three steps from there at most; a bound all the same.
    (first..first.saturating_add(8)).find_map(|done| {
        let at = next_simple(start, frequency, interval, done, tz)?;
        (at > due).then(|| Next {
            at,
            occurrence: done.saturating_add(1),
        })
    })
}

/// The next occurrence of a recurring task: its due time and its number in
/// the series (1 is the series start's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    pub at: Timestamp,
    pub occurrence: u32,
}

/// The occurrence of `rule`, anchored at `start` in `tz` (occurrence 1 was
/// due at `start`), that follows occurrence `occurrence`, done when it was
/// due at `due`. `Ok(None)` when the rule has no more.
///
/// The rule is walked from the series start and its dates counted, so the
/// series keeps its phase and its count when an occurrence's due date was
/// moved: a fortnightly Monday series stays on its Mondays after one was
/// moved to a Tuesday, and one moved earlier is not followed by its own
/// date again. The next is the first date both after `due` and after
/// occurrence `occurrence`'s place; its number is its place in the series
/// (dates skipped because `due` was moved past them are not numbered
/// twice). rrule cannot jump ahead — it walks every period from its
/// DTSTART — so that walk is bounded ([`MAX_RRULE_PERIODS`],
/// [`MAX_RRULE_DATES_WALKED`], [`MAX_RRULE_OCCURRENCES`]). Past the bounds
/// a rule with `COUNT` is refused (its count runs from the start), and one
/// without is walked from the last period of the series' phase before
/// `due` (sub-daily, daily and weekly rules; monthly and yearly ones, whose
/// bounds are centuries, from `due`, taking the BY parts they leave out
/// from it), taking its first date after `due` as number `occurrence + 1`:
/// an hourly series years old costs no more than a new one.
pub fn next_rrule(
    rule: &str,
    start: Timestamp,
    due: Timestamp,
    occurrence: u32,
    tz: Tz,
) -> Result<Option<Next>, String> {
    let parsed = rule
        .parse::<rrule::RRule<rrule::Unvalidated>>()
        .map_err(|e| format!("invalid RRULE {rule:?}: {e}"))?;
    let dates_a_step = dates_a_step(&parsed);
    if dates_a_step > MAX_RRULE_DATES_A_STEP {
        return Err(format!(
            "RRULE {rule:?} makes up to {dates_a_step} dates a period (days in a period × BYHOUR × BYMINUTE × BYSECOND; at most {MAX_RRULE_DATES_A_STEP})"
        ));
    }
    // Ended (and rrule refuses a DTSTART after UNTIL).
    if parsed
        .get_until()
        .is_some_and(|until| until.timestamp_millis() <= due.max(start))
    {
        return Ok(None);
    }
    // COUNT occurrences, the series start's the first (RFC 5545; rrule
    // leaves out a start the rule does not match, and counts the rest).
    let count = parsed.get_count();
    if count.is_some_and(|count| occurrence >= count) {
        return Ok(None);
    }
    let series = Rule {
        text: rule,
        parsed,
        dates_a_step,
    };
    let periods = periods_between(&series.parsed, start, due);
    let walkable = periods <= MAX_RRULE_PERIODS
        && periods.saturating_mul(dates_a_step as u64) <= MAX_RRULE_DATES_WALKED;
    if walkable {
        match walk(&series, start, due, Some(occurrence), tz)? {
            Walk::Reached(next) => {
                return Ok(next.filter(|next| count.is_none_or(|count| next.occurrence <= count)));
            }
            Walk::TooLong if count.is_some() => {}
            Walk::TooLong => return from_due(&series, start, due, occurrence, tz),
        }
    }
    if count.is_some() {
        return Err(format!(
            "RRULE {rule:?} cannot be counted from the series start to occurrence {occurrence} and the due date within its bounds (at most {MAX_RRULE_OCCURRENCES} occurrences, {MAX_RRULE_PERIODS} periods, {MAX_RRULE_DATES_WALKED} dates): start the series later"
        ));
    }
    from_due(&series, start, due, occurrence, tz)
}

/// A parsed RRULE, with its text for messages and the most dates it makes
/// a period.
struct Rule<'a> {
    text: &'a str,
    parsed: rrule::RRule<rrule::Unvalidated>,
    dates_a_step: usize,
}

/// The first date of `rule` after `due`, walked from the last period of
/// the series' phase before it, as number `occurrence + 1`.
fn from_due(
    rule: &Rule<'_>,
    start: Timestamp,
    due: Timestamp,
    occurrence: u32,
    tz: Tz,
) -> Result<Option<Next>, String> {
    let anchor = in_phase_before(&rule.parsed, start, due, tz);
    match walk(rule, anchor, due, None, tz)? {
        Walk::Reached(next) => Ok(next.map(|next| Next {
            at: next.at,
            occurrence: occurrence.saturating_add(1),
        })),
        Walk::TooLong => Err(format!(
            "RRULE {:?} has more than {MAX_RRULE_OCCURRENCES} occurrences before one after the due date",
            rule.text
        )),
    }
}

/// The start of the last period of `rule`'s frequency and interval,
/// counted from `start`, at or before `due`: a DTSTART there keeps the
/// series' time of day (and weekday), which rrule takes from DTSTART for
/// the BY parts a rule leaves out. For sub-daily rules in absolute time,
/// for daily and weekly ones in local days; monthly and yearly ones (their
/// bounds are centuries) from `due`.
fn in_phase_before(
    rule: &rrule::RRule<rrule::Unvalidated>,
    start: Timestamp,
    due: Timestamp,
    tz: Tz,
) -> Timestamp {
    if due <= start {
        return start;
    }
    let interval = i64::from(rule.get_interval().max(1));
    match rule.get_freq() {
        rrule::Frequency::Secondly | rrule::Frequency::Minutely | rrule::Frequency::Hourly => {
            // Fixed lengths in absolute time.
            let Ok(step_ms) = i64::try_from(period_ms(rule)) else {
                return due;
            };
            start + (due - start) / step_ms * step_ms
        }
        rrule::Frequency::Daily | rrule::Frequency::Weekly => {
            let days = if rule.get_freq() == rrule::Frequency::Weekly {
                7
            } else {
                1
            } * interval;
            let (Some(from), Some(to)) = (local(start, tz), local(due, tz)) else {
                return due;
            };
            let steps = (to.date() - from.date()).num_days() / days;
            from.checked_add_signed(Duration::days(steps * days))
                .and_then(|at| instant(at, tz))
                .filter(|at| *at <= due)
                .or_else(|| {
                    from.checked_add_signed(Duration::days((steps - 1).max(0) * days))
                        .and_then(|at| instant(at, tz))
                })
                .unwrap_or(due)
        }
        rrule::Frequency::Monthly | rrule::Frequency::Yearly => due,
    }
}

/// How a walk of an RRULE's occurrences ended.
enum Walk {
    /// At the date sought, or at the rule's end.
    Reached(Option<Next>),
    /// At [`MAX_RRULE_OCCURRENCES`] dates, or [`MAX_RRULE_PERIODS`] periods
    /// past `due`, first.
    TooLong,
}

/// Walks `rule` anchored at `anchor` to its first date after `due` that
/// is also, when `occurrence` is given (the anchor then being occurrence
/// 1's date), past occurrence `occurrence`'s place.
fn walk(
    rule: &Rule<'_>,
    anchor: Timestamp,
    due: Timestamp,
    occurrence: Option<u32>,
    tz: Tz,
) -> Result<Walk, String> {
    // A walk past `due` is bounded as the walk to it is: an `occurrence`
    // far ahead of the dates (it comes with the event) would otherwise
    // walk a rarely matching rule for ever. Below rrule's last year, too,
    // where its dates would end as if the rule had.
    let periods = MAX_RRULE_PERIODS.min(MAX_RRULE_DATES_WALKED / (rule.dates_a_step as u64).max(1));
    let horizon = due
        .saturating_add(
            i64::try_from(periods.saturating_mul(period_ms(&rule.parsed))).unwrap_or(i64::MAX),
        )
        .min(LAST_WALKED);
    // DTSTART is given as an instant in the zone, not as local text: a start
    // in a DST overlap (01:30 on a fall-back night) is ambiguous as text,
    // and the rrule crate refuses it. Whole seconds, as RFC 5545 has them.
    let anchor_s = anchor.div_euclid(1000);
    let dtstart = DateTime::<Utc>::from_timestamp(anchor_s, 0)
        .ok_or("start out of range")?
        .with_timezone(&rrule::Tz::Tz(tz));
    // Limited: a rule whose BY parts never match (`BYMONTH=2;BYMONTHDAY=30`)
    // ends after rrule's bound on empty rounds instead of looping.
    let set = rule
        .parsed
        .clone()
        .build(dtstart)
        .map_err(|e| format!("invalid RRULE {:?}: {e}", rule.text))?
        .limit();
    // Occurrence 1 is the anchor, which is the first date unless the rule
    // leaves out a start it does not match: then the dates are numbered
    // from 2.
    let mut first_number = 1;
    for (walked, date) in (&set).into_iter().enumerate() {
        let ms = date.timestamp_millis();
        if walked == 0 && date.timestamp() != anchor_s {
            first_number = 2;
        }
        let number = u32::try_from(walked)
            .unwrap_or(u32::MAX)
            .saturating_add(first_number);
        if ms > due && occurrence.is_none_or(|done| number > done) {
            return Ok(Walk::Reached(Some(Next {
                at: ms,
                occurrence: number,
            })));
        }
        if walked + 1 >= MAX_RRULE_OCCURRENCES || ms > horizon {
            return Ok(Walk::TooLong);
        }
    }
    Ok(Walk::Reached(None))
}

/// The length of one period of `rule`'s frequency and interval, at least
/// (months taken as 28 days, years as 365).
fn period_ms(rule: &rrule::RRule<rrule::Unvalidated>) -> u64 {
    const SECOND: u64 = 1000;
    const DAY: u64 = 86_400 * SECOND;
    let unit = match rule.get_freq() {
        rrule::Frequency::Secondly => SECOND,
        rrule::Frequency::Minutely => 60 * SECOND,
        rrule::Frequency::Hourly => 3_600 * SECOND,
        rrule::Frequency::Daily => DAY,
        rrule::Frequency::Weekly => 7 * DAY,
        rrule::Frequency::Monthly => 28 * DAY,
        rrule::Frequency::Yearly => 365 * DAY,
    };
    unit * u64::from(rule.get_interval().max(1))
}

/// Periods of `rule`'s frequency and interval from `start` to `due`, at
/// most: periods are aligned to the calendar (a week, a month), so one is
/// counted on each side.
fn periods_between(
    rule: &rrule::RRule<rrule::Unvalidated>,
    start: Timestamp,
    due: Timestamp,
) -> u64 {
    let span = u64::try_from(due.saturating_sub(start)).unwrap_or(0);
    span / period_ms(rule) + 2
}

/// 9000-01-01T00:00:00Z: no walk goes past it (rrule's dates end with the
/// year 9999).
const LAST_WALKED: Timestamp = 221_845_392_000_000;

/// Periods an RRULE is walked through, at most, from the series start to
/// the due date: rrule walks every period from its start, so a rule
/// matching rarely (`FREQ=DAILY;BYMONTH=2;BYMONTHDAY=29`) from year 1 would
/// otherwise spend the call's whole deadline, event after event, and count
/// against the plugin. A daily series of 27 years is within it.
pub const MAX_RRULE_PERIODS: u64 = 10_000;

/// Dates an RRULE builds, at most, walking from the series start to the
/// due date (periods × dates a period).
pub const MAX_RRULE_DATES_WALKED: u64 = 1_000_000;

/// Occurrences of an RRULE walked, at most, to the one sought.
pub const MAX_RRULE_OCCURRENCES: usize = 10_000;

/// Dates an RRULE may make in one period: rrule builds each period's dates
/// (every day of it × every time of day named) before it yields one, so
/// `FREQ=YEARLY` with every hour and minute would build half a million at
/// once. Twice a day every day of a year is well within it.
pub const MAX_RRULE_DATES_A_STEP: usize = 50_000;

/// The most dates `rule` can make in one period of its frequency.
fn dates_a_step(rule: &rrule::RRule<rrule::Unvalidated>) -> usize {
    let days = match rule.get_freq() {
        rrule::Frequency::Yearly => 366,
        rrule::Frequency::Monthly => 31,
        rrule::Frequency::Weekly => 7,
        _ => 1,
    };
    [
        rule.get_by_hour(),
        rule.get_by_minute(),
        rule.get_by_second(),
    ]
    .iter()
    .map(|by| by.len().max(1))
    .product::<usize>()
        * days
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`next_rrule`]'s due time alone.
    fn next_at(
        rule: &str,
        start: Timestamp,
        due: Timestamp,
        occurrence: u32,
        tz: Tz,
    ) -> Result<Option<Timestamp>, String> {
        next_rrule(rule, start, due, occurrence, tz).map(|next| next.map(|next| next.at))
    }

    fn at(tz: Tz, y: i32, m: u32, d: u32, h: u32, min: u32) -> Timestamp {
        tz.with_ymd_and_hms(y, m, d, h, min, 0)
            .single()
            .expect("valid local time")
            .timestamp_millis()
    }

    #[test]
    fn an_rrule_started_long_ago_is_walked_from_its_due_date() {
        let tz = Tz::UTC;
        let due = at(tz, 2026, 1, 1, 0, 0);
        // Without COUNT and past the bound, from the due date: cheap
        // however old the series.
        let next = next_at("FREQ=SECONDLY", at(tz, 1, 1, 1, 0, 0), due, 1, tz).unwrap();
        assert_eq!(next, Some(due + 1000));
        // ... from the last hour of its phase before it: still at :30.
        let next = next_at("FREQ=HOURLY", at(tz, 2024, 1, 1, 0, 30), due, 17_520, tz).unwrap();
        assert_eq!(next, Some(at(tz, 2026, 1, 1, 0, 30)));
        // Within the bound, from the start: its 09:00 holds.
        let next = next_at(
            "FREQ=WEEKLY;BYDAY=MO,WE",
            at(tz, 1990, 1, 1, 9, 0),
            due,
            3758,
            tz,
        );
        // 2026-01-01 is a Thursday.
        assert_eq!(next.unwrap(), Some(at(tz, 2026, 1, 5, 9, 0)));
        // With COUNT, from the series start, within the budget.
        let err = next_at(
            "FREQ=DAILY;COUNT=50000",
            at(tz, 1900, 1, 1, 0, 0),
            due,
            46_022,
            tz,
        );
        assert!(err.unwrap_err().contains("start the series later"));
        let next = next_at(
            "FREQ=DAILY;COUNT=9600",
            at(tz, 2000, 1, 1, 9, 0),
            due,
            9497,
            tz,
        );
        assert_eq!(next.unwrap(), Some(at(tz, 2026, 1, 1, 9, 0)));
        let ended = next_at("FREQ=DAILY;COUNT=3", at(tz, 2025, 12, 1, 9, 0), due, 3, tz);
        assert_eq!(ended.unwrap(), None);
        // A rule matching rarely, from year 1: walked from the due date, not
        // through two thousand years of days.
        let leap = next_at(
            "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=29",
            at(tz, 1, 2, 1, 0, 0),
            due,
            500,
            tz,
        );
        assert_eq!(leap.unwrap(), Some(at(tz, 2028, 2, 29, 0, 0)));
        // An occurrence number far ahead of the dates (it comes with the
        // event) walks no further than the bound past the due date.
        let leap_start = at(tz, 2000, 2, 29, 0, 0);
        let after = at(tz, 2000, 3, 1, 0, 0);
        let far = next_rrule(
            "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=29",
            leap_start,
            after,
            1000,
            tz,
        );
        assert_eq!(
            far.unwrap(),
            Some(Next {
                at: at(tz, 2004, 2, 29, 0, 0),
                occurrence: 1001
            })
        );
        // Its UNTIL passed: ended, however far back it started.
        let until = next_at(
            "FREQ=SECONDLY;UNTIL=20200101T000000Z",
            at(tz, 2000, 1, 1, 0, 0),
            due,
            9,
            tz,
        );
        assert_eq!(until.unwrap(), None);
    }

    /// An occurrence whose due date was moved does not move the series,
    /// nor is it followed by its own date again: the next is the rule's
    /// date after it, counted and numbered from the series start.
    #[test]
    fn an_rrule_series_keeps_its_phase_and_count_when_an_occurrence_moved() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // Every other Monday at 09:00 from 2026-01-05: the 19th, 2 Feb, ...
        let start = at(tz, 2026, 1, 5, 9, 0);
        let fortnightly =
            |rule: &str, due, occurrence| next_rrule(rule, start, due, occurrence, tz).unwrap();
        let third = Some(Next {
            at: at(tz, 2026, 2, 2, 9, 0),
            occurrence: 3,
        });
        // The 19th's occurrence (the 2nd) moved to Tuesday the 20th, 14:00.
        let moved = at(tz, 2026, 1, 20, 14, 0);
        assert_eq!(fortnightly("FREQ=WEEKLY;INTERVAL=2", moved, 2), third);
        // Moved earlier, to the Friday before: not the 19th again.
        let early = at(tz, 2026, 1, 16, 9, 0);
        assert_eq!(fortnightly("FREQ=WEEKLY;INTERVAL=2", early, 2), third);
        // ... nor a third of a series of two.
        assert_eq!(
            fortnightly("FREQ=WEEKLY;INTERVAL=2;COUNT=2", early, 2),
            None
        );
        // The first one done late, past the second's date: the third, so
        // numbered (the second's place is not given twice).
        assert_eq!(fortnightly("FREQ=WEEKLY;INTERVAL=2", moved, 1), third);
        let done_early = at(tz, 2026, 1, 5, 8, 0);
        let second = Some(Next {
            at: at(tz, 2026, 1, 19, 9, 0),
            occurrence: 2,
        });
        assert_eq!(fortnightly("FREQ=WEEKLY;INTERVAL=2", done_early, 1), second);
        // That third moved to the 30th and done: the fourth, not the 2nd of
        // February again.
        let third_moved = at(tz, 2026, 1, 30, 9, 0);
        let next = fortnightly("FREQ=WEEKLY;INTERVAL=2", third_moved, 3);
        assert_eq!(
            next.map(|n| (n.at, n.occurrence)),
            Some((at(tz, 2026, 2, 16, 9, 0), 4))
        );

        // Monthly on the 31st: the 2nd (31 March) moved to the 30th; the
        // months without a 31st are skipped still.
        let start = at(tz, 2026, 1, 31, 9, 0);
        let moved = at(tz, 2026, 3, 30, 9, 0);
        let next = next_at("FREQ=MONTHLY", start, moved, 2, tz).unwrap();
        assert_eq!(next, Some(at(tz, 2026, 5, 31, 9, 0)));

        // A start the rule does not match is occurrence 1 all the same, and
        // counts towards COUNT.
        let thursday = at(tz, 2026, 1, 1, 9, 0);
        let monday = at(tz, 2026, 1, 5, 9, 0);
        let rule = "FREQ=WEEKLY;BYDAY=MO,WE";
        let next = next_rrule(rule, thursday, thursday, 1, tz).unwrap();
        assert_eq!(
            next,
            Some(Next {
                at: monday,
                occurrence: 2
            })
        );
        let wednesday = Some(at(tz, 2026, 1, 7, 9, 0));
        assert_eq!(next_at(rule, thursday, monday, 2, tz).unwrap(), wednesday);
        let two = "FREQ=WEEKLY;BYDAY=MO,WE;COUNT=2";
        assert_eq!(
            next_at(two, thursday, thursday, 1, tz).unwrap(),
            Some(monday)
        );
        assert_eq!(next_at(two, thursday, monday, 2, tz).unwrap(), None);
    }

    #[test]
    fn an_rrule_making_too_many_dates_a_period_is_refused() {
        let tz = Tz::UTC;
        let every = |n: u32| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let rule = format!("FREQ=YEARLY;BYHOUR={};BYMINUTE={}", every(24), every(60));
        let start = at(tz, 2026, 1, 1, 0, 0);
        let err = next_at(&rule, start, start, 1, tz).unwrap_err();
        assert!(err.contains("makes up to 527040 dates a period"), "{err}");
        // Every minute of a day, daily, and twice a day yearly are fine.
        let daily = format!("FREQ=DAILY;BYHOUR={};BYMINUTE={}", every(24), every(60));
        let next = next_at(&daily, start, start, 1, tz);
        assert_eq!(next.unwrap(), Some(at(tz, 2026, 1, 1, 0, 1)));
        let next = next_at(
            "FREQ=YEARLY;BYHOUR=9,17;BYMINUTE=0;BYSECOND=0",
            start,
            start,
            1,
            tz,
        );
        assert_eq!(next.unwrap(), Some(at(tz, 2026, 1, 1, 9, 0)));
    }

    #[test]
    fn an_rrule_that_never_matches_ends() {
        let tz = Tz::UTC;
        let start = at(tz, 2026, 1, 1, 0, 0);
        let next = next_at("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", start, start, 1, tz);
        assert_eq!(next.unwrap(), None);
    }

    #[test]
    fn monthly_clamps_to_month_end_without_drift() {
        let tz = Tz::UTC;
        let start = at(tz, 2026, 1, 31, 9, 0);
        let feb = next_simple(start, Frequency::Monthly, 1, 1, tz).unwrap();
        assert_eq!(feb, at(tz, 2026, 2, 28, 9, 0));
        let mar = next_simple(start, Frequency::Monthly, 1, 2, tz).unwrap();
        assert_eq!(mar, at(tz, 2026, 3, 31, 9, 0));
        let apr = next_simple(start, Frequency::Monthly, 1, 3, tz).unwrap();
        assert_eq!(apr, at(tz, 2026, 4, 30, 9, 0));
    }

    /// A simple pattern whose occurrence was moved keeps its dates, never
    /// gives a date already past the moved one, and numbers the next by its
    /// place.
    #[test]
    fn a_simple_series_skips_dates_a_moved_occurrence_passed() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // Daily at 09:00 from 1 January: the 5th is occurrence 5.
        let start = at(tz, 2026, 1, 1, 9, 0);
        let daily =
            |occurrence, due| next_simple_after(start, Frequency::Daily, 1, occurrence, due, tz);
        let next = |d, occurrence| {
            Some(Next {
                at: at(tz, 2026, 1, d, 9, 0),
                occurrence,
            })
        };
        // On time, or done early: the next date.
        assert_eq!(daily(5, at(tz, 2026, 1, 5, 9, 0)), next(6, 6));
        assert_eq!(daily(5, at(tz, 2026, 1, 3, 9, 0)), next(6, 6));
        // Moved to the 8th, noon: the 9th, the 9th occurrence.
        assert_eq!(daily(5, at(tz, 2026, 1, 8, 12, 0)), next(9, 9));
        // Monthly from 31 January; the 2nd (28 February) moved to 10 May:
        // 31 May, the 5th.
        let start = at(tz, 2026, 1, 31, 9, 0);
        let moved = at(tz, 2026, 5, 10, 9, 0);
        assert_eq!(
            next_simple_after(start, Frequency::Monthly, 1, 2, moved, tz),
            Some(Next {
                at: at(tz, 2026, 5, 31, 9, 0),
                occurrence: 5
            })
        );
        // Yearly every other year from 29 February 2024, moved to 2027.
        let start = at(tz, 2024, 2, 29, 9, 0);
        let moved = at(tz, 2027, 3, 1, 9, 0);
        assert_eq!(
            next_simple_after(start, Frequency::Yearly, 2, 1, moved, tz),
            Some(Next {
                at: at(tz, 2028, 2, 29, 9, 0),
                occurrence: 3
            })
        );
    }

    #[test]
    fn daily_keeps_local_time_across_dst() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // DST starts in Berlin on 2026-03-29.
        let start = at(tz, 2026, 3, 28, 9, 0);
        let next = next_simple(start, Frequency::Daily, 1, 1, tz).unwrap();
        assert_eq!(next, at(tz, 2026, 3, 29, 9, 0));
        assert_eq!(next - start, 23 * 3_600_000, "the DST day is 23 hours long");
    }

    #[test]
    fn intervals_and_years() {
        let tz = Tz::UTC;
        let start = at(tz, 2024, 2, 29, 8, 0);
        assert_eq!(
            next_simple(start, Frequency::Yearly, 1, 1, tz).unwrap(),
            at(tz, 2025, 2, 28, 8, 0)
        );
        assert_eq!(
            next_simple(start, Frequency::Yearly, 1, 4, tz).unwrap(),
            at(tz, 2028, 2, 29, 8, 0)
        );
        assert_eq!(
            next_simple(start, Frequency::Weekly, 2, 1, tz).unwrap(),
            at(tz, 2024, 3, 14, 8, 0)
        );
    }

    #[test]
    fn rrule_by_day_in_time_zone() {
        let tz: Tz = "America/New_York".parse().unwrap();
        // Monday 2026-01-26 09:00 New York; next is Wednesday 09:00.
        let start = at(tz, 2026, 1, 26, 9, 0);
        let next = next_at("FREQ=WEEKLY;BYDAY=MO,WE", start, start, 1, tz).unwrap();
        assert_eq!(next, Some(at(tz, 2026, 1, 28, 9, 0)));
        // From Wednesday, the next is the following Monday.
        let next = next_at("FREQ=WEEKLY;BYDAY=MO,WE", start, next.unwrap(), 2, tz).unwrap();
        assert_eq!(next, Some(at(tz, 2026, 2, 2, 9, 0)));
    }

    #[test]
    fn rrule_starting_in_a_dst_overlap() {
        // 01:00 on the night New York falls back happens twice.
        let tz: Tz = "America/New_York".parse().unwrap();
        let start = 941_346_000_000; // 1999-10-31T05:00:00Z = 01:00 EDT
        let next = next_at("FREQ=DAILY;INTERVAL=1", start, start, 1, tz).unwrap();
        assert_eq!(next, Some(at(tz, 1999, 11, 1, 1, 0)));
    }

    #[test]
    fn rrule_count_ends_the_series() {
        let tz = Tz::UTC;
        let start = at(tz, 2026, 1, 1, 9, 0);
        let second = at(tz, 2026, 1, 2, 9, 0);
        assert_eq!(
            next_at("FREQ=DAILY;COUNT=2", start, start, 1, tz).unwrap(),
            Some(second)
        );
        assert_eq!(
            next_at("FREQ=DAILY;COUNT=2", start, second, 2, tz).unwrap(),
            None
        );
        assert!(next_at("FREQ=NEVER", start, start, 1, tz).is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn zone() -> impl Strategy<Value = Tz> {
            prop_oneof![
                Just(Tz::UTC),
                Just(Tz::Europe__Berlin),
                Just(Tz::America__New_York),
                Just(Tz::Australia__Lord_Howe),
                Just(Tz::Asia__Kathmandu),
            ]
        }

        fn frequency() -> impl Strategy<Value = Frequency> {
            prop_oneof![
                Just(Frequency::Daily),
                Just(Frequency::Weekly),
                Just(Frequency::Monthly),
                Just(Frequency::Yearly),
            ]
        }

        /// 1990 to 2090, on a whole minute.
        fn start() -> impl Strategy<Value = Timestamp> {
            (631_152_000_i64..3_786_912_000).prop_map(|s| s / 60 * 60_000)
        }

        proptest! {
            /// Each occurrence of a simple pattern is after the one before.
            #[test]
            fn simple_occurrences_only_move_forward(
                start in start(), frequency in frequency(), interval in 1_u32..30,
                occurrence in 0_u32..60, tz in zone(),
            ) {
                let this = next_simple(start, frequency, interval, occurrence, tz);
                let next = next_simple(start, frequency, interval, occurrence + 1, tz);
                if let (Some(this), Some(next)) = (this, next) {
                    prop_assert!(next > this, "{this} then {next}");
                }
            }

            /// An RRULE's next occurrence is after the current one and never
            /// after its UNTIL — from any start, DST overlaps included (the
            /// long run found starts in a fall-back hour rejected as
            /// ambiguous).
            #[test]
            fn rrule_occurrences_move_forward_and_stop_at_until(
                start in start(), tz in zone(),
                freq in prop_oneof![Just("DAILY"), Just("WEEKLY"), Just("MONTHLY"), Just("YEARLY")],
                interval in 1_u32..5, until_days in 1_i64..800, by_day in any::<bool>(),
            ) {
                let until = start + until_days * 86_400_000;
                let until_text = DateTime::<Utc>::from_timestamp_millis(until)
                    .unwrap()
                    .format("%Y%m%dT%H%M%SZ");
                let by_day = if by_day && freq == "WEEKLY" { ";BYDAY=MO,TH" } else { "" };
                let rule = format!("FREQ={freq};INTERVAL={interval}{by_day};UNTIL={until_text}");
                let mut due = start;
                for occurrence in 1..=5 {
                    match super::next_at(&rule, start, due, occurrence, tz).map_err(TestCaseError::fail)? {
                        Some(next) => {
                            prop_assert!(next > due, "{rule}: {next} after {due}");
                            prop_assert!(next <= until, "{rule}: {next} past UNTIL {until}");
                            due = next;
                        }
                        None => break,
                    }
                }
            }
        }
    }
}
