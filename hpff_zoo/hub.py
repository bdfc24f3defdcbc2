"""Export, load and publish hpff-zoo checkpoints as Hugging Face Hub folders.

A Hub folder holds:

* ``model.safetensors``: the backbone only, with the plain timm model's parameter names, so it
  loads with ``strict=True`` into ``timm.create_model(<base>)`` without hpff_zoo;
* ``aux.safetensors`` (optional): the auxiliary networks, for users who continue local training;
* ``config.json``: timm's own format, written by timm's ``save_config_for_hf`` (architecture,
  num_classes, model_args, pretrained_cfg), so ``timm.create_model("hf-hub:<repo>")`` and
  ``local-dir:<folder>`` rebuild the LocalModel in its training setting once hpff_zoo is imported;
* ``README.md``: the model card (:mod:`hpff_zoo.cards`), and ``run.json``: the run record the
  card's figures come from.

timm's ``save_for_hf`` / ``push_to_hf_hub`` write ``model.state_dict()`` whole (auxiliaries
included) and a generic card, so this module uses their building blocks instead:
``save_config_for_hf`` for the config and ``HfApi.create_repo`` + ``upload_folder`` for the push,
exactly as ``push_to_hf_hub`` does. Weights are read from safetensors only; pickle files are
refused unless ``allow_pickle=True``.

Command line::

    python -m hpff_zoo.hub export RUN_DIR OUT_DIR --tag TAG [--record run.json] [--aux]
    python -m hpff_zoo.hub push OUT_DIR ORG/REPO
    python -m hpff_zoo.hub cards [--out model_cards]
    python -m hpff_zoo.hub list
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from huggingface_hub import HfApi, hf_hub_download
from safetensors import SafetensorError
from timm.models._hub import save_config_for_hf

from . import __version__
from .aux.arch import resolve_aux_arch
from .cards import (
    RunRecord,
    card_facts,
    estimate_compute,
    render_card,
    render_timm_backbone_card,
)
from .choices import OneLineParser, unknown_name
from .local import LocalModel, from_timm
from .models import tags
from .models.hpff import HPFF_MODELS, LOCAL_KWARGS
from .models.pretrained import HUB_ERRORS, shipped_dir, shipped_folder
from .models.tags import TAGS, TIMM_BACKBONES, TagSpec

__all__ = [
    "describe_training",
    "export_model",
    "export_run",
    "load_aux",
    "load_model",
    "local_model_args",
    "main",
    "push_folder",
    "push_model",
    "write_model_files",
]

_logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
AUX_FILE = "aux.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
RECORD_FILE = "run.json"
# create_model keyword arguments that change how weights are read, not what the model is.
_RUNTIME_ARGS = ("allow_pickle",)


# --- export -------------------------------------------------------------------------------------


def local_model_args(model: LocalModel) -> dict[str, Any]:
    """Arguments that rebuild ``model``'s local-learning setting exactly (explicit splits)."""
    return dict(
        method=model.method,
        num_modules=model.num_modules,
        hilo=model.cascade_size if model.cascade_size > 1 else False,
        pff=model.pff,
        splits=list(model.partition.starts[1:]),
        hilo_weights=list(model.hilo_weights),
        aux_options=model.aux_options,
        aux=model.aux_arch.to_dict(),
        aux_budget=model.aux_budget,
        pff_scope=model.pff_scope,
        input_size=list(model.input_size),
        in_chans=model.input_size[0],
    )


def _architecture(model: LocalModel) -> str | None:
    arch = getattr(model, "pretrained_cfg", {}).get("architecture")
    return arch if arch in HPFF_MODELS else None


