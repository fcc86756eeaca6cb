//! Byte-stable JSON for everything kiln hashes.
//!
//! `oci_spec` keeps annotations and labels in `HashMap`s, whose iteration order changes from
//! run to run. Serializing through `serde_json::Value` and sorting every object's keys gives the
//! same bytes for the same value every time, whichever serde_json features other crates enable.

use serde::Serialize;
use serde_json::{Map, Value};

/// Compact JSON with every object's keys sorted by their bytes.
pub fn to_canonical_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&sorted(serde_json::to_value(value)?))
}

fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted(v)))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn keys_are_sorted_at_every_depth() {
        let mut inner = HashMap::new();
        for k in ["zeta", "alpha", "mid", "beta", "omega", "gamma"] {
            inner.insert(k.to_string(), k.len());
        }
        let v = serde_json::json!({"b": [inner.clone(), {"y": 1, "x": 2}], "a": inner});
        let out = String::from_utf8(to_canonical_vec(&v).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"a":{"alpha":5,"beta":4,"gamma":5,"mid":3,"omega":5,"zeta":4},"b":[{"alpha":5,"beta":4,"gamma":5,"mid":3,"omega":5,"zeta":4},{"x":2,"y":1}]}"#
        );
    }

    #[test]
    fn hashmap_order_does_not_leak() {
        // Many HashMaps with the same content iterate in different orders; the bytes must not.
        let first = {
            let m: HashMap<String, String> = (0..50)
                .map(|i| (format!("k{i}"), format!("v{i}")))
                .collect();
            to_canonical_vec(&m).unwrap()
        };
        for _ in 0..20 {
            let m: HashMap<String, String> = (0..50)
                .rev()
                .map(|i| (format!("k{i}"), format!("v{i}")))
                .collect();
            assert_eq!(to_canonical_vec(&m).unwrap(), first);
        }
    }
}
