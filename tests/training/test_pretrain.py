"""Pre-training end to end: metrics, checkpoints that blip_core and transformers load, exact
resume, bad images counted, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import blip_core
from blip_core.checkpoints import load_model
from tests.training.tiny_runs import records, tiny
from training import config as C
from training import pretrain
from training.data import EpochBatches, ImageTransform, JsonCaptions
from training.make_scenes import write_scene_json
from training.run_state import find_checkpoint, load_state

ROOT = Path(__file__).resolve().parents[2]


def test_metrics_and_checkpoint_layout(pretrained):
    out = pretrained.parent.parent
    recs = records(out)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for r in recs:
        assert {"step", "loss", "loss_itc", "loss_itm", "loss_lm", "lr", "images_per_s", "skipped_images",
                "alpha", "temp"} <= set(r)
        assert r["loss"] == pytest.approx(r["loss_itc"] + r["loss_itm"] + r["loss_lm"], abs=1e-4)
        assert 0.001 <= r["temp"] <= 0.5
    assert recs[0]["lr"] < recs[1]["lr"]  # warm-up
    files = {p.name for p in pretrained.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt", "training_state.pt", "train_config.yaml"} <= files
    assert not [p for p in pretrained.parent.iterdir() if p.name.startswith(".")]  # no leftovers of atomic saves
    state = load_state(pretrained)
    assert state["step"] == 4 and state["world"] == 1 and len(state["rng"]) == 1
    # queue of 20 with a global batch of 8: after 4 steps the pointer wrapped to 32 % 20
    assert int(state["objective"]["queue.ptr"]) == 12
    assert {"temp", "queue.image", "queue.text", "queue.ids"} <= set(state["objective"])
    assert any(k.startswith("momentum_model.") for k in state["objective"])


def test_checkpoint_loads_with_blip_core(pretrained, tmp_path):
    blip = blip_core.load(pretrained)
    assert blip.tasks == {"caption", "match"} and blip.image_size == 16
    scene = __import__("blip_core.scenes", fromlist=["render"]).render(5, 16)
    assert isinstance(blip.caption(scene.image, max_new_tokens=5).text, str)
    assert 0.0 <= blip.match(scene.image, ["a red circle"])[0].itm <= 1.0
    saved = load_file(str(pretrained / "model.safetensors"))
    for name, tensor in blip.model.state_dict().items():
        assert torch.equal(tensor, saved[name])
    # the tied decoder was saved with the encoder's shared weights
    assert torch.equal(saved["text_decoder.layers.0.mlp.fc1.weight"], saved["text_encoder.layers.0.mlp.fc1.weight"])


def test_export_loads_in_transformers(pretrained, tmp_path):
    import transformers

    from blip_core.checkpoints import export_hf

    model, tok, _ = load_model(pretrained)
    px = torch.randn(2, 3, 16, 16)
    ids, mask = tok(["a red circle", "two blue squares on a grey background"], first="dec")
    folder = export_hf(model, tmp_path / "hf-caption", tok, "caption")
    hf, info = transformers.BlipForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        ours = model.caption_logits(model.encode_image(px), ids, mask)
        theirs = hf.eval()(pixel_values=px, input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(ours, theirs, atol=1e-4)
    folder = export_hf(model, tmp_path / "hf-match", tok, "match")
    hf, info = transformers.BlipForImageTextRetrieval.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    enc = ids.clone()
    enc[:, 0] = tok.enc_id
    with torch.no_grad():
        ours = model.itm_logits(model.encode_image(px), enc, mask)
        theirs = hf.eval()(input_ids=enc, pixel_values=px, attention_mask=mask).itm_score
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path):
    """Same seed: steps 4-6 of a run resumed from step 3 equal those of the run that never
    stopped (data order, hard negatives, queues, momentum, optimizer, alpha), to the last bit."""
    # 32 scenes / batch 8 = 4 steps per epoch: the resumed part crosses an epoch boundary
    common = dict(max_steps=6, save_every=3, keep_checkpoints=5, alpha_ramp_epochs=1)
    pretrain.run(tiny(C.PretrainConfig, tmp_path / "a", **common))
    pretrain.run(tiny(C.PretrainConfig, tmp_path / "b",
                      resume=str(tmp_path / "a" / "checkpoints" / "step-0000003"), **common))
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert [r["step"] for r in b] == [4, 5, 6]
    keys = ("loss", "loss_itc", "loss_itm", "loss_lm", "lr", "alpha", "temp")
    assert [[r[k] for k in keys] for r in a[3:]] == [[r[k] for k in keys] for r in b]
    wa = load_file(str(tmp_path / "a" / "checkpoints" / "step-0000006" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "step-0000006" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (load_state(tmp_path / "a" / "checkpoints" / "step-0000006"),
              load_state(tmp_path / "b" / "checkpoints" / "step-0000006"))
    assert all(torch.equal(sa["objective"][k], sb["objective"][k]) for k in sa["objective"])
    assert find_checkpoint(str(tmp_path / "b")).name == "step-0000006"  # resume=output_dir takes the newest


def _dead_pid() -> int:
    """The pid of a process that has exited (as a run killed during a save has)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_resume_after_a_run_killed_during_a_save(tmp_path):
    """The kill: steps 1-4 logged, step 4's save interrupted (its staging folder left behind, no
    step-4 checkpoint), the last metrics line cut. Resuming in the same output_dir from step 2
    tidies the leftovers and logs steps 3 and 4 once each."""
    out = tmp_path / "run"
    common = dict(max_steps=4, save_every=2, keep_checkpoints=5)
    pretrain.run(tiny(C.PretrainConfig, out, **common))
    checkpoints = out / "checkpoints"
    staging = checkpoints / f".step-0000004.partial-{_dead_pid()}"
    os.replace(checkpoints / "step-0000004", staging)
    (staging / "model.safetensors").write_bytes(b"half")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.')
    pretrain.run(tiny(C.PretrainConfig, out, resume=str(out), **common))
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-0000002", "step-0000004"]


