"""Writes weighted_merge_mlp.json: Hugging Face PEFT's own LoraModel.add_weighted_adapter on the fixtures' MLP.

Run with Debian's Python and PyTorch (CPU) and PEFT's source tree on the path, e.g.

    git --git-dir=<mirror of huggingface/peft> archive HEAD | tar -x -C /tmp/peft-src
    /usr/bin/python3 make_weighted_merge_fixture.py /tmp/peft-src/src weighted_merge_mlp.json

`transformers`, `accelerate`, `huggingface_hub`, `safetensors` and `tqdm` cannot be installed on the machine that made the
fixture, so they are replaced at import time by stand-in modules in which every name is a dummy class (nothing PEFT
computes with in add_weighted_adapter comes from them). `packaging` (which PEFT uses for version checks) is the copy pip
vendors. See README.md, section "weighted_merge_mlp.json".
"""

import importlib.abc
import importlib.machinery
import json
import sys
import types

import torch
from torch import nn

# ---------------------------------------------------------------- import-time stand-ins

STUBBED = ("transformers", "accelerate", "huggingface_hub", "safetensors", "tqdm")


def _dummy_class(name):
    def __init__(self, *args, **kwargs):
        # Cooperative, so a stand-in base such as PushToHubMixin still runs torch.nn.Module.__init__ after it.
        super(cls, self).__init__()

    cls = type(name, (), {
        "__init__": __init__,
        "__bool__": lambda self: False,          # is_xxx_available() stand-ins answer "no"
    })
    return cls


class _StubModule(types.ModuleType):
    def __init__(self, name):
        super().__init__(name)
        self.__path__ = []                       # a package, so submodules import too
        self.__version__ = "0.0.0"
        self._names = {}

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        if attr not in self._names:
            self._names[attr] = _dummy_class(attr)
        return self._names[attr]


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


def install_stand_ins():
    sys.meta_path.insert(0, _StubFinder())
    import pip._vendor.packaging as packaging                        # the real `packaging`, as pip vendors it
    import pip._vendor.packaging.version
    import pip._vendor.packaging.specifiers
    import pip._vendor.packaging.requirements
    sys.modules["packaging"] = packaging
    for sub in ("version", "specifiers", "requirements", "markers", "utils", "tags", "_structures"):
        module = sys.modules.get("pip._vendor.packaging." + sub)
        if module is not None:
            sys.modules["packaging." + sub] = module


# ---------------------------------------------------------------- the fixture


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(16, 32)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(32, 32)
        self.head = nn.Linear(32, 8)

    def forward(self, x):
        return self.head(self.relu(self.lin1(self.relu(self.lin0(x)))))


def t(x):
    x = x.detach().to(torch.float32).contiguous()
    # %.9g round-trips float32, which is all the tests read.
    return {"shape": list(x.shape), "data": [float("%.9g" % v) for v in x.reshape(-1).tolist()]}


# Adapters: "one", "two", "three" have different ranks (for cat and the svd types, which accept that); "one", "three",
# "four" have equal ranks (for linear, ties, dare_linear, dare_ties and magnitude_prune, which PEFT refuses otherwise).
# lora_alpha differs so the scales differ: one 8/4 = 2, two 3/2 = 1.5, three 4/4 = 1, four 6/4 = 1.5.
# (Not "a", "b", ...: PEFT warns about adapter names contained in its prefix "lora_".)
ADAPTERS = {
    "one": dict(r=4, lora_alpha=8),
    "two": dict(r=2, lora_alpha=3),
    "three": dict(r=4, lora_alpha=4),
    "four": dict(r=4, lora_alpha=6),
}
DIFFERENT_RANKS = ["one", "two", "three"]
EQUAL_RANKS = ["one", "three", "four"]
WEIGHTS = [0.7, -0.3, 0.5]

