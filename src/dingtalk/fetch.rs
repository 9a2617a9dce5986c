//! `fetch_directory`: the whole department tree and every user, at the API's speed limit.
//!
//! The tree walk (`listsub`, one call per department) and the member listing (`v2/user/list`,
//! cursor-paged) run at the same time: DingTalk limits each API separately, so overlapping them
//! roughly halves the wall time without one extra call. At most `max_concurrency` calls are in
//! flight; while both kinds have work each gets half of them, so neither starves the other.
//!
//! The result does not depend on timing: departments come in breadth-first order rebuilt from the
//! listings, users are sorted by userid, and a user listed in several departments keeps the
//! record from the department with the smallest id.
//!
//! Every input is bounded, so an answer that never ends cannot hold a run forever: a member
//! listing stops at an empty page that claims more, at a repeated cursor and after
//! `max_pages_per_department` pages (the directory is then incomplete: nobody is removed); the
//! walk fails past `max_departments`; the whole fetch fails after `fetch_timeout`; and the client
//! reads no answer longer than `max_response_bytes`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{Instrument, debug, info, info_span, warn};

use super::client::{CallCounter, CallCtx, Client, StatsRecorder};
use super::error::DingTalkError;
use super::types::{
    Credentials, Department, DepartmentPayload, Directory, DirectoryUser, FetchStats, User,
    UserPage,
};

/// The root department of every DingTalk organization.
pub const ROOT_DEPT_ID: i64 = 1;
/// How far a fetch got, for a live progress display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchProgress {
    pub departments_walked: u64,
    pub departments_found: usize,
    pub users: usize,
    pub calls: u64,
}

/// A fetch that stopped on an error, with the calls it had made by then: they count against the
/// app's API budget, so the run history records them like a finished fetch's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct FetchError {
    /// The call that stopped the fetch, and why.
    pub error: DingTalkError,
    /// Every call made, the failed one included, by endpoint.
    pub stats: FetchStats,
}

impl FetchError {
    /// Total API calls made before the fetch stopped.
    pub fn total_calls(&self) -> u64 {
        self.stats.values().map(|s| s.calls).sum()
    }
}

/// Progress goes to the info log at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

enum Outcome {
    Children {
        dept_id: i64,
        result: Result<Vec<DepartmentPayload>, DingTalkError>,
    },
    Members {
        dept_id: i64,
        cursor: i64,
        result: Result<UserPage<User>, DingTalkError>,
    },
    /// `department/get` of the root, for its name.
    Root {
        result: Result<DepartmentPayload, DingTalkError>,
    },
}

type Pending<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// What the walk has learned so far.
#[derive(Default)]
struct Walk {
    walk_queue: VecDeque<i64>,
    page_queue: VecDeque<(i64, i64)>,
    visited: HashSet<i64>,
    /// Children of each listed department, in listing order, each department once.
    children: HashMap<i64, Vec<i64>>,
    /// The department whose listing first showed each department. Parents come from the walk,
    /// never from a payload's `parent_id`: every parent was reached before its child, so the
    /// tree cannot hold a cycle whatever the answers claim.
    parents: HashMap<i64, i64>,
    payloads: HashMap<i64, DepartmentPayload>,
    /// The root's name from `department/get` (`listsub` names children only).
    root_name: Option<String>,
    /// Member pages read per department.
    pages_of: HashMap<i64, u64>,
    max_departments: usize,
    max_pages: u64,
    /// userid → (record, department the record came from, departments it was listed in).
    users: BTreeMap<String, (User, i64, BTreeSet<i64>)>,
    /// Records without a userid; kept (the mapping stage reports them), never merged.
    nameless: Vec<(User, i64)>,
    cursors: HashMap<i64, HashSet<i64>>,
    incomplete: Vec<String>,
    departments_walked: u64,
    pages_read: u64,
    skipped_negative: u64,
}

