"""The main job: ``adaptix run [CONFIG]`` reproduces PCEE's two claims on Fashion-MNIST.

See `adaptix.experiment.config.JobConfig` for every setting and `adaptix.experiment.job.run_job`
for the steps.
"""

from adaptix.experiment.config import JobConfig, load_config
from adaptix.experiment.job import JobResult, run_job

__all__ = ["JobConfig", "JobResult", "load_config", "run_job"]