# (combination_type, adapters, extra kwargs). Density 0.5 where it prunes by magnitude; DARE at density 1.0, where
# PEFT's prune() returns the tensor untouched: its random masks come from torch 1.13's RNG, which libtorch 2.x does
# not reproduce, so a density below 1 would give numbers nobody else can compare with.
CASES = [
    ("linear", EQUAL_RANKS, {}),
    ("cat", DIFFERENT_RANKS, {}),
    ("svd", DIFFERENT_RANKS, dict(svd_rank=3)),
    ("ties", EQUAL_RANKS, dict(density=0.5, majority_sign_method="total")),
    ("ties_svd", DIFFERENT_RANKS, dict(svd_rank=3, density=0.5, majority_sign_method="total")),
    ("dare_linear", EQUAL_RANKS, dict(density=1.0)),
    ("dare_ties", EQUAL_RANKS, dict(density=1.0, majority_sign_method="total")),
    ("dare_linear_svd", DIFFERENT_RANKS, dict(svd_rank=3, density=1.0)),
    ("dare_ties_svd", DIFFERENT_RANKS, dict(svd_rank=3, density=1.0, majority_sign_method="total")),
    ("magnitude_prune", EQUAL_RANKS, dict(density=0.5)),
    ("magnitude_prune_svd", DIFFERENT_RANKS, dict(svd_rank=3, density=0.5)),
]

CONFIG_FIELDS = ["r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern",
                 "lora_dropout", "bias", "fan_in_fan_out", "init_lora_weights"]


def main(peft_src, out_path):
    install_stand_ins()
    sys.path.insert(0, peft_src)
    import peft
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = MLP()
    base_weights = {name: t(p) for name, p in model.state_dict().items()}

    peft_model = None
    for name, kwargs in ADAPTERS.items():
        config = LoraConfig(target_modules=["lin0", "lin1"], lora_dropout=0.0, **kwargs)
        if peft_model is None:
            peft_model = get_peft_model(model, config, adapter_name=name)
        else:
            peft_model.add_adapter(name, config)

    # Seeded random factors (PEFT would start B at zero), 0.3 N(0, 1) as the other fixtures.
    torch.manual_seed(1)
    adapter_state = {}
    lora = peft_model.base_model
    with torch.no_grad():
        for name in ADAPTERS:
            for layer_name in ("lin0", "lin1"):
                layer = getattr(lora.model, layer_name)
                for part in ("lora_A", "lora_B"):
                    weight = getattr(layer, part)[name].weight
                    weight.copy_(0.3 * torch.randn_like(weight))
                    adapter_state[f"{name}.{layer_name}.{part}"] = t(weight)

    torch.manual_seed(2)
    x = torch.randn(2, 3, 16)
    peft_model.eval()

    cases = []
    for combination_type, adapters, extra in CASES:
        merged = "merged_" + combination_type
        peft_model.add_weighted_adapter(adapters=adapters, weights=WEIGHTS, adapter_name=merged,
                                        combination_type=combination_type, **extra)
        config = peft_model.peft_config[merged]
        record = {
            "combination_type": combination_type,
            "adapters": adapters,
            "weights": WEIGHTS,
            "kwargs": extra,
            "adapter_name": merged,
            "config": {f: (sorted(getattr(config, f)) if f == "target_modules" else getattr(config, f))
                       for f in CONFIG_FIELDS},
            "tensors": {},
            "delta_weights": {},
            "scaling": {},
        }
        for layer_name in ("lin0", "lin1"):
            layer = getattr(lora.model, layer_name)
            record["tensors"][f"{layer_name}.lora_A"] = t(layer.lora_A[merged].weight)
            record["tensors"][f"{layer_name}.lora_B"] = t(layer.lora_B[merged].weight)
            record["delta_weights"][layer_name] = t(layer.get_delta_weight(merged))
            record["scaling"][layer_name] = layer.scaling[merged]
        peft_model.set_adapter(merged)
        with torch.no_grad():
            record["adapted_output"] = t(peft_model(x))
        cases.append(record)

    fixture = {
        "peft_version": peft.__version__,
        "torch_version": torch.__version__,
        "adapters": {name: dict(kwargs, target_modules=["lin0", "lin1"], lora_dropout=0.0) for name, kwargs in ADAPTERS.items()},
        "base_weights": base_weights,
        "adapter_state": adapter_state,
        "input": t(x),
        "cases": cases,
    }
    with open(out_path, "w") as f:
        json.dump(fixture, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
