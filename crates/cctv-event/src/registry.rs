//! The camera registry: camera id (or a vendor device identity) -> region,
//! district and coordinates.
//!
//! The file is CSV with a header line:
//! `camera_id,region,district,lat,lon,identities`. `identities` is a
//! space-separated list of vendor device keys (for example
//! `hikvision:44:19:b6:0a:11:02/1`) that also name the camera; it may be empty.

use std::collections::HashMap;
use std::path::Path;

use crate::{DataError, Regions};

/// Longest camera id or identity accepted in the registry.
const MAX_KEY_LEN: usize = 256;

/// One registered camera.
#[derive(Debug, Clone, PartialEq)]
pub struct Camera {
    /// Stable camera id.
    pub camera_id: String,
    /// Numeric ISO 3166-2:KZ region code.
    pub region: String,
    /// District, empty when not recorded.
    pub district: String,
    /// Latitude, when recorded.
    pub lat: Option<f64>,
    /// Longitude, when recorded.
    pub lon: Option<f64>,
    /// Vendor device keys that also name this camera.
    pub identities: Vec<String>,
}

/// All registered cameras, indexed by id and by vendor identity.
#[derive(Debug, Clone, Default)]
pub struct CameraRegistry {
    cameras: Vec<Camera>,
    by_id: HashMap<String, usize>,
    by_identity: HashMap<String, usize>,
}

impl CameraRegistry {
    /// Builds a registry from cameras whose regions are already numeric codes.
    pub fn new(cameras: Vec<Camera>) -> Result<Self, DataError> {
        let mut registry = Self::default();
        for camera in cameras {
            registry.insert(camera)?;
        }
        Ok(registry)
    }

    /// Loads a registry CSV file, checking every region against `regions`.
    pub fn load(path: &Path, regions: &Regions) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_csv(&text, regions)
    }

    /// Parses registry CSV text; old letter region codes are stored as numeric.
    pub fn from_csv(text: &str, regions: &Regions) -> Result<Self, DataError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .comment(Some(b'#'))
            .from_reader(text.as_bytes());
        let mut registry = Self::default();
        for record in reader.records() {
            let record = record.map_err(|error| DataError::Csv {
                line: error.position().map_or(0, |p| p.line()),
                message: error.to_string(),
            })?;
            let line = record.position().map_or(0, |p| p.line());
            let field = |i: usize| record.get(i).unwrap_or("").to_string();
            let bad = |message: String| DataError::Csv { line, message };
            let region_text = field(1);
            let region = regions
                .resolve(&region_text)
                .ok_or_else(|| bad(format!("unknown region {region_text:?}")))?;
            let coordinate = |i: usize| -> Result<Option<f64>, DataError> {
                let text = field(i);
                if text.is_empty() {
                    return Ok(None);
                }
                text.parse::<f64>()
                    .ok()
                    .filter(|value| value.is_finite())
                    .map(Some)
                    .ok_or_else(|| bad(format!("invalid coordinate {text:?}")))
            };
            let camera = Camera {
                camera_id: field(0),
                region: region.code.clone(),
                district: field(2),
                lat: coordinate(3)?,
                lon: coordinate(4)?,
                identities: field(5).split_whitespace().map(str::to_string).collect(),
            };
            registry
                .insert(camera)
                .map_err(|error| bad(error.to_string()))?;
        }
        Ok(registry)
    }

    fn insert(&mut self, camera: Camera) -> Result<(), DataError> {
        let invalid = |message: String| DataError::Invalid {
            what: "camera registry",
            message,
        };
        if camera.camera_id.is_empty() || camera.camera_id.len() > MAX_KEY_LEN {
            return Err(invalid(format!("bad camera id {:?}", camera.camera_id)));
        }
        let position = self.cameras.len();
        if self
            .by_id
            .insert(camera.camera_id.clone(), position)
            .is_some()
        {
            return Err(invalid(format!(
                "camera {:?} listed twice",
                camera.camera_id
            )));
        }
        for identity in &camera.identities {
            if identity.len() > MAX_KEY_LEN {
                return Err(invalid(format!(
                    "identity too long for {:?}",
                    camera.camera_id
                )));
            }
            if self
                .by_identity
                .insert(identity.clone(), position)
                .is_some()
            {
                return Err(invalid(format!("identity {identity:?} names two cameras")));
            }
        }
        self.cameras.push(camera);
        Ok(())
    }

    /// The camera with this id.
    pub fn get(&self, camera_id: &str) -> Option<&Camera> {
        self.by_id
            .get(camera_id)
            .map(|&position| &self.cameras[position])
    }

    /// The camera a vendor device key names.
    pub fn by_identity(&self, identity: &str) -> Option<&Camera> {
        self.by_identity
            .get(identity)
            .map(|&position| &self.cameras[position])
    }

    /// Every camera, in load order.
    pub fn cameras(&self) -> &[Camera] {
        &self.cameras
    }

    /// Number of cameras.
    pub fn len(&self) -> usize {
        self.cameras.len()
    }

    /// True when no camera is registered.
    pub fn is_empty(&self) -> bool {
        self.cameras.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "camera_id,region,district,lat,lon,identities
# a comment line
AST-0412,KZ-AST,Esil,51.128,71.430,hikvision:44:19:b6:0a:11:02/1
ALA-0007,KZ-75,,,,
";

    #[test]
    fn loads_cameras_and_stores_numeric_regions() {
        let regions = Regions::builtin().unwrap();
        let registry = CameraRegistry::from_csv(SAMPLE, &regions).unwrap();
        assert_eq!(registry.len(), 2);
        let camera = registry.get("AST-0412").unwrap();
        assert_eq!(camera.region, "KZ-71");
        assert_eq!(camera.district, "Esil");
        assert_eq!(camera.lat, Some(51.128));
        assert_eq!(
            registry
                .by_identity("hikvision:44:19:b6:0a:11:02/1")
                .unwrap()
                .camera_id,
            "AST-0412"
        );
        assert_eq!(registry.get("ALA-0007").unwrap().lat, None);
        assert!(registry.get("nope").is_none());
    }

    #[test]
    fn bad_rows_are_refused_with_their_line() {
        let regions = Regions::builtin().unwrap();
        let unknown_region = "camera_id,region,district,lat,lon,identities\nX,KZ-99,,,,\n";
        let error = CameraRegistry::from_csv(unknown_region, &regions)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 2") && error.contains("KZ-99"),
            "{error}"
        );
        let twice = "camera_id,region,district,lat,lon,identities\nX,KZ-75,,,,\nX,KZ-71,,,,\n";
        assert!(CameraRegistry::from_csv(twice, &regions).is_err());
        let bad_lat = "camera_id,region,district,lat,lon,identities\nX,KZ-75,,north,,\n";
        assert!(CameraRegistry::from_csv(bad_lat, &regions).is_err());
    }
}
