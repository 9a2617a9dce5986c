//! The Stream event inbox (`syncer_event`) on every engine: an event is stored once however
//! often DingTalk delivers it, stays `pending` until a run finishes it, and only finished events
//! are pruned.

mod common;

use common::on_every_engine;
use syncerd::db::inbox::{
    EventState, InboxEvent, Stored, finish_events, last_received, pending_events, prune_events,
    store_event, store_events, syncers_with_pending_events,
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

#[tokio::test]
async fn a_batch_of_events_stores_only_the_ones_the_inbox_lacks() {
    on_every_engine(async |t| {
        let db = t.migrated().await;
        store_event(&db, &event("acme", "evt-known", 1))
            .await
            .unwrap();
        let mut batch: Vec<InboxEvent> = (0..1_100)
            .map(|i| event("acme", &format!("evt-{i:05}"), 10 + i))
            .collect();
        batch.push(event("acme", "evt-known", 5_000));
        batch.push(event("acme", "evt-00007", 5_001));
        // Not this syncer's: left out.
        batch.push(event("other", "evt-other", 5_002));
        assert_eq!(
            store_events(&db, "acme", &batch).await.unwrap(),
            1_100,
            "{}",
            t.label()
        );
        let pending = pending_events(&db, "acme", 5_000).await.unwrap();
        assert_eq!(pending.len(), 1_101, "{}", t.label());
        let known = pending.iter().find(|e| e.event_id == "evt-known").unwrap();
        assert_eq!(known.received_at, 1, "{}: not overwritten", t.label());
        let seventh = pending.iter().find(|e| e.event_id == "evt-00007").unwrap();
        assert_eq!(
            seventh.received_at,
            17,
            "{}: the first copy wins",
            t.label()
        );
        assert!(pending_events(&db, "other", 10).await.unwrap().is_empty());
        // Everything again: nothing new.
        assert_eq!(store_events(&db, "acme", &batch).await.unwrap(), 0);
        assert_eq!(store_events(&db, "acme", &[]).await.unwrap(), 0);
    })
    .await;
}

mod applier {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use syncerd::daemon::RunSummary;
    use syncerd::daemon::events::{ApplierTiming, EventBatch, apply_events};
    use syncerd::db::RunStatus;
    use syncerd::db::inbox::{pending_events, store_event};
    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;

    use super::common::{eventually, on_every_engine};
    use super::event;

    const TIMING: ApplierTiming = ApplierTiming {
        coalesce: Duration::from_millis(30),
        retry: Duration::from_millis(30),
        db_timeout: Duration::from_secs(10),
    };

    fn summary(status: RunStatus, run_id: i64) -> RunSummary {
        let mut s = RunSummary::bare(status, Duration::from_millis(5), None);
        s.run_id = Some(run_id);
        s
    }

    #[tokio::test]
    async fn a_burst_becomes_one_run_and_a_failed_run_leaves_its_events_pending() {
        on_every_engine(async |t| {
            let db = t.migrated().await;
            // Left by a previous process: applied when the applier starts, without a wake.
            let mut leave = event("acme", "evt-1", 1);
            leave.event_type = "user_leave_org".into();
            store_event(&db, &leave).await.unwrap();
            let mut admin = event("acme", "evt-2", 2);
            admin.event_type = "org_admin_add".into();
            store_event(&db, &admin).await.unwrap();
            let mut other = event("other", "evt-3", 3);
            other.user_ids = vec!["not-mine".into()];
            store_event(&db, &other).await.unwrap();

            let batches: Arc<Mutex<Vec<EventBatch>>> = Arc::default();
            // The first run fails, the next ones succeed.
            // Popped from the end: the backlog fails, then applies; the burst is held.
            let statuses = Arc::new(Mutex::new(vec![
                RunStatus::Held,
                RunStatus::Succeeded,
                RunStatus::Failed,
            ]));
            let wake = Arc::new(Notify::new());
            let cancel = CancellationToken::new();
            let task = tokio::spawn(apply_events(
                db.clone(),
                "acme".into(),
                wake.clone(),
                TIMING,
                cancel.clone(),
                {
                    let (batches, statuses) = (batches.clone(), statuses.clone());
                    move |batch: EventBatch| {
                        let (batches, statuses) = (batches.clone(), statuses.clone());
                        async move {
                            let mut b = batches.lock().unwrap();
                            b.push(batch);
                            let status = statuses
                                .lock()
                                .unwrap()
                                .pop()
                                .unwrap_or(RunStatus::Succeeded);
                            Some(summary(status, b.len() as i64))
                        }
                    }
                },
                |_: &[i64]| {},
            ));
            eventually(
                Duration::from_secs(20),
                "the start-up backlog applied",
                || async { pending_events(&db, "acme", 10).await.unwrap().is_empty() },
            )
            .await;
            {
                let b = batches.lock().unwrap();
                assert_eq!(
                    b.len(),
                    2,
                    "{}: failed once, then applied: {b:?}",
                    t.label()
                );
                assert_eq!(b[0].acted_on, ["evt-1"]);
                assert_eq!(b[0].ignored, ["evt-2"]);
                // The retry carries the same work; the ignored event was finished at once.
                assert_eq!(
                    (&b[1].acted_on, &b[1].user_ids),
                    (&b[0].acted_on, &b[0].user_ids)
                );
                assert!(b[1].ignored.is_empty());
                assert!(!b[0].user_ids.contains("not-mine"));
            }

            // A burst stored before the wake is one run; it is held, and its events are set
            // aside (the approved full run covers them), not looked up again and again.
            for i in 0..50 {
                let mut e = event("acme", &format!("burst-{i:02}"), 100 + i);
                e.user_ids = vec![format!("user-{i}")];
                store_event(&db, &e).await.unwrap();
            }
            wake.notify_one();
            eventually(Duration::from_secs(20), "the burst set aside", || async {
                pending_events(&db, "acme", 100).await.unwrap().is_empty()
            })
            .await;
            {
                let b = batches.lock().unwrap();
                assert_eq!(b.len(), 3, "{}: {b:?}", t.label());
                assert_eq!(b[2].acted_on.len(), 50);
                assert_eq!(b[2].user_ids.len(), 50);
            }
            // The next event's run carries that event alone.
            let mut next = event("acme", "after-hold", 500);
            next.user_ids = vec!["user-after".into()];
            store_event(&db, &next).await.unwrap();
            wake.notify_one();
            eventually(
                Duration::from_secs(20),
                "the next event applied",
                || async { pending_events(&db, "acme", 100).await.unwrap().is_empty() },
            )
            .await;
            {
                let b = batches.lock().unwrap();
                assert_eq!(b.len(), 4, "{}: {b:?}", t.label());
                assert_eq!(b[3].acted_on, ["after-hold"]);
            }
            // The other syncer's event was never touched.
            assert_eq!(pending_events(&db, "other", 10).await.unwrap().len(), 1);
            cancel.cancel();
            task.await.unwrap();
        })
        .await;
    }
}
