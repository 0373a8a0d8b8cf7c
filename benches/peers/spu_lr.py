#!/usr/bin/env python3
"""SPU (spu==0.9.5) logistic-regression training beside `tessera bench mpc`'s `lr_s`.

The workload of `src/mpc_bench/lr_bench.rs`: ROWS rows of 20 standard-normal features
(clamped to [-8, 8]), 10 held by each party, labels (0/1) from a logistic model with a 0.2
offset held by party 1; mini-batch gradient descent from w = 0, b = 0, batches of 1,000
rows in order, learning rate 0.5, L2 0.001 on w (not b), EPOCHS epochs; the model is
opened afterwards and its AUC on 10,000 held-out rows printed beside the clear float64
model's (trained identically in numpy). The data are drawn the same way but not from the
same random stream as the Rust benchmark.

Two SPU processes over brpc on 127.0.0.1 (as `../shared/peers/spu_mpc.py --link brpc`,
whose helpers this imports: pass --peers-dir if it is not at ../shared/peers from the
repository). run_s is the slower party's wall time of Runtime.run (the whole training, its
100 steps unrolled by the JAX compiler); compiling and the driver's secret sharing of the
inputs are timed apart (compile_s, make_shares_s), as in spu_mpc.py.

    python benches/peers/spu_lr.py --protocol SEMI2K --rows 100000
    python benches/peers/spu_lr.py --protocol CHEETAH --rows 10000 --sigmoid SEG3

--sigmoid chooses SPU's sigmoid: DEFAULT (SPU's default, the first-order approximation
0.5 + 0.125 x), SEG3 (three pieces: 0, 0.5 + 0.125 x, 1) or REAL (through exp and a
reciprocal). Tessera's is piecewise-linear with 33 breakpoints on [-8, 8].
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

FEATURES = 20
BATCH = 1000
LR = 0.5
L2 = 0.001
TEST_ROWS = 10_000


def peers_module(peers_dir: str):
    sys.path.insert(0, os.path.abspath(peers_dir))
    import spu_mpc  # noqa: E402  (the shared drawer's SPU harness: links, shares, timing)

    return spu_mpc


def config(a):
    import spu
    import spu.libspu as libspu

    cfg = libspu.RuntimeConfig(
        protocol=spu.parse_protocol_kind(a.protocol),
        field=spu.parse_field_type("FM64"),
        fxp_fraction_bits=18,
    )
    cfg.beaver_type = spu.parse_beaver_type("TrustedFirstParty")
    cfg.sigmoid_mode = getattr(libspu.RuntimeConfig.SigmoidMode, f"SIGMOID_{a.sigmoid}")
    return cfg


def synthetic(rng, rows):
    import numpy as np

    w = rng.uniform(-1, 1, FEATURES)
    x = np.clip(rng.standard_normal((rows, FEATURES)), -8, 8)
    z = x @ w + 0.2
    y = (rng.uniform(0, 1, rows) < 1 / (1 + np.exp(-z))).astype(np.float64)
    return x, y


def train_clear(x, y, epochs):
    import numpy as np

    w, b = np.zeros(FEATURES), 0.0
    for _ in range(epochs):
        for i in range(0, len(y) - BATCH + 1, BATCH):
            xb, yb = x[i:i + BATCH], y[i:i + BATCH]
            e = 1 / (1 + np.exp(-(xb @ w + b))) - yb
            w = w - LR * (xb.T @ e / BATCH + L2 * w)
            b = b - LR * e.mean()
    return w, b


def auc(scores, labels):
    import numpy as np

    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels.sum()
    neg = len(labels) - pos
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def run_party(a):
    import spu.libspu as libspu
    import spu.libspu.link as link

    m = peers_module(a.peers_dir)
    with open(a.job, "rb") as f:
        job = pickle.load(f)
    desc = link.Desc()
    desc.id = job["link_id"]
    for r, port in enumerate(job["ports"]):
        desc.add_party(f"p{r}", f"127.0.0.1:{port}")
    desc.recv_timeout_ms = 3600 * 1000
    desc.http_timeout_ms = 3600 * 1000
    desc.connect_retry_times = 120
    desc.connect_retry_interval_ms = 500
    lctx = link.create_brpc(desc, a.party)
    ex = libspu.Executable()
    ex.ParseFromString(job["exec"])
    shares = {k: m.share_from_bytes(v) for k, v in job["shares"][a.party].items()}
    times, outs = m.party_body(a.party, lctx, config(a), {"lr": ex}, shares)
    lctx.stop_link()
    with open(a.job + f".out{a.party}", "wb") as f:
        pickle.dump({"times": times, "outs": [m.share_to_bytes(s) for s in outs["lr"]],
                     "maxrss_mb": m.maxrss_mb()}, f)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--protocol", default="SEMI2K", help="SEMI2K | CHEETAH")
    ap.add_argument("--sigmoid", default="DEFAULT", choices=["DEFAULT", "MM1", "SEG3", "REAL"])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--peers-dir", default=os.path.join(here, "..", "..", "..", "shared", "peers"))
    ap.add_argument("--party", type=int, default=None)
    ap.add_argument("--job", default=None)
    a = ap.parse_args()
    if a.party is not None:
        run_party(a)
        return
    if a.rows % BATCH or a.rows <= 0:
        sys.exit(f"--rows must be a positive multiple of {BATCH}")

    import jax
    import jax.numpy as jnp
    import numpy as np
    import spu.api as spu_api
    import spu.libspu as libspu
    import spu.utils.frontend as spu_fe

    m = peers_module(a.peers_dir)
    rng = np.random.default_rng(a.seed)
    x_all, y_all = synthetic(rng, a.rows + TEST_ROWS)
    x, y = x_all[:a.rows], y_all[:a.rows]
    xt, yt = x_all[a.rows:], y_all[a.rows:]
    half = FEATURES // 2
    x0, x1 = x[:, :half].astype(np.float32), x[:, half:].astype(np.float32)
    y32 = y.astype(np.float32)
    steps, epochs = a.rows // BATCH, a.epochs

    def lr_train(x0, x1, y):
        xx = jnp.concatenate([x0, x1], axis=1)
        w, b = jnp.zeros((FEATURES,), jnp.float32), jnp.zeros((), jnp.float32)
        for _ in range(epochs):
            for i in range(steps):
                xb, yb = xx[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
                e = jax.nn.sigmoid(xb @ w + b) - yb
                w = w - LR * (xb.T @ e / BATCH + L2 * w)
                b = b - LR * jnp.mean(e)
        return w, b

    cfg = config(a)
    t = time.perf_counter()
    ex, _ = spu_fe.compile(spu_fe.Kind.JAX, lr_train, (x0, x1, y32), {}, ["x0", "x1", "y"],
                           [libspu.Visibility.VIS_SECRET] * 3,
                           lambda outs: [f"lr_out{i}" for i in range(len(outs))])
    compile_s = time.perf_counter() - t
    io = spu_api.Io(2, cfg)
    t = time.perf_counter()
    sh = {k: io.make_shares(v, libspu.Visibility.VIS_SECRET) for k, v in
          {"x0": x0, "x1": x1, "y": y32}.items()}
    share_s = time.perf_counter() - t
    tmpd = tempfile.mkdtemp(prefix="spulr_")
    jobf = os.path.join(tmpd, "job.pkl")
    with open(jobf, "wb") as f:
        pickle.dump({"link_id": f"lr{int(time.time() * 1000)}",
                     "ports": [m.free_port() for _ in range(2)],
                     "exec": ex.SerializeToString(),
                     "shares": [{k: m.share_to_bytes(v[r]) for k, v in sh.items()} for r in range(2)]}, f)
    lo0 = m.lo_bytes()
    base = [sys.executable, os.path.abspath(__file__), "--protocol", a.protocol, "--sigmoid", a.sigmoid,
            "--peers-dir", a.peers_dir, "--job", jobf]
    procs = [subprocess.Popen(base + ["--party", str(r)]) for r in range(2)]
    rcs = [p.wait() for p in procs]
    if any(rcs):
        sys.exit(f"party exit codes {rcs}")
    lo1 = m.lo_bytes()
    res = []
    for r in range(2):
        with open(jobf + f".out{r}", "rb") as f:
            res.append(pickle.load(f))
    outs = [[m.share_from_bytes(s) for s in rr["outs"]] for rr in res]
    w = np.asarray(io.reconstruct([outs[0][0], outs[1][0]]), dtype=np.float64)
    b = float(np.asarray(io.reconstruct([outs[0][1], outs[1][1]])))
    for fn_ in os.listdir(tmpd):
        os.remove(os.path.join(tmpd, fn_))
    os.rmdir(tmpd)
    wc, bc = train_clear(x, y, epochs)
    out = {
        "peer": "spu 0.9.5",
        "op": "lr",
        "protocol": f"{a.protocol}/FM64/fxp18/sigmoid_{a.sigmoid}",
        "link": "brpc",
        "rows": a.rows,
        "features": FEATURES,
        "epochs": epochs,
        "batch_rows": BATCH,
        "run_s": max(rr["times"]["lr"] for rr in res),
        "run_s_per_party": [round(rr["times"]["lr"], 3) for rr in res],
        "auc": auc(xt @ w + b, yt),
        "auc_clear": auc(xt @ wc + bc, yt),
        "compile_s": round(compile_s, 3),
        "make_shares_s": round(share_s, 3),
        "lo_bytes": (lo1 - lo0) if (lo0 is not None and lo1 is not None) else None,
        "party_peak_rss_mb": [round(rr["maxrss_mb"], 1) for rr in res],
    }
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
