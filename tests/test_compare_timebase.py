"""The Digital Original runs on the plant's clock: the comparator steps the model over the time
between the samples' source timestamps, whatever the agent's tick does."""

from __future__ import annotations

import numpy as np

from drivers.base import Quality, Sample
from edge_agent.compare import Comparator
from edge_agent.config import DEFAULT_SPEC
from edge_agent.image import ProcessImage
from models.process.engine import SpecModel
from models.process.spec import load_spec

SPEC = load_spec(DEFAULT_SPEC)
INPUTS = {"pump_speed": 1450.0, "valve_in": 0.5, "valve_out": 0.5, "heater_power": 5.0}


def _setup() -> tuple[Comparator, ProcessImage, SpecModel]:
    tags = [*SPEC.inputs, *SPEC.outputs]
    image = ProcessImage(tags, [None] * len(tags))
    model = SpecModel(SPEC)
    return Comparator(model, None, image, list(SPEC.inputs), list(SPEC.outputs)), image, model


def _feed(image: ProcessImage, t_source: float, outputs: np.ndarray) -> None:
    values = dict(zip(SPEC.inputs, [INPUTS.get(n, 0.5) for n in SPEC.inputs], strict=True))
    values.update(zip(SPEC.outputs, map(float, outputs), strict=True))
    image.update(Sample(k, v, Quality.GOOD, t_source, t_source + 0.5) for k, v in values.items())


def test_model_steps_over_source_time_not_tick_time() -> None:
    """Ticks at a steady 0.1 s while the PLC's samples come late, early and not at all: the
    model is integrated over exactly the source-time intervals, and a tick with no new sample
    changes nothing."""
    comp, image, _ = _setup()
    reference = SpecModel(SPEC)
    held = np.array([INPUTS.get(n, 0.5) for n in SPEC.inputs])
    outputs = np.array([20.0, 1.5, 1.0, 40.0, 5.0, 50.0])
    source_times = [100.0, 100.07, 100.23, None, 100.31, 100.52, None, None, 100.6]
    tick = 1000.0  # the agent's clock is unrelated to the PLC's
    steps = []
    first = True
    last_src = 0.0
    for src in source_times:
        tick += 0.1
        if src is not None:
            _feed(image, src, outputs)
        before = comp.model.state.copy()
        res = comp.tick(tick)
        if first:
            reference.reset(held, outputs)  # the first tick re-synchronises, dt = 0
            reference.step(held, 0.0)
            reference.observe(outputs, 0.0)
            first = False
            last_src = 100.0
            continue
        if src is None:
            assert comp.step_info is None
            np.testing.assert_array_equal(comp.model.state, before)
            continue
        assert comp.step_info is not None
        assert abs(comp.step_info.dt - (src - last_src)) < 1e-9
        steps.append(src - last_src)
        expected = reference.step(held, src - last_src)
        np.testing.assert_allclose(res.predicted, expected, rtol=1e-12)
        reference.observe(outputs, src - last_src)  # as the comparator does after comparing
        last_src = src
    assert len(steps) == 5 and comp.held_ticks == 3


def test_a_gap_in_source_time_resynchronises() -> None:
    """Samples that jump more than max_gap_s ahead (or back) re-synchronise the model
    instead of integrating across the hole."""
    comp, image, _ = _setup()
    outputs = np.array([20.0, 1.5, 1.0, 40.0, 5.0, 50.0])
    _feed(image, 10.0, outputs)
    comp.tick(1.0)
    _feed(image, 10.1, outputs)
    assert not comp.tick(1.1).resynced
    _feed(image, 30.0, outputs)  # 20 s later in plant time
    assert comp.tick(1.2).resynced
    _feed(image, 29.0, outputs)  # the PLC clock stepped back
    assert comp.tick(1.3).resynced
