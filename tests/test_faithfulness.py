"""Faithfulness: known answers on a model whose score depends on one patch only, the pure protocol
pieces against their definitions, and the table, figure and command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.integrate import trapezoid
from typer.testing import CliRunner

import vitprobe as vp
from vitprobe.analysis import perturbation as pt
from vitprobe.capture import AttentionSite
from vitprobe.cli import app
from vitprobe.faithfulness import BASELINES, faithfulness
from vitprobe.io.preprocess import PreprocessSpec

GRID, PATCH, WATCHED = (3, 3), 8, 4  # the model looks at patch 4, the grid centre... and nothing else


class OnePatch(torch.nn.Module):
    """One attention layer over [CLS, 9 patches]: token = (mean colour of its patch (3), one-hot position
    (10)); only the CLS query is non-zero and it matches patch ``WATCHED``'s position key with logit 60,
    so CLS reads that patch's colour; logits = (sum of the CLS output's colour, 0)."""

    def __init__(self, watched: int = WATCHED) -> None:
        super().__init__()
        n, d = GRID[0] * GRID[1], 3 + 1 + GRID[0] * GRID[1]
        self.colour = torch.nn.Conv2d(3, 3, PATCH, PATCH, bias=False)
        self.colour.weight.data = torch.eye(3)[:, :, None, None].repeat(1, 1, PATCH, PATCH) / PATCH**2
        self.positions = torch.nn.Parameter(torch.cat([torch.zeros(n + 1, 3), torch.eye(n + 1)], dim=1))
        self.q, self.k = torch.nn.Linear(d, d, bias=False), torch.nn.Linear(d, d, bias=False)
        self.q.weight.data.zero_()
        self.q.weight.data[0, 3] = 60.0  # the CLS position feature -> query dimension 0
        self.k.weight.data.zero_()
        self.k.weight.data[0, 4 + watched] = 1.0  # patch `watched`'s position feature -> key dimension 0
        self.block = torch.nn.Identity()  # its output is the token sequence (B, T, D): the readout's input

    def tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        colour = self.colour(pixels).flatten(2).transpose(1, 2)  # (B, N, 3)
        x = torch.cat([torch.zeros_like(colour[:, :1]), colour], dim=1)
        x = torch.cat([x, torch.zeros(*x.shape[:2], self.positions.shape[1] - 3)], dim=-1) + self.positions
        attention = (self.q(x) @ self.k(x).transpose(1, 2)).softmax(-1)[:, None]  # (B, 1, T, T), scale 1
        out = x + attention[:, 0] @ (x * (torch.arange(x.shape[-1]) < 3))  # values: the colour features
        return self.block(out), attention

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return readout(self.tokens(pixels)[0])[1]


def readout(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    embedding = tokens[:, 0]
    return embedding, torch.stack([embedding[:, :3].sum(-1), torch.zeros_like(embedding[:, 0])], dim=-1)


def one_patch_model(watched: int = WATCHED) -> vp.VitModel:
    module = OnePatch(watched).eval()

    def attention_forward(pixels):
        tokens, attention = module.tokens(pixels)
        return readout(tokens)[1], [attention], [tokens]

    spec = PreprocessSpec(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize_hw=(24, 24))
    return vp.VitModel("one-patch", "toy", module, [AttentionSite(module.q, module.k, 1, 13, 1.0)], ("cls",), PATCH,
                       spec, module.forward, blocks=[module.block], labels={0: "bright", 1: "none"},
                       attention_forward=attention_forward, readout=readout)


def bright_patch_image(patch: int = WATCHED) -> Image.Image:
    """Dim noise with a bright patch at ``patch`` (raster index on the 3x3 grid of 8-px patches)."""
    pixels = np.random.default_rng(0).integers(0, 40, (24, 24, 3)).astype(np.uint8)
    row, col = divmod(patch, GRID[1])
    pixels[row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH] = 250
    return Image.fromarray(pixels)


def test_the_toy_model_depends_on_its_one_patch():
    model = one_patch_model()
    pixels, _, _ = model.prepare(bright_patch_image())
    changed = pixels.clone()
    changed[..., :8, :8] = 0.0  # another patch
    assert torch.allclose(model.forward(changed), model.forward(pixels), atol=1e-6)
    changed[..., 8:16, 8:16] = 0.0  # the watched one
    assert model.forward(changed)[0, 0] < 0.1 * model.forward(pixels)[0, 0]


def test_a_faithful_map_ranks_the_one_patch_first_and_deletion_drops_at_step_one():
    model = one_patch_model()
    methods = ["cls", "chefer", ("legrad", {"start_layer": 0})]
    report = faithfulness(model, [bright_patch_image()], methods=methods, steps=9, randomisation_steps=1,
                          progress=False)
    s0 = float(torch.sigmoid(model.forward(model.prepare(bright_patch_image())[0])[0, 0]))
    assert report.score == "probability of class 0 (bright)"
    for record in (r for r in report.records if not r.method.startswith("baseline")):
        deletion, insertion = record.curves["deletion"], record.curves["insertion"]
        np.testing.assert_allclose(deletion, [s0] + [0.5] * 9, atol=1e-5)  # gone at step one
        np.testing.assert_allclose(insertion[1:], s0, atol=1e-5)  # back at step one
        np.testing.assert_allclose(record.curves["positive"], 0.5, atol=1e-5)  # 10%: the patch first
        np.testing.assert_allclose(record.curves["negative"], s0, atol=1e-5)  # 90% least relevant: kept
        row = record.metrics(report.fractions)
        assert abs(row["deletion_auc"] - trapezoid(deletion, np.arange(10) / 9)) < 1e-9
        assert abs(row["deletion_auc"] - (s0 / 18 + 0.5 * 17 / 18)) < 1e-5
        assert abs(row["negative_auc"] - s0) < 1e-5 and abs(row["positive_auc"] - 0.5) < 1e-5
    random = next(r for r in report.records if r.method == BASELINES[0])
    steps_to_drop = int(np.argmax(random.curves["deletion"] < 0.5 + 1e-4))
    ties = pt.tie_keys(9, 0, 0)
    order = pt.patch_order(pt.random_map(GRID, 0, 0), ties)
    assert steps_to_drop == int(np.where(order == WATCHED)[0][0]) + 1  # the random map finds it when it finds it


def test_ties_follow_the_seeded_permutation_and_the_same_for_every_map():
    flat = torch.zeros(GRID)
    ties = pt.tie_keys(9, seed=3, image=0)
    assert pt.patch_order(flat, ties).tolist() == np.argsort(ties).tolist()
    assert pt.patch_order(flat, ties).tolist() != pt.patch_order(flat, pt.tie_keys(9, 4, 0)).tolist()
    stepped = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    order = pt.patch_order(stepped, ties).tolist()
    assert order[0] == 4 and set(order[1:4]) == {0, 1, 6}
    ones = [p for p in order[1:4]]
    assert ones == sorted(ones, key=lambda p: ties[p])
    assert pt.patch_order(stepped, ties, most_first=False).tolist()[-1] == 4


def test_blur_substrate_is_an_11x11_gaussian_of_sigma_5():
    image = torch.zeros(3, 31, 31)
    image[:, 15, 15] = 1.0
    out = pt.blurred(image)[0].double().numpy()
    x = np.arange(-5, 6)
    kernel = np.exp(-x**2 / 50.0)
    kernel /= kernel.sum()
    np.testing.assert_allclose(out[10:21, 10:21], np.outer(kernel, kernel), atol=1e-7)
    assert out[15, 9] == 0 and out[9, 15] == 0  # nothing beyond the 11x11 window
    assert abs(out.sum() - 1.0) < 1e-6


def test_masks_counts_and_composition():
    assert pt.removal_counts(9, 9).tolist() == list(range(10))
    assert pt.removal_counts(256, 20)[[0, 1, 10, 20]].tolist() == [0, 13, 128, 256]
    assert pt.fraction_counts(10).tolist() == list(range(1, 10))
    masks = pt.chosen_masks(np.array([4, 0, 8, 1, 2, 3, 5, 6, 7]), np.array([0, 2]))
    assert masks[0].sum() == 0 and masks[1].nonzero().flatten().tolist() == [0, 4]
    image, substrate = torch.ones(3, 24, 24), torch.zeros(3, 24, 24)
    out = pt.compose(image, substrate, masks, GRID)
    assert out.shape == (2, 3, 24, 24) and out[0].min() == 1
    assert out[1, :, :8, :8].max() == 0 and out[1, :, 8:16, 8:16].max() == 0 and out[1, :, :8, 8:].min() == 1


def test_cascading_randomisation_changes_the_maps_and_restores_the_weights(tiny_dirs):
    model = vp.load(str(tiny_dirs["vit"]))
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8))
              for i in range(2)]
    report = faithfulness(model, images, methods=["cls", "chefer"], size=(32, 32), steps=4, progress=False)
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert report.score.startswith("probability of class ")
    by_method = {m: [r for r in report.records if r.method == m] for m in report.methods}
    assert list(by_method) == ["cls", "chefer", *BASELINES] and all(len(v) == 2 for v in by_method.values())
    for record in report.records:
        assert record.rho.shape == (3,) and record.curves["deletion"].shape == (5,)
    assert all(r.rho.tolist() == [1.0, 1.0, 1.0] for r in by_method[BASELINES[1]])
    cls = [r.rho for r in by_method["cls"]]
    assert max(float(np.max(np.abs(c))) for c in cls) < 1.0  # the maps changed with the weights


def test_an_embedding_target_scores_cosine_to_the_unperturbed_embedding(tiny_dirs):
    model = vp.load(str(tiny_dirs["dinov2"]))
    image = Image.fromarray(np.random.default_rng(7).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    report = faithfulness(model, [image], methods=["rollout", "legrad"], size=(28, 28), steps=4,
                          randomisation_steps=0, progress=False)
    assert report.score == "cosine to the unperturbed image's embedding"
    for record in report.records:
        assert abs(record.curves["deletion"][0] - 1.0) < 1e-5 and abs(record.curves["insertion"][-1] - 1.0) < 1e-5
        assert record.rho.shape == (0,) and np.isnan(record.metrics(report.fractions)["randomisation_rho"])


def test_faithfulness_command_writes_tables_and_figure(tiny_dirs, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            folder / f"p{i}.png")
    (folder / "broken.png").write_text("not an image")
    result = CliRunner().invoke(app, ["faithfulness", str(folder), "--model", str(tiny_dirs["dinov2"]),
                                      "--method", "rollout", "--method", "legrad,cls", "--layer", "1",
                                      "--size", "28", "28", "--steps", "4", "--randomisation-steps", "1",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output  # one image failed, recorded; the others measured
    out = tmp_path / "out"
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0] == ("method,images," + ",".join(f"{m}{end}" for m in ("deletion_auc", "insertion_auc",
                          "positive_auc", "negative_auc", "randomisation_rho") for end in ("", "_low", "_high"))
                          + ",seconds_per_image")
    rows = {line.split(",")[0]: line.split(",") for line in summary[1:]}
    assert float(rows["rollout"][-1]) > 0 and rows["baseline-random"][-1] == "nan"
    low, mean, high = (float(rows["legrad"][i]) for i in (3, 2, 4))  # deletion: two images, an interval
    assert low <= mean <= high
    assert [line.split(",")[0] for line in summary[1:]] == ["rollout", "legrad", "cls", *BASELINES]
    data = json.loads((out / "faithfulness.json").read_text())
    assert data["failures"][0]["image"].endswith("broken.png") and len(data["records"]) == 2 * 5
    assert data["options"]["methods"] == ["rollout", "legrad", "cls"]
    assert Image.open(out / "curves.png").size[0] > 800
    assert "broken.png" in result.output and "Traceback" not in result.output


def test_faithfulness_command_refuses_bad_options_in_one_line(tiny_dirs, tmp_path):
    image = tmp_path / "p.png"
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(image)
    for args, words in [(["--method", "bogus"], "unknown method 'bogus'"),
                        (["--randomisation-steps", "9"], "randomisation_steps takes 0..3"),
                        (["--target", "3"], "no classification head"),
                        (["--steps", "0"], "--steps")]:
        result = CliRunner().invoke(app, ["faithfulness", str(image), "--model", str(tiny_dirs["dinov2"]), *args,
                                          "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and words in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("watched", [0, 8])
def test_deletion_auc_of_the_attention_map_beats_the_baselines_on_the_toy(watched):
    model = one_patch_model(watched)
    report = faithfulness(model, [bright_patch_image(watched)], methods=["cls"], steps=9, randomisation_steps=0,
                          progress=False)
    rows = {row["method"]: row for row in report.summary()}
    assert rows["cls"]["deletion_auc"] <= min(rows[b]["deletion_auc"] for b in BASELINES) + 1e-9
    assert rows["cls"]["insertion_auc"] >= max(rows[b]["insertion_auc"] for b in BASELINES) - 1e-9


def test_mean_interval_is_a_percentile_bootstrap():
    """Constant values: a point interval; one value: no interval; a large normal sample: the percentile
    bootstrap interval of the mean is close to mean ± 1.96 s / √n."""
    from vitprobe.faithfulness import mean_interval

    assert mean_interval(np.full(5, 0.25)) == (0.25, 0.25, 0.25)
    mean, low, high = mean_interval(np.array([0.5, np.nan]))
    assert mean == 0.5 and np.isnan(low) and np.isnan(high)
    sample = np.random.default_rng(1).normal(2.0, 1.0, 400)
    mean, low, high = mean_interval(sample, seed=3)
    half = 1.96 * sample.std(ddof=1) / np.sqrt(len(sample))
    assert mean == pytest.approx(sample.mean())
    assert low == pytest.approx(mean - half, abs=0.15 * half) and high == pytest.approx(mean + half, abs=0.15 * half)
    assert mean_interval(sample, seed=3) == (mean, low, high)


def test_results_read_back_and_combine(tmp_path):
    """write -> read gives the same records and summary; runs over other images combine; other options
    do not."""
    from vitprobe.faithfulness import Faithfulness

    model = one_patch_model()
    runs = [faithfulness(model, [bright_patch_image(p)], methods=["cls"], steps=3, randomisation_steps=0,
                         progress=False) for p in (1, 4)]
    for i, run in enumerate(runs):
        run.write(tmp_path / str(i))
    back = [Faithfulness.read(tmp_path / str(i)) for i in range(2)]
    for got, want in zip(back[0].summary(), runs[0].summary(), strict=True):
        assert got["method"] == want["method"] and got.keys() == want.keys()
        assert all(np.isclose(got[k], want[k], atol=1e-6, equal_nan=True) for k in want if k != "method")
    for got, want in zip(back[0].records, runs[0].records, strict=True):
        assert (got.image, got.method) == (want.image, want.method)
        assert all(np.allclose(got.curves[k], want.curves[k], atol=1e-6) for k in want.curves)
    both = Faithfulness.combine(back)
    assert len(both.records) == len(runs[0].records) + len(runs[1].records) and both.summary()[0]["images"] == 2
    other = faithfulness(model, [bright_patch_image(2)], methods=["cls"], steps=5, randomisation_steps=0,
                         progress=False)
    with pytest.raises(ValueError, match="cannot be combined"):
        Faithfulness.combine([back[0], other])


def test_curves_figure_tells_apart_more_methods_than_colours():
    """Sixteen curves (fourteen methods, two baselines): each drawn in its own colour and line style."""
    from vitprobe.render.plots import faithfulness_figure

    names = [f"m{i}" for i in range(14)] + list(BASELINES)
    fractions = np.linspace(0, 1, 5)
    curves = {n: np.linspace(1, 0.5, 5) for n in names}
    fig = faithfulness_figure(fractions, curves, curves, {n: np.zeros(0) for n in names}, "score")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 16 and len({(str(line.get_color()), line.get_linestyle()) for line in lines}) == 16
