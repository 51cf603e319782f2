"""The experiment grid: which cells (dataset × model × approach × rank × seed) a config asks for.

Used by ``workflow/rules/common.smk``; kept here so it is plain Python with unit tests.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
from pathlib import Path

import yaml

from . import UserError, approaches
from .layout import Cell

SLUG = r"[a-z0-9][a-z0-9-]*"
APPROACHES = approaches.NAMES
MODEL_FREE = {a.name: a.model_slug for a in approaches.REGISTRY.values() if a.model_slug}  # their cells' model slug
RESERVED = {"data", "models", "logs", "benchmarks", *MODEL_FREE.values()}  # results/ folders, model-free slugs
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
SHIPPED = SCHEMA.parents[2] / "config.yaml"  # the embedded default grid: its hparams are the defaults
# One vocabulary for settings every approach shares: old spellings are refused, naming the new one.
RENAMED_KEYS = {"epochs": "max_epochs"}
RENAMED_KEYS_OF = {name: {"max_length": "text_tokens"} for name in approaches.names(modes=approaches.PROMPT_MODES)}
RENAMED_OPTIMIZERS = {"adamw_8bit": "adamw_bnb_8bit", "adamw": "adamw_torch"}


def refuse_renamed(config: dict) -> None:
    """Stop on a hyperparameter spelled the old way (approach blocks and per-model overrides), with
    the key path and the new spelling; run before the schema, whose message could not name it."""
    blocks = [(f"approaches.{name}.hparams", name, (block or {}).get("hparams") or {})
              for name, block in (config.get("approaches") or {}).items()]
    blocks += [(f"{kind}.{key}.hparams.{name}", name, hp or {})
               for kind in ("models", "datasets")
               for key, spec in (config.get(kind) or {}).items()
               for name, hp in ((spec or {}).get("hparams") or {}).items()]
    for where, approach, hp in blocks:
        for key in hp:
            new = RENAMED_KEYS.get(key) or RENAMED_KEYS_OF.get(approach, {}).get(key)
            if new:
                raise UserError(f"{where}.{key}: renamed to '{new}' (one vocabulary for every approach)")
        old = hp.get("optimizer")
        if old in RENAMED_OPTIMIZERS:
            raise UserError(f"{where}.optimizer: '{old}' is now '{RENAMED_OPTIMIZERS[old]}' (transformers' optimizer "
                            f"names for every approach)")


def check(config: dict) -> None:
    """Cross-reference checks the JSON schema cannot express; raises UserError naming the key."""
    for kind in ("datasets", "models"):
        for key in config.get(kind, {}):
            if not re.fullmatch(SLUG, key) or key in RESERVED:
                raise UserError(f"{kind}: key '{key}' must be a slug ([a-z0-9-], not {sorted(RESERVED)})")
    for key, spec in config.get("datasets", {}).items():
        base = spec.get("base")
        if spec.get("source") == "derived_pairs" and base not in config["datasets"]:
            raise UserError(f"datasets.{key}.base: '{base}' is not a dataset key ({sorted(config['datasets'])})")
    models = config.get("models", {})
    for key, spec in models.items():
        base = (spec or {}).get("variant_of")
        if base is not None and (base not in models or base == key or models[base].get("variant_of")):
            raise UserError(f"models.{key}.variant_of: {base!r} is not another model key of this config that is not "
                            f"itself a variant (defined: {sorted(models)})")
    for name, block in config.get("approaches", {}).items():
        if name not in APPROACHES:
            raise UserError(f"approaches.{name}: unknown approach (known: {list(APPROACHES)})")
        if name not in MODEL_FREE and not block.get("models"):
            raise UserError(f"approaches.{name}.models: list at least one model key (an overlay that sets only "
                            f"seeds or hparams of '{name}' needs a base config that runs it)")
        for key in ("seeds", "datasets"):
            if block.get(key) == []:
                raise UserError(f"approaches.{name}.{key}: an empty list; leave the key out to use "
                                f"{'the top-level seeds' if key == 'seeds' else 'every dataset'}")
        for model in block.get("models", []):
            if model not in config.get("models", {}):
                raise UserError(f"approaches.{name}.models: model key '{model}' does not exist "
                                f"(defined: {sorted(config.get('models', {}))})")
        for dataset in block.get("datasets") or []:
            if dataset not in config.get("datasets", {}):
                raise UserError(f"approaches.{name}.datasets: dataset key '{dataset}' does not exist "
                                f"(defined: {sorted(config.get('datasets', {}))})")
        if approaches.get(name).ranked and not block.get("ranks"):
            raise UserError(f"approaches.{name}.ranks: approach '{name}' needs at least one LoRA rank")


def cells(config: dict) -> list[Cell]:
    """Every cell of the grid, in a stable order."""
    check(config)
    out = []
    for approach, block in config.get("approaches", {}).items():
        if not block.get("enabled", True):
            continue
        datasets = block.get("datasets") or list(config["datasets"])
        ranks = block.get("ranks") if approaches.get(approach).ranked else [0]
        models = [MODEL_FREE[approach]] if approach in MODEL_FREE else block.get("models", [])
        for dataset in datasets:
            for model in models:
                for rank in ranks:
                    for seed in block.get("seeds") or config.get("seeds", [42]):
                        out.append(Cell(dataset, model, approach, int(rank), int(seed)))
    if not out:
        raise UserError("approaches: the grid has no cells (no approach listed, or every one has enabled: false)")
    return out


def hparams(config: dict, approach: str, model: str, dataset: str | None = None) -> dict:
    """A cell's hyperparameters: the approach's block, then the model's overrides for the approach
    (``models.<key>.hparams.<approach>``), then the dataset's (``datasets.<key>.hparams.<approach>``)."""
    merged = dict(config["approaches"][approach].get("hparams", {}))
    merged.update(((config["models"].get(model) or {}).get("hparams") or {}).get(approach, {}))
    if dataset is not None:
        merged.update(((config["datasets"].get(dataset) or {}).get("hparams") or {}).get(approach, {}))
    return merged


