"""The training loader over a shard split: litdata's ``StreamingDataLoader`` whose position,
restored from a checkpoint, applies to the resumed epoch only."""

from __future__ import annotations

from typing import Any

from litdata import StreamingDataLoader


class ResumableStreamingLoader(StreamingDataLoader):
    """litdata keeps a loaded position until an iteration runs to its end. Lightning stops an
    epoch after its known number of batches, before the generator ends, so the next epoch would
    replay the finished position and yield nothing; here a second iteration starts afresh."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resumed_epoch_begun = False

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._resumed_epoch_begun = False

    def __iter__(self) -> Any:
        if self.restore and self._resumed_epoch_begun:
            self.restore = False  # the resumed epoch is over: a new one begins
        self._resumed_epoch_begun = self.restore
        return super().__iter__()
