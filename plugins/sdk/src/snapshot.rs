//! Serde-ready snapshots of tasks and events: the generated WIT types are
//! plain records without serde, so these mirror them with JSON-friendly
//! field values — lower-case enum names and RFC 3339 times. Use them to
//! keep a task in state or to put it in an emitted record.
//!
//! A task snapshot serialises as
//! `{"id", "user_id", "title", "description", "completed", "priority",
//! "tags", "due", "remind_at", "recurrence", "series_id", "occurrence",
//! "series_start", "time_zone", "created_at", "updated_at", "completed_at"}`
//! (absent values as `null`); a recurrence as
//! `{"frequency", "interval", "until", "max_occurrences"}` or
//! `{"rrule"}`.

use serde::{Deserialize, Serialize};

use crate::{Recurrence, Task, TaskEvent, rfc3339};

/// A [`Task`] as JSON.
// The fields mirror the WIT record's, documented in `wit/plugin.wit`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSnapshot {
    pub id: String,
    pub user_id: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub completed: bool,
    /// `low`, `medium`, `high` or `urgent`.
    pub priority: Option<String>,
    pub tags: Vec<String>,
    pub due: Option<String>,
    pub remind_at: Option<String>,
    pub recurrence: Option<RecurrenceSnapshot>,
    pub series_id: Option<String>,
    pub occurrence: Option<u32>,
    pub series_start: Option<String>,
    pub time_zone: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub completed_at: Option<String>,
}

/// A [`Recurrence`] as JSON.
// The fields mirror the WIT record's, documented in `wit/plugin.wit`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RecurrenceSnapshot {
    /// A simple pattern.
    Simple {
        /// `daily`, `weekly`, `monthly` or `yearly`.
        frequency: String,
        interval: u32,
        until: Option<String>,
        max_occurrences: Option<u32>,
    },
    /// An RFC 5545 rule.
    Rrule {
        /// The rule, e.g. `FREQ=WEEKLY;BYDAY=MO`.
        rrule: String,
    },
}

/// A [`TaskEvent`] as JSON.
// The fields mirror the WIT record's, documented in `wit/plugin.wit`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSnapshot {
    pub id: String,
    /// `created`, `updated`, `completed` or `deleted`.
    pub kind: String,
    pub occurred_at: String,
    pub source: Option<String>,
    pub task: TaskSnapshot,
    pub previous: Option<TaskSnapshot>,
}

impl From<&Task> for TaskSnapshot {
    fn from(task: &Task) -> Self {
        Self {
            id: task.id.clone(),
            user_id: task.user_id.clone(),
            title: task.title.clone(),
            description: task.description.clone(),
            completed: task.completed,
            priority: task.priority.map(|p| p.name().to_owned()),
            tags: task.tags.clone(),
            due: task.due.map(rfc3339),
            remind_at: task.remind_at.map(rfc3339),
            recurrence: task.recurrence.as_ref().map(Into::into),
            series_id: task.series_id.clone(),
            occurrence: task.occurrence,
            series_start: task.series_start.map(rfc3339),
            time_zone: task.time_zone.clone(),
            created_at: task.created_at.map(rfc3339),
            updated_at: task.updated_at.map(rfc3339),
            completed_at: task.completed_at.map(rfc3339),
        }
    }
}

impl From<&Recurrence> for RecurrenceSnapshot {
    fn from(recurrence: &Recurrence) -> Self {
        match recurrence {
            Recurrence::Simple(simple) => Self::Simple {
                frequency: simple.frequency.name().to_owned(),
                interval: simple.interval,
                until: simple.until.map(rfc3339),
                max_occurrences: simple.max_occurrences,
            },
            Recurrence::Rrule(rule) => Self::Rrule {
                rrule: rule.clone(),
            },
        }
    }
}

impl From<&TaskEvent> for EventSnapshot {
    fn from(event: &TaskEvent) -> Self {
        Self {
            id: event.id.clone(),
            kind: event.kind.name().to_owned(),
            occurred_at: rfc3339(event.occurred_at),
            source: event.source.clone(),
            task: (&event.task).into(),
            previous: event.previous.as_ref().map(Into::into),
        }
    }
}

impl Task {
    /// This task as a serde-ready snapshot.
    pub fn snapshot(&self) -> TaskSnapshot {
        self.into()
    }
}

impl TaskEvent {
    /// This event as a serde-ready snapshot.
    pub fn snapshot(&self) -> EventSnapshot {
        self.into()
    }
}
