"""SAKD: spot-adaptive knowledge distillation, a strategy that wraps the configured distiller.

A routing policy decides per sample and per spot (the distiller's spots plus the logits) whether
to distil there (docs/methods.md section 3). With decisions a[n, i] in {0, 1} (masks M_i = {n: a = 1},
detached: distillation losses never train the policy), the student minimises

    L_S = ce_weight * CE(z_S, y) + sum_i (|M_i| / B) * L_i(S[M_i], T[M_i])

where L_i is the (already weighted) loss of every configured part read at spot i, and at the
logits spot KD (``kd_weight * tau^2 KL``, tau = 4) unless a logit loss is configured. The policy
and the graft adapters minimise, through the grafted two-column pass (``sakd_graft``),

    L_P = CE(z_graft, y) * (gamma if CE(z_graft, y) > CE(z_S, y) else 1 / gamma) + max(0, B/2 - sum_n a[n, L])

with their own SGD (lr = ``policy_lr_ratio`` x the student's current lr, momentum 0.9, wd 1e-3),
stepped before the student's. Controls (``routing``): ``policy`` (SAKD), ``reverse`` (the same
policy, distilling where it says not to), ``random`` (a fair coin per sample and spot, no policy),
``everywhere`` / ``nowhere`` (fixed). Policy and adapters are dropped from the exported student.

Song, Chen, Ye, Song, "Spot-Adaptive Knowledge Distillation", IEEE TIP 2022.
"""
from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..data import Batch
from ..runtime import distributed as ddp
from ..runtime.device import autocast
from ..runtime.atomic import atomic_write_json
from ..errors import ConfigError
from ..losses.base import DistillContext, Distiller
from ..losses.kd import KD
from ..models.contract import Features
from ..options import StrictOptions
from ..registry import STRATEGIES
from .base import Strategy, StrategyContext, correct_count
from .sakd_graft import (GRAFT_BN_MODES, GraftAdapters, check_graftable, distiller_parts, find_spots,
                         frozen_bn_statistics, grafted_logits, spot_feature)
from .sakd_policy import RoutingPolicy, gumbel_noise, straight_through_gumbel_softmax

ROUTINGS = ("policy", "reverse", "random", "everywhere", "nowhere")

#: Per-epoch metric key prefix: the fraction of samples distilled at each spot.
ROUTE_PREFIX = "route_teacher."


@STRATEGIES.register("sakd", description="Spot-adaptive KD: a per-sample policy decides at which spots "
                     "(stages, embedding, logits) to distil; wraps the configured losses",
                     paper="Song et al., Spot-Adaptive Knowledge Distillation, IEEE TIP 2022")
