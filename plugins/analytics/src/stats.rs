//! Per-user counters, and the per-task records that keep them idempotent
//! and let a task move between priorities, tags and states.
//!
//! The per-user value holds counters only, so it stays small however many
//! tasks a user has; what is known of each task lives in its own record.
//! Tags are the one label a user chooses freely: at most [`MAX_TAGS`] of
//! them, each at most [`MAX_TAG_BYTES`] long, get counters of their own;
//! the rest share one ("other tags"), so no user can grow the value past
//! the host's size bound (a failure that would count against the plugin).
//! Every change is "the task leaves its old record, enters its new one":
//! open and overdue counts follow a task whose priority or tags change, and
//! a task first seen through an update, completion or deletion is counted
//! as created (it existed), so rates never exceed 1.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use todo_plugin_sdk::{EventKind, Task, Timestamp, rfc3339};

/// A hand-written `Serialize` that writes the struct as an array of the
/// listed fields, in the order given — which must be the declaration order,
/// the order the derived `Deserialize` reads an array in. Listing every
/// field is checked: the destructuring has no `..`.
macro_rules! serialize_as_array {
    ($name:ident { $($field:ident),+ $(,)? }) => {
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let Self { $($field),+ } = self;
                ($($field,)+).serialize(serializer)
            }
        }
    };
}

/// Tags a user's value counts one by one; later ones count as other tags.
pub const MAX_TAGS: usize = 200;
/// Longer tags count as other tags.
pub const MAX_TAG_BYTES: usize = 64;
/// The key of the shared counters of other tags in `by_tag`: the empty
/// tag, which the host never hands over (it drops blank tags), so the
/// stored value's shape is the same as before.
const OTHER_TAGS: &str = "";

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Completed,
    Deleted,
}

/// What the plugin remembers about one task.
///
/// Stored, like [`Counts`], as an array of its fields in this order; the
/// map earlier versions wrote still reads. A field is added at the end
/// only, with `#[serde(default)]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TaskRecord {
    pub status: Status,
    pub created_at: Option<Timestamp>,
    pub priority: Option<String>,
    pub tags: Vec<String>,
    /// The due time, while open.
    #[serde(default)]
    pub due: Option<Timestamp>,
    /// Whether the task is counted as overdue.
    #[serde(default)]
    pub overdue: bool,
}

serialize_as_array!(TaskRecord {
    status,
    created_at,
    priority,
    tags,
    due,
    overdue,
});

/// Counts for one priority or tag.
///
/// Stored as an array of the five numbers in this order: a user's value
/// holds one per priority and tag, and their field names were most of its
/// bytes and of the time spent reading it. Reading also takes the map with
/// field names that earlier versions wrote (serde reads a struct from
/// either). A field is added at the end only, with `#[serde(default)]`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct Counts {
    created: u64,
    completed: u64,
    deleted: u64,
    #[serde(default)]
    open: u64,
    #[serde(default)]
    overdue: u64,
}

serialize_as_array!(Counts {
    created,
    completed,
    deleted,
    open,
    overdue,
});

/// Everything counted for one user.
///
/// Stored, like [`Counts`], as an array of its fields in this order (read
/// every event, its field names cost more than its numbers); the map
/// earlier versions wrote still reads. A field is added at the end only,
/// with `#[serde(default)]`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct UserStats {
    created: u64,
    completed: u64,
    deleted: u64,
    reopened: u64,
    #[serde(default)]
    open: u64,
    #[serde(default)]
    overdue: u64,
    completion_ms_total: i64,
    completion_samples: u64,
    by_priority: BTreeMap<String, Counts>,
    by_tag: BTreeMap<String, Counts>,
    last_event_at: Option<Timestamp>,
}

serialize_as_array!(UserStats {
    created,
    completed,
    deleted,
    reopened,
    open,
    overdue,
    completion_ms_total,
    completion_samples,
    by_priority,
    by_tag,
    last_event_at,
});

/// What an event did to a task.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    /// The task's new record.
    pub record: TaskRecord,
    /// Whether the task is due and not yet counted overdue: arm a timer.
    pub watch_due: Option<Timestamp>,
}

fn priority_name(task: &Task) -> Option<String> {
    task.priority.map(|p| p.name().to_owned())
}

impl UserStats {
    /// Applies `f` to the counts of every label of `record`.
    fn each(&mut self, record: &TaskRecord, f: impl Fn(&mut Counts)) {
        if let Some(p) = &record.priority {
            f(self.by_priority.entry(p.clone()).or_default());
        }
        for tag in &record.tags {
            f(self.tag_counts(tag));
        }
    }

