//! Helpers the kinds' unit tests share: parse a spec from JSON, check that it round-trips, expect a
//! rejection, find an issue at a path, patch one field of an example.
use std::fmt;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::common::Issue;

pub(crate) fn parse<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("the spec parses")
}

pub(crate) fn round_trips<T: DeserializeOwned + Serialize>(v: Value) -> T {
    let t: T = parse(v.clone());
    assert_eq!(serde_json::to_value(&t).expect("serializes"), v);
    t
}

pub(crate) fn parse_err<T: DeserializeOwned + fmt::Debug>(v: Value) -> String {
    serde_json::from_value::<T>(v).expect_err("must be rejected").to_string()
}

/// Asserts that `issues` has an issue at `path` whose message contains `message`.
pub(crate) fn has(issues: &[Issue], path: &str, message: &str) {
    assert!(
        issues.iter().any(|i| i.path == path && i.message.contains(message)),
        "no issue at `{path}` containing `{message}` in {issues:#?}"
    );
}

/// Runs `check` on specs built from `base` with one JSON pointer replaced.
pub(crate) fn patched(base: &Value, pointer: &str, value: Value) -> Value {
    let mut v = base.clone();
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    let target = v.pointer_mut(parent).expect("the parent exists in the example");
    match target {
        Value::Array(a) => {
            let i: usize = key.parse().expect("an array index");
            if i < a.len() {
                a[i] = value;
            } else {
                a.push(value);
            }
        }
        Value::Object(o) => {
            if value.is_null() {
                o.remove(key);
            } else {
                o.insert(key.to_string(), value);
            }
        }
        _ => panic!("{pointer} is not in a container"),
    }
    v
}
