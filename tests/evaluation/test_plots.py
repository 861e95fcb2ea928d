from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from landmark_lit.evaluation.plots import plot_vector_field


def test_vector_field_marks_the_confident_cells(tmp_path):
    stride, grid = 8, (6, 5)
    landmark = np.array([21.0, 13.0])
    centres = np.stack(np.meshgrid(*[np.arange(n) * stride + (stride - 1) / 2 for n in grid], indexing="ij"))
    displacement = landmark[:, None, None] - centres  # every cell points at the landmark
    distance = np.linalg.norm(displacement, axis=0)
    posterior = np.exp(-distance / stride)
    marked = plot_vector_field(
        np.random.default_rng(0).normal(size=(48, 40)), displacement, posterior, stride, tmp_path / "v.png",
        landmark=landmark, prediction=landmark + 0.5,
    )  # fmt: skip
    assert marked == int((posterior > 0.5).sum()) and 0 < marked < posterior.size
    width, height = Image.open(tmp_path / "v.png").size
    assert width == 600 and height == pytest.approx(600 * 40 / 48, abs=2)
    with pytest.raises(ValueError, match=r"\(2, gh, gw\) displacement"):
        plot_vector_field(np.zeros((48, 40)), displacement[:1], posterior, stride, tmp_path / "w.png")
    assert not (tmp_path / "w.png").exists()
