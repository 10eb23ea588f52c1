//! The map of the report: Kazakhstan's 20 regions as SVG paths, projected
//! from `data/kz-regions.geojson` (approximate areas, see `data/README.md`)
//! compiled into the binary.
//!
//! Projection: equirectangular with longitudes scaled by cos 48 degrees (the
//! country's middle latitude), so shapes are not stretched east-west; north
//! up. Plenty for a choropleth of 20 areas.

use serde::Deserialize;

/// The region areas shipped in the repository.
const REGION_SHAPES: &str = include_str!("../../../data/kz-regions.geojson");
/// Cosine of the latitude the longitudes are scaled at.
const LATITUDE_OF_SCALE_DEGREES: f64 = 48.0;
/// Margin around the map, in SVG units.
const MARGIN: f64 = 4.0;

/// One region's outline, projected.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionPath {
    /// ISO 3166-2:KZ code.
    pub code: String,
    /// SVG path data (`M x,y L ... Z` per ring; holes drawn even-odd).
    pub path: String,
    /// Where a label of the region goes: the centroid of its largest ring.
    pub label_at: (f64, f64),
}

/// The projected map: paths in a `0 0 width height` view box.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionMap {
    /// View box width.
    pub width: f64,
    /// View box height.
    pub height: f64,
    /// Every region in file order.
    pub regions: Vec<RegionPath>,
}

#[derive(Deserialize)]
struct FeatureCollection {
    features: Vec<Feature>,
}

#[derive(Deserialize)]
struct Feature {
    properties: Properties,
    geometry: Geometry,
}

#[derive(Deserialize)]
struct Properties {
    code: String,
}

/// A polygon: its outer ring, then its holes; points are `[lon, lat]`.
type Polygon = Vec<Vec<[f64; 2]>>;

#[derive(Deserialize)]
#[serde(tag = "type", content = "coordinates")]
enum Geometry {
    Polygon(Polygon),
    MultiPolygon(Vec<Polygon>),
}

impl Geometry {
    fn polygons(self) -> Vec<Polygon> {
        match self {
            Geometry::Polygon(rings) => vec![rings],
            Geometry::MultiPolygon(polygons) => polygons,
        }
    }
}

/// Signed area and centroid of a closed ring (shoelace).
fn ring_centroid(ring: &[(f64, f64)]) -> (f64, (f64, f64)) {
    let mut area = 0.0;
    let (mut cx, mut cy) = (0.0, 0.0);
    for (a, b) in ring.iter().zip(ring.iter().cycle().skip(1)) {
        let cross = a.0 * b.1 - b.0 * a.1;
        area += cross;
        cx += (a.0 + b.0) * cross;
        cy += (a.1 + b.1) * cross;
    }
    area /= 2.0;
    if area.abs() < f64::EPSILON {
        return (0.0, ring.first().copied().unwrap_or((0.0, 0.0)));
    }
    (area.abs(), (cx / (6.0 * area), cy / (6.0 * area)))
}

/// Projects the shapes of `geojson` into a view box `width` units wide.
pub fn project(geojson: &str, width: f64) -> Result<RegionMap, serde_json::Error> {
    let collection: FeatureCollection = serde_json::from_str(geojson)?;
    let features: Vec<(String, Vec<Polygon>)> = collection
        .features
        .into_iter()
        .map(|feature| (feature.properties.code, feature.geometry.polygons()))
        .collect();
    let x_scale = LATITUDE_OF_SCALE_DEGREES.to_radians().cos();
    let points = || {
        features
            .iter()
            .flat_map(|(_, polygons)| polygons.iter().flatten().flatten())
    };
    let min_lon = points().map(|p| p[0]).fold(f64::INFINITY, f64::min);
    let max_lon = points().map(|p| p[0]).fold(f64::NEG_INFINITY, f64::max);
    let min_lat = points().map(|p| p[1]).fold(f64::INFINITY, f64::min);
    let max_lat = points().map(|p| p[1]).fold(f64::NEG_INFINITY, f64::max);
    let span = ((max_lon - min_lon) * x_scale).max(f64::EPSILON);
    let scale = (width - 2.0 * MARGIN) / span;
    let height = (max_lat - min_lat) * scale + 2.0 * MARGIN;
    let to_svg = |point: &[f64; 2]| {
        (
            MARGIN + (point[0] - min_lon) * x_scale * scale,
            MARGIN + (max_lat - point[1]) * scale,
        )
    };
    let regions = features
        .iter()
        .map(|(code, polygons)| {
            let mut path = String::new();
            let mut largest = (0.0, (0.0, 0.0));
            for ring in polygons.iter().flatten() {
                let projected: Vec<(f64, f64)> = ring.iter().map(to_svg).collect();
                for (index, (x, y)) in projected.iter().enumerate() {
                    let command = if index == 0 { 'M' } else { 'L' };
                    path.push_str(&format!("{command}{x:.1},{y:.1}"));
                }
                path.push('Z');
                let (area, centroid) = ring_centroid(&projected);
                if area > largest.0 {
                    largest = (area, centroid);
                }
            }
            RegionPath {
                code: code.clone(),
                path,
                label_at: largest.1,
            }
        })
        .collect();
    Ok(RegionMap {
        width,
        height,
        regions,
    })
}

/// The shipped region shapes, projected `width` units wide.
pub fn region_map(width: f64) -> Result<RegionMap, serde_json::Error> {
    project(REGION_SHAPES, width)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_shapes_are_the_twenty_regions() {
        let map = region_map(800.0).unwrap();
        let regions = cctv_event::Regions::builtin().unwrap();
        let mut codes: Vec<&str> = map.regions.iter().map(|r| r.code.as_str()).collect();
        codes.sort_unstable();
        let mut known: Vec<&str> = regions.all().iter().map(|r| r.code.as_str()).collect();
        known.sort_unstable();
        assert_eq!(codes, known);
        // Wider than high, as the country is.
        assert!(map.height > 300.0 && map.height < 600.0, "{}", map.height);
        for region in &map.regions {
            assert!(region.path.starts_with('M') && region.path.ends_with('Z'));
            let (x, y) = region.label_at;
            assert!((0.0..=800.0).contains(&x) && (0.0..=map.height).contains(&y));
        }
        // Almaty (the city) lies south-east of Astana, both inside the box.
        let at = |code: &str| {
            map.regions
                .iter()
                .find(|r| r.code == code)
                .unwrap()
                .label_at
        };
        assert!(at("KZ-75").0 > at("KZ-71").0 && at("KZ-75").1 > at("KZ-71").1);
        // West Kazakhstan is at the left edge.
        assert!(at("KZ-27").0 < 100.0);
    }

    #[test]
    fn a_square_projects_to_a_square_path() {
        let geojson = r#"{"type":"FeatureCollection","features":[{"type":"Feature",
            "properties":{"code":"KZ-75"},"geometry":{"type":"Polygon",
            "coordinates":[[[70,50],[71,50],[71,51],[70,51],[70,50]]]}}]}"#;
        let map = project(geojson, 108.0).unwrap();
        let region = &map.regions[0];
        let scale = 100.0 / LATITUDE_OF_SCALE_DEGREES.to_radians().cos();
        assert!((map.height - (scale + 8.0)).abs() < 0.01, "{}", map.height);
        assert!(region.path.starts_with("M4.0,"), "{}", region.path);
        assert!(
            (region.label_at.0 - 54.0).abs() < 0.01,
            "{:?}",
            region.label_at
        );
    }
}