@functools.cache
def shipped_hparams() -> dict:
    """approach -> the hparams block config.yaml ships (read once)."""
    shipped = (yaml.safe_load(SHIPPED.read_text()) or {}).get("approaches") or {}
    return {name: dict((block or {}).get("hparams") or {}) for name, block in shipped.items()}


def fill_shipped_defaults(config: dict) -> None:
    """Complete every approach's hparams block with the values config.yaml ships for it, so that a
    partial block (a user's own config, not an overlay on config.yaml) gets the same settings as the
    default grid: one set of defaults, stated once (the schema holds only keys config.yaml leaves out).
    An approach with ``settings_from`` (prompting without training) first takes those approaches'
    shipped blocks, then this config's blocks of them (the same prompts and text): the settings its
    typed hyperparameters know, not the training ones it has no use for."""
    import dataclasses

    shipped = shipped_hparams()
    blocks = config.get("approaches") or {}
    for name in (n for n in APPROACHES if isinstance(blocks.get(n), dict)):  # registry order: sources first
        sources = approaches.get(name).settings_from
        known = {f.name for f in dataclasses.fields(approaches.get(name).hparams_class)}
        defaults = {}
        for settings in ([shipped.get(source, {}) for source in sources] + [shipped.get(name, {})]
                         + [blocks[source]["hparams"] for source in sources if isinstance(blocks.get(source), dict)]):
            defaults.update({k: v for k, v in settings.items() if k in known})
        blocks[name]["hparams"] = {**defaults, **(blocks[name].get("hparams") or {})}


def for_rank(hp: dict, rank: int | str) -> dict:
    """A cell's hyperparameters at its LoRA rank: ``lora_alpha_ratio`` becomes ``lora_alpha`` = ratio × r
    (so a rank-8 cell with ratio 2 has exactly the hyperparameters of one with lora_alpha 16)."""
    if "lora_alpha_ratio" not in hp:
        return hp
    out = {k: v for k, v in hp.items() if k != "lora_alpha_ratio"}
    out["lora_alpha"] = hp["lora_alpha_ratio"] * int(rank)
    return out


