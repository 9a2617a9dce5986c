//! Casdoor's `user` table: all 181 columns, in the order of Casdoor's own DDL.
//!
//! Only the primary key (`owner`, `name`) is NOT NULL in Casdoor, and old installations hold NULLs
//! anywhere else, so every other field is an `Option`. Queries name their columns, so extra
//! columns of older installations are ignored. Booleans are TINYINT(1)/BOOL/INTEGER, JSON-typed
//! BLOB/BYTEA columns are bytes, DOUBLE/DOUBLE PRECISION/REAL are `f64`.
//!
//! `Debug` shows only identifying columns: the row also holds password hashes, TOTP secrets and
//! OAuth tokens, which must never reach a log line.

use sea_orm::entity::prelude::*;

#[derive(Clone, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "user")]
pub struct Model {
    /// Organization name (primary key with `name`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub owner: String,
    /// User name (primary key with `owner`); the stock DingTalk mapping writes the unionid.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub created_time: Option<String>,
    pub updated_time: Option<String>,
    pub deleted_time: Option<String>,
    /// Casdoor's "id" field; the stock DingTalk mapping matches on it (DingTalk userid). Indexed, **not unique**.
    pub id: Option<String>,
    pub external_id: Option<String>,
    pub r#type: Option<String>,
    pub password: Option<String>,
    pub password_salt: Option<String>,
    pub password_type: Option<String>,
    pub display_name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub avatar: Option<String>,
    pub avatar_type: Option<String>,
    pub permanent_avatar: Option<String>,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub phone: Option<String>,
    pub country_code: Option<String>,
    pub region: Option<String>,
    pub location: Option<String>,
    pub address: Option<String>,
    /// JSON stored as bytes.
    pub addresses: Option<Vec<u8>>,
    pub affiliation: Option<String>,
    pub title: Option<String>,
    pub id_card_type: Option<String>,
    pub id_card: Option<String>,
    pub real_name: Option<String>,
    pub is_verified: Option<bool>,
    pub homepage: Option<String>,
    pub bio: Option<String>,
    pub tag: Option<String>,
    pub language: Option<String>,
    pub gender: Option<String>,
    pub birthday: Option<String>,
    pub education: Option<String>,
    pub score: Option<i32>,
    pub karma: Option<i32>,
    pub ranking: Option<i32>,
    pub balance: Option<f64>,
    pub balance_credit: Option<f64>,
    pub currency: Option<String>,
    pub balance_currency: Option<String>,
    pub is_default_avatar: Option<bool>,
    pub is_online: Option<bool>,
    pub is_admin: Option<bool>,
    /// Set from DingTalk's `active` flag (inverted) by the stock mapping.
    pub is_forbidden: Option<bool>,
    pub is_deleted: Option<bool>,
    pub signup_application: Option<String>,
    /// Change-detection hash; `hash == pre_hash == <syncer hash>` means "in sync".
    pub hash: Option<String>,
    pub pre_hash: Option<String>,
    pub register_type: Option<String>,
    pub register_source: Option<String>,
    pub access_token: Option<String>,
    pub original_token: Option<String>,
    pub original_refresh_token: Option<String>,
    pub created_ip: Option<String>,
    pub last_signin_time: Option<String>,
    pub last_signin_ip: Option<String>,
    pub github: Option<String>,
    pub google: Option<String>,
    pub qq: Option<String>,
    pub wechat: Option<String>,
    pub facebook: Option<String>,
    /// DingTalk userid, written by the syncer on insert and update.
    pub dingtalk: Option<String>,
    pub weibo: Option<String>,
    pub gitee: Option<String>,
    pub linkedin: Option<String>,
    pub wecom: Option<String>,
    pub lark: Option<String>,
    pub gitlab: Option<String>,
    pub adfs: Option<String>,
    pub baidu: Option<String>,
    pub alipay: Option<String>,
    pub casdoor: Option<String>,
    pub infoflow: Option<String>,
    pub apple: Option<String>,
    pub azuread: Option<String>,
    pub azureadb2c: Option<String>,
    pub slack: Option<String>,
    pub steam: Option<String>,
    pub bilibili: Option<String>,
    pub okta: Option<String>,
    pub douyin: Option<String>,
    pub kwai: Option<String>,
    pub line: Option<String>,
    pub amazon: Option<String>,
    pub auth0: Option<String>,
    pub battlenet: Option<String>,
    pub bitbucket: Option<String>,
    pub r#box: Option<String>,
    pub cloudfoundry: Option<String>,
    pub dailymotion: Option<String>,
    pub deezer: Option<String>,
    pub digitalocean: Option<String>,
    pub discord: Option<String>,
    pub dropbox: Option<String>,
    pub eveonline: Option<String>,
    pub fitbit: Option<String>,
    pub gitea: Option<String>,
    pub heroku: Option<String>,
    pub influxcloud: Option<String>,
    pub instagram: Option<String>,
    pub intercom: Option<String>,
    pub kakao: Option<String>,
    pub lastfm: Option<String>,
    pub mailru: Option<String>,
    pub meetup: Option<String>,
    pub microsoftonline: Option<String>,
    pub naver: Option<String>,
    pub nextcloud: Option<String>,
    pub onedrive: Option<String>,
    pub oura: Option<String>,
    pub patreon: Option<String>,
    pub paypal: Option<String>,
    pub salesforce: Option<String>,
    pub shopify: Option<String>,
    pub soundcloud: Option<String>,
    pub spotify: Option<String>,
    pub strava: Option<String>,
    pub stripe: Option<String>,
    pub telegram: Option<String>,
    pub tiktok: Option<String>,
    pub tumblr: Option<String>,
    pub twitch: Option<String>,
    pub twitter: Option<String>,
    pub typetalk: Option<String>,
    pub uber: Option<String>,
    pub vk: Option<String>,
    pub wepay: Option<String>,
    pub xero: Option<String>,
    pub yahoo: Option<String>,
    pub yammer: Option<String>,
    pub yandex: Option<String>,
    pub zoom: Option<String>,
    pub metamask: Option<String>,
    pub web3onboard: Option<String>,
    pub custom: Option<String>,
    pub custom2: Option<String>,
    pub custom3: Option<String>,
    pub custom4: Option<String>,
    pub custom5: Option<String>,
    pub custom6: Option<String>,
    pub custom7: Option<String>,
    pub custom8: Option<String>,
    pub custom9: Option<String>,
    pub custom10: Option<String>,
    /// JSON stored as bytes (camelCase column `webauthnCredentials`).
    #[sea_orm(column_name = "webauthnCredentials")]
    pub webauthn_credentials: Option<Vec<u8>>,
    pub preferred_mfa_type: Option<String>,
    pub recovery_codes: Option<String>,
    pub totp_secret: Option<String>,
    pub mfa_phone_enabled: Option<bool>,
    pub mfa_email_enabled: Option<bool>,
    pub mfa_radius_enabled: Option<bool>,
    pub mfa_radius_username: Option<String>,
    pub mfa_radius_provider: Option<String>,
    pub mfa_push_enabled: Option<bool>,
    pub mfa_push_receiver: Option<String>,
    pub mfa_push_provider: Option<String>,
    pub invitation: Option<String>,
    pub invitation_code: Option<String>,
    pub face_ids: Option<String>,
    pub cart: Option<String>,
    pub ldap: Option<String>,
    pub uid_number: Option<i32>,
    pub properties: Option<String>,
    pub roles: Option<String>,
    pub permissions: Option<String>,
    /// JSON array of `"<org>/<group name>"`.
    pub groups: Option<String>,
    pub last_change_password_time: Option<String>,
    pub last_signin_wrong_time: Option<String>,
    pub signin_wrong_times: Option<i32>,
    /// JSON stored as bytes (camelCase column `managedAccounts`).
    #[sea_orm(column_name = "managedAccounts")]
    pub managed_accounts: Option<Vec<u8>>,
    /// JSON stored as bytes (camelCase column `mfaAccounts`).
    #[sea_orm(column_name = "mfaAccounts")]
    pub mfa_accounts: Option<Vec<u8>>,
    pub mfa_items: Option<String>,
    pub mfa_remember_deadline: Option<String>,
    pub need_update_password: Option<bool>,
    pub ip_whitelist: Option<String>,
    pub application_scopes: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("user::Model")
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("id", &self.id)
            .field("dingtalk", &self.dingtalk)
            .field("display_name", &self.display_name)
            .field("is_forbidden", &self.is_forbidden)
            .field("is_deleted", &self.is_deleted)
            .finish_non_exhaustive()
    }
}
