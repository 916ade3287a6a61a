"""`HiveDataReport`: what the loaders skipped and the collators truncated or dropped, for the end of a run."""

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class HiveDataReport:
    """Counts of data problems met during a run, with the first few examples of each.

    Loaders record unreadable images (`skip_image`); each row is counted once however many times a stream is
    read. Collators record truncated samples (`truncate`) and samples dropped because truncation removed their
    whole answer (`drop`), once per collated sample. A report is filled in the process that reads the data:
    with DataLoader workers each worker fills its own copy.

    Args:
        max_examples: examples kept per kind for `summary`.

    Example:
        >>> from hive_vlm.data.report import HiveDataReport
        >>> report = HiveDataReport()
        >>> report.skip_image("row 3", "cat.jpg", "cannot identify image file")
        >>> print(report.summary())
        data report: 1 unreadable image skipped, 0 samples truncated, 0 samples dropped
          skipped row 3 (cat.jpg): cannot identify image file
    """

    max_examples: int = 5
    skipped_images: dict = field(default_factory=dict)  # row -> (file, reason)
    truncated: int = 0
    dropped: int = 0
    examples: dict = field(default_factory=lambda: {"truncated": [], "dropped": []})

    def skip_image(self, row: str, file: str, reason: str) -> None:
        if row not in self.skipped_images:
            self.skipped_images[row] = (file, reason)
            logger.warning("skipped %s: image %s cannot be read (%s)", row, file, reason)

    def truncate(self, detail: str) -> None:
        self.truncated += 1
        self._keep("truncated", detail)

    def drop(self, detail: str) -> None:
        self.dropped += 1
        self._keep("dropped", detail)
        logger.warning("dropped a sample: %s", detail)

    def _keep(self, kind: str, detail: str) -> None:
        if len(self.examples[kind]) < self.max_examples:
            self.examples[kind].append(detail)

    def as_dict(self) -> dict:
        return {"skipped_images": len(self.skipped_images), "truncated": self.truncated, "dropped": self.dropped}

    def summary(self) -> str:
        skipped = len(self.skipped_images)
        lines = [f"data report: {skipped} unreadable image{'' if skipped == 1 else 's'} skipped, "
                 f"{self.truncated} samples truncated, {self.dropped} samples dropped"]
        for row, (file, reason) in list(self.skipped_images.items())[: self.max_examples]:
            lines.append(f"  skipped {row} ({file}): {reason}")
        lines += [f"  truncated: {detail}" for detail in self.examples["truncated"]]
        lines += [f"  dropped: {detail}" for detail in self.examples["dropped"]]
        return "\n".join(lines)
