//! The offence taxonomy: canonical codes, their legal data and every alias.
//!
//! Names are matched through [`alias_key`], which ignores case and every
//! character that is not a letter or digit, so vendors' spellings
//! (`redLight`, `red_light`, `RED-LIGHT`) meet one entry.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use crate::DataError;

/// The taxonomy shipped in the repository (`data/taxonomy.toml`).
const BUILTIN_TAXONOMY: &str = include_str!("../../../data/taxonomy.toml");

/// One canonical offence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offence {
    /// Canonical code, `<family>.<name>`.
    pub code: String,
    /// Family, the part of the code before the dot.
    pub family: String,
    /// Short English name (the code when the file gives none).
    pub name: String,
    /// Russian name, when the file gives one.
    pub name_ru: Option<String>,
    /// Kazakh name, when the file gives one.
    pub name_kk: Option<String>,
    /// What the code means, in plain words.
    pub meaning: String,
    /// Default legal category (`administrative` or `criminal`).
    pub category: String,
    /// Article of the Code of Administrative Offences or the Criminal Code, or empty.
    pub article: String,
}

/// What a name means to the taxonomy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameMatch<'a> {
    /// The name is (an alias of) this offence.
    Offence(&'a Offence),
    /// The name is a known non-offence (a traffic state, a plain read).
    State,
    /// The taxonomy does not know the name.
    Unknown,
}

/// The loaded taxonomy: offences and the alias index.
#[derive(Debug, Clone)]
pub struct Taxonomy {
    offences: Vec<Offence>,
    /// alias key -> index into `offences`, valid for every format.
    shared_aliases: HashMap<String, usize>,
    /// format -> alias key -> index into `offences` (nested, so a lookup
    /// borrows the format and the key instead of building an owned pair).
    vendor_aliases: HashMap<String, HashMap<String, usize>>,
    /// format -> alias keys of names that are states, not offences.
    states: HashMap<String, HashSet<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaxonomyFile {
    #[allow(dead_code)]
    version: u32,
    offences: Vec<OffenceEntry>,
    #[serde(default)]
    vendor: HashMap<String, HashMap<String, String>>,
    #[serde(default)]
    states: HashMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OffenceEntry {
    code: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    name_ru: Option<String>,
    #[serde(default)]
    name_kk: Option<String>,
    meaning: String,
    category: String,
    #[serde(default)]
    article: String,
    #[serde(default)]
    aliases: Vec<String>,
}

/// Normalises a name for alias matching: ASCII letters and digits only, lowercase.
///
/// Non-ASCII letters are kept (lowercased) so that names in other scripts still
/// match themselves.
pub fn alias_key(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Longest alias key built on the stack by [`ascii_alias_key`].
const ASCII_KEY_BYTES: usize = 64;

/// [`alias_key`] of an ASCII name, built in `buffer`; `None` when the name is
/// not ASCII or its key does not fit (the caller then uses [`alias_key`]).
/// For ASCII text both give the same key: the Unicode letter, digit and
/// lowercase rules agree with the ASCII ones there.
fn ascii_alias_key<'b>(name: &str, buffer: &'b mut [u8; ASCII_KEY_BYTES]) -> Option<&'b str> {
    if !name.is_ascii() {
        return None;
    }
    let mut len = 0;
    for byte in name.bytes().filter(u8::is_ascii_alphanumeric) {
        *buffer.get_mut(len)? = byte.to_ascii_lowercase();
        len += 1;
    }
    std::str::from_utf8(buffer.get(..len)?).ok()
}

impl Taxonomy {
    /// The taxonomy compiled into the binary (`data/taxonomy.toml`).
    pub fn builtin() -> Result<Self, DataError> {
        Self::from_toml(BUILTIN_TAXONOMY)
    }