    /// The counts `tag` goes to: its own, if it has them or there is room
    /// for them, else the other tags'. A tag's place never changes, as
    /// counters are never removed: one that went to the other tags when
    /// the map was full stays there, so what a task entered under is what
    /// it leaves.
    fn tag_counts(&mut self, tag: &str) -> &mut Counts {
        let own = self.by_tag.contains_key(tag)
            || (tag.len() <= MAX_TAG_BYTES && self.tracked_tags() < MAX_TAGS);
        let key = if own { tag } else { OTHER_TAGS };
        self.by_tag.entry(key.to_owned()).or_default()
    }

    /// Tags with counters of their own.
    fn tracked_tags(&self) -> usize {
        self.by_tag.len() - usize::from(self.by_tag.contains_key(OTHER_TAGS))
    }

    /// Takes a task's open and overdue counts off.
    fn leave(&mut self, old: &TaskRecord) {
        if old.status != Status::Open {
            return;
        }
        self.open = self.open.saturating_sub(1);
        self.each(old, |c| c.open = c.open.saturating_sub(1));
        if old.overdue {
            self.overdue = self.overdue.saturating_sub(1);
            self.each(old, |c| c.overdue = c.overdue.saturating_sub(1));
        }
    }

    /// Puts a task's open and overdue counts on.
    fn enter(&mut self, new: &TaskRecord) {
        if new.status != Status::Open {
            return;
        }
        self.open += 1;
        self.each(new, |c| c.open += 1);
        if new.overdue {
            self.overdue += 1;
            self.each(new, |c| c.overdue += 1);
        }
    }

    /// Applies an event of `kind` about `task` at `at` (the clock at
    /// `now`) to the user's counters, given what was known of the task.
    /// `None` if it changes nothing (a duplicate, or news of a deleted
    /// task).
    pub fn apply(
        &mut self,
        kind: EventKind,
        known: Option<&TaskRecord>,
        task: &Task,
        at: Timestamp,
        now: Timestamp,
    ) -> Option<Change> {
        let old_status = known.map(|r| r.status);
        let status = match (kind, old_status) {
            (_, Some(Status::Deleted)) => return None,
            (EventKind::Created, Some(_)) => return None,
            (EventKind::Completed, Some(Status::Completed)) => return None,
            (EventKind::Deleted, _) => Status::Deleted,
            (EventKind::Completed, _) => Status::Completed,
            (EventKind::Created | EventKind::Updated, _) if task.completed => Status::Completed,
            (EventKind::Created | EventKind::Updated, _) => Status::Open,
        };
        let created_at = known
            .and_then(|r| r.created_at)
            .or(task.created_at)
            .or((kind == EventKind::Created).then_some(at));
        let due = task.due.filter(|_| status == Status::Open);
        // A deleted task keeps the labels it was counted under.
        let (priority, tags) = match (status, known) {
            (Status::Deleted, Some(r)) => (r.priority.clone(), r.tags.clone()),
            _ => (priority_name(task), task.tags.clone()),
        };
        let record = TaskRecord {
            status,
            created_at,
            priority,
            tags,
            due,
            overdue: due.is_some_and(|due| due < now),
        };
        if known == Some(&record) {
            return None;
        }
        self.last_event_at = Some(self.last_event_at.map_or(at, |last| last.max(at)));
        match known {
            Some(old) => self.leave(old),
            None => {
                self.created += 1;
                self.each(&record, |c| c.created += 1);
            }
        }
        match (old_status, status) {
            (Some(Status::Completed), Status::Open) => self.reopened += 1,
            (old, Status::Completed) if old != Some(Status::Completed) => {
                self.completed += 1;
                self.each(&record, |c| c.completed += 1);
                let done_at = task.completed_at.unwrap_or(at);
                if let Some(created) = created_at.filter(|c| *c <= done_at) {
                    self.completion_ms_total += done_at - created;
                    self.completion_samples += 1;
                }
            }
            (_, Status::Deleted) => {
                self.deleted += 1;
                self.each(&record, |c| c.deleted += 1);
            }
            _ => {}
        }
        self.enter(&record);
        let watch_due = due.filter(|_| !record.overdue);
        Some(Change { record, watch_due })
    }

