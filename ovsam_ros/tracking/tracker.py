"""Tracks over a stream of frame results: one id per object for as long as it is seen.

Two kinds of track:

- **prompted** (a click, a PointPrompt or a box): re-prompted on every newly encoded frame from the
  frame's cached features, one box prompt per track (:meth:`Tracker.reprompts`, registered as the
  engine's standing prompts, so a track costs one decoder call per frame and never an encode). The
  box is the track's last mask box moved by its velocity. The answer is checked against the
  motion-predicted previous mask (mask IoU) and the track's appearance (colour histogram under the
  mask; where the model names masks, also the recognizer's region embedding, computed for naming
  anyway, and the top-k class distribution); it is kept, or the frame counts as a miss.
- **associated** (instances of standing text queries and everything mode, and detector boxes):
  matched to tracks by a cost of overlap (the better of mask and box IoU) and appearance, solved by
  Hungarian assignment
  (:mod:`ovsam_ros.tracking.association`); an unmatched instance starts a tentative track that is
  confirmed after ``tracking.min_hits`` frames.

Hysteresis: a seen track stays on at ``tracking.keep_iou``; once lost it needs
``tracking.reacquire_iou`` (higher) to be found again, and a track unseen for more than
``tracking.max_lost_frames`` frames ends (an end event). A tentative track ends on its first miss.
The class label is the track's mean top-k probability, so one noisy frame does not rename it.

Every instance of a model that names masks carries the recognizer's region embedding (prompted,
text-query and everything-mode alike), so it is part of the appearance wherever there is a
recognizer.

One thread (the engine's worker) calls a Tracker.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ovsam_ros.config import TrackingConfig
from ovsam_ros.prompts import Prompt, PromptKind
from ovsam_ros.results import FrameResult, Instance, TrackState
from ovsam_ros.tracking.association import associate, cost_matrix
from ovsam_ros.tracking.regions import (
    box_iou_matrix,
    colour_histogram,
    embedding_similarity,
    histogram_similarity,
    label_similarity,
    main_box,
    mask_iou_matrix,
    shift_mask,
)

REPROMPT_PREFIX = "track/"
"""Prompt id of a track's re-prompt: ``track/<id>``."""

MAX_ID = 65534
"""Track ids run 1..MAX_ID and wrap (skipping live ones): they are the mono16 instance image's values."""

VELOCITY_SMOOTHING = 0.5
"""Weight of the newest measured velocity against the track's running one."""

APPEARANCE_SMOOTHING = 0.3
"""Weight of the newest colour histogram (and region embedding) in the track's running one."""


@dataclass(eq=False)
class Track:
    """One followed object; ``velocity`` is its box centre's, in pixels per second."""

    id: int
    kind: PromptKind
    prompt_id: str
    prompted: bool
    instance: Instance
    stamp: float
    state: TrackState
    hits: int = 1
    misses: int = 0
    age: int = 0
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    interval: float = 0.0
    histogram: np.ndarray | None = None
    embedding: np.ndarray | None = None
    label_sums: dict[str, float] = field(default_factory=dict)
    class_indices: dict[str, int] = field(default_factory=dict)
    votes: int = 0
    _box: np.ndarray | None = None

    @property
    def mask(self) -> np.ndarray:
        return self.instance.mask

    @property
    def box(self) -> np.ndarray:
        """The box of the mask's main part (what re-prompts and velocities use)."""
        if self._box is None:
            self._box = main_box(self.mask, self.instance.bbox)
        return self._box

    def predicted_mask(self, stamp: float) -> np.ndarray:
        """The last mask moved by the velocity to ``stamp``."""
        dx, dy = self.velocity * max(0.0, stamp - self.stamp)
        return shift_mask(self.mask, dx, dy) if dx or dy else self.mask

    def predicted_box(self, stamp: float) -> np.ndarray:
        """The last main box moved by the velocity to ``stamp``."""
        return self.box + np.tile(self.velocity * max(0.0, stamp - self.stamp), 2)


@dataclass
class TrackUpdate:
    """What one frame did: its instances with track ids (in the result's order, untracked dropped) and
    the tracks that ended (their last instance, state ENDED)."""

    instances: list[Instance]
    ended: list[Instance]
    started: list[int]


