"""The end-to-end part of the main job (``attncc demo``) and of bench/e2e.py: real models with
random weights (nothing is downloaded), before and after ``ac.swap``: the outputs compared,
then per-layer and end-to-end inference times, interleaved, medians.

Models: a ViT-B-sized torch nn.TransformerEncoder, timm's swin_tiny_patch4_window7_224 and
open_clip's ViT-B-32 image tower (timm and open_clip are the test extra's packages).
"""
import copy
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from .progress import progress_bar

_TV_LIB = None


def import_torchvision():
    """timm and open_clip import torchvision. The torchvision that matches torch 2.13 exists
    only as a CUDA build whose C extension cannot load beside the CPU torch: its import then
    fails registering fake kernels for two op schemas the extension should have defined. Then,
    and only then, the two schemas are declared first (no torchvision op runs in the demo, the
    benches or the tests; attncc's library code never imports torchvision)."""
    global _TV_LIB
    try:
        import torchvision  # noqa: F401 (imported for its side effect)
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e):
            raise
        _TV_LIB = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _TV_LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision  # noqa: F401


def _need(package, extra="test"):
    import importlib
    import_torchvision()
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise RuntimeError(f"the demo's {package} model needs the {package} package: pip install -e "
                           f"'.[{extra}]' (make demo installs it)") from e


@dataclass
class Model:
    """A model to swap: its name, the module (eval mode), an input maker (batch -> tensor) and
    the qualified names of its layers (the blocks timed one by one)."""
    name: str
    module: torch.nn.Module
    make_input: object
    layers: list


def vit_b_encoder():
    """ViT-B's encoder as torch's nn.TransformerEncoder: 12 pre-norm layers, width 768, 12
    heads, MLP 3072, GELU, 197 tokens (224x224 in 16x16 patches plus the class token)."""
    layer = torch.nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0, activation="gelu", batch_first=True,
                                             norm_first=True)
    model = torch.nn.TransformerEncoder(layer, 12, enable_nested_tensor=False).eval()
    return Model("ViT-B-sized nn.TransformerEncoder (12 layers, 197 tokens, width 768, 12 heads)", model,
                 lambda b: torch.randn(b, 197, 768), [f"layers.{i}" for i in range(12)])


def swin_tiny():
    timm = _need("timm")
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    layers = [f"layers.{s}.blocks.{b}" for s, n in enumerate((2, 2, 6, 2)) for b in range(n)]
    return Model("timm swin_tiny_patch4_window7_224", model, lambda b: torch.randn(b, 3, 224, 224), layers)


def open_clip_vit_b_32():
    open_clip = _need("open_clip")
    import logging
    logging.getLogger().setLevel(logging.ERROR)          # its "no pretrained weights" warning
    model = open_clip.create_model("ViT-B-32", pretrained=None).visual.eval()
    return Model("open_clip ViT-B-32 image tower", model, lambda b: torch.randn(b, 3, 224, 224),
                 [f"transformer.resblocks.{i}" for i in range(12)])


MODELS = {"vit": vit_b_encoder, "swin": swin_tiny, "open_clip": open_clip_vit_b_32}


