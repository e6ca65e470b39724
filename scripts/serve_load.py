#!/usr/bin/env python3
"""Load test for `lancet serve`: starts the server on a loopback port over MODEL, runs CLIENTS
concurrent clients x REQUESTS chat requests each (Python's standard library only), and prints
failed requests, p50/p99 latency, total generated tokens/s and the server's RSS after warm-up
and at the end. Bounded: it stops by itself.

usage: scripts/serve_load.py LANCET_BINARY MODEL_DIR [--clients 32] [--requests 20]
       [--max-tokens 16] [--parallel 2] [--stream]
"""
import argparse, http.client, json, os, socket, subprocess, sys, threading, time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lancet")
    ap.add_argument("model")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--stream", action="store_true")
    a = ap.parse_args()
    port = free_port()
    srv = subprocess.Popen([a.lancet, "-q", "serve", "-m", a.model, "--port", str(port),
                            "--parallel", str(a.parallel), "--max-queue", str(a.clients)])
    try:
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit("server did not start")

        lat, tokens, failed = [], [0], [0]
        lock = threading.Lock()
        warm = threading.Barrier(a.clients + 1)
        rss = {}

        def one(cid, i):
            body = {"messages": [{"role": "user", "content": f"client {cid} request {i}"}],
                    "max_tokens": a.max_tokens, "temperature": 0.7, "seed": cid * 1000 + i,
                    "stream": a.stream}
            t0 = time.monotonic()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            c.request("POST", "/v1/chat/completions", json.dumps(body),
                      {"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            c.close()
            dt = time.monotonic() - t0
            ok = r.status == 200
            n = 0
            if ok and not a.stream:
                n = json.loads(data)["usage"]["completion_tokens"]
            elif ok:
                ok = data.endswith(b"data: [DONE]\n\n")
                n = data.count(b'"content"') - 1
            with lock:
                if ok:
                    lat.append(dt)
                    tokens[0] += n
                else:
                    failed[0] += 1

        def client(cid):
            one(cid, 0)  # warm-up round
            warm.wait()
            for i in range(1, a.requests):
                one(cid, i)

        ts = [threading.Thread(target=client, args=(c,)) for c in range(a.clients)]
        for t in ts:
            t.start()
        warm.wait()
        rss["warm"] = rss_kib(srv.pid)
        t0 = time.monotonic()
        tok0 = tokens[0]
        for t in ts:
            t.join()
        wall = time.monotonic() - t0
        rss["end"] = rss_kib(srv.pid)
        lat.sort()
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
        print(f"{a.clients} clients x {a.requests} requests ({'stream' if a.stream else 'whole'}, "
              f"max_tokens {a.max_tokens}, --parallel {a.parallel}): {len(lat)} ok, "
              f"{failed[0]} failed")
        print(f"latency p50 {q(0.5) * 1000:.1f} ms, p99 {q(0.99) * 1000:.1f} ms; "
              f"{(tokens[0] - tok0) / wall:.0f} generated tokens/s after warm-up "
              f"({tokens[0] - tok0} tokens in {wall:.2f} s)")
        print(f"server RSS after warm-up {rss['warm'] / 1024:.1f} MiB, at the end "
              f"{rss['end'] / 1024:.1f} MiB")
        sys.exit(1 if failed[0] else 0)
    finally:
        srv.terminate()
        srv.wait()


if __name__ == "__main__":
    main()
