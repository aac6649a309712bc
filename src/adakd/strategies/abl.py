"""ABL: Adaptive Block-wise Learning for knowledge distillation ("Adaptive Block-wise Learning for
Knowledge Distillation", ICLR 2023 submission; what adakd implements: docs/methods.md section 1).

Every block b of the student gets its own mix of the student error (a LOCAL cross-entropy
through an auxiliary head phi_b) and the teacher error (the distiller's loss, back-propagated
globally), weighted by (g1_b, g2_b) = softmax(gamma_b):

    delta_b = g1_b * alpha * dCE(phi_b(h_b), y)/dh_b + g2_b * dL_KD/dh_b       (b < L-1)
    delta_L = d(alpha * CE(z, y) + L_KD)/dh_L                                  (last block)

(``abl_gradients``). gamma is searched by bilevel optimisation on a validation split held
out of the training set (``abl_meta``: exact one-step hypergradient by default), then the
student is retrained from scratch with gamma fixed. Works with any distiller of the zoo
(logit or feature based, and AEKT whose serialization layer lives in the distiller).

Phases: [distiller pre-training] -> "search" (warm start with gamma = 0, then one meta step
every meta_every training steps) -> "train" (the student, distiller and heads reloaded to their
initial state in place, gamma fixed). With retrain=false (a cost option) the search steps run
as the "train" phase and there is no retrain. Records: ``abl_gamma.jsonl`` (gamma per block over the
search's iterations) and epoch means in metrics.jsonl (both kept by ``abl_records``),
``abl_gammas.json`` (the gammas used, and the auxiliary heads' test accuracy at the end), the
same in summary.json.

strategy.options (typed and defaulted in ``ABLOptions``):
  aux                aux1 | aux2 | aux3 (paper default) | aux4: auxiliary head design (Table 11)
  gammas             list (per block but the last: g2 = teacher share, or [g1, g2]) or the path
                     of an abl_gammas.json: use these, skip the search
  ablation           adaptive | fixed (0.5/0.5) | random | no_distill (g = (1, 0), no teacher) |
                     teacher_only (g = (0, 1))
  student_error      local | global (the final CE back-propagated through the whole student)
  search_epochs      epochs of the search stage (default: the train schedule's)
  warm_start_epochs  gamma fixed at 0 for this many search epochs (default: a quarter of them;
                     paper: 40,000 iterations on CIFAR-100); warm_start_steps overrides it
  retrain            true (the paper's two-stage schedule): after the search, retrain from scratch with the
                     searched gammas | false: one stage, a cost option (not the paper's): the search runs on
                     the train schedule and its student is the result, no retrain (about half the run's
                     cost; its accuracy against the two-stage default is not measured yet)
  meta_every         one meta step (hypergradient + gamma update) every k search steps after the warm start;
                     the other steps train with the current gamma. Default 4: on ResNet-56 -> ResNet-20
                     (studies/abl-depth) k = 4 with a 5-epoch search matched k = 1 with a 10-epoch search on
                     the validation split (90.48 +- 0.25 vs 90.27 +- 0.44, 3 seeds) at less cost. Paper: k = 1
  hypergradient      exact | darts | first_order (see abl_meta)
  meta_optimizer     adam (DARTS's architecture optimiser; the default) | sgd (plain SGD: keeps the
                     hypergradient's scale, which Adam divides away, so gamma slows as the signal fades)
  meta_lr, meta_betas, meta_weight_decay   the meta optimiser's settings (betas: Adam only)
  val_loss           ce | ce+kd (L_val: CE of the final logits, optionally + the distillation loss)
  darts_xi           xi = darts_xi / ||v|| for the finite-difference option
  trace_every        record gamma every N search steps in abl_gamma.jsonl
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.profiler import record_function

from ..data import Batch
from ..runtime import distributed as ddp
from ..runtime.device import at_least_float32, autocast
from ..runtime.atomic import atomic_write_json
from ..errors import ConfigError
from ..losses.base import DistillContext
from ..options import StrictOptions
from ..registry import STRATEGIES
from .abl_gradients import (abl_forward, apply_mixed, block_parameters, check_blocks, local_losses, mixed_backward,
                            separate_gradients)
from .abl_heads import AUX_VARIANTS, build_aux_heads, resolve_aux
from .abl_meta import (HYPERGRADIENTS, OptimizerSnapshot, darts_hypergradient, exact_hypergradient,
                       frozen_bn_stats, preserved_buffers, softmax_backward, step_coefficients)
from .abl_records import GAMMA_TRACE, SearchRecords
from .base import Phase, Strategy, StrategyContext, correct_count

ABLATIONS = ("adaptive", "fixed", "random", "no_distill", "teacher_only")
GAMMA_FILE = "abl_gammas.json"


class ABLOptions(StrictOptions):
    """``strategy.options`` of ABL (see the module docstring)."""

    aux: Literal[(*AUX_VARIANTS, "default")] = "aux3"  # "default" = aux3
    gammas: list[float | list[float]] | str | None = None
    ablation: Literal[ABLATIONS] = "adaptive"
    student_error: Literal["local", "global"] = "local"
    search_epochs: int | None = Field(None, ge=0)
    warm_start_epochs: float | None = Field(None, ge=0)
    warm_start_steps: int | None = Field(None, ge=0)
    retrain: bool = True
    meta_every: int = Field(4, ge=1)
    hypergradient: Literal[HYPERGRADIENTS] = "exact"
    meta_optimizer: Literal["adam", "sgd"] = "adam"
    meta_lr: float = Field(3e-4, gt=0)
    meta_betas: tuple[float, float] = (0.5, 0.999)
    meta_weight_decay: float = Field(1e-3, ge=0)
    val_loss: Literal["ce", "ce+kd"] = "ce"
    darts_xi: float = Field(0.01, gt=0)
    trace_every: int = Field(10, ge=1)


def read_gammas(value: Any, num: int) -> Tensor:
    """Gammas given by the user -> probabilities [num, 2] (g1 = student share, g2 = teacher share)."""
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if path.is_dir():
            path = path / GAMMA_FILE
        if not path.is_file():
            raise ConfigError(f"strategy.options.gammas={str(value)!r}: no such file; give the {GAMMA_FILE} of an "
                              "ABL run (or its run directory), or a list of per-block teacher shares.")
        value = json.loads(path.read_text())["gammas"]
    if not isinstance(value, (list, tuple)) or len(value) != num:
        raise ConfigError(f"strategy.options.gammas needs {num} entries (one per block but the last), each the "
                          f"teacher share g2 in [0, 1] or a pair [g1, g2]; got {value!r}.")
    rows = []
    for v in value:
        pair = [1.0 - float(v), float(v)] if isinstance(v, (int, float)) else [float(x) for x in v]
        if len(pair) != 2 or min(pair) < 0 or sum(pair) <= 0:
            raise ConfigError(f"strategy.options.gammas: entry {v!r} is not a share in [0, 1] or a pair [g1, g2].")
        total = sum(pair)
        rows.append([pair[0] / total, pair[1] / total])
    return torch.tensor(rows, dtype=torch.float32)


@STRATEGIES.register("abl", description="Adaptive block-wise learning: per-block student/teacher error mix, "
                     "searched on a validation split, then retrain",
                     paper="Li et al., Adaptive Block-wise Learning for Knowledge Distillation (ICLR 2023 subm.)")
class ABLStrategy(Strategy):
    """See the module docstring."""

    name = "abl"
    Options = ABLOptions
    options: ABLOptions  # the validated strategy.options, read as attributes

    def __init__(self, ctx: StrategyContext) -> None:
        super().__init__(ctx)
        o = self.options
        self.num_blocks = check_blocks(self.student)
        self.aux = resolve_aux(o.aux)
        self.ablation = o.ablation
        self.student_error = o.student_error
        self.hypergradient = o.hypergradient
        self.val_loss = o.val_loss
        self.meta_lr = o.meta_lr
        self.darts_xi = o.darts_xi
        self.trace_every = o.trace_every
        self.use_kd = self.ablation != "no_distill"
        if self.use_kd and (self.distiller is None or self.teacher is None):
            raise ConfigError("strategy abl mixes the student error with a teacher's: add a teacher and a loss "
                              "(losses: {kd: {}}), or set strategy.options.ablation=no_distill.")
        self.blocks = block_parameters(self.student)
        self.heads = self._build_heads(ctx)
        param = next(self.student.parameters())
        device = param.device
        self.gamma = nn.Parameter(torch.zeros(self.num_blocks - 1, 2, device=device, dtype=param.dtype))
        self.last_hypergradient: Tensor | None = None  # dL_val/dgamma of the latest meta step
        self.meta_opt = ddp.sync_gradients(  # under torchrun the hypergradient is averaged over the ranks
            self._meta_optimizer(o))
        self.fixed: Tensor | None = None  # probabilities when gamma is not (or no longer) searched
        self.source = "search"
        self._set_initial_gammas(o, ctx.seed, device)
        self.searching = self.fixed is None
        self.retrain = o.retrain
        if not self.retrain and o.search_epochs is not None:
            raise ConfigError("strategy.options.retrain=false makes the search the training run (the train "
                              "schedule's epochs): drop strategy.options.search_epochs, or set retrain=true.")
        self.search_epochs = o.search_epochs if o.search_epochs is not None else ctx.epochs
        if self.searching and self.search_epochs <= 0:
            raise ConfigError("strategy.options.search_epochs must be >= 1 (or give gammas to skip the search).")
        if o.warm_start_steps is not None:
            self.warm_start_steps = o.warm_start_steps
        else:
            warm = o.warm_start_epochs if o.warm_start_epochs is not None else self.search_epochs / 4
            self.warm_start_steps = int(round(warm * ctx.steps_per_epoch))
        self.meta_every = o.meta_every
        if self.searching and ctx.val_loader is None:
            raise ConfigError("strategy abl searches its gammas on a validation split held out of the training set: "
                              "set data.val_fraction (e.g. data.val_fraction=0.1), or give strategy.options.gammas "
                              "(or an ablation: fixed/random/no_distill/teacher_only) to skip the search.")
        if self.searching and self.val_loss == "ce+kd" and getattr(self.distiller, "needs_indices", False):
            raise ConfigError("strategy.options.val_loss=ce+kd cannot be used with a loss that keeps a memory of "
                              "training samples (CRD): its bank is indexed by training rows. Use val_loss=ce.")
        self._has_pretrain = bool(getattr(self.distiller, "pretrain_epochs", 0)) if self.distiller is not None else False
        self._init = self._capture()
        self._store_init = False
        self.records = SearchRecords(self.num_blocks - 1, self.trace_every, device)

    # ------------------------------------------------------------------ set-up
    def _meta_optimizer(self, o: ABLOptions) -> torch.optim.Optimizer:
        """Adam (DARTS) or plain SGD on gamma; both with L2 weight decay meta_weight_decay."""
        if o.meta_optimizer == "sgd":
            return torch.optim.SGD([self.gamma], lr=self.meta_lr, weight_decay=o.meta_weight_decay)
        return torch.optim.Adam([self.gamma], lr=self.meta_lr, betas=o.meta_betas, weight_decay=o.meta_weight_decay)

    def _build_heads(self, ctx: StrategyContext) -> nn.ModuleList:
        if self.student_error == "global":
            return nn.ModuleList()
        param = next(self.student.parameters())
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                x = torch.zeros((2, *self.student.input_shape), device=param.device, dtype=param.dtype)
                shapes = [tuple(o.shape[1:]) for o in abl_forward(self.student, x).block_out]
        finally:
            self.student.train(was_training)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            heads = build_aux_heads(shapes, ctx.num_classes, self.aux)
        return heads.to(device=param.device, dtype=param.dtype)

    def _set_initial_gammas(self, o: ABLOptions, seed: int, device: torch.device) -> None:
        n = self.num_blocks - 1
        if o.gammas is not None:
            self.fixed, self.source = read_gammas(o.gammas, n).to(device), "given"
        elif self.ablation == "fixed":
            self.fixed = torch.full((n, 2), 0.5, device=device)
        elif self.ablation == "random":
            g2 = torch.rand(n, generator=torch.Generator().manual_seed(seed))
            self.fixed = torch.stack([1 - g2, g2], dim=1).to(device)
        elif self.ablation == "no_distill":
            self.fixed = torch.tensor([[1.0, 0.0]] * n, device=device)
        elif self.ablation == "teacher_only":
            self.fixed = torch.tensor([[0.0, 1.0]] * n, device=device)
        if self.fixed is not None:
            self.fixed = self.fixed.to(self.gamma.dtype)
            if self.source != "given":
                self.source = self.ablation

    def _modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = [self.student, self.heads]
        if self.use_kd and self.distiller is not None:
            mods.append(self.distiller)
        return mods

    def _connectors(self) -> list[nn.Parameter]:
        if not self.use_kd or self.distiller is None:
            return []
        return [q for q in self.distiller.parameters() if q.requires_grad]

    def _capture(self) -> dict[str, Any]:
        def clone(m: nn.Module | None) -> dict[str, Tensor] | None:
            return None if m is None else {k: v.detach().clone() for k, v in m.state_dict().items()}

        return {"student": clone(self.student), "distiller": clone(self.distiller), "heads": clone(self.heads)}

    def trainable_modules(self) -> list[nn.Module]:
        return self._modules()

    def ce(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(at_least_float32(logits), labels)

    def probs(self) -> Tensor:
        """(g1_b, g2_b) per block but the last, [L-1, 2] (detached)."""
        return self.fixed if self.fixed is not None else torch.softmax(self.gamma.detach(), dim=-1)

    # ------------------------------------------------------------------ phases
    def phases(self) -> list[Phase]:
        out = super().phases()[:-1]  # the distiller's connector pre-training, if any
        mods = self._modules()
        if self.searching and not self.retrain:  # one stage: the search is the training run
            out.append(Phase("train", self.ctx.epochs, mods, self.search_step, model=self.student,
                             on_start=lambda: self.records.trace_now(0, self.probs())))
            return out
        if self.searching:
            out.append(Phase("search", self.search_epochs, mods, self.search_step, model=self.student,
                             on_start=self._start_search))
        out.append(Phase("train", self.ctx.epochs, mods, self.train_step, model=self.student,
                         on_start=self._start_train if self.searching else None))
        return out

    def _start_search(self) -> None:
        if self._has_pretrain:  # retrain from the pre-trained connectors, not from their random init
            self._init = self._capture()
            self._store_init = True
        self.records.trace_now(0, self.probs())

    def _start_train(self) -> None:
        """Retrain from scratch with the searched gamma: reload the initial states in place."""
        self.student.load_state_dict(self._init["student"])
        if self.distiller is not None and self._init["distiller"] is not None:
            self.distiller.load_state_dict(self._init["distiller"])
        self.heads.load_state_dict(self._init["heads"])
        self.fixed = torch.softmax(self.gamma.detach(), dim=-1).clone()
        self._store_init = False
        self._write_gammas()

    # ------------------------------------------------------------------ steps
    def _forward(self, batch: Batch, ctx: DistillContext):
        with record_function("abl/teacher_forward"):
            t = self.teacher_features(batch.x) if self.use_kd else None
        with autocast(self.ctx.device, self.ctx.precision):
            p = abl_forward(self.student, batch.x, self.heads)
            terms = self.distiller(p.features, t, ctx) if self.use_kd and self.distiller is not None else {}
        ce = self.ce(p.logits, batch.y)
        local = local_losses(p, batch.y)
        kd = sum(terms.values()) if terms else None
        return p, t, terms, kd, ce, local

    def _terms(self, p, terms: dict[str, Tensor], kd: Tensor | None, ce: Tensor, local: list[Tensor],
               y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        a = self.ctx.ce_weight
        out = {k: v.detach().float() for k, v in terms.items()}
        out["ce"] = (a * ce).detach()
        if local:
            out["aux_ce"] = (a * torch.stack(local).mean()).detach()
        loss = a * ce + (kd if kd is not None else 0.0)
        out["loss"] = loss.detach().float()
        out["correct"] = correct_count(p.logits, y)
        return out, loss

    def _skip(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> bool:
        if self.ctx.skip_nonfinite and not ddp.all_finite(loss):  # one decision for every rank of a job
            optimizer.zero_grad(set_to_none=True)
            return True
        return False

    def train_step(self, batch: Batch, ctx: DistillContext, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
        """Gamma fixed: block-wise gradients straight into .grad (``mixed_backward``), one optimiser step."""
        with record_function("abl/forward"):
            p, _, terms, kd, ce, local = self._forward(batch, ctx)
            out, loss = self._terms(p, terms, kd, ce, local, batch.y)
        if self._skip(loss, optimizer):
            return out
        probs = self.probs()
        optimizer.zero_grad(set_to_none=True)
        with record_function("abl/mixed_backward"):
            mixed_backward(p, kd, ce, local, self.ctx.ce_weight, probs, self.blocks, self.heads, self._connectors(),
                           self.student_error)
        with record_function("abl/optimizer_step"):
            optimizer.step()
        self.records.add_probs(probs)
        return out

    def search_step(self, batch: Batch, ctx: DistillContext, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
        """Warm start (gamma fixed), then: virtual step theta' -> hypergradient on a validation batch ->
        gamma update -> the real step from theta with the new gamma (Algorithm 1 of the paper). With
        meta_every = k only every k-th step after the warm start is a meta step; the others train with gamma as is."""
        if ctx.step < self.warm_start_steps or (ctx.step - self.warm_start_steps) % self.meta_every:
            out = self.train_step(batch, ctx, optimizer)
            self.records.trace_at(ctx.step + 1, self.probs)
            return out
        with record_function("abl/forward"):
            p, t, terms, kd, ce, local = self._forward(batch, ctx)
            out, loss = self._terms(p, terms, kd, ce, local, batch.y)
        if self._skip(loss, optimizer):
            return out
        a, conn = self.ctx.ce_weight, self._connectors()
        optimizer.zero_grad(set_to_none=True)
        with record_function("abl/separate_gradients"):
            grads = separate_gradients(p, kd, ce, local, a, self.blocks, self.heads, conn, self.student_error)
        probs = self.probs()
        coefs = [step_coefficients(optimizer, blk) for blk in self.blocks]
        if self.hypergradient == "first_order":
            with record_function("abl/validation_pass"):
                v, val = self._val_gradient(batch, ctx)
            d_probs = exact_hypergradient(grads, v, coefs)
        else:
            with record_function("abl/virtual_step"):
                snap = OptimizerSnapshot(optimizer)
                apply_mixed(grads, probs, self.blocks, self.heads, conn)
                optimizer.step()  # theta' (the virtual step)
            with record_function("abl/validation_pass"):
                v, val = self._val_gradient(batch, ctx)
            with record_function("abl/virtual_step"):
                snap.restore()
            with record_function("abl/hypergradient"):
                if self.hypergradient == "darts":
                    d_probs = self._darts(snap, v, batch, t, ctx, coefs)
                else:
                    d_probs = exact_hypergradient(grads, v, coefs)
            optimizer.zero_grad(set_to_none=True)
        with record_function("abl/meta_and_real_step"):
            self.last_hypergradient = softmax_backward(probs, d_probs).detach()
            self.gamma.grad = self.last_hypergradient.to(self.gamma.dtype)
            self.meta_opt.step()
            self.meta_opt.zero_grad(set_to_none=True)
            new = self.probs()
            apply_mixed(grads, new, self.blocks, self.heads, conn)
            optimizer.step()
        self.records.add_probs(new)
        self.records.add_meta_step(val, self.last_hypergradient)
        self.records.trace_at(ctx.step + 1, self.probs)
        return out

    def _val_batch(self, step: int, size: int) -> Batch:
        """A validation mini-batch as large as the training batch (the job's, under torchrun: each rank
        takes its strided share of the same draw)."""
        loader = self.ctx.val_loader
        gen = torch.Generator().manual_seed((self.ctx.seed * 1_000_003 + step) % (2**63))
        rows = ddp.rank_share(lambda n: torch.randperm(loader.num_rows, generator=gen)[:n], size)
        return loader.batch(rows.to(loader.device))

    def _val_gradient(self, batch: Batch, ctx: DistillContext) -> tuple[list[list[Tensor]], Tensor]:
        """v = dL_val/dtheta per block at the current parameters, on a validation mini-batch."""
        vb = self._val_batch(ctx.step, batch.x.shape[0])
        use_kd = self.val_loss == "ce+kd" and self.use_kd and self.distiller is not None
        t = self.teacher_features(vb.x) if use_kd else None
        with frozen_bn_stats(self.student, self.distiller):
            with autocast(self.ctx.device, self.ctx.precision):
                if use_kd:
                    s = self.student.forward_features(vb.x)
                    vctx = DistillContext(labels=vb.y, epoch=ctx.epoch, step=ctx.step,
                                          epochs_total=ctx.epochs_total, progress=ctx.progress)
                    logits = s.logits
                    extra = sum(self.distiller(s, t, vctx).values())
                else:
                    logits, extra = self.student(vb.x), 0.0
            loss = self.ce(logits, vb.y) + extra
            flat = [q for blk in self.blocks for q in blk]
            g = torch.autograd.grad(loss, flat, allow_unused=True)
        v, start = [], 0
        for blk in self.blocks:
            v.append([torch.zeros_like(q) if x is None else x for x, q in zip(g[start:start + len(blk)], blk)])
            start += len(blk)
        ddp.all_reduce_mean_([x for blk in v for x in blk])  # the job's validation batch (no-op in 1 process)
        return v, ddp.all_reduce_mean(loss.detach().float().clone())

    def _darts(self, snap: OptimizerSnapshot, v: list[list[Tensor]], batch: Batch, t: Any, ctx: DistillContext,
               coefs: list[list[float]]) -> Tensor:
        """The paper's finite-difference hypergradient (see abl_meta); parameters are at theta on entry and exit."""
        norm = torch.sqrt(sum((x.double() ** 2).sum() for blk in v for x in blk))
        xi = self.darts_xi / norm.clamp_min(1e-12)
        base = {id(q): val for q, val in zip(snap.params, snap.values)}
        flat = [q for blk in self.blocks for q in blk]
        flat_v = [x for blk in v for x in blk]
        results = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                torch._foreach_copy_(flat, [base[id(q)] + sign * xi * x.to(q.dtype) for q, x in zip(flat, flat_v)])
            results.append(self._train_losses(batch, t, ctx))
        snap.set_params(snap.values)
        eta_c = next((c for blk in coefs for c in blk if c), 0.0)
        return darts_hypergradient(results[0], results[1], self.ctx.ce_weight, xi, eta_c)

    @torch.no_grad()
    def _train_losses(self, batch: Batch, t: Any, ctx: DistillContext) -> tuple[list[Tensor], Tensor]:
        """(local CEs, L_KD) on the training batch, leaving BN statistics, buffers and the RNG as they were."""
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), frozen_bn_stats(self.student, self.distiller, self.heads), \
                preserved_buffers(self.distiller):
            torch.manual_seed(self.ctx.seed + ctx.step)
            with autocast(self.ctx.device, self.ctx.precision):
                p = abl_forward(self.student, batch.x, self.heads)
                terms = self.distiller(p.features, t, ctx) if self.use_kd and self.distiller is not None else {}
            kd = at_least_float32(sum(terms.values())) if terms else torch.zeros((), device=batch.x.device)
            return local_losses(p, batch.y), kd

    # ------------------------------------------------------------------ records
    def epoch_metrics(self) -> dict[str, Any]:
        return self.records.epoch_metrics(self.ctx.run_dir)

    def _write_gammas(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        probs = self.probs().cpu().tolist()
        record = {"gammas": probs, "gamma_student": [p[0] for p in probs], "gamma_teacher": [p[1] for p in probs],
                  "source": self.source, "blocks": self.num_blocks, "aux": self.aux,
                  "student_error": self.student_error, **(extra or {})}
        if self.ctx.run_dir is not None:
            atomic_write_json(Path(self.ctx.run_dir) / GAMMA_FILE, record)
        return record

    @torch.no_grad()
    def head_accuracy(self, loader: Any) -> list[float]:
        """Test top-1 (%) of every block: its auxiliary head, and the student's classifier for the last."""
        if loader is None:
            return []
        modules = [self.student, self.heads]
        states = [m.training for m in modules]
        for m in modules:
            m.eval()
        correct = torch.zeros(len(self.heads) + 1, dtype=torch.long, device=self.ctx.device)
        count = 0
        try:
            for batch in loader:
                with autocast(self.ctx.device, self.ctx.precision):
                    p = abl_forward(self.student, batch.x, self.heads)
                hits = [(z.argmax(1) == batch.y).sum() for z in [*p.aux_logits, p.logits]]
                correct += torch.stack(hits)
                count += batch.y.numel()
        finally:
            for m, s in zip(modules, states):
                m.train(s)
        return [round(100.0 * c / max(count, 1), 4) for c in correct.cpu().tolist()]

    def end_of_training(self) -> dict[str, Any]:
        accs = self.head_accuracy(self.ctx.test_loader)
        record = self._write_gammas({"head_top1": accs})
        return {"abl_gammas": record["gammas"], "abl_gamma_source": self.source, "abl_head_top1": accs}

    # ------------------------------------------------------------------ state
    @classmethod
    def block_logits(cls, state: dict[str, Any], options: dict[str, Any], student: nn.Module, num_classes: int) -> Any:
        """x -> [phi_b(h_b) for every block but the last]: the run's auxiliary heads as ``state`` (its last
        checkpoint's strategy state) holds them; the exported student carries no heads."""
        opts = cls.check_options(options)
        if opts.student_error == "global" or not state.get("heads"):
            return None
        param = next(student.parameters())
        with torch.no_grad():
            x = torch.zeros((2, *student.input_shape), device=param.device, dtype=param.dtype)
            shapes = [tuple(o.shape[1:]) for o in abl_forward(student.eval(), x).block_out]
        heads = build_aux_heads(shapes, num_classes, resolve_aux(opts.aux)).to(param.device)
        heads.load_state_dict(state["heads"])
        heads.eval()

        def logits(x: Tensor) -> list[Tensor]:
            return list(abl_forward(student, x, heads).aux_logits)

        return logits

    def state_dict(self) -> dict[str, Any]:
        return {
            "gamma": self.gamma.detach().cpu(),
            "fixed": None if self.fixed is None else self.fixed.cpu(),
            "source": self.source,
            "meta_opt": self.meta_opt.state_dict(),
            "heads": self.heads.state_dict(),
            **self.records.state_dict(),  # trace, trace_written, sums
            "init": self._init if self._store_init else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.gamma.device
        with torch.no_grad():
            self.gamma.copy_(state["gamma"])
        self.fixed = None if state["fixed"] is None else state["fixed"].to(device)
        self.source = state["source"]
        self.meta_opt.load_state_dict(state["meta_opt"])
        self.heads.load_state_dict(state["heads"])
        self.records.load_state_dict(state)
        if state.get("init") is not None:
            self._init = {k: None if v is None else {n: t.to(device) for n, t in v.items()}
                          for k, v in state["init"].items()}
            self._store_init = True
        self.records.truncate_trace(self.ctx.run_dir)

    def export_student(self) -> nn.Module:
        return self.student


__all__ = ["ABLStrategy", "read_gammas", "GAMMA_FILE", "GAMMA_TRACE"]
