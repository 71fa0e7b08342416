"""examples/backprop_walkthrough.py runs, covers every layer, and its checks pass (and can fail)."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn.ops import reference

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "backprop_walkthrough.py"
LAYER_NAMES = ("conv2d", "max_pooling2d", "flatten", "dense")
SMALL = ["--images", "3", "--size", "8", "--adam-steps", "2"]
NUMBER = r"(\d\.\de[+-]\d+)"


@pytest.fixture(scope="module")
def walkthrough():
    spec = importlib.util.spec_from_file_location("backprop_walkthrough", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sections(text):
    """Split the output at its numbered headings: {'1': text, ..., 'Summary': text}."""
    parts = re.split(r"^(\d\.|Summary)[^\n]*\n-+\n", text, flags=re.M)
    return {key.rstrip("."): body for key, body in zip(parts[1::2], parts[2::2])}


@pytest.fixture(scope="module")
def run(walkthrough):
    """Run main() once on the default (reference) backend; returns (exit code, output)."""
    import contextlib
    import io
    before = minicnn.get_backend()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = walkthrough.main(SMALL)
    assert minicnn.get_backend() == before          # the backend switch is undone
    return code, out.getvalue()


def test_exit_code_zero_and_reference_backend(run):
    code, text = run
    assert code == 0
    assert "on the 'reference' backend" in text


def test_every_layer_in_forward_backward_and_gradcheck(run):
    _, text = run
    parts = sections(text)
    assert set(parts) >= {"1", "2", "3", "4", "5", "Summary"}
    for name in LAYER_NAMES:
        for key in ("1", "3", "4"):
            assert re.search(rf"^\s*{name} \(", parts[key], flags=re.M), (name, key)
    # forward shapes for 3 images of 8x8: conv same -> pool 2 -> flatten -> dense 10
    for x_shape, y_shape in (("3, 8, 8, 3", "3, 8, 8, 4"), ("3, 8, 8, 4", "3, 4, 4, 4"),
                             ("3, 4, 4, 4", "3, 64"), ("3, 64", "3, 10")):
        assert re.search(rf"x \({x_shape}\)\s+-> y \({y_shape}\)", parts["1"]), (x_shape, y_shape)
    # backward: dL/dx and each parameter gradient with its shape and norm
    for grad, grad_shape in (("dL/dkernel", "64, 10"), ("dL/dbias", "10,"),
                             ("dL/dkernel", "3, 3, 3, 4"), ("dL/dx", "3, 4, 4, 4")):
        assert re.search(rf"{grad}\s+\({grad_shape}\)\s+norm ", parts["3"]), grad_shape
    assert len(re.findall(r"norm \d\.\d{4}e[+-]\d\d", parts["3"])) >= 10
    assert "gradients identical" in parts["3"] or "equal to rounding" in parts["3"]


def test_gradient_check_errors_below_1e6(run):
    _, text = run
    part = sections(text)["4"]
    rows = [line for line in part.splitlines()
            if re.match(r"\s+(conv2d|max_pooling2d|flatten|dense|loss)\b", line)]
    # 4 layers + the loss + 4 parameter arrays checked end to end
    assert len(rows) == 9
    errors = [float(e) for line in rows for e in re.findall(NUMBER, line)]
    assert len(errors) >= 9 + 4          # dx for every layer, kernel + bias twice, the loss
    assert max(errors) < 1e-6
    assert all(line.rstrip().endswith("OK") for line in rows)
    worst = float(re.search(r"worst gradient-check relative error:\s+" + NUMBER, text).group(1))
    assert worst == pytest.approx(max(errors), rel=0.06)


def test_adam_by_hand_matches(run):
    _, text = run
    part = sections(text)["5"]
    assert "m_hat" in part and "v_hat" in part and "bias correction" in part
    diffs = re.findall(r"by hand vs minicnn: w " + NUMBER + r"\s+m " + NUMBER + r"\s+v " + NUMBER
                       + r"\s+agree", part)
    assert len(diffs) == 2                  # --adam-steps 2
    assert max(float(d) for row in diffs for d in row) <= 1e-12
    assert "step t = 1" in part and "step t = 2" in part
    assert re.search(r"Adam by hand vs minicnn, worst rel diff: \S+\s+\(agree\)", text)


def test_numpy_backend(walkthrough, capsys):
    assert walkthrough.main(SMALL[:4] + ["--adam-steps", "1", "--backend", "numpy"]) == 0
    assert "on the 'numpy' backend" in capsys.readouterr().out


def test_a_broken_backward_is_caught(walkthrough, monkeypatch, capsys):
    def wrong_dense_backward(x, kernel, dy, need_dx=True):
        dx, dkernel, dbias = original(x, kernel, dy, need_dx)
        return dx, dkernel * 1.01, dbias            # a 1% error in dL/dkernel

    original = reference.dense_backward
    monkeypatch.setattr(reference, "dense_backward", wrong_dense_backward)
    assert walkthrough.main(SMALL[:4] + ["--adam-steps", "1"]) == 1
    part = sections(capsys.readouterr().out)["4"]
    assert re.search(r"^\s+dense \(Dense\).*kernel " + NUMBER + r".*FAILED$", part, flags=re.M)


def test_a_wrong_adam_is_caught(walkthrough, monkeypatch, capsys):
    def textbook_adam(param, grad, m, v, lr, beta_1, beta_2, epsilon, t):
        # epsilon added to sqrt(v_hat) instead of Keras's placement: differs in the 7th digit
        m[...] = beta_1 * m + (1 - beta_1) * grad
        v[...] = beta_2 * v + (1 - beta_2) * grad * grad
        m_hat, v_hat = m / (1 - beta_1 ** t), v / (1 - beta_2 ** t)
        param -= lr * m_hat / (np.sqrt(v_hat) + epsilon)

    monkeypatch.setattr(reference, "adam_update", textbook_adam)
    assert walkthrough.main(SMALL[:4] + ["--adam-steps", "1"]) == 1
    assert "DISAGREE" in capsys.readouterr().out


def test_bad_arguments(walkthrough):
    with pytest.raises(SystemExit, match="--size must divide the image side 32, received 5"):
        walkthrough.main(["--size", "5"])
    with pytest.raises(SystemExit):
        walkthrough.main(["--images", "0"])


def test_batchnorm_section(run):
    code, out = run
    part = sections(out)["6"]
    assert "m = n*h*w" in part and "closed form vs layer" in part
    closed, staged = map(float, re.search(r"closed form vs layer (\S+), staged graph vs layer "
                                          r"(\S+)", part).groups())
    assert closed < 1e-12 and staged < 1e-12
    assert re.search(r"wrong by \S+: the full backward matters", part)
    assert "BatchNormalization backward, worst error" in sections(out)["Summary"]


def test_a_batchnorm_backward_without_the_mean_path_is_caught(walkthrough, monkeypatch, capsys):
    def no_mean_path(dy, xhat, gamma, inv_std):
        axes = tuple(range(dy.ndim - 1))
        dxhat = dy * gamma
        m = dy.size // dy.shape[-1]
        dx = inv_std / m * (m * dxhat - xhat * np.sum(dxhat * xhat, axis=axes))
        return dx, np.sum(dy * xhat, axis=axes), np.sum(dy, axis=axes)

    monkeypatch.setattr(reference, "batchnorm_backward", no_mean_path)
    assert walkthrough.main(SMALL[:4] + ["--adam-steps", "1"]) == 1
    assert "NOT all below" in sections(capsys.readouterr().out)["Summary"]


# ----------------------------------------------------------------------------- the pdb recipe
REPO = SCRIPT.parents[1]


def script_doc():
    """The walkthrough's docstring, read without running the script."""
    return ast.get_docstring(ast.parse(SCRIPT.read_text()))


