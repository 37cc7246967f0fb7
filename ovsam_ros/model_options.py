"""The command-line flags that choose a model, shared by every command that builds one (``segment``,
``bag``, ``vocab build``, ``eval``, ``bench``), and the :class:`~ovsam_ros.config.ModelConfig` they
make. Choices and defaults are read from that config's fields, so a flag never disagrees with the
``model.*`` parameter it stands for.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ovsam_ros.config import ModelConfig
from ovsam_ros.preset_registry import PRESET_NAMES, PRESETS

_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}


def _choices(name: str) -> dict[str, Any]:
    f = _FIELDS[name]
    return {"default": f.default, "choices": f.metadata["choices"] or None,
            "help": f"{f.metadata['description']} (default: %(default)s)"}


def add_model_options(parser: argparse.ArgumentParser, recognition: bool = True) -> argparse._ArgumentGroup:
    """``--model --weights-dir --random-init --device --clip-model --clip-weights --sam-variant`` and
    (``recognition``) ``--recognition``; read them back with :func:`model_config`."""
    g = parser.add_argument_group("model")
    presets = "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values())
    g.add_argument("--model", default=_FIELDS["preset"].default, choices=PRESET_NAMES,
                   help=f"network preset (default: %(default)s). {presets}")
    g.add_argument("--weights-dir", type=Path, default=None,
                   help="folder with the weight files (default: the cache; see `ovsam-ros weights list`)")
    g.add_argument("--random-init", action="store_true",
                   help="random weights, no files: for trying the pipeline only, never for results")
    g.add_argument("--device", default=_FIELDS["device"].default,
                   help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    g.add_argument("--clip-model", **_choices("clip_model"))
    g.add_argument("--clip-weights", type=Path, default=None,
                   help=_FIELDS["clip_weights"].metadata["description"])
    g.add_argument("--sam-variant", **_choices("sam_variant"))
    if recognition:
        g.add_argument("--recognition", **_choices("recognition"))
    return g


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The model settings of :func:`add_model_options`' flags (validated by the config: a mode the
    preset cannot run raises :class:`~ovsam_ros.config.ConfigError` with the reason)."""
    return ModelConfig(preset=args.model, weights_dir=str(args.weights_dir or ""), device=args.device,
                       recognition=getattr(args, "recognition", _FIELDS["recognition"].default),
                       clip_model=args.clip_model, clip_weights=str(args.clip_weights or ""),
                       sam_variant=args.sam_variant, random_init=args.random_init)
