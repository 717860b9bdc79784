"""Stop requests from a cluster: SIGTERM (Slurm's preemption and time limit, torchrun passing one on) and
SIGUSR2 (`sbatch --signal=USR2@120`: a warning before the limit). The handler only raises a flag; the loop
checkpoints at the next step boundary and exits, so that train.resume=auto continues the run."""

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class StopRequest:
    """A context in which the stop signals set `signum` instead of killing the process."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        self.signum = signal.Signals(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False
