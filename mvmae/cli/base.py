"""The ``mvmae`` root group, its options, logging and error reporting (``handle_errors``)."""

from __future__ import annotations

import functools
import logging
import sys

import click

from mvmae import __version__
from mvmae.console import LevelFormatter

log = logging.getLogger("mvmae")

EXPORT_SCHEMA_HELP = """\b
Export schema (one .npz per video; arrays):
  mv            float32 [T,2,h,w]  (dx, dy) px per frame: content of cell p in
                                   frame t was at p - (dx, dy) in frame t-1
  valid         bool    [T,h,w]    False where no vector (intra block, I-frame)
  frame_types   uint8   [T]        ASCII I / P / B per display frame
  iframes       uint8   [K,H',W',3] decoded I-frames, RGB, short side resized
  iframe_index  int64   [K]        display index of each I-frame
  grid          int                cell size px (h = ceil(H/grid))
  fps           float              frames per second
  size          int     [2]        source (H, W) px
  meta          str                JSON: method (resolved|raw), codec, profile,
                                   frames lost, warnings, mvmae version
"""


class _ClickHandler(logging.Handler):
    """Log records as 'level: message' lines on the current stderr (click's, under CliRunner)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(LevelFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def _configure_logging(level: int) -> None:
    """Route mvmae's log records to stderr at ``level`` on every invocation (idempotent)."""
    for handler in [h for h in log.handlers if isinstance(h, _ClickHandler)]:
        log.removeHandler(handler)
    log.addHandler(_ClickHandler())
    log.setLevel(level)


class UrlsOption(click.Option):
    """A repeatable option that also takes several values after one flag, up to the next
    argument that starts with '-': ``--train a.tar b.tar`` (what a shell glob such as
    ``--train shards/*.tar`` expands to) is ``--train a.tar --train b.tar``. For commands without
    positional arguments, which the following values would otherwise be."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, multiple=True, **kwargs)

    def add_to_parser(self, parser, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        # click's parser stores one value per flag; the values after it are taken from the
        # arguments still to parse (the parser's state), where they would be positional.
        for name in self.opts:
            option = parser._long_opt.get(name) or parser._short_opt.get(name)
            option.process = self._greedy(option.process)

    @staticmethod
    def _greedy(process):
        def take_all(value, state) -> None:
            process(value, state)
            while state.rargs and not state.rargs[0].startswith("-"):
                process(state.rargs.pop(0), state)

        return take_all


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)


# The exceptions that are a user's problem, as (module, class): reported as one line. Looked up
# in sys.modules only: an exception of a module never imported cannot have been raised, and
# importing them all (mvmae.job.job imports the decoder, hence PyAV and numpy) would cost every
# command start-up time it does not need.
EXPECTED_ERRORS = (
    ("mvmae.datasets.lists", "DatasetError"),
    ("mvmae.extract.errors", "VideoError"),
    ("mvmae.files", "WriteError"),
    ("mvmae.job.job", "JobError"),
    ("mvmae.job.store", "MissingExtraError"),
    ("mvmae.job.store", "StoreError"),
    ("mvmae.shards.sample", "SampleError"),
    ("mvmae.shards.stream", "ShardError"),
    ("mvmae.shards.videolist", "VideoListError"),
)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The classes of EXPECTED_ERRORS whose modules are imported."""
    return tuple(getattr(sys.modules[module], name) for module, name in EXPECTED_ERRORS
                 if module in sys.modules)


def handle_errors(func):
    """Report expected failures as one line on stderr and exit 1; tracebacks only with --debug."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = (ctx.find_root().obj or {}).get("debug", False)
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if debug:
                raise
            if isinstance(exc, _expected_errors()):
                fail(str(exc))
            elif isinstance(exc, (OSError, ValueError)):
                fail(f"{type(exc).__name__}: {exc}")
            else:  # anything else is a bug: say so, keep the traceback behind --debug
                fail(f"unexpected {type(exc).__name__}: {exc} (run `mvmae --debug ...` for the traceback)")
        sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mvmae")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: int) -> None:
    """mvmae: compressed-domain action recognition from H.264 motion vectors.

    \b
    Typical use:
      mvmae demo                                 the whole pipeline on synthetic data
      mvmae probe clips/*.mp4                    look at the streams first
      mvmae datasets uavhuman videos/ --out lists/   a benchmark's split lists
      mvmae check train.txt                      pre-flight over a dataset list
      mvmae extract run train.txt shards/        the dataset to shards (resumable)
      mvmae codebook 'shards/train-{000000..000009}.tar' --size 1024 --out codebook.npz
      mvmae pretrain --train URLS --codebook codebook.npz --out runs/pretrain
      mvmae train --train URLS --val URLS --pretrained runs/pretrain/last.pt --out runs/train
      mvmae eval --ckpt runs/train/best.pt --data URLS --out runs/eval
      mvmae predict --ckpt runs/train/best.pt new/*.mp4   top classes of new videos
      mvmae export --ckpt runs/train/best.pt --out model.onnx   for onnxruntime (or --format torchscript)
      mvmae shards show URLS --key K --out k.png        a sample's motion fields as arrows
    """
    ctx.obj = {"debug": debug}
    level = logging.DEBUG if verbose > 1 or debug else logging.INFO if verbose else logging.WARNING
    _configure_logging(level)
