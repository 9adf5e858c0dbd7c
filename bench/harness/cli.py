"""Flags every bench shares, and presets.

``--preset cpu`` (the default without CUDA) runs the embedded SmolLM2-135M-Instruct in float32 at
tiny sizes; ``--preset h100`` (the default with CUDA) runs Llama-3.1-8B's config with dummy weights
in bfloat16 at the sizes of the issue. A bench gives each preset its own defaults for its workload
flags; anything given on the command line wins. Engine flags are radixserve's own ``ServerArgs``
flags (``--max-running-requests``, ``--chunked-prefill-size``, ...), passed to the offline engine or
to the server unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.harness import isolated, model_files
from bench.harness.records import RESULTS_DIR

# ServerArgs fields a bench never forwards (the launcher picks the port; logs stay quiet).
_NOT_FORWARDED = {"host", "port", "api_key", "log_level"}
ENGINE_PRESETS = {
    "cpu": {},
    "h100": {
        "model_path": str(model_files.LLAMA_8B_DIR),
        "load_format": "dummy",
        "dtype": "bfloat16",
        "context_length": 8192,
        # batch 1,000-request workloads whole, prefill in big chunks, replay graphs up to batch 1,024
        "max_running_requests": 1024,
        "chunked_prefill_size": 8192,
        "cuda_graph_max_bs": 1024,
    },
}


def default_preset() -> str:
    import torch

    return "h100" if torch.cuda.is_available() else "cpu"


def build_parser(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], epilog=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(ENGINE_PRESETS), help="sizes and model (default: h100 with CUDA)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default: 0)")
    parser.add_argument("--notes", default="", help="free text stored in every record")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSONL records go")
    parser.add_argument("--no-record", action="store_true", help="print only; append no JSONL record")
    parser.add_argument(
        "--log-steps",
        action="store_true",
        help="print the engine's batch log (each prefill batch, every 40th decode batch) with timestamps",
    )
    parser.add_argument(
        "--stack-dump-after",
        type=float,
        metavar="SECONDS",
        help="print every thread's stack after this many seconds (set it below a time limit: where a hung run is)",
    )
    return parser


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    from radixserve.cli import add_server_args

    add_server_args(parser.add_argument_group("engine (radixserve ServerArgs; forwarded unchanged)"))


def add_variant_flag(parser: argparse.ArgumentParser) -> None:
    """``--variant FLAGS`` (repeatable): the same measurement again with extra engine flags, in the
    same run, printed and recorded next to the plain one (see ``variants``)."""
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="FLAGS",
        help="also measure the engine with these extra flags, side by side (e.g. '--triton-decode-max-bs 63')",
    )


def variants(args: argparse.Namespace, engine_kwargs: dict) -> list[tuple[str, dict]]:
    """``[(label, engine kwargs)]``: the plain engine ("" label), then one per ``--variant``."""
    from radixserve.cli import add_server_args

    parser = argparse.ArgumentParser(prog="--variant", add_help=False)
    add_server_args(parser)
    unset = object()
    parser.set_defaults(**{action.dest: unset for action in parser._actions})  # only what a variant names
    runs = [("", dict(engine_kwargs))]
    for text in args.variant:
        given = {
            name: value for name, value in vars(parser.parse_args(shlex.split(text))).items() if value is not unset
        }
        runs.append((text, {**engine_kwargs, **given}))
    return runs


def parse(parser: argparse.ArgumentParser, bench_presets: dict[str, dict], argv=None) -> argparse.Namespace:
    """Parse with the chosen preset's defaults (engine and bench) applied before the command line."""
    argv = sys.argv[1:] if argv is None else argv
    known, _ = _preset_parser().parse_known_args(argv)
    preset = known.preset or default_preset()
    parser.set_defaults(**{**ENGINE_PRESETS[preset], **bench_presets.get(preset, {})})
    args = parser.parse_args(argv)
    args.preset = preset
    if args.log_steps:
        isolated.log_engine_steps()
    if args.stack_dump_after:
        isolated.dump_stacks_after(args.stack_dump_after)
    return args


def _preset_parser() -> argparse.ArgumentParser:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(ENGINE_PRESETS))
    return pre


@dataclass
class ModelSetup:
    """What the engine is given, and what the harness needs to know about the model."""

    engine_kwargs: dict  # ServerArgs fields that differ from their defaults
    label: str
    config_dir: Path
    tokenizer_dir: Path | None
    dtype_name: str  # the dtype the engine runs in ("bfloat16", "float32", ...)
    vocab_limit: int


def model_setup(args: argparse.Namespace) -> ModelSetup:
    from radixserve.config import ServerArgs

    kwargs = {}
    for f in dataclasses.fields(ServerArgs):
        value = getattr(args, f.name, f.default)
        if f.name not in _NOT_FORWARDED and value != f.default:
            kwargs[f.name] = value
    if kwargs.get("load_format") == "dummy" and not kwargs.get("tokenizer_path"):
        kwargs["tokenizer_path"] = str(model_files.default_tokenizer_dir())
    config_dir = model_files.config_dir(kwargs.get("model_path"))
    tokenizer_dir = Path(kwargs["tokenizer_path"]) if kwargs.get("tokenizer_path") else None
    return ModelSetup(
        engine_kwargs=kwargs,
        label=model_files.model_label(kwargs.get("model_path"), kwargs.get("load_format", "auto")),
        config_dir=config_dir,
        tokenizer_dir=tokenizer_dir,
        dtype_name=_dtype_name(kwargs.get("dtype", "auto"), kwargs.get("device", "auto")),
        vocab_limit=model_files.vocab_limit(config_dir, tokenizer_dir),
    )


def _dtype_name(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    import torch

    on_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "bfloat16" if on_cuda else "float32"


def server_flags(engine_kwargs: dict) -> list[str]:
    """The ``radixserve serve`` command-line flags for the same engine."""
    flags = []
    for name, value in engine_kwargs.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        elif value is not None:
            flags += [flag, str(value)]
    return flags
