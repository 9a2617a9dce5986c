//! The Stream event inbox (`syncer_event`) on every engine: an event is stored once however
//! often DingTalk delivers it, stays `pending` until a run finishes it, and only finished events
//! are pruned.

mod common;

use common::on_every_engine;
use syncerd::db::inbox::{
    EventState, InboxEvent, Stored, finish_events, last_received, pending_events, prune_events,
    store_event, syncers_with_pending_events,
};

fn event(syncer: &str, id: &str, received_at: i64) -> InboxEvent {
    InboxEvent {
        syncer_name: syncer.to_owned(),
        event_id: id.to_owned(),
        event_type: "user_modify_org".to_owned(),
        user_ids: vec!["u-1".to_owned(), "用户-2".to_owned()],
        dept_ids: vec![1, 42],
        born_at: Some(received_at - 5),
        received_at,
    }
}

#[tokio::test]
async fn a_redelivered_event_is_stored_once_and_stays_pending_until_finished() {
    on_every_engine(async |t| {
        let db = t.migrated().await;
        let first = event("acme", "evt-1", 1_000);
        assert_eq!(store_event(&db, &first).await.unwrap(), Stored::New);
        // DingTalk redelivers with the same eventId (maybe after an ack): no second row, and
        // the stored copy is not overwritten by the redelivery.
        let mut again = first.clone();
        again.user_ids = vec!["someone-else".into()];
        assert_eq!(store_event(&db, &again).await.unwrap(), Stored::Duplicate);
        // The same eventId for another syncer is another event.
        assert_eq!(
            store_event(&db, &event("other", "evt-1", 1_001))
                .await
                .unwrap(),
            Stored::New
        );
        store_event(&db, &event("acme", "evt-0", 900))
            .await
            .unwrap();

        let pending = pending_events(&db, "acme", 100).await.unwrap();
        let ids: Vec<&str> = pending.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["evt-0", "evt-1"], "{}: oldest first", t.label());
        assert_eq!(
            pending[1],
            first,
            "{}: stored as first delivered",
            t.label()
        );
        assert_eq!(
            syncers_with_pending_events(&db).await.unwrap(),
            ["acme", "other"]
        );
        assert_eq!(last_received(&db, "acme").await.unwrap(), Some(1_000));
        assert_eq!(last_received(&db, "nobody").await.unwrap(), None);

        let done = ["evt-1".to_owned(), "unknown".to_owned()];
        assert_eq!(
            finish_events(&db, "acme", &done, EventState::Applied, Some(7), 2_000)
                .await
                .unwrap(),
            1
        );
        // Finishing twice changes nothing; the other syncer's evt-1 is untouched.
        assert_eq!(
            finish_events(&db, "acme", &done, EventState::Ignored, None, 2_001)
                .await
                .unwrap(),
            0
        );
        let left: Vec<String> = pending_events(&db, "acme", 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(left, ["evt-0"]);
        assert_eq!(pending_events(&db, "other", 100).await.unwrap().len(), 1);
        // A finished event is still known: a late redelivery is a duplicate, not new work.
        assert_eq!(store_event(&db, &first).await.unwrap(), Stored::Duplicate);

        // Retention prunes finished events only.
        assert_eq!(prune_events(&db, 2_000).await.unwrap(), 0);
        assert_eq!(prune_events(&db, 2_001).await.unwrap(), 1);
        assert_eq!(pending_events(&db, "acme", 100).await.unwrap().len(), 1);
        assert_eq!(pending_events(&db, "other", 100).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn thousands_of_events_finish_in_one_call() {
    on_every_engine(async |t| {
        let db = t.migrated().await;
        let mut ids = Vec::new();
        for i in 0..1_200 {
            let id = format!("evt-{i:05}");
            store_event(&db, &event("acme", &id, i)).await.unwrap();
            ids.push(id);
        }
        assert_eq!(
            pending_events(&db, "acme", 5_000).await.unwrap().len(),
            1_200
        );
        let changed = finish_events(&db, "acme", &ids, EventState::Applied, Some(1), 9_999)
            .await
            .unwrap();
        assert_eq!(changed, 1_200, "{}", t.label());
        assert!(pending_events(&db, "acme", 5_000).await.unwrap().is_empty());
    })
    .await;
}
