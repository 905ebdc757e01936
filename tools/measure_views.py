"""Measure enrolment from augmented views against one view (docs/watchlist-quality.md).

    python tools/measure_views.py DATASET WORKDIR

embeds the views of the photos that the draws enrol (400 listed, 1 photo, seeds 1-5).
Then prints TPIR at FPIR 1e-2 / 1e-3 for one view and subsets of views, crowd weight 0 and 0.5,
on the same draws. Slow: 8 embeddings per enrolled photo (about 25 minutes on a loaded 2-core
machine). Uses the evaluation cache for the searches.
"""
import sys
import time
from pathlib import Path

import numpy as np

from lfr.eval.dataset import (
    RETRY_THRESHOLDS,
    _read_image,
    choose_face,
    default_cache_dir,
    embed_images,
)
from lfr.eval.identify import list_people, mean_report, pick, run_seed
from lfr.vision.defaults import default_analyzer
from lfr.watchlist.views import enrolment_views, template

ROOT, WORK = Path(sys.argv[1]), Path(sys.argv[2])
WORK.mkdir(parents=True, exist_ok=True)
SEEDS = (1, 2, 3, 4, 5)
an = default_analyzer()
people = list_people(ROOT)
emb = embed_images([p for ps in people.values() for p in ps], ROOT, an, cache=default_cache_dir())
index, ok = emb.index(), emb.ok
rows = {n: [index[p] for p in ps] for n, ps in people.items()}
found = {n: [i for i in r if ok[i]] for n, r in rows.items()}

# The photos the draws enrol (the protocol's own draws, replayed).
used = set()
for seed in SEEDS:
    eligible = sorted(n for n in rows if len(rows[n]) >= 2 and len(found[n]) >= 1)
    rng = np.random.default_rng(seed)
    for name in sorted(str(n) for n in rng.choice(eligible, 400, replace=False)):
        enrol = pick(rng, found[name], 1)
        used.update(emb.paths[i] for i in enrol)
        pick(rng, [i for i in rows[name] if i not in enrol], 10)

store = WORK / "views.npz"
if not store.exists():
    out_paths, out = [], []
    start = time.time()
    for n, rel in enumerate(sorted(used)):
        image = _read_image(ROOT / rel)
        faces = []
        for threshold in (None, *RETRY_THRESHOLDS):
            faces = an.detect(image, threshold)
            if faces:
                break
        face = choose_face(faces, image.shape)
        out.append(an.embedder.embed(enrolment_views(image, face.detection.landmarks)))
        out_paths.append(rel)
        if n % 100 == 0:
            print(n, len(used), round(time.time() - start, 1), flush=True)
    np.savez(store, paths=np.array(out_paths), views=np.stack(out))

data = np.load(store)
views = data["views"]  # photos x 8 x dim: plain, 2 scales, 4 shifts, blurred
subsets = {"all8": list(range(8)), "jitter7": list(range(7)), "blur+plain": [0, 7],
           "scales3": [0, 1, 2]}
for weight in (0.0, 0.5):
    for name, chosen in [("one view", None), *subsets.items()]:
        templates = None
        if chosen is not None:
            templates = emb.vectors.copy()
            for rel, v in zip(data["paths"].tolist(), views, strict=True):
                templates[index[rel]] = template(v[chosen])
        reports = [run_seed(emb, people, seed=s, gallery_size=400, enrol_images=1, max_probes=10,
                            threshold=0.5, crowd_weight=weight, templates=templates)[0]
                   for s in SEEDS]
        r = mean_report(reports)
        print(f"crowd weight {weight} {name:10s} TPIR@1e-2 {r.tpir_at_fpir['0.01']:.4f} "
              f"@1e-3 {r.tpir_at_fpir['0.001']:.4f}", flush=True)
