"""The streaming engine: a ring buffer of encoded frames keyed by stamp, prompt-to-frame matching,
encode policies and the worker thread. Importing it loads no torch model."""

from ovsam_ros.engine.config import EngineConfig, EngineConfigError
from ovsam_ros.engine.engine import Engine, EngineError, EngineStateError
from ovsam_ros.engine.frame_store import EncodedFrame, RawFrame, StampBuffer
from ovsam_ros.engine.matching import Match, MatchAction, RejectReason, match_stamp
from ovsam_ros.engine.policy import EncodeDecision, EncodeMode, EncodePolicy
from ovsam_ros.engine.processor import FrameProcessor, PredictorProcessor

__all__ = [
    "EncodeDecision",
    "EncodeMode",
    "EncodePolicy",
    "EncodedFrame",
    "Engine",
    "EngineConfig",
    "EngineConfigError",
    "EngineError",
    "EngineStateError",
    "FrameProcessor",
    "Match",
    "MatchAction",
    "PredictorProcessor",
    "RawFrame",
    "RejectReason",
    "StampBuffer",
    "match_stamp",
]
