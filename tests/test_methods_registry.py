"""The pruning methods as one table: each method owns its parameter model (pipeline/core/prune/options.py), the
recipe's prune.<method> section is validated by it, and no other code reads a method's parameters."""

import ast
from pathlib import Path

import pytest

from pipeline.common.errors import PipelineError
from pipeline.core.prune.methods import METHODS, make_method
from pipeline.core.prune.options import METHOD_NAMES, OPTIONS, ObsOptions
from pipeline.recipe import PruneSection, parse_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_each_method_owns_its_options_and_the_recipe_offers_every_method():
    assert tuple(METHODS) == METHOD_NAMES
    assert all(METHODS[name].Options is OPTIONS[name] for name in METHOD_NAMES)
    choices = PruneSection.model_fields["method"].annotation.__args__
    assert choices == (*METHOD_NAMES, "none")
    for name, options in OPTIONS.items():  # a method with parameters has its section in the recipe
        assert (name in PruneSection.model_fields) == bool(options.model_fields), name


def test_a_methods_parameters_reach_it_and_nothing_else_takes_them():
    assert make_method("dass", {"alpha": 0.3}).options.alpha == 0.3
    assert make_method("sparsegpt", {"block_size": 64}).options.block_size == 64
    with pytest.raises(PipelineError, match=r"prune.wanda: alpha: .*keys of prune.wanda: none"):
        make_method("wanda", {"alpha": 0.3})
    with pytest.raises(PipelineError, match="prune.dass: alpha"):
        make_method("dass", {"alpha": -1})


def _recipe(prune: dict):
    return parse_recipe({"name": "t", "model": {"source": "x"}, "prune": prune})


def test_recipe_sections_and_the_flat_keys_of_older_recipes():
    assert _recipe({"dass": {"alpha": 0.7}}).prune.method_options() == {"alpha": 0.7}
    assert _recipe({"alpha": 0.7}).prune.dass.alpha == 0.7  # an older recipe's flat key
    assert _recipe({"method": "sparsegpt", "block_size": 64}).prune.method_options() == {"block_size": 64,
                                                                                        "dampening_frac": 0.01}
    assert _recipe({"method": "wanda"}).prune.method_options() == {}
    with pytest.raises(PipelineError, match="given twice"):
        _recipe({"alpha": 0.7, "dass": {"alpha": 0.5}})
    with pytest.raises(PipelineError, match=r"prune.dass.alpha"):
        _recipe({"dass": {"alpha": -1}})
    with pytest.raises(PipelineError, match=r"prune.dass.alhpa"):
        _recipe({"dass": {"alhpa": 0.5}})


def test_an_override_of_a_method_parameter():
    from pipeline.overrides import apply_overrides

    data = {"name": "t", "model": {"source": "x"}}
    assert parse_recipe(apply_overrides(data, ["prune.dass.alpha=0.25"])).prune.dass.alpha == 0.25
    assert parse_recipe(apply_overrides(data, ["prune.alpha=0.25"])).prune.dass.alpha == 0.25


#: the modules that may read each parameter model's fields (dass_outlier extends dass's; prune.obs has the same
#: names as SparseGPT's and is read by the reconstruction)
OWNERS = {"dass": {"pipeline/core/prune/dass.py"},
          "dass_outlier": {"pipeline/core/prune/dass.py", "pipeline/core/prune/dass_outlier.py"},
          "sparsegpt": {"pipeline/core/prune/sparsegpt.py"}, "obs": {"pipeline/core/prune/reconstruct.py"}}
OPTION_FIELDS: dict[str, set[str]] = {}
for _name, _model in [*OPTIONS.items(), ("obs", ObsOptions)]:
    for _field in _model.model_fields:
        OPTION_FIELDS.setdefault(_field, set()).add(_name)
SOURCES = sorted(p for folder in ("pipeline", "export", "benchmarks") for p in (ROOT / folder).rglob("*.py")
                 if p.relative_to(ROOT).as_posix() != "pipeline/core/prune/options.py")


def parameter_reads(tree) -> list[tuple[int, str]]:
    """``x.alpha``, ``x.block_size``, ``x.dampening_frac``: reads of a method parameter by attribute."""
    return [(node.lineno, node.attr) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in OPTION_FIELDS and isinstance(node.ctx, ast.Load)]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_method_parameter_is_read_only_by_its_method(path):
    here = path.relative_to(ROOT).as_posix()
    stray = [(line, attr) for line, attr in parameter_reads(ast.parse(path.read_text(encoding="utf-8")))
             if here not in set().union(*(OWNERS[name] for name in OPTION_FIELDS[attr]))]
    assert not stray, f"{here} reads another method's parameter: {stray} — pass prune.<method> to make_method"


def test_the_walk_finds_a_stray_read():
    assert parameter_reads(ast.parse("x = recipe.prune.alpha\ny = method.options.block_size\n")) == \
        [(1, "alpha"), (2, "block_size")]


def test_the_loop_knows_no_kind_of_method():
    """sequential.py calls ``method.prune_layer`` and never asks which kind of method it holds."""
    tree = ast.parse(Path("pipeline/core/prune/sequential.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & {"ScoringMethod", "ReconstructingMethod"}
    checks = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "isinstance"
              and any(getattr(a, "id", "") == "method" for a in n.args)]
    assert not checks


def test_a_new_kind_of_method_plugs_in_through_prune_layer():
    """A method that is neither scoring nor reconstructing (keeps the largest weight of every row, no data) runs
    through the unchanged loop: its masks are applied and recorded."""
    import torch

    from conftest import tiny_model
    from pipeline.core.models import decoder_layers
    from pipeline.core.prune.base import PruningMethod, Pruned
    from pipeline.core.prune.sequential import prune_model
    from pipeline.core.prune.sparsity import SparsitySpec

    class KeepRowMax(PruningMethod):
        name = "keep-row-max"
        statistic = None

        def axis(self, role):
            return "row"

        def prune_layer(self, step, plan, spec, prefix):
            for proj in plan:
                w = proj.weight(step.layer)
                mask = torch.zeros_like(w, dtype=torch.bool)
                mask[torch.arange(w.shape[0]), w.abs().argmax(dim=1)] = True
                yield Pruned(proj, mask)

    model = tiny_model("llama")
    result = prune_model(model, KeepRowMax(), SparsitySpec.parse(0.5), None, progress=False, keep_masks=True)
    for layer in decoder_layers(model):
        for proj in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            assert ((proj.weight != 0).sum(dim=1) == 1).all()
        assert (layer.self_attn.q_proj.weight != 0).all()  # scope mlp: attention untouched
    assert len(result.masks) == 3 * len(decoder_layers(model))
