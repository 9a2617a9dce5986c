//! Property tests of the answer decoder: whatever status, content type and body arrive, decoding
//! is total and its verdict consistent with the status, and no error a call ends in keeps the App
//! Secret or the access token that call carried in its URL.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value;

use super::{decode_answer, decode_result, scrub_failure};
use crate::dingtalk::endpoint::{Call, Endpoint};
use crate::dingtalk::error::{CodeClass, Failure, classify, classify_open};
use crate::dingtalk::types::{DepartmentPayload, User, UserPage};
use crate::proptest_support::config;

/// Stands for the access token in generated text; replaced by the case's token before decoding.
const TOKEN_MARK: &str = "\u{e000}";
/// Stands for the App Secret in generated text.
const SECRET_MARK: &str = "\u{e001}";

fn endpoint() -> impl Strategy<Value = Endpoint> {
    prop::sample::select(Endpoint::ALL.to_vec())
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => prop::sample::select(vec![200_u16, 201, 204, 302, 400, 403, 404, 429, 500, 502, 503]),
        1 => any::<u16>(),
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        Just("application/json;charset=utf-8".to_owned()),
        Just("text/html; charset=utf-8".to_owned()),
        Just("TEXT/HTML".to_owned()),
        Just("text/plain".to_owned()),
        ".{0,12}",
    ])
}

/// Free text as servers send it, now and then carrying a secret, bare or inside a URL.
fn text() -> impl Strategy<Value = String> + Clone {
    prop::collection::vec(
        prop_oneof![
            4 => ".{0,12}",
            1 => Just(TOKEN_MARK.to_owned()),
            1 => Just(SECRET_MARK.to_owned()),
            1 => Just(format!("https://oapi.dingtalk.com/x?access_token={TOKEN_MARK}&x=1")),
            1 => Just(format!("/gettoken?appkey=k&appsecret={SECRET_MARK}")),
        ],
        0..5,
    )
    .prop_map(|parts| parts.concat())
}

/// Any JSON value, strings carrying secrets now and then, numbers from every range.
fn json_value() -> impl Strategy<Value = Value> + Clone {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..5)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// Field names of the envelope and of the payloads, so that wrong types hit known fields.
fn field_name() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        4 => prop::sample::select(vec![
            "errcode", "errmsg", "sub_code", "sub_msg", "status", "result", "has_more",
            "next_cursor", "list", "userid", "name", "dept_id", "parent_id", "dept_id_list",
            "active", "hired_date", "dept_order", "access_token", "expires_in", "code",
            "message", "nextToken", "records", "userId", "leaveTime",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_]{0,8}",
    ]
}

/// The raw JSON text of a number, including ones no integer type holds.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?[0-9]{1,30}",
        "-?[0-9]{1,4}\\.[0-9]{1,4}",
        "-?[0-9]{1,3}[eE][+-]?[0-9]{1,4}",
        prop::sample::select(vec![
            "-9223372036854775809",
            "9223372036854775808",
            "18446744073709551616",
            "1e400",
            "-0",
        ])
        .prop_map(str::to_owned),
    ]
}

/// The raw JSON text of an `errcode`, `sub_code` or `status`: known codes as numbers or
/// strings, any integer, huge numbers, or any other JSON value.
fn code_text() -> impl Strategy<Value = String> {
    let known = || {
        prop::sample::select(vec![
            0_i64, 0, 0, 88, -1, 1111, 40001, 40014, 42001, 40089, 50004, 60003, 60011, 60020,
            90002, 90018, 90020,
        ])
    };
    prop_oneof![
        4 => known().prop_map(|c| c.to_string()),
        2 => known().prop_map(|c| format!("\"{c}\"")),
        1 => known().prop_map(|c| format!("\" {c} \"")),
        1 => any::<i64>().prop_map(|c| c.to_string()),
        2 => number_text(),
        1 => number_text().prop_map(|n| format!("\"{n}\"")),
        2 => json_value().prop_map(|v| v.to_string()),
    ]
}

/// A `result` shaped like what the decoder expects, with any field of the wrong type.
fn result_value() -> impl Strategy<Value = Value> {
    let user = prop::collection::vec((field_name(), json_value()), 0..6)
        .prop_map(|fields| Value::Object(fields.into_iter().collect()));
    prop_oneof![
        2 => json_value(),
        2 => (any::<bool>(), json_value(), prop::collection::vec(user.clone(), 0..3)).prop_map(
            |(has_more, cursor, list)| serde_json::json!({
                "has_more": has_more, "next_cursor": cursor, "list": list
            })
        ),
        1 => prop::collection::vec(user, 0..3).prop_map(Value::Array),
    ]
}

