"""ISBI 2015 cephalometric X-rays (Wang et al. 2016): 19 landmarks, 1935 x 2400 px at 0.1 mm.

Images are read with MONAI's PIL reader, which returns 2D arrays in (width, height) order: array axis 0 is
the column x, axis 1 the row y. The annotations (pixels, x = column, y = row) are therefore voxel
coordinates of the array as they stand, and world mm = 0.1 * (x, y).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from landmark_lit.data.cases import Case
from landmark_lit.data.io import load_image

SPACING_MM = 0.1
LANDMARK_NAMES = [
    "sella",
    "nasion",
    "orbitale",
    "porion",
    "subspinale",
    "supramentale",
    "pogonion",
    "menton",
    "gnathion",
    "gonion",
    "lower_incisal_incision",
    "upper_incisal_incision",
    "upper_lip",
    "lower_lip",
    "subnasale",
    "soft_tissue_pogonion",
    "posterior_nasal_spine",
    "anterior_nasal_spine",
    "articulare",
]
GROUND_TRUTHS = ("average", "senior", "junior")
SUBSETS = ("all", "train", "val")


def read_annotations(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """One doctor's annotation file -> image id (e.g. "001") -> (19, 2) pixel coordinates (x, y)."""
    out: dict[str, np.ndarray] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                pts = [[float(row[f"L{k}_x"]), float(row[f"L{k}_y"])] for k in range(1, 20)]
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path}: bad annotation row for {row.get('image')!r} ({exc})") from exc
            out[Path(row["image"]).stem] = np.asarray(pts, dtype=np.float64)
    return out


class ISBI2015Cephalograms:
    """A :class:`~landmark_lit.data.cases.CaseSource` over the ISBI 2015 challenge data.

    Args:
        data_dir: the ``isbi2015-ceph`` folder (images/, annotations/, splits/).
        split: "train" (images 001-150) or "test1" (151-300).
        subset: for the train split, "train" (all but the validation images), "val" or "all".
        val_count: number of training images held out for validation (the paper: 10).
        val_seed: seed of the random choice of validation images.
        folds: with 2 or more, cross-fitting: the split's images are dealt into ``folds`` parts by a random
            order of seed ``val_seed``, fold ``fold`` is the "val" subset and the others "train" (each
            image is "val" in exactly one fold). 0: ``val_count`` images are "val".
        fold: which fold is "val" (0 .. folds - 1).
        ground_truth: "average" of the two doctors (the paper), "senior" or "junior".
        limit: use only the first ``limit`` images (tests, quick runs).
    """

    spatial_dims = 2

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str = "train",
        subset: str = "all",
        val_count: int = 10,
        val_seed: int = 0,
        folds: int = 0,
        fold: int = 0,
        ground_truth: str = "average",
        limit: int | None = None,
    ) -> None:
        root = Path(data_dir)
        if not (root / "images").is_dir() or not (root / "annotations").is_dir():
            raise FileNotFoundError(
                f"{root}: ISBI 2015 data not found (expected images/ and annotations/); set paths.data_dir"
            )
        if ground_truth not in GROUND_TRUTHS:
            raise ValueError(f"ground_truth must be one of {GROUND_TRUTHS}, got {ground_truth!r}")
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
        split_file = root / "splits" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"{split_file}: split not found (available: train, test1)")
        ids = [Path(line.strip()).stem for line in split_file.read_text().splitlines() if line.strip()]
        if subset != "all":
            val_ids = _held_out(ids, val_count, val_seed, int(folds), int(fold))
            ids = [i for i in ids if (i in val_ids) == (subset == "val")]
        self.ids = ids[:limit] if limit is not None else ids
        self.root, self.ground_truth = root, ground_truth
        senior = read_annotations(root / "annotations" / "senior.csv")
        junior = read_annotations(root / "annotations" / "junior.csv")
        missing = [i for i in self.ids if i not in senior or i not in junior]
        if missing:
            raise ValueError(f"{root / 'annotations'}: no annotation for images {missing[:5]}")
        self.senior, self.junior = senior, junior
        self.landmark_names = list(LANDMARK_NAMES)

    def __len__(self) -> int:
        return len(self.ids)

    def pixels(self, image_id: str, ground_truth: str | None = None) -> np.ndarray:
        """(19, 2) annotated pixel coordinates (x, y) under a ground-truth convention."""
        gt = ground_truth or self.ground_truth
        if gt == "average":
            return (self.senior[image_id] + self.junior[image_id]) / 2.0
        return (self.senior if gt == "senior" else self.junior)[image_id].copy()

    def image_path(self, image_id: str) -> Path:
        return self.root / "images" / f"{image_id}.jpg"

    def __getitem__(self, index: int) -> Case:
        image_id = self.ids[index]
        path = self.image_path(image_id)
        image, _ = load_image(path)
        grey = image.mean(axis=0, keepdims=True)  # R = G = B; 300.jpg has a coloured strip, averaged away
        affine = np.diag([SPACING_MM, SPACING_MM, 1.0])
        return Case(
            case_id=image_id,
            image=grey.astype(np.float32),
            affine=affine,
            landmarks_world=self.pixels(image_id) * SPACING_MM,
            image_path=str(path),
        )


