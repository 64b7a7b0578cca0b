"""``miros-rabbitmq keygen``: a new Fernet key."""

from __future__ import annotations

import click


@click.command()
def keygen() -> None:
    """Print a new Fernet key (for MESH_/SNOOP_*_ENCRYPTION_KEY)."""
    from cryptography.fernet import Fernet

    click.echo(Fernet.generate_key().decode())


command = keygen
