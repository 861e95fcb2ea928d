"""MNI152 + AFIDs benchmark: seeded random deformations of one real T1 template with 32 fiducials.

Every case is the MNI152 2009a template (``../shared/data/mni152-afids``, or the nilearn and afids-utils
wheels) under one random spatial transform, a random affine (rotation, per-axis scale, translation) plus
a smooth elastic displacement, followed by intensity changes (bias field, gamma, contrast, noise). The
spatial transform is one backward mapping ``phi``: output world mm -> template world mm. The image is
resampled through ``phi`` on the output grid, and each fiducial f moves to the point w with
``phi(w) = f``, found by fixed-point iteration on the same, trilinearly interpolated, displacement field,
so the fiducials follow the anatomy exactly.

Output: ``images/<case>.nii.gz``, ``landmarks/<case>.mrk.json`` (Slicer markups, LPS as Slicer 5 writes
them) and ``manifest.json`` for :class:`~landmark_lit.data.manifest.ManifestCases` (splits train, val,
test)::

    python -m landmark_lit.data.mni_afids outputs/mni_afids --train 40 --val 5 --test 10 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial.transform import Rotation

from landmark_lit.data.io import save_nifti
from landmark_lit.data.manifest import write_manifest
from landmark_lit.data.point_files import read_fcsv, world_to_points, write_slicer_markups
from landmark_lit.data.transforms import spacing_of, voxel_to_world, world_to_voxel

log = logging.getLogger(__name__)

TEMPLATE_FILE = "mni152_t1_1mm.nii.gz"
FIDUCIALS_FILE = "afids_mni.fcsv"
# the same two files inside the PyPI wheels: (package, path inside the package)
WHEEL_FILES = {
    TEMPLATE_FILE: ("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
    FIDUCIALS_FILE: ("afids_utils", "resources/template.fcsv"),
}
SPLITS = ("train", "val", "test")


@dataclass
class Template:
    """The template volume and its fiducials.

    Attributes:
        image: float32 (X, Y, Z) intensities.
        affine: (4, 4) voxel -> world mm RAS.
        names: K fiducial names (the fcsv ``desc`` column: "AC", "PC", ...).
        fiducials: (K, 3) world mm RAS.
    """

    image: np.ndarray
    affine: np.ndarray
    names: list[str]
    fiducials: np.ndarray


@dataclass
class DeformationSettings:
    """Ranges of the random deformations (spatial in mm and degrees, intensity relative to [0, 1]).

    Attributes:
        max_rotation_deg: rotation angle about a random axis, uniform in [0, max].
        scale_range: per-axis scale factors, uniform in this range.
        max_translation_mm: per-axis translation, uniform in [-max, max].
        elastic_mm: standard deviation of each elastic displacement component at the control points.
        elastic_spacing_mm: control point spacing of the elastic field (its smoothness).
        bias: standard deviation of the log bias field at its control points.
        bias_spacing_mm: control point spacing of the bias field.
        gamma_range: intensity gamma, uniform in this range.
        contrast_range: intensity scale factor, uniform in this range.
        noise_std: standard deviation of the additive Gaussian noise.
    """

    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_translation_mm: float = 5.0
    elastic_mm: float = 2.0
    elastic_spacing_mm: float = 30.0
    bias: float = 0.15
    bias_spacing_mm: float = 60.0
    gamma_range: tuple[float, float] = (0.7, 1.5)
    contrast_range: tuple[float, float] = (0.8, 1.2)
    noise_std: float = 0.02


# -- the template --------------------------------------------------------------------------------------


def default_source_dir() -> Path:
    """``$LANDMARK_LIT_DATA/mni152-afids``, else ``../shared/data/mni152-afids`` beside the checkout."""
    if os.environ.get("LANDMARK_LIT_DATA"):
        return Path(os.environ["LANDMARK_LIT_DATA"]) / "mni152-afids"
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "mni152-afids"


def _package_root(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (None if it is not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def template_files(
    source_dir: str | os.PathLike | None = None, from_wheels: bool = False
) -> tuple[Path, Path]:
    """Paths of the template volume and the fiducial file.

    Args:
        source_dir: folder holding ``mni152_t1_1mm.nii.gz`` and ``afids_mni.fcsv`` (default:
            :func:`default_source_dir`).
        from_wheels: take them from the installed nilearn and afids-utils packages instead.

    Raises:
        FileNotFoundError: one line saying what is missing and how to get it.
    """
    if not from_wheels:
        folder = Path(source_dir) if source_dir is not None else default_source_dir()
        paths = (folder / TEMPLATE_FILE, folder / FIDUCIALS_FILE)
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder}: missing {missing}; pass --source-dir, or --from-wheels after "
                "`pip install nilearn afids-utils`"
            )
        return paths
    found = []
    for name in (TEMPLATE_FILE, FIDUCIALS_FILE):
        package, inner = WHEEL_FILES[name]
        root = _package_root(package)
        if root is None:
            raise FileNotFoundError(
                f"package {package!r} is not installed; `pip install nilearn afids-utils` provides the MNI152 "
                "template and the AFIDs fiducials"
            )
        if not (root / inner).is_file():
            raise FileNotFoundError(f"{root / inner}: not found in the installed {package!r} package")
        found.append(root / inner)
    return found[0], found[1]


def load_template(source_dir: str | os.PathLike | None = None, from_wheels: bool = False) -> Template:
    """Read the template volume (nibabel) and its fiducials (fcsv ``desc`` names, world RAS)."""
    image_path, fcsv_path = template_files(source_dir, from_wheels)
    img = nib.load(image_path)
    image = np.asarray(img.dataobj, dtype=np.float32)
    names, fiducials = read_fcsv(fcsv_path, name_column="desc")
    return Template(image, np.asarray(img.affine, dtype=np.float64), names, fiducials)


# -- geometry ------------------------------------------------------------------------------------------


def output_grid(
    template: Template, spacing: float, margin_mm: float = 8.0, threshold: float = 0.01
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the output volumes: the template's orientation at ``spacing`` mm, cropped to
    the box of voxels above ``threshold`` times the maximum plus ``margin_mm``."""
    tpl_spacing = spacing_of(template.affine)
    inside = np.argwhere(template.image > threshold * float(template.image.max()))
    margin = margin_mm / tpl_spacing
    lo, hi = inside.min(0) - margin, inside.max(0) + margin
    step = spacing / tpl_spacing  # template voxels per output voxel
    shape = tuple(int(n) for n in np.ceil((hi - lo) / step) + 1)
    to_template = np.eye(4)
    to_template[:3, :3], to_template[:3, 3] = np.diag(step), lo
    return shape, template.affine @ to_template


