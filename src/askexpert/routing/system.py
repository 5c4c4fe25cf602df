"""Offline evaluation of the collaborative system from saved logits.

Given the generalist's logits, every expert's logits on the same samples and the labels, it
computes what the deployed system would answer for any (tau, k): accuracy overall and on the
offloaded samples, offload rate, per-expert load, routing hit rate and expert rejections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from askexpert.routing.policy import OTHER, RoutingPolicy, finalize, route


@dataclass
class ExpertAnswers:
    """Every expert's answer for every sample: global class id (or OTHER) and confidence, ``[E, N]``."""

    pred: torch.Tensor
    conf: torch.Tensor

    @classmethod
    def from_logits(cls, logits: list[torch.Tensor], subsets: list[list[int]],
                    temperatures: list[float] | None = None) -> ExpertAnswers:
        """Expert e's logits ``[N, len(subset_e) + 1]`` (last output: "other") -> answers.

        A logits matrix without the extra column (a model over exactly its subset) never says "other".
        """
        preds, confs = [], []
        for e, (z, subset) in enumerate(zip(logits, subsets, strict=True)):
            t = temperatures[e] if temperatures else 1.0
            p = torch.softmax(z.float() / t, dim=1)
            conf, idx = p.max(1)
            ids = torch.tensor(list(subset) + [OTHER])[: z.shape[1]]
            preds.append(ids[idx])
            confs.append(conf)
        return cls(torch.stack(preds), torch.stack(confs))

    def for_route(self, expert: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The answers of each sample's chosen expert (kept samples get OTHER / 0)."""
        idx = expert.clamp_min(0)
        n = torch.arange(len(expert))
        pred = torch.where(expert >= 0, self.pred[idx, n], torch.full_like(expert, OTHER))
        conf = torch.where(expert >= 0, self.conf[idx, n], torch.zeros_like(self.conf[0]))
        return pred, conf


def system_metrics(gen_logits: torch.Tensor, labels: torch.Tensor, membership: torch.Tensor,
                   answers: ExpertAnswers, policy: RoutingPolicy) -> dict:
    """What the collaborative system achieves on these samples under ``policy``."""
    labels = labels.to(torch.int64)
    d = route(gen_logits, policy, membership)
    pred, conf = answers.for_route(d.expert)
    final, fell_back = finalize(d, pred, conf, policy)
    off = d.offload
    n, n_off = len(labels), int(off.sum())
    local_ok = d.local_pred == labels
    final_ok = final == labels
    experts = membership.shape[0]
    load = torch.bincount(d.expert[off], minlength=experts) if n_off else torch.zeros(experts, dtype=torch.int64)
    hit = membership[d.expert[off], labels[off]].bool() if n_off else torch.zeros(0, dtype=torch.bool)

    def pct(x: torch.Tensor) -> float:
        return 100.0 * float(x.float().mean()) if x.numel() else float("nan")

    return {
        "tau": policy.tau, "k": policy.k, "samples": n,
        "accuracy": pct(final_ok),
        "generalist_accuracy": pct(local_ok),
        "offload_rate": 100.0 * n_off / n,
        "offloaded": n_off,
        "offloaded_accuracy_generalist": pct(local_ok[off]),
        "offloaded_accuracy_system": pct(final_ok[off]),
        "routing_hit_rate": pct(hit),
        "expert_load": load.tolist(),
        "expert_other_rate": pct(pred[off] == OTHER),
        "fallback_rate": pct(fell_back[off]),
    }