def timeit(fn, min_time=0.2, max_reps=50, warm=True):
    """Median seconds of repeated calls (after one warm-up call when `warm`), at least
    `min_time` seconds of them (at least one call)."""
    if warm:
        fn()
    ts = []
    while not ts or (sum(ts) < min_time and len(ts) < max_reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def interleaved(calls, rounds, min_time=0.2, per_round=False):
    """{name: median over `rounds` interleaved rounds of timeit(fn)} for {name: fn}
    (per_round: {name: [the time of each round]}). Each fn is warmed up once; the rounds run
    the calls in alternating order (forward, then backward), so a drift of the machine's speed
    weighs on every call alike."""
    from .tune.runner import alternate
    for fn in calls.values():
        fn()
    res = {name: [] for name in calls}
    for r in range(rounds):
        for name, fn in alternate(calls.items(), r):
            res[name].append(timeit(fn, min_time, warm=False))
    return res if per_round else {name: statistics.median(v) for name, v in res.items()}


def _warm_with_progress(model, x, names, what, stream):
    """One forward pass of the swapped model (its kernels compile on first use), a bar step
    per swapped module as it finishes."""
    mods = dict(model.named_modules())
    bar, hooks = progress_bar(len(names), stream=stream), []
    for name in names:
        def pre(m, *a, name=name):
            m._demo_t0 = time.perf_counter()

        def post(m, *a, name=name):
            bar.set_description_str(f"{what}: {name} ({time.perf_counter() - m._demo_t0:.1f} s)", refresh=False)
            bar.update()
        hooks += [mods[name].register_forward_pre_hook(pre), mods[name].register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        bar.close()
        for h in hooks:
            h.remove()


def _layer_inputs(model, x, layers):
    """The input of each named layer in one forward pass of `model` (positional args)."""
    mods, got, hooks = dict(model.named_modules()), {}, []
    for name in layers:
        hooks.append(mods[name].register_forward_pre_hook(lambda m, a, name=name: got.setdefault(name, a)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return got


@dataclass
class Comparison:
    name: str
    report: object
    max_diff: float
    equal: bool
    layers: list            # (layer name, before s, after s)
    before: float
    after: float
    swapped: object = None  # the swapped copy of the model
    others: dict = None     # end-to-end seconds of the `extra` variants, timed with before and after
    ratios: list = None     # before / after of each end-to-end round (the two timed side by side)

    @property
    def speedup(self):
        """The median of the rounds' before / after ratios: each round's pair ran back to back,
        so a slow spell of the shared machine weighs on both sides of a ratio."""
        return statistics.median(self.ratios) if self.ratios else self.before / self.after

    def table(self):
        rows = ["| layer | before ms | after ms | speedup |", "|---|---|---|---|"]
        rows += [f"| {n} | {b * 1e3:.2f} | {a * 1e3:.2f} | {b / a:.2f}x |" for n, b, a in self.layers]
        rows.append(f"| **end to end** | **{self.before * 1e3:.1f}** | **{self.after * 1e3:.1f}** | "
                    f"**{self.speedup:.2f}x** |")
        return "\n".join(rows)


def compare(model, batch=8, rounds=3, backend="auto", layer_rounds=None, stream=sys.stderr, tol=1e-4, extra=None):
    """Swap a deep copy of `model.module`, check its output against the original's on one
    input, and time both: each layer on its captured input, then the whole model. `extra`
    (swapped model -> {name: model}) adds variants to the end-to-end rounds, interleaved with
    the two (Comparison.others)."""
    import attncc as ac
    torch.manual_seed(0)
    orig = model.module
    new = copy.deepcopy(orig)
    report = ac.swap(new, backend=backend)
    x = model.make_input(batch)
    _warm_with_progress(new, x, [s.name for s in report], "compiling", stream)
    with torch.no_grad():
        want, got = orig(x), new(x)
    diff = (got - want).abs().max().item()
    equal = torch.allclose(got, want, rtol=tol, atol=tol)
    inputs = _layer_inputs(orig, x, model.layers)
    a_mods, b_mods = dict(orig.named_modules()), dict(new.named_modules())
    layers = []
    with torch.no_grad(), progress_bar(len(model.layers) + 1, stream=stream) as bar:
        for name in model.layers:
            bar.set_description_str(f"timing {name}")
            t = interleaved({"before": lambda: a_mods[name](*inputs[name]),
                             "after": lambda: b_mods[name](*inputs[name])}, layer_rounds or rounds, 0.1)
            layers.append((name, t["before"], t["after"]))
            bar.update()
        bar.set_description_str("timing end to end")
        calls = {"before": lambda: orig(x), "after": lambda: new(x)}
        others = extra(new) if extra else {}
        calls.update({name: (lambda m=m: m(x)) for name, m in others.items()})
        t = interleaved(calls, rounds, 0.5, per_round=True)
        bar.update()
    med = {name: statistics.median(v) for name, v in t.items()}
    return Comparison(model.name, report, diff, equal, layers, med["before"], med["after"], new,
                      {name: med[name] for name in others}, [b / a for b, a in zip(t["before"], t["after"])])


@dataclass
class TrainingComparison:
    """One training step before and after ac.swap: seconds (medians), the rounds' before /
    after ratios, and how far the swapped model's parameter gradients are from the original's
    (max abs difference, relative to the largest gradient)."""
    name: str
    before: float
    after: float
    ratios: list
    grad_diff: float

    @property
    def speedup(self):
        return statistics.median(self.ratios)


def compare_training(model, batch=8, rounds=5, backend="auto"):
    """One training step (forward, a mean-square loss, backward, an SGD step at learning rate
    0 so both copies stay the same) of `model.module` in train mode and of a swapped copy,
    interleaved rounds; the parameter gradients of the first step compared."""
    import attncc as ac
    torch.manual_seed(0)
    orig = copy.deepcopy(model.module).train()
    new = copy.deepcopy(orig)
    ac.swap(new, backend=backend)
    x = model.make_input(batch)
    opts = {m: torch.optim.SGD(m.parameters(), lr=0.0) for m in (orig, new)}

    def step(m):
        opts[m].zero_grad(set_to_none=True)
        m(x).float().square().mean().backward()
        opts[m].step()
    grads = []
    for m in (orig, new):
        torch.manual_seed(0)        # the same stochastic-depth draws (timm's Swin trains with drop_path)
        step(m)
        grads.append([p.grad for p in m.parameters()])
    scale = max(g.abs().max().item() for g in grads[0] if g is not None)
    diff = max((a - b).abs().max().item() for a, b in zip(*grads) if a is not None) / scale
    t = interleaved({"before": lambda: step(orig), "after": lambda: step(new)}, rounds, 0.5, per_round=True)
    return TrainingComparison(model.name, statistics.median(t["before"]), statistics.median(t["after"]),
                              [b / a for b, a in zip(t["before"], t["after"])], diff)
