"""Can Qt run here? Checked before the first window, so a broken install gets one line and exit 2
instead of Qt's ``abort()`` (a missing xcb library, no display) or a crash minutes later (a Qt
binding that corrupts reference counts). No QApplication is created here.

Two checks:
- ``binding_problem``: PySide6-Essentials 6.12.0 on CPython 3.11 drops a reference to ``None`` in
  every void call; before 3.12 ``None`` is not immortal, so at camera rate the process aborts with
  "none_dealloc" after ~15 s. Measured on a QObject, so it needs no display.
- ``platform_problem``: which platform plugin Qt will pick (``QT_QPA_PLATFORM``, else xcb or
  wayland from the session), whether its display is set, and which shared libraries the plugin
  needs but this system lacks, named with the packages that provide them on Debian, Ubuntu and
  Raspberry Pi OS. Qt 6.5+'s xcb plugin also opens ``libxcb-cursor.so.0`` at run time, which
  ``ldd`` cannot see, so that one is probed with ``dlopen``.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# soname -> the Debian / Ubuntu / Raspberry Pi OS package that ships it (same names on all three)
APT_PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0",
    "libxcb-xinput.so.0": "libxcb-xinput0",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-glx.so.0": "libxcb-glx0",
    "libxcb.so.1": "libxcb1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libSM.so.6": "libsm6",
    "libICE.so.6": "libice6",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libOpenGL.so.0": "libopengl0",
    "libGLX.so.0": "libglx0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libwayland-client.so.0": "libwayland-client0",
    "libwayland-cursor.so.0": "libwayland-cursor0",
    "libwayland-egl.so.1": "libwayland-egl1",
}
# plugins that draw nowhere or on their own device: no display variable, nothing to check
_HEADLESS_PLATFORMS = frozenset({"offscreen", "minimal", "minimalegl", "vnc", "linuxfb", "eglfs", "vkkhrdisplay"})
_DISPLAY_VARIABLE = {"xcb": "DISPLAY", "wayland": "WAYLAND_DISPLAY"}
_RUNTIME_LIBRARIES = {"xcb": ("libxcb-cursor.so.0",)}  # dlopen()ed by the plugin, invisible to ldd
_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)


@dataclass(frozen=True)
class PlatformReport:
    """What stops ``platform`` from opening a window: an unset display or missing libraries."""

    platform: str
    display_unset: str = ""  # the environment variable that should name the display
    missing: tuple[str, ...] = field(default=())  # sonames

    @property
    def ok(self) -> bool:
        return not self.display_unset and not self.missing


def missing_binding() -> str:
    """A one-line message when Qt for Python is not installed (the library installs without it)."""
    try:
        import PySide6  # noqa: F401
    except ImportError:
        return "blip-cam needs Qt for Python, which is not installed: pip install 'blipcam[app]' (or run make run)"
    return ""


def candidate_platforms(environ: dict[str, str] | os._Environ = os.environ) -> list[str]:
    """Platform plugins Qt will try, in order (``QT_QPA_PLATFORM="xcb;wayland"`` lists fallbacks,
    ``name:options`` carries options). Without the variable, Qt 6 on Linux prefers wayland in a
    wayland session and xcb otherwise."""
    chosen = environ.get("QT_QPA_PLATFORM", "").strip()
    if chosen:
        return [part.split(":", 1)[0].strip().lower() for part in chosen.split(";") if part.strip()]
    if environ.get("XDG_SESSION_TYPE") == "wayland" and environ.get("WAYLAND_DISPLAY"):
        return ["wayland", "xcb"]
    return ["xcb"]


def plugin_path(platform: str) -> Path | None:
    """The platform plugin's shared object inside the installed PySide6, or None if absent."""
    import PySide6  # the package only: no Qt library is loaded by this import

    path = Path(PySide6.__file__).parent / "Qt" / "plugins" / "platforms" / f"libq{platform}.so"
    return path if path.exists() else None


def unresolved_libraries(shared_object: Path) -> list[str]:
    """Sonames ``shared_object`` needs (recursively) that the dynamic loader cannot find."""
    ldd = shutil.which("ldd")
    if ldd:
        out = subprocess.run([ldd, str(shared_object)], capture_output=True, text=True, errors="replace",
                             timeout=30).stdout
        return list(dict.fromkeys(_NOT_FOUND.findall(out)))
    try:  # no ldd (a minimal image): dlopen names only the first missing library
        ctypes.CDLL(str(shared_object))
    except OSError as e:
        first = re.match(r"(\S+?): cannot open shared object file", str(e))
        return [first.group(1)] if first else [str(shared_object.name)]
    return []


