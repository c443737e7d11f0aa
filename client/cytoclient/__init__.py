"""Python client for the cytology annotation platform's REST API (``/api/v1/``).

``Client`` talks to one server with one API token; ``cyto`` (``python -m cytoclient``) is the
command line on top of it. ``API_VERSION`` is the API version this client speaks: it checks the
server's before the first call (another major version raises ``IncompatibleServerError``).
"""

from cytoclient._transport import check_compatibility
from cytoclient._version import API_VERSION, __version__
from cytoclient.client import Client, UploadResult, bethesda_category
from cytoclient.errors import (
    ApiError,
    AuthenticationError,
    CompatibilityWarning,
    ConfigurationError,
    ConflictError,
    CytoError,
    GoneError,
    IncompatibleServerError,
    JobFailedError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ServerError,
    ThrottledError,
    TransportError,
    UploadError,
    ValidationError,
    WaitTimeoutError,
)
from cytoclient.models import (
    Cell,
    CellClass,
    Cells,
    CocoImportReport,
    ExportJob,
    HistoryEntry,
    Image,
    Me,
    ModelVersion,
    Project,
    Registry,
    RegistryRow,
    Rollback,
    TrainingJob,
    WorkQueue,
)
from cytoclient.progress import Progress, ProgressBar, ProgressCallback

__all__ = [
    "API_VERSION",
    "ApiError",
    "AuthenticationError",
    "Cell",
    "CellClass",
    "Cells",
    "Client",
    "CocoImportReport",
    "CompatibilityWarning",
    "ConfigurationError",
    "ConflictError",
    "CytoError",
    "ExportJob",
    "GoneError",
    "HistoryEntry",
    "Image",
    "IncompatibleServerError",
    "JobFailedError",
    "Me",
    "ModelVersion",
    "NotFoundError",
    "PermissionDeniedError",
    "Progress",
    "ProgressBar",
    "ProgressCallback",
    "Project",
    "ProtocolError",
    "Registry",
    "RegistryRow",
    "Rollback",
    "ServerError",
    "ThrottledError",
    "TrainingJob",
    "TransportError",
    "UploadError",
    "UploadResult",
    "ValidationError",
    "WaitTimeoutError",
    "WorkQueue",
    "__version__",
    "bethesda_category",
    "check_compatibility",
]
