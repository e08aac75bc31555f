"""The classifier's clips (``model.classifier_clip``): the one definition fine-tuning and
evaluation cut clips by."""

from __future__ import annotations

import pytest

from mvmae.train.model import ClassifierConfig, classifier_clip
from mvmae.train.tokenizer import TokenSpec

SPEC = TokenSpec(num_frames=8, stride=2, mv_size=8, iframe_size=64, tubelet_frames=4)


@pytest.mark.parametrize("inputs,num_iframes", [("mv", 0), ("iframe", 3), ("both", 3)])
def test_segments_and_iframes(inputs, num_iframes):
    """3 segments of the spec's 8 frames, one I-frame per segment unless the run has no Context
    encoder (``inputs='mv'``: no JPEG is decoded)."""
    clip = classifier_clip(ClassifierConfig(inputs=inputs, num_segments=3), SPEC, "center")
    assert (clip.num_frames, clip.stride, clip.num_iframes) == (24, 2, num_iframes)
    assert (clip.mv_size, clip.iframe_size, clip.mode) == (8, 64, "center")


def test_options_reach_the_clip():
    train = classifier_clip(ClassifierConfig(), SPEC, "train", flip_prob=0.0, crop_area=(0.8, 1.0))
    assert (train.mode, train.flip_prob, train.crop_area) == ("train", 0.0, (0.8, 1.0))
    multi = classifier_clip(ClassifierConfig(), SPEC, "multi", num_clips=4, eval_crop="full")
    assert (multi.mode, multi.num_clips, multi.eval_crop) == ("multi", 4, "full")