def _smooth_field(
    rng: np.random.Generator, shape: Sequence[int], cells: Sequence[int], channels: int
) -> np.ndarray:
    """(channels, *shape) smooth random field: unit normal values on a coarse grid of ``cells`` control
    points per axis, cubic-spline interpolated to a quarter of the resolution, then trilinearly to
    ``shape`` (a full-resolution spline costs ten times more for no visible difference)."""
    coarse = rng.standard_normal((channels, *(max(2, int(c)) for c in cells)))
    middle = [max(2, -(-int(n) // 4)) for n in shape]
    zoom = [m / c for m, c in zip(middle, coarse.shape[1:], strict=True)]
    mid = np.stack([ndimage.zoom(c, zoom, order=3, mode="nearest", grid_mode=True) for c in coarse])
    full = F.interpolate(torch.from_numpy(mid)[None], size=tuple(int(n) for n in shape), mode="trilinear")
    return full[0].numpy().astype(np.float64)


@dataclass
class Deformation:
    """Backward spatial mapping phi: output world mm -> template world mm (RAS).

    ``phi(w) = linear @ (w - centre) + centre + translation + u(w)``, where u is the elastic displacement
    (mm), stored on the output grid and interpolated trilinearly between its voxels.

    Attributes:
        linear: (3, 3) rotation times per-axis scale.
        centre: (3,) world mm, the centre of rotation and scaling.
        translation: (3,) mm.
        field: float64 (3, X, Y, Z) displacement in mm at each output voxel.
        affine: (4, 4) output voxel -> world mm.
    """

    linear: np.ndarray
    centre: np.ndarray
    translation: np.ndarray
    field: np.ndarray
    affine: np.ndarray

    @classmethod
    def random(
        cls, rng: np.random.Generator, shape: Sequence[int], affine: np.ndarray, settings: DeformationSettings
    ) -> Deformation:
        """A random deformation over the output grid (``shape``, ``affine``)."""
        axis = rng.standard_normal(3)
        angle = np.radians(rng.uniform(0.0, settings.max_rotation_deg))
        rotation = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
        linear = rotation @ np.diag(rng.uniform(*settings.scale_range, size=3))
        centre = voxel_to_world((np.asarray(shape) - 1) / 2.0, affine)
        translation = rng.uniform(-settings.max_translation_mm, settings.max_translation_mm, size=3)
        extent = np.asarray(shape) * spacing_of(affine)
        cells = np.ceil(extent / settings.elastic_spacing_mm).astype(int) + 1
        field = settings.elastic_mm * _smooth_field(rng, shape, cells, 3)
        return cls(linear, centre, translation, field, np.asarray(affine, dtype=np.float64))

    def displacement(self, world: np.ndarray) -> np.ndarray:
        """u at (N, 3) world points: trilinear in the output grid, clamped to its border."""
        voxel = world_to_voxel(world, self.affine).T
        return np.stack([ndimage.map_coordinates(c, voxel, order=1, mode="nearest") for c in self.field], -1)

    def _affine_part(self, world: np.ndarray) -> np.ndarray:
        return (world - self.centre) @ self.linear.T + self.centre + self.translation

    def __call__(self, world: np.ndarray) -> np.ndarray:
        """phi at (N, 3) world mm -> (N, 3) template world mm."""
        world = np.asarray(world, dtype=np.float64)
        return self._affine_part(world) + self.displacement(world)

    def grid_to_voxels(self, target_affine: np.ndarray) -> np.ndarray:
        """phi at every output voxel centre, as voxel coordinates (3, X, Y, Z) of the image with
        ``target_affine`` (the template); on the grid, u is the field's own values."""
        shape = self.field.shape[1:]
        to_target = np.linalg.inv(np.asarray(target_affine, dtype=np.float64))
        # output voxel -> template voxel, without u: one affine matrix, applied axis by axis
        lin = np.eye(4)
        lin[:3, :3], lin[:3, 3] = self.linear, self.centre + self.translation - self.linear @ self.centre
        m = to_target @ lin @ self.affine
        axes = np.ogrid[tuple(slice(0, n) for n in shape)]
        out = np.empty((3, *shape))
        for r in range(3):
            out[r] = m[r, 3] + sum(m[r, a] * axes[a] for a in range(3))
            out[r] += np.tensordot(to_target[r, :3], self.field, axes=1)
        return out

    def inverse(self, points: np.ndarray, tol_mm: float = 1e-6, max_iter: int = 500) -> np.ndarray:
        """The output world points w with phi(w) = points, (K, 3) mm; NaN rows stay NaN.

        Fixed-point iteration w <- L^-1 (p - centre - translation - u(w)) + centre, a contraction while the
        elastic field changes slowly (its Lipschitz constant times |L^-1| below 1).

        Raises:
            RuntimeError: no convergence to ``tol_mm`` (a deformation too strong to invert).
        """
        points = np.asarray(points, dtype=np.float64)
        ok = ~np.isnan(points).any(axis=1)
        p = points[ok]
        inv = np.linalg.inv(self.linear)
        w = (p - self.centre - self.translation) @ inv.T + self.centre
        for _ in range(max_iter):
            w = (p - self.centre - self.translation - self.displacement(w)) @ inv.T + self.centre
            if np.abs(self(w) - p).max(initial=0.0) < tol_mm:
                break
        else:
            raise RuntimeError(f"fiducials did not converge to {tol_mm} mm after {max_iter} iterations")
        out = np.full_like(points, np.nan)
        out[ok] = w
        return out


# -- one case ------------------------------------------------------------------------------------------


def deform_case(
    template: Template,
    shape: Sequence[int],
    affine: np.ndarray,
    rng: np.random.Generator,
    settings: DeformationSettings | None = None,
    intensity: bool = True,
    smoothed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One deformed case on the output grid.

    Args:
        template: the template and its fiducials.
        shape, affine: the output grid (see :func:`output_grid`).
        rng: the case's random generator.
        settings: deformation ranges.
        intensity: apply the intensity changes (off: the resampled template only, for tests).
        smoothed: the template image pre-smoothed for the output spacing (default: ``template.image``).

    Returns:
        image: float32 (X, Y, Z), intensities about [0, 1].
        fiducials: (K, 3) world mm RAS of the moved fiducials.
    """
    settings = settings or DeformationSettings()
    source = template.image if smoothed is None else smoothed
    phi = Deformation.random(rng, shape, affine, settings)
    coords = phi.grid_to_voxels(template.affine)  # (3, X, Y, Z) template voxels
    image = ndimage.map_coordinates(source, coords, order=1, mode="constant", cval=0.0)
    image = image / max(float(template.image.max()), 1e-12)
    if intensity:
        extent = np.asarray(shape) * spacing_of(affine)
        cells = np.ceil(extent / settings.bias_spacing_mm).astype(int) + 1
        image = image * np.exp(settings.bias * _smooth_field(rng, shape, cells, 1)[0])
        image = np.clip(image, 0.0, None) ** rng.uniform(*settings.gamma_range)
        image = image * rng.uniform(*settings.contrast_range)
        image = image + settings.noise_std * rng.standard_normal(image.shape)
    return image.astype(np.float32), phi.inverse(template.fiducials)


def presmooth(template: Template, spacing: float) -> np.ndarray:
    """The template smoothed against aliasing for resampling to ``spacing`` mm (sigma (f - 1) / 2 voxels
    on axes down-sampled by f, as :func:`~landmark_lit.data.transforms.resample_to_spacing` does)."""
    factor = spacing / spacing_of(template.affine)
    sigma = np.maximum(0.0, (factor - 1.0) / 2.0)
    return ndimage.gaussian_filter(template.image, sigma) if np.any(sigma > 0) else template.image


def case_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of case ``index`` of ``split``: independent of how many cases the other splits have."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


# -- the benchmark -------------------------------------------------------------------------------------


def build_benchmark(
    out_dir: str | os.PathLike,
    counts: dict[str, int],
    seed: int = 0,
    spacing: float = 1.5,
    template: Template | None = None,
    settings: DeformationSettings | None = None,
    intensity: bool = True,
    source: str = "",
) -> Path:
    """Write deformed cases, their fiducials and ``manifest.json`` into ``out_dir``.

    Args:
        out_dir: output folder (created).
        counts: cases per split, e.g. ``{"train": 40, "val": 5, "test": 10}``.
        seed: the whole benchmark is a function of the seed (and the settings).
        spacing: isotropic output voxel spacing, mm.
        template: the template (default: :func:`load_template` from the shared folder).
        settings: deformation ranges.
        intensity: apply the intensity changes.
        source: where the template came from, recorded in the manifest.

    Returns:
        The manifest path.
    """
    unknown = sorted(set(counts) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown splits {unknown} (expected {list(SPLITS)})")
    settings = settings or DeformationSettings()
    template = template if template is not None else load_template()
    out = Path(out_dir).resolve()  # the manifest stores paths relative to its own folder
    shape, affine = output_grid(template, spacing)
    smoothed = presmooth(template, spacing)
    entries = []
    for split in SPLITS:
        for i in range(int(counts.get(split, 0))):
            t0 = time.perf_counter()
            case = f"{split}_{i:03d}"
            image, fiducials = deform_case(
                template, shape, affine, case_rng(seed, split, i), settings, intensity, smoothed
            )
            image_path, points_path = (
                out / "images" / f"{case}.nii.gz",
                out / "landmarks" / f"{case}.mrk.json",
            )
            save_nifti(image_path, image, affine)
            write_slicer_markups(
                points_path, template.names, world_to_points(fiducials, "LPS"), coordinate_system="LPS"
            )
            entries.append({"case": case, "image": image_path, "landmarks": points_path, "split": split})
            log.info("%s: %s in %.1f s", case, "x".join(map(str, shape)), time.perf_counter() - t0)
    meta = {
        "builder": "landmark_lit.data.mni_afids",
        "seed": seed,
        "spacing_mm": spacing,
        "counts": {s: int(counts.get(s, 0)) for s in SPLITS},
        "intensity": intensity,
        "deformation": dataclasses.asdict(settings),
        "source": source,
    }
    manifest = out / "manifest.json"
    write_manifest(manifest, entries, landmark_names=template.names, coordinate_system="RAS", meta=meta)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m landmark_lit.data.mni_afids OUT_DIR [--train N --val N --test N --seed S --spacing MM]``."""
    parser = argparse.ArgumentParser(
        prog="python -m landmark_lit.data.mni_afids", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out_dir", help="output folder (images/, landmarks/, manifest.json)")
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--val", type=int, default=5)
    parser.add_argument("--test", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=float, default=1.5, help="isotropic output spacing in mm")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--source-dir", default=None, help=f"folder with {TEMPLATE_FILE} and {FIDUCIALS_FILE}")
    where.add_argument(
        "--from-wheels", action="store_true", help="take both files from installed nilearn and afids-utils"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = template_files(args.source_dir, args.from_wheels)
        template = load_template(args.source_dir, args.from_wheels)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = {"train": args.train, "val": args.val, "test": args.test}
    manifest = build_benchmark(
        args.out_dir, counts, args.seed, args.spacing, template, source=", ".join(str(p) for p in paths)
    )
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
