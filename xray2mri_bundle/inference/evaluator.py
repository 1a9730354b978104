"""The bundle's ``evaluator``: dataset -> inferer -> postprocessing for every knee, with a failure report.

:class:`KneeBatchEvaluator` reads each film through the ``dataset`` (its transform is the preprocessing, which
gives one item per knee), generates with the ``inferer`` and writes with ``postprocessing``
(:class:`~.postprocessing.KneeWriters`) into ``output_dir/<name>[_<side>]/``. A failing film (unreadable, not
a radiograph, ...) is recorded with its message and the run goes on; ``raise_on_failure`` raises at the end.
``batch.run_batch`` (``xray2mri generate``) and ``configs/inference.json`` both run this loop.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xray2mri_bundle.data.frame import WorldFrame

from .inferer import VolumeInferer
from .knees import knee_input, root_cause
from .naming import knee_label, output_names, unused_name
from .postprocessing import KneeWriters

__all__ = ["BatchReport", "KneeBatchEvaluator"]


@dataclass
class BatchReport:
    """What a batch produced: one entry per written knee, and ``(input, error message)`` per failure."""

    outputs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class KneeBatchEvaluator:
    """Run ``dataset`` (items ``{key: path}``) -> ``inferer`` -> ``postprocessing`` per knee; :meth:`run` returns
    a :class:`BatchReport`.

    ``side`` and ``reference_mri`` are recorded in every sidecar's settings; ``frame`` (a ``WorldFrame``)
    places the volumes (``--reference-mri``). ``log`` gets one line per knee (None: quiet).
    """

    def __init__(self, dataset: Any, inferer: VolumeInferer, postprocessing: KneeWriters,
                 output_dir: str | os.PathLike, side: str = "both", reference_mri: str | os.PathLike | None = None,
                 frame: WorldFrame | None = None, progress: bool = True, raise_on_failure: bool = False,
                 log: Callable[[str], None] | None = print, key: str = "xray") -> None:
        self.dataset, self.inferer, self.postprocessing = dataset, inferer, postprocessing
        self.output_dir, self.side, self.key = Path(output_dir), str(side).lower(), key
        self.reference_mri, self.frame = reference_mri, frame
        self.progress, self.raise_on_failure, self.log = progress, raise_on_failure, log

    def __call__(self) -> BatchReport:
        return self.run()

    def run(self) -> BatchReport:
        from tqdm.auto import tqdm

        paths = [Path(item[self.key]) for item in self.dataset.data]
        names = output_names(paths)
        used_labels: set[str] = set()  # knee folders written in this run: two knees never share one
        generator = self.inferer.generator
        report = BatchReport()
        settings = {"chunk_size": self.inferer.chunk_size, "formats": list(self.postprocessing.formats),
                    "requested_side": self.side, **getattr(generator, "acceleration", {}),
                    "reference_mri": None if self.reference_mri is None else str(self.reference_mri)}
        say = self.log or (lambda _msg: None)
        for index, path in enumerate(paths):
            try:
                start = time.perf_counter()
                items = self.dataset[index]
                knees = [knee_input(item, self.key) for item in ([items] if isinstance(items, Mapping) else items)]
                preprocessing = time.perf_counter() - start
                if len(knees) > 1:
                    note = f"{path}: bilateral film, generating both knees (use --side left|right for one)"
                    report.notes.append(note)
                    say(note)
                for knee in knees:
                    label = unused_name(knee_label(names[str(path)], knee), used_labels)
                    used_labels.add(label)
                    bar = tqdm(total=self.inferer.total_steps, desc=label, unit="step", disable=not self.progress,
                               leave=False)

                    def update(done: int, total: int, bar: Any = bar) -> None:
                        bar.total, bar.n = total, done
                        bar.refresh()

                    try:
                        result = self.inferer(knee.crop, progress=update)
                    finally:
                        bar.close()
                    result.timings["preprocessing"] = preprocessing
                    folder = self.output_dir / label
                    sidecar = self.postprocessing(result, knee, folder, generator, settings, self.frame)
                    report.outputs.append({"input": str(path), "side": knee.side, "folder": str(folder),
                                           "sidecar": sidecar})
                    say(f"{path} ({(knee.side or 'knee').lower()}): wrote {folder} "
                        f"({result.slices} slices, {result.timings['total']:.1f} s)")
            except Exception as exc:  # noqa: BLE001 - a batch reports every failure by file name and goes on
                exc = root_cause(exc)
                message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
                report.failures.append((str(path), message))
                print(f"error: {message}", file=sys.stderr)
        if report.failures:
            print(f"{len(report.failures)} of {len(paths)} input(s) failed:", file=sys.stderr)
            for _, message in report.failures:
                print(f"  - {message}", file=sys.stderr)
            if self.raise_on_failure:
                raise RuntimeError(f"{len(report.failures)} input(s) failed: " +
                                   "; ".join(message for _, message in report.failures))
        return report
