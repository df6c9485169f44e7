"""Serving benchmark: `transferkit serve` against the tutorial's server (bench/naive_server.py:
one image per request, the model called in the request handler), side by side in one run.

    python bench/serve.py [--run RUN] [--requests 32] [--clients 1,4,16] [--bad-total 2000]

Without --run, the default model is trained on ../shared's hymenoptera_data first (cached
features: seconds when warm). Each server is its own process on a free loopback port; the
clients are threads here, each with a keep-alive connection, sending the dataset's val photos
as multipart uploads. Per server and client count: throughput, p50/p95/p99 latency, errors, the
server's CPU seconds (user+sys) and RSS before and after. Besides the default (on a CPU: the
bundle converted to ONNX Runtime), `--engine torch` (PyTorch) and `--max-batch 1` (no batching)
show what each part is worth. Then transferkit alone takes
`--bad-total` requests from 16 clients, 10% of them bad uploads (text, truncated JPEG, empty
body, decompression bomb, wrong content type): it must answer none with a 5xx, still answer
afterwards, and grow its RSS by under 100 MB. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "assets" / "datasets"


def multipart(name: str, data: bytes, ctype: str = "image/jpeg") -> tuple[bytes, str]:
    boundary = "transferkit-bench-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def bad_uploads(photo: bytes) -> list[tuple[bytes, str]]:
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, "PNG")
    return [multipart("notes.txt", b"not an image at all", "text/plain"), multipart("cut.jpg", photo[: len(photo) // 3]),
            (b"", "image/jpeg"), multipart("bomb.png", bomb.getvalue(), "image/png"),
            (photo, "application/json")]


class Server:
    """A server process on a free loopback port, its CPU time and memory read from /proc."""

    def __init__(self, name: str, cmd: list[str], env: dict | None = None):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        log, deadline = [], time.monotonic() + 180
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            log.append(line)
            found = re.search(r"(?:^serving .* at|Uvicorn running on) http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
            if not line and self.proc.poll() is not None:
                raise SystemExit(f"{name} did not start:\n{''.join(log)}")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()  # drain its log

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def load(port: int, bodies: list[tuple[bytes, str]], clients: int, per_client: int) -> dict:
    """`clients` threads, each sending `per_client` requests one after another."""
    results: list[tuple[float, int]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for i in range(per_client):
            body, ctype = bodies[(k * per_client + i) % len(bodies)]
            started = time.perf_counter()
            try:
                conn.request("POST", "/predict", body, {"Content-Type": ctype})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = -1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                results.append((time.perf_counter() - started, status))
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latency = np.array([r[0] for r in results]) * 1000
    statuses = [r[1] for r in results]
    return {"requests": len(results), "wall_s": wall, "throughput": len(results) / wall,
            "p50": float(np.percentile(latency, 50)), "p95": float(np.percentile(latency, 95)),
            "p99": float(np.percentile(latency, 99)), "errors": sum(s != 200 for s in statuses),
            "5xx": sum(s >= 500 or s < 0 for s in statuses), "4xx": sum(400 <= s < 500 for s in statuses)}


def default_run(workdir: Path) -> Path:
    data = SHARED / "hymenoptera_data"
    if not data.is_dir():
        raise SystemExit(f"{data} is absent: pass --run RUN")
    run = workdir / "run"
    subprocess.run([sys.executable, "-m", "transferkit", "train", str(data), "--out", str(run), "--quiet"], check=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run folder to serve (default: train one on hymenoptera_data)")
    parser.add_argument("--images", help="folder of photos to send (default: hymenoptera_data/val)")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=32, help="requests per client")
    parser.add_argument("--bad-total", type=int, default=2000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tk-serve-bench-"))
    run = Path(args.run) if args.run else default_run(workdir)
    photos = sorted((Path(args.images) if args.images else SHARED / "hymenoptera_data" / "val").rglob("*.jpg"))[:64]
    bodies = [multipart(p.name, p.read_bytes()) for p in photos]
    clients = [int(c) for c in args.clients.split(",")]
    py = sys.executable
    servers = {
        "naive (tutorial)": ([py, "-m", "uvicorn", "naive_server:app", "--app-dir", str(HERE), "--port", "0",
                              "--no-access-log"], {"TRANSFERKIT_NAIVE_RUN": str(run)}),
        "transferkit, PyTorch": ([py, "-m", "transferkit", "serve", str(run), "--port", "0", "--engine", "torch"], {}),
        "transferkit, --max-batch 1": ([py, "-m", "transferkit", "serve", str(run), "--port", "0", "--max-batch", "1"], {}),
        "transferkit serve": ([py, "-m", "transferkit", "serve", str(run), "--port", "0"], {}),
    }
    rows = []
    for name, (cmd, env) in servers.items():
        server = Server(name, cmd, env)
        load(server.port, bodies[:4], 1, 4)  # warm-up: first-call allocations, lazy imports
        for n in clients:
            rss, cpu = server.rss_mb(), server.cpu_seconds()
            result = load(server.port, bodies, n, args.requests)
            rows.append({"server": name, "clients": n, **result, "server_cpu_s": server.cpu_seconds() - cpu,
                         "rss_before_mb": rss, "rss_after_mb": server.rss_mb()})
            print(_row(rows[-1]), flush=True)
        server.stop()
    print()
    print(f"{'server':<28} {'clients':>7} {'req':>5} {'img/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
          f"{'errors':>6} {'wall s':>6} {'srv cpu s':>9} {'RSS MB':>13}")
    for row in rows:
        print(_row(row))
    for n in clients:
        naive = next(r for r in rows if r["server"].startswith("naive") and r["clients"] == n)
        ours = next(r for r in rows if r["server"] == "transferkit serve" and r["clients"] == n)
        print(f"{n:>2} clients: throughput transferkit / naive = {ours['throughput'] / naive['throughput']:.2f}x, "
              f"p95 {ours['p95']:.0f} ms vs {naive['p95']:.0f} ms")

    # bad uploads mixed in: 1 in 10, after a warm-up at the same load (the allocator's pools fill up
    # with the first large batches: that is not growth)
    server = Server("transferkit serve", servers["transferkit serve"][0])
    started_rss = server.rss_mb()
    load(server.port, bodies, 16, 4)
    bad = bad_uploads(photos[0].read_bytes())
    mixed = [bad[i // 10 % len(bad)] if i % 10 == 9 else bodies[i % len(bodies)] for i in range(200)]
    rss = server.rss_mb()
    result = load(server.port, mixed, 16, args.bad_total // 16)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/health")
    alive = conn.getresponse().status == 200
    grown = server.rss_mb() - rss
    server.stop()
    print(f"\n{result['requests']} requests from 16 clients, 10% bad uploads: {result['5xx']} 5xx, "
          f"{result['4xx']} 4xx (the bad ones), {result['throughput']:.1f} req/s, p95 {result['p95']:.0f} ms; "
          f"answers afterwards: {alive}; RSS {started_rss:.0f} MB at start, {rss:.0f} after the warm-up, "
          f"{rss + grown:.0f} after ({grown:+.0f} MB)")
    print(f"client process CPU: {sum(resource.getrusage(resource.RUSAGE_SELF)[:2]):.1f} s")
    (workdir / "serve_bench.json").write_text(json.dumps({"rows": rows, "bad": {**result, "alive": alive,
                                                                                 "rss_growth_mb": grown}}, indent=2))
    print(f"results: {workdir / 'serve_bench.json'}")


def _row(r: dict) -> str:
    return (f"{r['server']:<28} {r['clients']:>7} {r['requests']:>5} {r['throughput']:7.1f} {r['p50']:7.0f} "
            f"{r['p95']:7.0f} {r['p99']:7.0f} {r['errors']:>6} {r['wall_s']:6.1f} {r['server_cpu_s']:9.1f} "
            f"{r['rss_before_mb']:6.0f}->{r['rss_after_mb']:<6.0f}")


if __name__ == "__main__":
    main()