def _running(old: np.ndarray | None, new: np.ndarray | None) -> np.ndarray | None:
    """A track's running appearance feature after one more look (``new`` None: no look this time)."""
    if new is None or old is None:
        return old if new is None else new
    return APPEARANCE_SMOOTHING * new + (1 - APPEARANCE_SMOOTHING) * old


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


class Tracker:
    """See the module docstring. ``config`` may be replaced between frames (dynamic parameters)."""

    def __init__(self, config: TrackingConfig | None = None) -> None:
        self.config = TrackingConfig(enabled=True) if config is None else config
        self._tracks: dict[int, Track] = {}
        self._next_id = 1
        self._newest = 0.0

    @property
    def tracks(self) -> list[Track]:
        return list(self._tracks.values())

    def reprompts(self) -> list[Prompt]:
        """One standing box prompt per prompted track: its last box moved on by one frame interval of
        its velocity (more while it is lost), grown by ``tracking.box_margin``, clipped to the image
        (at least one pixel wide)."""
        prompts = []
        for track in self._tracks.values():
            if not track.prompted:
                continue
            height, width = track.mask.shape
            box = track.box + np.tile(track.velocity * track.interval * (track.misses + 1), 2)
            grow = self.config.box_margin * (box[2:] - box[:2])
            box = box + np.concatenate([-grow, grow])
            x0, x1 = np.clip(box[[0, 2]], 0, width)
            y0, y1 = np.clip(box[[1, 3]], 0, height)
            x0, y0 = min(x0, width - 1), min(y0, height - 1)
            prompts.append(Prompt.from_box([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)],
                                           id=f"{REPROMPT_PREFIX}{track.id}", standing=True))
        return prompts

    def clear(self) -> list[Instance]:
        """End every track (tracking turned off, prompts cleared); their end events."""
        return [self._end(track) for track in list(self._tracks.values())]

    # ------------------------------------------------------------------------------ one frame

    def update(self, result: FrameResult, image: np.ndarray | None = None) -> TrackUpdate:
        """Give ``result``'s instances track ids; on a newly encoded frame newer than any before, count
        a miss for every track not seen on it. ``image`` (RGB) gives the appearance."""
        stamp = result.stamp
        fresh = result.new_frame and stamp > self._newest
        if fresh:
            self._newest = stamp
            for track in self._tracks.values():
                track.age += 1
        seen: set[int] = set()
        out: dict[int, Instance] = {}
        seeds, standing = [], []
        for k, inst in enumerate(result.instances):
            if inst.prompt_id.startswith(REPROMPT_PREFIX):
                track = self._tracks.get(self._reprompt_id(inst.prompt_id))
                current = track is not None and fresh and stamp > track.stamp
                same, histogram = self._verify(track, inst, image, stamp) if current else (False, None)
                if same:
                    self._hit(track, inst, image, stamp, histogram)
                    seen.add(track.id)
                    out[k] = self._emit(track, inst)
            elif inst.prompt_kind == PromptKind.POINT:
                seeds.append(k)
            else:
                standing.append(k)
        started: list[int] = []
        ended: list[Instance] = []
        for k in seeds:
            inst = result.instances[k]
            track = next((t for t in self._tracks.values() if t.prompted and t.prompt_id == inst.prompt_id),
                         None)
            if track is None:
                track = self._start(inst, image, stamp, prompted=True, ended=ended)
                started.append(track.id)
            else:  # the same PointPrompt id again: it refines its object
                self._restart(track, inst, image, stamp)
            seen.add(track.id)
            out[k] = self._emit(track, inst)
        self._associate(result, standing, image, stamp, seen, out, started, ended)
        if fresh:
            for track in list(self._tracks.values()):
                if track.id not in seen and track.stamp < stamp:
                    ended.extend(self._miss(track))
        return TrackUpdate([out[k] for k in sorted(out)], ended, started)

    def _associate(self, result: FrameResult, standing: list[int], image: np.ndarray | None,
                   stamp: float, seen: set[int], out: dict[int, Instance], started: list[int],
                   ended: list[Instance]) -> None:
        """Standing outputs to tracks (Hungarian); a match with a track already seen on this frame is
        the same object twice (a click and everything mode): it only votes for the track's label."""
        if not standing:
            return
        cfg = self.config
        tracks = list(self._tracks.values())
        instances = [result.instances[k] for k in standing]
        references = [t.mask if t.id in seen else t.predicted_mask(stamp) for t in tracks]
        # A track's first move has no velocity yet, and a mask moved by a third of its width overlaps
        # itself far less than its box does: the overlap is the better of mask and box IoU (SORT's
        # measure), so a detector box every frame keeps its object's id when it moves fast.
        boxes = [t.box if t.id in seen else t.predicted_box(stamp) for t in tracks]
        iou = np.maximum(mask_iou_matrix(references, [i.mask for i in instances]),
                         box_iou_matrix(boxes, [main_box(i.mask, i.bbox) for i in instances]))
        histograms = [None if image is None else colour_histogram(image, i.mask, i.bbox) for i in instances]
        similarity = np.full(iou.shape, np.nan)
        for r, track in enumerate(tracks):
            for c, inst in enumerate(instances):
                if iou[r, c] >= cfg.match_iou:
                    value = self._similarity(track, inst, histograms[c])
                    similarity[r, c] = np.nan if value is None else value
        assignment = associate(cost_matrix(iou, similarity, cfg.appearance_weight, cfg.match_iou))
        for r, c in assignment.matches:
            track, inst, k = tracks[r], instances[c], standing[c]
            if track.id in seen:
                self._vote(track, inst)
                continue
            if stamp > track.stamp:
                self._hit(track, inst, image, stamp, histograms[c])
            seen.add(track.id)
            out[k] = self._emit(track, inst)
        for c in assignment.unmatched_instances:
            inst, k = instances[c], standing[c]
            track = self._start(inst, image, stamp, prompted=inst.prompt_kind == PromptKind.BOX, ended=ended,
                                histogram=histograms[c])
            started.append(track.id)
            seen.add(track.id)
            out[k] = self._emit(track, inst)

    # ------------------------------------------------------------------------------ track life

    @staticmethod
    def _reprompt_id(prompt_id: str) -> int:
        try:
            return int(prompt_id.removeprefix(REPROMPT_PREFIX))
        except ValueError:
            return 0

    def _similarity(self, track: Track, inst: Instance, histogram: np.ndarray | None) -> float | None:
        """Mean of the colour, region-embedding and class-distribution similarities that both sides
        have."""
        values = [v for v in (histogram_similarity(track.histogram, histogram),
                              embedding_similarity(track.embedding, inst.embedding),
                              label_similarity(track.label_sums, inst.top_k)) if v is not None]
        return float(np.mean(values)) if values else None

    def _verify(self, track: Track, inst: Instance, image: np.ndarray | None, stamp: float
                ) -> tuple[bool, np.ndarray | None]:
        """Is the re-prompt's answer still the track's object: overlap with where the object should be
        now (or where it was), above the keep (seen) or the reacquire (lost) threshold, and a similar
        appearance? With the answer's colour histogram (None without an image), for the hit to reuse."""
        cfg = self.config
        # the motion model may be wrong (an object that stops): the unmoved mask is a second guess
        iou = float(mask_iou_matrix([inst.mask], [track.predicted_mask(stamp), track.mask]).max())
        needed = cfg.reacquire_iou if track.state == TrackState.LOST else cfg.keep_iou
        if iou < needed or not inst.mask.any():
            return False, None
        histogram = None if image is None else colour_histogram(image, inst.mask, inst.bbox)
        similarity = self._similarity(track, inst, histogram)
        return similarity is None or similarity >= cfg.min_similarity, histogram

    def _new_id(self) -> int:
        for _ in range(MAX_ID):
            candidate = self._next_id
            self._next_id = candidate % MAX_ID + 1
            if candidate not in self._tracks:
                return candidate
        raise RuntimeError("no free track id")  # unreachable: tracking.max_tracks < MAX_ID

    def _start(self, inst: Instance, image: np.ndarray | None, stamp: float, *, prompted: bool,
               ended: list[Instance], histogram: np.ndarray | None = None) -> Track:
        while len(self._tracks) >= self.config.max_tracks:
            oldest = max(self._tracks.values(), key=lambda t: (t.misses, -t.stamp))
            ended.append(self._end(oldest))
        confirmed = prompted or self.config.min_hits <= 1
        track = Track(id=self._new_id(), kind=inst.prompt_kind, prompt_id=inst.prompt_id, prompted=prompted,
                      instance=inst, stamp=stamp,
                      state=TrackState.CONFIRMED if confirmed else TrackState.TENTATIVE)
        if histogram is None and image is not None:
            histogram = colour_histogram(image, inst.mask, inst.bbox)
        track.histogram, track.embedding = histogram, inst.embedding
        self._vote(track, inst)
        self._tracks[track.id] = track
        return track

    def _restart(self, track: Track, inst: Instance, image: np.ndarray | None, stamp: float) -> None:
        track.instance, track.stamp, track.misses, track._box = inst, max(stamp, track.stamp), 0, None
        track.state, track.velocity = TrackState.CONFIRMED, np.zeros(2)
        track.histogram = None if image is None else colour_histogram(image, inst.mask, inst.bbox)
        track.embedding = inst.embedding
        track.label_sums.clear()
        track.votes = 0
        self._vote(track, inst)

    def _hit(self, track: Track, inst: Instance, image: np.ndarray | None, stamp: float,
             histogram: np.ndarray | None = None) -> None:
        dt = stamp - track.stamp
        if dt > 0 and inst.mask.any():
            measured = (_centre(main_box(inst.mask, inst.bbox)) - _centre(track.box)) / dt
            first = track.hits == 1
            track.velocity = measured if first else (
                VELOCITY_SMOOTHING * measured + (1 - VELOCITY_SMOOTHING) * track.velocity)
            track.interval = dt / (track.misses + 1)
        if histogram is None and image is not None:
            histogram = colour_histogram(image, inst.mask, inst.bbox)
        track.histogram = _running(track.histogram, histogram)
        track.embedding = _running(track.embedding, inst.embedding)
        track.instance, track.stamp, track._box = inst, stamp, None
        track.hits += 1
        track.misses = 0
        confirmed = track.prompted or track.hits >= self.config.min_hits or track.state == TrackState.LOST
        track.state = TrackState.CONFIRMED if confirmed else TrackState.TENTATIVE
        self._vote(track, inst)

    def _miss(self, track: Track) -> list[Instance]:
        track.misses += 1
        if track.state == TrackState.TENTATIVE or track.misses > self.config.max_lost_frames:
            return [self._end(track)]
        track.state = TrackState.LOST
        return []

    def _end(self, track: Track) -> Instance:
        del self._tracks[track.id]
        track.state = TrackState.ENDED
        return self._emit(track, track.instance)

    @staticmethod
    def _vote(track: Track, inst: Instance) -> None:
        track.votes += 1
        for name, probability in inst.top_k or ([(inst.label, inst.score)] if inst.label else []):
            track.label_sums[name] = track.label_sums.get(name, 0.0) + probability
        if inst.label and inst.class_index >= 0:
            track.class_indices[inst.label] = inst.class_index

    def _emit(self, track: Track, inst: Instance) -> Instance:
        """``inst`` as the track's: its id, age and state, the prompt that started it, and the track's
        mean class probabilities as its names."""
        named: dict = {}
        if track.label_sums:
            total = max(1, track.votes)
            ranked = sorted(track.label_sums.items(), key=lambda kv: -kv[1])
            top = [(name, value / total) for name, value in ranked[:max(1, len(inst.top_k))]]
            label = top[0][0]
            fallback = inst.class_index if label == inst.label else -1
            named = {"label": label, "score": top[0][1], "top_k": top,
                     "class_index": track.class_indices.get(label, fallback)}
        return dataclasses.replace(inst, id=str(track.id), track_id=track.id, track_age=track.age,
                                   track_state=track.state, prompt_kind=track.kind, prompt_id=track.prompt_id,
                                   **named)
