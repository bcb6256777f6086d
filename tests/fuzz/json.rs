//! Structure-aware mutations of a valid JSON document: a key given twice, an unknown key, a key
//! removed, a value of another type, a number at the edge of (or past) what any integer or float
//! holds, an odd string, nesting deeper than any parser should follow, or text-level damage.
//! Each mutant says what was done where, so a target can tell what its parser must refuse.

use crate::mutate::{mutate_bytes, Rng};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// Where a value sits in the document: the keys and indices leading to it.
pub type Path = Vec<Step>;

#[derive(Clone, Debug)]
pub enum JsonMutation {
    /// The same document, formatted otherwise.
    Reformatted,
    /// `key` of the object at `at` given a second time, with another value.
    DuplicateKey { at: Path, key: String },
    /// A key the format does not define, added to the object at `at`.
    UnknownKey { at: Path },
    /// `key` of the object at `at` left out.
    RemovedKey { at: Path, key: String },
    /// The value at `at` replaced by `to`, of another JSON type.
    TypeSwap { at: Path, to: Value },
    /// The value at `at` replaced by the number `text` (which may fit no Rust number).
    Extreme { at: Path, text: String },
    /// The value at `at` replaced by an odd string.
    OddString { at: Path, text: String },
    /// The value at `at` nested in 200 arrays.
    Deep { at: Path },
    /// Damage to the text itself (what it did).
    Bytes(String),
}

/// `a.b[2]`: a path as the findings name it.
fn show(path: &Path) -> String {
    let mut out = String::from("$");
    for step in path {
        match step {
            Step::Key(k) => out += &format!(".{k}"),
            Step::Index(i) => out += &format!("[{i}]"),
        }
    }
    out
}

impl std::fmt::Display for JsonMutation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonMutation::Reformatted => write!(f, "respelled"),
            JsonMutation::DuplicateKey { at, key } => write!(f, "{}.{key} twice", show(at)),
            JsonMutation::UnknownKey { at } => write!(f, "an unknown key in {}", show(at)),
            JsonMutation::RemovedKey { at, key } => write!(f, "{}.{key} removed", show(at)),
            JsonMutation::TypeSwap { at, to } => write!(f, "{} = {to}", show(at)),
            JsonMutation::Extreme { at, text } => write!(f, "{} = {text}", show(at)),
            JsonMutation::OddString { at, text } => {
                let shown: String = text.chars().take(20).collect();
                write!(
                    f,
                    "{} = {shown:?} ({} chars)",
                    show(at),
                    text.chars().count()
                )
            }
            JsonMutation::Deep { at } => write!(f, "{} nested 200 deep", show(at)),
            JsonMutation::Bytes(what) => write!(f, "text damaged: {what}"),
        }
    }
}

impl JsonMutation {
    /// Where it happened (None for the whole text).
    pub fn at(&self) -> Option<&Path> {
        match self {
            JsonMutation::DuplicateKey { at, .. }
            | JsonMutation::UnknownKey { at }
            | JsonMutation::RemovedKey { at, .. }
            | JsonMutation::TypeSwap { at, .. }
            | JsonMutation::Extreme { at, .. }
            | JsonMutation::OddString { at, .. }
            | JsonMutation::Deep { at } => Some(at),
            JsonMutation::Reformatted | JsonMutation::Bytes(_) => None,
        }
    }

    /// Whether it happened at or below the top-level key `key`.
    pub fn under(&self, key: &str) -> bool {
        self.at()
            .and_then(|p| p.first())
            .is_some_and(|s| *s == Step::Key(key.into()))
    }
}

pub struct Mutant {
    pub bytes: Vec<u8>,
    pub mutation: JsonMutation,
}

const EXTREME_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-1",
    "1",
    "2",
    "3",
    "0.5",
    "-0.5",
    "1.0",
    "1e308",
    "-1e308",
    "1e309",
    "-1e309",
    "1e-320",
    "65535",
    "65536",
    "100000",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "1e19",
];

/// Stand-in values replaced by raw text after serialising: serde_json cannot hold a duplicate
/// key, a number past f64 or a nesting it would refuse to write.
const RAW_MARK: &str = "__fuzz_raw_text__";
const DUP_MARK: &str = "__fuzz_duplicate_key__";

