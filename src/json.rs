//! JSON input read strictly: a key given twice in any object, at any depth, is refused before
//! the document is deserialised (serde keeps one of the two silently, Python's reader the last),
//! so no file we read means one thing to us and another to the tool that wrote or checks it.

use serde::de::{DeserializeOwned, Error as _, MapAccess, SeqAccess, Visitor};

/// `text` as a `T`, once no object in it is found to name a key twice.
pub fn from_str<T: DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    check_unique_keys(text.as_bytes())?;
    serde_json::from_str(text)
}

/// An error naming the first key some object of the document `bytes` gives twice (or why the
/// bytes are not JSON).
pub fn check_unique_keys(bytes: &[u8]) -> serde_json::Result<()> {
    serde_json::from_slice::<UniqueKeys>(bytes).map(|_| ())
}

/// Any JSON value, walked only to find a repeated key.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeys)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<UniqueKeys>()?;
            if !seen.insert(key.clone()) {
                return Err(A::Error::custom(format!("`{key}` appears twice")));
            }
        }
        Ok(UniqueKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_twice_is_refused_at_any_depth() {
        for text in [r#"{"a": 1, "a": 2}"#, r#"{"a": [{"b": {"c": 1, "c": 1}}]}"#] {
            let err = super::check_unique_keys(text.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("appears twice"), "{text}: {err}");
        }
        let v: serde_json::Value = super::from_str(r#"{"a": [1, {"b": null}], "c": "a"}"#).unwrap();
        assert_eq!(v["a"][1]["b"], serde_json::Value::Null);
    }
}
