"""``nbcnn data list`` and ``nbcnn data fetch``: the datasets a config names with ``dataset:``
that are downloaded on first use (nbcnn.datasets), and fetching them ahead of time."""

from __future__ import annotations

from typing import Annotated

import typer

from nbcnn.cli.common import JsonOpt, console, fail, handles_errors, say

app = typer.Typer(
    name="data",
    help="Datasets fetched on first use: list them, or fetch them ahead of time.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _cache_state(name: str) -> str:
    """ "yes" when every file is in the cache, "no" when none is, else "partial"."""
    from nbcnn import datasets

    present = datasets.cached(name).values()
    return "yes" if all(present) else "partial" if any(present) else "no"


@app.command("list")
@handles_errors
def list_datasets(json_output: JsonOpt = False):
    """List the downloadable datasets: classes, sample shape, train/test sizes, download size,
    whether they are in the cache, and where (NBCNN_HOME, else the platform's cache folder)."""
    from nbcnn import datasets
    from nbcnn.summary import human_bytes

    rows = [
        {
            "name": info.name,
            "title": info.title,
            "classes": info.classes,
            "coarse_classes": info.coarse_classes,
            "shape": list(info.shape),
            "train": info.train,
            "test": info.test,
            "download_bytes": info.download_bytes,
            "cached": _cache_state(info.name),
            "folder": str(datasets.cache_dir(info.name)),
            "files": [
                {"name": f.name, "url": datasets.file_url(info, f), "sha256": f.sha256}
                for f in info.files
            ],
        }
        for info in datasets.CATALOGUE.values()
    ]
    if json_output:
        from nbcnn.jsonout import print_json

        print_json(rows, indent=2)
        return
    from rich.table import Table

    table = Table(title="Datasets fetched on first use (dataset: NAME)", title_justify="left")
    for column in ("Name", "Classes", "Shape", "Train", "Test", "Download", "Cached", "Folder"):
        table.add_column(column, overflow="fold")
    for row in rows:
        classes = str(row["classes"])
        if row["coarse_classes"]:
            classes += f" (coarse {row['coarse_classes']})"
        table.add_row(
            row["name"],
            classes,
            "x".join(map(str, row["shape"])),
            f"{row['train']:,}",
            f"{row['test']:,}",
            human_bytes(row["download_bytes"]),
            row["cached"],
            row["folder"],
        )
    console().print(table, markup=False, highlight=False)


@app.command("fetch")
@handles_errors
def fetch(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Datasets to fetch (see `nbcnn data list`).", show_default=False),
    ] = None,
    all_datasets: Annotated[bool, typer.Option("--all", help="Fetch every dataset.")] = False,
):
    """Download NAMES into the cache and verify their SHA-256; a dataset already cached is only
    verified. Nothing is kept of a failed download."""
    from nbcnn import datasets
    from nbcnn.summary import human_bytes

    if all_datasets and names:
        fail("give dataset names or --all, not both", 2)
    if not all_datasets and not names:
        fail(f"give a dataset name ({', '.join(datasets.NAMES)}) or --all", 2)
    chosen = datasets.NAMES if all_datasets else names
    infos = [datasets.info(name, where="NAME") for name in chosen]  # all checked before any
    for info in infos:
        datasets.fetch(info.name)
        files = len(info.files)
        say(
            f"{info.name}: {files} file{'s' if files > 1 else ''}, "
            f"{human_bytes(info.download_bytes)}, SHA-256 verified, in "
            f"{datasets.cache_dir(info.name)}"
        )
