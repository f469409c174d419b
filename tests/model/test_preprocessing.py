"""Preprocessing round trips on real volumes: padding, resampling, intensity invariance."""

from __future__ import annotations

import numpy as np
import pytest

from hippo_scp.model.dataset import load_case
from hippo_scp.model.preprocessing import (
    TRAINING_SPACING_MM,
    crop_padding,
    normalize_intensity,
    pad_to_multiple,
    prepare_volume,
    resample,
    resampled_shape,
    restore_labels,
)

CASES = ["hippocampus_001", "hippocampus_017", "hippocampus_390"]


@pytest.mark.parametrize("case_id", CASES)
def test_pad_crop_round_trip_exact(data_dir, case_id):
    case = load_case(data_dir, case_id)
    for multiple in (8, 16):
        padded, info = pad_to_multiple(case.image, multiple)
        assert all(s % multiple == 0 for s in padded.shape)
        assert np.array_equal(crop_padding(padded, info), case.image)
        # leading (channel) axes are carried through unchanged
        stacked, info2 = pad_to_multiple(np.stack([case.label, case.label]), multiple)
        assert np.array_equal(crop_padding(stacked, info2)[1], case.label)


@pytest.mark.parametrize("case_id", CASES)
@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (1.0, 1.0, 3.0), (3.0, 1.0, 2.0)])
def test_resample_and_back_exact_for_labels(data_dir, case_id, spacing):
    """Native grid -> 1 mm training grid -> native grid reproduces every label."""
    label = load_case(data_dir, case_id).label
    shape = resampled_shape(label.shape, spacing, TRAINING_SPACING_MM)
    fine = resample(label, spacing, TRAINING_SPACING_MM, shape, order=0)
    assert fine.shape == tuple(n * int(s) for n, s in zip(label.shape, spacing, strict=True))
    back = resample(fine, TRAINING_SPACING_MM, spacing, label.shape, order=0)
    assert np.array_equal(back, label)


@pytest.mark.parametrize("case_id", CASES)
def test_restore_labels_inverts_prepare(data_dir, case_id):
    """Class scores made on the network grid map back to the native labels exactly."""
    case = load_case(data_dir, case_id)
    spacing = (2.0, 1.0, 1.5)
    # pretend the native volume is coarser: take every 2nd x-slice, every ... keep it simple
    native = case.label[::2]
    prepared = prepare_volume(case.image[::2], spacing, multiple=8)
    assert prepared.resampled
    fine = resample(native, spacing, TRAINING_SPACING_MM, prepared.pad.shape, order=0)
    onehot = np.stack([(fine == k).astype(np.float32) for k in range(3)])
    padded, _ = pad_to_multiple(onehot, 8)
    assert padded.shape[1:] == prepared.array.shape
    restored = restore_labels(padded, prepared)
    assert restored.dtype == np.uint8
    assert restored.shape == native.shape
    assert np.array_equal(restored, native)


def test_identity_spacing_is_not_resampled(data_dir):
    case = load_case(data_dir, CASES[0])
    prepared = prepare_volume(case.image, case.spacing, multiple=8)
    assert not prepared.resampled
    assert prepared.pad.shape == case.image.shape


@pytest.mark.parametrize("slope,intercept", [(2.5, 0.0), (0.01, -1024.0), (7.0, 300.0)])
def test_normalisation_is_invariant_to_rescale(data_dir, slope, intercept):
    """RescaleSlope / RescaleIntercept (and int16 storage) must not change the network input."""
    image = load_case(data_dir, CASES[1]).image
    ref = normalize_intensity(image)
    other = normalize_intensity(image.astype(np.float64) * slope + intercept)
    assert np.allclose(ref, other, atol=1e-4)
    assert abs(float(ref.mean())) < 1e-4 and abs(float(ref.std()) - 1) < 1e-4


def test_constant_volume_gives_zeros():
    assert not normalize_intensity(np.full((8, 8, 8), 42.0)).any()


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        prepare_volume(np.zeros((8, 8)), (1.0, 1.0, 1.0), 8)
    with pytest.raises(ValueError):
        prepare_volume(np.zeros((8, 8, 8)), (1.0, 0.0, 1.0), 8)
