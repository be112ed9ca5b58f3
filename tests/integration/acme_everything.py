"""One plugin of every kind, each from its Protocol alone."""
import hashlib
import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import dtr_plugins
from dtr_plugins.core.contracts import TokenLayout
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.routing import RoutedBackbone, routed_residual


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- process: discrete, x_t = sqrt(a) x0 + sqrt(1 - a) eps with a = 1 - (t + 1) / (T + 1), epsilon target
class CosParams(Strict):
    steps: int = Field(20, ge=2)


class EveryStepTimes:  # a timestep sampler: one small class
    continuous = False

    def __init__(self, num_timesteps):
        self.num_timesteps = num_timesteps

    def __repr__(self):
        return f"every_step(T={self.num_timesteps})"

    def sample(self, n, device=None):
        return torch.randint(0, self.num_timesteps, (n,), device=device)


class LowHalf:  # a timestep rule (``timesteps:``): integer timesteps of the lower half of 0..T-1
    def __repr__(self):
        return "low_half"

    def sampler(self, process, *, continuous):
        if continuous:
            raise ConfigError("timesteps.name: 'acme_low_half' draws integer timesteps only")
        return EveryStepTimes(max(1, process.num_timesteps // 2))


class HalfLife:  # an EMA rule: two averages of fixed half-lives (in steps)
    def __init__(self, halflife):
        self.halflife = halflife

    def profiles(self):
        from dtr_plugins.core.contracts import EmaProfile

        return [EmaProfile("fast"), EmaProfile("slow")]

    def betas(self, step):
        return [0.5 ** (1 / self.halflife), 0.5 ** (1 / (4 * self.halflife))]

    def applied(self):
        return {"name": "acme_halflife", "halflife": self.halflife}


class HalfLifeParams(Strict):
    halflife: float = Field(2.0, gt=0)


class LinearProcess:
    learn_sigma = False
    samplers = ("walk",)
    default_sampler = "walk"
    default_respacing = "4"
    loss_weightings = None
    heldout_time = "discrete"
    heldout_target = "epsilon"

    def __init__(self, steps):
        self.num_timesteps = steps

    def _a(self, t):
        return (1 - (t.double() + 1) / (self.num_timesteps + 1)).float()

    def check_sample_settings(self, sampler, respacing):
        if sampler not in self.samplers:
            raise ConfigError(f"sample.sampler: {sampler!r} is not a linear sampler (allowed: walk)")
        if not str(respacing).isdigit():
            raise ConfigError(f"sample.respacing: {respacing!r} is not a step count")

    def timestep_sampler(self):
        return EveryStepTimes(self.num_timesteps)

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        noise = torch.randn_like(x_start) if noise is None else noise
        a = self._a(t).view(-1, 1, 1, 1)
        eps = model(a.sqrt() * x_start + (1 - a).sqrt() * noise, t, **(model_kwargs or {}))
        mse = ((eps - noise) ** 2).flatten(1).mean(1)
        return {"loss": mse, "mse": mse}

    def sample(self, model, shape, solver=None, *, noise=None, model_kwargs=None, device=None, **settings):
        x = torch.randn(shape, device=device) if noise is None else noise
        respacing = solver.respacing if solver is not None else self.default_respacing
        steps = torch.linspace(self.num_timesteps - 1, 0, int(respacing)).round().long().tolist()
        for i, step in enumerate(steps):
            t = torch.full((shape[0],), step, dtype=torch.long, device=x.device)
            a = self._a(t).view(-1, 1, 1, 1)
            eps = model(x, t, **(model_kwargs or {}))
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            if i + 1 == len(steps):
                return x0
            nxt = self._a(torch.full_like(t, steps[i + 1])).view(-1, 1, 1, 1)
            x = nxt.sqrt() * x0 + (1 - nxt).sqrt() * eps
        return x

    def loss_bucket(self, t, buckets):
        return (t * buckets // self.num_timesteps).clamp(max=buckets - 1)

    def continuous_tasks(self, strategy):
        return None


# -- dataset: blobs whose params are named side and colours (not image_size / channels)
class BlobParams(Strict):
    side: int = Field(8, ge=4)
    colours: int = Field(1, ge=1)
    count: int = Field(24, ge=1)
    part: str = "train"
    mirror: bool = False

    def image_shape(self):
        return (self.colours, self.side, self.side)

    def random_hflip(self):
        return self.mirror

    def unaugmented(self):
        return self.model_copy(update={"mirror": False})

    def heldout_split(self):
        return self.model_copy(update={"part": "heldout", "mirror": False})


class Blobs:
    num_classes = 2

    def __init__(self, side, colours, count, part, mirror):
        g = torch.Generator().manual_seed(0 if part == "train" else 1)
        self.images = (torch.rand(count, colours, side, side, generator=g) * 2 - 1)
        self.labels = [i % 2 for i in range(count)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


# -- backbone: a routed conv net, static masks or learned gates; guidance is left out
class NetParams(Strict):
    in_channels: int = 1
    input_size: int = 8
    width: int = 8
    num_classes: int = 2


class Net(RoutedBackbone):
    learned_gates = True

    def __init__(self, in_channels, input_size, width, num_classes):
        super().__init__()
        self.in_channels, self.input_size, self.num_classes = in_channels, input_size, num_classes
        self.width = width
        self.inp = nn.Conv2d(in_channels, width, 3, padding=1)
        self.t_emb = nn.Embedding(64, width)
        self.blocks = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(2))
        self.out = nn.Conv2d(width, in_channels, 3, padding=1)

    def routed_channels(self, site="input"):
        return [self.width, self.width]

    tap = None  # SupportsBlockTokens: (block, sink) while a regularizer reads a block's output

    def block_layout(self):
        return TokenLayout(blocks=2, width=self.width, grid=(self.input_size, self.input_size))

    def tap_block(self, block, sink):
        self.tap = None if sink is None else (block, sink)

    def forward(self, x, t, y=None):
        h = self.inp(x) + self.t_emb(t)[:, :, None, None]
        plan = self.plan
        masks = self.layer_masks(t, h.dtype) if plan is None or not plan.is_learned else [None, None]
        for i, (block, m) in enumerate(zip(self.blocks, masks)):
            if plan is not None and plan.is_learned:
                m = plan.layer_gate(i, h, t, None)
            elif m is not None:
                m = m[:, :, None, None]
            h = routed_residual(h, m, lambda z, b=block: torch.relu(b(z)))
            if self.tap is not None and self.tap[0] == i + 1:
                self.tap[1](h.flatten(2).transpose(1, 2))  # [N, H * W, width]
        return self.out(h)


# -- strategy (static) and learned strategy
class HalfParams(Strict):
    pass


class Halves:
    def mask_table(self, num_tasks, channels, *, layer=0, num_layers=1):
        table = torch.zeros(num_tasks, channels, dtype=torch.bool)
        table[: num_tasks // 2, : channels // 2 + 1] = True
        table[num_tasks // 2:, channels // 2 - 1:] = True
        return table

    def __repr__(self):
        return "Halves()"


class Gates(nn.Module):
    learned_routing = True

    def __init__(self):
        super().__init__()
        self.logits = nn.ParameterList()
        self.aux = {}

    def bind(self, layer_units, num_tasks, *, site, cond_dim):
        for units in layer_units:
            self.logits.append(nn.Parameter(torch.zeros(num_tasks, units)))

    def layer_gate(self, layer, x, tasks, cond):
        gate = torch.sigmoid(self.logits[layer][tasks])
        if self.training:
            self.aux["mean_gate"] = 1e-3 * gate.mean()
        return gate[:, :, None, None].to(x.dtype)

    def pop_aux_losses(self):
        out, self.aux = self.aux, {}
        return out

    def param_groups(self):
        return [{"params": list(self.parameters())}]

    def task_tables(self, num_tasks):
        return [torch.sigmoid(p.detach()) for p in self.logits]


# -- loss weighting
class Weighting(nn.Module):
    def timestep_sampler(self, num_timesteps):
        return None  # the process's own

    def forward(self, terms, t, diffusion):
        return terms["loss"].mean()

    def param_groups(self):
        return []

    def log_values(self):
        return {"acme_weight": 1.0}


# -- codec: 2x2 average pooling (deterministic), decoded by nearest upsampling
class Pool:
    bounded = True

    def latent_shape(self, image_shape):
        c, h, w = image_shape
        return c, h // 2, w // 2

    def posterior(self, images):
        z = self.encode(images)
        return z, torch.zeros_like(z)

    def encode(self, images):
        return nn.functional.avg_pool2d(images.float(), 2)

    def decode(self, latents):
        return nn.functional.interpolate(latents, scale_factor=2.0).clamp(-1, 1)

    def fingerprint(self):
        return hashlib.sha256(b"acme-pool").hexdigest()


class LatentNet(Net):
    input_space = "latents"


# -- regularizer: a block's tokens, projected to one value each, pulled towards the clean image's grey levels
class AlignParams(Strict):
    weight: float = Field(0.1, ge=0)


class PixelAlign:
    block = 1

    def __init__(self, weight):
        self.weight, self.proj, self.targets, self.grid = weight, None, None, (0, 0)

    def bind(self, layout):
        self.grid, self.proj = layout.grid, nn.Linear(layout.width, 1)

    def module(self):
        return self.proj

    def prepare(self, images):
        pooled = torch.nn.functional.adaptive_avg_pool2d(images.mean(1, keepdim=True), self.grid)
        self.targets = pooled.flatten(2).transpose(1, 2)  # [N, H * W, 1]

    def losses(self, hidden, part):
        return {"acme_align": self.weight * (self.proj(hidden) - self.targets[part]).pow(2).mean()}

    def applied(self):
        return {"name": "acme_pixel_align", "weight": self.weight, "block": self.block}


# -- tracker: writes what it is given into the run directory
class Tracker:
    def start(self, run_dir, config, run_name):
        self.path = Path(run_dir) / "acme_tracker.jsonl"
        self.path.write_text(json.dumps({"start": run_name}) + "\n")

    def log_scalars(self, step, values):
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")

    def log_image(self, step, tag, image):
        pass

    def finish(self):
        with self.path.open("a") as f:
            f.write(json.dumps({"finish": True}) + "\n")

    def applied(self):
        return {"file": str(self.path)}


class TrackerFactory:
    def __call__(self, **params):
        return Tracker()

    def missing_requirement(self):
        return None


# -- launcher: runs each training in this process, one after another (the built-in local launcher starts
#    a child process per run; the contract is the same: status.json says running, then done or failed)
class Launcher:
    blocking = True

    def launch(self, suite_root, runs):
        from dtr_plugins.cli import main
        from dtr_plugins.runs.rundir import RunDir

        records = {}
        for r in runs:
            run_dir = RunDir(r.run_dir)
            run_dir.write_status({"state": "running", "launcher": "acme"})
            code = main(["train", str(r.config_path), "--run-dir", str(r.run_dir), "--threads", "1"])
            records[r.id] = {"state": "done" if code == 0 else "failed", "returncode": code}
            run_dir.write_status(records[r.id])
        return records

    def active(self, suite_root, runs):
        return {}

    def wait(self, suite_root, runs, timeout_s=None):
        return None

    def cancel(self, suite_root, runs):
        return []


# -- feature extractor: a fixed random projection of the pixels (torch-fidelity feature extractor)
def fidelity_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class Projection(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.weight = torch.randn(3 * 8 * 8, 6, generator=torch.Generator().manual_seed(0))

        @staticmethod
        def get_provided_features_list():
            return ("proj",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "proj"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

        def forward(self, x):
            x = nn.functional.interpolate(x.float() / 255, size=(8, 8))
            return (x.flatten(1) @ self.weight.to(x.device),)

    return Projection


class ExtractorSpec:
    name = "acme-projection"
    layers = {"fid": "proj", "kid": "proj"}
    weights_path = None
    num_classes = None
    classifier = None

    def __init__(self):
        self.fidelity_class = fidelity_class()


@dtr_plugins.hookimpl
def dtr_register_processes(register):
    register("acme_linear", LinearProcess, params=CosParams, description="toy linear-variance process")


@dtr_plugins.hookimpl
def dtr_register_datasets(register):
    register("acme_blobs", Blobs, params=BlobParams, description="random blobs")


@dtr_plugins.hookimpl
def dtr_register_backbones(register):
    register("acme_net", Net, params=NetParams, description="tiny routed conv net")
    register("acme_latent_net", LatentNet, params=NetParams, description="tiny routed conv net on latents")


@dtr_plugins.hookimpl
def dtr_register_strategies(register):
    register("acme_halves", Halves, params=HalfParams, description="two halves")
    register("acme_gates", Gates, params=HalfParams, description="learned sigmoid gates per task")


@dtr_plugins.hookimpl
def dtr_register_loss_weightings(register):
    register("acme_uniform", Weighting, params=HalfParams, description="uniform, plain mean")


@dtr_plugins.hookimpl
def dtr_register_codecs(register):
    register("acme_pool", Pool, params=HalfParams, description="2x2 average pooling")


@dtr_plugins.hookimpl
def dtr_register_trackers(register):
    register("acme_tracker", TrackerFactory(), params=HalfParams, description="jsonl file")


@dtr_plugins.hookimpl
def dtr_register_launchers(register):
    register("acme_launcher", Launcher, params=HalfParams, description="in this process, one by one")


@dtr_plugins.hookimpl
def dtr_register_ema(register):
    register("acme_halflife", HalfLife, params=HalfLifeParams, description="two fixed half-lives")


@dtr_plugins.hookimpl
def dtr_register_timestep_samplers(register):
    register("acme_low_half", LowHalf, params=HalfParams, description="the lower half of the timesteps")


@dtr_plugins.hookimpl
def dtr_register_feature_extractors(register):
    register("acme-projection", ExtractorSpec, params=HalfParams, description="random projection")


@dtr_plugins.hookimpl
def dtr_register_regularizers(register):
    register("acme_pixel_align", PixelAlign, params=AlignParams, description="block tokens towards grey levels")
