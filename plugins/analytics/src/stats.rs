//! Per-user counters and the per-task records that keep them idempotent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use todo_plugin_sdk::{Task, Timestamp, rfc3339};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Completed,
    Deleted,
}

/// What the plugin remembers about one task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub status: Status,
    pub created_at: Option<Timestamp>,
    pub priority: Option<String>,
    pub tags: Vec<String>,
}

/// Counts for one priority or tag.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Counts {
    created: u64,
    completed: u64,
    deleted: u64,
}

/// An open task, for the open and overdue figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpenTask {
    due: Option<Timestamp>,
    priority: Option<String>,
    tags: Vec<String>,
}

/// Everything counted for one user.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct UserStats {
    created: u64,
    completed: u64,
    deleted: u64,
    reopened: u64,
    completion_ms_total: i64,
    completion_samples: u64,
    by_priority: BTreeMap<String, Counts>,
    by_tag: BTreeMap<String, Counts>,
    open: BTreeMap<String, OpenTask>,
    last_event_at: Option<Timestamp>,
}

/// The priority and tags a task was counted under: as first recorded,
/// else as the event says.
fn labels(known: Option<&TaskRecord>, task: &Task) -> (Option<String>, Vec<String>) {
    match known {
        Some(r) => (
            r.priority.clone().or_else(|| priority_name(task)),
            r.tags.clone(),
        ),
        None => (priority_name(task), task.tags.clone()),
    }
}

fn priority_name(task: &Task) -> Option<String> {
    task.priority.map(|p| p.name().to_owned())
}

impl UserStats {
    fn bump(&mut self, priority: Option<&str>, tags: &[String], f: impl Fn(&mut Counts)) {
        if let Some(p) = priority {
            f(self.by_priority.entry(p.to_owned()).or_default());
        }
        for tag in tags {
            f(self.by_tag.entry(tag.clone()).or_default());
        }
    }

    fn open_task(&mut self, task: &Task) {
        self.open.insert(
            task.id.clone(),
            OpenTask {
                due: task.due,
                priority: priority_name(task),
                tags: task.tags.clone(),
            },
        );
    }

    fn record(task: &Task, status: Status, created_at: Option<Timestamp>) -> TaskRecord {
        TaskRecord {
            status,
            created_at,
            priority: priority_name(task),
            tags: task.tags.clone(),
        }
    }

    /// A new task. `None` if it is already known (a duplicate).
    pub fn created(
        &mut self,
        known: Option<&TaskRecord>,
        task: &Task,
        at: Timestamp,
    ) -> Option<TaskRecord> {
        if known.is_some() {
            return None;
        }
        self.last_event_at = Some(at);
        self.created += 1;
        self.bump(priority_name(task).as_deref(), &task.tags, |c| {
            c.created += 1
        });
        let created_at = task.created_at.or(Some(at));
        if task.completed {
            return self.completed(
                Some(&Self::record(task, Status::Open, created_at)),
                task,
                at,
            );
        }
        self.open_task(task);
        Some(Self::record(task, Status::Open, created_at))
    }

    /// A change; may complete or reopen the task.
    pub fn updated(
        &mut self,
        known: Option<&TaskRecord>,
        task: &Task,
        at: Timestamp,
    ) -> Option<TaskRecord> {
        match known.map(|r| r.status) {
            Some(Status::Deleted) => None,
            Some(Status::Open) | None if task.completed => {
                let record = known
                    .cloned()
                    .unwrap_or_else(|| Self::record(task, Status::Open, task.created_at));
                self.completed(Some(&record), task, at)
            }
            Some(Status::Completed) if !task.completed => {
                self.last_event_at = Some(at);
                self.reopened += 1;
                self.open_task(task);
                let created_at = known.and_then(|r| r.created_at);
                Some(Self::record(task, Status::Open, created_at))
            }
            Some(Status::Completed) => None,
            // Still open (or first seen through an update): refresh what
            // the open/overdue figures use.
            Some(Status::Open) | None => {
                self.last_event_at = Some(at);
                self.open_task(task);
                let created_at = known.and_then(|r| r.created_at).or(task.created_at);
                Some(Self::record(task, Status::Open, created_at))
            }
        }
    }

    /// A completion. `None` if already completed or deleted.
    pub fn completed(
        &mut self,
        known: Option<&TaskRecord>,
        task: &Task,
        at: Timestamp,
    ) -> Option<TaskRecord> {
        if matches!(
            known.map(|r| r.status),
            Some(Status::Completed | Status::Deleted)
        ) {
            return None;
        }
        self.last_event_at = Some(at);
        self.completed += 1;
        let (priority, tags) = labels(known, task);
        self.bump(priority.as_deref(), &tags, |c| c.completed += 1);
        let created_at = known.and_then(|r| r.created_at).or(task.created_at);
        let done_at = task.completed_at.unwrap_or(at);
        if let Some(created) = created_at.filter(|c| *c <= done_at) {
            self.completion_ms_total += done_at - created;
            self.completion_samples += 1;
        }
        self.open.remove(&task.id);
        Some(TaskRecord {
            status: Status::Completed,
            created_at,
            priority,
            tags,
        })
    }

