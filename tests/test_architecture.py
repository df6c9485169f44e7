"""Conformance over the registries (every strategy, every export format), option validation owned
by config, bytes in, torch-free modules, and no process-wide side effects."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit
from helpers import make_dataset
from transferkit.config import TrainConfig
from transferkit.exporting.registry import FORMATS
from transferkit.models import backbones
from transferkit.training.options import applies, for_strategy, read_saved, resolve
from transferkit.training.strategies import STRATEGIES

TINY = dict(model="squeezenet1_1", image_size=64, seed=0, quiet=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny dataset, random initial weights saved as a file (so what changed can be checked),
    and a teacher run for distill."""
    root = tmp_path_factory.mktemp("arch")
    data = make_dataset(root / "d", n_train=4, n_val=2)
    torch.manual_seed(0)
    spec = backbones.get("squeezenet1_1")
    weights = root / "init.pth"
    torch.save(spec.build().state_dict(), weights)
    teacher = transferkit.train(data, weights=str(weights), out=str(root / "teacher"), **TINY)
    return data, weights, teacher.path, root


def _given(strategy, **values) -> dict:
    """The options among `values` that apply to `strategy` (the others would be refused)."""
    optimizer = values.get("optimizer") or strategy.defaults.get("optimizer")
    return {k: v for k, v in values.items() if applies(k, strategy, optimizer)}


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_trains_what_it_declares(tiny, name):
    """Each registered strategy trains on tiny data and writes a bundle; the parameters that
    changed are those its entry declares trainable, and the optimizer's groups and learning rates
    are the ones it declares."""
    from safetensors.torch import load_file

    data, weights, teacher, root = tiny
    entry = STRATEGIES.get(name)
    lr, mult, decay = 0.01, 0.1, 0.5
    options = _given(entry, epochs=2, batch_size=4, lr=lr, backbone_lr_mult=mult, lr_decay=decay, unfreeze=1,
                     teacher=str(teacher))
    if entry.weights is None:
        options["weights"] = str(weights)
    run = transferkit.train(data, strategy=name, out=str(root / f"run-{name}"), **TINY, **options)
    assert (run.path / "model.safetensors").is_file() and (run.path / "model.json").is_file()
    chosen = STRATEGIES.get(run.results["strategy"])
    if entry.trains == "chosen":
        assert chosen.name != name and run.results["strategy_reason"]
    else:
        assert chosen is entry
    trained = load_file(str(run.path / "model.safetensors"))
    initial = {f"backbone.{k}": v for k, v in torch.load(weights, weights_only=True).items()}
    spec = backbones.get("squeezenet1_1")
    stages = spec.stages(spec.build())
    changed = {k for k, v in initial.items() if not torch.equal(v, trained[k])}
    every = set(initial)
    last_stage = {f"backbone.{k}" for k in stages[-1]}
    kept_probe = run.results["strategy_info"].get("kept") == "probe"  # LP-FT: fine-tuning did not beat it
    if entry.weights is None:  # (from scratch every weight is new)
        expected = {"head": set(), "top": last_stage, "all": every, "gradual": every}[chosen.trains]
        if chosen.trains == "gradual":  # the kept epoch's: the top stages unfrozen by then
            from transferkit.training.network import gradual_schedule

            k = gradual_schedule(run.results["best_epoch"], run.results["epochs_run"], len(stages))
            expected = {f"backbone.{n}" for stage in stages[len(stages) - k:] for n in stage}
        assert changed == (set() if kept_probe else expected)
    groups = {g["name"]: g["lr"] for g in run.results["strategy_info"].get("param_groups", [])}
    if chosen.trains == "head":
        assert not groups and run.results["head_iterations"]
    elif chosen.trains == "gradual":
        n = len(stages)
        assert groups == pytest.approx({**{f"stage{i}": lr * mult * decay ** (n - 1 - i) for i in range(n)},
                                        "head": lr})
    else:
        backbone_lr = lr if chosen.backbone_lr == "same" else lr * mult
        assert groups == pytest.approx({"backbone": backbone_lr, "head": lr})
    if chosen.trains == "top":
        assert run.results["strategy_info"]["trainable_stages_at_end"] == 1


def _logit_range(run) -> float:
    with transferkit.load(run) as predictor:
        val = [p for p, _ in json.loads((Path(run) / "split.json").read_text())["val"]]
        logits, _ = predictor.logits(val)
    return float(logits.max() - logits.min())