def _check_tag(model: LocalModel, spec: TagSpec) -> None:
    """Refuse to publish weights under a tag whose setting they were not trained in."""
    data = spec.dataset.data_cfg
    cfg = model.backbone.pretrained_cfg
    expected = {
        "architecture": (spec.arch, _architecture(model)),
        "method": (spec.method, model.method),
        "num_modules": (spec.num_modules, model.num_modules),
        "hilo": (spec.hilo or 1, model.cascade_size),
        "pff": (spec.pff, model.pff),
        "num_classes": (spec.dataset.num_classes, model.num_classes),
        "input_size": (tuple(data["input_size"]), tuple(model.input_size)),
        "mean": (tuple(data["mean"]), tuple(cfg.get("mean", ()))),
        "std": (tuple(data["std"]), tuple(cfg.get("std", ()))),
    }
    if spec.aux is not None and spec.method != "e2e":  # pinned auxiliaries
        expected["aux"] = (resolve_aux_arch(spec.method, spec.aux), model.aux_arch)
        expected["aux_budget"] = (spec.aux_budget, model.aux_budget)
        if spec.pff > 1:
            expected["pff_scope"] = (spec.pff_scope, model.pff_scope)
    wrong = [f"{k}: tag {a!r}, model {b!r}" for k, (a, b) in expected.items() if a != b]
    if spec.method == "e2e":  # the baseline's partition does not matter
        wrong = [w for w in wrong if not w.startswith(("num_modules", "hilo", "pff"))]
    if wrong:
        raise ValueError(f"the model does not match tag {spec.name}: " + "; ".join(wrong))


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().contiguous() for key, value in state.items()}


def describe_training(model: LocalModel, dataset: str) -> str:
    """``cifar_resnet32 trained on Fashion-MNIST with InfoPro, K=16 ...``: the config's
    description, from the model's own setting and the dataset it was trained on."""
    facts = card_facts(model, "", dataset, None)
    return f"{facts.base} trained on {facts.dataset_name} with {facts.setting}"


def _write_config(
    model: LocalModel,
    path: Path,
    spec: TagSpec | None,
    data_config: dict[str, Any] | None,
    description: str | None = None,
    label_names: Sequence[str] | None = None,
) -> None:
    labels = {"label_names": list(label_names)} if label_names else {}
    # Untagged weights must not keep the description of the architecture's default tag.
    described = {"description": description} if description else {}
    if _architecture(model):
        # A model built with in_chans / input_size keeps its default tag's input_size in
        # pretrained_cfg, which timm checks data_config against: record what it really takes.
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": tuple(model.input_size)}
        overrides = {"tag": spec.tag if spec else None, **described}
        if spec:
            cfg = spec.pretrained_cfg()
            overrides |= {k: v for k, v in cfg.items() if k not in ("hf_hub_id", "hf_hub_filename")}
        save_config_for_hf(
            model,
            str(path),
            model_config={"pretrained_cfg": overrides, **labels},
            model_args=local_model_args(model),
            data_config=data_config,
        )
    else:  # any timm backbone: a plain timm config, plus the setting that rewraps it
        save_config_for_hf(
            model.backbone,
            str(path),
            model_config={
                "local_learning": local_model_args(model),
                "pretrained_cfg": described,
                **labels,
            },
            data_config=data_config,
        )
    config = json.loads(path.read_text())
    for key in _RUNTIME_ARGS:
        config.get("model_args", {}).pop(key, None)
    path.write_text(json.dumps(config, indent=2) + "\n")


