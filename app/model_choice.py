"""Which models to load and what to do when they are unavailable (no Qt).

Defaults are the real Salesforce checkpoints, downloaded once to the Hugging Face cache by
``blip_core.load``. Offline without them (``WeightsUnavailableError``) the bundled demo model is
used instead, with a notice, since it knows only generated scenes. A caption model that can also
answer questions ("vqa" in ``m.tasks``) serves both, so one encoded image serves both.

The model API of blip_core is imported inside functions, never at module import: loading a model
takes seconds on a Pi (an fp32 model, or an int8 one's first conversion, also imports torch) and
must delay neither the window nor a command-line error message. A converted int8 model runs without
torch. Only ``blip_core.hub``'s names, which import nothing heavy, are imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from blip_core.hub import DEFAULT_MODELS

DEFAULT_CAPTION_MODEL = DEFAULT_MODELS["caption"]
DEFAULT_VQA_MODEL = DEFAULT_MODELS["vqa"]
PRECISIONS = ("int8", "fp32")
DEMO_NOTICE = ("Offline: using the bundled demo model, which knows only generated scenes "
               "(try --source scenes). Run once online to download the real BLIP models.")

Loader = Callable[..., Any]  # blip_core.load(source, precision=, threads=, task=, progress=)
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class ModelRequest:
    """The models asked for on the command line. ``vqa=None`` means: no question model."""

    caption: str = DEFAULT_CAPTION_MODEL
    vqa: str | None = DEFAULT_VQA_MODEL
    precision: str = "int8"
    threads: int | None = None


@dataclass
class LoadedModels:
    """The models in use. ``answerer is captioner`` when one model does both."""

    captioner: Any = None
    answerer: Any = None
    notices: list[str] = field(default_factory=list)
    used_demo: bool = False

    @property
    def shared(self) -> bool:
        return self.answerer is not None and self.answerer is self.captioner

    @property
    def matcher(self) -> Any:
        """A loaded model that can rank snapshot images against text, or None."""
        for m in (self.captioner, self.answerer):
            if m is not None and "match" in m.tasks:
                return m
        return None


def short_name(name: str) -> str:
    """A model name fit for the overlay: a hub id as is, a local path by its last component."""
    if name.startswith(("/", ".", "~")) or "\\" in name or Path(name).exists():
        return Path(name).name or name
    return name


def default_loader() -> Loader:
    """``blip_core.load``, imported on first use (in the worker: loading takes seconds)."""
    from blip_core.api import load

    return load


def demo_model_path() -> Path | None:
    """The bundled demo model, or None if this install does not have it."""
    from blip_core import demo_model_path as bundled

    path = bundled()
    return path if path.exists() else None


def default_threads() -> int:
    """Inference threads when ``--threads`` is not given: every physical core but one, so the
    preview and the camera keep a core (PyTorch's Raspberry Pi tutorial: fewer threads trade a
    little speed for no latency spikes)."""
    from blip_core.api import physical_cores

    return max(1, physical_cores() - 1)


def _with_role(progress: Progress | None, role: str) -> Progress | None:
    if progress is None:
        return None
    return lambda fraction, message: progress(fraction, f"{role}: {message}")


def _load(loader: Loader, source: str, req: ModelRequest, role: str, progress: Progress | None) -> Any:
    if progress:
        progress(0.0, f"{role}: loading {source}")
    threads = req.threads if req.threads is not None else default_threads()
    model = loader(source, precision=req.precision, threads=threads, progress=_with_role(progress, role))
    if progress:
        progress(1.0, f"{role}: {model.name} ready")
    return model


def load_captioner(req: ModelRequest, loader: Loader, progress: Progress | None = None,
                   demo_path: Callable[[], Path | None] | None = None) -> LoadedModels:
    """Load the caption model, falling back to the demo model when the weights are unavailable."""
    from blip_core.errors import WeightsUnavailableError, WrongTaskError

    if demo_path is None:  # looked up per call, so tests can monkeypatch it
        demo_path = demo_model_path
    out = LoadedModels()
    try:
        out.captioner = _load(loader, req.caption, req, "caption model", progress)
    except WeightsUnavailableError as e:
        demo = demo_path()
        if demo is None:
            raise WeightsUnavailableError(
                f"{e} The bundled demo model is not installed either, so there is nothing to caption with: "
                "connect to the internet once, or pass --model PATH.") from e
        out.captioner = _load(loader, str(demo), req, "demo model", progress)
        out.used_demo = True
        out.notices.append(DEMO_NOTICE)
    if "caption" not in out.captioner.tasks:
        does = ", ".join(sorted(out.captioner.tasks))
        raise WrongTaskError(f"{out.captioner.name} cannot write captions (it does {does}); "
                             "pass a captioning checkpoint with --caption-model")
    return out


def load_answerer(req: ModelRequest, models: LoadedModels, loader: Loader, progress: Progress | None = None,
                  demo_path: Callable[[], Path | None] | None = None) -> LoadedModels:
    """Add the question model to ``models``: the caption model itself when it can answer (shared
    features) unless another question model was named (BLIP-2 answering beside BLIP), else
    ``req.vqa``. Failures become notices: captions keep working without questions."""
    from blip_core.errors import BlipError, WeightsUnavailableError

    if demo_path is None:  # looked up per call, so tests can monkeypatch it
        demo_path = demo_model_path
    captioner = models.captioner
    chosen = req.vqa and req.vqa not in (req.caption, DEFAULT_VQA_MODEL)  # e.g. a BLIP-2 asked for by name
    if "vqa" in captioner.tasks and not chosen:
        models.answerer = captioner
        return models
    if not req.vqa or (models.used_demo and req.vqa == DEFAULT_VQA_MODEL) or req.vqa == req.caption:
        # the demo model stood in because we are offline; the default VQA model will be missing too
        models.notices.append(f"Questions unavailable: {captioner.name} cannot answer questions "
                              "(pass a VQA model with --vqa-model).")
        return models
    try:
        answerer = _load(loader, req.vqa, req, "question model", progress)
    except WeightsUnavailableError as e:
        demo = demo_path()
        if demo is None:
            models.notices.append(f"Questions unavailable offline: {e}")
            return models
        try:
            answerer = _load(loader, str(demo), req, "demo question model", progress)
        except BlipError as e2:
            models.notices.append(f"Questions unavailable: {e2}")
            return models
        models.notices.append("Offline: questions use the bundled demo model, which knows only generated scenes.")
    except BlipError as e:
        models.notices.append(f"Questions unavailable: {e}")
        return models
    if "vqa" not in answerer.tasks:
        models.notices.append(f"Questions unavailable: {answerer.name} cannot answer questions.")
        return models
    models.answerer = answerer
    return models
