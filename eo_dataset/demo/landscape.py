"""The generative structure of the scaled demo world: one seeded landscape per Major TOM cell.

Everything is a function of lon/lat (so every product, in any CRS, sees the same landscape) and of per-cell
parameters drawn from the world's seed and the cell's index:

terrain (random plane waves; its slope and aspect) -> land cover (thresholds on terrain plus noise fields, a climate
set by latitude) -> spectra (class spectra jittered per cell, vegetation mixed with soil by seasonal phenology,
illumination from slope/aspect and the sun) -> clouds per date; SAR backscatter (class, local incidence from slope,
speckle); canopy height (trees only, lower up the slopes).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

WATER, TREES, CROPS, BUILT, BARE, RANGELAND = 1, 2, 5, 7, 8, 11
KM_PER_DEG_LAT = 110.57


@dataclass(frozen=True)
class Waves:
    """A smooth random field: a sum of plane waves over local km coordinates (std ~ ``scale``)."""

    kx: np.ndarray
    ky: np.ndarray
    phase: np.ndarray
    amp: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, wavelength_km: tuple[float, float], scale: float = 1.0,
             slope: float = 1.0) -> Waves:
        """``n`` waves with wavelengths log-uniform in ``wavelength_km``, amplitude ~ wavelength ** ``slope``."""
        lam = np.exp(rng.uniform(math.log(wavelength_km[0]), math.log(wavelength_km[1]), n))
        theta = rng.uniform(0, 2 * math.pi, n)
        k = 2 * math.pi / lam
        amp = lam ** slope
        amp = amp / math.sqrt(float((amp ** 2).sum()) / 2) * scale
        return cls(k * np.cos(theta), k * np.sin(theta), rng.uniform(0, 2 * math.pi, n), amp)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.zeros(np.shape(x), np.float64)
        for kx, ky, ph, a in zip(self.kx, self.ky, self.phase, self.amp, strict=True):
            out += a * np.sin(kx * x + ky * y + ph)
        return out

    def with_grad(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The field and its d/dx, d/dy (per km)."""
        v = np.zeros(np.shape(x), np.float64)
        gx = np.zeros(np.shape(x), np.float64)
        gy = np.zeros(np.shape(x), np.float64)
        for kx, ky, ph, a in zip(self.kx, self.ky, self.phase, self.amp, strict=True):
            arg = kx * x + ky * y + ph
            v += a * np.sin(arg)
            c = a * np.cos(arg)
            gx += kx * c
            gy += ky * c
        return v, gx, gy


def _hash01(i: np.ndarray, j: np.ndarray, salt: float) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer lattice point."""
    v = np.sin(i * 12.9898 + j * 78.233 + salt * 37.719) * 43758.5453
    return v - np.floor(v)


@dataclass(frozen=True)
class Climate:
    """How latitude shifts a cell's class mix and phenology."""

    name: str
    forest: float  # forest threshold (lower: more forest)
    crops: float  # share of flat parcels that are crops
    bare: float  # terrain level above which ground is bare
    water: float  # terrain level below which there are lakes
    greenness: float  # peak vegetation greenness 0..1
    towns: tuple[int, int]  # min, max number of towns


CLIMATES = (
    Climate("arid", forest=1.3, crops=0.25, bare=0.35, water=-1.25, greenness=0.45, towns=(0, 2)),
    Climate("mediterranean", forest=0.7, crops=0.45, bare=0.7, water=-1.05, greenness=0.65, towns=(1, 3)),
    Climate("temperate", forest=0.35, crops=0.6, bare=1.0, water=-0.9, greenness=0.9, towns=(1, 4)),
    Climate("boreal", forest=-0.1, crops=0.25, bare=1.05, water=-0.7, greenness=0.85, towns=(0, 2)),
)


def climate_of(lat: float) -> Climate:
    """The climate of a latitude (a caricature: dry at low latitudes, forest at high ones)."""
    a = abs(lat)
    return CLIMATES[0 if a < 33 else 1 if a < 42 else 2 if a < 55 else 3]


