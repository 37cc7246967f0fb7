"""The streaming engine: encode each frame at most once, answer every prompt from cached features.

The engine is the only place that knows about time and threads. Adapters hand it frames and prompts
(``push_frame``/``push_prompt``: O(1), never blocking, bounded buffers that drop their oldest entry);
one worker thread matches prompts to frames by stamp (``matching``), decides what to encode
(``policy``), runs the :class:`FrameProcessor` and delivers one :class:`FrameResult` per answered
batch through ``on_result``, always with the source frame's stamp and frame id. Rejections and
failures go to ``on_error(message, prompt)``, the message starting with a :class:`RejectReason` value.

The worker is the only thread that touches the model. Work from other threads reaches it as a
task: ``submit(fn)`` runs ``fn`` between two steps (a vocabulary swap then names a frame wholly with
the old vocabulary or wholly with the new one), and ``request(prompts, image=...)`` answers a
synchronous request (the node's ``~/segment``) on a cached frame, encoding and caching it first if
needed; both return a :class:`concurrent.futures.Future`.

Offline replay drives the very same step function synchronously: ``Engine(..., replay=True)``,
then ``push_*`` and ``run_until_idle()`` in stamp order, ``finish()`` at the end. There, time is the
stream's (the newest frame stamp), so results do not depend on wall-clock speed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ovsam_ros.engine.config import EngineConfig
from ovsam_ros.engine.frame_store import EncodedFrame, RawFrame, StampBuffer
from ovsam_ros.engine.matching import MatchAction, RejectReason, match_stamp
from ovsam_ros.engine.policy import EncodePolicy
from ovsam_ros.engine.processor import FrameProcessor
from ovsam_ros.engine.stats import EngineStats
from ovsam_ros.prompts import Prompt
from ovsam_ros.results import FrameResult, Instance

logger = logging.getLogger(__name__)

T = TypeVar("T")
ResultCallback = Callable[[FrameResult], None]
ErrorCallback = Callable[[str, "Prompt | None"], None]

_COUNTERS = ("frames_received", "frames_encoded", "frames_skipped", "encode_errors", "prompts_received",
             "prompts_answered", "cache_hits", "standing_applied", "results_emitted", "callback_errors",
             "frames_skipped_oom")


def out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA ``OutOfMemoryError`` (a RuntimeError), a CPU allocator failure or a MemoryError:
    a failure of this batch's size on this device, not of its prompts."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class EngineError(ValueError):
    """A frame, prompt or standing key the engine cannot take; the message says what is wrong."""


class EngineStateError(RuntimeError):
    """A call that does not fit the engine's state (e.g. ``run_until_idle`` while the worker runs)."""


@dataclass(eq=False)
class _Pending:
    prompt: Prompt
    arrived: float


@dataclass(eq=False)
class _Job:
    """Answer ``prompts`` from ``frame`` (a cache hit), or encode ``raw`` first and answer ``prompts``
    (taken out of the pending queue) with the standing prompts and any that match it meanwhile."""

    frame: EncodedFrame | None = None
    raw: RawFrame | None = None
    prompts: list[_Pending] = field(default_factory=list)


def _check_stamp(stamp: object, what: str, allow_zero: bool) -> float:
    number = isinstance(stamp, (int, float, np.integer, np.floating)) and not isinstance(stamp, bool)
    if not number or not math.isfinite(stamp) or stamp < 0 or (stamp == 0 and not allow_zero):  # type: ignore[arg-type]
        need = ">= 0" if allow_zero else "> 0"
        raise EngineError(f"{what} stamp must be a finite number of seconds {need}, got {stamp!r}")
    return float(stamp)  # type: ignore[arg-type]


def _check_image(image: object) -> None:
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or 0 in image.shape[:2]:
        shape = getattr(image, "shape", None)
        raise EngineError(f"image must be a non-empty HxW or HxWxC numpy array, got "
                          f"{type(image).__name__} with shape {shape}")


def _check_prompt(prompt: object) -> Prompt:
    if not isinstance(prompt, Prompt):
        raise EngineError(f"expected an ovsam_ros.prompts.Prompt, got {type(prompt).__name__}")
    _check_stamp(prompt.stamp, "prompt", allow_zero=True)
    return prompt


