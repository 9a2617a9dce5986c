//! The simulated organization: generated from a seed, changeable between runs.
//!
//! Pure data, no I/O: the server and the control API lock it and call these methods.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::SimulatorError;
use crate::dingtalk::fetch::ROOT_DEPT_ID;
use crate::dingtalk::rng::SplitMix64;
use crate::dingtalk::types::User;

/// A department of the simulated organization. The root has `parent_id: None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimDepartment {
    pub dept_id: i64,
    pub name: String,
    pub parent_id: Option<i64>,
}

/// A user of the simulated organization: the profile DingTalk returns (its `dept_id_list` is the
/// membership) plus the departments the user leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimUser {
    pub profile: User,
    #[serde(default)]
    pub leader_in: BTreeSet<i64>,
}

/// A departure as DingTalk's leave records (`empLeaveRecords`) list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimLeaveRecord {
    pub userid: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub mobile: Option<String>,
    #[serde(default)]
    pub state_code: Option<String>,
    /// When the user left, epoch milliseconds.
    pub leave_time_ms: i64,
    /// `oapi`, `cancel`, `leave`, `unknown` or `delete`.
    #[serde(default = "default_leave_reason")]
    pub reason: String,
}

fn default_leave_reason() -> String {
    "leave".to_owned()
}

/// Leave records kept at most; the oldest are dropped beyond it.
const MAX_LEAVE_RECORDS: usize = 100_000;

/// A copy of the whole organization, for tests and the control API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgSnapshot {
    pub company_name: String,
    /// Root first, then in creation order.
    pub departments: Vec<SimDepartment>,
    /// In creation order (which is the listing order inside a department).
    pub users: Vec<SimUser>,
}

impl OrgSnapshot {
    /// Direct members per department (departments without members included, with 0).
    pub fn members_per_department(&self) -> BTreeMap<i64, usize> {
        let mut counts: BTreeMap<i64, usize> =
            self.departments.iter().map(|d| (d.dept_id, 0)).collect();
        for user in &self.users {
            for dept in user.profile.dept_id_list.iter().flatten() {
                if let Some(c) = counts.get_mut(dept) {
                    *c += 1;
                }
            }
        }
        counts
    }

    /// The fewest calls a complete fetch can make with pages of `page_size`: one token, one
    /// `department/get` of the root (its name), one `listsub` per department and
    /// `max(1, ⌈members/page_size⌉)` user pages per department.
    pub fn minimum_fetch_calls(&self, page_size: usize) -> u64 {
        let pages: usize = self
            .members_per_department()
            .values()
            .map(|m| m.div_ceil(page_size.max(1)).max(1))
            .sum();
        2 + self.departments.len() as u64 + pages as u64
    }
}

/// Changes to one user; absent fields stay as they are. `Some(None)` is not expressible for the
/// optional profile fields: use [`UserPatch::clear`] to remove them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserPatch {
    pub name: Option<String>,
    pub title: Option<String>,
    pub email: Option<String>,
    pub mobile: Option<String>,
    pub job_number: Option<String>,
    pub active: Option<bool>,
    /// The new set of departments (replaces the old one; must not be empty).
    pub dept_id_list: Option<Vec<i64>>,
    /// Profile fields to remove: any of `title`, `email`, `mobile`, `job_number`, `avatar`,
    /// `org_email`, `hired_date`.
    pub clear: Vec<String>,
}

#[derive(Debug, Clone)]
struct Record {
    user: SimUser,
    seq: u64,
}

#[derive(Debug, Clone)]
struct DeptRecord {
    dept: SimDepartment,
    seq: u64,
}

/// The organization the simulator serves.
#[derive(Debug, Clone)]
pub struct Org {
    company_name: String,
    departments: BTreeMap<i64, DeptRecord>,
    users: BTreeMap<String, Record>,
    /// Direct members per department in listing order; rebuilt after a change.
    members: HashMap<i64, Vec<String>>,
    members_dirty: bool,
    next_seq: u64,
    next_dept_id: i64,
    next_user_no: u64,
    /// Userids removed (people who left): `user/get` answers 60121 for them.
    left: BTreeSet<String>,
    /// The leave records, oldest first.
    leave_records: VecDeque<SimLeaveRecord>,
    /// Whether root's `listsub` also shows the family-school directory (id -1).
    pub family_school: bool,
}

