"""Deploying fedlora for real: keys, certificates, Flower command lines, local orchestration.

Torch-free and server-free (it imports neither ``fedlora.server`` nor ``fedlora.privacy``):
the CLI modules (``fedlora.cli.keys``, ``fedlora.cli.deploy``) glue it to the signing key
and the hub. One module, one job:

* :mod:`.files` — atomic writes, 0600 for secrets, no silent overwrite;
* :mod:`.tls` / :mod:`.pki` — the private CA and the server certificate;
* :mod:`.node_keys` — SuperNode authentication keys (what Flower's node auth reads);
* :mod:`.layout` — where a deployment directory keeps everything;
* :mod:`.flower_config` / :mod:`.flower_app` — the files Flower's CLI reads;
* :mod:`.commands` — the exact ``flower-superlink`` / ``flower-supernode`` / ``flwr`` lines;
* :mod:`.flwr_cli` — running ``flwr`` (register nodes, submit and watch runs);
* :mod:`.services` / :mod:`.local` — process supervision and a whole deployment on loopback;
* :mod:`.hub_client` — a phone's HTTPS client for the hub (CA pinned, ETags).

See docs/deployment.md.
"""
