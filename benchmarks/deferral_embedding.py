"""Screen: does the generalist's pooled embedding help the learned deferral rule?

    python benchmarks/deferral_embedding.py          # the systems benchmarks/deferral.py trained (runs/deferral)

The rule the bundle carries reads the generalist's probabilities and the routing (23 features with 10
classes). This screen adds the generalist's pooled embedding (its pre-logits features, projected on the
first 16 or 48 principal components of the validation embeddings) and fits the same outcome model
(``askexpert.routing.deferral.fit_outcome_model``, L2 by 5-fold cross-validation) on validation. Test
accuracy at 10% and 30% offload, tau on validation, against max-prob and the oracle, per seed. Writes
``results/deferral/embedding.json``. Torch is needed (the embedding is not in the ONNX graph).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from askexpert.data import load_dataset
from askexpert.models import load_checkpoint, open_checkpoint
from askexpert.models.runs import open_expert_run
from askexpert.routing import ALL, Router, RoutingPolicy, fit_temperature
from askexpert.routing.deferral import fit_outcome_model, gains, oracle_accuracy
from askexpert.routing.thresholds import tau_for_offload
from askexpert.system.calibrate import load_experts, outputs_of, routed_outcomes, scaled_confidence
from askexpert.training.evaluate import predict_logits
from askexpert.training.logits import data_config_of
from askexpert_lab.bench.machine import machine_info

OUT = Path(__file__).parents[1] / "results" / "deferral" / "embedding.json"
SHARES = (0.1, 0.3)


class PooledEmbedding(torch.nn.Module):
    """A timm ViT's pre-logits features (what its head reads)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def embeddings(generalist: Path) -> dict[str, np.ndarray]:
    stored = open_checkpoint(generalist)
    meta = stored.meta
    data = load_dataset(data_config_of(stored), image_size=meta.model.input.size, channels=meta.model.input.channels)
    model = PooledEmbedding(load_checkpoint(stored).model).eval()
    return {s: predict_logits(model, data.split(s), meta.model.input, batch_size=512, device="cpu").float().numpy()
            for s in ("val", "test")}


def screen(generalist: Path, experts_run: Path, k: int = 3) -> dict:
    gen = outputs_of(open_checkpoint(generalist), "the generalist")
    experts = load_experts(open_expert_run(experts_run), str(experts_run), gen)
    t = fit_temperature(gen.val_logits, gen.val_labels)
    base = RoutingPolicy(tau=ALL, k=k, temperature=t)
    router = Router(base, experts.membership(gen.val_logits.shape[1]))
    emb = embeddings(generalist)
    mean = emb["val"].mean(0)
    _, _, components = np.linalg.svd(emb["val"] - mean, full_matrices=False)
    inputs, outcomes = {}, {}
    for split in ("val", "test"):
        logits = getattr(gen, f"{split}_logits")
        features = router.deferral_inputs(logits).astype(np.float64)
        projected = (emb[split] - mean) @ components[:48].T
        inputs[split] = {"rule": features, "rule + 16 PCs": np.concatenate([features, projected[:, :16]], 1),
                         "rule + 48 PCs": np.concatenate([features, projected], 1)}
        outcomes[split] = routed_outcomes(gen, experts, base, split)
    g = gains(*outcomes["val"])
    scores = {"max-prob": (scaled_confidence(gen.val_logits, t, "max-prob"),
                           scaled_confidence(gen.test_logits, t, "max-prob"))}
    l2 = {}
    for name in inputs["val"]:
        fit = fit_outcome_model(inputs["val"][name], g)
        scores[name], l2[name] = (fit.keep_score(inputs["val"][name]), fit.keep_score(inputs["test"][name])), fit.l2
    local, remote = outcomes["test"]
    rows = {}
    for share in SHARES:
        for name, (val, test) in scores.items():
            off = test < tau_for_offload(val, share)
            rows[f"{name} @ {share:g}"] = float(np.where(off, remote, local).mean() * 100)
        rows[f"oracle @ {share:g}"] = oracle_accuracy(local, remote, share)
    return {"generalist": str(generalist), "experts": str(experts_run), "accuracy": rows, "l2": l2,
            "embedding_dim": int(emb["val"].shape[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path("runs/deferral"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    seeds = {s: screen(args.runs / f"generalist-seed{s}", args.runs / f"experts-seed{s}") for s in args.seeds}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": machine_info(), "command": "python benchmarks/deferral_embedding.py",
                               "seeds": seeds}, indent=1) + "\n")
    names = list(next(iter(seeds.values()))["accuracy"])
    print("| test accuracy % | " + " | ".join(f"seed {s}" for s in seeds) + " |\n|---|" + "---|" * len(seeds))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{seeds[s]['accuracy'][name]:.2f}" for s in seeds) + " |")
    print(f"results: {OUT}")


if __name__ == "__main__":
    main()