impl Walk {
    fn start(max_departments: usize, max_pages: u64) -> Self {
        let mut walk = Walk {
            max_departments,
            max_pages,
            ..Walk::default()
        };
        walk.visited.insert(ROOT_DEPT_ID);
        walk.walk_queue.push_back(ROOT_DEPT_ID);
        walk.page_queue.push_back((ROOT_DEPT_ID, 0));
        walk
    }

    /// Records the children `parent`'s listing showed. Fails once the walk would pass
    /// `max_departments`: a tree that keeps growing is not a directory to act on.
    fn add_children(
        &mut self,
        parent: i64,
        listed: Vec<DepartmentPayload>,
    ) -> Result<(), DingTalkError> {
        self.departments_walked += 1;
        let mut kids = Vec::new();
        for child in listed {
            let id = child.dept_id;
            if id <= 0 {
                // -1 is the family-school (家校) directory: not part of the organization.
                self.skipped_negative += 1;
                debug!(
                    dept_id = id,
                    parent, "skipping a department with a non-positive id"
                );
                continue;
            }
            if self.visited.contains(&id) {
                debug!(
                    dept_id = id,
                    parent, "department listed twice; walking it once"
                );
                continue;
            }
            if self.visited.len() >= self.max_departments {
                return Err(DingTalkError::TooManyDepartments {
                    limit: self.max_departments,
                });
            }
            if child.parent_id.is_some_and(|claimed| claimed != parent) {
                debug!(
                    dept_id = id,
                    parent,
                    claimed = child.parent_id,
                    "department's parent_id differs from the department that listed it; the listing wins"
                );
            }
            self.visited.insert(id);
            self.parents.insert(id, parent);
            self.payloads.insert(id, child);
            self.walk_queue.push_back(id);
            self.page_queue.push_back((id, 0));
            kids.push(id);
        }
        self.children.insert(parent, kids);
        Ok(())
    }

    fn add_members(&mut self, dept_id: i64, cursor: i64, page: UserPage<User>) {
        self.pages_read += 1;
        let pages = self.pages_of.entry(dept_id).or_default();
        *pages += 1;
        let pages = *pages;
        let empty = page.list.is_empty();
        for user in page.list {
            if user.userid.is_empty() {
                self.nameless.push((user, dept_id));
                continue;
            }
            match self.users.get_mut(&user.userid) {
                Some((kept, kept_from, seen_in)) => {
                    seen_in.insert(dept_id);
                    if dept_id < *kept_from {
                        *kept = user;
                        *kept_from = dept_id;
                    }
                }
                None => {
                    let userid = user.userid.clone();
                    self.users
                        .insert(userid, (user, dept_id, BTreeSet::from([dept_id])));
                }
            }
        }
        if !page.has_more {
            return;
        }
        if empty {
            self.incomplete.push(format!(
                "members of department {dept_id} not fully listed: DingTalk said more members \
                 follow but sent an empty page (cursor {cursor}); paging stopped to avoid a loop"
            ));
            return;
        }
        if pages >= self.max_pages {
            self.incomplete.push(format!(
                "members of department {dept_id} not fully listed: DingTalk still said more \
                 members follow after {pages} pages (`dingtalk.max_pages_per_department`); paging \
                 stopped. Raise the setting only if the department really has more than {} \
                 members",
                pages.saturating_mul(u64::from(super::client::USER_PAGE_SIZE))
            ));
            return;
        }
        let seen = self.cursors.entry(dept_id).or_default();
        seen.insert(cursor);
        match page.next_cursor {
            Some(next) if seen.insert(next) => self.page_queue.push_back((dept_id, next)),
            Some(next) => self.incomplete.push(format!(
                "members of department {dept_id} not fully listed: DingTalk returned cursor \
                 {next} twice, paging stopped to avoid a loop"
            )),
            None => self.incomplete.push(format!(
                "members of department {dept_id} not fully listed: DingTalk said more members \
                 follow but sent no next_cursor"
            )),
        }
    }

