"""``python -m nbcnn.cli``: the same as the ``nbcnn`` command."""

from nbcnn.cli import main

main()
