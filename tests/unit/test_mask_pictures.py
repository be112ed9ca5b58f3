"""Pictures of routing: the tracker's mask image and `dtr masks` share one colour convention (pixel by pixel),
and the plots name units by routing site, name the site, number experts and wrap titles between phrases."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from dtr_plugins.core.images import MASK_ACTIVE, MASK_GAP, MASK_MASKED, mask_rgb
from dtr_plugins.core.routing import RoutingPlan
from dtr_plugins.experiments.gate_plots import gate_figure, learned_gate_tables
from dtr_plugins.experiments.plots import _phrases, routing_plan_figure, wrap_title
from dtr_plugins.strategies.dtr import SlidingWindow
from dtr_plugins.strategies.switch import SwitchRouting
from dtr_plugins.training.tracker_set import routing_heatmap

from ..learned_strategies import TaskGate


def test_tracker_image_and_dtr_masks_picture_agree_pixel_by_pixel():
    plan = RoutingPlan(SlidingWindow(alpha=4.0, beta=0.8), [16, 16], 20)
    (table, _), = plan.tables()
    heat = routing_heatmap(plan)
    assert heat.shape == (20, 16, 3) and not table.all() and table.any()
    fig = routing_plan_figure(plan, "t")
    try:
        fig.canvas.draw()
        pixels = np.asarray(fig.canvas.buffer_rgba())[:, :, :3]
        ax = fig.axes[0]
        height = pixels.shape[0]
        checked = {True: 0, False: 0}
        for t in range(0, 20, 3):
            for c in range(16):
                x, y = ax.transData.transform((c, t))  # the centre of cell (unit c, timestep t)
                drawn = pixels[int(round(height - y)), int(round(x))]
                tracker = heat[19 - t, c]  # row 0 of the tracker's image is t = T - 1
                assert tuple(drawn) == tuple(tracker), (t, c)
                active = bool(table[t, c])
                assert tuple(tracker) == (MASK_ACTIVE if active else MASK_MASKED)
                checked[active] += 1
        assert checked[True] > 5 and checked[False] > 5  # both polarities were compared
    finally:
        plt.close(fig)
    assert (mask_rgb(np.eye(2, dtype=bool))[0, 0] == MASK_ACTIVE).all()


def test_heads_mlp_mask_plot_names_units_by_site_and_the_site():
    plan = RoutingPlan(SlidingWindow(alpha=4.0, beta=0.8), [4, 16, 4, 16], 20, site="heads_mlp")
    fig = routing_plan_figure(plan, "tiny: dtr")
    try:
        labels = [ax.get_xlabel() for ax in fig.axes if ax.get_images()]
        assert labels == ["attention head (count 4)", "MLP unit (count 16)"]
        title = fig._suptitle.get_text()
        assert "routing site heads_mlp (attention heads and MLP hidden units)" in title.replace("\n", " ")
        assert "channel" not in " ".join(labels) + title
    finally:
        plt.close(fig)
    fig = routing_plan_figure(RoutingPlan(SlidingWindow(), [8, 8], 20), "tiny: dtr")
    try:
        assert fig.axes[0].get_xlabel() == "channel (count 8)" and "routing site input" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def test_switch_gate_plot_numbers_experts_and_names_the_site():
    plan = RoutingPlan(SwitchRouting(embed_dim=8), [4, 4], 20)
    tables, unit, value = learned_gate_tables(plan)
    fig = gate_figure(tables, "a run: " + plan.strategy_repr + " (EMA weights of 0000010.pt)", unit, value,
                      site=plan.site)
    try:
        ax = fig.axes[0]
        top = next(child for child in ax.child_axes)  # the secondary x axis: experts within each layer
        assert [t.get_text() for t in top.get_xticklabels()] == ["0", "1", "2", "0", "1", "2"]
        assert top.get_xlabel() == "expert (numbered 0-2 within each layer)"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"] and ax.get_xlabel().startswith("routed layer")
        assert "learned gates at routing site input" in ax.get_title()
        for line in ax.get_title().splitlines():
            assert line.count("(") == line.count(")"), line  # no line break inside a parenthesised phrase
    finally:
        plt.close(fig)
    assert learned_gate_tables(RoutingPlan(TaskGate(), [4, 4], 20))[1] == "channel"


@pytest.mark.parametrize("width", [20, 30, 45, 70])
def test_titles_wrap_between_phrases(width):
    title = "fashion-dtr__seed0: switch(E=4, k=2, w_jsd=0.01, alpha=1, refresh_every=100) (EMA weights of 0000010.pt)"
    lines = wrap_title(title, width).splitlines()
    assert " ".join(lines) == title
    assert all(line.count("(") == line.count(")") for line in lines)
    assert all(len(line) <= width or len(_phrases(line)) == 1 for line in lines)  # too long: one phrase alone
    if width == 70:
        assert lines == ["fashion-dtr__seed0:", "switch(E=4, k=2, w_jsd=0.01, alpha=1, refresh_every=100)",
                         "(EMA weights of 0000010.pt)"]
    assert wrap_title("a: b", 70) == "a: b" and wrap_title("first line\nsecond", 70) == "first line\nsecond"


def test_tracker_heatmap_gap_and_vanilla():
    plan = RoutingPlan(SlidingWindow(), [8, 16], 10)
    heat = routing_heatmap(plan)
    assert heat.shape[1] == 8 + 2 + 16 and heat.dtype == np.uint8
    assert (heat[:, 8:10] == MASK_GAP).all()
    assert torch.equal(torch.from_numpy((heat[::-1, :8] == MASK_ACTIVE).all(-1).copy()), plan.tables()[0][0])
