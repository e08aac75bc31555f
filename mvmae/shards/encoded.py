"""One video extracted and encoded as a shard sample in memory, never written: what ``mvmae
predict`` reads, exactly as ``mvmae extract run`` would store it (MVs quantized, I-frames as
JPEG; ``sample.encode_sample``). Imports neither torch nor the training code, so extraction worker
processes start quickly."""

from __future__ import annotations

from mvmae.extract.config import ExtractConfig
from mvmae.extract.errors import VideoError
from mvmae.extract.video import extract_video
from mvmae.shards.sample import encode_sample

SAMPLE_KEY = "video"  # the key of the in-memory sample


def encode_video(path: str, config: ExtractConfig) -> tuple[dict | None, str | None]:
    """(the whole video as one raw shard sample, None), or (None, why it cannot be extracted:
    missing, not a video, not H.264, damaged beyond decoding)."""
    try:
        fields = extract_video(path, config)
        return encode_sample(SAMPLE_KEY, fields, 0, "", str(path)), None
    except VideoError as exc:
        return None, exc.reason
    except (OSError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
