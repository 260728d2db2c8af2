"""Typed configuration: dataclasses loaded from YAML with strict keys.

    schema.py    one dataclass per section, each validating itself; VPAEConfig checks what spans sections
    load.py      YAML + `--set section.key=value` overrides -> VPAEConfig; to_dict / save_config
    run_dir.py   the config a run folder records and what a resumed run may change
"""

from vpae.config.load import build, load_config, nest_data_sections, save_config, to_dict
from vpae.config.run_dir import (
                                 RESUME_FIXED_KEYS,
                                 RESUME_FIXED_SECTIONS,
                                 RESUME_FREE_KEYS,
                                 RunConfigRecord,
                                 check_run_config,
                                 current_layout,
                                 record_run_config,
                                 resume_changes,
)
from vpae.config.schema import (
                                 METHODS,
                                 ADDConfig,
                                 APTConfig,
                                 ComparisonConfig,
                                 ConfigError,
                                 ConsistencyConfig,
                                 DataConfig,
                                 DMD2Config,
                                 EquilibriumConfig,
                                 MDConfig,
                                 ModelConfig,
                                 ParallelConfig,
                                 PretrainConfig,
                                 PrimingConfig,
                                 SamplingConfig,
                                 TrainConfig,
                                 VPAEConfig,
                                 validate,
)

__all__ = [
    "ADDConfig", "APTConfig", "ComparisonConfig", "ConfigError", "ConsistencyConfig", "DataConfig", "DMD2Config",
    "EquilibriumConfig", "MDConfig", "METHODS", "ModelConfig", "ParallelConfig", "PretrainConfig", "PrimingConfig",
    "RESUME_FIXED_KEYS", "RESUME_FIXED_SECTIONS", "RESUME_FREE_KEYS", "SamplingConfig", "TrainConfig", "VPAEConfig",
    "RunConfigRecord", "build", "check_run_config", "current_layout", "load_config", "nest_data_sections",
    "record_run_config", "resume_changes", "save_config", "to_dict", "validate",
]
