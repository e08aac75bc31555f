"""A process forked from a helper thread after mvmae resized or converted pictures must start.

PyAV 18.1.1 keeps one ``VideoReformatter`` per thread. With swscale's slice threads (PyAV's
default, ``threads=0``), the child of a fork made from another thread frees the forking parent's
other threads' reformatters and waits forever for slice threads it does not have: a DataLoader
worker started from a helper thread (``tests/faults/test_shard_server.py``) hung so. mvmae
converts with one thread; each case runs in a fresh interpreter, and its child must exit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, sys, threading, time
    import av
    import numpy as np

    case, path = sys.argv[1], sys.argv[2]
    if case == "upright_rgb":
        from mvmae.extract.picture import upright_rgb
        with av.open(path) as container:
            frame = next(container.decode(video=0))
            image = upright_rgb(frame, 96, 0)
            assert image.ndim == 3 and min(image.shape[:2]) == 96, image.shape
        del frame
    else:
        from mvmae.synth.encode import encode_h264
        rgb = np.random.default_rng(0).integers(0, 255, (4, 64, 96, 3), dtype=np.uint8)
        encode_h264(os.path.join(os.path.dirname(path), "out.mp4"), list(rgb), 25, {})

    exited = []

    def fork() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                exited.append(True)
                return
            time.sleep(0.05)
        os.kill(pid, 9)
        os.waitpid(pid, 0)

    helper = threading.Thread(target=fork)
    helper.start()
    helper.join()
    print("child exited" if exited else "child hung")
""")


@pytest.mark.parametrize("case", ["upright_rgb", "encode"])
def test_fork_from_a_thread_after_conversion(case, bikes_mp4, tmp_path) -> None:
    copy = tmp_path / "clip.mp4"
    copy.write_bytes(bikes_mp4.read_bytes())
    done = subprocess.run([sys.executable, "-c", SCRIPT, case, str(copy)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "child exited", done.stdout + done.stderr
