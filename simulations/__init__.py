"""Simulating populations of phones on one machine on Flower's simulation engine, with
device profiles, dropouts, heterogeneous ranks, non-IID data and reports.

Modules, one job each (see docs/simulation.md):

* :mod:`.scenario` — scenario TOML files (settings + ``[scenario]`` knobs), bundled ones in
  ``scenarios/``;
* :mod:`.population` — named distributions of phone profiles, deterministic per phone;
* :mod:`.behaviour` — a phone's round (policy, deadline, dropout stage) and the ClientApp
  hook that applies it;
* :mod:`.driver` — scenario → Flower simulation (real ClientApp/ServerApp) → run directory;
* :mod:`.trace`, :mod:`.metrics` — the phones' decision trace and per-round records;
* :mod:`.evaluation` — base / community / local-only / centralized on held-out data;
* :mod:`.plots`, :mod:`.report`, :mod:`.progress`, :mod:`.results` — PNGs, HTML, the live
  display, docs/results.md;
* :mod:`.resources` — peak memory of a process tree;
* :mod:`.local_grid` — the same apps in-process without Ray (tests);
* :mod:`.vectorized` — many phones' LoRA training batched through one base.
"""
