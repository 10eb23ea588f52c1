//! Display names of regions and offence types in English, Russian or Kazakh
//! (`--lang`), from the data files (`name`, `name_ru`, `name_kk` of
//! `data/regions.toml` and `data/taxonomy.toml`), and the labels of every
//! dimension's keys.

use cctv_event::{Regions, Taxonomy};
use cctv_store::Dimension;

/// Language of region and offence names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Lang {
    /// English.
    #[default]
    En,
    /// Russian.
    Ru,
    /// Kazakh.
    Kk,
}

impl Lang {
    /// The name in this language, English when there is no translation.
    fn pick<'a>(
        self,
        english: &'a str,
        russian: &'a Option<String>,
        kazakh: &'a Option<String>,
    ) -> &'a str {
        let translated = match self {
            Lang::En => None,
            Lang::Ru => russian.as_deref(),
            Lang::Kk => kazakh.as_deref(),
        };
        translated.unwrap_or(english)
    }
}

/// Region and offence names in one language.
#[derive(Debug, Clone)]
pub struct Names {
    regions: Regions,
    taxonomy: Taxonomy,
    lang: Lang,
}

impl Names {
    /// Names from the given data in `lang`.
    pub fn new(regions: Regions, taxonomy: Taxonomy, lang: Lang) -> Self {
        Self {
            regions,
            taxonomy,
            lang,
        }
    }

    /// Names from the data built into the binary.
    pub fn builtin(lang: Lang) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let regions = Regions::builtin().context("failed to load the builtin regions")?;
        let taxonomy = Taxonomy::builtin().context("failed to load the builtin taxonomy")?;
        Ok(Self::new(regions, taxonomy, lang))
    }

    /// The regions behind the names.
    pub fn regions(&self) -> &Regions {
        &self.regions
    }

    /// The taxonomy behind the names.
    pub fn taxonomy(&self) -> &Taxonomy {
        &self.taxonomy
    }

    /// The region's name in the language (English when the file has no
    /// translation); `unknown` and unlisted codes are their own name.
    pub fn region<'a>(&'a self, code: &'a str) -> &'a str {
        self.regions.resolve(code).map_or(code, |region| {
            self.lang
                .pick(&region.name, &region.name_ru, &region.name_kk)
        })
    }

    /// The offence type's name in the language (English, then the code,
    /// when the file has none).
    pub fn offence<'a>(&'a self, code: &'a str) -> &'a str {
        self.taxonomy.by_code(code).map_or(code, |offence| {
            self.lang
                .pick(&offence.name, &offence.name_ru, &offence.name_kk)
        })
    }

    /// The display name of a key of `dimension`, when it has one other than
    /// the key itself (regions and offence types).
    pub fn name_of<'a>(&'a self, dimension: Dimension, key: &'a str) -> Option<&'a str> {
        match dimension {
            Dimension::Region => Some(self.region(key)),
            Dimension::OffenceType => Some(self.offence(key)),
            _ => None,
        }
    }

    /// The label of a key in a table: `KZ-75 Almaty` for a region, the
    /// offence's name for a type, the key itself otherwise.
    pub fn label(&self, dimension: Dimension, key: &str) -> String {
        match dimension {
            Dimension::Region => {
                let name = self.region(key);
                if name == key {
                    return key.to_string();
                }
                format!("{key} {name}")
            }
            Dimension::OffenceType => self.offence(key).to_string(),
            _ => key.to_string(),
        }
    }

    /// Sort position of a region code: file order, then unlisted codes,
    /// then `unknown`.
    pub fn region_rank(&self, code: &str) -> usize {
        if code == cctv_event::UNKNOWN_REGION {
            return usize::MAX;
        }
        self.regions
            .all()
            .iter()
            .position(|region| region.code == code)
            .unwrap_or(usize::MAX - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_and_offence_has_russian_and_kazakh_names() {
        let names = Names::builtin(Lang::En).unwrap();
        for region in names.regions().all() {
            for name in [&region.name_ru, &region.name_kk] {
                let name = name.as_deref().unwrap_or_default();
                assert!(
                    name.chars().any(|c| ('А'..='я').contains(&c)),
                    "{}: {name:?}",
                    region.code
                );
            }
        }
        for offence in names.taxonomy().offences() {
            assert_ne!(offence.name, offence.code);
            for name in [&offence.name_ru, &offence.name_kk] {
                let name = name.as_deref().unwrap_or_default();
                assert!(
                    name.chars().any(|c| ('А'..='я').contains(&c)),
                    "{}: {name:?}",
                    offence.code
                );
            }
        }
    }

    #[test]
    fn names_follow_the_language_and_fall_back() {
        let en = Names::builtin(Lang::En).unwrap();
        let ru = Names::builtin(Lang::Ru).unwrap();
        let kk = Names::builtin(Lang::Kk).unwrap();
        assert_eq!(en.region("KZ-35"), "Karaganda Region");
        assert_eq!(ru.region("KZ-35"), "Карагандинская область");
        assert_eq!(kk.region("KZ-35"), "Қарағанды облысы");
        assert_eq!(ru.region("KZ-KAR"), "Карагандинская область");
        assert_eq!(en.offence("traffic.speeding"), "Speeding");
        assert_eq!(ru.offence("traffic.speeding"), "Превышение скорости");
        assert_eq!(kk.offence("traffic.speeding"), "Жылдамдықты асыру");
        assert_eq!(kk.region("unknown"), "unknown");
        assert_eq!(ru.offence("traffic.unlisted"), "traffic.unlisted");
        assert_eq!(en.label(Dimension::Region, "KZ-75"), "KZ-75 Almaty");
        assert_eq!(en.label(Dimension::Gateway, "gw1"), "gw1");

        // A file without translations falls back to English.
        let regions = Regions::from_toml(
            "version = 1\n[[regions]]\ncode = \"KZ-75\"\nname = \"Almaty\"\ncentre = \"Almaty\"\nkind = \"city\"\n",
        )
        .unwrap();
        let taxonomy = Taxonomy::from_toml(
            "version = 1\n[[offences]]\ncode = \"traffic.speeding\"\nmeaning = \"m\"\ncategory = \"administrative\"\n",
        )
        .unwrap();
        let bare = Names::new(regions, taxonomy, Lang::Kk);
        assert_eq!(bare.region("KZ-75"), "Almaty");
        assert_eq!(bare.offence("traffic.speeding"), "traffic.speeding");
    }
}
