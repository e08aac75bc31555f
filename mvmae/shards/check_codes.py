"""The problem codes of ``mvmae check`` (:mod:`mvmae.shards.check`) and their default severity.

A module without imports, so that the CLI lists the codes in ``mvmae check --help`` from here
without importing the probe (and PyAV) on every invocation.
"""

ERROR, WARNING = "error", "warning"

#: code -> (default severity, what it means). Codes are stable: scripts may match on them.
CODES: dict[str, tuple[str, str]] = {
    "missing": (ERROR, "no such file"),
    "unreadable": (ERROR, "exists but cannot be read (permissions, a folder, an I/O error, or its "
                          "probe killed the worker process)"),
    "empty": (ERROR, "0 bytes"),
    "not_video": (ERROR, "not a readable video container (text, noise, moov box lost)"),
    "no_video_stream": (ERROR, "the container holds no video stream (audio only, subtitles, ...)"),
    "unsupported_codec": (ERROR, "the video is not H.264 (the message names the codec)"),
    "no_frames": (ERROR, "the container opens but holds no H.264 picture"),
    "timeout": (ERROR, "its probe ran past --timeout and was killed (extraction would likely hang "
                       "on it too)"),
    "too_short": (ERROR, "fewer frames than the clip span: its clips would loop frames"),
    "duplicate_path": (ERROR, "the same file is listed again (paths resolved)"),
    "duplicate_content": (ERROR, "the same bytes as an earlier entry under another path (size and SHA-1 of "
                                 "its first and last MiB)"),
    "label_unknown": (ERROR, "the label is not in the class list (--classes)"),
    "label_index_mismatch": (ERROR, "extract run would number a class differently from --classes"),
    "frames_declared_mismatch": (WARNING, "the container declares more or fewer frames than the "
                                          "bitstream holds (truncated or damaged)"),
    "damaged_packets": (WARNING, "packets whose slice headers do not parse"),
    "container_damaged": (WARNING, "the container cannot be read to its end: extract run keeps the "
                                   "frames before the damage"),
    "variable_fps": (WARNING, "frame intervals vary by more than 10%: fields are per frame step"),
    "all_intra": (WARNING, "no P- or B-frames: no motion vectors at all"),
    "no_iframe": (WARNING, "no I-frame is shown (an edit list hides the only IDR, or the stream starts on "
                           "a non-IDR slice): extract run stores each sample's first decoded frame as its "
                           "context frame"),
    "rotated": (WARNING, "a display rotation (a phone's portrait video): extract run turns I-frames and "
                         "fields upright"),
    "odd_size": (WARNING, "odd width or height (a 4:4:4 or monochrome stream)"),
    "long_video": (WARNING, "longer than --max-seconds: extract run cuts it into several samples"),
    "class_missing": (WARNING, "a class of the class list has no video in this list"),
    "class_small": (WARNING, "a class has fewer usable videos than --min-class-videos"),
}