def test_every_strategy_is_declared_consistently():
    for s in STRATEGIES:
        assert s.summary and s.run is not None
        for option in s.options:
            assert option in TrainConfig.__dataclass_fields__, (s.name, option)
        for option in s.defaults:
            assert option in TrainConfig.__dataclass_fields__, (s.name, option)


@pytest.mark.parametrize("name", FORMATS.names())
def test_every_export_format_builds_and_matches_pytorch(tiny, tmp_path, name):
    data, weights, teacher, root = tiny
    result = transferkit.export(teacher, name, calib=4, runs=2, out=tmp_path / "x")
    check = next(c for c in result.checks if c.format == name)
    if name == "tflite-int8":  # (LiteRT quantizes the whole network, head included: on this random-weight
        # network and 4 calibration images the gate may refuse it; test_export gates it on real weights)
        assert check.checked == "measured" and check.accuracy is not None
        assert (tmp_path / "x" / check.file).exists() and check.passed == check.file.endswith(".int8.tflite")
        return
    assert (tmp_path / "x" / FORMATS.get(name).file).exists() and check.passed  # a file, or a folder (mlflow)
    if check.checked == "structure":  # a format this OS cannot run (Core ML off macOS): checked by its structure
        assert FORMATS.get(name).runner(tmp_path / "x" / check.file) is None and check.accuracy is None
        assert "checked by structure" in check.note
        return
    # INT8 rounds (here to within 5% of the logits' range); fp32 artifacts agree to float precision
    tolerance = 1e-3 if name != "int8" else 0.05 * _logit_range(teacher)
    assert check.max_abs_logit_diff < tolerance and check.top1_agreement >= (0.75 if name == "int8" else 1.0)
    recorded = json.loads((tmp_path / "x" / "export.json").read_text())
    assert name in [a["format"] for a in recorded["artifacts"]]


# -- validation owned by config: the same for Python and the CLI --------------------------------


@pytest.mark.parametrize("options, message", [
    ({"lr": float("inf"), "strategy": "finetune"}, "--lr must be a finite number"),
    ({"lr": float("nan"), "strategy": "finetune"}, "--lr must be a finite number"),
    ({"dropout": float("nan"), "strategy": "finetune"}, "--dropout must be a finite number"),
    ({"unfreeze": 3, "strategy": "finetune"}, "--unfreeze applies only to --strategy partial, not finetune"),
    ({"teacher": "x", "strategy": "linear"}, "--teacher applies only to --strategy distill"),
    ({"lr_decay": 0.5}, "--lr-decay applies only to --strategy gradual, not linear"),
    ({"epochs": 5}, "--epochs does not apply to the logistic-regression head"),
    ({"budget": 60, "strategy": "finetune"}, "--budget applies only to --strategy auto"),
    ({"weights": "x.pth", "strategy": "scratch"}, "scratch trains from random weights"),
    ({"strategy": "distill"}, "--strategy distill needs --teacher"),
    ({"val_fraction": 1.0}, r"--val-fraction must be in \(0, 1\)"),
])
def test_options_are_refused_the_same_way_from_python_and_the_cli(tmp_path, capsys, options, message):
    from transferkit.cli import main

    data = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    with pytest.raises(transferkit.UserError, match=message):
        transferkit.train(data, out=str(tmp_path / "r"), **options)
    assert not (tmp_path / "r").exists()  # refused before any output
    args = ["train", str(data), "--out", str(tmp_path / "r")]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message.split(" ")[0].strip("\\") in err


def test_other_commands_validate_in_config(tmp_path):
    with pytest.raises(transferkit.UserError, match=r"--runs must be in \[1, 10000\]"):
        transferkit.export(tmp_path, runs=0)
    with pytest.raises(transferkit.UserError, match="--max-drop must be a finite number"):
        transferkit.export(tmp_path, max_drop=float("nan"))
    with pytest.raises(transferkit.UserError, match="--formats magic"):
        transferkit.export(tmp_path, "magic")
    with pytest.raises(transferkit.UserError, match=r"--num-classes must be in \[1, 100000\]"):
        transferkit.api.summary("resnet18", num_classes=0)
    with pytest.raises(transferkit.UserError, match="--device must be one of"):
        transferkit.load(tmp_path, device="tpu")


