"""Evaluation of 10^5 examples runs in bounded memory: it is chunked, so peak memory does not grow with the set."""

import json
import os
import subprocess
import sys

N, K, SAMPLES, CHUNK = 100_000, 256, 12, 1000
UNCHUNKED_MIB = 2 * N * SAMPLES * K * 4 / 2**20
"""An unchunked forward of the stochastic predictor holds eps and z, each (12, 10^5, 256) float32: 2344 MiB.
(Measured: evaluating with one chunk of 10^5 raises the peak RSS by about 2.7 GiB.)"""
CEILING_MIB = 256
"""Allowed growth of the peak RSS over one warm-up chunk: about a tenth of the unchunked need."""

CHILD = f"""
import json, resource, torch
from vibbench.models.backbones import mlp
from vibbench.models.classifier import Classifier
from vibbench.evaluation.clean import clean_metrics
from vibbench.evaluation.inference import predictions
from vibbench.models.methods import METHODS

torch.set_num_threads(1)
torch.manual_seed(0)
# the paper's MLP VIB with a narrow body (64 units) to keep the test fast: memory is dominated by the
# 12 samples x 256 latent dimensions of the head, which are the paper's
model = Classifier(mlp(hidden=64), METHODS["vib"], name="mlp_vib", backbone_name="mlp", latent_dim={K}, eval_samples={SAMPLES}).eval()
g = torch.Generator().manual_seed(1)
x = torch.rand({N}, 1, 28, 28, generator=g)
y = torch.randint(0, 10, ({N},), generator=g)
clean_metrics(model, x[:{CHUNK}], y[:{CHUNK}], batch_size={CHUNK})  # warm-up: one chunk's working memory
predictions(model, x[:{CHUNK}], "predictor", batch_size={CHUNK})
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
before = peak()
metrics = clean_metrics(model, x, y, batch_size={CHUNK}, seed=3)  # the clean-accuracy path (both eval modes)
after_clean = peak()
logp, kl = predictions(model, x, "predictor", batch_size={CHUNK}, seed=3)  # calibration, OOD and shift go through this
after_predictions = peak()
print(json.dumps({{"before": before, "clean": after_clean - before, "predictions": after_predictions - after_clean,
                  "accuracy": metrics[("predictor", "accuracy")], "accuracy_predictions": float((logp.argmax(-1) == y).double().mean()),
                  "rows": logp.shape[0]}}))
"""


def test_evaluating_a_hundred_thousand_examples_stays_under_a_memory_ceiling():
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["rows"] == N
    assert m["clean"] + m["predictions"] < CEILING_MIB < UNCHUNKED_MIB / 8, m
    # both paths drew the same noise in the same chunks: the same predictions
    assert m["accuracy"] == m["accuracy_predictions"]
