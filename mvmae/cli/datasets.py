"""``mvmae datasets uavhuman|kinetics|folders``: a folder of raw videos to split lists."""

from __future__ import annotations

from pathlib import Path

import click

from mvmae.cli.base import handle_errors, main

_MAX_SHOWN = 10  # problems echoed; all of them are in the report file


@main.group()
def datasets() -> None:
    """Split lists of a dataset's raw videos, the way the benchmark splits them.

    \b
    Each command writes, under --out: <split>.txt lists of 'path label' lines
    (absolute paths, integer labels), classes.json (index -> name) and a report of
    the files it skipped or could not find; it prints the videos per split and
    class. The lists are what `mvmae check` and `mvmae extract run` read.
    """


def _echo_problems(problems: list[str], report: Path, what: str) -> None:
    from mvmae.datasets.lists import write_lines

    if not problems:
        return
    write_lines(report, problems)
    click.echo(f"{len(problems)} {what} (all in {report}):", err=True)
    for line in problems[:_MAX_SHOWN]:
        click.echo(f"  {line}", err=True)
    if len(problems) > _MAX_SHOWN:
        click.echo(f"  ... and {len(problems) - _MAX_SHOWN} more", err=True)


def _echo_class_table(columns: dict[str, dict[int, int]], classes: list[str]) -> None:
    """Videos per class (rows) and split (columns); classes without a video are left out."""
    names = list(columns)
    width = max(len(c) for c in classes)
    click.echo(f"{'class':<{width}}  " + "  ".join(f"{n:>11}" for n in names))
    for label, name in enumerate(classes):
        counts = [columns[n].get(label, 0) for n in names]
        if any(counts):
            click.echo(f"{name:<{width}}  " + "  ".join(f"{c:>11}" for c in counts))
    click.echo(f"{'total':<{width}}  " + "  ".join(f"{sum(columns[n].values()):>11}" for n in names))


@datasets.command()
@click.argument("root", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for csv1/{train,test}.txt, csv2/{train,test}.txt, classes.json.")
@click.option("--quiet", is_flag=True, help="Print the split totals only, not the per-class table.")
@handle_errors
def uavhuman(root: Path, out: Path, quiet: bool) -> None:
    """UAV-Human's cross-subject splits CSv1 and CSv2 from the videos under ROOT.

    \b
    Labels are the action (A###, 155 classes A000..A154), subjects the person
    ID (P###); the training subjects of each protocol are the dataset's own
    (README of github.com/sutdcv/UAV-Human, 89 of 119 subjects; the rest test).
    Files whose names do not parse are reported in OUT/skipped.txt, not fatal.
    """
    from mvmae.datasets import uavhuman as uav
    from mvmae.datasets.lists import write_classes, write_split_set

    protocols, problems = uav.build_splits(root)
    write_classes(out / "classes.json", uav.CLASSES)
    columns = {}
    click.echo(f"{'protocol':<9}{'split':<7}{'videos':>8}{'subjects':>10}{'classes':>9}")
    for protocol, split_set in protocols.items():
        write_split_set(out / protocol, split_set)
        for split, entries in split_set.splits.items():
            counts = split_set.class_counts()[split]
            columns[f"{protocol}/{split}"] = counts
            click.echo(f"{protocol:<9}{split:<7}{len(entries):>8}{len(uav.subjects_of(entries)):>10}"
                       f"{len(counts):>9}")
    if not quiet:
        _echo_class_table(columns, uav.CLASSES)
    _echo_problems(problems, out / "skipped.txt", "file(s) skipped")
    click.echo(f"wrote {out}/csv1/{{train,test}}.txt, {out}/csv2/{{train,test}}.txt, {out}/classes.json")


@datasets.command()
@click.argument("csv_files", metavar="CSV...", nargs=-1, required=True,
                type=click.Path(path_type=Path, dir_okay=False))
@click.argument("root", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for <split>.txt, classes.json and missing.txt.")
@click.option("--quiet", is_flag=True, help="Print the split totals only, not the per-class table.")
@handle_errors
def kinetics(csv_files: tuple[Path, ...], root: Path, out: Path, quiet: bool) -> None:
    """Kinetics lists from its annotation CSV(s) and the clips under ROOT.

    \b
    CSV columns: label,youtube_id,time_start,time_end,split (as published);
    clips are found anywhere under ROOT as {youtube_id}_{start:06d}_{end:06d}.*
    One list per split value (train.txt, val.txt, ...); classes: the labels of
    all CSVs, sorted. Rows whose clip is not found are counted and listed in
    OUT/missing.txt, not fatal.
    """
    from mvmae.datasets import kinetics as kin
    from mvmae.datasets.lists import write_classes, write_split_set

    split_set, missing = kin.build_splits(list(csv_files), root)
    write_classes(out / "classes.json", split_set.classes)
    write_split_set(out, split_set)
    missing_by_split: dict[str, int] = {}
    for line in missing:
        split = line.split(": ", 1)[0]
        missing_by_split[split] = missing_by_split.get(split, 0) + 1
    click.echo(f"{'split':<10}{'videos':>8}{'missing':>9}{'classes':>9}")
    counts = split_set.class_counts()
    for split, entries in split_set.splits.items():
        click.echo(f"{split:<10}{len(entries):>8}{missing_by_split.get(split, 0):>9}{len(counts[split]):>9}")
    if not quiet:
        _echo_class_table(counts, split_set.classes)
    _echo_problems(missing, out / "missing.txt", "clip(s) listed but not found")
    _echo_problems(split_set.problems, out / "skipped.txt", "row(s) skipped")
    click.echo(f"wrote {', '.join(f'{out}/{s}.txt' for s in split_set.splits)}, {out}/classes.json")


@datasets.command()
@click.argument("root", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for train.txt, val.txt and classes.json.")
@click.option("--val-ratio", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="Share of each class's videos put in val.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
@click.option("--quiet", is_flag=True, help="Print the split totals only, not the per-class table.")
@handle_errors
def folders(root: Path, out: Path, val_ratio: float, seed: int, quiet: bool) -> None:
    """A seeded, stratified train/val split of ROOT's class subfolders (ROOT/<class>/<video>).

    Each class is split on its own (at least one video in val for a class of 2 or more, never
    all of them); the same seed gives the same lists. Empty class folders are reported.
    """
    from mvmae.datasets import folders as fold
    from mvmae.datasets.lists import write_classes, write_split_set

    split_set = fold.build_splits(root, val_ratio, seed)
    write_classes(out / "classes.json", split_set.classes)
    write_split_set(out, split_set)
    counts = split_set.class_counts()
    click.echo(f"{'split':<8}{'videos':>8}{'classes':>9}")
    for split, entries in split_set.splits.items():
        click.echo(f"{split:<8}{len(entries):>8}{len(counts[split]):>9}")
    if not quiet:
        _echo_class_table(counts, split_set.classes)
    _echo_problems(split_set.problems, out / "skipped.txt", "class folder(s) skipped")
    click.echo(f"wrote {out}/train.txt, {out}/val.txt, {out}/classes.json")
