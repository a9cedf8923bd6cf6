//! Whatever a peer sends, parsing never panics, and a frame is either a request with its id, a
//! field error that keeps the id, or a frame error: never something in between.

use miclink_protocol::Request;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,80}".prop_map(Value::String),
        prop::sample::select(vec![
            "r1", "alice", "anchor", "audience", "", "a b", "publish"
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like requests: a known or unknown type, an id or not, random fields.
fn request_like() -> impl Strategy<Value = String> {
    let field = prop::sample::select(vec![
        "room",
        "user",
        "role",
        "name",
        "token",
        "session",
        "seat",
        "timeout_s",
        "open_camera",
        "accept",
        "sdp",
        "pc",
        "candidate",
        "offset",
        "limit",
    ]);
    (
        prop::option::of(json_value()),
        prop::option::of(prop_oneof![
            prop::sample::select(Request::TYPES.to_vec()).prop_map(|t| json!(t)),
            json_value(),
        ]),
        prop::collection::vec((field, json_value()), 0..8),
    )
        .prop_map(|(id, ty, fields)| {
            let mut m = Map::new();
            if let Some(id) = id {
                m.insert("id".into(), id);
            }
            if let Some(ty) = ty {
                m.insert("type".into(), ty);
            }
            for (k, v) in fields {
                m.insert(k.into(), v);
            }
            Value::Object(m).to_string()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_is_classified_consistently(text in ".{0,300}") {
        let checked = miclink_checks::frame::check(&text);
        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
    }

    #[test]
    fn request_shaped_frames_are_classified_consistently(text in request_like()) {
        let checked = miclink_checks::frame::check(&text);
        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
    }
}