def test_yaml_float_without_a_dot_is_a_float(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nstrategy: finetune\n")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml").lr == 1e-3


def test_resume_reads_a_config_written_with_every_option_filled(tmp_path):
    """A run's config.yaml written before options were tied to strategies holds values for options
    its strategy does not take (unfreeze for finetune, ...): it is still read."""
    old = {**TrainConfig(data="/d", strategy="finetune").to_dict(), "unfreeze": 2, "lr_decay": 0.5,
           "temperature": 1.0, "alpha": 0.5, "aug_views": 0, "epochs": 8, "weights": "imagenet"}
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    cfg = resolve(read_saved(tmp_path / "config.yaml"))
    assert cfg.strategy == "finetune" and cfg.epochs == 8 and cfg.unfreeze is None and cfg.backbone_lr_mult == 0.1


def test_auto_resolves_only_the_chosen_strategys_options():
    cfg = resolve(TrainConfig(data="/d", strategy="auto", epochs=3, backbone_lr_mult=0.2))
    linear, lpft = for_strategy(cfg, "linear"), for_strategy(cfg, "lp-ft")
    assert linear.optimizer == "lbfgs" and linear.epochs is None and linear.backbone_lr_mult is None
    assert lpft.optimizer == "adamw" and lpft.epochs == 3 and lpft.backbone_lr_mult == 0.2


# -- bytes in ------------------------------------------------------------------------------------


def test_predictors_take_paths_bytes_and_pil_images_alike(tiny):
    data, _, teacher, _ = tiny
    path = data / "val" / "red" / "red0.jpg"
    raw = path.read_bytes()
    with transferkit.load(teacher) as model:
        by_path, by_bytes, by_pil, bad = model.predict([str(path), raw, Image.open(io.BytesIO(raw)), b"nope"],
                                                       top_k=2, names=["a", "b", "c", "d"])
    assert by_path.label == by_bytes.label == by_pil.label == "red"
    assert by_path.probability == pytest.approx(by_bytes.probability) == pytest.approx(by_pil.probability)
    assert (by_bytes.path, bad.path) == ("b", "d") and "not an image" in bad.error and bad.label is None


def test_predictor_keeps_its_decoding_threads_between_calls(tiny):
    from transferkit.models import bundle
    from transferkit.prediction.torch_predictor import Predictor

    data, _, teacher, _ = tiny
    model, meta, run_dir = bundle.load(teacher)
    files = [str(p) for p in sorted((data / "val").rglob("*.jpg"))]
    with Predictor(model, meta, run_dir, workers=2) as predictor:
        first = predictor.predict(files)
        pool = predictor._pool
        second = predictor.predict(files)
        assert pool is not None and predictor._pool is pool
    assert [p.label for p in first] == [p.label for p in second]
    assert predictor._pool is None  # closed with the block


def test_onnx_predictor_takes_bytes(tiny, tmp_path):
    from transferkit.prediction.onnx_predictor import OnnxPredictor

    data, _, teacher, _ = tiny
    transferkit.export(teacher, "onnx", runs=2, out=tmp_path / "x")
    path = data / "val" / "blue" / "blue0.jpg"
    with OnnxPredictor(tmp_path / "x" / "model.onnx") as model:
        a, b = model.predict([str(path), path.read_bytes()])
    assert a.label == b.label == "blue" and a.probability == pytest.approx(b.probability, abs=1e-6)


# -- no process-wide side effects; torch-free modules ----------------------------------------------


def test_train_leaves_the_callers_rng_and_matplotlib_alone(tiny, tmp_path):
    import matplotlib

    data, weights, _, _ = tiny
    backend = matplotlib.get_backend()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    transferkit.train(data, strategy="finetune", epochs=1, batch_size=4, weights=str(weights),
                      out=str(tmp_path / "r"), **TINY)
    transferkit.report(tmp_path / "r")
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is where it was
    assert matplotlib.get_backend() == backend


TORCH_FREE = ["transferkit.config", "transferkit.files", "transferkit.cache", "transferkit.console",
              "transferkit.evaluation.page", "transferkit.evaluation.report", "transferkit.worker",
              "transferkit.prediction.onnx_predictor", "transferkit.prediction.outputs",
              "transferkit.data.decode", "transferkit.data.discover", "transferkit.training.strategies",
              "transferkit.exporting.registry", "transferkit.api", "transferkit.cli", "transferkit.runs",
              "transferkit.tracking", "transferkit.tracking.registry"]


