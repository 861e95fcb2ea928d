"""The Hydra configs of landmark_lit: kept at the top of the checkout, shipped in the wheel as ``landmark_lit.conf``."""
