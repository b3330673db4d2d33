"""emberc, the command-line compiler: each flag, .ts and .pt2 inputs, and bad input (a message
and a non-zero exit, never a traceback). Most cases call ember.emberc.main in-process (fast);
two run the real command line in a subprocess."""

import os
import subprocess
import sys

import pytest
import torch

import ember
from ember import emberc
from test_torchscript import DataDependent, LeNet, assert_close


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("emberc")
    torch.manual_seed(0)
    lenet = LeNet().eval()
    dd = DataDependent().eval()
    paths = {"dir": d, "lenet": lenet, "dd": dd}
    paths["lenet.ts"] = str(d / "lenet.ts")
    torch.jit.save(torch.jit.script(lenet), paths["lenet.ts"])
    paths["dd.ts"] = str(d / "dd.ts")
    torch.jit.save(torch.jit.script(dd), paths["dd.ts"])
    paths["lenet.pt2"] = str(d / "lenet.pt2")
    torch.export.save(torch.export.export(lenet, (torch.randn(2, 1, 32, 32),)), paths["lenet.pt2"])
    return paths


def run(*argv):
    return emberc.main([str(a) for a in argv])


def test_compile_static_and_dynamic(files, capsys):
    out = files["dir"] / "a.ts"
    assert run(files["lenet.ts"], out, "--input", "[(1,1,32,32);(2,1,32,32);(4,1,32,32)]@f32",
               "--device", "cpu", "--truncate-long-double", "--debug") == 0
    assert "1 engine(s)" in capsys.readouterr().out
    m = ember.load(str(out))
    for b in (1, 4):
        x = torch.randn(b, 1, 32, 32)
        with torch.no_grad():
            assert_close(m(x), files["lenet"](x))


def test_settings_flags(files):
    out = files["dir"] / "b.ts"
    assert run(files["lenet.ts"], out, "--input", "(2,1,32,32)", "--min-block-size", "1",
               "--torch-executed-op", "aten::max_pool2d",
               "--torch-executed-module", "classifer.fc3") == 0
    m = torch.jit.load(str(out))
    kinds = [n.kind() for n in m.graph.nodes()]
    assert kinds.count("aten::max_pool2d") == 2 and kinds.count("aten::linear") == 1
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert_close(m(x), files["lenet"](x))


def test_require_full_compilation(files, capsys):
    assert run(files["dd.ts"], files["dir"] / "c.ts", "--input", "(1,3,8,8)",
               "--require-full-compilation") == 1
    err = capsys.readouterr().err
    assert "prim::If" in err and "control flow runs in TorchScript" in err


def test_check_method_support(files, capsys):
    assert run(files["lenet.ts"], "--check-method-support") == 0
    assert "all operators" in capsys.readouterr().out
    assert run(files["dd.ts"], "--check-method-support") == 1
    assert "prim::If: control flow runs in TorchScript" in capsys.readouterr().out
    assert run(files["lenet.pt2"], "--check-method-support") == 0
    assert "all operators of the program are supported" in capsys.readouterr().out


def test_save_engine(files):
    plan_path = files["dir"] / "lenet.plan"
    assert run(files["lenet.ts"], plan_path, "--input", "(2,1,32,32)", "--save-engine") == 0
    module = ember.ts.embed_engine_in_new_module(plan_path.read_bytes())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert_close(module(x), files["lenet"](x))


def test_exported_program_input(files):
    out = files["dir"] / "d.ts"
    assert run(files["lenet.pt2"], out, "--input", "(2,1,32,32)") == 0
    m = torch.jit.load(str(out))
    assert "ember::execute_engine" in str(m.graph)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert_close(m(x), files["lenet"](x))


