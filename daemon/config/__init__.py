"""The configuration room: the daemon's configuration, typed, frozen and validated once when it is loaded.

:mod:`.settings` holds :class:`DaemonConfig` (the TOML file, command-line overrides, the unknown-key check);
:mod:`.sections` the sections (``[ingest]``, ``[model]``, ``[serve]``, ``[publish]``, ``[control]``,
``[monitor]``, ``[trainer]``, ``[security]``, ``[fusion]``), each built from the documented fields of
:mod:`.fields`; :mod:`.budget` the memory budget ``serve.max_memory_mb`` states and how it is split between the
runtime, the trainer, the learner, the serving workspace and the frames in flight. The budget lives here, not in
the serving room, because the configuration refuses at load time a budget that leaves no room to serve, and the
serving, learning and service rooms all plan inside it.

Imports one way: the ingest sources' and the wire's option types and constants (their sections describe them),
:mod:`refscope.models`; nothing here imports the serving, learning, publishing or service rooms.
"""
from .settings import (HOOKS, LOG_LEVELS, METHODS, SECTIONS, STATE_DIR_NAME, ConfigError, ControlConfig, DaemonConfig,
                       FusionConfig, IngestConfig, ModelConfig, MonitorConfig, PublishConfig, SecurityConfig,
                       ServeConfig, TrainerConfig, config_to_toml, default_state_dir, load_config)

__all__ = ["ConfigError", "IngestConfig", "ModelConfig", "ServeConfig", "PublishConfig", "ControlConfig",
           "MonitorConfig", "TrainerConfig", "SecurityConfig", "FusionConfig", "HOOKS", "DaemonConfig", "load_config",
           "config_to_toml", "default_state_dir", "SECTIONS", "METHODS", "LOG_LEVELS", "STATE_DIR_NAME"]
