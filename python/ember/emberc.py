"""emberc: Ember's command-line compiler (the role of torchtrtc).

    emberc model.ts model_ember.ts --input "[(1,3,224,224);(4,3,224,224);(8,3,224,224)]@f16"
    emberc model.pt2 --input "(8,3,224,224)" --enable-autocast --accuracy-report report.json

Input: a TorchScript file (torch.jit.save) or a saved ExportedProgram (.pt2, torch.export.save).
TorchScript goes through the C++ TorchScript frontend (src/torch/torchscript/); an
ExportedProgram through the dynamo path, and its result is traced into TorchScript, so the
output is always a TorchScript file that runs from C++ (docs/deployment.md). Bad input gets a
message and exit status 2 (usage) or 1 (compilation), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import zipfile

EXIT_USAGE = 2
EXIT_FAILURE = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default exits 2 with usage; keep that, add a hint
        self.print_usage(sys.stderr)
        sys.stderr.write(f"emberc: error: {message}\n(see emberc --help)\n")
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="emberc",
        description="Compile a TorchScript module (.ts) or a saved ExportedProgram (.pt2) into a "
                    "TorchScript module whose supported parts run as Ember engines.",
        epilog="Input specs: '(1,3,224,224)' (static) or "
               "'[(1,3,224,224);(4,3,224,224);(8,3,224,224)]' (min;opt;max), optionally followed "
               "by '@f32', '@f16', '@bf16', '@i32', '@i64', '@bool'. Give one --input per method "
               "input, in order. Example:\n  emberc resnet.ts resnet_ember.ts --input "
               "'[(1,3,224,224);(8,3,224,224);(32,3,224,224)]@f32'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input_file", help="TorchScript file (torch.jit.save) or ExportedProgram (.pt2)")
    p.add_argument("output_file", nargs="?",
                   help="where to write the compiled TorchScript module (or the plan with "
                        "--save-engine); not needed with --check-method-support")
    p.add_argument("--input", "-i", action="append", default=[], metavar="SPEC",
                   help="an input spec, once per method input, in order")
    p.add_argument("--min-block-size", type=int, default=None, metavar="N",
                   help="segments with fewer compute nodes run in TorchScript (default 5)")
    p.add_argument("--torch-executed-op", action="append", default=[], metavar="OP",
                   help="an op kept in TorchScript, e.g. aten::relu (repeatable)")
    p.add_argument("--torch-executed-module", action="append", default=[], metavar="MODULE",
                   help="a module class or qualified name kept in TorchScript (repeatable)")
    p.add_argument("--require-full-compilation", action="store_true",
                   help="fail when anything would run in TorchScript, listing each node")
    p.add_argument("--truncate-long-double", action="store_true",
                   help="run i64 as i32 and f64 as f32 inside engines")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="the engines' back end (default: cuda when available, else cpu)")
    p.add_argument("--method", default="forward", help="the method to compile (default forward)")
    p.add_argument("--check-method-support", action="store_true",
                   help="list the operators that cannot run in engines; exit 1 when there are any")
    p.add_argument("--save-engine", action="store_true",
                   help="write the serialized plan of ONE engine for the whole method instead "
                        "of a module (fails when anything would run in TorchScript)")
    p.add_argument("--enable-autocast", action="store_true",
                   help="run f32 nodes in low precision where the autocast rules allow "
                        "(docs/precision.md)")
    p.add_argument("--autocast-type", choices=["f16", "bf16"], default=None,
                   help="autocast's low-precision type (default f16)")
    p.add_argument("--accuracy-report", nargs="?", const="", default=None, metavar="REPORT.json",
                   help="(ExportedProgram input) instead of writing a module, compare the "
                        "compiled program layer by layer against the program run in f32 "
                        "(ember.debug.compare) on --inputs-file or on random inputs of each "
                        "--input's opt shape; prints every layer's error, the first jump, the "
                        "worst and what to exclude, and writes the report as JSON when a path "
                        "is given")
    p.add_argument("--accuracy-plot", default=None, metavar="PLOT.svg",
                   help="with --accuracy-report: also draw each layer's error along the network")
    p.add_argument("--inputs-file", default=None, metavar="INPUTS.pt",
                   help="torch.save'd tuple or list of tensors for --accuracy-report")
    p.add_argument("--custom-converters", action="append", default=[], metavar="LIB.so",
                   help="a shared library of converters to load first (repeatable)")
    p.add_argument("--engine-cache", default=None, metavar="DIR",
                   help="store built engines in DIR and reuse the ones found there (the engine "
                        "cache shared with ember.compile and torch.compile; see docs/guide.md)")
    p.add_argument("--engine-cache-size", type=int, default=None, metavar="BYTES",
                   help="the engine cache's size limit; least recently used entries go first")
    p.add_argument("--debug", action="store_true", help="print the partition and build logs")
    return p


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    sys.stderr.write(f"emberc: error: {message}\n")
    return code


def _kind(path: str) -> str:
    """'torchscript', 'exported_program' or a reason it is neither."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return "it is not a zip archive (torch.jit.save and torch.export.save write zip archives)"
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("serialized_exported_program.json") or "/models/" in n for n in names):
        return "exported_program"
    return "it holds neither a TorchScript module nor an ExportedProgram"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.debug:
        logging.basicConfig(level=logging.INFO)
    if not os.path.isfile(args.input_file):
        return _fail(f"no file '{args.input_file}'", EXIT_USAGE)
    kind = _kind(args.input_file)
    if kind not in ("torchscript", "exported_program"):
        return _fail(f"'{args.input_file}' cannot be read: {kind}", EXIT_USAGE)
    report_only = args.accuracy_report is not None
    if not args.check_method_support and not report_only and not args.output_file:
        return _fail("an output file is required (or use --check-method-support or "
                     "--accuracy-report)", EXIT_USAGE)
    if report_only and kind != "exported_program":
        return _fail("--accuracy-report takes an ExportedProgram (.pt2, torch.export.save): the "
                     "report matches engine layers to FX graph nodes", EXIT_USAGE)
    if args.inputs_file is not None and not os.path.isfile(args.inputs_file):
        return _fail(f"--inputs-file: no file '{args.inputs_file}'", EXIT_USAGE)
    if args.accuracy_plot is not None and not report_only:
        return _fail("--accuracy-plot is drawn by --accuracy-report only", EXIT_USAGE)
    if args.inputs_file is not None and not report_only:
        return _fail("--inputs-file is used by --accuracy-report only", EXIT_USAGE)
    if args.min_block_size is not None and args.min_block_size < 1:
        return _fail("--min-block-size must be >= 1", EXIT_USAGE)
    for lib in args.custom_converters:
        if not os.path.isfile(lib):
            return _fail(f"--custom-converters: no file '{lib}'", EXIT_USAGE)
    if args.engine_cache_size is not None and args.engine_cache is None:
        return _fail("--engine-cache-size needs --engine-cache DIR", EXIT_USAGE)
    if args.engine_cache_size is not None and args.engine_cache_size < 0:
        return _fail("--engine-cache-size must be >= 0", EXIT_USAGE)
    if args.engine_cache is not None and os.path.exists(args.engine_cache) \
            and not os.path.isdir(args.engine_cache):
        return _fail(f"--engine-cache: '{args.engine_cache}' exists and is not a directory",
                     EXIT_USAGE)

    import torch  # after argument checks: --help and usage errors stay fast

    import ember
    from ember import ts

    try:
        specs = [ts.input_spec_from_text(text) for text in args.input]
    except ValueError as e:
        return _fail(str(e), EXIT_USAGE)

    for lib in args.custom_converters:
        try:
            added = ember.load_converters(lib)
        except (OSError, RuntimeError) as e:
            return _fail(f"--custom-converters {lib}: {e}")
        if args.debug:
            print(f"emberc: {lib}: converters {', '.join(added) or '(none new)'}", file=sys.stderr)

    settings = {"torch_executed_ops": args.torch_executed_op,
                "torch_executed_modules": args.torch_executed_module,
                "require_full_compilation": args.require_full_compilation,
                "truncate_double": args.truncate_long_double, "debug": args.debug}
    if args.min_block_size is not None:
        settings["min_block_size"] = args.min_block_size
    if args.engine_cache is not None:
        settings.update(cache_built_engines=True, reuse_cached_engines=True,
                        engine_cache_dir=args.engine_cache)
        if args.engine_cache_size is not None:
            settings["engine_cache_size"] = args.engine_cache_size
    if args.device is not None:
        settings["device"] = args.device
    if args.enable_autocast or args.autocast_type is not None:
        settings["enable_autocast"] = True
        settings["autocast_low_precision_type"] = (
            torch.bfloat16 if args.autocast_type == "bf16" else torch.float16)

    try:
        if kind == "torchscript":
            module = torch.jit.load(args.input_file)
            if args.check_method_support:
                unsupported = ts.unsupported_ops(module, args.method)
                for line in unsupported:
                    print(line)
                if not unsupported:
                    print(f"all operators of '{args.method}' are supported")
                return EXIT_FAILURE if unsupported else 0
            if not specs:
                return _fail("--input is required (one per method input)", EXIT_USAGE)
            if args.save_engine:
                plan = ts.convert_method_to_engine(module, args.method, inputs=specs, **settings)
                with open(args.output_file, "wb") as f:
                    f.write(plan)
                print(f"emberc: wrote a plan of {len(plan)} bytes to {args.output_file}")
                return 0
            compiled = ts.compile(module, specs, method_name=args.method, **settings)
            ember.save(compiled, args.output_file, output_format="torchscript")
            report = compiled.ember_report
        else:
            ep = torch.export.load(args.input_file)
            if report_only:
                return _accuracy_report(ep, specs, settings, args)
            if args.check_method_support:
                report = ember.dynamo.CompilationReport()
                settings["min_block_size"] = 1  # support, not segment sizes
                ember.dynamo.compile(ep, specs or None, dryrun=True, report=report, **settings)
                unsupported = sorted({f"{op}: {why}" for _, op, why in report.fallback} |
                                     {f"{target}: {why}" for _, target, why in report.skipped})
                for line in unsupported:
                    print(line)
                if not unsupported:
                    print("all operators of the program are supported")
                return EXIT_FAILURE if unsupported else 0
            if args.save_engine:
                return _fail("--save-engine takes a TorchScript input", EXIT_USAGE)
            if not specs:
                return _fail("--input is required (one per program input)", EXIT_USAGE)
            compiled = ember.dynamo.compile(ep, specs, **settings)
            ember.save(compiled, args.output_file, output_format="torchscript", inputs=specs)
            report = compiled.ember_report
    except (RuntimeError, ValueError, TypeError) as e:
        return _fail(str(e).strip())
    engines = getattr(report, "num_engines", None)
    if engines is None:
        engines = len(getattr(report, "engines", []))
    cached = ""
    if args.engine_cache is not None:
        hits = sum(bool(e.get("cached")) for e in getattr(report, "engines", []) if isinstance(e, dict))
        cached = f", {hits} from the engine cache"
    print(f"emberc: wrote {args.output_file} ({engines} engine(s){cached})")
    if args.debug:
        print(str(report), file=sys.stderr)
    return 0