    /// The task's due time `due` has passed: count it overdue if it is
    /// still open and due then. Returns the updated record, if any.
    pub fn due_passed(&mut self, known: &TaskRecord, due: Timestamp) -> Option<TaskRecord> {
        if known.status != Status::Open || known.overdue || known.due != Some(due) {
            return None;
        }
        let mut record = known.clone();
        record.overdue = true;
        self.overdue += 1;
        self.each(&record, |c| c.overdue += 1);
        Some(record)
    }

    /// The snapshot emitted for the user at `now`.
    pub fn snapshot(&self, user_id: &str, now: Timestamp) -> Value {
        let by_priority: serde_json::Map<String, Value> = self
            .by_priority
            .iter()
            .map(|(name, c)| {
                let counts = json!({
                    "created": c.created, "completed": c.completed, "deleted": c.deleted,
                    "open": c.open, "overdue": c.overdue,
                });
                (name.clone(), counts)
            })
            .collect();
        let tag_counts = |c: &Counts| {
            json!({
                "created": c.created, "completed": c.completed, "deleted": c.deleted,
                "open": c.open,
            })
        };
        let by_tag: serde_json::Map<String, Value> = self
            .by_tag
            .iter()
            .filter(|(name, _)| name.as_str() != OTHER_TAGS)
            .map(|(name, c)| (name.clone(), tag_counts(c)))
            .collect();
        // Completed tasks net of reopenings, over tasks seen: at most 1.
        let done = self.completed.saturating_sub(self.reopened);
        let rate = (self.created > 0).then(|| done as f64 / self.created as f64);
        let mean = (self.completion_samples > 0)
            .then(|| self.completion_ms_total as f64 / self.completion_samples as f64 / 1000.0);
        let mut snapshot = json!({
            "user_id": user_id,
            "as_of": rfc3339(now),
            "created": self.created,
            "completed": self.completed,
            "deleted": self.deleted,
            "reopened": self.reopened,
            "open": self.open,
            "overdue": self.overdue,
            "completion_rate": rate.map(|r| (r * 1000.0).round() / 1000.0),
            "mean_time_to_complete_seconds": mean.map(f64::round),
            "by_priority": by_priority,
            "by_tag": by_tag,
            "last_event_at": self.last_event_at.map(rfc3339),
        });
        if let Some(other) = self.by_tag.get(OTHER_TAGS) {
            snapshot["other_tags"] = tag_counts(other);
        }
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use todo_plugin_sdk::Priority;

    fn task(id: &str, due: Option<Timestamp>) -> Task {
        Task {
            id: id.into(),
            user_id: "u".into(),
            title: None,
            description: None,
            completed: false,
            priority: Some(Priority::High),
            tags: vec!["home".into()],
            due,
            remind_at: None,
            recurrence: None,
            series_id: None,
            occurrence: None,
            series_start: None,
            time_zone: None,
            created_at: None,
            updated_at: None,
            completed_at: None,
        }
    }

    /// Feeds one event, keeping records like the plugin does.
    fn feed(
        stats: &mut UserStats,
        records: &mut BTreeMap<String, TaskRecord>,
        kind: EventKind,
        task: &Task,
        at: Timestamp,
    ) -> Option<Change> {
        let change = stats.apply(kind, records.get(&task.id), task, at, at)?;
        records.insert(task.id.clone(), change.record.clone());
        Some(change)
    }

    /// However many tags a user's tasks carry, the user's value holds at
    /// most [`MAX_TAGS`] counters of their own; the rest (and any long
    /// tag) share the other tags' counters, which follow a task as its own
    /// counters would.
    #[test]
    fn a_user_with_endless_tags_keeps_a_bounded_value() {
        let (mut stats, mut records) = (UserStats::default(), BTreeMap::new());
        let long = "x".repeat(MAX_TAG_BYTES + 1);
        for i in 0..50 {
            let mut t = task(&format!("t{i}"), None);
            t.tags = (0..100).map(|j| format!("tag-{i}-{j}")).collect();
            if i == 0 {
                t.tags.push(long.clone());
            }
            feed(&mut stats, &mut records, EventKind::Created, &t, i).unwrap();
        }
        assert_eq!(
            stats.by_tag.len(),
            MAX_TAGS + 1,
            "own counters and the others'"
        );
        let snap = stats.snapshot("u", 100);
        let by_tag = snap["by_tag"].as_object().unwrap();
        assert_eq!(by_tag.len(), MAX_TAGS);
        assert_eq!(by_tag["tag-0-0"]["created"], 1);
        assert!(!by_tag.contains_key(&long) && !by_tag.contains_key("tag-2-0"));
        // 1 long tag, then 48 tasks of 100 tags past the first 200.
        assert_eq!(snap["other_tags"]["created"], 1 + 48 * 100);
        assert_eq!(snap["other_tags"]["open"], 1 + 48 * 100);

        // A task leaves what it entered: its own counters or the others'.
        let mut first = task("t0", None);
        first.tags = records["t0"].tags.clone();
        first.completed = true;
        feed(&mut stats, &mut records, EventKind::Completed, &first, 200).unwrap();
        let mut last = task("t49", None);
        last.tags = records["t49"].tags.clone();
        feed(&mut stats, &mut records, EventKind::Deleted, &last, 300).unwrap();
        let snap = stats.snapshot("u", 400);
        assert_eq!(snap["by_tag"]["tag-0-0"]["completed"], 1);
        assert_eq!(snap["by_tag"]["tag-0-0"]["open"], 0);
        assert_eq!(snap["other_tags"]["completed"], 1, "the long tag");
        assert_eq!(snap["other_tags"]["deleted"], 100);
        assert_eq!(snap["other_tags"]["open"], 48 * 100 - 100);

        let bytes = todo_plugin_sdk::typed::encode(&stats).unwrap();
        assert!(bytes.len() < 64 * 1024, "{} bytes", bytes.len());
        // A user below the bound has no other tags at all.
        let mut few = UserStats::default();
        feed(
            &mut few,
            &mut BTreeMap::new(),
            EventKind::Created,
            &task("a", None),
            0,
        )
        .unwrap();
        assert!(few.snapshot("u", 0).get("other_tags").is_none());
    }

    #[test]
    fn counts_are_idempotent_and_rates_add_up() {
        let (mut stats, mut records) = (UserStats::default(), BTreeMap::new());
        let a = task("a", Some(1_000));
        let b = task("b", Some(100_000));
        assert!(feed(&mut stats, &mut records, EventKind::Created, &a, 0).is_some());
        assert!(feed(&mut stats, &mut records, EventKind::Created, &a, 0).is_none());
        let change = feed(&mut stats, &mut records, EventKind::Created, &b, 0).unwrap();
        assert_eq!(change.watch_due, Some(100_000));
        feed(&mut stats, &mut records, EventKind::Completed, &a, 60_000).unwrap();
        assert!(feed(&mut stats, &mut records, EventKind::Completed, &a, 60_000).is_none());
        let snap = stats.snapshot("u", 50_000);
        assert_eq!(snap["created"], 2);
        assert_eq!(snap["completed"], 1);
        assert_eq!(snap["open"], 1);
        assert_eq!(snap["overdue"], 0);
        assert_eq!(snap["completion_rate"], 0.5);
        assert_eq!(snap["mean_time_to_complete_seconds"], 60.0);
        assert_eq!(snap["by_priority"]["high"]["completed"], 1);
        let rb = stats.due_passed(&records["b"], 100_000).unwrap();
        records.insert("b".into(), rb);
        assert_eq!(stats.snapshot("u", 200_000)["overdue"], 1);
        feed(&mut stats, &mut records, EventKind::Deleted, &b, 300_000).unwrap();
        let snap = stats.snapshot("u", 300_000);
        assert_eq!(
            (snap["open"].as_u64(), snap["overdue"].as_u64()),
            (Some(0), Some(0))
        );
    }

    #[test]
    fn updates_complete_and_reopen() {
        let (mut stats, mut records) = (UserStats::default(), BTreeMap::new());
        let mut t = task("t", None);
        feed(&mut stats, &mut records, EventKind::Created, &t, 0).unwrap();
        t.completed = true;
        let change = feed(&mut stats, &mut records, EventKind::Updated, &t, 10).unwrap();
        assert_eq!(change.record.status, Status::Completed);
        t.completed = false;
        let change = feed(&mut stats, &mut records, EventKind::Updated, &t, 20).unwrap();
        assert_eq!(change.record.status, Status::Open);
        let snap = stats.snapshot("u", 30);
        assert_eq!(
            (
                snap["completed"].as_u64(),
                snap["reopened"].as_u64(),
                snap["open"].as_u64()
            ),
            (Some(1), Some(1), Some(1))
        );
    }

    /// Regression: completions of tasks never seen created gave
    /// `created: 1, completed: 4, completion_rate: 4.0`.
    #[test]
    fn completions_of_unseen_tasks_count_as_seen() {
        let (mut stats, mut records) = (UserStats::default(), BTreeMap::new());
        feed(
            &mut stats,
            &mut records,
            EventKind::Created,
            &task("new", None),
            0,
        )
        .unwrap();
        for id in ["old-1", "old-2", "old-3", "old-4"] {
            let mut t = task(id, None);
            t.completed = true;
            feed(&mut stats, &mut records, EventKind::Completed, &t, 10).unwrap();
        }
        let snap = stats.snapshot("u", 20);
        assert_eq!(snap["created"], 5);
        assert_eq!(snap["completed"], 4);
        assert_eq!(snap["completion_rate"], 0.8);
        assert_eq!(snap["open"], 1);
    }

    /// Regression: a task whose priority changed from low to high vanished
    /// from `by_priority` (low showed `open: 0`, no `high` entry).
    #[test]
    fn a_priority_change_moves_the_open_count() {
        let (mut stats, mut records) = (UserStats::default(), BTreeMap::new());
        let mut t = task("t", Some(5));
        t.priority = Some(Priority::Low);
        feed(&mut stats, &mut records, EventKind::Created, &t, 0).unwrap();
        let due = stats.due_passed(&records["t"], 5).unwrap();
        records.insert("t".into(), due);
        t.priority = Some(Priority::High);
        feed(&mut stats, &mut records, EventKind::Updated, &t, 10).unwrap();
        let snap = stats.snapshot("u", 20);
        assert_eq!(snap["by_priority"]["low"]["open"], 0);
        assert_eq!(snap["by_priority"]["low"]["overdue"], 0);
        assert_eq!(snap["by_priority"]["high"]["open"], 1);
        assert_eq!(snap["by_priority"]["high"]["overdue"], 1);
        assert_eq!(snap["open"], 1);
        assert_eq!(snap["overdue"], 1);
    }

    #[test]
    fn counts_are_stored_as_numbers_and_read_in_every_earlier_form() {
        use todo_plugin_sdk::typed::{decode, encode};

        /// Counts as earlier versions stored them: a map with field names.
        #[derive(Serialize)]
        struct Named {
            created: u64,
            completed: u64,
            deleted: u64,
            open: u64,
            overdue: u64,
        }
        /// Before `open` and `overdue` were counted.
        #[derive(Serialize)]
        struct Oldest {
            created: u64,
            completed: u64,
            deleted: u64,
        }
        let counts = Counts {
            created: 7,
            completed: 3,
            deleted: 1,
            open: 4,
            overdue: 2,
        };
        let compact = encode(&counts).unwrap();
        assert_eq!(
            compact,
            [0x00, 0x95, 7, 3, 1, 4, 2],
            "the five in declaration order"
        );
        assert_eq!(decode::<Counts>(&compact).unwrap(), counts);
        let named = Named {
            created: 7,
            completed: 3,
            deleted: 1,
            open: 4,
            overdue: 2,
        };
        assert_eq!(decode::<Counts>(&encode(&named).unwrap()).unwrap(), counts);
        let json = serde_json::to_vec(&named).unwrap();
        assert_eq!(decode::<Counts>(&json).unwrap(), counts);
        let oldest = Oldest {
            created: 7,
            completed: 3,
            deleted: 1,
        };
        let read = decode::<Counts>(&encode(&oldest).unwrap()).unwrap();
        assert_eq!((read.created, read.open, read.overdue), (7, 0, 0));
    }

    #[test]
    fn a_users_counters_read_back_as_they_were_stored() {
        use todo_plugin_sdk::typed::{decode, encode};

        let (mut stats, mut records) = (UserStats::default(), BTreeMap::new());
        let mut t = task("t", Some(5));
        t.tags = vec!["home".into(), "money".into()];
        feed(&mut stats, &mut records, EventKind::Created, &t, 0).unwrap();
        feed(&mut stats, &mut records, EventKind::Completed, &t, 9).unwrap();
        let read: UserStats = decode(&encode(&stats).unwrap()).unwrap();
        assert_eq!(read.snapshot("u", 10), stats.snapshot("u", 10));
        assert_eq!(read.by_tag, stats.by_tag);
        assert_eq!(read.by_tag.len(), 2);
        // As earlier versions stored it: every struct a map with names.
        let named = stats_as_named(&stats);
        let read: UserStats = decode(&encode(&named).unwrap()).unwrap();
        assert_eq!(read.snapshot("u", 10), stats.snapshot("u", 10));
        let read: UserStats = decode(&serde_json::to_vec(&named).unwrap()).unwrap();
        assert_eq!(read.snapshot("u", 10), stats.snapshot("u", 10));
    }

    #[test]
    fn a_task_record_reads_back_and_in_its_earlier_forms() {
        use todo_plugin_sdk::typed::{decode, encode};

        let record = TaskRecord {
            status: Status::Completed,
            created_at: Some(5),
            priority: Some("high".into()),
            tags: vec!["home".into()],
            due: Some(9),
            overdue: true,
        };
        assert_eq!(
            decode::<TaskRecord>(&encode(&record).unwrap()).unwrap(),
            record
        );
        let named = json!({
            "status": "completed", "created_at": 5, "priority": "high", "tags": ["home"],
            "due": 9, "overdue": true,
        });
        for stored in [encode(&named).unwrap(), serde_json::to_vec(&named).unwrap()] {
            assert_eq!(decode::<TaskRecord>(&stored).unwrap(), record);
        }
        // Before `due` and `overdue` were kept.
        let oldest = json!({
            "status": "completed", "created_at": 5, "priority": "high", "tags": ["home"],
        });
        let read = decode::<TaskRecord>(&encode(&oldest).unwrap()).unwrap();
        assert_eq!((read.due, read.overdue), (None, false));
    }

    #[test]
    fn records_and_users_are_stored_in_declaration_order() {
        use todo_plugin_sdk::typed::encode;

        // Every field a distinct value, so a reordering shows.
        let record = TaskRecord {
            status: Status::Deleted,
            created_at: Some(5),
            priority: Some("high".into()),
            tags: vec!["home".into()],
            due: Some(9),
            overdue: true,
        };
        let in_order = json!(["deleted", 5, "high", ["home"], 9, true]);
        assert_eq!(encode(&record).unwrap(), encode(&in_order).unwrap());

        let counts = |n: u64| Counts {
            created: n,
            completed: n + 1,
            deleted: n + 2,
            open: n + 3,
            overdue: n + 4,
        };
        let stats = UserStats {
            created: 1,
            completed: 2,
            deleted: 3,
            reopened: 4,
            open: 5,
            overdue: 6,
            completion_ms_total: 7,
            completion_samples: 8,
            by_priority: BTreeMap::from([("high".into(), counts(10))]),
            by_tag: BTreeMap::from([("home".into(), counts(20))]),
            last_event_at: Some(9),
        };
        let in_order = json!([
            1, 2, 3, 4, 5, 6, 7, 8,
            {"high": [10, 11, 12, 13, 14]},
            {"home": [20, 21, 22, 23, 24]},
            9,
        ]);
        assert_eq!(encode(&stats).unwrap(), encode(&in_order).unwrap());
    }

    #[test]
    fn a_users_counters_from_before_open_and_overdue_still_read() {
        use todo_plugin_sdk::typed::{decode, encode};

        let oldest = json!({
            "created": 3, "completed": 1, "deleted": 1, "reopened": 1,
            "completion_ms_total": 40, "completion_samples": 1,
            "by_priority": {"high": {"created": 2, "completed": 1, "deleted": 0}},
            "by_tag": {},
            "last_event_at": 50,
        });
        for stored in [
            encode(&oldest).unwrap(),
            serde_json::to_vec(&oldest).unwrap(),
        ] {
            let read = decode::<UserStats>(&stored).unwrap();
            assert_eq!((read.created, read.reopened), (3, 1));
            assert_eq!((read.open, read.overdue), (0, 0));
            assert_eq!(read.completion_ms_total, 40);
            assert_eq!(read.last_event_at, Some(50));
            let high = &read.by_priority["high"];
            assert_eq!((high.created, high.completed, high.open), (2, 1, 0));
            assert!(read.by_tag.is_empty());
        }
    }

    /// `stats` with field names, as the derived `Serialize` of earlier
    /// versions wrote it.
    fn stats_as_named(stats: &UserStats) -> Value {
        let counts = |map: &BTreeMap<String, Counts>| -> Value {
            map.iter()
                .map(|(label, c)| {
                    let named = json!({
                        "created": c.created, "completed": c.completed, "deleted": c.deleted,
                        "open": c.open, "overdue": c.overdue,
                    });
                    (label.clone(), named)
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        json!({
            "created": stats.created,
            "completed": stats.completed,
            "deleted": stats.deleted,
            "reopened": stats.reopened,
            "open": stats.open,
            "overdue": stats.overdue,
            "completion_ms_total": stats.completion_ms_total,
            "completion_samples": stats.completion_samples,
            "by_priority": counts(&stats.by_priority),
            "by_tag": counts(&stats.by_tag),
            "last_event_at": stats.last_event_at,
        })
    }
}