/// The JSON text of an answer object: envelope fields holding anything, in any order, repeated.
fn envelope_text() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        3 => code_text().prop_map(|v| ("errcode".to_owned(), v)),
        2 => code_text().prop_map(|v| ("sub_code".to_owned(), v)),
        1 => code_text().prop_map(|v| ("status".to_owned(), v)),
        2 => text().prop_map(|t| ("errmsg".to_owned(), Value::from(t).to_string())),
        1 => text().prop_map(|t| ("code".to_owned(), Value::from(t).to_string())),
        1 => prop::sample::select(vec![
            "InvalidAuthentication",
            "Forbidden.AccessDenied.AccessTokenPermissionDenied",
            "Forbidden.AccessDenied.IpNotInWhiteList",
            "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi",
            "InvalidParameter",
        ])
        .prop_map(|c| ("code".to_owned(), Value::from(c).to_string())),
        1 => text().prop_map(|t| ("message".to_owned(), Value::from(t).to_string())),
        2 => text().prop_map(|t| ("sub_msg".to_owned(), Value::from(t).to_string())),
        1 => json_value().prop_map(|v| ("sub_msg".to_owned(), v.to_string())),
        3 => result_value().prop_map(|v| ("result".to_owned(), v.to_string())),
        1 => (field_name(), json_value()).prop_map(|(k, v)| (k, v.to_string())),
    ];
    prop::collection::vec(field, 0..7).prop_map(|fields| {
        let members: Vec<String> = fields
            .iter()
            .map(|(key, value)| format!("{}:{value}", Value::from(key.as_str())))
            .collect();
        format!("{{{}}}", members.join(","))
    })
}