def loadable(soname: str) -> bool:
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def check_platform(platform: str, environ: dict[str, str] | os._Environ = os.environ,
                   plugin: Path | None = None) -> PlatformReport:
    """Whether Qt's ``platform`` plugin can open a window here (``plugin`` overrides the lookup)."""
    if platform in _HEADLESS_PLATFORMS:
        return PlatformReport(platform)
    variable = _DISPLAY_VARIABLE.get(platform, "")
    if variable and not environ.get(variable):
        return PlatformReport(platform, display_unset=variable)
    plugin = plugin or plugin_path(platform)
    if plugin is None:
        return PlatformReport(platform)  # unknown to this PySide6: let Qt say so itself
    missing = unresolved_libraries(plugin)
    missing += [lib for lib in _RUNTIME_LIBRARIES.get(platform, ()) if lib not in missing and not loadable(lib)]
    return PlatformReport(platform, missing=tuple(missing))


def install_hint(missing: tuple[str, ...] | list[str], os_release: Path = Path("/etc/os-release")) -> str:
    """The one command that installs ``missing`` on this system, or what to look for elsewhere."""
    packages = [APT_PACKAGES[lib] for lib in missing if lib in APT_PACKAGES]
    unknown = [lib for lib in missing if lib not in APT_PACKAGES]
    if _is_debian_like(os_release) and packages:
        line = "sudo apt-get install " + " ".join(dict.fromkeys(packages))
        if unknown:
            line += f" (and the packages that provide {', '.join(unknown)}: apt-file search NAME)"
        return line
    return "install the packages that provide " + ", ".join(missing) + " with your system's package manager"


def _is_debian_like(os_release: Path) -> bool:
    try:
        text = os_release.read_text(errors="replace")
    except OSError:
        return shutil.which("apt-get") is not None
    ids = " ".join(re.findall(r"^(?:ID|ID_LIKE)=\"?([^\"\n]*)", text, re.MULTILINE)).lower()
    return any(name in ids.split() for name in ("debian", "ubuntu", "raspbian"))


def platform_problem(environ: dict[str, str] | os._Environ = os.environ, *,
                     plugins: dict[str, Path] | None = None, os_release: Path = Path("/etc/os-release")) -> str:
    """A one-line message saying why no window can open, or "" when one can (or off Linux, where
    Qt's plugins do not depend on system libraries this way). ``plugins`` overrides plugin lookup."""
    if not sys.platform.startswith("linux"):
        return ""
    reports = [check_platform(p, environ, (plugins or {}).get(p)) for p in candidate_platforms(environ)]
    if any(r.ok for r in reports):
        return ""
    missing = [lib for r in reports for lib in r.missing]
    if missing:
        names = " ".join(r.platform for r in reports if r.missing)
        return (f"Qt cannot load its {names} platform plugin: this system lacks {', '.join(dict.fromkeys(missing))}. "
                f"Install them with: {install_hint(tuple(dict.fromkeys(missing)), os_release)}")
    unset = " or ".join(dict.fromkeys(r.display_unset for r in reports))
    return (f"no display to open a window on ({unset} is not set). Without a screen, run "
            "`QT_QPA_PLATFORM=offscreen blip-cam --source scenes --exit-after-captions 5`, "
            "or caption files with the command line: `blip caption IMAGE`")


def none_refcount_drift(calls: int = 64) -> int:
    """How many references to ``None`` ``calls`` void calls into Qt lose (0 for a sound binding).
    The loss, if any, is given back, so measuring leaves the interpreter as it was."""
    from PySide6.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(calls):
        probe.setObjectName("probe")  # a void method: the kind that leaks in the faulty build
    lost = before - sys.getrefcount(None)
    if lost > 0:
        for _ in range(lost):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(None))
    return lost


def binding_problem(calls: int = 64) -> str:
    """A one-line message when the installed PySide6 corrupts ``None``'s reference count, else ""."""
    if sys.version_info >= (3, 12):  # None is immortal: a lost reference cannot free it
        return ""
    lost = none_refcount_drift(calls)
    if lost < calls // 2:
        return ""
    import PySide6

    return (f"PySide6 {PySide6.__version__} on Python {sys.version_info.major}.{sys.version_info.minor} loses a "
            f"reference to None in every Qt call ({lost} in {calls}) and would crash the app within seconds; "
            "install a sound build: pip install 'PySide6-Essentials>=6.8,<6.12' (or use Python 3.12+)")
