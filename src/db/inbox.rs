//! `syncer_event`: the inbox between DingTalk's Stream connection and the runs that apply its
//! events.
//!
//! The stream client stores an event here and only then acknowledges it; a run applies the
//! `pending` events of its syncer and marks them `applied` (or `ignored`, for events that ask
//! nothing of a sync). A crash between the two leaves the events `pending`, and the daemon drains
//! them on start. The key `(syncer_name, event_id)` makes a redelivered event a no-op.

use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::syncer_event;
use super::error::QueryContext as _;
use super::{Db, DbError};

/// How many events one read of the inbox returns at most.
pub const INBOX_READ_LIMIT: u64 = 10_000;

/// One event as the inbox keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEvent {
    pub syncer_name: String,
    /// DingTalk's `eventId`.
    pub event_id: String,
    /// DingTalk's `eventType`.
    pub event_type: String,
    pub user_ids: Vec<String>,
    pub dept_ids: Vec<i64>,
    /// Epoch milliseconds of `eventBornTime`.
    pub born_at: Option<i64>,
    /// Epoch milliseconds at which it was stored.
    pub received_at: i64,
}

/// What storing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// First delivery: the event is `pending`.
    New,
    /// The inbox had it already (DingTalk redelivered it): nothing changed.
    Duplicate,
}

/// Where an event is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    Pending,
    /// A run applied it.
    Applied,
    /// It asks nothing of a sync (an event type syncerd does not act on).
    Ignored,
    /// Its run was held by the removal limits: the full run the operator approves covers it.
    Held,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Pending => "pending",
            EventState::Applied => "applied",
            EventState::Ignored => "ignored",
            EventState::Held => "held",
        }
    }
}

/// Stores `event` as `pending` unless the inbox has it already. The caller acknowledges the
/// event to DingTalk only after this returned `Ok`.
pub async fn store_event(db: &Db, event: &InboxEvent) -> Result<Stored, DbError> {
    let context = || {
        format!(
            "storing DingTalk event {} of syncer {} in syncer_event",
            event.event_id, event.syncer_name
        )
    };
    let _turn = db.write_turn().await.with_context(context)?;
    if event_exists(db, &event.syncer_name, &event.event_id).await? {
        return Ok(Stored::Duplicate);
    }
    let row = pending_row(event);
    // Another connection may have stored it since the check: the key lets one in.
    db.tables()
        .at(syncer_event::Entity::insert(row))
        .on_conflict(
            OnConflict::columns([
                syncer_event::Column::SyncerName,
                syncer_event::Column::EventId,
            ])
            .do_nothing_on([syncer_event::Column::EventId])
            .to_owned(),
        )
        .exec_without_returning(db.conn())
        .await
        .with_context(context)?;
    Ok(Stored::New)
}

/// Stores `events` (all of `syncer`) as `pending`, but those the inbox has already, in a few
/// statements rather than one per event. Returns how many were new.
pub async fn store_events(db: &Db, syncer: &str, events: &[InboxEvent]) -> Result<u64, DbError> {
    let context = || {
        format!(
            "storing {} events of syncer {syncer} in syncer_event",
            events.len()
        )
    };
    let _turn = db.write_turn().await.with_context(context)?;
    let mut stored = 0u64;
    // In slices: an IN list of thousands of ids is too long for some engines' parameter limits.
    for slice in events.chunks(500) {
        let ids: Vec<&str> = slice.iter().map(|e| e.event_id.as_str()).collect();
        let known: std::collections::BTreeSet<String> = db
            .tables()
            .at(syncer_event::Entity::find())
            .select_only()
            .column(syncer_event::Column::EventId)
            .filter(syncer_event::Column::SyncerName.eq(syncer))
            .filter(syncer_event::Column::EventId.is_in(ids))
            .into_tuple::<String>()
            .all(db.conn())
            .await
            .with_context(context)?
            .into_iter()
            .collect();
        let mut fresh = std::collections::BTreeSet::new();
        let rows: Vec<syncer_event::ActiveModel> = slice
            .iter()
            .filter(|e| e.syncer_name == syncer && !known.contains(&e.event_id))
            .filter(|e| fresh.insert(e.event_id.clone()))
            .map(pending_row)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let count = rows.len() as u64;
        // Another connection may have stored some since the check: the key lets one in.
        let insert = syncer_event::Entity::insert_many(rows).on_conflict(
            OnConflict::columns([
                syncer_event::Column::SyncerName,
                syncer_event::Column::EventId,
            ])
            .do_nothing_on([syncer_event::Column::EventId])
            .to_owned(),
        );
        db.tables()
            .at(insert)
            .exec_without_returning(db.conn())
            .await
            .with_context(context)?;
        stored += count;
    }
    Ok(stored)
}

/// The row of a new `pending` event.
fn pending_row(event: &InboxEvent) -> syncer_event::ActiveModel {
    syncer_event::ActiveModel {
        syncer_name: Set(event.syncer_name.clone()),
        event_id: Set(event.event_id.clone()),
        event_type: Set(event.event_type.clone()),
        user_ids: Set(json_list(&event.user_ids)),
        dept_ids: Set(json_list(&event.dept_ids)),
        born_at: Set(event.born_at),
        received_at: Set(event.received_at),
        state: Set(EventState::Pending.as_str().to_owned()),
        run_id: Set(None),
        done_at: Set(None),
    }
}

