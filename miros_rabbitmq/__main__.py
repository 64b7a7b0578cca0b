"""``python -m miros_rabbitmq`` runs the ``miros-rabbitmq`` command line."""

from __future__ import annotations

from miros_rabbitmq.cli import main

if __name__ == "__main__":
    main()
