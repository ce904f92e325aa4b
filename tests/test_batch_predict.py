"""``nbcnn predict --out``: batch prediction on Dask into CSV or Parquet, resumable.

One local Dask cluster (2 worker processes, 1 thread each, on 127.0.0.1) serves the module;
the model is the tiny 8x8x1 convnet written into a temporary folder with weights from its
initialisation, the images PNGs made from sklearn's digits.
"""

from __future__ import annotations

import csv
import json
import os

import distributed
import numpy as np
import pytest
from PIL import Image

import nbcnn
from nbcnn.batchpredict import predict_to_file
from nbcnn.batchpredict.worker import model_loads
from nbcnn.data import load_images
from tests.helpers import TINY_MODEL, cli

TINY = {
    **TINY_MODEL,
    "train": {"data": {"dataset": "digits"}},
}
#: Images in the job's folder (one more is corrupt); partitions of 7 give 6 of them.
IMAGES = 40


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    )
    with distributed.Client(cluster) as client:
        yield client
    cluster.close()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A folder of digit PNGs in nested subfolders, with files that are not images, a hidden
    folder, a corrupt PNG; the tiny model's config and weights."""
    import yaml
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("batch")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    weights = root / "w.npz"
    nbcnn.load_model(config).initialize(0).save_weights(weights)
    digits = load_digits().images[:IMAGES]
    images = []
    for i, pixels in enumerate(digits):
        folder = root / "imgs" / f"class{i % 3}" / ("deep/deeper" if i % 4 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"d{i:03d}.png"
        Image.fromarray((pixels * 15).astype(np.uint8)).save(path)
        images.append(str(path))
    (root / "imgs" / "notes.txt").write_text("not an image")
    (root / "imgs" / "class1" / "labels.csv").write_text("a,b\n")
    (root / "imgs" / ".cache").mkdir()
    Image.fromarray(digits[0].astype(np.uint8)).save(root / "imgs" / ".cache" / "hidden.png")
    corrupt = root / "imgs" / "class2" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return {
        "root": root,
        "config": str(config),
        "weights": str(weights),
        "folder": str(root / "imgs"),
        "images": images,
        "corrupt": str(corrupt),
    }


def expected(job, top=3):
    """{path: (classes, probabilities)} of nbcnn's in-process predict on the same images."""
    model = nbcnn.load_model(job["config"]).initialize(0)
    model.load_weights(job["weights"])
    probs = model.predict(load_images(job["images"], model.input_shape))
    order = np.argsort(-probs, axis=1)[:, :top]
    return {
        path: (list(order[i]), list(probs[i, order[i]])) for i, path in enumerate(job["images"])
    }


def csv_rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def parquet_rows(path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def check_rows(rows: list[dict], job) -> None:
    """Every image exactly once, each row equal to the in-process predict; the corrupt image
    one row with its error; nothing else."""
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted([*job["images"], job["corrupt"]])  # each once, no others
    want = expected(job)
    for row in rows:
        if row["path"] == job["corrupt"]:
            assert "cannot read image" in row["error"] and row["class"] in ("", None)
            continue
        assert row["error"] in ("", None)
        classes, probs = want[row["path"]]
        assert [int(row[k]) for k in ("class", "class_2", "class_3")] == classes
        got = [float(row[k]) for k in ("probability", "probability_2", "probability_3")]
        np.testing.assert_allclose(got, probs, rtol=1e-6)


def journal(path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle][1:]


def test_csv_on_dask_matches_in_process_predict_with_one_load_per_worker(job, client, tmp_path):
    out = tmp_path / "preds.csv"
    summary = predict_to_file(
        job["config"],
        job["weights"],
        [job["folder"]],
        out,
        partition_size=7,
        scheduler=client.scheduler.address,
    )
    assert (summary.images, summary.failed, summary.resumed_images) == (IMAGES + 1, 1, 0)
    assert sorted(summary.partitions) == list(range(6))
    check_rows(csv_rows(out), job)
    # 6 partitions on 2 workers: a model loaded per partition would count more than 1 on one.
    loads = client.run(model_loads, job["config"], job["weights"])
    assert max(loads.values()) == 1 and sum(loads.values()) >= 1, loads
    assert sorted(r["partition"] for r in journal(f"{out}.progress")) == list(range(6))


def test_parquet_folder_holds_the_same_rows(job, tmp_path):
    out = tmp_path / "preds.parquet"
    summary = predict_to_file(
        job["config"], job["weights"], [job["folder"]], out, partition_size=7, workers=0
    )
    assert summary.images == IMAGES + 1
    assert sorted(os.listdir(out)) == ["_progress.jsonl"] + [
        f"part-{i:06d}.parquet" for i in range(6)
    ]
    rows = parquet_rows(out)
    check_rows(rows, job)
    corrupt = next(r for r in rows if r["error"])
    assert corrupt["class"] is None and corrupt["probability"] is None


class Interrupt(Exception):
    pass


def stop_after(partitions: int):
    def progress(summary):
        if len(summary.partitions) >= partitions:
            raise Interrupt

    return progress


@pytest.mark.parametrize("suffix, on_dask", [(".csv", True), (".parquet", False)])
def test_an_interrupted_job_resumes_without_recomputing_or_duplicating(
    job, client, tmp_path, suffix, on_dask
):
    out = tmp_path / f"preds{suffix}"
    where = {"scheduler": client.scheduler.address} if on_dask else {"workers": 0}
    args = (job["config"], job["weights"], [job["folder"]], out)
    with pytest.raises(Interrupt):
        predict_to_file(*args, partition_size=7, progress=stop_after(2), **where)
    first = journal(f"{out}.progress" if suffix == ".csv" else out / "_progress.jsonl")
    finished = {r["partition"] for r in first}
    assert len(finished) == 2
    # A crash in the middle of writing a partition's rows, then of its journal line.
    if suffix == ".csv":
        with open(out, "a") as handle:
            handle.write(f"{job['images'][0]},3,0.5,1,0.2,2,0.1,\nhalf a ro")
    with open(f"{out}.progress" if suffix == ".csv" else out / "_progress.jsonl", "a") as handle:
        handle.write('{"partition": 5, "rows": 7, "fai')
    summary = predict_to_file(*args, partition_size=7, **where)
    assert summary.resumed_partitions == 2 and not finished & set(summary.partitions)
    assert sorted(finished | set(summary.partitions)) == list(range(6))
    check_rows(csv_rows(out) if suffix == ".csv" else parquet_rows(out), job)
    again = predict_to_file(*args, partition_size=7, **where)
    assert (again.resumed_partitions, again.partitions) == (6, [])


def test_cli_writes_resumes_and_refuses_another_job(job, client, tmp_path):
    out = tmp_path / "preds.csv"
    base = ["predict", job["config"], "--weights", job["weights"], job["folder"], "--out", out]
    there = ["--scheduler", client.scheduler.address]
    result = cli(*base, *there, "--partition-size", "10", "--top", "2")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{out}: 41 images in ")
    assert "1 image(s) could not be read" in result.stderr
    assert list(csv_rows(out)[0]) == [
        "path",
        "class",
        "probability",
        "class_2",
        "probability_2",
        "error",
    ]
    result = cli(*base, *there, "--partition-size", "10", "--top", "2")
    assert result.exit_code == 0 and "41 written before, resumed" in result.stdout
    assert result.stdout.startswith(f"{out}: 0 images in ")
    before = out.read_bytes()
    result = cli(*base, *there, "--partition-size", "20", "--top", "2")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "its partition_size was 10, now 20" in result.stderr and out.read_bytes() == before
    result = cli(*base, *there, "--partition-size", "20", "--overwrite", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["partitions"] == 3 and len(csv_rows(out)) == IMAGES + 1


def test_a_list_file_reads_relative_paths_and_reports_missing_ones(job, tmp_path):
    listing = job["root"] / "some.txt"
    names = [os.path.relpath(p, job["root"]) for p in job["images"][:5]]
    listing.write_text("# five digits and a missing file\n\n" + "\n".join(names) + "\ngone.png\n")
    out = tmp_path / "preds.csv"
    summary = predict_to_file(job["config"], job["weights"], [listing], out, workers=0)
    assert (summary.images, summary.failed) == (6, 1)
    rows = csv_rows(out)
    assert [r["path"] for r in rows] == [str(job["root"] / n) for n in [*names, "gone.png"]]
    assert rows[-1]["error"] == "file not found" and all(not r["error"] for r in rows[:-1])


def test_a_small_folder_prints_as_images_did_and_a_large_one_asks_for_out(job, monkeypatch):
    one = os.path.dirname(job["images"][1])  # class1/: 13 images
    result = cli("predict", job["config"], "--weights", job["weights"], one, "--top", "1")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 13 and lines[0].startswith(f"{one}/d001.png: class ")
    monkeypatch.setattr("nbcnn.cli.evaluate.PRINT_LIMIT", 12)
    result = cli("predict", job["config"], "--weights", job["weights"], one)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "holds more than 12 images" in result.stderr and "--out preds.csv" in result.stderr


@pytest.mark.parametrize(
    "inputs, options, message",
    [
        (["missing.txt"], [], "missing.txt: list of image paths not found"),
        (["empty"], [], "holds no images"),
        (["x.npz"], [], "x.npz: arrays (.npz) are predicted without --out"),
        (["imgs"], ["--workers", "2"], None),  # no --out: see below
        (["imgs"], ["--weights", "tiny.yaml"], "tiny.yaml"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(job, tmp_path, monkeypatch, inputs, options, message):
    monkeypatch.chdir(job["root"])
    (job["root"] / "empty").mkdir(exist_ok=True)
    out = ["--out", tmp_path / "p.csv"]
    if options[:1] == ["--workers"]:
        out, message = [], "--workers goes with --out"
    weights = [] if "--weights" in options else ["--weights", job["weights"]]
    result = cli("predict", job["config"], *weights, *inputs, *options, *out, "--workers", "0")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("nbcnn: error: ") and message in result.stderr
    assert not (tmp_path / "p.csv").exists()


def test_out_must_be_csv_or_parquet_and_foreign_files_are_kept(job, tmp_path):
    base = ["predict", job["config"], "--weights", job["weights"], job["folder"], "--workers"]
    result = cli(*base, "0", "--out", tmp_path / "p.json")
    assert result.exit_code == 2 and "must end in .csv or .parquet" in result.stderr
    theirs = tmp_path / "theirs.csv"
    theirs.write_text("somebody's data\n")
    result = cli(*base, "0", "--out", theirs)
    assert result.exit_code == 2 and "has no journal theirs.csv.progress" in result.stderr
    assert theirs.read_text() == "somebody's data\n"


def test_a_killed_driver_leaves_a_job_that_resumes_whole(job, tmp_path):
    """SIGKILL in the middle of a run (the CSV may end in half a partition), then the same
    command again: every listed path once, the killed run's partitions not recomputed."""
    import signal
    import subprocess
    import sys
    import time

    listing = tmp_path / "many.txt"
    listing.write_text("\n".join(job["images"] * 500) + "\n")  # 20,000 lines
    out = tmp_path / "preds.csv"
    command = [sys.executable, "-m", "nbcnn.cli", "predict", job["config"], listing]
    command += ["--weights", job["weights"], "--out", str(out), "--workers", "0"]
    command += ["--partition-size", "100"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    progress = tmp_path / "preds.csv.progress"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and driver.poll() is None:
        if progress.exists() and progress.read_text().count("\n") > 3:
            break
        time.sleep(0.005)
    driver.send_signal(signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL  # killed mid-run, not finished
    killed = {r["partition"] for r in journal(progress)}
    assert 3 <= len(killed) < 200
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{len(killed) * 100:,} written before, resumed" in result.stdout
    records = journal(progress)
    assert sorted(r["partition"] for r in records) == list(range(200))  # each once
    rows = csv_rows(out)
    assert len(rows) == 20_000 and all(not r["error"] for r in rows)
    counts = {}
    for row in rows:
        counts[row["path"]] = counts.get(row["path"], 0) + 1
    assert set(counts) == set(job["images"]) and set(counts.values()) == {500}


def test_a_folder_trained_model_writes_its_class_names(job, tmp_path):
    """A ``dataset: folder`` config's classes are its training folder's subfolders, sorted:
    here the job's own folder (class0, class1, class2; .cache is hidden)."""
    import yaml

    doc = {**TINY, "train": {"data": {"dataset": "folder", "path": job["folder"]}}}
    doc["layers"] = [*TINY["layers"][:2], {"type": "Dense", "units": 3, "activation": "softmax"}]
    config = tmp_path / "three.yaml"
    config.write_text(yaml.safe_dump(doc))
    weights = tmp_path / "three.npz"
    nbcnn.load_model(config).initialize(1).save_weights(weights)
    out = tmp_path / "preds.parquet"
    predict_to_file(config, weights, [job["folder"]], out, top=5, workers=0)
    rows = parquet_rows(out)
    assert list(rows[0]) == [
        "path",
        *["class", "probability", "class_2", "probability_2", "class_3", "probability_3"],
        *["class_name", "class_name_2", "class_name_3", "error"],
    ]
    for row in rows:
        if not row["error"]:
            assert [row["class_name"], row["class_name_3"]] == [
                f"class{row['class']}",
                f"class{row['class_3']}",
            ]


def test_a_job_that_fails_before_its_first_partition_leaves_nothing(job, tmp_path, monkeypatch):
    """A scheduler that cannot be reached, a worker that cannot read the weights: refused
    with nothing created, as a refused training run creates no run folder."""
    from nbcnn.errors import DataError

    def unreadable(task):
        raise DataError("cannot read it on this worker (No such file)", file=task.weights)

    monkeypatch.setattr("nbcnn.batchpredict.driver.predict_partition", unreadable)
    for name in ("p.csv", "p.parquet"):
        with pytest.raises(DataError, match="on this worker"):
            predict_to_file(
                job["config"], job["weights"], [job["folder"]], tmp_path / name, workers=0
            )
    assert os.listdir(tmp_path) == []