def _describe(prompt: Prompt) -> str:
    return f"{prompt.kind.name.lower()} prompt {prompt.id!r} (stamp {prompt.stamp:.6f})"


class Engine:
    """Feature reuse over a stream: see the module docstring. All public methods are thread-safe."""

    def __init__(self, processor: FrameProcessor, config: EngineConfig | None = None, *,
                 on_result: ResultCallback | None = None, on_error: ErrorCallback | None = None,
                 replay: bool = False) -> None:
        if not isinstance(processor, FrameProcessor):
            raise EngineError(f"processor must have encode(image) and answer(features, prompts); "
                              f"got {type(processor).__name__}")
        self.config = config if config is not None else EngineConfig()
        if not isinstance(self.config, EngineConfig):
            raise EngineError(f"config must be an EngineConfig, got {type(self.config).__name__}")
        self.replay = replay
        self._processor = processor
        self._on_result = on_result
        self._on_error = on_error
        self._policy = EncodePolicy(self.config.encode_mode, self.config.max_encode_rate_hz)
        self._stats = EngineStats()
        self._cond = threading.Condition()
        self._raw: StampBuffer[RawFrame] = StampBuffer(max(1, self.config.raw_buffer_size))
        self._cache: StampBuffer[EncodedFrame] = StampBuffer(self.config.cache_size)
        self._pending: deque[_Pending] = deque()
        self._standing: dict[str, tuple[Prompt, ...]] = {}
        self._reports: deque[tuple[str, Prompt | None]] = deque(maxlen=self.config.prompt_queue_size)
        self._tasks: deque[tuple[Callable[[], Any], Future]] = deque()
        self._version = 0
        self._idle_version = -1
        self._stream_now = 0.0
        self._last_encode: float | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ----------------------------------------------------------------------------- inputs (any thread)

    def push_frame(self, image: np.ndarray, stamp: float, frame_id: str = "") -> None:
        """Hand over a received image (kept by reference: do not modify it afterwards)."""
        _check_image(image)
        frame = RawFrame(_check_stamp(stamp, "frame", allow_zero=False), str(frame_id), image)
        with self._cond:
            self._stats.count("frames_received")
            if frame.stamp in self._cache:
                self._stats.count("frames_skipped")
            else:
                self._stats.count("frames_skipped", len(self._raw.add(frame.stamp, frame)))
            self._stream_now = max(self._stream_now, frame.stamp)
            self._touch_locked()

    def push_prompt(self, prompt: Prompt) -> None:
        """Queue a one-off prompt, answered once on the frame its stamp selects (0 = the newest)."""
        _check_prompt(prompt)
        if prompt.standing:
            raise EngineError(f"{_describe(prompt)} is marked standing: register it with "
                              "set_standing(key, prompts), or build it with standing=False to answer it once")
        with self._cond:
            self._stats.count("prompts_received")
            if len(self._pending) >= self.config.prompt_queue_size:
                self._reject_locked(self._pending.popleft().prompt, RejectReason.QUEUE_FULL,
                                    f"more than {self.config.prompt_queue_size} prompts pending")
            self._pending.append(_Pending(prompt, self._now()))
            self._touch_locked()

    def set_standing(self, key: str, prompts: Iterable[Prompt]) -> None:
        """Apply ``prompts`` to every newly encoded frame until replaced or cleared (empty clears); a
        prompt with a stamp only to frames newer than it (beyond the slop)."""
        if not isinstance(key, str) or not key:
            raise EngineError(f"standing key must be a non-empty string, got {key!r}")
        group = tuple(_check_prompt(p) for p in prompts)
        with self._cond:
            if group:
                self._standing[key] = group
            else:
                self._standing.pop(key, None)
            self._touch_locked()

    def clear_standing(self, key: str | None = None) -> None:
        """Drop the standing prompts under ``key``, or all of them."""
        with self._cond:
            if key is None:
                self._standing.clear()
            else:
                self._standing.pop(key, None)
            self._touch_locked()

    def reconfigure(self, config: EngineConfig) -> None:
        """Apply new timing and encode settings at once, even while running (the node's dynamic
        parameters); buffer sizes and ``keep_images`` need a new engine."""
        if not isinstance(config, EngineConfig):
            raise EngineError(f"config must be an EngineConfig, got {type(config).__name__}")
        fixed = ("cache_size", "raw_buffer_size", "prompt_queue_size", "keep_images")
        changed = [name for name in fixed if getattr(config, name) != getattr(self.config, name)]
        if changed:
            raise EngineError(f"{', '.join(changed)} cannot change on a running engine; build a new one")
        with self._cond:
            self.config = config
            self._policy = EncodePolicy(config.encode_mode, config.max_encode_rate_hz)
            self._touch_locked()

    def submit(self, task: Callable[[], T]) -> Future[T]:
        """Run ``task`` on the worker between two steps (replay: in ``run_until_idle``); its return
        value or exception lands in the future. Tasks run in submission order."""
        future: Future[T] = Future()
        with self._cond:
            if self._stopping and not self.replay:
                future.set_exception(EngineStateError("the engine is stopped"))
                return future
            self._tasks.append((task, future))
            self._touch_locked()
        return future

    def request(self, prompts: Sequence[Prompt], image: np.ndarray | None = None, stamp: float = 0.0,
                frame_id: str = "") -> Future[FrameResult]:
        """Answer ``prompts`` now, on the worker, and return the result in a future (it is not passed to
        ``on_result``). With ``image``: that image, keyed by ``stamp`` (> 0), encoded once and cached
        like a streamed frame. Without: the frame ``stamp`` names (0 = the newest), encoded first when
        it is not yet (which also answers the standing prompts on it, as for any new frame)."""
        prompts = [_check_prompt(p) for p in prompts]
        if image is not None:
            _check_image(image)
            _check_stamp(stamp, "request", allow_zero=False)
        else:
            _check_stamp(stamp, "request", allow_zero=True)
        return self.submit(lambda: self._answer_request(prompts, image, float(stamp), str(frame_id)))

    # ----------------------------------------------------------------------------- queries

    def standing(self) -> dict[str, tuple[Prompt, ...]]:
        with self._cond:
            return dict(self._standing)

    def frame(self, stamp: float = 0.0) -> EncodedFrame | None:
        """The cached frame with exactly this stamp (0 = the newest), e.g. to draw an overlay."""
        with self._cond:
            return self._cache.newest() if stamp == 0 else self._cache.get(stamp)

    def stats(self) -> dict:
        """Counters, rejections by reason, latency percentiles (ms) and current queue depths."""
        with self._cond:
            depths = {
                "prompts_pending": len(self._pending),
                "raw_frames_pending": len(self._raw),
                "cached_frames": len(self._cache),
                "cache_bytes": sum(f.nbytes() for f in self._cache),
                "standing_prompts": sum(len(g) for g in self._standing.values()),
                "encode_mode": self._policy.mode.value,
                "continuous": self._policy.is_continuous(bool(self._standing)),
                "running": self._thread is not None and self._thread.is_alive(),
            }
        return {**self._stats.snapshot(_COUNTERS), **depths}

    # ----------------------------------------------------------------------------- live worker

    def start(self) -> None:
        """Start the worker thread (live streams)."""
        if self.replay:
            raise EngineStateError("a replay engine is driven by run_until_idle(); start() is for live use")
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                raise EngineStateError("the engine is already running")
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="ovsam-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Stop the worker after its current step and join it; pending prompts are rejected as
        ``stopped``. Returns False if the worker did not end within ``timeout``."""
        with self._cond:
            thread = self._thread
            self._stopping = True
            self._cond.notify_all()
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the worker has done everything it can with what was pushed so far (prompts
        may still wait for frames). Returns False on timeout."""
        with self._cond:
            if self._thread is None:
                raise EngineStateError("wait_idle() needs a started engine; offline, use run_until_idle()")
            thread = self._thread
            return self._cond.wait_for(
                lambda: self._idle_version == self._version or not thread.is_alive(), timeout)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._stopping:
                        return
                    version = self._version
                worked, wait_s = self._step(flush=False)
                if worked:
                    continue
                with self._cond:
                    if self._stopping:
                        return
                    if self._version == version:
                        self._idle_version = version
                        self._cond.notify_all()
                        self._cond.wait(wait_s)
        except Exception:
            logger.exception("engine worker failed")
        finally:
            self._abandon_pending()

    def _abandon_pending(self) -> None:
        with self._cond:
            while self._pending:
                self._reject_locked(self._pending.popleft().prompt, RejectReason.STOPPED, "engine stopped")
            tasks = list(self._tasks)
            self._tasks.clear()
            reports = self._drain_reports_locked()
            self._cond.notify_all()
        for _, future in tasks:
            future.set_exception(EngineStateError("the engine stopped before running this request"))
        self._report(reports)

    # ----------------------------------------------------------------------------- offline replay

    def run_until_idle(self, flush: bool = False) -> int:
        """Do all work possible now, synchronously on this thread; returns the number of steps.
        ``flush`` ends every wait (the stream is over): see :meth:`finish`."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                raise EngineStateError("run_until_idle() cannot run beside the worker thread; stop() first")
        steps = 0
        while self._step(flush)[0]:
            steps += 1
        return steps

    def finish(self) -> int:
        """End of stream: answer or reject every prompt still waiting for a newer frame."""
        return self.run_until_idle(flush=True)

    # ----------------------------------------------------------------------------- one step

    def _now(self) -> float:
        return self._stream_now if self.replay else time.monotonic()

    def _touch_locked(self) -> None:
        self._version += 1
        self._cond.notify_all()

    def _step(self, flush: bool) -> tuple[bool, float | None]:
        """Do one unit of work: answer one cached frame's prompts, or encode one frame and answer its
        prompts with the standing ones. Returns (whether anything happened, seconds until a timer
        may make work: a waiting prompt expiring or the rate cap allowing the next encode)."""
        with self._cond:
            task = self._tasks.popleft() if self._tasks else None
        if task is not None:
            self._run_task(*task)
            return True, None
        with self._cond:
            now = self._now()
            groups, wait_s = self._resolve_locked(now, flush)
            job, retry_s = self._take_job_locked(groups, now)
            reports = self._drain_reports_locked()
        self._report(reports)
        if job is None:
            timers = [t for t in (wait_s, retry_s) if t is not None]
            return bool(reports), min(timers) if timers else None
        if job.frame is not None:
            self._stats.count("cache_hits", len(job.prompts))
            self._answer_and_deliver(job.frame, [p.prompt for p in job.prompts], [])
        else:
            self._encode_and_answer(job, flush)
        return True, None

    def _resolve_locked(self, now: float, flush: bool, just_encoded: float | None = None,
                        ) -> tuple[dict[float, list[_Pending]], float | None]:
        """Match every pending prompt; reject the hopeless ones. Returns the prompts to answer grouped by
        frame stamp, and the time until the first waiting prompt's wait expires (live only)."""
        cfg = self.config
        encoded = self._cache.stamps()
        if just_encoded is not None and just_encoded not in self._cache:
            encoded = sorted([*encoded, just_encoded])
        raw = self._raw.stamps()
        groups: dict[float, list[_Pending]] = {}
        keep: deque[_Pending] = deque()
        wait_s: float | None = None
        for pending in self._pending:
            left = math.inf if self.replay else pending.arrived + cfg.prompt_wait_s - now
            match = match_stamp(pending.prompt.stamp, encoded, raw, slop=cfg.sync_slop_s,
                                max_age=cfg.max_prompt_age_s, wait_expired=flush or left <= 0)
            if match.action is MatchAction.REJECT:
                assert match.reason is not None
                newest = max([*encoded[-1:], *raw[-1:]], default=None)
                detail = "no frame received" if newest is None else f"newest frame {newest:.6f}"
                self._reject_locked(pending.prompt, match.reason, detail)
                continue
            keep.append(pending)
            if match.action is MatchAction.USE:
                assert match.stamp is not None
                groups.setdefault(match.stamp, []).append(pending)
            elif not self.replay:
                wait_s = left if wait_s is None else min(wait_s, left)
        self._pending = keep
        return groups, wait_s

    def _take_job_locked(self, groups: dict[float, list[_Pending]], now: float,
                         ) -> tuple[_Job | None, float | None]:
        """Cache hits first (cheap), then frames prompts need encoded, then the encode policy."""
        for stamp in sorted(groups):
            frame = self._cache.get(stamp)
            if frame is not None:
                self._remove_pending_locked(groups[stamp])
                return _Job(frame=frame, prompts=groups[stamp]), None
        for stamp in sorted(groups):
            if stamp in self._raw:
                self._last_encode = now
                self._remove_pending_locked(groups[stamp])  # in flight: safe from queue overflow
                return _Job(raw=self._raw.pop(stamp), prompts=groups[stamp]), None
        newest = self._cache.newest()
        decision = self._policy.choose(self._raw.stamps(), None if newest is None else newest.stamp,
                                       bool(self._standing), now, self._last_encode)
        if decision.stamp is None:
            return None, decision.retry_in_s
        self._last_encode = now
        return _Job(raw=self._raw.pop(decision.stamp)), None

    def _remove_pending_locked(self, taken: list[_Pending]) -> None:
        ids = {id(p) for p in taken}
        self._pending = deque(p for p in self._pending if id(p) not in ids)

    def _run_task(self, task: Callable[[], Any], future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(task())
        except BaseException as exc:  # the caller gets it; the worker goes on
            future.set_exception(exc)

    def _answer_request(self, prompts: list[Prompt], image: np.ndarray | None, stamp: float,
                        frame_id: str) -> FrameResult:
        """The body of :meth:`request`, on the worker."""
        with self._cond:
            if image is not None:
                frame, raw = self._cache.get(stamp), RawFrame(stamp, frame_id, image)
            else:
                frame, raw = self._frame_for_request_locked(stamp)
        if frame is None:
            assert raw is not None
            frame = self._encode_and_answer(_Job(raw=raw), flush=False)
            if frame is None:
                raise EngineError(f"encoding frame {raw.frame_id!r} at {raw.stamp:.6f} failed (see the log)")
        else:
            self._stats.count("cache_hits", len(prompts))
        start = time.perf_counter()
        instances = list(self._processor.answer(frame.features, prompts))
        self._stats.decode_took(time.perf_counter() - start)
        return FrameResult(stamp=frame.stamp, frame_id=frame.frame_id, image_size=frame.original_size,
                           instances=instances)

    def _frame_for_request_locked(self, stamp: float) -> tuple[EncodedFrame | None, RawFrame | None]:
        """The cached frame a request names, or the raw one to encode (taken out of the raw buffer)."""
        match = match_stamp(stamp, self._cache.stamps(), self._raw.stamps(), slop=self.config.sync_slop_s,
                            max_age=self.config.max_prompt_age_s, wait_expired=True)
        if match.action is not MatchAction.USE:
            newest = max([*self._cache.stamps()[-1:], *self._raw.stamps()[-1:]], default=None)
            detail = "no frame received yet" if newest is None else f"newest frame {newest:.6f}"
            raise EngineError(f"no frame for a request at stamp {stamp:.6f} ({detail})")
        assert match.stamp is not None
        if match.encoded:
            return self._cache.get(match.stamp), None
        return None, self._raw.pop(match.stamp)

    def _encode_and_answer(self, job: _Job, flush: bool) -> EncodedFrame | None:
        """Encode ``job.raw``, cache it and answer its prompts; the frame, or None if encoding failed."""
        raw = job.raw
        assert raw is not None
        start = time.perf_counter()
        try:
            features = self._processor.encode(raw.image)
        except Exception as exc:
            logger.exception("encoding frame %s at %.6f failed", raw.frame_id, raw.stamp)
            self._stats.count("encode_errors")
            if out_of_memory(exc):
                self._free_memory()
            message = f"encoding frame {raw.frame_id!r} at {raw.stamp:.6f}: {type(exc).__name__}: {exc}"
            with self._cond:
                for pending in job.prompts:
                    self._reject_locked(pending.prompt, RejectReason.FAILED, message)
                if not job.prompts:
                    self._reports.append((f"{RejectReason.FAILED.value}: {message}", None))
                reports = self._drain_reports_locked()
            self._report(reports)
            return None
        self._stats.encode_took(time.perf_counter() - start)
        self._stats.count("frames_encoded")
        image = raw.image if self.config.keep_images else None
        frame = EncodedFrame(raw.stamp, raw.frame_id, raw.size, features, image)
        with self._cond:
            self._cache.add(frame.stamp, frame)
            groups, _ = self._resolve_locked(self._now(), flush, just_encoded=frame.stamp)
            arrived = groups.get(frame.stamp, [])  # matched this frame while it was being encoded
            self._remove_pending_locked(arrived)
            one_off = job.prompts + arrived
            # a standing prompt with a stamp (detector boxes) stands for the frames after its own
            newer = frame.stamp - self.config.sync_slop_s
            standing = [p for group in self._standing.values() for p in group if p.stamp < newer]
            reports = self._drain_reports_locked()
        self._report(reports)
        self._answer_and_deliver(frame, [p.prompt for p in one_off], standing, new_frame=True)
        return frame

    def _answer_and_deliver(self, frame: EncodedFrame, one_off: list[Prompt], standing: list[Prompt],
                            new_frame: bool = False) -> None:
        """Answer all prompts on one frame in one batch; a failing batch is retried prompt by prompt so
        one bad prompt cannot sink the others. ``new_frame``: just encoded, standing prompts applied."""
        batch = one_off + standing
        if not batch:
            return
        start = time.perf_counter()
        failed: dict[int, str] = {}
        try:
            instances: list[Instance] = list(self._processor.answer(frame.features, batch))
        except Exception as exc:
            if out_of_memory(exc):
                instances, failed = self._answer_after_oom(frame, batch, exc)
            elif len(batch) == 1:
                instances, failed = [], {0: f"{type(exc).__name__}: {exc}"}
            else:
                instances = []
                for i, prompt in enumerate(batch):
                    try:
                        instances.extend(self._processor.answer(frame.features, [prompt]))
                    except Exception as single:
                        failed[i] = f"{type(single).__name__}: {single}"
        self._stats.decode_took(time.perf_counter() - start)
        errors = [f"{_describe(batch[i])} failed: {why}" for i, why in sorted(failed.items())]
        for message in errors:
            logger.warning("frame %.6f: %s", frame.stamp, message)
        reports: list[tuple[str, Prompt | None]] = []
        for i, prompt in enumerate(one_off):
            if i in failed:
                self._stats.reject(RejectReason.FAILED.value)
                reports.append((f"{RejectReason.FAILED.value}: {_describe(prompt)}: {failed[i]}", prompt))
        self._stats.count("prompts_answered", len(one_off) - len(reports))
        applied = sum(1 for i in range(len(one_off), len(batch)) if i not in failed)
        self._stats.count("standing_applied", applied)
        self._report(reports)
        result = FrameResult(stamp=frame.stamp, frame_id=frame.frame_id, image_size=frame.original_size,
                             instances=instances, errors=errors, new_frame=new_frame)
        self._stats.count("results_emitted")
        if self._on_result is not None:
            try:
                self._on_result(result)
            except Exception:
                self._stats.count("callback_errors")
                logger.exception("on_result callback failed")

    def _answer_after_oom(self, frame: EncodedFrame, batch: list[Prompt], exc: BaseException,
                          ) -> tuple[list[Instance], dict[int, str]]:
        """Out of memory on a batch: free what the processor can, retry once as two halves; if that runs
        out too, skip the frame (every prompt failed, counted as ``frames_skipped_oom``)."""
        self._free_memory()
        halves = [batch[: len(batch) // 2], batch[len(batch) // 2:]] if len(batch) > 1 else [batch]
        instances: list[Instance] = []
        try:
            for half in halves:
                instances.extend(self._processor.answer(frame.features, half))
        except Exception as again:
            if not out_of_memory(again):
                raise
            self._free_memory()
            self._stats.count("frames_skipped_oom")
            why = (f"out of memory on {len(batch)} prompt(s), and again retried as {len(halves)} batch(es): "
                   f"frame skipped ({type(exc).__name__}: {exc})")
            return [], dict.fromkeys(range(len(batch)), why)
        return instances, {}

    def _free_memory(self) -> None:
        free = getattr(self._processor, "free_memory", None)
        if callable(free):
            free()

    # ----------------------------------------------------------------------------- rejections

    def _reject_locked(self, prompt: Prompt, reason: RejectReason, detail: str) -> None:
        self._stats.reject(reason.value)
        self._reports.append((f"{reason.value}: {_describe(prompt)}: {detail}", prompt))

    def _drain_reports_locked(self) -> list[tuple[str, Prompt | None]]:
        reports = list(self._reports)
        self._reports.clear()
        return reports

    def _report(self, reports: list[tuple[str, Prompt | None]]) -> None:
        for message, prompt in reports:
            if self._on_error is None:
                logger.debug("%s", message)
                continue
            try:
                self._on_error(message, prompt)
            except Exception:
                self._stats.count("callback_errors")
                logger.exception("on_error callback failed")
