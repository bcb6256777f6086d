//! `.npy` files built field by field, so the generator knows what numpy would make of each one:
//! the header's dtype, order and shape, how it is spelled (quotes, spacing, key order, trailing
//! comma), extra or repeated keys, the format version, and a payload of the right size or not.

use crate::mutate::Rng;

#[derive(Clone, Debug)]
pub struct NpyPlan {
    pub descr: String,
    /// The `fortran_order` value as written.
    pub fortran: String,
    /// Each dimension as written (not always a number that fits).
    pub dims: Vec<String>,
    pub quote: char,
    /// Between a key and its value.
    pub colon: String,
    /// The order the three keys are written in.
    pub order: [usize; 3],
    pub trailing_comma: bool,
    pub extra_key: bool,
    /// A key (0 descr, 1 fortran_order, 2 shape) written a second time, with another value.
    pub repeated: Option<usize>,
    pub version: u8,
    pub payload: Vec<u8>,
}

impl NpyPlan {
    /// What `np.save` writes for a C-order array of `shape` holding `payload` of dtype `descr`.
    pub fn canonical(descr: &str, shape: &[usize], payload: Vec<u8>) -> NpyPlan {
        NpyPlan {
            descr: descr.into(),
            fortran: "False".into(),
            dims: shape.iter().map(|d| d.to_string()).collect(),
            quote: '\'',
            colon: ": ".into(),
            order: [0, 1, 2],
            trailing_comma: true,
            extra_key: false,
            repeated: None,
            version: 1,
            payload,
        }
    }

    /// float32 values of `shape` (little-endian, C order).
    pub fn f32s(shape: &[usize], values: &[f32]) -> NpyPlan {
        NpyPlan::canonical("<f4", shape, bytemuck::cast_slice(values).to_vec())
    }

    /// float64 values of `shape`.
    pub fn f64s(shape: &[usize], values: &[f64]) -> NpyPlan {
        NpyPlan::canonical("<f8", shape, bytemuck::cast_slice(values).to_vec())
    }

    /// The shape, when every dimension is a number whose product (in elements and bytes of
    /// `item` each) fits a usize.
    pub fn shape(&self) -> Option<Vec<usize>> {
        let dims: Option<Vec<usize>> = self.dims.iter().map(|d| d.parse().ok()).collect();
        let dims = dims?;
        dims.iter()
            .try_fold(8usize, |n, &d| n.checked_mul(d))
            .map(|_| dims)
    }

    /// Bytes per element of the dtype, for the dtypes the crate reads.
    pub fn item(&self) -> Option<usize> {
        match self.descr.as_str() {
            "<f4" => Some(4),
            "<f8" => Some(8),
            _ => None,
        }
    }

    /// Why numpy would read another array than the one planned as a `descrs` array, or refuse
    /// it, if it would (a repeated key: numpy keeps the last; the crate refuses the ambiguity).
    pub fn invalid(&self, descrs: &[&str]) -> Option<String> {
        if !(1..=3).contains(&self.version) {
            return Some(format!("format version {}", self.version));
        }
        if !descrs.contains(&self.descr.as_str()) {
            return Some(format!("dtype {:?}", self.descr));
        }
        if self.fortran != "False" {
            return Some(format!("fortran_order {}", self.fortran));
        }
        if self.extra_key {
            return Some("a key numpy does not define".into());
        }
        if let Some(k) = self.repeated {
            return Some(format!("key {k} given twice"));
        }
        let Some(shape) = self.shape() else {
            return Some(format!("shape {:?}", self.dims));
        };
        let needed = shape.iter().product::<usize>() * self.item().unwrap_or(1);
        if needed != self.payload.len() {
            return Some(format!("{} payload bytes for {needed}", self.payload.len()));
        }
        None
    }

    /// Whether it is spelled exactly as numpy writes it.
    pub fn numpy_spelling(&self) -> bool {
        self.quote == '\''
            && self.colon == ": "
            && self.order == [0, 1, 2]
            && self.trailing_comma
            && self.version == 1
    }

