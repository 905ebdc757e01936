"""Second opinion on close calls (docs/watchlist-quality.md): dlib's ResNet (plugins/lfr-dlib, with
dlib-bin and face_recognition_models importable) re-scores the top SFace candidate of the searches
whose SFace score lies in a band [LO, HI]; the two scores are z-normalised on 400 crowd faces (left
out of the searches) and fused. 400 listed, one photo, seeds 1-5.

    python tools/measure_second_opinion.py need LO HI      # which photos dlib must embed
    python tools/measure_second_opinion.py embed LO HI     # embed them with dlib
    python tools/measure_second_opinion.py eval LO HI      # TPIR plain vs fused, close calls
Dataset: $LFR_EVAL_DATA (default ../shared/data/lfw-dev); work files in $LFR_WORK (default .).
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from lfr.eval.dataset import (
    RETRY_THRESHOLDS,
    _read_image,
    choose_face,
    default_cache_dir,
    default_dataset,
    embed_images,
)
from lfr.eval.identify import MISS, identification_rates, list_people, pick
from lfr.vision.defaults import default_analyzer

LO, HI = float(sys.argv[2]), float(sys.argv[3])
ROOT = default_dataset()
WORK = Path(os.environ.get("LFR_WORK", "."))
people = list_people(ROOT)
an = default_analyzer()
emb = embed_images([p for ps in people.values() for p in ps], ROOT, an, cache=default_cache_dir())
V, ok = emb.vectors, emb.ok
index = emb.index()
rows = {n: [index[p] for p in ps] for n, ps in people.items()}
found = {n: [i for i in r if ok[i]] for n, r in rows.items()}


def draw(seed, k=1):
    eligible = sorted(n for n in rows if len(rows[n]) >= k + 1 and len(found[n]) >= k)
    rng = np.random.default_rng(seed)
    listed = sorted(str(n) for n in rng.choice(eligible, 400, replace=False))
    gallery, mated, owner = [], [], []
    for g, name in enumerate(listed):
        enrol = pick(rng, found[name], k)
        gallery += enrol
        probes = pick(rng, [i for i in rows[name] if i not in enrol], 10)
        mated += probes
        owner += [g] * len(probes)
    others = [n for n in sorted(rows) if n not in set(listed)]
    return np.array(gallery), np.array(mated), np.array(owner), others


seeds = (1, 2, 3, 4, 5)
draws = {s: draw(s) for s in seeds}
if sys.argv[1] == "need":
    need = set()
    rng = np.random.default_rng(99)
    for gal, mated, _owner, others in draws.values():
        nm = np.array([i for n in others for i in rows[n]])
        for probes in (mated, nm):
            S = V[probes] @ V[gal].T
            best = S.argmax(1)
            top = S.max(1)
            band = (top >= LO) & (top <= HI) & ok[probes]
            need.update(int(i) for i in probes[band])
            need.update(int(i) for i in gal[best[band]])

    crowd = [i for n in sorted(rows) for i in found[n]]
    sample = rng.choice(crowd, 400, replace=False)
    need.update(int(i) for i in sample)
    (WORK / "need.json").write_text(
        json.dumps({"need": sorted(need), "crowd": [int(i) for i in sample]})
    )
    print(len(need))
elif sys.argv[1] == "embed":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "lfr-dlib"))
    from lfr_dlib import DlibEmbedder

    de = DlibEmbedder()
    need = json.loads((WORK / "need.json").read_text())["need"]
    out = {}
    t0 = time.time()
    for j, i in enumerate(need):
        image = _read_image(ROOT / emb.paths[i])
        for th in (None, *RETRY_THRESHOLDS):
            faces = an.detect(image, th)
            if faces:
                break
        face = choose_face(faces, image.shape)
        out[i] = de.embed([face.aligned])[0]
        if j % 200 == 0:
            print(j, len(need), round(time.time() - t0, 1), flush=True)
    ids = sorted(out)
    np.savez(WORK / "dlib.npz", ids=np.array(ids), vectors=np.stack([out[i] for i in ids]))
    print("done", len(ids), time.time() - t0)
else:
    d = np.load(WORK / "dlib.npz")
    D = np.zeros((len(V), 128), np.float32)
    D[d["ids"]] = d["vectors"]
    crowd = json.loads((WORK / "need.json").read_text())["crowd"]
    res = {"plain": [], "fused": []}
    calls = []
    for gal, mated, owner, others in draws.values():
        cs = [i for i in crowd if emb.paths[i].split("/")[0] in set(others)]
        Ss, Sd = V[cs] @ V[gal].T, D[cs] @ D[gal].T  # impostor stats per embedder (crowd x gallery)
        ms, ss, md, sd = Ss.mean(), Ss.std(), Sd.mean(), Sd.std()
        nm = np.array([i for n in others for i in rows[n] if i not in set(cs)])
        out = {}
        for kind, probes in (("m", mated), ("n", nm)):
            S = V[probes] @ V[gal].T
            best = S.argmax(1)
            top = S.max(1)
            fused = top.copy()
            band = (top >= LO) & (top <= HI) & ok[probes]
            if band.any():
                d_score = np.sum(D[probes[band]] * D[gal[best[band]]], axis=1)
                z = ((top[band] - ms) / ss + (d_score - md) / sd) / np.sqrt(2)
                fused[band] = np.clip(ms + ss * z, LO, HI)
            out[kind] = (best, top, fused, band)
        b, t, f, band_m = out["m"]
        first = b == owner
        for name, sc in (("plain", t), ("fused", f)):
            ms_ = np.where(first & ok[mated], sc, MISS)
            ns_ = np.where(ok[nm], out["n"][2] if name == "fused" else out["n"][1], MISS)
            r = identification_rates(ms_, ns_, 0.5)
            res[name].append(
                (
                    r.tpir_at_fpir["0.01"],
                    r.tpir_at_fpir["0.001"],
                    r.false_alerts_at_threshold,
                    r.tpir_at_threshold,
                )
            )
        alerts = int(np.sum(out["n"][1] > 0.5) + np.sum((t > 0.5) & first))
        calls.append((int(band_m.sum() + out["n"][3].sum()), alerts, len(mated) + len(nm)))
    for name, v in res.items():
        a = np.array(v)
        print(
            f"band {LO}-{HI} {name:6s} TPIR@1e-2 {a[:, 0].mean():.4f} "
            f"@1e-3 {a[:, 1].mean():.4f} FA@0.5 {a[:, 2].mean():.1f} "
            f"TPIR@0.5 {a[:, 3].mean():.4f} per-seed@1e-3 {np.round(a[:, 1], 3).tolist()}"
        )
    c = np.array(calls)
    print(
        "close calls per draw",
        c[:, 0].mean(),
        "alerts at 0.5 per draw",
        c[:, 1].mean(),
        "searches",
        c[:, 2].mean(),
    )
