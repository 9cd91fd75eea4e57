"""Run the int8 runtime on aarch64 (a Raspberry Pi 5's Cortex-A76, emulated with qemu-user) and
compare its captions and answers with this machine's, on the same converted graphs.

    python scripts/aarch64_check.py              # the bundled demo model, 40 held-out scenes
    python scripts/aarch64_check.py --scenes 100

What it checks is correctness, not speed (emulation is ~50x slower than a Pi): that ONNX Runtime's
aarch64 wheel loads and runs our graphs (dynamic int8 and 8-bit block MatMuls, the block-quantised
word tables) with the A76's instruction set (``-cpu cortex-a76``: dot products, no i8mm/bf16), and
without torch (none is installed there). The graphs are made here with ``blip convert``'s
``export_int8``, as an aarch64 machine would convert them (int8 compute everywhere, see
``engine._fast_int8_blocks``), and both machines load that folder: the "convert on a desktop,
copy to a Pi" route.

Needs ``qemu-user-static`` and ``debootstrap`` (Debian/Ubuntu: ``apt-get install qemu-user-static
debootstrap``) and network access to a Debian mirror and PyPI, once: a minimal arm64 Debian
(Python 3.11) and the aarch64 wheels are kept in ``$BLIPCAM_CACHE/aarch64-check``. No binfmt or
root chroot is used: qemu runs the arm64 Python directly with the Debian tree as its library root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WHEELS = ("numpy", "tokenizers", "pillow", "safetensors", "tqdm")  # + onnxruntime, pinned to ours
PYTHON_DEBS = ("python3-minimal", "python3.11", "libpython3.11-stdlib", "libstdc++6", "libgomp1")
# qemu-user shows the host's /proc/cpuinfo, which ONNX Runtime's CPU detection cannot parse on arm
# (it crashes); a Pi 5's, placed under the library root, is what qemu serves instead.
PI5_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
    "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
    "CPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n" for i in range(4))


def probe(folder: str, n: int) -> dict:
    """Greedy and beam captions, answers and a match score on ``n`` held-out scenes (this process's
    machine) from the converted ``folder``, and whether torch was ever imported."""
    import blip_core
    from blip_core.scenes import render

    m = blip_core.load(folder, precision="int8", threads=2)
    out = {"machine": platform.machine(), "greedy": [], "beam": [], "answer": []}
    for i in range(n):
        f = m.encode_image(render(10_000_000 + i, m.image_size).image)
        out["greedy"].append(m.caption(f, prompt="a picture of ", max_new_tokens=30, min_new_tokens=1).text)
        out["beam"].append(m.caption(f, prompt="a picture of ", num_beams=3, max_new_tokens=20).text)
        out["answer"].append(m.answer(f, "how many objects are there?").text)
    out["itc"] = m.match(render(1, m.image_size).image, ["a red square"])[0].itc
    out["torch_loaded"] = "torch" in sys.modules
    return out


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd[:4])} ...\n{done.stderr[-3000:]}")
    return done


def debian_root(root: Path) -> Path:
    """A minimal arm64 Debian 12 with Python 3.11, unpacked but not configured."""
    python = root / "usr" / "bin" / "python3.11"
    if python.is_file():
        return root
    print(f"fetching a minimal arm64 Debian into {root} ...", flush=True)
    _run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", f"--include={','.join(PYTHON_DEBS)}",
          "bookworm", str(root), "http://deb.debian.org/debian"])
    for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):  # --foreign leaves extras packed
        _run(["dpkg-deb", "-x", str(deb), str(root)])
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "cpuinfo").write_text(PI5_CPUINFO)
    return root


def aarch64_site(folder: Path) -> Path:
    """The runtime's dependencies as aarch64 wheels for Python 3.11, unpacked (no pip under qemu)."""
    import onnxruntime

    site = folder / "site"
    if (site / "onnxruntime").is_dir():
        return site
    print("fetching aarch64 wheels ...", flush=True)
    wheels = folder / "wheels"
    _run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(wheels), "--only-binary=:all:",
          "--python-version", "3.11", "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
          f"onnxruntime=={onnxruntime.__version__}", *WHEELS])
    for wheel in wheels.glob("*.whl"):
        zipfile.ZipFile(wheel).extractall(site)
    return site


def convert_as_aarch64(folder: Path) -> Path:
    """``blip convert`` the demo model into ``folder``, choosing what an aarch64 machine chooses."""
    import blip_core
    from blip_core.checkpoints import open_checkpoint
    from blip_core.int8 import convert as engine

    engine._fast_int8_blocks = lambda: True  # int8 compute in every block MatMul, as on a Pi
    shutil.rmtree(folder, ignore_errors=True)
    return engine.export_int8(open_checkpoint(blip_core.demo_model_path()), folder)


def compare(here: dict, arm: dict) -> bool:
    n = len(here["greedy"])
    print(f"{here['machine']} vs {arm['machine']} (qemu -cpu cortex-a76), {n} held-out scenes:")
    for key in ("greedy", "beam", "answer"):
        same = sum(a == b for a, b in zip(here[key], arm[key]))
        print(f"  {key:7s} identical {same}/{n}")
        for a, b in zip(here[key], arm[key]):
            if a != b:
                print(f"    {here['machine']}: {a!r}\n    aarch64: {b!r}")
    print(f"  match ITC {here['itc']:.4f} vs {arm['itc']:.4f}; torch loaded on aarch64: {arm['torch_loaded']}")
    # other CPUs' kernels round differently, so a near-tied word may flip (as int8 vs fp32 does)
    agree = min(sum(a == b for a, b in zip(here[k], arm[k])) / n for k in ("greedy", "answer"))
    return not arm["torch_loaded"] and agree >= 0.9 and abs(here["itc"] - arm["itc"]) < 1e-2


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=40)
    p.add_argument("--probe", metavar="FOLDER", help=argparse.SUPPRESS)  # the measuring child
    args = p.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.scenes)))
        return 0
    missing = [t for t in ("qemu-aarch64-static", "debootstrap", "dpkg-deb") if shutil.which(t) is None]
    if missing:
        print(f"needs {', '.join(missing)}: apt-get install qemu-user-static debootstrap", file=sys.stderr)
        return 2
    from blip_core.int8.cache import cache_root

    work = cache_root() / "aarch64-check"
    root, site = debian_root(work / "debian"), aarch64_site(work)
    graphs = str(convert_as_aarch64(work / "demo-int8"))
    probe_args = [__file__, "--probe", graphs, "--scenes", str(args.scenes)]
    here = json.loads(_run([sys.executable, *probe_args], env={**os.environ, "PYTHONPATH": str(REPO)}).stdout)
    print("running on emulated aarch64 (slow) ...", flush=True)
    arm_env = {**os.environ, "PYTHONPATH": f"{site}:{REPO}"}
    arm = json.loads(_run(["qemu-aarch64-static", "-cpu", "cortex-a76", "-L", str(root),
                           str(root / "usr/bin/python3.11"), *probe_args], env=arm_env).stdout)
    return 0 if compare(here, arm) else 1


if __name__ == "__main__":
    sys.exit(main())