/// Every value of `doc` and where it is.
fn paths(doc: &Value) -> Vec<(Path, &Value)> {
    let mut out = vec![(Vec::new(), doc)];
    let mut i = 0;
    while i < out.len() {
        let (path, v) = out[i].clone();
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let mut p = path.clone();
                    p.push(Step::Key(k.clone()));
                    out.push((p, child));
                }
            }
            Value::Array(items) => {
                for (k, child) in items.iter().enumerate() {
                    let mut p = path.clone();
                    p.push(Step::Index(k));
                    out.push((p, child));
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn get_mut<'a>(doc: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(doc, |v, step| match step {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// A value of another JSON type than `v`.
fn other_type(rng: &mut Rng, v: &Value) -> Value {
    let choices = [
        Value::Null,
        Value::Bool(true),
        Value::String("text".into()),
        serde_json::json!(1),
        serde_json::json!(-1),
        serde_json::json!(1.5),
        serde_json::json!([]),
        serde_json::json!({}),
        serde_json::json!([1, 2]),
        serde_json::json!({"a": 1}),
    ];
    let kind = |v: &Value| std::mem::discriminant(v);
    loop {
        let c = rng.pick(&choices).clone();
        if kind(&c) != kind(v) {
            return c;
        }
    }
}

fn odd_string(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => String::new(),
        1 => " ".into(),
        2 => "\u{0}".into(),
        3 => "é".into(),
        4 => "a".repeat(100_000),
        5 => "NaN".into(),
        6 => "inf".into(),
        7 => "-1".into(),
        8 => "1e400".into(),
        9 => "linear ".into(),
        10 => "LINEAR".into(),
        _ => "ddim\u{202e}".into(),
    }
}

/// One mutant of `doc` (a valid document of the format).
pub fn mutate(rng: &mut Rng, doc: &Value) -> Mutant {
    let all = paths(doc);
    let objects: Vec<&(Path, &Value)> = all
        .iter()
        .filter(|(_, v)| v.as_object().is_some_and(|m| !m.is_empty()))
        .collect();
    let mut out = doc.clone();
    let mut raw = None;
    let roll = rng.below(100);
    let mutation = match roll {
        0..=9 => JsonMutation::Reformatted,
        10..=21 if !objects.is_empty() => {
            let (at, obj) = rng.pick(&objects);
            let keys: Vec<&String> = obj.as_object().unwrap().keys().collect();
            let key = rng.pick(&keys).to_string();
            let second = other_type(rng, &obj[key.as_str()]);
            get_mut(&mut out, at)[DUP_MARK] = second;
            JsonMutation::DuplicateKey {
                at: at.clone(),
                key,
            }
        }
        22..=31 if !objects.is_empty() => {
            let (at, _) = rng.pick(&objects);
            get_mut(&mut out, at)["zz_unknown_key"] = serde_json::json!(0);
            JsonMutation::UnknownKey { at: at.clone() }
        }
        32..=41 if !objects.is_empty() => {
            let (at, obj) = rng.pick(&objects);
            let keys: Vec<&String> = obj.as_object().unwrap().keys().collect();
            let key = rng.pick(&keys).to_string();
            get_mut(&mut out, at).as_object_mut().unwrap().remove(&key);
            JsonMutation::RemovedKey {
                at: at.clone(),
                key,
            }
        }
        42..=55 => {
            let (at, v) = rng.pick(&all);
            let to = other_type(rng, v);
            *get_mut(&mut out, at) = to.clone();
            JsonMutation::TypeSwap { at: at.clone(), to }
        }
        56..=73 => {
            let numbers: Vec<&(Path, &Value)> = all.iter().filter(|(_, v)| v.is_number()).collect();
            let (at, _) = match numbers.is_empty() {
                true => rng.pick(&all),
                false => *rng.pick(&numbers),
            };
            let text = rng.pick(EXTREME_NUMBERS).to_string();
            *get_mut(&mut out, at) = Value::String(RAW_MARK.into());
            raw = Some(text.clone());
            JsonMutation::Extreme {
                at: at.clone(),
                text,
            }
        }
        74..=83 => {
            let strings: Vec<&(Path, &Value)> = all.iter().filter(|(_, v)| v.is_string()).collect();
            let (at, _) = match strings.is_empty() {
                true => rng.pick(&all),
                false => *rng.pick(&strings),
            };
            let text = odd_string(rng);
            *get_mut(&mut out, at) = Value::String(text.clone());
            JsonMutation::OddString {
                at: at.clone(),
                text,
            }
        }
        84..=86 => {
            let (at, _) = rng.pick(&all);
            *get_mut(&mut out, at) = Value::String(RAW_MARK.into());
            raw = Some(format!("{}1{}", "[".repeat(200), "]".repeat(200)));
            JsonMutation::Deep { at: at.clone() }
        }
        _ => {
            let mut bytes = serde_json::to_vec(doc).unwrap();
            let what = mutate_bytes(rng, &mut bytes);
            return Mutant {
                bytes,
                mutation: JsonMutation::Bytes(what),
            };
        }
    };
    let mut text = match rng.chance(0.5) {
        true => serde_json::to_string_pretty(&out).unwrap(),
        false => serde_json::to_string(&out).unwrap(),
    };
    if let Some(raw) = raw {
        text = text.replacen(&format!("\"{RAW_MARK}\""), &raw, 1);
    }
    if let JsonMutation::DuplicateKey { key, .. } = &mutation {
        let quoted = serde_json::to_string(key).unwrap();
        text = text.replacen(&format!("\"{DUP_MARK}\""), &quoted, 1);
    }
    Mutant {
        bytes: text.into_bytes(),
        mutation,
    }
}
