"""Typed pipeline configuration, built once from the CLI (never re-read per frame)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from decision_bridge.curve import CurveServer
from models.backends.common import Device, Precision
from stream.batcher import BatchConfig
from stream.delivery import DeliveryMode
from stream.sources.base import ReplayMode
from stream.sources.cameras import RtspTransport
from stream.sources.limits import FrameLimits
from stream.sources.live import LiveOptions

if TYPE_CHECKING:  # the viewer (aiohttp) is imported only by a run that serves it
    from calibration.bev import BevGrid
    from stream.geometry import StreamCamera
    from stream.sinks.recorder import RecordConfig
    from web_viewer.security import ViewerSecurity

DEFAULT_ZMQ_ADDRESS = "tcp://127.0.0.1:5555"
DEFAULT_VIEWER = ("127.0.0.1", 8080)
DEFAULT_MAX_AGE_MS = 500.0  # a live mask older than this at publish is useless to a planner at speed
# Batching pays on a GPU; on a CPU a batch of large frames is slower per frame than one
# frame at a time (measured: DABNet 1024x512, batch 8 at 0.5-0.9x the fps of batch 1).
GPU_MAX_BATCH, CPU_MAX_BATCH = 8, 1
LIVE_QUEUE_DEPTH = 1
MASK_SCALES = (1, 2, 4, 8)  # a live stream keeps only its newest frame waiting


@dataclass(frozen=True)
class PipelineConfig:
    sources: tuple[str, ...]
    model: str = "demo"
    backend: str = "torch"  # models.backends.registry.BACKEND_CHOICES
    device: Device = Device.AUTO
    precision: Precision = Precision.AUTO
    input_size: tuple[int, int] | None = None  # (width, height); None: the model's native size
    zmq_address: str | None = DEFAULT_ZMQ_ADDRESS  # None: do not publish
    zmq_wait_subscriber_s: float = 0.0  # replay: wait this long for subscribers before frame 0
    zmq_subscribers: int = 1  # how many subscribers zmq_wait_subscriber_s waits for
    zmq_mode: DeliveryMode = DeliveryMode.PUB
    zmq_fallback: bool = False  # demo: if the address is in use, publish on a free port instead
    # CURVE encryption (and with clients_dir, client authentication); its key files are read and
    # checked when the CurveServer is made, so a bad one fails at configuration, before the model loads.
    zmq_curve: CurveServer | None = None
    mask_encoding: str = "u8-zlib"
    mask_scale: int = 1  # publish every Nth pixel of the mask and road layer (1, 2, 4 or 8)
    viewer: tuple[str, int] | None = DEFAULT_VIEWER  # None: no viewer
    viewer_fallback: bool = False  # demo: if the port is taken, serve on a free one
    # Token, Host allow-list, --viewer-insecure (checked when made, by the CLI); None: the defaults
    # (no token on loopback, a generated one on any other bind).
    viewer_security: ViewerSecurity | None = None
    max_frames: int | None = None  # per source
    realtime: bool = False  # replay at the recorded rate instead of as fast as possible
    replay_rate: float | None = None  # replay at this many frames/s per source (implies pacing)
    batch: BatchConfig = field(default_factory=BatchConfig)
    auto_max_batch: bool = False  # pick max_batch from the backend's device (GPU_MAX_BATCH / CPU_MAX_BATCH)
    queue_depth: int = 0  # frames per replay source queue; 0: 2 x max_batch
    live_queue_depth: int = LIVE_QUEUE_DEPTH
    result_depth: int = 16  # results waiting to be published
    max_age_ms: float = DEFAULT_MAX_AGE_MS  # live staleness budget: older frames are dropped or flagged
    replay_mode: ReplayMode = ReplayMode.LOSSLESS  # a paced replay that falls behind: keep all or keep up
    frame_limits: FrameLimits = field(default_factory=FrameLimits)
    rtsp_transport: RtspTransport = RtspTransport.TCP
    live: LiveOptions = field(default_factory=LiveOptions)
    stats_interval_s: float = 5.0  # periodic one-line status log; 0 disables
    decode_threads: int = 0  # shared decode pool; 0: one per CPU core
    void_masks: tuple[str, ...] = ()  # STREAM=PATH: static per-camera void regions (bonnet, border)
    record: RecordConfig | None = None  # --record DIR: annotated video, masks and telemetry per stream
    # --camera STREAM=FILE: camera files, loaded and checked (stream.geometry.parse_camera_specs); their
    # streams are undistorted, and with a ground plane get a bird's-eye grid of this size (None: 40x20@0.1).
    cameras: tuple[StreamCamera, ...] = ()
    bev_grid: BevGrid | None = None

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("at least one --source is required")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.replay_rate is not None and self.replay_rate <= 0:
            raise ValueError(f"replay rate must be > 0 frames/s, got {self.replay_rate}")
        if self.queue_depth < 0 or self.result_depth < 1 or self.live_queue_depth < 1:
            raise ValueError("queue_depth must be >= 0, live_queue_depth and result_depth >= 1")
        # Typed once here, so a bad value fails at configuration and not when the model loads.
        object.__setattr__(self, "device", Device(self.device))
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "zmq_mode", DeliveryMode(self.zmq_mode))
        if self.zmq_curve is not None and not isinstance(self.zmq_curve, CurveServer):
            raise ValueError(f"zmq_curve must be a CurveServer, got {type(self.zmq_curve).__name__}")
        if self.zmq_curve is not None and not self.zmq_address:
            raise ValueError("CURVE keys (--zmq-curve-key) were given, but publishing is off (--zmq off)")
        if self.mask_scale not in MASK_SCALES:
            raise ValueError(f"mask_scale must be one of {MASK_SCALES}, got {self.mask_scale}")
        if self.zmq_subscribers < 1:
            raise ValueError(f"zmq_subscribers must be >= 1, got {self.zmq_subscribers}")
        if not self.max_age_ms > 0:
            raise ValueError(f"max_age_ms must be > 0, got {self.max_age_ms}")
        if self.viewer_security is not None and self.viewer is None:
            raise ValueError("viewer security settings (--viewer-token, --viewer-insecure, --viewer-allow-host) "
                             "were given, but the viewer is off (--viewer off)")

    def resolved(self, device: str) -> PipelineConfig:
        """This config with the automatic batch size fixed for the backend's device."""
        if not self.auto_max_batch:
            return self
        max_batch = GPU_MAX_BATCH if device.startswith("cuda") else CPU_MAX_BATCH
        return replace(self, batch=replace(self.batch, max_batch=max_batch), auto_max_batch=False)

    @property
    def source_queue_depth(self) -> int:
        return self.queue_depth or 2 * self.batch.max_batch