def test_interrupted_saves_are_tidied_only_when_their_writer_is_gone(tmp_path):
    from training.run_state import clean_interrupted_saves

    root = tmp_path / "checkpoints"
    dead, alive = _dead_pid(), os.getppid()  # our parent (pytest's runner shell or init) outlives the test
    for name in ("step-0000002", f".step-0000002.partial-{dead}", f".step-0000004.old-{dead}",
                 f".step-0000004.partial-{dead}", f".step-0000006.partial-{alive}", f".step-0000002.old-{dead}"):
        (root / name).mkdir(parents=True)
        (root / name / "from").write_text(name)
    clean_interrupted_saves(tmp_path)
    left = {p.name: (p / "from").read_text() for p in root.iterdir()}
    # killed between its two renames, step 4 is whole in .old: it is put back, not deleted
    assert left == {"step-0000002": "step-0000002", "step-0000004": f".step-0000004.old-{dead}",
                    f".step-0000006.partial-{alive}": f".step-0000006.partial-{alive}"}


def test_missing_and_corrupt_images_are_skipped_and_counted(tmp_path):
    paths = write_scene_json(tmp_path / "data", count=8, size=16)
    (tmp_path / "data" / "images" / "000002.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "data" / "images" / "000005.png").unlink()
    cfg = tiny(C.PretrainConfig, tmp_path / "out", data="json", train_json=str(paths["captions"]),
               image_root=str(tmp_path / "data"), batch_size=4, epochs=1)
    pretrain.run(cfg)  # does not die
    recs = records(tmp_path / "out")
    # expected count: every served pair of a bad image fails, and so does each following bad pair
    # it falls back to (pairs of one image are consecutive), until a readable one
    ds = JsonCaptions(str(paths["captions"]), str(tmp_path / "data"), ImageTransform(16))
    bad = [ds.files.paths[image_id] in ("images/000002.png", "images/000005.png") for image_id, _ in ds.pairs]

    def failures(i):
        n = 0
        while bad[(i + n) % len(bad)]:
            n += 1
        return n

    served = [k for b in EpochBatches(len(ds), 4, 0, 1, seed=0, epoch=0) for k in b]
    assert recs[-1]["step"] == len(served) // 4 == len(recs)
    assert recs[-1]["skipped_images"] == sum(failures(k) for k in served) > 0
    assert all(r["skipped_images"] <= s["skipped_images"] for r, s in zip(recs, recs[1:]))  # cumulative
    assert "unreadable images skipped so far" in (tmp_path / "out" / "train.log").read_text()


def test_cli_pretrain_runs_and_reports_bad_keys(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [f"{k}={v}" for k, v in {"model": "tiny", "image_size": 16, "embed_dim": 16, "scene_count": 16,
                                    "batch_size": 8, "queue_size": 12, "max_steps": 2, "log_every": 1,
                                    "output_dir": tmp_path}.items()]
    p = subprocess.run([sys.executable, "-m", "training.pretrain", *args], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=180)
    assert p.returncode == 0, p.stderr
    assert [r["step"] for r in records(tmp_path)] == [1, 2]
    p = subprocess.run([sys.executable, "-m", "training.pretrain", "queue_sise=3"], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=180)
    assert p.returncode == 2 and p.stderr.strip() == (
        "error: unknown config key 'queue_sise'; did you mean 'queue_size'?")


def test_pretrain_on_webdataset_shards(tmp_path):
    from training.make_scenes import write_scene_shards

    write_scene_shards(tmp_path / "shards", count=40, shards=2, size=16, noise=0.3)
    (tmp_path / "shards" / "000002.tar").write_bytes(b"this is not a tar file" * 50)  # broken shard
    # 16 samples per epoch / batch 8 = 2 steps: 5 steps read the stream over three epochs
    cfg = tiny(C.PretrainConfig, tmp_path / "out", data="wds",
               train_shards=str(tmp_path / "shards" / "{000000..000002}.tar"), samples_per_epoch=16, max_steps=5)
    pretrain.run(cfg)
    recs = records(tmp_path / "out")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5] and [r["epoch"] for r in recs] == [0, 0, 1, 1, 2]
    assert blip_core.load(tmp_path / "out" / "checkpoints" / "step-0000005").tasks == {"caption", "match"}


def test_data_workers_do_not_change_the_run(tmp_path):
    """Augmentation and caption choice depend on (seed, key), not on which process loads them."""
    for workers in (0, 2):
        pretrain.run(tiny(C.PretrainConfig, tmp_path / f"w{workers}", max_steps=2, workers=workers))
    keys = ("loss_itc", "loss_itm", "loss_lm")
    assert ([[r[k] for k in keys] for r in records(tmp_path / "w0")]
            == [[r[k] for k in keys] for r in records(tmp_path / "w2")])