    fn departments(&self) -> Vec<Department> {
        let mut order = vec![ROOT_DEPT_ID];
        let mut i = 0;
        while let Some(id) = order.get(i).copied() {
            if let Some(kids) = self.children.get(&id) {
                order.extend(kids.iter().copied());
            }
            i += 1;
        }
        // Departments discovered but whose parent's listing order was lost cannot exist: every
        // discovered department is in exactly one `children` list.
        order
            .into_iter()
            .map(|id| {
                if id == ROOT_DEPT_ID {
                    return Department {
                        dept_id: id,
                        name: self.root_name.clone(),
                        parent_id: None,
                    };
                }
                Department {
                    dept_id: id,
                    name: self.payloads.get(&id).and_then(|p| p.name.clone()),
                    parent_id: self.parents.get(&id).copied(),
                }
            })
            .collect()
    }

    fn users(self) -> Vec<DirectoryUser> {
        let nameless = self
            .nameless
            .into_iter()
            .map(|(profile, dept)| DirectoryUser {
                profile,
                seen_in: vec![dept],
            });
        let named = self
            .users
            .into_values()
            .map(|(profile, _, seen_in)| DirectoryUser {
                profile,
                seen_in: seen_in.into_iter().collect(),
            });
        nameless.chain(named).collect()
    }
}

impl Client {
    /// Fetches the whole directory of the organization behind `creds`.
    ///
    /// A department-level failure (60003 gone, 50004 out of scope) is recorded and the walk goes
    /// on; the result is then marked incomplete with one reason per failure. Any other failure
    /// aborts the fetch with an error: a failed fetch never looks like an empty directory.
    pub async fn fetch_directory(&self, creds: &Credentials) -> Result<Directory, FetchError> {
        self.fetch_directory_with_progress(creds, None).await
    }

    /// [`Client::fetch_directory`], publishing how far the walk got after every answer (for a
    /// live progress bar).
    pub async fn fetch_directory_with_progress(
        &self,
        creds: &Credentials,
        progress: Option<watch::Sender<FetchProgress>>,
    ) -> Result<Directory, FetchError> {
        self.fetch_directory_counted(creds, progress, CallCounter::new())
            .await
    }

    /// [`Client::fetch_directory_with_progress`], counting every call into `counter` as it is
    /// sent, so that whoever drops the fetch (a cancelled run) still knows the calls it made.
    /// The whole fetch is bounded by `fetch_timeout`.
    pub async fn fetch_directory_counted(
        &self,
        creds: &Credentials,
        progress: Option<watch::Sender<FetchProgress>>,
        counter: CallCounter,
    ) -> Result<Directory, FetchError> {
        let span = info_span!("dingtalk_fetch", app_key = %creds.app_key);
        let stats = StatsRecorder::counting(counter);
        let limit = self.config().fetch_timeout;
        let fetch = self.fetch(creds, progress, &stats).instrument(span);
        let fetched = match tokio::time::timeout(limit, fetch).await {
            Ok(fetched) => fetched,
            Err(_) => {
                let calls = stats.total_calls();
                warn!(
                    app_key = %creds.app_key,
                    limit_s = limit.as_secs_f64(),
                    calls,
                    "DingTalk fetch stopped: dingtalk.fetch_timeout reached"
                );
                Err(DingTalkError::FetchTimeout { limit, calls })
            }
        };
        fetched.map_err(|error| FetchError {
            error,
            stats: stats.snapshot(),
        })
    }

    async fn fetch(
        &self,
        creds: &Credentials,
        progress: Option<watch::Sender<FetchProgress>>,
        stats: &StatsRecorder,
    ) -> Result<Directory, DingTalkError> {
        let started = Instant::now();
        let ctx = self.ctx(creds, stats);
        info!(
            max_concurrency = self.config().max_concurrency,
            qps_per_api = self.config().qps_per_api,
            "DingTalk fetch started"
        );
        // Prove the credentials once before fanning out.
        self.access_token(&ctx).await?;

        let mut walk = Walk::start(
            self.config().max_departments,
            self.config().max_pages_per_department,
        );
        let mut lanes = Lanes::new(self.config().max_concurrency);
        let mut in_flight: FuturesUnordered<Pending<'_>> = FuturesUnordered::new();
        // The root's own name, as Casdoor shows it on the root group: one call per fetch.
        in_flight.push(self.request(&ctx, Request::Root));
        let mut ticker = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);

