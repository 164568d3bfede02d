"""Progress bars of long loops redraw at tqdm's own pace, not once per batch: a log file of a long run on a
fast device would otherwise get a line per training batch or mining step."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from tqdm import tqdm

from lmshield.defenses.sanitizer import mining as mining_module
from lmshield.defenses.sanitizer import scan
from lmshield.models import Encoder
from lmshield.tuning import TuningConfig, tune
from lmshield.tuning import trainer as trainer_module
from tests.tiny_pairs import TINY_SCAN
from tests.tuning.helpers import tiny_task


class CountingBar(tqdm):
    """A bar that never redraws on its own (an hour between redraws) and counts the redraws it is made to do."""

    bars: ClassVar[list[CountingBar]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.redraws = 0
        super().__init__(*args, **{**kwargs, "mininterval": 3600, "miniters": 10**9, "disable": False})
        CountingBar.bars.append(self)

    def refresh(self, *args: Any, **kwargs: Any) -> bool:
        self.redraws += 1
        return super().refresh(*args, **kwargs)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> list[CountingBar]:
    CountingBar.bars = []
    monkeypatch.setattr(trainer_module, "tqdm", CountingBar)
    monkeypatch.setattr(mining_module, "tqdm", CountingBar)
    return CountingBar.bars


def test_a_training_epoch_does_not_redraw_its_bar_per_batch(
    bert_pair: tuple[Encoder, ...], tmp_path: Path, counting: list[CountingBar]
) -> None:
    config = TuningConfig(method="lora", epochs=1, batch_size=4, max_length=32, encoder_hidden_size=32)
    tune(bert_pair[0], tiny_task(64, 1), tiny_task(8, 2), config, out_dir=tmp_path / "clf", progress=True)
    (bar,) = counting
    assert bar.n == 16
    assert bar.redraws <= 2  # was 16: set_postfix redrew at every batch


def test_pv_mining_does_not_redraw_its_bar_per_step(
    bert_pair: tuple[Encoder, ...], counting: list[CountingBar]
) -> None:
    scan(bert_pair[0], TINY_SCAN, progress=True)
    steps = sum(bar.n for bar in counting)
    assert steps >= 8
    assert sum(bar.redraws for bar in counting) <= 3 * len(counting)  # was one per step