def schema_error(error, where: str = "config") -> str:
    """One line for a JSON-schema error: the key path, the message, and for a number written
    ``1e-3`` (text to YAML 1.1, which PyYAML reads) the spelling that is a number."""
    path = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path).lstrip(".")
    key = f"{where}{'.' if where and path else ''}{path}"
    line = f"{key}: {error.message}" if key else error.message
    if error.validator == "type" and isinstance(error.instance, str):
        try:
            number = float(error.instance)
        except ValueError:
            return line
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        if "array" in wanted and "number" not in wanted and "integer" not in wanted:  # a list of numbers
            value = int(number) if number.is_integer() else number
            return f"{line} (write a list: [{value}])"
        mantissa, _, exponent = error.instance.lower().partition("e")
        if exponent and "." not in mantissa:
            line += f" (YAML reads {error.instance} as text; write {mantissa}.0e{exponent})"
        else:
            line += f" (write it without quotes: {number!r})"
    return line


def check_schema(config: dict, schema: dict) -> None:
    """The config against the schema, stopping at the first error with one line naming the key."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        raise UserError(schema_error(error, ""))


def check_overrides(config: dict, schema: dict) -> None:
    """Per-model and per-dataset overrides name a known approach and hold only that approach's
    hyperparameters with allowed values (the schema's own check of the approach block)."""
    import jsonschema

    for kind in ("models", "datasets"):
        for key, spec in (config.get(kind) or {}).items():
            for approach, values in ((spec or {}).get("hparams") or {}).items():
                where = f"{kind}.{key}.hparams.{approach}"
                if approach not in APPROACHES:
                    raise UserError(f"{where}: unknown approach (known: {list(APPROACHES)})")
                target = {"$defs": schema["$defs"], "$ref": f"#/$defs/{approach}/properties/hparams"}
                error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(target).iter_errors(values))
                if error is not None:
                    raise UserError(schema_error(error, where))


def variants(config: dict) -> list[str]:
    """Model keys that repeat another model with other hyperparameters (``variant_of``)."""
    return [key for key, spec in (config.get("models") or {}).items() if (spec or {}).get("variant_of")]


def check_overrides_used(config: dict, grid_cells: list[Cell]) -> None:
    """Every per-model and per-dataset override changes at least one cell of the grid: one that
    would change none (the approach does not run that model or dataset) is a mistake, not a no-op.
    An approach switched off (``enabled: false``) keeps its overrides for when it is switched on again."""
    off = {name for name, block in (config.get("approaches") or {}).items() if not (block or {}).get("enabled", True)}
    for kind, field in (("models", "model"), ("datasets", "dataset")):
        for key, spec in (config.get(kind) or {}).items():
            for approach in ((spec or {}).get("hparams") or {}):
                if approach not in off and not any(c.approach == approach and getattr(c, field) == key for c in grid_cells):
                    raise UserError(f"{kind}.{key}.hparams.{approach}: {approach} runs on no {field} {key!r} in this "
                                    f"grid, so the override changes nothing; remove it, or add {key!r} to "
                                    f"approaches.{approach}.{kind}")


def multi_label(config: dict, dataset: str) -> bool:
    """Whether a dataset's cells are multi-label (as its spec says: derived pairs always are)."""
    spec = config["datasets"][dataset] or {}
    return bool(spec.get("multi_label")) or spec.get("source") == "derived_pairs"


def configurations(grid_cells: list[Cell]) -> list[Cell]:
    """One cell per configuration (dataset × model × approach × rank): its first seed."""
    return list({(c.dataset, c.model, c.approach, c.rank): c for c in reversed(grid_cells)}.values())[::-1]