const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "林", "罗", "高", "欧阳", "司马", "诸葛", "上官",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟",
    "涛", "明", "超", "秀兰", "霞", "平", "刚", "桂英", "子涵", "浩然", "一诺", "梓萱", "宇轩",
];
const EMOJI: &[&str] = &["🐱", "🌟", "🚀", "🍀", "😀", "🐼", "🔥", "🎉"];
const DEPT_WORDS: &[&str] = &[
    "研发",
    "产品",
    "销售",
    "市场",
    "财务",
    "人力资源",
    "法务",
    "运营",
    "客服",
    "采购",
    "质量",
    "测试",
    "设计",
    "数据",
    "安全",
    "基础架构",
    "行政",
    "战略",
    "国际业务",
    "华东大区",
    "华南大区",
    "西北大区",
    "供应链",
    "品牌",
    "公关",
    "投资",
];
const DEPT_SUFFIX: &[&str] = &["部", "中心", "组", "一组", "二组", "事业部", "项目组"];
const TITLES: &[&str] = &[
    "工程师",
    "高级工程师",
    "产品经理",
    "销售代表",
    "会计",
    "人事专员",
    "设计师",
    "运营专员",
    "部门经理",
    "总监",
    "实习生",
    "Staff Engineer",
];
const WORK_PLACES: &[&str] = &["杭州", "北京", "上海", "深圳", "成都", "Singapore"];

/// Parameters of a generated organization.
#[derive(Debug, Clone, Copy)]
pub struct OrgShape {
    pub users: usize,
    pub departments: usize,
    pub max_depth: usize,
    pub seed: u64,
}

impl Org {
    /// A deterministic organization for `shape.seed`: `shape.departments` departments below the
    /// root, at most `shape.max_depth` levels deep, and `shape.users` users in 1–3 departments
    /// each, with a share of missing optional fields, inactive users, emoji and long names.
    pub fn generate(shape: OrgShape, company_name: &str) -> Org {
        let mut rng = SplitMix64::new(shape.seed);
        let mut org = Org {
            company_name: company_name.to_owned(),
            departments: BTreeMap::new(),
            users: BTreeMap::new(),
            members: HashMap::new(),
            members_dirty: true,
            next_seq: 0,
            next_dept_id: 0,
            next_user_no: 0,
            left: BTreeSet::new(),
            leave_records: VecDeque::new(),
            family_school: false,
        };
        org.insert_department(SimDepartment {
            dept_id: ROOT_DEPT_ID,
            name: company_name.to_owned(),
            parent_id: None,
        });
        let max_depth = shape.max_depth.max(1);
        // (id, depth) of departments that may still get children.
        let mut open: Vec<(i64, usize)> = vec![(ROOT_DEPT_ID, 0)];
        for i in 0..shape.departments {
            let (parent, depth) = open
                .get(rng.index(open.len()))
                .copied()
                .unwrap_or((ROOT_DEPT_ID, 0));
            let dept_id = 100_000_000 + (i as i64 + 1) * 1_000 + rng.below(1_000) as i64;
            let name = format!(
                "{}{}{}",
                rng.pick(DEPT_WORDS).copied().unwrap_or("研发"),
                rng.pick(DEPT_SUFFIX).copied().unwrap_or("部"),
                if rng.chance(0.3) {
                    format!("{}", i + 1)
                } else {
                    String::new()
                }
            );
            org.insert_department(SimDepartment {
                dept_id,
                name,
                parent_id: Some(parent),
            });
            if depth + 1 < max_depth {
                open.push((dept_id, depth + 1));
            }
        }
        org.next_dept_id = 100_000_000 + (shape.departments as i64 + 2) * 1_000;

        // Membership is skewed (a few big departments, many small ones) over a shuffled order,
        // so some departments need several pages.
        let mut pool: Vec<i64> = org.departments.keys().copied().collect();
        for i in (1..pool.len()).rev() {
            let j = rng.index(i + 1);
            pool.swap(i, j);
        }
        for _ in 0..shape.users {
            let user = org.generate_user(&mut rng, &pool);
            org.insert_user(user);
        }
        org
    }

