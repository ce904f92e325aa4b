"""Where predictions go: a CSV file or a folder of Parquet files, resumable.

Both keep a journal of JSON lines: first a header holding the job's fingerprint (inputs,
model files' digests, partition size, top), then one record per finished partition, appended
and flushed to disk only after the partition's rows are on disk. A re-run of the same job
reads the journal and skips the partitions it lists; a re-run of another job is refused by
name (or starts again with ``overwrite``).

- CSV (``preds.csv``, journal ``preds.csv.progress``): rows are appended as partitions
  finish; each record holds the file's byte length after its rows, and a re-run first
  truncates the file to the last recorded length, so a crash mid-write leaves neither half a
  partition nor a duplicate row.
- Parquet (``preds.parquet/``, journal ``preds.parquet/_progress.jsonl``): one file per
  partition, ``part-000042.parquet``, written under a temporary name and renamed, so a part
  file that exists is whole. Readers of the folder as a dataset (pyarrow, pandas, DuckDB,
  Spark) skip names starting with ``_`` and ``.``: the journal and unfinished files.

Rows, in partition order within a partition and partitions in the order they finish
(docs/batch-prediction.md has the schema): ``path``, ``class``, ``probability``, then
``class_2``, ``probability_2``... up to ``--top``, ``class_name`` (and ``class_name_2``...)
when the model's classes have names, and ``error`` (empty when the image was read).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Sequence

import numpy as np

from nbcnn.batchpredict.worker import PartitionRows
from nbcnn.errors import DataError

#: The journal's format; a journal of another version is refused.
JOURNAL_VERSION = 1


def column_names(top: int, class_names: Sequence[str] | None) -> list[str]:
    """The columns of the output for ``top`` classes per image."""
    names = ["path"]
    for k in range(1, top + 1):
        suffix = "" if k == 1 else f"_{k}"
        names += [f"class{suffix}", f"probability{suffix}"]
    if class_names is not None:
        names += [f"class_name{'' if k == 1 else f'_{k}'}" for k in range(1, top + 1)]
    return [*names, "error"]


def open_output(path: str, fingerprint: dict, *, overwrite: bool, class_names=None):
    """The :class:`CsvOutput` or :class:`ParquetOutput` for ``path`` (by its suffix)."""
    suffix = os.path.splitext(path.rstrip("/"))[1].lower()
    kinds = {".csv": CsvOutput, ".parquet": ParquetOutput}
    if suffix not in kinds:
        raise DataError("--out must end in .csv or .parquet", file=path)
    return kinds[suffix](path.rstrip("/"), fingerprint, overwrite, class_names)


class _Output:
    """What both formats share: the journal, the fingerprint check, the finished partitions.

    done : {partition index: its journal record} of the partitions already written.
    """

    def __init__(self, path, fingerprint, overwrite, class_names):
        self.path = path
        self.fingerprint = fingerprint
        self.class_names = class_names
        self.columns = column_names(fingerprint["top"], class_names)
        self.done: dict[int, dict] = {}
        if overwrite:
            self._remove()
        self._journal_records = self._read_journal()
        #: Whether this run creates the output (a failure before its first partition then
        #: removes it again: a refused job leaves nothing behind).
        self.created = self._journal_records is None

    # The subclasses say where the journal is and what to remove.
    journal: str

    def _read_journal(self) -> list[dict] | None:
        """The journal's records (header first), or None when there is no journal. A last
        line without its newline (a crash in the middle of an append) is cut off: its
        partition is not done."""
        try:
            with open(self.journal, "r+b") as handle:
                data = handle.read()
                whole = data.rfind(b"\n") + 1
                if whole < len(data):
                    handle.truncate(whole)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise DataError(f"cannot read it ({err.strerror})", file=self.journal) from None
        if not whole:  # the header's append itself was cut: nothing was written after it
            return None
        try:
            records = [json.loads(line) for line in data[:whole].decode().splitlines()]
            header, done = records[0], records[1:]
            self.done = {r["partition"]: r for r in done if r["rows"] >= 0 and r["paths"]}
        except (ValueError, IndexError, KeyError, TypeError):
            raise DataError(
                "is not a journal nbcnn wrote (--overwrite starts again)", file=self.journal
            ) from None
        if not isinstance(header, dict) or header.get("version") != JOURNAL_VERSION:
            raise DataError(
                "is not a journal of this nbcnn version (--overwrite starts again)",
                file=self.journal,
            )
        self._check_fingerprint(header.get("fingerprint", {}))
        return records

    def _check_fingerprint(self, recorded: dict) -> None:
        for key, now in self.fingerprint.items():
            if recorded.get(key) != now:
                raise DataError(
                    f"holds predictions of another job: its {key} was "
                    f"{_short(recorded.get(key))}, now {_short(now)} (re-run with the same "
                    "inputs, config, weights, --partition-size and --top to resume, or "
                    "--overwrite to start again)",
                    file=self.path,
                )

    def _append_journal(self, record: dict) -> None:
        with open(self.journal, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _header(self, **extra) -> dict:
        return {"version": JOURNAL_VERSION, "fingerprint": self.fingerprint, **extra}

    def check_partition(self, index: int, digest: str) -> bool:
        """Whether partition ``index`` is done; DataError when it was done with other files."""
        recorded = self.done.get(index)
        if recorded is None:
            return False
        if recorded["paths"] != digest:
            raise DataError(
                f"partition {index} was written for other files than the inputs list now "
                "(a folder or list changed since): --overwrite starts again",
                file=self.path,
            )
        return True

    def _cells(self, rows: PartitionRows) -> list[list]:
        """Rows of Python values in :attr:`columns` order (None for a missing value)."""
        top = rows.classes.shape[1]
        out = []
        for i, path in enumerate(rows.paths):
            ok = rows.errors[i] is None
            row = [path]
            for k in range(top):
                row += (
                    [int(rows.classes[i, k]), float(rows.probabilities[i, k])] if ok else [None] * 2
                )
            if self.class_names is not None:
                row += [self.class_names[c] if ok else None for c in rows.classes[i]]
            out.append([*row, rows.errors[i]])
        return out


class CsvOutput(_Output):
    """Rows appended to one CSV file; the journal ``PATH.progress`` beside it."""

    def __init__(self, path, fingerprint, overwrite, class_names):
        self.journal = path + ".progress"
        super().__init__(path, fingerprint, overwrite, class_names)
        header = _csv_text([self.columns])
        if self._journal_records is None:
            if os.path.exists(path):
                raise DataError(
                    f"exists and has no journal {os.path.basename(self.journal)}: not a "
                    "resumable nbcnn output (--overwrite replaces it)",
                    file=path,
                )
            self._append_journal(self._header(end=len(header)))
            end = 0
        else:
            end = self._journal_records[-1]["end"]
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            size = 0
        if self.done and size < end:
            raise DataError(
                f"is {size:,} bytes, shorter than the {end:,} its journal recorded: changed "
                "since (--overwrite starts again)",
                file=path,
            )
        self.handle = open(path, "r+b" if self.done else "wb")  # noqa: SIM115 - closed in close()
        if self.done:
            self.handle.truncate(end)  # a partition half-written by a crash goes
            self.handle.seek(end)
        else:
            self.handle.truncate(0)
            self.handle.write(header)
            self._flush()

    def _remove(self) -> None:
        for name in (self.path, self.path + ".progress"):
            if os.path.isdir(name):
                raise DataError("is a folder; --out FILE.csv names a file", file=name)
            if os.path.exists(name):
                os.remove(name)

    def _flush(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def write(self, rows: PartitionRows, digest: str) -> None:
        self.handle.write(_csv_text(self._cells(rows)))
        self._flush()
        self._append_journal(
            {
                "partition": rows.index,
                "rows": len(rows.paths),
                "failed": rows.failed,
                "paths": digest,
                "end": self.handle.tell(),
            }
        )

    def close(self) -> None:
        self.handle.close()

    def discard(self) -> None:
        self.close()
        self._remove()


def _csv_text(rows: list[list]) -> bytes:
    """CSV lines of ``rows``: floats with 9 significant digits (float32 round-trips), None
    as an empty cell."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    for row in rows:
        writer.writerow(
            ["" if v is None else format(v, ".9g") if isinstance(v, float) else v for v in row]
        )
    return text.getvalue().encode("utf-8", "surrogateescape")


