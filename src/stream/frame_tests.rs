use super::*;

fn event_frame(event_type: &str, data: &str) -> String {
    json!({
        "specVersion": "1.0",
        "type": "EVENT",
        "headers": {
            "topic": "*",
            "messageId": "msg-1",
            "contentType": "application/json",
            "time": "1700000000000",
            "eventType": event_type,
            "eventId": "evt-1",
            "eventBornTime": "1700000000123",
            "eventCorpId": "ding-corp",
        },
        "data": data,
    })
    .to_string()
}

fn parse(text: &str) -> Result<Incoming, Refused> {
    parse_frame(text, &FrameLimits::default())
}

fn event(text: &str) -> StreamEvent {
    match parse(text) {
        Ok(Incoming::Event { message_id, event }) => {
            assert_eq!(message_id, "msg-1");
            event
        }
        other => panic!("not an event: {other:?}"),
    }
}

#[test]
fn user_events_decode_with_their_headers() {
    let e = event(&event_frame(
        "user_add_org",
        r#"{"timeStamp":"1700000000000","userId":["u1","u2"]}"#,
    ));
    assert_eq!(e.event_id, "evt-1");
    assert_eq!(e.event_type, "user_add_org");
    assert_eq!(e.corp_id, "ding-corp");
    assert_eq!(e.born_time_ms, Some(1_700_000_000_123));
    assert_eq!(
        e.change,
        Change::Users {
            kind: UserChange::Add,
            user_ids: vec!["u1".into(), "u2".into()]
        }
    );
    for (t, kind) in [
        ("user_modify_org", UserChange::Modify),
        ("user_leave_org", UserChange::Leave),
        ("user_active_org", UserChange::Active),
    ] {
        let e = event(&event_frame(t, r#"{"userId":["x"]}"#));
        assert_eq!(
            e.change,
            Change::Users {
                kind,
                user_ids: vec!["x".into()]
            }
        );
    }
}

#[test]
fn data_keys_are_read_without_case_and_dept_ids_may_be_strings() {
    let e = event(&event_frame("user_leave_org", r#"{"UserId":["u9"]}"#));
    assert!(matches!(e.change, Change::Users { ref user_ids, .. } if user_ids == &["u9"]));
    let e = event(&event_frame(
        "org_dept_create",
        r#"{"DeptId":[12, "13", " 14 "]}"#,
    ));
    assert_eq!(
        e.change,
        Change::Departments {
            kind: DeptChange::Create,
            dept_ids: vec![12, 13, 14]
        }
    );
    let e = event(&event_frame("org_dept_remove", r#"{"deptid":7}"#));
    assert_eq!(
        e.change,
        Change::Departments {
            kind: DeptChange::Remove,
            dept_ids: vec![7]
        }
    );
}

#[test]
fn unknown_event_types_are_other_whatever_their_data() {
    let e = event(&event_frame("label_user_change", "not json at all"));
    assert_eq!(e.change, Change::Other);
}

#[test]
fn system_frames_route_on_topic() {
    let ping = r#"{"specVersion":"1.0","type":"SYSTEM","headers":{"topic":"ping","messageId":"m2","contentType":"application/json","time":"1"},"data":"{\"opaque\":\"abc\"}"}"#;
    assert_eq!(
        parse(ping),
        Ok(Incoming::Ping {
            message_id: "m2".into(),
            data: r#"{"opaque":"abc"}"#.into()
        })
    );
    let bye = r#"{"type":"SYSTEM","headers":{"topic":"disconnect","messageId":"m3"},"data":"{\"reason\":\"connection is expired\"}"}"#;
    assert_eq!(
        parse(bye),
        Ok(Incoming::Disconnect {
            message_id: "m3".into(),
            reason: "connection is expired".into()
        })
    );
    let other = r#"{"type":"SYSTEM","headers":{"topic":"KEEPALIVE","messageId":"m4"},"data":""}"#;
    assert!(matches!(parse(other), Ok(Incoming::System { .. })));
}

#[test]
fn replies_carry_the_message_id_and_the_documented_shape() {
    let ack: Value = serde_json::from_str(&ack_reply("m1")).unwrap_or_default();
    assert_eq!(ack["code"], 200);
    assert_eq!(ack["headers"]["messageId"], "m1");
    assert_eq!(ack["headers"]["contentType"], "application/json");
    assert_eq!(ack["message"], "OK");
    let data: Value = serde_json::from_str(ack["data"].as_str().unwrap_or("")).unwrap_or_default();
    assert_eq!(data["status"], "SUCCESS");

    let later: Value = serde_json::from_str(&later_reply("m2")).unwrap_or_default();
    assert_eq!(later["code"], 500);
    let data: Value =
        serde_json::from_str(later["data"].as_str().unwrap_or("")).unwrap_or_default();
    assert_eq!(data["status"], "LATER");

    let pong: Value =
        serde_json::from_str(&ping_reply("m3", r#"{"opaque":"o"}"#)).unwrap_or_default();
    assert_eq!(pong["code"], 200);
    assert_eq!(pong["headers"]["messageId"], "m3");
    assert_eq!(pong["data"], r#"{"opaque":"o"}"#);
}

#[test]
fn oversized_frames_are_refused_before_parsing() {
    let limits = FrameLimits {
        max_frame_bytes: 64,
        ..FrameLimits::default()
    };
    let text = event_frame("user_add_org", r#"{"userId":["u1"]}"#);
    let refused = parse_frame(&text, &limits).err();
    assert!(
        matches!(
            refused,
            Some(Refused {
                message_id: None,
                error: FrameError::TooLarge { limit: 64, .. }
            })
        ),
        "{refused:?}"
    );
}

#[test]
fn too_many_ids_is_a_clear_error_with_the_message_id() {
    let limits = FrameLimits {
        max_ids_per_event: 3,
        ..FrameLimits::default()
    };
    let text = event_frame("user_modify_org", r#"{"userId":["a","b","c","d"]}"#);
    let refused = parse_frame(&text, &limits).err();
    let Some(Refused {
        message_id: Some(id),
        error,
    }) = refused
    else {
        panic!("not refused with an id: {refused:?}");
    };
    assert_eq!(id, "msg-1");
    assert!(matches!(
        error,
        FrameError::TooManyIds {
            count: 4,
            limit: 3,
            ..
        }
    ));
    assert!(
        error.to_string().contains("stream.max_ids_per_event"),
        "{error}"
    );
}

#[test]
fn garbled_frames_are_refused_not_panicked_on() {
    let cases = [
        "",
        "null",
        "[]",
        "{",
        "\u{0}\u{1}",
        r#"{"type":"EVENT"}"#,
        r#"{"type":"EVENT","headers":[]}"#,
        r#"{"type":"EVENT","headers":{"messageId":""}}"#,
        r#"{"type":"PUSH","headers":{"messageId":"m"}}"#,
        r#"{"type":7,"headers":{"messageId":"m"}}"#,
        r#"{"type":"EVENT","headers":{"messageId":"m"},"data":"{}"}"#,
    ];
    for case in cases {
        assert!(parse(case).is_err(), "accepted {case:?}");
    }
}

#[test]
fn hostile_event_data_is_refused_with_the_message_id() {
    let cases = [
        ("user_add_org", "not json"),
        ("user_add_org", "[]"),
        ("user_add_org", r#"{"timeStamp":"1"}"#),
        ("user_add_org", r#"{"userId":{"a":1}}"#),
        ("user_add_org", r#"{"userId":[null]}"#),
        ("user_add_org", r#"{"userId":[""]}"#),
        ("user_add_org", r#"{"userId":["a\u0000b"]}"#),
        ("org_dept_modify", r#"{"deptId":["12x"]}"#),
        ("org_dept_modify", r#"{"deptId":[1.5]}"#),
        ("org_dept_modify", r#"{"deptId":[99999999999999999999999]}"#),
    ];
    for (t, data) in cases {
        let refused = parse(&event_frame(t, data)).err();
        assert!(
            matches!(&refused, Some(Refused { message_id: Some(m), error: FrameError::BadEventData { .. } }) if m == "msg-1"),
            "{t} {data}: {refused:?}"
        );
    }
    let long = "x".repeat(10_000);
    let refused = parse(&event_frame(
        "user_add_org",
        &format!(r#"{{"userId":["{long}"]}}"#),
    ))
    .err();
    let text = refused.map(|r| r.error.to_string()).unwrap_or_default();
    assert!(
        text.len() < 300,
        "the error quotes too much: {} bytes",
        text.len()
    );
}