    /// A deletion. `None` if already deleted.
    pub fn deleted(&mut self, known: Option<&TaskRecord>, task: &Task) -> Option<TaskRecord> {
        if matches!(known.map(|r| r.status), Some(Status::Deleted)) {
            return None;
        }
        self.deleted += 1;
        let (priority, tags) = labels(known, task);
        self.bump(priority.as_deref(), &tags, |c| c.deleted += 1);
        self.open.remove(&task.id);
        Some(TaskRecord {
            status: Status::Deleted,
            created_at: known.and_then(|r| r.created_at),
            priority,
            tags,
        })
    }

    /// The snapshot emitted for the user at `now`.
    pub fn snapshot(&self, user_id: &str, now: Timestamp) -> Value {
        let overdue = |t: &OpenTask| t.due.is_some_and(|due| due < now);
        let mut by_priority = serde_json::Map::new();
        for (name, counts) in &self.by_priority {
            let open: Vec<_> = self
                .open
                .values()
                .filter(|t| t.priority.as_deref() == Some(name))
                .collect();
            by_priority.insert(name.clone(), json!({
                "created": counts.created, "completed": counts.completed, "deleted": counts.deleted,
                "open": open.len(), "overdue": open.iter().filter(|t| overdue(t)).count(),
            }));
        }
        let mut by_tag = serde_json::Map::new();
        for (name, counts) in &self.by_tag {
            let open = self.open.values().filter(|t| t.tags.contains(name)).count();
            by_tag.insert(name.clone(), json!({
                "created": counts.created, "completed": counts.completed, "deleted": counts.deleted, "open": open,
            }));
        }
        let rate = (self.created > 0).then(|| self.completed as f64 / self.created as f64);
        let mean = (self.completion_samples > 0)
            .then(|| self.completion_ms_total as f64 / self.completion_samples as f64 / 1000.0);
        json!({
            "user_id": user_id,
            "as_of": rfc3339(now),
            "created": self.created,
            "completed": self.completed,
            "deleted": self.deleted,
            "reopened": self.reopened,
            "open": self.open.len(),
            "overdue": self.open.values().filter(|t| overdue(t)).count(),
            "completion_rate": rate.map(|r| (r * 1000.0).round() / 1000.0),
            "mean_time_to_complete_seconds": mean.map(f64::round),
            "by_priority": by_priority,
            "by_tag": by_tag,
            "last_event_at": self.last_event_at.map(rfc3339),
        })
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

    #[test]
    fn counts_are_idempotent_and_rates_add_up() {
        let mut stats = UserStats::default();
        let a = task("a", Some(1_000));
        let b = task("b", Some(100_000));
        let ra = stats.created(None, &a, 0).unwrap();
        assert!(
            stats.created(Some(&ra), &a, 0).is_none(),
            "duplicate create"
        );
        let rb = stats.created(None, &b, 0).unwrap();
        let ra = stats.completed(Some(&ra), &a, 60_000).unwrap();
        assert!(
            stats.completed(Some(&ra), &a, 60_000).is_none(),
            "duplicate completion"
        );
        let snap = stats.snapshot("u", 50_000);
        assert_eq!(snap["created"], 2);
        assert_eq!(snap["completed"], 1);
        assert_eq!(snap["open"], 1);
        assert_eq!(snap["overdue"], 0);
        assert_eq!(snap["completion_rate"], 0.5);
        assert_eq!(snap["mean_time_to_complete_seconds"], 60.0);
        assert_eq!(snap["by_priority"]["high"]["completed"], 1);
        assert_eq!(stats.snapshot("u", 200_000)["overdue"], 1);
        stats.deleted(Some(&rb), &b).unwrap();
        assert_eq!(stats.snapshot("u", 200_000)["open"], 0);
    }

    #[test]
    fn updates_complete_and_reopen() {
        let mut stats = UserStats::default();
        let mut t = task("t", None);
        let r = stats.created(None, &t, 0).unwrap();
        t.completed = true;
        let r = stats.updated(Some(&r), &t, 10).unwrap();
        assert_eq!(r.status, Status::Completed);
        t.completed = false;
        let r = stats.updated(Some(&r), &t, 20).unwrap();
        assert_eq!(r.status, Status::Open);
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
}