    pub fn encode(&self) -> Vec<u8> {
        let q = self.quote;
        let shape = match self.dims.len() {
            1 => format!("({},)", self.dims[0]),
            _ => format!("({})", self.dims.join(", ")),
        };
        let values = [format!("{q}{}{q}", self.descr), self.fortran.clone(), shape];
        let keys = ["descr", "fortran_order", "shape"];
        let mut items: Vec<String> = self
            .order
            .iter()
            .map(|&k| format!("{q}{}{q}{}{}", keys[k], self.colon, values[k]))
            .collect();
        if let Some(k) = self.repeated {
            let other = ["'<f8'", "True", "(1,)"][k];
            items.push(format!("{q}{}{q}{}{other}", keys[k], self.colon));
        }
        if self.extra_key {
            items.push(format!("{q}extra{q}{}0", self.colon));
        }
        let mut header = format!("{{{}", items.join(", "));
        header += if self.trailing_comma { ", }" } else { "}" };
        let prefix = if self.version == 1 { 10 } else { 12 };
        let unpadded = prefix + header.len() + 1;
        header += &" ".repeat(unpadded.next_multiple_of(64) - unpadded);
        header.push('\n');
        let mut out = b"\x93NUMPY".to_vec();
        out.extend([self.version, 0]);
        match self.version {
            1 => out.extend((header.len() as u16).to_le_bytes()),
            _ => out.extend((header.len() as u32).to_le_bytes()),
        }
        out.extend(header.as_bytes());
        out.extend(&self.payload);
        out
    }

    /// One structural change, saying what it was.
    pub fn mutate(&mut self, rng: &mut Rng) -> String {
        match rng.below(11) {
            0 => {
                self.descr = rng
                    .pick(&[
                        "<f8", "<f4", ">f4", "|u1", "<i4", "<f2", "float32", "<f4 ", "",
                    ])
                    .to_string();
                format!("dtype {:?}", self.descr)
            }
            1 => {
                self.fortran = rng.pick(&["True", "0", "1", "None", "false"]).to_string();
                format!("fortran_order {}", self.fortran)
            }
            2 => {
                let k = rng.below(self.dims.len() + 1);
                let d = rng
                    .pick(&[
                        "0",
                        "1",
                        "7",
                        "-1",
                        "4294967296",
                        "9223372036854775808",
                        "18446744073709551615",
                        "99999999999999999999999",
                        "2.0",
                        "x",
                    ])
                    .to_string();
                match k < self.dims.len() && rng.chance(0.6) {
                    true => self.dims[k] = d,
                    false => self.dims.insert(k.min(self.dims.len()), d),
                }
                format!("shape {:?}", self.dims)
            }
            3 => {
                self.dims.clear();
                "shape ()".into()
            }
            4 => {
                self.quote = '"';
                "double quotes".into()
            }
            5 => {
                self.colon = rng.pick(&[":", " : ", ":  "]).to_string();
                format!("colon {:?}", self.colon)
            }
            6 => {
                self.order = *rng.pick(&[[2, 1, 0], [1, 0, 2], [0, 2, 1]]);
                format!("key order {:?}", self.order)
            }
            7 => {
                self.trailing_comma = false;
                "no trailing comma".into()
            }
            8 => match rng.chance(0.5) {
                true => {
                    self.extra_key = true;
                    "an extra key".into()
                }
                false => {
                    self.repeated = Some(rng.below(3));
                    format!("key {:?} repeated", self.repeated)
                }
            },
            9 => {
                self.version = *rng.pick(&[2, 3, 0, 4]);
                format!("version {}", self.version)
            }
            _ => {
                let n = self.payload.len();
                let cut = rng.below(n + 1);
                match rng.chance(0.5) {
                    true => self.payload.truncate(cut),
                    false => {
                        let n = rng.below(9) + 1;
                        self.payload.extend(rng.bytes(n))
                    }
                }
                format!("payload of {} bytes (was {n})", self.payload.len())
            }
        }
    }
}
