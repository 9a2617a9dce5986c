//! The Stream client's sink: every address-book event goes to the inbox (`syncer_event`) before
//! it is acknowledged, then the applier is woken.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::daemon::scheduler::Shared;
use crate::db::inbox::{InboxEvent, Stored, store_event};
use crate::db::leases::epoch_millis;
use crate::db::{Db, DbError};
use crate::stream::{Change, EventSink, FrameError, StreamEvent};

/// Stores one syncer's events and wakes its applier.
pub(crate) struct InboxSink {
    db: Db,
    syncer: String,
    wake: Arc<Notify>,
    shared: Arc<Shared>,
}

impl InboxSink {
    pub(crate) fn new(db: Db, syncer: String, wake: Arc<Notify>, shared: Arc<Shared>) -> Self {
        InboxSink {
            db,
            syncer,
            wake,
            shared,
        }
    }
}

/// The inbox row of `event` received now.
fn inbox_event(syncer: &str, event: &StreamEvent) -> InboxEvent {
    let (user_ids, dept_ids) = match &event.change {
        Change::Users { user_ids, .. } => (user_ids.clone(), Vec::new()),
        Change::Departments { dept_ids, .. } => (Vec::new(), dept_ids.clone()),
        Change::Other => (Vec::new(), Vec::new()),
    };
    InboxEvent {
        syncer_name: syncer.to_owned(),
        event_id: event.event_id.clone(),
        event_type: event.event_type.clone(),
        user_ids,
        dept_ids,
        born_at: event.born_time_ms,
        received_at: epoch_millis(),
    }
}

impl EventSink for InboxSink {
    type Error = DbError;

    async fn store(&self, event: &StreamEvent) -> Result<(), DbError> {
        let stored = store_event(&self.db, &inbox_event(&self.syncer, event)).await?;
        match stored {
            Stored::New => {
                self.shared.metrics.record_event(&self.syncer, false);
                self.wake.notify_one();
            }
            Stored::Duplicate => self.shared.metrics.record_event(&self.syncer, true),
        }
        Ok(())
    }

    fn refused(&self, message_id: &str, error: &FrameError) {
        tracing::warn!(
            "syncer {}: a DingTalk event (message {message_id}) could not be read and is \
             dropped; the next full run covers it: {error}",
            self.syncer
        );
    }
}
