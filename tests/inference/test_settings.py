"""RunSettings: one frozen, checked set of run settings; the options of landmark-predict / landmark-export."""

from __future__ import annotations

import dataclasses

import pytest

from landmark_lit.inference.settings import DEFAULT_CONFIDENCE_SCALE, MirrorAverage, RunSettings

NAMES = ["a", "b", "c"]


def test_defaults_types_and_frozen():
    s = RunSettings(local_iterations=2.0, confidence_threshold=1, confidence_scale=2)
    assert (s.local_iterations, s.confidence_threshold, s.confidence_scale) == (2, 1.0, 2.0)
    assert isinstance(s.local_iterations, int) and isinstance(s.confidence_threshold, float)
    assert RunSettings() == RunSettings(1, None, DEFAULT_CONFIDENCE_SCALE, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.local_iterations = 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"local_iterations": 0}, "local_iterations must be at least 1, got 0"),
        ({"local_iterations": 1.5}, "local_iterations must be a whole number, got 1.5"),
        ({"local_iterations": True}, "local_iterations must be a whole number, got True"),
        ({"confidence_scale": 0}, "confidence_scale must be positive, got 0"),
        ({"confidence_scale": float("nan")}, "confidence_scale must be positive, got nan"),
        ({"confidence_threshold": float("inf")}, "confidence_threshold must be a finite number or null"),
        ({"confidence_threshold": "0.5"}, "confidence_threshold must be a finite number or null"),
        ({"mirror": {"axes": [0]}}, "mirror must be a MirrorAverage or None"),
    ],
)
def test_bad_values_are_one_line_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        RunSettings(**changes)
    with pytest.raises(ValueError, match=message):
        RunSettings().changed(**changes)


def test_changed_keeps_what_is_none_and_refuses_unknown_settings():
    base = RunSettings(local_iterations=3, confidence_threshold=0.2)
    assert base.changed(local_iterations=None, confidence_scale=5) == RunSettings(3, 0.2, 5.0)
    with pytest.raises(ValueError, match=r"unknown run settings \['local_iteration'\]"):
        base.changed(local_iteration=2)


def test_round_trip_and_fit_checks():
    s = RunSettings(2, 0.3, 4.0, MirrorAverage((0,), ((0, 1),), True))
    assert RunSettings.from_dict(s.to_dict()) == s
    assert RunSettings.from_dict({}) == RunSettings()
    s.check_fits(3, 2)
    with pytest.raises(ValueError, match=r"pair \[0, 1\] out of range for 1 landmarks"):
        s.check_fits(1, 2)
    with pytest.raises(ValueError, match="out of range for a 2D model"):
        RunSettings(mirror=MirrorAverage((2,))).check_fits(3, 2)


def test_command_line_options_override_the_stored_settings():
    stored = RunSettings(2, None, 3.0, MirrorAverage((1,), ((0, 2),), False))
    keep = stored.overridden({"local_iterations": None, "mirror": None}, NAMES)
    assert keep == stored
    assert stored.overridden({"mirror": "none"}, NAMES).mirror is None
    assert stored.overridden({"mirror": "whole"}, NAMES).mirror == MirrorAverage((1,), ((0, 2),), True)
    # without a stored mirror, "local" mirrors array axis 0 without pairs
    assert RunSettings().overridden({"mirror": "local"}, NAMES).mirror == MirrorAverage((0,), (), False)
    named = stored.overridden({"mirror": {"axes": [0], "pairs": [["c", "a"]]}, "local_iterations": 3}, NAMES)
    assert named == RunSettings(3, None, 3.0, MirrorAverage((0,), ((2, 0),), False))
    with pytest.raises(ValueError, match="local_iterations must be at least 1, got 0"):
        stored.overridden({"local_iterations": 0}, NAMES)