def test_torch_free_modules_import_without_torch():
    """With torch made unimportable, these modules (and the registries) still load: the CLI's
    help, option checks, the report page and ONNX prediction need no torch (nor the trackers'
    libraries)."""
    code = ("import sys; sys.modules['torch'] = None\n"
            + "".join(f"import {m}\n" for m in TORCH_FREE)
            + "from transferkit.training.strategies import STRATEGIES\nfrom transferkit.exporting.registry import FORMATS\n"
            + "from transferkit.tracking.registry import TRACKERS\n"
            + "assert STRATEGIES.names() and FORMATS.names() and TRACKERS.names()\n"
            + "assert not {'mlflow', 'tensorboard'} & set(sys.modules)\n"
            + "from transferkit.cli import build_parser\nbuild_parser()\n")
    env = {**os.environ, "PYTHONPATH": str(Path(transferkit.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_onnx_prediction_runs_without_torch(tiny, tmp_path):
    data, _, teacher, _ = tiny
    transferkit.export(teacher, "onnx", runs=2, out=tmp_path / "x")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from transferkit.cli import main\n"
            f"sys.exit(main(['predict', {str(tmp_path / 'x' / 'model.onnx')!r}, {str(data / 'val')!r}]))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(transferkit.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = proc.stdout.strip().splitlines()
    assert len(rows) == 5 and rows[0].startswith("path,label")
    assert np.mean([r.split(",")[1] in r.split(",")[0] for r in rows[1:]]) >= 0.75


# -- the import graph: layers that cannot be crossed -----------------------------------------------

ROOT = Path(transferkit.__file__).parent


def _module_files() -> dict[str, Path]:
    files = {}
    for f in ROOT.rglob("*.py"):
        parts = ("transferkit", *f.relative_to(ROOT).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return files


def _import_graph() -> tuple[dict[str, dict[str, int]], list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """{module: {transferkit module it imports: line}}, counting imports at any depth (inside
    functions too, not those under `if TYPE_CHECKING:`), the private names imported from another
    package (module, name, line): `from pkg.mod import _name` or a library's private module, and
    the imports of a transferkit module that does not exist (module, name, line): a relative
    import inside a function is seen by no linter. An import names the module it loads (`from .a
    import b` names a.b where b is a module, else a)."""
    import ast

    files = _module_files()

    def known(name: str) -> str:
        while name not in files:
            name = name.rpartition(".")[0]
        return name

    graph, private, missing = {}, [], []
    for name, f in files.items():
        tree = ast.parse(f.read_text())
        skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for b in node.body for n in ast.walk(b)}
        base = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        edges = graph.setdefault(name, {})
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom):
                module = (".".join(base[:len(base) - node.level + 1]) + (f".{node.module}" if node.module else "")
                          if node.level else node.module or "")
                if not module.startswith("transferkit"):
                    if any(part.startswith("_") for part in module.split(".")[1:]):
                        private.append((name, module, node.lineno))
                    continue
                if module not in files:
                    missing.append((name, module, node.lineno))
                for alias in node.names:
                    target = f"{module}.{alias.name}" if f"{module}.{alias.name}" in files else known(module)
                    edges.setdefault(target, node.lineno)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and \
                            target.split(".")[:2] != name.split(".")[:2]:
                        private.append((name, f"{module}.{alias.name}", node.lineno))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("transferkit"):
                        if alias.name not in files:
                            missing.append((name, alias.name, node.lineno))
                        edges.setdefault(known(alias.name), node.lineno)
                    elif any(part.startswith("_") for part in alias.name.split(".")[1:]):
                        private.append((name, alias.name, node.lineno))
        edges.pop(name, None)
    return graph, private, missing


def _circle(graph: dict[str, dict]) -> list[str] | None:
    """One circle of `graph` (its nodes in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_itself_through_others():
    """No circle in the import graph, imports inside functions counted: a module that needs one
    names a layer that is not there yet (move the shared piece down, or the user up)."""
    graph, _, _ = _import_graph()
    circle = _circle(graph)
    assert circle is None, "import circle: " + " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(circle, circle[1:])) + f" -> {circle[-1]}"


# The bottom of every layer: modules that import nothing of transferkit but each other.
FOUNDATION = {"transferkit.errors", "transferkit.registry", "transferkit.files", "transferkit.task", "transferkit.machine",
              "transferkit.folds"}


def _leaves(graph: dict[str, dict]) -> set[str]:
    """The modules that import nothing of transferkit but the foundation: the foundation, the
    registries' declarations (`training.strategies.base`, `engines.base`, ...) and small helpers
    such as `ood`. A leaf cannot lead back to its importer, whichever package folder holds it."""
    return {m for m, edges in graph.items() if set(edges) <= FOUNDATION}


def test_packages_are_layered():
    """No package imports one that imports it back (cache <-> data, engines <-> prediction were
    such tangles), counting every import but those of a leaf: the packages stack as layers."""
    graph, _, _ = _import_graph()
    assert all(set(graph[m]) <= FOUNDATION for m in FOUNDATION), {m: graph[m] for m in FOUNDATION}
    leaves = _leaves(graph)
    packages: dict[str, dict[str, str]] = {}
    for module, edges in graph.items():
        for target in edges:
            a, b = module.split(".")[:2], target.split(".")[:2]
            if target not in leaves and a != b:
                packages.setdefault(".".join(a), {}).setdefault(".".join(b), f"{module} -> {target}")
    circle = _circle(packages)
    assert circle is None, "packages import each other: " + "; ".join(
        packages[a][b] for a, b in zip(circle, circle[1:]))


def test_config_is_the_bottom_layer():
    """`config` declares and checks options: it imports only leaves (the registries' declarations
    for the names an option may take). Resolving options against the strategies is
    `training.options`'s; reading the formats, the exporter's."""
    graph, _, _ = _import_graph()
    assert set(graph["transferkit.config"]) <= _leaves(graph), set(graph["transferkit.config"]) - _leaves(graph)


def test_every_import_names_a_module_that_exists():
    """Inside functions too, where an import runs only when the function does (a module moved one
    level down keeps its relative imports' dots: the test, not the user, finds them)."""
    _, _, missing = _import_graph()
    assert not missing, "\n".join(f"{m} line {line} imports {what}, which does not exist" for m, what, line in missing)


def test_no_private_name_is_imported_from_another_package():
    """A name with a leading underscore stays inside its package (and a library's private modules
    are not ours to import): what another package needs is public, with a docstring."""
    _, private, _ = _import_graph()
    assert not private, "\n".join(f"{m} line {line} imports {what}" for m, what, line in private)


def test_the_helper_processes_import_only_what_they_run():
    """The helper process imports no other part of transferkit but the task (`task.py`: NumPy
    alone, itself importing nothing of transferkit); the doctor does not import training."""
    graph, _, _ = _import_graph()
    assert not graph["transferkit.worker"]
    assert set(graph["transferkit.folds"]) | set(graph["transferkit.logistic"]) <= {"transferkit.task"}
    assert not graph["transferkit.task"]
    doctor = {t for m, edges in graph.items() if m.startswith("transferkit.doctor") for t in edges}
    assert not {m for m in doctor if m.startswith("transferkit.training")}, doctor


def test_the_public_functions_say_their_arguments_and_what_they_return():
    """Every function of `transferkit.__all__` documents its arguments (Args:) and, where it
    returns something, what (Returns:)."""
    import inspect

    for name in transferkit.__all__:
        obj = getattr(transferkit, name)
        if inspect.isfunction(obj):
            doc = inspect.getdoc(obj) or ""
            assert "Args:" in doc, name
            assert "Returns:" in doc or inspect.signature(obj).return_annotation in (None, "None"), name



LONGEST_FUNCTION = 60  # lines, its signature and docstring included


def test_no_function_is_longer_than_a_screen():
    """A function that does several jobs is split into functions named for them."""
    import ast

    long = []
    for module, path in _module_files().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)


def test_the_tests_are_arranged_by_package():
    """Each folder of tests/ is named for the package of transferkit its tests are about (those
    of a top-level module, or of several packages, are at the top)."""
    tests = Path(__file__).parent
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert folders and folders <= packages, folders - packages
    assert all(any(f.glob("test_*.py")) for f in (tests / name for name in folders))
