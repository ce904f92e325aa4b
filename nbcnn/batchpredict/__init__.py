"""Batch prediction at scale: ``nbcnn predict ... --out preds.csv|preds.parquet``.

Millions of images, cut into partitions of files, predicted on Dask (a local cluster sized to
the machine, or a running scheduler) with the model loaded once per worker, the rows streamed
to a CSV file or a folder of Parquet files as partitions finish, resumable after a crash or a
Ctrl-C. docs/batch-prediction.md is the user's guide.

- :mod:`~nbcnn.batchpredict.inputs`: image files, folders and lists, enumerated lazily
- :mod:`~nbcnn.batchpredict.worker`: one partition on a worker; the per-process model cache
- :mod:`~nbcnn.batchpredict.output`: CSV and Parquet outputs and their journal
- :mod:`~nbcnn.batchpredict.driver`: :func:`predict_to_file`, the bounded queue of partitions
"""

from nbcnn.batchpredict.driver import BatchSummary, predict_to_file

__all__ = ["BatchSummary", "predict_to_file"]