def _held_out(ids: list[str], count: int, seed: int, folds: int, fold: int) -> set[str]:
    """The "val" images: ``count`` drawn with ``seed``, or with ``folds`` >= 2 fold ``fold`` of a seeded deal."""
    rng = np.random.default_rng(seed)
    if folds == 0:
        return set(rng.choice(sorted(ids), size=count, replace=False).tolist())
    if not 2 <= folds <= len(ids) or not 0 <= fold < folds:
        raise ValueError(
            f"folds must be 0 or 2 to {len(ids)} and fold in 0 .. folds - 1, got {folds}, {fold}"
        )
    order = rng.permutation(sorted(ids)).tolist()
    return set(order[fold::folds])


def reference_table(source: ISBI2015Cephalograms, ground_truth: str | None = None):
    """The source's landmarks in world mm as a :class:`~landmark_lit.data.landmark_tables.LandmarkTable`."""
    from landmark_lit.data.landmark_tables import LandmarkTable

    return LandmarkTable(
        names=list(source.landmark_names),
        coords={i: source.pixels(i, ground_truth) * SPACING_MM for i in source.ids},
        images={i: str(source.image_path(i)) for i in source.ids},
    )


def mirrored_table(source: ISBI2015Cephalograms, folder: str | os.PathLike, ground_truth: str | None = None):
    """Write every image of ``source`` mirrored left-right as ``folder/<id>.png`` (lossless, the decoded
    JPEG's grey values) with ``folder/list.txt`` naming them, and return the references mirrored with
    them: pixel x -> (width - 1) - x. A
    patient facing the other way; the 19 landmarks keep their names (all on the mid-sagittal plane)."""
    from PIL import Image

    from landmark_lit.data.landmark_tables import LandmarkTable

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    coords, images = {}, {}
    for i in source.ids:
        with Image.open(source.image_path(i)) as im:
            # the loader's grey: the mean of the colour channels (equal ones: the channel itself)
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
            grey = Image.fromarray(np.round(rgb.mean(-1)).astype(np.uint8))
            width = grey.width
            path = out / f"{i}.png"
            tmp = path.with_suffix(".tmp.png")
            grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp)
            os.replace(tmp, path)
        px = source.pixels(i, ground_truth)
        px[:, 0] = (width - 1) - px[:, 0]
        coords[i], images[i] = px * SPACING_MM, str(path)
    # folder/list.txt for landmark-predict: entries relative to the list's own folder
    (out / "list.txt").write_text("".join(f"{i}.png\n" for i in source.ids))
    return LandmarkTable(names=list(source.landmark_names), coords=coords, images=images)


def main(argv: list[str] | None = None) -> None:
    """``python -m landmark_lit.data.isbi2015 DATA_DIR OUT.csv [--split test1] [--ground-truth average]
    [--mirror-images DIR]``: write a split's reference landmarks (world mm) as a landmark table for
    ``landmark-evaluate``; with ``--mirror-images``, the images mirrored left-right as PNGs in DIR (and
    ``DIR/list.txt``) and the references mirrored with them."""
    import argparse

    from landmark_lit.data.landmark_tables import write_landmark_table

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("output")
    parser.add_argument("--split", default="test1")
    parser.add_argument("--ground-truth", default="average", choices=GROUND_TRUTHS)
    parser.add_argument("--mirror-images", default=None, metavar="DIR")
    args = parser.parse_args(argv)
    source = ISBI2015Cephalograms(args.data_dir, split=args.split, ground_truth=args.ground_truth)
    if args.mirror_images:
        table = mirrored_table(source, args.mirror_images, args.ground_truth)
        write_landmark_table(args.output, table)
        print(
            f"{len(source)} cases mirrored -> {args.mirror_images}, {args.ground_truth} ground truth -> {args.output}"
        )
        return
    write_landmark_table(args.output, reference_table(source))
    print(f"{len(source)} cases, {args.ground_truth} ground truth -> {args.output}")


if __name__ == "__main__":
    main()