    fn generate_user(&mut self, rng: &mut SplitMix64, pool: &[i64]) -> SimUser {
        let no = self.next_user_no;
        self.next_user_no += 1;
        let userid = format!("{:02}{:07}{:03}", rng.below(100), no, rng.below(1_000));
        let k = if rng.chance(0.05) {
            3
        } else if rng.chance(0.2) {
            2
        } else {
            1
        };
        let mut depts = BTreeSet::new();
        for _ in 0..k {
            let u = rng.next_f64();
            let idx = ((u * u) * pool.len() as f64) as usize;
            if let Some(d) = pool.get(idx.min(pool.len().saturating_sub(1))) {
                depts.insert(*d);
            }
        }
        if depts.is_empty() {
            depts.insert(ROOT_DEPT_ID);
        }
        let mut name = format!(
            "{}{}",
            rng.pick(SURNAMES).copied().unwrap_or("王"),
            rng.pick(GIVEN).copied().unwrap_or("伟")
        );
        if rng.chance(0.04) {
            name.push_str(rng.pick(EMOJI).copied().unwrap_or("🐱"));
        }
        if rng.chance(0.02) {
            while name.chars().count() < 40 + rng.index(20) {
                name.push_str(rng.pick(GIVEN).copied().unwrap_or("伟"));
                if rng.chance(0.2) {
                    name.push('·');
                }
            }
            name = name.chars().take(60).collect();
        }
        let unionid: String = (0..20)
            .map(|_| {
                let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
                char::from(alphabet[rng.index(alphabet.len())])
            })
            .collect();
        let has_mobile = rng.chance(0.9);
        let profile = User {
            userid: userid.clone(),
            unionid: Some(unionid),
            name: Some(name),
            avatar: rng
                .chance(0.5)
                .then(|| format!("https://static.example.com/avatar/{userid}.png")),
            state_code: has_mobile.then(|| "86".to_owned()),
            mobile: has_mobile
                .then(|| format!("1{}{:09}", 3 + rng.below(7), rng.below(1_000_000_000))),
            hide_mobile: Some(rng.chance(0.05)),
            telephone: None,
            // One in ten has no job number: DingTalk sends it empty or leaves it out.
            job_number: if rng.chance(0.9) {
                Some(format!("A{no:05}"))
            } else {
                no.is_multiple_of(2).then(String::new)
            },
            title: rng
                .chance(0.9)
                .then(|| rng.pick(TITLES).copied().unwrap_or("工程师").to_owned()),
            email: rng.chance(0.85).then(|| format!("user{no}@example.com")),
            org_email: rng.chance(0.4).then(|| format!("u{no}@corp.example.com")),
            work_place: rng
                .chance(0.6)
                .then(|| rng.pick(WORK_PLACES).copied().unwrap_or("杭州").to_owned()),
            remark: None,
            dept_id_list: Some(depts.iter().copied().collect()),
            dept_order: None,
            extension: rng
                .chance(0.1)
                .then(|| format!("{{\"工位\":\"A-{}-{}\"}}", rng.below(9), rng.below(40))),
            hired_date: rng
                .chance(0.75)
                .then(|| 1_500_000_000_000 + rng.below(250_000_000_000) as i64),
            active: Some(!rng.chance(0.08)),
            admin: Some(no == 0),
            boss: Some(no == 0),
            leader: None,
            exclusive_account: Some(false),
        };
        let leader_in = if rng.chance(0.03) {
            depts.iter().take(1).copied().collect()
        } else {
            BTreeSet::new()
        };
        SimUser { profile, leader_in }
    }

