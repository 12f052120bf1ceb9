"""The ``onnx-pathlift`` command line: argument parsing and printing only.

Each command parses its arguments, calls one library function (:mod:`onnx_pathlift.api`,
:func:`onnx_pathlift.pruning.prune.prune_weights` / :func:`~onnx_pathlift.pruning.prune.prune_channel_groups`,
:func:`onnx_pathlift.analyses.inspection.inspect_model`, :func:`onnx_pathlift.audit.run_command`) and prints the
report it returns: its ``to_dict()`` with ``--json``, else a text form.

Exit codes: 0 ok, 1 anything else, 2 usage, 3 unsupported operators, 4 unreadable or invalid model,
5 a certificate exceeded by ``compare --check``, 6 an output could not be written, 7 ``audit --fail-on``;
130 Ctrl-C, 143 SIGTERM (one line each), 141 stdout closed by its reader (quiet)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import sys
import threading

from .. import __version__
from ..analyses import TABLE, declared
from ..analyses import provider as _provider
from ..errors import FAIL_ON_EXIT, OutOfMemoryError, PathliftError, UsageError
from ..fileio import prefetch
from ..sanitise import terminal
from .commands import SHAPE_FORMS, cmd_audit, cmd_compare, cmd_declared, cmd_inspect, cmd_lift, cmd_norm, cmd_prune
from .render import _way_out

# The analyses (numpy, onnx, onnxruntime, networkx) are imported by the commands that use them: the
# audit's parent process needs none of them, so its workers start sooner. A command an analysis declares
# (analyses/__init__.py) adds its options when its parser is first used (:class:`_Parser`).


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has a meaningful one) and keeps the examples' line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


_MODEL = "models/digits_cnn_torch_bn.onnx"  # a shipped model (examples run from the repository root)
#: one example per command, shown at the end of its --help
EXAMPLES = {
    "norm": f"onnx-pathlift norm {_MODEL} -q 1 -q 2 --verify\nonnx-pathlift norm model.onnx --input-shape input:1,3,224,224 --json",
    "lift": f"onnx-pathlift lift {_MODEL} -q 1 -o lifted.onnx   # then run it on all-ones inputs (see README)",
    "compare": f"onnx-pathlift compare {_MODEL} models/digits_cnn_torch_bn_pruned50.onnx --check 100",
    **{name: row.example for name, row in TABLE.items()},
    "prune": f"onnx-pathlift prune {_MODEL} --sparsity 0.5 -o pruned.onnx --eval models/digits_test.npz",
    "inspect": "onnx-pathlift inspect models/digits_mlp_sklearn.onnx",
    "audit": "onnx-pathlift audit models/ ../zoo/ --jobs 4 --timeout 300 --report report.html --fail-on error,timeout",
}


class _Parser(argparse.ArgumentParser):
    """Usage errors raise :class:`UsageError`; ``deferred`` (a declared analysis's options) is added to the
    parser when it is first used, to parse or to print help: building the parser imports no analysis."""

    deferred = None

    def _declare(self) -> None:
        if self.deferred is not None:
            options, self.deferred = self.deferred, None
            options(self)

    def parse_known_args(self, args=None, namespace=None):
        self._declare()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._declare()
        return super().format_usage()

    def format_help(self) -> str:
        self._declare()
        return super().format_help()

    def error(self, message: str):  # usage errors: main() prints one clear line (or JSON) and exits 2
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _fail(err: PathliftError, json_mode: bool, argv: list[str] | None = None) -> int:
    """Print the error (one JSON object with ``--json``); a refusal that names analysable tensors gets the
    command that analyses them: ``argv`` with its ``--output`` options replaced."""
    command = _way_out(err, argv)
    if json_mode:
        print(json.dumps({**err.to_dict(), **({"command": command} if command else {})}, indent=2))
    else:
        print(f"onnx-pathlift: error: {terminal(err, keep_newlines=True)}", file=sys.stderr)
        if command:
            print(f"  try: {terminal(command)}", file=sys.stderr)
    return err.exit_code


class _TerminalSafe:
    """A text stream that shows control characters (ANSI/OSC escapes, ...) written to it as visible
    escapes: the text output of every command quotes model-supplied names."""

    def __init__(self, inner):
        self.inner = inner

    def write(self, text: str) -> int:
        self.inner.write(terminal(text, keep_newlines=True))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def _common(sp: argparse.ArgumentParser) -> None:
    """The model argument and the options of every single-model command."""
    sp.add_argument("model", help="path to an .onnx file")
    sp.add_argument("--input-shape", action="append", metavar="[NAME=]SHAPE",
                    help=f"static input shape (needed for symbolic dimensions other than the batch): {SHAPE_FORMS}")
    sp.add_argument("--output", action="append", metavar="NAME", help="tensor to analyse (repeatable)")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.add_argument("--quiet", action="store_true",
                    help="text output: the summary lines only, without the per-layer / per-tensor tables")
    _max_file_size(sp)


def _max_file_size(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--max-file-size", type=float, metavar="MB",
                    help=f"largest model file read, in MiB (default {prefetch.DEFAULT_MAX_FILE_MB}, protobuf's own limit; "
                         f"also ${prefetch.FILE_LIMIT_VARIABLE}); a larger one is refused before it is read (exit 4)")


def _add_norm(n: argparse.ArgumentParser) -> None:
    n.add_argument("-q", type=float, action="append", help="norm exponent q ≥ 1, or inf for the largest path product (repeatable; default 1 and 2)")
    _provider(n)
    n.add_argument("--verify", action="store_true", help="also run the re-emission check")


def _add_lift(lf: argparse.ArgumentParser) -> None:
    lf.add_argument("-q", type=float, action="append",
                    help="norm exponent q ≥ 1, or inf for the largest path product (default 1; one q: lift writes one network)")
    lf.add_argument("-o", "--out", required=True, help="where to write the lifted model")


def _add_compare(c: argparse.ArgumentParser) -> None:
    c.add_argument("other", help="the second .onnx file (same architecture)")
    c.add_argument("--input-linf", type=float, default=1.0, metavar="R", help="inputs with ‖x‖_∞ ≤ R (default 1)")
    c.add_argument("--check", type=int, default=0, metavar="N",
                   help="also run both models on N random inputs in the box, then N steps of a search for the largest change")
    _provider(c)


def _add_prune(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("--sparsity", type=float, required=True,
                    help="fraction of the scored weights to zero (--structure channel: of the removable channel groups)")
    pr.add_argument("--structure", default="weight", choices=["weight", "channel"],
                    help="weight: zero single weights (default); channel: remove whole channels, write a smaller model")
    pr.add_argument("--criterion", choices=["path-magnitude", "magnitude", "path-mass", "l1-norm", "reconstruction"],
                    help="weight: path-magnitude (default) or magnitude; channel: path-mass (default), l1-norm "
                         "(the default where the model is not a DAG-ReLU network: SiLU, GELU, GroupNorm, ...), or "
                         "reconstruction (needs --calibration, and the default with it: ThiNet's greedy choice of the "
                         "groups whose removal the next layers' outputs notice least)")
    pr.add_argument("--masked", metavar="MASKED.onnx",
                    help="--structure channel: also write the masked model (removed channels' outgoing weights zeroed)")
    pr.add_argument("--repeats", type=int, help="--structure channel: latency runs per model (median; default 20)")
    pr.add_argument("--scope", default="global", choices=["global", "layer"],
                    help="global: the lowest-scored weights (or channel groups) over all tensors together; layer: the same fraction in each tensor")
    pr.add_argument("--layers", metavar="REGEX",
                    help="only the weight tensors whose name matches (channel: the groups whose tensors or writing weights match)")
    pr.add_argument("--target", default="groups", choices=["groups", "params", "macs", "latency"],
                    help="--structure channel: what --sparsity is a fraction of: removable groups (default), parameters, "
                         "MACs, or onnxruntime latency (per-node kernel times of the original, scaled by the work kept)")
    pr.add_argument("--round-to", type=int, metavar="N",
                    help="--structure channel: keep a multiple of N channels per layer (default 8, measured: docs/pruning.md)")
    pr.add_argument("--ranking", choices=["raw", "normalised"],
                    help="--structure channel: rank raw scores or scores divided by their layer's mean "
                         "(default: raw for path-mass, normalised for l1-norm)")
    pr.add_argument("--steps", type=int, metavar="K", help="--structure channel: remove in K steps, path mass "
                    "recomputed on the masked model after each (default 8 for path-mass, 1 for l1-norm)")
    pr.add_argument("--min-keep", type=float, metavar="F",
                    help="--structure channel: each layer keeps at least max(N, ⌈F·width⌉) channels (default 0.1)")
    pr.add_argument("-o", "--out", required=True, help="where to write the pruned model")
    pr.add_argument("--mask", help="also write the keep-masks (.npz keyed by initializer name)")
    pr.add_argument("--eval", metavar="DATA.npz", help="arrays x, y: top-1 accuracy before and after")
    pr.add_argument("--calibration", metavar="DATA.npz",
                    help="--structure channel: arrays x (optional y): the groups chosen by --criterion reconstruction "
                         "(the default here; path-mass: weighted by the activations seen), and the slim model re-fitted "
                         "to reproduce the original's outputs (least squares, no training)")
    pr.add_argument("--input-linf", type=float, default=1.0, metavar="R", help="certify inputs with ‖x‖_∞ ≤ R")


def _add_audit(au: argparse.ArgumentParser) -> None:
    au.add_argument("paths", nargs="+", metavar="PATH", help="an .onnx file, a folder (searched recursively) or a glob")
    au.add_argument("-q", type=float, action="append", metavar="Q", help="norm exponent q ≥ 1 (repeatable; default 1, 2 and 4)")
    au.add_argument("--input-shape", action="append", metavar="[NAME=]SHAPE",
                    help=f"static input shape for every model: {SHAPE_FORMS}")
    au.add_argument("--jobs", type=int, help="local worker processes (default: one per CPU)")
    au.add_argument("--timeout", type=float, metavar="S",
                    help="seconds per model before its worker is killed (default: none, no time limit)")
    au.add_argument("--max-memory", type=float, metavar="MB",
                    help="memory cap per worker process (its data segment, imports included: ~150 MB); a model "
                         "needing more fails with 'out of memory' and the audit goes on; rerun those with a larger "
                         "cap (default: none, no cap)")
    au.add_argument("--db", help="SQLite results database (default: beside --report, else audit.sqlite)")
    au.add_argument("--report", metavar="REPORT.html", help="write a self-contained HTML report")
    au.add_argument("--csv", metavar="OUT.csv", help="write one CSV row per model")
    au.add_argument("--json", action="store_true", help="print JSON Lines (one object per model) on stdout")
    au.add_argument("--scheduler", metavar="ADDRESS", help="run on the Dask cluster at tcp://HOST:PORT")
    _max_file_size(au)
    au.add_argument("--fail-on", metavar="STATUS[,STATUS]",
                    help=f"exit with code {FAIL_ON_EXIT} when any model ends in one of these statuses (ok, unsupported, invalid, error, "
                         "timeout; oom: an out-of-memory error), e.g. error,timeout,invalid to gate CI")


def _no_options(sp: argparse.ArgumentParser) -> None:
    """A command with only the common options."""


#: each command: (help, whether it takes one model and the common options, its own options (None: the ones
#: its analysis declares), what runs it)
COMMANDS = {
    "norm": ("Lq path-norms of a model", True, _add_norm, cmd_norm),
    "lift": ("write the lifted |W|^q network as an ONNX file", True, _add_lift, cmd_lift),
    "compare": ("path-metric between two same-architecture models and the certified output-change bound", True,
                _add_compare, cmd_compare),
    **{name: (row.help, True, None, cmd_declared) for name, row in TABLE.items()},  # options: declared()
    "prune": ("prune weights or whole channels by path-magnitude (or magnitude / L1) and certify the output change",
              True, _add_prune, cmd_prune),
    "inspect": ("what the importer sees: op and layer counts, folded, decomposed, cut, refused", True, _no_options,
                cmd_inspect),
    "audit": ("audit many models (files, folders, globs) in isolated workers; resumable", False, _add_audit, cmd_audit),
}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onnx-pathlift", description="Path-norms of ONNX ReLU networks, computed in onnxruntime.",
                formatter_class=_HelpFormatter, epilog="examples:\n  " + "\n  ".join(
                    ["onnx-pathlift COMMAND --help   (options, defaults and an example of each command)", *(
                        EXAMPLES[c].split("\n")[0] for c in ("norm", "inspect", "audit"))]))
    p.add_argument("--version", action="version", version=f"onnx-pathlift {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (text, single_model, options, run) in COMMANDS.items():
        sp = sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter,
                            epilog="example:\n  " + EXAMPLES[name].replace("\n", "\n  "))
        if single_model:
            _common(sp)
        if options is None:  # imported when the parser is first used
            sp.deferred = lambda parser, name=name: declared(name).options(parser)
        else:
            options(sp)
        sp.set_defaults(func=run)
    return p


def _not_a_folder(args) -> None:
    """A single-model command given a folder says so (and names the command for folders)."""
    for path in (getattr(args, "model", None), getattr(args, "other", None)):
        if isinstance(path, str) and os.path.isdir(path):
            raise UsageError(f"{path} is a folder: {args.command} reads one .onnx file (`onnx-pathlift audit "
                             f"{path}` analyses every model in a folder)")


#: the collector's first-generation threshold while a command runs (Python's default: 700 allocations). A
#: command's imports and start-up create ~10^5 long-lived objects (modules, functions, schemas) and almost no
#: cyclic garbage: at 700 the collector walks them ~120 times, 0.1 s of a process; at this one a few times.
FIRST_GENERATION = 50_000


def _run(args) -> int:
    """The command, its text output escaped for the terminal (``--json`` output is escaped by json.dumps);
    a model file is read on a thread while the command imports its analyses (:mod:`onnx_pathlift.fileio.prefetch`);
    the cyclic collector runs every :data:`FIRST_GENERATION` allocations instead of 700 (restored after)."""
    saved = os.environ.get(prefetch.FILE_LIMIT_VARIABLE)
    if args.max_file_size is not None:
        if not args.max_file_size > 0:
            raise UsageError(f"--max-file-size must be a positive number of MiB (got {args.max_file_size})")
        os.environ[prefetch.FILE_LIMIT_VARIABLE] = repr(args.max_file_size)  # the audit's workers inherit it
    if isinstance(getattr(args, "model", None), str):
        prefetch.start(args.model)
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], FIRST_GENERATION), *thresholds[1:])
    try:
        if args.json:
            return args.func(args)
        with contextlib.redirect_stdout(_TerminalSafe(sys.stdout)):
            return args.func(args)
    finally:
        gc.set_threshold(*thresholds)
        prefetch.forget()
        if saved is None:
            os.environ.pop(prefetch.FILE_LIMIT_VARIABLE, None)
        else:
            os.environ[prefetch.FILE_LIMIT_VARIABLE] = saved


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it unwinds as on Ctrl-C (an audit keeps its results)."""


def _terminate(signum: int, frame) -> None:
    raise Terminated


def _quiet_stdout() -> int:
    """stdout's reader went away (``| head -1``): point stdout at /dev/null so that nothing more fails;
    the exit code of a process killed by SIGPIPE (128 + 13)."""
    with contextlib.suppress(OSError, ValueError):  # a stdout without a file descriptor (captured) needs nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    json_mode = "--json" in argv  # usage errors honour --json too
    if hasattr(signal, "SIGXFSZ"):  # past a file size limit (ulimit -f), a write fails (exit 6) instead of killing us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        args = build_parser().parse_args(argv)
        json_mode = args.json
        _not_a_folder(args)
        code = _run(args)
        sys.stdout.flush()  # a closed pipe fails here, not at the interpreter's exit
        return code
    except PathliftError as err:
        return _fail(err, json_mode, argv)
    except BrokenPipeError:
        return _quiet_stdout()
    except Terminated:
        print("onnx-pathlift: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("onnx-pathlift: interrupted", file=sys.stderr)
        return 130
    except MemoryError:  # an allocation failed (a model too large for this machine or its memory limit)
        return _fail(OutOfMemoryError("out of memory: the model needs more memory than this process may use"), json_mode)
    except Exception as err:  # anything unexpected: one clear line, exit 1, no traceback
        if "Failed to allocate memory" in str(err):  # onnxruntime's allocation failure: as a MemoryError
            return _fail(OutOfMemoryError("out of memory: onnxruntime could not allocate what the model needs"), json_mode)
        if isinstance(err, OSError) and err.filename is not None:  # a file it names cannot be read (--eval DATA.npz)
            return _fail(UsageError(f"{err.filename}: cannot read: {err.strerror or err}"), json_mode)
        print(f"onnx-pathlift: internal error: {type(err).__name__}: {terminal(err)}", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