def check_budgets(config: dict, grid_cells: list[Cell]) -> None:
    """Training budgets and tune blocks that cannot work, one line naming the key, before any job."""
    from . import tuning

    tuned_threshold = {}  # approach -> whether any of its cells with threshold: tuned is multi-label
    for cell in configurations(grid_cells):
        hp = hparams(config, cell.approach, cell.model, cell.dataset)
        if hp.get("threshold") == "tuned":
            tuned_threshold[cell.approach] = tuned_threshold.get(cell.approach) or multi_label(config, cell.dataset)
        # patience past max_epochs never stops a run (one epoch: nothing to stop, and quick configs say so)
        if hp.get("patience") and (hp.get("max_epochs") or 0) > 1 and hp["patience"] > hp["max_epochs"]:
            raise UserError(f"approaches.{cell.approach}.hparams.patience: {hp['patience']} epochs without "
                            f"improvement can never stop a run of max_epochs {hp['max_epochs']} (model {cell.model}, "
                            f"dataset {cell.dataset}); lower patience or raise max_epochs")
        block = (config["approaches"][cell.approach] or {}).get("tune")
        where = f"approaches.{cell.approach}.tune" if block else "tune"
        tuning.check(config, cell.approach, hp, multi_label(config, cell.dataset), where)
    for approach, applies in tuned_threshold.items():
        if not applies:
            raise UserError(f"approaches.{approach}.hparams.threshold: 'tuned' chooses per-label thresholds of "
                            f"multi-label data, and every dataset of {approach} here is single-label (one label per "
                            "text: the top class); remove it")


DATA_PATH_KEYS = ("path", "train", "val", "test")  # a files source's files


def resolve_data_paths(config: dict, configfiles: list[str | Path]) -> None:
    """A relative data path resolves against the folder of the config file that sets it (the last of
    ``configfiles``, in Snakemake's merge order, whose value is the config's), written relative to the
    working directory where it can be (so a config in the working directory keeps its paths as they
    are). A path set otherwise (``--config``) stays relative to the working directory."""
    blocks = []
    for file in configfiles:
        with contextlib.suppress(OSError, yaml.YAMLError):
            loaded = yaml.safe_load(Path(file).read_text())
            if isinstance(loaded, dict) and isinstance(loaded.get("datasets"), dict):
                blocks.append((Path(file).absolute().parent, loaded["datasets"]))
    for key, spec in (config.get("datasets") or {}).items():
        if not isinstance(spec, dict) or spec.get("source") != "files":
            continue
        for name in DATA_PATH_KEYS:
            value = spec.get(name)
            if not isinstance(value, str) or Path(value).is_absolute():
                continue
            origin = next((folder for folder, datasets in reversed(blocks) if isinstance(datasets.get(key), dict)
                           and name in datasets[key] and datasets[key][name] == value), None)
            if origin is None:
                continue
            resolved = os.path.normpath(origin / value)
            try:
                spec[name] = os.path.relpath(resolved)
            except ValueError:  # another drive (Windows)
                spec[name] = resolved


def validated_cells(config: dict) -> list[Cell]:
    """Every check of a config, in the order that names a mistake best, then its cells: old
    spellings, the schema (one line), the defaults (config.yaml's hparams, then the schema's, filled in
    by Snakemake's ``validate``), overrides, cross-references. Raises UserError."""
    from snakemake.utils import validate

    schema = yaml.safe_load(SCHEMA.read_text())
    refuse_renamed(config)
    check_schema(config, schema)
    config.setdefault("models", {})  # a TF-IDF-only grid names none
    fill_shipped_defaults(config)
    validate(config, str(SCHEMA))
    check_overrides(config, schema)
    grid_cells = cells(config)
    check_overrides_used(config, grid_cells)
    check_budgets(config, grid_cells)
    return grid_cells


def load_config(path: str | Path) -> dict:
    """Read and validate a config file outside Snakemake (tests, scripts): schema defaults + checks."""
    config = yaml.safe_load(Path(path).read_text())
    validated_cells(config)
    return config
