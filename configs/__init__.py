"""How train.py reads the command line: which of these YAML files load first, short options, and
errors in one line.

``default.yaml`` (what every run does) always loads first; ``digits.yaml`` (the default data,
model and their settings) only when the command does not choose its own data, so switching
``data.class_path`` never inherits the digits' batch size, caching or transforms (jsonargparse
keeps the init_args a new class_path shares with the old one).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

FOLDER = Path(__file__).resolve().parent
DEFAULT_CONFIG = FOLDER / "default.yaml"
DIGITS_CONFIG = FOLDER / "digits.yaml"


def default_config_files(argv: list[str]) -> list[str]:
    """``default.yaml``, plus ``digits.yaml`` unless ``argv`` chooses its own data."""
    return [str(DEFAULT_CONFIG)] + ([] if chooses_data(argv) else [str(DIGITS_CONFIG)])


def chooses_data(argv: list[str]) -> bool:
    """True for ``--data CLASS`` (``--data=CLASS``, ``--data.class_path CLASS``) or a
    ``--config`` file whose ``data`` names a class or is null (``--data.init_args.x``, or a
    ``data:`` with only ``init_args``, changes the data already chosen)."""
    for i, token in enumerate(argv):
        name, eq, value = token.partition("=")
        following = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        if name in ("--data", "--data.class_path"):
            return True
        if name in ("--config", "-c"):
            try:
                config = yaml.safe_load(Path(following).read_text()) or {}
                data = config.get("data", {})
                if data is None or isinstance(data, str) or "class_path" in data:
                    return True
            except (OSError, yaml.YAMLError, TypeError, AttributeError):
                continue  # the parser reports a missing or broken file itself
    return False


# Short options for what people change most, rewritten to the full key before parsing: true
# synonyms, so --print_config, the saved config and configs all see only the full key
# (jsonargparse links would instead forbid setting trainer.devices in a config).
ALIASES = {
    "--devices": "--trainer.devices",
    "--num_nodes": "--trainer.num_nodes",
    "--max_epochs": "--trainer.max_epochs",
    "--max_steps": "--trainer.max_steps",
    "--precision": "--trainer.precision",
    "--accelerator": "--trainer.accelerator",
    "--strategy": "--trainer.strategy",
    "--fast_dev_run": "--trainer.fast_dev_run",
    "--seed": "--seed_everything",
}
ALIAS_HELP = "Short options: " + ", ".join(f"{a} = {t}" for a, t in ALIASES.items()) + "."


def expand_aliases(argv: list[str]) -> list[str]:
    """``--devices 2`` / ``--devices=2`` -> ``--trainer.devices ...``; other tokens untouched."""
    expanded = []
    for token in argv:
        name, sep, value = token.partition("=")
        expanded.append(ALIASES[name] + sep + value if name in ALIASES else token)
    return expanded


class OneLineErrorParser(LightningArgumentParser):
    """Reports a bad option, config file or class path as one line naming what was wrong,
    instead of the usage text and jsonargparse's nested report of every Union alternative
    (``JSONARGPARSE_DEBUG=1`` restores the full report with a traceback)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        sys.stderr.write(f"train.py: error: {condense_error(message)} "
                         "(python train.py --help lists the options)\n")
        sys.exit(2)

    def save(self, cfg: Any, *args: Any, **kwargs: Any) -> None:
        # config.yaml is written from the config this parser has just validated (Lightning's
        # SaveConfigCallback calls this in every fit); validating it again costs a noticeable
        # share of a short run.
        kwargs.setdefault("skip_validation", True)
        super().save(cfg, *args, **kwargs)


_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value type:",
          "Expected a <class 'NoneType'>", "Expected a path but ")


def condense_error(message: str, max_parts: int = 4) -> str:
    """Keep the lines of a jsonargparse error that say what is wrong, joined on one line."""
    parts = []
    for line in message.splitlines():
        line = line.strip().removeprefix("- ").strip()
        if line and not line.startswith(_NOISE) and line not in parts:
            parts.append(line)
    text = " ".join(parts[:max_parts])
    return text if len(text) <= 400 else text[:397] + "..."
