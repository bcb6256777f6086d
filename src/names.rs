//! Enums the user names in text (sampler, spacing, uncertainty mode, heatmap scale): one table
//! of names per enum gives parsing, display, serialisation and the list a front end offers.

/// Implements `NAMES`, `name()`, `FromStr`, `Display`, `Serialize` and `Deserialize` for a
/// fieldless enum from one `Variant = "name"` table.
macro_rules! named_enum {
    ($ty:ident { $($variant:ident = $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every accepted name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::Error;
            fn from_str(s: &str) -> $crate::Result<$ty> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err($crate::Error::Invalid(format!(
                        "{s:?} is not a {}: expected one of {}",
                        stringify!($ty),
                        $ty::NAMES.join(", ")
                    ))),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<$ty, D::Error> {
                let name = <String as serde::Deserialize>::deserialize(d)?;
                name.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use named_enum;