    fn insert_department(&mut self, dept: SimDepartment) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.departments
            .insert(dept.dept_id, DeptRecord { dept, seq });
    }

    fn insert_user(&mut self, user: SimUser) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.users
            .insert(user.profile.userid.clone(), Record { user, seq });
        self.members_dirty = true;
    }

    pub fn company_name(&self) -> &str {
        &self.company_name
    }

    pub fn department(&self, dept_id: i64) -> Option<&SimDepartment> {
        self.departments.get(&dept_id).map(|r| &r.dept)
    }

    pub fn user(&self, userid: &str) -> Option<&SimUser> {
        self.users.get(userid).map(|r| &r.user)
    }

    /// Whether `userid` was in the organization and was removed (and not added back).
    pub fn has_left(&self, userid: &str) -> bool {
        self.left.contains(userid)
    }

    /// Adds a leave record, in time order (the oldest is dropped beyond [`MAX_LEAVE_RECORDS`]).
    pub fn record_leave(&mut self, record: SimLeaveRecord) {
        let at = self
            .leave_records
            .partition_point(|r| r.leave_time_ms <= record.leave_time_ms);
        self.leave_records.insert(at, record);
        while self.leave_records.len() > MAX_LEAVE_RECORDS {
            self.leave_records.pop_front();
        }
    }

    /// The leave records from `from_ms` to `to_ms` (both included), oldest first.
    pub fn leave_records_between(&self, from_ms: i64, to_ms: i64) -> Vec<&SimLeaveRecord> {
        self.leave_records
            .iter()
            .filter(|r| (from_ms..=to_ms).contains(&r.leave_time_ms))
            .collect()
    }

    /// Every leave record, oldest first.
    pub fn leave_records(&self) -> Vec<SimLeaveRecord> {
        self.leave_records.iter().cloned().collect()
    }

    pub fn user_count(&self, only_active: bool) -> usize {
        self.users
            .values()
            .filter(|r| !only_active || r.user.profile.active == Some(true))
            .count()
    }

    /// Direct children of a department, in creation order.
    pub fn children(&self, dept_id: i64) -> Vec<&SimDepartment> {
        let mut kids: Vec<&DeptRecord> = self
            .departments
            .values()
            .filter(|r| r.dept.parent_id == Some(dept_id))
            .collect();
        kids.sort_by_key(|r| r.seq);
        kids.into_iter().map(|r| &r.dept).collect()
    }

    fn rebuild_members(&mut self) {
        if !self.members_dirty {
            return;
        }
        let mut records: Vec<&Record> = self.users.values().collect();
        records.sort_by_key(|r| r.seq);
        let mut members: HashMap<i64, Vec<String>> = HashMap::new();
        for r in records {
            for dept in r.user.profile.dept_id_list.iter().flatten() {
                members
                    .entry(*dept)
                    .or_default()
                    .push(r.user.profile.userid.clone());
            }
        }
        self.members = members;
        self.members_dirty = false;
    }

    /// Direct members of a department in listing order, as `v2/user/list` returns them
    /// (`dept_order` and `leader` are those of this department).
    pub fn members_page(&mut self, dept_id: i64, offset: usize, size: usize) -> (Vec<User>, bool) {
        self.rebuild_members();
        let ids = self.members.get(&dept_id).map(Vec::as_slice).unwrap_or(&[]);
        let end = offset.saturating_add(size).min(ids.len());
        let page = ids
            .get(offset.min(end)..end)
            .unwrap_or(&[])
            .iter()
            .filter_map(|id| self.users.get(id))
            .map(|r| {
                let mut u = r.user.profile.clone();
                u.dept_order = Some(r.seq as i64 * 16);
                u.leader = Some(r.user.leader_in.contains(&dept_id));
                u
            })
            .collect();
        (page, end < ids.len())
    }

    /// Members of a department and of all departments below it (distinct users).
    pub fn member_count(&mut self, dept_id: i64, include_subtree: bool) -> usize {
        self.rebuild_members();
        let mut depts = vec![dept_id];
        if include_subtree {
            let mut i = 0;
            while let Some(d) = depts.get(i).copied() {
                depts.extend(self.children(d).iter().map(|c| c.dept_id));
                i += 1;
            }
        }
        let ids: BTreeSet<&String> = depts
            .iter()
            .filter_map(|d| self.members.get(d))
            .flatten()
            .collect();
        ids.len()
    }

    pub fn snapshot(&self) -> OrgSnapshot {
        let mut departments: Vec<&DeptRecord> = self.departments.values().collect();
        departments.sort_by_key(|r| r.seq);
        let mut users: Vec<&Record> = self.users.values().collect();
        users.sort_by_key(|r| r.seq);
        OrgSnapshot {
            company_name: self.company_name.clone(),
            departments: departments.into_iter().map(|r| r.dept.clone()).collect(),
            users: users.into_iter().map(|r| r.user.clone()).collect(),
        }
    }

    fn check_departments(&self, list: &[i64]) -> Result<(), SimulatorError> {
        if list.is_empty() {
            return Err(SimulatorError::Invalid(
                "a user needs at least one department".into(),
            ));
        }
        match list.iter().find(|d| !self.departments.contains_key(d)) {
            Some(missing) => Err(SimulatorError::UnknownDepartment(*missing)),
            None => Ok(()),
        }
    }

    /// Adds a user. An empty `userid` gets a generated one. Returns the userid.
    pub fn add_user(&mut self, mut user: SimUser) -> Result<String, SimulatorError> {
        if user.profile.userid.is_empty() {
            let no = self.next_user_no;
            self.next_user_no += 1;
            user.profile.userid = format!("new{no:07}");
        }
        if self.users.contains_key(&user.profile.userid) {
            return Err(SimulatorError::Invalid(format!(
                "user {} already exists",
                user.profile.userid
            )));
        }
        let depts = user
            .profile
            .dept_id_list
            .clone()
            .unwrap_or_else(|| vec![ROOT_DEPT_ID]);
        self.check_departments(&depts)?;
        user.profile.dept_id_list = Some(depts);
        let id = user.profile.userid.clone();
        self.left.remove(&id);
        self.insert_user(user);
        Ok(id)
    }

    pub fn remove_user(&mut self, userid: &str) -> Result<(), SimulatorError> {
        self.users
            .remove(userid)
            .map(|_| {
                self.members_dirty = true;
                self.left.insert(userid.to_owned());
            })
            .ok_or_else(|| SimulatorError::UnknownUser(userid.to_owned()))
    }

    pub fn update_user(&mut self, userid: &str, patch: UserPatch) -> Result<(), SimulatorError> {
        if let Some(list) = &patch.dept_id_list {
            self.check_departments(list)?;
        }
        let record = self
            .users
            .get_mut(userid)
            .ok_or_else(|| SimulatorError::UnknownUser(userid.to_owned()))?;
        let p = &mut record.user.profile;
        if let Some(v) = patch.name {
            p.name = Some(v);
        }
        if let Some(v) = patch.title {
            p.title = Some(v);
        }
        if let Some(v) = patch.email {
            p.email = Some(v);
        }
        if let Some(v) = patch.mobile {
            p.mobile = Some(v);
        }
        if let Some(v) = patch.job_number {
            p.job_number = Some(v);
        }
        if let Some(v) = patch.active {
            p.active = Some(v);
        }
        if let Some(list) = patch.dept_id_list {
            let set: BTreeSet<i64> = list.into_iter().collect();
            p.dept_id_list = Some(set.into_iter().collect());
            self.members_dirty = true;
        }
        for field in &patch.clear {
            match field.as_str() {
                "title" => p.title = None,
                "email" => p.email = None,
                "mobile" => {
                    p.mobile = None;
                    p.state_code = None;
                }
                "job_number" => p.job_number = None,
                "avatar" => p.avatar = None,
                "org_email" => p.org_email = None,
                "hired_date" => p.hired_date = None,
                other => {
                    return Err(SimulatorError::Invalid(format!(
                        "cannot clear unknown field `{other}`"
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn add_department(&mut self, name: &str, parent_id: i64) -> Result<i64, SimulatorError> {
        if !self.departments.contains_key(&parent_id) {
            return Err(SimulatorError::UnknownDepartment(parent_id));
        }
        let mut dept_id = self.next_dept_id.max(100_000_000);
        while self.departments.contains_key(&dept_id) {
            dept_id += 1;
        }
        self.next_dept_id = dept_id + 1;
        self.insert_department(SimDepartment {
            dept_id,
            name: name.to_owned(),
            parent_id: Some(parent_id),
        });
        Ok(dept_id)
    }

    pub fn rename_department(&mut self, dept_id: i64, name: &str) -> Result<(), SimulatorError> {
        let record = self
            .departments
            .get_mut(&dept_id)
            .ok_or(SimulatorError::UnknownDepartment(dept_id))?;
        record.dept.name = name.to_owned();
        Ok(())
    }

    /// Moves a department (with its subtree) under another parent.
    pub fn move_department(&mut self, dept_id: i64, new_parent: i64) -> Result<(), SimulatorError> {
        if dept_id == ROOT_DEPT_ID {
            return Err(SimulatorError::Invalid("the root cannot move".into()));
        }
        if !self.departments.contains_key(&new_parent) {
            return Err(SimulatorError::UnknownDepartment(new_parent));
        }
        // Refuse to move a department below itself.
        let mut cursor = Some(new_parent);
        while let Some(id) = cursor {
            if id == dept_id {
                return Err(SimulatorError::Invalid(format!(
                    "department {new_parent} is inside department {dept_id}"
                )));
            }
            cursor = self.departments.get(&id).and_then(|r| r.dept.parent_id);
        }
        let record = self
            .departments
            .get_mut(&dept_id)
            .ok_or(SimulatorError::UnknownDepartment(dept_id))?;
        record.dept.parent_id = Some(new_parent);
        Ok(())
    }

    /// Removes an empty-of-subdepartments department. Its members lose that membership; a user
    /// left without any department moves to the root.
    pub fn remove_department(&mut self, dept_id: i64) -> Result<(), SimulatorError> {
        if dept_id == ROOT_DEPT_ID {
            return Err(SimulatorError::Invalid("the root cannot be removed".into()));
        }
        if !self.departments.contains_key(&dept_id) {
            return Err(SimulatorError::UnknownDepartment(dept_id));
        }
        if !self.children(dept_id).is_empty() {
            return Err(SimulatorError::Invalid(format!(
                "department {dept_id} still has sub-departments"
            )));
        }
        self.departments.remove(&dept_id);
        for record in self.users.values_mut() {
            let p = &mut record.user.profile;
            if let Some(list) = &mut p.dept_id_list
                && list.contains(&dept_id)
            {
                list.retain(|d| *d != dept_id);
                if list.is_empty() {
                    list.push(ROOT_DEPT_ID);
                }
            }
            record.user.leader_in.remove(&dept_id);
        }
        self.members_dirty = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(users: usize, departments: usize) -> OrgShape {
        OrgShape {
            users,
            departments,
            max_depth: 3,
            seed: 1,
        }
    }

    #[test]
    fn generation_is_deterministic_for_a_seed() {
        let a = Org::generate(shape(300, 30), "模拟科技").snapshot();
        let b = Org::generate(shape(300, 30), "模拟科技").snapshot();
        assert_eq!(a, b);
        let c = Org::generate(
            OrgShape {
                seed: 2,
                ..shape(300, 30)
            },
            "模拟科技",
        )
        .snapshot();
        assert_ne!(a, c);
    }

    #[test]
    fn generated_org_has_the_requested_shape_and_variety() {
        let org = Org::generate(shape(2_000, 50), "模拟科技");
        let snap = org.snapshot();
        assert_eq!(snap.departments.len(), 51);
        assert_eq!(snap.users.len(), 2_000);
        assert_eq!(snap.departments[0].dept_id, ROOT_DEPT_ID);
        // Depth: every department is at most 3 levels below the root.
        let parent: HashMap<i64, Option<i64>> = snap
            .departments
            .iter()
            .map(|d| (d.dept_id, d.parent_id))
            .collect();
        for d in &snap.departments {
            let mut depth = 0;
            let mut p = d.parent_id;
            while let Some(id) = p {
                depth += 1;
                p = parent.get(&id).copied().flatten();
            }
            assert!(depth <= 3, "{d:?}");
        }
        let ids: BTreeSet<&str> = snap
            .users
            .iter()
            .map(|u| u.profile.userid.as_str())
            .collect();
        assert_eq!(ids.len(), 2_000, "userids are unique");
        let count = |f: &dyn Fn(&User) -> bool| snap.users.iter().filter(|u| f(&u.profile)).count();
        assert!(count(&|u| u.email.is_none()) > 100);
        assert!(count(&|u| u.mobile.is_none()) > 100);
        assert!(count(&|u| u.job_number.as_deref().is_none_or(str::is_empty)) > 100);
        assert!(count(&|u| u.job_number.is_none()) > 30);
        assert!(count(&|u| u.job_number.as_deref() == Some("")) > 30);
        assert!(count(&|u| u.active == Some(false)) > 50);
        assert!(count(&|u| u.name.as_deref().is_some_and(|n| n.chars().count() >= 40)) > 5);
        assert!(
            count(&|u| u
                .name
                .as_deref()
                .is_some_and(|n| n.chars().any(|c| c as u32 > 0x1F000)))
                > 5
        );
        assert!(count(&|u| u.name.as_deref().is_some_and(|n| n.chars().count() > 60)) == 0);
        let multi = count(&|u| u.dept_id_list.as_ref().is_some_and(|l| l.len() > 1));
        assert!(multi > 200, "{multi}");
        assert!(count(&|u| u.dept_id_list.as_ref().is_some_and(|l| l.len() > 3)) == 0);
        assert!(count(&|u| u.userid.starts_with('0')) > 5);
        let big = snap
            .members_per_department()
            .values()
            .filter(|m| **m > 100)
            .count();
        assert!(big >= 1, "some departments need several pages");
    }

    #[test]
    fn paging_and_changes_between_runs() {
        let mut org = Org::generate(shape(0, 2), "c");
        let dept = org.add_department("新部门", ROOT_DEPT_ID).unwrap();
        for i in 0..150 {
            let mut u = SimUser {
                profile: User::default(),
                leader_in: BTreeSet::new(),
            };
            u.profile.userid = format!("u{i:03}");
            u.profile.dept_id_list = Some(vec![dept]);
            org.add_user(u).unwrap();
        }
        let (first, more) = org.members_page(dept, 0, 100);
        assert_eq!((first.len(), more), (100, true));
        assert_eq!(first[0].userid, "u000");
        let (rest, more) = org.members_page(dept, 100, 100);
        assert_eq!((rest.len(), more), (50, false));
        let (none, more) = org.members_page(dept, 500, 100);
        assert_eq!((none.len(), more), (0, false));

        org.update_user(
            "u000",
            UserPatch {
                title: Some("CTO".into()),
                dept_id_list: Some(vec![ROOT_DEPT_ID]),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(org.members_page(dept, 0, 200).0.len(), 149);
        assert!(org.remove_user("u001").is_ok());
        assert!(matches!(
            org.remove_user("u001"),
            Err(SimulatorError::UnknownUser(_))
        ));
        let child = org.add_department("子部门", dept).unwrap();
        assert!(org.move_department(dept, child).is_err(), "no cycles");
        assert!(org.remove_department(dept).is_err(), "has children");
        org.move_department(child, ROOT_DEPT_ID).unwrap();
        org.remove_department(dept).unwrap();
        assert_eq!(
            org.user("u002").unwrap().profile.dept_id_list,
            Some(vec![1])
        );
        assert_eq!(org.member_count(ROOT_DEPT_ID, true), 149);
    }
}
