"""``miros-rabbitmq cluster``: join a LAN mesh and a RabbitMQ cluster with federation.

Mixed mode is RabbitMQ's own exchange federation (the ``rabbitmq_federation``
plugin), configured through ``rabbitmqctl set_parameter`` / ``set_policy`` on
the brokers themselves; nothing of ours forwards messages. A broker that
*federates from* an upstream receives what is published to the upstream's
``miros.*`` exchanges (for the routing keys its own charts bind); doing that in
both directions (``cluster mixed``) makes a LAN broker and a cluster one
network. ``max-hops`` (default 2, so LAN A -> cluster -> LAN B) bounds the
path; RabbitMQ never delivers a message to a broker it has already visited, so
the two directions do not loop. A message that still reaches a chart twice (a
LAN node publishes to several federated brokers) is dropped by the receiver's
duplicate filter. See docs/scaling.md for the recipe.

rabbitmqctl must reach the node: run it on the broker's machine (Debian's
``rabbitmqctl`` switches to the ``rabbitmq`` user and its Erlang cookie) or
give ``--ctl`` a wrapper. The upstream URL (with its password) is stored in
the broker's runtime parameters, readable by its administrators; this command
never prints it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence

import click

from miros_rabbitmq.config import mask_url

POLICY = "miros-federation"
#: the three networks' exchanges (see miros_rabbitmq.mesh.nets)
EXCHANGE_PATTERN = r"^miros\.(mesh|snoop\.trace|snoop\.spy)\.exchange$"
DEFAULT_MAX_HOPS = 2
DEFAULT_EXPIRES_MS = 60 * 60 * 1000  # what an unreachable downstream may miss: kept 1 h upstream
_URL_SECRET = re.compile(r"(amqps?://[^:/@\s\"']+:)[^@\s\"']*@")


class ClusterCommandError(click.ClickException):
    """A rabbitmqctl call that failed, with its output (passwords masked)."""


def hide_secrets(text: str) -> str:
    """``text`` with the password of every amqp(s) URL in it masked."""
    return _URL_SECRET.sub(r"\1******@", text)


def _ctl_path(ctl: str) -> str:
    found = shutil.which(ctl)
    if found is None:
        raise ClusterCommandError(
            f"{ctl} not found: run this on a broker's machine (Debian: apt install "
            "rabbitmq-server) or pass --ctl")
    return found


def rabbitmqctl(ctl: str, node: str | None, *args: str, timeout: float = 60.0) -> str:
    """Run ``rabbitmqctl [-n NODE] ARGS``; its stdout, or ClusterCommandError."""
    argv = [_ctl_path(ctl), *(["-n", node] if node else []), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ClusterCommandError(f"rabbitmqctl {args[0]} on {node or 'the local node'} "
                                  f"did not answer within {timeout:g} s") from None
    if done.returncode != 0:
        output = hide_secrets((done.stdout + done.stderr).strip())[-1500:]
        raise ClusterCommandError(f"rabbitmqctl {args[0]} on {node or 'the local node'} "
                                  f"failed ({done.returncode}): {output}")
    return done.stdout


def upstream_definition(urls: Sequence[str], *, max_hops: int = DEFAULT_MAX_HOPS,
                        expires_ms: int = DEFAULT_EXPIRES_MS) -> dict[str, object]:
    """The federation-upstream parameter: several URLs = one cluster, tried in turn."""
    for url in urls:
        if not url.startswith(("amqp://", "amqps://")):
            raise click.BadParameter(f"not an amqp:// or amqps:// URL: {mask_url(url)}")
    return {
        "uri": list(urls) if len(urls) > 1 else urls[0],
        "max-hops": max_hops,
        "expires": expires_ms,
        "ack-mode": "on-confirm",  # a message leaves the upstream once the downstream has it
        "trust-user-id": False,
    }


def federate(*, node: str | None, name: str, upstream: Sequence[str], ctl: str = "rabbitmqctl",
             vhost: str = "/", max_hops: int = DEFAULT_MAX_HOPS,
             expires_ms: int = DEFAULT_EXPIRES_MS) -> None:
    """Make broker ``node`` receive what is published on ``upstream``'s miros exchanges."""
    definition = upstream_definition(upstream, max_hops=max_hops, expires_ms=expires_ms)
    rabbitmqctl(ctl, node, "set_parameter", "-p", vhost, "federation-upstream", name,
                json.dumps(definition))
    rabbitmqctl(ctl, node, "set_policy", "-p", vhost, "--apply-to", "exchanges",
                "--priority", "10", POLICY, EXCHANGE_PATTERN,
                json.dumps({"federation-upstream-set": "all"}))


def unfederate(*, node: str | None, name: str, ctl: str = "rabbitmqctl", vhost: str = "/") -> None:
    """Remove upstream ``name`` from broker ``node`` (the policy goes with the last one)."""
    rabbitmqctl(ctl, node, "clear_parameter", "-p", vhost, "federation-upstream", name)
    left = rabbitmqctl(ctl, node, "list_parameters", "-p", vhost, "--formatter", "json")
    if not any(p.get("component") == "federation-upstream" for p in json.loads(left or "[]")):
        rabbitmqctl(ctl, node, "clear_policy", "-p", vhost, POLICY)