        loop {
            if let Some(tx) = &progress {
                tx.send_replace(walk.progress(stats.total_calls()));
            }
            while in_flight.len() < lanes.max {
                let Some(request) = lanes.next(&mut walk) else {
                    break;
                };
                in_flight.push(self.request(&ctx, request));
            }
            tokio::select! {
                outcome = in_flight.next() => {
                    let Some(outcome) = outcome else { break };
                    lanes.finished(&outcome);
                    walk.record(outcome)?;
                }
                _ = ticker.tick() => walk.log_progress(stats.total_calls(), started),
            }
        }
        drop(in_flight);
        Ok(walk.finish(stats.snapshot(), started))
    }

    /// The call behind one request, as a future the walk can hold among the others in flight.
    fn request<'a>(&'a self, ctx: &'a CallCtx<'a>, request: Request) -> Pending<'a> {
        match request {
            Request::Root => Box::pin(async move {
                Outcome::Root {
                    result: self.department_get(ctx, ROOT_DEPT_ID).await,
                }
            }),
            Request::Children(dept_id) => Box::pin(async move {
                Outcome::Children {
                    dept_id,
                    result: self.list_sub(ctx, dept_id).await,
                }
            }),
            Request::Members(dept_id, cursor) => Box::pin(async move {
                Outcome::Members {
                    dept_id,
                    cursor,
                    result: self.user_page(ctx, dept_id, cursor).await,
                }
            }),
        }
    }
}

/// A call the walk wants made.
enum Request {
    /// `department/get` of the root, for its name.
    Root,
    /// `listsub` of a department.
    Children(i64),
    /// One `v2/user/list` page of a department, at a cursor.
    Members(i64, i64),
}

/// The in-flight slots: at most `max` calls, and while both the tree walk and the member listing
/// have work, each kind gets half of them so neither starves the other.
struct Lanes {
    max: usize,
    half: usize,
    walking: usize,
    paging: usize,
}

impl Lanes {
    fn new(max_concurrency: usize) -> Self {
        let max = max_concurrency.max(1);
        Lanes {
            max,
            half: max.div_ceil(2),
            walking: 0,
            paging: 0,
        }
    }

    /// The next call to send, if a slot of its kind is free and there is work for it.
    fn next(&mut self, walk: &mut Walk) -> Option<Request> {
        let paging_active = self.paging > 0 || !walk.page_queue.is_empty();
        let walking_active = self.walking > 0 || !walk.walk_queue.is_empty();
        let walk_cap = if paging_active { self.half } else { self.max };
        let page_cap = if walking_active {
            self.max - self.half
        } else {
            self.max
        };
        if self.walking < walk_cap
            && let Some(dept_id) = walk.walk_queue.pop_front()
        {
            self.walking += 1;
            return Some(Request::Children(dept_id));
        }
        if self.paging < page_cap
            && let Some((dept_id, cursor)) = walk.page_queue.pop_front()
        {
            self.paging += 1;
            return Some(Request::Members(dept_id, cursor));
        }
        None
    }

    /// Frees the slot of a call that answered.
    fn finished(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Children { .. } => self.walking -= 1,
            Outcome::Members { .. } => self.paging -= 1,
            Outcome::Root { .. } => {}
        }
    }
}