def greenness(date: dt.date, lat: float, peak: float) -> float:
    """Seasonal vegetation greenness 0..1 on ``date`` (peaks in July north, January south)."""
    doy = date.timetuple().tm_yday
    peak_doy = 200 if lat >= 0 else 17
    return float(peak * (0.55 + 0.45 * math.cos(2 * math.pi * (doy - peak_doy) / 365.25)))


def sun_position(date: dt.date, lat: float) -> tuple[float, float]:
    """(azimuth, elevation) in degrees at about 10:30 local solar time."""
    doy = date.timetuple().tm_yday
    decl = 23.44 * math.sin(2 * math.pi * (doy - 81) / 365.25)
    elev = max(15.0, 90 - abs(lat - decl) - 12)
    azim = 145.0 if lat > decl else 35.0
    return azim, elev


@dataclass(frozen=True)
class Fields:
    """A landscape's fields evaluated once on a set of points (local km, terrain, slope, noise)."""

    x: np.ndarray
    y: np.ndarray
    t: np.ndarray  # normalised terrain (std ~0.5)
    gx: np.ndarray  # dz/dx (m per m)
    gy: np.ndarray  # dz/dy (m per m)
    forest: np.ndarray  # forest noise
    fine: np.ndarray  # fine texture


@dataclass(frozen=True)
class Landscape:
    """One cell's landscape: a pure function of lon/lat and the parameters drawn for the cell."""

    lon0: float
    lat0: float
    climate: Climate
    base_m: float
    relief_m: float
    terrain: Waves
    forest_noise: Waves
    fine: Waves
    water_level: float
    bare_level: float
    forest_level: float
    crop_share: float
    parcel_m: float
    parcel_angle: float
    towns: tuple[tuple[float, float, float], ...]  # (x km, y km, radius km)
    spectra_gain: dict[int, np.ndarray]  # per class, per S2 band multiplicative jitter
    salt: float

    @classmethod
    def draw(cls, rng: np.random.Generator, lon0: float, lat0: float) -> Landscape:
        """Draw a cell's landscape around (lon0, lat0) (the cell centre)."""
        clim = climate_of(lat0)
        ntown = int(rng.integers(clim.towns[0], clim.towns[1] + 1))
        towns = tuple((float(rng.uniform(-4, 4)), float(rng.uniform(-4, 4)), float(rng.uniform(0.5, 1.4)))
                      for _ in range(ntown))
        gains = {c: np.exp(rng.normal(0, 0.08) + rng.normal(0, 0.04, 12)) for c in (1, 2, 5, 7, 8, 11)}
        return cls(lon0=lon0, lat0=lat0, climate=clim, base_m=float(rng.uniform(50, 1400)),
                   relief_m=float(np.exp(rng.uniform(math.log(40), math.log(700)))),
                   terrain=Waves.draw(rng, 14, (1.2, 14.0), 0.5, slope=1.2),
                   forest_noise=Waves.draw(rng, 10, (0.6, 5.0), 0.5, slope=0.5),
                   fine=Waves.draw(rng, 8, (0.08, 0.5), 1.0, slope=0.0),
                   water_level=clim.water + float(rng.normal(0, 0.12)),
                   bare_level=clim.bare + float(rng.normal(0, 0.12)),
                   forest_level=clim.forest + float(rng.normal(0, 0.15)),
                   crop_share=float(np.clip(clim.crops + rng.normal(0, 0.1), 0.05, 0.9)),
                   parcel_m=float(rng.uniform(180, 450)), parcel_angle=float(rng.uniform(0, math.pi / 2)),
                   towns=towns, spectra_gain=gains, salt=float(rng.uniform(0, 1000)))

    # -- coordinates and terrain -------------------------------------------------------------------------------
    def xy(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local km east/north of the cell centre."""
        return ((lon - self.lon0) * KM_PER_DEG_LAT * 1.0072 * math.cos(math.radians(self.lat0)),
                (lat - self.lat0) * KM_PER_DEG_LAT)

    def fields(self, lon: np.ndarray, lat: np.ndarray) -> Fields:
        """Evaluate every field on these points (once; the products below take the result)."""
        x, y = self.xy(lon, lat)
        t, gx, gy = self.terrain.with_grad(x, y)
        k = self.relief_m / 1000
        return Fields(x, y, t, gx * k, gy * k, self.forest_noise(x, y), self.fine(x, y))

    def elevation(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Terrain height (m)."""
        return self.base_m + self.relief_m * self.terrain(*self.xy(lon, lat))

    def land_cover(self, fd: Fields) -> np.ndarray:
        """Land-cover class ids (Impact Observatory scheme) from terrain, slope, noise, parcels and towns."""
        x, y, t, f, fine = fd.x, fd.y, fd.t, fd.forest, fd.fine
        slope = np.hypot(fd.gx, fd.gy)
        cls = np.full(np.shape(x), RANGELAND, np.uint8)
        c, s = math.cos(self.parcel_angle), math.sin(self.parcel_angle)
        pm = self.parcel_m / 1000
        pi, pj = np.floor((c * x + s * y) / pm), np.floor((-s * x + c * y) / (pm * 0.6))
        crops = (_hash01(pi, pj, self.salt) < self.crop_share) & (slope < 0.12) & (t < 0.6)
        cls[crops] = CROPS
        forest = f + 0.5 * t + 2.0 * slope + 0.08 * fine > self.forest_level
        cls[forest] = TREES
        cls[(t + 0.1 * f > self.bare_level) | (slope > 0.9)] = BARE
        town = np.zeros(np.shape(x), bool)
        for tx, ty, r in self.towns:
            town |= np.hypot(x - tx, y - ty) / r + 0.25 * f + 0.05 * fine < 1
        cls[town & (slope < 0.35)] = BUILT
        cls[t + 0.05 * fine < self.water_level] = WATER
        return cls

    def canopy(self, fd: Fields, cls: np.ndarray) -> np.ndarray:
        """Canopy height (m): trees only, lower up the slopes and in dry climates."""
        h = 8 + 22 * self.climate.greenness * (0.8 - 0.4 * fd.t) + 3 * fd.fine + 4 * fd.forest
        return np.where(cls == TREES, np.clip(h, 2, 45), 0.0)

    # -- optical and SAR ----------------------------------------------------------------------------------------
    def illumination(self, fd: Fields, date: dt.date) -> np.ndarray:
        """Cosine of the local solar incidence over that of flat ground (terrain shading)."""
        azim, elev = sun_position(date, self.lat0)
        gx, gy = fd.gx, fd.gy
        a, e = math.radians(azim), math.radians(elev)
        sx, sy, sz = math.sin(a) * math.cos(e), math.cos(a) * math.cos(e), math.sin(e)
        cos_i = (-gx * sx - gy * sy + sz) / np.sqrt(gx * gx + gy * gy + 1)
        return np.clip(cos_i / sz, 0.15, 2.0)

    def local_incidence(self, fd: Fields, look_deg: float = 37.0) -> np.ndarray:
        """SAR terrain factor: cos(local incidence) / cos(reference incidence), looking west (descending pass)."""
        gx, gy = fd.gx, fd.gy
        th = math.radians(look_deg)
        lx, lz = math.sin(th), math.cos(th)  # unit vector from ground towards a sensor in the east
        cos_l = (-gx * lx + lz) / np.sqrt(gx * gx + gy * gy + 1)
        return np.clip(cos_l / lz, 0.05, 3.0)

    def vegetation(self, date: dt.date) -> dict[int, float]:
        """Fraction of green vegetation (vs soil) per class on ``date``."""
        g = greenness(date, self.lat0, self.climate.greenness)
        return {TREES: 0.55 + 0.45 * g, CROPS: 0.1 + 0.9 * g, RANGELAND: 0.2 + 0.7 * g}

    def cloud_field(self, rng: np.random.Generator) -> Waves:
        """A smooth random field for one date's clouds."""
        return Waves.draw(rng, 12, (0.8, 9.0), 1.0, slope=1.0)