def _accuracy_report(ep, specs, settings: dict, args) -> int:
    """--accuracy-report: ember.debug.compare on the program, the table on stdout, the JSON
    report in the given file."""
    import torch

    from ember import debug

    if args.inputs_file is not None:
        try:
            inputs = torch.load(args.inputs_file)
        except Exception as e:  # noqa: BLE001 - any unreadable file is a usage error
            return _fail(f"--inputs-file {args.inputs_file} cannot be read: {e}", EXIT_USAGE)
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        if not isinstance(inputs, (list, tuple)) or not all(
                isinstance(x, torch.Tensor) for x in inputs):
            return _fail(f"--inputs-file {args.inputs_file} must hold a tensor or a tuple/list "
                         "of tensors", EXIT_USAGE)
    elif specs:
        torch.manual_seed(0)
        inputs = tuple(s.example("opt") for s in specs)
    else:
        return _fail("--accuracy-report needs --input specs (random inputs of their opt shape) "
                     "or --inputs-file", EXIT_USAGE)
    settings = {k: v for k, v in settings.items() if k != "debug"}
    device = settings.get("device")
    if device == "cuda":
        inputs = tuple(x.cuda() for x in inputs)
    try:
        report = debug.compare(ep, settings, list(inputs))
    except AssertionError as e:  # torch.export's guards on input shapes
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        return _fail(f"--accuracy-report: the inputs ({shapes}) do not fit the program: {e}")
    print(str(report))  # every layer, then the outputs, first jump, worst and a suggestion
    if args.accuracy_report:
        report.to_json(args.accuracy_report)
        print(f"emberc: wrote the per-layer report ({len(report.to_dict().get('layers', []))} "
              f"layers) to {args.accuracy_report}")
    if args.accuracy_plot:
        report.to_svg(args.accuracy_plot)
        print(f"emberc: drew the errors along the network in {args.accuracy_plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