def link_status(*, node: str | None, ctl: str = "rabbitmqctl") -> list[dict[str, object]]:
    """The federation links of broker ``node``: upstream, exchange, status, error.

    Through ``eval`` of the plugin's status function rather than
    ``rabbitmqctl federation_status``: rabbitmqctl only knows a plugin's commands
    when the plugin is listed in the enabled-plugins file *it* reads, which need
    not be the node's.
    """
    out = rabbitmqctl(ctl, node, "--formatter", "json", "eval",
                      "rabbit_federation_status:status().")
    try:
        answer = json.loads(out or "{}")
    except ValueError:
        raise ClusterCommandError(f"unexpected answer from {node}: {hide_secrets(out)[:300]}") \
            from None
    links = answer.get("value") if isinstance(answer, dict) else None
    if not isinstance(links, list):
        raise ClusterCommandError(f"no federation status from {node or 'the local node'} "
                                  "(is the rabbitmq_federation plugin enabled?)")
    for link in links:  # the URI is in here; never show its password
        for key in ("uri", "local_connection"):
            if isinstance(link.get(key), str):
                link[key] = hide_secrets(str(link[key]))
    return links


# --------------------------------------------------------------------------- click commands

_node = click.option("--node", "-n", default=None,
                     help="RabbitMQ node name (rabbit@host) to configure; default: the local node.")
_ctl = click.option("--ctl", default="rabbitmqctl", show_default=True,
                    help="The rabbitmqctl to run.")
_vhost = click.option("--vhost", default="/", show_default=True, help="Virtual host.")
_hops = click.option("--max-hops", default=DEFAULT_MAX_HOPS, show_default=True,
                     type=click.IntRange(1, 10),
                     help="Federation links a message may cross (2: LAN -> cluster -> LAN).")


def _urls(value: str) -> list[str]:
    return [u.strip() for u in value.split(",") if u.strip()]


@click.group("cluster")
def cluster() -> None:
    """Mixed mode: federate LAN-mesh brokers with a RabbitMQ cluster (see docs/scaling.md).

    Charts join a cluster directly with brokers=[...] or RABBIT_CLUSTER in .env;
    these commands only configure RabbitMQ's federation plugin on brokers.
    """


@cluster.command("federate")
@_node
@click.option("--upstream", required=True,
              help="Broker URL(s) to receive from, comma-separated (a cluster's nodes).")
@click.option("--name", default="miros-upstream", show_default=True, help="Upstream name.")
@_hops
@_vhost
@_ctl
def federate_command(node: str | None, upstream: str, name: str, max_hops: int, vhost: str,
                     ctl: str) -> None:
    """Make NODE receive what charts publish on UPSTREAM (one direction)."""
    urls = _urls(upstream)
    federate(node=node, name=name, upstream=urls, ctl=ctl, vhost=vhost, max_hops=max_hops)
    click.echo(f"{node or 'local node'}: federates miros exchanges from "
               + ", ".join(mask_url(u) for u in urls) + f" (upstream {name!r})")


@cluster.command("mixed")
@click.option("--lan-node", required=True, help="Node name of the LAN mesh broker.")
@click.option("--lan-url", required=True,
              help="URL the cluster reaches the LAN broker at.")
@click.option("--cluster-node", required=True, help="Node name of one cluster node.")
@click.option("--cluster-url", required=True,
              help="URL(s) the LAN broker reaches the cluster at, comma-separated.")
@click.option("--name", default=None, help="Upstream name suffix (default: the LAN node name).")
@_hops
@_vhost
@_ctl
def mixed_command(lan_node: str, lan_url: str, cluster_node: str, cluster_url: str,
                  name: str | None, max_hops: int, vhost: str, ctl: str) -> None:
    """Federate a LAN broker and a cluster both ways: their charts become one network."""
    suffix = re.sub(r"[^A-Za-z0-9_.-]", "_", name or lan_node)
    federate(node=lan_node, name="miros-cluster", upstream=_urls(cluster_url), ctl=ctl,
             vhost=vhost, max_hops=max_hops)
    federate(node=cluster_node, name=f"miros-lan-{suffix}", upstream=[lan_url], ctl=ctl,
             vhost=vhost, max_hops=max_hops)
    click.echo(f"{lan_node} <-> {cluster_node}: federated both ways "
               f"(upstreams 'miros-cluster' and 'miros-lan-{suffix}', max-hops {max_hops})")


@cluster.command("unfederate")
@_node
@click.option("--name", required=True, help="Upstream name to remove.")
@_vhost
@_ctl
def unfederate_command(node: str | None, name: str, vhost: str, ctl: str) -> None:
    """Remove one federation upstream from NODE."""
    unfederate(node=node, name=name, ctl=ctl, vhost=vhost)
    click.echo(f"{node or 'local node'}: upstream {name!r} removed")


@cluster.command("status")
@_node
@_ctl
def status_command(node: str | None, ctl: str) -> None:
    """Show NODE's federation links (running, starting or their error)."""
    links = link_status(node=node, ctl=ctl)
    if not links:
        click.echo(f"{node or 'local node'}: no federation links")
    for link in links:
        click.echo(f"{link.get('upstream')} {link.get('exchange')} {link.get('status')} "
                   f"{link.get('error') or ''}".rstrip())


command = cluster  # what miros_rabbitmq.cli.COMMANDS imports
