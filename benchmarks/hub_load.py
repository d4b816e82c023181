"""Loopback load on the hub's adapter download: requests/s and latency at concurrency 1/16/64.

Starts ``fedlora hub serve`` (uvicorn, one process) in a subprocess on 127.0.0.1 with a
freshly seeded registry in a temporary ``FEDLORA_HOME``, then drives
``GET /v1/adapters/latest?rank=R`` with an ``httpx.AsyncClient`` at each concurrency level
(bounded in request count and time; only loopback is ever contacted). Also measures the
conditional-GET path (``If-None-Match`` → 304), which is what phones that already have the
latest adapter cost the hub. Prints a line per level and, last, one JSON line with
``rps_c1``, ``p99_ms_c1``, ``rps_c16``, ``p99_ms_c16``, ``rps_c64``, ``p99_ms_c64``,
``rps_304_c16``, ``p99_ms_304_c16`` and ``adapter_bytes``.

Note: client and server share the machine's cores, so the numbers are a floor for the hub.

    python benchmarks/hub_load.py [--requests 2000] [--hidden 256] [--layers 8] [--rank 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_hub(home: Path, port: int, hidden: int, layers: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FEDLORA_HOME": str(home)}
    env.pop("FEDLORA_DATABASE_URL", None)
    cli = [sys.executable, "-m", "fedlora.server.hub_cli"]
    seed = [*cli, "seed-demo", "--rounds", "3", "--hidden", str(hidden), "--layers", str(layers)]
    subprocess.run(seed, env=env, check=True, capture_output=True)
    serve = [*cli, "serve", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(
        [*serve, "--log-level", "warning", "--no-access-log"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"hub exited early: {err[-2000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("hub did not become ready")


async def _level(
    url: str, concurrency: int, total: int, headers: dict[str, str], max_s: float
) -> dict[str, float]:
    """``total`` requests (or until ``max_s``) by ``concurrency`` workers; latency stats."""
    latencies: list[float] = []
    errors = 0
    received = 0
    issued = 0
    deadline = time.perf_counter() + max_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal errors, received, issued
            while issued < total and time.perf_counter() < deadline:
                issued += 1
                t0 = time.perf_counter()
                try:
                    r = await client.get(url, headers=headers)
                    if r.status_code not in (200, 304):
                        errors += 1
                    received += len(r.content)
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)

    def pct(q: float) -> float:
        return latencies[min(n - 1, int(q * n))] * 1000 if n else float("nan")

    return {
        "requests": n,
        "seconds": elapsed,
        "rps": n / elapsed if elapsed else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": errors,
        "mb_per_s": received / elapsed / 1e6 if elapsed else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per level")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="time cap per level")
    ap.add_argument("--hidden", type=int, default=256, help="demo adapter width")
    ap.add_argument("--layers", type=int, default=8, help="demo adapter depth")
    ap.add_argument("--rank", type=int, default=8, help="rank of the view downloaded")
    ap.add_argument("--levels", default="1,16,64", help="concurrency levels")
    args = ap.parse_args()

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v1/adapters/latest?rank={args.rank}"
    with tempfile.TemporaryDirectory(prefix="fedlora-hub-load-") as tmp:
        proc = _start_hub(Path(tmp), port, args.hidden, args.layers)
        try:
            _wait_ready(base, proc)
            first = httpx.get(url, timeout=10)
            first.raise_for_status()
            size = len(first.content)
            etag = first.headers["etag"]
            print(f"hub at {base}; adapter view r={args.rank}: {size} bytes, ETag {etag[:14]}…")
            asyncio.run(_level(url, 4, 100, {}, 10))  # warm-up
            summary: dict[str, float] = {"adapter_bytes": size}
            for c in (int(x) for x in args.levels.split(",")):
                res = asyncio.run(_level(url, c, args.requests, {}, args.max_seconds))
                print(
                    f"c={c:>3}: {res['requests']:>5} req in {res['seconds']:.2f} s → "
                    f"{res['rps']:8.1f} req/s, p50 {res['p50_ms']:.1f} ms, "
                    f"p99 {res['p99_ms']:.1f} ms, {res['mb_per_s']:.1f} MB/s, "
                    f"errors {res['errors']:.0f}"
                )
                summary[f"rps_c{c}"] = round(res["rps"], 1)
                summary[f"p99_ms_c{c}"] = round(res["p99_ms"], 2)
                summary[f"errors_c{c}"] = res["errors"]
            cond = asyncio.run(
                _level(url, 16, args.requests, {"If-None-Match": etag}, args.max_seconds)
            )
            print(
                f"c= 16 If-None-Match (304): {cond['rps']:8.1f} req/s, "
                f"p99 {cond['p99_ms']:.1f} ms, errors {cond['errors']:.0f}"
            )
            summary["rps_304_c16"] = round(cond["rps"], 1)
            summary["p99_ms_304_c16"] = round(cond["p99_ms"], 2)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
