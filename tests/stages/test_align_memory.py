"""Stage `align` on the streaming sampler: 20 shards of 250 images take no more memory than 4.

As `test_embed_memory.py`: peak RSS of a fresh process per run (`ru_maxrss`). `layers: all`
trains on the images themselves (the paper-scale case: with open_clip the "features" are the
images), so the sampler is the streaming one (`align.sampler: auto`). The 4,000 images
between the runs are 49 MB as 64-px uint8 pixels and 197 MB as float tensors: the in-memory
sampler would grow by the float tensors. (250 images a shard, not embed's 1,000: align reads
every image twice, for f_r and f_g, and 1,000 a shard took 5 minutes on 2 shared cores.)
Streaming holds the shuffle buffer and one batch, and grows only by what it keeps per item:
the manifest, each row's metadata and its f_r / f_g embeddings (2 x 256 floats). Measured
4 shards 1,558 MB, 20 shards 1,597 MB peak RSS (77 s for the test on 2 shared cores).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import tmp_inside, write_params

from gmail.data.shards import shard_name, write_shard

pytestmark = pytest.mark.slow

BOUND_MB = 100  # allowed peak-RSS growth from 4 shards to 20: per-item metadata and embeddings, well under the pixels

PROBE = """
import resource, sys
from stages import align
align.main(["--params", sys.argv[1], "--source", "generated"])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _shards(root, n_shards, real_ids, per_shard=250, size=64):
    """Shards whose items pair round-robin with the real B images, so batches hold several real images."""
    rng = np.random.default_rng(0)
    manifest = []
    base = rng.integers(0, 256, size=(16, size, size, 3), dtype=np.uint8)
    for k in range(n_shards):
        items = [{"id": f"g{k}_{i}", "source_id": real_ids[(k * per_shard + i) % len(real_ids)], "caption": "a shape",
                  "index": k * per_shard + i, "seed": 0} for i in range(per_shard)]
        write_shard(root / "shards" / shard_name(k), [(it, base[it["index"] % 16]) for it in items])
        manifest += items
    return manifest


def _peak_mb(ws, tmp_path, n_shards):
    tmp_path = tmp_inside(ws, tmp_path)  # stages write only inside their working directory
    gen, emb = tmp_path / f"gen{n_shards}", tmp_path / f"emb{n_shards}"
    real_ids = [json.loads(line)["image_id"] for line in (ws / "data/captions/B.jsonl").read_text().splitlines()]
    manifest = _shards(gen, n_shards, real_ids)  # the shards' metadata is the manifest's, as stage generate writes it
    (gen / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    emb.mkdir()
    (emb / "real").symlink_to(ws / "data/embeddings/real")
    paths = {"generated": str(gen), "embeddings": str(emb), "align": str(tmp_path / f"align{n_shards}"),
             "metrics": str(tmp_path / f"m{n_shards}"), "plots": str(tmp_path / f"plots{n_shards}")}
    p = write_params(tmp_path / f"p{n_shards}.yaml", ws / "params.yaml", paths=paths, encoder={"batch_size": 256},
                     align={"layers": "all", "sampler": "auto", "steps": 3, "batch_size": 16, "shuffle_buffer": 512})
    proc = subprocess.run([sys.executable, "-c", PROBE, p], cwd=ws, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(np.load(emb / "generated/f_g/B.f_g.npy")) == 250 * n_shards
    m = json.loads((tmp_path / f"m{n_shards}/align/generated.json").read_text())
    assert m["pairs_aligned"] + m["pairs_heldout"] == 250 * n_shards
    return int(proc.stdout.split("MAXRSS_KB")[1].split()[0]) / 1024


def test_streaming_align_memory_does_not_grow_with_the_number_of_shards(embedded_workspace, tmp_path):
    four = _peak_mb(embedded_workspace, tmp_path, 4)
    twenty = _peak_mb(embedded_workspace, tmp_path, 20)
    print(f"align (streaming) peak RSS: 4 shards {four:.0f} MB, 20 shards {twenty:.0f} MB (250 images of 64 px per shard)")
    assert twenty - four < BOUND_MB, f"peak RSS grew {twenty - four:.0f} MB from 4 to 20 shards"
