//! Editing weight files for tests: a safetensors file as its header (JSON) and data bytes, with
//! helpers to change a config key or a tensor value and write the result back, so hostile
//! inputs are built from the fixtures without Python.

use serde_json::{Map, Value};
use std::path::Path;

/// A safetensors file, split into its header and its data.
#[derive(Clone)]
pub struct WeightsFile {
    pub header: Map<String, Value>,
    pub data: Vec<u8>,
}

impl WeightsFile {
    pub fn read(path: &Path) -> WeightsFile {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        WeightsFile {
            header,
            data: bytes[8 + n..].to_vec(),
        }
    }

    /// The file's bytes: header length, header JSON padded with spaces to 8 bytes, data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = serde_json::to_string(&self.header).unwrap();
        header_and_data(&header, &self.data)
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.to_bytes()).unwrap();
    }

    /// The JSON held as text in metadata entry `key` (`config`, `scheduler`).
    pub fn meta_json(&self, key: &str) -> Value {
        let text = self.header["__metadata__"][key].as_str().unwrap();
        serde_json::from_str(text).unwrap()
    }

    pub fn set_meta_json(&mut self, key: &str, value: &Value) {
        self.set_meta(key, &value.to_string());
    }

    pub fn set_meta(&mut self, key: &str, text: &str) {
        let meta = self.header["__metadata__"].as_object_mut().unwrap();
        meta.insert(key.into(), Value::String(text.into()));
    }

    /// Sets `config_key` of the JSON in metadata entry `entry` (None removes it).
    pub fn edit_meta_json(&mut self, entry: &str, config_key: &str, value: Option<Value>) {
        let mut json = self.meta_json(entry);
        let obj = json.as_object_mut().unwrap();
        match value {
            Some(v) => obj.insert(config_key.into(), v),
            None => obj.remove(config_key),
        };
        self.set_meta_json(entry, &json);
    }

    /// Names of the tensors, sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .header
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Byte range of tensor `name` in the data.
    pub fn tensor_bytes(&self, name: &str) -> std::ops::Range<usize> {
        let offsets = self.header[name]["data_offsets"].as_array().unwrap();
        let at = |i: usize| offsets[i].as_u64().unwrap() as usize;
        at(0)..at(1)
    }

    /// Sets element `i` of the float32 tensor `name`.
    pub fn set_f32(&mut self, name: &str, i: usize, value: f32) {
        let start = self.tensor_bytes(name).start + 4 * i;
        self.data[start..start + 4].copy_from_slice(&value.to_le_bytes());
    }
}

/// A safetensors file from header text (taken as is: it may be malformed) and data.
pub fn header_and_data(header: &str, data: &[u8]) -> Vec<u8> {
    let mut header = header.as_bytes().to_vec();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(data);
    out
}
