//! Regions of Kazakhstan (ISO 3166-2:KZ): numeric codes stored, old letter codes
//! accepted on input.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::DataError;

/// The regions shipped in the repository (`data/regions.toml`).
const BUILTIN_REGIONS: &str = include_str!("../../../data/regions.toml");

/// Region value stored when neither the registry nor the payload gives one.
pub const UNKNOWN_REGION: &str = "unknown";

/// One region or city of republican significance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Numeric ISO 3166-2:KZ code, e.g. `KZ-75`.
    pub code: String,
    /// Letter code used before 2022, when there was one.
    #[serde(default)]
    pub old_code: Option<String>,
    /// English name.
    pub name: String,
    /// Russian name, when the file gives one.
    #[serde(default)]
    pub name_ru: Option<String>,
    /// Kazakh name, when the file gives one.
    #[serde(default)]
    pub name_kk: Option<String>,
    /// Administrative centre.
    pub centre: String,
    /// `region` or `city`.
    pub kind: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionsFile {
    #[allow(dead_code)]
    version: u32,
    regions: Vec<Region>,
}

/// The loaded region list with an index over every accepted spelling.
#[derive(Debug, Clone)]
pub struct Regions {
    regions: Vec<Region>,
    /// Upper-cased accepted code -> index into `regions`.
    index: HashMap<String, usize>,
}

impl Regions {
    /// The region list compiled into the binary.
    pub fn builtin() -> Result<Self, DataError> {
        Self::from_toml(BUILTIN_REGIONS)
    }

    /// Loads a region file.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parses and checks a region document.
    pub fn from_toml(text: &str) -> Result<Self, DataError> {
        let file: RegionsFile = toml::from_str(text).map_err(|source| DataError::Toml {
            what: "regions",
            source,
        })?;
        let mut index = HashMap::new();
        for (position, region) in file.regions.iter().enumerate() {
            let spellings = std::iter::once(region.code.as_str()).chain(region.old_code.as_deref());
            for code in spellings {
                if index.insert(code.to_ascii_uppercase(), position).is_some() {
                    return Err(DataError::Invalid {
                        what: "regions",
                        message: format!("code {code:?} appears twice"),
                    });
                }
            }
        }
        Ok(Self {
            regions: file.regions,
            index,
        })
    }

    /// Every region, in file order.
    pub fn all(&self) -> &[Region] {
        &self.regions
    }

    /// Resolves a code in any accepted spelling (`KZ-75`, `kz-75`, `KZ-ALA`,
    /// `75`) to its region.
    pub fn resolve(&self, code: &str) -> Option<&Region> {
        let trimmed = code.trim();
        if trimmed.len() > 16 {
            return None;
        }
        let upper = trimmed.to_ascii_uppercase();
        if let Some(&position) = self.index.get(&upper) {
            return Some(&self.regions[position]);
        }
        // A bare number is accepted as the numeric code.
        if !upper.is_empty() && upper.bytes().all(|b| b.is_ascii_digit()) {
            return self
                .index
                .get(&format!("KZ-{upper}"))
                .map(|&position| &self.regions[position]);
        }
        None
    }

    /// Display name of a stored code; `unknown` and unlisted codes map to themselves.
    pub fn name_of<'a>(&'a self, code: &'a str) -> &'a str {
        self.resolve(code)
            .map_or(code, |region| region.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_all_twenty_with_numeric_codes() {
        let regions = Regions::builtin().unwrap();
        assert_eq!(regions.all().len(), 20);
        assert_eq!(regions.all().iter().filter(|r| r.kind == "city").count(), 3);
        for region in regions.all() {
            let digits = region.code.strip_prefix("KZ-").unwrap();
            assert!(digits.parse::<u8>().is_ok(), "{}", region.code);
        }
    }

    #[test]
    fn old_and_new_spellings_resolve_to_the_numeric_code() {
        let regions = Regions::builtin().unwrap();
        for spelling in ["KZ-75", "kz-75", "KZ-ALA", "kz-ala", " KZ-ALA ", "75"] {
            assert_eq!(
                regions.resolve(spelling).map(|r| r.code.as_str()),
                Some("KZ-75"),
                "{spelling}"
            );
        }
        assert_eq!(regions.resolve("KZ-10").unwrap().name, "Abai Region");
        assert!(regions.resolve("KZ-99").is_none());
        assert!(regions.resolve("").is_none());
        assert!(regions.resolve("unknown").is_none());
        assert_eq!(regions.name_of("KZ-71"), "Astana");
        assert_eq!(regions.name_of("unknown"), "unknown");
    }

    #[test]
    fn a_duplicate_code_is_refused() {
        let text = "version = 1\n[[regions]]\ncode = \"KZ-1\"\nname = \"a\"\ncentre = \"a\"\nkind = \"region\"\n[[regions]]\ncode = \"kz-1\"\nname = \"b\"\ncentre = \"b\"\nkind = \"region\"\n";
        assert!(Regions::from_toml(text).is_err());
    }
}