/// A body: an answer object, that object cut short or with bytes changed, other JSON, HTML, or
/// any bytes at all.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => envelope_text().prop_map(String::into_bytes),
        2 => (envelope_text(), any::<prop::sample::Index>()).prop_map(|(text, cut)| {
            let bytes = text.into_bytes();
            let end = cut.index(bytes.len() + 1);
            bytes[..end].to_vec()
        }),
        2 => (
            envelope_text(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
        )
            .prop_map(|(text, changes)| {
                let mut bytes = text.into_bytes();
                for (at, byte) in changes {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                bytes
            }),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => text().prop_map(|t| format!("  <html><body>{t}</body></html>").into_bytes()),
        2 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

/// What the decoder's verdict must agree with, whatever the body.
fn check_verdict(
    endpoint: Endpoint,
    status: u16,
    outcome: &Result<Value, Failure>,
) -> Result<(), TestCaseError> {
    let success = (200..300).contains(&status);
    match outcome {
        Ok(answer) => {
            prop_assert!(success, "accepted with HTTP {}", status);
            prop_assert!(answer.is_object(), "accepted a non-object: {}", answer);
        }
        Err(Failure::Code { class, code, .. }) => {
            prop_assert!(!endpoint.is_open_api(), "an errcode from {}", endpoint);
            prop_assert!(status < 500, "errcode verdict for HTTP {}", status);
            prop_assert_ne!(*code, 0);
            prop_assert_ne!(*class, CodeClass::Success);
            prop_assert_eq!(*class, classify(endpoint, *code));
        }
        Err(Failure::Open {
            class,
            status: s,
            code,
            ..
        }) => {
            prop_assert!(endpoint.is_open_api(), "a text code from {}", endpoint);
            prop_assert_eq!(*s, status);
            prop_assert!(!success && status < 500, "a text code for HTTP {}", status);
            prop_assert_eq!(*class, classify_open(status, code));
        }
        Err(Failure::ServerStatus(s)) => {
            prop_assert_eq!(*s, status);
            prop_assert!(status >= 500);
        }
        Err(Failure::OtherStatus(s)) => {
            prop_assert_eq!(*s, status);
            prop_assert!(!success && status < 500, "OtherStatus for HTTP {}", status);
        }
        Err(Failure::Malformed(_)) => prop_assert!(success, "malformed for HTTP {}", status),
        Err(Failure::IpBan) => {}
        Err(other @ (Failure::Timeout | Failure::Transport(_) | Failure::TooLarge { .. })) => {
            return Err(TestCaseError::fail(format!(
                "the decoder made a transport failure: {other:?}"
            )));
        }
    }
    Ok(())
}

/// The texts an operator or a log sees of the error `failure` ends a call with.
fn error_texts(failure: Failure, call: Call) -> String {
    let error = failure.into_error(
        call,
        "ding-app-key",
        3,
        Duration::from_secs(30),
        Duration::from_secs(300),
    );
    format!("{error} {error:?}")
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn decoding_any_answer_is_total_and_agrees_with_the_status(
        endpoint in endpoint(),
        status in status(),
        content_type in content_type(),
        body in body(),
    ) {
        let outcome = decode_answer(endpoint, status, content_type.as_deref(), &body);
        check_verdict(endpoint, status, &outcome)?;
    }

    #[test]
    fn no_error_keeps_the_secrets_the_call_carried(
        endpoint in endpoint(),
        status in status(),
        content_type in content_type(),
        body in envelope_text(),
        token in "[0-9a-f]{32}|[A-Za-z0-9_-]{8,40}",
        app_secret in "[A-Za-z0-9]{16,64}",
        dept_id in any::<i64>(),
    ) {
        let body = body.replace(TOKEN_MARK, &token).replace(SECRET_MARK, &app_secret);
        let secrets = [app_secret.as_str(), token.as_str()];
        let call = Call::for_department(endpoint, dept_id);
        let mut texts = Vec::new();
        match decode_answer(endpoint, status, content_type.as_deref(), body.as_bytes()) {
            // As the retry loop does with every failed attempt.
            Err(failure) => texts.push(error_texts(scrub_failure(failure, &secrets), call)),
            Ok(answer) => texts.extend(typed_error_texts(answer, &secrets, call)?),
        }
        for text in &texts {
            prop_assert!(!text.contains(&token), "the access token is in: {}", text);
            prop_assert!(!text.contains(&app_secret), "the App Secret is in: {}", text);
        }
    }

    #[test]
    fn a_mistyped_result_fails_cleanly_without_the_secrets(
        result in result_value(),
        token in "[0-9a-f]{32}|[A-Za-z0-9_-]{8,40}",
        app_secret in "[A-Za-z0-9]{16,64}",
    ) {
        let answer = format!(r#"{{"errcode":0,"errmsg":"ok","result":{result}}}"#)
            .replace(TOKEN_MARK, &token)
            .replace(SECRET_MARK, &app_secret);
        let answer: Value =
            serde_json::from_str(&answer).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let secrets = [app_secret.as_str(), token.as_str()];
        let call = Call::for_department(Endpoint::UserList, 1);
        for text in typed_error_texts(answer, &secrets, call)? {
            prop_assert!(!text.contains(&token), "the access token is in: {}", text);
            prop_assert!(!text.contains(&app_secret), "the App Secret is in: {}", text);
        }
    }
}

/// Decodes an accepted answer's `result` as every call expects it; the texts of the errors
/// (mistyped results must fail as malformed answers).
fn typed_error_texts(
    answer: Value,
    secrets: &[&str],
    call: Call,
) -> Result<Vec<String>, TestCaseError> {
    let page = decode_result::<UserPage<User>>(answer.clone(), secrets);
    let departments = decode_result::<Vec<DepartmentPayload>>(answer.clone(), secrets);
    let department = decode_result::<DepartmentPayload>(answer, secrets);
    let mut texts = Vec::new();
    for failure in [page.err(), departments.err(), department.err()]
        .into_iter()
        .flatten()
    {
        prop_assert!(matches!(failure, Failure::Malformed(_)), "{:?}", failure);
        texts.push(error_texts(failure, call));
    }
    Ok(texts)
}

#[test]
fn odd_numbers_and_types_in_the_envelope_are_malformed_or_unexpected_answers() {
    let decode = |body: &str| decode_answer(Endpoint::UserList, 200, None, body.as_bytes());
    for malformed in [
        r#"{"errcode":1e400}"#,
        r#"{"errcode":-9223372036854775809}"#,
        r#"{"errcode":null,"status":"1111"}"#,
        r#"{"errcode":true}"#,
        r#"{"errcode":0.0}"#,
        "\u{feff}{}",
        "",
    ] {
        assert!(
            matches!(decode(malformed), Err(Failure::Malformed(_))),
            "{malformed}: {:?}",
            decode(malformed)
        );
    }
    assert_eq!(
        decode(r#"{"errcode":88,"sub_code":"99999999999999999999"}"#),
        Err(Failure::Code {
            class: CodeClass::Unexpected,
            code: 88,
            errmsg: String::new()
        })
    );
}
