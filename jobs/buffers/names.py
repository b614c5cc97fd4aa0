"""Wire names of the buffer tasks and their queue (a contract with messages and dead letters)."""

from __future__ import annotations

from workers.errors import RowRejected

#: Wire names (a contract with queued messages and dead letters).
FLUSH_TASK = "buffers.flush"
WRITE_ROW_TASK = "buffers.write_row"
#: The queue of both tasks.
QUEUE = "buffers"
#: Dead-letter reason of a row the database refused.
REJECTED_REASON = RowRejected.reason