async fn event_exists(db: &Db, syncer: &str, event_id: &str) -> Result<bool, DbError> {
    let found = db
        .tables()
        .at(syncer_event::Entity::find())
        .select_only()
        .column(syncer_event::Column::EventId)
        .filter(syncer_event::Column::SyncerName.eq(syncer))
        .filter(syncer_event::Column::EventId.eq(event_id))
        .into_tuple::<String>()
        .one(db.conn())
        .await
        .with_context(|| format!("looking up DingTalk event {event_id} in syncer_event"))?;
    Ok(found.is_some())
}

/// The `pending` events of `syncer`, oldest first, at most `limit` of them.
pub async fn pending_events(db: &Db, syncer: &str, limit: u64) -> Result<Vec<InboxEvent>, DbError> {
    let rows = db
        .tables()
        .at(syncer_event::Entity::find())
        .filter(syncer_event::Column::SyncerName.eq(syncer))
        .filter(syncer_event::Column::State.eq(EventState::Pending.as_str()))
        .order_by_asc(syncer_event::Column::ReceivedAt)
        .order_by_asc(syncer_event::Column::EventId)
        .limit(Ord::min(limit, INBOX_READ_LIMIT))
        .all(db.conn())
        .await
        .with_context(|| format!("reading the pending events of syncer {syncer}"))?;
    rows.into_iter().map(InboxEvent::try_from).collect()
}

/// The syncers that have `pending` events (for draining the inbox on start).
pub async fn syncers_with_pending_events(db: &Db) -> Result<Vec<String>, DbError> {
    db.tables()
        .at(syncer_event::Entity::find())
        .select_only()
        .column(syncer_event::Column::SyncerName)
        .distinct()
        .filter(syncer_event::Column::State.eq(EventState::Pending.as_str()))
        .order_by_asc(syncer_event::Column::SyncerName)
        .into_tuple::<String>()
        .all(db.conn())
        .await
        .context("listing the syncers with pending events in syncer_event")
}

/// Marks events of `syncer` as done (`applied` or `ignored`) by `run_id` at `now_ms`. Only
/// `pending` events change, so marking twice is harmless. Returns how many changed.
pub async fn finish_events(
    db: &Db,
    syncer: &str,
    event_ids: &[String],
    state: EventState,
    run_id: Option<i64>,
    now_ms: i64,
) -> Result<u64, DbError> {
    let context = || format!("marking the events of syncer {syncer} {}", state.as_str());
    let _turn = db.write_turn().await.with_context(context)?;
    let mut changed = 0;
    // In slices: an IN list of thousands of ids is too long for some engines' parameter limits.
    for ids in event_ids.chunks(500) {
        let result = db
            .tables()
            .at(syncer_event::Entity::update_many())
            .col_expr(syncer_event::Column::State, Expr::value(state.as_str()))
            .col_expr(syncer_event::Column::RunId, Expr::value(run_id))
            .col_expr(syncer_event::Column::DoneAt, Expr::value(now_ms))
            .filter(syncer_event::Column::SyncerName.eq(syncer))
            .filter(syncer_event::Column::State.eq(EventState::Pending.as_str()))
            .filter(syncer_event::Column::EventId.is_in(ids.iter().map(String::as_str)))
            .exec(db.conn())
            .await
            .with_context(context)?;
        changed += result.rows_affected;
    }
    Ok(changed)
}

/// Deletes events done before `before_ms` (retention). `pending` events are never pruned.
/// Returns how many were deleted.
pub async fn prune_events(db: &Db, before_ms: i64) -> Result<u64, DbError> {
    let context = "pruning applied events from syncer_event";
    let _turn = db.write_turn().await.context(context)?;
    // Unqualified columns: a prefixed table cannot be aliased in a DELETE on MariaDB.
    let result = db
        .tables()
        .at(syncer_event::Entity::delete_many())
        .filter(Expr::col(syncer_event::Column::State).ne(EventState::Pending.as_str()))
        .filter(Expr::col(syncer_event::Column::DoneAt).lt(before_ms))
        .exec(db.conn())
        .await
        .context(context)?;
    Ok(result.rows_affected)
}

/// The last time an event of `syncer` was stored (epoch milliseconds): where a catch-up after
/// a reconnect starts.
pub async fn last_received(db: &Db, syncer: &str) -> Result<Option<i64>, DbError> {
    db.tables()
        .at(syncer_event::Entity::find())
        .select_only()
        .column_as(syncer_event::Column::ReceivedAt.max(), "last")
        .filter(syncer_event::Column::SyncerName.eq(syncer))
        .into_tuple::<Option<i64>>()
        .one(db.conn())
        .await
        .with_context(|| format!("reading the last event time of syncer {syncer}"))
        .map(Option::flatten)
}

fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

impl TryFrom<syncer_event::Model> for InboxEvent {
    type Error = DbError;

    fn try_from(m: syncer_event::Model) -> Result<Self, DbError> {
        let row = format!("{}/{}", m.syncer_name, m.event_id);
        let bad = |column: &'static str, e: serde_json::Error| DbError::BadValue {
            table: "syncer_event",
            column,
            row: row.clone(),
            problem: format!("not a JSON list: {e}"),
        };
        let user_ids = serde_json::from_str(&m.user_ids).map_err(|e| bad("user_ids", e))?;
        let dept_ids = serde_json::from_str(&m.dept_ids).map_err(|e| bad("dept_ids", e))?;
        Ok(InboxEvent {
            syncer_name: m.syncer_name,
            event_id: m.event_id,
            event_type: m.event_type,
            user_ids,
            dept_ids,
            born_at: m.born_at,
            received_at: m.received_at,
        })
    }
}
