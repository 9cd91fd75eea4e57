"""The ``blip`` command: one line per user error, exit 2, the rest of the batch still done."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from blip_core.cli import main


def test_caption_batch_with_a_bad_file(hf_dirs, images, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code = main(["caption", str(images[0]), str(bad), str(images[1]), "--model", str(hf_dirs["caption"]),
                 "--max-new-tokens", "5"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(images[0])) and lines[1].startswith(str(images[1]))
    err_lines = err.strip().splitlines()
    assert len(err_lines) == 1 and "broken.jpg" in err_lines[0] and err_lines[0].startswith("blip: error:")
    assert "Traceback" not in err


def test_caption_json(hf_dirs, images, capsys):
    assert main(["caption", str(images[2]), "--model", str(hf_dirs["caption"]), "--json", "--beams", "3",
                 "--max-new-tokens", "4"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["image"] == str(images[2]) and record["caption"] and record["timings_ms"]["total_ms"] > 0


def test_ask_and_match(hf_dirs, images, capsys):
    assert main(["ask", str(images[0]), "what is it?", "--model", str(hf_dirs["vqa"]), "--answers", "red,blue"]) == 0
    assert capsys.readouterr().out.strip() in ("red", "blue")
    assert main(["match", str(images[0]), "a dog", "a cat", "--model", str(hf_dirs["match"]), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["a dog", "a cat"] and all(0 <= r["itm"] <= 1 for r in rows)


@pytest.mark.parametrize("argv, needle", [
    (["caption", "x.png", "--model", "/no/such/model"], "does not exist"),
    (["ask", "{img}", "", "--model", "{vqa}"], "empty"),
    (["caption", "{img}", "--model", "{vqa}"], "cannot caption"),
])
def test_user_errors_are_one_line(argv, needle, hf_dirs, images, capsys):
    argv = [a.format(vqa=hf_dirs["vqa"], img=images[0]) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_console_script_runs(hf_dirs, images):
    out = subprocess.run([sys.executable, "-m", "blip_core.cli", "caption", str(images[0]), "--model",
                          str(hf_dirs["caption"]), "--max-new-tokens", "4"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip()


def test_export_and_info(hf_dirs, tmp_path, capsys):
    assert main(["export", str(hf_dirs["vqa"]), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert main(["info", str(tmp_path / "out")]) == 0
    assert "tasks vqa" in capsys.readouterr().out