def test_custom_converters_flag(files, capsys):
    lib = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "build", "dev", "examples", "custom_converter",
                       "libember_custom_converter_example.so")
    lib = os.environ.get("EMBER_CUSTOM_CONVERTER_LIB", lib)
    if not os.path.isfile(lib) and not os.environ.get("EMBER_REQUIRE_DEPLOY"):
        pytest.skip("custom converter example not built")
    assert run(files["lenet.ts"], files["dir"] / "e.ts", "--input", "(1,1,32,32)",
               "--custom-converters", lib, "--debug") == 0
    assert "libember_custom_converter_example.so" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["{dir}/missing.ts", "{dir}/o.ts", "--input", "(1,2)"], "no file"),
    (["{dir}/text.ts", "{dir}/o.ts", "--input", "(1,2)"], "not a zip archive"),
    (["{dir}/other.zip", "{dir}/o.ts", "--input", "(1,2)"], "neither a TorchScript module"),
    (["{lenet}", "{dir}/o.ts", "--input", "1x1x32x32"], "expected '(1,3,224,224)'"),
    (["{lenet}", "{dir}/o.ts", "--input", "(1,1,32,32)@f99"], "unknown dtype 'f99'"),
    (["{lenet}", "{dir}/o.ts"], "--input is required"),
    (["{lenet}", "{dir}/o.ts", "--input", "(1,1,32,32)", "(2,2)"], "unrecognized arguments"),
    (["{lenet}", "{dir}/o.ts", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["{lenet}", "{dir}/o.ts", "--input", "(1,1,32,32)", "--input", "(1,1,32,32)"],
     "takes 1 inputs but 2 input specs"),
])
def test_bad_input(files, capsys, argv, message):
    d = files["dir"]
    (d / "text.ts").write_text("not a model")
    import zipfile
    with zipfile.ZipFile(d / "other.zip", "w") as z:
        z.writestr("hello.txt", "hi")
    argv = [a.format(dir=d, lenet=files["lenet.ts"]) for a in argv]
    try:
        code = emberc.main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    assert code != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_command_line(files):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    r = subprocess.run([sys.executable, "-m", "ember.emberc", "--help"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0 and "--check-method-support" in r.stdout and "--save-engine" in r.stdout
    r = subprocess.run([sys.executable, "-m", "ember.emberc", files["lenet.ts"],
                        str(files["dir"] / "f.ts"), "--input", "(1,1,32"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "expected '(1,3,224,224)'" in r.stderr
    assert "Traceback" not in r.stderr


def test_accuracy_report(files, tmp_path, capsys):
    # The per-layer report from the command line (issue 17, section 3): autocast to f16 on the
    # CPU back end, random inputs of the --input's opt shape, and then from an inputs file.
    path, plot = tmp_path / "report.json", tmp_path / "errors.svg"
    assert run(files["lenet.pt2"], "--input", "(2,1,32,32)", "--device", "cpu",
               "--enable-autocast", "--min-block-size", "1", "--accuracy-report", path,
               "--accuracy-plot", plot) == 0
    svg = plot.read_text()
    assert svg.startswith("<svg") and svg.count("<circle") >= 2 and "</svg>" in svg
    out = capsys.readouterr().out
    assert "suggestion:" in out and "worst:" in out
    import json
    report = json.loads(path.read_text())
    engine_layers = [e for e in report["layers"] if e["where"] == "engine"]
    assert engine_layers and {e["dtype"] for e in engine_layers} & {"f16"}
    assert all(float(e["cosine"]) > 0.99 for e in report["outputs"])
    inputs = tmp_path / "inputs.pt"
    torch.save((torch.randn(2, 1, 32, 32),), inputs)
    assert run(files["lenet.pt2"], "--device", "cpu", "--inputs-file", inputs,
               "--accuracy-report") == 0
    assert "worst:" in capsys.readouterr().out
    torch.save((torch.randn(3, 1, 32, 32),), inputs)  # the program was exported at batch 2
    assert run(files["lenet.pt2"], "--device", "cpu", "--inputs-file", inputs,
               "--accuracy-report") == 1
    assert "(3, 1, 32, 32)) do not fit the program" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["lenet.ts", "--input", "(2,1,32,32)", "--accuracy-report"], "takes an ExportedProgram"),
    (["lenet.pt2", "--accuracy-report"], "needs --input specs"),
    (["lenet.pt2", "--accuracy-report", "--inputs-file", "missing.pt"], "no file 'missing.pt'"),
    (["lenet.pt2", "out.ts", "--input", "(2,1,32,32)", "--inputs-file", "lenet.ts"],
     "used by --accuracy-report only"),
])
def test_accuracy_report_bad_input(files, capsys, argv, message):
    argv = [files.get(a, a) if isinstance(files.get(a), str) else a for a in argv]
    assert run(*argv) == 2
    assert message in capsys.readouterr().err


def test_engine_cache_flags(files, tmp_path, capsys):
    """--engine-cache DIR: the first run builds and stores the engine, a second run (same
    program and flags) loads it from DIR and builds nothing."""
    from ember import engine_cache
    cache = tmp_path / "engines"
    argv = [files["lenet.ts"], tmp_path / "c.ts", "--input", "(2,1,32,32)", "--device", "cpu",
            "--engine-cache", cache]
    engine_cache.reset_stats()
    assert run(*argv) == 0
    assert engine_cache.stats()["stores"] >= 1 and any(cache.iterdir())
    assert "0 from the engine cache" in capsys.readouterr().out
    engine_cache.reset_stats()
    assert run(*argv) == 0
    assert engine_cache.stats()["builds"] == 0 and engine_cache.stats()["hits"] >= 1
    assert "1 from the engine cache" in capsys.readouterr().out
    m = ember.load(str(tmp_path / "c.ts"))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert_close(m(x), files["lenet"](x))


@pytest.mark.parametrize("extra, message", [
    (["--engine-cache-size", "100"], "--engine-cache-size needs --engine-cache DIR"),
    (["--engine-cache", "FILE"], "exists and is not a directory"),
    (["--engine-cache", "DIR", "--engine-cache-size", "-1"], "--engine-cache-size must be >= 0"),
])
def test_engine_cache_bad_flags(files, tmp_path, capsys, extra, message):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    extra = [str(a_file) if e == "FILE" else str(tmp_path / "d") if e == "DIR" else e
             for e in extra]
    assert run(files["lenet.ts"], tmp_path / "o.ts", "--input", "(2,1,32,32)", *extra) == 2
    assert message in capsys.readouterr().err