def pdb_recipes(text):
    """The ``python -m pdb`` recipes in ``text``: [(command line, [pdb commands])]."""
    recipes = []
    for line in text.splitlines():
        line = line.strip()
        if "python -m pdb" in line:
            recipes.append((line, []))
        elif line.startswith("(Pdb) ") and recipes:
            recipes[-1][1].append(line[len("(Pdb) "):])
    return recipes


def run_pdb(command_line, commands, cwd, extra):
    """Run a recipe non-interactively: its pdb commands piped on stdin, from ``cwd``."""
    words = command_line.split()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    while "=" in words[0]:                               # NUMBA_DISABLE_JIT=1 ...
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[:3] == ["python", "-m", "pdb"] and words[3] == "examples/backprop_walkthrough.py"
    script = os.path.relpath(SCRIPT, cwd)                # the script as seen from cwd
    argv = [sys.executable, "-m", "pdb", script, *words[4:], *extra]
    done = subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)
    return done.stdout + done.stderr


@pytest.mark.parametrize("where", ["examples", "repo"])
@pytest.mark.parametrize("recipe", [0, 1], ids=["reference", "numba-without-jit"])
def test_the_pdb_recipe_stops_in_the_function_it_names(where, recipe):
    recipes = pdb_recipes(script_doc())
    command_line, commands = recipes[recipe]
    breaks = [c.split()[1] for c in commands if c.startswith("break ")]
    assert len(breaks) == 1 and commands[-1] == "quit"
    assert re.fullmatch(r"[A-Za-z_][\w.]*\.\w+", breaks[0]), f"not module.function: {breaks[0]}"
    module_name, function_name = breaks[0].rsplit(".", 1)
    function = getattr(importlib.import_module(module_name), function_name)
    function = getattr(function, "py_func", function)    # a Numba dispatcher's Python function
    source, first = inspect.getsourcelines(function)
    path = Path(inspect.getsourcefile(function)).resolve()
    assert path.is_relative_to(REPO)

    cwd = SCRIPT.parent if where == "examples" else REPO
    text = run_pdb(command_line, commands, cwd, ["--images", "2", "--size", "8",
                                                 "--adam-steps", "1"])
    assert "***" not in text, text                       # pdb's mark of a command that failed
    hit = re.search(r"Breakpoint 1 at (.+):(\d+)\n", text)
    assert hit, text
    assert Path(hit.group(1)).resolve() == path
    assert first <= int(hit.group(2)) < first + len(source)
    stop = re.search(rf"^> (.+)\((\d+)\){function_name}\(\)$", text, re.M)
    assert stop and Path(stop.group(1)).resolve() == path, text
    assert first <= int(stop.group(2)) < first + len(source)
    # The p command printed the shapes of the arrays there: 2 images of 8x8x3, 4 filters.
    expected = {0: "((2, 8, 8, 3), (3, 3, 3, 4), (2, 8, 8, 4))",
                1: "((2, 8, 8, 3), (2, 8, 8, 4))"}[recipe]
    assert f"(Pdb) {expected}" in text, text


def test_the_readme_gives_the_same_pdb_recipe():
    (command_line, commands), = pdb_recipes((REPO / "README.md").read_text())
    doc_line, doc_commands = pdb_recipes(script_doc())[0]
    assert command_line == doc_line and commands == doc_commands[:len(commands)]