class SAKDStrategy(Strategy):
    name: ClassVar[str] = "sakd"
    uses_teacher_cache: ClassVar[bool] = False  # the grafted pass runs the teacher's blocks

    class Options(StrictOptions):
        """``strategy.options`` of SAKD (defaults: the SAKD code's)."""

        routing: Literal[ROUTINGS] = "policy"
        #: Gumbel-softmax temperature of the routing decisions.
        temperature: float = Field(5.0, gt=0)
        #: Policy-loss scale; None = the largest ``sakd_policy_gamma`` of the wrapped losses (2 for at/rkd/vid).
        gamma: float | None = Field(None, gt=0)
        #: Start at "distil everywhere" (the +init_bias logit); None = for same-family pairs only.
        init_everywhere: bool | None = None
        init_bias: float = 10.0
        policy_lr_ratio: float = Field(0.5, gt=0)
        policy_momentum: float = Field(0.9, ge=0, lt=1)
        policy_weight_decay: float = Field(1e-3, ge=0)
        #: KD at the logits spot when no logit loss is configured.
        kd_weight: float = Field(1.0, ge=0)
        kd_temperature: float = Field(4.0, gt=0)
        graft_bn: Literal[GRAFT_BN_MODES] = "running"
        per_class_routing: bool = True

    options: Options  # the validated strategy.options, read as attributes

    def __init__(self, ctx: StrategyContext) -> None:
        super().__init__(ctx)
        if ctx.teacher is None:
            raise ConfigError("strategy sakd distils from a teacher: add a `teacher:` section (and losses).")
        o = self.options
        check_graftable(self.student, "student")
        check_graftable(self.teacher, "teacher")
        s_shapes, t_shapes = self.student.feature_shapes(), self.teacher.feature_shapes()
        self.parts: dict[str, Distiller] = distiller_parts(self.distiller)
        self.kd: KD | None = None
        if not any(p.spot_kind == "logits" for p in self.parts.values()):
            self.kd = KD(s_shapes, t_shapes, weight=o.kd_weight, temperature=o.kd_temperature).to(ctx.device)
            self.parts = {**self.parts, "kd": self.kd}
        elif {"kd_weight", "kd_temperature"} & set(ctx.options):
            raise ConfigError("sakd: a logit loss is configured in `losses`, so strategy options kd_weight / "
                              "kd_temperature do not apply; set the logit loss's weight in `losses` instead.")
        self.spots, self.terms = find_spots(self.parts, s_shapes, t_shapes)
        self.routing = o.routing
        self.gamma = o.gamma if o.gamma is not None else max(
            [p.sakd_policy_gamma for p in self.parts.values()] or [1.0])
        everywhere = o.init_everywhere
        if everywhere is None:  # same-family pairs start at "distil everywhere"
            everywhere = bool(s_shapes.family) and s_shapes.family == t_shapes.family
        self.same_family = bool(everywhere)
        with torch.random.fork_rng(devices=[]):  # the policy's init leaves the run's random streams alone
            torch.manual_seed(ctx.seed + 7919)
            self.policy = RoutingPolicy(t_shapes.pooled, s_shapes.pooled, len(self.spots), self.same_family,
                                        o.init_bias).to(ctx.device)
            self.adapters = GraftAdapters(self.spots, s_shapes, t_shapes).to(ctx.device)
        self.policy_optimizer = ddp.sync_gradients(torch.optim.SGD(  # under torchrun: gradients averaged over ranks
            list(self.policy.parameters()) + list(self.adapters.parameters()), lr=0.0,
            momentum=o.policy_momentum, weight_decay=o.policy_weight_decay))
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(ctx.seed + 104729)
        self._routed = torch.zeros(len(self.spots), device=ctx.device)
        self._samples = 0

    @property
    def trains_policy(self) -> bool:
        return self.routing in ("policy", "reverse")

    # -- what the main optimiser trains ------------------------------------------------------
    def trainable_modules(self) -> list[nn.Module]:
        mods = super().trainable_modules()
        if self.kd is not None and any(True for _ in self.kd.parameters()):
            mods.append(self.kd)
        return mods

    # -- routing --------------------------------------------------------------------------------
    def decide(self, s: Features, t: Features) -> Tensor:
        """Decisions a [B, S] in {0, 1} (1 = route to the teacher); straight-through from the policy.

        Random draws are made for the job's whole batch and each rank keeps its samples' rows
        (``ddp.rank_share``), so a torchrun job routes exactly as one process with the global batch."""
        b, n = s.logits.shape[0], len(self.spots)
        device = s.logits.device
        if self.routing == "everywhere":
            return torch.ones(b, n, device=device)
        if self.routing == "nowhere":
            return torch.zeros(b, n, device=device)
        if self.routing == "random":
            u = ddp.rank_share(lambda rows: torch.rand(rows, n, generator=self.generator, device=device), b)
            return (u < 0.5).float()
        logits = self.policy(t.pooled, s.pooled)
        noise = ddp.rank_share(lambda rows: gumbel_noise((rows, *logits.shape[1:]), self.generator, device,
                                                         logits.dtype), b)
        return straight_through_gumbel_softmax(logits, self.options.temperature, noise=noise)[..., 0]

    def distil_masks(self, a: Tensor) -> Tensor:
        """Where the distillation losses apply [B, S] (bool): a = 1, or a = 0 for the reverse control."""
        a = a.detach()
        return a < 0.5 if self.routing == "reverse" else a > 0.5

    # -- the two losses ---------------------------------------------------------------------------
    def student_loss(self, s: Features, t: Features, masks: Tensor, labels: Tensor,
                     ctx: DistillContext) -> tuple[Tensor, dict[str, Tensor]]:
        """ce_weight * CE + sum over spots of (|M_i| / B) * (the parts' losses on M_i)."""
        terms: dict[str, Tensor] = {"ce": self.ctx.ce_weight * self.ce(s.logits, labels)}
        b = labels.shape[0]
        counts = masks.sum(dim=0).tolist()  # one host sync per step: the subsets' sizes
        s_feats = {key: part.spot_features(s) for key, part in self.parts.items()}
        t_feats = {key: part.spot_features(t, teacher=True) for key, part in self.parts.items()}
        for term in self.terms:
            n = int(counts[term.spot])
            if n == 0:
                continue
            sf, tf = s_feats[term.key][term.j], t_feats[term.key][term.j]
            sub = ctx
            if n < b:
                m = torch.nonzero_static(masks[:, term.spot], size=n).squeeze(1)  # the rows; n known: no sync
                sf, tf, sub = sf[m], tf[m], ctx.subset(m)
            value = self.parts[term.key].spot_loss(term.j, sf, tf, sub) * (n / b)
            terms[term.key] = terms[term.key] + value if term.key in terms else value
        return sum(terms.values()), terms  # type: ignore[return-value]

    def policy_loss(self, x: Tensor, labels: Tensor, s: Features, t: Features, a: Tensor) -> Tensor:
        """L_P through the grafted pass; gradients reach only the policy and the adapters."""
        first = self.spots[0]
        first_teacher = None if first.kind == "logits" else spot_feature(t, first, teacher=True)
        first_student = None
        if self.options.graft_bn == "batch" and first.kind != "logits":
            first_student = spot_feature(s, first, teacher=False).detach()
        with frozen_bn_statistics(self.student, self.options.graft_bn):
            if first.kind == "logits" and self.options.graft_bn == "batch":
                z = (1 - a[:, -1:]) * s.logits.detach().float() + a[:, -1:] * t.logits.float()
            elif first.kind == "logits":
                z = (1 - a[:, -1:]) * self.student(x).float() + a[:, -1:] * t.logits.float()
            else:
                z = grafted_logits(self.student, self.teacher, self.spots, self.adapters, a, x,
                                   first_teacher=first_teacher, first_student=first_student)
        ce_graft = F.cross_entropy(z.float(), labels)
        ce_student = F.cross_entropy(s.logits.detach().float(), labels)
        if ddp.world_size() > 1:
            return self._job_policy_loss(ce_graft, ce_student, a[:, -1], labels.shape[0])
        scale = torch.where(ce_graft > ce_student, self.gamma,
                            torch.where(ce_graft < ce_student, 1.0 / self.gamma, 1.0)).detach()
        hinge = torch.clamp(labels.shape[0] / 2.0 - a[:, -1].sum(), min=0.0)
        return ce_graft * scale + hinge

    def _job_policy_loss(self, ce_graft: Tensor, ce_student: Tensor, at_logits: Tensor, rows: int) -> Tensor:
        """L_P of the job's batch under torchrun: its value is the 1-process L_P of the global batch, and the
        ranks' averaged gradient is that L_P's gradient. The scale compares the job's mean CEs; the hinge
        max(0, G/2 - sum of a over all G samples) enters with weight W, as the ranks' gradients are averaged."""
        w = ddp.world_size()
        local = at_logits.sum()
        count = torch.tensor(float(rows), device=local.device)
        graft, student, job_routed, job_rows = ddp.all_reduce_sums(  # one all-reduce for the job's statistics
            [ce_graft.detach(), ce_student.detach(), local.detach(), count])
        graft, student = float(graft) / w, float(student) / w
        scale = self.gamma if graft > student else (1.0 / self.gamma if graft < student else 1.0)
        routed = local + (job_routed.to(local.dtype) - local.detach())
        hinge = torch.clamp(float(job_rows) / 2.0 - routed, min=0.0)
        return ce_graft * scale + hinge.detach() + w * (hinge - hinge.detach())

    # -- the step ------------------------------------------------------------------------------------
    def train_step(self, batch: Batch, ctx: DistillContext, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
        t = self.teacher_features(batch.x)
        assert t is not None
        with autocast(self.ctx.device, self.ctx.precision):
            s = self.student.forward_features(batch.x)
        a = self.decide(s, t)
        masks = self.distil_masks(a)
        out: dict[str, Tensor] = {}
        if self.trains_policy:
            with autocast(self.ctx.device, self.ctx.precision):
                lp = self.policy_loss(batch.x, batch.y, s, t, a)
            self._step_policy(lp, optimizer)
            out["policy"] = lp.detach().float()
        with autocast(self.ctx.device, self.ctx.precision):
            loss, terms = self.student_loss(s, t, masks, batch.y, ctx)
        self.backward_and_step(optimizer, loss)
        self._routed += masks.sum(dim=0).float()
        self._samples += int(batch.y.shape[0])
        out.update({k: v.detach().float() for k, v in terms.items()})
        out["loss"] = loss.detach().float()
        out["correct"] = correct_count(s.logits, batch.y)
        return out

    def _step_policy(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """SGD step of policy + adapters on L_P, at ``policy_lr_ratio`` x the student's current lr."""
        params = [p for group in self.policy_optimizer.param_groups for p in group["params"]]
        self.policy_optimizer.zero_grad(set_to_none=True)
        if self.ctx.skip_nonfinite and not ddp.all_finite(loss):  # one decision for every rank
            return
        loss.backward(inputs=params)
        lr = float(optimizer.param_groups[0]["lr"]) * self.options.policy_lr_ratio
        for group in self.policy_optimizer.param_groups:
            group["lr"] = lr
        self.policy_optimizer.step()

    # -- records ------------------------------------------------------------------------------------------
    @property
    def spot_names(self) -> list[str]:
        return [spot.name for spot in self.spots]

    def epoch_metrics(self) -> dict[str, Any]:
        """Fraction of the epoch's samples distilled at each spot (then the counters restart)."""
        samples = torch.tensor(float(self._samples), device=self._routed.device)
        *routed, total = [float(v) for v in ddp.all_reduce_sums([*self._routed.unbind(), samples])]  # the job's
        if total == 0:
            return {}
        fractions = [r / total for r in routed]
        self._routed.zero_()
        self._samples = 0
        return {ROUTE_PREFIX + name: round(f, 6) for name, f in zip(self.spot_names, fractions)}

    @torch.no_grad()
    def routing_per_class(self, loader: Any) -> dict[str, Any]:
        """Expected fraction of each class's samples distilled at each spot, on ``loader`` (eval mode).

        For the policy it is P(a = 1) = softmax(logits)[..., 0] averaged over the class's samples
        (the hard Gumbel sampler's law; no random draw), 1 - that for the reverse control.
        """
        was = self.student.training
        self.student.eval()
        sums = counts = None
        try:
            for batch in loader:
                b = batch.y.shape[0]
                if self.routing in ("policy", "reverse"):
                    with autocast(self.ctx.device, self.ctx.precision):
                        t = self.teacher.forward_features(batch.x)
                        s = self.student.forward_features(batch.x)
                    p = self.policy.distil_probability(t.pooled, s.pooled)
                    p = 1.0 - p if self.routing == "reverse" else p
                else:
                    value = {"random": 0.5, "everywhere": 1.0, "nowhere": 0.0}[self.routing]
                    p = torch.full((b, len(self.spots)), value, device=batch.y.device)
                c = self.ctx.num_classes
                if sums is None:
                    sums = torch.zeros(c, len(self.spots), device=p.device, dtype=torch.float64)
                    counts = torch.zeros(c, device=p.device, dtype=torch.float64)
                sums.index_add_(0, batch.y, p.double())
                counts.index_add_(0, batch.y, torch.ones(b, device=p.device, dtype=torch.float64))
        finally:
            self.student.train(was)
        if sums is None:
            return {}
        per_class = (sums / counts.clamp(min=1).unsqueeze(1)).tolist()
        overall = (sums.sum(0) / counts.sum().clamp(min=1)).tolist()
        return {"spots": self.spot_names, "routing": self.routing, "per_class": per_class, "overall": overall,
                "samples_per_class": [int(v) for v in counts.tolist()]}

    def end_of_training(self) -> dict[str, Any]:
        """Per-class routing on the test split, saved as RUN_DIR/sakd_routing.json and in summary.json."""
        out: dict[str, Any] = {"sakd_spots": self.spot_names}
        if not self.options.per_class_routing or self.ctx.test_loader is None:
            return out
        record = self.routing_per_class(self.ctx.test_loader)
        if record and self.ctx.run_dir is not None:
            atomic_write_json(os.path.join(str(self.ctx.run_dir), "sakd_routing.json"), record, indent=1)
        out["sakd_routing"] = record
        return out

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "adapters": self.adapters.state_dict(),
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "routed": self._routed.detach().cpu(),
            "samples": self._samples,
            "spots": self.spot_names,
            "kd": None if self.kd is None else self.kd.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if state.get("spots") != self.spot_names:
            raise ConfigError(f"the checkpoint's sakd spots {state.get('spots')} differ from this config's "
                              f"{self.spot_names}: resume with the losses and models the run started with.")
        self.policy.load_state_dict(state["policy"])
        self.adapters.load_state_dict(state["adapters"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.generator.set_state(state["generator"])
        self._routed.copy_(state["routed"].to(self._routed.device))
        self._samples = int(state["samples"])
        if self.kd is not None and state.get("kd") is not None:
            self.kd.load_state_dict(state["kd"])

    def export_student(self) -> nn.Module:
        """The student alone: the policy and the adapters are training machinery."""
        return self.student
