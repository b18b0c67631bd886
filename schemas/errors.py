"""Job-level exception hierarchy; row-level problems are data (status columns), not exceptions."""

from __future__ import annotations


class MLSPError(Exception):
    """Base class for every job-level error this project raises on purpose.

    CLIs turn these into a one-line message and a non-zero exit code instead of a traceback.
    """

    exit_code = 1


class ConfigError(MLSPError):
    """A configuration value or command-line argument is invalid; the message names it."""

    exit_code = 2


class ManifestError(MLSPError):
    """The image manifest cannot be built or read (duplicate ids, bad columns, missing file)."""


class WeightsUnavailableError(MLSPError):
    """The requested backbone weights cannot be loaded; the message says where to put them."""


class StoreError(MLSPError):
    """The feature store is missing, corrupt or used inconsistently."""


class StoreUnavailableError(StoreError):
    """An object store kept failing (throttling, 5xx, resets, timeouts) through every retry the
    policy allows; the message names the operation, the object, the attempts and the last error."""


class LeaseLostError(StoreError):
    """This run no longer holds a view's writer lease (taken over, or not renewed in time); it
    commits nothing more to the view."""


class SpecMismatchError(StoreError):
    """A view exists with a different spec than the one requested."""


class UnknownImageIdsError(StoreError, KeyError):
    """A query asked for image ids that the view does not hold."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class PreflightError(MLSPError):
    """The run's environment cannot serve it: a missing input file, a folder that cannot be
    created or written, missing credentials, an endpoint that does not answer; checked before
    any work, the message names the flag, the path and what to do."""


class PipelineError(MLSPError):
    """The distributed pipeline failed as a whole."""


class DownloadError(MLSPError):
    """A dataset download cannot proceed as a whole (bad source, unusable list, bad archive)."""


class ArchiveError(DownloadError):
    """An archive is unsafe (zip slip, links, devices, bomb) or unreadable; nothing is extracted."""


class LabelError(MLSPError):
    """A label file is malformed or inconsistent; the message names the file and line."""


class RecalibrationError(LabelError):
    """A recalibration cannot be fitted or applied (too few rows, constant labels, no overlap)."""


class DeviceUnavailableError(MLSPError):
    """The requested accelerator is not available; never silently replaced by the CPU."""


class OrchestrationError(MLSPError):
    """An orchestrated step (a CLI called from the Airflow DAG) failed; the message names it."""
