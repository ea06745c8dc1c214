"""Stage `embed` streams: 20 shards of 1,000 images take no more memory than 4 shards.

Peak RSS is measured in a fresh process per run (`ru_maxrss` of that process). The 16,000
images between the runs are 197 MB as 64-px uint8 pixels and 786 MB as float tensors, so an
`embed` that gathered the images before encoding would grow by at least 197 MB; streaming keeps
one shard's read buffer and one batch of pixels, and grows only by what it keeps per item: the
manifest and each row's metadata (id, real image, caption), ~2 x 16,000 small dicts; measured
60 MB on this machine (4 shards 1,195 MB, 20 shards 1,255 MB peak RSS). The baseline is 4 shards, not 1: the allocator's pools settle after the first two
shards (peak RSS rises ~60 MB from 1 shard to 2, then stays flat), which is not growth with
the data.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import tmp_inside, write_params

from gmail.data.shards import shard_name, write_shard

pytestmark = pytest.mark.slow

BOUND_MB = 100  # allowed peak-RSS growth from 4 shards to 20: per-item metadata, well under the pixels' 197 MB

PROBE = """
import resource, sys
from stages import embed
embed.main(["--params", sys.argv[1]])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _shards(root, n_shards, source_id, per_shard=1000, size=64):
    rng = np.random.default_rng(0)
    manifest = []
    base = rng.integers(0, 256, size=(16, size, size, 3), dtype=np.uint8)
    for k in range(n_shards):
        items = [{"id": f"g{k}_{i}", "source_id": source_id, "caption": "a shape", "index": k * per_shard + i, "seed": 0}
                 for i in range(per_shard)]
        write_shard(root / "shards" / shard_name(k), [(it, base[it["index"] % 16]) for it in items])
        manifest += items
    return manifest


def _peak_mb(ws, tmp_path, n_shards):
    tmp_path = tmp_inside(ws, tmp_path)  # stages write only inside their working directory
    gen = tmp_path / f"gen{n_shards}"
    b = json.loads((ws / "data/captions/B.jsonl").read_text().splitlines()[0])
    manifest = _shards(gen, n_shards, b["image_id"])  # the shards' metadata is the manifest's, as stage generate writes it
    (gen / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    p = write_params(tmp_path / f"p{n_shards}.yaml", ws / "params.yaml",
                     paths={"generated": str(gen), "embeddings": str(tmp_path / f"emb{n_shards}")},
                     encoder={"batch_size": 256})
    proc = subprocess.run([sys.executable, "-c", PROBE, p], cwd=ws, capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / f"emb{n_shards}/generated/f_r/ids.json").read_text())["B"]
    assert len(rows) == 1000 * n_shards
    return int(proc.stdout.split("MAXRSS_KB")[1].split()[0]) / 1024


def test_embed_memory_does_not_grow_with_the_number_of_shards(embedded_workspace, tmp_path):
    four = _peak_mb(embedded_workspace, tmp_path, 4)
    twenty = _peak_mb(embedded_workspace, tmp_path, 20)
    print(f"embed peak RSS: 4 shards {four:.0f} MB, 20 shards {twenty:.0f} MB (1,000 images of 64 px per shard)")
    assert twenty - four < BOUND_MB, f"peak RSS grew {twenty - four:.0f} MB from 4 to 20 shards"