impl Walk {
    /// Folds one answer into the walk. A department-level failure (gone, out of scope) marks
    /// the directory incomplete and the walk goes on; any other failure ends the fetch.
    fn record(&mut self, outcome: Outcome) -> Result<(), DingTalkError> {
        match outcome {
            Outcome::Children { dept_id, result } => match result {
                Ok(listed) => self.add_children(dept_id, listed)?,
                Err(e) if e.is_department_level() => {
                    warn!(dept_id, error = %e, "department skipped: its sub-departments could not be listed");
                    self.incomplete.push(format!(
                        "sub-departments of department {dept_id} not listed (its whole subtree is missing): {e}"
                    ));
                }
                Err(e) => return Err(e),
            },
            Outcome::Members {
                dept_id,
                cursor,
                result,
            } => match result {
                Ok(page) => self.add_members(dept_id, cursor, page),
                Err(e) if e.is_department_level() => {
                    warn!(dept_id, error = %e, "department skipped: its members could not be listed");
                    self.incomplete
                        .push(format!("members of department {dept_id} not listed: {e}"));
                }
                Err(e) => return Err(e),
            },
            Outcome::Root { result } => match result {
                Ok(root) => self.root_name = root.name.filter(|n| !n.trim().is_empty()),
                // A name only: the directory is whole without it, and the root group keeps the
                // organization's display name.
                Err(e) => warn!(
                    error = %e,
                    "the root department's name could not be read; the root group is named after the organization"
                ),
            },
        }
        Ok(())
    }

    fn progress(&self, calls: u64) -> FetchProgress {
        FetchProgress {
            departments_walked: self.departments_walked,
            departments_found: self.visited.len(),
            users: self.users.len(),
            calls,
        }
    }

    fn log_progress(&self, calls: u64, started: Instant) {
        info!(
            departments_walked = self.departments_walked,
            departments_found = self.visited.len(),
            user_pages = self.pages_read,
            users = self.users.len(),
            calls,
            elapsed_s = started.elapsed().as_secs(),
            "DingTalk fetch in progress"
        );
    }

