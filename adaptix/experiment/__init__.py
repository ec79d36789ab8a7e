"""The main job: ``adaptix run [CONFIG]`` reproduces PCEE's two claims on Fashion-MNIST; the
language-model job (``adaptix run --preset smollm2-bbc``: `adaptix.experiment.lm_job.run_lm_job`,
not imported here, since it imports the decoder runtime) controls and certifies token exits of a
decoder LM on BBC News.

See `adaptix.experiment.config.JobConfig` for every setting and `adaptix.experiment.job.run_job`
for the steps. The package also holds the data the experiments read (`adaptix.experiment.data`,
`adaptix.experiment.datasets`), the guarantee study (``adaptix study``:
`adaptix.experiment.study`), the shift-monitor study (``adaptix shift-study``:
`adaptix.experiment.shift_study`, run on the job's model by `adaptix.experiment.shift_job`), the
printed report and the figures (`adaptix.experiment.plots` and the studies' ``*_plots``).
"""

from adaptix.experiment.config import JobConfig, load_config
from adaptix.experiment.job import JobResult, run_job
from adaptix.experiment.lm_config import LMJobConfig, load_job_config

__all__ = ["JobConfig", "JobResult", "LMJobConfig", "load_config", "load_job_config", "run_job"]