    /// Loads a taxonomy file.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parses and checks a taxonomy document.
    pub fn from_toml(text: &str) -> Result<Self, DataError> {
        let file: TaxonomyFile = toml::from_str(text).map_err(|source| DataError::Toml {
            what: "taxonomy",
            source,
        })?;
        let invalid = |message: String| DataError::Invalid {
            what: "taxonomy",
            message,
        };
        let mut offences = Vec::with_capacity(file.offences.len());
        let mut shared_aliases = HashMap::new();
        for entry in file.offences {
            let Some((family, name)) = entry.code.split_once('.') else {
                return Err(invalid(format!(
                    "code {:?} is not <family>.<name>",
                    entry.code
                )));
            };
            if family.is_empty() || name.is_empty() {
                return Err(invalid(format!(
                    "code {:?} is not <family>.<name>",
                    entry.code
                )));
            }
            let index = offences.len();
            // The code itself is always accepted, in any spelling.
            for name in std::iter::once(&entry.code).chain(entry.aliases.iter()) {
                let key = alias_key(name);
                if let Some(previous) = shared_aliases.insert(key.clone(), index) {
                    if previous != index {
                        return Err(invalid(format!("alias {name:?} names two offences")));
                    }
                }
            }
            offences.push(Offence {
                family: family.to_string(),
                name: entry.name.unwrap_or_else(|| entry.code.clone()),
                name_ru: entry.name_ru,
                name_kk: entry.name_kk,
                code: entry.code,
                meaning: entry.meaning,
                category: entry.category,
                article: entry.article,
            });
        }
        let index_of = |code: &str| offences.iter().position(|offence| offence.code == code);
        let mut vendor_aliases: HashMap<String, HashMap<String, usize>> = HashMap::new();
        for (format, names) in file.vendor {
            let aliases = vendor_aliases.entry(format.clone()).or_default();
            for (name, code) in names {
                let Some(index) = index_of(&code) else {
                    return Err(invalid(format!(
                        "vendor.{format}.{name} names unknown code {code:?}"
                    )));
                };
                aliases.insert(alias_key(&name), index);
            }
        }
        let mut states: HashMap<String, HashSet<String>> = HashMap::new();
        for (format, names) in file.states {
            let keys = states.entry(format).or_default();
            for name in names {
                keys.insert(alias_key(&name));
            }
        }
        Ok(Self {
            offences,
            shared_aliases,
            vendor_aliases,
            states,
        })
    }

    /// Every canonical offence, in file order.
    pub fn offences(&self) -> &[Offence] {
        &self.offences
    }

    /// The offence with this exact canonical code.
    pub fn by_code(&self, code: &str) -> Option<&Offence> {
        self.offences.iter().find(|offence| offence.code == code)
    }

    /// Resolves a name seen in a payload of `format`: a vendor-specific alias
    /// first, then the shared aliases and codes, then the known states.
    pub fn resolve(&self, format: &str, name: &str) -> NameMatch<'_> {
        // Names are resolved once per offence: the usual short ASCII name is
        // keyed in a stack buffer, anything else through `alias_key`.
        let mut buffer = [0u8; ASCII_KEY_BYTES];
        let owned_key;
        let key = match ascii_alias_key(name, &mut buffer) {
            Some(key) => key,
            None => {
                owned_key = alias_key(name);
                owned_key.as_str()
            }
        };
        if key.is_empty() {
            return NameMatch::Unknown;
        }
        let vendor_alias = self
            .vendor_aliases
            .get(format)
            .and_then(|aliases| aliases.get(key));
        if let Some(&index) = vendor_alias {
            return NameMatch::Offence(&self.offences[index]);
        }
        if let Some(&index) = self.shared_aliases.get(key) {
            return NameMatch::Offence(&self.offences[index]);
        }
        if self
            .states
            .get(format)
            .is_some_and(|keys| keys.contains(key))
        {
            return NameMatch::State;
        }
        NameMatch::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes of docs/counting.md, "Offences"; the builtin file must hold each.
    const DOMAIN_CODES: [&str; 20] = [
        "traffic.speeding",
        "traffic.red_light",
        "traffic.pedestrian_priority",
        "traffic.signs_markings",
        "traffic.stop_line",
        "traffic.bus_lane",
        "traffic.wrong_way",
        "traffic.illegal_turn",
        "traffic.illegal_parking",
        "traffic.no_seat_belt",
        "traffic.phone_use",
        "traffic.no_helmet",
        "public_order.hooliganism",
        "public_order.littering",
        "public_order.illegal_dumping",
        "public_order.smoking",
        "public_order.public_drinking",
        "public_order.vandalism",
        "public_order.fighting",
        "public_order.graffiti",
    ];