    /// The directory the walk found, logged with its totals.
    fn finish(mut self, stats: FetchStats, started: Instant) -> Directory {
        let departments = self.departments();
        let incomplete_reasons = std::mem::take(&mut self.incomplete);
        let skipped_negative = self.skipped_negative;
        let users = self.users();
        let directory = Directory {
            departments,
            users,
            complete: incomplete_reasons.is_empty(),
            incomplete_reasons,
            stats,
        };
        let retries: u64 = directory.stats.values().map(|s| s.retries).sum();
        let throttled: u64 = directory.stats.values().map(|s| s.throttled).sum();
        info!(
            departments = directory.departments.len(),
            users = directory.users.len(),
            calls = directory.total_calls(),
            retries,
            throttled,
            skipped_negative,
            complete = directory.complete,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "DingTalk fetch finished"
        );
        directory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dept(id: i64, parent: i64) -> DepartmentPayload {
        DepartmentPayload {
            dept_id: id,
            name: Some(format!("d{id}")),
            parent_id: Some(parent),
            ..Default::default()
        }
    }

    fn user(id: &str, order: i64) -> User {
        User {
            userid: id.to_owned(),
            dept_order: Some(order),
            ..Default::default()
        }
    }

    fn walk() -> Walk {
        Walk::start(1_000, 100)
    }

    #[test]
    fn walk_skips_negative_ids_and_cycles_and_orders_breadth_first() {
        let mut w = walk();
        w.walk_queue.clear();
        w.add_children(1, vec![dept(20, 1), dept(-1, 1), dept(10, 1)])
            .unwrap();
        w.add_children(20, vec![dept(30, 20), dept(1, 20)]).unwrap();
        w.add_children(10, vec![dept(40, 10), dept(30, 10)])
            .unwrap();
        w.add_children(30, vec![]).unwrap();
        w.add_children(40, vec![]).unwrap();
        let order: Vec<i64> = w.departments().iter().map(|d| d.dept_id).collect();
        assert_eq!(order, vec![1, 20, 10, 30, 40]);
        assert_eq!(w.skipped_negative, 1);
        let root = &w.departments()[0];
        assert_eq!(root.name, None);
        assert_eq!(root.parent_id, None);
    }

    #[test]
    fn parents_come_from_the_listing_not_from_the_payload() {
        let mut w = walk();
        // 10 claims 20 as its parent and 20 claims 10: a cycle, if the payload were believed.
        w.add_children(1, vec![dept(10, 20)]).unwrap();
        w.add_children(10, vec![dept(20, 10), dept(30, 999)])
            .unwrap();
        let parents: Vec<(i64, Option<i64>)> = w
            .departments()
            .iter()
            .map(|d| (d.dept_id, d.parent_id))
            .collect();
        assert_eq!(
            parents,
            vec![(1, None), (10, Some(1)), (20, Some(10)), (30, Some(10))]
        );
    }

    #[test]
    fn a_walk_past_max_departments_fails() {
        let mut w = Walk::start(3, 100);
        w.add_children(1, vec![dept(10, 1), dept(20, 1)]).unwrap();
        let e = w.add_children(10, vec![dept(30, 10)]).unwrap_err();
        assert_eq!(e, DingTalkError::TooManyDepartments { limit: 3 });
        assert!(e.to_string().contains("dingtalk.max_departments"), "{e}");
    }

    #[test]
    fn users_are_merged_by_userid_deterministically() {
        let mut w = walk();
        w.page_queue.clear();
        let page = |users: Vec<User>| UserPage {
            has_more: false,
            next_cursor: None,
            list: users,
        };
        w.add_members(30, 0, page(vec![user("b", 30), user("a", 30)]));
        w.add_members(10, 0, page(vec![user("a", 10)]));
        w.add_members(20, 0, page(vec![user("a", 20), user("", 0)]));
        let users = w.users();
        assert_eq!(users.len(), 3);
        assert_eq!(users[0].profile.userid, "");
        assert_eq!(users[1].profile.userid, "a");
        assert_eq!(users[1].seen_in, vec![10, 20, 30]);
        assert_eq!(users[1].profile.dept_order, Some(10));
        assert_eq!(users[2].seen_in, vec![30]);
    }

    #[test]
    fn paging_follows_next_cursor_verbatim_and_stops_on_a_repeat() {
        let mut w = walk();
        w.page_queue.clear();
        let more = |next| UserPage {
            has_more: true,
            next_cursor: next,
            list: vec![user("u", 1)],
        };
        w.add_members(5, 0, more(Some(4711)));
        assert_eq!(w.page_queue.pop_front(), Some((5, 4711)));
        w.add_members(5, 4711, more(Some(0)));
        assert!(w.page_queue.is_empty());
        assert_eq!(w.incomplete.len(), 1, "{:?}", w.incomplete);
        w.add_members(6, 0, more(None));
        assert_eq!(w.incomplete.len(), 2);
        assert!(w.incomplete[1].contains("department 6"));
    }

    #[test]
    fn paging_stops_on_an_empty_page_that_claims_more_and_after_max_pages() {
        let mut w = Walk::start(1_000, 3);
        w.page_queue.clear();
        let empty = UserPage {
            has_more: true,
            next_cursor: Some(100),
            list: vec![],
        };
        w.add_members(7, 0, empty);
        assert!(w.page_queue.is_empty());
        assert!(w.incomplete[0].contains("empty page"), "{:?}", w.incomplete);

        let full = |next| UserPage {
            has_more: true,
            next_cursor: Some(next),
            list: vec![user("u", 1)],
        };
        w.add_members(8, 0, full(100));
        w.add_members(8, 100, full(200));
        assert_eq!(w.page_queue.len(), 2);
        w.add_members(8, 200, full(300));
        assert_eq!(w.page_queue.len(), 2, "the third page is the last one read");
        assert!(
            w.incomplete[1].contains("dingtalk.max_pages_per_department"),
            "{:?}",
            w.incomplete
        );
    }
}
