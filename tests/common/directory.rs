//! Hand-built DingTalk directories for pipeline tests: N users spread over a department tree,
//! with Chinese names and emoji, shaped like what the DingTalk client returns.

use std::collections::BTreeMap;

use syncerd::dingtalk::types::{Department, Directory, DirectoryUser, User};
use syncerd::dingtalk::types::{EndpointStats, FetchStats};

/// Departments below the root: ids `100..100 + n`; each has 4 children at most.
pub fn departments(n: usize) -> Vec<Department> {
    let mut out = vec![Department {
        dept_id: 1,
        name: None,
        parent_id: None,
    }];
    const NAMES: [&str; 6] = [
        "研发部",
        "市场部",
        "销售部",
        "财务部",
        "人力资源部",
        "客服中心",
    ];
    for i in 0..n {
        let parent = if i < 4 { 1 } else { 100 + (i as i64) / 4 - 1 };
        let base = NAMES[i % NAMES.len()];
        let name = if i.is_multiple_of(5) {
            format!("{base} {i} 🚀")
        } else {
            format!("{base} {i}")
        };
        out.push(Department {
            dept_id: 100 + i as i64,
            name: Some(name),
            parent_id: Some(parent),
        });
    }
    out
}

pub fn userid(i: usize) -> String {
    format!("u{i:06}")
}

pub fn unionid(i: usize) -> String {
    format!("union{i:06}")
}

/// User `i` with every field of the stock mapping, in department `dept` (and a second one for
/// every seventh user).
pub fn user(i: usize, depts: &[i64]) -> DirectoryUser {
    const FAMILY: [&str; 8] = ["张", "王", "李", "赵", "陈", "刘", "杨", "黄"];
    const GIVEN: [&str; 6] = ["伟", "芳", "娜", "秀英", "敏", "静"];
    let name = if i.is_multiple_of(9) {
        format!("{}{}{i} 😀", FAMILY[i % 8], GIVEN[i % 6])
    } else {
        format!("{}{}{i}", FAMILY[i % 8], GIVEN[i % 6])
    };
    let mut dept_ids = vec![depts[i % depts.len()]];
    if i.is_multiple_of(7) && depts.len() > 1 {
        dept_ids.push(depts[(i + 3) % depts.len()]);
    }
    dept_ids.sort_unstable();
    dept_ids.dedup();
    DirectoryUser {
        profile: User {
            userid: userid(i),
            unionid: Some(unionid(i)),
            name: Some(name),
            email: Some(format!("user{i}@example.com")),
            mobile: Some(format!("138{i:08}")),
            avatar: Some(format!("https://static.example.com/avatar/{i}.png")),
            title: Some(
                if i.is_multiple_of(3) {
                    "工程师"
                } else {
                    "经理"
                }
                .to_owned(),
            ),
            job_number: Some(format!("A{i:05}")),
            active: Some(true),
            dept_id_list: Some(dept_ids.clone()),
            ..User::default()
        },
        seen_in: dept_ids,
    }
}

/// A complete directory of `users` users in `depts` departments below the root.
pub fn directory(users: usize, depts: usize) -> Directory {
    let departments = departments(depts);
    let leaf_ids: Vec<i64> = departments.iter().map(|d| d.dept_id).collect();
    let mut stats: FetchStats = BTreeMap::new();
    stats.insert(
        "/topapi/v2/department/listsub".to_owned(),
        EndpointStats {
            calls: departments.len() as u64,
            ..EndpointStats::default()
        },
    );
    stats.insert(
        "/topapi/v2/user/list".to_owned(),
        EndpointStats {
            calls: (users as u64).div_ceil(100).max(1),
            ..EndpointStats::default()
        },
    );
    Directory {
        users: (0..users).map(|i| user(i, &leaf_ids)).collect(),
        departments,
        complete: true,
        incomplete_reasons: Vec::new(),
        stats,
    }
}

/// The directory without the users at `indexes` (by generator index).
pub fn without(directory: &Directory, indexes: &[usize]) -> Directory {
    let gone: Vec<String> = indexes.iter().map(|i| userid(*i)).collect();
    let mut d = directory.clone();
    d.users.retain(|u| !gone.contains(&u.profile.userid));
    d
}

/// The directory user with generator index `i`.
pub fn user_mut(directory: &mut Directory, i: usize) -> &mut User {
    let id = userid(i);
    &mut directory
        .users
        .iter_mut()
        .find(|u| u.profile.userid == id)
        .expect("user in the directory")
        .profile
}