class ParquetOutput(_Output):
    """A folder of Parquet files, one per partition; its journal ``_progress.jsonl``."""

    def __init__(self, path, fingerprint, overwrite, class_names):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise DataError(
                "writing Parquet needs pyarrow: pip install 'nbcnn[dask]' (or write a .csv)",
                file=path,
            ) from None
        self.journal = os.path.join(path, "_progress.jsonl")
        if not overwrite and os.path.exists(path) and not os.path.isdir(path):
            raise DataError(
                "exists and is not a folder: a .parquet output is a folder of part files "
                "(--overwrite replaces it)",
                file=path,
            )
        super().__init__(path, fingerprint, overwrite, class_names)
        if self._journal_records is None:
            if os.path.isdir(path) and os.listdir(path):
                raise DataError(
                    "is a folder that holds other files: not a resumable nbcnn output "
                    "(--overwrite replaces it)",
                    file=path,
                )
            os.makedirs(path, exist_ok=True)
            self._append_journal(self._header())
        for name in os.listdir(path):
            if name.startswith(".part-"):  # a part file a crash left unfinished
                os.remove(os.path.join(path, name))
        # A part file renamed into place but not journaled when the job died is written again.
        self.done = {i: d for i, d in self.done.items() if os.path.exists(self._part(i))}

    def _part(self, index: int) -> str:
        return os.path.join(self.path, f"part-{index:06d}.parquet")

    def _remove(self) -> None:
        if os.path.isdir(self.path):
            if os.listdir(self.path) and not os.path.exists(self.journal):
                raise DataError(
                    "is a folder that holds other files than an nbcnn output: not replaced",
                    file=self.path,
                )
            shutil.rmtree(self.path)
        elif os.path.exists(self.path):
            os.remove(self.path)

    def write(self, rows: PartitionRows, digest: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        top = rows.classes.shape[1]
        ok = np.array([e is None for e in rows.errors])
        arrays = [pa.array(rows.paths, pa.string())]
        for k in range(top):
            arrays += [
                pa.array(rows.classes[:, k], pa.int32(), mask=~ok),
                pa.array(rows.probabilities[:, k], pa.float32(), mask=~ok),
            ]
        if self.class_names is not None:
            for k in range(top):
                names = [
                    self.class_names[c] if good else None for c, good in zip(rows.classes[:, k], ok)
                ]
                arrays.append(pa.array(names, pa.string()))
        arrays.append(pa.array(rows.errors, pa.string()))
        table = pa.Table.from_arrays(arrays, names=self.columns)
        final = self._part(rows.index)
        temporary = os.path.join(self.path, "." + os.path.basename(final) + ".tmp")
        pq.write_table(table, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        self._append_journal(
            {
                "partition": rows.index,
                "rows": len(rows.paths),
                "failed": rows.failed,
                "paths": digest,
            }
        )

    def close(self) -> None:
        pass

    def discard(self) -> None:
        shutil.rmtree(self.path)


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."