def write_model_files(
    model: LocalModel,
    folder: str | Path,
    *,
    dataset: str | None = None,
    data_config: dict[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
    include_aux: bool = False,
    spec: TagSpec | None = None,
) -> None:
    """Write ``model.safetensors`` (the backbone), ``config.json`` and, with ``include_aux``,
    ``aux.safetensors`` into the existing ``folder``: what :func:`load_model` and
    :func:`export_run` read back. A training run's output directory is written with it, so
    that it exports, fine-tunes and reloads in its own setting.

    Args:
        dataset: what the weights were trained on, for the config's description.
        data_config: the preprocessing the weights were trained with.
        label_names: class names, index-aligned with the classifier's outputs.
        spec: the catalogue tag the weights are published as.
    """
    folder = Path(folder)
    metadata = {"format": "pt", "hpff_zoo": __version__}
    written = [folder / WEIGHTS_FILE, folder / CONFIG_FILE]
    safetensors.torch.save_file(_tensors(model.backbone.state_dict()), written[0], metadata)
    if include_aux and model.uses_aux:
        aux_meta = metadata | {k: str(v) for k, v in local_model_args(model).items()}
        safetensors.torch.save_file(_tensors(model.aux.state_dict()), folder / AUX_FILE, aux_meta)
        written.append(folder / AUX_FILE)
    description = describe_training(model, dataset) if dataset else None
    _write_config(model, written[1], spec, data_config, description, label_names)
    for path in written:  # readable by the group and others, as any file a user writes
        path.chmod(0o644)


def export_model(
    model: LocalModel,
    out_dir: str | Path,
    *,
    record: RunRecord,
    tag: str | None = None,
    include_aux: bool = False,
    data_config: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a Hub-ready folder (see the module docstring); returns its path.

    Args:
        model: a trained LocalModel (any method, E2E included).
        out_dir: the folder to create; written atomically (built beside it, then renamed).
        record: what the training run measured: the card's only source of figures.
        tag: the catalogue tag the weights are published as; the model must match its setting,
            dataset and preprocessing.
        include_aux: also write ``aux.safetensors``.
        data_config: preprocessing overrides for config.json (timm's ``data_config``).
        overwrite: replace an existing ``out_dir``.
    """
    if not isinstance(model, LocalModel):
        raise TypeError(f"export_model takes a hpff_zoo.LocalModel, got {type(model).__name__}")
    if not isinstance(record, RunRecord):
        raise TypeError("export_model needs the run's RunRecord: a card shows measured figures")
    spec = None
    if tag is not None:
        if tag not in TAGS:
            raise ValueError(unknown_name("tag", tag, TAGS) + " (python -m hpff_zoo.hub list)")
        spec = TAGS[tag]
        _check_tag(model, spec)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        write_model_files(
            model,
            staging,
            dataset=record.dataset,
            data_config=data_config,
            include_aux=include_aux,
            spec=spec,
        )
        name = spec.name if spec else out_dir.name
        hub_id = spec.hf_hub_id if spec else None
        facts = card_facts(model, name, record.dataset, hub_id, ships_aux=include_aux)
        (staging / CARD_FILE).write_text(render_card(facts, record=record))
        record.save(staging / RECORD_FILE)
        for path in (staging, *staging.iterdir()):  # mkdtemp's private modes are not wanted
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


# --- load ---------------------------------------------------------------------------------------


def _read_safetensors(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if path.suffix != ".safetensors":
        if not allow_pickle:
            raise ValueError(
                f"refusing to load {path}: not a .safetensors file, and unpickling can run "
                "arbitrary code; pass allow_pickle=True if you trust it"
            )
        return torch.load(path, map_location="cpu", weights_only=True)
    try:
        return safetensors.torch.load_file(path)
    except SafetensorError as err:
        raise ValueError(
            f"{path} is not a readable safetensors file (truncated or corrupt: {err})"
        ) from err
    except FileNotFoundError:
        raise FileNotFoundError(f"no auxiliary weights at {path}") from None


def load_aux(model: LocalModel, path: str | Path, *, allow_pickle: bool = False) -> None:
    """Load auxiliary networks saved by :func:`export_model` into ``model`` (strictly)."""
    state = _read_safetensors(Path(path), allow_pickle)
    own = model.aux.state_dict()
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    if missing or unexpected:
        raise ValueError(
            f"{path} holds auxiliary networks of another setting ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, e.g. {sorted(missing or unexpected)[0]}): build the "
            "model with the method, num_modules, hilo and pff it was trained with"
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(value.shape)} but the model's is "
                f"{tuple(own[key].shape)} (auxiliary classifiers are sized by num_classes: these"
                f" were trained for another number of classes or input size)"
            )
    model.aux.load_state_dict(state, strict=True)


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}: not an exported model") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    arch = config.get("architecture")
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise ValueError(
            f"{path} names architecture {arch!r}, which no imported package registers with timm "
            f"(hpff_zoo registers {', '.join(HPFF_MODELS)}; import the package that defines it)"
        )
    return config


def _load_folder(folder: Path, allow_pickle: bool, **kwargs: Any) -> LocalModel:
    config = _read_config(folder)
    if not (folder / WEIGHTS_FILE).is_file() and not allow_pickle:
        raise ValueError(
            f"{folder} has no {WEIGHTS_FILE}; refusing to unpickle other weight files "
            "(pass allow_pickle=True if you trust them)"
        )
    name = f"local-dir:{folder}"
    if config["architecture"] in HPFF_MODELS:
        extra = {"allow_pickle": True} if allow_pickle else {}
        return timm.create_model(name, pretrained=True, **extra, **kwargs)
    local = dict(config.get("local_learning", {}))
    local.update({k: kwargs.pop(k) for k in LOCAL_KWARGS if k in kwargs})
    if "method" not in local:
        raise ValueError(
            f"{folder} holds a plain {config['architecture']} checkpoint without a local-learning"
            " setting: pass method=..., num_modules=... to wrap it"
        )
    local.pop("in_chans", None)
    return from_timm(timm.create_model(name, pretrained=True, **kwargs), **local)


def _aux_path(source: str) -> Path | None:
    """Where ``source``'s auxiliary weights are, if it has any."""
    if Path(source).is_dir():
        path = Path(source) / AUX_FILE
        return path if path.is_file() else None
    repo = source.removeprefix("hf-hub:") if source.startswith("hf-hub:") else None
    if repo is None and source in TAGS:
        folder = shipped_folder(source)
        if folder is not None and (folder / AUX_FILE).is_file():
            return folder / AUX_FILE
        repo = TAGS[source].hf_hub_id if source in tags.HUB_PUBLISHED else None
    if repo is None:
        return None
    try:
        return Path(hf_hub_download(repo, AUX_FILE))
    except HUB_ERRORS:
        return None


def load_model(
    source: str | Path, *, with_aux: bool = True, allow_pickle: bool = False, **kwargs: Any
) -> LocalModel:
    """A pretrained LocalModel from an exported folder, ``hf-hub:<repo>`` or a catalogue tag.

    Args:
        source: a folder written by :func:`export_model` (or a recipes output dir with a timm
            ``config.json`` and ``model.safetensors``), ``hf-hub:org/repo``, or a tag.
        with_aux: also load the auxiliary networks when the source has ``aux.safetensors`` (to
            continue local training); fresh ones otherwise, and whenever ``kwargs`` change the
            classes or the local-learning setting (the saved ones would not fit).
        allow_pickle: accept non-safetensors weight files.
        **kwargs: ``timm.create_model`` / LocalModel arguments (``num_classes=N`` for a new head;
            ``method=...`` etc. to wrap a plain timm checkpoint).
    """
    source = str(source)
    if Path(source).is_dir():
        model = _load_folder(Path(source), allow_pickle, **kwargs)
    else:
        extra = {"allow_pickle": True} if allow_pickle else {}
        model = timm.create_model(source, pretrained=True, **extra, **kwargs)
    changed = set(kwargs) & {"num_classes", *LOCAL_KWARGS}
    aux = _aux_path(source) if with_aux and not changed else None
    if aux is not None:
        load_aux(model, aux, allow_pickle=allow_pickle)
    return model


def _run_folder(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path, refused first when it is not a folder: its missing files would
    otherwise be blamed for a mistyped path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is not a folder" if run_dir.exists() else "does not exist"
        raise FileNotFoundError(f"{run_dir} {what}: pass a finished run's output folder")
    return run_dir


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    tag: str | None = None,
    record: RunRecord | None = None,
    include_aux: bool = False,
    overwrite: bool = False,
    **model_kwargs: Any,
) -> Path:
    """Re-export a finished run's folder (``config.json`` + ``model.safetensors`` [+ aux]).

    The run's record is ``record`` or ``<run_dir>/run.json``. A plain timm checkpoint is wrapped
    in the tag's setting (or ``model_kwargs``) before export.
    """
    run_dir = _run_folder(run_dir)
    if record is None:
        if not (run_dir / RECORD_FILE).is_file():
            raise FileNotFoundError(
                f"{run_dir} has no {RECORD_FILE}: pass the run's record (--record PATH)"
            )
        record = RunRecord.load(run_dir / RECORD_FILE)
    if include_aux and not (run_dir / AUX_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} has no {AUX_FILE} to include")
    config = _read_config(run_dir)
    if tag in TAGS and config["architecture"] not in HPFF_MODELS and "local_learning" not in config:
        model_kwargs = {**TAGS[tag].model_kwargs(), **model_kwargs}
    model = load_model(run_dir, with_aux=include_aux, **model_kwargs)
    if tag in TAGS and _architecture(model) is None:  # a plain checkpoint wrapped in the tag
        spec = TAGS[tag]
        model.pretrained_cfg = {**spec.pretrained_cfg(), "architecture": spec.arch, "tag": spec.tag}
    return export_model(
        model, out_dir, tag=tag, record=record, include_aux=include_aux, overwrite=overwrite
    )


# --- publish ------------------------------------------------------------------------------------


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Add hpff-zoo model",
):
    """Upload an exported folder to ``repo_id`` (created if needed), as timm's push_to_hf_hub."""
    folder = Path(folder)
    for name in (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}: export it with export_model first")
    pickles = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pth", ".pt", ".ckpt")]
    if pickles:
        raise ValueError(f"{folder} holds pickle files {pickles}; only safetensors are published")
    api = HfApi(token=token, library_name="hpff_zoo", library_version=__version__)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo.repo_id,
        folder_path=folder,
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message,
    )


def push_model(
    model: LocalModel,
    repo_id: str,
    *,
    record: RunRecord,
    tag: str | None = None,
    include_aux: bool = False,
    **push_kwargs: Any,
):
    """Export ``model`` to a temporary folder and upload it (the recipes' ``--push-to-hub``)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_model(
            model, Path(tmp) / "export", tag=tag, record=record, include_aux=include_aux
        )
        return push_folder(folder, repo_id, **push_kwargs)


# --- model cards for the catalogue --------------------------------------------------------------


def write_catalogue_cards(
    out_dir: str | Path, names: Sequence[str] | None = None, estimate: bool = True
) -> list[Path]:
    """(Re)write ``<out_dir>/<tag>/README.md`` for catalogue tags.

    A tag whose folder holds weights and ``run.json`` gets its trained card re-rendered from
    them, a timm-backbone tag a card saying whose weights it loads and what they are not; any
    other tag gets a planned card with the training command and a compute estimate.
    """
    written = []
    for name in names or [*TIMM_BACKBONES, *TAGS]:
        if name in TIMM_BACKBONES:
            backbone = TIMM_BACKBONES[name]
            planned = [n for n, s in TAGS.items() if s.arch == backbone.arch]
            written.append(_write_card(out_dir, name, render_timm_backbone_card(backbone, planned)))
            continue
        if name not in TAGS:
            known = [*TIMM_BACKBONES, *TAGS]
            raise ValueError(unknown_name("tag", name, known) + " (python -m hpff_zoo.hub list)")
        spec, folder = TAGS[name], Path(out_dir) / name
        if (folder / WEIGHTS_FILE).is_file() and (folder / RECORD_FILE).is_file():
            record = RunRecord.load(folder / RECORD_FILE)
            model = load_model(folder, with_aux=False)
            ships_aux = (folder / AUX_FILE).is_file()
            facts = card_facts(model, name, record.dataset, spec.hf_hub_id, ships_aux)
            card = render_card(facts, record)
        else:
            _logger.info("planned card for %s", name)
            model = timm.create_model(name)
            facts = card_facts(model, name, spec.dataset.key, spec.hf_hub_id)
            cost = estimate_compute(spec, model) if estimate else None
            card = render_card(facts, spec=spec, estimate=cost)
        written.append(_write_card(out_dir, name, card))
    return written


def _write_card(out_dir: str | Path, name: str, card: str) -> Path:
    path = Path(out_dir) / name / CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(card)
    return path


# --- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m hpff_zoo.hub",
        description="Export, publish and describe hpff-zoo checkpoints as Hub folders.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser(
        "export",
        help="turn a finished run's folder into a Hub-ready folder",
        description="Read RUN_DIR (config.json + model.safetensors [+ aux.safetensors] + run.json)"
        " and write OUT_DIR: backbone-only model.safetensors, timm config.json, model card.",
    )
    export.add_argument("run_dir", type=Path, help="the run's output folder")
    export.add_argument("out_dir", type=Path, help="the Hub-ready folder to write")
    export.add_argument(
        "--tag",
        help="catalogue tag to publish as (e.g. hpff_resnet32.fmnist_infopro_k16_hpff);"
        " the run must match its setting",
    )
    export.add_argument(
        "--record", type=Path, help="the run's RunRecord JSON (default: RUN_DIR/run.json)"
    )
    export.add_argument(
        "--e2e-record",
        type=Path,
        help="RunRecord of the E2E baseline run: its peak memory goes in the card for comparison",
    )
    export.add_argument(
        "--aux", action="store_true", help="also export aux.safetensors (to continue training)"
    )
    export.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    export.add_argument(
        "--allow-pickle", action="store_true", help="accept .bin/.pth weights (trusted runs only)"
    )

    push = commands.add_parser(
        "push",
        help="upload an exported folder to the Hub",
        description="Create ORG/REPO if needed and upload FOLDER (needs a Hub token: "
        "`hf auth login` or HF_TOKEN).",
    )
    push.add_argument("folder", type=Path, help="a folder written by `export`")
    push.add_argument("repo_id", help="the Hub repository, e.g. hpff-zoo/hpff_resnet32.fmnist_e2e")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", help="branch to push to (default: main)")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead")
    push.add_argument("--message", default="Add hpff-zoo model", help="commit message")
    push.add_argument("--token", help="Hub token (default: the logged-in one)")

    cards = commands.add_parser(
        "cards",
        help="(re)write the catalogue's model cards",
        description="Write OUT/<tag>/README.md for every catalogue tag (or --tag ones): trained "
        "cards from a shipped folder's run.json, planned cards with the training command and a "
        "compute estimate otherwise.",
    )
    cards.add_argument("--out", type=Path, default=None, help="default: the shipped folder")
    cards.add_argument("--tag", action="append", help="only this tag (repeatable)")
    cards.add_argument(
        "--no-estimate", action="store_true", help="skip the FLOP count (one step per tag)"
    )

    commands.add_parser("list", help="catalogue tags and where their weights are")
    return parser  # fmt: skip


def _list() -> None:
    """One row per tag: name, description, where its weights are; columns as wide as needed.

    The timm-backbone tags come first: they are the ImageNet models' default tags."""
    rows = [("tag", "description", "weights")]
    for name, backbone in TIMM_BACKBONES.items():
        rows.append((name, backbone.description, f"hub:{backbone.hf_hub_id}"))
    for name, spec in TAGS.items():
        where = [f"hub:{spec.hf_hub_id}"] if name in tags.HUB_PUBLISHED else []
        if shipped_folder(name):
            where.append(f"shipped:{shipped_folder(name)}")
        rows.append((name, spec.description, " ".join(where) or "no weights yet"))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, description, where in rows:
        print(f"{name:<{widths[0]}}  {description:<{widths[1]}}  {where}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "export":
            record = RunRecord.load(args.record) if args.record else None
            if args.e2e_record:
                record = record or RunRecord.load(_run_folder(args.run_dir) / RECORD_FILE)
                e2e = RunRecord.load(args.e2e_record)
                record = replace(record, e2e_peak_memory_bytes=e2e.peak_memory_bytes)
            out = export_run(
                args.run_dir, args.out_dir, tag=args.tag, record=record, include_aux=args.aux,
                overwrite=args.overwrite, allow_pickle=args.allow_pickle,
            )  # fmt: skip
            print(f"exported {out}")
        elif args.command == "push":
            info = push_folder(
                args.folder, args.repo_id, token=args.token, private=args.private,
                revision=args.revision, create_pr=args.create_pr, commit_message=args.message,
            )  # fmt: skip
            print(f"pushed {args.folder} to {args.repo_id}: {info}")
        elif args.command == "cards":
            for path in write_catalogue_cards(
                args.out or shipped_dir(), args.tag, estimate=not args.no_estimate
            ):
                print(f"wrote {path}")
        else:
            _list()
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
