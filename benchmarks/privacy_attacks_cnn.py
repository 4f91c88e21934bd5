"""Privacy attacks on a Crowdlearning follower of a CNN (the paper's CNN, 28×28×1, Fashion-MNIST).

One group of 5 devices (4 pieces, METIS, cut by feature map), each holding ``--samples``
training images (seeded subset), one epoch, batch 32, lr 0.05.  The followers of the group are
watched through :class:`crowdlearn.privacy.attacks.views.SliceNetFollowerView`: each keeps the
sealed boundary payloads delivered to it and opens them as their recipient does.  For every pass
and every follower holding channels of the first convolution, its payload gives, mini-batch by
mini-batch, the dominator's pre-activation maps of those channels (``z = x ⊛ K[..., P]``, no
bias); for every follower holding units of the last hidden layer, the output errors.

Attacks (the attacker never sees the dominator's images; only the scoring does):

* **labels**: argmin of each output-error row (negative only at the label);
* **images from the channel maps**: ``z`` is linear in ``x`` (``conv_sums_operator``); with the
  filters the follower solves it (``min_norm``: least squares / minimum norm, ``z·pinv(A)``;
  ``mean_centred``: the prior mean plus the minimum-norm correction, as
  :func:`~crowdlearn.privacy.attacks.views.reconstruct_from_weighted_sums`).  Filters the follower can hold: the pass's
  **start filters** (it was the previous dominator: the first convolution is handed over at
  every shuffle), exact for the first mini-batch and stale by one step more per later batch;
  the **filters after the pass** (it is the next dominator), stale by the whole pass;
* baselines that use nothing from the run: the public mean image and a random public image.

Scores: PSNR (dB, pixels in [0, 1], an exact image counted as 100), SSIM, and clf (the
fraction a logistic regression trained on real training images assigns to the true label;
:class:`crowdlearn.privacy.attacks.metrics.ReferenceClassifier`), averaged over the
attacked passes' images.

Run::

    .venv/bin/python benchmarks/privacy_attacks_cnn.py [--seed 0] [--samples 256]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def run(seed: int, samples: int, devices: int = 5) -> dict:
    from crowdlearn.config import from_dict
    from crowdlearn.data.datasets import load_dataset
    from crowdlearn.experiment import Simulation
    from crowdlearn.privacy.attacks import metrics
    from crowdlearn.privacy.attacks.views import (
        conv_sums_operator,
        labels_from_output_errors,
        watch_followers,
    )

    ds = load_dataset("fashion_mnist")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(ds.x_train), devices * samples, replace=False)
    parts = [np.sort(picked[i * samples:(i + 1) * samples]) for i in range(devices)]
    cfg = from_dict({"protocol": "crowdlearning", "rounds": 1, "seed": seed,
                     "data": {"dataset": "fashion_mnist"},
                     "fleet": {"devices": devices, "cells": 1},
                     "slicenet": {"model": "paper-cnn", "group_size": devices,
                                  "strategy": "metis", "batch_size": 32, "lr": 0.05}})
    sim = Simulation(cfg, parts=parts)
    handles, views = watch_followers(sim, batch_size=32)
    lay = sim.ctx.extra["layout"]
    t0 = time.perf_counter()
    res = sim.run()
    wall = time.perf_counter() - t0
    st = lay.first_stage
    shape = tuple(ds.image_shape)
    half = len(ds.x_test) // 2
    public = np.asarray(ds.x_test[:half], np.float64)
    mean = public.mean(axis=0)
    clf = metrics.ReferenceClassifier(ds.x_train, ds.y_train, seed=seed)
    ceiling = clf.score_real(ds.x_test, ds.y_test)
    x_all = np.asarray(ds.x_train, np.float64)
    y_all = np.asarray(ds.y_train)
    cells: dict[str, list] = {}
    labels_ok = labels_n = 0
    pieces_seen = []

    def score(key, truth, xh, labels):
        xh = np.clip(xh, 0, 1)
        p = np.minimum(metrics.psnr(truth, xh), 100.0)
        q = metrics.ssim(truth, xh, image_shape=shape)
        cells.setdefault(key, []).append((np.asarray(p).reshape(-1), np.asarray(q).reshape(-1),
                                          clf.accuracy(xh, labels) * len(truth), len(truth)))

    for dom in handles:
        if type(dom.job).__name__ != "SlicePassJob" or dom.job.batches is None:
            continue
        attempt, node = dom.job.key[1], dom.job.node
        rec = dom.job.promise.value()
        start_k = np.asarray(rec.start[st.kernel], np.float64)
        # the dominator's new values, part by part (the first convolution is all its own)
        flat = np.full(lay.num_params, np.nan)
        new_parts = sim.executor.result(dom)[:len(dom.job.parts)]
        for (idx, _, _), vals in zip(dom.job.parts, new_parts, strict=True):
            flat[np.asarray(idx)] = np.asarray(vals, np.float64)
        lo = lay.offsets[st.kernel]
        end_k = flat[lo:lo + start_k.size].reshape(start_k.shape)
        assert not np.isnan(end_k).any()
        batches = [b[b >= 0] for b in np.asarray(dom.job.batches)]
        for v in views.values():
            if (attempt, node) not in v.payloads:
                continue
            got = v.sums_from(node, attempt)
            for e, rows in zip(got["errors"], batches if got["errors"] else [], strict=True):
                labels_ok += int(np.sum(labels_from_output_errors(e) == y_all[rows]))
                labels_n += len(rows)
            if not len(got["units"]):
                continue
            pieces_seen.append(len(got["units"]))
            ops = {name: conv_sums_operator(k, shape, strides=st.strides, padding=st.padding,
                                            channels=got["units"])
                   for name, k in (("start", start_k), ("end", end_k))}
            # every mini-batch's maps at once (one pseudo-inverse per filters and method)
            rows = np.concatenate(batches)
            first = len(batches[0])
            truth, labels = x_all[rows], y_all[rows]
            zf = np.concatenate([z.reshape(len(z), -1) for z in got["z"]])
            for name, a in ops.items():
                pinv = np.linalg.pinv(a)
                for method in ("min_norm", "mean_centred"):
                    xh = zf @ pinv if method == "min_norm" else mean + (zf - mean @ a) @ pinv
                    score(f"{name}|{method}|all", truth, xh, labels)
                    score(f"{name}|{method}|first", truth[:first], xh[:first], labels[:first])
            score("prior|mean|all", truth, np.tile(mean, (len(rows), 1)), labels)
            score("random|public|all", truth, public[rng.integers(len(public), size=len(rows))],
                  labels)
    out = {}
    for key, vals in cells.items():
        p = np.concatenate([v[0] for v in vals])
        q = np.concatenate([v[1] for v in vals])
        out[key] = {"psnr": float(p.mean()), "ssim": float(q.mean()),
                    "clf": float(sum(v[2] for v in vals) / sum(v[3] for v in vals)),
                    "images": int(p.size), "exact": int(np.sum(p >= 100.0))}
    return {"cells": out, "labels_ok": labels_ok, "labels_n": labels_n,
            "channels_per_follower": pieces_seen, "clf_ceiling": ceiling,
            "accuracy": res.metrics[-1]["accuracy"] if res.metrics else None,
            "completed": res.summary["completed"], "wall_s": wall,
            "first_conv": f"{st.ksize[0]}x{st.ksize[1]}, {st.channels} filters, maps "
                          f"{st.z_shape[0]}x{st.z_shape[1]}"}


ROWS = [("prior|mean|all", "unknown", "public mean image (no attack)", "all"),
        ("random|public|all", "unknown", "random public image (no attack)", "all"),
        ("start|min_norm|first", "pass start (previous dominator)", "min_norm", "first"),
        ("start|mean_centred|first", "pass start (previous dominator)", "mean_centred", "first"),
        ("start|min_norm|all", "pass start (previous dominator)", "min_norm", "all"),
        ("start|mean_centred|all", "pass start (previous dominator)", "mean_centred", "all"),
        ("end|min_norm|all", "after the pass (next dominator)", "min_norm", "all"),
        ("end|mean_centred|all", "after the pass (next dominator)", "mean_centred", "all")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=256, help="training images per device")
    a = ap.parse_args()
    t0 = time.perf_counter()
    r = run(a.seed, a.samples)
    print(f"seed {a.seed}; 5 devices x {a.samples} images; first convolution {r['first_conv']}; "
          f"channels per attacking follower {r['channels_per_follower']}; run completed "
          f"{r['completed']}, accuracy {r['accuracy']}; classifier ceiling "
          f"{r['clf_ceiling']:.3f}; simulation {r['wall_s']:.0f} s, all "
          f"{time.perf_counter() - t0:.0f} s")
    print("| filters the follower holds | method | mini-batches | images | PSNR (dB) | exact | "
          "SSIM | clf |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for key, who, method, which in ROWS:
        c = r["cells"].get(key)
        if c is None:
            continue
        print(f"| {who} | {method} | {which} | {c['images']} | {c['psnr']:.1f} | {c['exact']} | "
              f"{c['ssim']:.3f} | {c['clf']:.3f} |")
    print(f"| not needed | labels: argmin of the output errors | all | {r['labels_n']} | — | — | "
          f"— | {r['labels_ok']}/{r['labels_n']} labels exact |")


if __name__ == "__main__":
    main()
