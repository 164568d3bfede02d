"""PV mining (LMSanitator): invert the predefined vectors of a task-agnostic backdoor.

A soft trigger of ``trigger_length`` embedding vectors is inserted into carrier sentences and optimised
so that the watched output moves far from the clean output (distance) and becomes the same for every
input (collapse). Several seeds are optimised at once in one batch: each seed has its own trigger,
insertion positions, adaptive step size and verdict.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from lmshield.defenses.sanitizer.carriers import PreparedCarriers, insert_soft_triggers
from lmshield.defenses.sanitizer.config import SanitizerConfig
from lmshield.defenses.sanitizer.monitor import sign_consistency
from lmshield.defenses.sanitizer.result import SeedTrace
from lmshield.errors import ScanError
from lmshield.models.encoder import Encoder

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass
class SeedOutcome:
    """A finished seed: its trace and, when it reached the end, its candidate PV and trigger."""

    trace: SeedTrace
    pv: torch.Tensor | None = None
    trigger: torch.Tensor | None = None


@dataclass
class _GroupState:
    """Optimisation state of the seeds mined together in one batch."""

    seeds: list[int]
    triggers: torch.Tensor  # (S, L, E)
    generator: torch.Generator
    exp_avg: torch.Tensor = field(init=False)
    exp_avg_sq: torch.Tensor = field(init=False)
    boosted: torch.Tensor = field(init=False)
    active: torch.Tensor = field(init=False)
    steps: int = 0

    def __post_init__(self) -> None:
        self.exp_avg = torch.zeros_like(self.triggers)
        self.exp_avg_sq = torch.zeros_like(self.triggers)
        self.boosted = torch.ones(len(self.seeds), dtype=torch.bool)
        self.active = torch.ones(len(self.seeds), dtype=torch.bool)
        self.refining = torch.zeros(len(self.seeds), dtype=torch.bool)


class _History:
    """Per-seed epoch means of distance (in the config's scale) and collapse (share of the ceiling)."""

    def __init__(self, seeds: int) -> None:
        self.distance: list[list[float]] = [[] for _ in range(seeds)]
        self.collapse: list[list[float]] = [[] for _ in range(seeds)]


def entropy_across_batch(outputs: torch.Tensor) -> torch.Tensor:
    """Mean over hidden dimensions of the entropy of a softmax across the batch; ``(S, B, H) -> (S,)``."""
    log_p = torch.log_softmax(outputs, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean(dim=1)


def nearest_tokens(encoder: Encoder, trigger: torch.Tensor, count: int) -> list[list[str]]:
    """For each vector, the ``count`` vocabulary tokens whose embeddings point the most the same way (cosine).

    The scan gives it each soft-trigger vector's move (final minus start): the vectors end close to the
    tokens they started from, so their own nearest tokens name the start; the move points at what the search
    was drawn to (on a POR-planted MiniLM-L6 it named the planted ``mn``, ``tq`` and ``mm``)."""
    rows = encoder.embedding_matrix.detach()[: encoder.token_rows]  # padding rows past the vocabulary name no token
    matrix = torch.nn.functional.normalize(rows.float().cpu(), dim=1)
    vectors = torch.nn.functional.normalize(trigger.float().cpu(), dim=1)
    ids = (vectors @ matrix.T).topk(count, dim=1).indices
    return [encoder.tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]


class PVMiner:
    """Runs PV mining seed groups on prepared carriers; stateless between groups except for known PVs."""

    def __init__(self, encoder: Encoder, carriers: PreparedCarriers, config: SanitizerConfig) -> None:
        self.encoder = encoder
        self.carriers = carriers
        self.config = config
        matrix = encoder.embedding_matrix.detach()
        self.embedding_low = float(matrix.min()) * config.legitimacy_factor
        self.embedding_high = float(matrix.max()) * config.legitimacy_factor
        self.entropy_ceiling = math.log(config.batch_size)
        self.steps_per_epoch = len(carriers) // config.batch_size
        # detect mode answers "is there a PV?" as soon as the search epochs end; search mode refines
        self.refine_epochs = config.refine_epochs if config.mode == "search" else 0
        self.batches = 0  # forward/backward passes run, over all groups

    def distance_scale(self) -> float:
        return self.carriers.spread if self.config.distance_scale == "relative" else 1.0

    def initial_trigger(self, seed: int) -> torch.Tensor:
        """The soft trigger a seed starts from: embedding rows of tokens chosen by that seed (on the CPU)."""
        matrix = self.encoder.embedding_matrix.detach()
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.encoder.token_rows, (self.config.trigger_length,), generator=gen)
        return matrix[ids.to(matrix.device)].float().cpu()  # only the chosen rows, not a copy of the whole matrix

    def init_group(self, seeds: list[int]) -> _GroupState:
        """Each seed initialises its trigger from embedding rows chosen by that seed."""
        triggers = torch.stack([self.initial_trigger(seed) for seed in seeds]).to(self.encoder.device)
        return _GroupState(seeds=seeds, triggers=triggers, generator=torch.Generator().manual_seed(seeds[0] * 7919 + 1))

    def run_group(self, seeds: list[int], known_pvs: torch.Tensor, progress: bool = True) -> list[SeedOutcome]:
        """Optimise one group of seeds until each is abandoned, rejected or refined to a plateau.

        Epochs 1..``epochs`` search; a seed still below ``abandon_threshold`` after ``abandon_after_epoch``
        is given up. Seeds that reach ``distance_threshold`` by the last search epoch are backdoor
        candidates. In search mode they are refined with ``refine_lr_factor`` x the step size for up to
        ``refine_epochs`` more epochs, until their distance grows by less than ``refine_plateau`` per epoch,
        so the PV they report is the converged collapse point rather than a point on the way there.
        """
        config = self.config
        state = self.init_group(seeds)
        started = time.perf_counter()
        history = _History(len(seeds))
        finished: dict[int, SeedOutcome] = {}
        known = known_pvs.to(self.encoder.device)
        bar = tqdm(
            total=config.epochs * self.steps_per_epoch,
            desc=f"seeds {seeds[0]}-{seeds[-1]}",
            disable=not progress,
            leave=False,
            unit="step",
        )
        last_epoch = config.epochs + self.refine_epochs
        for epoch in range(1, last_epoch + 1):
            active = state.active.nonzero().squeeze(1).tolist()
            outputs = self._run_epoch(state, known, history, bar)
            if epoch == config.abandon_after_epoch and epoch < config.epochs:
                self._abandon_far_seeds(state, history, finished, started)
            for rank, i in enumerate(active):
                if state.active[i] and self._seed_is_done(epoch, history.distance[i], last_epoch):
                    state.active[i] = False
                    finished[i] = self._finish_seed(state, i, history, outputs[rank], started)
            if not bool(state.active.any()):
                break
            if epoch == config.epochs and self.refine_epochs:
                state.refining |= state.active
                bar.total += self.refine_epochs * self.steps_per_epoch
                bar.refresh()
        bar.close()
        return [finished[i] for i in range(len(seeds))]

    def _seed_is_done(self, epoch: int, distances: list[float], last_epoch: int) -> bool:
        """Search epochs run to the end; a candidate refines until its distance plateaus."""
        config = self.config
        if epoch < config.epochs:
            return False
        if epoch == config.epochs:
            return distances[-1] < config.distance_threshold or self.refine_epochs == 0
        gain = distances[-1] - distances[-2]
        return epoch == last_epoch or gain < config.refine_plateau * distances[-2]

    def _run_epoch(self, state: _GroupState, known: torch.Tensor, history: _History, bar: tqdm) -> torch.Tensor:
        """One pass over the carriers; records epoch means and returns the active seeds' outputs."""
        config = self.config
        active = state.active.nonzero().squeeze(1)
        distance_sum = torch.zeros(len(active))
        entropy_sum = torch.zeros(len(active))
        seen = []
        order = torch.randperm(len(self.carriers), generator=state.generator)
        for step in range(self.steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            distance, entropy, outputs = self._step(state, batch, known)
            self.batches += 1
            distance_sum += distance
            entropy_sum += entropy
            seen.append(outputs)
            bar.set_postfix(  # drawn by update() at the bar's own pace, not once a step
                dist=f"{float(distance.max()) / self.distance_scale():.3g}",
                collapse=f"{float(entropy.max()) / self.entropy_ceiling:.4f}",
                active=len(active),
                refresh=False,
            )
            bar.update(1)
        if not bool(distance_sum.isfinite().all() and entropy_sum.isfinite().all()):
            seeds = [state.seeds[i] for i in active.tolist()]
            raise ScanError(
                f"the encoder's outputs became NaN or infinite while mining seeds {seeds}: the scan cannot judge "
                "this model (it must not pass as clean); check its weights and the scan's learning rate"
            )
        for rank, i in enumerate(active.tolist()):
            history.distance[i].append(float(distance_sum[rank]) / self.steps_per_epoch / self.distance_scale())
            history.collapse[i].append(float(entropy_sum[rank]) / self.steps_per_epoch / self.entropy_ceiling)
        return torch.cat(seen, dim=1)  # (active seeds, steps * batch, hidden)

    def _step(
        self, state: _GroupState, batch: torch.Tensor, known: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One gradient step for the active seeds; returns their raw distance, entropy and outputs."""
        config, device, carriers = self.config, self.encoder.device, self.carriers
        active = state.active.nonzero().squeeze(1)
        choice = torch.rand(len(active), len(batch), generator=state.generator)
        slot = (choice * carriers.slot_counts[batch]).long()  # (S, B)
        triggers = state.triggers[active].clone().requires_grad_(True)
        outputs = self.triggered_outputs(triggers, batch, slot)
        target = carriers.targets[batch].to(device)
        distance = (outputs - target).pow(2).mean(dim=(1, 2))
        entropy = entropy_across_batch(outputs)
        loss = -distance - entropy
        if known.shape[0]:
            repeat = (outputs[:, :, None, :] - known[None, None]).pow(2).mean(dim=(1, 3)).min(dim=1).values
            loss = loss - config.repetition_weight * repeat
        loss.sum().backward()
        self._adam_update(state, active, triggers.grad.detach())
        return distance.detach().cpu(), entropy.detach().cpu(), outputs.detach().cpu()

    def triggered_outputs(self, triggers: torch.Tensor, rows: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Watched outputs ``(S, B, H)`` of soft ``triggers`` ``(S, L, E)`` inserted into carrier ``rows`` at
        their word slot ``slot`` ``(S, B)``; differentiable in ``triggers``, on the encoder's device."""
        carriers, device = self.carriers, self.encoder.device
        input_ids = carriers.input_ids[rows].to(device)
        attention = carriers.attention_mask[rows].to(device)
        positions = carriers.slots[rows][torch.arange(len(rows)), slot].to(device)  # (S, B)
        watched = carriers.watched[rows].to(device)
        watched = watched + triggers.shape[1] * (watched >= positions)  # (S, B)
        with torch.no_grad():
            embeds = self.encoder.embed(input_ids)
        inputs, mask = insert_soft_triggers(embeds, attention, triggers.to(device, embeds.dtype), positions)
        hidden = self.encoder.hidden_states(inputs, mask)
        index = torch.arange(hidden.shape[0], device=device)
        return hidden[index, watched.reshape(-1)].float().reshape(len(triggers), len(rows), -1)

    def _adam_update(self, state: _GroupState, active: torch.Tensor, grad: torch.Tensor) -> None:
        """Adam with a per-seed step size: ``boost`` x lr until the seed's largest |grad| passes the bar."""
        config = self.config
        beta1, beta2 = ADAM_BETAS
        state.steps += 1
        peak = grad.abs().flatten(1).max(dim=1).values.cpu()
        state.boosted[active] &= peak < config.boost_until_grad
        base = torch.where(state.refining[active], config.lr * config.refine_lr_factor, config.lr)
        lr = torch.where(state.boosted[active], config.lr * config.boost, base).to(grad.device)
        m = state.exp_avg[active] * beta1 + grad * (1 - beta1)
        v = state.exp_avg_sq[active] * beta2 + grad.pow(2) * (1 - beta2)
        state.exp_avg[active], state.exp_avg_sq[active] = m, v
        m_hat = m / (1 - beta1**state.steps)
        v_hat = v / (1 - beta2**state.steps)
        updated = state.triggers[active] - lr[:, None, None] * m_hat / (v_hat.sqrt() + ADAM_EPS)
        if config.project_trigger:
            updated = updated.clamp(self.embedding_low, self.embedding_high)
        state.triggers[active] = updated

    def _abandon_far_seeds(
        self, state: _GroupState, history: _History, finished: dict[int, SeedOutcome], started: float
    ) -> None:
        threshold = self.config.abandon_threshold
        for i in state.active.nonzero().squeeze(1).tolist():
            distance = history.distance[i][-1]
            if distance < threshold:
                state.active[i] = False
                trace = self._trace(state, i, history, started)
                trace.status = "abandoned"
                trace.reason = f"distance {distance:.3f} < {threshold} after epoch {trace.epochs}"
                finished[i] = SeedOutcome(trace)

    def _trace(self, state: _GroupState, i: int, history: _History, started: float) -> SeedTrace:
        return SeedTrace(
            seed=state.seeds[i],
            status="candidate",
            reason="",
            epochs=len(history.distance[i]),
            steps=len(history.distance[i]) * self.steps_per_epoch,
            distance=history.distance[i],
            collapse=history.collapse[i],
            legitimate=self._is_legitimate(state.triggers[i]),
            seconds=time.perf_counter() - started,
        )

    def _is_legitimate(self, trigger: torch.Tensor) -> bool:
        return bool(((trigger >= self.embedding_low) & (trigger <= self.embedding_high)).all())

    def _finish_seed(
        self, state: _GroupState, i: int, history: _History, outputs: torch.Tensor, started: float
    ) -> SeedOutcome:
        """The candidate PV is the mean watched output over the seed's whole last epoch."""
        pv = outputs.mean(dim=0)
        trace = self._trace(state, i, history, started)
        trace.sign_consistency = sign_consistency(outputs, pv)
        return SeedOutcome(trace, pv=pv.clone(), trigger=state.triggers[i].detach().float().cpu().clone())


def judge(outcome: SeedOutcome, known_pvs: torch.Tensor, config: SanitizerConfig, scale: float) -> None:
    """Accept or reject a candidate seed in place: distance, collapse, legitimacy, then uniqueness."""
    trace = outcome.trace
    if trace.status != "candidate":
        return
    failures = []
    if trace.final_distance < config.distance_threshold:
        failures.append(f"distance {trace.final_distance:.3f} < {config.distance_threshold}")
    if trace.final_collapse < config.collapse_threshold:
        failures.append(f"collapse {trace.final_collapse:.4f} < {config.collapse_threshold}")
    consistency = trace.sign_consistency
    if consistency is None or consistency < config.min_sign_consistency:
        measured = "not measured" if consistency is None else f"{consistency:.2f}"
        failures.append(f"sign consistency {measured} < {config.min_sign_consistency}")
    if not trace.legitimate:
        failures.append(f"trigger outside {config.legitimacy_factor}x the embedding range")
    if outcome.pv is not None and known_pvs.shape[0]:
        gaps = (known_pvs - outcome.pv[None]).pow(2).mean(dim=1) / scale
        trace.unique = bool(gaps.min() > config.uniqueness_threshold)
        if not trace.unique:
            failures.append(f"same PV as one found before (distance {float(gaps.min()):.3f})")
    else:
        trace.unique = True
    trace.status = "rejected" if failures else "accepted"
    trace.reason = "; ".join(failures) if failures else "distance, collapse, legitimacy and uniqueness passed"
