"""The recipe library installed with growlm: names, `growlm recipes`, and recipes by name in
train / plan / sweep, from any folder; and the built wheel carries every recipe."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from growlm.cli import main
from growlm.config import load_recipe
from growlm.errors import GrowlmError
from growlm.recipe_library import library_recipe, library_root, recipe_names, resolve_recipe

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_recipe_file_has_a_name_and_the_clone_links_to_the_library():
    files = sorted(p.relative_to(library_root()).with_suffix("").as_posix()
                   for p in library_root().rglob("*.toml"))
    assert recipe_names() == files and len(files) >= 40
    assert {"tiny/step-2stage", "step/1.2b-3stage", "gstack/7b", "hf/tiny/solar"} <= set(files)
    assert library_root() == REPO / "src" / "growlm" / "recipes"
    assert (REPO / "recipes").resolve() == library_root().resolve()
    assert (library_root() / "README.md").is_file()


@pytest.mark.parametrize("name", ["tiny/step-2stage", "tiny/step-2stage.toml", "./tiny/step-2stage"])
def test_a_name_resolves_from_any_folder(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe(name) == library_root() / "tiny" / "step-2stage.toml"
    cfg = load_recipe(name, ["stage.1.lr=1e-3"])
    assert cfg.run.name == "tiny-step-2stage" and cfg.stage[0].lr == 1e-3
    assert cfg.source == name  # messages and run.json name the recipe as it was given


def test_a_file_wins_over_a_library_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    mine = tmp_path / "tiny" / "standard.toml"
    mine.write_text(library_recipe("tiny/standard").read_text().replace(
        'name = "tiny-standard"', 'name = "mine"'))
    assert resolve_recipe("tiny/standard.toml") == Path("tiny/standard.toml")
    assert load_recipe("tiny/standard.toml").run.name == "mine"
    assert load_recipe("tiny/standard").run.name == "tiny-standard"  # no file of that name


@pytest.mark.parametrize("given, closest", [
    ("tiny/stepp-2stage", "tiny/step-2stage"),
    ("recipes/tiny/step-2stage.toml", "tiny/step-2stage"),  # the clone's path, elsewhere
    ("step-2stage", "tiny/step-2stage"),
    ("gstack/1.1B", "gstack/1.1b"),
])
def test_neither_file_nor_name_is_one_line_with_the_closest_names(tmp_path, monkeypatch, given,
                                                                    closest):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GrowlmError) as e:
        resolve_recipe(given)
    message = str(e.value)
    assert given in message and closest in message and "growlm recipes list" in message
    assert "\n" not in message


def test_a_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    with pytest.raises(GrowlmError, match="is a folder"):
        resolve_recipe("tiny")


@pytest.mark.parametrize("command", [["train"], ["train", "--dry-run"], ["plan"], ["sweep"]])
def test_commands_take_names_and_refuse_unknown_ones_in_one_line(tmp_path, monkeypatch, capsys,
                                                                  command):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, command[0], "tiny/stnadard", *command[1:])
    assert code == 2 and "tiny/standard" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_plan_a_library_recipe_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "plan", "tiny/step-2stage", "--no-chart")
    assert code == 0 and "runs/tiny-step-2stage/plan.json" in out
    assert (tmp_path / "runs" / "tiny-step-2stage" / "plan.json").is_file()


def test_recipes_list_and_show(capsys):
    code, out, _ = run(capsys, "recipes", "list")
    lines = out.splitlines()
    assert code == 0 and len([x for x in lines if x.startswith(("tiny/", "step/"))]) >= 25
    assert any(x.startswith("tiny/gstack ") and "Gstack (Du et al. 2024)" in x for x in lines)
    code, out, _ = run(capsys, "recipes", "list", "tiny")
    names = [x.split()[0] for x in out.splitlines() if x.startswith("tiny/")]
    assert code == 0 and names == [n for n in recipe_names() if n.startswith("tiny/")]
    assert not any(x.startswith("step/") for x in out.splitlines())
    code, _, err = run(capsys, "recipes", "list", "tinny")
    assert code == 2 and "folders: gstack, hf, hf/tiny, reuse, step, tiny" in err
    code, out, _ = run(capsys, "recipes", "show", "tiny/gstack")
    assert code == 0 and out == library_recipe("tiny/gstack").read_text()
    code, _, err = run(capsys, "recipes", "show", "tiny/gstak")
    assert code == 2 and "closest: tiny/gstack" in err


def test_recipes_copy_one_and_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "recipes", "copy", "tiny/step-2stage")
    assert code == 0 and "step-2stage.toml" in out
    assert (tmp_path / "step-2stage.toml").read_text() == library_recipe("tiny/step-2stage").read_text()
    assert load_recipe("step-2stage.toml").run.name == "tiny-step-2stage"
    # an existing file is kept unless --overwrite
    (tmp_path / "step-2stage.toml").write_text("# mine\n")
    code, _, err = run(capsys, "recipes", "copy", "tiny/step-2stage")
    assert code == 2 and "--overwrite" in err
    assert (tmp_path / "step-2stage.toml").read_text() == "# mine\n"
    assert run(capsys, "recipes", "copy", "tiny/step-2stage", "--overwrite")[0] == 0
    assert (tmp_path / "step-2stage.toml").read_text() != "# mine\n"
    # into an existing folder, and to a file name
    (tmp_path / "mine").mkdir()
    assert run(capsys, "recipes", "copy", "gstack/7b", "mine")[0] == 0
    assert run(capsys, "recipes", "copy", "gstack/7b", "mine/big.toml")[0] == 0
    assert {p.name for p in (tmp_path / "mine").iterdir()} == {"7b.toml", "big.toml"}
    # a folder of recipes keeps its layout
    code, out, _ = run(capsys, "recipes", "copy", "hf", "hf-recipes")
    copied = sorted(p.relative_to(tmp_path / "hf-recipes").with_suffix("").as_posix()
                    for p in (tmp_path / "hf-recipes").rglob("*.toml"))
    assert code == 0 and copied == [n[3:] for n in recipe_names() if n.startswith("hf/")]
    # nothing is written when a target cannot be
    (tmp_path / "afile").write_text("x")
    code, _, err = run(capsys, "recipes", "copy", "tiny", "afile")
    assert code == 2 and "afile" in err
    code, _, err = run(capsys, "recipes", "copy", "tiny/standard", "afile/x.toml")
    assert code == 2 and "afile" in err and not (tmp_path / "afile").is_dir()
    code, _, err = run(capsys, "recipes", "copy", "tiny/nope")
    assert code == 2 and "growlm recipes list" in err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None,
                    reason="building the wheel needs setuptools (growlm[dev] installs it)")
def test_the_wheel_carries_the_library_and_names_work_from_it(tmp_path):
    """Build the wheel from a copy of the project (the checkout stays clean), unpack it, and
    use a recipe by name from an empty folder with only the unpacked wheel on the path."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "src", project / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(project), "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("growlm-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        inside = {n for n in z.namelist() if n.startswith("growlm/recipes/")}
        z.extractall(tmp_path / "site")
    expected = {f"growlm/recipes/{n}.toml" for n in recipe_names()} | {"growlm/recipes/README.md"}
    assert inside == expected
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    probe = ("import growlm.recipe_library as r, growlm.config as c; print(r.library_root()); "
             "print(c.load_recipe('tiny/step-2stage').run.name)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=empty, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    root, name = done.stdout.split()
    assert Path(root) == tmp_path / "site" / "growlm" / "recipes" and name == "tiny-step-2stage"