    #[test]
    fn builtin_holds_every_domain_code_with_family_and_category() {
        let taxonomy = Taxonomy::builtin().unwrap();
        for code in DOMAIN_CODES {
            let offence = taxonomy
                .by_code(code)
                .unwrap_or_else(|| panic!("{code} missing"));
            assert!(code.starts_with(&offence.family));
            assert!(["administrative", "criminal"].contains(&offence.category.as_str()));
        }
        assert_eq!(
            taxonomy.by_code("public_order.vandalism").unwrap().article,
            "CC 294"
        );
        assert_eq!(
            taxonomy.by_code("traffic.speeding").unwrap().article,
            "CoAO 592"
        );
    }

    #[test]
    fn names_match_ignoring_case_and_punctuation() {
        let taxonomy = Taxonomy::builtin().unwrap();
        for name in [
            "traffic.red_light",
            "redLight",
            "RED-LIGHT",
            "red light",
            "TrafficRunRedLight",
        ] {
            match taxonomy.resolve("canonical", name) {
                NameMatch::Offence(offence) => {
                    assert_eq!(offence.code, "traffic.red_light", "{name}")
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(
            taxonomy.resolve("canonical", "teleportation"),
            NameMatch::Unknown
        );
        assert_eq!(taxonomy.resolve("canonical", "  "), NameMatch::Unknown);
    }

    #[test]
    fn vendor_names_and_states_apply_to_their_format_only() {
        let taxonomy = Taxonomy::builtin().unwrap();
        assert!(
            matches!(taxonomy.resolve("dahua", "OverSpeed"), NameMatch::Offence(o) if o.code == "traffic.speeding")
        );
        assert_eq!(
            taxonomy.resolve("hikvision", "congestion"),
            NameMatch::State
        );
        assert_eq!(
            taxonomy.resolve("canonical", "congestion"),
            NameMatch::Unknown
        );
    }

    #[test]
    fn an_alias_naming_two_offences_is_refused() {
        let text = r#"
version = 1
[[offences]]
code = "a.x"
meaning = "x"
category = "administrative"
aliases = ["same"]
[[offences]]
code = "a.y"
meaning = "y"
category = "administrative"
aliases = ["SAME"]
"#;
        let error = Taxonomy::from_toml(text).unwrap_err().to_string();
        assert!(error.contains("names two offences"), "{error}");
    }

    #[test]
    fn a_code_without_family_is_refused() {
        let text = "version = 1\n[[offences]]\ncode = \"speeding\"\nmeaning = \"x\"\ncategory = \"administrative\"\n";
        assert!(Taxonomy::from_toml(text).is_err());
    }

    #[test]
    fn ascii_keys_built_on_the_stack_equal_alias_keys() {
        let mut buffer = [0u8; ASCII_KEY_BYTES];
        for name in [
            "traffic.speeding",
            "RED-LIGHT",
            "redLight",
            "a b_c9",
            "",
            "...",
        ] {
            assert_eq!(
                ascii_alias_key(name, &mut buffer).map(str::to_string),
                Some(alias_key(name))
            );
        }
        assert_eq!(ascii_alias_key("Превышение", &mut buffer), None);
        assert_eq!(ascii_alias_key(&"x".repeat(65), &mut buffer), None);
    }
}
