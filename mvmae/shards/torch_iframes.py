"""The reader's I-frame operations in torch (the reader's side of ``shards/``, which imports torch).

:class:`TorchIFrames` is the :class:`~mvmae.shards.sources.IFrameOps` the train and eval
pipelines use: JPEGs decoded by torchvision (libjpeg-turbo straight into an array) and crops
resized by torch's antialiased bilinear uint8 kernel. PIL (``sources.PilIFrames``) does the same
work about 2x slower; the two agree within a fraction of a level (FORMAT.md, "Reader").
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from mvmae.shards import sample as fmt
from mvmae.shards.sources import PixelBox

_UNSET = object()
_decoder = _UNSET


def _torchvision_decoder():
    """torchvision's ``decode_jpeg`` to RGB, or None where this torchvision has none (0.29
    deprecates its image decoders; a removal is announced): PIL then decodes. Imported on the
    first I-frame, not with this module, because importing torchvision costs about 2 s of
    start-up (it imports ``torch._dynamo``) that MV-only runs should not pay."""
    global _decoder
    if _decoder is _UNSET:
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            _decoder = None
        else:
            _decoder = functools.partial(decode_jpeg, mode=ImageReadMode.RGB)
    return _decoder


class TorchIFrames:
    """Per 256x455 I-frame and 224-px crop about 0.28 + 0.16 ms against PIL's 0.45 + 0.34 ms
    (one core). The same pixels as PIL's decode; resized crops within 0.1 level of PIL's on
    average (``tests/shards/test_reader.py::test_torch_iframes_match_pil``). PIL decodes if this
    torchvision has no JPEG decoder."""

    def decode(self, jpeg: bytes) -> np.ndarray:
        decode = _torchvision_decoder()
        if decode is None:
            return fmt.decode_jpeg(jpeg)
        try:  # bytearray: torch.frombuffer wants a writable buffer (a 20-30 KB copy)
            image = decode(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8))
        except RuntimeError as exc:  # torchvision's error for undecodable data
            raise ValueError(f"undecodable JPEG ({exc})") from exc
        return image.permute(1, 2, 0).numpy()  # (H, W, 3): torchvision's memory layout, no copy

    def crop_resize(self, images, box: PixelBox, size: int) -> np.ndarray:
        y0, x0, y1, x1 = box
        crops = [torch.from_numpy(image if image.flags.writeable else image.copy())  # (H, W, 3)
                 .permute(2, 0, 1)[None, :, y0:y1, x0:x1] for image in images]  # (1, 3, y1 - y0, x1 - x0)
        out = [F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
               for crop in crops]  # (1, 3, size, size) each, channels-last in memory like its input
        return (out[0] if len(out) == 1 else torch.cat(out)).numpy()  # collation copies it once


TORCH_IFRAMES = TorchIFrames()
