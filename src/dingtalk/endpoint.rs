//! The DingTalk endpoints this crate speaks (client and simulator) and the permission each needs.

use std::fmt;

/// One DingTalk API. The path is also the key of the per-API rate limiter and of [`FetchStats`].
///
/// [`FetchStats`]: super::types::FetchStats
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    GetToken,
    DepartmentListSub,
    DepartmentGet,
    UserList,
    UserListSimple,
    UserGet,
    UserCount,
    /// `GET /v1.0/contact/empLeaveRecords` of the new API family (`dingtalk.open_api_base`).
    LeaveRecords,
}

impl Endpoint {
    pub const ALL: [Endpoint; 8] = [
        Endpoint::GetToken,
        Endpoint::DepartmentListSub,
        Endpoint::DepartmentGet,
        Endpoint::UserList,
        Endpoint::UserListSimple,
        Endpoint::UserGet,
        Endpoint::UserCount,
        Endpoint::LeaveRecords,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::GetToken => "/gettoken",
            Endpoint::DepartmentListSub => "/topapi/v2/department/listsub",
            Endpoint::DepartmentGet => "/topapi/v2/department/get",
            Endpoint::UserList => "/topapi/v2/user/list",
            Endpoint::UserListSimple => "/topapi/user/listsimple",
            Endpoint::UserGet => "/topapi/v2/user/get",
            Endpoint::UserCount => "/topapi/user/count",
            Endpoint::LeaveRecords => "/v1.0/contact/empLeaveRecords",
        }
    }

    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }

    pub fn method(self) -> &'static str {
        match self {
            Endpoint::GetToken | Endpoint::LeaveRecords => "GET",
            _ => "POST",
        }
    }

    /// True for the `/topapi/...` family, which wraps platform errors as errcode 88 + `sub_code`.
    pub fn is_topapi(self) -> bool {
        !matches!(self, Endpoint::GetToken | Endpoint::LeaveRecords)
    }

    /// True for the new API family (`api.dingtalk.com/v1.0/...`): the token travels in the
    /// `x-acs-dingtalk-access-token` header, errors are HTTP statuses with `{"code", "message"}`.
    pub fn is_open_api(self) -> bool {
        self == Endpoint::LeaveRecords
    }

    /// The permission point a 60011 answer of this endpoint means is missing.
    pub fn permission(self) -> Option<Permission> {
        match self {
            Endpoint::GetToken => None,
            Endpoint::DepartmentListSub | Endpoint::DepartmentGet => {
                Some(Permission::DEPARTMENT_LIST)
            }
            Endpoint::UserList | Endpoint::UserListSimple => Some(Permission::DEPARTMENT_MEMBER),
            Endpoint::UserGet | Endpoint::UserCount => Some(Permission::MEMBER),
            Endpoint::LeaveRecords => Some(Permission::LEAVE_RECORDS),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method(), self.path())
    }
}

/// A DingTalk permission point as the developer console names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permission {
    /// The internal code, e.g. `qyapi_get_department_list`.
    pub code: &'static str,
    /// The label shown in the console (通讯录管理 section).
    pub label: &'static str,
}

impl Permission {
    pub const DEPARTMENT_LIST: Permission = Permission {
        code: "qyapi_get_department_list",
        label: "通讯录部门信息读权限",
    };
    pub const DEPARTMENT_MEMBER: Permission = Permission {
        code: "qyapi_get_department_member",
        label: "通讯录部门成员读权限",
    };
    pub const MEMBER: Permission = Permission {
        code: "qyapi_get_member",
        label: "成员信息读权限",
    };
    /// The new API's scope for the leave records (its console label is not in our notes).
    pub const LEAVE_RECORDS: Permission = Permission {
        code: "Contact.Common.Read",
        label: "reads the organization's leave records",
    };
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ({})", self.code, self.label)
    }
}

/// Field permissions: without them the fields are absent from user records, not empty.
pub const MOBILE_FIELD_PERMISSION: &str = "企业员工手机号信息";
pub const EMAIL_FIELD_PERMISSION: &str = "邮箱等个人信息";

/// Which call failed: the endpoint and, for directory calls, the department.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub endpoint: Endpoint,
    pub dept_id: Option<i64>,
}

impl Call {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            dept_id: None,
        }
    }

    pub fn for_department(endpoint: Endpoint, dept_id: i64) -> Self {
        Self {
            endpoint,
            dept_id: Some(dept_id),
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dept_id {
            Some(id) => write!(f, "DingTalk call {} for department {id}", self.endpoint),
            None => write!(f, "DingTalk call {}", self.endpoint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_permissions_match_the_spec() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(e.path()), Some(e));
        }
        assert_eq!(
            Endpoint::DepartmentListSub.permission().map(|p| p.code),
            Some("qyapi_get_department_list")
        );
        assert_eq!(
            Endpoint::UserList.permission().map(|p| p.code),
            Some("qyapi_get_department_member")
        );
        assert_eq!(Endpoint::GetToken.permission(), None);
        assert_eq!(
            Endpoint::LeaveRecords.permission().map(|p| p.code),
            Some("Contact.Common.Read")
        );
        assert!(Endpoint::LeaveRecords.is_open_api() && !Endpoint::LeaveRecords.is_topapi());
        assert!(
            Endpoint::ALL
                .iter()
                .all(|e| !(e.is_open_api() && e.is_topapi()))
        );
        assert_eq!(
            Call::for_department(Endpoint::UserList, 7).to_string(),
            "DingTalk call POST /topapi/v2/user/list for department 7"
        );
    }
}
